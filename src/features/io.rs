//! The feature table in the store: `features/dt=<as_of>/part-00000.parquet` (the long rows)
//! and `users.parquet` (the population, so users without any feature are scored too).
//! Written by the features stage, read back by resumed runs, shards and training.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{AsArray, Float32Array, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt32Type, UInt64Type};
use tracing::info;

use super::{FeatureError, FeatureSet};
use crate::schema;
use crate::store::{Store, layout};

/// Writes the long table to `features/dt=<as_of>/part-00000.parquet`, replacing a rerun's.
pub async fn write(store: &Store, set: &FeatureSet) -> Result<(), FeatureError> {
    let folder = layout::features(set.as_of);
    store.delete_prefix(&folder).await?;
    let schema = schema::FEATURES.arrow();
    let mut batches = Vec::new();
    let chunk = 1 << 20;
    for start in (0..set.nnz()).step_by(chunk) {
        let end = (start + chunk).min(set.nnz());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt64Array::from(set.user_ids[start..end].to_vec())),
                Arc::new(UInt32Array::from(set.feature_ids[start..end].to_vec())),
                Arc::new(Float32Array::from(set.values[start..end].to_vec())),
            ],
        )
        .map_err(|e| FeatureError::Result {
            family: "features table".into(),
            problem: e.to_string(),
        })?;
        batches.push(batch);
    }
    store
        .write_parquet(&layout::features_file(set.as_of), schema, &batches)
        .await?;
    // users without any feature are scored too: keep the population next to the rows
    let users_schema = Arc::new(Schema::new(vec![Field::new(
        "user_id",
        DataType::UInt64,
        false,
    )]));
    let users = RecordBatch::try_new(
        users_schema.clone(),
        vec![Arc::new(UInt64Array::from(set.users.clone()))],
    )
    .map_err(|e| FeatureError::Result {
        family: "population".into(),
        problem: e.to_string(),
    })?;
    store
        .write_parquet(
            &layout::feature_users_file(set.as_of),
            users_schema,
            &[users],
        )
        .await?;
    info!(as_of = %set.as_of, rows = set.nnz(), "features written");
    Ok(())
}

/// Reads back what `write` wrote for `as_of`: the set a resumed run continues with.
pub async fn read(store: &Store, as_of: NaiveDate) -> Result<FeatureSet, FeatureError> {
    let problem = |problem: String| FeatureError::Result {
        family: layout::features(as_of),
        problem,
    };
    let mut set = FeatureSet {
        as_of,
        users: Vec::new(),
        user_ids: Vec::new(),
        feature_ids: Vec::new(),
        values: Vec::new(),
    };
    for batch in store
        .read_parquet(&layout::feature_users_file(as_of))
        .await?
    {
        let users = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| problem("users.parquet: user_id is not UInt64".into()))?;
        set.users.extend(users.values().iter());
    }
    for batch in store.read_parquet(&layout::features_file(as_of)).await? {
        let (Some(users), Some(ids), Some(values)) = (
            batch.column(0).as_primitive_opt::<UInt64Type>(),
            batch.column(1).as_primitive_opt::<UInt32Type>(),
            batch.column(2).as_primitive_opt::<Float32Type>(),
        ) else {
            return Err(problem(
                "part-00000.parquet does not have the features schema".into(),
            ));
        };
        set.user_ids.extend(users.values().iter());
        set.feature_ids.extend(ids.values().iter());
        set.values.extend(values.values().iter());
    }
    Ok(set)
}
