//! Phones (sipp) register and call each other through the SBC, which
//! fronts a pbx-node: the call is answered end to end, leaves its CDR, its
//! relay is torn down, and nothing the phones receive names an address of
//! the inside. The phones, the SBC's public side, its inside and the node
//! each have their own loopback address (127.0.0.1, 127.0.0.2, 127.0.0.3),
//! so a leak is seen in every message the phones logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pbx_node::model::Tenant;
use pbx_node::repo::NewExtension;
use pbx_node::{NodeConfig, PbxNode};
use sbc::{Sbc, SbcConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

// No space: baresip's account line would cut it.
const PASSWORD: &str = "correct-horse";
const SBC_INSIDE: &str = "127.0.0.2";
const NODE_IP: &str = "127.0.0.3";

fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free UDP port")
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("IP"), port)
}

/// The nonce key the SBC and the nodes share, as production configures
/// it: so the tests' phones answer the SBC's challenges too.
fn edge_key(dir: &Path) -> PathBuf {
    let path = dir.join("edge-nonce.key");
    std::fs::write(&path, "system-tests-edge-nonce-key-0123456789\n").expect("edge key");
    path
}

async fn start_node(dir: &Path) -> (PbxNode, Tenant) {
    let config = NodeConfig {
        edge_nonce_key_file: Some(edge_key(dir)),
        sip_udp_listen: addr(NODE_IP, 0),
        sip_tcp_listen: addr(NODE_IP, 0),
        http_listen: addr("127.0.0.1", 0),
        data_dir: dir.join("node"),
        raft_listen: addr("127.0.0.1", free_udp_port("127.0.0.1")),
        // sipp 3.6 reads only the first challenge.
        sip_digest_sha256: false,
        ..NodeConfig::default()
    };
    let node = PbxNode::start(&config).await.expect("start pbx-node");
    let tenant = node
        .repo
        .create_tenant("Test", "TEST", "test.pbx.local")
        .await
        .expect("tenant");
    for number in ["100", "101"] {
        node.repo
            .create_extension(
                &tenant,
                NewExtension {
                    number: number.into(),
                    display_name: format!("Test {number}"),
                    username: None,
                    password: PASSWORD.into(),
                },
            )
            .await
            .expect("extension");
    }
    (node, tenant)
}

async fn start_sbc(dir: &Path, nodes: Vec<SocketAddr>) -> Sbc {
    start_sbc_with(dir, nodes, sbc::guard::GuardConfig::default()).await
}

async fn start_sbc_with(dir: &Path, nodes: Vec<SocketAddr>, guard: sbc::guard::GuardConfig) -> Sbc {
    let config = SbcConfig {
        guard,
        ..sbc_config(dir, nodes)
    };
    Sbc::start(&config).await.expect("start SBC")
}

/// Every listener on a free port of 127.0.0.1, the inside on 127.0.0.2.
fn sbc_config(dir: &Path, nodes: Vec<SocketAddr>) -> SbcConfig {
    SbcConfig {
        udp_listen: addr("127.0.0.1", 0),
        tcp_listen: addr("127.0.0.1", 0),
        tls_listen: addr("127.0.0.1", 0),
        wss_listen: addr("127.0.0.1", 0),
        https_listen: addr("127.0.0.1", 0),
        public_host: Some("127.0.0.1".into()),
        internal_listen: addr(SBC_INSIDE, 0),
        nodes,
        data_dir: dir.join("sbc"),
        rtp_port_min: 41_000,
        rtp_port_max: 41_999,
        media_public_bind: "127.0.0.1".parse().expect("IP"),
        http_listen: addr("127.0.0.1", 0),
        edge_nonce_key_file: Some(edge_key(dir)),
        ..SbcConfig::default()
    }
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../pbx-node/tests/sipp")
        .join(name)
}

fn work_dir(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("work dir");
    dir
}

/// sipp on 127.0.0.1:`port` playing `scenario` once toward `remote`,
/// logging every message it sends and receives into `work`.
fn sipp(
    scenario_name: &str,
    port: u16,
    remote: Option<SocketAddr>,
    work: &Path,
) -> tokio::process::Command {
    sipp_playing(&scenario(scenario_name), port, remote, work)
}

