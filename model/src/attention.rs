//! Attention: the batch contract's mask, rotary position embedding (half-split, from per-token
//! positions), and multi-head attention with multi- or grouped-query key/value heads, all from
//! dfdx tensor ops so that they differentiate.

use dfdx::prelude::*;

use crate::{Dev, Matrix};

/// A `[batch, queries, keys]` additive mask (0 where allowed, `f32::MIN` where not), shared by
/// every head and layer.
pub type Mask = Tensor<(usize, usize, usize), f32, Dev>;

/// Which keys each query may attend to, `[batch, len, len]` row-major, from the batch contract.
///
/// Query `i` sees key `j` of the same row iff `segment_ids[j] != 0` and
/// - `segment_ids[i] == segment_ids[j]` (same packed example), and
/// - `j <= i`, or both `i` and `j` are non-causal (image, prefix: full attention).
///
/// A padding query (`segment_ids[i] == 0`) sees every non-padding key with `j <= i` or
/// non-causal `j`, as transformers' PaliGemma does for right padding; its output carries no
/// loss, and no row is ever fully masked.
pub fn allowed(batch: usize, len: usize, segment_ids: &[u16], causal: &[bool]) -> Vec<bool> {
    assert_eq!(segment_ids.len(), batch * len, "segment_ids");
    assert_eq!(causal.len(), batch * len, "causal");
    let mut out = vec![false; batch * len * len];
    for b in 0..batch {
        let seg = &segment_ids[b * len..(b + 1) * len];
        let cau = &causal[b * len..(b + 1) * len];
        for i in 0..len {
            let row = &mut out[(b * len + i) * len..(b * len + i + 1) * len];
            for j in 0..len {
                row[j] = seg[j] != 0
                    && (seg[i] == seg[j] || seg[i] == 0)
                    && (j <= i || (!cau[i] && !cau[j]));
            }
        }
    }
    out
}

/// The additive form of `allowed` (`[batch, queries, keys]`).
pub fn additive_mask(
    dev: &Dev,
    allowed: &[bool],
    batch: usize,
    queries: usize,
    keys: usize,
) -> Mask {
    assert_eq!(allowed.len(), batch * queries * keys, "mask size");
    let v = allowed
        .iter()
        .map(|&a| if a { 0.0 } else { f32::MIN })
        .collect();
    dev.tensor_from_vec(v, (batch, queries, keys))
}

/// cos/sin tables of rotary embeddings for a list of token positions, and the fixed signed
/// permutation that computes `rotate_half`.
#[derive(Clone, Debug)]
pub struct Rope {
    /// `[tokens, head_dim]`: `cos(pos * inv_freq)` repeated for both halves.
    pub cos: Matrix,
    /// `[tokens, head_dim]`.
    pub sin: Matrix,
    /// `[head_dim, head_dim]`: `x @ rot == cat(-x[h/2..], x[..h/2])`.
    ///
    /// A matmul rather than slices: dfdx 0.13's `slice` backward assigns its gradient instead of
    /// adding it, which silently breaks the gradient of a tensor that is sliced and used again.
    pub rot: Matrix,
}

impl Rope {
    /// Tables for `positions` (one per token, any order), computed in f32 as transformers does:
    /// `inv_freq[i] = 1 / theta^(2i / head_dim)`, angle `= pos * inv_freq`.
    pub fn new(dev: &Dev, positions: &[u32], head_dim: usize, theta: f64) -> Self {
        let half = head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        let n = positions.len();
        let mut cos = vec![0f32; n * head_dim];
        let mut sin = vec![0f32; n * head_dim];
        for (t, &p) in positions.iter().enumerate() {
            for (i, &f) in inv.iter().enumerate() {
                let a = p as f32 * f;
                let (s, c) = a.sin_cos();
                cos[t * head_dim + i] = c;
                cos[t * head_dim + half + i] = c;
                sin[t * head_dim + i] = s;
                sin[t * head_dim + half + i] = s;
            }
        }
        let mut rot = vec![0f32; head_dim * head_dim];
        for j in 0..half {
            rot[(j + half) * head_dim + j] = -1.0; // out[j] = -x[j + half]
            rot[j * head_dim + j + half] = 1.0; // out[j + half] = x[j]
        }
        Rope {
            cos: dev.tensor_from_vec(cos, (n, head_dim)),
            sin: dev.tensor_from_vec(sin, (n, head_dim)),
            rot: dev.tensor_from_vec(rot, (head_dim, head_dim)),
        }
    }

