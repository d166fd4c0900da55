#!/usr/bin/env node
// Runs a TypeScript entry file (scripts, benchmarks) through tsx without a build step, in a child
// process with glibc malloc settings where they apply (bin/malloc-tuning.mjs).
import { register } from 'tsx/esm/api';
import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { runTunedChild } from './malloc-tuning.mjs';

const childCode = await runTunedChild();
if (childCode !== undefined) {
  process.exitCode = childCode;
} else {
  register();
  const [file, ...rest] = process.argv.slice(2);
  if (!file) {
    console.error('usage: run-ts.mjs FILE.ts [args...]');
    process.exit(2);
  }
  process.argv = [process.argv[0], resolve(file), ...rest];
  await import(pathToFileURL(resolve(file)).href);
}
