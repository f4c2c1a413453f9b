//! RFC 4475 torture test against the real `pbx-node` binary over UDP.
//!
//! The node runs in a fresh network namespace with only loopback up, so
//! nothing it answers can leak to (or depend on) the host network and the
//! well-known ports are free. The test binary re-runs itself inside the
//! namespace as the sender (this same test, switched by an env var): it sends
//! every message of `tests/conformance/rfc4475/verdicts.tsv` from its own
//! socket, records what comes back, then probes with OPTIONS. The outer run
//! judges the answers against the table and owns every cleanup.
//!
//! Needs root (`ip netns`), like the CI that runs it; it fails otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Set in the re-run inside the namespace: where the node listens.
const TARGET_ENV: &str = "PBX_TORTURE_TARGET";
/// Set in the re-run: the file the sender writes its observations to.
const OUT_ENV: &str = "PBX_TORTURE_OUT";
const TEST_NAME: &str = "rfc4475_over_udp_in_netns";
/// Fixed ports are safe: the namespace is new and private to this run.
const SIP_ADDR: &str = "127.0.0.1:5060";
const RAFT_ADDR: &str = "127.0.0.1:7400";

/// How long a request may take to be answered, and how long we listen for a
/// second (unwanted) answer once one has come.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const EXTRA_WINDOW: Duration = Duration::from_millis(100);
/// A response is never answered; this long without a datagram counts as none.
const SILENCE_WINDOW: Duration = Duration::from_millis(500);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
const SENDER_TIMEOUT: Duration = Duration::from_secs(40);

/// Statuses that only the parser/validator gives: a message the table says
/// to `accept` must not get one of these (anything else is the registrar's
/// normal handling: 200, 401, 404, 405, 407, 481 …).
const REJECTION_CODES: &[u16] = &[400, 406, 413, 416, 420, 483, 501, 505, 513];

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance/rfc4475")
}

struct Row {
    name: String,
    kind: String,
    expected: String,
}

fn verdict_table() -> Vec<Row> {
    let path = corpus_dir().join("verdicts.tsv");
    let table = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the RFC 4475 corpus is vendored in the repository)",
            path.display()
        )
    });
    let rows: Vec<Row> = table
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(cols.len() >= 4, "verdicts.tsv: short line {line:?}");
            Row {
                name: cols[0].to_string(),
                kind: cols[1].to_string(),
                expected: cols[3].to_string(),
            }
        })
        .collect();
    assert_eq!(rows.len(), 49, "verdicts.tsv should list 49 messages");
    rows
}

#[test]
fn rfc4475_over_udp_in_netns() {
    match std::env::var(TARGET_ENV) {
        Ok(target) => send_everything(&target),
        Err(_) => orchestrate(),
    }
}

// ---------------------------------------------------------------- outer run

/// The namespace, the node in it and anything else left inside: removed on
/// every exit path, panics included.
struct Netns {
    name: String,
    node: Option<Child>,
}

