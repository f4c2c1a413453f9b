//! Every call's RTP through the SBC: per Call-ID a `media` relay between a
//! port pair on the public side (leg A, facing the phone) and one on the
//! internal side (leg B, facing the pbx-node). SDP from a phone is
//! re-addressed to leg B and steers leg A toward the phone (latching then
//! finds a NATed phone's real address); SDP from a node is re-addressed to
//! leg A and steers leg B.
//!
//! A browser's call gets a WebRTC gateway ([`crate::webrtc`]) on the same
//! ports instead: its first SDP is WebRTC (from the phone), or it goes to a
//! phone connected over WebSocket (from a node). One task per gateway
//! feeds it both sockets' datagrams and its timers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use media::ports::{PortError, PortPool};
use media::relay::udp::{Hairpin, LegSockets, RelayControl, UdpRelay};
use media::relay::{LegConfig, RelayConfig, RelayEvent};
use media::Leg;
use prometheus::{IntCounter, Registry};
use sip::transport::Transport;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};

use crate::log_throttle::LogThrottle;
use crate::proxy::{Direction, MediaAnchor, Rewritten};
use crate::webrtc::{self, Gateway, Transmit};

/// Where the relay's sockets live and what the SDP says.
#[derive(Debug, Clone, Copy)]
pub struct RelayAddresses {
    /// Bind address of the phone-facing sockets.
    pub public_bind: IpAddr,
    /// The address phones are told (a NAT's public IP in front of us, or
    /// the bind address).
    pub public_advertised: IpAddr,
    /// Bind address (and SDP address) of the node-facing sockets.
    pub internal: IpAddr,
}

/// A relay that heard nothing either way for this long is a call whose
/// BYE was lost: its ports are taken back. (An inactive hold sends no RTP
/// either, hence so long.)
const ABANDONED_AFTER: Duration = Duration::from_secs(3600);

/// Relays and gateways are started and stopped in the media runtime in
/// batches, at most this long after signalling asked. One at a time, each
/// start and each stop woke an idle media worker: four wake-ups per call,
/// a fifth of the SBC's CPU for a call without RTP. The sockets are bound
/// and registered at once, so datagrams that come meanwhile wait in their
/// buffers; a stopped relay forwards for at most this long.
const HANDOVER_WITHIN: Duration = Duration::from_millis(10);

/// The task of a relay or gateway.
type MediaTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Work for the media runtime, held back until the batch is due.
enum Handover {
    Start(MediaTask),
    /// Dropped in the media runtime, it stops its relay or gateway there.
    Stop(Anchor),
}

#[derive(Default)]
struct Handovers {
    batch: Vec<Handover>,
    /// When the batch must go: `HANDOVER_WITHIN` after its first entry.
    due: Option<Instant>,
}

/// A gateway shared by the proxy (SDP) and its socket task.
struct SharedGateway {
    gateway: Mutex<Gateway>,
    /// Wakes the task after the proxy changed the gateway: str0m may have
    /// something to send, and a new timer.
    changed: Notify,
}

