//! Fused CPU operations, registered with dfdx's public autodiff API (`Tape::add_backward_op`,
//! `Gradients::get_or_alloc_mut`): tanh-GELU and GeGLU, masked scaled softmax, RMSNorm and
//! LayerNorm. Each runs multi-threaded over rows in one pass forward and one backward, where
//! dfdx's composite ops take several single-threaded passes with an allocation each.
//!
//! Every op has a plain-op twin in [`plain`] that it is tested against; [`with_plain_ops`]
//! makes the model use the twins (and the `cuda` build always does).

use std::cell::Cell;

use dfdx::prelude::*;
#[cfg(not(feature = "cuda"))]
use rayon::prelude::*;

use crate::attention::{Heads, Mask};
use crate::{Dev, Matrix, Vector};

thread_local! {
    static PLAIN: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the model built from dfdx's plain ops instead of the fused ones.
pub fn with_plain_ops<R>(f: impl FnOnce() -> R) -> R {
    let before = PLAIN.with(|p| p.replace(true));
    let r = f();
    PLAIN.with(|p| p.set(before));
    r
}

/// Whether the fused ops are in use on this thread.
pub fn fused_enabled() -> bool {
    !cfg!(feature = "cuda") && !PLAIN.with(|p| p.get())
}

pub type Scores<T> = Tensor<(usize, usize, usize, usize), f32, Dev, T>;

/// The plain-op forms: the reference for the fused ones (and the CUDA path).
pub mod plain {
    use super::*;

    pub fn gelu<T: Tape<f32, Dev>>(x: Matrix<T>) -> Matrix<T> {
        x.fast_gelu()
    }

    pub fn geglu<T: Tape<f32, Dev>>(gate: Matrix<T>, up: Matrix<T>) -> Matrix<T> {
        gate.fast_gelu() * up
    }

    /// softmax(scale * scores + mask) over the last axis; `scores` `[b, h, q, k]`, rows
    /// flattened in (b, h, q) order; `mask` `[b, q, k]`.
    pub fn masked_softmax<T: Tape<f32, Dev>>(
        scores: Scores<T>,
        scale: f32,
        mask: Option<&Mask>,
    ) -> Scores<T> {
        let s = *scores.shape();
        let x = scores * scale;
        let x = match mask {
            Some(m) => x + m.clone().broadcast_like::<_, Axis<1>>(&s),
            None => x,
        };
        x.softmax::<Axis<3>>()
    }

    pub fn rms_norm<T: Tape<f32, Dev>>(x: Matrix<T>, w: &Vector, eps: f64) -> Matrix<T> {
        let s = *x.shape();
        let inv = (x.retaped::<T>().square().mean::<_, Axis<1>>() + eps as f32)
            .sqrt()
            .recip();
        let gain = w.retaped::<T>() + 1.0;
        x * inv.broadcast_like::<_, Axis<1>>(&s) * gain.broadcast_like::<_, Axis<0>>(&s)
    }

    pub fn weighted_cross_entropy<T: Tape<f32, Dev>>(
        logits: Matrix<T>,
        targets: &[u32],
        weights: &[f32],
        smoothing: f32,
    ) -> Tensor<Rank0, f32, Dev, T> {
        let (rows, vocab) = *logits.shape();
        let dev = logits.device().clone();
        let w = dev.tensor_from_vec(weights.to_vec(), (rows,));
        let idx = dev.tensor_from_vec(
            targets.iter().map(|&t| t as usize).collect::<Vec<_>>(),
            (rows,),
        );
        let lp = logits.log_softmax::<Axis<1>>();
        let per_row = if smoothing == 0.0 {
            lp.select(idx)
        } else {
            let mean = lp.retaped::<T>().sum::<_, Axis<1>>() * (1.0 / vocab as f32);
            lp.select(idx) * (1.0 - smoothing) + mean * smoothing
        };
        -(per_row * w).sum::<Rank0, _>()
    }

    /// `x + b` for every row.
    pub fn add_bias<T: Tape<f32, Dev>>(x: Matrix<T>, b: &Vector) -> Matrix<T> {
        let s = *x.shape();
        x + b.retaped::<T>().broadcast_like::<_, Axis<0>>(&s)
    }

    /// Rotary embedding of `x` = `[tokens, heads * hd]` with `[tokens, hd]` tables; `rot` is the
    /// signed permutation computing rotate_half as a matmul (dfdx's slice backward assigns
    /// instead of adding, so slices would break the gradient).
    pub fn rope<T: Tape<f32, Dev>>(
        x: Matrix<T>,
        heads: usize,
        cos: &Matrix,
        sin: &Matrix,
        rot: &Matrix,
    ) -> Matrix<T> {
        let (n, width) = *x.shape();
        let hd = width / heads;
        let s = (n, heads, hd);
        let x = x.reshape_like(&s);
        let rotated = x.retaped::<T>().matmul(rot.clone());
        let y = x * cos.clone().broadcast_like::<_, Axis<1>>(&s)
            + rotated * sin.clone().broadcast_like::<_, Axis<1>>(&s);
        y.reshape_like(&(n, width))
    }

    pub fn layer_norm<T: Tape<f32, Dev>>(
        x: Matrix<T>,
        w: &Vector,
        b: &Vector,
        eps: f64,
    ) -> Matrix<T> {
        let s = *x.shape();
        x.normalize::<Axis<1>>(eps) * w.retaped::<T>().broadcast_like::<_, Axis<0>>(&s)
            + b.retaped::<T>().broadcast_like::<_, Axis<0>>(&s)
    }
}

// ---------------------------------------------------------------- dispatch

/// tanh-GELU.
pub fn gelu<T: Tape<f32, Dev>>(x: Matrix<T>) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::gelu(x);
    }
    plain::gelu(x)
}

/// `gelu(gate) * up`.
pub fn geglu<T: Tape<f32, Dev>>(gate: Matrix<T>, up: Matrix<T>) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::geglu(gate, up);
    }
    plain::geglu(gate, up)
}

/// `softmax(scale * scores + mask)` over the last axis.
pub fn masked_softmax<T: Tape<f32, Dev>>(
    scores: Scores<T>,
    scale: f32,
    mask: Option<&Mask>,
) -> Scores<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::masked_softmax(scores, scale, mask);
    }
    plain::masked_softmax(scores, scale, mask)
}

