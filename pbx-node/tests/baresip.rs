//! baresip softphones against a pbx-node: two phones call each other (the
//! call connects, the caller hangs up, both see it end, the CDR says
//! ANSWERED), a phone calls the echo test and hears the spoken prompt,
//! then its own 1 kHz tone coming back, and a key it presses answered by
//! a key press the node generates (RFC 4733 both ways), and three phones in a conference
//! each hear the other two tones and not their own; a call recorded by the
//! caller's Outbound Recording policy has the caller's tone in the left
//! channel and the callee's in the right.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{create_test_tenant, free_udp_addr, http_get, http_get_bytes, loopback_config};
use pbx_node::model::{RecordingPolicy, Tenant};
use pbx_node::repo::NewExtension;
use pbx_node::service::unix_now_ms;
use pbx_node::{NodeConfig, PbxNode};
use tokio::process::{Child, Command};

const SECRET: &str = "baresip-secret";

/// These tests judge audio in real time; run side by side on two cores
/// they starve each other's phones, so they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A baresip instance driven through its UDP console (`cons` module).
struct Softphone {
    child: Child,
    log: PathBuf,
    console: SocketAddr,
}

impl Softphone {
    /// A phone registered as `user` whose microphone plays a `tone_hz` sine.
    ///
    /// Its ports are picked free but bound only by baresip, so another
    /// process may take one in between; baresip then says "Address already
    /// in use" (for its SIP or console port) and the phone starts again on
    /// other ports.
    async fn start(dir: &Path, user: &str, node: SocketAddr, tone_hz: f64) -> Softphone {
        std::fs::create_dir_all(dir).expect("config dir");
        // ausine only runs at 48 kHz; a WAV at the G.711 rate needs no resampler.
        let tone = dir.join("tone.wav");
        write_tone(&tone, tone_hz);
        std::fs::write(
            dir.join("accounts"),
            format!("<sip:{user}@{node};transport=udp>;auth_pass={SECRET};regint=300\n"),
        )
        .expect("accounts");
        for _ in 0..5 {
            let phone = Self::spawn(dir, &tone).await;
            let output = phone.output();
            if !output.contains("Address already in use") {
                return phone;
            }
            eprintln!("baresip lost a port, starting again:\n{output}");
        }
        panic!("baresip found no free ports in five tries");
    }

    /// Starts baresip on freshly picked ports and waits until it is ready
    /// (or has given up).
    async fn spawn(dir: &Path, tone: &Path) -> Softphone {
        // baresip binds UDP and TCP on the SIP port and TLS on the next one.
        let sip_port = loop {
            let candidate = free_udp_addr().port();
            if candidate < u16::MAX
                && std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", candidate + 1)).is_ok()
            {
                break candidate;
            }
        };
        let console = loop {
            let candidate = free_udp_addr();
            if candidate.port() != sip_port {
                break candidate;
            }
        };
        let config = format!(
            "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\n\
             module_path /usr/lib/baresip/modules\n\
             module cons.so\nmodule g711.so\nmodule aufile.so\nmodule sndfile.so\n\
             module account.so\nmodule menu.so\n\
             cons_listen {console}\n\
             audio_source aufile,{tone}\nsnd_path {dir}\n",
            tone = tone.display(),
            dir = dir.display()
        );
        std::fs::write(dir.join("config"), config).expect("config");
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
        let mut phone = Softphone {
            child,
            log,
            console,
        };
        for _ in 0..100 {
            let output = phone.output();
            if output.contains("baresip is ready.") || output.contains("ua: init failed") {
                break;
            }
            if let Ok(Some(_)) = phone.child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        phone
    }

    /// What the phone decoded from its calls: the sndfile module's dumps
    /// (a new one each time the stream restarts, e.g. on hold), in order,
    /// once every one of them is complete.
    fn heard_samples(&self) -> Option<Vec<i16>> {
        let dir = self.log.parent()?;
        let mut dumps: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        dumps.sort();
        let mut samples = Vec::new();
        for dump in dumps {
            match media::wav::read_wav_file(&dump) {
                Ok(audio) => samples.extend(audio.samples),
                Err(e) => {
                    eprintln!("{}: {e}", dump.display());
                    return None;
                }
            }
        }
        Some(samples)
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

/// Twenty seconds of a sine, 8 kHz mono 16-bit: what the phone sends.
fn write_tone(path: &Path, hz: f64) {
    let samples: Vec<i16> = (0..160_000)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * hz * f64::from(n) / 8000.0;
            (phase.sin() * 8000.0) as i16
        })
        .collect();
    let file = std::fs::File::create(path).expect("tone file");
    let mut writer =
        media::wav::WavWriter::new(file, media::wav::WavEncoding::Pcm16, 1).expect("WAV header");
    writer.write_samples(&samples).expect("samples");
    writer.finish().expect("finish WAV");
}

/// A node whose tenant TEST is ready for softphones.
async fn start_node(dir: &Path) -> (PbxNode, Tenant) {
    // baresip 1.0 (libre) gives up on the first challenge if it is SHA-256.
    let config = NodeConfig {
        sip_digest_sha256: false,
        ..loopback_config(1, &dir.join("node"))
    };
    let node = PbxNode::start(&config).await.expect("start node");
    let tenant = create_test_tenant(&node.repo).await;
    (node, tenant)
}

/// What `phone` decoded, once at least `min_seconds` of it are written
/// (the dump is complete when baresip closes it at the call's end).
async fn wait_heard(phone: &Softphone, min_seconds: usize) -> Vec<i16> {
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(samples) = phone.heard_samples() {
            if samples.len() > 8000 * min_seconds {
                return samples;
            }
        }
    }
    panic!(
        "{} recorded too little ({:?} samples):\n{}",
        phone.log.display(),
        phone.heard_samples().map(|s| s.len()),
        phone.output()
    )
}

