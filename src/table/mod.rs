//! Bring your own table: a training set from any Parquet or CSV table with a 0/1 label
//! column, so ML engineers can try the trainer on their own data.
//!
//! Numeric columns become one standardized feature each (plus `<column>=null` where a value
//! is missing); text, boolean and date columns one indicator per value (`<column>=<value>`),
//! the `MAX_LEVELS` most frequent values per column. Row numbers stand in for user ids, so
//! the holdout split is the same hash split the world uses. Reads the table; writes nothing.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use crate::cause::{Cause, Classify};
use crate::dataset::{Csr, TrainingSet};
use crate::features::FeatureDictionary;
use crate::store::{Store, StoreError};

/// Values kept per categorical column; rarer ones share no feature.
pub const MAX_LEVELS: usize = 1000;

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
}

impl Classify for TableError {
    fn cause(&self) -> Cause {
        match self {
            TableError::Store(e) => e.cause(),
            TableError::Read { error, .. } => match crate::engine::cause_of(error) {
                Cause::Transient => Cause::Transient,
                _ => Cause::Input,
            },
            TableError::Invalid { .. } => Cause::Input,
        }
    }
}

/// A table turned into a training set, and what happened to its rows and columns.
pub struct TableSet {
    pub set: TrainingSet,
    pub dictionary: FeatureDictionary,
    pub rows: usize,
    /// rows without a label: left out of training, counted here
    pub unlabelled: usize,
    pub numeric_columns: Vec<String>,
    pub categorical_columns: Vec<String>,
    /// constant columns, which carry nothing
    pub skipped_columns: Vec<String>,
}

fn split_url(url: &str) -> (String, String) {
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

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(data_type, DataType::Decimal128(..))
}

/// The table's columns, read whole, with errors naming the table and the column.
struct Columns<'a> {
    url: &'a str,
    batches: Vec<RecordBatch>,
}

impl Columns<'_> {
    fn invalid(&self, problem: String) -> TableError {
        TableError::Invalid {
            table: self.url.to_string(),
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

/// Per row, its (feature id, value) pairs, and the dictionary they use.
#[derive(Default)]
struct Encoded {
    entries: Vec<Vec<(u32, f32)>>,
    dictionary: FeatureDictionary,
}

impl Encoded {
    /// A numeric column, standardized, with a `<name>=null` indicator where values are
    /// missing; false (and nothing added) for a constant column.
    fn add_numeric(&mut self, name: &str, values: &[Option<f64>]) -> bool {
        let rows = values.len();
        let present: Vec<f64> = values.iter().flatten().copied().collect();
        let n = present.len().max(1) as f64;
        let mean = present.iter().sum::<f64>() / n;
        let std = (present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
        if std == 0.0 && present.len() == rows {
            return false;
        }
        let id = self.dictionary.id_or_insert(name, name);
        let missing = (present.len() < rows)
            .then(|| self.dictionary.id_or_insert(&format!("{name}=null"), name));
        for (row, value) in values.iter().enumerate() {
            match (value, missing) {
                (Some(v), _) if std > 0.0 => {
                    self.entries[row].push((id, ((v - mean) / std) as f32))
                }
                (None, Some(missing)) => self.entries[row].push((missing, 1.0)),
                _ => {}
            }
        }
        true
    }

    /// A categorical column, one indicator per level (the MAX_LEVELS most frequent) and one
    /// for missing; false (and nothing added) for a constant column.
    fn add_categorical(&mut self, name: &str, values: &[Option<String>]) -> bool {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for v in values.iter().flatten() {
            *counts.entry(v.as_str()).or_default() += 1;
        }
        if counts.len() <= 1 && values.iter().all(|v| v.is_some()) {
            return false;
        }
        let mut levels: Vec<(&str, usize)> = counts.into_iter().collect();
        levels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        levels.truncate(MAX_LEVELS);
        levels.sort();
        let ids: HashMap<&str, u32> = levels
            .iter()
            .map(|(v, _)| {
                (
                    *v,
                    self.dictionary.id_or_insert(&format!("{name}={v}"), name),
                )
            })
            .collect();
        let missing = values
            .iter()
            .any(|v| v.is_none())
            .then(|| self.dictionary.id_or_insert(&format!("{name}=null"), name));
        for (row, value) in values.iter().enumerate() {
            let id = match value {
                Some(v) => ids.get(v.as_str()).copied(),
                None => missing,
            };
            if let Some(id) = id {
                self.entries[row].push((id, 1.0));
            }
        }
        true
    }

    /// The labelled rows as CSR (row number as the user id), with their labels.
    fn into_csr(mut self, labels: &[Option<f64>]) -> (Csr, Vec<f32>, FeatureDictionary) {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut set_labels = Vec::new();
        for (row, label) in labels.iter().enumerate() {
            let Some(label) = label else { continue };
            let mut row_entries = std::mem::take(&mut self.entries[row]);
            row_entries.sort_by_key(|(id, _)| *id);
            csr.users.push(row as u64);
            for (id, value) in row_entries {
                csr.ids.push(id);
                csr.values.push(value);
            }
            csr.offsets.push(csr.ids.len());
            set_labels.push(*label as f32);
        }
        (csr, set_labels, self.dictionary)
    }
}

pub async fn training_set(url: &str, label: &str) -> Result<TableSet, TableError> {
    let columns = Columns {
        url,
        batches: read(url).await?,
    };
    let Some(schema) = columns.batches.first().map(|b| b.schema()) else {
        return Err(columns.invalid("the table has no rows".into()));
    };
    if schema.index_of(label).is_err() {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(columns.invalid(format!(
            "no label column '{label}'; columns are {}",
            names.join(", ")
        )));
    }
    let labels = columns.labels(label)?;
    let rows = labels.len();
    let mut encoded = Encoded {
        entries: vec![Vec::new(); rows],
        ..Default::default()
    };
    let (mut numeric_columns, mut categorical_columns, mut skipped_columns) =
        (Vec::new(), Vec::new(), Vec::new());
    for field in schema.fields().iter().filter(|f| f.name() != label) {
        let name = field.name();
        let (kept, kind) = if is_numeric(field.data_type()) {
            let kept = encoded.add_numeric(name, &columns.numbers(name)?);
            (kept, &mut numeric_columns)
        } else {
            let kept = encoded.add_categorical(name, &columns.text(name)?);
            (kept, &mut categorical_columns)
        };
        match kept {
            true => kind.push(name.clone()),
            false => skipped_columns.push(name.clone()),
        }
    }
    let labelled = labels.iter().filter(|l| l.is_some()).count();
    let (csr, set_labels, dictionary) = encoded.into_csr(&labels);
    Ok(TableSet {
        set: TrainingSet {
            as_of: chrono::Utc::now().date_naive(),
            rows: csr,
            labels: set_labels,
        },
        dictionary,
        rows,
        unlabelled: rows - labelled,
        numeric_columns,
        categorical_columns,
        skipped_columns,
    })
}
