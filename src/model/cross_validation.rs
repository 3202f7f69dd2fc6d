//! Small data: with a few thousand rows a single validation slice is too few defaults to stop
//! on or to choose by, so k-fold cross-validation on the training rows chooses instead. Every
//! candidate (an encoding of the same rows, times each embedding size, times each L2 of the
//! grid) trains on k-1 folds for the full `epochs` and is measured on the fold it left out
//! after every epoch; the candidate and epoch count with the best mean fold AUC win. The
//! winner is then refitted on every training row for that many epochs, `refits` times from
//! different seeds, and the refits averaged into one network ([`WideDeep::average`]: less
//! variance from one initialisation and one shuffle, which small data feels); it is
//! calibrated on the out-of-fold logits of the winning runs (which no model saw in training).
//! The holdout is read once, for that model.
//!
//! Reads training sets; writes nothing.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::calibration::Platt;
use super::metrics;
use super::network::WideDeep;
use super::train::{
    Fitted, Split, TrainedModel, TrainingConfig, evaluate_on_holdout, logits, progress_bar,
    rows_in, run_epochs, steps_per_epoch,
};
use crate::dataset::{TrainingSet, user_hash};

/// What to cross-validate besides each candidate set and `l2_grid`.
#[derive(Debug, Clone, Copy)]
pub struct CrossValidationPlan<'a> {
    pub folds: usize,
    /// embedding sizes to try (0: the wide part alone)
    pub embedding_dims: &'a [usize],
    /// networks refitted on all training rows and averaged into the model
    pub refits: usize,
}

/// How cross-validation chose a model's settings; on the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossValidation {
    pub folds: usize,
    /// networks refitted on every training row and averaged
    pub refits: usize,
    /// the winning candidate's name (its encoding and embedding size), L2 and epochs
    pub chosen: String,
    pub embedding_dim: usize,
    pub l2: f64,
    pub epochs: usize,
    /// the winner's AUC on each fold it left out, at `epochs`, and their mean and sample
    /// standard deviation
    pub fold_auc: Vec<f64>,
    pub auc_mean: f64,
    pub auc_sd: f64,
    /// every candidate at its own best epoch count, in the order tried
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    pub name: String,
    pub embedding_dim: usize,
    pub l2: f64,
    pub epochs: usize,
    pub auc_mean: f64,
    pub auc_sd: f64,
}

/// One way of turning the same rows into features: every candidate's set has the same users
/// in the same order with the same labels.
pub struct CandidateSet<'a> {
    pub name: String,
    pub set: &'a TrainingSet,
    /// each feature's multiple of the L2 penalty; its length is the number of features
    pub l2_scales: Vec<f32>,
}

/// The training rows (all but the holdout) dealt into `folds` folds, defaults and
/// non-defaults dealt separately so each fold has the table's default rate.
pub fn assign_folds(set: &TrainingSet, training: &[usize], folds: usize) -> Vec<Vec<usize>> {
    let mut order = training.to_vec();
    order.sort_by_key(|&i| (set.labels[i] > 0.5, user_hash(set.rows.users[i]), i));
    let mut assigned = vec![Vec::new(); folds];
    for (n, row) in order.into_iter().enumerate() {
        assigned[n % folds].push(row);
    }
    for fold in &mut assigned {
        fold.sort_unstable();
    }
    assigned
}

/// A candidate's runs on every fold: per fold, the logits of its left-out rows after each
/// epoch.
struct FoldCurves {
    /// [fold][epoch] -> logits of that fold's rows
    logits: Vec<Vec<Vec<f64>>>,
    /// [fold][epoch] -> AUC
    auc: Vec<Vec<f64>>,
}

impl FoldCurves {
    /// The epoch count with the best mean fold AUC (the earliest on a tie), its mean and the
    /// fold AUCs there.
    fn best(&self) -> (usize, f64, Vec<f64>) {
        let epochs = self.auc.iter().map(Vec::len).min().unwrap_or(0);
        let mut best = (0, f64::NEG_INFINITY, Vec::new());
        for epoch in 0..epochs {
            let at: Vec<f64> = self.auc.iter().map(|fold| fold[epoch]).collect();
            let mean = at.iter().sum::<f64>() / at.len() as f64;
            if mean > best.1 {
                best = (epoch + 1, mean, at);
            }
        }
        best
    }
}

