//! One scan of a source feeding several feature queries at once.
//!
//! The feature groups on one source (events by merchant, by category, by user, by kind) each
//! scanned and decoded the same Parquet files, and decoding was about half of their time.
//! Here the source is scanned once, under the conditions all the groups share; each batch is
//! handed (shared by reference count, not copied) to one in-memory streaming table per group,
//! and the groups' own queries read those tables concurrently, each still applying its whole
//! WHERE clause. Channels are bounded, so the scan runs at the pace of the slowest query and
//! memory stays a few batches per query.
//!
//! Only for sessions that run in this process (`engine::InProcess`): a Ballista executor
//! cannot read a channel of this process. Registers and deregisters its own temporary tables;
//! touches nothing in the store.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::spill::{GroupSink, GroupTally};

type Batch = Result<RecordBatch, DataFusionError>;

/// Batches buffered per query and partition.
const CHANNEL_BATCHES: usize = 2;

/// The running scan and the queries it feeds, in the order they were given.
pub struct SharedScan {
    scan: Vec<JoinHandle<()>>,
    queries: Vec<Option<QueryTask>>,
    failed: Arc<Mutex<Option<String>>>,
}

type QueryTask = JoinHandle<Result<GroupTally, DataFusionError>>;

impl SharedScan {
    /// The result of the `position`-th query. Waits for the whole scan first: a scan that
    /// failed or was cut short fails every query, so no result is used that looks whole but
    /// is not.
    pub async fn result(&mut self, position: usize) -> Result<GroupTally, DataFusionError> {
        for task in self.scan.drain(..) {
            task.await
                .map_err(|e| DataFusionError::Execution(format!("shared scan: {e}")))?;
        }
        if let Some(error) = self.failed.lock().ok().and_then(|f| f.clone()) {
            return Err(DataFusionError::Execution(format!("shared scan: {error}")));
        }
        let task = self
            .queries
            .get_mut(position)
            .and_then(Option::take)
            .ok_or_else(|| {
                DataFusionError::Execution(format!("shared scan: no query {position}, or taken"))
            })?;
        task.await
            .map_err(|e| DataFusionError::Execution(format!("shared scan query: {e}")))?
    }
}

/// Starts `scan_sql` and every `(table, sql, sink)` query, where `sql` reads `table` (a
/// streaming table registered here with the scan's schema and rows) and streams its result
/// into `sink`.
pub async fn start(
    ctx: &SessionContext,
    scan_sql: &str,
    queries: Vec<(String, String, GroupSink)>,
) -> Result<SharedScan, DataFusionError> {
    let frame = ctx.sql(scan_sql).await?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let partitions = ctx.state().config().target_partitions().max(1);
    let senders = register_channels(ctx, &schema, &queries, partitions)?;
    let streams = match frame.execute_stream_partitioned().await {
        Ok(streams) => streams,
        Err(error) => {
            for (table, _, _) in &queries {
                let _ = ctx.deregister_table(table.as_str());
            }
            return Err(error);
        }
    };

    let queries = queries
        .into_iter()
        .map(|(table, sql, sink)| {
            let ctx = ctx.clone();
            Some(tokio::spawn(async move {
                let result = super::plan::stream_into(&ctx, &sql, sink).await;
                let _ = ctx.deregister_table(table.as_str());
                result
            }))
        })
        .collect();

    let failed = Arc::new(Mutex::new(None));
    let scan = streams
        .into_iter()
        .enumerate()
        .map(|(part, stream)| {
            let targets: Vec<mpsc::Sender<Batch>> = senders
                .iter()
                .map(|query| query[part % partitions].clone())
                .collect();
            tokio::spawn(feed(stream, targets, failed.clone()))
        })
        .collect();
    // the scan tasks hold the only senders now: a partition ends when its scan does
    drop(senders);
    Ok(SharedScan {
        scan,
        queries,
        failed,
    })
}

/// Registers each query's table as a streaming table of `partitions` channels; returns the
/// senders, `[query][partition]`.
fn register_channels(
    ctx: &SessionContext,
    schema: &SchemaRef,
    queries: &[(String, String, GroupSink)],
    partitions: usize,
) -> Result<Vec<Vec<mpsc::Sender<Batch>>>, DataFusionError> {
    let mut senders = Vec::with_capacity(queries.len());
    for (table, _, _) in queries {
        let mut streams: Vec<Arc<dyn PartitionStream>> = Vec::with_capacity(partitions);
        let mut query_senders = Vec::with_capacity(partitions);
        for _ in 0..partitions {
            let (sender, receiver) = mpsc::channel(CHANNEL_BATCHES);
            query_senders.push(sender);
            streams.push(Arc::new(ChannelPartition {
                schema: schema.clone(),
                batches: Mutex::new(Some(receiver)),
            }));
        }
        senders.push(query_senders);
        ctx.deregister_table(table.as_str())?;
        ctx.register_table(
            table.as_str(),
            Arc::new(StreamingTable::try_new(schema.clone(), streams)?),
        )?;
    }
    Ok(senders)
}

/// Sends every batch of one scan partition to each query still reading; a scan error goes
/// to all of them and is remembered in `failed`.
async fn feed(
    mut stream: SendableRecordBatchStream,
    targets: Vec<mpsc::Sender<Batch>>,
    failed: Arc<Mutex<Option<String>>>,
) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(batch) => {
                let mut delivered = false;
                for target in &targets {
                    delivered |= target.send(Ok(batch.clone())).await.is_ok();
                }
                if !delivered {
                    return; // every query has stopped reading
                }
            }
            Err(error) => {
                let message = error.to_string();
                // every query gets the scan's own error, so its cause (a lost store, a
                // corrupt file) still decides the exit code
                let error = Arc::new(error);
                for target in &targets {
                    let shared = DataFusionError::Shared(error.clone());
                    let _ = target
                        .send(Err(DataFusionError::Context(
                            "shared scan".into(),
                            Box::new(shared),
                        )))
                        .await;
                }
                if let Ok(mut failed) = failed.lock() {
                    failed.get_or_insert(message);
                }
                return;
            }
        }
    }
}

/// One partition of a shared scan, as a query reads it: the batches of one channel, once.
struct ChannelPartition {
    schema: SchemaRef,
    batches: Mutex<Option<mpsc::Receiver<Batch>>>,
}

impl fmt::Debug for ChannelPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChannelPartition")
    }
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<TaskContext>) -> SendableRecordBatchStream {
        let receiver = self.batches.lock().ok().and_then(|mut r| r.take());
        let stream = match receiver {
            Some(receiver) => futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|batch| (batch, receiver))
            })
            .boxed(),
            None => futures::stream::once(async {
                Err(DataFusionError::Execution(
                    "a shared scan's partition is read by one query, once".into(),
                ))
            })
            .boxed(),
        };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
