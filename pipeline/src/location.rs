//! Where a piece of input came from, so every error and bad row can be found again.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Location {
    /// The shard's path or URL.
    pub shard: String,
    pub row_group: usize,
    /// Row index within the row group.
    pub row: usize,
    /// The column at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
}

impl Location {
    pub fn new(shard: impl Into<String>, row_group: usize, row: usize) -> Self {
        Self {
            shard: shard.into(),
            row_group,
            row,
            column: None,
        }
    }

    pub fn with_column(&self, column: impl Into<String>) -> Self {
        Self {
            column: Some(column.into()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} row group {} row {}",
            self.shard, self.row_group, self.row
        )?;
        if let Some(column) = &self.column {
            write!(f, " column {column:?}")?;
        }
        Ok(())
    }
}
