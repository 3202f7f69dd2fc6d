//! The trainer: Adam over shuffled minibatches of padded CSR rows, defaults weighted against
//! class imbalance, L2 on the per-feature parameters, early stopping on validation AUC, then
//! Platt calibration on the same validation slice. Same data and seed give the same model on
//! the CPU: the wide weights start at zero, the deep part and the shuffles come from seeded
//! generators. (On a GPU the order of atomic adds in the gradients varies from run to run,
//! so two runs agree up to float rounding.) Batches are built a step ahead on their own thread.

use std::collections::BTreeMap;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::calibration::Platt;
use super::flat_step::{FlatTrainer, StepSettings};
use super::metrics::{self, Metrics};
use super::network::{
    Architecture, BatchLayout, FlatRows, PaddedBatch, PaddedRows, WideDeep, bce_with_logits,
};
use super::step_profile::{Phase, StepProfile};
use crate::dataset::{Csr, TrainingSet, is_holdout};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// penalty on the mean squared weight, per example
    pub l2: f64,
    /// multiples of `l2` by feature family; families not listed: 1
    #[serde(default)]
    pub l2_scale: BTreeMap<String, f64>,
    /// share of users held out for the reported metrics (never trained on)
    pub holdout_share: f64,
    /// share of the remaining users used to stop early
    pub validation_share: f64,
    /// epochs without validation improvement before stopping
    pub patience: usize,
    pub seed: u64,
    /// weight of a default against a non-default in the loss; calibration removes the bias
    /// it puts into raw outputs
    #[serde(default = "one")]
    pub positive_weight: f64,
    /// size of the deep part's embeddings; 0 trains the wide part alone
    #[serde(default)]
    pub embedding_dim: usize,
    /// width of the deep part's hidden layer
    #[serde(default)]
    pub hidden: usize,
    /// multiples of `l2` to choose from: each trains on the fit split, the best AUC on the
    /// validation split wins, and only the winner is scored on the holdout; empty: `l2` as is
    #[serde(default)]
    pub l2_grid: Vec<f64>,
    /// leave protected attributes (`protected = true` families) out of the model: trained
    /// without them, and their parameters zero, so no score depends on them
    #[serde(default)]
    pub exclude_protected: bool,
}

fn one() -> f64 {
    1.0
}

fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

fn share(x: f64) -> bool {
    x > 0.0 && x < 1.0
}

impl TrainingConfig {
    /// What training needs of `[training]`; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        let checks: [(bool, &str); 12] = [
            (
                (1..=10_000).contains(&self.epochs),
                "epochs must be between 1 and 10000",
            ),
            (
                (1..=1 << 20).contains(&self.batch_size),
                "batch_size must be between 1 and 1048576",
            ),
            (
                positive(self.learning_rate),
                "learning_rate must be a positive number",
            ),
            (
                self.l2.is_finite() && self.l2 >= 0.0,
                "l2 must be a number >= 0",
            ),
            (
                self.l2_scale.values().all(|s| s.is_finite() && *s >= 0.0),
                "every l2_scale must be a number >= 0",
            ),
            (
                share(self.holdout_share),
                "holdout_share must be above 0 and below 1",
            ),
            (
                share(self.validation_share),
                "validation_share must be above 0 and below 1",
            ),
            (self.patience >= 1, "patience must be at least 1"),
            (
                positive(self.positive_weight),
                "positive_weight must be a positive number",
            ),
            (
                self.embedding_dim <= 1024,
                "embedding_dim must be at most 1024",
            ),
            (
                (1..=4096).contains(&self.hidden) || self.embedding_dim == 0,
                "hidden must be between 1 and 4096 when embedding_dim is above 0",
            ),
            (
                self.l2_grid.len() <= 16 && self.l2_grid.iter().all(|m| positive(*m)),
                "l2_grid must hold at most 16 positive numbers",
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, problem)) => Err(problem.to_string()),
            None => Ok(()),
        }
    }

    /// Each feature's multiple of `l2`, in id order, given each id's family.
    pub fn l2_scales<'a>(&self, families: impl IntoIterator<Item = &'a str>) -> Vec<f32> {
        families
            .into_iter()
            .map(|family| self.l2_scale.get(family).copied().unwrap_or(1.0) as f32)
            .collect()
    }
}

