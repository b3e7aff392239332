//! "Did you mean ...?": the closest known name by edit distance.

/// The candidate closest to `name`, if it is close enough to be a plausible typo: at most half
/// of the longer name differs, or one name extends the other (`ocr` → `ocr_en`).
pub(crate) fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| (distance(name, c), c))
        .filter(|&(d, c)| {
            let longer = name.chars().count().max(c.chars().count());
            2 * d <= longer || (!name.is_empty() && (c.starts_with(name) || name.starts_with(c)))
        })
        // Ties go to the alphabetically first name so suggestions are stable.
        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("caption", "caption"), 0);
        assert_eq!(distance("capton", "caption"), 1);
    }

    #[test]
    fn suggestions() {
        let names = ["ocr_en", "caption", "vqa"];
        assert_eq!(closest("ocr", names).as_deref(), Some("ocr_en"));
        assert_eq!(closest("captoin", names).as_deref(), Some("caption"));
        assert_eq!(closest("detection", names), None);
        assert_eq!(
            closest("vqa", names),
            None,
            "an exact match is not a suggestion"
        );
    }
}
