// Piscina worker: augments one batch and moves the view buffers back to the main thread.
import { Piscina, transferableSymbol, valueSymbol } from 'piscina';
import { type AugmentTask, runAugmentTask } from './task.ts';

export default function augmentBatch(task: AugmentTask) {
  const result = runAugmentTask(task);
  // Transfer, not copy: a 256×224×224×3 float32 view is 154 MB.
  return Piscina.move({
    get [transferableSymbol]() {
      return result.views.map((v) => v.buffer);
    },
    get [valueSymbol]() {
      return result;
    },
  });
}
