//! A model's evaluation on labelled rows: headline metrics, calibration table, lift by decile,
//! the fairness view by segment, the comparison with the champion, and the curves the report
//! draws. Saved as `models/<version>/metrics.json`; `report` renders it as HTML.

use serde::{Deserialize, Serialize};

use super::calibration::Scorecard;
use super::metrics::{self, CalibrationBin, Decile, Metrics, Outcome, SegmentMetrics};
use crate::dataset::Csr;
use crate::features::FeatureDictionary;

/// Settings of evaluations and scoring, `[evaluation]` in `pipelines/nightly.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// feature families whose key splits users into segments for the fairness view
    pub segments: Vec<String>,
    pub scorecard: Scorecard,
    /// adverse reason codes kept per scored user
    pub reasons_per_user: usize,
    /// certificate suggestions kept per user in the published table
    #[serde(default = "three")]
    pub suggestions_per_user: usize,
}

impl EvaluationConfig {
    /// Scorecard numbers that give finite points, and reason and suggestion counts a table
    /// row can hold; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        let card = &self.scorecard;
        if !(card.base_points.is_finite()
            && card.base_odds.is_finite()
            && card.base_odds > 0.0
            && card.points_to_double.is_finite()
            && card.points_to_double != 0.0)
        {
            return Err(
                "scorecard: base_points must be a number, base_odds above 0 and points_to_double not 0"
                    .into(),
            );
        }
        if self.reasons_per_user > 100 || self.suggestions_per_user > 100 {
            return Err("reasons_per_user and suggestions_per_user must be at most 100".into());
        }
        Ok(())
    }
}

fn three() -> usize {
    3
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChampionComparison {
    pub version: String,
    /// NaN (`null` in JSON) when the rows hold one class only
    #[serde(deserialize_with = "super::metrics::nan_as_null::read")]
    pub auc: f64,
    /// PSI of this model's PD against the champion's on the same rows
    pub score_psi: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreBin {
    pub from_points: f64,
    pub to_points: f64,
    pub goods: usize,
    pub bads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    pub model_version: String,
    /// which rows: e.g. "holdout of the training set as of 2026-08-03"
    pub rows_evaluated: String,
    pub metrics: Metrics,
    pub uncalibrated: Option<Metrics>,
    pub oracle_auc: Option<f64>,
    /// AUC of the synthetic world's PD without its hidden parts, on the same rows
    #[serde(default)]
    pub visible_oracle_auc: Option<f64>,
    pub calibration: Vec<CalibrationBin>,
    pub deciles: Vec<Decile>,
    pub segments: Vec<SegmentMetrics>,
    /// the segment families that are protected attributes (gated by `[promotion]`)
    #[serde(default)]
    pub protected: Vec<String>,
    pub champion: Option<ChampionComparison>,
    /// (false positive rate, true positive rate), at most ~200 points
    pub roc: Vec<(f64, f64)>,
    pub score_histogram: Vec<ScoreBin>,
}

/// Each row's value of a segment family: the key of the row's feature in that family
/// (`city_tier[city_tier=2]` gives "2"), None when the row has none.
pub fn segment_values(
    rows: &Csr,
    dictionary: &FeatureDictionary,
    family: &str,
) -> Vec<Option<String>> {
    (0..rows.len())
        .map(|r| {
            rows.row(r).0.iter().find_map(|&id| {
                if (id as usize) >= dictionary.len() || dictionary.family(id) != family {
                    return None;
                }
                let name = dictionary.name(id);
                let key = name.split_once('=').map_or(name, |(_, k)| k);
                Some(key.trim_end_matches(']').to_string())
            })
        })
        .collect()
}

fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len().div_ceil(max);
    let last = *points.last().expect("not empty");
    let mut thinned: Vec<(f64, f64)> = points.into_iter().step_by(step).collect();
    if thinned.last() != Some(&last) {
        thinned.push(last);
    }
    thinned
}

fn score_histogram(points: &[f64], labels: &[f32], bins: usize) -> Vec<ScoreBin> {
    let (low, high) = points
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
    if points.is_empty() || high <= low {
        return Vec::new();
    }
    let width = (high - low) / bins as f64;
    let mut out: Vec<ScoreBin> = (0..bins)
        .map(|b| ScoreBin {
            from_points: low + b as f64 * width,
            to_points: low + (b + 1) as f64 * width,
            goods: 0,
            bads: 0,
        })
        .collect();
    for (&p, &y) in points.iter().zip(labels) {
        let b = (((p - low) / width) as usize).min(bins - 1);
        if y > 0.5 {
            out[b].bads += 1;
        } else {
            out[b].goods += 1;
        }
    }
    out
}

pub struct EvaluationInput<'a> {
    pub model_version: &'a str,
    pub rows_evaluated: String,
    pub pd: &'a [f64],
    pub uncalibrated: Option<Metrics>,
    pub labels: &'a [f32],
    pub rows: &'a Csr,
    pub dictionary: Option<&'a FeatureDictionary>,
    pub config: &'a EvaluationConfig,
    pub oracle_auc: Option<f64>,
    pub visible_oracle_auc: Option<f64>,
    /// the champion's version and its PD on the same rows
    pub champion: Option<(&'a str, &'a [f64])>,
    /// what the policy does with each row's PD, for approval rate and mean limit by segment
    /// (empty: not given)
    pub outcomes: &'a [Outcome],
    /// families reported by segment besides `config.segments` (the protected attributes)
    pub protected: &'a [String],
}

pub fn evaluate(input: EvaluationInput) -> Evaluation {
    let EvaluationInput {
        pd, labels, config, ..
    } = input;
    let mut families: Vec<&String> = config.segments.iter().collect();
    families.extend(
        input
            .protected
            .iter()
            .filter(|p| !config.segments.contains(p)),
    );
    let segments = match input.dictionary {
        Some(dictionary) => families
            .into_iter()
            .flat_map(|family| {
                let values = segment_values(input.rows, dictionary, family);
                metrics::by_segment(family, &values, pd, labels, input.outcomes)
            })
            .collect(),
        None => Vec::new(),
    };
    let points: Vec<f64> = pd.iter().map(|&p| config.scorecard.points(p)).collect();
    Evaluation {
        model_version: input.model_version.to_string(),
        rows_evaluated: input.rows_evaluated,
        metrics: metrics::evaluate(pd, labels),
        uncalibrated: input.uncalibrated,
        oracle_auc: input.oracle_auc,
        visible_oracle_auc: input.visible_oracle_auc,
        calibration: metrics::calibration_table(pd, labels, metrics::CALIBRATION_BINS),
        deciles: metrics::lift_by_decile(pd, labels),
        segments,
        protected: match input.dictionary {
            Some(_) => input.protected.to_vec(),
            None => Vec::new(),
        },
        champion: input
            .champion
            .map(|(version, champion_pd)| ChampionComparison {
                version: version.to_string(),
                auc: metrics::auc(champion_pd, labels).unwrap_or(f64::NAN),
                score_psi: metrics::psi(champion_pd, pd),
            }),
        roc: thin(metrics::roc(pd, labels), 200),
        score_histogram: score_histogram(&points, labels, 30),
    }
}
