//! Models: trains default-probability networks with Burn, calibrates and measures them, and
//! keeps versioned artifacts under `models/<version>/`: `weights.safetensors`, `model.json`
//! (the card: architecture, calibration, data window, dictionary prefix hash, holdout
//! metrics), `metrics.json` (the full evaluation) and `report.html`. `models/_champion.json`
//! names the model the nightly job scores with.
//!
//! Reads training sets and CSR rows from `dataset`; writes only `models/`. A model refuses a
//! feature dictionary whose first entries differ from those it was trained on.

pub mod calibration;
pub mod cross_validation;
pub mod evaluation;
pub mod flat_step;
pub mod metrics;
pub mod network;
pub mod promotion;
pub mod reasons;
pub mod report;
pub mod step_profile;
pub mod train;

use burn::tensor::Device;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use calibration::{Platt, Scorecard};
pub use metrics::Metrics;
pub use network::{Architecture, WideDeep};
pub use train::{Split, TrainedModel, TrainingConfig, logits, predict, train};

use crate::cause::{Cause, Classify};
use crate::dataset::Csr;
use crate::features::FeatureDictionary;
use crate::store::{Store, StoreError, layout};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("device '{0}' is not available: {1}")]
    Device(String, String),
    #[error("model {version}: {problem}")]
    Artifact { version: String, problem: String },
    #[error(
        "model {version} was trained on a feature dictionary whose first {n_features} entries hash to {expected}, but tonight's hash to {found}: retrain, or restore the dictionary"
    )]
    DictionaryMismatch {
        version: String,
        n_features: usize,
        expected: String,
        found: String,
    },
    #[error("no model '{version}' under {root}/models/ (see `redflower models list`)")]
    UnknownModel { version: String, root: String },
}

impl Classify for ModelError {
    fn cause(&self) -> Cause {
        match self {
            ModelError::Store(e) => e.cause(),
            ModelError::Device(..) | ModelError::UnknownModel { .. } => Cause::Configuration,
            // a damaged artifact, or a model that cannot read tonight's features: a person
            // retrains or restores; retrying reads the same bytes
            ModelError::Artifact { .. } | ModelError::DictionaryMismatch { .. } => {
                Cause::Configuration
            }
        }
    }
}

/// Where tensors live. Chosen at run time; the GPU kinds need their cargo feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// Burn's pure-Rust `flex` backend
    Cpu,
    /// a GPU through Vulkan (build with `--features vulkan`)
    Vulkan,
    /// an NVIDIA GPU through CUDA (build with `--features cuda`, needs network at build time)
    Cuda,
}

impl DeviceKind {
    pub fn device(self) -> Result<Device, ModelError> {
        match self {
            DeviceKind::Cpu => Ok(Device::flex()),
            #[cfg(feature = "vulkan")]
            DeviceKind::Vulkan => Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(ModelError::Device(
                format!("{other:?}").to_lowercase(),
                "this binary was built without that cargo feature".into(),
            )),
        }
    }
}

/// What `models/<version>/model.json` says about a model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub version: String,
    /// `wide_and_deep` or `sparse_logistic`
    pub kind: String,
    pub architecture: Architecture,
    /// what it was trained on: a redflower world, or `--table URL --label COLUMN`
    pub data: String,
    /// features as of this date, labels from the following horizon
    #[serde(with = "crate::serde_date")]
    pub trained_as_of: NaiveDate,
    pub n_features: usize,
    pub dictionary_hash: String,
    pub calibration: Platt,
    pub scorecard: Scorecard,
    /// calibrated PD on the held-out users
    pub holdout: Metrics,
    /// the network's raw output on the same users, before calibration
    pub holdout_uncalibrated: Metrics,
    /// AUC of the true PD on the same users, where the data is a synthetic world
    pub oracle_auc: Option<f64>,
    /// AUC of the world's PD without its hidden parts (truth's visible_pd), same users
    #[serde(default)]
    pub visible_oracle_auc: Option<f64>,
    pub epochs_run: usize,
    /// the configuration it was trained with (`l2` the one `l2_grid` chose, if any)
    pub training: TrainingConfig,
    /// (l2, best validation AUC) of each `l2_grid` candidate; empty without a grid
    #[serde(default)]
    pub l2_search: Vec<(f64, f64)>,
    /// how k-fold cross-validation chose the encoding, L2 and epochs (small tables)
    #[serde(default)]
    pub cross_validation: Option<cross_validation::CrossValidation>,
    /// SHA-256 of the learned values in `WideDeep::learned_values` order, then the
    /// calibration: what names the model
    pub values_sha256: String,
    /// SHA-256 of the learned values alone: what `weights.safetensors` must still hold when
    /// loaded (the calibration comes back from this JSON, whose floats are parsed to the
    /// nearest few bits, so it cannot be part of that check); absent from older cards
    #[serde(default)]
    pub weights_sha256: Option<String>,
    pub limitations: Vec<String>,
}

