//! Scores of generated text against references: exact match, VQA accuracy (with the VQA
//! benchmark's answer normalisation), CIDEr-D for captions, and box IoU and mAP for detections
//! read from loc tokens.

use std::collections::{BTreeMap, HashMap};

use pipeline::loc::{Detection, LocBox, parse_detections};

/// Exact match after trimming whitespace.
pub fn exact_match(prediction: &str, reference: &str) -> f64 {
    f64::from(u8::from(prediction.trim() == reference.trim()))
}

/// An answer as the VQA benchmark compares them: lower case, punctuation removed (but not the
/// decimal point of a number), number words as digits, articles dropped, common contractions
/// restored.
pub fn normalize_answer(answer: &str) -> String {
    let lower = answer.replace(['\n', '\t'], " ").trim().to_lowercase();
    let chars: Vec<char> = lower.chars().collect();
    let mut text = String::with_capacity(lower.len());
    for (i, &c) in chars.iter().enumerate() {
        let between_digits = |i: usize| {
            i > 0
                && chars[i - 1].is_ascii_digit()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
        };
        match c {
            // "1,000" and "3.5" keep their digits together.
            ',' | '.' if between_digits(i) => {
                if c == '.' {
                    text.push(c)
                }
            }
            '.' => {}
            c if c.is_ascii_punctuation() && c != '\'' => text.push(' '),
            c => text.push(c),
        }
    }
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| number_word(w).unwrap_or_else(|| contraction(w).unwrap_or(w)))
        .collect();
    words.join(" ")
}

fn number_word(word: &str) -> Option<&'static str> {
    const NUMBERS: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    const DIGITS: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    if word == "none" {
        return Some("0");
    }
    NUMBERS.iter().position(|n| *n == word).map(|i| DIGITS[i])
}

fn contraction(word: &str) -> Option<&'static str> {
    Some(match word {
        "dont" => "don't",
        "doesnt" => "doesn't",
        "isnt" => "isn't",
        "arent" => "aren't",
        "cant" => "can't",
        "wont" => "won't",
        "didnt" => "didn't",
        "wasnt" => "wasn't",
        "werent" => "weren't",
        "hasnt" => "hasn't",
        "havent" => "haven't",
        "im" => "i'm",
        "ive" => "i've",
        "youre" => "you're",
        "theyre" => "they're",
        "thats" => "that's",
        "whats" => "what's",
        "wheres" => "where's",
        "lets" => "let's",
        _ => return None,
    })
}

/// VQA accuracy of one prediction against its human answers: with several answers, the
/// benchmark's `min(1, matches / 3)` averaged over the leave-one-out subsets; with a single
/// reference, exact match of the normalised answers.
pub fn vqa_accuracy(prediction: &str, references: &[&str]) -> f64 {
    let pred = normalize_answer(prediction);
    let refs: Vec<String> = references.iter().map(|r| normalize_answer(r)).collect();
    match refs.len() {
        0 => 0.0,
        1 => f64::from(u8::from(pred == refs[0])),
        n => {
            let matches = refs.iter().filter(|r| **r == pred).count();
            let total: f64 = refs
                .iter()
                .map(|r| {
                    let others = matches - usize::from(*r == pred);
                    (others as f64 / 3.0).min(1.0)
                })
                .sum();
            total / n as f64
        }
    }
}

