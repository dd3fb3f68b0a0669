//! A dataset that produces its rows slowly and reports whether its scan is still running:
//! used to show that a deadline or a cancel stops the work at the node.

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Progress {
    /// Batches produced so far.
    pub batches: AtomicUsize,
    /// Scans started.
    pub started: AtomicUsize,
    /// Scans whose stream was dropped (finished, cancelled or timed out).
    pub dropped: AtomicUsize,
}

impl Progress {
    pub fn running(&self) -> usize {
        self.started.load(Ordering::SeqCst) - self.dropped.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct SlowPartition {
    schema: SchemaRef,
    batches: usize,
    delay: Duration,
    progress: Arc<Progress>,
}

struct DropFlag(Arc<Progress>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl PartitionStream for SlowPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        self.progress.started.fetch_add(1, Ordering::SeqCst);
        let flag = DropFlag(self.progress.clone());
        let (schema, delay, total) = (self.schema.clone(), self.delay, self.batches);
        let stream = futures::stream::unfold((0usize, flag), move |(i, flag)| {
            let schema = schema.clone();
            async move {
                if i >= total {
                    return None;
                }
                tokio::time::sleep(delay).await;
                flag.0.batches.fetch_add(1, Ordering::SeqCst);
                let ids: Vec<String> = (0..10).map(|k| format!("P{}", i * 10 + k)).collect();
                let batch = RecordBatch::try_new(
                    schema,
                    vec![Arc::new(StringArray::from(ids)), Arc::new(Int64Array::from_iter_values(0..10))],
                )
                .map_err(Into::into);
                Some((batch, (i + 1, flag)))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

pub fn vitals_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("value", DataType::Int64, false),
    ]))
}

/// A table of `batches` batches of 10 rows, one every `delay`.
pub fn slow_table(batches: usize, delay: Duration) -> (Arc<StreamingTable>, Arc<Progress>) {
    let progress = Arc::new(Progress::default());
    let partition = SlowPartition { schema: vitals_schema(), batches, delay, progress: progress.clone() };
    let table = StreamingTable::try_new(vitals_schema(), vec![Arc::new(partition)]).unwrap();
    (Arc::new(table), progress)
}
