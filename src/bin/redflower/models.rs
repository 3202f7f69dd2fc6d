//! `redflower models`: list, compare and promote registered models.

use anyhow::Result;
use clap::{Args, Subcommand};

use redflower::model;
use redflower::training;

use crate::args::{PipelinesArg, RootArg};
use crate::evaluate::WindowArgs;

#[derive(Subcommand)]
pub enum ModelsAction {
    /// Every registered model, newest first; the champion is marked.
    ///
    /// Example: redflower models list --root ./data
    List(RootArg),
    /// Two models on the same held-out users of a date's training window.
    ///
    /// Example: redflower models compare --root ./data --date 2026-11-01 A B
    Compare(CompareArgs),
    /// Make a model the champion the nightly job scores with, if its own holdout clears the
    /// floors of [promotion] (min_auc, max_ece); comparing it with the champion on the same
    /// rows is `train --promote`'s, or `models compare`.
    ///
    /// Example: redflower models promote --root ./data 2026-08-03-e10e27e0ff12
    Promote {
        #[command(flatten)]
        root: RootArg,
        #[command(flatten)]
        pipelines: PipelinesArg,
        version: String,
        /// promote even below the floors (models/_champion.json records which)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct CompareArgs {
    #[command(flatten)]
    window: WindowArgs,
    first: String,
    second: String,
}

pub async fn run(action: ModelsAction) -> Result<()> {
    match action {
        ModelsAction::List(root) => list(root).await,
        ModelsAction::Compare(args) => compare(args).await,
        ModelsAction::Promote {
            root,
            pipelines,
            version,
            force,
        } => promote(root, pipelines, &version, force).await,
    }
}

async fn promote(root: RootArg, pipelines: PipelinesArg, version: &str, force: bool) -> Result<()> {
    let store = root.open()?;
    let gates = pipelines.load()?.nightly.promotion;
    let mut refusals = gates.card_refusals(&model::card(&store, version).await?);
    // the holdout evaluation registered with it carries the disparity by segment
    let evaluation: Option<model::evaluation::Evaluation> =
        model::attachment(&store, version, "metrics.json").await?;
    if let Some(evaluation) = evaluation {
        refusals.extend(gates.disparity_refusals(&evaluation));
    }
    if !refusals.is_empty() && !force {
        return Err(training::TrainingError::PromotionRefused {
            version: version.to_string(),
            refusals,
        }
        .into());
    }
    let forced = (!refusals.is_empty()).then_some(refusals);
    let champion = model::promote(&store, version, forced.clone()).await?;
    println!(
        "champion is now {} (was {}); the next nightly run scores with it{}",
        champion.version,
        champion.previous.as_deref().unwrap_or("none"),
        forced.map_or(String::new(), |r| format!(
            "; promoted past the gates (--force): {}",
            r.join("; ")
        ))
    );
    Ok(())
}

async fn list(root: RootArg) -> Result<()> {
    let store = root.open()?;
    let champion = model::champion(&store).await?.map(|c| c.version);
    let cards = model::list(&store).await?;
    if cards.is_empty() {
        println!("no models under {}/models/", store.url());
    }
    println!(
        "{:<2}{:<26} {:<15} {:>9} {:>8} {:>8} {:>8}  data",
        "", "version", "kind", "features", "AUC", "KS", "ECE"
    );
    for card in cards {
        let mark = if champion.as_deref() == Some(card.version.as_str()) {
            "*"
        } else {
            ""
        };
        println!(
            "{mark:<2}{:<26} {:<15} {:>9} {:>8.4} {:>8.4} {:>8.4}  {}",
            card.version,
            card.kind,
            card.n_features,
            card.holdout.auc,
            card.holdout.ks,
            card.holdout.ece,
            card.data
        );
    }
    println!("(* = champion; AUC, KS, ECE on each model's own holdout)");
    Ok(())
}

async fn compare(args: CompareArgs) -> Result<()> {
    let w = args.window.open().await?;
    let evaluate = async |version: &str| {
        training::evaluate(&w.store, &w.window, version, &w.pipelines, &w.device).await
    };
    let (_, a, _) = evaluate(&args.first).await?;
    let (_, b, _) = evaluate(&args.second).await?;
    println!("on {} users of {}:", a.metrics.rows, a.rows_evaluated);
    println!("{:<12} {:>26} {:>26}", "", args.first, args.second);
    let line = |name: &str, x: f64, y: f64| println!("{name:<12} {x:>26.5} {y:>26.5}");
    line("AUC", a.metrics.auc, b.metrics.auc);
    line("Gini", a.metrics.gini, b.metrics.gini);
    line("KS", a.metrics.ks, b.metrics.ks);
    line("log loss", a.metrics.log_loss, b.metrics.log_loss);
    line("Brier", a.metrics.brier, b.metrics.brier);
    line("ECE", a.metrics.ece, b.metrics.ece);
    line("mean PD", a.metrics.mean_pd, b.metrics.mean_pd);
    if let Some(oracle) = a.oracle_auc {
        println!(
            "oracle AUC on the same users: {oracle:.4} (lift share (AUC-0.5)/(oracle-0.5): {:.3} vs {:.3})",
            redflower::model::metrics::lift_share(a.metrics.auc, oracle),
            redflower::model::metrics::lift_share(b.metrics.auc, oracle)
        );
    }
    if let Some(visible) = a.visible_oracle_auc {
        println!("oracle AUC without hidden risk (visible PD), same users: {visible:.4}");
    }
    Ok(())
}
