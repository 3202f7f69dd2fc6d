//! What the policy weighs besides the score, as known before the run date: verified
//! certificates, each user's newest limit request, income bands from the newest profile
//! snapshot, fraud flags from every recognized upload, and purchases per scenario category.
//! Reads the clean tables `sources` registered; writes nothing in the store (its results wait
//! by user part in a temp folder, `InputsByPart`). The only module that turns those tables
//! into `UserFacts`.

use std::collections::HashMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use crate::sources::known_before;
use crate::spill::{PartSpill, SpillFolder};
use crate::user_index::UserShard;

use super::{
    FraudFlag, HeldCertificate, LimitPolicy, PolicyError, PreviousDecision, UserFacts,
    fraud::checks_sql,
};

/// What the policy needs besides the score, as known before the run date.
#[derive(Debug, Default)]
pub struct PolicyInputs {
    pub certificates: HashMap<u64, Vec<HeldCertificate>>,
    /// verified certificates revoked as of the run date
    pub revoked: HashMap<u64, Vec<HeldCertificate>>,
    /// ceiling from each user's latest request; a lifted request leaves no entry
    pub caps: HashMap<u64, f64>,
    /// from the newest profile snapshot before the run date
    pub income_bands: HashMap<u64, i32>,
    /// users the fraud checks flag
    pub fraud: HashMap<u64, Vec<FraudFlag>>,
    /// purchases per scenario category in the 90 days before the run
    pub category_purchases: HashMap<u64, HashMap<String, u32>>,
}

