//! Reading back the truth the generator wrote (`truth/true_pd/`): each synthetic user's true
//! PD and the PD without the world's hidden parts. Only evaluations read it, to put a model's
//! AUC next to the best possible; no run, feature or model ever sees it.

use std::collections::HashMap;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};

use super::SynthError;
use crate::schema::{self, SchemaError};
use crate::store::{Store, layout};

/// One user's truth: the PD the world drew the label from, and (worlds since `visible_pd`)
/// the PD without its hidden parts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TruePd {
    pub true_pd: f64,
    pub visible_pd: Option<f64>,
}

/// The truth of `users`, in their order; None when the root has no truth or lacks one of them
/// (a root that is not a synthetic world, or another world's users).
pub async fn read(store: &Store, users: &[u64]) -> Result<Option<Vec<TruePd>>, SynthError> {
    let batches = store.read_parquet_dir(layout::TRUTH).await?;
    if batches.is_empty() {
        return Ok(None);
    }
    let invalid = |problem: String| SynthError::Invalid(format!("{}: {problem}", layout::TRUTH));
    let mut truth = HashMap::new();
    for batch in &batches {
        match schema::TRUTH.check(layout::TRUTH, &batch.schema()) {
            // worlds written before visible_pd only lack the second reference
            Err(SchemaError::MissingColumn { column, .. }) if column == "visible_pd" => {}
            Err(e) => return Err(SynthError::Invalid(e.to_string())),
            Ok(()) => {}
        }
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| c.as_primitive::<Float64Type>().clone())
        };
        let ids = batch.column(0).as_primitive::<UInt64Type>();
        let Some(true_pd) = column("true_pd") else {
            return Err(invalid("no true_pd column".into()));
        };
        let visible_pd = column("visible_pd");
        for row in 0..batch.num_rows() {
            truth.insert(
                ids.value(row),
                TruePd {
                    true_pd: true_pd.value(row),
                    visible_pd: visible_pd.as_ref().map(|v| v.value(row)),
                },
            );
        }
    }
    Ok(users.iter().map(|u| truth.get(u).copied()).collect())
}
