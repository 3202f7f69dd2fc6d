//! The per-user stages (score, limits, suggest) and what they write, one user part at a time.
//! Part i of P holds the users of `UserShard` i/P (P is `[publish] parts`), so the job's node
//! holds one part's features, scores, facts, decisions and rows at once, never every user's.
//! Each part writes its scores, its decision records and its part of the table, then
//! checkpoints a summary (`PartDone`); the publish commits one manifest over every part from
//! the summaries alone, and the run report's counts and fairness come from them too.
//!
//! Parts spread over machines with `nightly --shard i/n` (`decide_shard`): after
//! `--stop-after train`, each machine does the parts j with j mod n == i under a lease of its
//! own; `nightly --resume` does whatever is left and publishes.

use std::collections::BTreeMap;
use std::time::Instant;

use chrono::NaiveDate;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::checkpoint::Checkpoints;
use super::report::segment_families;
use super::stages::{Run, Trained};
use super::{NightlyError, RunOptions, lease};
use crate::audit;
use crate::config::Pipelines;
use crate::dataset::Csr;
use crate::engine;
use crate::features::{self, FeatureDictionary, WhatIf};
use crate::model::evaluation::segment_values;
use crate::model::metrics::{self, SegmentMetrics};
use crate::model::{self, Model};
use crate::policy::{Decision, Grade, HeldCertificate, InputsByPart, Reason, UserFacts, Withheld};
use crate::publish::{self, DataFile, LimitRow, Manifest, TableTotals};
use crate::scoring::{self, Scores};
use crate::sources;
use crate::store::{Store, layout};
use crate::suggestions;
use crate::user_index::UserShard;

/// What one part decided and wrote: its checkpoint, and all a publish and a report need of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PartDone {
    /// `INDEX/COUNT`
    pub part: String,
    pub model_version: String,
    /// its part of the table, and its decision records
    pub table: DataFile,
    pub decisions: DataFile,
    pub totals: TableTotals,
    pub counts: DecisionCounts,
    pub segments: Vec<SegmentTally>,
    pub seconds: PartSeconds,
}

/// How many of a part's users each kind of decision reached (the run report's counts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct DecisionCounts {
    pub capped_by_request: usize,
    pub boosted: usize,
    pub boosts_withheld_for_fraud: usize,
    pub with_scenario_limits: usize,
}

impl DecisionCounts {
    fn of(rows: &[LimitRow]) -> DecisionCounts {
        let users_with = |reason: &dyn Fn(&Reason) -> bool| {
            rows.iter()
                .filter(|r| r.decision.reasons.iter().any(reason))
                .count()
        };
        DecisionCounts {
            capped_by_request: users_with(&|r| *r == Reason::CappedByUserRequest),
            boosted: rows
                .iter()
                .filter(|r| r.decision.certificate_boost > 0.0)
                .count(),
            boosts_withheld_for_fraud: users_with(&|r| {
                matches!(r, Reason::BoostWithheld(Withheld::Fraud(_)))
            }),
            with_scenario_limits: rows
                .iter()
                .filter(|r| !r.decision.scenarios.is_empty())
                .count(),
        }
    }

    fn add(&mut self, other: &DecisionCounts) {
        self.capped_by_request += other.capped_by_request;
        self.boosted += other.boosted;
        self.boosts_withheld_for_fraud += other.boosts_withheld_for_fraud;
        self.with_scenario_limits += other.with_scenario_limits;
    }
}

/// One segment value's decisions in a part: sums the fairness report adds up over parts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SegmentTally {
    pub segment: String,
    pub value: String,
    pub rows: usize,
    pub pd_sum: f64,
    pub approved: usize,
    pub limit_sum: f64,
}

/// Seconds a part spent in each stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct PartSeconds {
    pub score: f64,
    pub limits: f64,
    pub suggest: f64,
    /// decision records and the table part
    pub write: f64,
}

impl PartSeconds {
    fn add(&mut self, other: &PartSeconds) {
        self.score += other.score;
        self.limits += other.limits;
        self.suggest += other.suggest;
        self.write += other.write;
    }
}

