//! Scoring a table of your own with a model trained on one (`redflower score --table`): the
//! table's columns through the encoding stored with the model, the calibrated PD, scorecard
//! points and adverse reason codes of every row, written as CSV or Parquet. Reads the table
//! and the model; writes the output file only.

use std::sync::Arc;

use burn::tensor::Device;
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;

use super::{Columns, TableEncoding, TableError, encode, split_url};
use crate::model::{self, ModelError};
use crate::scoring;
use crate::store::Store;

/// Where a table model's encoding is stored, beside its weights.
pub const ENCODING_FILE: &str = "encoding.json";

#[derive(Debug, thiserror::Error)]
pub enum ScoreTableError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "model {0} was not trained on a table (it has no {ENCODING_FILE}): models trained on a redflower world score with `redflower nightly`"
    )]
    NotATableModel(String),
}

impl crate::cause::Classify for ScoreTableError {
    fn cause(&self) -> crate::cause::Cause {
        match self {
            ScoreTableError::Table(e) => e.cause(),
            ScoreTableError::Model(e) => e.cause(),
            ScoreTableError::NotATableModel(_) => crate::cause::Cause::Configuration,
        }
    }
}

/// What scoring a table did.
#[derive(Debug, Clone, Serialize)]
pub struct TableScoring {
    pub model_version: String,
    pub table: String,
    pub out: String,
    pub rows: usize,
    /// columns the model reads that the table lacks: missing on every row
    pub missing_columns: Vec<String>,
    /// rows with no feature the model knows, which score as the average row does
    pub rows_without_known_features: usize,
    pub mean_pd: f64,
}

/// Scores every row of the table at `table_url` with registered model `version` and writes
/// `row` (1-based, the table's order), `pd`, `points` and `reasons` to `out_url` (`.csv` or
/// `.parquet`).
pub async fn score_table(
    store: &Store,
    version: &str,
    table_url: &str,
    out_url: &str,
    reasons_per_row: usize,
    device: &Device,
) -> Result<TableScoring, ScoreTableError> {
    let format = Format::of(out_url)?;
    let model = model::load(store, version, device).await?;
    let encoding: TableEncoding = model::attachment(store, version, ENCODING_FILE)
        .await?
        .ok_or_else(|| ScoreTableError::NotATableModel(version.to_string()))?;
    let dictionary = encoding.dictionary();
    model.check_dictionary(&dictionary)?;
    let columns = Columns::read(table_url).await?;
    let encoded = encode(&columns, &encoding, &dictionary, version)?;
    let reasons = scoring::ReasonCodes {
        per_user: reasons_per_row,
        withheld_families: &[],
    };
    let scores = scoring::score(&model, &encoded.rows, &dictionary, reasons, device);
    let rows = encoded.rows.len();
    let batch = output_batch(&scores).map_err(|e| TableError::Write {
        path: out_url.to_string(),
        problem: e.to_string(),
    })?;
    write(out_url, format, &batch).await?;
    Ok(TableScoring {
        model_version: version.to_string(),
        table: table_url.to_string(),
        out: out_url.to_string(),
        rows,
        missing_columns: encoded.missing_columns,
        rows_without_known_features: (0..rows)
            .filter(|&r| encoded.rows.row(r).0.is_empty())
            .count(),
        mean_pd: scores.pd.iter().sum::<f64>() / rows.max(1) as f64,
    })
}

fn output_batch(
    scores: &scoring::Scores,
) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    let schema = Schema::new(vec![
        Field::new("row", DataType::UInt64, false),
        Field::new("pd", DataType::Float64, false),
        Field::new("points", DataType::Float64, false),
        Field::new("reasons", DataType::Utf8, false),
    ]);
    let reasons: Vec<String> = scores.reasons.iter().map(|r| r.join("; ")).collect();
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(UInt64Array::from_iter_values(
                scores.users.iter().map(|u| u + 1),
            )),
            Arc::new(Float64Array::from(scores.pd.clone())),
            Arc::new(Float64Array::from(scores.points.clone())),
            Arc::new(StringArray::from(reasons)),
        ],
    )
}

/// The output file's format, by its extension.
#[derive(Debug, Clone, Copy)]
enum Format {
    Csv,
    Parquet,
}

impl Format {
    fn of(out_url: &str) -> Result<Format, TableError> {
        let lower = out_url.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Ok(Format::Csv)
        } else if lower.ends_with(".parquet") {
            Ok(Format::Parquet)
        } else {
            Err(TableError::Invalid {
                table: out_url.to_string(),
                problem: "the output must end in .csv or .parquet".into(),
            })
        }
    }
}

async fn write(out_url: &str, format: Format, batch: &RecordBatch) -> Result<(), TableError> {
    let failed = |problem: String| TableError::Write {
        path: out_url.to_string(),
        problem,
    };
    let mut bytes = Vec::new();
    match format {
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::Writer::new(&mut bytes);
            writer.write(batch).map_err(|e| failed(e.to_string()))?;
        }
        Format::Parquet => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None)
                .map_err(|e| failed(e.to_string()))?;
            writer.write(batch).map_err(|e| failed(e.to_string()))?;
            writer.close().map_err(|e| failed(e.to_string()))?;
        }
    }
    let (root, file) = split_url(out_url);
    Store::open(&root)?.put(&file, bytes.into()).await?;
    Ok(())
}
