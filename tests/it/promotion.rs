//! Promotion gates: a challenger that ranks worse than the champion on the same rows, or is
//! badly calibrated, or a first model below the floors, is not made champion unless forced,
//! and a forced promotion is recorded.

use redflower::cause::{Cause, Classify};
use redflower::config::Pipelines;
use redflower::dataset::Csr;
use redflower::model::evaluation::{self, EvaluationInput};
use redflower::model::{self, DeviceKind};
use redflower::nightly::{self, RunOptions, RunOutcome};
use redflower::store::{Store, layout};
use redflower::training::{self, Promote, Writes};

use crate::support::{run_date, synth_world};

/// 400 rows, half in each of two age bands; the younger band's PDs are declined 3 times in 10.
#[test]
fn a_protected_segment_approved_far_less_often_is_refused_and_reported_by_ratio() {
    let pipelines = Pipelines::builtin();
    let mut gates = pipelines.nightly.promotion.clone();
    let mut dictionary = redflower::features::FeatureDictionary::default();
    let young = dictionary.id_or_insert("age_band[age_from=20]", "age_band");
    let older = dictionary.id_or_insert("age_band[age_from=40]", "age_band");
    let rows = Csr {
        users: (0..400).collect(),
        offsets: (0..=400).collect(),
        ids: (0..400)
            .map(|i| if i % 2 == 0 { young } else { older })
            .collect(),
        values: vec![1.0; 400],
    };
    let labels: Vec<f32> = (0..400).map(|i| f32::from(u8::from(i % 7 == 0))).collect();
    let pd: Vec<f64> = (0..400)
        .map(|i| match (i % 2 == 0, i % 20 < 6) {
            (true, true) => 0.5, // declined: above every grade
            _ => 0.02 + 0.1 * f64::from(labels[i as usize]),
        })
        .collect();
    let outcomes = training::policy_outcomes(&pipelines.policy, &pd);
    let protected = pipelines.features.protected_families();
    assert_eq!(protected, ["age_band"]);
    let evaluation = evaluation::evaluate(EvaluationInput {
        model_version: "challenger",
        rows_evaluated: "test rows".into(),
        pd: &pd,
        uncalibrated: None,
        labels: &labels,
        rows: &rows,
        dictionary: Some(&dictionary),
        config: &pipelines.nightly.evaluation,
        oracle_auc: None,
        visible_oracle_auc: None,
        champion: None,
        outcomes: &outcomes,
        protected: &protected,
    });
    let bands: Vec<_> = evaluation
        .segments
        .iter()
        .filter(|s| s.segment == "age_band")
        .collect();
    assert_eq!(bands.len(), 2, "{:?}", evaluation.segments);
    let (y, o) = (bands[0], bands[1]);
    assert_eq!((y.value.as_str(), o.value.as_str()), ("20", "40"));
    assert!((y.approval_rate.unwrap() - 0.7).abs() < 1e-9 && o.approval_rate == Some(1.0));
    assert!((y.approval_ratio.unwrap() - 0.7).abs() < 1e-9 && o.approval_ratio == Some(1.0));
    assert!(y.limit_ratio.unwrap() < 1.0 && o.limit_ratio == Some(1.0));
    assert!(y.auc_ratio.is_some() && o.auc_ratio.is_some());
    // 0.7 of the best segment's approval rate is under the four-fifths floor
    let refusals = gates.refusals(&evaluation);
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("age_band=20: approval rate 0.700")
                && r.contains("min_approval_ratio")),
        "{refusals:?}"
    );
    // a segment too small to gate is reported, not gated
    gates.min_segment_rows = 201;
    assert!(gates.disparity_refusals(&evaluation).is_empty());
    gates.min_segment_rows = 100;
    gates.min_approval_ratio = 0.6;
    assert!(gates.disparity_refusals(&evaluation).is_empty());
}

