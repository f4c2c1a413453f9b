//! media-bench: relay capacity (ours and rtpengine's) and player/recorder
//! CPU cost. Run by `tests/bench/media-bench.sh`, which builds it, starts
//! rtpengine and pins this process to one CPU; the process under test runs
//! on the other (`--serve-cpu`).
//!
//! ```text
//! media-bench all [--serve-cpu 0] [--only relay,rtpengine,player,recorder]
//!     [--rtpengine-ng 127.0.0.1:22222 --rtpengine-pid PID]
//!     [--step-secs 10] [--warmup-secs 2] [--baseline-secs 3]
//!     [--start-calls 250] [--max-calls 6000] [--retries 1] [--budget-secs 600]
//!     [--player-calls 1000] [--recorder-calls 1000] [--cpu-secs 10]
//!     [--machine TEXT]
//! media-bench serve relay|player|recorder --calls N ...   (internal)
//! ```
//! Progress goes to stderr; the last stdout line is one JSON object.
//! Without a command it prints this usage and exits 0, so `cargo bench`
//! and `cargo test --all-targets` pass over it.

mod loadgen;
mod ng;
mod serve;

use anyhow::{anyhow, bail, Context, Result};
use loadgen::{CallTarget, Load, LoadReport, Phones};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: media-bench all [--serve-cpu 0] [--only relay,rtpengine,player,recorder] \
[--rtpengine-ng ADDR --rtpengine-pid PID] [--step-secs 10] [--warmup-secs 2] [--baseline-secs 3] \
[--start-calls 250] [--max-calls 6000] [--retries 1] [--budget-secs 600] [--player-calls 1000] \
[--recorder-calls 1000] [--cpu-secs 10] [--machine TEXT]";

/// Pass criteria of a relay trial.
const MAX_LOSS: f64 = 0.001;
const MAX_ADDED_P99_MS: f64 = 1.0;

fn main() {
    if let Err(error) = run() {
        eprintln!("media-bench: {error:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    // `cargo bench` appends --bench; it means nothing here.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        None => {
            eprintln!("{USAGE}");
            Ok(())
        }
        Some("serve") => serve::main(&args[1..]),
        Some("all") => all(&Options::parse(&args[1..])?),
        Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
    }
}

/// `--key value` pairs.
pub struct Options(HashMap<String, String>);

impl Options {
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut map = HashMap::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .ok_or_else(|| anyhow!("expected --option, got {arg:?}\n{USAGE}"))?;
            let value = it.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
            map.insert(key.to_string(), value.clone());
        }
        Ok(Options(map))
    }

    pub fn get<T: FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(key) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|e| anyhow!("--{key} {text:?}: {e}")),
        }
    }

    pub fn required<T: FromStr>(&self, key: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        let text = self
            .0
            .get(key)
            .ok_or_else(|| anyhow!("--{key} is required"))?;
        text.parse().map_err(|e| anyhow!("--{key} {text:?}: {e}"))
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// CPU time (user + system) of every thread of `pid`, from schedstat's
/// nanosecond run time (finer than /proc/PID/stat's 10 ms ticks).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread that exited between listing and reading has no CPU left
        // to count.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("empty {}", path.display()))?
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?;
        total += ns;
    }
    Ok(Duration::from_nanos(total))
}

/// (steal, total) jiffies of one CPU from /proc/stat: time the hypervisor
/// ran something else on it is interference no priority setting prevents.
fn steal_ticks(cpu: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| {
        l.strip_prefix("cpu")
            .and_then(|r| r.strip_prefix(cpu))
            .is_some_and(|r| r.starts_with(' '))
    })?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    Some((*ticks.get(7)?, ticks.iter().take(8).sum()))
}

/// Four sockets per relayed call need more descriptors than the default
/// soft limit allows.
pub fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A `media-bench serve` child pinned to one CPU; killed when dropped.
struct Served {
    child: Child,
    ports: Vec<u16>,
}

