//! The building blocks shared by both towers (linear, LayerNorm, RMSNorm, tanh-GELU) and the
//! parameter visitor that names every tensor as Hugging Face does.
//!
//! Sizes are runtime values (dfdx's own layers fix them at compile time), activations are
//! `[rows, features]` matrices, and every forward is generic over the tape so the same code
//! serves training (`OwnedTape`) and inference (`NoneTape`).

use dfdx::prelude::*;
use rand::Rng;
use rand_distr::{Distribution, Normal};

use crate::{Dev, Matrix, Vector};

/// A parameter seen through [`Params::visit`].
#[derive(Clone, Copy)]
pub enum ParamRef<'a> {
    Vector(&'a Vector),
    Matrix(&'a Matrix),
}

/// A parameter seen through [`Params::visit_mut`].
pub enum ParamMut<'a> {
    Vector(&'a mut Vector),
    Matrix(&'a mut Matrix),
}

impl ParamRef<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamRef::Vector(t) => vec![t.shape().0],
            ParamRef::Matrix(t) => vec![t.shape().0, t.shape().1],
        }
    }
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            ParamRef::Vector(t) => t.as_vec(),
            ParamRef::Matrix(t) => t.as_vec(),
        }
    }
    /// This parameter's gradient (zeros where the backward pass gave it none).
    pub fn grad(&self, grads: &mut crate::Gradients) -> Vec<f32> {
        match self {
            ParamRef::Vector(t) => {
                grads.get_or_alloc_mut(*t).expect("alloc");
                grads.get(*t).as_vec()
            }
            ParamRef::Matrix(t) => {
                grads.get_or_alloc_mut(*t).expect("alloc");
                grads.get(*t).as_vec()
            }
        }
    }
}

impl ParamMut<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            ParamMut::Vector(t) => vec![t.shape().0],
            ParamMut::Matrix(t) => vec![t.shape().0, t.shape().1],
        }
    }
    /// Overwrites the values (row-major); the length must match.
    pub fn copy_from(&mut self, data: &[f32]) {
        match self {
            ParamMut::Vector(t) => t.copy_from(data),
            ParamMut::Matrix(t) => t.copy_from(data),
        }
    }
}

/// Something holding named parameters. Names are joined with `.`, as in PyTorch.
pub trait Params {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>));
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>));

    /// Every parameter with its full name, in a fixed order.
    fn named_params(&self) -> Vec<(String, ParamRef<'_>)> {
        let mut out = Vec::new();
        self.visit("", &mut |n, p| out.push((n.to_string(), p)));
        out
    }
    /// Number of scalars in all parameters.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.visit("", &mut |_, p| n += p.shape().iter().product::<usize>());
        n
    }
}

pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Params for Vector {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        f(prefix, ParamRef::Vector(self))
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        f(prefix, ParamMut::Vector(self))
    }
}

impl Params for Matrix {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        f(prefix, ParamRef::Matrix(self))
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        f(prefix, ParamMut::Matrix(self))
    }
}

impl<P: Params> Params for Option<P> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        if let Some(p) = self {
            p.visit(prefix, f)
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        if let Some(p) = self {
            p.visit_mut(prefix, f)
        }
    }
}

impl<P: Params> Params for Vec<P> {
    fn visit<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, ParamRef<'a>)) {
        for (i, p) in self.iter().enumerate() {
            p.visit(&join(prefix, &i.to_string()), f)
        }
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        for (i, p) in self.iter_mut().enumerate() {
            p.visit_mut(&join(prefix, &i.to_string()), f)
        }
    }
}

/// Implements [`Params`] for a struct from a list of `"hf_name" => field`.
macro_rules! impl_params {
    ($ty:ty { $($name:literal => $field:ident),* $(,)? }) => {
        impl $crate::layers::Params for $ty {
            fn visit<'a>(
                &'a self,
                prefix: &str,
                f: &mut dyn FnMut(&str, $crate::layers::ParamRef<'a>),
            ) {
                $( $crate::layers::Params::visit(&self.$field, &$crate::layers::join(prefix, $name), f); )*
            }
            fn visit_mut(
                &mut self,
                prefix: &str,
                f: &mut dyn FnMut(&str, $crate::layers::ParamMut<'_>),
            ) {
                $( $crate::layers::Params::visit_mut(&mut self.$field, &$crate::layers::join(prefix, $name), f); )*
            }
        }
    };
}
pub(crate) use impl_params;

/// How a new weight matrix `[out, in]` is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Draw {
    /// N(0, `Init::std`): transformers' default, and Gemma's.
    Normal,
    /// U(-a, a) with a = sqrt(6 / (in + out)): SigLIP's attention and MLP weights.
    XavierUniform,
    /// Normal of variance 1 / in, truncated at two deviations: SigLIP's patch embedding.
    LecunNormal,
}

