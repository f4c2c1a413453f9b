//! Two baresip softphones register with a pbx-node and call each other:
//! the call connects (audio codecs negotiated end to end), the caller
//! hangs up, both phones see the call end, and the CDR says ANSWERED.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{create_test_tenant, free_udp_addr, loopback_config};
use pbx_node::model::Tenant;
use pbx_node::repo::NewExtension;
use pbx_node::service::unix_now_ms;
use pbx_node::{NodeConfig, PbxNode};
use tokio::process::{Child, Command};

const SECRET: &str = "baresip-secret";

/// A baresip instance driven through its UDP console (`cons` module).
struct Softphone {
    child: Child,
    log: PathBuf,
    console: SocketAddr,
}

impl Softphone {
    async fn start(dir: &Path, user: &str, node: SocketAddr) -> Softphone {
        std::fs::create_dir_all(dir).expect("config dir");
        // baresip also binds TCP on the SIP port and TLS on the next one.
        let sip_port = loop {
            let candidate = free_udp_addr().port();
            if candidate < u16::MAX
                && std::net::TcpListener::bind(("127.0.0.1", candidate + 1)).is_ok()
            {
                break candidate;
            }
        };
        let console = free_udp_addr();
        // ausine only runs at 48 kHz; a WAV at the G.711 rate needs no resampler.
        let tone = dir.join("tone.wav");
        write_tone(&tone);
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\n\
             module_path /usr/lib/baresip/modules\n\
             module cons.so\nmodule g711.so\nmodule aufile.so\n\
             module account.so\nmodule menu.so\n\
             cons_listen {console}\n\
             audio_source aufile,{tone}\naudio_player aufile,{heard}\naudio_alert aufile,/dev/null\n",
            tone = tone.display(),
            heard = dir.join("heard.wav").display()
        );
        std::fs::write(dir.join("config"), config).expect("config");
        std::fs::write(
            dir.join("accounts"),
            format!("<sip:{user}@{node};transport=udp>;auth_pass={SECRET};regint=300\n"),
        )
        .expect("accounts");
        let log = dir.join("baresip.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new("baresip")
            // SIP trace into the log, shown if the test fails.
            .arg("-s")
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .expect("baresip must be installed (Debian package baresip-core)");
        Softphone {
            child,
            log,
            console,
        }
    }

    async fn command(&self, command: &str) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        socket
            .send_to(format!("{command}\n").as_bytes(), self.console)
            .await
            .expect("console command");
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the phone's output contains `text`; on a timeout
    /// panics with the output of every phone of the test.
    async fn wait_for(&self, text: &str, phones: &[&Softphone]) {
        for _ in 0..150 {
            if self.output().contains(text) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = phones
            .iter()
            .map(|p| format!("--- {} ---\n{}", p.log.display(), p.output()))
            .collect();
        panic!("baresip never printed '{text}'\n{}", logs.join("\n"));
    }
}

/// Ten seconds of a 1 kHz tone, 8 kHz mono 16-bit: what the phone sends.
fn write_tone(path: &Path) {
    let samples: Vec<i16> = (0..80_000)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * 1000.0 * f64::from(n) / 8000.0;
            (phase.sin() * 8000.0) as i16
        })
        .collect();
    let file = std::fs::File::create(path).expect("tone file");
    let mut writer =
        media::wav::WavWriter::new(file, media::wav::WavEncoding::Pcm16, 1).expect("WAV header");
    writer.write_samples(&samples).expect("samples");
    writer.finish().expect("finish WAV");
}

async fn add_extension(node: &PbxNode, tenant: &Tenant, number: &str) {
    node.repo
        .create_extension(
            tenant,
            NewExtension {
                number: number.into(),
                display_name: format!("Softphone {number}"),
                username: None,
                password: SECRET.into(),
            },
        )
        .await
        .expect("create extension");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_baresip_phones_call_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    // baresip 1.0 (libre) gives up on the first challenge if it is SHA-256.
    let config = NodeConfig {
        sip_digest_sha256: false,
        ..loopback_config(1, &dir.path().join("node"))
    };
    let node = PbxNode::start(&config).await.expect("start node");
    let tenant = create_test_tenant(&node.repo).await;
    for number in ["200", "201"] {
        add_extension(&node, &tenant, number).await;
    }
    let sip = node.sip.udp_addr;
    let callee = Softphone::start(&dir.path().join("201"), "201-TEST", sip).await;
    let caller = Softphone::start(&dir.path().join("200"), "200-TEST", sip).await;
    let phones = [&caller, &callee];
    callee.wait_for("200 OK () [1 binding]", &phones).await;
    caller.wait_for("200 OK () [1 binding]", &phones).await;

    caller.command("/dial 201").await;
    callee.wait_for("Incoming call", &phones).await;
    callee.command("/accept").await;
    caller.wait_for("Call established", &phones).await;
    callee.wait_for("Call established", &phones).await;
    assert_eq!(node.sip.b2bua.active_calls(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    caller.command("/hangup").await;
    callee.wait_for("session closed", &phones).await;

    let mut cdr = None;
    for _ in 0..50 {
        let cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
        if let Some(found) = cdrs.into_iter().next() {
            cdr = Some(found);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cdr = cdr.expect("a CDR");
    assert_eq!(
        (cdr.from.as_str(), cdr.to.as_str(), cdr.disposition.as_str()),
        ("200", "201", "ANSWERED"),
        "{cdr:?}"
    );
    assert_eq!(cdr.hangup_by, "caller");
    assert!(cdr.end_ms <= unix_now_ms());
    assert_eq!(node.sip.b2bua.active_calls(), 0, "call state released");
    drop(caller.child);
    drop(callee.child);
    node.shutdown().await;
}