impl Served {
    fn spawn(cpu: &str, kind: &str, args: &[String]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut child = Command::new("taskset")
            .arg("-c")
            .arg(cpu)
            .arg(exe)
            .args(["serve", kind])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting taskset (util-linux)")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child has no stdout"))?;
        let mut served = Served {
            child,
            ports: Vec::new(),
        };
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let mut words = line.split_whitespace();
        if words.next() != Some("ready") {
            bail!("media-bench serve {kind} did not start (see its error above)");
        }
        served.ports = words
            .map(|w| w.parse().map_err(|e| anyhow!("bad port {w:?}: {e}")))
            .collect::<Result<_>>()?;
        Ok(served)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Per call, (where phone A sends, where phone B sends).
    fn targets(&self) -> Vec<CallTarget> {
        self.ports
            .chunks_exact(2)
            .map(|p| CallTarget {
                a_to: SocketAddrV4::new([127, 0, 0, 1].into(), p[0]),
                b_to: SocketAddrV4::new([127, 0, 0, 1].into(), p[1]),
            })
            .collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One load step through a relay, with its direct-loopback baseline.
struct Trial {
    calls: usize,
    loss: f64,
    p50_ms: f64,
    p99_ms: f64,
    baseline_p99_ms: f64,
    relay_cpu: f64,
    generator_cpu: f64,
    /// Share of the tested CPU's time the hypervisor gave to others.
    steal: Option<f64>,
    max_send_lag_ms: f64,
    send_errors: u64,
}

impl Trial {
    /// p99 through the relay minus p99 of the same load sent phone to
    /// phone directly: what the relay adds, with the generator's own
    /// delays (also in the baseline) taken out.
    fn added_p99_ms(&self) -> f64 {
        (self.p99_ms - self.baseline_p99_ms).max(0.0)
    }

    fn passed(&self) -> bool {
        self.loss < MAX_LOSS && self.added_p99_ms() < MAX_ADDED_P99_MS
    }

    /// A failure below saturation may be a neighbour's doing (this machine
    /// is shared: one stall near the limit takes long to drain); a clear
    /// overload is not worth repeating.
    fn marginal(&self) -> bool {
        self.loss < 10.0 * MAX_LOSS
            && (self.added_p99_ms() < 5.0 * MAX_ADDED_P99_MS || self.relay_cpu < 0.9)
    }

    fn log(&self, name: &str) {
        eprintln!(
            "  {name} {:>5} calls: loss {:.4}%  p50 {:.3} ms  p99 {:.3} ms  baseline p99 {:.3} ms  \
             added p99 {:.3} ms  relay CPU {:.0}%  generator CPU {:.0}%  max send lag {:.2} ms  \
             send errors {}  steal {}  -> {}",
            self.calls,
            self.loss * 100.0,
            self.p50_ms,
            self.p99_ms,
            self.baseline_p99_ms,
            self.added_p99_ms(),
            self.relay_cpu * 100.0,
            self.generator_cpu * 100.0,
            self.max_send_lag_ms,
            self.send_errors,
            self.steal
                .map_or("n/a".to_string(), |s| format!("{:.1}%", s * 100.0)),
            if self.passed() { "pass" } else { "FAIL" }
        );
    }
}

fn share(cpu: Duration, window: Duration) -> f64 {
    cpu.as_secs_f64() / window.as_secs_f64().max(1e-9)
}

struct Bench {
    phones: Phones,
    serve_cpu: String,
    warmup: Duration,
    measure: Duration,
    baseline: Duration,
    run_id: u32,
}

impl Bench {
    fn load(&mut self, targets: &[CallTarget], measure: Duration, pid: u32) -> Result<LoadReport> {
        self.run_id += 1;
        loadgen::run(
            &self.phones,
            &Load {
                targets,
                warmup: self.warmup,
                measure,
                watch_pid: pid,
                run_id: self.run_id,
            },
        )
    }

    /// Drives `targets` through the relay process `pid`, then the same
    /// load phone to phone.
    fn trial(&mut self, targets: &[CallTarget], pid: u32) -> Result<Trial> {
        let steal_before = steal_ticks(&self.serve_cpu);
        let through = self.load(targets, self.measure, pid)?;
        let steal = match (steal_before, steal_ticks(&self.serve_cpu)) {
            (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
                Some((s1 - s0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let direct = vec![
            CallTarget {
                a_to: self.phones.addr_b()?,
                b_to: self.phones.addr_a()?,
            };
            targets.len()
        ];
        let baseline = self.load(&direct, self.baseline, std::process::id())?;
        Ok(Trial {
            calls: targets.len(),
            loss: through.loss(),
            p50_ms: through.latency.quantile_ms(0.5),
            p99_ms: through.latency.quantile_ms(0.99),
            baseline_p99_ms: baseline.latency.quantile_ms(0.99),
            relay_cpu: share(through.watched_cpu, through.window),
            generator_cpu: share(through.own_cpu, through.window),
            steal,
            max_send_lag_ms: through.max_send_lag.as_secs_f64() * 1000.0,
            send_errors: through.send_errors,
        })
    }

    fn media_trial(&mut self, calls: usize) -> Result<Trial> {
        let args = [
            "--calls".to_string(),
            calls.to_string(),
            "--peer-a".to_string(),
            self.phones.addr_a()?.to_string(),
            "--peer-b".to_string(),
            self.phones.addr_b()?.to_string(),
        ];
        let served = Served::spawn(&self.serve_cpu, "relay", &args)?;
        self.trial(&served.targets(), served.pid())
    }

    fn rtpengine_trial(&mut self, ng: &mut ng::NgClient, pid: u32, calls: usize) -> Result<Trial> {
        let (a, b) = (self.phones.addr_a()?.port(), self.phones.addr_b()?.port());
        let prefix = format!("media-bench-{}-{}", std::process::id(), self.run_id);
        let mut targets = Vec::with_capacity(calls);
        let mut created = 0;
        let result = (|| {
            for i in 0..calls {
                let (a_to, b_to) = ng.create_call(&format!("{prefix}-{i}"), a, b)?;
                created += 1;
                targets.push(CallTarget { a_to, b_to });
            }
            self.trial(&targets, pid)
        })();
        for i in 0..created {
            ng.delete(&format!("{prefix}-{i}"))?;
        }
        result
    }
}

/// Doubles the call count until a trial fails, then bisects between the
/// last pass and the first failure down to 5% (or 50 calls). A marginal
/// failure is retried `retries` times, since other work on this machine
/// can spoil one trial. Returns the best passing trial.
fn search(
    name: &str,
    start: usize,
    max: usize,
    retries: usize,
    deadline: Instant,
    mut trial: impl FnMut(usize) -> Result<Trial>,
) -> Result<Option<Trial>> {
    eprintln!(
        "{name}: searching for the most calls one core relays (loss < 0.1%, added p99 < 1 ms)"
    );
    let mut best: Option<Trial> = None;
    let mut first_fail: Option<usize> = None;
    let mut calls = start;
    while Instant::now() < deadline {
        let mut passed = None;
        for _ in 0..=retries {
            let t = trial(calls)?;
            t.log(name);
            if t.passed() {
                passed = Some(t);
                break;
            }
            if !t.marginal() {
                break;
            }
        }
        match passed {
            Some(t) => best = Some(t),
            None => first_fail = Some(calls),
        }
        let low = best.as_ref().map_or(0, |t| t.calls);
        calls = match first_fail {
            None if calls * 2 <= max => calls * 2,
            None => break,
            Some(high) => {
                if high - low <= (low / 20).max(50) {
                    break;
                }
                ((low + high) / 2).div_ceil(50) * 50
            }
        };
        if calls <= low || Some(calls) == first_fail {
            break;
        }
    }
    if Instant::now() >= deadline {
        eprintln!("{name}: time budget spent, stopping the search");
    }
    Ok(best)
}

/// µs of CPU per call-second.
struct CpuCost {
    us_per_call_second: f64,
}

fn player_cost(bench: &mut Bench, calls: usize, secs: Duration) -> Result<CpuCost> {
    let args = [
        "--calls".to_string(),
        calls.to_string(),
        "--sink".to_string(),
        bench.phones.addr_a()?.to_string(),
    ];
    let served = Served::spawn(&bench.serve_cpu, "player", &args)?;
    loadgen::sink(&bench.phones, bench.warmup)?;
    let (cpu, at) = (process_cpu(served.pid())?, Instant::now());
    let packets = loadgen::sink(&bench.phones, secs)?;
    let (cpu, window) = (process_cpu(served.pid())?.saturating_sub(cpu), at.elapsed());
    let call_seconds = calls as f64 * window.as_secs_f64();
    let cost = CpuCost {
        us_per_call_second: cpu.as_secs_f64() * 1e6 / call_seconds,
    };
    eprintln!(
        "player: {calls} looping players for {:.1} s: CPU {:.1}% of a core, {:.1} µs per call-second, \
         {:.2}% of frames delivered",
        window.as_secs_f64(),
        share(cpu, window) * 100.0,
        cost.us_per_call_second,
        packets as f64 * 100.0 / (call_seconds * 50.0)
    );
    Ok(cost)
}

fn recorder_cost(bench: &mut Bench, calls: usize, secs: Duration) -> Result<CpuCost> {
    let dir = std::env::temp_dir().join(format!("media-bench-recordings-{}", std::process::id()));
    let args = [
        "--calls".to_string(),
        calls.to_string(),
        "--dir".to_string(),
        dir.display().to_string(),
    ];
    let result = (|| -> Result<(LoadReport, u64)> {
        let served = Served::spawn(&bench.serve_cpu, "recorder", &args)?;
        let report = bench.load(&served.targets(), secs, served.pid())?;
        let written = wav_bytes(&dir)?;
        Ok((report, written))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let (report, written) = result?;
    let cost = CpuCost {
        us_per_call_second: report.watched_cpu.as_secs_f64() * 1e6
            / (calls as f64 * report.window.as_secs_f64()),
    };
    eprintln!(
        "recorder: {calls} calls (2 legs each, 50 packets/s per leg) for {:.1} s: CPU {:.1}% of a core, \
         {:.1} µs per call-second, {:.1} MB of WAV written",
        report.window.as_secs_f64(),
        share(report.watched_cpu, report.window) * 100.0,
        cost.us_per_call_second,
        written as f64 / 1e6
    );
    if written == 0 {
        bail!("the recorders wrote nothing to {}", dir.display());
    }
    Ok(cost)
}

fn wav_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        total += entry?.metadata()?.len();
    }
    Ok(total)
}

fn all(options: &Options) -> Result<()> {
    let secs = |key: &str, default: f64| -> Result<Duration> {
        Ok(Duration::from_secs_f64(options.get(key, default)?))
    };
    let budget = secs("budget-secs", 600.0)?;
    let only = options
        .text("only")
        .unwrap_or("relay,rtpengine,player,recorder");
    let wanted = |part: &str| only.split(',').any(|p| p == part);
    let start_calls: usize = options.get("start-calls", 250)?;
    let max_calls: usize = options.get("max-calls", 6000)?;
    let retries: usize = options.get("retries", 1)?;
    let cpu_secs = secs("cpu-secs", 10.0)?;
    let started = Instant::now();
    raise_open_file_limit();
    loadgen::tighten_timer_slack();
    let mut bench = Bench {
        phones: Phones::bind()?,
        serve_cpu: options.get("serve-cpu", "0".to_string())?,
        warmup: secs("warmup-secs", 2.0)?,
        measure: secs("step-secs", 10.0)?,
        baseline: secs("baseline-secs", 3.0)?,
        run_id: 0,
    };

    let player = if wanted("player") {
        Some(player_cost(
            &mut bench,
            options.get("player-calls", 1000)?,
            cpu_secs,
        )?)
    } else {
        None
    };
    let recorder = if wanted("recorder") {
        Some(recorder_cost(
            &mut bench,
            options.get("recorder-calls", 1000)?,
            cpu_secs,
        )?)
    } else {
        None
    };
    let ramps = [wanted("relay"), wanted("rtpengine")];
    let ramp_count = ramps.iter().filter(|w| **w).count().max(1) as u32;
    let ramp_budget = budget.saturating_sub(started.elapsed()) / ramp_count;
    let relay = if ramps[0] {
        search(
            "relay",
            start_calls,
            max_calls,
            retries,
            Instant::now() + ramp_budget,
            |n| bench.media_trial(n),
        )?
    } else {
        None
    };
    let rtpengine = if ramps[1] {
        let ng_addr: SocketAddr = options.required("rtpengine-ng")?;
        let pid: u32 = options.required("rtpengine-pid")?;
        let mut ng = ng::NgClient::connect(ng_addr)?;
        search(
            "rtpengine",
            start_calls,
            max_calls,
            retries,
            Instant::now() + ramp_budget,
            |n| bench.rtpengine_trial(&mut ng, pid, n),
        )?
    } else {
        None
    };

    let calls = |t: &Option<Trial>| t.as_ref().map_or("null".into(), |t| t.calls.to_string());
    let added = |t: &Option<Trial>| {
        t.as_ref()
            .map_or("null".into(), |t| format!("{:.3}", t.added_p99_ms()))
    };
    let cost = |c: &Option<CpuCost>| {
        c.as_ref()
            .map_or("null".into(), |c| format!("{:.1}", c.us_per_call_second))
    };
    let per_core = |c: &Option<CpuCost>| {
        c.as_ref().map_or("null".into(), |c| {
            format!("{:.0}", 1e6 / c.us_per_call_second)
        })
    };
    let machine = options.text("machine").unwrap_or("unknown");
    println!(
        "{{\"relay_calls_per_core\":{},\"rtpengine_relay_calls_per_core\":{},\
         \"relay_p99_added_latency_ms_at_max\":{},\"rtpengine_p99_added_latency_ms_at_max\":{},\
         \"player_cpu_us_per_call_second\":{},\"recorder_cpu_us_per_call_second\":{},\
         \"player_calls_per_core\":{},\"recorder_calls_per_core\":{},\"machine\":\"{}\"}}",
        calls(&relay),
        calls(&rtpengine),
        added(&relay),
        added(&rtpengine),
        cost(&player),
        cost(&recorder),
        per_core(&player),
        per_core(&recorder),
        machine.replace('\\', "\\\\").replace('"', "\\\"")
    );
    Ok(())
}
