//! Per-stage task weights: explicit numbers, or proportional to source sizes.
//!
//! Resolution uses only IEEE basic operations in a fixed order (no libm `powf`, whose last bit
//! differs between platforms), so the same spec gives bit-identical weights everywhere and the
//! sampler's schedule is reproducible on any machine.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::{Mixture, unique_map};

/// How a stage splits its examples between tasks.
///
/// ```toml
/// weights = { caption = 3, vqa = 1 }                               # relative; tasks left out get 0
/// weights = { proportional = { cap = 1_000_000, temperature = 2 } } # seqio-style, from `size`
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawWeights", into = "RawWeights")]
pub enum Weights {
    /// Relative weights by task name, normalised to sum to one.
    Explicit(BTreeMap<String, f64>),
    /// Examples-proportional mixing over source sizes.
    Proportional(Proportional),
}

/// Weight of each task ∝ `min(size, cap) ^ (1 / temperature)`, where `size` is its source's
/// `size` (rows). A cap keeps huge sources from drowning the rest; a temperature above 1
/// flattens the mixture toward uniform (as in seqio's `MixtureRegistry` rates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proportional {
    /// Rows counted at most per source; default: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<u64>,
    /// Default 1: weights exactly proportional to the (capped) sizes.
    #[serde(default = "one")]
    pub temperature: f64,
    /// Tasks that take part; default: every task of the mixture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<String>>,
}

fn one() -> f64 {
    1.0
}

/// The wire form: a table of numbers, or a table with the single key `proportional`.
#[derive(Clone, Serialize, Deserialize)]
struct RawWeights(#[serde(deserialize_with = "unique_map")] BTreeMap<String, Entry>);

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Number(f64),
    Proportional(Proportional),
}

impl TryFrom<RawWeights> for Weights {
    type Error = String;
    fn try_from(RawWeights(mut map): RawWeights) -> Result<Self, String> {
        if let Some(Entry::Proportional(p)) = map.remove("proportional") {
            return match map.is_empty() {
                true => Ok(Weights::Proportional(p)),
                false => Err("`proportional` cannot be mixed with per-task weights".into()),
            };
        }
        map.into_iter()
            .map(|(task, entry)| match entry {
                Entry::Number(w) => Ok((task, w)),
                Entry::Proportional(_) => Err(format!("weight of {task:?} must be a number")),
            })
            .collect::<Result<_, _>>()
            .map(Weights::Explicit)
    }
}

impl From<Weights> for RawWeights {
    fn from(weights: Weights) -> Self {
        RawWeights(match weights {
            Weights::Explicit(map) => map
                .into_iter()
                .map(|(t, w)| (t, Entry::Number(w)))
                .collect(),
            Weights::Proportional(p) => {
                BTreeMap::from([("proportional".into(), Entry::Proportional(p))])
            }
        })
    }
}

impl Weights {
    /// Raw (unnormalised) weight per named task, in task-name order. Tasks or sizes the spec
    /// lacks are left out here; validation reports them.
    pub(crate) fn raw(&self, mixture: &Mixture) -> Vec<(String, f64)> {
        match self {
            Weights::Explicit(map) => map.iter().map(|(t, &w)| (t.clone(), w)).collect(),
            Weights::Proportional(p) => {
                let mut tasks: Vec<&String> = match &p.tasks {
                    Some(list) => list.iter().collect(),
                    None => mixture.tasks.keys().collect(),
                };
                tasks.sort();
                tasks.dedup();
                // In log space, relative to the largest: rows^(1/T) overflows for small T.
                let logs: Vec<(String, f64)> = tasks
                    .into_iter()
                    .filter_map(|t| {
                        let size = mixture.sources.get(&mixture.tasks.get(t)?.source)?.size?;
                        let rows = p.cap.map_or(size, |cap| size.min(cap)).max(1);
                        Some((t.clone(), ln(rows as f64) / p.temperature))
                    })
                    .collect();
                let top = logs
                    .iter()
                    .map(|(_, l)| *l)
                    .fold(f64::NEG_INFINITY, f64::max);
                logs.into_iter().map(|(t, l)| (t, exp(l - top))).collect()
            }
        }
    }
}

/// Normalised weights (summing to one) of the tasks with a positive weight, in name order;
/// `None` when no weight is positive.
pub(crate) fn normalise(raw: &[(String, f64)]) -> Option<Vec<(String, f64)>> {
    let positive = || raw.iter().filter(|(_, w)| w.is_finite() && *w > 0.0);
    let total: f64 = positive().map(|(_, w)| w).sum();
    (total > 0.0).then(|| positive().map(|(t, w)| (t.clone(), w / total)).collect())
}

const LN_2: f64 = std::f64::consts::LN_2;

/// ln x for finite x > 0, from basic operations only: split x = m·2^e with m in [1, 2), then ln m = 2·atanh((m-1)/(m+1)).
fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mantissa = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let z = (mantissa - 1.0) / (mantissa + 1.0); // |z| < 1/3: the series converges fast
    let z2 = z * z;
    let (mut term, mut sum) = (z, 0.0);
    for k in 0..30 {
        sum += term / (2 * k + 1) as f64;
        term *= z2;
    }
    2.0 * sum + exponent as f64 * LN_2
}

/// e^y: reduce to r in [-ln2/2, ln2/2], Taylor-expand, then scale by 2^k exactly.
fn exp(y: f64) -> f64 {
    if y > 709.0 {
        return f64::INFINITY;
    }
    if y < -708.0 {
        return 0.0;
    }
    let k = (y / LN_2).round();
    let r = y - k * LN_2;
    let (mut term, mut sum) = (1.0, 1.0);
    for n in 1..25 {
        term *= r / n as f64;
        sum += term;
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_and_exp_match_libm_closely() {
        for &(x, y) in &[
            (2.0, 0.5),
            (1e6, 1.0 / 3.0),
            (123456.0, 0.25),
            (7.0, 1.0),
            (1e12, 0.5),
            (0.3, 2.0),
        ] {
            let (ours, libm) = (exp(y * ln(x)), f64::powf(x, y));
            assert!(
                ((ours - libm) / libm).abs() < 1e-13,
                "{x}^{y}: {ours} vs {libm}"
            );
        }
        assert_eq!(exp(-1000.0), 0.0);
    }

    #[test]
    fn normalise_drops_zero_and_sums_to_one() {
        let raw = vec![("a".into(), 3.0), ("b".into(), 0.0), ("c".into(), 1.0)];
        let w = normalise(&raw).unwrap();
        assert_eq!(w, vec![("a".to_string(), 0.75), ("c".to_string(), 0.25)]);
        assert_eq!(normalise(&[("a".into(), 0.0)]), None);
    }
}
