//! Conference rooms on this node: each caller's RTP is decoded and handed
//! to the room's task, which every 20 ms mixes (media::mixer: everyone
//! hears everyone else, not themselves; join and leave announcements) and
//! sends each party its own mix. A room exists while it has a party.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};

use media::mixer::{ConferenceMixer, ConferencePrompts, PartyId};
use media::pacing::FramePacer;
use media::rtp::RtpPacket;
use media::{Frame, FRAME_SAMPLES, SILENT_FRAME};
use tokio::sync::{mpsc, watch};

use super::echo::law_of;
use super::MediaApp;
use crate::b2bua::local::RemoteMedia;
use media::ports::PortLease;

/// Frames kept per party between ticks: a little jitter absorbed, no
/// unbounded delay if a phone sends in bursts.
const MAX_QUEUED_FRAMES: usize = 3;

enum RoomEvent {
    Join {
        id: PartyId,
        socket: Arc<udp::Socket>,
        media: watch::Receiver<RemoteMedia>,
    },
    Audio {
        id: PartyId,
        // Boxed: a frame is 320 bytes, the other events a few words.
        frame: Box<Frame>,
        source: SocketAddr,
    },
    Leave {
        id: PartyId,
    },
}

/// The rooms of this node, by name (tenant and room number).
pub struct Conferences {
    rooms: Mutex<HashMap<String, mpsc::UnboundedSender<RoomEvent>>>,
    prompts: ConferencePrompts,
    next_party: std::sync::atomic::AtomicU64,
}

