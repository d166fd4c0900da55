// Worker-thread entry: worker threads cannot load .ts, so register tsx and re-export worker.ts.
import { register } from 'tsx/esm/api';

register();
const m = await import('./worker.ts');
export default m.default;
