//! The train stage's holdout as the model sees it: each held-out labelled user's PD, label and
//! segment values, scored one user part at a time with a champion, so the stage never holds
//! the holdout's rows (a fifth of the labelled users, ~60 feature values each) at once; what
//! it keeps is ~40 bytes a holdout user. Reads the training date's features; writes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use super::stages::Run;
use super::{NightlyError, report};
use crate::dataset::{self, Csr, Labels};
use crate::features::{self, FeatureDictionary};
use crate::model::evaluation::segment_values;
use crate::model::metrics::SegmentMetrics;
use crate::model::train::Split;
use crate::model::{self, Metrics, Model};
use crate::user_index::UserShard;

/// The holdout, scored, in user order (as one set read whole would hold it).
pub(super) struct ScoredHoldout {
    pub users: Vec<u64>,
    pub pd: Vec<f64>,
    pub labels: Vec<f32>,
    /// `[family][user]`: the user's value of each segment family (`report::segment_families`)
    segments: Vec<(String, Vec<Option<Arc<str>>>)>,
    /// segment values, each stored once
    interned: HashMap<String, Arc<str>>,
}

/// The size of the whole labelled set the holdout was taken from.
pub(super) struct LabelledSize {
    pub rows: usize,
    pub defaults: usize,
}

impl ScoredHoldout {
    fn new(families: Vec<String>) -> ScoredHoldout {
        ScoredHoldout {
            users: Vec::new(),
            pd: Vec::new(),
            labels: Vec::new(),
            segments: families.into_iter().map(|f| (f, Vec::new())).collect(),
            interned: HashMap::new(),
        }
    }

    /// `model` on the holdout users of the training features, read one user part at a time.
    pub async fn by_part(
        run: &Run<'_>,
        model: &Model,
        labels: &Labels,
        dictionary: &FeatureDictionary,
    ) -> Result<(ScoredHoldout, LabelledSize), NightlyError> {
        let (as_of, count) = (run.training_as_of, run.user_parts());
        let training = &run.pipelines.nightly.training;
        let mut holdout = ScoredHoldout::new(report::segment_families(run));
        let mut size = LabelledSize {
            rows: 0,
            defaults: 0,
        };
        for index in 0..count {
            let part = features::read_part(run.store, as_of, UserShard { index, count }).await?;
            let part = Csr::from_features(&part);
            // (row, defaulted) of the part's labelled users: one label lookup a user
            let labelled: Vec<(usize, bool)> = (0..part.len())
                .filter_map(|i| Some((i, labels.get(part.users[i])?)))
                .collect();
            size.rows += labelled.len();
            size.defaults += labelled.iter().filter(|(_, defaulted)| *defaulted).count();
            let (held, held_labels): (Vec<usize>, Vec<f32>) = labelled
                .into_iter()
                .filter(|&(i, _)| Split::of(part.users[i], training) == Split::Holdout)
                .map(|(i, defaulted)| (i, f32::from(u8::from(defaulted))))
                .unzip();
            holdout.add(&part.select(&held), held_labels, model, run, dictionary);
        }
        dataset::check_size(as_of, size.rows, size.defaults)?;
        Ok((holdout.in_user_order(), size))
    }

    /// `model` on the holdout of a training set held whole (the night that trains its first
    /// model reads the set whole to train on).
    pub fn of_set(
        run: &Run<'_>,
        model: &Model,
        set: &dataset::TrainingSet,
        dictionary: &FeatureDictionary,
    ) -> ScoredHoldout {
        let (rows, labels) = crate::training::holdout(set, &run.pipelines.nightly.training);
        let mut holdout = ScoredHoldout::new(report::segment_families(run));
        holdout.add(&rows, labels, model, run, dictionary);
        holdout.in_user_order()
    }

    fn add(
        &mut self,
        rows: &Csr,
        labels: Vec<f32>,
        model: &Model,
        run: &Run<'_>,
        dictionary: &FeatureDictionary,
    ) {
        self.pd.extend(model.pd(rows, &run.device));
        self.users.extend_from_slice(&rows.users);
        self.labels.extend(labels);
        let interned = &mut self.interned;
        for (family, values) in &mut self.segments {
            let family_values = segment_values(rows, dictionary, family).into_iter();
            values.extend(family_values.map(|value| {
                value.map(|v| {
                    Arc::clone(interned.entry(v).or_insert_with_key(|v| v.as_str().into()))
                })
            }));
        }
    }

    fn in_user_order(mut self) -> ScoredHoldout {
        let mut order: Vec<usize> = (0..self.users.len()).collect();
        order.sort_unstable_by_key(|&i| self.users[i]);
        self.pd = order.iter().map(|&i| self.pd[i]).collect();
        self.users = order.iter().map(|&i| self.users[i]).collect();
        self.labels = order.iter().map(|&i| self.labels[i]).collect();
        for (_, values) in &mut self.segments {
            *values = order.iter().map(|&i| values[i].clone()).collect();
        }
        self
    }

    pub fn metrics(&self) -> Metrics {
        model::metrics::evaluate(&self.pd, &self.labels)
    }

    /// The holdout's metrics by segment, family by family.
    pub fn by_segment(&self) -> Vec<SegmentMetrics> {
        self.segments
            .iter()
            .flat_map(|(family, values)| {
                model::metrics::by_segment(family, values, &self.pd, &self.labels, &[])
            })
            .collect()
    }
}
