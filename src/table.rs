//! Bring your own table: a training set from any Parquet or CSV table with a 0/1 label
//! column, so ML engineers can try the trainer on their own data.
//!
//! Numeric columns become one standardized feature each (plus `<column>=null` where a value
//! is missing); text, boolean and date columns one indicator per value (`<column>=<value>`),
//! the `MAX_LEVELS` most frequent values per column. Row numbers stand in for user ids, so
//! the holdout split is the same hash split the world uses. Reads the table; writes nothing.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

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
    crate::sql::collect(&ctx, "SELECT * FROM t")
        .await
        .map_err(read_error)
}

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_integer()
        || data_type.is_floating()
        || matches!(data_type, DataType::Decimal128(..))
}

pub async fn training_set(url: &str, label: &str) -> Result<TableSet, TableError> {
    let batches = read(url).await?;
    let invalid = |problem: String| TableError::Invalid {
        table: url.to_string(),
        problem,
    };
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Err(invalid("the table has no rows".into()));
    };
    if schema.index_of(label).is_err() {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(invalid(format!(
            "no label column '{label}'; columns are {}",
            names.join(", ")
        )));
    }
    let column = |name: &str, to: &DataType| -> Result<Vec<Option<f64>>, TableError> {
        let mut out = Vec::new();
        for batch in &batches {
            let array = batch
                .column_by_name(name)
                .expect("same schema in every batch");
            let array = cast(array, to).map_err(|e| invalid(format!("column '{name}': {e}")))?;
            let array = array.as_primitive::<Float64Type>();
            out.extend((0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i))));
        }
        Ok(out)
    };
    let text = |name: &str| -> Result<Vec<Option<String>>, TableError> {
        let mut out = Vec::new();
        for batch in &batches {
            let array = batch
                .column_by_name(name)
                .expect("same schema in every batch");
            let array = cast(array, &DataType::Utf8)
                .map_err(|e| invalid(format!("column '{name}': {e}")))?;
            let array = array.as_string::<i32>();
            out.extend(
                (0..array.len()).map(|i| array.is_valid(i).then(|| array.value(i).to_string())),
            );
        }
        Ok(out)
    };

    let labels = column(label, &DataType::Float64)?;
    if let Some((row, value)) = labels
        .iter()
        .enumerate()
        .find_map(|(i, v)| v.filter(|v| *v != 0.0 && *v != 1.0).map(|v| (i, v)))
    {
        return Err(invalid(format!(
            "label '{label}' must be 0 or 1; row {} has {value}",
            row + 1
        )));
    }
    let rows = labels.len();
    let labelled: Vec<usize> = (0..rows).filter(|&i| labels[i].is_some()).collect();

    // per row, its (feature id, value) pairs
    let mut entries: Vec<Vec<(u32, f32)>> = vec![Vec::new(); rows];
    let mut dictionary = FeatureDictionary::default();
    let (mut numeric_columns, mut categorical_columns, mut skipped_columns) =
        (Vec::new(), Vec::new(), Vec::new());
    for field in schema.fields().iter().filter(|f| f.name() != label) {
        let name = field.name();
        if is_numeric(field.data_type()) {
            let values = column(name, &DataType::Float64)?;
            let present: Vec<f64> = values.iter().flatten().copied().collect();
            let n = present.len().max(1) as f64;
            let mean = present.iter().sum::<f64>() / n;
            let std = (present.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
            if std == 0.0 && present.len() == rows {
                skipped_columns.push(name.clone());
                continue;
            }
            numeric_columns.push(name.clone());
            let id = dictionary.id_or_insert(name, name);
            let missing = (present.len() < rows)
                .then(|| dictionary.id_or_insert(&format!("{name}=null"), name));
            for (row, value) in values.iter().enumerate() {
                match (value, missing) {
                    (Some(v), _) if std > 0.0 => entries[row].push((id, ((v - mean) / std) as f32)),
                    (None, Some(missing)) => entries[row].push((missing, 1.0)),
                    _ => {}
                }
            }
        } else {
            let values = text(name)?;
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for v in values.iter().flatten() {
                *counts.entry(v.as_str()).or_default() += 1;
            }
            if counts.len() <= 1 && values.iter().all(|v| v.is_some()) {
                skipped_columns.push(name.clone());
                continue;
            }
            let mut levels: Vec<(&str, usize)> = counts.into_iter().collect();
            levels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
            levels.truncate(MAX_LEVELS);
            levels.sort();
            let ids: HashMap<&str, u32> = levels
                .iter()
                .map(|(v, _)| (*v, dictionary.id_or_insert(&format!("{name}={v}"), name)))
                .collect();
            let missing = values
                .iter()
                .any(|v| v.is_none())
                .then(|| dictionary.id_or_insert(&format!("{name}=null"), name));
            for (row, value) in values.iter().enumerate() {
                let id = match value {
                    Some(v) => ids.get(v.as_str()).copied(),
                    None => missing,
                };
                if let Some(id) = id {
                    entries[row].push((id, 1.0));
                }
            }
            categorical_columns.push(name.clone());
        }
    }

    let mut csr = Csr {
        offsets: vec![0],
        ..Default::default()
    };
    let mut set_labels = Vec::with_capacity(labelled.len());
    for &row in &labelled {
        let mut row_entries = std::mem::take(&mut entries[row]);
        row_entries.sort_by_key(|(id, _)| *id);
        csr.users.push(row as u64);
        for (id, value) in row_entries {
            csr.ids.push(id);
            csr.values.push(value);
        }
        csr.offsets.push(csr.ids.len());
        set_labels.push(labels[row].unwrap_or(0.0) as f32);
    }
    Ok(TableSet {
        set: TrainingSet {
            as_of: chrono::Utc::now().date_naive(),
            rows: csr,
            labels: set_labels,
        },
        dictionary,
        rows,
        unlabelled: rows - labelled.len(),
        numeric_columns,
        categorical_columns,
        skipped_columns,
    })
}
