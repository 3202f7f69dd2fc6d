//! `redflower serve`: the HTTP read path until Ctrl-C or SIGTERM, then a summary.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Args;

use redflower::serve::{self, ServeConfig};
use redflower::user_index::UserShard;

use crate::args::RootArg;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    root: RootArg,
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// require `Authorization: Bearer TOKEN` on /v1/
    #[arg(long, env = "REDFLOWER_SERVE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// enable the write endpoints (POST /v1/users/{id}/certificates and .../limit-request),
    /// which require `Authorization: Bearer WRITE_TOKEN`; must differ from --token
    #[arg(long, env = "REDFLOWER_WRITE_TOKEN", hide_env_values = true)]
    write_token: Option<String>,
    /// how often to look for a newer committed version, in milliseconds
    #[arg(long, default_value_t = 1000)]
    poll_ms: u64,
    /// a client must send a whole request header within this many milliseconds
    #[arg(long, default_value_t = 10_000)]
    header_timeout_ms: u64,
    /// connections served at once; more wait until one closes
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// /healthz answers 503 once the table served is older than this many hours (a missed
    /// night); 0 turns the check off
    #[arg(long, default_value_t = 36)]
    max_table_age_hours: u64,
    /// answer over TLS with this PEM certificate chain (with --tls-key)
    #[arg(long, requires = "tls_key", env = "REDFLOWER_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// the PEM private key of --tls-cert (a file: never the key itself on the command line)
    #[arg(long, requires = "tls_cert", env = "REDFLOWER_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// hold and answer only shard INDEX of COUNT of the users (0-based, by a hash of the user
    /// id: docs/openapi.json); other users' lookups answer 421 naming their shard
    #[arg(long)]
    shard: Option<UserShard>,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let store = args.root.open()?;
    let config = ServeConfig {
        addr: args.addr,
        token: args.token,
        write_token: args.write_token.clone(),
        poll: Duration::from_millis(args.poll_ms.max(10)),
        header_read_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
        max_connections: args.max_connections.max(1),
        max_table_age: (args.max_table_age_hours > 0)
            .then(|| Duration::from_secs(args.max_table_age_hours * 3600)),
        tls: match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(serve::tls::server_config(cert, key)?),
            _ => None,
        },
        shard: args.shard,
    };
    let server = serve::start(store.clone(), config).await?;
    println!(
        "serving {}{} on {}://{} (table version {}); GET /v1/limits/{{user_id}}, /healthz, /metrics{}",
        store.url(),
        args.shard
            .map_or(String::new(), |shard| format!(" (users of shard {shard})")),
        if args.tls_cert.is_some() {
            "https"
        } else {
            "http"
        },
        server.addr(),
        server
            .version()
            .map_or("none yet".to_string(), |v| v.to_string()),
        match args.write_token {
            Some(_) => "; POST /v1/users/{user_id}/certificates, /v1/users/{user_id}/limit-request",
            None => "",
        }
    );
    shutdown_signal().await;
    let stats = server.stop().await?;
    println!(
        "serve stopped after {:.0}s: {} answered, {} unknown users, {} refused; {} writes recorded, {} refused; {} table swaps ({} failed); last version {}",
        stats.seconds,
        stats.answered,
        stats.not_found,
        stats.refused,
        stats.writes_accepted,
        stats.writes_refused,
        stats.reloads,
        stats.reload_failures,
        stats.version.map_or("none".to_string(), |v| v.to_string())
    );
    Ok(())
}

/// Ctrl-C or SIGTERM (what a service manager sends).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
