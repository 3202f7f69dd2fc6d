//! `pipelines/features.toml`: declarative feature families, parsed and checked once at load.

use std::collections::HashSet;

use serde::Deserialize;

use crate::cause::{Cause, Classify};
use crate::schema;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {error}")]
    Parse { file: String, error: String },
    #[error("{file}: family '{family}': {problem}")]
    Invalid {
        file: String,
        family: String,
        problem: String,
    },
}

impl Classify for ConfigError {
    fn cause(&self) -> Cause {
        Cause::Configuration
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    #[serde(rename = "family")]
    pub families: Vec<FeatureFamily>,
    #[serde(rename = "ratio", default)]
    pub ratios: Vec<Ratio>,
}

/// A feature made of two others, per user: numerator / denominator, where the denominator is
/// not zero. Both are feature names the families produce, e.g. `late_payments_60d`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ratio {
    pub name: String,
    pub numerator: String,
    pub denominator: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    Count,
    Sum,
    Mean,
    Max,
    Min,
    DistinctCount,
    /// 1.0 when the user has any matching row
    Indicator,
    /// days between the newest matching row and the as-of date
    DaysSinceLast,
    /// the key's share of the user's total `value` (or row count) across all keys
    Share,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    #[default]
    None,
    /// ln(1 + x): counts and money are heavy-tailed
    Log1p,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureFamily {
    /// Prefix of every feature name in the family.
    pub name: String,
    /// A raw source: profiles, events, certificates, repayments or limit_requests.
    pub source: String,
    /// SQL predicate over the source's columns.
    #[serde(default)]
    pub filter: Option<String>,
    /// SQL expression; one feature per distinct value. Without it, one feature per window.
    #[serde(default)]
    pub key: Option<String>,
    /// How the key shows in feature names; defaults to the key when it is a column name.
    #[serde(default)]
    pub key_label: Option<String>,
    pub aggregate: Aggregate,
    /// SQL expression aggregated by sum, mean, max, min and distinct_count.
    #[serde(default)]
    pub value: Option<String>,
    /// Look-back windows such as "30d"; none means all history before the as-of date.
    #[serde(default)]
    pub windows: Vec<String>,
    /// SQL expression for when a row became known, if later than the source's time column
    /// (a delinquency of 30 days is known 30 days after the due date).
    #[serde(default)]
    pub time: Option<String>,
    #[serde(default)]
    pub transform: Transform,
    /// A key value becomes a feature only when at least this many users have it.
    #[serde(default = "one")]
    pub min_support: u64,
    /// Keep at most this many key values per window, the most supported first.
    #[serde(default)]
    pub top_k: Option<usize>,
    /// A protected attribute (age, say): its features are never given as an adverse reason
    /// for a user's score or limit.
    #[serde(default)]
    pub protected: bool,
}

fn one() -> u64 {
    1
}

impl FeatureFamily {
    /// Window lengths in days; `None` stands for all history.
    pub fn window_days(&self) -> Vec<Option<u32>> {
        if self.windows.is_empty() {
            return vec![None];
        }
        self.windows
            .iter()
            .map(|w| w.strip_suffix('d').and_then(|d| d.parse().ok()))
            .collect()
    }

    pub fn key_label(&self) -> String {
        match (&self.key_label, &self.key) {
            (Some(label), _) => label.clone(),
            (None, Some(key)) if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                key.clone()
            }
            _ => "key".to_string(),
        }
    }
}

impl FeatureConfig {
    /// The families marked `protected = true`.
    pub fn protected_families(&self) -> Vec<String> {
        (self.families.iter())
            .filter(|f| f.protected)
            .map(|f| f.name.clone())
            .collect()
    }