#[test]
fn a_challenger_is_measured_against_the_champion_on_the_same_rows_or_the_floors() {
    let gates = Pipelines::builtin().nightly.promotion;
    let labels: Vec<f32> = (0..400).map(|i| f32::from(u8::from(i % 5 == 0))).collect();
    // the champion ranks perfectly; the challenger's ranking is half noise
    let champion: Vec<f64> = labels.iter().map(|&y| 0.1 + 0.5 * f64::from(y)).collect();
    let challenger: Vec<f64> = (labels.iter().enumerate())
        .map(|(i, &y)| 0.1 + 0.3 * f64::from(y) + 0.4 * ((i * 7919 % 100) as f64 / 100.0))
        .collect();
    let rows = Csr {
        users: (0..400).collect(),
        offsets: vec![0; 401],
        ..Default::default()
    };
    let config = Pipelines::builtin().nightly.evaluation;
    let evaluate = |pd: &[f64], against: Option<(&str, &[f64])>| {
        evaluation::evaluate(EvaluationInput {
            model_version: "challenger",
            rows_evaluated: "test rows".into(),
            pd,
            uncalibrated: None,
            labels: &labels,
            rows: &rows,
            dictionary: None,
            config: &config,
            oracle_auc: None,
            visible_oracle_auc: None,
            champion: against,
            outcomes: &[],
            protected: &[],
        })
    };
    let worse = evaluate(&challenger, Some(("champ", &champion)));
    let refusals = gates.refusals(&worse);
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("below champion champ's")),
        "{refusals:?}"
    );
    // the champion against itself passes the ranking gate
    let same = evaluate(&champion, Some(("champ", &champion)));
    assert!(
        !gates.refusals(&same).iter().any(|r| r.contains("champion")),
        "{:?}",
        gates.refusals(&same)
    );
    // with no champion, the floor: a ranking no better than chance is refused
    let chance: Vec<f64> = (0..400).map(|i| 0.2 + (i % 2) as f64 * 0.01).collect();
    let alone = evaluate(&chance, None);
    assert!(
        gates.refusals(&alone).iter().any(|r| r.contains("floor")),
        "{:?}",
        gates.refusals(&alone)
    );
}

#[tokio::test]
async fn the_first_night_below_the_floors_publishes_nothing_and_force_is_recorded() {
    let store = Store::open("memory://promotion-gates").unwrap();
    synth_world(&store, 3_000, 41).await;
    let mut strict = Pipelines::builtin();
    strict.nightly.promotion.min_auc = 0.999;
    let err = nightly::run(&store, run_date(), &strict, DeviceKind::Cpu)
        .await
        .expect_err("refused by the floor");
    assert_eq!(err.cause(), Cause::GateRefused, "{err}");
    assert!(err.to_string().contains("min_auc"), "{err}");
    assert!(model::champion(&store).await.unwrap().is_none());
    assert!(
        store.list(layout::MANIFESTS).await.unwrap().is_empty(),
        "nothing published"
    );
    // --force promotes past the floor: the run says so and the champion record keeps it
    let forced = RunOptions {
        force: true,
        ..RunOptions::new(DeviceKind::Cpu)
    };
    let other = Store::open("memory://promotion-gates-forced").unwrap();
    synth_world(&other, 3_000, 41).await;
    let RunOutcome::Published(report) = nightly::run_with(&other, run_date(), &strict, &forced)
        .await
        .unwrap()
    else {
        panic!("a whole run publishes")
    };
    assert!(report.trained_tonight);
    assert!(
        report.forced_past.iter().any(|r| r.contains("min_auc")),
        "{:?}",
        report.forced_past
    );
    let recorded = model::champion(&other).await.unwrap().unwrap();
    assert_eq!(recorded.forced_past, Some(report.forced_past.clone()));

    // a challenger trained with --promote on a calibration bound no model meets: registered,
    // not promoted; with --force, promoted and the failed gate recorded
    let shipped = Pipelines::builtin();
    let report = nightly::run(&store, run_date(), &shipped, DeviceKind::Cpu)
        .await
        .unwrap();
    assert!(report.trained_tonight);
    let champion = model::champion(&store).await.unwrap().unwrap();
    assert_eq!(champion.forced_past, None);
    let window = training::labelled_window(&store, run_date(), &shipped, Writes::Nothing)
        .await
        .unwrap();
    let mut exacting = Pipelines::builtin();
    exacting.nightly.promotion.max_ece = 0.0;
    exacting.nightly.training.seed = 8; // another model than the champion
    let device = DeviceKind::Cpu.device().unwrap();
    let train = async |promote| {
        let (_, outcome) = training::train_and_register(
            &store,
            &window.set,
            &window.dictionary,
            "challenger".into(),
            &exacting,
            &device,
            promote,
        )
        .await
        .unwrap();
        outcome
    };
    let refused = train(Promote::IfGatesPass).await;
    assert!(!refused.promoted);
    assert!(
        refused
            .promotion
            .refusals
            .iter()
            .any(|r| r.contains("max_ece")),
        "{:?}",
        refused.promotion
    );
    assert_eq!(
        model::champion(&store).await.unwrap().unwrap().version,
        champion.version
    );
    let forced = train(Promote::Force).await;
    assert!(forced.promoted && forced.promotion.forced);
    let now = model::champion(&store).await.unwrap().unwrap();
    assert_eq!(now.version, forced.card.version);
    assert_eq!(now.forced_past.as_ref(), Some(&forced.promotion.refusals));
    assert_eq!(now.previous.as_deref(), Some(champion.version.as_str()));
}
