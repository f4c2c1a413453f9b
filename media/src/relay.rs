//! Media relay between the two legs of a call (the SBC's anchor and the
//! pbx-node's bridge), as a sans-IO core: it is handed each datagram with
//! the leg and socket it arrived on, rewrites it in place and says where to
//! send it. [`udp`] drives it with tokio sockets.
//!
//! * Symmetric RTP with latching: a leg's real address (behind NAT) is the
//!   source of its first RTP packet. A new source replaces it only if it
//!   carries the SSRC already seen on that leg (a NAT rebinding) or after
//!   the latched source has been silent for `relatch_after_silence` (the
//!   phone restarted its stream); anything else is dropped, so a stranger
//!   spraying packets at the port cannot hijack the call.
//! * Each direction leaves with one SSRC and continuous sequence numbers
//!   and timestamps: when the incoming SSRC changes (transfer, re-INVITE,
//!   restart) new offsets are computed so the far side sees one stream.
//! * RTCP is passed through (sender SSRC and SR timestamp rewritten to
//!   match), with or without rtcp-mux on either leg.
//! * A leg that sends no RTP for `media_timeout` is reported once.
//!
//! The core never allocates per packet.

pub mod udp;

use crate::rtp::{self, PacketKind};
use crate::Leg;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    pub clock_rate: u32,
    /// Minimum timestamp advance across a re-anchor (one frame).
    pub frame_samples: u32,
    pub relatch_after_silence: Duration,
    pub media_timeout: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            clock_rate: crate::SAMPLE_RATE,
            frame_samples: crate::FRAME_SAMPLES as u32,
            relatch_after_silence: Duration::from_secs(2),
            media_timeout: Duration::from_secs(30),
        }
    }
}

/// What signalling (SDP) says about a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LegConfig {
    /// Where to send RTP until the leg's real address is latched.
    pub remote_rtp: Option<SocketAddr>,
    /// Where to send RTCP when the leg does not use rtcp-mux.
    pub remote_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
}

impl LegConfig {
    /// A leg whose far end receives RTP at `rtp` (as its SDP said) and
    /// RTCP on the same port with rtcp-mux, else on the port above. A port
    /// of 0 or an unspecified address (a declined stream, old-style hold)
    /// leaves the leg to latching alone.
    pub fn toward(rtp: SocketAddr, rtcp_mux: bool) -> LegConfig {
        let remote_rtp = (rtp.port() != 0 && !rtp.ip().is_unspecified()).then_some(rtp);
        LegConfig {
            remote_rtp,
            remote_rtcp: remote_rtp
                .filter(|_| !rtcp_mux)
                .map(|rtp| SocketAddr::new(rtp.ip(), rtp.port().saturating_add(1))),
            rtcp_mux,
        }
    }
}

/// Which of a leg's two local sockets a datagram uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Rtp,
    Rtcp,
}