/// Random initialisation, as transformers does for new models.
pub(crate) struct Init<'a, R: Rng> {
    pub dev: &'a Dev,
    pub rng: &'a mut R,
    /// Standard deviation of [`Draw::Normal`] weights (`initializer_range`, 0.02).
    pub std: f32,
}

/// Tensors past this many values are drawn in parallel from a counter-based hash, uniform with
/// the distribution's variance, so that a 3B-parameter model initialises in seconds.
const PARALLEL_DRAW: usize = 1 << 20;

/// The standard deviation of a unit normal cut at +-2 deviations.
const TRUNCATED_AT_TWO_STD: f32 = 0.879_625_7;

impl<R: Rng> Init<'_, R> {
    /// Zero-mean noise of standard deviation `std`.
    pub fn normal(&mut self, rows: usize, cols: usize, std: f32) -> Matrix {
        self.normal_within(rows, cols, std, f32::INFINITY)
    }

    /// Uniform noise in [-bound, bound).
    pub fn uniform(&mut self, rows: usize, cols: usize, bound: f32) -> Matrix {
        let n = rows * cols;
        let v: Vec<f32> = if n <= PARALLEL_DRAW {
            (0..n).map(|_| self.rng.gen_range(-bound..bound)).collect()
        } else {
            use rayon::prelude::*;
            let key: u64 = self.rng.r#gen();
            (0..n as u64)
                .into_par_iter()
                .map(|i| {
                    // splitmix64 of (key, i) -> uniform in [-bound, bound)
                    let mut z = key.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    z ^= z >> 31;
                    ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound
                })
                .collect()
        };
        self.dev.tensor_from_vec(v, (rows, cols))
    }

    /// Normal noise of standard deviation `std` after truncation at +-2 deviations (drawn
    /// wider by 1 / [`TRUNCATED_AT_TWO_STD`], and redrawn past it).
    pub fn truncated_normal(&mut self, rows: usize, cols: usize, std: f32) -> Matrix {
        let wide = std / TRUNCATED_AT_TWO_STD;
        self.normal_within(rows, cols, wide, 2.0 * wide)
    }

    /// N(0, `draw_std`) redrawn past +-`limit`; past [`PARALLEL_DRAW`] values, uniform with the
    /// variance the caller asked for.
    fn normal_within(&mut self, rows: usize, cols: usize, draw_std: f32, limit: f32) -> Matrix {
        if rows * cols > PARALLEL_DRAW {
            let std = if limit.is_finite() {
                draw_std * TRUNCATED_AT_TWO_STD
            } else {
                draw_std
            };
            return self.uniform(rows, cols, std * 3f32.sqrt());
        }
        let d = Normal::new(0.0f32, draw_std).expect("std");
        let v = (0..rows * cols)
            .map(|_| {
                loop {
                    let x = d.sample(self.rng);
                    if x.abs() <= limit {
                        break x;
                    }
                }
            })
            .collect();
        self.dev.tensor_from_vec(v, (rows, cols))
    }

    /// A weight `[out, in]` (rows = out).
    pub fn weight(&mut self, rows: usize, cols: usize, draw: Draw) -> Matrix {
        match draw {
            Draw::Normal => {
                let std = self.std;
                self.normal(rows, cols, std)
            }
            Draw::XavierUniform => self.uniform(rows, cols, (6.0 / (rows + cols) as f32).sqrt()),
            Draw::LecunNormal => self.truncated_normal(rows, cols, 1.0 / (cols as f32).sqrt()),
        }
    }

    pub fn constant(&mut self, n: usize, value: f32) -> Vector {
        self.dev.tensor_from_vec(vec![value; n], (n,))
    }
}

/// `y = x W^T + b`, weight `[out, in]` as in PyTorch.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Matrix,
    pub bias: Option<Vector>,
}
impl_params!(Linear { "weight" => weight, "bias" => bias });