pub struct TrainedModel {
    pub network: WideDeep,
    pub calibration: Platt,
    /// calibrated
    pub holdout: Metrics,
    /// before calibration
    pub holdout_raw: Metrics,
    pub best_validation_auc: f64,
    /// the held-out rows, for segment views
    pub holdout_rows: Csr,
    /// the held-out users and their PD, for comparisons (e.g. with the oracle)
    pub holdout_users: Vec<u64>,
    pub holdout_pd: Vec<f64>,
    pub holdout_labels: Vec<f32>,
    pub epochs_run: usize,
    /// rows the gradient steps ran over, and the seconds they took (all epochs, without the
    /// validation passes): throughput = fit_rows * epochs_run / fit_seconds
    pub fit_rows: usize,
    pub fit_seconds: f64,
    /// the L2 penalty the model was trained with
    pub l2: f64,
    /// (l2, best validation AUC) of every candidate of `l2_grid`, in grid order
    pub l2_search: Vec<(f64, f64)>,
    /// how k-fold cross-validation chose the settings, where it did (small tables)
    pub cross_validation: Option<super::cross_validation::CrossValidation>,
}

/// Which part of training a user's row serves; a hash of the user id decides, so the same
/// user is in the same part on every run and in every tool (the benchmarks export it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// gradient steps
    Fit,
    /// early stopping and calibration
    Validation,
    /// never trained on: the reported metrics
    Holdout,
}

impl Split {
    pub fn of(user: u64, config: &TrainingConfig) -> Split {
        if is_holdout(user, config.holdout_share) {
            Split::Holdout
        } else if is_holdout(user.rotate_left(17) ^ 0xA5A5, config.validation_share) {
            // a second, independent hash
            Split::Validation
        } else {
            Split::Fit
        }
    }
}

/// Logits of every row of `csr`, in padded batches, without gradients (on a GPU too, where
/// they measured faster than flat ones: benches/README.md). Rows are batched by length so a
/// batch pads to a width close to its rows' own (a few users have hundreds of features, most
/// have dozens); results come back in row order.
pub fn logits(network: &WideDeep, csr: &Csr, device: &Device, batch_size: usize) -> Vec<f64> {
    let n_features = network.n_features();
    let mut order: Vec<usize> = (0..csr.len()).collect();
    order.sort_by_key(|&r| csr.offsets[r + 1] - csr.offsets[r]);
    let mut out = vec![0.0; csr.len()];
    let scorer = network.scorer();
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = PaddedBatch::new(csr, chunk, n_features, device);
        let logits: Vec<f32> = scorer
            .forward(batch.ids, batch.values)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap_or_default();
        for (&row, logit) in chunk.iter().zip(logits) {
            out[row] = f64::from(logit);
        }
    }
    out
}

/// Uncalibrated PD of every row of `csr` (the sigmoid of the logit).
pub fn predict(network: &WideDeep, csr: &Csr, device: &Device, batch_size: usize) -> Vec<f64> {
    logits(network, csr, device, batch_size)
        .into_iter()
        .map(|z| 1.0 / (1.0 + (-z).exp()))
        .collect()
}

