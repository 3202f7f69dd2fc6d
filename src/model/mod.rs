//! Models: trains the default-probability model with Burn, measures it, and keeps versioned
//! artifacts under `models/<version>/` (weights as safetensors, `model.json` with the
//! dictionary prefix it was trained on, metrics and config).
//!
//! Reads training sets and CSR rows from `dataset`; writes only `models/`. A model refuses a
//! feature dictionary whose first entries differ from those it was trained on.

pub mod metrics;
pub mod network;
pub mod train;

use burn::tensor::Device;
use burn_store::{ModuleSnapshot, SafetensorsStore};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use metrics::Metrics;
pub use network::SparseLogistic;
pub use train::{TrainedModel, TrainingConfig, predict, train};

use crate::features::FeatureDictionary;
use crate::store::{Store, StoreError};

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
    pub kind: String,
    /// features as of this date, labels from the following horizon
    #[serde(with = "crate::serde_date")]
    pub trained_as_of: NaiveDate,
    pub n_features: usize,
    pub dictionary_hash: String,
    pub holdout: Metrics,
    pub epochs_run: usize,
    pub training: TrainingConfig,
    /// SHA-256 of the learned values (little-endian f32 weights, then the bias)
    pub values_sha256: String,
}

pub struct Model {
    pub card: ModelCard,
    pub network: SparseLogistic,
}

fn weights_bytes(network: &SparseLogistic, version: &str) -> Result<Vec<u8>, ModelError> {
    let mut store = SafetensorsStore::from_bytes(None);
    let problem = |e: &dyn std::fmt::Display| ModelError::Artifact {
        version: version.to_string(),
        problem: e.to_string(),
    };
    network.save_into(&mut store).map_err(|e| problem(&e))?;
    store.get_bytes().map_err(|e| problem(&e))
}

/// Saves a trained model as `models/<trained_as_of>-<weights hash>/`. The version is derived
/// from the learned values (not the file bytes, whose header order may vary), so retraining
/// on the same data gives the same version.
pub async fn register(
    store: &Store,
    trained: &TrainedModel,
    dictionary: &FeatureDictionary,
    trained_as_of: NaiveDate,
    training: &TrainingConfig,
) -> Result<Model, ModelError> {
    let weights = weights_bytes(&trained.network, "new")?;
    let (coefficients, bias) = trained.network.coefficients();
    let mut hasher = Sha256::new();
    for value in coefficients.iter().chain([&bias]) {
        hasher.update(value.to_le_bytes());
    }
    let digest = format!("{:x}", hasher.finalize());
    let version = format!("{trained_as_of}-{}", &digest[..12]);
    let n_features = trained.network.n_features();
    let card = ModelCard {
        version: version.clone(),
        kind: "sparse_logistic".into(),
        trained_as_of,
        n_features,
        dictionary_hash: dictionary.prefix_hash(n_features),
        holdout: trained.holdout,
        epochs_run: trained.epochs_run,
        training: training.clone(),
        values_sha256: digest,
    };
    store
        .put(
            &format!("models/{version}/weights.safetensors"),
            weights.into(),
        )
        .await?;
    let json = serde_json::to_vec_pretty(&card).map_err(|e| ModelError::Artifact {
        version: version.clone(),
        problem: e.to_string(),
    })?;
    store
        .put(&format!("models/{version}/model.json"), json.into())
        .await?;
    Ok(Model {
        card,
        network: trained.network.clone(),
    })
}

/// Loads `models/<version>/` onto `device`.
pub async fn load(store: &Store, version: &str, device: &Device) -> Result<Model, ModelError> {
    let missing = |what: &str| ModelError::Artifact {
        version: version.to_string(),
        problem: format!("{what} is missing under {}/models/{version}/", store.url()),
    };
    let card = store
        .get(&format!("models/{version}/model.json"))
        .await?
        .ok_or_else(|| missing("model.json"))?;
    let card: ModelCard = serde_json::from_slice(&card).map_err(|e| ModelError::Artifact {
        version: version.to_string(),
        problem: format!("model.json: {e}"),
    })?;
    let weights = store
        .get(&format!("models/{version}/weights.safetensors"))
        .await?
        .ok_or_else(|| missing("weights.safetensors"))?;
    let mut network = SparseLogistic::new(card.n_features, device);
    let mut snapshot = SafetensorsStore::from_bytes(Some(weights.to_vec()));
    network
        .load_from(&mut snapshot)
        .map_err(|e| ModelError::Artifact {
            version: version.to_string(),
            problem: e.to_string(),
        })?;
    Ok(Model { card, network })
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Csr, TrainingSet};

    /// Two features: feature 0 raises risk, feature 1 lowers it.
    fn toy_set() -> TrainingSet {
        let mut csr = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut labels = Vec::new();
        for user in 0..2000u64 {
            let risky = user % 3 == 0;
            csr.users.push(user);
            csr.ids.push(if risky { 0 } else { 1 });
            csr.values.push(1.0);
            csr.offsets.push(csr.ids.len());
            let default = if risky { user % 2 == 0 } else { user % 10 == 1 };
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
            holdout_share: 0.2,
            validation_share: 0.1,
            patience: 2,
            seed: 1,
        }
    }

    #[test]
    fn learns_the_sign_of_each_feature_and_is_deterministic() {
        let device = Device::flex();
        let set = toy_set();
        let a = train(&set, 2, &config(), &device);
        let b = train(&set, 2, &config(), &device);
        let (weights, _) = a.network.coefficients();
        assert!(weights[0] > weights[1], "{weights:?}");
        assert!(a.holdout.auc > 0.6, "{:?}", a.holdout);
        assert_eq!(a.network.coefficients(), b.network.coefficients());
    }

    #[tokio::test]
    async fn a_saved_model_loads_identically_and_refuses_another_dictionary() {
        let device = Device::flex();
        let store = Store::open("memory://model-test").unwrap();
        let trained = train(&toy_set(), 2, &config(), &device);
        let mut dictionary = FeatureDictionary::default();
        dictionary.id_or_insert("risky", "t");
        dictionary.id_or_insert("safe", "t");
        let as_of = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let model = register(&store, &trained, &dictionary, as_of, &config())
            .await
            .unwrap();
        let loaded = load(&store, &model.card.version, &device).await.unwrap();
        assert_eq!(
            loaded.network.coefficients(),
            trained.network.coefficients()
        );
        loaded.check_dictionary(&dictionary).unwrap();
        dictionary.id_or_insert("new_feature", "t");
        loaded.check_dictionary(&dictionary).unwrap();
        let mut other = FeatureDictionary::default();
        other.id_or_insert("safe", "t");
        other.id_or_insert("risky", "t");
        let err = loaded.check_dictionary(&other).unwrap_err().to_string();
        assert!(err.contains("retrain"), "{err}");
    }
}
