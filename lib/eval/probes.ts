// Linear probes of the evaluate stage: on each image's average-pooled quantized codewords (paper
// Table 4: how semantic a tokenizer's codes are) and on the frozen ViT's mean patch token at every
// block (BEiT's linear probing). Features come from the first `train` images of the train split and
// the first held-out images; the probe's initialisation and batch order derive from the arm's seed.

import type { Beit } from "../models/beit.ts";
import type { Tokenizer } from "../models/tokenizer.ts";
import { mean, noGrad, slice } from "../tensor/mod.ts";
import { extractFeatures, type ProbeResult, trainLinearProbe } from "../train/probe.ts";
import { gpuImages, type HostSet, type ImageSpec, type OnProgress } from "./heldout.ts";
import { seedFor } from "./seeds.ts";

export interface ProbeConfig {
  /** Training images of every probe (the first of the train split). */
  trainImages: number;
  epochs: number;
  batch: number;
  lr: number;
  weightDecay: number;
  /** Share of the probe's training images held back to choose the best ViT block. */
  selectFraction: number;
}

export interface ProbeData {
  /** The probes' training images (at least `trainImages`) and the held-out images. */
  train: HostSet;
  val: HostSet;
  /** Held-out images scored. */
  evalImages: number;
  classes: number;
  /** Images per feature-extraction chunk. */
  batch: number;
}

function probeOptions(config: ProbeConfig, seed: number) {
  return {
    epochs: config.epochs,
    batchSize: config.batch,
    lr: config.lr,
    weightDecay: config.weightDecay,
    seed,
  };
}

/** Paper Table 4: a linear probe on each image's average-pooled quantized codewords. */
export async function codewordProbe(
  tok: Tokenizer,
  data: ProbeData,
  config: ProbeConfig,
  seed: number,
  onProgress?: OnProgress,
): Promise<ProbeResult> {
  const spec = tok.info.image;
  const nTrain = config.trainImages, nVal = data.evalImages;
  const pooled = (set: HostSet, offset: number) => (from: number, to: number) => {
    const ids = tok.encode(gpuImages(set, from, to, spec));
    onProgress?.(offset + to);
    return mean(tok.codewords(ids), 1);
  };
  const [train] = extractFeatures(nTrain, data.batch, pooled(data.train, 0));
  const [val] = extractFeatures(nVal, data.batch, pooled(data.val, nTrain));
  try {
    return await trainLinearProbe(
      { features: train, labels: data.train.labels.subarray(0, nTrain) },
      { features: val, labels: data.val.labels.subarray(0, nVal) },
      data.classes,
      probeOptions(config, seedFor(seed, "codeword probe")),
    );
  } finally {
    train.dispose();
    val.dispose();
  }
}

export interface BlockProbe {
  /** 1-based block. */
  block: number;
  /** Top-1 on the held-back share of the probe's training images (chooses the best block). */
  select: number;
  /** Top-1 on the held-out images. */
  val: number;
}

export interface VitProbes {
  /** Held-out top-1 of the last block's probe. */
  last: number;
  /** Per held-out image, 1 where the last block's probe is right. */
  outcomes: Uint8Array;
  best: BlockProbe;
  perBlock: BlockProbe[];
}

/** Linear probes of the frozen ViT on mean-pooled patch tokens of every block. */
export async function vitProbes(
  beit: Beit,
  spec: ImageSpec,
  data: ProbeData,
  config: ProbeConfig,
  seed: number,
  onProgress?: OnProgress,
): Promise<VitProbes> {
  const nTrain = config.trainImages, nVal = data.evalImages;
  const depth = beit.config.depth;
  const blockFeatures = (set: HostSet, offset: number) => (from: number, to: number) => {
    const { blocks } = beit.features(gpuImages(set, from, to, spec), null, { allBlocks: true });
    onProgress?.(offset + to);
    return blocks!.map((b) => mean(slice(b, 1, 1, b.shape[1]), 1));
  };
  const train = extractFeatures(nTrain, data.batch, blockFeatures(data.train, 0));
  const val = extractFeatures(nVal, data.batch, blockFeatures(data.val, nTrain));
  // The best block is chosen on training images held back from the probe, not on val.
  const fit = Math.round(nTrain * (1 - config.selectFraction));
  const labels = data.train.labels;
  const perBlock: BlockProbe[] = [];
  let lastOutcomes: Uint8Array = new Uint8Array(0);
  try {
    for (let i = 0; i < depth; i++) {
      const [fitF, selF] = noGrad(() => [
        slice(train[i], 0, 0, fit),
        slice(train[i], 0, fit, nTrain),
      ]);
      try {
        const options = probeOptions(config, seedFor(seed, `vit probe ${i}`));
        const fitSet = { features: fitF, labels: labels.subarray(0, fit) };
        const sel = await trainLinearProbe(
          fitSet,
          { features: selF, labels: labels.subarray(fit, nTrain) },
          data.classes,
          options,
        );
        const onVal = await trainLinearProbe(
          fitSet,
          { features: val[i], labels: data.val.labels.subarray(0, nVal) },
          data.classes,
          options,
        );
        perBlock.push({ block: i + 1, select: sel.accuracy, val: onVal.accuracy });
        lastOutcomes = onVal.outcomes;
      } finally {
        fitF.dispose();
        selF.dispose();
      }
      onProgress?.(nTrain + nVal + i + 1);
    }
  } finally {
    [...train, ...val].forEach((t) => t.dispose());
  }
  const best = perBlock.reduce((b, p) => (p.select > b.select ? p : b), perBlock[0]);
  return { last: perBlock[depth - 1].val, outcomes: lastOutcomes, best, perBlock };
}
