// GELU in its exact erf form (PyTorch's nn.GELU default) and its derivative, shared by the
// elementwise kernels and the matmul epilogues (prepended to their sources).

const SQRT_HALF: f32 = 0.70710678118654752;
const INV_SQRT_2PI: f32 = 0.39894228040143268;

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): WGSL has no erf, and GELU needs it.
fn erf(v: f32) -> f32 {
  let s = sign(v);
  let a = abs(v);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return s * (1.0 - poly * exp(-a * a));
}

fn gelu_f(v: f32) -> f32 {
  return 0.5 * v * (1.0 + erf(v * SQRT_HALF));
}

// d gelu(v) / dv.
fn gelu_df(v: f32) -> f32 {
  return 0.5 * (1.0 + erf(v * SQRT_HALF)) + v * INV_SQRT_2PI * exp(-0.5 * v * v);
}
