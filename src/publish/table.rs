//! The limit table's rows: the only place that encodes a `LimitRow` into the published
//! Arrow columns and decodes its list columns back. Lists are `;`-separated text:
//! `scenario_limits` as `furniture=2000 until 2026-12-01`, `suggestions` as
//! `language=+800;professional=+300`, `reasons` as reason codes.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use serde::Serialize;

use super::PublishError;
use crate::policy::{Decision, PreviousDecision, ScenarioGrant};
use crate::schema;
use crate::suggestions::Suggestion;

/// One user's published row.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRow {
    pub user_id: u64,
    pub pd: f64,
    pub decision: Decision,
    /// certificate families that would raise the limit, largest first
    pub suggestions: Vec<Suggestion>,
}

/// A NaN or infinite number has no JSON form and no meaning as a limit: such a row means a
/// broken stage upstream, so nothing is published.
pub(super) fn refuse_non_finite<R: std::borrow::Borrow<LimitRow>>(
    rows: &[R],
) -> Result<(), PublishError> {
    for row in rows {
        let row = row.borrow();
        let d = &row.decision;
        let fields = [
            ("pd", Some(row.pd)),
            ("base_limit", Some(d.base_limit)),
            ("certificate_boost", Some(d.certificate_boost)),
            ("user_cap", d.user_cap),
            ("policy_limit", Some(d.policy_limit)),
            ("credit_limit", Some(d.credit_limit)),
            ("apr", d.apr),
        ]
        .into_iter()
        .chain(
            d.scenarios
                .iter()
                .map(|s| ("scenario_limits", Some(s.amount))),
        );
        for (field, value) in fields {
            if let Some(value) = value.filter(|v| !v.is_finite()) {
                return Err(PublishError::NotFinite {
                    user_id: row.user_id,
                    field,
                    value,
                });
            }
        }
    }
    Ok(())
}

pub(super) fn to_batch<R: std::borrow::Borrow<LimitRow>>(
    rows: &[R],
    as_of: NaiveDate,
) -> Result<RecordBatch, PublishError> {
    let rows: Vec<&LimitRow> = rows.iter().map(|row| row.borrow()).collect();
    let reasons: Vec<String> = rows.iter().map(|r| joined(&r.decision.reasons)).collect();
    let scenarios: Vec<String> = rows
        .iter()
        .map(|r| scenarios_text(&r.decision.scenarios, as_of))
        .collect();
    let suggestions: Vec<String> = rows
        .iter()
        .map(|r| suggestions_text(&r.suggestions))
        .collect();
    Ok(RecordBatch::try_new(
        schema::LIMITS.arrow(),
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.pd))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.decision.grade.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.base_limit),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.certificate_boost),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.decision.user_cap),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.policy_limit),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.credit_limit),
            )),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.decision.apr))),
            Arc::new(StringArray::from_iter_values(scenarios.iter())),
            Arc::new(StringArray::from_iter_values(suggestions.iter())),
            Arc::new(StringArray::from_iter_values(reasons.iter())),
        ],
    )?)
}

fn joined<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(";")
}