/// Waits until every call has ended, and checks their RTP ports are free.
async fn wait_idle(node: &PbxNode) {
    for _ in 0..50 {
        if node.sip.b2bua.active_calls() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.sip.b2bua.active_calls(), 0, "every call ended");
    assert_eq!(node.sip.b2bua.rtp_ports_in_use(), 0, "every RTP port free");
}

/// 200 (a 1 kHz tone) calls 201 (a `callee_hz` tone), who answers: the
/// two phones once the caller sees the call established.
async fn answered_call(
    dir: &Path,
    node: &PbxNode,
    tenant: &Tenant,
    callee_hz: f64,
) -> (Softphone, Softphone) {
    let (caller, callee) = registered_pair(dir, node, tenant, callee_hz).await;
    connect(&caller, &callee).await;
    (caller, callee)
}

/// Extensions 200 (a 1 kHz tone) and 201 (a `callee_hz` tone), registered.
async fn registered_pair(
    dir: &Path,
    node: &PbxNode,
    tenant: &Tenant,
    callee_hz: f64,
) -> (Softphone, Softphone) {
    for number in ["200", "201"] {
        add_extension(node, tenant, number).await;
    }
    let sip = node.sip.udp_addr;
    let callee = Softphone::start(&dir.join("201"), "201-TEST", sip, callee_hz).await;
    let caller = Softphone::start(&dir.join("200"), "200-TEST", sip, 1000.0).await;
    let phones = [&caller, &callee];
    callee.wait_for("200 OK () [1 binding]", &phones).await;
    caller.wait_for("200 OK () [1 binding]", &phones).await;
    (caller, callee)
}

/// The caller dials the callee, who answers.
async fn connect(caller: &Softphone, callee: &Softphone) {
    let phones = [caller, callee];
    caller.command("/dial 201").await;
    callee.wait_for("Incoming call", &phones).await;
    callee.command("/accept").await;
    caller.wait_for("Call established", &phones).await;
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
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let (caller, callee) = answered_call(dir.path(), &node, &tenant, 1000.0).await;
    let phones = [&caller, &callee];
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
    wait_idle(&node).await;
    drop(caller.child);
    drop(callee.child);
    node.shutdown().await;
}