/// CIDEr-D of a corpus: candidates and their references, n-grams 1 to 4 weighted by tf-idf
/// over the corpus's references, clipped counts, a Gaussian length penalty (σ = 6), times
/// 10. Returns one score per candidate; the corpus score is their mean.
pub fn cider_d(candidates: &[&str], references: &[Vec<&str>]) -> Vec<f64> {
    const N: usize = 4;
    const SIGMA: f64 = 6.0;
    assert_eq!(
        candidates.len(),
        references.len(),
        "one reference set per candidate"
    );
    let refs: Vec<Vec<NgramCounts>> = references
        .iter()
        .map(|rs| rs.iter().map(|r| ngrams(r, N)).collect())
        .collect();
    // Document frequency: in how many examples' references an n-gram appears.
    let mut df: HashMap<&[String], f64> = HashMap::new();
    for example in &refs {
        let mut seen: Vec<&[String]> = example
            .iter()
            .flat_map(|r| r.counts.keys().map(Vec::as_slice))
            .collect();
        seen.sort();
        seen.dedup();
        for g in seen {
            *df.entry(g).or_default() += 1.0;
        }
    }
    let log_docs = (refs.len().max(1) as f64).ln();
    candidates
        .iter()
        .zip(&refs)
        .map(|(candidate, example_refs)| {
            if example_refs.is_empty() {
                return 0.0;
            }
            let cand = ngrams(candidate, N);
            let (cv, cn) = tf_idf(&cand, &df, log_docs);
            let mut score = 0.0;
            for r in example_refs {
                let (rv, rn) = tf_idf(r, &df, log_docs);
                let delta = cand.words as f64 - r.words as f64;
                let penalty = (-(delta * delta) / (2.0 * SIGMA * SIGMA)).exp();
                for n in 0..N {
                    if cn[n] == 0.0 || rn[n] == 0.0 {
                        continue;
                    }
                    let dot: f64 = cv[n]
                        .iter()
                        .filter_map(|(g, &w)| rv[n].get(g).map(|&rw| w.min(rw) * rw))
                        .sum();
                    score += penalty * dot / (cn[n] * rn[n]);
                }
            }
            10.0 * score / (N * example_refs.len()) as f64
        })
        .collect()
}

/// Per n-gram order: the tf-idf weights of `c`'s n-grams, and their norm.
type Weights<'a> = (Vec<HashMap<&'a [String], f64>>, Vec<f64>);

fn tf_idf<'a>(c: &'a NgramCounts, df: &HashMap<&[String], f64>, log_docs: f64) -> Weights<'a> {
    let orders = c.counts.keys().map(Vec::len).max().unwrap_or(0).max(4);
    let mut weights = vec![HashMap::new(); orders];
    let mut norms = vec![0.0; orders];
    for (g, &tf) in &c.counts {
        let n = g.len() - 1;
        let idf = log_docs - df.get(g.as_slice()).copied().unwrap_or(0.0).max(1.0).ln();
        let w = tf * idf;
        norms[n] += w * w;
        weights[n].insert(g.as_slice(), w);
    }
    (weights, norms.into_iter().map(f64::sqrt).collect())
}

struct NgramCounts {
    counts: BTreeMap<Vec<String>, f64>,
    words: usize,
}

fn ngrams(text: &str, max_n: usize) -> NgramCounts {
    let words: Vec<String> = text
        .to_lowercase()
        .split(|c: char| c.is_whitespace() || (c.is_ascii_punctuation() && c != '\''))
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let mut counts = BTreeMap::new();
    for n in 1..=max_n {
        for g in words.windows(n) {
            *counts.entry(g.to_vec()).or_default() += 1.0;
        }
    }
    NgramCounts {
        counts,
        words: words.len(),
    }
}

/// Intersection over union of two boxes (normalised coordinates); 0 for empty boxes.
pub fn box_iou(a: &LocBox, b: &LocBox) -> f64 {
    let area = |b: &LocBox| (b.y1 - b.y0).max(0.0) * (b.x1 - b.x0).max(0.0);
    let inter = LocBox {
        y0: a.y0.max(b.y0),
        x0: a.x0.max(b.x0),
        y1: a.y1.min(b.y1),
        x1: a.x1.min(b.x1),
    };
    let i = area(&inter);
    let union = area(a) + area(b) - i;
    if union <= 0.0 { 0.0 } else { i / union }
}

/// Detection results accumulated over examples.
#[derive(Clone, Debug, Default)]
pub struct DetectionScore {
    /// Per reference box: the IoU of the predicted box matched to it (0 if none).
    pub matched_iou: Vec<f64>,
    /// Per label: each prediction's (rank in its example, true positive at IoU 0.5), and the
    /// label's reference boxes.
    per_label: BTreeMap<String, (Vec<(usize, bool)>, usize)>,
}