/// `furniture=2000 until 2026-12-01`: the amount and the first day it no longer applies.
fn scenarios_text(grants: &[ScenarioGrant], as_of: NaiveDate) -> String {
    grants
        .iter()
        .map(|s| {
            format!(
                "{}={} until {}",
                s.category,
                s.amount,
                as_of + chrono::Duration::days(s.valid_days as i64)
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// `language=+800;professional=+300`
fn suggestions_text(suggestions: &[Suggestion]) -> String {
    suggestions
        .iter()
        .map(|s| format!("{}=+{}", s.family, s.amount))
        .collect::<Vec<_>>()
        .join(";")
}

/// Each user's policy limit (before their own cap) and certificate boosts in a published
/// table: where tonight's nightly step starts. Tables from before `policy_limit` existed give
/// their credit limit.
pub fn previous_decisions(batches: &[RecordBatch]) -> HashMap<u64, PreviousDecision> {
    let mut out = HashMap::new();
    for batch in batches {
        let (Some(users), Some(limits)) = (
            batch.column_by_name("user_id"),
            batch
                .column_by_name("policy_limit")
                .or_else(|| batch.column_by_name("credit_limit")),
        ) else {
            continue;
        };
        let users = users.as_primitive::<UInt64Type>();
        let limits = limits.as_primitive::<Float64Type>();
        let reasons = batch
            .column_by_name("reasons")
            .and_then(|c| c.as_string_opt::<i32>());
        for row in 0..batch.num_rows() {
            let boosts = reasons
                .filter(|r| r.is_valid(row))
                .map(|r| {
                    r.value(row)
                        .split(';')
                        .filter(|code| code.starts_with("certificate_boost:"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let previous = PreviousDecision {
                policy_limit: limits.value(row),
                boosts,
            };
            out.insert(users.value(row), previous);
        }
    }
    out
}

/// A published table's columns, typed: what readers decode a limit row from.
pub struct LimitColumns {
    pub users: Vec<u64>,
    pub credit_limit: Float64Array,
    pub policy_limit: Float64Array,
    pub base_limit: Float64Array,
    pub certificate_boost: Float64Array,
    pub pd: Float64Array,
    pub user_cap: Float64Array,
    pub apr: Float64Array,
    pub grade: StringArray,
    pub scenario_limits: StringArray,
    pub suggestions: StringArray,
    pub reasons: StringArray,
}

impl LimitColumns {
    /// The columns of `batches`, refusing a table without the limits schema or with a number
    /// that is not finite (JSON has no NaN or infinity: such a number would be written as
    /// null and the answer would not read back). The error says what is wrong.
    pub fn decode(batches: &[RecordBatch]) -> Result<LimitColumns, String> {
        let table = concat_batches(&schema::LIMITS.arrow(), batches)
            .map_err(|e| format!("does not have the limits schema: {e}"))?;
        let column = |name: &str| {
            table
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| format!("column {name} is missing"))
        };
        let f64s = |name: &str| -> Result<Float64Array, String> {
            column(name)?
                .as_primitive_opt::<Float64Type>()
                .cloned()
                .ok_or_else(|| format!("column {name} is not Float64"))
        };
        let strings = |name: &str| -> Result<StringArray, String> {
            column(name)?
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| format!("column {name} is not Utf8"))
        };
        let users: Vec<u64> = column("user_id")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| "column user_id is not UInt64".to_string())?
            .values()
            .to_vec();
        let columns = LimitColumns {
            credit_limit: f64s("credit_limit")?,
            policy_limit: f64s("policy_limit")?,
            base_limit: f64s("base_limit")?,
            certificate_boost: f64s("certificate_boost")?,
            pd: f64s("pd")?,
            user_cap: f64s("user_cap")?,
            apr: f64s("apr")?,
            grade: strings("grade")?,
            scenario_limits: strings("scenario_limits")?,
            suggestions: strings("suggestions")?,
            reasons: strings("reasons")?,
            users,
        };
        columns.check_finite()?;
        Ok(columns)
    }

    fn check_finite(&self) -> Result<(), String> {
        for (name, values) in [
            ("credit_limit", &self.credit_limit),
            ("policy_limit", &self.policy_limit),
            ("base_limit", &self.base_limit),
            ("certificate_boost", &self.certificate_boost),
            ("pd", &self.pd),
            ("user_cap", &self.user_cap),
            ("apr", &self.apr),
        ] {
            if let Some(row) = (0..self.users.len())
                .find(|&row| !values.is_null(row) && !values.value(row).is_finite())
            {
                return Err(format!(
                    "{name} of user {} is {}, not a finite number",
                    self.users[row],
                    values.value(row)
                ));
            }
        }
        Ok(())
    }
}

/// The items of a published list column.
pub fn items(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').filter(|part| !part.is_empty())
}

/// One scenario limit of the published table, as the answer document shows it.
#[derive(Debug, PartialEq, Serialize)]
pub struct ScenarioItem<'a> {
    pub category: &'a str,
    pub amount: f64,
    /// YYYY-MM-DD, the first day it no longer applies
    pub valid_until: &'a str,
}

/// One suggestion of the published table, as the answer document shows it.
#[derive(Debug, PartialEq, Serialize)]
pub struct SuggestionItem<'a> {
    pub family: &'a str,
    pub adds: f64,
}

/// `furniture=2000 until 2026-12-01`
pub fn parse_scenario(text: &str) -> Option<ScenarioItem<'_>> {
    let (category, rest) = text.split_once('=')?;
    let (amount, until) = rest.split_once(" until ")?;
    Some(ScenarioItem {
        category,
        amount: amount.trim().parse().ok()?,
        valid_until: until.trim(),
    })
}

/// `language=+800`
pub fn parse_suggestion(text: &str) -> Option<SuggestionItem<'_>> {
    let (family, adds) = text.split_once('=')?;
    Some(SuggestionItem {
        family,
        adds: adds.trim().trim_start_matches('+').parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::HeldCertificate;

    #[test]
    fn list_columns_read_back_what_was_written() {
        let as_of = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let grants = [ScenarioGrant {
            category: "furniture".into(),
            amount: 2000.0,
            valid_days: 30,
        }];
        let text = scenarios_text(&grants, as_of);
        assert_eq!(text, "furniture=2000 until 2026-12-01");
        assert_eq!(
            parse_scenario(&text),
            Some(ScenarioItem {
                category: "furniture",
                amount: 2000.0,
                valid_until: "2026-12-01"
            })
        );
        let certificate = HeldCertificate {
            cert_type_id: 1,
            name: "ielts".into(),
            family: "language".into(),
            tier: 2,
            confidence: 1.0,
        };
        let suggestions = [Suggestion {
            family: "language".into(),
            certificate,
            amount: 800.0,
        }];
        let text = suggestions_text(&suggestions);
        assert_eq!(text, "language=+800");
        let parsed: Vec<SuggestionItem> = items(&text).filter_map(parse_suggestion).collect();
        assert_eq!(
            parsed,
            vec![SuggestionItem {
                family: "language",
                adds: 800.0
            }]
        );
    }
}
