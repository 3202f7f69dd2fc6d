//! Training and scoring sets: CSR rows (feature ids, values, offsets) per user, built from the
//! long feature table, plus point-in-time labels.
//!
//! A training set is features as of T0 and, for each user with a statement due in the label
//! window, whether one went `days_past_due`+ late within `horizon_days` of T0. Everything it
//! uses is known by T0 + horizon (the run date): no feature row after T0, no label before it.
//! Reads the clean `repayments` table, each statement as its newest version known by the
//! label's cut; writes nothing.

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Int64Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Classify};
use crate::features::FeatureSet;
pub use crate::user_index::Labels;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("computing labels: {error}\n  query: {sql}")]
    Query { sql: String, error: DataFusionError },
    #[error(
        "the training set as of {as_of} has {rows} labelled users and {positives} defaults: too few to train on"
    )]
    TooSmall {
        as_of: NaiveDate,
        rows: usize,
        positives: usize,
    },
}

impl Classify for DatasetError {
    fn cause(&self) -> Cause {
        match self {
            DatasetError::Query { error, .. } => crate::engine::cause_of(error),
            DatasetError::TooSmall { .. } => Cause::Input,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelConfig {
    /// the label looks this many days past the as-of date
    pub horizon_days: u32,
    /// a statement at least this late is a default
    pub days_past_due: u32,
}

impl LabelConfig {
    /// A horizon of at least a day (labels as of the run date would be empty) and at most
    /// ten years (dates further back do not exist in any world).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3650).contains(&self.horizon_days) {
            return Err("horizon_days must be between 1 and 3650".into());
        }
        Ok(())
    }
}

/// Sparse rows, one per user, in the order of `users`.
#[derive(Debug, Clone, Default)]
pub struct Csr {
    pub users: Vec<u64>,
    pub offsets: Vec<usize>,
    pub ids: Vec<u32>,
    pub values: Vec<f32>,
}

impl Csr {
    /// Every user of the set gets a row, users without features an empty one.
    pub fn from_features(set: &FeatureSet) -> Csr {
        let mut csr = Csr {
            users: set.users.clone(),
            offsets: Vec::with_capacity(set.users.len() + 1),
            ids: Vec::with_capacity(set.nnz()),
            values: Vec::with_capacity(set.nnz()),
        };
        csr.offsets.push(0);
        let mut i = 0;
        for &user in &set.users {
            // rows are sorted by user; skip rows of users outside the population
            while i < set.user_ids.len() && set.user_ids[i] < user {
                i += 1;
            }
            while i < set.user_ids.len() && set.user_ids[i] == user {
                csr.ids.push(set.feature_ids[i]);
                csr.values.push(set.values[i]);
                i += 1;
            }
            csr.offsets.push(csr.ids.len());
        }
        csr
    }