/// What every part reads besides its own users: the model, the policy's inputs (queried once
/// per process, read back a part at a time) and the suggestions' candidates.
struct PartWork<'a> {
    run: &'a Run<'a>,
    model: &'a Model,
    dictionary: &'a FeatureDictionary,
    inputs: InputsByPart,
    /// the table tonight's limits start from (`publish::table_before`)
    previous: Option<Manifest>,
    candidates: Vec<HeldCertificate>,
    what_ifs: Vec<WhatIf>,
    /// the folder this process writes its table parts into (`layout::nightly_table_run`)
    table_run: String,
    run_folder: String,
}

impl<'a> PartWork<'a> {
    async fn load(
        run: &'a Run<'a>,
        run_id: &str,
        model: &'a Model,
        dictionary: &'a FeatureDictionary,
    ) -> Result<PartWork<'a>, NightlyError> {
        let (store, run_date) = (run.store, run.run_date);
        let policy = &run.pipelines.policy;
        let snapshot = sources::snapshot_before(store, "profiles", run_date).await?;
        let count = run.user_parts();
        let inputs =
            crate::policy::load_inputs_by_part(run.ctx, run_date, snapshot, policy, count).await?;
        // what users upload most is counted over every user, a part at a time
        let mut held = suggestions::HeldCounts::default();
        for index in 0..count {
            held.add(&inputs.part(index)?.certificates);
        }
        let candidates = held.representatives();
        let features = &run.pipelines.features;
        let what_ifs = suggestions::what_ifs(features, dictionary, &candidates, run_date).await?;
        let previous = publish::table_before(store, run_date).await?;
        let expected = publish::latest(store).await?.map_or(1, |m| m.version + 1);
        // a folder of this process's own: two holders of one part never write one table file
        let writer = format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f"),
            std::process::id()
        );
        Ok(PartWork {
            run,
            model,
            dictionary,
            inputs,
            previous,
            candidates,
            what_ifs,
            table_run: layout::nightly_table_run(expected, run_date, run_id, &writer),
            run_folder: layout::run_folder(run_date, run_id),
        })
    }

    /// Scores, limits and suggestions of the users of `part`, written as their scores, their
    /// decision records and their part of the table.
    async fn decide(&self, part: UserShard) -> Result<PartDone, NightlyError> {
        let (run, store) = (self.run, self.run.store);
        let mut seconds = PartSeconds::default();
        let clock = Instant::now();
        let rows = Csr::from_features(&features::read_part(store, run.run_date, part).await?);
        let scores = self.score(&rows);
        scoring::write_part(store, run.run_date, part, &scores).await?;
        seconds.score = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let previous = match &self.previous {
            Some(table) => publish::limits_in(store, table, part).await?,
            None => Default::default(),
        };
        let inputs = self.inputs.part(part.index)?;
        let facts: Vec<UserFacts> = scores
            .users
            .par_iter()
            .map(|user| inputs.facts(*user, previous.get(user)))
            .collect();
        drop((previous, inputs));
        let policy = &run.pipelines.policy;
        let decisions: Vec<Decision> = (0..scores.users.len())
            .into_par_iter()
            .map(|i| policy.decide(scores.pd[i], &facts[i]))
            .collect();
        seconds.limits = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let limit_rows = self.suggest(&rows, &scores, &facts, decisions);
        seconds.suggest = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let reasons = audit::records::model_reasons(self.model, &rows, self.dictionary, &scores);
        let decisions =
            audit::records::write(store, &self.run_folder, part, &scores, &facts, &reasons).await?;
        let table =
            publish::write_part(store, &self.table_run, part, &limit_rows, run.run_date).await?;
        seconds.write = clock.elapsed().as_secs_f64();
        Ok(PartDone {
            part: part.to_string(),
            model_version: self.model.card.version.clone(),
            table,
            decisions,
            totals: TableTotals::of(&limit_rows),
            counts: DecisionCounts::of(&limit_rows),
            segments: self.tally(&rows, &limit_rows),
            seconds,
        })
    }

    fn score(&self, rows: &Csr) -> Scores {
        let withheld = self.run.pipelines.features.protected_families();
        let reasons = scoring::ReasonCodes {
            per_user: self.run.pipelines.nightly.evaluation.reasons_per_user,
            withheld_families: &withheld,
        };
        scoring::score(self.model, rows, self.dictionary, reasons, &self.run.device)
    }

    /// The published rows: each decision with the model's reasons after the policy's, and
    /// the certificates that would raise the limit.
    fn suggest(
        &self,
        rows: &Csr,
        scores: &Scores,
        facts: &[UserFacts],
        decisions: Vec<Decision>,
    ) -> Vec<LimitRow> {
        let run = self.run;
        let suggested = suggestions::suggest(
            self.model,
            rows,
            &run.pipelines.policy,
            facts,
            &decisions,
            &self.candidates,
            &self.what_ifs,
            &run.device,
            run.pipelines.nightly.evaluation.suggestions_per_user,
        );
        decisions
            .into_par_iter()
            .zip(suggested.into_par_iter())
            .enumerate()
            .map(|(i, (mut decision, suggestions))| {
                let model_reasons = scores.reasons[i].iter().cloned().map(Reason::Model);
                decision.reasons.extend(model_reasons);
                LimitRow {
                    user_id: scores.users[i],
                    pd: scores.pd[i],
                    decision,
                    suggestions,
                }
            })
            .collect()
    }

    /// The part's decisions by segment value (`rows` are the scored rows, in the order of
    /// `published`).
    fn tally(&self, rows: &Csr, published: &[LimitRow]) -> Vec<SegmentTally> {
        let mut tallies = Vec::new();
        for family in segment_families(self.run) {
            let values = segment_values(rows, self.dictionary, &family);
            let mut by_value: BTreeMap<String, SegmentTally> = BTreeMap::new();
            for (value, row) in values.into_iter().zip(published) {
                let Some(value) = value else { continue };
                let tally = by_value
                    .entry(value.clone())
                    .or_insert_with(|| SegmentTally {
                        segment: family.clone(),
                        value,
                        rows: 0,
                        pd_sum: 0.0,
                        approved: 0,
                        limit_sum: 0.0,
                    });
                tally.rows += 1;
                tally.pd_sum += row.pd;
                tally.approved += usize::from(row.decision.grade != Grade::Decline);
                tally.limit_sum += row.decision.credit_limit;
            }
            tallies.extend(by_value.into_values());
        }
        tallies
    }
}