impl Conferences {
    pub fn new(prompts: ConferencePrompts) -> Arc<Conferences> {
        Arc::new(Conferences {
            rooms: Mutex::new(HashMap::new()),
            prompts,
            next_party: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn rooms(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<RoomEvent>>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rooms with at least one party.
    pub fn room_count(&self) -> usize {
        self.rooms().len()
    }

    /// Puts a caller into `room` (created on first join).
    pub fn join(
        self: &Arc<Self>,
        room: &str,
        socket: udp::Socket,
        lease: PortLease,
        media: RemoteMedia,
    ) -> MediaApp {
        let id = self
            .next_party
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = Arc::new(socket);
        let (updates, watch) = watch::channel(media);
        // The Join is sent under the lock: a room only closes, under the
        // same lock, when no event is pending, so no Join is ever lost.
        let events = {
            let mut rooms = self.rooms();
            let events = match rooms.get(room).filter(|tx| !tx.is_closed()) {
                Some(tx) => tx.clone(),
                None => {
                    let (tx, rx) = mpsc::unbounded_channel();
                    rooms.insert(room.to_string(), tx.clone());
                    tokio::spawn(run_room(
                        room.to_string(),
                        Arc::downgrade(self),
                        self.prompts.clone(),
                        rx,
                    ));
                    tx
                }
            };
            let _ = events.send(RoomEvent::Join {
                id,
                socket: socket.clone(),
                media: watch.clone(),
            });
            events
        };
        let leave = LeaveOnDrop {
            events: events.clone(),
            id,
        };
        MediaApp::spawn(updates, async move {
            receive(socket, lease, watch, events, id, leave).await;
        })
    }
}

/// Tells the room the party left, however its receiving task ends.
struct LeaveOnDrop {
    events: mpsc::UnboundedSender<RoomEvent>,
    id: PartyId,
}

impl Drop for LeaveOnDrop {
    fn drop(&mut self) {
        let _ = self.events.send(RoomEvent::Leave { id: self.id });
    }
}

/// Decodes one party's RTP into frames for the room.
async fn receive(
    socket: Arc<udp::Socket>,
    _lease: PortLease,
    media: watch::Receiver<RemoteMedia>,
    events: mpsc::UnboundedSender<RoomEvent>,
    id: PartyId,
    _leave: LeaveOnDrop,
) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((len, source)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(packet) = RtpPacket::parse(buf.get(..len).unwrap_or_default()) else {
            continue;
        };
        let codec = media.borrow().negotiated.codec;
        if packet.payload_type != codec.payload_type() {
            continue; // telephone-event and comfort noise are not mixed
        }
        let mut frame = Box::new(SILENT_FRAME);
        let samples = packet.payload.len().min(FRAME_SAMPLES);
        law_of(codec).decode(
            packet.payload.get(..samples).unwrap_or_default(),
            frame.get_mut(..samples).unwrap_or_default(),
        );
        if events.send(RoomEvent::Audio { id, frame, source }).is_err() {
            return;
        }
    }
}

struct Party {
    socket: Arc<udp::Socket>,
    media: watch::Receiver<RemoteMedia>,
    /// The latched source of its RTP, once it sent some.
    target: Option<SocketAddr>,
    queue: VecDeque<Frame>,
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
}

async fn run_room(
    name: String,
    conferences: Weak<Conferences>,
    prompts: ConferencePrompts,
    mut events: mpsc::UnboundedReceiver<RoomEvent>,
) {
    let mut mixer = ConferenceMixer::new(prompts);
    let mut parties: HashMap<PartyId, Party> = HashMap::new();
    let mut pacer = FramePacer::new(tokio::time::Instant::now());
    let mut mixed = Vec::new();
    let mut encoded = [0u8; FRAME_SAMPLES];
    let mut packet_buf = [0u8; 1500];
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(RoomEvent::Join { id, socket, media }) => {
                    if mixer.join(id).is_ok() {
                        parties.insert(id, Party {
                            socket,
                            media,
                            target: None,
                            queue: VecDeque::new(),
                            ssrc: rand::random(),
                            sequence: rand::random(),
                            timestamp: rand::random(),
                        });
                        tracing::info!(room = %name, parties = parties.len(), "joined conference");
                    }
                }
                Some(RoomEvent::Audio { id, frame, source }) => {
                    if let Some(party) = parties.get_mut(&id) {
                        party.target = Some(source);
                        if party.queue.len() == MAX_QUEUED_FRAMES {
                            party.queue.pop_front();
                        }
                        party.queue.push_back(*frame);
                    }
                }
                Some(RoomEvent::Leave { id }) => {
                    let _ = mixer.leave(id);
                    parties.remove(&id);
                    tracing::info!(room = %name, parties = parties.len(), "left conference");
                    if parties.is_empty() {
                        let Some(conferences) = conferences.upgrade() else {
                            break;
                        };
                        let mut rooms = conferences.rooms();
                        if events.is_empty() {
                            rooms.remove(&name);
                            break;
                        }
                    }
                }
                None => break,
            },
            tick = pacer.tick() => {
                for (id, party) in parties.iter_mut() {
                    if let Some(frame) = party.queue.pop_front() {
                        let _ = mixer.push_frame(*id, &frame);
                    }
                }
                mixer.mix(&mut mixed);
                let skipped = u32::try_from(tick.skipped).unwrap_or(0);
                for (id, frame) in &mixed {
                    let Some(party) = parties.get_mut(id) else {
                        continue;
                    };
                    party.timestamp = party
                        .timestamp
                        .wrapping_add((skipped + 1).wrapping_mul(FRAME_SAMPLES as u32));
                    let remote = *party.media.borrow();
                    let target = party.target.unwrap_or(remote.stream_rtp);
                    let codec = remote.negotiated.codec;
                    law_of(codec).encode(frame, &mut encoded);
                    party.sequence = party.sequence.wrapping_add(1);
                    let packet = RtpPacket::new(
                        codec.payload_type(),
                        party.sequence,
                        party.timestamp,
                        party.ssrc,
                        &encoded,
                    );
                    if let Ok(len) = packet.write_to(&mut packet_buf) {
                        let bytes = packet_buf.get(..len).unwrap_or_default();
                        let _ = party.socket.send_to(bytes, target).await;
                    }
                }
            }
        }
    }
}
