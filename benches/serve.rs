//! The online read path next to Redis, on this machine, in one run: publishes a limit table of
//! --users users (ids 0..users, so redis-benchmark's `__rand_int__` hits real keys), starts
//! `redflower serve` on loopback and a redis-server holding the same table (loaded by the
//! Redis sink, the same JSON per user), then
//!
//! 1. drives serve with a closed-loop load generator: --connections keep-alive connections,
//!    each sending its share of --requests GETs for uniformly random users, one at a time;
//! 2. drives Redis with the same generator (RESP GET on the same keys);
//! 3. drives serve with wrk (C, epoll), the same connections on one thread, for --seconds;
//! 4. runs redis-benchmark (C, epoll, one thread) against Redis with the same connections and
//!    requests.
//!
//! Rows 3 and 4 pit each server against its own lean C client; rows 1 and 2 pit them against
//! the same Rust client. It prints throughput and p50/p99/p99.9 latency for each. Servers and
//! generators share the machine's cores (2 here): that is what every row pays.
//!
//!     cargo bench --bench serve -- --users 1000000 --requests 200000
//!
//! Needs redis-server, redis-benchmark and wrk (Debian: redis-server, redis-tools, wrk).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use redflower::policy::HeldCertificate;
use redflower::policy::LimitPolicy;
use redflower::publish::{self, LimitRow};
use redflower::serve::client::LimitsClient;
use redflower::serve::{self, ServeConfig, Snapshot};
use redflower::sink::{self, Redis, RedisTarget, Reply};
use redflower::store::Store;
use redflower::suggestions::Suggestion;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    #[arg(long, default_value_t = 50)]
    connections: u64,
    /// tokio worker threads of the server (Redis answers on one thread)
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// worker threads of the load generator
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// how long wrk drives serve
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value = "/tmp/redflower-bench-serve")]
    root: String,
    /// cargo bench passes --bench; accept and ignore it
    #[arg(long, hide = true)]
    bench: bool,
}

struct Latencies {
    label: String,
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn summarize(label: &str, mut nanos: Vec<u64>, seconds: f64) -> Latencies {
    nanos.sort_unstable();
    let at = |q: f64| nanos[((nanos.len() as f64 * q) as usize).min(nanos.len() - 1)] as f64 / 1e6;
    Latencies {
        label: label.to_string(),
        requests: nanos.len() as u64,
        seconds,
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
    }
}

/// A stream of uniformly random user ids (xorshift: cheap next to a request).
fn users(seed: u64, count: u64) -> impl Iterator<Item = u64> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    std::iter::repeat_with(move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % count
    })
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

/// Runs `per_connection` requests on each of `connections` tasks; returns every latency.
fn drive<F, Fut>(
    generator: &tokio::runtime::Runtime,
    args: &Args,
    label: &str,
    one_connection: F,
) -> anyhow::Result<Latencies>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = anyhow::Result<Vec<u64>>> + Send + 'static,
{
    let per_connection = args.requests / args.connections;
    let started = Instant::now();
    let nanos = generator.block_on(async {
        let tasks: Vec<_> = (0..args.connections)
            .map(|c| tokio::spawn(one_connection(c, per_connection)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await??);
        }
        anyhow::Ok(all)
    })?;
    Ok(summarize(label, nanos, started.elapsed().as_secs_f64()))
}

