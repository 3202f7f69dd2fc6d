//! The feature table in the store: `features/dt=<as_of>/part-*.parquet` (the long rows, in
//! parts by user shard) and `users.parquet` (the population, so users without any feature are
//! scored too).
//! Written by the features stage, read back by resumed runs, shards and training.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{AsArray, Float32Array, RecordBatch, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt32Type, UInt64Type};
use tracing::info;

use super::{FeatureError, FeatureSet};
use crate::schema;
use crate::store::{Store, layout};
use crate::user_index::UserShard;

/// Writes the long rows of `set` as `parts` files by user shard (part i holding the users of
/// shard i/parts, so the per-user stages read one part at a time), and the population, replacing
/// a rerun's.
pub async fn write(store: &Store, set: &FeatureSet, parts: u32) -> Result<(), FeatureError> {
    clear(store, set.as_of).await?;
    let parts = parts.max(1);
    for index in 0..parts {
        let mut part = FeatureSet {
            as_of: set.as_of,
            users: Vec::new(),
            user_ids: Vec::new(),
            feature_ids: Vec::new(),
            values: Vec::new(),
        };
        // rows are sorted by user: each user's run of rows goes to its part whole
        let mut start = 0;
        while start < set.nnz() {
            let user = set.user_ids[start];
            let end = start + set.user_ids[start..].partition_point(|u| *u == user);
            if parts == 1 || UserShard::of(user, parts) == index {
                part.user_ids.extend_from_slice(&set.user_ids[start..end]);
                part.feature_ids
                    .extend_from_slice(&set.feature_ids[start..end]);
                part.values.extend_from_slice(&set.values[start..end]);
            }
            start = end;
        }
        write_part(store, &part, index, parts).await?;
    }
    write_population(store, set.as_of, &set.users).await?;
    info!(as_of = %set.as_of, rows = set.nnz(), parts, "features written");
    Ok(())
}

/// Removes the features written for `as_of`, before a run writes them again part by part.
pub async fn clear(store: &Store, as_of: NaiveDate) -> Result<(), FeatureError> {
    Ok(store.delete_prefix(&layout::features(as_of)).await?)
}

/// Writes the rows of `part` (the users of part `index` of `parts`) as that part's file.
pub async fn write_part(
    store: &Store,
    part: &FeatureSet,
    index: u32,
    parts: u32,
) -> Result<(), FeatureError> {
    let schema = schema::FEATURES.arrow();
    let mut batches = Vec::new();
    for at in (0..part.nnz().max(1)).step_by(ROWS_PER_BATCH) {
        let rows = at..part.nnz().min(at + ROWS_PER_BATCH);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt64Array::from(part.user_ids[rows.clone()].to_vec())),
                Arc::new(UInt32Array::from(part.feature_ids[rows.clone()].to_vec())),
                Arc::new(Float32Array::from(part.values[rows].to_vec())),
            ],
        )
        .map_err(|e| FeatureError::Result {
            family: "features table".into(),
            problem: e.to_string(),
        })?;
        batches.push(batch);
    }
    let path = layout::features_part(part.as_of, index, parts.max(1));
    store.write_parquet(&path, schema, &batches).await?;
    Ok(())
}

/// Rows per batch of a part file: bounded, so a part is never copied whole.
const ROWS_PER_BATCH: usize = 1 << 20;

/// Writes the population next to the rows: users without any feature are scored too.
pub async fn write_population(
    store: &Store,
    as_of: NaiveDate,
    users: &[u64],
) -> Result<(), FeatureError> {
    let users_schema = Arc::new(Schema::new(vec![Field::new(
        "user_id",
        DataType::UInt64,
        false,
    )]));
    let users = RecordBatch::try_new(
        users_schema.clone(),
        vec![Arc::new(UInt64Array::from(users.to_vec()))],
    )
    .map_err(|e| FeatureError::Result {
        family: "population".into(),
        problem: e.to_string(),
    })?;
    store
        .write_parquet(&layout::feature_users_file(as_of), users_schema, &[users])
        .await?;
    Ok(())
}

/// Reads back what `write` wrote for `as_of`: the set a resumed run continues with.
pub async fn read(store: &Store, as_of: NaiveDate) -> Result<FeatureSet, FeatureError> {
    read_users(store, as_of, None).await
}

