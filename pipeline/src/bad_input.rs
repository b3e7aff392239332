//! The bad-input policy: a bad example is counted by reason with its location, logged and
//! skipped; past a limit the stream fails with an error that says what went wrong where.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::location::Location;

/// Why an example was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Image bytes that its format's decoder rejects (corrupt or truncated).
    CorruptImage,
    /// Image bytes in no format the decoder knows.
    UnsupportedImageFormat,
    /// A column the task needs is not in the shard.
    MissingColumn,
    /// A null where a value is needed.
    NullValue,
    /// A value of a type the column's use cannot take.
    WrongType,
    /// A Parquet file or row group that cannot be read (truncated, corrupt).
    UnreadableParquet,
    /// An image URL that could not be fetched after the retries.
    UnreachableUrl,
    /// An image path that does not exist or cannot be read.
    MissingFile,
    /// A template that cannot be rendered from the row (e.g. a malformed box).
    BadTemplateValue,
    /// An example longer than the text length whose task's policy is `skip`.
    OverLength,
}

impl Reason {
    /// Over-length examples are a policy, not bad data: they don't count toward the limit.
    pub fn counts_toward_limit(self) -> bool {
        self != Reason::OverLength
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = serde_json::to_value(self).ok();
        write!(
            f,
            "{}",
            name.as_ref().and_then(|v| v.as_str()).unwrap_or("?")
        )
    }
}

/// One skipped example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BadInput {
    pub reason: Reason,
    pub location: Location,
    pub detail: String,
}

impl BadInput {
    pub fn new(reason: Reason, location: Location, detail: impl Into<String>) -> Self {
        Self {
            reason,
            location,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}: {}", self.reason, self.location, self.detail)
    }
}

/// How many bad examples a stream tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BadInputPolicy {
    /// Fail once more than this fraction of the examples seen are bad...
    pub max_fraction: f64,
    /// ...but only judge after this many examples (a few bad rows early on are not a trend).
    pub min_examples: u64,
}

impl Default for BadInputPolicy {
    fn default() -> Self {
        Self {
            max_fraction: 0.01,
            min_examples: 200,
        }
    }
}

/// Counters of the examples skipped so far, by reason, with the first few locations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BadInputStats {
    pub seen: u64,
    pub counts: BTreeMap<Reason, u64>,
    pub first: Vec<BadInput>,
}

const KEEP_FIRST: usize = 10;

impl BadInputStats {
    pub fn record_good(&mut self) {
        self.seen += 1;
    }

    pub fn record_bad(&mut self, bad: BadInput) {
        self.seen += 1;
        tracing::warn!(reason = %bad.reason, location = %bad.location, "skipping example: {}", bad.detail);
        *self.counts.entry(bad.reason).or_default() += 1;
        if self.first.len() < KEEP_FIRST {
            self.first.push(bad);
        }
    }

    /// Bad examples that count toward the policy's limit.
    pub fn bad(&self) -> u64 {
        self.counts
            .iter()
            .filter(|(r, _)| r.counts_toward_limit())
            .map(|(_, n)| n)
            .sum()
    }

    pub fn count(&self, reason: Reason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// `final_check` judges even a short stream (at its end).
    pub fn check(
        &self,
        policy: &BadInputPolicy,
        final_check: bool,
    ) -> Result<(), TooManyBadInputs> {
        if self.seen == 0 || (!final_check && self.seen < policy.min_examples) {
            return Ok(());
        }
        let bad = self.bad();
        if bad as f64 > policy.max_fraction * self.seen as f64 {
            return Err(TooManyBadInputs {
                stats: self.clone(),
                policy: *policy,
            });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct TooManyBadInputs {
    pub stats: BadInputStats,
    pub policy: BadInputPolicy,
}

impl fmt::Display for TooManyBadInputs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        write!(
            f,
            "{} of {} examples were bad (limit {:.2}%)",
            s.bad(),
            s.seen,
            self.policy.max_fraction * 100.0
        )?;
        let mut reasons: Vec<_> = s
            .counts
            .iter()
            .filter(|(r, _)| r.counts_toward_limit())
            .collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{r} x{n}")).collect();
        write!(f, "; most frequent: {}", reasons.join(", "))?;
        for bad in s
            .first
            .iter()
            .filter(|b| b.reason.counts_toward_limit())
            .take(5)
        {
            write!(f, "\n  {bad}")?;
        }
        Ok(())
    }
}