/// Trains on `set`'s fit split with early stopping on its validation split, choosing the L2
/// penalty among `l2_grid` on the validation split too; the holdout is read once, for the
/// chosen model. `l2_scales` holds each feature's multiple of the L2 penalty (see
/// [`TrainingConfig::l2_scales`]); its length is the number of features.
pub fn train(
    set: &TrainingSet,
    l2_scales: &[f32],
    config: &TrainingConfig,
    device: &Device,
) -> TrainedModel {
    let holdout = rows_in(set, Split::Holdout, config);
    if config.l2_grid.is_empty() {
        let fitted = fit(set, l2_scales, config, device);
        return evaluate_on_holdout(set, &holdout, fitted, config.l2, Vec::new(), device);
    }
    let mut search = Vec::new();
    let mut best: Option<(Fitted, f64)> = None;
    for multiple in &config.l2_grid {
        let candidate = TrainingConfig {
            l2: config.l2 * multiple,
            ..config.clone()
        };
        let fitted = fit(set, l2_scales, &candidate, device);
        search.push((candidate.l2, fitted.best_validation_auc));
        // ties keep the earlier candidate; a NaN AUC never wins
        if best
            .as_ref()
            .is_none_or(|(b, _)| fitted.best_validation_auc > b.best_validation_auc)
        {
            best = Some((fitted, candidate.l2));
        }
    }
    let (fitted, l2) = best.expect("a checked l2_grid is not empty");
    info!(?search, chosen = l2, "l2 chosen on the validation split");
    evaluate_on_holdout(set, &holdout, fitted, l2, search, device)
}

/// One training run with `config`'s L2: gradient steps on the fit split, early stopping and
/// calibration on the validation split. Never reads the holdout.
fn fit(set: &TrainingSet, l2_scales: &[f32], config: &TrainingConfig, device: &Device) -> Fitted {
    let [fit, validation] = [Split::Fit, Split::Validation].map(|part| rows_in(set, part, config));
    let validation_csr = set.rows.select(&validation);
    let validation_labels: Vec<f32> = validation.iter().map(|&i| set.labels[i]).collect();
    let mut stop = EarlyStop::default();
    let progress = progress_bar(config.epochs as u64 * steps_per_epoch(config, fit.len()));
    let run = run_epochs(
        (set, &fit, l2_scales),
        config,
        config.epochs,
        (device, &progress),
        |network| {
            let pd = predict(&network, &validation_csr, device, 4096);
            let validation_auc = metrics::auc(&pd, &validation_labels).unwrap_or(0.5);
            let stopping = stop.after_epoch(validation_auc, network, config.patience);
            (validation_auc, stopping)
        },
    );
    progress.finish_and_clear();
    info!(
        epochs = run.epochs_run,
        best_validation_auc = stop.best.as_ref().map(|b| b.0),
        "training done"
    );
    let (best_validation_auc, network) = stop.best.unwrap_or((f64::NAN, run.network));
    let calibration = Platt::fit(
        &logits(&network, &validation_csr, device, 4096),
        &validation_labels,
    );
    Fitted {
        network,
        calibration,
        best_validation_auc,
        epochs_run: run.epochs_run,
        fit_rows: fit.len(),
        fit_seconds: run.fit_seconds,
    }
}

/// What a run of epochs leaves: the network after the last one.
pub(crate) struct EpochRun {
    pub network: WideDeep,
    pub epochs_run: usize,
    pub fit_seconds: f64,
}

