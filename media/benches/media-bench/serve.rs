//! The process under test: N relays, players or recorders on one
//! current-thread tokio runtime (so on one core), pinned by the parent with
//! taskset. It prints `ready` and its ports on one line, then runs until
//! its stdin closes.

use crate::Options;
use anyhow::{bail, Context, Result};
use media::g711::Law;
use media::pacing::FramePacer;
use media::player::{PlayOptions, Player, Prompt};
use media::recorder::{CallRecorder, RecordingLayout};
use media::relay::udp::{LegSockets, UdpRelay};
use media::relay::{LegConfig, RelayConfig, SocketKind};
use media::rtp::RtpPacket;
use media::wav::WavEncoding;
use media::{Leg, FRAME_SAMPLES, SAMPLE_RATE};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::time::{Instant, MissedTickBehavior};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

pub fn main(args: &[String]) -> Result<()> {
    let Some((kind, rest)) = args.split_first() else {
        bail!("serve needs relay, player or recorder");
    };
    let options = Options::parse(rest)?;
    let calls: usize = options.get("calls", 100)?;
    crate::raise_open_file_limit();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match kind.as_str() {
            "relay" => {
                relay(
                    calls,
                    options.required("peer-a")?,
                    options.required("peer-b")?,
                )
                .await
            }
            "player" => player(calls, options.required("sink")?).await,
            "recorder" => recorder(calls, &options.required::<PathBuf>("dir")?).await,
            other => bail!("unknown serve kind {other:?}"),
        }
    })
}

fn ready(ports: &[u16]) -> Result<()> {
    let mut line = String::from("ready");
    for port in ports {
        line.push_str(&format!(" {port}"));
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Resolves when the parent closes our stdin (or dies).
async fn stdin_closed() {
    let (tx, rx) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        drop(tx);
    });
    let _ = rx.await;
}

/// One `UdpRelay` task per call; leg A faces phone A, leg B phone B, each
/// with separate RTP and RTCP ports as a desk phone without rtcp-mux has.
async fn relay(calls: usize, peer_a: SocketAddr, peer_b: SocketAddr) -> Result<()> {
    let mut ports = Vec::with_capacity(2 * calls);
    let mut controls = Vec::with_capacity(calls);
    for _ in 0..calls {
        let sockets = [
            LegSockets::bind(LOCALHOST, false)?,
            LegSockets::bind(LOCALHOST, false)?,
        ];
        let leg = |peer| LegConfig {
            remote_rtp: Some(peer),
            remote_rtcp: None,
            rtcp_mux: false,
        };
        let (relay, control) =
            UdpRelay::new(RelayConfig::default(), [leg(peer_a), leg(peer_b)], sockets);
        ports.push(relay.local_addr(Leg::A, SocketKind::Rtp)?.port());
        ports.push(relay.local_addr(Leg::B, SocketKind::Rtp)?.port());
        // The relays stop when their controls go, at exit; nobody
        // consumes latching events here.
        controls.push(control);
        tokio::spawn(relay.run(Box::new(|_| {})));
    }
    ready(&ports)?;
    stdin_closed().await;
    Ok(())
}

/// A 6 s prompt (a two-tone chord at -10 dBFS or so), decoded once and
/// shared by every player as a real MOH prompt would be.
fn prompt() -> Prompt {
    let len = 6 * SAMPLE_RATE as usize;
    (0..len)
        .map(|n| {
            let t = n as f64 / f64::from(SAMPLE_RATE);
            let v = (2.0 * std::f64::consts::PI * 440.0 * t).sin()
                + (2.0 * std::f64::consts::PI * 659.0 * t).sin();
            (v * 5000.0) as i16
        })
        .collect::<Vec<_>>()
        .into()
}

/// Looping players, each on its own 20 ms pacer (start times spread over
/// one frame, as independent calls would be), encoding µ-law and sending
/// RTP from its own socket to `sink`.
async fn player(calls: usize, sink: SocketAddr) -> Result<()> {
    let prompt = prompt();
    let start = Instant::now() + Duration::from_millis(100);
    for i in 0..calls {
        let socket = UdpSocket::bind((LOCALHOST, 0)).await?;
        let offset = Duration::from_nanos((20_000_000 * i as u64) / calls as u64);
        tokio::spawn(play(socket, sink, prompt.clone(), start + offset, i as u32));
    }
    ready(&[])?;
    stdin_closed().await;
    Ok(())
}

async fn play(socket: UdpSocket, sink: SocketAddr, prompt: Prompt, start: Instant, ssrc: u32) {
    let mut pacer = FramePacer::new(start);
    let mut player = Player::new();
    player.play(
        vec![prompt],
        PlayOptions {
            barge_in: false,
            looping: true,
        },
    );
    let mut payload = [0u8; FRAME_SAMPLES];
    let mut packet = [0u8; 12 + FRAME_SAMPLES];
    let mut sequence = 0u16;
    loop {
        let tick = pacer.tick().await;
        // Skipped frames leave a gap in both numbers, as the pacer intends.
        sequence = sequence.wrapping_add(1 + tick.skipped as u16);
        let timestamp = (tick.frame as u32).wrapping_mul(FRAME_SAMPLES as u32);
        let Some(frame) = player.next_frame() else {
            return;
        };
        Law::MuLaw.encode(&frame, &mut payload);
        let rtp = RtpPacket::new(
            Law::MuLaw.payload_type(),
            sequence,
            timestamp,
            ssrc,
            &payload,
        );
        let Ok(len) = rtp.write_to(&mut packet) else {
            return;
        };
        // A full sink queue is the sink's problem, not the player's.
        let _ = socket.send_to(&packet[..len], sink).await;
    }
}

/// Recorders fed both legs' RTP on their own sockets, decoding G.711 and
/// writing a mixed 16-bit WAV per call into `dir`, flushed every 100 ms.
async fn recorder(calls: usize, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut ports = Vec::with_capacity(2 * calls);
    for i in 0..calls {
        let a = UdpSocket::bind((LOCALHOST, 0)).await?;
        let b = UdpSocket::bind((LOCALHOST, 0)).await?;
        ports.push(a.local_addr()?.port());
        ports.push(b.local_addr()?.port());
        let path = dir.join(format!("call-{i}.wav"));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let recorder = CallRecorder::new(
            BufWriter::new(file),
            WavEncoding::Pcm16,
            RecordingLayout::Mixed,
            Instant::now().into_std(),
        )?;
        tokio::spawn(record(a, b, recorder));
    }
    ready(&ports)?;
    stdin_closed().await;
    Ok(())
}

async fn record(a: UdpSocket, b: UdpSocket, mut recorder: CallRecorder<BufWriter<File>>) {
    let mut flush = tokio::time::interval(Duration::from_millis(100));
    flush.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut a_buf = [0u8; 1500];
    let mut b_buf = [0u8; 1500];
    loop {
        let (leg, received, buf) = tokio::select! {
            _ = flush.tick() => {
                if let Err(error) = recorder.flush(Instant::now().into_std()) {
                    eprintln!("media-bench: recorder stopped: {error}");
                    return;
                }
                continue;
            }
            r = a.recv(&mut a_buf) => (Leg::A, r, &a_buf),
            r = b.recv(&mut b_buf) => (Leg::B, r, &b_buf),
        };
        let Ok(len) = received else { continue };
        recorder.push_rtp(leg, &buf[..len], Instant::now().into_std());
    }
}
