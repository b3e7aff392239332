//! A source's reader: an async task that walks its plan (epoch by epoch, unit by unit) and
//! sends rows, fetched and ready for the CPU stage, each tagged with the cursor just past it.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::OpenSource;
use super::columns::{self, RawRow};
use super::fetch::Fetcher;
use super::parquet::ShardFile;
use super::plan::{ShardSpec, Unit, plan};
use crate::bad_input::{BadInput, Reason};
use crate::location::Location;
use crate::record::Record;

/// Where a reader is: rows `0..row` of unit `unit` of epoch `epoch`'s plan are consumed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    pub unit: usize,
    pub row: usize,
}

/// What a reader sends, each with the cursor that resumes right after it.
#[derive(Debug)]
pub enum SourceItem {
    /// A row, or why it was skipped.
    Row {
        item: Result<Record, BadInput>,
        after: Cursor,
    },
    /// Every row of an epoch has been sent: the schedule counts passes by these.
    EpochEnd { after: Cursor },
}

/// Keep only rows whose `column` equals `value` (numbers compare by value).
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    pub column: String,
    pub value: Value,
}

impl RowFilter {
    fn keeps(&self, fields: &Map<String, Value>) -> bool {
        match (fields.get(&self.column), &self.value) {
            (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
            (Some(v), want) => v == want,
            (None, _) => false,
        }
    }
}

/// Rows per Arrow record batch: small, so a huge row group never sits decoded in memory.
const READ_BATCH_ROWS: usize = 32;

pub struct Reader {
    pub source: Arc<OpenSource>,
    /// Non-image columns to read: `(name in the templates, column in the shards)`.
    pub text_columns: Vec<(String, String)>,
    /// Rows that are not this task's; they are skipped silently (they are not bad).
    pub filter: Option<RowFilter>,
    pub shard: ShardSpec,
    pub seed: u64,
    pub fetcher: Fetcher,
}

impl Reader {
    /// Sends items from `start` on until the source's epochs are spent or `tx` is closed.
    pub async fn run(self, start: Cursor, tx: mpsc::Sender<SourceItem>) {
        let row_groups: Vec<Vec<usize>> = self
            .source
            .files
            .iter()
            .map(ShardFile::row_groups)
            .collect();
        for epoch in start.epoch.. {
            if self
                .source
                .config
                .epochs
                .is_some_and(|limit| epoch >= limit)
            {
                return;
            }
            let units = plan(
                &row_groups,
                self.shard,
                epoch,
                self.seed,
                self.source.config.shuffle,
            );
            if units.is_empty() {
                return;
            }
            let first = if epoch == start.epoch { start.unit } else { 0 };
            for (u, unit) in units.iter().enumerate().skip(first) {
                let skip = if epoch == start.epoch && u == start.unit {
                    start.row
                } else {
                    0
                };
                if !self
                    .read_unit(
                        unit,
                        Cursor {
                            epoch,
                            unit: u,
                            row: skip,
                        },
                        &tx,
                    )
                    .await
                {
                    return;
                }
            }
            let after = Cursor {
                epoch: epoch + 1,
                unit: 0,
                row: 0,
            };
            if tx.send(SourceItem::EpochEnd { after }).await.is_err() {
                return;
            }
        }
    }

    /// Sends the unit's rows from `cursor.row` on; false once the receiver is gone.
    async fn read_unit(&self, unit: &Unit, cursor: Cursor, tx: &mpsc::Sender<SourceItem>) -> bool {
        let file = &self.source.files[unit.shard];
        let first_row = unit.rows.start + cursor.row;
        let location = Location::new(&file.shard.name, unit.row_group, first_row);
        let mut sent = 0;
        let send = |item, sent: usize| {
            let after = Cursor {
                row: cursor.row + sent,
                ..cursor
            };
            tx.send(SourceItem::Row { item, after })
        };
        let result: Result<(), Option<String>> = async {
            let mut batches = self
                .open_unit(file, unit.row_group, first_row..unit.rows.end)
                .map_err(Some)?;
            while let Some(batch) = batches.try_next().await.map_err(|e| Some(e.to_string()))? {
                let at = Location {
                    row: first_row + sent,
                    ..location.clone()
                };
                let rows = columns::rows(
                    &batch,
                    &at,
                    &self.source.config.image_columns,
                    &self.file_columns(),
                );
                let mut fetched = futures::stream::iter(rows)
                    .map(|row| self.fetch(row, file))
                    .buffered(self.source.config.fetch.concurrency.max(1));
                while let Some(item) = fetched.next().await {
                    sent += 1;
                    let Some(item) = item else { continue };
                    send(item, sent).await.map_err(|_| None)?;
                }
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => true,
            Err(None) => false,
            Err(Some(error)) => {
                // The rest of the unit is unreadable (a truncated file, say): each row is lost.
                for row in first_row + sent..unit.rows.end {
                    sent += 1;
                    let at = Location {
                        row,
                        ..location.clone()
                    };
                    let bad = BadInput::new(Reason::UnreadableParquet, at, error.clone());
                    if send(Err(bad), sent).await.is_err() {
                        return false;
                    }
                }
                true
            }
        }
    }

    fn file_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = self
            .text_columns
            .iter()
            .map(|(_, column)| column.clone())
            .collect();
        columns.extend(self.filter.iter().map(|f| f.column.clone()));
        columns
    }

    fn open_unit(
        &self,
        file: &ShardFile,
        row_group: usize,
        rows: std::ops::Range<usize>,
    ) -> Result<
        parquet::arrow::async_reader::ParquetRecordBatchStream<super::parquet::ShardBytes>,
        String,
    > {
        let mut columns = self.file_columns();
        columns.extend(self.source.config.image_columns.iter().cloned());
        file.read(row_group, rows, &columns, READ_BATCH_ROWS)
            .map_err(|e| e.to_string())
    }

    /// The row ready for the CPU stage, or `None` when the filter drops it.
    async fn fetch(
        &self,
        row: Result<RawRow, BadInput>,
        file: &ShardFile,
    ) -> Option<Result<Record, BadInput>> {
        let mut row = match row {
            Ok(row) => row,
            Err(bad) => return Some(Err(bad)),
        };
        if let Some(filter) = &self.filter
            && !filter.keeps(&row.fields)
        {
            return None;
        }
        // Templates see columns by their own names.
        let mut fields = Map::new();
        for (name, column) in &self.text_columns {
            if let Some(value) = row.fields.remove(column) {
                fields.insert(name.clone(), value);
            }
        }
        row.fields = fields;
        Some(
            self.fetcher
                .resolve(row, &self.source.image_root(file))
                .await,
        )
    }
}