impl Netns {
    fn create() -> Netns {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("pbx-torture-{}-{nanos}", std::process::id());
        run_ip(&["netns", "add", &name]);
        // From here on Drop deletes it, even if bringing lo up fails.
        let netns = Netns { name, node: None };
        run_ip(&[
            "netns",
            "exec",
            &netns.name,
            "ip",
            "link",
            "set",
            "lo",
            "up",
        ]);
        netns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut node) = self.node.take() {
            let _ = node.kill();
            let _ = node.wait();
        }
        // A sender or node that outlived its parent would keep the namespace
        // alive after `ip netns del`: end whatever still runs inside it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running `ip` (Debian package iproute2): {e}"));
    assert!(
        output.status.success(),
        "ip {}: {} (this test needs root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// Interface names of the network namespace `pid` lives in.
fn interfaces_of(pid: u32) -> Vec<String> {
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect()
}

fn orchestrate() {
    let rows = verdict_table();
    let work = tempfile::tempdir().expect("tempdir");
    let mut netns = Netns::create();

    // `ip netns exec` execs the command in place, so the child is the node.
    let stderr_path = work.path().join("node.stderr");
    let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
    let mut node = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(env!("CARGO_BIN_EXE_pbx-node"))
        .arg("--data-dir")
        .arg(work.path().join("data"))
        .args(["--sip-udp-listen", SIP_ADDR, "--sip-tcp-listen", SIP_ADDR])
        .args(["--raft-listen", RAFT_ADDR, "--demo", "true"])
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("starting pbx-node under ip netns exec");
    let stdout = node.stdout.take().expect("piped stdout");
    let node_pid = node.id();
    netns.node = Some(node);

    // The node logs to stdout too: keep every line for the failure report.
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = ready_tx.send(line.clone());
                }
                if let Ok(mut log) = log.lock() {
                    log.push(line);
                }
            }
        });
    }
    let node_report = |netns: &Netns| {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let stdout = log.lock().map(|l| l.join("\n")).unwrap_or_default();
        format!(
            "netns {}\n--- node stdout ---\n{stdout}\n--- node stderr ---\n{stderr}",
            netns.name
        )
    };
    if let Err(e) = ready_rx.recv_timeout(NODE_READY_TIMEOUT) {
        panic!("node not ready: {e}\n{}", node_report(&netns));
    }
    let interfaces = interfaces_of(node_pid);
    assert_eq!(
        interfaces,
        vec!["lo".to_string()],
        "the node must run in a namespace with only loopback"
    );

    // The sender: this test again, inside the namespace.
    let out_path = work.path().join("observations.tsv");
    let mut sender = Command::new("ip")
        .args(["netns", "exec", &netns.name])
        .arg(std::env::current_exe().expect("test binary path"))
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(TARGET_ENV, SIP_ADDR)
        .env(OUT_ENV, &out_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the sender under ip netns exec");
    let deadline = Instant::now() + SENDER_TIMEOUT;
    let status = loop {
        match sender.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = sender.kill();
                let _ = sender.wait();
                panic!("sender did not finish in {SENDER_TIMEOUT:?}");
            }
        }
    };
    let sender_output = sender.wait_with_output().ok();
    let sender_text = sender_output
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default();
    assert!(
        status.success(),
        "sender failed ({status}):\n{sender_text}\n{}",
        node_report(&netns)
    );

    let observed = read_observations(&out_path);
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for row in &rows {
        let Some(answers) = observed.get(&row.name) else {
            failures.push(format!("{}: not sent", row.name));
            continue;
        };
        let shown = if answers.is_empty() {
            "-".to_string()
        } else {
            answers.join(",")
        };
        summary.push(format!("{:<11} {:<22} {shown}", row.name, row.expected));
        if let Err(why) = judge(row, answers) {
            failures.push(format!(
                "{}: expected {}, got [{shown}]: {why}",
                row.name, row.expected
            ));
        }
    }
    let probe = observed.get("probe:after").cloned().unwrap_or_default();
    if probe != ["200"] {
        failures.push(format!(
            "OPTIONS after the torture: got {probe:?}, want 200"
        ));
    }
    if let Some(node) = netns.node.as_mut() {
        if let Ok(Some(exit)) = node.try_wait() {
            failures.push(format!("the node exited during the run: {exit}"));
        }
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    if stderr.contains("panicked") {
        failures.push("the node panicked (see stderr)".to_string());
    }
    eprintln!(
        "name        expected               answers\n{}",
        summary.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        node_report(&netns)
    );
}