impl SharedGateway {
    fn lock(&self) -> std::sync::MutexGuard<'_, Gateway> {
        self.gateway.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Anchor {
    Relay {
        /// Dropping it stops the relay.
        control: RelayControl,
        sides: RelaySides,
    },
    Gateway {
        shared: Arc<SharedGateway>,
        /// Dropping it stops the gateway's task.
        _stop: mpsc::Sender<()>,
    },
}

struct Session {
    anchor: Anchor,
    answered: bool,
    /// The serial of the challenge (401/407) that failed the call's last
    /// INVITE, while the resubmission with credentials is awaited.
    challenged: Option<u64>,
}

/// At most this many challenged calls keep their relay for the
/// resubmission: beyond, the oldest is ended (its resubmission gets a
/// new relay). It bounds the ports that INVITEs without credentials (a
/// scanner's) can hold to 512 pairs; phones resubmit within a round
/// trip, which this covers up to several hundred calls/s.
const CHALLENGED_KEPT: usize = 256;

/// How long a call's relay addresses are remembered after its BYE: a 2xx
/// is retransmitted for up to 64·T1 until its ACK arrives, and a late
/// copy must not start a relay for a call that is over (it would hold its
/// ports until an hour of silence ends it).
const ENDED_KEPT_FOR: Duration = Duration::from_secs(32);
/// At most this many ended calls are remembered (about 30 s at 1,500
/// calls/s, two Call-IDs each).
const ENDED_KEPT: usize = 100_000;

/// The relay addresses of calls that ended, for SDP that arrives late.
#[derive(Default)]
struct EndedCalls {
    sides: HashMap<String, RelaySides>,
    /// Oldest first, with the time each may be forgotten.
    order: VecDeque<(Instant, String)>,
}

/// A call's relay as its SDP shows it: the address phones are told, and
/// the one nodes are told.
#[derive(Clone, Copy)]
struct RelaySides {
    phone_side: SocketAddr,
    node_side: SocketAddr,
}

impl EndedCalls {
    fn remember(&mut self, call_id: String, sides: RelaySides, now: Instant) {
        self.forget_old(now);
        if self.order.len() >= ENDED_KEPT {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.sides.remove(&oldest);
            }
        }
        self.order
            .push_back((now + ENDED_KEPT_FOR, call_id.clone()));
        self.sides.insert(call_id, sides);
    }

    fn get(&mut self, call_id: &str, now: Instant) -> Option<RelaySides> {
        self.forget_old(now);
        self.sides.get(call_id).copied()
    }

    fn forget_old(&mut self, now: Instant) {
        while let Some((until, _)) = self.order.front() {
            if *until > now {
                break;
            }
            if let Some((_, call_id)) = self.order.pop_front() {
                self.sides.remove(&call_id);
            }
        }
    }
}

pub struct CallRelays {
    ports: PortPool,
    /// The runtime relays and gateways run on, and whose reactor their
    /// sockets are registered with: not signalling's (see `Sbc::start_with_media`).
    media: Handle,
    addresses: RelayAddresses,
    /// The two relays of a call through a B2BUA that does not anchor
    /// media address each other's node side: the hairpin hands their
    /// packets over in memory instead of through the loopback.
    hairpin: Hairpin,
    sessions: HashMap<String, Session>,
    /// Call-IDs whose relay found both legs silent for [`ABANDONED_AFTER`].
    abandoned: mpsc::UnboundedSender<String>,
    /// Challenged calls, oldest first, with their challenge serials.
    challenged: VecDeque<(u64, String)>,
    challenges: u64,
    ended: EndedCalls,
    handovers: Handovers,
    /// Calls refused because no relay could be started (once registered).
    refused: Option<IntCounter>,
    /// A retransmitted INVITE is refused again, and an exhausted range
    /// refuses every call: logged once per interval.
    refusal_log: LogThrottle,
}

impl CallRelays {
    /// The receiver gets the Call-IDs of abandoned relays, to `end` them.
    pub fn new(
        ports: PortPool,
        addresses: RelayAddresses,
        media: Handle,
    ) -> (CallRelays, mpsc::UnboundedReceiver<String>) {
        let (abandoned, abandoned_rx) = mpsc::unbounded_channel();
        let relays = CallRelays {
            ports,
            media,
            addresses,
            hairpin: Hairpin::default(),
            sessions: HashMap::new(),
            abandoned,
            challenged: VecDeque::new(),
            challenges: 0,
            ended: EndedCalls::default(),
            handovers: Handovers::default(),
            refused: None,
            refusal_log: LogThrottle::default(),
        };
        (relays, abandoned_rx)
    }

    pub fn register_metrics(&mut self, registry: &Registry) -> Result<(), prometheus::Error> {
        let refused = IntCounter::new(
            "sbc_media_calls_refused_total",
            "SDP refused (a request gets 503) because no RTP relay could be started: \
             the port range or the open files are exhausted",
        )?;
        registry.register(Box::new(refused.clone()))?;
        self.refused = Some(refused);
        Ok(())
    }

