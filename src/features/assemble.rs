//! Assembly: query results -> long rows (user, feature id, value). Keys are interned once
//! per batch, kept by support and top-k in key order (ids never depend on hash order), shares
//! divided by each user's total, distinct counts over a key counted per user, ratios of two
//! features added, and the rows put in (user, feature) order for CSR. Pure: no I/O, no SQL.

use std::collections::HashMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt32Type, UInt64Type};
use rayon::prelude::*;

use super::plan::{QueryGroup, counts_keys, feature_name};
use super::{
    Aggregate, FeatureDictionary, FeatureError, FeatureFamily, FeatureSet, Ratio, Transform,
};
use crate::user_index::UserIndex;

fn apply(transform: Transform, v: f64) -> f32 {
    match transform {
        Transform::None => v as f32,
        Transform::Log1p => v.max(0.0).ln_1p() as f32,
    }
}

/// One query's result with its keys interned: `row_keys[b][r]` indexes `keys` for row r of
/// batch b, so support counting and id lookup never touch strings per row.
pub(super) struct GroupResult {
    batches: Vec<RecordBatch>,
    keys: Vec<Option<String>>,
    row_keys: Vec<Vec<u32>>,
}

pub(super) fn intern_keys(
    label: &str,
    batches: Vec<RecordBatch>,
) -> Result<GroupResult, FeatureError> {
    let problem = |e: datafusion::arrow::error::ArrowError| FeatureError::Result {
        family: label.to_string(),
        problem: e.to_string(),
    };
    let mut keys: Vec<Option<String>> = vec![None];
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut row_keys = Vec::with_capacity(batches.len());
    for batch in &batches {
        // Arrow packs each batch's keys into a dictionary (hashing native values, not text);
        // only its few distinct values are turned into text and looked up here.
        let column = batch.column(1);
        let value_type = match column.data_type() {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
                DataType::Utf8
            }
            other => other.clone(),
        };
        let packed = cast(
            column,
            &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(value_type)),
        )
        .map_err(problem)?;
        let packed = packed.as_dictionary::<UInt32Type>();
        let values = cast(packed.values(), &DataType::Utf8).map_err(problem)?;
        let values = values.as_string::<i32>();
        let global: Vec<u32> = (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    return 0;
                }
                let key = values.value(i);
                if let Some(&id) = index.get(key) {
                    return id;
                }
                let id = keys.len() as u32;
                keys.push(Some(key.to_string()));
                index.insert(key.to_string(), id);
                id
            })
            .collect();
        let rows = packed
            .keys()
            .iter()
            .map(|key| key.map_or(0, |k| global[k as usize]))
            .collect();
        row_keys.push(rows);
    }
    Ok(GroupResult {
        batches,
        keys,
        row_keys,
    })
}

/// Long rows being assembled: (user, feature id, value).
#[derive(Default)]
pub(super) struct LongRows {
    pub user_ids: Vec<u64>,
    pub feature_ids: Vec<u32>,
    pub values: Vec<f32>,
}

/// Adds the features of member column `c{column}`: keys with enough support, at most top-k,
/// ids from the dictionary in key order so they do not depend on hash order.
pub(super) fn add_member(
    result: &GroupResult,
    column: usize,
    family: &FeatureFamily,
    window: Option<u32>,
    dictionary: &mut FeatureDictionary,
    out: &mut LongRows,
) -> usize {
    let value_column = column + 2;
    let mut support = vec![0u64; result.keys.len()];
    for (batch, keys) in result.batches.iter().zip(&result.row_keys) {
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for (row, key) in keys.iter().enumerate() {
            if values.is_valid(row) {
                support[*key as usize] += 1;
            }
        }
    }
    let mut kept: Vec<u32> = (0..support.len() as u32)
        .filter(|&k| support[k as usize] > 0 && support[k as usize] >= family.min_support)
        .collect();
    kept.sort_by(|&a, &b| {
        support[b as usize]
            .cmp(&support[a as usize])
            .then_with(|| result.keys[a as usize].cmp(&result.keys[b as usize]))
    });
    if let Some(k) = family.top_k {
        kept.truncate(k);
    }
    kept.sort_by(|&a, &b| result.keys[a as usize].cmp(&result.keys[b as usize]));
    let mut ids: Vec<Option<u32>> = vec![None; result.keys.len()];
    for k in &kept {
        let name = feature_name(family, window, result.keys[*k as usize].as_deref());
        ids[*k as usize] = Some(dictionary.id_or_insert(&name, &family.name));
    }
    // a share divides by the user's total over all keys, before support and top-k drop any
    let totals = (family.aggregate == Aggregate::Share)
        .then(|| per_user_sum(result, value_column, |value| value));
    let before = out.values.len();
    for (batch, keys) in result.batches.iter().zip(&result.row_keys) {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for (row, key) in keys.iter().enumerate() {
            if let (true, Some(id)) = (values.is_valid(row), ids[*key as usize]) {
                let user = users.value(row);
                let value = match &totals {
                    None => values.value(row),
                    Some(totals) => match totals.get(&user) {
                        Some(&total) if total != 0.0 => values.value(row) / total,
                        _ => continue,
                    },
                };
                out.user_ids.push(user);
                out.feature_ids.push(id);
                out.values.push(apply(family.transform, value));
            }
        }
    }
    out.values.len() - before
}

