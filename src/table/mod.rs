//! Bring your own table: a training set from any Parquet or CSV table with a 0/1 label
//! column, so ML engineers can try the trainer on their own data, and the same encoding
//! applied to any later table to score it (`score`).
//!
//! Row positions (0-based) stand in for user ids, so the holdout split is the same hash split
//! the world uses, and the encoding ([`encoding`]) is learned on the other labelled rows
//! only. Reads tables; writes nothing (the model registry stores the encoding, `score` its
//! output).

pub mod encoding;
pub mod score;
pub mod train;

pub use encoding::{ColumnEncoding, ColumnValues, MAX_LEVELS, TableEncoding};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::cause::{Cause, Classify};
use crate::dataset::{Csr, TrainingSet, is_holdout};
use crate::features::FeatureDictionary;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{table}: {error}")]
    Read {
        table: String,
        error: DataFusionError,
    },
    #[error("{table}: {problem}")]
    Invalid { table: String, problem: String },
    #[error(
        "{table}: column '{column}' was {trained} when model {version} was trained and is {now} now: convert it back, or retrain on tables of the new type"
    )]
    TypeChanged {
        table: String,
        column: String,
        version: String,
        trained: &'static str,
        now: String,
    },
    #[error("{path}: {problem}")]
    Write { path: String, problem: String },
}

impl Classify for TableError {
    fn cause(&self) -> Cause {
        match self {
            TableError::Store(e) => e.cause(),
            TableError::Read { error, .. } => match crate::engine::cause_of(error) {
                Cause::Transient => Cause::Transient,
                _ => Cause::Input,
            },
            TableError::Invalid { .. } | TableError::TypeChanged { .. } => Cause::Input,
            TableError::Write { .. } => Cause::Input,
        }
    }
}

/// A location's folder (the store root) and file name.
pub(crate) fn split_url(url: &str) -> (String, String) {
    match url.rsplit_once('/') {
        Some((root, file)) if !root.is_empty() && !root.ends_with(':') && !root.ends_with("//") => {
            (root.to_string(), file.to_string())
        }
        _ => (".".to_string(), url.to_string()),
    }
}

async fn read(url: &str) -> Result<Vec<RecordBatch>, TableError> {
    let (root, file) = split_url(url);
    let store = Store::open(&root)?;
    let ctx = SessionContext::new();
    store.register(&ctx);
    let location = store.file_url(&file);
    let read_error = |error| TableError::Read {
        table: url.to_string(),
        error,
    };
    let lower = file.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        ctx.register_csv("t", &location, CsvReadOptions::new())
            .await
            .map_err(read_error)?;
    } else if lower.ends_with(".parquet") {
        ctx.register_parquet("t", &location, ParquetReadOptions::default())
            .await
            .map_err(read_error)?;
    } else {
        return Err(TableError::Invalid {
            table: url.to_string(),
            problem: "expected a .csv or .parquet file".into(),
        });
    }
    crate::engine::collect(&ctx, "SELECT * FROM t")
        .await
        .map_err(read_error)
}

pub fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(data_type, DataType::Decimal128(..))
}

/// The table's columns, read whole, with errors naming the table and the column.
pub struct Columns {
    url: String,
    batches: Vec<RecordBatch>,
}

impl Columns {
    /// Reads a `.csv` or `.parquet` table (a path or an object store URL).
    pub async fn read(url: &str) -> Result<Columns, TableError> {
        let batches = read(url).await?;
        if batches.iter().all(|b| b.num_rows() == 0) {
            return Err(TableError::Invalid {
                table: url.to_string(),
                problem: "the table has no rows".into(),
            });
        }
        Ok(Columns {
            url: url.to_string(),
            batches,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The column's type, if the table has it.
    pub fn data_type(&self, name: &str) -> Option<DataType> {
        let schema = self.batches.first()?.schema();
        Some(schema.field_with_name(name).ok()?.data_type().clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.batches.first().map_or_else(Vec::new, |b| {
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect()
        })
    }

    /// A column's values as the encoding reads them: numbers (NaN and infinities as missing)
    /// for a numeric column, text for any other.
    pub fn values(&self, name: &str) -> Result<ColumnValues, TableError> {
        match self.data_type(name) {
            Some(t) if is_numeric(&t) => Ok(ColumnValues::Numbers(
                self.numbers(name)?
                    .into_iter()
                    .map(|v| v.filter(|v| v.is_finite()))
                    .collect(),
            )),
            _ => Ok(ColumnValues::Text(self.text(name)?)),
        }
    }

    fn invalid(&self, problem: String) -> TableError {
        TableError::Invalid {
            table: self.url.clone(),
            problem,
        }
    }

    fn cast(&self, name: &str, to: &DataType) -> Result<Vec<ArrayRef>, TableError> {
        self.batches
            .iter()
            .map(|batch| {
                let array = batch
                    .column_by_name(name)
                    .expect("same schema in every batch");
                cast(array, to).map_err(|e| self.invalid(format!("column '{name}': {e}")))
            })
            .collect()
    }

    fn numbers(&self, name: &str) -> Result<Vec<Option<f64>>, TableError> {
        let mut out = Vec::new();
        for array in self.cast(name, &DataType::Float64)? {
            let array = array.as_primitive::<Float64Type>();
            out.extend((0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))));
        }
        Ok(out)
    }

    fn text(&self, name: &str) -> Result<Vec<Option<String>>, TableError> {
        let mut out = Vec::new();
        for array in self.cast(name, &DataType::Utf8)? {
            let array = array.as_string::<i32>();
            out.extend(
                (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i).to_string())),
            );
        }
        Ok(out)
    }

