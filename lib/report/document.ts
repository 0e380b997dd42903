// A report as a list of blocks (headings, paragraphs, tables, charts, image grids), written two
// ways from the same blocks so they hold the same tables: markdown (report.md, figures linked as
// files) and one self-contained HTML page (report.html: charts as inline SVG, images as data URIs,
// no script and nothing fetched, so it opens offline).

import { Buffer } from "node:buffer";
import { join } from "node:path";
import type { GridLayout } from "./images.ts";
import { failer } from "../io/errors.ts";

/** A table cell: text or a number, "–" when missing, or an image file (path from the report). */
export type Cell = string | number | null | undefined | { image: string; alt: string };

export type Block =
  | { kind: "heading"; level: 1 | 2 | 3; text: string }
  /** A paragraph; `code` spans in backquotes. */
  | { kind: "text"; text: string }
  | {
    kind: "table";
    header: readonly string[];
    rows: readonly (readonly Cell[])[];
    align?: Align[];
  }
  /** A rendered chart: its SVG text and the .svg file it was written to. */
  | { kind: "chart"; id: string; title: string; file: string; svg: string }
  /** Images with a caption each (markdown: a table of them; HTML: cards side by side). */
  | { kind: "gallery"; items: readonly { file: string; alt: string; caption: string }[] }
  /** An image grid (PNG) whose column headings are text here, aligned with its cells in HTML. */
  | {
    kind: "grid";
    file: string;
    alt: string;
    columns: readonly string[];
    layout: GridLayout;
    caption: string;
  };

export type Align = "l" | "r";

const fail: (what: string) => never = failer("report");

// ---- markdown -------------------------------------------------------------------------------

/** A number as a percentage with one decimal ("97.3"), "–" when missing. */
export function pct(v: number | null | undefined, digits = 1): string {
  return typeof v === "number" && Number.isFinite(v) ? (100 * v).toFixed(digits) : "–";
}

/** A number with fixed decimals, "–" when missing. */
export function fixed(v: number | null | undefined, digits = 2): string {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "–";
}

function checkRows(header: readonly string[], rows: readonly (readonly Cell[])[]): void {
  for (const r of rows) {
    if (r.length !== header.length) {
      fail(`a table row has ${r.length} cells, the header ${header.length}`);
    }
  }
}

function defaultAlign(header: readonly string[], align?: readonly Align[]): readonly Align[] {
  return align ?? header.map((_, i) => (i === 0 ? "l" : "r"));
}

/** A markdown image (path relative to the report). */
export function markdownImage(alt: string, path: string): string {
  return `![${alt.replace(/[[\]]/g, "")}](${path})`;
}

function markdownCell(c: Cell): string {
  if (c === null || c === undefined) return "–";
  if (typeof c === "object") return markdownImage(c.alt, c.image);
  return String(c).replace(/\|/g, "\\|").replace(/\n/g, " ");
}

/**
 * A GitHub markdown table. `align` per column: "l" (default for the first column) or "r" (default
 * for the others: numbers).
 */
export function markdownTable(
  header: readonly string[],
  rows: readonly (readonly Cell[])[],
  align?: readonly Align[],
): string {
  checkRows(header, rows);
  const rule = defaultAlign(header, align).map((x) => (x === "r" ? "---:" : ":---"));
  const line = (cells: readonly Cell[]) => `| ${cells.map(markdownCell).join(" | ")} |`;
  return [line(header), `| ${rule.join(" | ")} |`, ...rows.map(line)].join("\n");
}

/** The blocks as markdown: charts and grids as links to their files. */
export function toMarkdown(blocks: readonly Block[]): string {
  const parts = blocks.map((b) => {
    switch (b.kind) {
      case "heading":
        return `${"#".repeat(b.level)} ${b.text}`;
      case "text":
        return b.text;
      case "table":
        return markdownTable(b.header, b.rows, b.align);
      case "chart":
        return markdownImage(b.title, b.file);
      case "grid":
        return `${b.caption} Columns: ${b.columns.join(" | ")}.\n\n${markdownImage(b.alt, b.file)}`;
      case "gallery":
        return markdownTable(
          ["", ""],
          b.items.map((i) => [i.caption, { image: i.file, alt: i.alt }]),
          ["l", "l"],
        );
    }
  });
  return parts.join("\n\n") + "\n";
}

// ---- HTML -----------------------------------------------------------------------------------

export function escapeHtml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;");
}

/** Paragraph text: escaped, `code` spans as <code>. */
function inline(text: string): string {
  return escapeHtml(text).replace(/`([^`]+)`/g, "<code>$1</code>");
}

const STYLE = `
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em;
  color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; vertical-align: middle; }
