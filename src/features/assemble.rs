//! Assembly: query results -> long rows (user, feature id, value), in two steps. Over all
//! users (a group's `GroupTally`), each member's keys are kept by support and top-k and take
//! ids in key order (ids never depend on hash order or on the parts). Then, one user part at
//! a time, rows of kept keys become long rows: shares divided by each user's total, distinct
//! counts over a key counted per user, ratios of two features added, and the rows put in
//! (user, feature) order for CSR. Pure: no I/O, no SQL.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use rayon::prelude::*;

use super::plan::{QueryGroup, counts_keys, feature_name};
use super::spill::GroupTally;
use super::{Aggregate, FeatureDictionary, FeatureFamily, FeatureSet, Ratio, Transform};
use crate::user_index::UserIndex;

fn apply(transform: Transform, v: f64) -> f32 {
    match transform {
        Transform::None => v as f32,
        Transform::Log1p => v.max(0.0).ln_1p() as f32,
    }
}

/// One user part of a group's result: its batches and each row's key as an index into the
/// group's keys (`GroupTally::keys`).
pub(super) struct PartResult {
    pub batches: Vec<RecordBatch>,
    pub row_keys: Vec<Vec<u32>>,
}

/// Long rows being assembled: (user, feature id, value).
#[derive(Default)]
pub(super) struct LongRows {
    pub user_ids: Vec<u64>,
    pub feature_ids: Vec<u32>,
    pub values: Vec<f32>,
}

/// The ids a group's member takes tonight, decided over all users before any part is
/// assembled: by key for a keyed member (None: not kept), or the one id of a distinct count.
pub(super) enum MemberIds {
    Keyed(Vec<Option<u32>>),
    Count(Option<u32>),
}

impl MemberIds {
    fn kept(&self) -> impl Iterator<Item = u32> + '_ {
        let (keyed, count) = match self {
            MemberIds::Keyed(ids) => (ids.as_slice(), None),
            MemberIds::Count(id) => (&[][..], *id),
        };
        keyed.iter().flatten().copied().chain(count)
    }
}

/// Each member's ids from the group's counts over all users, in member order, with ids from
/// the dictionary in key order so they do not depend on hash order or on the parts.
pub(super) fn decide_group(
    group: &QueryGroup,
    tally: &GroupTally,
    dictionary: &mut FeatureDictionary,
) -> Vec<MemberIds> {
    group
        .members
        .iter()
        .enumerate()
        .map(|(column, (family, window))| {
            if counts_keys(family, group.key) {
                let users = tally.users_counted[column];
                let kept = users > 0 && users >= family.min_support;
                MemberIds::Count(kept.then(|| {
                    dictionary.id_or_insert(&feature_name(family, *window, None), &family.name)
                }))
            } else {
                let support = &tally.support[column];
                MemberIds::Keyed(keyed_ids(support, &tally.keys, family, *window, dictionary))
            }
        })
        .collect()
}

/// Keys with enough support, at most top-k, ids in key order.
fn keyed_ids(
    support: &[u64],
    keys: &[Option<String>],
    family: &FeatureFamily,
    window: Option<u32>,
    dictionary: &mut FeatureDictionary,
) -> Vec<Option<u32>> {
    let mut kept: Vec<u32> = (0..support.len() as u32)
        .filter(|&k| support[k as usize] > 0 && support[k as usize] >= family.min_support)
        .collect();
    kept.sort_by(|&a, &b| {
        support[b as usize]
            .cmp(&support[a as usize])
            .then_with(|| keys[a as usize].cmp(&keys[b as usize]))
    });
    if let Some(k) = family.top_k {
        kept.truncate(k);
    }
    kept.sort_by(|&a, &b| keys[a as usize].cmp(&keys[b as usize]));
    let mut ids: Vec<Option<u32>> = vec![None; keys.len()];
    for k in &kept {
        let name = feature_name(family, window, keys[*k as usize].as_deref());
        ids[*k as usize] = Some(dictionary.id_or_insert(&name, &family.name));
    }
    ids
}

/// Adds the features of one part of a group's result, member by member, with the ids
/// `decide_group` gave them; returns how many rows.
pub(super) fn add_group_part(
    group: &QueryGroup,
    ids: &[MemberIds],
    result: &PartResult,
    long: &mut LongRows,
) -> usize {
    let mut rows = 0;
    for (column, ((family, _), ids)) in group.members.iter().zip(ids).enumerate() {
        rows += match ids {
            MemberIds::Keyed(ids) => add_member(result, column, family, ids, long),
            MemberIds::Count(Some(id)) => add_key_count(result, column, family, *id, long),
            MemberIds::Count(None) => 0,
        };
    }
    rows
}

/// Adds the rows of member column `c{column}` whose key has an id.
fn add_member(
    result: &PartResult,
    column: usize,
    family: &FeatureFamily,
    ids: &[Option<u32>],
    out: &mut LongRows,
) -> usize {
    let value_column = column + 2;
    // a share divides by the user's total over all keys, before support and top-k drop any
    // (every row of a user is in the user's part)
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
    result: &PartResult,
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
/// member's indicator (`counts_keys`).
fn add_key_count(
    result: &PartResult,
    column: usize,
    family: &FeatureFamily,
    id: u32,
    out: &mut LongRows,
) -> usize {
    let counts = per_user_sum(result, column + 2, |_| 1.0);
    let rows = counts.len();
    for (user, count) in counts {
        out.user_ids.push(user);
        out.feature_ids.push(id);
        out.values.push(apply(family.transform, count));
    }
    rows
}

/// A ratio of `features.toml` with its ids: (numerator, denominator, the ratio's own).
pub(super) type RatioIds = (u32, u32, u32);

/// The ratios whose two sides have features tonight (in `groups`' ids), each with an id. A
/// ratio no user has both sides of keeps its id and has no rows: which users do is known
/// only part by part, after the ids are committed.
pub(super) fn decide_ratios<'i>(
    ratios: &[Ratio],
    groups: impl Iterator<Item = &'i [MemberIds]>,
    dictionary: &mut FeatureDictionary,
) -> Vec<RatioIds> {
    let tonight: HashSet<u32> = groups.flatten().flat_map(MemberIds::kept).collect();
    let mut decided = Vec::new();
    for ratio in ratios {
        let side = |name: &str| dictionary.id(name).filter(|id| tonight.contains(id));
        let (Some(numerator), Some(denominator)) =
            (side(&ratio.numerator), side(&ratio.denominator))
        else {
            continue; // a side with no support tonight: no ratio either
        };
        let id = dictionary.id_or_insert(&ratio.name, &ratio.name);
        decided.push((numerator, denominator, id));
    }
    decided
}

/// Adds each decided ratio: numerator / denominator per user, where the denominator is not
/// zero.
pub(super) fn add_ratios(ratios: &[RatioIds], long: &mut LongRows) {
    for &(numerator, denominator, id) in ratios {
        let (user_ids, feature_ids, values) = (&long.user_ids, &long.feature_ids, &long.values);
        let denominators: HashMap<u64, f32> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == denominator && values[i] != 0.0)
            .map(|i| (user_ids[i], values[i]))
            .collect();
        let found: Vec<(u64, f32)> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == numerator)
            .filter_map(|i| Some((user_ids[i], values[i] / denominators.get(&user_ids[i])?)))
            .collect();
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