    /// The label column: 0, 1 or empty (an unlabelled row, left out of training).
    fn labels(&self, label: &str) -> Result<Vec<Option<f64>>, TableError> {
        let labels = self.numbers(label)?;
        if let Some((row, value)) = labels
            .iter()
            .enumerate()
            .find_map(|(i, v)| v.filter(|v| *v != 0.0 && *v != 1.0).map(|v| (i, v)))
        {
            return Err(self.invalid(format!(
                "label '{label}' must be 0 or 1; row {} has {value}",
                row + 1
            )));
        }
        Ok(labels)
    }
}

/// A table with a 0/1 label column, read whole.
pub struct LabelledTable {
    pub columns: Columns,
    pub label: String,
    /// per row: 0, 1, or None (unlabelled: left out of training)
    pub labels: Vec<Option<f64>>,
}

impl LabelledTable {
    pub async fn read(url: &str, label: &str) -> Result<LabelledTable, TableError> {
        let columns = Columns::read(url).await?;
        if columns.data_type(label).is_none() {
            return Err(columns.invalid(format!(
                "no label column '{label}'; columns are {}",
                columns.names().join(", ")
            )));
        }
        let labels = columns.labels(label)?;
        Ok(LabelledTable {
            columns,
            label: label.to_string(),
            labels,
        })
    }

    pub fn unlabelled(&self) -> usize {
        self.labels.iter().filter(|l| l.is_none()).count()
    }

    /// Labelled rows outside the holdout: the rows an encoding and a model may learn from.
    pub fn training_rows(&self, holdout_share: f64) -> Vec<usize> {
        (0..self.labels.len())
            .filter(|&r| self.labels[r].is_some() && !is_holdout(r as u64, holdout_share))
            .collect()
    }

    /// The encoding of every column but the label, learned on the training rows, with `bins`
    /// value ranges per numeric column (0: none). It has been through its JSON form, so the
    /// rows trained on are encoded exactly as a table scored with the stored one.
    pub fn learn_encoding(
        &self,
        holdout_share: f64,
        bins: usize,
    ) -> Result<TableEncoding, TableError> {
        let training = self.training_rows(holdout_share);
        let mut encoding = TableEncoding {
            label: self.label.clone(),
            columns: Vec::new(),
            skipped: Vec::new(),
        };
        for name in self.columns.names() {
            if name == self.label {
                continue;
            }
            let values = self.columns.values(&name)?;
            match ColumnEncoding::learn(&name, &values, &training, &self.labels, bins) {
                Some(column) => encoding.columns.push(column),
                None => encoding.skipped.push(name),
            }
        }
        let json =
            serde_json::to_vec(&encoding).map_err(|e| self.columns.invalid(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| self.columns.invalid(e.to_string()))
    }

    /// The labelled rows under `encoding` (row position as the user id), and its dictionary.
    pub fn training_set(
        &self,
        encoding: &TableEncoding,
    ) -> Result<(TrainingSet, FeatureDictionary), TableError> {
        let dictionary = encoding.dictionary();
        let encoded = encode(&self.columns, encoding, &dictionary, "new")?;
        let labelled: Vec<usize> = (0..self.labels.len())
            .filter(|&r| self.labels[r].is_some())
            .collect();
        let rows = encoded.rows.select(&labelled);
        let labels = labelled
            .iter()
            .map(|&r| self.labels[r].unwrap_or_default() as f32)
            .collect();
        let set = TrainingSet {
            as_of: chrono::Utc::now().date_naive(),
            rows,
            labels,
        };
        Ok((set, dictionary))
    }
}

/// A table's rows under an encoding, and the model columns it lacked.
pub struct EncodedTable {
    /// every row, its position as the user id
    pub rows: Csr,
    pub missing_columns: Vec<String>,
}

/// Every row of `columns` under `encoding`; `version` names the model in a type error.
pub fn encode(
    columns: &Columns,
    encoding: &TableEncoding,
    dictionary: &FeatureDictionary,
    version: &str,
) -> Result<EncodedTable, TableError> {
    let mut rows = vec![Vec::new(); columns.rows()];
    let mut missing_columns = Vec::new();
    for column in &encoding.columns {
        let name = column.name();
        let values = match columns.data_type(name) {
            None => {
                missing_columns.push(name.to_string());
                None
            }
            Some(t) if is_numeric(&t) != column.is_numeric() => {
                return Err(TableError::TypeChanged {
                    table: columns.url.clone(),
                    column: name.to_string(),
                    version: version.to_string(),
                    trained: if column.is_numeric() {
                        "numeric"
                    } else {
                        "text"
                    },
                    now: t.to_string(),
                });
            }
            Some(_) => Some(columns.values(name)?),
        };
        column.encode(values.as_ref(), dictionary, &mut rows);
    }
    if !encoding.columns.is_empty() && missing_columns.len() == encoding.columns.len() {
        return Err(columns.invalid(format!(
            "none of the {} columns model {version} reads is in the table (it has {}): the wrong file?",
            encoding.columns.len(),
            columns.names().join(", ")
        )));
    }
    let mut csr = Csr {
        offsets: vec![0],
        ..Default::default()
    };
    for (position, mut entries) in rows.into_iter().enumerate() {
        entries.sort_by_key(|(id, _)| *id);
        csr.users.push(position as u64);
        for (id, value) in entries {
            csr.ids.push(id);
            csr.values.push(value);
        }
        csr.offsets.push(csr.ids.len());
    }
    Ok(EncodedTable {
        rows: csr,
        missing_columns,
    })
}
