// Paper Figure 2/5, the measurement: for the first held-out images, the tokenizer's codes, its
// reconstruction and, per mask ratio, a block-wise mask (BEiT's generator), the ViT's predicted
// codes at the masked positions (the tokenizer's codes elsewhere) decoded back to pixels, and the
// share of masked codes predicted right. The figure itself is drawn by the report layer
// (lib/report/masked_prediction.ts).

import { MaskingGenerator } from "../data/masking.ts";
import type { Beit } from "../models/beit.ts";
import type { Tokenizer } from "../models/tokenizer.ts";
import { Rng } from "../tensor/init.ts";
import { argmax, noGrad, readAll, type Tensor, tensor, tidy } from "../tensor/mod.ts";
import { maskSpec } from "../train/mim.ts";
import { failer } from "../io/errors.ts";
import { gpuImages, type HostSet, type ImageSpec, renormalise } from "./heldout.ts";
import { seedFor } from "./seeds.ts";

const fail: (what: string) => never = failer("masked prediction");

export interface MaskedColumn {
  ratio: number;
  /** 0/1 per image and patch (row-major grid), 1 where masked. */
  masks: Uint8Array;
  /** The decoded predictions, [0, 1] pixels [n, C, H, W]. */
  predicted: Float32Array;
}

export interface MaskedPrediction {
  /** [n, C, H, W] of every image array below. */
  shape: number[];
  /** The images and the tokenizer's reconstructions, [0, 1] pixels. */
  original: Float32Array;
  reconstruction: Float32Array;
  columns: MaskedColumn[];
  /** Per mask ratio (as a string), the share of masked codes predicted right. */
  maskedAcc: Record<string, number>;
  /** Pixels per token cell (the tokenizer's downsampling). */
  patch: number;
}

/** The masked-prediction figure's content for the first `images` of `val`. */
export async function maskedPrediction(
  beit: Beit,
  tok: Tokenizer,
  spec: ImageSpec,
  val: HostSet,
  { images, ratios, seed }: { images: number; ratios: readonly number[]; seed: number },
): Promise<MaskedPrediction> {
  const f = images;
  const [gh, gw] = beit.grid;
  const t = gh * gw;
  if (tok.info.grid[0] !== gh || tok.info.grid[1] !== gw) {
    fail(
      `the ViT's patch grid ${gh}×${gw} differs from the tokenizer's ${tok.info.grid.join("×")}`,
    );
  }
  const rng = new Rng(seedFor(seed, "mask figure"));
  const unit = (x: Tensor) => renormalise(x, tok.info.image, null);
  const [ids, original, recon] = noGrad(() =>
    tidy(() => {
      const x = gpuImages(val, 0, f, tok.info.image);
      const ids = tok.encode(x);
      return [ids, unit(x), unit(tok.decode(ids))];
    })
  );
  const [idsHost, origHost, reconHost] = await readAll([ids, original, recon]);
  const codes = new Int32Array(idsHost.buffer, idsHost.byteOffset, idsHost.length);
  const shape = [...original.shape];
  [original, recon].forEach((x) => x.dispose());
  const columns: MaskedColumn[] = [];
  const maskedAcc: Record<string, number> = {};
  try {
    for (const ratio of ratios) {
      const gen = new MaskingGenerator({ height: gh, width: gw, ...maskSpec([gh, gw], { ratio }) });
      const masks = gen.generateBatch(rng.fork(`ratio ${ratio}`), f);
      const where = [...masks.keys()].filter((i) => masks[i] === 1);
      const pred = noGrad(() =>
        tidy(() => {
          const x = gpuImages(val, 0, f, spec);
          const mask = tensor(Float32Array.from(masks), [f, t]);
          const logits = beit.mimLogits(x, mask, tensor(where, [where.length], "i32"));
          return argmax(logits, 1);
        })
      );
      const [predHost] = await readAll([pred]);
      pred.dispose();
      const predicted = Int32Array.from(codes);
      const p = new Int32Array(predHost.buffer, predHost.byteOffset, predHost.length);
      let hits = 0;
      where.forEach((pos, j) => {
        hits += p[j] === codes[pos] ? 1 : 0;
        predicted[pos] = p[j];
      });
      maskedAcc[String(ratio)] = where.length ? hits / where.length : 0;
      const decoded = noGrad(() => tidy(() => unit(tok.decode(tensor(predicted, [f, t], "i32")))));
      const [decodedHost] = await readAll([decoded]);
      decoded.dispose();
      columns.push({ ratio, masks: Uint8Array.from(masks), predicted: decodedHost });
    }
  } finally {
    ids.dispose();
  }
  return {
    shape,
    original: origHost,
    reconstruction: reconHost,
    columns,
    maskedAcc,
    patch: tok.downsampleFactor,
  };
}
