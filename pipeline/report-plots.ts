// The run report's plots: vega-lite specs, compiled to vega and rendered to SVG in Node by vega's
// headless View (no browser, no canvas). vega is loaded only when a report is drawn.
import type { TopLevelSpec } from 'vega-lite';

/** One plotted value; `series` names the line (a stage, a split) it belongs to. */
export interface Point {
  series: string;
  x: number;
  y: number;
}

/** Stage colours kept the same in every plot (vega's category10 order). */
const SERIES_COLOURS: Record<string, string> = {
  pretrain: '#4c78a8',
  finetune: '#4c78a8',
  baseline: '#f58518',
  distill: '#54a24b',
};
const PALETTE = ['#4c78a8', '#f58518', '#54a24b', '#e45756', '#72b7b2', '#b279a2', '#eeca3b', '#9d755d'];

function colourScale(series: readonly string[]) {
  let next = 0;
  const range = series.map((s) => SERIES_COLOURS[s] ?? PALETTE[next++ % PALETTE.length]);
  return { domain: [...series], range };
}

/** Values to six significant digits: the SVG's labels stay short and the tests can read them back. */
export function plotted(v: number): number {
  return Number(v.toPrecision(6));
}

export interface CurveOptions {
  title: string;
  xTitle: string;
  yTitle: string;
  /** Drawn as thin lines, one per series (metrics.jsonl's rows every --log-every steps). */
  lines: Point[];
  /** Drawn as points joined by a dashed line, one per series (the per-epoch rows). */
  points: Point[];
  /** y axis as percentages (values in [0, 1]). */
  percent?: boolean;
  logY?: boolean;
  width?: number;
  height?: number;
}

/**
 * Curves of one metric: layer 0 the interval rows as lines, layer 1 the epoch rows joined, layer 2
 * the epoch rows as points (one SVG symbol per row).
 */
export function curveSpec(o: CurveOptions): TopLevelSpec {
  const series = [...new Set([...o.lines, ...o.points].map((p) => p.series))];
  // Each mark's aria-label (its SVG description) gives the exact plotted values, whatever the axis format.
  const round = (ps: Point[], kind: string) =>
    ps.map((p) => ({ series: p.series, kind, x: plotted(p.x), y: plotted(p.y), label: `${p.series}: ${o.xTitle} ${plotted(p.x)}, ${o.yTitle} ${plotted(p.y)}` }));
  const axisY = { title: o.yTitle, ...(o.percent ? { format: '.0%' } : {}) };
  const encoding = {
    // Steps and epochs: integer ticks (a single point would otherwise be labelled 2.000000).
    x: { field: 'x', type: 'quantitative', title: o.xTitle, axis: { tickMinStep: 1, format: 'd' } },
    y: { field: 'y', type: 'quantitative', axis: axisY, scale: o.logY ? { type: 'log' } : { zero: false } },
    color: { field: 'series', type: 'nominal', title: null, scale: colourScale(series), legend: series.length > 1 ? { orient: 'bottom' } : null },
    description: { field: 'label' },
  } as const;
  return {
    title: o.title,
    width: o.width ?? 420,
    height: o.height ?? 180,
    data: { values: [...round(o.lines, 'line'), ...round(o.points, 'point')] },
    layer: [
      { transform: [{ filter: "datum.kind === 'line'" }], mark: { type: 'line', strokeWidth: 1.2, opacity: 0.75 }, encoding },
      { transform: [{ filter: "datum.kind === 'point'" }], mark: { type: 'line', strokeWidth: 1, strokeDash: [4, 3] }, encoding },
      { transform: [{ filter: "datum.kind === 'point'" }], mark: { type: 'point', filled: true, size: 36, opacity: 1 }, encoding },
    ],
    config: CHART_CONFIG,
  } as TopLevelSpec;
}

/** Confusion matrix: rows true class, columns predicted, colour = share of the true class, text = count. */
export function confusionSpec(classes: readonly string[], confusion: readonly (readonly number[])[], title: string): TopLevelSpec {
  const values = confusion.flatMap((row, t) => {
    const total = row.reduce((s, v) => s + v, 0);
    return row.map((count, p) => ({ true: classes[t], predicted: classes[p], count, share: total > 0 ? plotted(count / total) : 0 }));
  });
  const k = classes.length;
  const cell = Math.max(6, Math.min(36, Math.floor(640 / Math.max(1, k))));
  const showText = k <= 20;
  const base = {
    x: { field: 'predicted', type: 'nominal', sort: [...classes], title: 'predicted class', axis: { labelAngle: -45 } },
    y: { field: 'true', type: 'nominal', sort: [...classes], title: 'true class' },
  } as const;
  return {
    title,
    width: { step: cell },
    height: { step: cell },
    data: { values },
    layer: [
      { mark: { type: 'rect' }, encoding: { ...base, color: { field: 'share', type: 'quantitative', scale: { scheme: 'blues', domain: [0, 1] }, title: 'share of true class', legend: { format: '.0%' } } } },
      ...(showText
        ? [{ mark: { type: 'text', fontSize: Math.min(11, cell / 2.6) }, encoding: { ...base, text: { field: 'count', type: 'quantitative' }, color: { condition: { test: 'datum.share > 0.5', value: 'white' }, value: 'black' } } }]
        : []),
    ],
    config: CHART_CONFIG,
  } as TopLevelSpec;
}

/** Per-class accuracy as horizontal bars (one SVG rect per class). */
export function perClassSpec(perClass: Record<string, number>, classes: readonly string[], title: string): TopLevelSpec {
  const values = classes.filter((c) => typeof perClass[c] === 'number').map((c) => ({ class: c, accuracy: plotted(perClass[c]) }));
  return {
    title,
    width: 300,
    height: { step: Math.max(8, Math.min(20, Math.floor(480 / Math.max(1, values.length)))) },
    data: { values },
    mark: { type: 'bar', color: '#4c78a8' },
    encoding: {
      y: { field: 'class', type: 'nominal', sort: [...classes], title: null },
      x: { field: 'accuracy', type: 'quantitative', scale: { domain: [0, 1] }, axis: { format: '.0%' }, title: 'top-1 accuracy' },
    },
    config: CHART_CONFIG,
  } as TopLevelSpec;
}

const CHART_CONFIG = {
  font: 'system-ui, -apple-system, Segoe UI, sans-serif',
  title: { fontSize: 13, anchor: 'start' },
  axis: { labelFontSize: 10, titleFontSize: 11 },
  view: { stroke: '#ddd' },
};

/** Renders a vega-lite spec to an SVG document (vega's headless View, renderer none). */
export async function renderSvg(spec: TopLevelSpec): Promise<string> {
  // ESM-only, and only the report needs them: loaded here rather than by every CLI command.
  const [vega, vegaLite] = await Promise.all([import('vega'), import('vega-lite')]);
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
