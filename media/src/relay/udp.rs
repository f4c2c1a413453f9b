//! tokio driver for [`RelayCore`]: one task per call owning that call's
//! sockets. Receive buffers are allocated once per call and packets are
//! rewritten in place, so relaying allocates nothing per packet; a task
//! parked in `select!` costs a few hundred bytes, so thousands of calls fit
//! on one core. Relays of one process that send each other media can share
//! a [`Hairpin`], which hands those datagrams over in memory; a relay that
//! ends gives its sockets back ([`UdpRelay::run_to_end`]) so a port pool
//! can keep them bound for the next call.
//!
//! Signalling steers a running relay through its [`RelayControl`]: a leg's
//! new SDP address, or a [`RelayTap`] (a call recorder) that is handed every
//! RTP packet the relay forwards. Dropping the control stops it.

use super::{LegConfig, RelayConfig, RelayCore, RelayEvent, SocketKind, Transmit};
use crate::rtp::{self, PacketKind};
use crate::Leg;
use atomic_waker::AtomicWaker;
use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

/// How often a tap is given time to write out what it buffered.
const TAP_TICK: Duration = Duration::from_millis(100);

/// Sees every RTP packet the relay forwards (after rewriting, so each
/// leg's packets form one continuous stream), in the relay's own task.
pub trait RelayTap: Send {
    fn rtp(&mut self, from: Leg, packet: &[u8], now: std::time::Instant);
    /// Called every 100 ms.
    fn tick(&mut self, now: std::time::Instant);
    /// The relay stopped (or another tap replaced this one).
    fn close(self: Box<Self>, now: std::time::Instant);
}

/// Where a relay reports latching and timeouts. It is called with the
/// relay's state locked, in the relay's task or in that of a hairpin peer
/// handing it a datagram: it must neither block nor call into the relay.
pub type EventSink = Box<dyn FnMut(RelayEvent) + Send>;

/// Signalling's hold on a relay. A change is applied to the relay's state
/// in the caller's task, and the relay's task is woken only when it must
/// act on it (an earlier timeout, a tap to tick): a channel would wake it
/// for every SDP. Dropping the control stops the relay.
pub struct RelayControl {
    relay: Weak<Shared>,
}

impl RelayControl {
    /// Signalling changed a leg: see [`RelayCore::update_leg`].
    pub fn update_leg(&self, leg: Leg, config: LegConfig) {
        let Some(shared) = self.relay.upgrade() else {
            return;
        };
        let mut state = shared.lock();
        state
            .core
            .update_leg(leg, config, Instant::now().into_std());
        let rearm = state.timer_moved_earlier();
        drop(state);
        if rearm {
            shared.wake_to_rearm();
        }
    }

    /// Hands forwarded RTP to `tap` from now on (closing the one before).
    pub fn tap(&self, tap: Box<dyn RelayTap>) {
        let Some(shared) = self.relay.upgrade() else {
            return;
        };
        let old = shared.lock().tap.replace(tap);
        if let Some(old) = old {
            old.close(Instant::now().into_std());
        }
        // The task starts ticking the tap.
        shared.wake_to_rearm();
    }
}

