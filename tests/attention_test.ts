import { assertClose, checkGrad, randArray, runOp } from "./util.ts";
import * as T from "../lib/tensor/mod.ts";
import assert, { throws } from "node:assert/strict";
import { forceVariant } from "../lib/gpu/autotune.ts";
import { gpu } from "../lib/gpu/device.ts";

const [B, H, T_, S, D] = [2, 3, 5, 7, 3];

/** float64 softmax(q·kᵀ·scale + bias)·v; bias of shape `biasShape` broadcast to [B,H,T,S]. */
function attentionRef(
  q: number[],
  k: number[],
  v: number[],
  scale: number,
  bias?: { data: number[]; shape: number[] },
): number[] {
  const out: number[] = [];
  const biasAt = (b: number, h: number, t: number, s: number) => {
    if (!bias) return 0;
    const full = [...Array(4 - bias.shape.length).fill(1), ...bias.shape];
    const idx = [b, h, t, s].map((c, i) => (full[i] === 1 ? 0 : c));
    return bias.data[((idx[0] * full[1] + idx[1]) * full[2] + idx[2]) * full[3] + idx[3]];
  };
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const head = b * H + h;
      for (let t = 0; t < T_; t++) {
        const scores: number[] = [];
        for (let s = 0; s < S; s++) {
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[(head * T_ + t) * D + d] * k[(head * S + s) * D + d];
          scores.push(dot * scale + biasAt(b, h, t, s));
        }
        const max = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - max));
        const sum = e.reduce((x, y) => x + y, 0);
        for (let d = 0; d < D; d++) {
          let acc = 0;
          for (let s = 0; s < S; s++) acc += (e[s] / sum) * v[(head * S + s) * D + d];
          out.push(acc);
        }
      }
    }
  }
  return out;
}

const qIn = { data: randArray(B * H * T_ * D, 1, -1.5, 1.5), shape: [B, H, T_, D] };
const kIn = { data: randArray(B * H * S * D, 2, -1.5, 1.5), shape: [B, H, S, D] };
const vIn = { data: randArray(B * H * S * D, 3), shape: [B, H, S, D] };

Deno.test("attention forward: default scale, custom scale, no bias", async () => {
  const out = await runOp((q, k, v) => T.attention(q, k, v), [qIn, kIn, vIn]);
  assertClose(out.shape, [B, H, T_, D], { what: "attention shape" });
  const ref = attentionRef(qIn.data, kIn.data, vIn.data, 1 / Math.sqrt(D));
  assertClose(out.data, ref, { what: "attention, default scale" });
  const scaled = await runOp((q, k, v) => T.attention(q, k, v, { scale: 0.7 }), [qIn, kIn, vIn]);
  assertClose(scaled.data, attentionRef(qIn.data, kIn.data, vIn.data, 0.7), { what: "scale 0.7" });
});

// A relative-position bias shared by the batch, and a key mask per sample.
const biases = [
  { data: randArray(H * T_ * S, 4), shape: [H, T_, S] },
  { data: Array.from({ length: B * S }, (_, i) => (i % 3 === 1 ? -1e4 : 0)), shape: [B, 1, 1, S] },
];

Deno.test("attention forward with a broadcast bias ([H,T,S] and a [B,1,1,S] key mask)", async () => {
  for (const bias of biases) {
    const out = await runOp((q, k, v, b) => T.attention(q, k, v, { bias: b }), [
      qIn,
      kIn,
      vIn,
      bias,
    ]);
    const ref = attentionRef(qIn.data, kIn.data, vIn.data, 1 / Math.sqrt(D), bias);
    assertClose(out.data, ref, { what: `attention, bias [${bias.shape}]` });
  }
});

