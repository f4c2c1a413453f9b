//! The echo test: plays the introduction and a beep, then sends every
//! audio packet the caller sends straight back (re-stamped as our stream),
//! so the caller hears its own voice with the network's round trip. A key
//! pressed (RFC 4733) is recognised and played back as a new telephone
//! event we generate: DTMF both ways.

use media::dtmf::{DtmfEvent, DtmfReceiver, DtmfSender};
use media::g711::Law;
use media::pacing::FramePacer;
use media::player::{PlayOptions, Player, Prompt};
use media::rtp::RtpPacket;
use media::FRAME_SAMPLES;
use sip::sdp::{AudioCodec, Direction};
use tokio::sync::watch;

use super::MediaApp;
use crate::b2bua::local::RemoteMedia;
use media::ports::PortLease;

pub fn law_of(codec: AudioCodec) -> Law {
    match codec {
        AudioCodec::Pcmu => Law::MuLaw,
        AudioCodec::Pcma => Law::ALaw,
    }
}

/// Starts the echo test on `socket` for the caller described by `media`.
pub fn start_echo(
    socket: udp::Socket,
    lease: PortLease,
    intro: Vec<Prompt>,
    media: RemoteMedia,
) -> MediaApp {
    let (updates, watch) = watch::channel(media);
    MediaApp::spawn(
        updates,
        async move { run(socket, lease, intro, watch).await },
    )
}

/// Our outgoing RTP stream.
struct Outgoing {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

impl Outgoing {
    fn packet<'a>(&mut self, payload_type: u8, timestamp: u32, payload: &'a [u8]) -> RtpPacket<'a> {
        self.sequence = self.sequence.wrapping_add(1);
        RtpPacket::new(payload_type, self.sequence, timestamp, self.ssrc, payload)
    }
}

/// A generated key press lasts 100 ms, one packet per 20 ms frame.
const DTMF_DURATION: u32 = 800;
const DTMF_VOLUME: u8 = 10;

fn may_send(direction: Direction) -> bool {
    matches!(direction, Direction::SendRecv | Direction::SendOnly)
}

async fn run(
    socket: udp::Socket,
    _lease: PortLease,
    intro: Vec<Prompt>,
    mut media: watch::Receiver<RemoteMedia>,
) {
    let mut remote = *media.borrow_and_update();
    // Symmetric RTP: answer to where the caller's packets come from
    // (right behind NAT), the SDP address until the first one arrives.
    let mut target = remote.stream_rtp;
    let mut out = Outgoing {
        ssrc: rand::random(),
        sequence: rand::random(),
        timestamp: rand::random(),
    };
    let mut player = Player::new();
    player.play(
        intro,
        PlayOptions {
            barge_in: false,
            looping: false,
        },
    );
    let mut pacer = FramePacer::new(tokio::time::Instant::now());
    let mut prompting = true;
    let mut keys = DtmfReceiver::new();
    let mut replies: std::collections::VecDeque<DtmfSender> = std::collections::VecDeque::new();
    // Echoed timestamp = caller's timestamp + this, fixed at the first echo.
    let mut echo_offset: Option<u32> = None;
    let mut inbound = [0u8; 1500];
    let mut outbound = [0u8; 1500];
    let mut encoded = [0u8; FRAME_SAMPLES];
    loop {
        tokio::select! {
            changed = media.changed() => {
                if changed.is_err() {
                    return; // the call is gone
                }
                remote = *media.borrow_and_update();
                target = remote.stream_rtp;
            }
            tick = pacer.tick() => {
                let skipped = u32::try_from(tick.skipped).unwrap_or(u32::MAX);
                out.timestamp = out.timestamp.wrapping_add(skipped.wrapping_mul(FRAME_SAMPLES as u32));
                let send = may_send(remote.negotiated.direction);
                if let (Some(reply), Some(pt)) = (replies.front_mut(), remote.negotiated.telephone_event) {
                    match reply.next_packet() {
                        Some(event) if send => {
                            let mut packet = out.packet(pt, event.timestamp, &event.payload);
                            packet.marker = event.marker;
                            if let Ok(len) = packet.write_to(&mut outbound) {
                                let _ = socket.send_to(outbound.get(..len).unwrap_or_default(), target).await;
                            }
                        }
                        Some(_) => {}
                        None => {
                            replies.pop_front();
                        }
                    }
                }
                if !prompting {
                    continue;
                }
                let Some(frame) = player.next_frame() else {
                    prompting = false;
                    continue;
                };
                let codec = remote.negotiated.codec;
                law_of(codec).encode(&frame, &mut encoded);
                let timestamp = out.timestamp;
                out.timestamp = out.timestamp.wrapping_add(FRAME_SAMPLES as u32);
                if send {
                    let packet = out.packet(codec.payload_type(), timestamp, &encoded);
                    if let Ok(len) = packet.write_to(&mut outbound) {
                        let _ = socket.send_to(outbound.get(..len).unwrap_or_default(), target).await;
                    }
                }
            }
            received = socket.recv_from(&mut inbound) => {
                let Ok((len, source)) = received else {
                    continue;
                };
                target = source;
                let Ok(packet) = RtpPacket::parse(inbound.get(..len).unwrap_or_default()) else {
                    continue;
                };
                if Some(packet.payload_type) == remote.negotiated.telephone_event {
                    let _ = keys.handle_packet(packet.timestamp, packet.payload);
                    while let Some(event) = keys.poll_event() {
                        // Answered at the press's start: a phone may hold a
                        // key for long, and the end may be lost.
                        if let DtmfEvent::Started(digit) = event {
                            tracing::info!(digit = %digit.as_char(), "DTMF received");
                            let reply = DtmfSender::new(digit, out.timestamp, DTMF_DURATION, FRAME_SAMPLES as u16, DTMF_VOLUME);
                            replies.extend(reply.ok());
                        }
                    }
                    continue;
                }
                let audio = packet.payload_type == remote.negotiated.codec.payload_type();
                if prompting || !audio || !may_send(remote.negotiated.direction) {
                    continue;
                }
                let offset = *echo_offset.get_or_insert(out.timestamp.wrapping_sub(packet.timestamp));
                let timestamp = packet.timestamp.wrapping_add(offset);
                // Generated key presses take their start time from here.
                out.timestamp = timestamp.wrapping_add(FRAME_SAMPLES as u32);
                let mut echoed = out.packet(packet.payload_type, timestamp, packet.payload);
                echoed.marker = packet.marker;
                if let Ok(len) = echoed.write_to(&mut outbound) {
                    let _ = socket.send_to(outbound.get(..len).unwrap_or_default(), target).await;
                }
            }
        }
    }
}
