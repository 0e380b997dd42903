// A generated image classification problem for the engine demo and training tests: grey images
// of four shape classes (horizontal bar, vertical bar, square outline, filled disc) at random
// positions and sizes, with noise. Deterministic for a seed.

import { Rng } from "../tensor/init.ts";

export const SHAPE_CLASSES = ["horizontal bar", "vertical bar", "square outline", "disc"] as const;

export interface ImageBatch {
  /** [n, 1, size, size] values in [0, 1], row-major. */
  images: Float32Array;
  labels: Int32Array;
  n: number;
  size: number;
}

export function shapesBatch(n: number, size: number, seed: number): ImageBatch {
  const rng = new Rng(seed);
  const images = new Float32Array(n * size * size);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const label = Math.floor(rng.float() * SHAPE_CLASSES.length);
    labels[i] = label;
    const extent = Math.floor(size * (0.35 + 0.3 * rng.float()));
    const thick = Math.max(1, Math.floor(size / 8));
    const x0 = Math.floor(rng.float() * (size - extent));
    const y0 = Math.floor(rng.float() * (size - extent));
    const cx = x0 + extent / 2, cy = y0 + extent / 2;
    const base = i * size * size;
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const inBox = x >= x0 && x < x0 + extent && y >= y0 && y < y0 + extent;
        let on = false;
        if (label === 0) on = inBox && Math.abs(y - cy) < thick;
        else if (label === 1) on = inBox && Math.abs(x - cx) < thick;
        else if (label === 2) {
          on = inBox &&
            (x < x0 + thick || x >= x0 + extent - thick || y < y0 + thick ||
              y >= y0 + extent - thick);
        } else on = (x - cx + 0.5) ** 2 + (y - cy + 0.5) ** 2 <= (extent / 2) ** 2;
        const noise = 0.15 * (rng.float() - 0.5);
        images[base + y * size + x] = Math.min(1, Math.max(0, (on ? 0.9 : 0.1) + noise));
      }
    }
  }
  return { images, labels, n, size };
}
