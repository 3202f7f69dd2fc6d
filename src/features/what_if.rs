//! What one more row of a source would change in a user's features, without running the night
//! again: suggestions ask it what uploading a verified certificate of a type would add (the
//! type's indicator, the count of verified certificates, whatever the config declares over
//! certificates). Each family over the source sees the row through its own filter, key, value
//! and windows, exactly as its query would; the row's contribution is merged into the user's
//! stored value by the family's aggregate.
//!
//! Reads the config, the dictionary and the row; writes nothing.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::plan::{feature_name, filter_as_of, run};
use super::{Aggregate, FeatureConfig, FeatureDictionary, FeatureError, FeatureFamily, Transform};

/// How a family's aggregate takes one more row, in the value's own units (before the
/// family's transform).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Merge {
    /// counts and sums
    Add(f64),
    /// maxima and indicators
    AtLeast(f64),
    /// minima
    AtMost(f64),
}

#[derive(Debug, Clone, PartialEq)]
struct FeatureChange {
    id: u32,
    merge: Merge,
    transform: Transform,
}

/// The changes one row makes, by feature id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WhatIf {
    changes: Vec<FeatureChange>,
    /// families (and ratios over them) the row reaches whose aggregate one row cannot be merged
    /// into (means, shares, distinct counts, days since the last row): left as they are
    pub unmodelled: Vec<String>,
}

fn transformed(transform: Transform, raw: f64) -> f32 {
    match transform {
        Transform::None => raw as f32,
        Transform::Log1p => raw.max(0.0).ln_1p() as f32,
    }
}

fn untransformed(transform: Transform, stored: f32) -> f64 {
    match transform {
        Transform::None => stored as f64,
        Transform::Log1p => (stored as f64).exp_m1(),
    }
}

impl WhatIf {
    /// The changes `row` (one row shaped like `source`'s clean view, known before `as_of`)
    /// makes to the features of `config` as of `as_of`. Features the dictionary does not have
    /// are left out: no model has a weight for them.
    pub async fn of_row(
        config: &FeatureConfig,
        dictionary: &FeatureDictionary,
        source: &str,
        row: RecordBatch,
        as_of: NaiveDate,
    ) -> Result<WhatIf, FeatureError> {
        let ctx = SessionContext::new();
        let table = MemTable::try_new(row.schema(), vec![vec![row]]).map_err(|error| {
            FeatureError::Result {
                family: source.to_string(),
                problem: error.to_string(),
            }
        })?;
        ctx.register_table(source, Arc::new(table))
            .map_err(|error| FeatureError::Result {
                family: source.to_string(),
                problem: error.to_string(),
            })?;
        let mut what_if = WhatIf::default();
        for family in config.families.iter().filter(|f| f.source == source) {
            let Some((key, value)) = reached(&ctx, family, source, as_of).await? else {
                continue;
            };
            let merge = match family.aggregate {
                Aggregate::Count => Merge::Add(1.0),
                Aggregate::Sum => Merge::Add(value),
                Aggregate::Max => Merge::AtLeast(value),
                Aggregate::Indicator => Merge::AtLeast(1.0),
                Aggregate::Min => Merge::AtMost(value),
                Aggregate::Mean
                | Aggregate::Share
                | Aggregate::DistinctCount
                | Aggregate::DaysSinceLast => {
                    what_if.unmodelled.push(family.name.clone());
                    continue;
                }
            };
            // the row is the newest there is: inside every window
            for window in family.window_days() {
                let name = feature_name(family, window, key.as_deref());
                if let Some(id) = dictionary.id(&name) {
                    what_if.changes.push(FeatureChange {
                        id,
                        merge,
                        transform: family.transform,
                    });
                }
            }
        }
        for ratio in &config.ratios {
            let changed = |name: &str| {
                dictionary
                    .id(name)
                    .is_some_and(|id| what_if.changes.iter().any(|c| c.id == id))
            };
            if changed(&ratio.numerator) || changed(&ratio.denominator) {
                what_if.unmodelled.push(ratio.name.clone());
            }
        }
        what_if.changes.sort_by_key(|c| c.id);
        Ok(what_if)
    }