    /// Counts a call refused for want of a relay, and logs it unless one
    /// was logged less than [`LOG_EVERY`](crate::log_throttle::LOG_EVERY) ago.
    fn refuse(&mut self, call_id: &str, error: &PortError) {
        if let Some(refused) = &self.refused {
            refused.inc();
        }
        if let Some(unlogged) = self.refusal_log.occurred(Instant::now()) {
            tracing::error!(%call_id, %error, refused_since_last_line = unlogged,
                "no RTP relay: call refused (503)");
        }
    }

    pub fn active(&self) -> usize {
        self.sessions.len()
    }

    /// RTP port pairs held (two per call).
    pub fn ports_in_use(&self) -> usize {
        self.ports.in_use()
    }

    /// When the relays' starts and stops held back must be handed to the
    /// media runtime ([`hand_over`](Self::hand_over)).
    pub fn handover_due(&self) -> Option<Instant> {
        self.handovers.due
    }

    /// Starts and stops, in the media runtime, the relays and gateways
    /// signalling asked for since the last time.
    pub fn hand_over(&mut self) {
        self.handovers.due = None;
        let batch = std::mem::take(&mut self.handovers.batch);
        if batch.is_empty() {
            return;
        }
        self.media.spawn(async move {
            for handover in batch {
                match handover {
                    Handover::Start(task) => drop(tokio::spawn(task)),
                    Handover::Stop(anchor) => drop(anchor),
                }
            }
        });
    }

    fn hold_back(&mut self, handover: Handover) {
        self.handovers
            .due
            .get_or_insert_with(|| Instant::now() + HANDOVER_WITHIN);
        self.handovers.batch.push(handover);
    }

    /// Ends the call's session: its relay or gateway stops with the next
    /// hand-over. The Call-ID and, of a relay, its addresses.
    fn stop(&mut self, call_id: &str) -> Option<(String, Option<RelaySides>)> {
        let (call_id, session) = self.sessions.remove_entry(call_id)?;
        let sides = match &session.anchor {
            Anchor::Relay { sides, .. } => Some(*sides),
            Anchor::Gateway { .. } => None,
        };
        self.hold_back(Handover::Stop(session.anchor));
        Some((call_id, sides))
    }

    /// The call's session, started now if it has none; a challenged one
    /// is taken up again by the resubmission. `None` (counted, logged):
    /// none could be started.
    fn session(&mut self, call_id: &str, browser: bool) -> Option<&Session> {
        match self.sessions.get_mut(call_id) {
            Some(session) => session.challenged = None,
            None => match self.start(call_id, browser) {
                Ok((session, task)) => {
                    self.hold_back(Handover::Start(task));
                    self.sessions.insert(call_id.to_string(), session);
                }
                Err(error) => {
                    self.refuse(call_id, &error);
                    return None;
                }
            },
        }
        self.sessions.get(call_id)
    }

