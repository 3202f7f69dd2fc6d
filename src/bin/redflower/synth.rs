//! `redflower synth`: writes a synthetic world under a root.

use std::time::Instant;

use anyhow::Result;
use chrono::NaiveDate;
use clap::Args;

use redflower::store::Store;
use redflower::synth::{self, WorldConfig};

#[derive(Args)]
pub struct SynthArgs {
    #[arg(long, default_value_t = synth::DEMO_USERS)]
    users: u64,
    /// days of history, ending the day before --end
    #[arg(long, default_value_t = synth::DEMO_DAYS)]
    days: u32,
    /// first day without data; nightly runs for this date see the whole world
    #[arg(long, default_value = synth::DEMO_END)]
    end: NaiveDate,
    #[arg(long, default_value_t = synth::DEMO_SEED)]
    seed: u64,
    /// root URL: a local path, file:///abs/path or memory://name
    #[arg(long, default_value = "./data")]
    out: String,
}

pub async fn run(args: SynthArgs) -> Result<()> {
    let store = Store::open(&args.out)?;
    let world = WorldConfig {
        users: args.users,
        days: args.days,
        end: args.end,
        seed: args.seed,
    };
    let started = Instant::now();
    let summary = synth::generate(&store, &world).await?;
    println!(
        "synth: {} users, {} events, {} certificates, {} statements, {} limit requests in {} files under {} ({:.1}s); mean true PD {:.3}",
        summary.users,
        summary.events,
        summary.certificates,
        summary.repayments,
        summary.limit_requests,
        summary.files,
        store.url(),
        started.elapsed().as_secs_f64(),
        summary.mean_true_pd
    );
    Ok(())
}