    /// A row's features (ids sorted) with the changes merged in; ids stay sorted.
    pub fn apply(&self, ids: &[u32], values: &[f32]) -> (Vec<u32>, Vec<f32>) {
        let (mut out_ids, mut out_values) = (
            Vec::with_capacity(ids.len() + self.changes.len()),
            Vec::with_capacity(ids.len() + self.changes.len()),
        );
        let mut i = 0;
        for change in &self.changes {
            while i < ids.len() && ids[i] < change.id {
                out_ids.push(ids[i]);
                out_values.push(values[i]);
                i += 1;
            }
            let old = (i < ids.len() && ids[i] == change.id)
                .then(|| untransformed(change.transform, values[i]));
            if old.is_some() {
                i += 1;
            }
            let new = match (change.merge, old) {
                (Merge::Add(x), old) => old.unwrap_or(0.0) + x,
                (Merge::AtLeast(x), old) => old.map_or(x, |o| o.max(x)),
                (Merge::AtMost(x), old) => old.map_or(x, |o| o.min(x)),
            };
            out_ids.push(change.id);
            out_values.push(transformed(change.transform, new));
        }
        out_ids.extend_from_slice(&ids[i..]);
        out_values.extend_from_slice(&values[i..]);
        (out_ids, out_values)
    }
}

/// Whether `family`'s filter lets the one row of `source` through as of `as_of`, and with
/// which key and value.
async fn reached(
    ctx: &SessionContext,
    family: &FeatureFamily,
    source: &str,
    as_of: NaiveDate,
) -> Result<Option<(Option<String>, f64)>, FeatureError> {
    let filter = family
        .filter
        .as_deref()
        .map_or("TRUE".to_string(), |f| filter_as_of(f, as_of));
    let key = family
        .key
        .as_deref()
        .map_or("CAST(NULL AS VARCHAR)".to_string(), |k| {
            format!("CAST(({k}) AS VARCHAR)")
        });
    let value = family.value.as_deref().unwrap_or("1");
    let sql = format!(
        "SELECT {key} AS k, CAST(({value}) AS DOUBLE) AS v FROM {source} WHERE COALESCE({filter}, FALSE)"
    );
    let batches = run(ctx, &family.name, &sql).await?;
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(None);
    };
    // VARCHAR may come back as a string view: read it as plain Utf8
    let keys = cast(batch.column(0), &DataType::Utf8).map_err(|error| FeatureError::Result {
        family: family.name.clone(),
        problem: error.to_string(),
    })?;
    let keys = keys.as_string::<i32>();
    let values = batch.column(1).as_primitive::<Float64Type>();
    let key = keys.is_valid(0).then(|| keys.value(0).to_string());
    if family.key.is_some() && key.is_none() {
        return Ok(None); // a NULL key makes no feature
    }
    Ok(Some((
        key,
        if values.is_valid(0) {
            values.value(0)
        } else {
            0.0
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_merge_by_aggregate_through_the_transform_and_keep_ids_sorted() {
        let what_if = WhatIf {
            changes: vec![
                FeatureChange {
                    id: 2,
                    merge: Merge::Add(1.0),
                    transform: Transform::Log1p,
                },
                FeatureChange {
                    id: 5,
                    merge: Merge::AtLeast(1.0),
                    transform: Transform::None,
                },
                FeatureChange {
                    id: 9,
                    merge: Merge::AtMost(3.0),
                    transform: Transform::None,
                },
            ],
            unmodelled: Vec::new(),
        };
        // a user with 3 of feature 2 (stored as ln 4), nothing of 5, 7 of 9
        let (ids, values) = what_if.apply(&[1, 2, 9], &[0.5, 4f32.ln(), 7.0]);
        assert_eq!(ids, [1, 2, 5, 9]);
        assert_eq!(values[0], 0.5);
        assert!((values[1] - 5f32.ln()).abs() < 1e-6, "{values:?}");
        assert_eq!(&values[2..], &[1.0, 3.0]);
        // a user with none of them gets each as one row alone would make it
        let (ids, values) = what_if.apply(&[], &[]);
        assert_eq!(ids, [2, 5, 9]);
        assert!((values[0] - 2f32.ln()).abs() < 1e-6);
    }
}
