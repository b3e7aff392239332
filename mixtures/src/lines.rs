//! Where each key of a TOML spec sits, so validation errors can name a line.
//!
//! Serde forgets positions, so we parse the text a second time into toml's spanned document
//! and record the line of every key path (`stages[1].weights.ocr`).

use std::collections::HashMap;

use toml::de::{DeTable, DeValue};

/// Key path → 1-based line. Empty for specs that did not come from TOML.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lines(HashMap<String, usize>);

// Positions are not part of what a spec means: the same spec read from TOML or JSON is equal.
impl PartialEq for Lines {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Lines {
    pub(crate) fn from_toml(text: &str) -> Lines {
        let mut lines = Lines::default();
        // A spec that parsed with serde parses here too; on failure we simply know no lines.
        if let Ok(doc) = DeTable::parse(text) {
            let starts = LineStarts::new(text);
            lines.table("", doc.get_ref(), &starts);
        }
        lines
    }

    /// The line of `path`, or of its nearest ancestor that appears in the text (a missing key
    /// is best pointed at the table that lacks it).
    pub(crate) fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.0.get(path) {
                return Some(line);
            }
            path = parent(path)?;
        }
    }

    fn table(&mut self, path: &str, table: &DeTable<'_>, starts: &LineStarts) {
        for (key, value) in table {
            let path = key_path(path, key.get_ref());
            self.0.insert(path.clone(), starts.line(key.span().start));
            self.value(&path, value.get_ref(), starts);
        }
    }

    fn value(&mut self, path: &str, value: &DeValue<'_>, starts: &LineStarts) {
        match value {
            DeValue::Table(table) => self.table(path, table, starts),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = index_path(path, i);
                    self.0.insert(path.clone(), starts.line(item.span().start));
                    self.value(&path, item.get_ref(), starts);
                }
            }
            _ => {}
        }
    }
}

/// Byte offsets where lines start, to turn spans into line numbers.
struct LineStarts(Vec<usize>);

impl LineStarts {
    fn new(text: &str) -> Self {
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        LineStarts(std::iter::once(0).chain(newlines).collect())
    }

    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&start| start <= offset)
    }
}

/// `parent.key`, quoting keys that are not bare TOML keys.
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

pub(crate) fn index_path(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The path one level up: `a.b[2]` → `a.b` → `a`; quoted keys are skipped whole.
fn parent(path: &str) -> Option<&str> {
    if let Some(open) = path.strip_suffix(']').and_then(|p| p.rfind('[')) {
        return Some(&path[..open]);
    }
    let cut = if let Some(quoted) = path.strip_suffix('"') {
        let open = quoted.rfind('"')?;
        path[..open].rfind('.')
    } else {
        path.rfind('.')
    };
    cut.map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_parents() {
        assert_eq!(key_path("", "tasks"), "tasks");
        assert_eq!(key_path("tasks", "my task"), "tasks.\"my task\"");
        assert_eq!(parent("stages[1].weights.ocr"), Some("stages[1].weights"));
        assert_eq!(parent("stages[1]"), Some("stages"));
        assert_eq!(parent("tasks.\"a.b\""), Some("tasks"));
        assert_eq!(parent("stages"), None);
    }

    #[test]
    fn lines_of_keys() {
        let text = "seed = 1\n\n[tasks.vqa]\nsource = \"d\"\n\n[[stages]]\nname = \"a\"\n[[stages]]\nname = \"b\"\nweights = { x = 1,\n  ocr = 2 }\n";
        let lines = Lines::from_toml(text);
        assert_eq!(lines.line("seed"), Some(1));
        assert_eq!(lines.line("tasks.vqa.source"), Some(4));
        assert_eq!(lines.line("stages[1].name"), Some(9));
        assert_eq!(lines.line("stages[1].weights.ocr"), Some(11));
        assert_eq!(lines.line("stages[1].budget"), lines.line("stages[1]"));
        assert_eq!(lines.line("nowhere"), None);
    }
}
