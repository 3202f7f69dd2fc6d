//! `redflower score`: a table of your own scored with a model trained on one.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use redflower::table::score::score_table;

use crate::args::{DeviceArg, PipelinesArg, RootArg};

#[derive(Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    root: RootArg,
    /// the registered model (trained with `train --table`)
    #[arg(long)]
    model: String,
    /// the Parquet or CSV table to score (path or URL); its label column, if any, is ignored
    #[arg(long)]
    table: String,
    /// where to write row, pd, points and reasons: FILE.csv or FILE.parquet (path or URL)
    #[arg(long)]
    out: String,
    #[command(flatten)]
    pipelines: PipelinesArg,
    #[command(flatten)]
    device: DeviceArg,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ScoreArgs) -> Result<()> {
    let started = Instant::now();
    let pipelines = args.pipelines.load()?;
    let store = args.root.open_with(&pipelines)?;
    let device = args.device.device.device()?;
    let reasons = pipelines.nightly.evaluation.reasons_per_user;
    let scoring = score_table(
        &store,
        &args.model,
        &args.table,
        &args.out,
        reasons,
        &device,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&scoring)?);
        return Ok(());
    }
    println!();
    println!(
        "scored {} with model {}",
        scoring.table, scoring.model_version
    );
    println!(
        "  rows        {} (mean PD {:.4})",
        scoring.rows, scoring.mean_pd
    );
    if !scoring.missing_columns.is_empty() {
        println!(
            "  missing     columns the model reads, missing on every row: {}",
            scoring.missing_columns.join(", ")
        );
    }
    if scoring.rows_without_known_features > 0 {
        println!(
            "  unknown     {} rows with no value the model knows score as the average row",
            scoring.rows_without_known_features
        );
    }
    println!("  written     {} (row, pd, points, reasons)", scoring.out);
    println!("  took        {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}
