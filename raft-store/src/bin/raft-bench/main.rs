//! raft-bench: three `raft-node` processes on loopback, 200-byte values.
//! Measures write throughput and commit latency at 1, 16 and 256 writers,
//! leader failover after kill -9, and RSS/disk of a node with many keys.
//! The last line printed is one JSON object with the figures.
//!
//! `cargo run --release -p raft-store --bin raft-bench -- [--seconds 5] [--kills 20] [--keys 1000000] [--writers 1,16,256]`

mod procs;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use procs::{ClusterHandle, Error, ProcCluster};
use raft_store::KeyRange;

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of load per concurrency level.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Leader kills for the failover figure.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Keys loaded for the RSS and disk figure.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Concurrency levels to measure (e.g. `--writers 256` to iterate on
    /// throughput alone).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 256])]
    writers: Vec<usize>,
    /// Where the nodes keep their data (a temporary folder by default).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Run one node (the benchmark starts three of these).
    Node(raft_store::standalone::Args),
}

#[derive(Parser, Debug)]
#[command(about = "raft-store benchmark", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    bench: Args,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

struct LoadResult {
    writes_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `writers` tasks put 200-byte values through the leader for `secs`.
async fn load(
    handle: &ClusterHandle,
    leader: u64,
    writers: usize,
    secs: u64,
    tag: &str,
) -> LoadResult {
    let until = Instant::now() + Duration::from_secs(secs);
    let failures = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (handle, failures, tag) = (handle.clone(), failures.clone(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < until {
                let key = format!("bench/{tag}/{w}/{i}").into_bytes();
                let started = Instant::now();
                match handle.put(leader, key, vec![b'v'; 200]).await {
                    Ok(_) => lat.push(started.elapsed()),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("{writers} writers: {failed} failed writes");
    }
    LoadResult {
        writes_per_sec: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
    }
}

async fn wait_leader(c: &ProcCluster) -> Result<u64, Error> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = c.leader().await {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err("no leader".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// kill -9 the leader; time until a survivor acknowledges a write.
async fn failover_once(c: &mut ProcCluster, round: usize) -> Result<Duration, Error> {
    let leader = wait_leader(c).await?;
    c.kill(leader).await?;
    let killed = Instant::now();
    let survivors = c.live();
    let mut attempt = 0usize;
    let took = loop {
        let via = survivors[attempt % survivors.len()];
        attempt += 1;
        let key = format!("failover/{round}/{attempt}").into_bytes();
        if c.handle.put(via, key, vec![b'f'; 200]).await.is_ok() {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err("no commit 30 s after the kill".into());
        }
    };
    c.spawn(leader, false).await?;
    // Let the restarted node catch up before the next kill.
    let target = c
        .handle
        .range(survivors[0], KeyRange::key("none"), true)
        .await?
        .revision;
    let deadline = Instant::now() + Duration::from_secs(30);
    while c
        .handle
        .range(leader, KeyRange::key("none"), false)
        .await
        .map(|r| r.revision)
        .unwrap_or(0)
        < target
    {
        if Instant::now() > deadline {
            return Err("restarted node did not catch up".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(took)
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn disk_mib(path: &std::path::Path) -> f64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| {
                let path = e.path();
                if path.is_dir() {
                    walk(&path)
                } else {
                    e.metadata().map(|m| m.len()).unwrap_or(0)
                }
            })
            .sum()
    }
    walk(path) as f64 / (1024.0 * 1024.0)
}

async fn bench(args: Args) -> Result<(), Error> {
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let program = vec![
        std::env::current_exe()?.display().to_string(),
        "node".to_string(),
    ];
    let mut c = ProcCluster::start(program, &dir, 3).await?;
    let leader = wait_leader(&c).await?;

    let mut figures = serde_json::Map::new();
    for &writers in &args.writers {
        let r = load(
            &c.handle,
            leader,
            writers,
            args.seconds,
            &format!("c{writers}"),
        )
        .await;
        eprintln!(
            "{writers:>3} writers: {:>8.0} writes/s  p50 {:.2} ms  p99 {:.2} ms",
            r.writes_per_sec, r.p50_ms, r.p99_ms
        );
        figures.insert(
            format!("writes_per_sec_{writers}"),
            r.writes_per_sec.round().into(),
        );
        figures.insert(
            format!("p50_ms_{writers}"),
            ((r.p50_ms * 100.0).round() / 100.0).into(),
        );
        figures.insert(
            format!("p99_ms_{writers}"),
            ((r.p99_ms * 100.0).round() / 100.0).into(),
        );
    }

    let mut failovers = Vec::new();
    for round in 0..args.kills {
        let took = failover_once(&mut c, round).await?;
        eprintln!("failover {round}: {:.0} ms", took.as_secs_f64() * 1000.0);
        failovers.push(took);
    }
    failovers.sort();
    if !failovers.is_empty() {
        figures.insert(
            "failover_median_ms".into(),
            percentile(&failovers, 0.5).round().into(),
        );
        figures.insert(
            "failover_max_ms".into(),
            percentile(&failovers, 1.0).round().into(),
        );
    }

    // Load the keys, then measure one node.
    let leader = wait_leader(&c).await?;
    let loaded = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let per_writer = args.keys.div_ceil(256);
    for w in 0..256u64 {
        let (handle, loaded) = (c.handle.clone(), loaded.clone());
        let keys = args.keys;
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let n = w * per_writer + i;
                if n >= keys {
                    break;
                }
                let key = format!("tenant/{:04}/ext/{n:08}", n % 1000).into_bytes();
                while handle
                    .put(leader, key.clone(), vec![b'k'; 200])
                    .await
                    .is_err()
                {}
                loaded.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let follower = c
        .live()
        .into_iter()
        .find(|id| *id != leader)
        .ok_or("no follower")?;
    // Let the follower apply everything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = c.pid(follower).ok_or("follower not running")?;
    let rss = rss_mib(pid);
    let disk = disk_mib(&c.data_dir(follower));
    eprintln!(
        "{} keys: follower RSS {rss:.0} MiB, disk {disk:.0} MiB",
        loaded.load(Ordering::Relaxed)
    );
    figures.insert("keys_loaded".into(), loaded.load(Ordering::Relaxed).into());
    figures.insert("rss_mib_1m_keys".into(), rss.round().into());
    figures.insert("disk_mib_1m_keys".into(), disk.round().into());
    println!("{}", serde_json::Value::Object(figures));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Node(args)) => raft_store::standalone::run(args)
            .await
            .map_err(|e| e.into()),
        None => bench(cli.bench).await,
    }
}