pub struct Model {
    pub card: ModelCard,
    pub network: WideDeep,
}

fn weights_bytes(network: &WideDeep, version: &str) -> Result<Vec<u8>, ModelError> {
    let mut store = SafetensorsStore::from_bytes(None);
    let problem = |e: &dyn std::fmt::Display| ModelError::Artifact {
        version: version.to_string(),
        problem: e.to_string(),
    };
    network.save_into(&mut store).map_err(|e| problem(&e))?;
    store.get_bytes().map_err(|e| problem(&e))
}

/// What the registry needs to know about a training run besides the network.
pub struct Provenance<'a> {
    pub data: String,
    pub trained_as_of: NaiveDate,
    pub training: &'a TrainingConfig,
    pub scorecard: Scorecard,
    pub oracle_auc: Option<f64>,
    pub visible_oracle_auc: Option<f64>,
    /// more limitations, for the card (e.g. how a table model treats unseen values)
    pub notes: Vec<String>,
    /// files saved beside the weights before the card (what the model needs besides its
    /// weights to read new rows, e.g. a table's encoding): (file name, JSON)
    pub attachments: Vec<(String, serde_json::Value)>,
}

fn limitations(trained: &TrainedModel, provenance: &Provenance) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Trained on one snapshot of features as of {} with labels from the following horizon; PD is calibrated to that period's default rate ({:.2}% on the holdout) and drifts with it.",
            provenance.trained_as_of,
            trained.holdout.default_rate * 100.0
        ),
        "Features that appear after training are ignored until the next model; the dictionary prefix hash guards the ids it knows.".to_string(),
        "Reason codes come from the wide (linear) part only; the deep part's share of a user's logit is reported as one number, not split by feature.".to_string(),
    ];
    if trained.holdout.rows < 5000 {
        notes.push(format!(
            "Only {} held-out rows: metrics have wide confidence intervals.",
            trained.holdout.rows
        ));
    }
    notes.extend(provenance.notes.iter().cloned());
    notes
}

/// SHA-256 of a model's learned values, then its calibration when given.
fn values_digest(network: &WideDeep, calibration: Option<&Platt>) -> String {
    let mut hasher = Sha256::new();
    for value in network.learned_values() {
        hasher.update(value.to_le_bytes());
    }
    if let Some(calibration) = calibration {
        hasher.update(calibration.slope.to_le_bytes());
        hasher.update(calibration.intercept.to_le_bytes());
    }
    format!("{:x}", hasher.finalize())
}

