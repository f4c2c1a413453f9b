//! tokio driver for [`RelayCore`]: one task per call owning that call's
//! sockets. Receive buffers are allocated once per call and packets are
//! rewritten in place, so relaying allocates nothing per packet; a task
//! parked in `select!` costs a few hundred bytes, so thousands of calls fit
//! on one core.
//!
//! Signalling steers a running relay with [`RelayCommand`]s: a leg's new
//! SDP address, or a [`RelayTap`] (a call recorder) that is handed every
//! RTP packet the relay forwards. Dropping the command sender stops it.

use super::{LegConfig, RelayConfig, RelayCore, RelayEvent, SocketKind, Transmit};
use crate::rtp::{self, PacketKind};
use crate::Leg;
use std::future::pending;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
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

pub enum RelayCommand {
    /// Signalling changed a leg: see [`RelayCore::update_leg`].
    UpdateLeg { leg: Leg, config: LegConfig },
    /// Hand forwarded RTP to `tap` from now on.
    Tap(Box<dyn RelayTap>),
}

/// Largest datagram relayed; RTP over Ethernet stays well below.
const MAX_DATAGRAM: usize = 1500;

/// A leg's local sockets: RTP, and RTCP unless the leg uses rtcp-mux.
pub struct LegSockets {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
}

impl LegSockets {
    /// Binds ephemeral ports on `ip` (production allocates port pairs
    /// from a configured range and passes them in instead).
    pub async fn bind(ip: IpAddr, rtcp_mux: bool) -> io::Result<Self> {
        let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let rtcp = if rtcp_mux {
            None
        } else {
            Some(UdpSocket::bind(SocketAddr::new(ip, 0)).await?)
        };
        Ok(LegSockets { rtp, rtcp })
    }

    fn socket(&self, kind: SocketKind) -> Option<&UdpSocket> {
        match kind {
            SocketKind::Rtp => Some(&self.rtp),
            SocketKind::Rtcp => self.rtcp.as_ref(),
        }
    }
}

async fn recv_on(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => pending().await,
    }
}

pub struct UdpRelay {
    core: RelayCore,
    sockets: [LegSockets; 2],
}

impl UdpRelay {
    pub fn new(config: RelayConfig, legs: [LegConfig; 2], sockets: [LegSockets; 2]) -> Self {
        UdpRelay {
            core: RelayCore::new(config, legs, Instant::now().into_std()),
            sockets,
        }
    }