/// Checks one message's answers (status codes, `bad` for an unparsable
/// datagram) against its table token.
fn judge(row: &Row, answers: &[String]) -> Result<(), String> {
    if answers.iter().any(|a| a == "bad") {
        return Err("an answer was not a parsable SIP response".into());
    }
    if row.kind == "response" {
        // `accept` and `drop` look alike on the wire: a response is never
        // answered. What the test can see is that nothing comes back.
        return if answers.is_empty() {
            Ok(())
        } else {
            Err("a response must not be answered".into())
        };
    }
    let statuses: Vec<u16> = answers.iter().filter_map(|a| a.parse().ok()).collect();
    // Provisional answers (100 Trying to an INVITE) may precede the final one.
    let finals: Vec<u16> = statuses.into_iter().filter(|s| *s >= 200).collect();
    let [status] = finals[..] else {
        return Err(format!(
            "want exactly one final response, got {}",
            finals.len()
        ));
    };
    let tokens: Vec<&str> = row
        .expected
        .split("-or-")
        .map(|t| if t == "error" { "400" } else { t })
        .collect();
    if tokens.contains(&status.to_string().as_str()) {
        return Ok(());
    }
    if tokens.contains(&"accept") && !REJECTION_CODES.contains(&status) {
        return Ok(());
    }
    Err(format!("{status} is not among {tokens:?}"))
}

/// `name\tanswer,answer…` lines written by the sender.
fn read_observations(path: &Path) -> HashMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (the sender wrote nothing)", path.display()));
    text.lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, answers)| {
            let answers = answers
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            (name.to_string(), answers)
        })
        .collect()
}

// ----------------------------------------------------- run inside the netns

fn send_everything(target: &str) {
    let target: SocketAddr = target.parse().expect("target address");
    let out = PathBuf::from(std::env::var(OUT_ENV).expect("output path"));
    // Anything but loopback here would make the test prove nothing.
    assert_eq!(
        interfaces_of(std::process::id()),
        vec!["lo".to_string()],
        "the sender must run in the namespace"
    );
    let mut lines = Vec::new();
    let before = options_probe(target, "before");
    assert_eq!(before, ["200"], "the node must answer OPTIONS before");
    for row in verdict_table() {
        let path = corpus_dir().join(format!("{}.dat", row.name));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let first_wait = if row.kind == "response" {
            SILENCE_WINDOW
        } else {
            ANSWER_TIMEOUT
        };
        let answers = exchange(target, &bytes, first_wait);
        lines.push(format!("{}\t{}", row.name, answers.join(",")));
    }
    let after = options_probe(target, "after");
    lines.push(format!("probe:after\t{}", after.join(",")));
    std::fs::write(&out, lines.join("\n") + "\n").expect("writing observations");
}

/// Sends one datagram from a fresh socket (so no late answer to an earlier
/// message is mistaken for this one's) and returns the status of every
/// answer (`bad` if unparsable). Waits up to `first_wait` for a final
/// answer, then `EXTRA_WINDOW` for an unwanted second one. An identical
/// datagram is a retransmission (a 4xx to an INVITE repeats until ACKed)
/// and is counted once.
fn exchange(target: SocketAddr, bytes: &[u8], first_wait: Duration) -> Vec<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind sender socket");
    socket.send_to(bytes, target).expect("send datagram");
    let mut answers = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    let mut deadline = Instant::now() + first_wait;
    let mut buf = vec![0u8; 65_536];
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return answers;
        }
        socket.set_read_timeout(Some(wait)).expect("read timeout");
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            return answers;
        };
        let datagram = &buf[..n];
        if seen.iter().any(|s| s == datagram) {
            continue;
        }
        seen.push(datagram.to_vec());
        let status = sip::message::parse_datagram(datagram)
            .ok()
            .and_then(|m| m.status());
        answers.push(status.map_or_else(|| "bad".to_string(), |s| s.to_string()));
        if status.is_none_or(|s| s >= 200) {
            deadline = Instant::now() + EXTRA_WINDOW;
        }
    }
}

/// A plain OPTIONS to the demo domain; retried since this is UDP.
fn options_probe(target: SocketAddr, label: &str) -> Vec<String> {
    for attempt in 0..3 {
        let request = format!(
            "OPTIONS sip:demo.pbx.local SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-probe-{label}-{attempt}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@demo.pbx.local>;tag=probe-{label}\r\n\
             To: <sip:demo.pbx.local>\r\n\
             Call-ID: probe-{label}-{attempt}@torture\r\n\
             CSeq: {} OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            attempt + 1
        );
        let answers = exchange(target, request.as_bytes(), ANSWER_TIMEOUT);
        if !answers.is_empty() {
            return answers;
        }
    }
    Vec::new()
}