/// Send the (rewritten) datagram from `leg`'s `socket` to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub leg: Leg,
    pub socket: SocketKind,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEvent {
    Latched {
        leg: Leg,
        address: SocketAddr,
    },
    Relatched {
        leg: Leg,
        from: SocketAddr,
        to: SocketAddr,
    },
    /// The leg sent no RTP for the media timeout.
    LegTimedOut {
        leg: Leg,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayStats {
    pub forwarded: u64,
    /// Packets from a source that was refused latching.
    pub rejected_sources: u64,
    /// Malformed, non-RTP, or nowhere to send.
    pub dropped: u64,
}

/// Maps one incoming stream (possibly several SSRCs over time) onto one
/// continuous outgoing stream.
#[derive(Debug, Clone, Copy)]
struct StreamRewriter {
    out_ssrc: u32,
    in_ssrc: u32,
    seq_offset: u16,
    ts_offset: u32,
    last_out_seq: u16,
    last_out_ts: u32,
    last_at: Instant,
}

impl StreamRewriter {
    fn start(ssrc: u32, seq: u16, ts: u32, now: Instant) -> Self {
        StreamRewriter {
            out_ssrc: ssrc,
            in_ssrc: ssrc,
            seq_offset: 0,
            ts_offset: 0,
            last_out_seq: seq,
            last_out_ts: ts,
            last_at: now,
        }
    }

    fn rewrite(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: u32,
        now: Instant,
        config: &RelayConfig,
    ) -> (u32, u16, u32) {
        if ssrc != self.in_ssrc {
            // Re-anchor: continue right after the last packet sent, with the
            // timestamp advanced by the wall-clock time between them.
            let elapsed = now.saturating_duration_since(self.last_at).as_nanos()
                * u128::from(config.clock_rate)
                / 1_000_000_000;
            let advance = u32::try_from(elapsed)
                .unwrap_or(u32::MAX)
                .max(config.frame_samples);
            self.seq_offset = self.last_out_seq.wrapping_add(1).wrapping_sub(seq);
            self.ts_offset = self.last_out_ts.wrapping_add(advance).wrapping_sub(ts);
            self.in_ssrc = ssrc;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = ts.wrapping_add(self.ts_offset);
        if out_seq.wrapping_sub(self.last_out_seq) as i16 > 0 {
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
            self.last_at = now;
        }
        (self.out_ssrc, out_seq, out_ts)
    }
}

#[derive(Debug)]
struct LegState {
    config: LegConfig,
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    last_ssrc: Option<u32>,
    last_rtp_at: Instant,
    timed_out: bool,
    /// Rewrites what this leg sends, on its way to the other leg.
    rewriter: Option<StreamRewriter>,
}

impl LegState {
    fn new(config: LegConfig, now: Instant) -> Self {
        LegState {
            config,
            latched: None,
            latched_rtcp: None,
            last_ssrc: None,
            last_rtp_at: now,
            timed_out: false,
            rewriter: None,
        }
    }

    fn rtp_destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.config.remote_rtp)
    }

    fn rtcp_destination(&self) -> Option<(SocketKind, SocketAddr)> {
        if self.config.rtcp_mux {
            self.rtp_destination().map(|addr| (SocketKind::Rtp, addr))
        } else {
            self.latched_rtcp
                .or(self.config.remote_rtcp)
                .map(|addr| (SocketKind::Rtcp, addr))
        }
    }
}

pub struct RelayCore {
    config: RelayConfig,
    legs: [LegState; 2],
    events: VecDeque<RelayEvent>,
    stats: RelayStats,
}

/// SSRC, sequence number and timestamp, read without a full parse.
fn stream_fields(packet: &[u8]) -> Option<(u32, u16, u32)> {
    let header = packet.get(..rtp::HEADER_LEN)?;
    let seq = u16::from_be_bytes([header[2], header[3]]);
    let ts = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Some((ssrc, seq, ts))
}

impl RelayCore {
    pub fn new(config: RelayConfig, legs: [LegConfig; 2], now: Instant) -> Self {
        let [a, b] = legs;
        RelayCore {
            config,
            legs: [LegState::new(a, now), LegState::new(b, now)],
            events: VecDeque::new(),
            stats: RelayStats::default(),
        }
    }

    pub fn stats(&self) -> RelayStats {
        self.stats
    }

    /// Signalling changed a leg (re-INVITE, transfer): forget the latched
    /// address and learn it again. Outgoing streams stay continuous.
    pub fn update_leg(&mut self, leg: Leg, config: LegConfig, now: Instant) {
        let state = &mut self.legs[leg.index()];
        let rewriter = state.rewriter.take();
        *state = LegState::new(config, now);
        state.rewriter = rewriter;
    }

    pub fn latched_address(&self, leg: Leg) -> Option<SocketAddr> {
        self.legs[leg.index()].latched
    }

    pub fn poll_event(&mut self) -> Option<RelayEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.legs
            .iter()
            .filter(|l| !l.timed_out)
            .map(|l| l.last_rtp_at + self.config.media_timeout)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for leg in [Leg::A, Leg::B] {
            let state = &mut self.legs[leg.index()];
            if !state.timed_out
                && now.saturating_duration_since(state.last_rtp_at) >= self.config.media_timeout
            {
                state.timed_out = true;
                self.events.push_back(RelayEvent::LegTimedOut { leg });
            }
        }
    }

    /// A datagram arrived on `leg`'s `socket` from `source`. It is
    /// rewritten in place; the return value says where to send it.
    pub fn handle_datagram(
        &mut self,
        leg: Leg,
        socket: SocketKind,
        source: SocketAddr,
        packet: &mut [u8],
        now: Instant,
    ) -> Option<Transmit> {
        let transmit = match (socket, rtp::classify(packet)) {
            (_, PacketKind::Other) => None,
            (SocketKind::Rtp, PacketKind::Rtp) => self.handle_rtp(leg, source, packet, now),
            (SocketKind::Rtp, PacketKind::Rtcp) if self.legs[leg.index()].config.rtcp_mux => {
                self.handle_rtcp(leg, source, packet)
            }
            (SocketKind::Rtcp, PacketKind::Rtcp) => self.handle_rtcp(leg, source, packet),
            _ => None,
        };
        if transmit.is_some() {
            self.stats.forwarded += 1;
        } else {
            self.stats.dropped += 1;
        }
        transmit
    }

    fn handle_rtp(
        &mut self,
        leg: Leg,
        source: SocketAddr,
        packet: &mut [u8],
        now: Instant,
    ) -> Option<Transmit> {
        let (ssrc, seq, ts) = stream_fields(packet)?;
        let config = self.config;
        let state = &mut self.legs[leg.index()];
        match state.latched {
            None => {
                state.latched = Some(source);
                self.events.push_back(RelayEvent::Latched {
                    leg,
                    address: source,
                });
            }
            Some(current) if current == source => {}
            Some(current) => {
                let same_stream = state.last_ssrc == Some(ssrc);
                let old_source_gone = now.saturating_duration_since(state.last_rtp_at)
                    >= config.relatch_after_silence;
                if !(same_stream || old_source_gone) {
                    self.stats.rejected_sources += 1;
                    return None;
                }
                state.latched = Some(source);
                // The RTCP address moves with the media.
                state.latched_rtcp = None;
                self.events.push_back(RelayEvent::Relatched {
                    leg,
                    from: current,
                    to: source,
                });
            }
        }
        state.last_ssrc = Some(ssrc);
        state.last_rtp_at = now;
        state.timed_out = false;
        let rewriter = state
            .rewriter
            .get_or_insert_with(|| StreamRewriter::start(ssrc, seq, ts, now));
        let (out_ssrc, out_seq, out_ts) = rewriter.rewrite(ssrc, seq, ts, now, &config);
        rtp::rewrite_stream_fields(packet, out_ssrc, out_seq, out_ts).ok()?;
        let other = leg.other();
        let destination = self.legs[other.index()].rtp_destination()?;
        Some(Transmit {
            leg: other,
            socket: SocketKind::Rtp,
            destination,
        })
    }

    fn handle_rtcp(&mut self, leg: Leg, source: SocketAddr, packet: &mut [u8]) -> Option<Transmit> {
        let state = &mut self.legs[leg.index()];
        if state.config.rtcp_mux {
            // Muxed RTCP must come from the latched media address.
            if state.latched != Some(source) {
                return None;
            }
        } else {
            match state.latched_rtcp {
                Some(current) if current == source => {}
                // Only accept an RTCP source on the same host as the media.
                _ if state.latched.is_some_and(|rtp| rtp.ip() == source.ip()) => {
                    state.latched_rtcp = Some(source)
                }
                _ => return None,
            }
        }
        if let Some(rewriter) = state.rewriter {
            rewrite_rtcp_sender(packet, &rewriter);
        }
        let other = leg.other();
        let (socket, destination) = self.legs[other.index()].rtcp_destination()?;
        Some(Transmit {
            leg: other,
            socket,
            destination,
        })
    }
}