    pub fn local_addr(&self, leg: Leg, kind: SocketKind) -> io::Result<SocketAddr> {
        self.sockets[leg.index()]
            .socket(kind)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "leg uses rtcp-mux"))?
            .local_addr()
    }

    /// Relays until every sender of `commands` is dropped, reporting
    /// latching and timeouts on `events`. Returns the core for its stats.
    pub async fn run(
        mut self,
        events: mpsc::UnboundedSender<RelayEvent>,
        mut commands: mpsc::UnboundedReceiver<RelayCommand>,
    ) -> RelayCore {
        let mut tap: Option<Box<dyn RelayTap>> = None;
        let stop = |tap: Option<Box<dyn RelayTap>>, core: RelayCore| {
            if let Some(tap) = tap {
                tap.close(Instant::now().into_std());
            }
            core
        };
        let mut buffers = vec![[0u8; MAX_DATAGRAM]; 4];
        let [a_rtp, a_rtcp, b_rtp, b_rtcp] = buffers.as_mut_slice() else {
            return self.core;
        };
        let mut tap_tick = tokio::time::interval(TAP_TICK);
        tap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the call, re-armed only when it fires or when the
        // next deadline moves earlier: packets push deadlines later, so the
        // steady state touches no timer per packet.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut timer_armed = true;
        loop {
            if let Some(next) = self.core.next_timeout().map(Instant::from_std) {
                if !timer_armed || next < timer.deadline() {
                    timer.as_mut().reset(next);
                    timer_armed = true;
                }
            }
            let [a, b] = &self.sockets;
            let (leg, kind, received, buf) = tokio::select! {
                command = commands.recv() => {
                    let now = Instant::now().into_std();
                    match command {
                        None => return stop(tap, self.core),
                        Some(RelayCommand::UpdateLeg { leg, config }) => {
                            self.core.update_leg(leg, config, now);
                        }
                        Some(RelayCommand::Tap(new)) => {
                            if let Some(old) = tap.replace(new) {
                                old.close(now);
                            }
                        }
                    }
                    continue;
                }
                _ = tap_tick.tick(), if tap.is_some() => {
                    if let Some(tap) = tap.as_mut() {
                        tap.tick(Instant::now().into_std());
                    }
                    continue;
                }
                _ = &mut timer, if timer_armed => {
                    self.core.handle_timeout(Instant::now().into_std());
                    while let Some(event) = self.core.poll_event() {
                        let _ = events.send(event);
                    }
                    match self.core.next_timeout() {
                        Some(next) => timer.as_mut().reset(Instant::from_std(next)),
                        None => timer_armed = false,
                    }
                    continue;
                }
                r = recv_on(Some(&a.rtp), a_rtp) => (Leg::A, SocketKind::Rtp, r, &mut *a_rtp),
                r = recv_on(a.rtcp.as_ref(), a_rtcp) => (Leg::A, SocketKind::Rtcp, r, &mut *a_rtcp),
                r = recv_on(Some(&b.rtp), b_rtp) => (Leg::B, SocketKind::Rtp, r, &mut *b_rtp),
                r = recv_on(b.rtcp.as_ref(), b_rtcp) => (Leg::B, SocketKind::Rtcp, r, &mut *b_rtcp),
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
            let Some(packet) = buf.get_mut(..len) else {
                continue;
            };
            let now = Instant::now().into_std();
            let transmit = self.core.handle_datagram(leg, kind, source, packet, now);
            if let (Some(tap), Some(_), PacketKind::Rtp) =
                (&mut tap, &transmit, rtp::classify(packet))
            {
                tap.rtp(leg, packet, now);
            }
            if let Some(Transmit {
                leg: out_leg,
                socket,
                destination,
            }) = transmit
            {
                if let Some(out) = self.sockets[out_leg.index()].socket(socket) {
                    if let Err(error) = out.send_to(packet, destination).await {
                        tracing::debug!(%error, %destination, "relay send failed");
                    }
                }
            }
            while let Some(event) = self.core.poll_event() {
                let _ = events.send(event);
            }
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
    use tokio::time::timeout;

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
        commands: mpsc::UnboundedSender<RelayCommand>,
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
            LegSockets::bind(LOCALHOST, true).await.unwrap(),
            LegSockets::bind(LOCALHOST, false).await.unwrap(),
        ];
        let relay = UdpRelay::new(config, legs, sockets);
        let a_addr = relay.local_addr(Leg::A, SocketKind::Rtp).unwrap();
        let b_addr = relay.local_addr(Leg::B, SocketKind::Rtp).unwrap();
        let b_rtcp_addr = relay.local_addr(Leg::B, SocketKind::Rtcp).unwrap();
        assert!(relay.local_addr(Leg::A, SocketKind::Rtcp).is_err());
        let (event_tx, events) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(relay.run(event_tx, command_rx));
        Call {
            a_addr,
            b_addr,
            b_rtcp_addr,
            events,
            commands,
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

        drop(call.commands);
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
        drop(call.commands);
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
        drop(call.commands);
        call.task.await.unwrap();
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
        call.commands
            .send(RelayCommand::Tap(Box::new(tap)))
            .unwrap();
        send_rtp(&caller, call.a_addr, 0xaaaa, 1, 0).await;
        receive(&callee).await;
        // A re-INVITE moves the callee: B's media now goes to the new port.
        let (moved, moved_rtcp) = (phone().await, phone().await);
        call.commands
            .send(RelayCommand::UpdateLeg {
                leg: Leg::B,
                config: LegConfig {
                    remote_rtp: Some(moved.local_addr().unwrap()),
                    remote_rtcp: Some(moved_rtcp.local_addr().unwrap()),
                    rtcp_mux: false,
                },
            })
            .unwrap();
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
        drop(call.commands);
        call.task.await.unwrap();
        let (seen, ticks) = closed.await.expect("tap closed when the relay stops");
        assert_eq!(
            seen,
            vec![(Leg::A, 0xaaaa), (Leg::A, 0xaaaa), (Leg::B, 0xbbbb)]
        );
        assert!(ticks >= 2, "ticked every 100 ms: {ticks}");
    }
}
