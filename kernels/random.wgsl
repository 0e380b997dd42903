// Counter-based random numbers: every value is a pure hash of (seed, counter), so a kernel needs
// no generator state, any element can be recomputed anywhere (dropout's backward regenerates its
// mask instead of storing it), and the same seed always gives the same numbers on any grid.

override WG: u32 = 256;
// random_fill: 0 uniform in [a, b), 1 normal with mean a and standard deviation b.
override DIST: u32 = 0;

// PCG's RXS-M-XS output permutation of an LCG step (Jarzynski & Olano, "Hash Functions for GPU
// Rendering", 2020): a bijection of u32 with good avalanche at the cost of a few integer ops.
fn pcg(v: u32) -> u32 {
  let state = v * 747796405u + 2891336453u;
  let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// The random word of counter i under seed s. For a fixed seed it is a bijection of i (no two
// counters collide), and the seed is hashed apart from the counter so that nearby seeds do not
// give shifted copies of one stream.
fn random_u32(s: u32, i: u32) -> u32 {
  return pcg(pcg(s) ^ pcg(i ^ 0x9e3779b9u));
}

// A float in [0, 1) with 24 random bits (every value exactly representable).
fn unit(h: u32) -> f32 {
  return f32(h >> 8u) * (1.0 / 16777216.0);
}

fn index(gid: vec3u, nwg: vec3u) -> u32 {
  return gid.x + gid.y * nwg.x * WG;
}

struct Fill { n: u32, seed: u32, a: f32, b: f32 }

@group(0) @binding(0) var<storage, read_write> fill_out: array<f32>;
@group(0) @binding(1) var<uniform> fp: Fill;

const TWO_PI: f32 = 6.28318530717958648;

@compute @workgroup_size(WG)
fn random_fill(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= fp.n) { return; }
  if (DIST == 0u) {
    fill_out[i] = fp.a + (fp.b - fp.a) * unit(random_u32(fp.seed, i));
    return;
  }
  // Box-Muller: elements 2j and 2j+1 are the cosine and sine halves of one pair of uniforms, two
  // independent normals; 1 - u lies in (0, 1], so the log is finite.
  let pair = i >> 1u;
  let u1 = 1.0 - unit(random_u32(fp.seed, 2u * pair));
  let u2 = unit(random_u32(fp.seed, 2u * pair + 1u));
  let radius = sqrt(-2.0 * log(u1));
  let angle = TWO_PI * u2;
  let normal = select(cos(angle), sin(angle), (i & 1u) == 1u);
  fill_out[i] = fp.a + fp.b * radius * normal;
}

// out = x · mask · scale, the mask drawn per group of `group` consecutive elements (1 for dropout;
// a whole sample for drop-path): a group survives when its random word is ≥ threshold, that is
// with probability 1 − threshold / 2^32. The backward pass runs the same kernel on the gradient.
struct Drop { n: u32, group: u32, seed: u32, threshold: u32, scale: f32 }

@group(0) @binding(0) var<storage, read> drop_x: array<f32>;
@group(0) @binding(1) var<storage, read_write> drop_out: array<f32>;
@group(0) @binding(2) var<uniform> dp: Drop;

@compute @workgroup_size(WG)
fn random_drop(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let i = index(gid, nwg);
  if (i >= dp.n) { return; }
  let keep = random_u32(dp.seed, i / dp.group) >= dp.threshold;
  drop_out[i] = select(0.0, drop_x[i] * dp.scale, keep);
}