/// The parts of `count` a machine of `shard` does (every part when None), each from its
/// checkpoint when this run has one, else decided, written and checkpointed now; what every
/// part reads (`PartWork`) is loaded only once a part needs deciding.
pub(super) async fn decide_parts(
    run: &Run<'_>,
    checkpoints: &Checkpoints,
    model: &Model,
    dictionary: &FeatureDictionary,
    count: u32,
    shard: Option<UserShard>,
) -> Result<Vec<(PartDone, bool)>, NightlyError> {
    let mine = |index: u32| shard.is_none_or(|s| index % s.count == s.index);
    let mut work = None;
    let mut done = Vec::new();
    for index in (0..count).filter(|&i| mine(i)) {
        let part = UserShard { index, count };
        let stage = layout::part_stage(index, count);
        if let Some(part_done) = checkpoints.get::<PartDone>(&stage).await? {
            done.push((part_done, true));
            continue;
        }
        let work = match &mut work {
            Some(work) => work,
            None => {
                let run_id = &checkpoints.run.run_id;
                work.insert(PartWork::load(run, run_id, model, dictionary).await?)
            }
        };
        run.still_leased()?;
        let part_done = work.decide(part).await?;
        run.still_leased()?;
        checkpoints.put(&stage, &part_done).await?;
        info!(part = %part, users = part_done.totals.rows, "user part decided");
        done.push((part_done, false));
    }
    Ok(done)
}

/// Every part's outcome added up: what the publish commits and the report counts.
#[derive(Debug, Default)]
pub(super) struct Decided {
    /// the parts (`INDEX/COUNT`), their table files and decision records, in part order
    pub parts: Vec<String>,
    pub tables: Vec<DataFile>,
    pub decisions: Vec<DataFile>,
    pub totals: TableTotals,
    pub counts: DecisionCounts,
    pub segments: Vec<SegmentTally>,
    /// what deciding the parts took in this process
    pub seconds: PartSeconds,
    /// parts taken from checkpoints (another machine's, or an interrupted try's)
    pub resumed: usize,
}