/// `sipp` with a scenario file of any path.
fn sipp_playing(
    scenario_file: &Path,
    port: u16,
    remote: Option<SocketAddr>,
    work: &Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sipp");
    command
        .args(["-sf", &scenario_file.to_string_lossy()])
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
        .args(["-m", "1", "-timeout", "30", "-timeout_error", "-nostdin"])
        .args(["-trace_err", "-trace_msg"])
        .current_dir(work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(remote) = remote {
        command.arg(remote.to_string());
    }
    command
}

/// Extension 101 registers through the SBC with a contact on a free port
/// of 127.0.0.1, where a sipp UAS can then answer; sipp's logs go to
/// `<root>/register`.
async fn register_101(root: &Path, sbc: &Sbc) -> u16 {
    let port = free_udp_port("127.0.0.1");
    let work = work_dir(root, "register");
    let output = sipp("register.xml", port, Some(sbc.udp), &work)
        .args(["-s", "101-TEST", "-au", "101-TEST", "-ap", PASSWORD])
        .output()
        .await
        .expect("sipp must be installed (Debian package sip-tester)");
    assert!(passed(&output, &work), "101 registers through the SBC");
    port
}

fn logs(work: &Path) -> String {
    std::fs::read_dir(work)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            format!(
                "--- {} ---\n{}",
                e.path().display(),
                std::fs::read_to_string(e.path()).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn passed(output: &std::process::Output, work: &Path) -> bool {
    if !output.status.success() {
        eprintln!(
            "sipp failed:\n{}\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            logs(work)
        );
    }
    output.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_through_the_sbc_is_answered_and_hides_the_inside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let sbc = start_sbc(dir.path(), vec![node.sip.udp_addr]).await;

    // 101 registers through the SBC, then answers as a sipp UAS.
    let callee_port = register_101(dir.path(), &sbc).await;
    let reg = dir.path().join("register");
    let uas = work_dir(dir.path(), "callee");
    let callee = sipp("uas_answer.xml", callee_port, None, &uas)
        .spawn()
        .expect("sipp");

    // 100 calls 101 through the SBC.
    let uac = work_dir(dir.path(), "caller");
    let output = sipp(
        "uac_call.xml",
        free_udp_port("127.0.0.1"),
        Some(sbc.udp),
        &uac,
    )
    .args([
        "-s", "101", "-au", "100-TEST", "-ap", PASSWORD, "-d", "1000",
    ])
    .args(["-key", "caller", "100-TEST"])
    .output()
    .await
    .expect("sipp");
    assert!(passed(&output, &uac), "407, answered with SDP, BYE");
    let output = tokio::time::timeout(Duration::from_secs(40), callee.wait_with_output())
        .await
        .expect("callee ends")
        .expect("callee output");
    assert!(passed(&output, &uas), "callee got INVITE, ACK and BYE");

    let mut cdrs = Vec::new();
    for _ in 0..50 {
        cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
        if !cdrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cdrs.len(), 1);
    assert_eq!(
        (
            cdrs[0].from.as_str(),
            cdrs[0].to.as_str(),
            cdrs[0].disposition.as_str()
        ),
        ("100", "101", "ANSWERED")
    );
    // Both legs cross the SBC: 100's call in, the node's call out to 101.
    let metrics = http_get(sbc.http, "/metrics").await;
    for leg in ["from_phone", "to_phone"] {
        let line = format!(r#"sbc_calls_total{{direction="{leg}",outcome="answered"}} 1"#);
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }

    // Every message either phone received or sent: no inside address.
    for work in [&reg, &uas, &uac] {
        let seen = logs(work);
        assert!(seen.contains("SIP/2.0"), "sipp logged its messages: {seen}");
        for inside in [SBC_INSIDE, NODE_IP] {
            assert!(
                !seen.contains(inside),
                "{inside} leaked to a phone:\n{seen}"
            );
        }
    }

    // The call's relay is gone and its ports are back.
    for _ in 0..50 {
        if sbc.status().relayed_calls == 0 && sbc.status().rtp_ports_in_use == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = sbc.status();
    assert_eq!(
        (status.relayed_calls, status.rtp_ports_in_use),
        (0, 0),
        "{status:?}"
    );
    assert_eq!(
        status.nodes,
        vec![sbc::dispatch::NodeStatus {
            addr: node.sip.udp_addr,
            healthy: true,
            draining: false
        }]
    );
    sbc.stop();
    node.shutdown().await;
}

/// What a node challenged once the SBC challenges itself, with nonces
/// the node accepts: sipp's second REGISTER and second call get the
/// SBC's 401 and 407 and still succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sbc_challenges_on_the_nodes_behalf_with_nonces_they_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let sbc = start_sbc(dir.path(), vec![node.sip.udp_addr]).await;
    let challenged_by_sbc = || async {
        let metrics = http_get(sbc.http, "/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("sbc_auth_challenges_total "))
            .map(str::to_string)
    };
    register_101(dir.path(), &sbc).await;
    assert_eq!(
        challenged_by_sbc().await.as_deref(),
        Some("0"),
        "the node's 401"
    );
    let callee_port = register_101(dir.path(), &sbc).await;
    assert_eq!(
        challenged_by_sbc().await.as_deref(),
        Some("1"),
        "the SBC's 401"
    );

    for call in 1..=2 {
        let uas = work_dir(dir.path(), &format!("callee-{call}"));
        let callee = sipp("uas_answer.xml", callee_port, None, &uas)
            .spawn()
            .expect("sipp");
        let uac = work_dir(dir.path(), &format!("caller-{call}"));
        let output = sipp(
            "uac_call.xml",
            free_udp_port("127.0.0.1"),
            Some(sbc.udp),
            &uac,
        )
        .args(["-s", "101", "-au", "100-TEST", "-ap", PASSWORD, "-d", "200"])
        .args(["-key", "caller", "100-TEST"])
        .output()
        .await
        .expect("sipp");
        assert!(passed(&output, &uac), "call {call}: 407, answered, BYE");
        let output = tokio::time::timeout(Duration::from_secs(40), callee.wait_with_output())
            .await
            .expect("callee ends")
            .expect("callee output");
        assert!(passed(&output, &uas), "call {call} reached 101");
    }
    assert_eq!(
        challenged_by_sbc().await.as_deref(),
        Some("2"),
        "the SBC's 407"
    );
    let mut answered = 0;
    for _ in 0..50 {
        let cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
        answered = cdrs.iter().filter(|c| c.disposition == "ANSWERED").count();
        if answered == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, 2);
    sbc.stop();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phones_register_and_call_over_ipv6() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = start_node(dir.path()).await;
    let v6 = |port| addr("::1", port);
    let sbc = Sbc::start(&SbcConfig {
        udp_listen: v6(0),
        tcp_listen: v6(0),
        tls_listen: v6(0),
        wss_listen: v6(0),
        https_listen: v6(0),
        public_host: Some("[::1]".into()),
        media_public_bind: "::1".parse().expect("IP"),
        ..sbc_config(dir.path(), vec![node.sip.udp_addr])
    })
    .await
    .expect("start SBC");
    assert!(sbc.udp.is_ipv6() && sbc.tls.is_ipv6() && sbc.wss.is_ipv6());

    let callee_port = free_udp_port("::1");
    let reg = work_dir(dir.path(), "register");
    let output = sipp("register.xml", callee_port, Some(sbc.udp), &reg)
        .args([
            "-i", "::1", "-s", "101-TEST", "-au", "101-TEST", "-ap", PASSWORD,
        ])
        .output()
        .await
        .expect("sipp");
    assert!(passed(&output, &reg), "101 registers over ::1");
    let uas = work_dir(dir.path(), "callee");
    let callee = sipp("uas_answer.xml", callee_port, None, &uas)
        .args(["-i", "::1"])
        .spawn()
        .expect("sipp");
    let uac = work_dir(dir.path(), "caller");
    let output = sipp("uac_call.xml", free_udp_port("::1"), Some(sbc.udp), &uac)
        .args(["-i", "::1", "-s", "101", "-au", "100-TEST", "-ap", PASSWORD])
        .args(["-key", "caller", "100-TEST"])
        .output()
        .await
        .expect("sipp");
    assert!(passed(&output, &uac), "100 calls 101 over ::1, answered");
    let output = tokio::time::timeout(Duration::from_secs(40), callee.wait_with_output())
        .await
        .expect("callee ends")
        .expect("callee output");
    assert!(passed(&output, &uas), "callee got INVITE, ACK and BYE");
    // The phones saw the SBC at [::1], media included, and nothing inside.
    let seen = logs(&uas);
    assert!(seen.contains("SIP/2.0/UDP [::1]:"), "{seen}");
    assert!(seen.contains("c=IN IP6 ::1"), "{seen}");
    for inside in [SBC_INSIDE, NODE_IP] {
        assert!(!seen.contains(inside), "{inside} leaked:\n{seen}");
    }
    sbc.stop();
    node.shutdown().await;
}

/// A plain HTTP/1.1 GET of `path`: the body.
/// An extension's allowed registration networks are checked against the
/// phone's own address, which the SBC records in the phone's Via and the
/// node trusts from it, not against the SBC's inside address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_registration_networks_see_the_phone_behind_the_sbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let sbc = start_sbc(dir.path(), vec![node.sip.udp_addr]).await;
    let allow = |networks: &[&str]| {
        let repo = node.repo.clone();
        let tenant_id = tenant.id.clone();
        let networks: Vec<ipnet::IpNet> = networks
            .iter()
            .map(|n| n.parse().expect("network"))
            .collect();
        async move {
            let mut extension = repo
                .extension(&tenant_id, "101")
                .await
                .expect("read")
                .expect("101");
            extension.settings.allowed_registration_cidrs = networks;
            repo.update_extension(&tenant_id, &extension)
                .await
                .expect("update 101");
            // The node's directory follows the store's watch.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    // The phone (127.0.0.1) is in this network; the SBC's inside
    // (127.0.0.2) is not.
    allow(&["127.0.0.1/32"]).await;
    register_101(dir.path(), &sbc).await;

    allow(&["127.0.0.2/32"]).await;
    let port = free_udp_port("127.0.0.1");
    let work = work_dir(dir.path(), "refused");
    let output = sipp("register.xml", port, Some(sbc.udp), &work)
        .args(["-s", "101-TEST", "-au", "101-TEST", "-ap", PASSWORD])
        .output()
        .await
        .expect("sipp");
    assert!(
        !passed(&output, &work),
        "a registration from outside the allowed networks is refused"
    );
    assert!(
        logs(&work).contains("403 Forbidden (registration not allowed from this network)"),
        "{}",
        logs(&work)
    );
    sbc.stop();
    node.shutdown().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_ban_the_source_which_then_hears_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = start_node(dir.path()).await;
    let guard: sbc::guard::GuardConfig =
        toml::from_str("ban_after_failures = 3").expect("guard config");
    let sbc = start_sbc_with(dir.path(), vec![node.sip.udp_addr], guard).await;
    let port = free_udp_port("127.0.0.1");
    // Three wrong passwords: each is a first challenge (not counted) and
    // a refused answer to credentials (counted).
    for attempt in 0..3 {
        let work = work_dir(dir.path(), &format!("wrong-{attempt}"));
        let output = sipp("register_wrong_password.xml", port, Some(sbc.udp), &work)
            .args([
                "-s",
                "101-TEST",
                "-au",
                "101-TEST",
                "-ap",
                "not the password",
            ])
            .output()
            .await
            .expect("sipp");
        assert!(
            passed(&output, &work),
            "attempt {attempt} is challenged twice"
        );
    }
    // Banned: even the right password gets no answer at all.
    let work = work_dir(dir.path(), "banned");
    let output = sipp("register.xml", port, Some(sbc.udp), &work)
        .args(["-s", "101-TEST", "-au", "101-TEST", "-ap", PASSWORD])
        .args(["-timeout", "3"])
        .output()
        .await
        .expect("sipp");
    assert!(!output.status.success(), "a banned source is not answered");
    let seen = logs(&work);
    assert!(!seen.contains("SIP/2.0 401"), "nothing came back:\n{seen}");
    let metrics = http_get(sbc.http, "/metrics").await;
    assert!(metrics.contains("sbc_bans_total 1"), "{metrics}");
    assert!(!metrics.contains("sbc_banned_dropped_total 0"), "{metrics}");
    sbc.stop();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_registered_over_udp_gets_keepalives_from_the_sbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = start_node(dir.path()).await;
    let sbc = Sbc::start(&SbcConfig {
        udp_keepalive_interval_secs: 1,
        ..sbc_config(dir.path(), vec![node.sip.udp_addr])
    })
    .await
    .expect("start SBC");
    // sipp registers from `port` and exits; the phone's port then hears
    // the SBC's pings, as a NAT between them would.
    let port = register_101(dir.path(), &sbc).await;
    let phone = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .expect("the phone's port");
    let mut buf = [0u8; 64];
    for ping in 0..2 {
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), phone.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("keepalive {ping} within 3 s"))
            .expect("recv");
        assert_eq!(from, sbc.udp, "from the SBC's SIP port");
        assert_eq!(&buf[..n], b"\r\n\r\n", "RFC 5626 double CRLF");
    }
    sbc.stop();
    node.shutdown().await;
}

/// svwar, from PyPI's `sipvicious`: `tests/run-all.sh` installs it into
/// its virtualenv and names it in `PBX_SVWAR`; without it this test fails.
fn svwar() -> tokio::process::Command {
    let program = std::env::var("PBX_SVWAR").unwrap_or_else(|_| "sipvicious_svwar".into());
    let mut command = tokio::process::Command::new(program);
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svwar_finds_no_extension_through_the_sbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = start_node(dir.path()).await;
    // The scan is a flood from one address: the rate limit must not be
    // what hides the extensions.
    let guard: sbc::guard::GuardConfig =
        toml::from_str("requests_per_sec = 1000.0\nburst = 1000\nban_after_failures = 0")
            .expect("guard config");
    let sbc = start_sbc_with(dir.path(), vec![node.sip.udp_addr], guard).await;
    // 101 is registered, 100 exists without a binding; both are in the
    // ranges, as bare numbers and as the usernames phones use (100-TEST).
    register_101(dir.path(), &sbc).await;
    let target = format!("udp://{}", sbc.udp);
    for method in ["REGISTER", "OPTIONS", "INVITE"] {
        for template in ["%d", "%d-TEST"] {
            let output = tokio::time::timeout(
                Duration::from_secs(120),
                svwar()
                    .current_dir(dir.path())
                    .args(["-b", "127.0.0.1", "-m", method, "-e", "95-105"])
                    .args(["--template", template, "--force", "--maximumtime", "60"])
                    .arg(&target)
                    .output(),
            )
            .await
            .expect("svwar ends within 120 s")
            .expect("svwar must be installed (PyPI sipvicious; tests/run-all.sh)");
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            eprintln!("svwar -m {method} --template {template}:\n{stdout}{stderr}");
            assert!(output.status.success(), "svwar failed:\n{stdout}{stderr}");
            // svwar prints a table of what it found, or "found nothing".
            assert!(
                stderr.contains("found nothing") && !stdout.contains("Extension"),
                "svwar told extensions apart ({method}, {template}):\n{stdout}{stderr}"
            );
        }
    }
    sbc.stop();
    node.shutdown().await;
}

/// The `pbx-node` binary cargo built beside this test (`cargo test
/// --workspace` builds it; after changing pbx-node alone, `cargo build
/// --workspace` first).
fn pbx_node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("pbx-node"))
        .expect("target dir");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --workspace` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

fn free_tcp_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("free TCP port")
}

/// A pbx-node running as its own OS process.
struct NodeProcess {
    id: u64,
    child: tokio::process::Child,
    config: PathBuf,
    sip: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
}

/// Three pbx-node processes forming one raft cluster as production starts
/// them (cluster CA files, peers); node 1 creates the demo tenant DEMO
/// (extensions 100-103, all with `PASSWORD`; one creator, since
/// pbx-node's demo creation is not safe to run on several nodes at once).
async fn three_node_processes(dir: &Path) -> Vec<NodeProcess> {
    let ca = raft_store::ClusterCa::generate("pbx").expect("cluster CA");
    let raft: Vec<SocketAddr> = (0..3)
        .map(|_| addr("127.0.0.1", free_udp_port("127.0.0.1")))
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let data = dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&data).expect("data dir");
        let identity = ca.issue_node(id).expect("node certificate");
        let write = |name: &str, text: &str| {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write file");
            path
        };
        let sip_port = free_udp_port(NODE_IP);
        let http = addr("127.0.0.1", free_tcp_port("127.0.0.1"));
        let peers: Vec<String> = (1..=3u64)
            .filter(|peer| *peer != id)
            .map(|peer| format!("\"{peer}@{}\"", raft[peer as usize - 1]))
            .collect();
        let rtp = 43_000 + 1_000 * id;
        // sipp 3.6 reads only the first challenge: MD5 only.
        let config = write(
            "node.toml",
            &format!(
                "node_id = {id}\nsip_udp_listen = \"{NODE_IP}:{sip_port}\"\n\
                 sip_tcp_listen = \"{NODE_IP}:{sip_port}\"\nhttp_listen = \"{http}\"\n\
                 raft_listen = \"{}\"\npeers = [{}]\ncluster_ca = \"{}\"\n\
                 cluster_cert = \"{}\"\ncluster_key = \"{}\"\nsip_digest_sha256 = false\n\
                 data_dir = \"{}\"\nrtp_port_min = {rtp}\nrtp_port_max = {}\n\
                 demo = {}\ndemo_extensions = \"100-103\"\ndemo_password = \"{PASSWORD}\"\n\
                 edge_nonce_key_file = \"{}\"\n",
                raft[id as usize - 1],
                peers.join(", "),
                write("ca.pem", &ca.cert_pem).display(),
                write("node.pem", &identity.cert_pem).display(),
                write("node.key", &identity.key_pem).display(),
                data.display(),
                rtp + 999,
                id == 1,
                edge_key(dir).display(),
            ),
        );
        let log = data.join("stdout.log");
        nodes.push(NodeProcess {
            id,
            child: spawn_node(&config, &log),
            config,
            sip: addr(NODE_IP, sip_port),
            http,
            log,
        });
    }
    // A node whose start failed is started again (a few times): under a
    // loaded debug build, raft elections can repeat during the start, and
    // pbx-node gives up on a store write whose leader changed under it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut restarts = [0; 3];
    loop {
        let mut all_ready = true;
        for (node, restarts) in nodes.iter_mut().zip(&mut restarts) {
            let log = std::fs::read_to_string(&node.log).unwrap_or_default();
            if log.contains("ready sip_udp=") {
                continue;
            }
            all_ready = false;
            let exited = node.child.try_wait().expect("child status").is_some();
            assert!(
                tokio::time::Instant::now() < deadline && !(exited && *restarts == 3),
                "pbx-node {} did not start:\n{log}",
                node.id
            );
            if exited {
                *restarts += 1;
                node.child = spawn_node(&node.config, &node.log);
            }
        }
        if all_ready {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `pbx-node --config <config>`, its output appended to `log`.
fn spawn_node(config: &Path, log: &Path) -> tokio::process::Child {
    let stdout = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let stderr = stdout.try_clone().expect("log file");
    tokio::process::Command::new(pbx_node_binary())
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start pbx-node")
}

/// The raft leader's id as node `http` sees it (0 if it knows none).
async fn raft_leader(http: SocketAddr) -> u64 {
    http_get(http, "/metrics")
        .await
        .lines()
        .find_map(|l| l.strip_prefix("raft_leader_id "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |id| id as u64)
}

/// sipp's `uac_call.xml` with a log line when each call starts and when it
/// ends well, with sipp's clock (ms since it started): which calls failed,
/// and when they began.
fn timed_call_scenario(work: &Path) -> PathBuf {
    let text = std::fs::read_to_string(scenario("uac_call.xml")).expect("scenario");
    let log = |what: &str| {
        format!("<action><log message=\"{what} [call_number] [clock_tick]\"/></action>\n")
    };
    // An action of the first send (a step of its own would make sipp
    // take the answers to that send for unexpected ones) and a step at
    // the end.
    let first_send_end = text.find("</send>").expect("a send");
    let end = text.find("<Reference").expect("Reference");
    let timed = format!(
        "{}{}{}<nop>{}</nop>\n{}",
        &text[..first_send_end],
        log("start"),
        &text[first_send_end..end],
        log("ok"),
        &text[end..]
    );
    let path = work.join("uac_call_timed.xml");
    std::fs::write(&path, timed).expect("write scenario");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_under_call_load_fails_calls_only_in_the_first_two_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_node_processes(dir.path()).await;
    // Every phone of the test is on 127.0.0.1: the rate limit is for the
    // whole load, not one phone.
    let guard: sbc::guard::GuardConfig =
        toml::from_str("requests_per_sec = 1000.0\nburst = 1000").expect("guard config");
    let sbc = start_sbc_with(dir.path(), nodes.iter().map(|n| n.sip).collect(), guard).await;

    // Registered before the kill: 101 takes the load's calls, 102 one
    // call at the end.
    let mut registered = Vec::new();
    for number in ["101", "102"] {
        let port = free_udp_port("127.0.0.1");
        let work = work_dir(dir.path(), &format!("register-{number}"));
        let user = format!("{number}-DEMO");
        let output = sipp("register.xml", port, Some(sbc.udp), &work)
            .args(["-s", &user, "-au", &user, "-ap", PASSWORD])
            .output()
            .await
            .expect("sipp must be installed (Debian package sip-tester)");
        assert!(passed(&output, &work), "{number} registers");
        registered.push(port);
    }
    let uas = work_dir(dir.path(), "callee-101");
    let _callee = sipp("uas_answer.xml", registered[0], None, &uas)
        .args(["-m", "1000"])
        .spawn()
        .expect("sipp");

    // 10 calls/s for 8 s, each 300 ms long; the raft leader (the hardest
    // node to lose) is killed 2 s in.
    let rate = 10;
    let uac = work_dir(dir.path(), "caller");
    let caller = sipp_playing(
        &timed_call_scenario(&uac),
        free_udp_port("127.0.0.1"),
        Some(sbc.udp),
        &uac,
    )
    .args(["-s", "101", "-au", "100-DEMO", "-ap", PASSWORD, "-d", "300"])
    .args(["-key", "caller", "100-DEMO", "-trace_logs"])
    .args([
        "-r",
        &rate.to_string(),
        "-m",
        &(8 * rate).to_string(),
        "-l",
        "100",
    ])
    .args(["-recv_timeout", "5000"])
    .spawn()
    .expect("sipp");
    let sipp_started = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = raft_leader(nodes[0].http).await;
    let victim = nodes.iter().position(|n| n.id == leader).unwrap_or(1);
    let mut dead = nodes.remove(victim);
    // SIGKILL: no goodbye to the cluster or the SBC.
    dead.child.start_kill().expect("kill -9");
    let killed_at = sipp_started.elapsed();
    dead.child.wait().await.expect("reaped");

    let output = tokio::time::timeout(Duration::from_secs(60), caller.wait_with_output())
        .await
        .expect("the load ends within 60 s")
        .expect("sipp output");
    let log = std::fs::read_dir(&uac)
        .expect("caller dir")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("_logs.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .expect("sipp's log");
    let mut started = std::collections::BTreeMap::new();
    let mut answered = std::collections::BTreeSet::new();
    for line in log.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [what, call, tick] = fields[..] {
            let (Ok(call), Ok(tick)) = (call.parse::<u32>(), tick.parse::<u64>()) else {
                continue;
            };
            match what {
                "start" => {
                    started.insert(call, Duration::from_millis(tick));
                }
                "ok" => {
                    answered.insert(call);
                }
                _ => {}
            }
        }
    }
    let failed: Vec<(u32, Duration)> = started
        .iter()
        .filter(|(call, _)| !answered.contains(call))
        .map(|(call, at)| (*call, *at))
        .collect();
    eprintln!(
        "node {} killed {killed_at:?} into the load; {} calls, failed (call, start): {failed:?}",
        dead.id,
        started.len()
    );
    assert_eq!(
        started.len(),
        8 * rate,
        "every call started:\n{}",
        logs(&uac)
    );
    let window = killed_at + Duration::from_secs(2);
    assert!(
        failed.iter().all(|(_, at)| *at < window),
        "a call that started more than 2 s after the kill failed: {failed:?} (kill at {killed_at:?}); sipp: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        failed
            .iter()
            .all(|(_, at)| *at + Duration::from_secs(1) >= killed_at),
        "calls failed before the kill: {failed:?}"
    );

    // No registration was lost: 102, registered before the kill, still
    // takes a call; a new registration goes through too.
    let uas = work_dir(dir.path(), "callee-102");
    let callee_102 = sipp("uas_answer.xml", registered[1], None, &uas)
        .spawn()
        .expect("sipp");
    let work = work_dir(dir.path(), "call-102");
    let output = sipp(
        "uac_call.xml",
        free_udp_port("127.0.0.1"),
        Some(sbc.udp),
        &work,
    )
    .args(["-s", "102", "-au", "100-DEMO", "-ap", PASSWORD])
    .args(["-key", "caller", "100-DEMO"])
    .output()
    .await
    .expect("sipp");
    assert!(passed(&output, &work), "102 is still reachable");
    let output = tokio::time::timeout(Duration::from_secs(30), callee_102.wait_with_output())
        .await
        .expect("callee ends")
        .expect("callee output");
    assert!(passed(&output, &uas), "102 answered");
    let work = work_dir(dir.path(), "register-after");
    let output = sipp(
        "register.xml",
        free_udp_port("127.0.0.1"),
        Some(sbc.udp),
        &work,
    )
    .args(["-s", "103-DEMO", "-au", "103-DEMO", "-ap", PASSWORD])
    .output()
    .await
    .expect("sipp");
    assert!(passed(&output, &work), "a new registration goes through");
    assert!(
        sbc.status()
            .nodes
            .iter()
            .any(|n| n.addr == dead.sip && !n.healthy),
        "the SBC saw it go: {:?}",
        sbc.status()
    );
    sbc.stop();
}

/// A TLS client trusting exactly the certificate in `pem`.
fn trusting(pem: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(pem).expect("PEM") {
        roots.add(cert.expect("certificate")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(sbc: &Sbc, pem: &Path) -> TlsStream {
    let tcp = tokio::net::TcpStream::connect(sbc.tls).await.expect("TCP");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    trusting(pem)
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

fn leaf(stream: &TlsStream) -> Vec<u8> {
    stream.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
}

/// OPTIONS over the connection, through the SBC to the node: its status.
async fn options(stream: &mut TlsStream, n: u32) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "OPTIONS sip:test.pbx.local SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKtls{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:100-TEST@test.pbx.local>;tag=t{n}\r\nTo: <sip:test.pbx.local>\r\n\
         Call-ID: tls-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = Vec::new();
    let mut buf = [0u8; 2048];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        reply.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_renews_the_certificate_without_dropping_a_connection() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, _tenant) = start_node(dir.path()).await;
    let sbc = start_sbc(dir.path(), vec![node.sip.udp_addr]).await;
    let cert = dir.path().join("sbc/tls-self-signed.pem");
    let key = dir.path().join("sbc/tls-self-signed.key");
    let mut before = tls_connect(&sbc, &cert).await;
    assert_eq!(options(&mut before, 1).await, "SIP/2.0 200 OK");

    // A renewed certificate is put in place and the SBC gets SIGHUP.
    let renewed = rcgen_pair(&dir.path().join("renewed"));
    std::fs::copy(&renewed.0, &cert).expect("copy certificate");
    std::fs::copy(&renewed.1, &key).expect("copy key");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut after = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let tcp = tokio::net::TcpStream::connect(sbc.tls).await.expect("TCP");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        if let Ok(stream) = trusting(&renewed.0).connect(name, tcp).await {
            after = Some(stream);
            break;
        }
    }
    let mut after = after.expect("new handshakes get the renewed certificate");
    assert_ne!(leaf(&after), leaf(&before));
    assert_eq!(options(&mut after, 2).await, "SIP/2.0 200 OK");
    // The connection made before the reload is still up and served.
    assert_eq!(options(&mut before, 3).await, "SIP/2.0 200 OK");
    sbc.stop();
    node.shutdown().await;
}

/// A self-signed certificate and key for localhost, as PEM files in `dir`.
fn rcgen_pair(dir: &Path) -> (PathBuf, PathBuf) {
    // The SBC's own generator, run in another directory, makes a fresh pair.
    let source = sbc::tls::CertificateSource::resolve(None, dir, "127.0.0.1").expect("generate");
    (source.cert, source.key)
}

/// Sends a command to a baresip's UDP console (`cons` module).
async fn console(at: SocketAddr, command: &str) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    socket
        .send_to(format!("{command}\n").as_bytes(), at)
        .await
        .expect("console");
}

async fn wait_for_output(log: &Path, text: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(text)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} never showed '{text}':\n{}",
        log.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_over_tls_calls_a_sipp_extension_through_the_sbc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let sbc = start_sbc(dir.path(), vec![node.sip.udp_addr]).await;
    let callee_port = register_101(dir.path(), &sbc).await;
    let uas = work_dir(dir.path(), "callee");
    let callee = sipp("uas_answer.xml", callee_port, None, &uas)
        .spawn()
        .expect("sipp");

    // baresip trusts the SBC's self-signed certificate and registers over TLS.
    let (baresip, log, console_at) = start_baresip(
        dir.path(),
        &format!(
            "<sip:100-TEST@127.0.0.1:{};transport=tls>;auth_pass={PASSWORD};regint=300",
            sbc.tls.port()
        ),
    );
    wait_for_output(&log, "200 OK () [1 binding]", Duration::from_secs(15)).await;
    console(console_at, "/dial 101").await;
    wait_for_output(&log, "Call established", Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    console(console_at, "/hangup").await;
    let output = tokio::time::timeout(Duration::from_secs(40), callee.wait_with_output())
        .await
        .expect("callee ends")
        .expect("callee output");
    assert!(
        passed(&output, &uas),
        "the sipp extension answered and got the BYE"
    );
    let cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
    assert_eq!(
        cdrs.first().map(|c| c.disposition.as_str()),
        Some("ANSWERED")
    );
    drop(baresip);
    sbc.stop();
    node.shutdown().await;
}

/// baresip with one account (`account`: its line in `accounts`), playing
/// a tone as its microphone, trusting the SBC's certificate, taking
/// commands on a UDP console and logging SIP and events (verbose, where it
/// reports received RFC 4733 events) to `<root>/baresip/baresip.log`.
fn start_baresip(root: &Path, account: &str) -> (tokio::process::Child, PathBuf, SocketAddr) {
    let phone = work_dir(root, "baresip");
    let console_at = addr("127.0.0.1", free_udp_port("127.0.0.1"));
    let sip_port = loop {
        let candidate = free_udp_port("127.0.0.1");
        if candidate < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", candidate + 1)).is_ok()
        {
            break candidate;
        }
    };
    std::fs::write(
        phone.join("config"),
        format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\nsip_cafile {ca}\n\
             module_path /usr/lib/baresip/modules\nmodule cons.so\nmodule g711.so\n\
             module aufile.so\nmodule sndfile.so\nmodule account.so\nmodule menu.so\n\
             cons_listen {console_at}\naudio_source aufile,{tone}\nsnd_path {dump}\n",
            ca = root.join("sbc/tls-self-signed.pem").display(),
            tone = tone_wav(&phone).display(),
            dump = phone.display()
        ),
    )
    .expect("config");
    std::fs::write(phone.join("accounts"), format!("{account}\n")).expect("accounts");
    let log = phone.join("baresip.log");
    let log_file = std::fs::File::create(&log).expect("log");
    // Line-buffered: baresip's stdout is a file, whose tail would
    // otherwise sit in its buffer until it exits (or is killed).
    let baresip = tokio::process::Command::new("stdbuf")
        .args(["-oL", "baresip", "-s", "-v", "-f"])
        .arg(&phone)
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().expect("log"))
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .expect("baresip must be installed (Debian package baresip-core)");
    (baresip, log, console_at)
}

/// This machine's address on its default route (no packet is sent).
fn default_route_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
    socket.connect("192.0.2.1:9").expect("a default route");
    socket.local_addr().expect("local address").ip()
}

/// Browser side to SIP side: headless Chromium opens the softphone page
/// the SBC serves, registers 100 over WSS, and calls 101, a baresip
/// registered over UDP that answers by itself. The call goes through the
/// SBC's WebRTC gateway (ICE-lite, DTLS-SRTP toward Chromium, plain RTP
/// toward the pbx-node): Chromium's own counters show audio packets both
/// ways, keypad presses reach baresip as RFC 4733 events, hold and resume
/// are offered and answered, and the hang-up ends the call at both ends.
/// Then baresip calls 100: the page rings, Chromium answers (the node's
/// plain offer reaches it as a WebRTC offer), audio flows both ways, and
/// it hangs up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_an_extension_through_the_webrtc_gateway() {
    // RUST_LOG=sbc=debug shows what the SBC did with the call.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sbc/softphone/test/call.mjs");
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../sbc/softphone/node_modules");
    assert!(
        modules.join("playwright-core").exists(),
        "run `npm ci` in sbc/softphone (tests/run-all.sh does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    // Chromium gathers no candidates on loopback: the browser-facing media
    // sockets are on this machine's own address.
    let media_ip = default_route_ip();
    let config = SbcConfig {
        media_public_bind: media_ip,
        media_public_ip: Some(media_ip),
        ..sbc_config(dir.path(), vec![node.sip.udp_addr])
    };
    let sbc = Sbc::start(&config).await.expect("start SBC");

    let (baresip, log, console_at) = start_baresip(
        dir.path(),
        &format!(
            "<sip:101-TEST@127.0.0.1:{}>;auth_pass={PASSWORD};answermode=auto;regint=300",
            sbc.udp.port()
        ),
    );
    wait_for_output(&log, "200 OK () [1 binding]", Duration::from_secs(15)).await;

    let digits = "159#";
    let mut browser = tokio::process::Command::new("node")
        .arg(&script)
        .arg(format!("https://127.0.0.1:{}/", sbc.https.port()))
        .args(["100-TEST", "test.pbx.local", PASSWORD, "101", digits])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node must be installed (Debian package nodejs)");
    let (Some(mut results_pipe), Some(progress_pipe)) =
        (browser.stdout.take(), browser.stderr.take())
    else {
        panic!("the browser's output is piped");
    };
    // The browser's progress, line by line: when it waits for a call,
    // baresip dials it.
    let progress = async {
        let mut lines = tokio::io::BufReader::new(progress_pipe).lines();
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("waiting for an incoming call") {
                console(console_at, "/dial 100").await;
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    };
    let results_text = async {
        let mut text = String::new();
        let _ = results_pipe.read_to_string(&mut text).await;
        text
    };
    let (stderr, stdout, status) = tokio::time::timeout(Duration::from_secs(120), async {
        let (stderr, stdout) = tokio::join!(progress, results_text);
        (stderr, stdout, browser.wait().await)
    })
    .await
    .expect("the browser test ends in time");
    let baresip_log = std::fs::read_to_string(&log).unwrap_or_default();
    let results: serde_json::Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no results from the browser:\n{stdout}\n{stderr}"));
    let context =
        || format!("{results}\n--- browser ---\n{stderr}\n--- baresip ---\n{baresip_log}");
    assert!(status.is_ok_and(|s| s.success()), "{}", context());
    for done in [
        "registered",
        "established",
        "held",
        "resumed",
        "ended",
        "rang",
        "answered",
        "incomingEnded",
    ] {
        assert_eq!(results[done], true, "{done}: {}", context());
    }
    // Audio both ways, and still flowing after the first two seconds.
    let count = |when: &str, what: &str| results[when][what].as_u64().unwrap_or_default();
    assert!(
        count("before", "sent") > 0 && count("before", "received") > 0,
        "{}",
        context()
    );
    assert!(
        count("after", "sent") > count("before", "sent"),
        "{}",
        context()
    );
    assert!(
        count("after", "received") > count("before", "received"),
        "{}",
        context()
    );
    // The call to the browser carried audio both ways too.
    assert!(
        count("incoming", "sent") > 0 && count("incoming", "received") > 0,
        "{}",
        context()
    );

    // The far end heard every key, once and in order, as an RFC 4733
    // event (baresip logs each event's start and its end packet).
    let heard = || -> String {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .split("received event: '")
            .skip(1)
            .filter_map(|event| {
                let mut chars = event.chars();
                let key = chars.next()?;
                chars.as_str().starts_with("' (end=1)").then_some(key)
            })
            .collect()
    };
    for _ in 0..50 {
        if heard().len() >= digits.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(heard(), digits, "{}", context());
    // Hold and resume reached the far end as re-INVITEs.
    assert_eq!(
        baresip_log.matches("call: got re-INVITE").count(),
        2,
        "{}",
        context()
    );
    let mut cdrs = Vec::new();
    for _ in 0..50 {
        cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
        if cdrs.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dispositions: Vec<&str> = cdrs.iter().map(|c| c.disposition.as_str()).collect();
    assert_eq!(dispositions, ["ANSWERED", "ANSWERED"], "both calls");
    // The gateway and the relay are gone, their ports back.
    for _ in 0..50 {
        if sbc.status().relayed_calls == 0 && sbc.status().rtp_ports_in_use == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sbc.status().relayed_calls, 0, "{:?}", sbc.status());
    drop(baresip);
    sbc.stop();
    node.shutdown().await;
}

/// baresip hangs up when its tone file ends: long enough for every call.
const TONE_SECONDS: u32 = 60;

/// A 1 kHz tone, 8 kHz mono 16-bit PCM: the phone's microphone.
fn tone_wav(dir: &Path) -> PathBuf {
    let samples: Vec<u8> = (0..TONE_SECONDS * 8000)
        .flat_map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 1000.0 * f64::from(n) / 8000.0;
            ((phase.sin() * 8000.0) as i16).to_le_bytes()
        })
        .collect();
    let data = samples.len() as u32;
    let mut wav = Vec::with_capacity(44 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    // PCM, mono, 8000 Hz, 16000 bytes/s, 2-byte frames, 16 bits.
    for field in [
        16u32.to_le_bytes().to_vec(),
        1u16.to_le_bytes().to_vec(),
        1u16.to_le_bytes().to_vec(),
        8000u32.to_le_bytes().to_vec(),
        16000u32.to_le_bytes().to_vec(),
        2u16.to_le_bytes().to_vec(),
        16u16.to_le_bytes().to_vec(),
    ] {
        wav.extend_from_slice(&field);
    }
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    wav.extend_from_slice(&samples);
    let path = dir.join("tone.wav");
    std::fs::write(&path, wav).expect("tone WAV");
    path
}
