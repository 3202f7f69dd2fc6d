//! `pipelines/`: the three configuration files of a run (features, limit policy, nightly
//! settings), parsed and checked once, with errors naming the file and the key. The shipped
//! files are compiled in; a section a user's `nightly.toml` leaves out takes the shipped
//! section, so every default lives in `pipelines/*.toml` and nowhere else.
//!
//! Each stage owns the type of its own section; this module only puts them together.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Classify};
use crate::dataset::LabelConfig;
use crate::engine::EngineConfig;
use crate::features::FeatureConfig;
use crate::model::TrainingConfig;
use crate::model::evaluation::EvaluationConfig;
use crate::policy::LimitPolicy;
use crate::publish::PublishConfig;

const SHIPPED_NIGHTLY: &str = include_str!("../pipelines/nightly.toml");

/// Sections of `nightly.toml` a user's file may leave out (the shipped one's then apply).
const OPTIONAL_SECTIONS: [&str; 2] = ["evaluation", "publish"];

#[derive(Debug, thiserror::Error)]
#[error("{file}: {error}")]
pub struct PipelinesError {
    pub file: String,
    pub error: String,
}

impl Classify for PipelinesError {
    fn cause(&self) -> Cause {
        Cause::Configuration
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyConfig {
    pub engine: EngineConfig,
    pub label: LabelConfig,
    pub validation: ValidationConfig,
    pub training: TrainingConfig,
    pub evaluation: EvaluationConfig,
    pub publish: PublishConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    pub max_bad_share: f64,
}

/// The three files of `pipelines/`.
#[derive(Debug, Clone)]
pub struct Pipelines {
    pub features: FeatureConfig,
    pub policy: LimitPolicy,
    pub nightly: NightlyConfig,
}

impl Pipelines {
    /// The configuration shipped with redflower, compiled in.
    pub fn builtin() -> Pipelines {
        Pipelines {
            features: FeatureConfig::builtin(),
            policy: LimitPolicy::builtin(),
            nightly: parse_nightly(SHIPPED_NIGHTLY, "pipelines/nightly.toml")
                .expect("the shipped nightly.toml is valid"),
        }
    }

    /// `features.toml`, `limits.toml` and `nightly.toml` from a folder.
    pub fn load(dir: &Path) -> Result<Pipelines, PipelinesError> {
        let config = |e: &dyn std::fmt::Display| PipelinesError {
            file: dir.display().to_string(),
            error: e.to_string(),
        };
        let nightly_file = dir.join("nightly.toml");
        let text = std::fs::read_to_string(&nightly_file).map_err(|e| PipelinesError {
            file: nightly_file.display().to_string(),
            error: e.to_string(),
        })?;
        Ok(Pipelines {
            features: FeatureConfig::load(&dir.join("features.toml")).map_err(|e| config(&e))?,
            policy: LimitPolicy::load(&dir.join("limits.toml")).map_err(|e| config(&e))?,
            nightly: parse_nightly(&text, &nightly_file.display().to_string())?,
        })
    }

    /// `load` for a folder, the shipped configuration for none.
    pub fn load_or_builtin(dir: Option<&Path>) -> Result<Pipelines, PipelinesError> {
        match dir {
            Some(dir) => Pipelines::load(dir),
            None => Ok(Pipelines::builtin()),
        }
    }
}

fn parse_nightly(text: &str, file: &str) -> Result<NightlyConfig, PipelinesError> {
    let failed = |error: &dyn std::fmt::Display| PipelinesError {
        file: file.to_string(),
        error: error.to_string(),
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| failed(&e))?;
    let shipped: toml::Table = toml::from_str(SHIPPED_NIGHTLY).map_err(|e| failed(&e))?;
    for section in OPTIONAL_SECTIONS {
        if !table.contains_key(section)
            && let Some(value) = shipped.get(section)
        {
            table.insert(section.to_string(), value.clone());
        }
    }
    table.try_into().map_err(|e| failed(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_left_out_section_takes_the_shipped_one_and_a_wrong_key_names_the_file() {
        // the shipped file without its [publish] section (up to the next blank line)
        let mut skipping = false;
        let without: String = SHIPPED_NIGHTLY
            .lines()
            .filter(|line| {
                skipping = (skipping || *line == "[publish]") && !line.is_empty();
                !skipping
            })
            .map(|line| format!("{line}\n"))
            .collect();
        assert!(!without.contains("retain_versions"));
        let parsed = parse_nightly(&without, "n.toml").unwrap();
        let shipped = Pipelines::builtin().nightly;
        assert_eq!(
            parsed.publish.retain_versions,
            shipped.publish.retain_versions
        );
        let err = parse_nightly(
            &SHIPPED_NIGHTLY.replace("max_bad_share", "max_bad_shares"),
            "n.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("n.toml") && err.contains("max_bad_shares"),
            "{err}"
        );
    }
}
