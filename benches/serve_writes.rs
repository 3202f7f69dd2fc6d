//! serve's write path, on this machine: publishes a limit table of --users users (each with
//! suggestions) and a certificate catalog, starts `redflower serve` with a write token, and
//!
//! 1. drives it with GETs only, then with a mixed load: --connections keep-alive connections,
//!    each sending its share of --requests, 95% GETs of random users and 5% certificate
//!    uploads (each a new request id and number for a random user, so each is decided,
//!    written to the store and added to the overlay);
//! 2. drives it with uploads only (--posts of them) against the local filesystem root;
//! 3. the same against an S3 root on moto (started here; needs `moto_server` on PATH, as the
//!    tests do), unless --no-s3.
//!
//! Prints throughput and p50/p99/p99.9 per kind for each run. Server and generator run in one
//! tokio runtime (--server-threads + 1 workers) on the machine's cores (2 here).
//!
//!     cargo bench --bench serve_writes -- --users 200000 --requests 100000 --posts 5000

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use datafusion::arrow::array::{Int32Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use redflower::policy::{HeldCertificate, LimitPolicy};
use redflower::publish::{self, LimitRow};
use redflower::serve::client::LimitsClient;
use redflower::serve::overlay::CertificateUpload;
use redflower::serve::{self, ServeConfig};
use redflower::store::{Store, layout};
use redflower::suggestions::Suggestion;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    /// requests of the mixed run
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// uploads of each upload-only run
    #[arg(long, default_value_t = 5_000)]
    posts: u64,
    #[arg(long, default_value_t = 16)]
    connections: u64,
    /// tokio worker threads of the server
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    #[arg(long, default_value = "/tmp/redflower-bench-writes")]
    root: String,
    /// skip the run on S3 (moto)
    #[arg(long)]
    no_s3: bool,
    /// cargo bench passes --bench; accept and ignore it
    #[arg(long, hide = true)]
    bench: bool,
}

/// One kind's latencies in one run.
struct Row {
    run: String,
    kind: &'static str,
    requests: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn row(run: &str, kind: &'static str, mut nanos: Vec<u64>, seconds: f64) -> Option<Row> {
    if nanos.is_empty() {
        return None;
    }
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)] as f64 / 1e6;
    Some(Row {
        run: run.to_string(),
        kind,
        requests: nanos.len(),
        seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
    })
}

/// A deterministic stream of numbers in [0, 1).
struct Uniform(u64);

impl Uniform {
    fn next(&mut self) -> f64 {
        self.0 = redflower::user_index::splitmix64(self.0);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn suggestion(family: &str, amount: f64) -> Suggestion {
    Suggestion {
        family: family.into(),
        certificate: HeldCertificate {
            cert_type_id: 1,
            name: family.into(),
            family: family.into(),
            tier: 3,
            confidence: 1.0,
        },
        amount,
    }
}

/// The table (ids 0..users, each promised +800 for a language certificate) and a catalog.
async fn publish_world(store: &Store, users: u64) -> anyhow::Result<()> {
    store.delete_prefix("published").await?;
    store.delete_prefix("raw").await?;
    let policy = LimitPolicy::builtin();
    let date = chrono::Utc::now().date_naive();
    let rows: Vec<LimitRow> = (0..users)
        .map(|user_id| {
            let pd = 0.005 + 0.04 * ((user_id * 7919) % 1000) as f64 / 1000.0;
            LimitRow {
                user_id,
                pd,
                decision: policy.decide(pd, &Default::default()),
                suggestions: vec![suggestion("language", 800.0)],
            }
        })
        .collect();
    publish::publish(store, &rows, date, "bench", &policy.version).await?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("cert_type_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("family", DataType::Utf8, false),
        Field::new("tier", DataType::Int32, false),
    ]));
    let catalog = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt32Array::from(vec![1])),
            Arc::new(StringArray::from(vec!["IELTS"])),
            Arc::new(StringArray::from(vec!["language"])),
            Arc::new(Int32Array::from(vec![3])),
        ],
    )?;
    store
        .write_parquet(&layout::certificate_types_file(), schema, &[catalog])
        .await?;
    Ok(())
}