    /// The call's session and the task to run in the media runtime.
    fn start(&self, call_id: &str, browser: bool) -> Result<(Session, MediaTask), PortError> {
        // Sockets bound now register with the media runtime's reactor
        // (a pair given back keeps its registration).
        let _in_media = self.media.enter();
        let (lease_a, rtp_a, rtcp_a) = self.ports.bind_pair(self.addresses.public_bind)?;
        let (lease_b, rtp_b, rtcp_b) = self.ports.bind_pair(self.addresses.internal)?;
        let phone_side = SocketAddr::new(self.addresses.public_advertised, lease_a.rtp_port);
        let node_side = SocketAddr::new(self.addresses.internal, lease_b.rtp_port);
        if browser {
            let shared = Arc::new(SharedGateway {
                gateway: Mutex::new(Gateway::new(phone_side, node_side)),
                changed: Notify::new(),
            });
            let (stop, stopped) = mpsc::channel(1);
            let task = GatewayTask {
                shared: shared.clone(),
                browser: rtp_a,
                node: rtp_b,
                abandoned: self.abandoned.clone(),
                call_id: call_id.to_string(),
            };
            let run = Box::pin(async move {
                task.run(stopped).await;
                // The sockets are closed now: the ports may be reused.
                drop((lease_a, lease_b, rtcp_a, rtcp_b));
            });
            let session = Session {
                anchor: Anchor::Gateway {
                    shared,
                    _stop: stop,
                },
                answered: false,
                challenged: None,
            };
            return Ok((session, run));
        }
        let (relay, control) = UdpRelay::new(
            RelayConfig {
                media_timeout: ABANDONED_AFTER,
                ..RelayConfig::default()
            },
            [LegConfig::default(); 2],
            [
                LegSockets {
                    rtp: rtp_a,
                    rtcp: Some(rtcp_a),
                },
                LegSockets {
                    rtp: rtp_b,
                    rtcp: Some(rtcp_b),
                },
            ],
        );
        let relay = relay.with_hairpin(&self.hairpin);
        let abandoned = self.abandoned.clone();
        let call = call_id.to_string();
        let mut silent = [false; 2];
        let events = Box::new(move |event| {
            tracing::debug!(call_id = %call, ?event, "media relay");
            match event {
                RelayEvent::LegTimedOut { leg } => silent[leg.index()] = true,
                RelayEvent::Latched { leg, .. } | RelayEvent::Relatched { leg, .. } => {
                    silent[leg.index()] = false;
                }
            }
            if silent == [true, true] {
                let _ = abandoned.send(call.clone());
            }
        });
        let run = Box::pin(async move {
            let (_, sockets) = relay.run_to_end(events).await;
            // The sockets stay bound for the next calls (binding and
            // closing them were a good part of the cost of a call).
            if let Some([a, b]) = sockets {
                lease_a.give_back(a.rtp, a.rtcp);
                lease_b.give_back(b.rtp, b.rtcp);
            }
        });
        let session = Session {
            anchor: Anchor::Relay {
                control,
                sides: RelaySides {
                    phone_side,
                    node_side,
                },
            },
            answered: false,
            challenged: None,
        };
        Ok((session, run))
    }
}

/// The IO of one WebRTC gateway: the browser-facing and node-facing RTP
/// sockets and the gateway's timers.
struct GatewayTask {
    shared: Arc<SharedGateway>,
    browser: udp::Socket,
    node: udp::Socket,
    abandoned: mpsc::UnboundedSender<String>,
    call_id: String,
}

impl GatewayTask {
    async fn run(self, mut stop: mpsc::Receiver<()>) {
        let mut browser_buf = vec![0u8; 2048];
        let mut node_buf = vec![0u8; 2048];
        let mut last_heard = Instant::now();
        loop {
            let (transmits, deadline) = {
                let mut gateway = self.shared.lock();
                (gateway.take_transmits(), gateway.poll_timeout())
            };
            for transmit in transmits {
                let sent = match &transmit {
                    Transmit::ToBrowser { destination, data } => {
                        self.browser.send_to(data, *destination).await
                    }
                    Transmit::ToNode { destination, data } => {
                        self.node.send_to(data, *destination).await
                    }
                };
                if let Err(e) = sent {
                    tracing::debug!(call_id = %self.call_id, error = %e, "WebRTC gateway send");
                }
            }
            // Nothing heard for this long is a call whose BYE was lost.
            let abandon_at = last_heard + ABANDONED_AFTER;
            let wake_at = deadline.map_or(abandon_at, |d| d.min(abandon_at));
            tokio::select! {
                received = self.browser.recv_from(&mut browser_buf) => {
                    if let Ok((n, source)) = received {
                        last_heard = Instant::now();
                        let data = browser_buf.get(..n).unwrap_or_default();
                        self.shared.lock().from_browser_socket(source, data, last_heard);
                    }
                }
                received = self.node.recv_from(&mut node_buf) => {
                    if let Ok((n, _)) = received {
                        last_heard = Instant::now();
                        let data = node_buf.get(..n).unwrap_or_default();
                        self.shared.lock().from_node_socket(data, last_heard);
                    }
                }
                () = tokio::time::sleep_until(wake_at.into()) => {
                    let now = Instant::now();
                    if now >= abandon_at {
                        let _ = self.abandoned.send(self.call_id.clone());
                        last_heard = now;
                    }
                    self.shared.lock().handle_timeout(now);
                }
                () = self.shared.changed.notified() => {}
                _ = stop.recv() => return,
            }
        }
    }
}

