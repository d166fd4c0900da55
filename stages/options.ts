// How a stage merges the options it was given over its defaults: an option left undefined (a flag
// not given, a script's `{ lr: undefined }`) keeps the default.
export function withDefaults<D extends object, O extends object>(defaults: D, options: O): D & O {
  return { ...defaults, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as D & O;
}
