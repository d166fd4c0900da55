'use strict';
// Entry script of one tfjs-backend-wasm pthread under Node (see threads.ts): runs the threaded
// build's own worker script, which the package ships as a string for a browser Blob.
const { wasmWorkerContents } = require('@tensorflow/tfjs-backend-wasm/wasm-out/tfjs-backend-wasm-threaded-simd.worker.js');

// As tfjs does before making that Blob, newlines are escaped: the string holds "\n" literals
// that a template literal turned into line breaks.
eval(wasmWorkerContents.replace(/\n/g, '\\n'));
