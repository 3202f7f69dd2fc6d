//! `redflower train`: a model on a world's newest labelled window, or on your own table.

use std::time::Instant;

use anyhow::Result;
use chrono::NaiveDate;
use clap::Args;

use redflower::table::train::{self, TableOptions};
use redflower::training::{self, Promote, TrainOutcome};

use crate::args::{DeviceArg, PipelinesArg, RootArg};
use crate::print;

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    root: RootArg,
    /// the run date whose training window to use (features as of date - horizon)
    #[arg(long, required_unless_present = "table")]
    date: Option<NaiveDate>,
    /// train on this Parquet or CSV table instead of the world (path or URL)
    #[arg(long, requires = "label")]
    table: Option<String>,
    /// the 0/1 label column of --table
    #[arg(long, requires = "table")]
    label: Option<String>,
    /// share of --table's labelled rows held out for the reported metrics (default: [training]
    /// holdout_share)
    #[arg(long, requires = "table")]
    holdout_share: Option<f64>,
    /// cross-validate --table with this many folds, whatever its size (default: [table] folds,
    /// below [table] cross_validate_below_rows labelled rows)
    #[arg(long, requires = "table")]
    folds: Option<usize>,
    #[command(flatten)]
    pipelines: PipelinesArg,
    #[command(flatten)]
    device: DeviceArg,
    /// make the new model the champion the nightly job scores with, if it passes the
    /// promotion gates ([promotion] in nightly.toml)
    #[arg(long)]
    promote: bool,
    /// with --promote: promote even if it fails the gates (models/_champion.json records which)
    #[arg(long, requires = "promote")]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: TrainArgs) -> Result<()> {
    let started = Instant::now();
    let outcome = match (&args.table, &args.label, args.date) {
        (Some(table), Some(label), _) => train_on_table(&args, table, label).await?,
        (_, _, Some(date)) => train_on_window(&args, date).await?,
        _ => anyhow::bail!("train needs --date, or --table with --label"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
        return Ok(());
    }
    print::evaluation(&outcome.card, &outcome.evaluation, &outcome.report);
    print::promotion(&outcome.promotion, args.promote);
    println!("  took        {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn promote(args: &TrainArgs) -> Promote {
    match (args.promote, args.force) {
        (true, true) => Promote::Force,
        (true, false) => Promote::IfGatesPass,
        (false, _) => Promote::Never,
    }
}

async fn train_on_table(args: &TrainArgs, table: &str, label: &str) -> Result<TrainOutcome> {
    let pipelines = args.pipelines.load()?;
    let store = args.root.open_with(&pipelines)?;
    let device = args.device.device.device()?;
    let options = TableOptions {
        holdout_share: args.holdout_share,
        folds: args.folds,
    };
    let (byo, outcome) = train::train_on_table(
        &store,
        (table, label),
        options,
        &pipelines,
        &device,
        promote(args),
    )
    .await?;
    let skipped = if byo.skipped_columns.is_empty() {
        String::new()
    } else {
        format!("; constant, skipped: {}", byo.skipped_columns.join(", "))
    };
    // on stderr, so --json stays one document on stdout
    eprintln!(
        "table {table}: {} rows ({} without a label, left out), {} numeric and {} categorical columns -> {} features{skipped}",
        byo.rows,
        byo.unlabelled,
        byo.numeric_columns.len(),
        byo.categorical_columns.len(),
        byo.features,
    );
    Ok(outcome)
}

async fn train_on_window(args: &TrainArgs, date: NaiveDate) -> Result<TrainOutcome> {
    let pipelines = args.pipelines.load()?;
    let store = args.root.open_with(&pipelines)?;
    let device = args.device.device.device()?;
    let window =
        training::labelled_window(&store, date, &pipelines, training::Writes::Everything).await?;
    let (_, outcome) = training::train_and_register(
        &store,
        &window.set,
        &window.dictionary,
        window.data.clone(),
        &pipelines,
        &device,
        promote(args),
    )
    .await?;
    Ok(outcome)
}
