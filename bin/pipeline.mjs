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
  // A reader that went away (`pipeline inspect RUN_DIR | head`) ends the command quietly, as SIGPIPE
  // would end a C program, instead of an unhandled EPIPE with a stack trace.
  process.stdout.on('error', (err) => {
    if (err.code !== 'EPIPE') throw err;
    process.exit(process.exitCode ?? 0);
  });
  const { main } = await import('../pipeline/cli.ts');
  process.exitCode = await main(process.argv.slice(2));
}