impl Decided {
    /// The parts of one table, in part order, all scored by `model_version`.
    pub fn of(parts: Vec<(PartDone, bool)>, model_version: &str) -> Result<Decided, NightlyError> {
        let mut decided = Decided::default();
        for (part, resumed) in parts {
            if part.model_version != model_version {
                return Err(NightlyError::Resume(format!(
                    "user part {} was decided with model {}, this run scores with {model_version}: run the date again with --rerun",
                    part.part, part.model_version
                )));
            }
            decided.parts.push(part.part);
            decided.tables.push(part.table);
            decided.decisions.push(part.decisions);
            decided.totals.add(&part.totals);
            decided.counts.add(&part.counts);
            decided.segments.extend(part.segments);
            // stage times are this process's: a part taken from a checkpoint took none here
            if !resumed {
                decided.seconds.add(&part.seconds);
            }
            decided.resumed += usize::from(resumed);
        }
        Ok(decided)
    }

    /// Checks every part's table file and decision records against what its checkpoint
    /// recorded (a shard holder that lost its lease may have written over a file after
    /// another holder checkpointed it); a part that changed loses its checkpoint.
    pub async fn verify(&self, store: &Store, run_date: NaiveDate) -> Result<(), NightlyError> {
        let files = self.tables.iter().zip(&self.decisions);
        for (part, (table, decisions)) in self.parts.iter().zip(files) {
            let checked = publish::verify_files(store, &[table.clone(), decisions.clone()]).await;
            if let Err(error) = checked {
                if let Ok(shard) = part.parse::<UserShard>() {
                    let stage = layout::part_stage(shard.index, shard.count);
                    store.delete(&layout::checkpoint(run_date, &stage)).await?;
                }
                return Err(NightlyError::PartChanged {
                    part: part.clone(),
                    problem: error.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Tonight's decisions by segment, with the AUC of the holdout's segments merged in and
    /// every ratio set (what `metrics::by_segment` gives over all rows, from the parts' sums).
    pub fn fairness(&self, run: &Run<'_>, trained: &Trained) -> Vec<SegmentMetrics> {
        let mut out = Vec::new();
        for family in segment_families(run) {
            let mut by_value: BTreeMap<&str, (usize, f64, usize, f64)> = BTreeMap::new();
            for tally in self.segments.iter().filter(|t| t.segment == family) {
                let sums = by_value.entry(tally.value.as_str()).or_default();
                sums.0 += tally.rows;
                sums.1 += tally.pd_sum;
                sums.2 += tally.approved;
                sums.3 += tally.limit_sum;
            }
            let mut segments: Vec<SegmentMetrics> = by_value
                .into_iter()
                .map(|(value, (rows, pd_sum, approved, limit_sum))| {
                    let n = rows as f64;
                    SegmentMetrics {
                        segment: family.clone(),
                        value: value.to_string(),
                        rows,
                        defaults: 0,
                        default_rate: 0.0,
                        mean_pd: pd_sum / n,
                        auc: trained
                            .holdout_segments
                            .iter()
                            .find(|h| h.segment == family && h.value == value)
                            .and_then(|h| h.auc),
                        approval_rate: Some(approved as f64 / n),
                        mean_limit: Some(limit_sum / n),
                        approval_ratio: None,
                        limit_ratio: None,
                        auc_ratio: None,
                    }
                })
                .collect();
            metrics::set_ratios(&mut segments);
            out.extend(segments);
        }
        out
    }
}

/// What one machine's shard of the user parts did.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    #[serde(with = "crate::serde_date")]
    pub run_date: NaiveDate,
    pub shard: String,
    pub run_id: String,
    /// the parts it decided, and those it found decided already
    pub parts: Vec<String>,
    pub parts_resumed: usize,
    pub users: u64,
    pub model_version: String,
    pub seconds: f64,
}

/// Decides the user parts of `shard` of a run stopped after train (`nightly --stop-after
/// train`), for runs spread over machines (or GPUs): each machine runs one shard under a lease
/// of its own; `nightly --resume` then does what is left and publishes one table.
pub async fn decide_shard(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
    shard: UserShard,
) -> Result<ShardReport, NightlyError> {
    let folder = layout::shard_lease(run_date, shard.index, shard.count);
    let lease = lease::acquire(store, &folder, options.lease_ttl).await?;
    let outcome = match engine::session_for(&pipelines.nightly.engine, &options.engine).await {
        Ok(ctx) => {
            let run = Run::new(&ctx, store, run_date, pipelines, options, &lease)?;
            let outcome = decide_leased_shard(&run, shard).await;
            if let Err(error) = sources::drop_staging(store, &ctx).await {
                tracing::warn!(%error, "could not remove this shard's staged sources");
            }
            outcome
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "could not release the shard lease");
    }
    outcome
}

/// [`decide_shard`] while `run.lease` (the shard's) holds: a holder that lost it (paused past
/// its expiry, taken over) checkpoints no part after that.
pub(super) async fn decide_leased_shard(
    run: &Run<'_>,
    shard: UserShard,
) -> Result<ShardReport, NightlyError> {
    let started = Instant::now();
    let (store, run_date) = (run.store, run.run_date);
    let not_ready = || {
        NightlyError::NotReady(format!(
            "shard {shard} of {run_date}: the run has not finished its train stage on {}; run `redflower nightly --date {run_date} --stop-after train` first",
            store.url()
        ))
    };
    let checkpoints = Checkpoints::resume(store, run_date, run.pipelines)
        .await?
        .ok_or_else(not_ready)?;
    let trained = checkpoints
        .get::<Trained>("train")
        .await?
        .ok_or_else(not_ready)?;
    sources::register(run.ctx, store, run_date).await?;
    let dictionary = FeatureDictionary::load(store).await?;
    let model = model::load(store, &trained.model_version, &run.device).await?;
    model.check_dictionary(&dictionary)?;
    let count = run.user_parts();
    let parts = decide_parts(run, &checkpoints, &model, &dictionary, count, Some(shard)).await?;
    let names = parts.iter().map(|(p, _)| p.part.clone()).collect();
    let decided = Decided::of(parts, &trained.model_version)?;
    Ok(ShardReport {
        run_date,
        shard: shard.to_string(),
        run_id: checkpoints.run.run_id.clone(),
        parts: names,
        parts_resumed: decided.resumed,
        users: decided.totals.rows,
        model_version: trained.model_version,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::model::DeviceKind;
    use crate::nightly::{Stage, run_with};

    /// A shard holder stalled past its lease's expiry (another machine may have taken the
    /// shard over) finds the lease gone before it decides a part, and checkpoints nothing.
    #[tokio::test]
    async fn a_shard_that_lost_its_lease_checkpoints_nothing() {
        let store = Store::open("memory://shard-fencing").unwrap();
        let run_date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let world = crate::synth::WorldConfig {
            users: 600,
            days: 150,
            end: run_date,
            seed: 3,
        };
        crate::synth::generate(&store, &world).await.unwrap();
        let pipelines = Pipelines::builtin();
        let options = RunOptions {
            stop_after: Some(Stage::Train),
            ..RunOptions::new(DeviceKind::Cpu)
        };
        run_with(&store, run_date, &pipelines, &options)
            .await
            .unwrap();
        let shard = UserShard { index: 0, count: 2 };
        let folder = layout::shard_lease(run_date, shard.index, shard.count);
        let ttl = Duration::from_millis(300);
        let stalled = lease::acquire(&store, &folder, ttl).await.unwrap();
        stalled.stall();
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let ctx = engine::session_for(&pipelines.nightly.engine, &options.engine)
            .await
            .unwrap();
        let run = Run::new(&ctx, &store, run_date, &pipelines, &options, &stalled).unwrap();
        let error = decide_leased_shard(&run, shard).await.unwrap_err();
        assert!(matches!(error, NightlyError::Lease(_)), "{error}");
        let checkpoints = store.list(&layout::checkpoints(run_date)).await.unwrap();
        assert!(
            checkpoints.iter().all(|(path, _)| !path.contains("users-")),
            "{checkpoints:?}"
        );
    }
}
