//! Data paths a submitted spec or job may name are confined to configured roots: a request can
//! read data there, and nowhere else on the machine.

use std::path::{Component, Path, PathBuf};

use crate::error::Problem;

/// The folders data may come from; relative paths are relative to the first.
#[derive(Clone, Debug)]
pub struct DataRoots {
    roots: Vec<PathBuf>,
}

impl DataRoots {
    /// `roots` must be absolute (the server canonicalises them at start-up).
    pub fn new(roots: Vec<PathBuf>) -> Self {
        DataRoots { roots }
    }

    pub fn base(&self) -> &Path {
        &self.roots[0]
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// `path` (relative to `base`, or absolute) when it stays inside a root; else the problem,
    /// naming `key`. Checked lexically: a `..` anywhere is refused outright.
    pub fn confine(&self, path: &Path, base: &Path, key: &str) -> Result<PathBuf, Problem> {
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(Problem::at(
                key,
                format!("{}: `..` is not allowed in data paths", path.display()),
            ));
        }
        let full = base.join(path);
        if full.components().any(|c| c == Component::ParentDir) || !full.is_absolute() {
            return Err(Problem::at(
                key,
                format!(
                    "{}: must be an absolute path inside the data roots",
                    full.display()
                ),
            ));
        }
        if self.roots.iter().any(|root| full.starts_with(root)) {
            Ok(full)
        } else {
            Err(Problem::at(
                key,
                format!(
                    "{} is outside the data roots ({})",
                    full.display(),
                    self.roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }

    /// A spec's `data` entry: remote URLs pass (they are not paths on this machine), `file://`
    /// and local paths are confined.
    pub fn confine_data(&self, entry: &str, base: &Path, key: &str) -> Result<String, Problem> {
        if let Some((scheme, _)) = entry.split_once("://")
            && scheme.len() > 1
        {
            return if scheme.eq_ignore_ascii_case("file") {
                Err(Problem::at(
                    key,
                    format!("{entry}: file:// URLs are not allowed; give a path in the data roots"),
                ))
            } else {
                Ok(entry.to_string())
            };
        }
        self.confine(Path::new(entry), base, key)
            .map(|p| p.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roots() -> DataRoots {
        DataRoots::new(vec![PathBuf::from("/data"), PathBuf::from("/shared/sets")])
    }

    #[test]
    fn relative_paths_land_in_the_base() {
        let r = roots();
        assert_eq!(
            r.confine_data("demo/*.parquet", r.base(), "k").unwrap(),
            "/data/demo/*.parquet"
        );
        assert_eq!(
            r.confine_data("/shared/sets/a", r.base(), "k").unwrap(),
            "/shared/sets/a"
        );
        assert_eq!(
            r.confine_data("s3://bucket/x", r.base(), "k").unwrap(),
            "s3://bucket/x"
        );
    }

    #[test]
    fn escapes_are_refused_with_their_key() {
        let r = roots();
        for bad in [
            "../etc/passwd",
            "demo/../../etc",
            "/etc/passwd",
            "/datax/y",
            "file:///etc",
        ] {
            let problem = r
                .confine_data(bad, r.base(), "sources.s.data[0]")
                .unwrap_err();
            assert_eq!(problem.key.as_deref(), Some("sources.s.data[0]"), "{bad}");
        }
    }
}
