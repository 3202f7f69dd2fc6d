//! The human summaries commands print at the end: a nightly run's and a model evaluation's.

use redflower::model::ModelCard;
use redflower::model::evaluation::Evaluation;
use redflower::model::promotion::PromotionDecision;
use redflower::nightly::NightlyReport;
use redflower::store::layout;

pub fn evaluation(card: &ModelCard, e: &Evaluation, report: &str) {
    let m = &e.metrics;
    println!();
    println!("model {} ({}) on {}", card.version, card.kind, card.data);
    println!(
        "  evaluated   on {} ({} rows, {} defaults)",
        e.rows_evaluated, m.rows, m.positives
    );
    let mut oracle = e.oracle_auc.map_or(String::new(), |o| {
        format!(
            ", oracle AUC {o:.4} (ratio {:.3}, lift share {:.3})",
            m.auc / o,
            redflower::model::metrics::lift_share(m.auc, o)
        )
    });
    if let Some(v) = e.visible_oracle_auc {
        oracle.push_str(&format!(
            ", without hidden risk {v:.4} (ratio {:.3})",
            m.auc / v
        ));
    }
    println!(
        "  ranking     AUC {:.4}, Gini {:.4}, KS {:.4}{oracle}",
        m.auc, m.gini, m.ks
    );
    if let Some(cv) = &card.cross_validation {
        println!(
            "  cross-val.  AUC {:.4} ± {:.4} over {} folds of the training rows (chose {}, {}, l2 {}, {} epochs; {} refits averaged)",
            cv.auc_mean,
            cv.auc_sd,
            cv.folds,
            cv.chosen,
            match cv.embedding_dim {
                0 => "wide only".to_string(),
                dim => format!("embedding {dim}"),
            },
            cv.l2,
            cv.epochs,
            cv.refits
        );
    }
    let before = e.uncalibrated.map_or(String::new(), |u| {
        format!(" (before calibration {:.4})", u.ece)
    });
    println!(
        "  calibration ECE {:.4}{before}; mean PD {:.4} vs default rate {:.4}; log loss {:.4}, Brier {:.4}",
        m.ece, m.mean_pd, m.default_rate, m.log_loss, m.brier
    );
    if let Some(top) = e.deciles.first() {
        println!(
            "  lift        riskiest decile: default rate {:.3}, lift {:.2}",
            top.default_rate, top.lift
        );
    }
    if let Some(c) = &e.champion {
        println!(
            "  champion    {}: AUC {:.4}; PSI of PD against it {:.4}",
            c.version, c.auc, c.score_psi
        );
    }
    for family in &e.protected {
        println!("  fairness    {}", lowest_ratios(&e.segments, family));
    }
    println!("  report      {report}");
}

/// The promotion gates' verdict on a trained model, and what happened.
pub fn promotion(decision: &PromotionDecision, asked: bool) {
    let gates = match decision.refusals.as_slice() {
        [] => "passes the promotion gates".to_string(),
        refusals => format!("fails the promotion gates: {}", refusals.join("; ")),
    };
    let what = match (decision.promoted, decision.forced, asked) {
        (true, true, _) => "promoted anyway (--force, recorded in models/_champion.json)",
        (true, false, _) => "promoted: the nightly job scores with this model from now on",
        (false, _, true) => "not promoted (--force promotes anyway)",
        (false, _, false) => "not promoted (--promote, or redflower models promote)",
    };
    println!("  champion    {gates}; {what}");
}

pub fn nightly_summary(report: &NightlyReport) {
    println!();
    println!(
        "nightly run {} on {} ({:.1}s)",
        report.run_date, report.root, report.seconds
    );
    sources_and_features(report);
    drift(report);
    model_and_limits(report);
    println!(
        "  published   version {} ({} rows, mean limit {:.0}) at {}/{}",
        report.manifest.version,
        report.manifest.row_count,
        report.manifest.mean_limit,
        report.root,
        layout::manifest(report.manifest.version)
    );
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{} {:.1}s", s.stage, s.seconds))
        .collect();
    println!("  stages      {}", stages.join(", "));
    if !report.resumed_stages.is_empty() {
        println!(
            "  resumed     run {}: took {} from its checkpoints",
            report.run_id,
            report.resumed_stages.join(", ")
        );
    }
}

