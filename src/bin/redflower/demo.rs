//! `redflower demo`: the demo world in a folder (generated once, reused after) and one
//! nightly run on it.

use std::time::Instant;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use redflower::config::Pipelines;
use redflower::nightly;
use redflower::store::{Keyring, Store};
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

/// The demo's data keys: REDFLOWER_DATA_KEYS when set, else a key file beside a local root
/// (`./data.keys`), generated once and reused; where it is kept is printed.
fn demo_keys(root: &str) -> Result<Arc<Keyring>> {
    if let Some(keys) = Pipelines::builtin().nightly.encryption.keyring()? {
        return Ok(keys);
    }
    let local = !root.contains("://") || root.starts_with("file://");
    let file = match local {
        true => format!(
            "{}.keys",
            root.trim_start_matches("file://").trim_end_matches('/')
        ),
        false => "./redflower-demo.keys".to_string(),
    };
    let keys = match std::fs::read_to_string(&file) {
        Ok(text) => Keyring::parse(&text, &file)?,
        Err(_) => {
            let keys = Keyring::generate("demo-1")?;
            write_secret(&file, &keys.to_file_text())?;
            keys
        }
    };
    println!(
        "demo: personal data is encrypted with key {} kept in {file}; the other commands read it with: export REDFLOWER_DATA_KEYS=@{file}",
        keys.write_key_id()
    );
    Ok(Arc::new(keys))
}

/// Writes a file only its owner can read.
fn write_secret(path: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing the demo key file {path}"))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing the demo key file {path}"))?;
    Ok(())
}

pub async fn run(args: DemoArgs) -> Result<()> {
    let keys = demo_keys(&args.root)?;
    let store = Store::open(&args.root)?.with_keys(Some(keys));
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
