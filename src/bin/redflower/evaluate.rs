//! `redflower evaluate`: a registered model on the holdout of a date's training window.

use anyhow::Result;
use chrono::NaiveDate;
use clap::Args;

use redflower::config::Pipelines;
use redflower::store::Store;
use redflower::training::{self, LabelledWindow};

use crate::args::{DeviceArg, PipelinesArg, RootArg};
use crate::print;

#[derive(Args)]
pub struct EvaluateArgs {
    #[command(flatten)]
    window: WindowArgs,
    #[arg(long)]
    model: String,
}

/// What `evaluate` and `models compare` both need: a root, a date's labelled window, the
/// configuration and the device.
#[derive(Args)]
pub struct WindowArgs {
    #[command(flatten)]
    root: RootArg,
    #[arg(long)]
    date: NaiveDate,
    #[command(flatten)]
    pipelines: PipelinesArg,
    #[command(flatten)]
    device: DeviceArg,
}

/// The opened root, configuration, device and labelled window of `args`.
pub struct Window {
    pub store: Store,
    pub pipelines: Pipelines,
    pub device: burn::tensor::Device,
    pub window: LabelledWindow,
}

impl WindowArgs {
    pub async fn open(&self) -> Result<Window> {
        let pipelines = self.pipelines.load()?;
        let store = self.root.open_with(&pipelines)?;
        let device = self.device.device.device()?;
        // evaluations and comparisons only read: a run may be writing the root beside them
        let window =
            training::labelled_window(&store, self.date, &pipelines, training::Writes::Nothing)
                .await?;
        Ok(Window {
            store,
            pipelines,
            device,
            window,
        })
    }
}

pub async fn run(args: EvaluateArgs) -> Result<()> {
    let w = args.window.open().await?;
    let (card, evaluation, report) =
        training::evaluate(&w.store, &w.window, &args.model, &w.pipelines, &w.device).await?;
    print::evaluation(&card, &evaluation, &report);
    Ok(())
}