impl Drop for RelayControl {
    fn drop(&mut self) {
        let Some(shared) = self.relay.upgrade() else {
            return;
        };
        shared.stopped.store(true, Ordering::Release);
        let waker = shared.rearm_waker.take();
        // Released before the wake: the task, once stopped, takes its
        // sockets back only if it holds the last reference.
        drop(shared);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Largest datagram relayed; RTP over Ethernet stays well below.
const MAX_DATAGRAM: usize = 1500;

/// A leg's local sockets: RTP, and RTCP unless the leg uses rtcp-mux.
pub struct LegSockets {
    pub rtp: udp::Socket,
    pub rtcp: Option<udp::Socket>,
}

impl LegSockets {
    /// Binds ephemeral ports on `ip` (production allocates port pairs
    /// from a configured range and passes them in instead).
    pub fn bind(ip: IpAddr, rtcp_mux: bool) -> io::Result<Self> {
        let rtp = udp::Socket::bind(SocketAddr::new(ip, 0))?;
        let rtcp = if rtcp_mux {
            None
        } else {
            Some(udp::Socket::bind(SocketAddr::new(ip, 0))?)
        };
        Ok(LegSockets { rtp, rtcp })
    }

    fn socket(&self, kind: SocketKind) -> Option<&udp::Socket> {
        match kind {
            SocketKind::Rtp => Some(&self.rtp),
            SocketKind::Rtcp => self.rtcp.as_ref(),
        }
    }
}

fn kind_index(kind: SocketKind) -> usize {
    match kind {
        SocketKind::Rtp => 0,
        SocketKind::Rtcp => 1,
    }
}

/// The relays of one process that send media to each other's sockets. An
/// SBC in front of a B2BUA that does not anchor media has two relays per
/// call whose node-facing legs address each other: every packet would go
/// out of one relay and back into the other through the loopback (a
/// `sendto` and a `recvfrom`, the larger part of the cost of relaying it).
/// Relays that share a `Hairpin` hand such a datagram over in memory
/// instead: the receiving relay's core sees it from the sending socket's
/// address, exactly as the kernel would have delivered it, so latching,
/// re-anchoring, its tap and its timers behave the same. One hop only: what
/// the receiving relay sends on goes out through its socket.
#[derive(Clone, Default)]
pub struct Hairpin {
    sockets: Arc<RwLock<HashMap<SocketAddr, Endpoint>>>,
    /// Counts registrations, so that a relay's cached "no relay there"
    /// ([`RouteCache`]) goes stale when one may have appeared.
    registrations: Arc<AtomicU64>,
}

/// A relay's socket, as the hairpin finds it by its local address.
#[derive(Clone)]
struct Endpoint {
    relay: Weak<Shared>,
    leg: Leg,
    kind: SocketKind,
}

impl Hairpin {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<SocketAddr, Endpoint>> {
        self.sockets.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<SocketAddr, Endpoint>> {
        self.sockets.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers each of the relay's sockets bound to a specific address
    /// (a wildcard address is never a datagram's destination).
    fn register(&self, relay: &Arc<Shared>) {
        let mut map = self.map_mut();
        for (leg, kind, addr) in relay.local_addrs() {
            if !addr.ip().is_unspecified() {
                let relay = Arc::downgrade(relay);
                map.insert(addr, Endpoint { relay, leg, kind });
            }
        }
        self.registrations.fetch_add(1, Ordering::Release);
    }

    fn deregister(&self, relay: &Arc<Shared>) {
        let mut map = self.map_mut();
        for (_, _, addr) in relay.local_addrs() {
            if map
                .get(&addr)
                .is_some_and(|e| std::ptr::eq(e.relay.as_ptr(), Arc::as_ptr(relay)))
            {
                map.remove(&addr);
            }
        }
    }

    fn find(&self, destination: SocketAddr) -> Option<Endpoint> {
        self.map().get(&destination).cloned()
    }
}

/// A relay's last hairpin lookup per outgoing socket. Every packet of a
/// stream goes to the same destination, and the shared map's lock and
/// hash are a per-packet cost worth skipping. A peer found stays valid
/// while its relay lives (its sockets are only given back, and their
/// addresses reused, once no `Arc` of it is left); "none there" stays valid
/// until the next registration.
#[derive(Default)]
struct RouteCache {
    entries: [[Option<CachedRoute>; 2]; 2],
}

struct CachedRoute {
    destination: SocketAddr,
    registrations: u64,
    peer: Option<Endpoint>,
}

impl RouteCache {
    /// The relay (and its socket) `transmit` goes to, if it is one of the
    /// hairpin's.
    fn route(
        &mut self,
        hairpin: &Hairpin,
        transmit: &Transmit,
    ) -> Option<(Arc<Shared>, Leg, SocketKind)> {
        let slot = &mut self.entries[transmit.leg.index()][kind_index(transmit.socket)];
        let cached = slot
            .as_ref()
            .filter(|c| c.destination == transmit.destination);
        let fresh = cached.is_some_and(|c| match &c.peer {
            Some(peer) => peer.relay.strong_count() > 0,
            None => c.registrations == hairpin.registrations.load(Ordering::Acquire),
        });
        if !fresh {
            // Read before the lookup: a registration after it makes this stale.
            let registrations = hairpin.registrations.load(Ordering::Acquire);
            *slot = Some(CachedRoute {
                destination: transmit.destination,
                registrations,
                peer: hairpin.find(transmit.destination),
            });
        }
        let peer = slot.as_ref()?.peer.as_ref()?;
        Some((peer.relay.upgrade()?, peer.leg, peer.kind))
    }
}

/// A relay's state, shared by its task and (through a [`Hairpin`]) the
/// tasks of relays that hand it datagrams.
struct Shared {
    state: Mutex<State>,
    sockets: [LegSockets; 2],
    /// Each socket's local address by leg and kind (RTP, RTCP).
    local: [[Option<SocketAddr>; 2]; 2],
    /// Set (and `rearm_waker` woken) when a datagram handed over by
    /// another relay, or the control, moved the core's next timeout before
    /// the deadline this relay's task sleeps until, or gave it a tap.
    rearm: AtomicBool,
    /// Set (and `rearm_waker` woken) when the control is dropped.
    stopped: AtomicBool,
    rearm_waker: AtomicWaker,
}

struct State {
    core: RelayCore,
    tap: Option<Box<dyn RelayTap>>,
    events: Option<EventSink>,
    /// The deadline the relay's task sleeps until, if any.
    armed: Option<std::time::Instant>,
}

impl State {
    /// Hands a datagram (rewritten in place) to the core, shows the tap
    /// what is forwarded and reports the core's events.
    fn datagram(
        &mut self,
        leg: Leg,
        kind: SocketKind,
        source: SocketAddr,
        packet: &mut [u8],
        now: std::time::Instant,
    ) -> Option<Transmit> {
        let transmit = self.core.handle_datagram(leg, kind, source, packet, now);
        if let (Some(tap), Some(_), PacketKind::Rtp) =
            (&mut self.tap, &transmit, rtp::classify(packet))
        {
            tap.rtp(leg, packet, now);
        }
        self.report_events();
        transmit
    }

    fn report_events(&mut self) {
        while let Some(event) = self.core.poll_event() {
            if let Some(events) = &mut self.events {
                events(event);
            }
        }
    }

    /// The core's next timeout is earlier than the deadline the task
    /// sleeps until (a leg that had timed out heard again, a new leg).
    fn timer_moved_earlier(&self) -> bool {
        self.core
            .next_timeout()
            .is_some_and(|next| self.armed.is_none_or(|armed| next < armed))
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_to_rearm(&self) {
        self.rearm.store(true, Ordering::Release);
        self.rearm_waker.wake();
    }

    fn local_addrs(&self) -> impl Iterator<Item = (Leg, SocketKind, SocketAddr)> + '_ {
        [Leg::A, Leg::B].into_iter().flat_map(move |leg| {
            [SocketKind::Rtp, SocketKind::Rtcp]
                .into_iter()
                .filter_map(move |kind| {
                    let addr = self.local[leg.index()][kind_index(kind)]?;
                    Some((leg, kind, addr))
                })
        })
    }

    fn send(&self, transmit: Transmit, packet: &[u8]) {
        let Some(out) = self.sockets[transmit.leg.index()].socket(transmit.socket) else {
            return;
        };
        // A packet that finds the send buffer full is dropped: by the time
        // there is room it is late, and the next one is due.
        if let Err(error) = out.try_send_to(packet, transmit.destination) {
            tracing::debug!(%error, destination = %transmit.destination, "relay send failed");
        }
    }
}

pub struct UdpRelay {
    shared: Arc<Shared>,
    hairpin: Option<Hairpin>,
}

impl UdpRelay {
    /// The relay, to run, and its control.
    pub fn new(
        config: RelayConfig,
        legs: [LegConfig; 2],
        sockets: [LegSockets; 2],
    ) -> (Self, RelayControl) {
        let local = |leg: &LegSockets| {
            [
                leg.rtp.local_addr().ok(),
                leg.rtcp.as_ref().and_then(|s| s.local_addr().ok()),
            ]
        };
        let state = State {
            core: RelayCore::new(config, legs, Instant::now().into_std()),
            tap: None,
            events: None,
            armed: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            local: [local(&sockets[0]), local(&sockets[1])],
            sockets,
            rearm: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            rearm_waker: AtomicWaker::new(),
        });
        let control = RelayControl {
            relay: Arc::downgrade(&shared),
        };
        let relay = UdpRelay {
            shared,
            hairpin: None,
        };
        (relay, control)
    }

    /// Joins `hairpin` while it runs: datagrams to another relay of the
    /// hairpin are handed over in memory, and it gets theirs.
    pub fn with_hairpin(mut self, hairpin: &Hairpin) -> Self {
        self.hairpin = Some(hairpin.clone());
        self
    }

    pub fn local_addr(&self, leg: Leg, kind: SocketKind) -> io::Result<SocketAddr> {
        self.shared.local[leg.index()][kind_index(kind)]
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "leg uses rtcp-mux"))
    }

    /// Relays until its control is dropped, reporting latching and
    /// timeouts to `events`. Returns the core for its stats.
    pub async fn run(self, events: EventSink) -> RelayCore {
        self.run_to_end(events).await.0
    }

    /// [`run`](Self::run), also giving back the sockets (for reuse), unless
    /// another relay of the hairpin still held them at the end.
    pub async fn run_to_end(self, events: EventSink) -> (RelayCore, Option<[LegSockets; 2]>) {
        let UdpRelay { shared, hairpin } = self;
        shared.lock().events = Some(events);
        if let Some(hairpin) = &hairpin {
            hairpin.register(&shared);
        }
        let mut buffer = vec![0u8; MAX_DATAGRAM];
        relay_loop(&shared, hairpin.as_ref(), &mut buffer).await;
        if let Some(hairpin) = &hairpin {
            hairpin.deregister(&shared);
        }
        let now = Instant::now().into_std();
        if let Some(tap) = shared.lock().tap.take() {
            tap.close(now);
        }
        match Arc::try_unwrap(shared) {
            Ok(shared) => {
                let state = shared
                    .state
                    .into_inner()
                    .unwrap_or_else(PoisonError::into_inner);
                (state.core, Some(shared.sockets))
            }
            // Another relay is handing us a datagram this very moment.
            Err(shared) => {
                let core = std::mem::replace(
                    &mut shared.lock().core,
                    RelayCore::new(RelayConfig::default(), [LegConfig::default(); 2], now),
                );
                (core, None)
            }
        }
    }
}

/// What woke a relay's task.
enum Wake {
    /// The control was dropped.
    Stop,
    TapTick,
    Timer,
    /// The next timeout moved earlier (a datagram another relay handed
    /// over, the control), or a tap was set.
    Rearm,
    /// A datagram arrived on one of the sockets, now in the buffer.
    Received(Leg, SocketKind, io::Result<(usize, SocketAddr)>),
}

/// A relay's sockets in the order it looks at them (from a rotating start,
/// so a flood on one cannot starve the others).
const SOCKETS: [(Leg, SocketKind); 4] = [
    (Leg::A, SocketKind::Rtp),
    (Leg::A, SocketKind::Rtcp),
    (Leg::B, SocketKind::Rtp),
    (Leg::B, SocketKind::Rtcp),
];

/// The task of one relay: its four sockets, its control, its timer. It
/// polls them by hand rather than through `select!`: a `select!` would
/// build and drop a receive future per socket, each queueing a waiter
/// under its socket's lock, for every packet.
async fn relay_loop(shared: &Arc<Shared>, hairpin: Option<&Hairpin>, buffer: &mut [u8]) {
    let mut tap_tick = tokio::time::interval(TAP_TICK);
    tap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One timer for the call, re-armed only when it fires or when the
    // next deadline moves earlier: packets push deadlines later, so the
    // steady state touches no timer per packet.
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut timer_armed = true;
    let mut routes = RouteCache::default();
    let mut first_socket = 0;
    loop {
        let tapped = {
            let mut state = shared.lock();
            if let Some(next) = state.core.next_timeout().map(Instant::from_std) {
                if !timer_armed || next < timer.deadline() {
                    timer.as_mut().reset(next);
                    timer_armed = true;
                }
            }
            state.armed = timer_armed.then(|| timer.deadline().into_std());
            state.tap.is_some()
        };
        first_socket = (first_socket + 1) % SOCKETS.len();
        let wake = poll_fn(|cx| {
            if timer_armed && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if tapped && tap_tick.poll_tick(cx).is_ready() {
                return Poll::Ready(Wake::TapTick);
            }
            shared.rearm_waker.register(cx.waker());
            if shared.stopped.load(Ordering::Acquire) {
                return Poll::Ready(Wake::Stop);
            }
            if shared.rearm.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Wake::Rearm);
            }
            for i in 0..SOCKETS.len() {
                let (leg, kind) = SOCKETS[(first_socket + i) % SOCKETS.len()];
                let Some(socket) = shared.sockets[leg.index()].socket(kind) else {
                    continue;
                };
                if let Poll::Ready(received) = socket.poll_recv_from(cx, buffer) {
                    return Poll::Ready(Wake::Received(leg, kind, received));
                }
            }
            Poll::Pending
        })
        .await;
        let (leg, kind, received) = match wake {
            Wake::Stop => return,
            Wake::TapTick => {
                if let Some(tap) = shared.lock().tap.as_mut() {
                    tap.tick(Instant::now().into_std());
                }
                continue;
            }
            Wake::Timer => {
                let mut state = shared.lock();
                state.core.handle_timeout(Instant::now().into_std());
                state.report_events();
                match state.core.next_timeout() {
                    Some(next) => timer.as_mut().reset(Instant::from_std(next)),
                    None => timer_armed = false,
                }
                continue;
            }
            Wake::Rearm => continue,
            Wake::Received(leg, kind, received) => (leg, kind, received),
        };
        let (len, source) = match received {
            Ok(received) => received,
            Err(error) => {
                // e.g. ICMP port unreachable reported on Windows; the
                // socket itself is still usable.
                tracing::debug!(%error, ?leg, "relay receive failed");
                continue;
            }
        };
        let Some(packet) = buffer.get_mut(..len) else {
            continue;
        };
        let now = Instant::now().into_std();
        let transmit = shared.lock().datagram(leg, kind, source, packet, now);
        let Some(transmit) = transmit else {
            continue;
        };
        match hairpin.and_then(|h| routes.route(h, &transmit)) {
            Some((peer, peer_leg, peer_kind)) => {
                let from = shared.local[transmit.leg.index()][kind_index(transmit.socket)];
                let onward = from.and_then(|from| {
                    let mut state = peer.lock();
                    let onward = state.datagram(peer_leg, peer_kind, from, packet, now);
                    // Its task sleeps until `armed`: wake it if the core
                    // now has an earlier deadline.
                    if state.timer_moved_earlier() {
                        peer.wake_to_rearm();
                    }
                    onward
                });
                if let Some(onward) = onward {
                    peer.send(onward, packet);
                }
            }
            None => shared.send(transmit, packet),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{self, ReceiverReport, RtcpPacket};
    use crate::rtp::RtpPacket;
    use std::net::Ipv4Addr;
    use std::time::Duration;
    use tokio::net::UdpSocket;
    use tokio::sync::mpsc;
    use tokio::time::timeout;

    /// A relay's events, received from a channel.
    fn events() -> (EventSink, mpsc::UnboundedReceiver<RelayEvent>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sink: EventSink = Box::new(move |event| {
            let _ = sender.send(event);
        });
        (sink, receiver)
    }

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    async fn phone() -> UdpSocket {
        UdpSocket::bind((LOCALHOST, 0)).await.unwrap()
    }

    async fn send_rtp(from: &UdpSocket, to: SocketAddr, ssrc: u32, seq: u16, ts: u32) {
        let packet = RtpPacket::new(0, seq, ts, ssrc, &[0xff; 160])
            .to_vec()
            .unwrap();
        from.send_to(&packet, to).await.unwrap();
    }

    async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = [0u8; 2048];
        let (len, from) = timeout(Duration::from_secs(2), socket.recv_from(&mut buf))
            .await
            .expect("packet within 2 s")
            .unwrap();
        (buf[..len].to_vec(), from)
    }

