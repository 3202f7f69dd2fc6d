//! `redflower demo`: the demo world in a folder (generated once, reused after), one nightly
//! run on it, and one interaction with `serve`: a user the night promised a raise uploads a
//! certificate of that family and reads the higher limit at once.

use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use redflower::config::Pipelines;
use redflower::nightly;
use redflower::serve::client::LimitsClient;
use redflower::serve::overlay::CertificateUpload;
use redflower::serve::{self, ServeConfig};
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
    interact(&store).await
}

/// Starts `serve` with writes on a free loopback port, has the first user with a suggestion
/// upload a certificate of its family (a recorded raw row, as any upload), prints the limit
/// before and after, and stops the server.
async fn interact(store: &Store) -> Result<()> {
    let (read, write) = ("demo-read", "demo-write");
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse()?,
        token: Some(read.into()),
        write_token: Some(write.into()),
        poll: Duration::from_secs(3600),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 16,
        max_table_age: None,
        tls: None,
        shard: None,
    };
    let server = serve::start(store.clone(), config).await?;
    let base = format!("http://{}", server.addr());
    let client = LimitsClient::new(&base, Some(read.into()))?.with_write_token(write);
    let catalog = serve::certificate_catalog(store).await?;
    let mut promised = None;
    for user in 1..=1000 {
        let Some((answer, provisional)) = client.limit_now(user).await? else {
            continue;
        };
        let Some(suggestion) = answer.suggestions.first() else {
            continue;
        };
        let mut types: Vec<_> = catalog
            .iter()
            .filter(|(_, kind)| kind.family == suggestion.family)
            .collect();
        types.sort_by_key(|(id, _)| **id);
        if let Some(&(type_id, kind)) = types.first() {
            let (type_id, name) = (*type_id, kind.name.clone());
            let earlier = provisional.is_some();
            promised = Some((answer.clone(), suggestion.clone(), type_id, name, earlier));
            break;
        }
    }
    let Some((before, suggestion, type_id, name, earlier)) = promised else {
        println!("demo: no user among the first 1000 has a suggestion; no interaction shown");
        server.stop().await?;
        return Ok(());
    };
    let user = before.user_id;
    println!(
        "demo: user {user} has limit {} and the night suggests: upload a {} certificate for +{}",
        before.credit_limit, suggestion.family, suggestion.adds
    );
    if earlier {
        println!(
            "demo: (that limit already holds the upload an earlier demo run made: the POST below is its retry, answered the same and not recorded again)"
        );
    }
    let upload = CertificateUpload {
        // the same id on every demo run: a rerun is answered as a retry, not recorded again
        request_id: format!("demo-{user}"),
        cert_type_id: type_id,
        certificate_no: format!("DEMO-{user}"),
        confidence: 0.97,
        valid_until: None,
    };
    let (status, answer) = client.upload_certificate(user, &upload).await?;
    println!(
        "demo: POST {base}/v1/users/{user}/certificates ({name}, number {}) -> {status}: {}",
        upload.certificate_no,
        serde_json::to_string(&answer)?
    );
    if let Some((now, provisional)) = client.limit_now(user).await? {
        let fields = provisional.map_or(Vec::new(), |p| p.fields);
        println!(
            "demo: GET {base}/v1/limits/{user} -> credit_limit {} (was {}), provisional fields {fields:?}; the next night reads the upload as a raw row",
            now.credit_limit, before.credit_limit
        );
    }
    server.stop().await?;
    Ok(())
}