impl MediaAnchor for CallRelays {
    fn rewrite(
        &mut self,
        call_id: &str,
        direction: Direction,
        phone: Transport,
        body: &[u8],
    ) -> Rewritten {
        // A browser: its SDP says WebRTC, or (a call to it) it is
        // connected over WebSocket, which only browsers use.
        let browser = match direction {
            Direction::Inward => webrtc::is_webrtc(body),
            Direction::Outward => matches!(phone, Transport::Ws | Transport::Wss),
        };
        if !self.sessions.contains_key(call_id) {
            // A late copy (a retransmitted 2xx) of a call that is over:
            // addressed as before, with no relay behind it.
            if let Some(ended) = self.ended.get(call_id, Instant::now()) {
                return match anchor_to_relay(call_id, direction, ended, body) {
                    Some((body, _)) => Rewritten::Body(body),
                    None => unanchorable(direction),
                };
            }
        }
        let Some(session) = self.session(call_id, browser) else {
            return Rewritten::NoRelay;
        };
        match &session.anchor {
            Anchor::Relay { control, sides } => {
                let Some((body, stream)) = anchor_to_relay(call_id, direction, *sides, body) else {
                    return unanchorable(direction);
                };
                let author = match direction {
                    Direction::Inward => Leg::A,
                    Direction::Outward => Leg::B,
                };
                control.update_leg(author, LegConfig::toward(stream.rtp, stream.rtcp_mux));
                Rewritten::Body(body)
            }
            Anchor::Gateway { shared, .. } => {
                let now = Instant::now();
                let translated = {
                    let mut gateway = shared.lock();
                    match direction {
                        Direction::Inward => gateway.from_browser(body, now),
                        Direction::Outward => gateway.from_node(body, now),
                    }
                };
                shared.changed.notify_one();
                match translated {
                    Ok(body) => Rewritten::Body(body),
                    Err(e) => {
                        tracing::warn!(%call_id, error = %e, "WebRTC SDP not translated");
                        Rewritten::Unacceptable
                    }
                }
            }
        }
    }

    fn answered(&mut self, call_id: &str) {
        if let Some(session) = self.sessions.get_mut(call_id) {
            session.answered = true;
        }
    }

    fn challenged(&mut self, call_id: &str) {
        let Some(session) = self.sessions.get_mut(call_id) else {
            return;
        };
        // A browser's resubmission is a new offer that a gateway would
        // take for a renegotiation: its gateway starts anew.
        if matches!(session.anchor, Anchor::Gateway { .. }) {
            return self.failed(call_id);
        }
        if session.answered {
            return;
        }
        self.challenges += 1;
        session.challenged = Some(self.challenges);
        self.challenged
            .push_back((self.challenges, call_id.to_string()));
        while self.challenged.len() > CHALLENGED_KEPT {
            let Some((serial, oldest)) = self.challenged.pop_front() else {
                break;
            };
            // Not resubmitted (nor challenged again) since: its
            // resubmission, if it comes, gets a new relay.
            if self
                .sessions
                .get(&oldest)
                .is_some_and(|s| s.challenged == Some(serial))
            {
                self.stop(&oldest);
            }
        }
    }

    fn failed(&mut self, call_id: &str) {
        if self.sessions.get(call_id).is_some_and(|s| !s.answered) {
            self.stop(call_id);
        }
    }

    fn end(&mut self, call_id: &str) {
        if let Some((call_id, Some(sides))) = self.stop(call_id) {
            self.ended.remember(call_id, sides, Instant::now());
        }
    }
}