Deno.test("attention backward: gradients of q, k, v and the bias", async () => {
  const bias = biases[0];
  const scale = 1 / Math.sqrt(D);
  await checkGrad(
    (q, k, v, b) => T.attention(q, k, v, { bias: b }),
    (q, k, v, b) => attentionRef(q, k, v, scale, { data: b, shape: bias.shape }),
    [qIn, kIn, vIn, bias],
  );
  // Without bias, and with the mask (no gradient wanted for it).
  await checkGrad(
    (q, k, v) => T.attention(q, k, v, { scale: 0.5 }),
    (q, k, v) => attentionRef(q, k, v, 0.5),
    [qIn, kIn, vIn],
  );
  await checkGrad(
    (q, k, v, b) => T.attention(q, k, v, { bias: b }),
    (q, k, v) => attentionRef(q, k, v, scale, biases[1]),
    [qIn, kIn, vIn, biases[1]],
    { which: [0, 1, 2] },
  );
});

Deno.test("attention rejects mismatched shapes with clear errors", () => {
  const z = (...shape: number[]) => T.zeros(shape);
  T.tidy(() => {
    throws(
      () => T.attention(z(2, 5, 3), z(2, 7, 3), z(2, 7, 3)),
      /peco: attention: q, k and v must be \[B, H, len, D\]/,
    );
    throws(
      () => T.attention(z(2, 3, 5, 4), z(2, 3, 7, 3), z(2, 3, 7, 3)),
      /peco: attention: shapes do not match: q \[2,3,5,4\]/,
    );
    throws(() => T.attention(z(2, 3, 5, 3), z(2, 3, 7, 3), z(2, 3, 6, 3)), /shapes do not match/);
    throws(
      () => T.attention(z(2, 3, 5, 3), z(2, 3, 7, 3), z(2, 3, 7, 3), { bias: z(4, 5, 7) }),
      /peco: attention: bias \[4,5,7\] does not broadcast to scores \[2,3,5,7\]/,
    );
  });
});

// ---- attentionPacked: q, k, v packed as [3, B, H, T, D] --------------------------------------

/** float64 self-attention of packed qkv [3, b, h, t, d] (the keys are the queries' positions). */
function packedRef(qkv: number[], [b, h, t, d]: number[], scale: number): number[] {
  const n = b * h * t * d;
  const [q, k, v] = [0, 1, 2].map((i) => qkv.slice(i * n, (i + 1) * n));
  const out: number[] = [];
  for (let z = 0; z < b * h; z++) {
    for (let i = 0; i < t; i++) {
      const scores = Array.from({ length: t }, (_, j) => {
        let dot = 0;
        for (let c = 0; c < d; c++) dot += q[(z * t + i) * d + c] * k[(z * t + j) * d + c];
        return dot * scale;
      });
      const max = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - max));
      const sum = e.reduce((x, y) => x + y, 0);
      for (let c = 0; c < d; c++) {
        let acc = 0;
        for (let j = 0; j < t; j++) acc += (e[j] / sum) * v[(z * t + j) * d + c];
        out.push(acc);
      }
    }
  }
  return out;
}

// [2, 2, 5, 16]: each part is 320 floats (a 256-byte multiple): every variant runs as named.
// [1, 3, 7, 8]: the fused kernels fit (D a multiple of 4), the packed views do not (168 floats).
// [1, 3, 5, 3]: only the slices fit, whatever is forced.
for (const dims of [[2, 2, 5, 16], [1, 3, 7, 8], [1, 3, 5, 3]]) {
  for (const variant of ["fused", "packed", "composed"]) {
    Deno.test(`attentionPacked [3,${dims}] (${variant}): forward and backward`, async () => {
      const qkv = {
        data: randArray(3 * dims.reduce((a, b) => a * b), 7, -1.5, 1.5),
        shape: [3, ...dims],
      };
      forceVariant("attentionPacked", variant);
      try {
        const out = await runOp((x) => T.attentionPacked(x), [qkv]);
        assertClose(out.shape, dims, { what: "shape" });
        const scale = 1 / Math.sqrt(dims[3]);
        assertClose(out.data, packedRef(qkv.data, dims, scale), { what: "attentionPacked" });
        await checkGrad(
          (x) => T.attentionPacked(x, { scale: 0.6 }),
          (x) => packedRef(x, dims, 0.6),
          [qkv],
        );
      } finally {
        forceVariant("attentionPacked", null);
      }
    });
  }
}