    async fn receive_rtp(socket: &UdpSocket) -> (u32, u16, u32) {
        let (bytes, _) = receive(socket).await;
        let p = RtpPacket::parse(&bytes).unwrap();
        (p.ssrc, p.sequence, p.timestamp)
    }

    async fn assert_silent(socket: &UdpSocket) {
        let mut buf = [0u8; 2048];
        assert!(
            timeout(Duration::from_millis(150), socket.recv_from(&mut buf))
                .await
                .is_err(),
            "unexpected packet"
        );
    }

    struct Call {
        a_addr: SocketAddr,
        b_addr: SocketAddr,
        b_rtcp_addr: SocketAddr,
        events: mpsc::UnboundedReceiver<RelayEvent>,
        control: RelayControl,
        task: tokio::task::JoinHandle<RelayCore>,
    }

    /// Leg A is a NATed phone (address learned by latching, rtcp-mux);
    /// leg B is a server whose SDP address is known (separate RTCP).
    async fn start_call(config: RelayConfig, callee: &UdpSocket, callee_rtcp: &UdpSocket) -> Call {
        let legs = [
            LegConfig {
                rtcp_mux: true,
                ..LegConfig::default()
            },
            LegConfig {
                remote_rtp: Some(callee.local_addr().unwrap()),
                remote_rtcp: Some(callee_rtcp.local_addr().unwrap()),
                rtcp_mux: false,
            },
        ];
        let sockets = [
            LegSockets::bind(LOCALHOST, true).unwrap(),
            LegSockets::bind(LOCALHOST, false).unwrap(),
        ];
        let (relay, control) = UdpRelay::new(config, legs, sockets);
        let a_addr = relay.local_addr(Leg::A, SocketKind::Rtp).unwrap();
        let b_addr = relay.local_addr(Leg::B, SocketKind::Rtp).unwrap();
        let b_rtcp_addr = relay.local_addr(Leg::B, SocketKind::Rtcp).unwrap();
        assert!(relay.local_addr(Leg::A, SocketKind::Rtcp).is_err());
        let (event_tx, events) = events();
        let task = tokio::spawn(relay.run(event_tx));
        Call {
            a_addr,
            b_addr,
            b_rtcp_addr,
            events,
            control,
            task,
        }
    }