/// Gemma RMSNorm `x / rms(x) * (1 + w)`.
pub fn rms_norm<T: Tape<f32, Dev>>(x: Matrix<T>, w: &Vector, eps: f64) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::rms_norm(x, w, eps);
    }
    plain::rms_norm(x, w, eps)
}

/// Scaled dot-product attention with multi-/grouped-query heads, see
/// [`crate::attention::attention`].
pub fn attention<T: Tape<f32, Dev>>(
    q: Matrix<T>,
    k: Matrix<T>,
    v: Matrix<T>,
    h: Heads,
    mask: Option<&Mask>,
) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::attention(q, k, v, h, mask);
    }
    crate::attention::plain_attention(q, k, v, h, mask)
}

/// `a + b` (same shapes): the residual connections.
pub fn add<T: Tape<f32, Dev>>(a: Matrix<T>, b: Matrix<T>) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::add(a, b);
    }
    a + b
}

/// `x + b` for every row.
pub fn add_bias<T: Tape<f32, Dev>>(x: Matrix<T>, b: &Vector) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::add_bias(x, b);
    }
    plain::add_bias(x, b)
}

/// Half-split rotary embedding: `x * cos + rotate_half(x) * sin` per head.
pub fn rope<T: Tape<f32, Dev>>(
    x: Matrix<T>,
    heads: usize,
    cos: &Matrix,
    sin: &Matrix,
    rot: &Matrix,
) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::rope(x, heads, cos, sin);
    }
    plain::rope(x, heads, cos, sin, rot)
}

/// `-sum_i w_i [(1 - e) log p_i(t_i) + e mean_v log p_i(v)]` over rows of `logits`, with
/// `weights` already normalised; a scalar.
pub fn weighted_cross_entropy<T: Tape<f32, Dev>>(
    logits: Matrix<T>,
    targets: &[u32],
    weights: &[f32],
    smoothing: f32,
) -> Tensor<Rank0, f32, Dev, T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::weighted_cross_entropy(logits, targets, weights, smoothing);
    }
    plain::weighted_cross_entropy(logits, targets, weights, smoothing)
}

/// LayerNorm `(x - mean) / sqrt(var + eps) * w + b` (biased variance).
pub fn layer_norm<T: Tape<f32, Dev>>(x: Matrix<T>, w: &Vector, b: &Vector, eps: f64) -> Matrix<T> {
    #[cfg(not(feature = "cuda"))]
    if fused_enabled() {
        return cpu::layer_norm(x, w, b, eps);
    }
    plain::layer_norm(x, w, b, eps)
}

// ---------------------------------------------------------------- CPU kernels

#[cfg(not(feature = "cuda"))]
mod cpu {
    use super::*;
    use std::mem::MaybeUninit;

    /// Rows per rayon task: enough work to amortise scheduling.
    fn rows_per_task(cols: usize) -> usize {
        (16384 / cols.max(1)).max(1)
    }

    fn host<S: Shape, T>(t: &Tensor<S, f32, Dev, T>) -> Vec<f32> {
        let mut v = zeros(t.shape().num_elements());
        t.copy_into(&mut v);
        v
    }

    /// Values per rayon task when zeroing or copying a buffer.
    pub(super) const FILL_CHUNK: usize = 1 << 15;

    /// A zeroed buffer, zeroed by the pool: on the calling thread, zeroing a step's outputs
    /// (and taking their fresh pages' faults) left the other cores idle meanwhile.
    pub(super) fn zeros(n: usize) -> Vec<f32> {
        if n <= FILL_CHUNK {
            return vec![0.0; n];
        }
        // SAFETY: each chunk is filled whole.
        unsafe { filled_by_pool(n, |_, out| out.fill(MaybeUninit::new(0.0))) }
    }

    /// `src.to_vec()`, copied by the pool (see [`zeros`]).
    pub(super) fn copied(src: &[f32]) -> Vec<f32> {
        if src.len() <= FILL_CHUNK {
            return src.to_vec();
        }
        let fill = |i: usize, out: &mut [MaybeUninit<f32>]| {
            let from = &src[i * FILL_CHUNK..][..out.len()];
            out.iter_mut().zip(from).for_each(|(o, s)| {
                o.write(*s);
            });
        };
        // SAFETY: each chunk gets as many values from `src` as it holds.
        unsafe { filled_by_pool(src.len(), fill) }
    }

    /// `n` values written chunk by chunk on the pool by `fill(i, chunk)`.
    ///
    /// # Safety
    /// `fill` must write every value of chunk `i` (`FILL_CHUNK` values, fewer for the last).
    unsafe fn filled_by_pool(
        n: usize,
        fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
    ) -> Vec<f32> {
        let mut v = Vec::with_capacity(n);
        v.spare_capacity_mut()[..n]
            .par_chunks_mut(FILL_CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| fill(i, chunk));
        // SAFETY: the caller's `fill` wrote every chunk of the first `n` values.
        unsafe { v.set_len(n) };
        v
    }

    /// `exp(x)` for x in [-87, 88]: 2^k * p(r), r = x - k ln 2 in [-ln2/2, ln2/2], p the degree-7
    /// Taylor polynomial (relative error < 1e-8); branch-free so that loops vectorise.
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        // round to nearest by the 1.5 * 2^23 trick (no libm call, vectorises)
        let k = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
        // ln 2 split in two (the high part exact in few bits) so that r keeps full precision
        let r = (x - k * 0.693_145_75) - k * 1.428_606_8e-6;
        let p = 1.0
            + r * (1.0
                + r * (0.5
                    + r * (1.0 / 6.0
                        + r * (1.0 / 24.0
                            + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
        p * f32::from_bits(((k as i32 + 127) << 23) as u32)
    }

    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const KAPPA: f32 = 0.044715;

    /// tanh(u) = 1 - 2 / (exp(2u) + 1).
    #[inline(always)]
    pub(super) fn tanh(u: f32) -> f32 {
        1.0 - 2.0 / (exp(2.0 * u) + 1.0)
    }

    /// (gelu(x), gelu'(x)).
    #[inline(always)]
    fn gelu_and_grad(x: f32) -> (f32, f32) {
        let u = SQRT_2_OVER_PI * (x + KAPPA * x * x * x);
        let t = tanh(u);
        let du = SQRT_2_OVER_PI * (1.0 + 3.0 * KAPPA * x * x);
        (
            0.5 * x * (1.0 + t),
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
        )
    }

    /// Defines `fn $name(args)` whose body is compiled twice, plainly and for AVX2+FMA, the
    /// latter chosen at run time when the CPU has it (8 lanes instead of SSE's 4).
    macro_rules! simd_kernel {
        ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
            $(#[$m])*
            fn $name($($a: $t),*) $(-> $ret)? {
                #[inline(always)]
                fn generic($($a: $t),*) $(-> $ret)? $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2,fma")]
                    fn avx2($($a: $t),*) $(-> $ret)? { generic($($a),*) }
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU has the features `avx2` is compiled for.
                        return unsafe { avx2($($a),*) };
                    }
                }
                generic($($a),*)
            }
        };
    }

    /// Sum with 8 independent lanes (vectorises; the order differs from a serial sum).
    #[inline(always)]
    fn sum8(x: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let chunks = x.chunks_exact(8);
        let rest: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for i in 0..8 {
                acc[i] += c[i];
            }
        }
        acc.iter().sum::<f32>() + rest
    }

