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
use crate::model::promotion::PromotionConfig;
use crate::policy::LimitPolicy;
use crate::publish::PublishConfig;
use crate::store::EncryptionConfig;

const SHIPPED_NIGHTLY: &str = include_str!("../pipelines/nightly.toml");

/// Sections of `nightly.toml` a user's file may leave out (the shipped one's then apply).
const OPTIONAL_SECTIONS: [&str; 3] = ["evaluation", "publish", "encryption"];

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
    /// what a model must show before it becomes the champion
    pub promotion: PromotionConfig,
    /// how tables of your own (`train --table`) are trained
    pub table: TableConfig,
    /// where the data keys are that encrypt every file holding personal data
    pub encryption: EncryptionConfig,
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
    /// every file of the folder as read (the shipped three when compiled in), for the lineage
    /// a published version records
    pub files: Vec<PipelineFile>,
}

/// One file of the `pipelines/` folder, as read.
#[derive(Clone)]
pub struct PipelineFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for PipelineFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} bytes)", self.name, self.bytes.len())
    }
}

/// Every regular file directly in `dir`, by name.
fn read_folder(dir: &Path) -> Result<Vec<PipelineFile>, PipelinesError> {
    let failed = |e: std::io::Error| PipelinesError {
        file: dir.display().to_string(),
        error: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let path = entry.map_err(failed)?.path();
        if path.is_file() {
            files.push(PipelineFile {
                name: path
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                bytes: std::fs::read(&path).map_err(|e| PipelinesError {
                    file: path.display().to_string(),
                    error: e.to_string(),
                })?,
            });
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

impl Pipelines {
    /// The configuration shipped with redflower, compiled in.
    pub fn builtin() -> Pipelines {
        Pipelines {
            features: FeatureConfig::builtin(),
            policy: LimitPolicy::builtin(),
            nightly: parse_nightly(SHIPPED_NIGHTLY, "pipelines/nightly.toml")
                .expect("the shipped nightly.toml is valid"),
            files: [
                ("features.toml", include_str!("../pipelines/features.toml")),
                ("limits.toml", include_str!("../pipelines/limits.toml")),
                ("nightly.toml", SHIPPED_NIGHTLY),
            ]
            .into_iter()
            .map(|(name, text)| PipelineFile {
                name: name.into(),
                bytes: text.as_bytes().to_vec(),
            })
            .collect(),
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
            files: read_folder(dir)?,
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
    let config: NightlyConfig = table.try_into().map_err(|e| failed(&e))?;
    config.check().map_err(|e| failed(&e))?;
    Ok(config)
}

impl NightlyConfig {
    /// Every section's own check, the error naming the section and the key.
    fn check(&self) -> Result<(), String> {
        let sections: [(&str, Result<(), String>); 9] = [
            ("engine", self.engine.check()),
            ("label", self.label.check()),
            ("validation", self.validation.check()),
            ("training", self.training.check()),
            ("evaluation", self.evaluation.check()),
            ("publish", self.publish.check()),
            ("promotion", self.promotion.check()),
            ("table", self.table.check()),
            ("encryption", self.encryption.check()),
        ];
        for (section, checked) in sections {
            checked.map_err(|problem| format!("[{section}] {problem}"))?;
        }
        Ok(())
    }
}

impl ValidationConfig {
    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_bad_share) {
            return Err("max_bad_share must be between 0 and 1".into());
        }
        Ok(())
    }
}

/// `[table]` of nightly.toml: how tables of your own are trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// tables with fewer labelled rows are cross-validated instead of using one validation
    /// split
    pub cross_validate_below_rows: usize,
    pub folds: usize,
    /// value bins per numeric column for the binned encoding (0: standardized values only)
    pub bins: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// the most epochs; cross-validation (or early stopping) chooses how many
    pub epochs: usize,
    /// L2 penalties to choose from, per example (the objective is the mean log loss plus
    /// l2 / rows times the sum of squared weights)
    pub l2_grid: Vec<f64>,
    /// embedding sizes cross-validation chooses from (0: the wide part alone); larger tables
    /// use the largest
    pub embedding_dims: Vec<usize>,
    /// width of the deep part's hidden layer
    pub hidden: usize,
    /// networks refitted on all training rows after cross-validation and averaged into one
    pub refits: usize,
}

impl TableConfig {
    pub fn check(&self) -> Result<(), String> {
        if !(2..=20).contains(&self.folds) {
            return Err("folds must be between 2 and 20".into());
        }
        if self.bins > 100 {
            return Err("bins must be at most 100".into());
        }
        if !(1..=16).contains(&self.embedding_dims.len())
            || self.embedding_dims.iter().any(|d| *d > 64)
        {
            return Err("embedding_dims must hold 1 to 16 sizes, each at most 64".into());
        }
        if !(1..=4096).contains(&self.hidden) {
            return Err("hidden must be between 1 and 4096".into());
        }
        if !(1..=16).contains(&self.refits) {
            return Err("refits must be between 1 and 16".into());
        }
        let checks = [
            (
                (1..=1 << 20).contains(&self.batch_size),
                "batch_size must be between 1 and 1048576",
            ),
            (
                self.learning_rate.is_finite() && self.learning_rate > 0.0,
                "learning_rate must be a positive number",
            ),
            (
                (1..=10_000).contains(&self.epochs),
                "epochs must be between 1 and 10000",
            ),
            (
                (1..=16).contains(&self.l2_grid.len())
                    && self.l2_grid.iter().all(|l2| l2.is_finite() && *l2 > 0.0),
                "l2_grid must hold 1 to 16 positive numbers",
            ),
        ];
        match checks.into_iter().find(|(ok, _)| !ok) {
            Some((_, problem)) => Err(problem.to_string()),
            None => Ok(()),
        }
    }

    /// `[training]` with this section's batch, rate, epochs and L2 grid (as multiples of 1).
    pub fn training(&self, base: &TrainingConfig, holdout_share: Option<f64>) -> TrainingConfig {
        TrainingConfig {
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            epochs: self.epochs,
            l2: 1.0,
            l2_grid: self.l2_grid.clone(),
            l2_scale: Default::default(),
            embedding_dim: self.embedding_dims.iter().copied().max().unwrap_or(0),
            hidden: self.hidden,
            holdout_share: holdout_share.unwrap_or(base.holdout_share),
            ..base.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::Strategy;

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

    /// Numbers a hand-edited file may hold: nothing here may panic a loader or a stage.
    const ODD_NUMBERS: [&str; 12] = [
        "nan",
        "inf",
        "-inf",
        "0",
        "-1",
        "0.5",
        "1",
        "3",
        "1e-12",
        "1e300",
        "4294967296",
        "-4294967296",
    ];

    /// `text` with the values of some of its `key = number` lines (counted from 0, only
    /// those lines) set: `edits` maps a line's count to its new value.
    fn with_numbers(text: &str, edits: &[(usize, &str)]) -> String {
        let mut seen = 0;
        let lines: Vec<String> = text
            .lines()
            .map(|line| {
                let Some((key, old)) = line.split_once(" = ") else {
                    return line.to_string();
                };
                if key.starts_with('#') || old.trim().parse::<f64>().is_err() {
                    return line.to_string();
                }
                seen += 1;
                match edits.iter().find(|(which, _)| *which == seen - 1) {
                    Some((_, value)) => format!("{key} = {value}"),
                    None => line.to_string(),
                }
            })
            .collect();
        lines.join("\n")
    }

    fn number_lines(text: &str) -> usize {
        text.lines()
            .filter_map(|line| line.split_once(" = "))
            .filter(|(key, value)| !key.starts_with('#') && value.trim().parse::<f64>().is_ok())
            .count()
    }

    const SHIPPED_LIMITS: &str = include_str!("../pipelines/limits.toml");

    /// Loads `text` as `file`; when it loads, runs what its numbers feed. A refusal must name
    /// the file; nothing may panic.
    fn load_and_run(nightly: bool, text: &str) -> Result<(), String> {
        let file = if nightly {
            "nightly.toml"
        } else {
            "limits.toml"
        };
        let refused = |error: String| match error.contains(file) {
            true => Ok(()),
            false => Err(format!("an error that does not name {file}: {error}")),
        };
        match nightly {
            true => match parse_nightly(text, file) {
                Ok(config) => Ok(exercise_nightly(&config)),
                Err(error) => refused(error.to_string()),
            },
            false => match LimitPolicy::parse(text, file) {
                Ok(policy) => Ok(exercise_policy(&policy)),
                Err(error) => refused(error.to_string()),
            },
        }
    }

    fn exercise_policy(policy: &LimitPolicy) {
        use crate::policy::{HeldCertificate, UserFacts};
        let certificate = HeldCertificate {
            cert_type_id: 1,
            name: "c".into(),
            family: "professional".into(),
            tier: 2,
            confidence: 1.0,
        };
        for pd in [0.0, 0.01, 0.2, 1.0] {
            for previous in [None, Some(0.0), Some(1050.0), Some(1e6)] {
                for cap in [None, Some(0.0), Some(500.0)] {
                    let facts = UserFacts {
                        certificates: vec![certificate.clone()],
                        cap,
                        income_band: Some(3),
                        previous_limit: previous,
                        ..Default::default()
                    };
                    let decision = policy.decide(pd, &facts);
                    assert!(decision.credit_limit.is_finite(), "{decision:?}");
                }
            }
        }
    }

    fn exercise_nightly(nightly: &NightlyConfig) {
        use crate::dataset::{Csr, TrainingSet};
        crate::engine::session(&nightly.engine).expect("a checked [engine] makes a session");
        let run_date = chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        crate::dataset::training_as_of(run_date, &nightly.label);
        for pd in [1e-12, 0.3, 1.0 - 1e-12] {
            let points = nightly.evaluation.scorecard.points(pd);
            assert!(points.is_finite(), "{:?}", nightly.evaluation.scorecard);
        }
        let mut rows = Csr {
            offsets: vec![0],
            ..Default::default()
        };
        let mut labels = Vec::new();
        for user in 0..400u64 {
            rows.users.push(user);
            rows.ids.push((user % 3 == 0) as u32);
            rows.values.push(1.0);
            rows.offsets.push(rows.ids.len());
            labels.push(if user % 5 == 0 { 1.0 } else { 0.0 });
        }
        let set = TrainingSet {
            as_of: run_date,
            rows,
            labels,
        };
        let training = crate::model::TrainingConfig {
            epochs: nightly.training.epochs.min(2),
            ..nightly.training.clone()
        };
        let device = crate::model::DeviceKind::Cpu.device().unwrap();
        crate::model::train(&set, &[1.0, 1.0], &training, &device);
    }

    #[test]
    fn every_odd_number_in_every_place_loads_or_is_refused_by_name() {
        for (nightly, text) in [(true, SHIPPED_NIGHTLY), (false, SHIPPED_LIMITS)] {
            for which in 0..number_lines(text) {
                for odd in ODD_NUMBERS {
                    let changed = with_numbers(text, &[(which, odd)]);
                    if let Err(problem) = load_and_run(nightly, &changed) {
                        panic!("number {which} = {odd}: {problem}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Several numbers changed at once, to values drawn from the odd ones and from
        /// anywhere: a combination may break what no single edit does.
        #[test]
        fn numbers_changed_together_load_or_are_refused_by_name(
            nightly in proptest::prelude::any::<bool>(),
            edits in proptest::collection::vec(
                (0usize..30, proptest::prop_oneof![
                    (0..ODD_NUMBERS.len()).prop_map(|i| ODD_NUMBERS[i].to_string()),
                    (-1e6f64..1e6).prop_map(|x| format!("{x:?}")),
                    (0u32..5000).prop_map(|x| x.to_string()),
                ]),
                1..4,
            ),
        ) {
            let text = if nightly { SHIPPED_NIGHTLY } else { SHIPPED_LIMITS };
            let edits: Vec<(usize, &str)> = edits.iter().map(|(w, v)| (*w, v.as_str())).collect();
            let outcome = load_and_run(nightly, &with_numbers(text, &edits));
            proptest::prop_assert!(outcome.is_ok(), "{edits:?}: {outcome:?}");
        }
    }
}