/// Up to `epochs` passes of gradient steps over the `fit` rows of `set` (each feature's L2
/// multiple in `l2_scales`), shuffled anew each epoch, advancing `progress` a step a batch.
/// After each, `after_epoch` gets the network as it stands and returns the epoch's validation
/// AUC (NaN: none; for the progress bar and the log) and whether to stop.
pub(crate) fn run_epochs(
    (set, fit, l2_scales): (&TrainingSet, &[usize], &[f32]),
    config: &TrainingConfig,
    epochs: usize,
    (device, progress): (&Device, &ProgressBar),
    mut after_epoch: impl FnMut(WideDeep) -> (f64, bool),
) -> EpochRun {
    let n_features = l2_scales.len();
    let architecture = Architecture {
        n_features,
        embedding_dim: config.embedding_dim,
        hidden: config.hidden,
    };
    let layout = BatchLayout::for_device(device);
    let l2 = config.l2 / fit.len().max(1) as f64 * config.batch_size as f64;
    let mut learner = Learner::new(layout, architecture, l2_scales, config.seed, device);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut order = fit.to_vec();
    let steps = Steps {
        set,
        config,
        n_features,
        settings: StepSettings {
            learning_rate: config.learning_rate,
            positive_weight: config.positive_weight,
            // a step's loss carries `l2 / batch size` of the run's penalty
            l2: l2 / config.batch_size as f64,
        },
    };
    debug!(?layout, "training batch layout");
    let (mut fit_seconds, mut epochs_run) = (0.0, 0);
    let mut profile = StepProfile::from_env(&learner.device());
    for _ in 0..epochs {
        let epoch_started = std::time::Instant::now();
        order.shuffle(&mut rng);
        let mut loss = RunningLoss::new(&learner.device());
        learner = steps.epoch(learner, &order, &mut loss, &mut profile, progress);
        // the epoch's one read-back, which also waits for the device's queued work, so the
        // fit time is the real one
        let train_loss = loss.mean();
        fit_seconds += epoch_started.elapsed().as_secs_f64();
        epochs_run += 1;
        let (validation_auc, stop) = after_epoch(learner.network());
        let mut message = format!("epoch {epochs_run} train loss {train_loss:.4}");
        if !validation_auc.is_nan() {
            message += &format!(" validation AUC {validation_auc:.4}");
        }
        progress.set_message(message);
        debug!(epoch = epochs_run, train_loss, validation_auc, "epoch done");
        if stop {
            break;
        }
    }
    profile.log();
    EpochRun {
        network: learner.network(),
        epochs_run,
        fit_seconds,
    }
}

/// How a training run takes its gradient steps, in the layout its device trains fastest on
/// ([`BatchLayout::for_device`]).
#[allow(clippy::large_enum_variant)] // one per training run: its size does not matter
enum Learner {
    /// padded rows through Burn's autodiff and Adam (the network on the autodiff device)
    Autodiff {
        network: WideDeep,
        optimizer: ModuleOptimizer,
        /// each feature's multiple of the L2 penalty, slot 0 for the padding id
        penalty: Tensor<1>,
    },
    /// flat entries with hand-written gradients and Adam
    Flat(FlatTrainer),
}

impl Learner {
    /// A network of `architecture` initialised from `seed` (the same in either layout).
    fn new(
        layout: BatchLayout,
        architecture: Architecture,
        l2_scales: &[f32],
        seed: u64,
        device: &Device,
    ) -> Learner {
        match layout {
            BatchLayout::Padded => {
                let device = device.clone().autodiff();
                Learner::Autodiff {
                    network: WideDeep::new(architecture, seed, &device),
                    optimizer: AdamConfig::new().init(),
                    penalty: penalty(l2_scales, &device),
                }
            }
            BatchLayout::Flat => Learner::Flat(FlatTrainer::new(
                &WideDeep::new(architecture, seed, device),
                penalty(l2_scales, device),
            )),
        }
    }

    /// The device the steps run on.
    fn device(&self) -> Device {
        match self {
            Learner::Autodiff { penalty, .. } => penalty.device(),
            Learner::Flat(trainer) => trainer.device(),
        }
    }

    /// The network as it stands, without autodiff, for validation and keeping.
    fn network(&self) -> WideDeep {
        match self {
            Learner::Autodiff { network, .. } => network.valid(),
            Learner::Flat(trainer) => trainer.network(),
        }
    }
}

