//! `redflower demo`: the demo world in a folder (generated once, reused after) and one
//! nightly run on it.

use std::time::Instant;

use anyhow::Result;
use clap::Args;

use redflower::config::Pipelines;
use redflower::nightly;
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};

use crate::args::DeviceArg;
use crate::print;

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "./data")]
    root: String,
    #[arg(long, default_value_t = synth::DEMO_USERS)]
    users: u64,
    #[command(flatten)]
    device: DeviceArg,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let store = Store::open(&args.root)?;
    let world = WorldConfig::demo(args.users);
    if synth::holds_world(&store, &world).await? {
        println!(
            "demo: reusing the {}-user world already in {}",
            args.users,
            store.url()
        );
    } else {
        println!(
            "demo: generating a {}-user world in {} ...",
            args.users,
            store.url()
        );
        let started = Instant::now();
        let summary = synth::generate(&store, &world).await?;
        println!(
            "demo: {} events, {} certificates, {} statements in {:.1}s",
            summary.events,
            summary.certificates,
            summary.repayments,
            started.elapsed().as_secs_f64()
        );
    }
    let report = nightly::run(&store, world.end, &Pipelines::builtin(), args.device.device).await?;
    print::nightly_summary(&report);
    Ok(())
}