/// Saves a trained model as `models/<trained_as_of>-<hash>/` (weights and card). The version
/// is derived from the learned values (not the file bytes, whose header order may vary), so
/// retraining on the same data gives the same version.
pub async fn register(
    store: &Store,
    trained: &TrainedModel,
    dictionary: &FeatureDictionary,
    provenance: &Provenance<'_>,
) -> Result<Model, ModelError> {
    let weights = weights_bytes(&trained.network, "new")?;
    let digest = values_digest(&trained.network, Some(&trained.calibration));
    let version = format!("{}-{}", provenance.trained_as_of, &digest[..12]);
    let architecture = trained.network.architecture();
    let card = ModelCard {
        version: version.clone(),
        kind: architecture.kind().to_string(),
        architecture,
        data: provenance.data.clone(),
        trained_as_of: provenance.trained_as_of,
        n_features: architecture.n_features,
        dictionary_hash: dictionary.prefix_hash(architecture.n_features),
        calibration: trained.calibration,
        scorecard: provenance.scorecard,
        holdout: trained.holdout,
        holdout_uncalibrated: trained.holdout_raw,
        oracle_auc: provenance.oracle_auc,
        visible_oracle_auc: provenance.visible_oracle_auc,
        epochs_run: trained.epochs_run,
        training: TrainingConfig {
            l2: trained.l2,
            ..provenance.training.clone()
        },
        l2_search: trained.l2_search.clone(),
        cross_validation: trained.cross_validation.clone(),
        values_sha256: digest,
        weights_sha256: Some(values_digest(&trained.network, None)),
        limitations: limitations(trained, provenance),
    };
    store
        .put(
            &layout::model_file(&version, "weights.safetensors"),
            weights.into(),
        )
        .await?;
    // the card last: a model is listed once it is whole
    for (file, value) in &provenance.attachments {
        put_json(store, &version, file, value).await?;
    }
    put_json(store, &version, "model.json", &card).await?;
    Ok(Model {
        card,
        network: trained.network.clone(),
    })
}

async fn put_json<T: Serialize>(
    store: &Store,
    version: &str,
    file: &str,
    value: &T,
) -> Result<(), ModelError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| ModelError::Artifact {
        version: version.to_string(),
        problem: format!("{file}: {e}"),
    })?;
    store
        .put(&layout::model_file(version, file), json.into())
        .await?;
    Ok(())
}

/// Reads `models/<version>/<file>`; None if the model has no such file.
pub async fn attachment<T: serde::de::DeserializeOwned>(
    store: &Store,
    version: &str,
    file: &str,
) -> Result<Option<T>, ModelError> {
    let Some(bytes) = store.get(&layout::model_file(version, file)).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ModelError::Artifact {
            version: version.to_string(),
            problem: format!("{file}: {e}"),
        })
}

/// Reads `models/<version>/model.json`.
pub async fn card(store: &Store, version: &str) -> Result<ModelCard, ModelError> {
    let bytes = store
        .get(&layout::model_file(version, "model.json"))
        .await?
        .ok_or_else(|| ModelError::UnknownModel {
            version: version.to_string(),
            root: store.url().to_string(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| ModelError::Artifact {
        version: version.to_string(),
        problem: format!("model.json: {e}"),
    })
}

/// Loads `models/<version>/` onto `device`.
pub async fn load(store: &Store, version: &str, device: &Device) -> Result<Model, ModelError> {
    let card = card(store, version).await?;
    let weights = store
        .get(&layout::model_file(version, "weights.safetensors"))
        .await?
        .ok_or_else(|| ModelError::Artifact {
            version: version.to_string(),
            problem: format!(
                "weights.safetensors is missing under {}/models/{version}/",
                store.url()
            ),
        })?;
    if card.architecture.n_features > network::MAX_FEATURES {
        return Err(ModelError::Artifact {
            version: version.to_string(),
            problem: format!(
                "model.json: {} features, more than a network takes ({})",
                card.architecture.n_features,
                network::MAX_FEATURES
            ),
        });
    }
    // the values are replaced by the saved ones
    let mut network = WideDeep::new(card.architecture, 0, device);
    let mut snapshot = SafetensorsStore::from_bytes(Some(weights.to_vec()));
    network
        .load_from(&mut snapshot)
        .map_err(|e| ModelError::Artifact {
            version: version.to_string(),
            problem: e.to_string(),
        })?;
    if let Some(expected) = &card.weights_sha256 {
        let found = values_digest(&network, None);
        if &found != expected {
            return Err(ModelError::Artifact {
                version: version.to_string(),
                problem: format!(
                    "weights.safetensors holds values hashing to {found}, model.json says {expected}: the file was changed or damaged; restore it or retrain"
                ),
            });
        }
    }
    Ok(Model { card, network })
}

/// Every registered model's card, newest training date first. A card that cannot be read (an
/// older format, a broken file) is logged and left out of the list, never silently.
pub async fn list(store: &Store) -> Result<Vec<ModelCard>, ModelError> {
    let mut versions: Vec<String> = store
        .list("models")
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let rest = path.strip_prefix("models/")?;
            let (version, file) = rest.split_once('/')?;
            (file == "model.json").then(|| version.to_string())
        })
        .collect();
    versions.sort();
    versions.dedup();
    let mut cards = Vec::new();
    for version in versions.iter().rev() {
        match card(store, version).await {
            Ok(card) => cards.push(card),
            Err(ModelError::Artifact { version, problem }) => {
                tracing::warn!(%version, %problem, "unreadable model card left out of the list")
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cards)
}

/// `models/_champion.json`: the model the nightly job scores with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Champion {
    pub version: String,
    /// the champion it replaced, for a quick way back
    pub previous: Option<String>,
    pub promoted_at: String,
    /// the promotion gates it failed, where a person promoted it anyway (`--force`)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_past: Option<Vec<String>>,
}

pub async fn champion(store: &Store) -> Result<Option<Champion>, ModelError> {
    let Some(bytes) = store.get(layout::CHAMPION_FILE).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ModelError::Artifact {
            version: "champion".into(),
            problem: format!("{}: {e}", layout::CHAMPION_FILE),
        })
}

