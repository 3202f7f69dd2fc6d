//! Training on a table of your own (`redflower train --table`): the encoding learned on the
//! training rows, then either k-fold cross-validation (tables under
//! `[table] cross_validate_below_rows` labelled rows, or `--folds`) choosing the encoding
//! (with or without value bins), the L2 penalty and the epochs, or, for large tables, the
//! validation split choosing the L2 penalty as for a world. The model is registered with its
//! encoding (`models/<version>/encoding.json`), which `score` reads.
//!
//! Reads the table; writes the model registry.

use burn::tensor::Device;
use serde::Serialize;

use super::score::ENCODING_FILE;
use super::{LabelledTable, TableEncoding, TableError};
use crate::cause::{Cause, Classify};
use crate::config::Pipelines;
use crate::model::cross_validation::{CandidateSet, CrossValidationPlan, train_cross_validated};
use crate::model::{self, TrainingConfig};
use crate::store::Store;
use crate::training::{self, Promote, Registration, TrainOutcome, TrainingError};

#[derive(Debug, thiserror::Error)]
pub enum TableTrainingError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Training(Box<TrainingError>),
    #[error("{0}")]
    Settings(String),
}

impl From<TrainingError> for TableTrainingError {
    fn from(error: TrainingError) -> Self {
        TableTrainingError::Training(Box::new(error))
    }
}

impl Classify for TableTrainingError {
    fn cause(&self) -> Cause {
        match self {
            TableTrainingError::Table(e) => e.cause(),
            TableTrainingError::Training(e) => e.cause(),
            TableTrainingError::Settings(_) => Cause::Input,
        }
    }
}

/// `--holdout-share` and `--folds`, when given.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    pub holdout_share: Option<f64>,
    /// cross-validate with this many folds whatever the table's size
    pub folds: Option<usize>,
}

/// What happened to the table's rows and columns.
#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub rows: usize,
    /// rows without a label: left out of training
    pub unlabelled: usize,
    pub numeric_columns: Vec<String>,
    pub categorical_columns: Vec<String>,
    /// constant on the training rows, so left out
    pub skipped_columns: Vec<String>,
    pub features: usize,
}

fn summary(table: &LabelledTable, encoding: &TableEncoding, features: usize) -> TableSummary {
    let names = |numeric: bool| {
        (encoding.columns.iter())
            .filter(|c| c.is_numeric() == numeric)
            .map(|c| c.name().to_string())
            .collect()
    };
    TableSummary {
        rows: table.labels.len(),
        unlabelled: table.unlabelled(),
        numeric_columns: names(true),
        categorical_columns: names(false),
        skipped_columns: encoding.skipped.clone(),
        features,
    }
}

/// The settings a table trains with, refused with the reason where the table cannot support
/// them (too few rows of either class for the folds).
fn settings(
    table: &LabelledTable,
    options: TableOptions,
    pipelines: &Pipelines,
) -> Result<(TrainingConfig, Option<usize>), TableTrainingError> {
    let section = &pipelines.nightly.table;
    let config = section.training(&pipelines.nightly.training, options.holdout_share);
    config
        .check()
        .map_err(|problem| TableTrainingError::Settings(format!("--holdout-share: {problem}")))?;
    let labelled = table.labels.len() - table.unlabelled();
    let folds = match options.folds {
        Some(folds) if !(2..=20).contains(&folds) => {
            return Err(TableTrainingError::Settings(format!(
                "--folds {folds}: between 2 and 20"
            )));
        }
        Some(folds) => Some(folds),
        None => (labelled < section.cross_validate_below_rows).then_some(section.folds),
    };
    let training = table.training_rows(config.holdout_share);
    let defaults = training
        .iter()
        .filter(|&&r| table.labels[r] == Some(1.0))
        .count();
    let needed = folds.unwrap_or(2);
    if defaults < needed || training.len() - defaults < needed {
        return Err(TableTrainingError::Settings(format!(
            "{}: the {} training rows hold {defaults} rows labelled 1 and {} labelled 0; training needs at least {needed} of each",
            table.columns.url(),
            training.len(),
            training.len() - defaults
        )));
    }
    Ok((config, folds))
}

/// Trains on the table at `url` with label column `label`, registers the model with its
/// encoding, and promotes it as asked.
pub async fn train_on_table(
    store: &Store,
    (url, label): (&str, &str),
    options: TableOptions,
    pipelines: &Pipelines,
    device: &Device,
    promote: Promote,
) -> Result<(TableSummary, TrainOutcome), TableTrainingError> {
    let table = LabelledTable::read(url, label).await?;
    let (config, folds) = settings(&table, options, pipelines)?;
    // cross-validation chooses between the plain and the binned encoding; one validation
    // split takes the richest
    let bins = pipelines.nightly.table.bins;
    let mut encodings = Vec::new();
    if folds.is_some() || bins == 0 {
        let plain = table.learn_encoding(config.holdout_share, 0)?;
        encodings.push(("standardized", plain));
    }
    if bins > 0 {
        let binned = table.learn_encoding(config.holdout_share, bins)?;
        encodings.push(("standardized + bins", binned));
    }
    let sets = encodings
        .iter()
        .map(|(_, encoding)| table.training_set(encoding))
        .collect::<Result<Vec<_>, _>>()?;
    let (chosen, trained) = match folds {
        Some(folds) => {
            let candidates: Vec<CandidateSet> = (encodings.iter().zip(&sets))
                .map(|((name, _), (set, dictionary))| CandidateSet {
                    name: name.to_string(),
                    set,
                    l2_scales: vec![1.0; dictionary.len()],
                })
                .collect();
            let plan = CrossValidationPlan {
                folds,
                embedding_dims: &pipelines.nightly.table.embedding_dims,
                refits: pipelines.nightly.table.refits,
            };
            train_cross_validated(&candidates, &config, plan, device)
        }
        // enough rows for one validation split: L2 chosen there
        None => {
            let (set, dictionary) = &sets[0];
            let scales = vec![1.0; dictionary.len()];
            (0, model::train(set, &scales, &config, device))
        }
    };
    let (encoding, (set, dictionary)) = (&encodings[chosen].1, &sets[chosen]);
    let encoding_json = serde_json::to_value(encoding)
        .map_err(|e| TableTrainingError::Settings(format!("{ENCODING_FILE}: {e}")))?;
    let registration = Registration {
        data: format!("table {url}, label column '{label}'"),
        trained_as_of: set.as_of,
        dictionary,
        training: &config,
        from_world: false,
        notes: notes(folds),
        attachments: vec![(ENCODING_FILE.to_string(), encoding_json)],
    };
    let (_, outcome) =
        training::register_trained(store, &trained, registration, pipelines, device, promote)
            .await?;
    Ok((summary(&table, encoding, dictionary.len()), outcome))
}

fn notes(folds: Option<usize>) -> Vec<String> {
    let mut notes = vec![format!(
        "Trained on a table: rows are encoded by {ENCODING_FILE} beside the weights. Scoring another table, a value the training rows never had (a new level, or a missing value in a column that had none) adds no feature, so the row scores as the average row does on that column; a column the table lacks is missing on every row; a column that changed between numeric and text is refused."
    )];
    if let Some(folds) = folds {
        notes.push(format!(
            "Encoding, L2 and epochs chosen by {folds}-fold cross-validation on the training rows; the model is refitted on all of them and calibrated on the fold models' out-of-fold logits. The numeric bins' monotone merging saw every training row's label, the left-out folds' too, so the cross-validated AUC is slightly optimistic; the holdout is not affected."
        ));
    }
    notes
}
