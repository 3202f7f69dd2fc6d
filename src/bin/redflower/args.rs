//! Arguments several commands share, declared once and flattened into each command.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use redflower::config::Pipelines;
use redflower::model::DeviceKind;
use redflower::store::Store;

/// `--root`: the store a command works on.
#[derive(Args, Clone, Debug)]
pub struct RootArg {
    /// root URL: a local path, file:///abs/path, s3://bucket/prefix or memory://name
    #[arg(long)]
    pub root: String,
}

impl RootArg {
    /// The store, with the data keys the shipped `[encryption]` names (REDFLOWER_DATA_KEYS)
    /// and the drill's faults when `REDFLOWER_FAULTS` is set.
    pub fn open(&self) -> Result<Store> {
        self.open_with(&Pipelines::builtin())
    }

    /// The store, with the data keys `pipelines`' `[encryption]` names.
    pub fn open_with(&self, pipelines: &Pipelines) -> Result<Store> {
        let keys = pipelines.nightly.encryption.keyring()?;
        Ok(Store::open(&self.root)?
            .with_faults_from_env()?
            .with_keys(keys))
    }
}

/// `--pipelines`: the configuration a command runs with.
#[derive(Args, Clone, Debug)]
pub struct PipelinesArg {
    /// folder with features.toml, limits.toml and nightly.toml (default: the shipped ones)
    #[arg(long)]
    pub pipelines: Option<PathBuf>,
}

impl PipelinesArg {
    pub fn load(&self) -> Result<Pipelines> {
        Ok(Pipelines::load_or_builtin(self.pipelines.as_deref())?)
    }
}

/// `--device`: where Burn trains and scores.
#[derive(Args, Clone, Copy, Debug)]
pub struct DeviceArg {
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// A Redis target from `--sink`: for `rediss://`, trusting the PEM CA file that
/// `REDFLOWER_SINK_CA` names, else the system's roots.
pub fn sink_target(url: &str, prefix: &str) -> Result<redflower::sink::RedisTarget> {
    let ca = std::env::var_os("REDFLOWER_SINK_CA").map(PathBuf::from);
    Ok(redflower::sink::RedisTarget::parse(url, prefix)?.with_ca_file(ca))
}