/// Makes `version` the champion; the model must exist. `forced_past`: the gates it failed,
/// where a person overrode them, kept in the record.
pub async fn promote(
    store: &Store,
    version: &str,
    forced_past: Option<Vec<String>>,
) -> Result<Champion, ModelError> {
    card(store, version).await?;
    let previous = champion(store).await?.map(|c| c.version);
    let champion = Champion {
        version: version.to_string(),
        previous: previous.filter(|p| p != version),
        promoted_at: chrono::Utc::now().to_rfc3339(),
        forced_past,
    };
    let json = serde_json::to_vec_pretty(&champion).map_err(|e| ModelError::Artifact {
        version: version.to_string(),
        problem: e.to_string(),
    })?;
    store.put(layout::CHAMPION_FILE, json.into()).await?;
    Ok(champion)
}

impl Model {
    /// Refuses a dictionary that does not start with the entries the model learned.
    pub fn check_dictionary(&self, dictionary: &FeatureDictionary) -> Result<(), ModelError> {
        let n = self.card.n_features;
        let found = if dictionary.len() < n {
            format!("(only {} entries)", dictionary.len())
        } else {
            dictionary.prefix_hash(n)
        };
        if found != self.card.dictionary_hash {
            return Err(ModelError::DictionaryMismatch {
                version: self.card.version.clone(),
                n_features: n,
                expected: self.card.dictionary_hash.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Calibrated PD of every row.
    pub fn pd(&self, rows: &Csr, device: &Device) -> Vec<f64> {
        logits(&self.network, rows, device, 4096)
            .into_iter()
            .map(|z| self.card.calibration.pd(z))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Csr, TrainingSet};

    /// Feature 0 raises risk, feature 1 lowers it, and defaults are rare (~8%).
    fn toy_set() -> TrainingSet {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut labels = Vec::new();
        for user in 0..6000u64 {
            let risky = user % 3 == 0;
            csr.users.push(user);
            csr.ids.push(if risky { 0 } else { 1 });
            csr.values.push(1.0);
            csr.offsets.push(csr.ids.len());
            let default = if risky { user % 7 < 1 } else { user % 29 == 1 };
            labels.push(if default { 1.0 } else { 0.0 });
        }
        TrainingSet {
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            rows: csr,
            labels,
        }
    }

    fn config() -> TrainingConfig {
        TrainingConfig {
            epochs: 4,
            batch_size: 256,
            learning_rate: 0.05,
            l2: 0.0,
            l2_scale: Default::default(),
            holdout_share: 0.2,
            validation_share: 0.2,
            patience: 2,
            seed: 1,
            positive_weight: 1.0,
            embedding_dim: 4,
            hidden: 8,
            l2_grid: Vec::new(),
            exclude_protected: false,
        }
    }

    #[test]
    fn an_l2_grid_is_decided_on_validation_and_the_winner_alone_is_the_model() {
        let device = DeviceKind::Cpu.device().unwrap();
        let searched = TrainingConfig {
            l2: 1.0,
            l2_grid: vec![1e4, 1.0, 0.01],
            ..config()
        };
        let chosen = train(&toy_set(), &[1.0; 2], &searched, &device);
        let tried: Vec<f64> = chosen.l2_search.iter().map(|(l2, _)| *l2).collect();
        assert_eq!(tried, [1e4, 1.0, 0.01]);
        // the best validation AUC wins, the earliest on a tie
        let best = chosen
            .l2_search
            .iter()
            .fold(None::<(f64, f64)>, |best, &(l2, auc)| match best {
                Some((_, b)) if b >= auc => best,
                _ => Some((l2, auc)),
            })
            .unwrap();
        assert_eq!((chosen.l2, chosen.best_validation_auc), best);
        // and it is the model training with the winner alone gives
        let alone = TrainingConfig {
            l2: chosen.l2,
            ..config()
        };
        let alone = train(&toy_set(), &[1.0; 2], &alone, &device);
        assert_eq!(chosen.holdout.auc, alone.holdout.auc);
        assert_eq!(chosen.holdout.log_loss, alone.holdout.log_loss);
    }

    fn provenance(config: &TrainingConfig) -> Provenance<'_> {
        Provenance {
            data: "toy".into(),
            trained_as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            training: config,
            scorecard: Scorecard::default(),
            oracle_auc: None,
            visible_oracle_auc: None,
            notes: Vec::new(),
            attachments: Vec::new(),
        }
    }

    #[test]
    fn wide_and_deep_learns_the_sign_of_each_feature_and_is_deterministic() {
        let device = Device::flex();
        let set = toy_set();
        let a = train(&set, &[1.0; 2], &config(), &device);
        let b = train(&set, &[1.0; 2], &config(), &device);
        assert_eq!(a.network.architecture().kind(), "wide_and_deep");
        let (weights, _) = a.network.coefficients();
        assert!(weights[0] > weights[1], "{weights:?}");
        assert!(a.holdout.auc > 0.6, "{:?}", a.holdout);
        assert_eq!(a.network.learned_values(), b.network.learned_values());
        assert_eq!(a.calibration, b.calibration);
    }

    #[test]
    fn the_scorer_gives_the_training_forward_logits() {
        let device = Device::flex();
        let trained = train(&toy_set(), &[1.0; 2], &config(), &device);
        // rows of zero to three ids, one unknown to the model (id 5), values not all 1
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        for (user, row) in [vec![], vec![0], vec![1, 5], vec![0, 1], vec![5, 0, 1]]
            .into_iter()
            .enumerate()
        {
            csr.users.push(user as u64);
            for (slot, id) in row.into_iter().enumerate() {
                csr.ids.push(id);
                csr.values.push(0.5 + slot as f32);
            }
            csr.offsets.push(csr.ids.len());
        }
        let rows: Vec<usize> = (0..csr.len()).collect();
        let batch = network::PaddedBatch::new(&csr, &rows, 2, &device);
        let read = |t: burn::tensor::Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
        let network = &trained.network;
        let (_, deep) = network.forward_parts(batch.ids.clone(), batch.values.clone());
        assert!(
            read(deep).iter().any(|d| d.abs() > 1e-4),
            "a deep part that learned"
        );
        let expected = read(network.forward(batch.ids.clone(), batch.values.clone()));
        let scored = read(network.scorer().forward(batch.ids, batch.values));
        assert_eq!(expected.len(), csr.len());
        assert_eq!(scored.len(), csr.len());
        for (e, s) in expected.iter().zip(&scored) {
            assert!((e - s).abs() < 1e-6, "{expected:?} {scored:?}");
        }
    }

    #[test]
    fn calibration_removes_the_bias_of_class_weighting() {
        let device = Device::flex();
        let weighted = TrainingConfig {
            positive_weight: 6.0,
            embedding_dim: 0,
            epochs: 6,
            ..config()
        };
        let trained = train(&toy_set(), &[1.0; 2], &weighted, &device);
        // weighting defaults six times makes raw PDs far too high; Platt brings them back
        assert!(
            trained.holdout_raw.mean_pd > 2.0 * trained.holdout_raw.default_rate,
            "{:?}",
            trained.holdout_raw
        );
        assert!(
            trained.holdout.ece < trained.holdout_raw.ece / 3.0,
            "calibrated {:?} raw {:?}",
            trained.holdout,
            trained.holdout_raw
        );
        // calibration is monotone: the ranking, hence AUC, is unchanged
        assert!((trained.holdout.auc - trained.holdout_raw.auc).abs() < 1e-9);
    }

    #[tokio::test]
    async fn a_saved_model_loads_identically_and_refuses_another_dictionary() {
        let device = Device::flex();
        let store = Store::open("memory://model-test").unwrap();
        let trained = train(&toy_set(), &[1.0; 2], &config(), &device);
        let mut dictionary = FeatureDictionary::default();
        dictionary.id_or_insert("risky", "t");
        dictionary.id_or_insert("safe", "t");
        let config = config();
        let model = register(&store, &trained, &dictionary, &provenance(&config))
            .await
            .unwrap();
        let loaded = load(&store, &model.card.version, &device).await.unwrap();
        assert_eq!(
            loaded.network.learned_values(),
            trained.network.learned_values()
        );
        assert_eq!(
            loaded.pd(&trained.holdout_rows, &device),
            trained.holdout_pd
        );
        loaded.check_dictionary(&dictionary).unwrap();
        dictionary.id_or_insert("new_feature", "t");
        loaded.check_dictionary(&dictionary).unwrap();
        let mut other = FeatureDictionary::default();
        other.id_or_insert("safe", "t");
        other.id_or_insert("risky", "t");
        let err = loaded.check_dictionary(&other).unwrap_err().to_string();
        assert!(err.contains("retrain"), "{err}");

        // weights changed after registration (one tensor byte) no longer load as this model
        let path = layout::model_file(&model.card.version, "weights.safetensors");
        let mut bytes = store.get(&path).await.unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        store.put(&path, bytes.into()).await.unwrap();
        let err = load(&store, &model.card.version, &device)
            .await
            .err()
            .expect("a changed weights file is refused")
            .to_string();
        assert!(err.contains("changed or damaged"), "{err}");
    }

    #[test]
    fn a_family_l2_scale_shrinks_only_that_familys_weights() {
        let device = Device::flex();
        let penalized = TrainingConfig {
            l2: 50.0,
            embedding_dim: 0,
            l2_scale: [("weak".to_string(), 1000.0)].into(),
            ..config()
        };
        let scales = penalized.l2_scales(["weak", "strong"]);
        assert_eq!(scales, vec![1000.0, 1.0]);
        let (plain, _) = train(&toy_set(), &[1.0; 2], &penalized, &device)
            .network
            .coefficients();
        let (scaled, _) = train(&toy_set(), &scales, &penalized, &device)
            .network
            .coefficients();
        assert!(
            scaled[0].abs() < plain[0].abs() / 5.0,
            "{scaled:?} {plain:?}"
        );
        // the other feature is penalized as before, so it takes over some of the signal
        assert!(
            scaled[1].abs() > 0.5 * plain[1].abs(),
            "{scaled:?} {plain:?}"
        );
    }

    #[tokio::test]
    async fn promotion_names_the_champion_and_remembers_the_previous_one() {
        let device = Device::flex();
        let store = Store::open("memory://champion-test").unwrap();
        assert!(champion(&store).await.unwrap().is_none());
        let mut dictionary = FeatureDictionary::default();
        dictionary.id_or_insert("risky", "t");
        dictionary.id_or_insert("safe", "t");
        let wide = TrainingConfig {
            embedding_dim: 0,
            ..config()
        };
        let deep = config();
        let a = train(&toy_set(), &[1.0; 2], &wide, &device);
        let b = train(&toy_set(), &[1.0; 2], &deep, &device);
        let a = register(&store, &a, &dictionary, &provenance(&wide))
            .await
            .unwrap();
        let b = register(&store, &b, &dictionary, &provenance(&deep))
            .await
            .unwrap();
        assert_ne!(a.card.version, b.card.version);
        promote(&store, &a.card.version, None).await.unwrap();
        let now = promote(&store, &b.card.version, None).await.unwrap();
        assert_eq!(now.version, b.card.version);
        assert_eq!(now.previous.as_deref(), Some(a.card.version.as_str()));
        assert_eq!(list(&store).await.unwrap().len(), 2);
        let err = promote(&store, "no-such-model", None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("models list"), "{err}");
    }
}
