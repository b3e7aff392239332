//! Reading Parquet shards through `object_store`: the footer once, then one row group (or a
//! slice of one) at a time, with only the columns a task needs.

use std::ops::Range;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, RowSelection, RowSelector,
};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStream};
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::shards::Shard;

/// Byte-range access to one shard, as the async Parquet reader wants it.
#[derive(Clone)]
pub struct ShardBytes {
    shard: Shard,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for ShardBytes {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.shard
                .store
                .get_range(&self.shard.path, range)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.shard
                .store
                .get_ranges(&self.shard.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.shard.size;
            let reader = ParquetMetaDataReader::new().with_arrow_reader_options(options);
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        }
        .boxed()
    }
}

/// An opened shard: its footer is read, its row groups known.
#[derive(Clone)]
pub struct ShardFile {
    pub shard: Shard,
    metadata: ArrowReaderMetadata,
}

impl ShardFile {
    pub async fn open(shard: Shard) -> Result<Self, ParquetError> {
        let mut bytes = ShardBytes {
            shard: shard.clone(),
        };
        let metadata =
            ArrowReaderMetadata::load_async(&mut bytes, ArrowReaderOptions::new()).await?;
        Ok(Self { shard, metadata })
    }

    pub fn schema(&self) -> &SchemaRef {
        self.metadata.schema()
    }

    /// Row count of each row group.
    pub fn row_groups(&self) -> Vec<usize> {
        let meta = self.metadata.metadata();
        meta.row_groups()
            .iter()
            .map(|g| g.num_rows() as usize)
            .collect()
    }

    /// Streams `rows` of `row_group`, only the named top-level `columns` (those the shard has),
    /// `batch_size` rows per record batch.
    pub fn read(
        &self,
        row_group: usize,
        rows: Range<usize>,
        columns: &[String],
        batch_size: usize,
    ) -> Result<ParquetRecordBatchStream<ShardBytes>, ParquetError> {
        let roots: Vec<usize> = self
            .schema()
            .fields()
            .iter()
            .enumerate()
            .filter(|(_, f)| columns.iter().any(|c| c == f.name()))
            .map(|(i, _)| i)
            .collect();
        let mask = ProjectionMask::roots(self.metadata.parquet_schema(), roots);
        let selection = RowSelection::from(vec![
            RowSelector::skip(rows.start),
            RowSelector::select(rows.end - rows.start),
        ]);
        ParquetRecordBatchStreamBuilder::new_with_metadata(
            ShardBytes {
                shard: self.shard.clone(),
            },
            self.metadata.clone(),
        )
        .with_row_groups(vec![row_group])
        .with_projection(mask)
        .with_row_selection(selection)
        .with_batch_size(batch_size)
        .build()
    }
}