/// Drives `base` from `connections` tasks, each sending `each` requests: an upload with
/// probability `post_share`, else a GET. Returns (GET, upload) latencies and the seconds.
async fn drive(
    base: &str,
    users: u64,
    connections: u64,
    each: u64,
    post_share: f64,
    tag: &str,
) -> anyhow::Result<(Vec<u64>, Vec<u64>, f64)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let base = base.to_string();
        let tag = format!("{tag}-{c}");
        tasks.push(tokio::spawn(async move {
            let client = LimitsClient::new(&base, Some("bench-read".into()))?
                .with_write_token("bench-write");
            let mut random = Uniform(c + 1);
            let (mut gets, mut posts) = (Vec::new(), Vec::new());
            for i in 0..each {
                let user = (random.next() * users as f64) as u64;
                let started = Instant::now();
                if random.next() < post_share {
                    let upload = CertificateUpload {
                        request_id: format!("{tag}-{i}"),
                        cert_type_id: 1,
                        certificate_no: format!("N-{tag}-{i}"),
                        confidence: 0.95,
                        valid_until: None,
                    };
                    let (status, answer) = client.upload_certificate(user, &upload).await?;
                    if !answer.accepted && status != 409 {
                        bail!("user {user}: upload answered {status}: {answer:?}");
                    }
                    posts.push(started.elapsed().as_nanos() as u64);
                } else {
                    let (status, body) = client.get(&format!("/v1/limits/{user}")).await?;
                    if status != 200 || body.is_empty() {
                        bail!("user {user}: {status}");
                    }
                    gets.push(started.elapsed().as_nanos() as u64);
                }
            }
            Ok::<_, anyhow::Error>((gets, posts))
        }));
    }
    let (mut gets, mut posts) = (Vec::new(), Vec::new());
    for task in tasks {
        let (g, p) = task.await??;
        gets.extend(g);
        posts.extend(p);
    }
    Ok((gets, posts, started.elapsed().as_secs_f64()))
}

async fn start(store: &Store) -> anyhow::Result<serve::Server> {
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse()?,
        token: Some("bench-read".into()),
        write_token: Some("bench-write".into()),
        poll: Duration::from_secs(3600),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 10_000,
        max_table_age: None,
        tls: None,
        shard: None,
    };
    Ok(serve::start(store.clone(), config).await?)
}

/// The mixed run (when `requests` > 0) and the upload-only run on `store`.
async fn runs_on(store: &Store, name: &str, args: &Args, mixed: bool) -> anyhow::Result<Vec<Row>> {
    publish_world(store, args.users).await?;
    let server = start(store).await?;
    let base = format!("http://{}", server.addr());
    let mut rows = Vec::new();
    let run_id = chrono::Utc::now().timestamp_micros();
    if mixed {
        let each = args.requests / args.connections;
        // the same harness with no writes: what the mixed run's GETs compare with
        let (gets, _, seconds) = drive(&base, args.users, args.connections, each, 0.0, "g").await?;
        rows.extend(row(&format!("GETs only, {name}"), "GET", gets, seconds));
        let (gets, posts, seconds) = drive(
            &base,
            args.users,
            args.connections,
            each,
            0.05,
            &format!("m{run_id}"),
        )
        .await?;
        let run = format!("mixed 95/5, {name}");
        let total = (gets.len() + posts.len()) as f64;
        println!(
            "{run}: {total} requests in {seconds:.2} s, {:.0}/s",
            total / seconds
        );
        rows.extend(row(&run, "GET", gets, seconds));
        rows.extend(row(&run, "POST", posts, seconds));
    }
    let each = args.posts / args.connections;
    let (_, posts, seconds) = drive(
        &base,
        args.users,
        args.connections,
        each,
        1.0,
        &format!("p{run_id}"),
    )
    .await?;
    rows.extend(row(
        &format!("uploads only, {name}"),
        "POST",
        posts,
        seconds,
    ));
    let stats = server.stop().await?;
    println!(
        "{name}: {} writes recorded, {} refused, {} lookups answered",
        stats.writes_accepted, stats.writes_refused, stats.answered
    );
    Ok(rows)
}

/// moto on a free loopback port, stopped on drop.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> anyhow::Result<(Moto, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting moto_server (pip install 'moto[server]'), or pass --no-s3")?;
    let moto = Moto(child);
    let waiting = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if waiting.elapsed() > Duration::from_secs(60) {
            bail!("moto_server did not start listening");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // object_store cannot create buckets; moto takes an unsigned PUT
    let address = format!("127.0.0.1:{port}");
    let mut stream = std::net::TcpStream::connect(&address)?;
    write!(
        stream,
        "PUT /bench HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!("creating the bucket: {response}");
    }
    Ok((moto, format!("http://{address}")))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.max(1) + 1)
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    let local = Store::open(&args.root)?;
    rows.extend(runtime.block_on(runs_on(&local, "local files", &args, true))?);
    if !args.no_s3 {
        let (_moto, endpoint) = start_moto()?;
        let s3 = Store::open_with(
            "s3://bench/root",
            &[
                ("aws_endpoint_url", endpoint.as_str()),
                ("aws_access_key_id", "test"),
                ("aws_secret_access_key", "test"),
                ("aws_region", "us-east-1"),
            ],
        )?;
        rows.extend(runtime.block_on(runs_on(&s3, "S3 (moto)", &args, false))?);
    }
    println!(
        "\n| run | kind | requests | req/s | p50 ms | p99 ms | p99.9 ms |\n|---|---|---:|---:|---:|---:|---:|"
    );
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} |",
            r.run,
            r.kind,
            r.requests,
            r.requests as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms
        );
    }
    Ok(())
}
