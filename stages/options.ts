// How a stage merges the options it was given over its defaults: an option left undefined (a flag
// not given, a script's `{ lr: undefined }`) keeps the default.

/** `O` with every option `D` has a default for made required, typed as the option (not the default's literal). */
export type WithDefaults<D, O> = Omit<O, keyof D> & { [K in keyof D]-?: K extends keyof O ? Exclude<O[K], undefined> : D[K] };

export function withDefaults<D extends object, O extends object>(defaults: D, options: O): WithDefaults<D, O> {
  return { ...defaults, ...Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) } as WithDefaults<D, O>;
}