    #[tokio::test]
    async fn relays_and_relatches_when_the_source_port_changes_mid_call() {
        let config = RelayConfig {
            relatch_after_silence: Duration::from_secs(1),
            ..RelayConfig::default()
        };
        let (caller, callee, callee_rtcp) = (phone().await, phone().await, phone().await);
        let mut call = start_call(config, &callee, &callee_rtcp).await;

        send_rtp(&caller, call.a_addr, 0xaaaa, 10, 1600).await;
        assert_eq!(receive_rtp(&callee).await, (0xaaaa, 10, 1600));
        assert_eq!(
            call.events.recv().await,
            Some(RelayEvent::Latched {
                leg: Leg::A,
                address: caller.local_addr().unwrap()
            })
        );
        send_rtp(&callee, call.b_addr, 0xbbbb, 1, 0).await;
        let (bytes, from) = receive(&caller).await;
        assert_eq!(
            from, call.a_addr,
            "symmetric RTP: the reply comes from the port the phone sends to"
        );
        assert_eq!(RtpPacket::parse(&bytes).unwrap().ssrc, 0xbbbb);

        // The caller's NAT rebinds: same SSRC from a new port.
        let rebound = phone().await;
        send_rtp(&rebound, call.a_addr, 0xaaaa, 11, 1760).await;
        assert_eq!(receive_rtp(&callee).await, (0xaaaa, 11, 1760));
        send_rtp(&callee, call.b_addr, 0xbbbb, 2, 160).await;
        receive(&rebound).await;
        assert_silent(&caller).await;

        // A stranger with another SSRC is ignored while the caller talks.
        let stranger = phone().await;
        send_rtp(&stranger, call.a_addr, 0x6666, 1, 0).await;
        assert_silent(&callee).await;
        send_rtp(&callee, call.b_addr, 0xbbbb, 3, 320).await;
        receive(&rebound).await;

        // The caller goes quiet, then restarts from another port with a new
        // SSRC: accepted, and re-anchored to continue the old stream.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let restarted = phone().await;
        send_rtp(&restarted, call.a_addr, 0x1234, 5000, 999_999).await;
        let (ssrc, seq, ts) = receive_rtp(&callee).await;
        assert_eq!((ssrc, seq), (0xaaaa, 12));
        assert!(
            ts > 1760 + 8000 && ts < 1760 + 8000 * 5,
            "timestamp advanced by the silence: {ts}"
        );

        drop(call.control);
        let core = call.task.await.unwrap();
        assert_eq!(core.stats().rejected_sources, 1);
    }