/// One padded batch's step through autodiff; the network after it and the batch's summed
/// loss (before the L2 penalty).
fn autodiff_step(
    (network, optimizer, penalty): (WideDeep, &mut ModuleOptimizer, &Tensor<1>),
    batch: PaddedBatch,
    labels: Tensor<1>,
    settings: StepSettings,
    profile: &mut StepProfile,
) -> (WideDeep, Tensor<1>) {
    let [rows] = labels.dims();
    let logits = network.forward(batch.ids, batch.values);
    let cross_entropy = bce_with_logits(logits, labels, settings.positive_weight);
    let batch_loss = cross_entropy.clone().detach().mul_scalar(rows as f64);
    let loss = cross_entropy + network.l2(penalty.clone()).mul_scalar(settings.l2);
    profile.mark(Phase::Forward);
    let grads = GradientsParams::from_grads(loss.backward(), &network);
    profile.mark(Phase::Backward);
    let network = optimizer.step(settings.learning_rate, network, grads);
    profile.mark(Phase::Optimizer);
    (network, batch_loss)
}

/// The training loss summed on the device over an epoch's rows, read once at its end.
struct RunningLoss {
    sum: Tensor<1>,
    rows: usize,
}

impl RunningLoss {
    fn new(device: &Device) -> RunningLoss {
        RunningLoss {
            sum: Tensor::zeros([1], device),
            rows: 0,
        }
    }

    fn add(&mut self, batch_sum: Tensor<1>, rows: usize) {
        self.sum = self.sum.clone() + batch_sum;
        self.rows += rows;
    }

    /// The mean weighted cross-entropy per row; NaN without rows.
    fn mean(self) -> f64 {
        let sum: f32 = self.sum.into_scalar();
        f64::from(sum) / self.rows as f64
    }
}

/// What every gradient step of a training run shares.
struct Steps<'a> {
    set: &'a TrainingSet,
    config: &'a TrainingConfig,
    n_features: usize,
    settings: StepSettings,
}

impl<'a> Steps<'a> {
    /// One pass over `order`'s rows, a gradient step per batch; the learner after the last.
    /// Nothing is read back from the device: the loss is summed there.
    fn epoch(
        &self,
        learner: Learner,
        order: &[usize],
        loss: &mut RunningLoss,
        profile: &mut StepProfile,
        progress: &ProgressBar,
    ) -> Learner {
        let settings = self.settings;
        profile.restart();
        std::thread::scope(|scope| match learner {
            Learner::Autodiff {
                mut network,
                mut optimizer,
                penalty,
            } => {
                let device = penalty.device();
                for (batch, labels) in self.prefetch(order, scope, PaddedRows::new) {
                    profile.mark(Phase::Build);
                    let rows = labels.len();
                    let (batch, labels) = (batch.upload(&device), upload(labels, &device));
                    profile.mark(Phase::Upload);
                    let parts = (network, &mut optimizer, &penalty);
                    let batch_loss;
                    (network, batch_loss) = autodiff_step(parts, batch, labels, settings, profile);
                    loss.add(batch_loss, rows);
                    progress.inc(1);
                }
                Learner::Autodiff {
                    network,
                    optimizer,
                    penalty,
                }
            }
            Learner::Flat(mut trainer) => {
                let device = trainer.device();
                for (batch, labels) in self.prefetch(order, scope, FlatRows::new) {
                    profile.mark(Phase::Build);
                    let rows = labels.len();
                    let (batch, labels) = (batch.upload(&device), upload(labels, &device));
                    profile.mark(Phase::Upload);
                    loss.add(trainer.step(batch, labels, settings, profile), rows);
                    progress.inc(1);
                }
                Learner::Flat(trainer)
            }
        })
    }

    /// `order`'s batches, built by `build` on a thread of their own while the device trains
    /// on the one before: the host's copying overlaps the device's work instead of adding to
    /// it.
    fn prefetch<'scope, B: Send + 'scope>(
        &self,
        order: &'scope [usize],
        scope: &'scope std::thread::Scope<'scope, '_>,
        build: fn(&Csr, &[usize], usize) -> B,
    ) -> std::sync::mpsc::Receiver<(B, Vec<f32>)>
    where
        'a: 'scope,
    {
        // two ahead, so one is ready while the next is built
        let (sender, receiver) = std::sync::mpsc::sync_channel(2);
        let (set, n_features) = (self.set, self.n_features);
        let batch_size = self.config.batch_size;
        scope.spawn(move || {
            for chunk in order.chunks(batch_size) {
                let batch = build(&set.rows, chunk, n_features);
                let labels = chunk.iter().map(|&i| set.labels[i]).collect();
                if sender.send((batch, labels)).is_err() {
                    // the trainer stopped early
                    return;
                }
            }
        });
        receiver
    }
}

