//! The trainer next to PyTorch and LightGBM on the same training set: builds (or reuses) a
//! synthetic world, takes its newest labelled window, trains redflower's wide & deep model
//! and times training (samples/s) and scoring (users/s); then exports the same CSR rows,
//! labels and fit/validation/holdout split and runs benches/model_baselines.py, which trains
//! the same architecture in PyTorch (CPU) for the same epochs and LightGBM on the same rows,
//! and prints one table. Needs `python3 -m pip install torch lightgbm scipy numpy`.
//!
//!     cargo bench --bench models -- --users 200000
//!
//! Record results in benches/README.md.

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use redflower::config::Pipelines;
use redflower::model::{self, DeviceKind, Split};
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};
use redflower::training;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    #[arg(long, default_value_t = synth::DEMO_DAYS)]
    days: u32,
    /// local root to build the world in, or reuse if it already holds this world
    #[arg(long, default_value = "/tmp/redflower-bench-models")]
    root: String,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    #[arg(long, default_value = "python3")]
    python: String,
    /// PyTorch device for the baseline: cpu or cuda
    #[arg(long, default_value = "cpu")]
    torch_device: String,
    /// pipelines folder whose nightly.toml [training] to use (default: the shipped one)
    #[arg(long)]
    pipelines: Option<std::path::PathBuf>,
    /// scoring passes over the training rows, each timed; the median pass is reported (one
    /// pass takes well under a second, too short to time once on a shared machine)
    #[arg(long, default_value_t = 5)]
    score_passes: usize,
    /// skip the Python baselines (e.g. on a machine without them)
    #[arg(long)]
    no_baselines: bool,
    /// train for this many epochs instead of `[training] epochs` (for profiling runs)
    #[arg(long)]
    epochs: Option<usize>,
    /// also write the results as JSON here (benches/vulkan_check.sh compares devices by it)
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// cargo bench passes --bench; accept and ignore it
    #[arg(long, hide = true)]
    bench: bool,
}