/// wrk's Lua hooks: uniformly random users per thread, and a `done` that prints one
/// machine-readable line (wrk's own summary rounds latencies to two digits).
const WRK_SCRIPT: &str = r#"
local users = tonumber(os.getenv("RF_USERS"))
math.randomseed(12345)
request = function()
  return wrk.format("GET", "/v1/limits/" .. math.random(0, users - 1))
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RFWRK %d %d %d %d %f %f %f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// Drives serve with wrk for `args.seconds`; fails when any request failed or was not a 200.
fn run_wrk(args: &Args, base: &str) -> anyhow::Result<Latencies> {
    let script = std::env::temp_dir().join("redflower-bench-serve.lua");
    std::fs::write(&script, WRK_SCRIPT)?;
    let output = Command::new("wrk")
        .env("RF_USERS", args.users.to_string())
        .args([
            "-t1",
            "-c",
            &args.connections.to_string(),
            "-d",
            &format!("{}s", args.seconds),
            "-s",
        ])
        .arg(&script)
        .arg(format!("{base}/v1/limits/0"))
        .output()
        .context("running wrk (Debian package wrk)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RFWRK "))
        .with_context(|| format!("wrk printed no summary: {stdout}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("wrk summary: {line}"))?;
    let [requests, micros, errors, non_ok, p50, p99, p999] = f[..] else {
        bail!("wrk summary: {line}");
    };
    if errors > 0.0 || non_ok > 0.0 {
        bail!("wrk: {errors} socket errors and {non_ok} non-2xx answers");
    }
    Ok(Latencies {
        label: "redflower serve (wrk, one thread)".into(),
        requests: requests as u64,
        seconds: micros / 1e6,
        p50_ms: p50 / 1e3,
        p99_ms: p99 / 1e3,
        p999_ms: p999 / 1e3,
    })
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let server_runtime = runtime(args.server_threads)?;
    let generator = runtime(args.client_threads)?;

    // the table: ids 0..users with varied PD, so answers differ in grade, APR and reasons
    let store = Store::open(&args.root)?;
    server_runtime.block_on(store.delete_prefix("published"))?;
    let policy = LimitPolicy::builtin();
    let date = redflower::synth::WorldConfig::demo(0).end;
    let rows: Vec<LimitRow> = (0..args.users)
        .map(|user_id| {
            let pd = 0.005 + 0.2 * ((user_id * 7919) % 1000) as f64 / 1000.0;
            LimitRow {
                user_id,
                pd,
                decision: policy.decide(pd, &Default::default()),
                suggestions: vec![
                    suggestion("language", 800.0),
                    suggestion("professional", 300.0),
                ],
            }
        })
        .collect();
    let manifest = server_runtime.block_on(publish::publish(
        &store,
        &rows,
        date,
        "bench",
        &policy.version,
    ))?;
    drop(rows);
    println!(
        "published {} users as version {}",
        args.users, manifest.version
    );

    let server = server_runtime.block_on(serve::start(
        store.clone(),
        ServeConfig {
            addr: "127.0.0.1:0".parse()?,
            token: None,
            write_token: None,
            poll: Duration::from_secs(3600),
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_table_age: None,
            tls: None,
            shard: None,
        },
    ))?;
    let base = format!("http://{}", server.addr());
    let count = args.users;
    let serve_result = drive(
        &generator,
        &args,
        "redflower serve (HTTP/1.1, JSON)",
        |c, n| {
            let base = base.clone();
            async move {
                let client = LimitsClient::new(&base, None)?;
                let mut nanos = Vec::with_capacity(n as usize);
                for user in users(c + 1, count).take(n as usize) {
                    let path = format!("/v1/limits/{user}");
                    let started = Instant::now();
                    // the JSON body is read whole, not parsed: the Redis rows do not parse theirs
                    let (status, body) = client.get(&path).await?;
                    if status != 200 || body.is_empty() {
                        bail!("user {user}: {status}");
                    }
                    nanos.push(started.elapsed().as_nanos() as u64);
                }
                Ok(nanos)
            }
        },
    )?;
    let wrk_result = run_wrk(&args, &base)?;
    let stats = server_runtime.block_on(server.stop())?;
    println!(
        "serve answered {} lookups, {} not found",
        stats.answered, stats.not_found
    );

    // Redis with the same table
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _redis = RedisServer(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian package redis-server)")?,
    );
    let waiting = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if waiting.elapsed() > Duration::from_secs(30) {
            bail!("redis-server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let target = Arc::new(RedisTarget::parse(
        &format!("redis://127.0.0.1:{port}"),
        "rf",
    )?);
    let load = generator.block_on(async {
        let snapshot = Snapshot::load(&store, manifest.clone()).await?;
        anyhow::Ok(sink::load(&target, &snapshot, 2).await?)
    })?;
    println!(
        "loaded {} keys into redis-server in {:.1}s",
        load.keys, load.seconds
    );
    let version = manifest.version;
    let redis_result = drive(
        &generator,
        &args,
        "redis-server 7 (RESP GET, same generator)",
        |c, n| {
            let target = target.clone();
            async move {
                let mut redis = Redis::connect(&target).await?;
                let mut nanos = Vec::with_capacity(n as usize);
                for user in users(c + 1, count).take(n as usize) {
                    let key = target.key(version, user);
                    let started = Instant::now();
                    if !matches!(
                        redis.call(&[b"GET", key.as_bytes()]).await?,
                        Reply::Bulk(Some(_))
                    ) {
                        bail!("key {key} missing");
                    }
                    nanos.push(started.elapsed().as_nanos() as u64);
                }
                Ok(nanos)
            }
        },
    )?;

    let benchmark = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-c",
            &args.connections.to_string(),
            "-n",
            &args.requests.to_string(),
            "-r",
            &args.users.to_string(),
            "--csv",
            "GET",
            &format!("rf:v{version}:__rand_int__"),
        ])
        .output()
        .context("running redis-benchmark (Debian package redis-tools)")?;
    let csv = String::from_utf8_lossy(&benchmark.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let fields: Vec<f64> = csv
        .lines()
        .nth(1)
        .map(|line| {
            line.split(',')
                .skip(1)
                .filter_map(|f| f.trim_matches('"').parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // a hit check: redis-benchmark does not say whether its keys existed
    let hits = generator.block_on(async {
        let mut redis = Redis::connect(&target).await?;
        let reply = redis.call(&[b"INFO"]).await?;
        anyhow::Ok(match reply {
            Reply::Bulk(Some(text)) => String::from_utf8_lossy(&text)
                .lines()
                .filter(|l| {
                    ["keyspace_hits", "keyspace_misses", "used_memory_rss_human"]
                        .iter()
                        .any(|field| l.starts_with(field))
                })
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
    })?;

    println!();
    println!(
        "{} users, {} requests over {} connections; server threads {}, generator threads {}; {} cores",
        args.users,
        args.requests,
        args.connections,
        args.server_threads,
        args.client_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| target (client) | requests/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|");
    for r in [&serve_result, &redis_result, &wrk_result] {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.3} |",
            r.label,
            r.requests as f64 / r.seconds,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms
        );
    }
    if fields.len() >= 7 {
        println!(
            "| redis-server 7 (redis-benchmark GET) | {:.0} | {:.3} | {:.3} | - |",
            fields[0], fields[3], fields[5]
        );
        println!(
            "serve (wrk) / redis (redis-benchmark) throughput: {:.2}",
            wrk_result.requests as f64 / wrk_result.seconds / fields[0]
        );
    } else {
        println!("redis-benchmark printed nothing usable: {csv}");
    }
    println!("redis {hits}");
    Ok(())
}

/// A suggestion of `family` for `amount` more, as the published table stores it.
fn suggestion(family: &str, amount: f64) -> Suggestion {
    Suggestion {
        family: family.into(),
        certificate: HeldCertificate {
            cert_type_id: 1,
            name: format!("a {family} certificate"),
            family: family.into(),
            tier: 1,
            confidence: 1.0,
        },
        amount,
    }
}