fn upload(labels: Vec<f32>, device: &Device) -> Tensor<1> {
    let rows = labels.len();
    Tensor::from_data(TensorData::new(labels, [rows]), device)
}

/// Gradient steps in an epoch over `fit_rows` rows.
pub(crate) fn steps_per_epoch(config: &TrainingConfig, fit_rows: usize) -> u64 {
    fit_rows.div_ceil(config.batch_size) as u64
}

pub(crate) fn progress_bar(steps: u64) -> ProgressBar {
    ProgressBar::new(steps).with_style(
        ProgressStyle::with_template("train  {bar:40} {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// Each feature's multiple of the L2 penalty as a tensor; slot 0 is the padding id.
fn penalty(l2_scales: &[f32], device: &Device) -> Tensor<1> {
    let penalty: Vec<f32> = std::iter::once(1.0)
        .chain(l2_scales.iter().copied())
        .collect();
    Tensor::<1>::from_data(TensorData::new(penalty, [l2_scales.len() + 1]), device)
}

/// The best network by validation AUC so far, and how many epochs have not beaten it.
#[derive(Default)]
struct EarlyStop {
    best: Option<(f64, WideDeep)>,
    since_best: usize,
}

impl EarlyStop {
    /// Keeps `network` if it is the best so far; true when `patience` epochs in a row have
    /// not improved on the best.
    fn after_epoch(&mut self, validation_auc: f64, network: WideDeep, patience: usize) -> bool {
        if self
            .best
            .as_ref()
            .is_none_or(|(auc, _)| validation_auc > *auc)
        {
            self.best = Some((validation_auc, network));
            self.since_best = 0;
            return false;
        }
        self.since_best += 1;
        self.since_best >= patience
    }
}

/// Row positions of `set` in `part`.
pub(crate) fn rows_in(set: &TrainingSet, part: Split, config: &TrainingConfig) -> Vec<usize> {
    let users = &set.rows.users;
    (0..users.len())
        .filter(|&i| Split::of(users[i], config) == part)
        .collect()
}

/// What the fit left: the best network by validation AUC, calibrated on the validation rows.
pub(crate) struct Fitted {
    pub network: WideDeep,
    pub calibration: Platt,
    pub best_validation_auc: f64,
    pub epochs_run: usize,
    pub fit_rows: usize,
    pub fit_seconds: f64,
}

/// The held-out rows' PD with the chosen model: its metrics, read once.
pub(crate) fn evaluate_on_holdout(
    set: &TrainingSet,
    holdout: &[usize],
    fitted: Fitted,
    l2: f64,
    l2_search: Vec<(f64, f64)>,
    device: &Device,
) -> TrainedModel {
    let Fitted {
        network,
        calibration,
        best_validation_auc,
        epochs_run,
        fit_rows,
        fit_seconds,
    } = fitted;
    let holdout_rows = set.rows.select(holdout);
    let holdout_labels: Vec<f32> = holdout.iter().map(|&i| set.labels[i]).collect();
    let holdout_logits = logits(&network, &holdout_rows, device, 4096);
    let raw_pd: Vec<f64> = holdout_logits
        .iter()
        .map(|z| Platt::default().pd(*z))
        .collect();
    let holdout_pd: Vec<f64> = holdout_logits.iter().map(|z| calibration.pd(*z)).collect();
    info!(
        slope = calibration.slope,
        intercept = calibration.intercept,
        "calibrated on the validation slice"
    );
    TrainedModel {
        holdout: metrics::evaluate(&holdout_pd, &holdout_labels),
        holdout_raw: metrics::evaluate(&raw_pd, &holdout_labels),
        best_validation_auc,
        holdout_users: holdout_rows.users.clone(),
        holdout_rows,
        holdout_pd,
        holdout_labels,
        network,
        calibration,
        epochs_run,
        fit_rows,
        fit_seconds,
        l2,
        l2_search,
        cross_validation: None,
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// 64 rows of 0 to 11 entries over 30 known features, some with an id the network does
    /// not know (30 or above), which both layouts must drop; about a quarter are defaults.
    fn ragged_rows() -> (Csr, Vec<f32>) {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for user in 0..64u64 {
            csr.users.push(user);
            for _ in 0..(user % 12) {
                csr.ids.push(rng.random_range(0..33));
                csr.values.push(rng.random_range(0.1..2.0));
            }
            csr.offsets.push(csr.ids.len());
        }
        let labels = (0..64).map(|_| f32::from(rng.random_bool(0.25))).collect();
        (csr, labels)
    }

    fn close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 2e-5 * (1.0 + x.abs()),
                "{what}: value {i} is {x} one way and {y} the other"
            );
        }
    }

    /// The hand-written trainer takes the same Adam steps as autodiff on padded rows: same
    /// parameters after several steps, same summed losses, with and without the deep part.
    #[test]
    fn hand_written_steps_follow_autodiff() {
        let (csr, labels) = ragged_rows();
        let settings = StepSettings {
            learning_rate: 0.01,
            positive_weight: 3.0,
            l2: 0.05,
        };
        // batches of different sizes, rows out of order, one repeated
        let batches: [Vec<usize>; 4] = [
            (0..64).rev().collect(),
            (0..64).step_by(3).collect(),
            (10..50).collect(),
            vec![0, 12, 24],
        ];
        let scales: Vec<f32> = (0..30).map(|i| 0.5 + (i % 3) as f32).collect();
        for embedding_dim in [0, 3] {
            let architecture = Architecture {
                n_features: 30,
                embedding_dim,
                hidden: 5,
            };
            let labels_of = |rows: &[usize], device: &Device| {
                upload(rows.iter().map(|&r| labels[r]).collect(), device)
            };
            let mut profile = StepProfile::from_env(&Device::flex());
            let (mut autodiff_losses, mut flat_losses) = (Vec::new(), Vec::new());
            let Learner::Autodiff {
                mut network,
                mut optimizer,
                penalty,
            } = Learner::new(
                BatchLayout::Padded,
                architecture,
                &scales,
                11,
                &Device::flex(),
            )
            else {
                panic!("padded rows train through autodiff");
            };
            let Learner::Flat(mut trainer) = Learner::new(
                BatchLayout::Flat,
                architecture,
                &scales,
                11,
                &Device::flex(),
            ) else {
                panic!("flat entries train by hand");
            };
            for rows in &batches {
                let device = penalty.device();
                let batch = PaddedRows::new(&csr, rows, 30).upload(&device);
                let parts = (network, &mut optimizer, &penalty);
                let loss;
                (network, loss) = autodiff_step(
                    parts,
                    batch,
                    labels_of(rows, &device),
                    settings,
                    &mut profile,
                );
                autodiff_losses.push(loss.into_scalar::<f32>());
                let device = trainer.device();
                let batch = FlatRows::new(&csr, rows, 30).upload(&device);
                let loss = trainer.step(batch, labels_of(rows, &device), settings, &mut profile);
                flat_losses.push(loss.into_scalar::<f32>());
            }
            let what = format!("embedding_dim {embedding_dim}");
            close(&autodiff_losses, &flat_losses, &format!("{what}: losses"));
            let (learned, by_hand) = (
                network.valid().learned_values(),
                trainer.network().learned_values(),
            );
            close(&learned, &by_hand, &format!("{what}: parameters"));
            // the steps moved the wide weights, so the comparison compared something
            assert!(
                by_hand[..30].iter().filter(|w| **w != 0.0).count() > 20,
                "{what}"
            );
        }
    }
}
