// MoCo v3 training of the built-in perceptual network (lib/models/moco.ts): the training step
// (two augmented views of a batch, the symmetric InfoNCE loss, AdamW, the momentum encoder's
// update) and the k-NN monitor of its frozen features on held-out images.

import {
  type AugmentConfig,
  augmentViews,
  sampleAugmentations,
  uploadPixels,
  type ViewSpec,
} from "../data/augment.ts";
import { Loader, shardSource } from "../data/loader.ts";
import type { SplitReader } from "../data/shards.ts";
import { type MocoEncoder, type MocoV3, momentumAt, normalizeRows } from "../models/moco.ts";
import type { AdamW } from "../optim/adam.ts";
import type { Rng } from "../tensor/init.ts";
import { backward, concat, noGrad, readAll, type Tensor, tidy } from "../tensor/mod.ts";

/** The names of the scalars mocoStep returns. */
export const MOCO_STEP_TERMS = ["loss"] as const;

/** A view [N, C, h, w] (already in [−1, 1]) as the encoder's [N, 3, h, w]: grey repeated. */
export function toEncoderInput(view: Tensor): Tensor {
  return view.shape[1] === 1 ? concat([view, view, view], 1) : view;
}

/** View normalisation mapping [0, 1] to [−1, 1], the range of PerceptualNet inputs. */
export function signedView(height: number, width: number, channels: number): ViewSpec {
  return {
    height,
    width,
    mean: Array(channels).fill(0.5),
    std: Array(channels).fill(0.5),
  };
}

/** What one MoCo step needs. */
export interface MocoStepContext {
  model: MocoV3;
  optimizer: AdamW;
  /** InfoNCE temperature. */
  tau: number;
  /** Base momentum of the momentum encoder (cosine schedule to 1 over `steps`). */
  momentum: number;
  steps: number;
  /** The augmentations of step s are drawn from rng.fork(`augment ${s}`). */
  rng: Rng;
  augment: AugmentConfig;
  /** The images' geometry and the views' size and normalisation. */
  image: { channels: number; height: number; width: number };
  view: ViewSpec;
}

/**
 * One training step on a host batch of n uint8 images (call it inside `tidy`): two independent
 * augmentations of each image rendered on the GPU, the symmetric InfoNCE loss, backward, AdamW,
 * then the momentum encoder follows. Returns [loss].
 */
export function mocoStep(
  c: MocoStepContext,
  pixels: Uint8Array,
  n: number,
  step: number,
): Tensor[] {
  const { channels, height, width } = c.image;
  const augRng = c.rng.fork(`augment ${step}`);
  const augs = [0, 1].map((v) =>
    sampleAugmentations(augRng.fork(`view ${v}`), n, height, width, c.augment)
  );
  const upload = uploadPixels(pixels, n, channels, height, width);
  const [x1, x2] = augs.map((a) => toEncoderInput(augmentViews(upload, a, [c.view])[0]));
  const loss = c.model.loss(x1, x2, c.tau);
  backward(loss);
  c.optimizer.step();
  c.optimizer.zeroGrad();
  c.model.updateMomentum(momentumAt(step, c.steps, c.momentum));
  return [loss];
}

/** Unit-length embeddings [n, dim] of up to `limit` images of a split (storage order). */
export async function embedSplit(
  encoder: MocoEncoder,
  split: SplitReader,
  limit: number,
  [h, w]: [number, number],
): Promise<{ features: Float32Array; labels: Int32Array; n: number; dim: number }> {
  const n = Math.min(limit, split.count);
  const dim = encoder.dim;
  const features = new Float32Array(n * dim);
  const labels = new Int32Array(n);
  const loader = new Loader(shardSource(split), {
    batchSize: 250,
    seed: 0,
    shuffle: false,
    dropLast: false,
  });
  const C = split.channels;
  let done = 0;
  for await (const batch of loader.epoch(0)) {
    const take = Math.min(batch.n, n - done);
    const emb = noGrad(() =>
      tidy(() => {
        const views = loader.toGpu(batch, [signedView(h, w, C)]);
        return normalizeRows(encoder.embed(toEncoderInput(views.views[0])));
      })
    );
    const [values] = await readAll([emb]);
    emb.dispose();
    features.set(values.subarray(0, take * dim), done * dim);
    labels.set(batch.labels.subarray(0, take), done);
    done += take;
    if (done >= n) break;
  }
  return { features, labels, n, dim };
}

/**
 * k-NN accuracy with cosine similarity and votes weighted by exp(s / T) (the usual monitor of
 * self-supervised features, Wu et al. 2018): the fraction of queries whose top class is right.
 */
export function knnAccuracy(
  bank: { features: Float32Array; labels: Int32Array; n: number; dim: number },
  query: { features: Float32Array; labels: Int32Array; n: number },
  k: number,
  temperature: number,
): number {
  const { dim } = bank;
  const classes = Math.max(...bank.labels, ...query.labels) + 1;
  const sims = new Float32Array(bank.n);
  let correct = 0;
  for (let q = 0; q < query.n; q++) {
    const qf = query.features.subarray(q * dim, (q + 1) * dim);
    for (let b = 0; b < bank.n; b++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += qf[d] * bank.features[b * dim + d];
      sims[b] = s;
    }
    // Top-k by partial selection over indices (k is small).
    const top: number[] = [];
    for (let b = 0; b < bank.n; b++) {
      if (top.length < k) {
        top.push(b);
        top.sort((x, y) => sims[y] - sims[x]);
      } else if (sims[b] > sims[top[k - 1]]) {
        top[k - 1] = b;
        top.sort((x, y) => sims[y] - sims[x]);
      }
    }
    const votes = new Float64Array(classes);
    for (const b of top) votes[bank.labels[b]] += Math.exp(sims[b] / temperature);
    let best = 0;
    for (let c = 1; c < classes; c++) if (votes[c] > votes[best]) best = c;
    if (best === query.labels[q]) correct++;
  }
  return correct / query.n;
}
