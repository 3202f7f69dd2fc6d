//! Runs one SQL statement on a DataFusion session and collects its batches: the one way the
//! stages query their tables, so each stage only adds its own error context.

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

pub async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, DataFusionError> {
    ctx.sql(sql).await?.collect().await
}