impl DetectionScore {
    /// Adds one example: predicted and reference text in loc-token form. Predictions are
    /// matched one to one to references of the same label, best IoU first.
    pub fn add(&mut self, prediction: &str, reference: &str) {
        let preds = parse_detections(prediction);
        let refs = parse_detections(reference);
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (p, pd) in preds.iter().enumerate() {
            for (r, rd) in refs.iter().enumerate() {
                if pd.label == rd.label {
                    pairs.push((box_iou(&pd.bbox, &rd.bbox), p, r));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut pred_match = vec![None; preds.len()];
        let mut ref_iou = vec![0.0; refs.len()];
        let mut ref_taken = vec![false; refs.len()];
        for (iou, p, r) in pairs {
            if pred_match[p].is_none() && !ref_taken[r] && iou > 0.0 {
                pred_match[p] = Some(iou);
                ref_taken[r] = true;
                ref_iou[r] = iou;
            }
        }
        self.matched_iou.extend(&ref_iou);
        for Detection { label, .. } in &refs {
            self.per_label.entry(label.clone()).or_default().1 += 1;
        }
        for (rank, (d, m)) in preds.iter().zip(&pred_match).enumerate() {
            let hit = m.is_some_and(|iou| iou >= 0.5);
            self.per_label
                .entry(d.label.clone())
                .or_default()
                .0
                .push((rank, hit));
        }
    }

    /// Fraction of reference boxes matched with IoU above `threshold`.
    pub fn recall_at(&self, threshold: f64) -> f64 {
        if self.matched_iou.is_empty() {
            return 0.0;
        }
        let hits = self.matched_iou.iter().filter(|&&i| i > threshold).count();
        hits as f64 / self.matched_iou.len() as f64
    }

    /// Mean IoU of the reference boxes (unmatched count as 0).
    pub fn mean_iou(&self) -> f64 {
        if self.matched_iou.is_empty() {
            return 0.0;
        }
        self.matched_iou.iter().sum::<f64>() / self.matched_iou.len() as f64
    }

    /// Mean over labels with references of the average precision at IoU 0.5. Generated text
    /// has no confidences: a box generated earlier in its sequence ranks higher.
    pub fn map50(&self) -> f64 {
        let aps: Vec<f64> = self
            .per_label
            .values()
            .filter(|(_, refs)| *refs > 0)
            .map(|(preds, refs)| {
                let mut ranked = preds.clone();
                ranked.sort_by_key(|(rank, _)| *rank);
                average_precision(ranked.iter().map(|(_, hit)| *hit), *refs)
            })
            .collect();
        if aps.is_empty() {
            0.0
        } else {
            aps.iter().sum::<f64>() / aps.len() as f64
        }
    }
}

/// Area under the precision-recall curve (all-point interpolation) of ranked hits.
fn average_precision(hits: impl Iterator<Item = bool>, references: usize) -> f64 {
    let mut points = Vec::new();
    let (mut tp, mut seen) = (0usize, 0usize);
    for hit in hits {
        seen += 1;
        tp += usize::from(hit);
        points.push((tp as f64 / references as f64, tp as f64 / seen as f64));
    }
    // Precision made monotone from the right, then summed over recall steps.
    for i in (0..points.len().saturating_sub(1)).rev() {
        points[i].1 = points[i].1.max(points[i + 1].1);
    }
    let mut ap = 0.0;
    let mut last_recall = 0.0;
    for (recall, precision) in points {
        ap += (recall - last_recall) * precision;
        last_recall = recall;
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vqa_normalisation_matches_the_benchmark_rules() {
        assert_eq!(normalize_answer("  Two dogs. "), "2 dogs");
        assert_eq!(normalize_answer("The RED circle!"), "red circle");
        assert_eq!(normalize_answer("3.5"), "3.5");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("dont know"), "don't know");
        assert_eq!(normalize_answer("none"), "0");
    }

    #[test]
    fn vqa_accuracy_counts_agreeing_humans() {
        assert_eq!(vqa_accuracy("Two", &["2"]), 1.0);
        assert_eq!(vqa_accuracy("3", &["2"]), 0.0);
        // Ten humans, two said "red": each leave-one-out subset has 1 or 2 matches.
        let mut refs = vec!["blue"; 8];
        refs.extend(["red", "red"]);
        let acc = vqa_accuracy("red", &refs);
        let expected = (8.0 * (2.0 / 3.0) + 2.0 * (1.0 / 3.0)) / 10.0;
        assert!((acc - expected).abs() < 1e-12, "{acc}");
        // Four matches or more: full credit in every subset.
        assert_eq!(vqa_accuracy("red", &["red"; 4]), 1.0);
    }

    #[test]
    fn cider_rewards_consensus_and_penalises_length() {
        let refs = vec![
            vec!["a red circle left of a blue square"],
            vec!["a green triangle"],
            vec!["a yellow square right of a red circle"],
        ];
        let perfect = cider_d(
            &[
                "a red circle left of a blue square",
                "a green triangle",
                "a yellow square right of a red circle",
            ],
            &refs,
        );
        let wrong = cider_d(&["a green triangle", "a red circle", "a blue blue"], &refs);
        for (p, w) in perfect.iter().zip(&wrong) {
            assert!(p > w, "{perfect:?} vs {wrong:?}");
        }
        // Identical text scores 10 times the n-gram orders with idf weight (all here).
        assert!(perfect[0] > 5.0 && perfect[0] <= 10.0 + 1e-9, "{perfect:?}");
        let longer = cider_d(
            &["a red circle left of a blue square and a blue square and more words"],
            &refs[..1],
        );
        assert_eq!(longer, vec![0.0], "one example: every n-gram has idf 0");
        assert_eq!(cider_d(&["x"], &[vec![]]), vec![0.0]);
    }

    #[test]
    fn iou_of_boxes() {
        let b = |y0, x0, y1, x1| LocBox { y0, x0, y1, x1 };
        assert_eq!(box_iou(&b(0.0, 0.0, 0.5, 0.5), &b(0.0, 0.0, 0.5, 0.5)), 1.0);
        assert_eq!(box_iou(&b(0.0, 0.0, 0.5, 0.5), &b(0.5, 0.5, 1.0, 1.0)), 0.0);
        let half = box_iou(&b(0.0, 0.0, 1.0, 1.0), &b(0.0, 0.0, 1.0, 0.5));
        assert!((half - 0.5).abs() < 1e-12);
    }

    #[test]
    fn detections_match_one_to_one_by_label() {
        let mut s = DetectionScore::default();
        // Two references; the prediction finds the circle exactly, misses the square, and
        // adds a second circle that has nothing left to match.
        s.add(
            "<loc0000><loc0000><loc0511><loc0511> circle ; <loc0000><loc0000><loc0511><loc0511> circle",
            "<loc0000><loc0000><loc0511><loc0511> circle ; <loc0512><loc0512><loc1023><loc1023> square",
        );
        assert_eq!(s.matched_iou, vec![1.0, 0.0]);
        assert_eq!(s.recall_at(0.5), 0.5);
        assert_eq!(s.mean_iou(), 0.5);
        // circle: hit then a false positive (AP 1); square: no prediction (AP 0).
        assert!((s.map50() - 0.5).abs() < 1e-12, "{}", s.map50());
        // Garbage output is no box at all, not a panic.
        s.add(
            "<loc12> circle ; nonsense",
            "<loc0000><loc0000><loc1023><loc1023> circle",
        );
        assert_eq!(s.matched_iou.len(), 3);
    }

    #[test]
    fn average_precision_of_ranked_hits() {
        assert_eq!(average_precision([true, true].into_iter(), 2), 1.0);
        assert_eq!(average_precision([false, true].into_iter(), 1), 0.5);
        assert_eq!(average_precision(std::iter::empty(), 3), 0.0);
    }
}