    /// `x`: `[tokens, heads * head_dim]` -> `x * cos + rotate_half(x) * sin`, per head.
    pub fn apply<T: Tape<f32, Dev>>(&self, x: Matrix<T>, heads: usize) -> Matrix<T> {
        let (n, width) = *x.shape();
        let hd = self.rot.shape().0;
        assert_eq!(width, heads * hd, "rope width");
        assert_eq!(n, self.cos.shape().0, "rope: tokens vs table rows");
        crate::fused::rope(x, heads, &self.cos, &self.sin, &self.rot)
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct Heads {
    pub batch: usize,
    pub queries: usize,
    pub keys: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl Heads {
    /// Self-attention of `batch` sequences of `len` with `heads` heads, each its own key/value
    /// head (SigLIP's towers).
    pub fn self_attention(batch: usize, len: usize, heads: usize, head_dim: usize) -> Self {
        Heads {
            batch,
            queries: len,
            keys: len,
            heads,
            kv_heads: heads,
            head_dim,
        }
    }
}

/// Scaled dot-product attention.
///
/// `q`: `[batch * queries, heads * head_dim]`; `k`, `v`: `[batch * keys, kv_heads * head_dim]`
/// (rows batch-major). Query head `h` uses key/value head `h / (heads / kv_heads)`, as
/// transformers' `repeat_kv`. `mask`: `[batch, queries, keys]` additive, or none (full
/// attention). Returns `[batch * queries, heads * head_dim]`.
pub fn attention<T: Tape<f32, Dev>>(
    q: Matrix<T>,
    k: Matrix<T>,
    v: Matrix<T>,
    h: Heads,
    mask: Option<&Mask>,
) -> Matrix<T> {
    crate::fused::attention(q, k, v, h, mask)
}

/// [`attention`] from dfdx's ops: heads reshaped to `[batch, kv_heads, group * queries,
/// head_dim]` so one batched matmul serves every query head of a key/value head.
pub fn plain_attention<T: Tape<f32, Dev>>(
    q: Matrix<T>,
    k: Matrix<T>,
    v: Matrix<T>,
    h: Heads,
    mask: Option<&Mask>,
) -> Matrix<T> {
    let Heads {
        batch: b,
        queries: lq,
        keys: lk,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
    } = h;
    let g = nh / nkv;
    // Query heads grouped by the key/value head they share: [b, nkv, g * lq, hd].
    let q = q
        .reshape_like(&(b, lq, nh, hd))
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b, nkv, g * lq, hd));
    let kt = k
        .reshape_like(&(b, lk, nkv, hd))
        .permute::<_, Axes4<0, 2, 3, 1>>();
    let v = v
        .reshape_like(&(b, lk, nkv, hd))
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let scores = q.matmul(kt).reshape_like(&(b, nh, lq, lk));
    let probs = crate::fused::masked_softmax(scores, (hd as f32).powf(-0.5), mask).reshape_like(&(
        b,
        nkv,
        g * lq,
        lk,
    ));
    probs
        .matmul(v)
        .reshape_like(&(b, nh, lq, hd))
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b * lq, nh * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_follows_the_contract() {
        // one row: [img img pre | suf suf | seg2: pre suf | pad]
        let seg = [1u16, 1, 1, 1, 1, 2, 2, 0];
        let cau = [false, false, false, true, true, false, true, false];
        let a = allowed(1, 8, &seg, &cau);
        let at = |i: usize, j: usize| a[i * 8 + j];
        assert!(at(0, 2) && at(2, 0)); // prefix is bidirectional
        assert!(!at(0, 3) && !at(2, 3)); // prefix does not see the suffix
        assert!(at(3, 0) && at(3, 3) && !at(3, 4) && at(4, 3)); // suffix is causal
        assert!(!at(5, 0) && !at(0, 5) && !at(6, 4)); // packed examples are isolated
        assert!(!at(5, 6) && at(6, 5));
        assert!((0..8).all(|i| !at(i, 7) || i == 7) && !at(7, 7)); // padding keys are never seen
        assert!(at(7, 0) && at(7, 6)); // a padding query sees real keys: no empty row
    }

    #[test]
    fn rope_rotates_halves_and_is_relative() {
        let dev = Dev::default();
        let hd = 8;
        let r = Rope::new(&dev, &[3, 5], hd, 10000.0);
        let x: Vec<f32> = (0..2 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let y = r.apply(dev.tensor_from_vec(x.clone(), (2, hd)), 1).as_vec();
        let (c, s) = (r.cos.as_vec(), r.sin.as_vec());
        for t in 0..2 {
            for j in 0..hd {
                let rot = if j < hd / 2 {
                    -x[t * hd + j + hd / 2]
                } else {
                    x[t * hd + j - hd / 2]
                };
                let e = x[t * hd + j] * c[t * hd + j] + rot * s[t * hd + j];
                assert!((y[t * hd + j] - e).abs() < 1e-6);
            }
        }
        // q(p1) . k(p2) depends only on p1 - p2
        let dot = |p1: u32, p2: u32| {
            let r = Rope::new(&dev, &[p1, p2], hd, 10000.0);
            let q = &x[..hd];
            let k = &x[hd..];
            let mut v = q.to_vec();
            v.extend_from_slice(k);
            let y = r.apply(dev.tensor_from_vec(v, (2, hd)), 1).as_vec();
            (0..hd).map(|j| y[j] * y[hd + j]).sum::<f32>()
        };
        assert!((dot(7, 2) - dot(15, 10)).abs() < 1e-5);
    }

    /// Guards the slice-backward trap: d/dx sum(w * rope(x)) = w*cos + rotate_half^T(w*sin),
    /// for both the fused CPU op and the plain-op (matmul) form.
    #[test]
    fn rope_gradient_is_exact() {
        rope_gradient_check();
        crate::fused::with_plain_ops(rope_gradient_check);
    }

    fn rope_gradient_check() {
        let dev = Dev::default();
        let (n, heads, hd) = (3, 2, 8);
        let r = Rope::new(&dev, &[1, 4, 9], hd, 10000.0);
        let xv: Vec<f32> = (0..n * heads * hd)
            .map(|i| (i as f32 * 0.61).cos())
            .collect();
        let wv: Vec<f32> = (0..n * heads * hd)
            .map(|i| (i as f32 * 0.23).sin() + 0.5)
            .collect();
        let x = dev.tensor_from_vec(xv.clone(), (n, heads * hd));
        let w = dev.tensor_from_vec(wv.clone(), (n, heads * hd));
        // use x twice more so a wrong (assigning) backward would show
        let xt = x.leaky_trace();
        let y = r.apply(xt.retaped::<OwnedTape<f32, Dev>>(), heads);
        let loss = (y * w.clone()).sum::<Rank0, _>() + xt.sum::<Rank0, _>();
        let g = loss.backward().get(&x).as_vec();
        let (c, s) = (r.cos.as_vec(), r.sin.as_vec());
        for t in 0..n {
            for h in 0..heads {
                for j in 0..hd {
                    let i = (t * heads + h) * hd + j;
                    // rotate_half^T(u)[j] = u[j + half] for j < half, -u[j - half] otherwise
                    let u = |jj: usize| wv[(t * heads + h) * hd + jj] * s[t * hd + jj];
                    let rt = if j < hd / 2 {
                        u(j + hd / 2)
                    } else {
                        -u(j - hd / 2)
                    };
                    let e = wv[i] * c[t * hd + j] + rt + 1.0;
                    assert!((g[i] - e).abs() < 1e-5, "grad[{i}] = {} expected {e}", g[i]);
                }
            }
        }
    }

    #[test]
    fn grouped_query_attention_matches_a_scalar_loop() {
        let dev = Dev::default();
        let h = Heads {
            batch: 2,
            queries: 3,
            keys: 4,
            heads: 4,
            kv_heads: 2,
            head_dim: 2,
        };
        let f = |n: usize, k: f32| -> Vec<f32> { (0..n).map(|i| (i as f32 * k).sin()).collect() };
        let (qv, kv, vv) = (f(2 * 3 * 8, 0.7), f(2 * 4 * 4, 1.3), f(2 * 4 * 4, 0.4));
        let allowed: Vec<bool> = (0..2 * 3 * 4).map(|i| i % 5 != 1).collect();
        let m = additive_mask(&dev, &allowed, 2, 3, 4);
        let out = attention(
            dev.tensor_from_vec(qv.clone(), (6, 8)),
            dev.tensor_from_vec(kv.clone(), (8, 4)),
            dev.tensor_from_vec(vv.clone(), (8, 4)),
            h,
            Some(&m),
        )
        .as_vec();
        for b in 0..2 {
            for i in 0..3 {
                for head in 0..4 {
                    let kvh = head / 2;
                    let mut s: Vec<f32> = (0..4)
                        .map(|j| {
                            let d: f32 = (0..2)
                                .map(|d| {
                                    qv[(b * 3 + i) * 8 + head * 2 + d]
                                        * kv[(b * 4 + j) * 4 + kvh * 2 + d]
                                })
                                .sum();
                            if allowed[(b * 3 + i) * 4 + j] {
                                d / 2f32.sqrt()
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    s.iter_mut().for_each(|x| *x = (*x - mx).exp());
                    let z: f32 = s.iter().sum();
                    for d in 0..2 {
                        let e: f32 = (0..4)
                            .map(|j| s[j] / z * vv[(b * 4 + j) * 4 + kvh * 2 + d])
                            .sum();
                        let got = out[(b * 3 + i) * 8 + head * 2 + d];
                        assert!(
                            (got - e).abs() < 1e-5,
                            "b{b} i{i} h{head} d{d}: {got} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