th { background: #f3f3f3; } td.r, th.r { text-align: right; }
code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: .5em 0 1em; } figcaption { color: #555; max-width: 60em; }
img.pixels { image-rendering: pixelated; display: block; }
.gallery { display: flex; flex-wrap: wrap; gap: .8em; }
.gallery figure { margin: 0; font-size: 12px; }
.grid-columns { display: grid; font-size: 11px; text-align: center; white-space: nowrap; }
`;

/** The table as HTML; image cells read and inlined as data URIs. */
async function htmlTable(
  b: Extract<Block, { kind: "table" }>,
  read: (file: string) => Promise<string>,
): Promise<string> {
  checkRows(b.header, b.rows);
  const align = defaultAlign(b.header, b.align);
  const cell = async (c: Cell, j: number) => {
    if (c !== null && typeof c === "object") {
      return `<td><img class="pixels" alt="${escapeHtml(c.alt)}" src="${await read(
        c.image,
      )}"></td>`;
    }
    return `<td class="${align[j]}">${
      c === null || c === undefined ? "–" : inline(String(c))
    }</td>`;
  };
  const head = b.header.map((h, j) => `<th class="${align[j]}">${inline(h)}</th>`).join("");
  const rows: string[] = [];
  for (const r of b.rows) rows.push(`<tr>${(await Promise.all(r.map(cell))).join("")}</tr>`);
  return `<table><thead><tr>${head}</tr></thead><tbody>\n${rows.join("\n")}\n</tbody></table>`;
}

/** A grid's column headings over its image, each centred over its column of cells. */
async function htmlGrid(
  b: Extract<Block, { kind: "grid" }>,
  read: (file: string) => Promise<string>,
): Promise<string> {
  const { cellWidth, gap, columns } = b.layout;
  const heads = b.columns.map((c) => `<span>${escapeHtml(c)}</span>`).join("");
  const style = `grid-template-columns: repeat(${columns}, ${cellWidth}px); ` +
    `column-gap: ${gap}px; padding-left: ${gap}px`;
  return `<figure class="grid"><div class="grid-columns" style="${style}">${heads}</div>` +
    `<img class="pixels" alt="${escapeHtml(b.alt)}" src="${await read(b.file)}">` +
    `<figcaption>${inline(b.caption)}</figcaption></figure>`;
}

/** A data URI of a file of the report folder (PNG or SVG). */
export function fileReader(dir: string): (file: string) => Promise<string> {
  return async (file: string) => {
    const type = file.endsWith(".svg") ? "image/svg+xml" : file.endsWith(".png") ? "image/png" : "";
    if (!type) fail(`${file}: only PNG and SVG images are inlined`);
    const bytes = await Deno.readFile(join(dir, file)).catch((error) =>
      fail(`${join(dir, file)}: ${(error as Error).message}`)
    );
    return `data:${type};base64,${Buffer.from(bytes).toString("base64")}`;
  };
}

/**
 * The blocks as one HTML page; `read` turns an image file into a data URI (fileReader). Charts
 * that follow each other sit side by side.
 */
export async function toHtml(
  title: string,
  blocks: readonly Block[],
  read: (file: string) => Promise<string>,
): Promise<string> {
  const out: string[] = [];
  let charts: string[] = [];
  const flush = () => {
    if (charts.length) out.push(`<div class="charts">\n${charts.join("\n")}\n</div>`);
    charts = [];
  };
  for (const b of blocks) {
    if (b.kind === "chart") {
      charts.push(
        `<figure class="chart" id="chart-${escapeHtml(b.id)}" ` +
          `data-title="${escapeHtml(b.title)}">${b.svg}</figure>`,
      );
      continue;
    }
    flush();
    if (b.kind === "heading") out.push(`<h${b.level}>${inline(b.text)}</h${b.level}>`);
    else if (b.kind === "text") out.push(`<p>${inline(b.text)}</p>`);
    else if (b.kind === "table") out.push(await htmlTable(b, read));
    else if (b.kind === "gallery") {
      const cards: string[] = [];
      for (const i of b.items) {
        cards.push(
          `<figure><img class="pixels" alt="${escapeHtml(i.alt)}" src="${await read(i.file)}">` +
            `<figcaption>${inline(i.caption)}</figcaption></figure>`,
        );
      }
      out.push(`<div class="gallery">\n${cards.join("\n")}\n</div>`);
    } else out.push(await htmlGrid(b, read));
  }
  flush();
  return `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n` +
    `<meta name="viewport" content="width=device-width, initial-scale=1">\n` +
    `<title>${escapeHtml(title)}</title>\n<style>${STYLE}</style></head>\n<body>\n` +
    `${out.join("\n")}\n</body></html>\n`;
}
