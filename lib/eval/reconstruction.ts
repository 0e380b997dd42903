// Reconstruction quality of a tokenizer on the held-out images (paper Table 4): PSNR and SSIM of
// its reconstructions on [0, 1] pixels, and their classification by the classifier trained on real
// images (lib/eval/real_classifier.ts), kept per image.

import { flush } from "../tensor/engine.ts";
import type { Tokenizer } from "../models/tokenizer.ts";
import { argmax, noGrad, readAll, type Tensor, tidy } from "../tensor/mod.ts";
import { meanPsnr, perImageMse } from "../train/psnr.ts";
import { ssimPerImage } from "../train/ssim.ts";
import { fractionCorrect } from "../train/probe.ts";
import { gpuImages, type HostSet, type OnProgress, renormalise } from "./heldout.ts";
import type { RealClassifier } from "./real_classifier.ts";

export interface ReconstructionQuality {
  /** Mean PSNR (dB) over images, from the per-image MSE. */
  psnr: number;
  ssim: number;
  /** Top-1 of the real-image classifier on the reconstructions. */
  accuracy: number;
  /** Per image, 1 where the reconstruction is classified as the image's label. */
  outcomes: Uint8Array;
}

/** Reconstructs the first `n` images of `val` in chunks of `batch` and scores them. */
export async function reconstructionQuality(
  tok: Tokenizer,
  val: HostSet,
  n: number,
  batch: number,
  classifier: RealClassifier,
  onProgress?: OnProgress,
): Promise<ReconstructionQuality> {
  const spec = tok.info.image;
  const mses: Tensor[] = [];
  const ssims: Tensor[] = [];
  const predictions: Tensor[] = [];
  classifier.model.eval();
  try {
    for (let from = 0; from < n; from += batch) {
      const to = Math.min(n, from + batch);
      const [mse, ssim, pred] = noGrad(() =>
        tidy(() => {
          const x = gpuImages(val, from, to, spec);
          const xhat = tok.decode(tok.encode(x));
          const [a, b] = [renormalise(x, spec, null), renormalise(xhat, spec, null)];
          const logits = classifier.model.forward(renormalise(xhat, spec, classifier.spec));
          return [perImageMse(b, a), ssimPerImage(b, a, { dataRange: 1 }), argmax(logits, 1)];
        })
      );
      mses.push(mse);
      ssims.push(ssim);
      predictions.push(pred);
      flush();
      onProgress?.(to);
    }
    const values = await readAll([...mses, ...ssims, ...predictions]);
    const k = mses.length;
    const mseAll = values.slice(0, k).flatMap((v) => [...v]);
    const ssimAll = values.slice(k, 2 * k).flatMap((v) => [...v]);
    const outcomes = new Uint8Array(n);
    let at = 0;
    for (const v of values.slice(2 * k)) {
      for (const p of new Int32Array(v.buffer, v.byteOffset, v.length)) {
        outcomes[at] = p === val.labels[at] ? 1 : 0;
        at++;
      }
    }
    return {
      psnr: meanPsnr(mseAll, 1),
      ssim: ssimAll.reduce((s, v) => s + v, 0) / ssimAll.length,
      accuracy: fractionCorrect(outcomes),
      outcomes,
    };
  } finally {
    [...mses, ...ssims, ...predictions].forEach((t) => t.dispose());
  }
}