    #[tokio::test]
    async fn rtcp_crosses_from_mux_to_separate_ports() {
        let (caller, callee, callee_rtcp) = (phone().await, phone().await, phone().await);
        let call = start_call(RelayConfig::default(), &callee, &callee_rtcp).await;
        send_rtp(&caller, call.a_addr, 1, 1, 0).await;
        receive(&callee).await;
        let rr = rtcp::write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 1,
            reports: vec![],
        })])
        .unwrap();
        caller.send_to(&rr, call.a_addr).await.unwrap();
        let (bytes, from) = receive(&callee_rtcp).await;
        assert_eq!(from, call.b_rtcp_addr);
        assert_eq!(bytes, rr);
        drop(call.control);
        call.task.await.unwrap();
    }

    #[tokio::test]
    async fn reports_a_silent_leg() {
        let config = RelayConfig {
            media_timeout: Duration::from_millis(200),
            ..RelayConfig::default()
        };
        let (caller, callee, callee_rtcp) = (phone().await, phone().await, phone().await);
        let mut call = start_call(config, &callee, &callee_rtcp).await;
        let a_addr = call.a_addr;
        // The caller keeps talking; the callee never sends.
        let talker = tokio::spawn(async move {
            for seq in 0..20u16 {
                send_rtp(&caller, a_addr, 1, seq, u32::from(seq) * 160).await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        });
        assert!(matches!(
            call.events.recv().await,
            Some(RelayEvent::Latched { leg: Leg::A, .. })
        ));
        let event = timeout(Duration::from_secs(2), call.events.recv())
            .await
            .unwrap();
        assert_eq!(event, Some(RelayEvent::LegTimedOut { leg: Leg::B }));
        talker.abort();
        let event = timeout(Duration::from_secs(2), call.events.recv())
            .await
            .unwrap();
        assert_eq!(event, Some(RelayEvent::LegTimedOut { leg: Leg::A }));
        // With both legs silent the timer is idle; media from B re-arms it.
        send_rtp(&callee, call.b_addr, 2, 1, 0).await;
        assert!(matches!(
            call.events.recv().await,
            Some(RelayEvent::Latched { leg: Leg::B, .. })
        ));
        let event = timeout(Duration::from_secs(2), call.events.recv())
            .await
            .unwrap();
        assert_eq!(event, Some(RelayEvent::LegTimedOut { leg: Leg::B }));
        drop(call.control);
        call.task.await.unwrap();
    }

    /// Events until both legs timed out (skipping latching).
    async fn until_both_timed_out(events: &mut mpsc::UnboundedReceiver<RelayEvent>) {
        let mut timed_out = [false; 2];
        while timed_out != [true, true] {
            let event = timeout(Duration::from_secs(2), events.recv())
                .await
                .unwrap();
            if let Some(RelayEvent::LegTimedOut { leg }) = event {
                timed_out[leg.index()] = true;
            }
        }
    }

    #[tokio::test]
    async fn relays_sharing_a_hairpin_hand_each_other_datagrams_in_memory() {
        // The caller's relay faces the inside on ::1, the callee's on
        // 127.0.0.1: the kernel cannot carry a datagram between the two
        // (another address family), only the hairpin can.
        let v6: IpAddr = "::1".parse().unwrap();
        let hairpin = Hairpin::default();
        let (caller, callee) = (phone().await, phone().await);
        let mux = LegConfig {
            rtcp_mux: true,
            ..LegConfig::default()
        };
        let first_sockets = [
            LegSockets::bind(LOCALHOST, true).unwrap(),
            LegSockets::bind(v6, true).unwrap(),
        ];
        let second_sockets = [
            LegSockets::bind(LOCALHOST, true).unwrap(),
            LegSockets::bind(LOCALHOST, true).unwrap(),
        ];
        let first_inside = first_sockets[1].rtp.local_addr().unwrap();
        let second_inside = second_sockets[1].rtp.local_addr().unwrap();
        let toward = |addr: SocketAddr| LegConfig {
            remote_rtp: Some(addr),
            ..mux
        };
        let (first, first_control) = UdpRelay::new(
            RelayConfig::default(),
            [mux, toward(second_inside)],
            first_sockets,
        );
        let first = first.with_hairpin(&hairpin);
        let (second, second_control) = UdpRelay::new(
            RelayConfig {
                media_timeout: Duration::from_millis(300),
                ..RelayConfig::default()
            },
            [toward(callee.local_addr().unwrap()), toward(first_inside)],
            second_sockets,
        );
        let second = second.with_hairpin(&hairpin);
        let (first_a, second_a) = (
            first.local_addr(Leg::A, SocketKind::Rtp).unwrap(),
            second.local_addr(Leg::A, SocketKind::Rtp).unwrap(),
        );
        let first_task = tokio::spawn(first.run_to_end(Box::new(|_| {})));
        let (second_events, mut events) = events();
        let second_task = tokio::spawn(second.run_to_end(second_events));

        send_rtp(&caller, first_a, 0xaaaa, 1, 0).await;
        let (bytes, from) = receive(&callee).await;
        assert_eq!(from, second_a);
        assert_eq!(RtpPacket::parse(&bytes).unwrap().ssrc, 0xaaaa);
        assert_eq!(
            events.recv().await,
            Some(RelayEvent::Latched {
                leg: Leg::B,
                address: first_inside
            }),
            "seen from the caller relay's socket, as the kernel would show it"
        );
        send_rtp(&callee, second_a, 0xbbbb, 1, 0).await;
        let (bytes, from) = receive(&caller).await;
        assert_eq!(from, first_a);
        assert_eq!(RtpPacket::parse(&bytes).unwrap().ssrc, 0xbbbb);

        // Both legs of the callee's relay time out; a datagram handed
        // over wakes its timer again, so the next silence is reported.
        until_both_timed_out(&mut events).await;
        send_rtp(&caller, first_a, 0xaaaa, 2, 160).await;
        receive(&callee).await;
        let event = timeout(Duration::from_secs(2), events.recv())
            .await
            .unwrap();
        assert_eq!(event, Some(RelayEvent::LegTimedOut { leg: Leg::B }));

        // The callee's relay ends: it leaves the hairpin and gets its
        // sockets back; the caller's can no longer reach it.
        drop(second_control);
        let (_, sockets) = second_task.await.unwrap();
        assert!(sockets.is_some());
        send_rtp(&caller, first_a, 0xaaaa, 3, 320).await;
        assert_silent(&callee).await;
        drop(first_control);
        let (core, _) = first_task.await.unwrap();
        assert_eq!(core.stats().forwarded, 4);
    }

    #[tokio::test]
    async fn a_cached_route_sees_a_relay_join_and_leave() {
        let hairpin = Hairpin::default();
        let sockets = [
            LegSockets::bind(LOCALHOST, true).unwrap(),
            LegSockets::bind(LOCALHOST, true).unwrap(),
        ];
        let (relay, _control) =
            UdpRelay::new(RelayConfig::default(), [LegConfig::default(); 2], sockets);
        let transmit = Transmit {
            leg: Leg::B,
            socket: SocketKind::Rtp,
            destination: relay.local_addr(Leg::A, SocketKind::Rtp).unwrap(),
        };
        let mut routes = RouteCache::default();
        assert!(
            routes.route(&hairpin, &transmit).is_none(),
            "not joined yet"
        );
        hairpin.register(&relay.shared);
        let (peer, leg, kind) = routes.route(&hairpin, &transmit).expect("joined since");
        assert!(Arc::ptr_eq(&peer, &relay.shared));
        assert_eq!((leg, kind), (Leg::A, SocketKind::Rtp));
        drop(peer);
        hairpin.deregister(&relay.shared);
        drop(relay);
        assert!(routes.route(&hairpin, &transmit).is_none(), "gone");
    }

    /// (leg, SSRC) of each packet shown, and the number of ticks.
    type Seen = (Vec<(Leg, u32)>, usize);

    /// Counts what it is shown and reports it when closed.
    struct CountingTap {
        seen: Vec<(Leg, u32)>,
        ticks: usize,
        closed: Option<tokio::sync::oneshot::Sender<Seen>>,
    }

    impl RelayTap for CountingTap {
        fn rtp(&mut self, from: Leg, packet: &[u8], _now: std::time::Instant) {
            let ssrc = RtpPacket::parse(packet).unwrap().ssrc;
            self.seen.push((from, ssrc));
        }
        fn tick(&mut self, _now: std::time::Instant) {
            self.ticks += 1;
        }
        fn close(mut self: Box<Self>, _now: std::time::Instant) {
            if let Some(closed) = self.closed.take() {
                let _ = closed.send((std::mem::take(&mut self.seen), self.ticks));
            }
        }
    }

    #[tokio::test]
    async fn a_leg_moved_by_signalling_and_a_tap_seeing_forwarded_rtp_only() {
        let (caller, callee, callee_rtcp) = (phone().await, phone().await, phone().await);
        let call = start_call(RelayConfig::default(), &callee, &callee_rtcp).await;
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let tap = CountingTap {
            seen: Vec::new(),
            ticks: 0,
            closed: Some(closed_tx),
        };
        call.control.tap(Box::new(tap));
        send_rtp(&caller, call.a_addr, 0xaaaa, 1, 0).await;
        receive(&callee).await;
        // A re-INVITE moves the callee: B's media now goes to the new port.
        let (moved, moved_rtcp) = (phone().await, phone().await);
        call.control.update_leg(
            Leg::B,
            LegConfig {
                remote_rtp: Some(moved.local_addr().unwrap()),
                remote_rtcp: Some(moved_rtcp.local_addr().unwrap()),
                rtcp_mux: false,
            },
        );
        send_rtp(&caller, call.a_addr, 0xaaaa, 2, 160).await;
        receive(&moved).await;
        assert_silent(&callee).await;
        send_rtp(&moved, call.b_addr, 0xbbbb, 1, 0).await;
        receive(&caller).await;
        // RTCP is relayed but not shown to the tap.
        let rr = rtcp::write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 0xaaaa,
            reports: vec![],
        })])
        .unwrap();
        caller.send_to(&rr, call.a_addr).await.unwrap();
        receive(&moved_rtcp).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        drop(call.control);
        call.task.await.unwrap();
        let (seen, ticks) = closed.await.expect("tap closed when the relay stops");
        assert_eq!(
            seen,
            vec![(Leg::A, 0xaaaa), (Leg::A, 0xaaaa), (Leg::B, 0xbbbb)]
        );
        assert!(ticks >= 2, "ticked every 100 ms: {ticks}");
    }
}
