//! Music on hold: one stream per node, from one RTP port, to every held
//! party. Each tick the music is encoded once per G.711 law and sent to
//! each listener under its own SSRC, sequence and timestamp, so a held
//! phone costs a packet header, not a player.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use media::pacing::FramePacer;
use media::player::{PlayOptions, Player, Prompt};
use media::rtp::RtpPacket;
use media::FRAME_SAMPLES;
use sip::sdp::AudioCodec;
use tokio::task::JoinHandle;

use super::echo::law_of;
use media::ports::PortLease;

struct Listener {
    target: SocketAddr,
    codec: AudioCodec,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

/// The node's music-on-hold stream, from a socket on every address.
pub struct MusicOnHold {
    /// Its RTP port; the address in an offer is the node's toward the party.
    pub port: u16,
    listeners: Arc<Mutex<HashMap<u64, Listener>>>,
    task: JoinHandle<()>,
}

impl MusicOnHold {
    pub fn start(
        socket: udp::Socket,
        lease: PortLease,
        music: Prompt,
    ) -> std::io::Result<MusicOnHold> {
        let port = socket.local_addr()?.port();
        let listeners: Arc<Mutex<HashMap<u64, Listener>>> = Arc::default();
        let task = tokio::spawn(stream(socket, lease, music, listeners.clone()));
        Ok(MusicOnHold {
            port,
            listeners,
            task,
        })
    }

    fn listeners(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Listener>> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or redirects) the music to a held party.
    pub fn add(&self, key: u64, target: SocketAddr, codec: AudioCodec) {
        self.listeners().insert(
            key,
            Listener {
                target,
                codec,
                ssrc: rand::random(),
                sequence: rand::random(),
                timestamp: rand::random(),
            },
        );
    }

    pub fn remove(&self, key: u64) {
        self.listeners().remove(&key);
    }

    pub fn listener_count(&self) -> usize {
        self.listeners().len()
    }
}

impl Drop for MusicOnHold {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stream(
    socket: udp::Socket,
    _lease: PortLease,
    music: Prompt,
    listeners: Arc<Mutex<HashMap<u64, Listener>>>,
) {
    let mut player = Player::new();
    player.play(
        vec![music],
        PlayOptions {
            barge_in: false,
            looping: true,
        },
    );
    let mut pacer = FramePacer::new(tokio::time::Instant::now());
    let mut pcmu = [0u8; FRAME_SAMPLES];
    let mut pcma = [0u8; FRAME_SAMPLES];
    let mut packet_buf = [0u8; 1500];
    let mut sends: Vec<(SocketAddr, usize)> = Vec::new();
    let mut datagrams: Vec<u8> = Vec::new();
    loop {
        let tick = pacer.tick().await;
        // The music plays on whether anyone listens or not, like a radio.
        let Some(frame) = player.next_frame() else {
            continue;
        };
        law_of(AudioCodec::Pcmu).encode(&frame, &mut pcmu);
        law_of(AudioCodec::Pcma).encode(&frame, &mut pcma);
        let advance = u32::try_from(tick.skipped + 1)
            .unwrap_or(1)
            .wrapping_mul(FRAME_SAMPLES as u32);
        sends.clear();
        datagrams.clear();
        {
            // Packets are built under the lock and sent after it.
            let mut listeners = listeners.lock().unwrap_or_else(|p| p.into_inner());
            for listener in listeners.values_mut() {
                listener.sequence = listener.sequence.wrapping_add(1);
                listener.timestamp = listener.timestamp.wrapping_add(advance);
                let payload = match listener.codec {
                    AudioCodec::Pcmu => &pcmu,
                    AudioCodec::Pcma => &pcma,
                };
                let packet = RtpPacket::new(
                    listener.codec.payload_type(),
                    listener.sequence,
                    listener.timestamp,
                    listener.ssrc,
                    payload,
                );
                if let Ok(len) = packet.write_to(&mut packet_buf) {
                    datagrams.extend_from_slice(packet_buf.get(..len).unwrap_or_default());
                    sends.push((listener.target, len));
                }
            }
        }
        let mut offset = 0;
        for (target, len) in &sends {
            let bytes = datagrams.get(offset..offset + len).unwrap_or_default();
            let _ = socket.send_to(bytes, *target).await;
            offset += len;
        }
    }
}