    pub fn empty() -> Csr {
        Csr {
            offsets: vec![0],
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Adds the rows of `other` after this one's.
    pub fn append(&mut self, other: &Csr) {
        let base = self.ids.len();
        self.users.extend_from_slice(&other.users);
        self.ids.extend_from_slice(&other.ids);
        self.values.extend_from_slice(&other.values);
        self.offsets
            .extend(other.offsets[1..].iter().map(|offset| base + offset));
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn row(&self, i: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.offsets[i], self.offsets[i + 1]);
        (&self.ids[a..b], &self.values[a..b])
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Csr {
        let mut out = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        for &i in indices {
            let (ids, values) = self.row(i);
            out.users.push(self.users[i]);
            out.ids.extend_from_slice(ids);
            out.values.extend_from_slice(values);
            out.offsets.push(out.ids.len());
        }
        out
    }

    /// The same rows without the entries whose id `drop` marks (ids past its end are kept).
    pub fn without(&self, drop: &[bool]) -> Csr {
        let mut out = Csr {
            offsets: vec![0],
            users: self.users.clone(),
            ..Default::default()
        };
        for r in 0..self.len() {
            let (ids, values) = self.row(r);
            for (&id, &value) in ids.iter().zip(values) {
                if !drop.get(id as usize).copied().unwrap_or(false) {
                    out.ids.push(id);
                    out.values.push(value);
                }
            }
            out.offsets.push(out.ids.len());
        }
        out
    }
}

/// Labelled rows for training and evaluation.
#[derive(Debug, Clone)]
pub struct TrainingSet {
    pub as_of: NaiveDate,
    pub rows: Csr,
    pub labels: Vec<f32>,
}

impl TrainingSet {
    pub fn positives(&self) -> usize {
        self.labels.iter().filter(|l| **l > 0.5).count()
    }
}

/// The first day of the label window whose outcome is fully known by `run_date`.
pub fn training_as_of(run_date: NaiveDate, label: &LabelConfig) -> NaiveDate {
    run_date - Duration::days(label.horizon_days as i64)
}

/// The last due date (exclusive) whose statements can show `days_past_due` days late by the
/// label's knowledge cut, as_of + horizon: a delinquency of N days is learned N days after the
/// due date, and only versions learned strictly before the cut count.
fn due_before(as_of: NaiveDate, label: &LabelConfig) -> NaiveDate {
    as_of + Duration::days(label.horizon_days as i64 - label.days_past_due as i64)
}

/// The data window of a training set in words, for model cards.
pub fn describe_window(as_of: NaiveDate, label: &LabelConfig) -> String {
    format!(
        "features as of {as_of} (rows known before it); label: a statement due {as_of} to before {} went {}+ days past due (versions known before {})",
        due_before(as_of, label),
        label.days_past_due,
        as_of + Duration::days(label.horizon_days as i64)
    )
}

/// For each user with a statement due in [as_of, as_of + horizon - dpd), 1 if one of those
/// statements reached `days_past_due`, as each statement's newest version known before
/// as_of + horizon says (a statement's days past due grow version by version).
pub async fn labels(
    ctx: &SessionContext,
    as_of: NaiveDate,
    label: &LabelConfig,
) -> Result<Labels, DatasetError> {
    let known = crate::sources::known_before(
        "repayments",
        as_of + Duration::days(label.horizon_days as i64),
    );
    let sql = format!(
        "SELECT user_id, MAX(CASE WHEN days_past_due >= {dpd} THEN 1 ELSE 0 END) AS defaulted \
         FROM repayments WHERE due_date >= DATE '{as_of}' AND due_date < DATE '{due_before}' \
         AND user_id IS NOT NULL AND {known} GROUP BY user_id",
        dpd = label.days_past_due,
        due_before = due_before(as_of, label),
        known = known.join(" AND ")
    );
    let mut pairs = Vec::new();
    crate::engine::for_each_batch(ctx, &sql, |batch| {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let defaulted = batch.column(1).as_primitive::<Int64Type>();
        pairs.extend((0..batch.num_rows()).map(|row| (users.value(row), defaulted.value(row) > 0)));
        Ok(())
    })
    .await
    .map_err(|error| DatasetError::Query { sql, error })?;
    Ok(Labels::from_iter(pairs))
}

/// Joins features as of T0 with labels; users without a statement in the window are left out.
pub fn training_set(features: &FeatureSet, labels: &Labels) -> Result<TrainingSet, DatasetError> {
    let all = Csr::from_features(features);
    let keep: Vec<usize> = (0..all.len())
        .filter(|&i| labels.contains(all.users[i]))
        .collect();
    let rows = all.select(&keep);
    let labels: Vec<f32> = rows
        .users
        .iter()
        .map(|&u| {
            if labels.get(u) == Some(true) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let set = TrainingSet {
        as_of: features.as_of,
        rows,
        labels,
    };
    check_size(set.as_of, set.labels.len(), set.positives())?;
    Ok(set)
}

/// A training set of `rows` labelled users, `positives` of them defaults, is enough to train
/// and evaluate on.
pub fn check_size(as_of: NaiveDate, rows: usize, positives: usize) -> Result<(), DatasetError> {
    if rows < 100 || positives < 10 {
        return Err(DatasetError::TooSmall {
            as_of,
            rows,
            positives,
        });
    }
    Ok(())
}

/// Whether a user falls in the held-out share, by a hash of the id (stable across nights).
pub fn is_holdout(user: u64, share: f64) -> bool {
    (user_hash(user) as f64 / u64::MAX as f64) < share
}

/// A user id mixed into 64 well-spread bits (splitmix64's finalizer): the same on every run
/// and in every tool.
pub fn user_hash(user: u64) -> u64 {
    let mut z = user.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn csr_gives_every_user_a_row_in_order() {
        let set = FeatureSet {
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            users: vec![1, 2, 5],
            user_ids: vec![1, 1, 4, 5],
            feature_ids: vec![0, 3, 1, 2],
            values: vec![1.0, 2.0, 9.0, 3.0],
        };
        let csr = Csr::from_features(&set);
        assert_eq!(csr.offsets, vec![0, 2, 2, 3]);
        assert_eq!(csr.row(0), (&[0u32, 3][..], &[1.0f32, 2.0][..]));
        assert_eq!(csr.row(1).0.len(), 0);
        assert_eq!(csr.row(2), (&[2u32][..], &[3.0f32][..]));
    }

    #[test]
    fn labels_answer_as_the_map_of_their_pairs_would() {
        let pairs: Vec<(u64, bool)> = (0..1_000u64)
            .map(|i| (i * 7919 % 1_009, i % 3 == 0))
            .chain([(5, true), (5, false)])
            .collect();
        let map: HashMap<u64, bool> = pairs.iter().copied().collect();
        let labels: Labels = pairs.into_iter().collect();
        assert_eq!(labels.len(), map.len());
        for user in 0..1_100 {
            assert_eq!(labels.get(user), map.get(&user).copied(), "user {user}");
            assert_eq!(labels.contains(user), map.contains_key(&user));
        }
        assert_eq!(labels.get(5), Some(false), "the last pair of a user wins");
    }

    #[test]
    fn holdout_share_is_roughly_kept() {
        let n = (1..=20_000).filter(|u| is_holdout(*u, 0.2)).count();
        assert!((3_600..4_400).contains(&n), "{n}");
    }
}