    #[inline(always)]
    fn max8(x: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; 8];
        let chunks = x.chunks_exact(8);
        let rest = chunks
            .remainder()
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        for c in chunks {
            for i in 0..8 {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        acc.iter().copied().fold(rest, f32::max)
    }

    simd_kernel! {
        /// y = gelu(x)
        fn gelu_fwd(y: &mut [f32], x: &[f32]) {
            for (y, &x) in y.iter_mut().zip(x) {
                *y = gelu_and_grad(x).0;
            }
        }
    }
    simd_kernel! {
        /// gi += go * gelu'(x)
        fn gelu_bwd(gi: &mut [f32], go: &[f32], x: &[f32]) {
            for ((gi, &go), &x) in gi.iter_mut().zip(go).zip(x) {
                *gi += go * gelu_and_grad(x).1;
            }
        }
    }
    simd_kernel! {
        /// y = gelu(g) * u
        fn geglu_fwd(y: &mut [f32], g: &[f32], u: &[f32]) {
            for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                *y = gelu_and_grad(g).0 * u;
            }
        }
    }
    simd_kernel! {
        /// dg = go * u * gelu'(g), du = go * gelu(g)
        fn geglu_bwd(dg: &mut [f32], du: &mut [f32], go: &[f32], g: &[f32], u: &[f32]) {
            for i in 0..go.len() {
                let (a, da) = gelu_and_grad(g[i]);
                dg[i] = go[i] * u[i] * da;
                du[i] = go[i] * a;
            }
        }
    }
    simd_kernel! {
        /// One row: p = softmax(scale * x + mask).
        fn softmax_row(p: &mut [f32], x: &[f32], mask: Option<&[f32]>, scale: f32) {
            match mask {
                Some(m) => p.iter_mut().zip(x).zip(m).for_each(|((p, &x), &m)| *p = x * scale + m),
                None => p.iter_mut().zip(x).for_each(|(p, &x)| *p = x * scale),
            }
            let mx = max8(p);
            p.iter_mut().for_each(|v| *v = exp(*v - mx));
            let inv = 1.0 / sum8(p);
            p.iter_mut().for_each(|v| *v *= inv);
        }
    }
    simd_kernel! {
        /// One row: gi += scale * p * (g - <p, g>).
        fn softmax_row_bwd(gi: &mut [f32], p: &[f32], g: &[f32], scale: f32, tmp: &mut [f32]) {
            tmp.iter_mut().zip(p).zip(g).for_each(|((t, &p), &g)| *t = p * g);
            let dot = sum8(tmp);
            gi.iter_mut().zip(p).zip(g).for_each(|((gi, &p), &g)| *gi += scale * p * (g - dot));
        }
    }