    pub fn load(path: &std::path::Path) -> Result<FeatureConfig, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Parse {
            file: file.clone(),
            error: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    /// The families shipped in `pipelines/features.toml`, compiled in for `demo`.
    pub fn builtin() -> FeatureConfig {
        Self::parse(
            include_str!("../../pipelines/features.toml"),
            "pipelines/features.toml",
        )
        .expect("the shipped features.toml is valid")
    }

    pub fn parse(text: &str, file: &str) -> Result<FeatureConfig, ConfigError> {
        let config: FeatureConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_string(),
            error: e.to_string(),
        })?;
        let mut names = HashSet::new();
        for family in &config.families {
            let invalid = |problem: String| ConfigError::Invalid {
                file: file.to_string(),
                family: family.name.clone(),
                problem,
            };
            if !names.insert(family.name.clone()) {
                return Err(invalid("the name is used twice".into()));
            }
            family.check().map_err(invalid)?;
        }
        for ratio in &config.ratios {
            let invalid = |problem: String| ConfigError::Invalid {
                file: file.to_string(),
                family: ratio.name.clone(),
                problem,
            };
            if !names.insert(ratio.name.clone()) {
                return Err(invalid("the name is used twice".into()));
            }
            ratio.check(&config.families).map_err(invalid)?;
        }
        Ok(config)
    }
}

impl FeatureFamily {
    /// What makes a family computable: a known source, a value where the aggregate needs
    /// one, windows of at least a day, time only on sources that have it.
    fn check(&self) -> Result<(), String> {
        let Some(table) = schema::all()
            .into_iter()
            .find(|t| t.name == self.source && t.name != "certificate_types")
            .filter(|t| crate::sources::sources().iter().any(|s| s.name() == t.name))
        else {
            return Err(format!(
                "source '{}' is not one of profiles, events, certificates, repayments, limit_requests",
                self.source
            ));
        };
        let needs_value = matches!(
            self.aggregate,
            Aggregate::Sum
                | Aggregate::Mean
                | Aggregate::Max
                | Aggregate::Min
                | Aggregate::DistinctCount
        );
        if needs_value && self.value.is_none() {
            return Err(format!("aggregate {:?} needs `value`", self.aggregate));
        }
        if self.window_days().iter().any(|w| matches!(w, Some(0)))
            || self
                .windows
                .iter()
                .zip(self.window_days())
                .any(|(_, d)| d.is_none())
        {
            return Err(format!(
                "windows {:?}: each must look like \"30d\" with at least one day",
                self.windows
            ));
        }
        if table.time_column.is_none() && (!self.windows.is_empty() || self.time.is_some()) {
            return Err(format!(
                "source '{}' is a snapshot: it takes no windows and no time",
                self.source
            ));
        }
        if table.time_column.is_none() && self.aggregate == Aggregate::DaysSinceLast {
            return Err("days_since_last needs a source with a time column".into());
        }
        if self.aggregate == Aggregate::Share && self.key.is_none() {
            return Err("share needs a `key` to share the total among".into());
        }
        if self.top_k == Some(0) {
            return Err("top_k must be at least 1".into());
        }
        Ok(())
    }
}

impl Ratio {
    /// Both sides must be features some family makes.
    fn check(&self, families: &[FeatureFamily]) -> Result<(), String> {
        for side in [&self.numerator, &self.denominator] {
            let made_by_a_family = families.iter().any(|f| {
                side.strip_prefix(&f.name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['_', '[']))
            });
            if !made_by_a_family {
                return Err(format!("'{side}' is not a feature any family makes"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_families_load() {
        let config = FeatureConfig::builtin();
        assert!(config.families.len() >= 5);
    }

    #[test]
    fn a_bad_family_is_named_with_the_problem() {
        let text = r#"
            [[family]]
            name = "spend"
            source = "events"
            aggregate = "sum"
        "#;
        let err = FeatureConfig::parse(text, "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.toml") && err.contains("'spend'") && err.contains("value"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = r#"
            [[family]]
            name = "x"
            source = "events"
            aggregate = "count"
            colour = "red"
        "#;
        let err = FeatureConfig::parse(text, "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn a_ratio_of_an_unknown_feature_is_refused() {
        let text = r#"
            [[family]]
            name = "late"
            source = "repayments"
            aggregate = "count"
            [[ratio]]
            name = "late_share"
            numerator = "late"
            denominator = "statments"
        "#;
        let err = FeatureConfig::parse(text, "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("'statments'"), "{err}");
    }

    #[test]
    fn snapshot_sources_take_no_windows() {
        let text = r#"
            [[family]]
            name = "occupation"
            source = "profiles"
            key = "occupation"
            aggregate = "indicator"
            windows = ["30d"]
        "#;
        let err = FeatureConfig::parse(text, "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("snapshot"), "{err}");
    }
}