impl PolicyInputs {
    pub fn facts(&self, user: u64, previous: Option<&PreviousDecision>) -> UserFacts {
        UserFacts {
            certificates: self.certificates.get(&user).cloned().unwrap_or_default(),
            revoked_certificates: self.revoked.get(&user).cloned().unwrap_or_default(),
            previous_boosts: previous.map(|p| p.boosts.clone()).unwrap_or_default(),
            cap: self.caps.get(&user).copied(),
            income_band: self.income_bands.get(&user).copied(),
            previous_limit: previous.map(|p| p.policy_limit),
            fraud_flags: self.fraud.get(&user).cloned().unwrap_or_default(),
            category_purchases: self
                .category_purchases
                .get(&user)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Every user's policy inputs, their query results set aside by user part (`crate::spill`)
/// so that the per-user stages build one part's `PolicyInputs` at a time. Fraud flags are
/// decided over every user's uploads (a certificate number claimed by two users) and kept
/// whole: they hold only the users flagged.
pub struct InputsByPart {
    count: u32,
    /// category purchases (none without scenarios), certificates that count, revoked ones,
    /// caps, income bands: each query with its rows by part
    results: [(String, PartSpill); 5],
    fraud: HashMap<u64, Vec<FraudFlag>>,
    _folder: Option<SpillFolder>,
}

/// The policy's inputs of every user at once: `load_inputs_by_part` in one part.
pub async fn load_inputs(
    ctx: &SessionContext,
    run_date: NaiveDate,
    profile_snapshot: NaiveDate,
    policy: &LimitPolicy,
) -> Result<PolicyInputs, PolicyError> {
    load_inputs_by_part(ctx, run_date, profile_snapshot, policy, 1)
        .await?
        .part(0)
}

/// Runs the policy's queries once, their rows set aside in `count` user parts.
pub async fn load_inputs_by_part(
    ctx: &SessionContext,
    run_date: NaiveDate,
    profile_snapshot: NaiveDate,
    policy: &LimitPolicy,
    count: u32,
) -> Result<InputsByPart, PolicyError> {
    let fraud = fraud_flags(ctx, run_date, policy).await?;
    let count = count.max(1);
    let folder = match count {
        1 => None,
        _ => Some(
            SpillFolder::create("policy").map_err(|e| PolicyError::Query {
                sql: "(setting policy inputs aside by user part)".into(),
                error: DataFusionError::IoError(e),
            })?,
        ),
    };
    let statements = [
        category_purchases_sql(run_date, policy),
        certificates_sql(run_date, Standing::Counts),
        certificates_sql(run_date, Standing::Revoked),
        caps_sql(run_date),
        income_bands_sql(run_date, profile_snapshot),
    ];
    let mut results = Vec::with_capacity(statements.len());
    for (i, sql) in statements.into_iter().enumerate() {
        let mut rows = PartSpill::new(&format!("input-{i}"), count, folder.as_ref());
        if !sql.is_empty() {
            crate::engine::for_each_batch(ctx, &sql, |batch| rows.push(batch))
                .await
                .and_then(|()| rows.finish())
                .map_err(|error| PolicyError::Query {
                    sql: sql.clone(),
                    error,
                })?;
        }
        results.push((sql, rows));
    }
    let Ok(results) = <[_; 5]>::try_from(results) else {
        unreachable!("five statements, five results")
    };
    Ok(InputsByPart {
        count,
        results,
        fraud,
        _folder: folder,
    })
}

impl InputsByPart {
    /// The inputs of the users of part `index`.
    pub fn part(&self, index: u32) -> Result<PolicyInputs, PolicyError> {
        let rows = |i: usize| {
            let (sql, rows) = &self.results[i];
            let batches = rows.part(index).map_err(|error| PolicyError::Query {
                sql: sql.clone(),
                error,
            })?;
            Ok::<_, PolicyError>((sql.as_str(), batches))
        };
        let (sql, batches) = rows(0)?;
        let category_purchases = category_purchases_from(sql, &batches)?;
        let (sql, batches) = rows(1)?;
        let certificates = certificates_from(sql, &batches)?;
        let (sql, batches) = rows(2)?;
        let revoked = certificates_from(sql, &batches)?;
        let (_, batches) = rows(3)?;
        let caps = caps_from(&batches);
        let (_, batches) = rows(4)?;
        let income_bands = income_bands_from(&batches);
        let fraud = self
            .fraud
            .iter()
            .filter(|(user, _)| self.count == 1 || UserShard::of(**user, self.count) == index)
            .map(|(user, flags)| (*user, flags.clone()))
            .collect();
        Ok(PolicyInputs {
            certificates,
            revoked,
            caps,
            income_bands,
            fraud,
            category_purchases,
        })
    }
}

/// The conditions on `source`'s clean view for what was known before the run date.
fn known(source: &str, run_date: NaiveDate) -> String {
    known_before(source, run_date).join(" AND ")
}

/// Purchases per scenario category in the 90 days before the run; no statement without
/// scenarios.
fn category_purchases_sql(run_date: NaiveDate, policy: &LimitPolicy) -> String {
    if policy.scenarios.is_empty() {
        return String::new();
    }
    let categories: Vec<String> = policy
        .scenarios
        .iter()
        .map(|s| format!("'{}'", s.category.replace('\'', "''")))
        .collect();
    let from = run_date - chrono::Duration::days(90);
    format!(
        "SELECT user_id, category, COUNT(*) FROM events \
         WHERE kind = 'purchase' AND category IN ({}) \
         AND event_time >= TIMESTAMP '{from} 00:00:00' AND event_time < TIMESTAMP '{run_date} 00:00:00' \
         AND dt >= '{from}' AND {} GROUP BY user_id, category",
        categories.join(", "),
        known("events", run_date)
    )
}

fn category_purchases_from(
    sql: &str,
    batches: &[RecordBatch],
) -> Result<HashMap<u64, HashMap<String, u32>>, PolicyError> {
    let mut out: HashMap<u64, HashMap<String, u32>> = HashMap::new();
    for batch in batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let category = utf8(sql, batch, 1)?;
        let category = category.as_string::<i32>();
        let counts = batch.column(2).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            out.entry(users.value(row))
                .or_default()
                .insert(category.value(row).to_string(), counts.value(row) as u32);
        }
    }
    Ok(out)
}

/// Where a certificate stands as of the run date, by its newest version known before it.
#[derive(Clone, Copy)]
enum Standing {
    /// verified, not revoked, not expired: what boosts and features count
    Counts,
    /// verified once, revoked since
    Revoked,
}

/// Recognized certificates of one standing as of the run date, with their type's tier.
fn certificates_sql(run_date: NaiveDate, standing: Standing) -> String {
    let standing = match standing {
        Standing::Counts => format!(
            "c.revoked_at IS NULL AND (c.valid_until IS NULL OR c.valid_until > DATE '{run_date}')"
        ),
        Standing::Revoked => "c.revoked_at IS NOT NULL".to_string(),
    };
    format!(
        "SELECT c.user_id, c.cert_type_id, t.name, t.family, t.tier, CAST(c.confidence AS DOUBLE) \
         FROM (SELECT * FROM certificates WHERE {}) c \
         JOIN certificate_types t ON c.cert_type_id = t.cert_type_id \
         WHERE c.recognized AND c.verified_at IS NOT NULL AND {standing} \
         ORDER BY c.user_id, c.cert_type_id, c.certificate_no",
        known("certificates", run_date)
    )
}

fn certificates_from(
    sql: &str,
    batches: &[RecordBatch],
) -> Result<HashMap<u64, Vec<HeldCertificate>>, PolicyError> {
    let mut out: HashMap<u64, Vec<HeldCertificate>> = HashMap::new();
    for batch in batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let types = cast(batch.column(1), &DataType::UInt32).map_err(|e| arrow_error(sql, e))?;
        let types = types.as_primitive::<UInt32Type>();
        let names = utf8(sql, batch, 2)?;
        let families = utf8(sql, batch, 3)?;
        let tiers = batch.column(4).as_primitive::<Int32Type>();
        let confidence = batch.column(5).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            out.entry(users.value(row))
                .or_default()
                .push(HeldCertificate {
                    cert_type_id: types.value(row),
                    name: names.as_string::<i32>().value(row).to_string(),
                    family: families.as_string::<i32>().value(row).to_string(),
                    tier: tiers.value(row),
                    confidence: confidence.value(row),
                });
        }
    }
    Ok(out)
}