    /// Adds per-chunk partial sums in chunk order: the same result whatever rayon's splitting,
    /// so training runs are reproducible.
    fn sum_partials(parts: Vec<Vec<f32>>, d: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; d];
        for p in parts {
            out.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
        }
        out
    }

    /// The output tensor, and a handle on it for the backward closure.
    fn output(dev: &Dev, v: Vec<f32>, s: (usize, usize), _: NoneTape) -> (Matrix, Matrix) {
        let out = dev.tensor_from_vec(v, s);
        (out.clone(), out)
    }

    pub fn gelu<T: Tape<f32, Dev>>(x: Matrix<T>) -> Matrix<T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let s = *x.shape();
        let xv = host(&x);
        let mut y = zeros(xv.len());
        y.par_chunks_mut(16384)
            .zip(xv.par_chunks(16384))
            .for_each(|(y, x)| gelu_fwd(y, x));
        let (ghost, out) = output(x.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(16384)
                    .zip(go.par_chunks(16384))
                    .zip(xv.par_chunks(16384))
                    .for_each(|((gi, go), xv)| gelu_bwd(gi, go, xv));
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    pub fn geglu<T: Tape<f32, Dev>>(gate: Matrix<T>, up: Matrix<T>) -> Matrix<T> {
        let (g, tg) = gate.contiguous().split_tape();
        let (u, tu) = up.contiguous().split_tape();
        let mut tape = tg.merge(tu);
        let s = *g.shape();
        assert_eq!(s, *u.shape(), "geglu shapes");
        let (gv, uv) = (host(&g), host(&u));
        let mut y = zeros(gv.len());
        y.par_chunks_mut(16384)
            .zip(gv.par_chunks(16384))
            .zip(uv.par_chunks(16384))
            .for_each(|((y, g), u)| geglu_fwd(y, g, u));
        let (ghost, out) = output(g.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let n = go.len();
                let mut dg = zeros(n);
                let mut du = zeros(n);
                dg.par_chunks_mut(16384)
                    .zip(du.par_chunks_mut(16384))
                    .zip(
                        go.par_chunks(16384)
                            .zip(gv.par_chunks(16384))
                            .zip(uv.par_chunks(16384)),
                    )
                    .for_each(|((dg, du), ((go, gv), uv))| geglu_bwd(dg, du, go, gv, uv));
                let gi = grads.get_or_alloc_mut(&g)?;
                gi.iter_mut().zip(&dg).for_each(|(a, b)| *a += b);
                let gi = grads.get_or_alloc_mut(&u)?;
                gi.iter_mut().zip(&du).for_each(|(a, b)| *a += b);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    pub fn masked_softmax<T: Tape<f32, Dev>>(
        scores: Scores<T>,
        scale: f32,
        mask: Option<&Mask>,
    ) -> Scores<T> {
        let (x, mut tape) = scores.contiguous().split_tape();
        let s = *x.shape();
        let (b, h, q, k) = s;
        let xv = host(&x);
        let mv = mask.map(|m| {
            assert_eq!(*m.shape(), (b, q, k), "mask shape");
            host(&m.clone().contiguous())
        });
        let mut p = zeros(xv.len());
        let per = rows_per_task(k);
        p.par_chunks_mut(per * k).enumerate().for_each(|(c, pc)| {
            for (i, prow) in pc.chunks_mut(k).enumerate() {
                let r = c * per + i;
                let xrow = &xv[r * k..(r + 1) * k];
                let mrow = mv.as_ref().map(|m| {
                    let (bi, qi) = (r / (h * q), r % q);
                    &m[(bi * q + qi) * k..(bi * q + qi + 1) * k]
                });
                softmax_row(prow, xrow, mrow, scale);
            }
        });
        let out = x.device().tensor_from_vec(p, s);
        let ghost = out.clone();
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let pv = host(&ghost);
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(per * k).enumerate().for_each(|(c, gc)| {
                    let mut tmp = vec![0.0; k];
                    for (i, grow) in gc.chunks_mut(k).enumerate() {
                        let r = c * per + i;
                        softmax_row_bwd(
                            grow,
                            &pv[r * k..(r + 1) * k],
                            &go[r * k..(r + 1) * k],
                            scale,
                            &mut tmp,
                        );
                    }
                });
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    simd_kernel! {
        /// One row: (log-sum-exp, sum of logits).
        fn lse_row(x: &[f32], tmp: &mut [f32]) -> (f32, f32) {
            let mx = max8(x);
            tmp.iter_mut().zip(x).for_each(|(t, &x)| *t = exp(x - mx));
            (mx + sum8(tmp).ln(), sum8(x))
        }
    }
    simd_kernel! {
        /// One row's gradient: g * (softmax(x) - (1 - e) onehot(t) - e / V).
        fn ce_grad_row(gi: &mut [f32], x: &[f32], lse: f32, t: usize, e: f32, g: f32) {
            let u = e / x.len() as f32;
            gi.iter_mut().zip(x).for_each(|(gi, &x)| *gi += g * (exp(x - lse) - u));
            gi[t] -= g * (1.0 - e);
        }
    }

    pub fn weighted_cross_entropy<T: Tape<f32, Dev>>(
        logits: Matrix<T>,
        targets: &[u32],
        weights: &[f32],
        e: f32,
    ) -> Tensor<Rank0, f32, Dev, T> {
        let (x, mut tape) = logits.contiguous().split_tape();
        let (rows, v) = *x.shape();
        let xv = host(&x);
        let mut stats = vec![(0.0f32, 0.0f32); rows];
        stats.par_iter_mut().enumerate().for_each_init(
            || vec![0.0f32; v],
            |tmp, (r, st)| *st = lse_row(&xv[r * v..(r + 1) * v], tmp),
        );
        let loss: f64 = (0..rows)
            .map(|r| {
                let (lse, sum) = stats[r];
                let nll = lse - xv[r * v + targets[r] as usize];
                let smooth = lse - sum / v as f32;
                weights[r] as f64 * ((1.0 - e) * nll + e * smooth) as f64
            })
            .sum();
        let out = x.device().tensor_from_vec(vec![loss as f32], ());
        let ghost = out.clone();
        if T::OWNS_TAPE {
            let (targets, weights) = (targets.to_vec(), weights.to_vec());
            tape.add_backward_op(move |grads| {
                let g = grads.get_or_alloc_mut(&ghost)?[0];
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(v).enumerate().for_each(|(r, gr)| {
                    if weights[r] != 0.0 {
                        ce_grad_row(
                            gr,
                            &xv[r * v..(r + 1) * v],
                            stats[r].0,
                            targets[r] as usize,
                            e,
                            g * weights[r],
                        );
                    }
                });
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    /// A pointer shared by rayon tasks that write disjoint parts of one buffer.
    #[derive(Clone, Copy)]
    struct Shared(*mut f32);
    // SAFETY: every task writes a region no other task touches (see each use).
    unsafe impl Send for Shared {}
    unsafe impl Sync for Shared {}

    /// `dst (m x n) = alpha * dst + beta * lhs (m x k) @ rhs (k x n)`, strides as (row, col).
    #[allow(clippy::too_many_arguments)]
    unsafe fn mm(
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_s: (usize, usize),
        accumulate: bool,
        lhs: *const f32,
        lhs_s: (usize, usize),
        rhs: *const f32,
        rhs_s: (usize, usize),
        beta: f32,
    ) {
        // SAFETY: the caller passes pointers valid for these shapes and strides.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                dst_s.1 as isize,
                dst_s.0 as isize,
                accumulate,
                lhs,
                lhs_s.1 as isize,
                lhs_s.0 as isize,
                rhs,
                rhs_s.1 as isize,
                rhs_s.0 as isize,
                if accumulate { 1.0 } else { 0.0 },
                beta,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }

    simd_kernel! {
        /// One row in place: p = softmax(p + mask).
        fn softmax_inplace(p: &mut [f32], mask: Option<&[f32]>) {
            if let Some(m) = mask {
                p.iter_mut().zip(m).for_each(|(p, &m)| *p += m);
            }
            let mx = max8(p);
            p.iter_mut().for_each(|v| *v = exp(*v - mx));
            let inv = 1.0 / sum8(p);
            p.iter_mut().for_each(|v| *v *= inv);
        }
    }
    simd_kernel! {
        /// One row in place: dp <- scale * p * (dp - <p, dp>).
        fn softmax_grad_inplace(dp: &mut [f32], p: &[f32], scale: f32, tmp: &mut [f32]) {
            tmp.iter_mut().zip(p).zip(dp.iter()).for_each(|((t, &p), &d)| *t = p * d);
            let dot = sum8(tmp);
            dp.iter_mut().zip(p).for_each(|(d, &p)| *d = scale * p * (*d - dot));
        }
    }

    /// Attention straight on the `[rows, heads * head_dim]` layouts: per (batch, head), QK^T and
    /// PV through gemm on strided views (no head reshapes), the masked softmax in place; the
    /// probabilities are kept for backward. Tasks run in parallel over (batch, key/value head).
    pub fn attention<T: Tape<f32, Dev>>(
        q: Matrix<T>,
        k: Matrix<T>,
        v: Matrix<T>,
        h: Heads,
        mask: Option<&Mask>,
    ) -> Matrix<T> {
        let (q, tq) = q.contiguous().split_tape();
        let (k, tk) = k.contiguous().split_tape();
        let (v, tv) = v.contiguous().split_tape();
        let mut tape = tq.merge(tk).merge(tv);
        let Heads {
            batch: b,
            queries: lq,
            keys: lk,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        } = h;
        let g = nh / nkv;
        let (qw, kw) = (nh * hd, nkv * hd);
        assert_eq!(*q.shape(), (b * lq, qw), "attention q");
        assert_eq!(*k.shape(), (b * lk, kw), "attention k");
        assert_eq!(*v.shape(), (b * lk, kw), "attention v");
        let scale = (hd as f32).powf(-0.5);
        let (qv, kv, vv) = (host(&q), host(&k), host(&v));
        let mv = mask.map(|m| {
            assert_eq!(*m.shape(), (b, lq, lk), "mask shape");
            host(&m.clone().contiguous())
        });
        let mut probs = zeros(b * nh * lq * lk);
        let mut out = zeros(b * lq * qw);
        let (pp, op) = (Shared(probs.as_mut_ptr()), Shared(out.as_mut_ptr()));
        (0..b * nh).into_par_iter().for_each(|task| {
            let (bi, hh) = (task / nh, task % nh);
            let kvh = hh / g;
            let (pp, op) = (pp, op);
            // SAFETY: task (bi, hh) writes only its probability block and its head's columns of
            // its batch rows in `out`; inputs are read-only and sized for these strides.
            unsafe {
                let p = pp.0.add(task * lq * lk);
                let qh = qv.as_ptr().add(bi * lq * qw + hh * hd);
                let kh = kv.as_ptr().add(bi * lk * kw + kvh * hd);
                let vh = vv.as_ptr().add(bi * lk * kw + kvh * hd);
                // S = scale * Q K^T
                mm(
                    (lq, lk, hd),
                    p,
                    (lk, 1),
                    false,
                    qh,
                    (qw, 1),
                    kh,
                    (1, kw),
                    scale,
                );
                for i in 0..lq {
                    let row = std::slice::from_raw_parts_mut(p.add(i * lk), lk);
                    let m = mv
                        .as_ref()
                        .map(|m| &m[(bi * lq + i) * lk..(bi * lq + i + 1) * lk]);
                    softmax_inplace(row, m);
                }
                // O = P V
                mm(
                    (lq, hd, lk),
                    op.0.add(bi * lq * qw + hh * hd),
                    (qw, 1),
                    false,
                    p,
                    (lk, 1),
                    vh,
                    (kw, 1),
                    1.0,
                );
            }
        });
        drop(mv);
        let (ghost, result) = output(q.device(), out, (b * lq, qw), NoneTape);
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let mut dq = zeros(qv.len());
                let mut dk = zeros(kv.len());
                let mut dv = zeros(vv.len());
                let (dqp, dkp, dvp) = (
                    Shared(dq.as_mut_ptr()),
                    Shared(dk.as_mut_ptr()),
                    Shared(dv.as_mut_ptr()),
                );
                (0..b * nkv).into_par_iter().for_each(|task| {
                    let (bi, kvh) = (task / nkv, task % nkv);
                    let (dqp, dkp, dvp) = (dqp, dkp, dvp);
                    let mut ds = vec![0.0f32; lq * lk];
                    let mut tmp = vec![0.0f32; lk];
                    // SAFETY: task (bi, kvh) writes the columns of its query heads in its batch
                    // rows of dq, and its key/value head's columns of its batch rows of dk, dv.
                    unsafe {
                        let kh = kv.as_ptr().add(bi * lk * kw + kvh * hd);
                        let vh = vv.as_ptr().add(bi * lk * kw + kvh * hd);
                        let dkh = dkp.0.add(bi * lk * kw + kvh * hd);
                        let dvh = dvp.0.add(bi * lk * kw + kvh * hd);
                        for hh in kvh * g..(kvh + 1) * g {
                            let p = probs.as_ptr().add((bi * nh + hh) * lq * lk);
                            let qh = qv.as_ptr().add(bi * lq * qw + hh * hd);
                            let goh = go.as_ptr().add(bi * lq * qw + hh * hd);
                            // dV += P^T dO
                            mm(
                                (lk, hd, lq),
                                dvh,
                                (kw, 1),
                                true,
                                p,
                                (1, lk),
                                goh,
                                (qw, 1),
                                1.0,
                            );
                            // dP = dO V^T, then dS = scale * P * (dP - rowsum(dP * P))
                            mm(
                                (lq, lk, hd),
                                ds.as_mut_ptr(),
                                (lk, 1),
                                false,
                                goh,
                                (qw, 1),
                                vh,
                                (1, kw),
                                1.0,
                            );
                            for i in 0..lq {
                                let prow = std::slice::from_raw_parts(p.add(i * lk), lk);
                                softmax_grad_inplace(
                                    &mut ds[i * lk..(i + 1) * lk],
                                    prow,
                                    scale,
                                    &mut tmp,
                                );
                            }
                            // dQ = dS K, dK += dS^T Q
                            mm(
                                (lq, hd, lk),
                                dqp.0.add(bi * lq * qw + hh * hd),
                                (qw, 1),
                                false,
                                ds.as_ptr(),
                                (lk, 1),
                                kh,
                                (kw, 1),
                                1.0,
                            );
                            mm(
                                (lk, hd, lq),
                                dkh,
                                (kw, 1),
                                true,
                                ds.as_ptr(),
                                (1, lk),
                                qh,
                                (qw, 1),
                                1.0,
                            );
                        }
                    }
                });
                for (t, d) in [(&q, dq), (&k, dk), (&v, dv)] {
                    let gi = grads.get_or_alloc_mut(t)?;
                    gi.par_chunks_mut(16384)
                        .zip(d.par_chunks(16384))
                        .for_each(|(gi, d)| accumulate(gi, d));
                }
                Ok(())
            });
        }
        result.put_tape(tape)
    }

    simd_kernel! {
        fn add_slices(y: &mut [f32], a: &[f32], b: &[f32]) {
            y.iter_mut().zip(a).zip(b).for_each(|((y, a), b)| *y = a + b);
        }
    }
    simd_kernel! {
        fn accumulate(acc: &mut [f32], g: &[f32]) {
            acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
        }
    }

    pub fn add<T: Tape<f32, Dev>>(a: Matrix<T>, b: Matrix<T>) -> Matrix<T> {
        let (a, ta) = a.contiguous().split_tape();
        let (b, tb) = b.contiguous().split_tape();
        let mut tape = ta.merge(tb);
        let s = *a.shape();
        assert_eq!(s, *b.shape(), "add shapes");
        let (av, bv) = (host(&a), host(&b));
        let mut y = zeros(av.len());
        y.par_chunks_mut(16384)
            .zip(av.par_chunks(16384))
            .zip(bv.par_chunks(16384))
            .for_each(|((y, a), b)| add_slices(y, a, b));
        drop((av, bv));
        let (ghost, out) = output(a.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                for t in [&a, &b] {
                    let gi = grads.get_or_alloc_mut(t)?;
                    gi.par_chunks_mut(16384)
                        .zip(go.par_chunks(16384))
                        .for_each(|(gi, go)| accumulate(gi, go));
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    simd_kernel! {
        /// Rows of `x` plus `b`.
        fn add_bias_rows(y: &mut [f32], x: &[f32], b: &[f32]) {
            for (y, x) in y.chunks_mut(b.len()).zip(x.chunks(b.len())) {
                for j in 0..b.len() {
                    y[j] = x[j] + b[j];
                }
            }
        }
    }

    pub fn add_bias<T: Tape<f32, Dev>>(x: Matrix<T>, b: &Vector) -> Matrix<T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let s = *x.shape();
        let d = s.1;
        assert_eq!(b.shape().0, d, "bias width");
        let xv = host(&x);
        let bv = host(b);
        let per = rows_per_task(d);
        let mut y = zeros(xv.len());
        y.par_chunks_mut(per * d)
            .zip(xv.par_chunks(per * d))
            .for_each(|(y, x)| add_bias_rows(y, x, &bv));
        drop(xv);
        let (ghost, out) = output(x.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            let b = b.clone();
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let db = go
                    .par_chunks(per * d)
                    .map(|g| {
                        let mut acc = vec![0.0f32; d];
                        for g in g.chunks(d) {
                            acc.iter_mut().zip(g).for_each(|(a, g)| *a += g);
                        }
                        acc
                    })
                    .collect::<Vec<_>>();
                let db = sum_partials(db, d);
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(16384)
                    .zip(go.par_chunks(16384))
                    .for_each(|(gi, go)| {
                        gi.iter_mut().zip(go).for_each(|(a, g)| *a += g);
                    });
                let gb = grads.get_or_alloc_mut(&b)?;
                gb.iter_mut().zip(&db).for_each(|(a, c)| *a += c);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    simd_kernel! {
        /// One token's heads: y = x * cos + rotate_half(x) * sin (`sign` -1: the transpose, for
        /// backward: g * cos + rotate_half^T(g * sin)).
        fn rope_row(y: &mut [f32], x: &[f32], c: &[f32], s: &[f32], sign: f32) {
            let hd = c.len();
            let half = hd / 2;
            for (y, x) in y.chunks_mut(hd).zip(x.chunks(hd)) {
                for j in 0..half {
                    let (a, b) = (x[j], x[j + half]);
                    y[j] = a * c[j] - sign * b * s[j];
                    y[j + half] = b * c[j + half] + sign * a * s[j + half];
                }
            }
        }
    }

    pub fn rope<T: Tape<f32, Dev>>(
        x: Matrix<T>,
        heads: usize,
        cos: &Matrix,
        sin: &Matrix,
    ) -> Matrix<T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let s = *x.shape();
        let (n, width) = s;
        let hd = width / heads;
        assert_eq!(*cos.shape(), (n, hd), "rope table");
        let (cv, sv) = (host(cos), host(sin));
        let xv = host(&x);
        let per = rows_per_task(width);
        let mut y = zeros(xv.len());
        let apply = move |y: &mut [f32], x: &[f32], cv: &[f32], sv: &[f32], sign: f32| {
            y.par_chunks_mut(per * width)
                .zip(x.par_chunks(per * width))
                .enumerate()
                .for_each(|(c, (y, x))| {
                    for (i, (y, x)) in y.chunks_mut(width).zip(x.chunks(width)).enumerate() {
                        let t = c * per + i;
                        rope_row(
                            y,
                            x,
                            &cv[t * hd..(t + 1) * hd],
                            &sv[t * hd..(t + 1) * hd],
                            sign,
                        );
                    }
                })
        };
        apply(&mut y, &xv, &cv, &sv, 1.0);
        drop(xv);
        let (ghost, out) = output(x.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let mut gx = zeros(go.len());
                apply(&mut gx, &go, &cv, &sv, -1.0);
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.iter_mut().zip(&gx).for_each(|(a, g)| *a += g);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    pub fn rms_norm<T: Tape<f32, Dev>>(x: Matrix<T>, w: &Vector, eps: f64) -> Matrix<T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let s = *x.shape();
        let d = s.1;
        let xv = host(&x);
        let gain: Vec<f32> = host(w).iter().map(|w| 1.0 + w).collect();
        let per = rows_per_task(d);
        let mut inv = vec![0.0f32; s.0];
        let mut y = zeros(xv.len());
        y.par_chunks_mut(per * d)
            .zip(inv.par_chunks_mut(per))
            .zip(xv.par_chunks(per * d))
            .for_each(|((y, inv), x)| {
                for ((y, r), x) in y.chunks_mut(d).zip(inv.iter_mut()).zip(x.chunks(d)) {
                    let ms = x.iter().map(|v| v * v).sum::<f32>() / d as f32;
                    *r = 1.0 / (ms + eps as f32).sqrt();
                    for j in 0..d {
                        y[j] = x[j] * *r * gain[j];
                    }
                }
            });
        let (ghost, out) = output(x.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            let w = w.clone();
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                // dw_j = sum_rows g_j x_j r
                let dw = go
                    .par_chunks(per * d)
                    .zip(xv.par_chunks(per * d))
                    .zip(inv.par_chunks(per))
                    .map(|((g, x), inv)| {
                        let mut acc = vec![0.0f32; d];
                        for ((g, x), r) in g.chunks(d).zip(x.chunks(d)).zip(inv) {
                            for j in 0..d {
                                acc[j] += g[j] * x[j] * r;
                            }
                        }
                        acc
                    })
                    .collect::<Vec<_>>();
                let dw = sum_partials(dw, d);
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(per * d)
                    .zip(go.par_chunks(per * d))
                    .zip(xv.par_chunks(per * d).zip(inv.par_chunks(per)))
                    .for_each(|((gi, g), (x, inv))| {
                        for ((gi, g), (x, &r)) in
                            gi.chunks_mut(d).zip(g.chunks(d)).zip(x.chunks(d).zip(inv))
                        {
                            let dot: f32 =
                                (0..d).map(|j| g[j] * gain[j] * x[j]).sum::<f32>() / d as f32;
                            let r3 = r * r * r;
                            for j in 0..d {
                                gi[j] += r * g[j] * gain[j] - x[j] * r3 * dot;
                            }
                        }
                    });
                let gw = grads.get_or_alloc_mut(&w)?;
                gw.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    pub fn layer_norm<T: Tape<f32, Dev>>(
        x: Matrix<T>,
        w: &Vector,
        b: &Vector,
        eps: f64,
    ) -> Matrix<T> {
        let (x, mut tape) = x.contiguous().split_tape();
        let s = *x.shape();
        let d = s.1;
        let xv = host(&x);
        let (wv, bv) = (host(w), host(b));
        let per = rows_per_task(d);
        // normalised input (kept for backward) and 1/std per row
        let mut xhat = zeros(xv.len());
        let mut inv = vec![0.0f32; s.0];
        xhat.par_chunks_mut(per * d)
            .zip(inv.par_chunks_mut(per))
            .zip(xv.par_chunks(per * d))
            .for_each(|((xh, inv), x)| {
                for ((xh, r), x) in xh.chunks_mut(d).zip(inv.iter_mut()).zip(x.chunks(d)) {
                    let mean = x.iter().sum::<f32>() / d as f32;
                    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    *r = 1.0 / (var + eps as f32).sqrt();
                    for j in 0..d {
                        xh[j] = (x[j] - mean) * *r;
                    }
                }
            });
        drop(xv);
        let mut y = zeros(xhat.len());
        y.par_chunks_mut(per * d)
            .zip(xhat.par_chunks(per * d))
            .for_each(|(y, xh)| {
                for (y, xh) in y.chunks_mut(d).zip(xh.chunks(d)) {
                    for j in 0..d {
                        y[j] = xh[j] * wv[j] + bv[j];
                    }
                }
            });
        let (ghost, out) = output(x.device(), y, s, NoneTape);
        if T::OWNS_TAPE {
            let (w, b) = (w.clone(), b.clone());
            tape.add_backward_op(move |grads| {
                let go = copied(grads.get_or_alloc_mut(&ghost)?);
                let (dw, db): (Vec<Vec<f32>>, Vec<Vec<f32>>) = go
                    .par_chunks(per * d)
                    .zip(xhat.par_chunks(per * d))
                    .map(|(g, xh)| {
                        let (mut dw, mut db) = (vec![0.0f32; d], vec![0.0f32; d]);
                        for (g, xh) in g.chunks(d).zip(xh.chunks(d)) {
                            for j in 0..d {
                                dw[j] += g[j] * xh[j];
                                db[j] += g[j];
                            }
                        }
                        (dw, db)
                    })
                    .unzip();
                let (dw, db) = (sum_partials(dw, d), sum_partials(db, d));
                let gi = grads.get_or_alloc_mut(&x)?;
                gi.par_chunks_mut(per * d)
                    .zip(go.par_chunks(per * d))
                    .zip(xhat.par_chunks(per * d).zip(inv.par_chunks(per)))
                    .for_each(|((gi, g), (xh, inv))| {
                        for ((gi, g), (xh, &r)) in
                            gi.chunks_mut(d).zip(g.chunks(d)).zip(xh.chunks(d).zip(inv))
                        {
                            let mut m1 = 0.0;
                            let mut m2 = 0.0;
                            for j in 0..d {
                                let gx = g[j] * wv[j];
                                m1 += gx;
                                m2 += gx * xh[j];
                            }
                            let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                            for j in 0..d {
                                gi[j] += r * (g[j] * wv[j] - m1 - xh[j] * m2);
                            }
                        }
                    });
                let g = grads.get_or_alloc_mut(&w)?;
                g.iter_mut().zip(&dw).for_each(|(a, b)| *a += b);
                let g = grads.get_or_alloc_mut(&b)?;
                g.iter_mut().zip(&db).for_each(|(a, b)| *a += b);
                Ok(())
            });
        }
        out.put_tape(tape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrainTape;

    fn values(n: usize, k: f32, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 + 0.5) * k).sin() * scale)
            .collect()
    }

    fn close(name: &str, a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len(), "{name}");
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            d <= tol * scale,
            "{name}: max|diff| {d:e} (scale {scale:e})"
        );
    }

    /// Runs `op` fused and plain on the same input; compares outputs and the gradients of
    /// sum(y * r) with respect to the input and `params`.
    fn check(
        name: &str,
        x: &Matrix,
        params: &[&Vector],
        op: &dyn Fn(Matrix<TrainTape>) -> Matrix<TrainTape>,
    ) {
        let run = || {
            let y = op(x.leaky_trace());
            let n = y.shape().num_elements();
            let r = x.device().tensor_from_vec(values(n, 0.77, 1.0), *y.shape());
            let out = y.retaped::<NoneTape>().as_vec();
            let g = (y * r).sum::<Rank0, _>().backward();
            let mut gs = vec![g.get(x).as_vec()];
            gs.extend(params.iter().map(|p| g.get(*p).as_vec()));
            (out, gs)
        };
        let (fy, fg) = run();
        let (py, pg) = with_plain_ops(run);
        close(&format!("{name} forward"), &fy, &py, 1e-5);
        for (i, (f, p)) in fg.iter().zip(&pg).enumerate() {
            close(&format!("{name} grad {i}"), f, p, 1e-4);
        }
    }

    /// An `[n, d]` input and two `[d]` parameters (a weight, a bias).
    fn inputs(dev: &Dev, n: usize, d: usize) -> (Matrix, Vector, Vector) {
        (
            dev.tensor_from_vec(values(n * d, 0.31, 4.0), (n, d)),
            dev.tensor_from_vec(values(d, 1.7, 0.5), (d,)),
            dev.tensor_from_vec(values(d, 2.3, 0.5), (d,)),
        )
    }

    #[test]
    fn fused_ops_match_plain_ops() {
        assert!(fused_enabled());
        let dev = Dev::default();
        let (n, d) = (37, 24);
        let (x, w, b) = inputs(&dev, n, d);
        check("gelu", &x, &[], &|x| gelu(x));
        check("rms_norm", &x, &[&w], &|x| rms_norm(x, &w, 1e-6));
        check("layer_norm", &x, &[&w, &b], &|x| {
            layer_norm(x, &w, &b, 1e-6)
        });
        check("add_bias", &x, &[&w], &|x| add_bias(x, &w));
        check("add", &x, &[], &|x| {
            add(x.retaped::<TrainTape>() * 0.5, x.square())
        });
        let r = crate::attention::Rope::new(
            &dev,
            &(0..n as u32).map(|p| p * 3 + 1).collect::<Vec<_>>(),
            8,
            10000.0,
        );
        check("rope", &x, &[], &|x| rope(x, 3, &r.cos, &r.sin, &r.rot));
        let u = dev.tensor_from_vec(values(n * d, 0.13, 2.0), (n, d));
        check("geglu", &x, &[], &|x| {
            geglu(x.retaped::<TrainTape>() * 0.7, x * u.clone())
        });
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % d as u32).collect();
        let weights: Vec<f32> = (0..n)
            .map(|i| {
                if i % 5 == 0 {
                    0.0
                } else {
                    0.1 + (i % 3) as f32 * 0.05
                }
            })
            .collect();
        for e in [0.0, 0.1] {
            check("cross_entropy", &x, &[], &|x| {
                let l = weighted_cross_entropy(x, &targets, &weights, e);
                // as a [1, 1] matrix, for the harness
                l.broadcast_like::<_, Axis<0>>(&(1,))
                    .broadcast_like::<_, Axis<1>>(&(1, 1))
            });
        }
        // attention: q, k, v all derived from one input so the harness checks every gradient
        for (heads, kv_heads, masked) in [(4, 2, true), (4, 1, true), (2, 2, false)] {
            let (bb, lq, hd) = (2, 4, 3);
            let xq = dev.tensor_from_vec(
                values(bb * lq * heads * hd, 0.41, 1.5),
                (bb * lq, heads * hd),
            );
            let kvw = kv_heads * hd;
            let pk = dev.tensor_from_vec(values(heads * hd * kvw, 0.27, 0.7), (heads * hd, kvw));
            let pv = dev.tensor_from_vec(values(heads * hd * kvw, 0.19, 0.9), (heads * hd, kvw));
            let allowed: Vec<bool> = (0..bb * lq * lq)
                .map(|i| i % 3 != 1 || i % 4 == 0)
                .collect();
            let m = crate::attention::additive_mask(&dev, &allowed, bb, lq, lq);
            let h = Heads {
                batch: bb,
                queries: lq,
                keys: lq,
                heads,
                kv_heads,
                head_dim: hd,
            };
            check("attention", &xq, &[], &|x| {
                let k = x.retaped::<TrainTape>().matmul(pk.clone());
                let v = x.retaped::<TrainTape>().matmul(pv.clone()).square();
                attention(x, k, v, h, masked.then_some(&m))
            });
        }
        // scores [b=2, h=3, q=5, k=6] from a [30, 6] matrix, with a mask that blocks some keys
        let (bb, h, q, k) = (2, 3, 5, 6);
        let s = dev.tensor_from_vec(values(bb * h * q * k, 0.57, 3.0), (bb * h * q, k));
        let allowed: Vec<bool> = (0..bb * q * k).map(|i| i % 4 != 3).collect();
        let m = crate::attention::additive_mask(&dev, &allowed, bb, q, k);
        for mask in [None, Some(&m)] {
            check("masked_softmax", &s, &[], &|x| {
                masked_softmax(x.reshape_like(&(bb, h, q, k)), 0.25, mask)
                    .reshape_like(&(bb * h * q, k))
            });
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn buffers_the_pool_fills_are_whole() {
        let n = 3 * cpu::FILL_CHUNK + 5;
        assert_eq!(cpu::zeros(n), vec![0.0; n]);
        let src = values(n, 0.3, 2.0);
        assert_eq!(cpu::copied(&src), src);
    }

    /// Big enough that outputs and gradient copies take the pool's path (`cpu::FILL_CHUNK`).
    #[test]
    fn fused_ops_match_plain_ops_on_large_inputs() {
        let dev = Dev::default();
        let (n, d) = (520, 72);
        let (x, w, b) = inputs(&dev, n, d);
        check("gelu", &x, &[], &|x| gelu(x));
        check("layer_norm", &x, &[&w, &b], &|x| {
            layer_norm(x, &w, &b, 1e-6)
        });
        let u = dev.tensor_from_vec(values(n * d, 0.13, 2.0), (n, d));
        check("geglu", &x, &[], &|x| {
            geglu(x.retaped::<TrainTape>() * 0.7, x * u.clone())
        });
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn fast_exp_and_tanh_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let e = cpu::exp(x);
            assert!(
                (e - x.exp()).abs() <= 3e-7 * x.exp(),
                "exp({x}) = {e} vs {}",
                x.exp()
            );
            let t = cpu::tanh(x);
            assert!(
                (t - x.tanh()).abs() <= 3e-7,
                "tanh({x}) = {t} vs {}",
                x.tanh()
            );
        }
    }
}