Deno.test("attentionPacked: the packed path takes fewer dispatches than three slices", () => {
  const count = (variant: string) => {
    forceVariant("attentionPacked", variant);
    try {
      return T.tidy(() => {
        const x = T.normal([3, 2, 2, 5, 16], 1);
        x.requiresGrad = true;
        const before = gpu().recorder.dispatches;
        T.backward(T.sum(T.attentionPacked(x)));
        return gpu().recorder.dispatches - before;
      });
    } finally {
      forceVariant("attentionPacked", null);
    }
  };
  const [packed, composed] = [count("packed"), count("composed")];
  assert.ok(packed < composed, `packed ${packed} dispatches, composed ${composed}`);
});

Deno.test("attentionPacked rejects a tensor that is not [3, B, H, T, D]", () => {
  T.tidy(() => {
    throws(
      () => T.attentionPacked(T.zeros([2, 1, 2, 5, 4])),
      /peco: attentionPacked: qkv must be \[3, B, H, T, D\]/,
    );
  });
});

// ---- selfAttention: a qkv projection's output [B, T, 3, H, D] as it is -------------------------

/** [B, T, 3, H, D] → [3, B, H, T, D] (float64, for the reference). */
function tokensToHeads(x: number[], [b, t, h, d]: number[]): number[] {
  const out = new Array(x.length);
  for (let bi = 0; bi < b; bi++) {
    for (let ti = 0; ti < t; ti++) {
      for (let p = 0; p < 3; p++) {
        for (let hi = 0; hi < h; hi++) {
          for (let di = 0; di < d; di++) {
            out[((((p * b + bi) * h + hi) * t + ti) * d) + di] =
              x[((((bi * t + ti) * 3 + p) * h + hi) * d) + di];
          }
        }
      }
    }
  }
  return out;
}

/** float64 selfAttention: [B, T, 3, H, D] → [B, T, H, D]. */
function tokensRef(x: number[], [b, t, h, d]: number[], scale: number): number[] {
  const heads = packedRef(tokensToHeads(x, [b, t, h, d]), [b, h, t, d], scale);
  const out: number[] = [];
  for (let bi = 0; bi < b; bi++) {
    for (let ti = 0; ti < t; ti++) {
      for (let hi = 0; hi < h; hi++) {
        for (let di = 0; di < d; di++) out.push(heads[((bi * h + hi) * t + ti) * d + di]);
      }
    }
  }
  return out;
}

// [B, T, H, D]: [2, 5, 2, 16] (every variant runs as named), [1, 7, 3, 8] (fused, not packed),
// [2, 3, 2, 3] (slices only).
for (const [b, t, h, d] of [[2, 5, 2, 16], [1, 7, 3, 8], [2, 3, 2, 3]]) {
  for (const variant of ["fused", "packed", "composed"]) {
    Deno.test(`selfAttention [${b},${t},3,${h},${d}] (${variant}): forward and backward`, async () => {
      const qkv = { data: randArray(b * t * 3 * h * d, 11, -1.5, 1.5), shape: [b, t, 3, h, d] };
      forceVariant("attentionPacked", variant);
      try {
        const out = await runOp((x) => T.selfAttention(x), [qkv]);
        assertClose(out.shape, [b, t, h, d], { what: "shape" });
        const ref = tokensRef(qkv.data, [b, t, h, d], 1 / Math.sqrt(d));
        assertClose(out.data, ref, { what: "selfAttention" });
        await checkGrad(
          (x) => T.selfAttention(x, { scale: 0.6 }),
          (x) => tokensRef(x, [b, t, h, d], 0.6),
          [qkv],
        );
      } finally {
        forceVariant("attentionPacked", null);
      }
    });
  }
}

Deno.test("selfAttention rejects a tensor that is not [B, T, 3, H, D]", () => {
  T.tidy(() => {
    throws(
      () => T.selfAttention(T.zeros([2, 5, 2, 1, 4])),
      /peco: selfAttention: qkv must be \[B, T, 3, H, D\]/,
    );
  });
});
