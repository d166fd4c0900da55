// Piscina entry for the image decode worker: worker threads cannot load .ts, so tsx is registered
// in the worker before the TypeScript module is imported.
import { register } from 'tsx/esm/api';

register();
const m = await import('./decode-worker.ts');
export default m.default;