fn write_raw<T: Copy>(path: &std::path::Path, values: &[T]) -> anyhow::Result<()> {
    // plain little-endian arrays: numpy.fromfile reads them without any library
    let bytes = unsafe {
        std::slice::from_raw_parts(values.as_ptr() as *const u8, std::mem::size_of_val(values))
    };
    std::fs::File::create(path)?.write_all(bytes)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let end = WorldConfig::demo(args.users).end;
    let world = WorldConfig {
        days: args.days,
        ..WorldConfig::demo(args.users)
    };
    let pipelines = match &args.pipelines {
        Some(dir) => Pipelines::load(dir)?,
        None => Pipelines::builtin(),
    };
    let mut config = pipelines.nightly.training.clone();
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    let device = args.device.device()?;
    let store = Store::open(&args.root)?;
    let window = runtime.block_on(async {
        synth::ensure_world(&store, &world).await?;
        anyhow::Ok(
            training::labelled_window(&store, end, &pipelines, training::Writes::Everything)
                .await?,
        )
    })?;
    let set = &window.set;
    let n_features = window.dictionary.len();

    let started = Instant::now();
    let l2_scales = config.l2_scales(window.dictionary.families());
    let trained = model::train(set, &l2_scales, &config, &device);
    let train_seconds = started.elapsed().as_secs_f64();
    let samples_per_second = (trained.fit_rows * trained.epochs_run) as f64 / trained.fit_seconds;
    // the rows PyTorch and LightGBM score too; one warm-up pass (GPU kernels compile on
    // first use), then the median of the timed passes
    model::logits(&trained.network, &set.rows, &device, 4096);
    let mut pass_seconds: Vec<f64> = (0..args.score_passes.max(1))
        .map(|_| {
            let started = Instant::now();
            model::logits(&trained.network, &set.rows, &device, 4096);
            started.elapsed().as_secs_f64()
        })
        .collect();
    pass_seconds.sort_by(f64::total_cmp);
    let users_per_second = set.rows.len() as f64 / pass_seconds[pass_seconds.len() / 2];

    println!(
        "model benchmark: {} users, {} training rows ({} fit), {} features, {} non-zeros, {} epochs, batch {}, embedding {} hidden {}, device {:?}",
        args.users,
        set.labels.len(),
        trained.fit_rows,
        n_features,
        set.rows.ids.len(),
        trained.epochs_run,
        config.batch_size,
        config.embedding_dim,
        config.hidden,
        args.device
    );
    println!("| trainer | train samples/s | score users/s | holdout AUC | notes |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| redflower (Burn {:?}) | {samples_per_second:.0} | {users_per_second:.0} | {:.4} | {} epochs in {:.1}s fit ({train_seconds:.1}s with every l2 candidate, validation and calibration); ECE {:.4}; l2 {} chosen on validation from {:?} |",
        args.device,
        trained.holdout.auc,
        trained.epochs_run,
        trained.fit_seconds,
        trained.holdout.ece,
        trained.l2,
        trained.l2_search
    );
    let mut results = vec![serde_json::json!({
        "trainer": format!("redflower (Burn {:?})", args.device),
        "train_samples_per_s": samples_per_second,
        "score_users_per_s": users_per_second,
        "holdout_auc": trained.holdout.auc,
        "ece": trained.holdout.ece,
        "epochs": trained.epochs_run,
    })];
    if !args.no_baselines {
        results.extend(baselines(
            &args, set, &l2_scales, &config, &trained, n_features,
        )?);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::Value::from(results).to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Exports the training set, runs benches/model_baselines.py on it, prints its rows and
/// returns them.
fn baselines(
    args: &Args,
    set: &redflower::dataset::TrainingSet,
    l2_scales: &[f32],
    config: &model::TrainingConfig,
    trained: &model::TrainedModel,
    n_features: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let folder = std::env::temp_dir().join("redflower-model-bench");
    std::fs::create_dir_all(&folder)?;
    let offsets: Vec<u64> = set.rows.offsets.iter().map(|&o| o as u64).collect();
    write_raw(&folder.join("offsets.u64"), &offsets)?;
    write_raw(&folder.join("ids.u32"), &set.rows.ids)?;
    write_raw(&folder.join("values.f32"), &set.rows.values)?;
    write_raw(&folder.join("labels.f32"), &set.labels)?;
    write_raw(&folder.join("l2_scales.f32"), l2_scales)?;
    let split: Vec<u8> = set
        .rows
        .users
        .iter()
        .map(|&u| match Split::of(u, config) {
            Split::Fit => 0,
            Split::Validation => 1,
            Split::Holdout => 2,
        })
        .collect();
    write_raw(&folder.join("split.u8"), &split)?;
    let settings = serde_json::json!({
        "n_features": n_features,
        "epochs": trained.epochs_run,
        "batch_size": config.batch_size,
        "learning_rate": config.learning_rate,
        "l2": trained.l2, // the one l2_grid chose on the validation split
        "positive_weight": config.positive_weight,
        "embedding_dim": config.embedding_dim,
        "hidden": config.hidden,
        "threads": std::thread::available_parallelism().map_or(2, |n| n.get()),
        "device": args.torch_device,
        "seed": config.seed,
        "score_passes": args.score_passes.max(1),
    });
    std::fs::write(folder.join("settings.json"), settings.to_string())?;
    // the checkout it was built in, else the working directory's (a binary carried to
    // another machine runs from that machine's checkout)
    let built_in = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/model_baselines.py");
    let script = match std::path::Path::new(built_in).exists() {
        true => built_in,
        false => "benches/model_baselines.py",
    };
    let output = Command::new(&args.python)
        .args([script, &folder.display().to_string()])
        .output()
        .with_context(|| format!("running {} {script}", args.python))?;
    if !output.status.success() {
        bail!(
            "baselines failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let results: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let rows = results.as_array().context("a list of results")?;
    for row in rows {
        let number = |key: &str| {
            row[key]
                .as_f64()
                .map_or("-".to_string(), |v| format!("{v:.0}"))
        };
        println!(
            "| {} | {} | {} | {:.4} | {} |",
            row["trainer"].as_str().unwrap_or("?"),
            number("train_samples_per_s"),
            number("score_users_per_s"),
            row["holdout_auc"].as_f64().unwrap_or(f64::NAN),
            row["notes"].as_str().unwrap_or("")
        );
    }
    Ok(rows.clone())
}