/// Makes the first SR/RR of a compound match the rewritten stream: sender
/// SSRC and, for an SR, the RTP timestamp. Report blocks are left alone.
fn rewrite_rtcp_sender(packet: &mut [u8], rewriter: &StreamRewriter) {
    let packet_type = packet.get(1).copied();
    if let Some(ssrc_field) = packet.get_mut(4..8) {
        if ssrc_field == rewriter.in_ssrc.to_be_bytes() {
            ssrc_field.copy_from_slice(&rewriter.out_ssrc.to_be_bytes());
        } else {
            return;
        }
    }
    if packet_type == Some(200) {
        if let Some(ts_field) = packet.get_mut(16..20) {
            let ts = u32::from_be_bytes([ts_field[0], ts_field[1], ts_field[2], ts_field[3]]);
            ts_field.copy_from_slice(&ts.wrapping_add(rewriter.ts_offset).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{self, ReceiverReport, RtcpPacket, SenderInfo, SenderReport};
    use crate::rtp::RtpPacket;

    const FRAME: Duration = Duration::from_millis(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        RtpPacket::new(0, seq, ts, ssrc, &[0xd5; 160])
            .to_vec()
            .unwrap()
    }

    fn fields(packet: &[u8]) -> (u32, u16, u32) {
        let p = RtpPacket::parse(packet).unwrap();
        (p.ssrc, p.sequence, p.timestamp)
    }

    fn core(now: Instant) -> RelayCore {
        let b = LegConfig {
            remote_rtp: Some(addr("10.0.0.2:4000")),
            remote_rtcp: Some(addr("10.0.0.2:4001")),
            rtcp_mux: false,
        };
        RelayCore::new(
            RelayConfig::default(),
            [
                LegConfig {
                    rtcp_mux: true,
                    ..LegConfig::default()
                },
                b,
            ],
            now,
        )
    }

    #[test]
    fn latches_and_forwards_both_ways() {
        let t0 = Instant::now();
        let mut relay = core(t0);
        let phone = addr("203.0.113.5:31000");
        // B's packets before A is latched have nowhere to go.
        assert_eq!(
            relay.handle_datagram(
                Leg::B,
                SocketKind::Rtp,
                addr("10.0.0.2:4000"),
                &mut rtp(9, 1, 0),
                t0
            ),
            None
        );
        let mut packet = rtp(1, 100, 5000);
        let tx = relay
            .handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut packet, t0)
            .unwrap();
        assert_eq!(
            tx,
            Transmit {
                leg: Leg::B,
                socket: SocketKind::Rtp,
                destination: addr("10.0.0.2:4000")
            }
        );
        assert_eq!(
            fields(&packet),
            (1, 100, 5000),
            "first stream passes unchanged"
        );
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::Latched {
                leg: Leg::B,
                address: addr("10.0.0.2:4000")
            })
        );
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::Latched {
                leg: Leg::A,
                address: phone
            })
        );
        let tx = relay
            .handle_datagram(
                Leg::B,
                SocketKind::Rtp,
                addr("10.0.0.2:4000"),
                &mut rtp(9, 2, 160),
                t0,
            )
            .unwrap();
        assert_eq!(tx.destination, phone);
        assert_eq!(relay.stats().forwarded, 2);
    }

    #[test]
    fn relatches_on_same_ssrc_but_refuses_a_stranger() {
        let t0 = Instant::now();
        let mut relay = core(t0);
        let phone = addr("203.0.113.5:31000");
        let rebound = addr("203.0.113.5:31002");
        let attacker = addr("198.51.100.9:5000");
        relay
            .handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut rtp(1, 1, 0), t0)
            .unwrap();
        assert_eq!(
            relay.handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                attacker,
                &mut rtp(666, 1, 0),
                t0 + FRAME
            ),
            None
        );
        assert_eq!(relay.latched_address(Leg::A), Some(phone));
        assert_eq!(relay.stats().rejected_sources, 1);
        // NAT rebinding: same SSRC from a new port is accepted at once.
        relay
            .handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                rebound,
                &mut rtp(1, 2, 160),
                t0 + FRAME * 2,
            )
            .unwrap();
        assert_eq!(relay.latched_address(Leg::A), Some(rebound));
        relay.poll_event();
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::Relatched {
                leg: Leg::A,
                from: phone,
                to: rebound
            })
        );
        // A new SSRC from a new address only after the latched one is silent.
        let t_quiet = t0 + FRAME * 2 + RelayConfig::default().relatch_after_silence;
        assert_eq!(
            relay.handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                attacker,
                &mut rtp(7, 1, 0),
                t_quiet - FRAME
            ),
            None
        );
        assert!(relay
            .handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                attacker,
                &mut rtp(7, 1, 0),
                t_quiet
            )
            .is_some());
        assert_eq!(relay.latched_address(Leg::A), Some(attacker));
    }

    #[test]
    fn ssrc_change_is_rewritten_into_one_continuous_stream() {
        let t0 = Instant::now();
        let mut relay = core(t0);
        let phone = addr("203.0.113.5:31000");
        let mut out = Vec::new();
        for i in 0..5u16 {
            let mut p = rtp(1, 65533u16.wrapping_add(i), 1000 + u32::from(i) * 160);
            relay
                .handle_datagram(
                    Leg::A,
                    SocketKind::Rtp,
                    phone,
                    &mut p,
                    t0 + FRAME * u32::from(i),
                )
                .unwrap();
            out.push(fields(&p));
        }
        // The phone restarts its stream (new SSRC, random seq/ts) 100 ms
        // after the last packet; the far side must not notice.
        for i in 0..3u16 {
            let mut p = rtp(2, 40_000 + i, 777_777 + u32::from(i) * 160);
            let at = t0 + FRAME * 4 + Duration::from_millis(100) + FRAME * u32::from(i);
            relay
                .handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut p, at)
                .unwrap();
            out.push(fields(&p));
        }
        assert!(out.iter().all(|(ssrc, _, _)| *ssrc == 1));
        let seqs: Vec<u16> = out.iter().map(|f| f.1).collect();
        assert_eq!(seqs, vec![65533, 65534, 65535, 0, 1, 2, 3, 4]);
        let ts: Vec<u32> = out.iter().map(|f| f.2).collect();
        assert_eq!(ts[5], ts[4] + 800, "100 ms of wall clock between them");
        assert_eq!(ts[7], ts[5] + 320);
    }

    #[test]
    fn rtcp_passes_between_mux_and_non_mux_legs_with_sender_rewritten() {
        let t0 = Instant::now();
        let mut relay = core(t0);
        let phone = addr("203.0.113.5:31000");
        relay
            .handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut rtp(1, 1, 0), t0)
            .unwrap();
        relay
            .handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                phone,
                &mut rtp(2, 9, 50_000),
                t0 + FRAME,
            )
            .unwrap();
        let sr = RtcpPacket::SenderReport(SenderReport {
            ssrc: 2,
            sender_info: SenderInfo {
                rtp_timestamp: 50_000,
                ..SenderInfo::default()
            },
            reports: vec![],
        });
        let mut datagram = rtcp::write_compound(&[sr]).unwrap();
        // Muxed RTCP on A's RTP socket goes to B's RTCP address.
        let tx = relay
            .handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut datagram, t0 + FRAME)
            .unwrap();
        assert_eq!(
            tx,
            Transmit {
                leg: Leg::B,
                socket: SocketKind::Rtcp,
                destination: addr("10.0.0.2:4001")
            }
        );
        match &rtcp::parse_compound(&datagram).unwrap()[0] {
            RtcpPacket::SenderReport(sr) => {
                assert_eq!(sr.ssrc, 1);
                assert_eq!(sr.sender_info.rtp_timestamp, 160);
            }
            other => panic!("{other:?}"),
        }
        // Muxed RTCP from an unlatched address is refused.
        let mut stray = datagram.clone();
        assert_eq!(
            relay.handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                addr("198.51.100.9:1"),
                &mut stray,
                t0
            ),
            None
        );
        // B's RTCP arrives on its RTCP socket and goes to A's muxed address,
        // once B's media has latched.
        let rr = rtcp::write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 9,
            reports: vec![],
        })])
        .unwrap();
        assert_eq!(
            relay.handle_datagram(
                Leg::B,
                SocketKind::Rtcp,
                addr("10.0.0.2:4001"),
                &mut rr.clone(),
                t0
            ),
            None
        );
        relay
            .handle_datagram(
                Leg::B,
                SocketKind::Rtp,
                addr("10.0.0.2:4000"),
                &mut rtp(9, 1, 0),
                t0,
            )
            .unwrap();
        let tx = relay
            .handle_datagram(
                Leg::B,
                SocketKind::Rtcp,
                addr("10.0.0.2:4001"),
                &mut rr.clone(),
                t0,
            )
            .unwrap();
        assert_eq!(
            tx,
            Transmit {
                leg: Leg::A,
                socket: SocketKind::Rtp,
                destination: phone
            }
        );
        // RTP on an RTCP socket or garbage is dropped.
        assert_eq!(
            relay.handle_datagram(
                Leg::B,
                SocketKind::Rtcp,
                addr("10.0.0.2:4001"),
                &mut rtp(9, 2, 0),
                t0
            ),
            None
        );
        assert_eq!(
            relay.handle_datagram(Leg::A, SocketKind::Rtp, phone, &mut [0u8; 3], t0),
            None
        );
    }

    #[test]
    fn a_silent_leg_times_out_once() {
        let t0 = Instant::now();
        let mut relay = core(t0);
        let timeout = RelayConfig::default().media_timeout;
        let phone = addr("203.0.113.5:31000");
        assert_eq!(relay.next_timeout(), Some(t0 + timeout));
        relay
            .handle_datagram(
                Leg::A,
                SocketKind::Rtp,
                phone,
                &mut rtp(1, 1, 0),
                t0 + Duration::from_secs(10),
            )
            .unwrap();
        relay.poll_event();
        relay.handle_timeout(t0 + timeout);
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::LegTimedOut { leg: Leg::B })
        );
        assert_eq!(relay.poll_event(), None);
        assert_eq!(
            relay.next_timeout(),
            Some(t0 + Duration::from_secs(10) + timeout)
        );
        relay.handle_timeout(t0 + timeout * 3);
        assert_eq!(
            relay.poll_event(),
            Some(RelayEvent::LegTimedOut { leg: Leg::A })
        );
        relay.handle_timeout(t0 + timeout * 4);
        assert_eq!(relay.poll_event(), None);
        assert_eq!(relay.next_timeout(), None);
    }
}