/// The users of `shard` in what `write` wrote for `as_of`: their one part file when it was
/// written in `shard.count` parts, else the rows of every part that belong to them.
pub async fn read_part(
    store: &Store,
    as_of: NaiveDate,
    shard: UserShard,
) -> Result<FeatureSet, FeatureError> {
    read_users(store, as_of, Some(shard)).await
}

async fn read_users(
    store: &Store,
    as_of: NaiveDate,
    shard: Option<UserShard>,
) -> Result<FeatureSet, FeatureError> {
    let problem = |problem: String| FeatureError::Result {
        family: layout::features(as_of),
        problem,
    };
    let mine = |user: u64| shard.is_none_or(|shard| shard.contains(user));
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
        set.users
            .extend(users.values().iter().copied().filter(|&u| mine(u)));
    }
    let mut files = store.row_parts(&layout::features(as_of)).await?;
    if let Some(shard) = shard {
        let own = layout::features_part(as_of, shard.index, shard.count);
        if files.contains(&own) {
            files = vec![own];
        }
    }
    for file in &files {
        for batch in store.read_parquet(file).await? {
            let (Some(users), Some(ids), Some(values)) = (
                batch.column(0).as_primitive_opt::<UInt64Type>(),
                batch.column(1).as_primitive_opt::<UInt32Type>(),
                batch.column(2).as_primitive_opt::<Float32Type>(),
            ) else {
                return Err(problem(format!("{file} does not have the features schema")));
            };
            for i in 0..batch.num_rows() {
                let user = users.value(i);
                if mine(user) {
                    set.user_ids.push(user);
                    set.feature_ids.push(ids.value(i));
                    set.values.push(values.value(i));
                }
            }
        }
    }
    // parts hold disjoint users, each sorted: the rows of several parts are merged by user
    if files.len() > 1 {
        set.sort_by_user();
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(as_of: NaiveDate) -> FeatureSet {
        let users: Vec<u64> = (1..=200).collect();
        let mut set = FeatureSet {
            as_of,
            users: users.clone(),
            user_ids: Vec::new(),
            feature_ids: Vec::new(),
            values: Vec::new(),
        };
        // every third user has no feature; the others one to three
        for &user in users.iter().filter(|u| *u % 3 != 0) {
            for id in 0..(user % 3 + 1) as u32 {
                set.user_ids.push(user);
                set.feature_ids.push(id * 7);
                set.values.push(user as f32 + id as f32);
            }
        }
        set
    }

    /// A set written in parts reads back whole, and by shard from its own part or, for a
    /// shard count it was not written in, from the rows of every part that are the shard's.
    #[tokio::test]
    async fn a_set_in_parts_reads_back_whole_and_by_shard() {
        let store = Store::open("memory://features-in-parts").unwrap();
        let as_of = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let written = set(as_of);
        write(&store, &written, 4).await.unwrap();
        let files = store.row_parts(&layout::features(as_of)).await.unwrap();
        assert_eq!(files.len(), 4);
        let whole = read(&store, as_of).await.unwrap();
        assert_eq!(whole.users, written.users);
        assert_eq!(whole.user_ids, written.user_ids);
        assert_eq!(whole.feature_ids, written.feature_ids);
        assert_eq!(whole.values, written.values);
        for shard in [
            UserShard { index: 1, count: 4 },
            UserShard { index: 0, count: 3 },
        ] {
            let part = read_part(&store, as_of, shard).await.unwrap();
            let expected: Vec<usize> = (0..written.nnz())
                .filter(|&i| shard.contains(written.user_ids[i]))
                .collect();
            assert!(!expected.is_empty());
            let ids: Vec<u64> = expected.iter().map(|&i| written.user_ids[i]).collect();
            let values: Vec<f32> = expected.iter().map(|&i| written.values[i]).collect();
            assert_eq!(part.user_ids, ids, "{shard}");
            assert_eq!(part.values, values, "{shard}");
            let users: Vec<u64> = written
                .users
                .iter()
                .copied()
                .filter(|&u| shard.contains(u))
                .collect();
            assert_eq!(part.users, users, "{shard}");
        }
    }
}