fn sources_and_features(report: &NightlyReport) {
    let quarantined: u64 = report.sources.iter().map(|s| s.quarantined).sum();
    let rows: u64 = report.sources.iter().map(|s| s.rows).sum();
    println!("  sources     {rows} raw rows, {quarantined} quarantined (see quarantine/)");
    for source in report.sources.iter().filter(|s| s.quarantined > 0) {
        let reasons: Vec<String> = source
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        println!("              {}: {}", source.source, reasons.join(", "));
    }
    for f in &report.features {
        println!(
            "  features    as of {}: {} users, {} non-zeros, {} distinct features ({:.1}s)",
            f.as_of, f.users, f.rows, f.distinct_features, f.seconds
        );
    }
    if let Some(last) = report.features.last() {
        println!("  dictionary  {} features", last.dictionary_size);
    }
    println!("  strongest   (information value, univariate AUC on the training set)");
    for s in report.strongest_features.iter().take(5) {
        println!(
            "              {:<44} IV {:.3}  AUC {:.3}",
            s.name, s.information_value, s.univariate_auc
        );
    }
}

fn drift(report: &NightlyReport) {
    match report.drift_baseline {
        None => println!(
            "  drift       no earlier feature stats to compare with (first run on this root)"
        ),
        Some(baseline) => {
            println!("  drift       PSI against the stats of {baseline}, highest first");
            for d in report.most_drifted.iter().take(5) {
                println!("              {:<44} PSI {:.3}", d.name, d.psi);
            }
        }
    }
}

fn model_and_limits(report: &NightlyReport) {
    println!(
        "  training    as of {}: {} users, {} defaults ({:.2}%)",
        report.training_as_of,
        report.training_rows,
        report.training_defaults,
        100.0 * report.training_defaults as f64 / report.training_rows.max(1) as f64
    );
    let share = |o: f64| redflower::model::metrics::lift_share(report.holdout.auc, o);
    let oracle = match (report.oracle_auc, report.visible_oracle_auc) {
        (None, _) => "n/a (no truth in this root)".to_string(),
        (Some(a), Some(v)) => format!(
            "{a:.4} ({v:.4} without hidden risk; lift share {:.3})",
            share(a)
        ),
        (Some(a), None) => format!("{a:.4} (lift share {:.3})", share(a)),
    };
    println!(
        "  model       {} ({}): holdout AUC {:.4}, oracle AUC {} on {} held-out users; ECE {:.4}, log loss {:.4}",
        report.model_version,
        match (report.trained_tonight, report.forced_past.as_slice()) {
            (false, _) => "the champion".to_string(),
            (true, []) => "no champion yet: trained tonight, promoted above the [promotion] floors"
                .to_string(),
            (true, failed) => format!(
                "no champion yet: trained tonight, promoted past the floors by --force: {}",
                failed.join("; ")
            ),
        },
        report.holdout.auc,
        oracle,
        report.holdout.rows,
        report.holdout.ece,
        report.holdout.log_loss
    );
    println!(
        "  limits      {} users scored; {} boosted by certificates ({} withheld by fraud checks); {} capped by their own request; {} with scenario limits",
        report.scored_users,
        report.boosted,
        report.boosts_withheld_for_fraud,
        report.capped_by_request,
        report.with_scenario_limits
    );
    for (band, count) in &report.limit_distribution {
        println!("              {band:>14}: {count}");
    }
    for family in &report.protected {
        println!("  fairness    {}", lowest_ratios(&report.fairness, family));
    }
    let erased = &report.erasures;
    if !erased.users.is_empty() {
        println!(
            "  erasure     {} users' earlier data rewritten without them: {} rows from {} files, {} published versions",
            erased.users.len(),
            erased.rows_removed + erased.published.rows_removed,
            erased.files_rewritten + erased.published.files_rewritten,
            erased.published.manifests_rewritten
        );
    }
}

/// `age_band (protected): lowest approval ratio 0.97 (age_from=20), ...` over one family's
/// segments.
pub fn lowest_ratios(
    segments: &[redflower::model::metrics::SegmentMetrics],
    family: &str,
) -> String {
    let of_family: Vec<_> = segments.iter().filter(|s| s.segment == family).collect();
    let lowest =
        |name: &str, ratio: fn(&redflower::model::metrics::SegmentMetrics) -> Option<f64>| {
            of_family
                .iter()
                .filter_map(|s| Some((s, ratio(s)?)))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(s, r)| {
                    format!(
                        "lowest {name} ratio {r:.3} ({}={}, {} users)",
                        family, s.value, s.rows
                    )
                })
        };
    let parts: Vec<String> = [
        lowest("approval", |s| s.approval_ratio),
        lowest("mean limit", |s| s.limit_ratio),
        lowest("AUC", |s| s.auc_ratio),
    ]
    .into_iter()
    .flatten()
    .collect();
    format!(
        "{family} (protected), {} segments: {}",
        of_family.len(),
        match parts.is_empty() {
            true => "no users in any segment".to_string(),
            false => parts.join("; "),
        }
    )
}
