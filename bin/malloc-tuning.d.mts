// Types of bin/malloc-tuning.mjs for the TypeScript that imports it (its tests).
export const ORPHAN_GRACE_MS: number;
export function runTunedChild(): Promise<number | undefined>;
