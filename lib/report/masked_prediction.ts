// Paper Figure 2/5, drawn: one held-out image per row — original, tokenizer reconstruction, then per
// mask ratio the masked input (grey patches) and the image decoded from the ViT's predicted codes
// (lib/eval/masked_prediction.ts measures them). Column headings are text in the report.

import { join } from "node:path";
import { writeFileAtomic } from "../io/atomic.ts";
import { encodePng } from "../io/png.ts";
import type { MaskedPrediction } from "../eval/masked_prediction.ts";
import { greyPatches, type GridLayout, imageAt, imageGrid } from "./images.ts";

export interface MaskFigure {
  /** The PNG, relative to the report's folder. */
  file: string;
  /** Column headings, left to right. */
  columns: string[];
  layout: GridLayout;
  maskedAcc: Record<string, number>;
}

/** Writes the figure of `m` as `dir/file` (a PNG). */
export async function writeMaskFigure(
  dir: string,
  file: string,
  m: MaskedPrediction,
): Promise<MaskFigure> {
  const { shape } = m;
  const host = (data: Float32Array) => ({ data, shape });
  const masked = m.columns.map((c) =>
    greyPatches(host(m.original), c.masks, m.patch, 0.5).data as Float32Array
  );
  const rows = Array.from({ length: shape[0] }, (_, i) => [
    imageAt(host(m.original), i),
    imageAt(host(m.reconstruction), i),
    ...m.columns.flatMap((c, k) => [imageAt(host(masked[k]), i), imageAt(host(c.predicted), i)]),
  ]);
  const columns = [
    "original",
    "tokenizer",
    ...m.columns.flatMap((c) => [
      `masked ${Math.round(100 * c.ratio)}%`,
      `predicted ${Math.round(100 * c.ratio)}%`,
    ]),
  ];
  const scale = Math.max(1, Math.ceil(60 / shape[3]));
  const grid = imageGrid(rows, { scale });
  await writeFileAtomic(join(dir, file), encodePng(grid.image));
  return { file, columns, layout: grid.layout, maskedAcc: m.maskedAcc };
}