fn sample_sd(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
}

/// Trains `candidate` with `config` on every fold but one, for each fold: the folds in
/// parallel, each on its own thread (a small table's steps are too small to keep the cores
/// busy one run at a time).
fn fold_curves(
    candidate: &CandidateSet,
    folds: &[Vec<usize>],
    config: &TrainingConfig,
    (device, progress): (&Device, &indicatif::ProgressBar),
) -> FoldCurves {
    let one_fold = |k: usize| {
        let left_out = &folds[k];
        let fit: Vec<usize> = (folds.iter().enumerate())
            .filter(|(j, _)| *j != k)
            .flat_map(|(_, rows)| rows.iter().copied())
            .collect();
        let rows = candidate.set.rows.select(left_out);
        let labels: Vec<f32> = left_out.iter().map(|&i| candidate.set.labels[i]).collect();
        let (mut fold_logits, mut fold_auc) = (Vec::new(), Vec::new());
        let data = (
            candidate.set,
            fit.as_slice(),
            candidate.l2_scales.as_slice(),
        );
        run_epochs(data, config, config.epochs, (device, progress), |network| {
            let z = logits(&network, &rows, device, 4096);
            let auc = metrics::auc(&z, &labels).unwrap_or(0.5);
            fold_logits.push(z);
            fold_auc.push(auc);
            (auc, false)
        });
        (fold_logits, fold_auc)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = Vec::with_capacity(folds.len());
    let ks: Vec<usize> = (0..folds.len()).collect();
    for wave in ks.chunks(threads) {
        std::thread::scope(|scope| {
            let running: Vec<_> = (wave.iter())
                .map(|&k| scope.spawn(move || one_fold(k)))
                .collect();
            for run in running {
                results.push(run.join().expect("a fold's training thread panicked"));
            }
        });
    }
    let (logits, auc) = results.into_iter().unzip();
    FoldCurves { logits, auc }
}

/// The winner so far: which candidate set, its L2, and the out-of-fold logits of every
/// training row at its epoch count (row order of `training`).
struct Winner {
    set: usize,
    config: TrainingConfig,
    oof: Vec<(usize, f64)>,
    summary: Candidate,
    fold_auc: Vec<f64>,
}

/// Chooses among `candidates`, `plan.embedding_dims`, `config.l2_grid` (multiples of
/// `config.l2`; empty: `l2` alone) and the epoch count by cross-validation on the non-holdout
/// rows, refits the winner on all of them, and evaluates it on the holdout. Returns the
/// winning candidate's index and the model.
pub fn train_cross_validated(
    candidates: &[CandidateSet],
    config: &TrainingConfig,
    plan: CrossValidationPlan,
    device: &Device,
) -> (usize, TrainedModel) {
    let first = candidates.first().expect("at least one candidate").set;
    let holdout = rows_in(first, Split::Holdout, config);
    let training: Vec<usize> = (0..first.labels.len())
        .filter(|i| holdout.binary_search(i).is_err())
        .collect();
    let fold_rows = assign_folds(first, &training, plan.folds);
    let runs = runs(candidates.len(), config, plan.embedding_dims);
    let fold_steps: u64 = fold_rows
        .iter()
        .map(|rows| steps_per_epoch(config, training.len() - rows.len()))
        .sum();
    let progress = progress_bar(runs.len() as u64 * config.epochs as u64 * fold_steps);
    let (tried, winner) = search(candidates, &fold_rows, runs, (device, &progress));
    progress.finish_and_clear();
    let refitted = refit(
        &candidates[winner.set],
        &training,
        &holdout,
        &winner,
        plan.refits,
        device,
    );
    let cross_validation = CrossValidation {
        folds: plan.folds,
        refits: plan.refits,
        chosen: winner.summary.name.clone(),
        embedding_dim: winner.summary.embedding_dim,
        l2: winner.summary.l2,
        epochs: winner.summary.epochs,
        auc_mean: winner.summary.auc_mean,
        auc_sd: winner.summary.auc_sd,
        fold_auc: winner.fold_auc,
        candidates: tried,
    };
    info!(chosen = %cross_validation.chosen, l2 = cross_validation.l2, epochs = cross_validation.epochs, auc = cross_validation.auc_mean, "chosen by cross-validation");
    let trained = TrainedModel {
        l2_search: (cross_validation.candidates.iter())
            .filter(|c| {
                c.name == cross_validation.chosen
                    && c.embedding_dim == cross_validation.embedding_dim
            })
            .map(|c| (c.l2, c.auc_mean))
            .collect(),
        cross_validation: Some(cross_validation),
        ..refitted
    };
    (winner.set, trained)
}

/// Every candidate set's index with the settings to try it with: each embedding size, each
/// L2 of the grid.
fn runs(
    candidates: usize,
    config: &TrainingConfig,
    embedding_dims: &[usize],
) -> Vec<(usize, TrainingConfig)> {
    let multiples = match config.l2_grid.is_empty() {
        true => vec![1.0],
        false => config.l2_grid.clone(),
    };
    let mut runs = Vec::new();
    for index in 0..candidates {
        for &embedding_dim in embedding_dims {
            for multiple in &multiples {
                let run = TrainingConfig {
                    l2: config.l2 * multiple,
                    embedding_dim,
                    ..config.clone()
                };
                runs.push((index, run));
            }
        }
    }
    runs
}

/// Each run on every fold; every run's summary in order, and the best (the earlier on a tie).
fn search(
    candidates: &[CandidateSet],
    fold_rows: &[Vec<usize>],
    runs: Vec<(usize, TrainingConfig)>,
    (device, progress): (&Device, &indicatif::ProgressBar),
) -> (Vec<Candidate>, Winner) {
    let mut tried = Vec::new();
    let mut winner: Option<Winner> = None;
    for (index, run) in runs {
        let candidate = &candidates[index];
        let curves = fold_curves(candidate, fold_rows, &run, (device, progress));
        let (epochs, auc_mean, fold_auc) = curves.best();
        let summary = Candidate {
            name: candidate.name.clone(),
            embedding_dim: run.embedding_dim,
            l2: run.l2,
            epochs,
            auc_mean,
            auc_sd: sample_sd(&fold_auc),
        };
        info!(?summary, "cross-validated");
        tried.push(summary.clone());
        if winner
            .as_ref()
            .is_none_or(|w| auc_mean > w.summary.auc_mean)
        {
            let oof = (fold_rows.iter().zip(&curves.logits))
                .flat_map(|(rows, by_epoch)| {
                    rows.iter()
                        .copied()
                        .zip(by_epoch[epochs - 1].iter().copied())
                })
                .collect();
            winner = Some(Winner {
                set: index,
                config: run,
                oof,
                summary,
                fold_auc,
            });
        }
    }
    (tried, winner.expect("at least one candidate and one L2"))
}

/// The winner trained on every training row for its epoch count, `refits` times from
/// different seeds and averaged, calibrated on its out-of-fold logits, measured on the
/// holdout.
fn refit(
    candidate: &CandidateSet,
    training: &[usize],
    holdout: &[usize],
    winner: &Winner,
    refits: usize,
    device: &Device,
) -> TrainedModel {
    let epochs = winner.summary.epochs;
    let refits = refits.max(1);
    let steps = refits as u64 * epochs as u64 * steps_per_epoch(&winner.config, training.len());
    let progress = progress_bar(steps);
    let data = (candidate.set, training, candidate.l2_scales.as_slice());
    let (mut networks, mut fit_seconds) = (Vec::new(), 0.0);
    for seed in 0..refits as u64 {
        let run = TrainingConfig {
            seed: winner.config.seed + seed,
            ..winner.config.clone()
        };
        let fitted = run_epochs(data, &run, epochs, (device, &progress), |_| {
            (f64::NAN, false)
        });
        networks.push(fitted.network);
        fit_seconds += fitted.fit_seconds;
    }
    progress.finish_and_clear();
    let (oof_logits, oof_labels): (Vec<f64>, Vec<f32>) = winner
        .oof
        .iter()
        .map(|&(row, z)| (z, candidate.set.labels[row]))
        .unzip();
    let fitted = Fitted {
        network: WideDeep::average(&networks),
        calibration: Platt::fit(&oof_logits, &oof_labels),
        best_validation_auc: winner.summary.auc_mean,
        epochs_run: epochs,
        fit_rows: training.len() * refits,
        fit_seconds,
    };
    let l2 = winner.config.l2;
    evaluate_on_holdout(candidate.set, holdout, fitted, l2, Vec::new(), device)
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::*;
    use crate::dataset::Csr;

    /// 1,200 rows whose label follows feature 0 (risky) or 1 (safe) in `informative`, and a
    /// label-blind feature otherwise.
    fn set(informative: bool) -> TrainingSet {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut labels = Vec::new();
        for user in 0..1200u64 {
            let risky = user % 3 == 0;
            let default = if risky { user % 5 < 2 } else { user % 17 == 1 };
            csr.users.push(user);
            csr.ids.push(match informative {
                true => u32::from(!risky),
                false => (user % 2) as u32,
            });
            csr.values.push(1.0);
            csr.offsets.push(csr.ids.len());
            labels.push(f32::from(u8::from(default)));
        }
        TrainingSet {
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            rows: csr,
            labels,
        }
    }

    #[test]
    fn folds_share_the_defaults_and_cross_validation_picks_the_informative_encoding() {
        let (noise, signal) = (set(false), set(true));
        let training: Vec<usize> = (0..1200).collect();
        let folds = assign_folds(&signal, &training, 5);
        let defaults: Vec<usize> = folds
            .iter()
            .map(|f| f.iter().filter(|&&i| signal.labels[i] > 0.5).count())
            .collect();
        assert!(
            defaults.iter().max().unwrap() - defaults.iter().min().unwrap() <= 1,
            "{defaults:?}"
        );
        assert_eq!(folds.iter().map(Vec::len).sum::<usize>(), 1200);

        let config = TrainingConfig {
            epochs: 5,
            batch_size: 64,
            learning_rate: 0.05,
            l2: 1.0,
            l2_scale: Default::default(),
            holdout_share: 0.2,
            validation_share: 0.1,
            patience: 2,
            seed: 3,
            positive_weight: 1.0,
            embedding_dim: 4,
            hidden: 4,
            l2_grid: vec![0.1, 10.0],
            exclude_protected: false,
        };
        let candidates = [("noise", &noise), ("signal", &signal)].map(|(name, set)| CandidateSet {
            name: name.into(),
            set,
            l2_scales: vec![1.0; 2],
        });
        let plan = CrossValidationPlan {
            folds: 4,
            embedding_dims: &[0, 4],
            refits: 2,
        };
        let device = Device::flex();
        let (chosen, trained) = train_cross_validated(&candidates, &config, plan, &device);
        assert_eq!(chosen, 1);
        let cv = trained.cross_validation.as_ref().unwrap();
        assert_eq!(cv.chosen, "signal");
        assert_eq!(cv.candidates.len(), 2 * 2 * 2);
        assert_eq!(cv.fold_auc.len(), 4);
        assert!(cv.auc_mean > 0.7 && trained.holdout.auc > 0.7, "{cv:?}");
        // the holdout is the usual hash split, untouched by the folds
        let holdout = rows_in(&signal, Split::Holdout, &config);
        assert_eq!(trained.holdout.rows, holdout.len());
        // two refits averaged: a deep winner carries both embeddings
        let dim = trained.network.architecture().embedding_dim;
        assert_eq!(dim, 2 * cv.embedding_dim);
    }
}