impl Linear {
    /// Weight N(0, `init.std`), bias zero.
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, inp: usize, out: usize, bias: bool) -> Self {
        Self::drawn(init, inp, out, bias, Draw::Normal)
    }

    /// Weight drawn as `draw` says, bias zero.
    pub(crate) fn drawn<R: Rng>(
        init: &mut Init<R>,
        inp: usize,
        out: usize,
        bias: bool,
        draw: Draw,
    ) -> Self {
        Linear {
            weight: init.weight(out, inp, draw),
            bias: bias.then(|| init.constant(out, 0.0)),
        }
    }

    pub fn in_features(&self) -> usize {
        self.weight.shape().1
    }
    pub fn out_features(&self) -> usize {
        self.weight.shape().0
    }

    /// `x`: `[rows, in]` -> `[rows, out]`.
    pub fn forward<T: Tape<f32, Dev>>(&self, x: Matrix<T>) -> Matrix<T> {
        let y = x.matmul(self.weight.retaped::<T>().permute::<_, Axes2<1, 0>>());
        match &self.bias {
            Some(b) => crate::fused::add_bias(y, b),
            None => y,
        }
    }
}

/// LayerNorm over features, biased variance (SigLIP).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Vector,
    pub bias: Vector,
    pub eps: f64,
}
impl_params!(LayerNorm { "weight" => weight, "bias" => bias });

impl LayerNorm {
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, dim: usize, eps: f64) -> Self {
        LayerNorm {
            weight: init.constant(dim, 1.0),
            bias: init.constant(dim, 0.0),
            eps,
        }
    }

    pub fn forward<T: Tape<f32, Dev>>(&self, x: Matrix<T>) -> Matrix<T> {
        crate::fused::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// Gemma's RMSNorm: `x / sqrt(mean(x^2) + eps) * (1 + w)`, weight stored as `w`.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Vector,
    pub eps: f64,
}
impl_params!(RmsNorm { "weight" => weight });

impl RmsNorm {
    pub(crate) fn init<R: Rng>(init: &mut Init<R>, dim: usize, eps: f64) -> Self {
        RmsNorm {
            weight: init.constant(dim, 0.0),
            eps,
        }
    }

    pub fn forward<T: Tape<f32, Dev>>(&self, x: Matrix<T>) -> Matrix<T> {
        crate::fused::rms_norm(x, &self.weight, self.eps)
    }
}

/// tanh-approximated GELU (`gelu_pytorch_tanh`).
pub fn gelu<T: Tape<f32, Dev>>(x: Matrix<T>) -> Matrix<T> {
    crate::fused::gelu(x)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::{Draw, Init};

    fn moments(m: &crate::Matrix) -> (f32, f32, f32) {
        let v = m.as_vec();
        let n = v.len() as f32;
        let mean = v.iter().sum::<f32>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt();
        let max = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        (mean, std, max)
    }

    #[test]
    fn each_draw_has_its_scale() {
        let dev = crate::Dev::default();
        let mut rng = StdRng::seed_from_u64(0);
        let mut init = Init {
            dev: &dev,
            rng: &mut rng,
            std: 0.02,
        };
        // [out, in] = [256, 1024]: fan-in 1024, Xavier bound sqrt(6 / 1280).
        let (mean, std, max) = moments(&init.weight(256, 1024, Draw::Normal));
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "{mean} {std}"
        );
        assert!(max > 0.07, "a normal has tails: {max}");

        let bound = (6.0f32 / 1280.0).sqrt();
        let (mean, std, max) = moments(&init.weight(256, 1024, Draw::XavierUniform));
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((std - bound / 3f32.sqrt()).abs() < 1e-3, "{std}");
        assert!(max <= bound && max > 0.99 * bound, "{max} vs {bound}");

        let lecun = 1.0 / 1024f32.sqrt();
        let (mean, std, max) = moments(&init.weight(256, 1024, Draw::LecunNormal));
        assert!(mean.abs() < 1e-3, "{mean}");
        assert!((std - lecun).abs() < 0.02 * lecun, "{std} vs {lecun}");
        assert!(
            max <= 2.0 * lecun / super::TRUNCATED_AT_TWO_STD,
            "truncated: {max}"
        );
    }
}
