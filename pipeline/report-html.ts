// HTML for the run report: a tagged template that escapes every interpolated value unless it is
// already HTML, tables, and the page around the sections (inline CSS, no scripts, no network).

/** A piece of markup that is not escaped again. */
export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

type Value = Html | string | number | null | undefined | false | readonly Value[];

export function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function render(v: Value): string {
  if (v === null || v === undefined || v === false) return '';
  if (v instanceof Html) return v.text;
  if (Array.isArray(v)) return v.map(render).join('');
  return escapeHtml(String(v));
}

/** `html\`<p>${text}</p>\``: values escaped, Html and arrays of them inserted as they are. */
export function html(strings: TemplateStringsArray, ...values: Value[]): Html {
  let out = strings[0];
  for (let i = 0; i < values.length; i++) out += render(values[i]) + strings[i + 1];
  return new Html(out);
}

/** A table cell made whole by its caller (classes, data-value), put in a row as it is. */
export class Cell extends Html {}

/** Markup that is trusted as it is (an SVG vega rendered). */
export function raw(text: string): Html {
  return new Html(text);
}

/** A table; `data-value` on a cell holds the exact number behind a formatted one. */
export function table(headers: readonly Value[] | null, rows: readonly (readonly Value[])[], attrs: { id?: string; className?: string } = {}): Html {
  return html`<table${attrs.id ? html` id="${attrs.id}"` : ''}${attrs.className ? html` class="${attrs.className}"` : ''}>${headers ? html`<thead><tr>${headers.map((h) => html`<th>${h}</th>`)}</tr></thead>` : ''}<tbody>${rows.map((r) => html`<tr>${r.map((c) => (c instanceof Cell ? c : html`<td>${c}</td>`))}</tr>`)}</tbody></table>`;
}

/** A cell showing a fraction as a percentage, with the exact value in data-value. */
export function percentCell(v: number | undefined, missing: Value = '—'): Cell {
  return new Cell(v === undefined ? html`<td class="missing">${missing}</td>`.text : html`<td class="num" data-value="${String(v)}">${(100 * v).toFixed(2)} %</td>`.text);
}

/** A right-aligned number cell. */
export function numberCell(v: number | undefined, text?: string): Cell {
  return new Cell(v === undefined ? '<td class="missing">—</td>' : html`<td class="num" data-value="${String(v)}">${text ?? formatNumber(v)}</td>`.text);
}

export function formatNumber(v: number): string {
  if (Number.isInteger(v)) return String(v);
  return Math.abs(v) >= 1000 ? v.toFixed(0) : v.toPrecision(4);
}

export function formatSeconds(s: number): string {
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

const STATE_CLASS: Record<string, string> = { completed: 'ok', running: 'run', interrupted: 'warn', failed: 'bad', 'not yet run': 'todo', 'no manifest': 'todo' };

/** A stage's state as a coloured badge. */
export function badge(state: string): Html {
  return html`<span class="badge ${STATE_CLASS[state] ?? 'todo'}">${state}</span>`;
}

const CSS = `
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d1d1f; margin: 0; background: #fafafa; }
header { background: #1f2d3d; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { color: #c8d3df; font-size: 13px; }
nav { padding: 8px 32px; background: #eef1f5; border-bottom: 1px solid #d9dee5; font-size: 13px; position: sticky; top: 0; z-index: 1; }
nav a { margin-right: 14px; color: #1f4f8a; text-decoration: none; }
main { padding: 8px 32px 48px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e2e5ea; border-radius: 6px; padding: 6px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; margin: 12px 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
h4 { font-size: 13px; margin: 10px 0 4px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid #e6e8eb; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td code { white-space: nowrap; }
td.missing, .missing { color: #8a8f98; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; white-space: nowrap; }
.badge.ok { background: #e3f4e6; color: #1d6b2f; } .badge.run { background: #e4eefb; color: #1f4f8a; }
.badge.warn { background: #fff1d6; color: #7a5200; } .badge.bad { background: #fde4e4; color: #9b1c1c; }
.badge.todo { background: #eceef1; color: #5b616b; }
.plots { display: flex; flex-wrap: wrap; gap: 12px 28px; align-items: flex-start; }
.plots figure { margin: 0; }
.note { color: #5b616b; font-size: 13px; }
.error { color: #9b1c1c; white-space: pre-wrap; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; width: 112px; font-size: 11px; text-align: center; }
.gallery figcaption .note { word-break: break-all; }
.gallery img { image-rendering: pixelated; border: 3px solid #ccc; display: block; margin: 0 auto 2px; }
.gallery .right img { border-color: #3a9a4f; } .gallery .wrong img { border-color: #d03b3b; }
img.sheet { image-rendering: pixelated; max-width: 100%; border: 1px solid #ddd; }
details { margin: 4px 0; } summary { cursor: pointer; }
pre { background: #f4f6f8; padding: 8px 10px; overflow-x: auto; font-size: 12px; margin: 4px 0 8px; }
`;

/** The whole page. */
export function page({ title, subtitle, nav, body }: { title: string; subtitle: Value; nav: { id: string; title: string }[]; body: Value }): string {
  return (
    '<!DOCTYPE html>\n' +
    html`<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${title}</title><style>${raw(CSS)}</style></head>
<body><header><h1>${title}</h1><div class="sub">${subtitle}</div></header>
<nav>${nav.map((n) => html`<a href="#${n.id}">${n.title}</a>`)}</nav>
<main>${body}</main></body></html>
`.text
  );
}
