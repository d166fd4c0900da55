#!/usr/bin/env node
// The `pipeline` command: loads the TypeScript CLI through tsx (no build step needed), in a child
// process with glibc malloc settings where they apply (bin/malloc-tuning.mjs).
import { register } from 'tsx/esm/api';
import { runTunedChild } from './malloc-tuning.mjs';

const childCode = await runTunedChild();
if (childCode !== undefined) {
  process.exitCode = childCode;
} else {
  register();
  const { main } = await import('../pipeline/cli.ts');
  process.exitCode = await main(process.argv.slice(2));
}