/// Mean power at `hz` over 20 ms blocks of `samples`, and over all frequencies.
fn tone_share(samples: &[i16], hz: f32) -> f32 {
    let blocks: Vec<&[i16]> = samples.chunks_exact(160).collect();
    let at_tone: f32 = blocks
        .iter()
        .map(|b| media::dtmf::goertzel_power(b, hz, 8000.0))
        .sum();
    let total: f32 = blocks
        .iter()
        .map(|b| b.iter().map(|&s| f32::from(s) * f32::from(s)).sum::<f32>() / 160.0)
        .sum();
    at_tone / total.max(1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_test_plays_its_prompt_then_echoes_the_caller() {
    let _turn = ONE_AT_A_TIME.lock().await;
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    add_extension(&node, &tenant, "200").await;
    let phone = Softphone::start(
        &dir.path().join("200"),
        "200-TEST",
        node.sip.udp_addr,
        1000.0,
    )
    .await;
    let phones = [&phone];
    phone.wait_for("200 OK () [1 binding]", &phones).await;
    phone.command("/dial *43").await;
    phone.wait_for("Call established", &phones).await;
    // The prompt and beep last 5.7 s; then echo, and a key press.
    tokio::time::sleep(Duration::from_secs(7)).await;
    // DTMF both ways: the phone sends 5 (RFC 4733), the node recognises it
    // and answers with a 5 it generates itself.
    phone.command("5").await;
    phone.wait_for("received event: '5' (end=1)", &phones).await;
    phone.command("/hangup").await;
    let heard = wait_heard(&phone, 7).await;
    let prompt = &heard[8000..8000 * 4];
    let echo = &heard[heard.len() - 8000 * 3 / 2..];
    let speech = prompt.iter().filter(|s| s.unsigned_abs() > 2000).count();
    assert!(
        speech > 2000,
        "the spoken prompt is audible ({speech} loud samples)"
    );
    assert!(
        tone_share(prompt, 1000.0) < 0.2,
        "the prompt is speech, not the tone"
    );
    assert!(
        tone_share(echo, 1000.0) > 0.8,
        "the end is our own 1 kHz tone echoed: {}",
        tone_share(echo, 1000.0)
    );
    wait_idle(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_phones_in_a_conference_each_hear_the_other_two() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let tones = [("200", 500.0_f32), ("201", 1100.0), ("202", 1700.0)];
    let mut phones = Vec::new();
    for (number, hz) in tones {
        add_extension(&node, &tenant, number).await;
        let user = format!("{number}-TEST");
        phones.push(
            Softphone::start(
                &dir.path().join(number),
                &user,
                node.sip.udp_addr,
                f64::from(hz),
            )
            .await,
        );
    }
    let all: Vec<&Softphone> = phones.iter().collect();
    for phone in &phones {
        phone.wait_for("200 OK () [1 binding]", &all).await;
        phone.command("/dial *81").await;
        phone.wait_for("Call established", &all).await;
    }
    // Everyone talks at once for a while; the join announcements are over
    // by then (about 3 s each, one after another).
    tokio::time::sleep(Duration::from_secs(12)).await;
    for phone in &phones {
        phone.command("/hangup").await;
    }
    for (index, phone) in phones.iter().enumerate() {
        let heard = wait_heard(phone, 10).await;
        // The last two seconds: everyone present, no announcement.
        let window = &heard[heard.len() - 8000 * 5 / 2..heard.len() - 8000 / 2];
        for (other, (_, hz)) in tones.iter().enumerate() {
            let share = tone_share(window, *hz);
            if other == index {
                assert!(share < 0.05, "phone {index} hears its own {hz} Hz: {share}");
            } else {
                assert!(share > 0.2, "phone {index} misses {hz} Hz: {share}");
            }
        }
    }
    wait_idle(&node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_party_hears_music_until_the_call_is_resumed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let (caller, callee) = answered_call(dir.path(), &node, &tenant, 500.0).await;
    let phones = [&caller, &callee];
    tokio::time::sleep(Duration::from_secs(2)).await;
    caller.command("/hold").await;
    for _ in 0..50 {
        if node.sip.b2bua.music_listeners() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        node.sip.b2bua.music_listeners(),
        1,
        "the callee is on music"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    caller.command("/resume").await;
    for _ in 0..50 {
        if node.sip.b2bua.music_listeners() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node.sip.b2bua.music_listeners(), 0, "music stops on resume");
    // baresip logs each change of the stream it receives: the music's
    // stream from the node's music port while held, then the caller's
    // stream again after the resume. (Its sndfile dump stops at the first
    // stream update, so the audio itself is judged in the unit tests.)
    let music_port = node.sip.b2bua.music_port().expect("music on hold runs");
    let music_from = format!(":{music_port})");
    let stream_changes = |output: &str| -> (Option<usize>, bool) {
        let changes: Vec<&str> = output
            .lines()
            .filter(|l| l.contains("SSRC changed"))
            .collect();
        let music_at = changes
            .iter()
            .position(|l| l.contains("160 bytes") && l.contains(&music_from));
        let back = music_at.is_some_and(|at| {
            changes
                .iter()
                .skip(at + 1)
                .any(|l| !l.contains(&music_from))
        });
        (music_at, back)
    };
    // The caller's stream may take a moment to reach the callee again on
    // a loaded machine; the call stays up until it has.
    for _ in 0..50 {
        if stream_changes(&callee.output()).1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    caller.command("/hangup").await;
    callee.wait_for("session closed", &phones).await;
    let output = callee.output();
    let (music_at, back) = stream_changes(&output);
    assert!(
        music_at.is_some(),
        "no G.711 frames from the music port {music_port}:\n{output}"
    );
    assert!(
        back,
        "the caller's stream comes back after the resume:\n{output}"
    );
    node.shutdown().await;
}

/// The left and right channels of a 16-bit stereo WAV.
fn stereo_channels(wav: &[u8]) -> (Vec<i16>, Vec<i16>) {
    assert!(wav.len() > 44 && &wav[..4] == b"RIFF" && &wav[8..12] == b"WAVE");
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "two channels");
    assert_eq!(
        u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
        8000,
        "8 kHz"
    );
    let samples: Vec<i16> = wav[44..]
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect();
    (
        samples.iter().step_by(2).copied().collect(),
        samples.iter().skip(1).step_by(2).copied().collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_recording_has_each_side_in_its_own_channel() {
    let _turn = ONE_AT_A_TIME.lock().await;
    common::init_test_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let (node, tenant) = start_node(dir.path()).await;
    let (caller, callee) = registered_pair(dir.path(), &node, &tenant, 400.0).await;
    let phones = [&caller, &callee];
    let mut extension = node
        .repo
        .extension(&tenant.id, "200")
        .await
        .expect("read")
        .expect("200 exists");
    extension.recording = RecordingPolicy {
        inbound: false,
        outbound: true,
    };
    node.repo
        .update_extension(&tenant.id, &extension)
        .await
        .expect("enable outbound recording");

    connect(&caller, &callee).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    caller.command("/hangup").await;
    callee.wait_for("session closed", &phones).await;

    let http = node.http.addr;
    let mut listed = Vec::new();
    for _ in 0..100 {
        let (status, body) = http_get(http, "/api/v1/tenants/TEST/recordings").await;
        assert_eq!(status, 200, "{body}");
        let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        listed = list["items"].as_array().cloned().unwrap_or_default();
        if !listed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(listed.len(), 1, "one recording: {listed:?}");
    let recording = &listed[0];
    assert_eq!(recording["from"], "200");
    assert_eq!(recording["to"], "201");
    assert_eq!(recording["reason"], "outbound");
    assert_eq!(recording["layout"], "stereo");
    let id = recording["id"].as_str().expect("id");
    let seconds = (recording["end_ms"].as_u64().expect("end") as f64
        - recording["start_ms"].as_u64().expect("start") as f64)
        / 1000.0;
    assert!((2.5..8.0).contains(&seconds), "lasted {seconds} s");

    let (status, wav) =
        http_get_bytes(http, &format!("/api/v1/tenants/TEST/recordings/{id}/audio")).await;
    assert_eq!(status, 200);
    assert_eq!(recording["size_bytes"].as_u64(), Some(wav.len() as u64));
    let (left, right) = stereo_channels(&wav);
    assert!(
        left.len() > 8000 * 2,
        "at least 2 s recorded: {}",
        left.len()
    );
    // Skip the first half second, while both streams start.
    let (left, right) = (&left[4000..], &right[4000..]);
    let (caller_tone, caller_other) = (tone_share(left, 1000.0), tone_share(left, 400.0));
    let (callee_tone, callee_other) = (tone_share(right, 400.0), tone_share(right, 1000.0));
    assert!(
        caller_tone > 0.8 && caller_other < 0.05,
        "left = the caller's 1 kHz: {caller_tone} at 1 kHz, {caller_other} at 400 Hz"
    );
    assert!(
        callee_tone > 0.8 && callee_other < 0.05,
        "right = the callee's 400 Hz: {callee_tone} at 400 Hz, {callee_other} at 1 kHz"
    );
    let (status, _) = http_get_bytes(http, "/api/v1/tenants/TEST/recordings/0-missing/audio").await;
    assert_eq!(status, 404);

    let cdrs = node.repo.cdrs(&tenant.id, 0, 0).await.expect("CDRs");
    assert_eq!(cdrs.len(), 1);
    assert_eq!(cdrs[0].recording_id.as_deref(), Some(id), "CDR names it");
    let spool = dir.path().join("node/spool/recordings");
    let spooled: Vec<_> = std::fs::read_dir(&spool).expect("spool").collect();
    assert!(spooled.is_empty(), "spool emptied once stored: {spooled:?}");
    wait_idle(&node).await;
    drop(caller.child);
    drop(callee.child);
    node.shutdown().await;
}