/// Users the fraud checks flag (`fraud::checks_sql`) over every recognized upload before the
/// run, verified or not, each with their flags sorted.
async fn fraud_flags(
    ctx: &SessionContext,
    run_date: NaiveDate,
    policy: &LimitPolicy,
) -> Result<HashMap<u64, Vec<FraudFlag>>, PolicyError> {
    let uploads = format!(
        "SELECT user_id, certificate_no, CAST(uploaded_at AS DATE) AS day, CAST(confidence AS DOUBLE) AS confidence \
         FROM certificates WHERE recognized AND {}",
        known("certificates", run_date)
    );
    let checks = checks_sql(
        &uploads,
        &policy.fraud,
        policy.certificate_boost.min_confidence,
    );
    let mut flags: HashMap<u64, Vec<FraudFlag>> = HashMap::new();
    for (flag, sql) in checks {
        let mut take = |batch: RecordBatch| {
            for user in crate::spill::user_column(&batch)?.values() {
                flags.entry(*user).or_default().push(flag);
            }
            Ok(())
        };
        crate::engine::for_each_batch(ctx, &sql, &mut take)
            .await
            .map_err(|error| PolicyError::Query {
                sql: sql.clone(),
                error,
            })?;
    }
    for list in flags.values_mut() {
        list.sort();
        list.dedup();
    }
    Ok(flags)
}

/// The ceiling of each user's newest request before the run; a lifted request (no limit)
/// leaves no cap.
fn caps_sql(run_date: NaiveDate) -> String {
    format!(
        "SELECT user_id, requested_limit FROM ( \
           SELECT user_id, requested_limit, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY requested_at DESC) AS newest \
           FROM limit_requests WHERE {}) \
         WHERE newest = 1 AND requested_limit IS NOT NULL",
        known("limit_requests", run_date)
    )
}

fn caps_from(batches: &[RecordBatch]) -> HashMap<u64, f64> {
    let mut out = HashMap::new();
    for batch in batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let caps = batch.column(1).as_primitive::<Float64Type>();
        for row in (0..batch.num_rows()).filter(|&row| !caps.is_null(row)) {
            out.insert(users.value(row), caps.value(row));
        }
    }
    out
}

fn income_bands_sql(run_date: NaiveDate, profile_snapshot: NaiveDate) -> String {
    format!(
        "SELECT user_id, CAST(income_band AS INT) FROM profiles WHERE dt = '{profile_snapshot}' AND {}",
        known("profiles", run_date)
    )
}

fn income_bands_from(batches: &[RecordBatch]) -> HashMap<u64, i32> {
    let mut out = HashMap::new();
    for batch in batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let bands = batch.column(1).as_primitive::<Int32Type>();
        for row in (0..batch.num_rows()).filter(|&row| !bands.is_null(row)) {
            out.insert(users.value(row), bands.value(row));
        }
    }
    out
}

/// Column `index` of `batch` as Utf8 (dictionary-encoded strings come back decoded).
fn utf8(
    sql: &str,
    batch: &RecordBatch,
    index: usize,
) -> Result<std::sync::Arc<dyn Array>, PolicyError> {
    cast(batch.column(index), &DataType::Utf8).map_err(|e| arrow_error(sql, e))
}

fn arrow_error(sql: &str, e: datafusion::arrow::error::ArrowError) -> PolicyError {
    PolicyError::Query {
        sql: sql.to_string(),
        error: e.into(),
    }
}