/// `body` (SDP going `direction`) re-addressed to the relay side facing its
/// recipient, and the stream it describes; `None` (logged) if it has no
/// audio stream to anchor.
fn anchor_to_relay(
    call_id: &str,
    direction: Direction,
    relay: RelaySides,
    body: &[u8],
) -> Option<(Vec<u8>, sip::sdp::AudioStream)> {
    let ours = match direction {
        Direction::Inward => relay.node_side,
        Direction::Outward => relay.phone_side,
    };
    sip::sdp::anchor_audio(body, ours)
        .inspect_err(|e| tracing::warn!(%call_id, error = %e, "SDP not relayed"))
        .ok()
}

/// What becomes of SDP the relay cannot anchor (no audio stream, such as
/// a fax's `m=image`): a phone's goes to the node as it is, but a node's
/// would show the phone the node's address, so it goes no further.
fn unanchorable(direction: Direction) -> Rewritten {
    match direction {
        Direction::Inward => Rewritten::AsIs,
        Direction::Outward => Rewritten::Unacceptable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.7\r\ns=-\r\nc=IN IP4 192.0.2.7\r\n\
        t=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    fn relays(first_port: u16, pairs: u16) -> CallRelays {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let ports = PortPool::new(first_port, first_port + pairs * 2).unwrap();
        let addresses = RelayAddresses {
            public_bind: loopback,
            public_advertised: loopback,
            internal: loopback,
        };
        CallRelays::new(ports, addresses, Handle::current()).0
    }

    /// The RTP port a phone's offer for `call_id` was re-addressed to.
    fn offer(relays: &mut CallRelays, call_id: &str) -> u16 {
        sdp_port(relays, call_id, Direction::Inward)
    }

    /// The RTP port SDP of `call_id` going `direction` was re-addressed to.
    fn sdp_port(relays: &mut CallRelays, call_id: &str, direction: Direction) -> u16 {
        rewritten_port(relays, call_id, direction, OFFER)
    }

    fn rewritten_port(
        relays: &mut CallRelays,
        call_id: &str,
        direction: Direction,
        sdp: &[u8],
    ) -> u16 {
        let Rewritten::Body(body) = relays.rewrite(call_id, direction, Transport::Udp, sdp) else {
            panic!("not anchored");
        };
        let body = String::from_utf8(body).unwrap();
        let media = body.lines().find(|l| l.starts_with("m=audio ")).unwrap();
        media.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn a_call_without_ports_is_refused_counted_and_logged_once() {
        // One call's worth: a pair facing the phone, one facing the node.
        let mut relays = relays(41000, 2);
        let registry = Registry::new();
        relays.register_metrics(&registry).unwrap();
        offer(&mut relays, "first");
        for call_id in ["second", "second", "third"] {
            assert!(matches!(
                relays.rewrite(call_id, Direction::Inward, Transport::Udp, OFFER),
                Rewritten::NoRelay
            ));
        }
        assert_eq!(relays.active(), 1);
        let refused = crate::test_metrics::counter(&registry, "sbc_media_calls_refused_total", &[]);
        assert_eq!(refused, 3.0);
        // The first was logged; the two since wait for the next line.
        let later = Instant::now() + crate::log_throttle::LOG_EVERY;
        assert_eq!(relays.refusal_log.occurred(later), Some(2));
    }

    #[tokio::test]
    async fn sdp_without_audio_goes_to_the_node_as_it_is_but_not_to_a_phone() {
        let mut relays = relays(40000, 10);
        let fax = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\n\
            t=0 0\r\nm=image 4000 udptl t38\r\n";
        offer(&mut relays, "a");
        assert!(matches!(
            relays.rewrite("a", Direction::Inward, Transport::Udp, fax),
            Rewritten::AsIs
        ));
        assert!(matches!(
            relays.rewrite("a", Direction::Outward, Transport::Udp, fax),
            Rewritten::Unacceptable
        ));
        // Nor after the call, from the addresses it had.
        relays.end("a");
        assert!(matches!(
            relays.rewrite("a", Direction::Outward, Transport::Udp, fax),
            Rewritten::Unacceptable
        ));
    }

    #[tokio::test]
    async fn a_challenged_call_keeps_its_relay_for_the_resubmission() {
        let mut relays = relays(42000, 50);
        let first = offer(&mut relays, "a");
        relays.challenged("a");
        assert_eq!((relays.active(), relays.ports_in_use()), (1, 2));
        assert_eq!(offer(&mut relays, "a"), first, "the same relay");
        assert_eq!(relays.ports_in_use(), 2);
        // Challenged again (a stale nonce), then the resubmission fails.
        relays.challenged("a");
        relays.failed("a");
        assert_eq!(relays.active(), 0);
    }

    #[tokio::test]
    async fn challenged_calls_beyond_the_cap_lose_their_relay_oldest_first() {
        let mut relays = relays(43000, 2 * CHALLENGED_KEPT as u16 + 20);
        // Challenged, then resubmitted: no longer waiting, so never cut.
        offer(&mut relays, "resubmitted");
        relays.challenged("resubmitted");
        offer(&mut relays, "resubmitted");
        for i in 0..=CHALLENGED_KEPT {
            offer(&mut relays, &format!("c{i}"));
            relays.challenged(&format!("c{i}"));
        }
        assert_eq!(relays.active(), CHALLENGED_KEPT + 1);
        assert!(!relays.sessions.contains_key("c0"), "the oldest is ended");
        assert!(relays.sessions.contains_key("c1"));
        assert!(relays.sessions.contains_key("resubmitted"));
    }

    #[tokio::test]
    async fn sdp_arriving_after_the_bye_gets_the_ended_calls_addresses_and_no_relay() {
        let mut relays = relays(44000, 50);
        offer(&mut relays, "a");
        let answer = sdp_port(&mut relays, "a", Direction::Outward);
        relays.answered("a");
        relays.end("a");
        assert_eq!(relays.active(), 0);
        // The callee's 2xx retransmitted after the BYE.
        assert_eq!(sdp_port(&mut relays, "a", Direction::Outward), answer);
        assert_eq!(relays.active(), 0, "no relay for a call that is over");
        // A call that failed is not remembered: its Call-ID may be reused.
        offer(&mut relays, "b");
        relays.failed("b");
        offer(&mut relays, "b");
        assert_eq!(relays.active(), 1);
    }

    #[tokio::test]
    async fn a_relay_starts_with_the_hand_over_and_relays_what_came_before() {
        let mut relays = relays(45000, 10);
        let phone = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let node = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sdp = |socket: &tokio::net::UdpSocket| {
            let port = socket.local_addr().unwrap().port();
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
                 t=0 0\r\nm=audio {port} RTP/AVP 0\r\n"
            )
        };
        let asked = Instant::now();
        let node_side = rewritten_port(&mut relays, "a", Direction::Inward, sdp(&phone).as_bytes());
        rewritten_port(&mut relays, "a", Direction::Outward, sdp(&node).as_bytes());
        let due = relays.handover_due().expect("the start is held back");
        assert!(due <= asked + HANDOVER_WITHIN + Duration::from_millis(5));
        // Sent before the relay runs: it waits in the socket's buffer.
        let packet = media::rtp::RtpPacket::new(0, 1, 160, 0xabcd, &[0xff; 160])
            .to_vec()
            .unwrap();
        node.send_to(&packet, ("127.0.0.1", node_side))
            .await
            .unwrap();
        relays.hand_over();
        assert_eq!(relays.handover_due(), None);
        let mut buffer = [0u8; 1500];
        let (len, _) = tokio::time::timeout(Duration::from_secs(2), phone.recv_from(&mut buffer))
            .await
            .expect("relayed once handed over")
            .unwrap();
        assert_eq!(buffer.get(..len), Some(&packet[..]));
        // The BYE: the relay stops with the next hand-over and gives its
        // ports back.
        relays.answered("a");
        relays.end("a");
        assert_eq!(relays.ports_in_use(), 2, "held until the hand-over");
        relays.hand_over();
        tokio::time::timeout(Duration::from_secs(2), async {
            while relays.ports_in_use() > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the relay stopped");
    }
}
