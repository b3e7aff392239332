//! Weighted cross-entropy straight from logits, with optional label smoothing.

use dfdx::prelude::*;

use crate::{Dev, Matrix};

/// Options of the training loss.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LossOptions {
    /// Label smoothing `e`: the target distribution is `(1 - e) onehot + e / vocab`.
    pub label_smoothing: f32,
}

/// `sum_i w_i CE_i / sum_i w_i` over rows of `logits` (`[rows, vocab]`), `CE_i =
/// -(1 - e) log p(t_i) - e mean_v log p(v)`. Zero total weight gives 0.
pub fn weighted_cross_entropy<T: Tape<f32, Dev>>(
    logits: Matrix<T>,
    targets: &[u32],
    weights: &[f32],
    opts: &LossOptions,
) -> Tensor<Rank0, f32, Dev, T> {
    let (rows, vocab) = *logits.shape();
    assert_eq!(targets.len(), rows, "targets");
    assert_eq!(weights.len(), rows, "weights");
    let total: f32 = weights.iter().sum();
    let norm = if total != 0.0 { 1.0 / total } else { 0.0 };
    let w: Vec<f32> = weights.iter().map(|&x| x * norm).collect();
    debug_assert!(
        targets.iter().all(|&t| (t as usize) < vocab),
        "target outside the vocabulary"
    );
    crate::fused::weighted_cross_entropy(logits, targets, &w, opts.label_smoothing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ce(logits: &[f32], vocab: usize, t: &[u32], w: &[f32], e: f32) -> f32 {
        let mut num = 0.0;
        for (r, (&ti, &wi)) in t.iter().zip(w).enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let m = row.iter().cloned().fold(f32::MIN, f32::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f32>().ln();
            let nll = lse - row[ti as usize];
            let smooth = lse - row.iter().sum::<f32>() / vocab as f32;
            num += wi * ((1.0 - e) * nll + e * smooth);
        }
        num / w.iter().sum::<f32>()
    }

    #[test]
    fn matches_a_scalar_reference_with_weights_and_smoothing() {
        let dev = Dev::default();
        let (rows, vocab) = (4, 7);
        let l: Vec<f32> = (0..rows * vocab)
            .map(|i| (i as f32 * 0.9).sin() * 3.0)
            .collect();
        let t = [1u32, 6, 0, 3];
        let w = [1.0f32, 0.0, 2.0, 0.5];
        for e in [0.0f32, 0.1] {
            let got = weighted_cross_entropy(
                dev.tensor_from_vec(l.clone(), (rows, vocab)),
                &t,
                &w,
                &LossOptions { label_smoothing: e },
            )
            .array();
            let want = ce(&l, vocab, &t, &w, e);
            assert!((got - want).abs() < 1e-5, "e={e}: {got} vs {want}");
        }
        let zero = weighted_cross_entropy(
            dev.tensor_from_vec(l, (rows, vocab)),
            &t,
            &[0.0; 4],
            &LossOptions::default(),
        );
        assert_eq!(zero.array(), 0.0);
    }
}