/// Per user, the sum over all keys of `weigh` of a result column's non-null values.
pub(super) fn per_user_sum(
    result: &GroupResult,
    value_column: usize,
    weigh: impl Fn(f64) -> f64,
) -> HashMap<u64, f64> {
    let mut sums: HashMap<u64, f64> = HashMap::new();
    for batch in &result.batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if values.is_valid(row) {
                *sums.entry(users.value(row)).or_default() += weigh(values.value(row));
            }
        }
    }
    sums
}

/// Adds a distinct count taken over its group's key: per user, how many keys have the
/// member's indicator (`counts_keys`). One feature, with the support of the users it counts.
pub(super) fn add_key_count(
    result: &GroupResult,
    column: usize,
    family: &FeatureFamily,
    window: Option<u32>,
    dictionary: &mut FeatureDictionary,
    out: &mut LongRows,
) -> usize {
    let counts = per_user_sum(result, column + 2, |_| 1.0);
    if counts.is_empty() || (counts.len() as u64) < family.min_support {
        return 0;
    }
    let id = dictionary.id_or_insert(&feature_name(family, window, None), &family.name);
    let rows = counts.len();
    for (user, count) in counts {
        out.user_ids.push(user);
        out.feature_ids.push(id);
        out.values.push(apply(family.transform, count));
    }
    rows
}

/// Adds the features of one group's result, member by member; returns how many rows.
pub(super) fn add_group(
    group: &QueryGroup,
    label: &str,
    batches: Vec<RecordBatch>,
    dictionary: &mut FeatureDictionary,
    long: &mut LongRows,
) -> Result<usize, FeatureError> {
    let result = intern_keys(label, batches)?;
    let mut rows = 0;
    for (column, (family, window)) in group.members.iter().enumerate() {
        rows += if counts_keys(family, group.key) {
            add_key_count(&result, column, family, *window, dictionary, long)
        } else {
            add_member(&result, column, family, *window, dictionary, long)
        };
    }
    Ok(rows)
}

/// Adds each ratio of `features.toml` whose two sides have rows: numerator / denominator per
/// user, where the denominator is not zero.
pub(super) fn add_ratios(
    ratios: &[Ratio],
    dictionary: &mut FeatureDictionary,
    long: &mut LongRows,
) {
    for ratio in ratios {
        let (Some(numerator), Some(denominator)) = (
            dictionary.id(&ratio.numerator),
            dictionary.id(&ratio.denominator),
        ) else {
            continue; // a side with no support tonight: no ratio either
        };
        let (user_ids, feature_ids, values) = (&long.user_ids, &long.feature_ids, &long.values);
        let denominators: HashMap<u64, f32> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == denominator && values[i] != 0.0)
            .map(|i| (user_ids[i], values[i]))
            .collect();
        let found: Vec<(u64, f32)> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == numerator)
            .filter_map(|i| Some((user_ids[i], values[i] / denominators.get(&user_ids[i])?)))
            .collect();
        if found.is_empty() {
            continue;
        }
        let id = dictionary.id_or_insert(&ratio.name, &ratio.name);
        for (user, value) in found {
            long.user_ids.push(user);
            long.feature_ids.push(id);
            long.values.push(value);
        }
    }
}

/// The rows of the population's users in (user, feature) order, so CSR rows come straight
/// off the table; rows of users that do not exist at `as_of` (no profile) are nobody's
/// features. A counting sort by user, then each user's few rows by feature: linear in the
/// rows, where a comparison sort of all of them was the largest cost of assembly.
pub(super) fn in_user_order(
    as_of: NaiveDate,
    users: Vec<u64>,
    slots: &UserIndex,
    rows: LongRows,
) -> FeatureSet {
    let LongRows {
        user_ids,
        feature_ids,
        values,
    } = rows;
    let positions: Vec<u32> = user_ids
        .par_iter()
        .map(|&user| slots.position(user).map_or(u32::MAX, |p| p as u32))
        .collect();
    drop(user_ids);
    let mut starts = vec![0usize; users.len() + 1];
    for &position in positions.iter().filter(|&&p| p != u32::MAX) {
        starts[position as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut placed = vec![(0u32, 0f32); starts[users.len()]];
    for (i, &position) in positions.iter().enumerate() {
        if position != u32::MAX {
            let at = &mut next[position as usize];
            placed[*at] = (feature_ids[i], values[i]);
            *at += 1;
        }
    }
    drop((positions, feature_ids, values));
    let mut per_user: Vec<&mut [(u32, f32)]> = Vec::with_capacity(users.len());
    let mut rest = placed.as_mut_slice();
    for bounds in starts.windows(2) {
        let (mine, others) = rest.split_at_mut(bounds[1] - bounds[0]);
        per_user.push(mine);
        rest = others;
    }
    per_user
        .par_iter_mut()
        .for_each(|rows| rows.sort_unstable_by_key(|&(feature, _)| feature));
    drop(per_user);
    let mut user_ids = Vec::with_capacity(placed.len());
    for (position, bounds) in starts.windows(2).enumerate() {
        user_ids.extend(std::iter::repeat_n(users[position], bounds[1] - bounds[0]));
    }
    let (feature_ids, values) = placed.into_iter().unzip();
    FeatureSet {
        as_of,
        users,
        user_ids,
        feature_ids,
        values,
    }
}
