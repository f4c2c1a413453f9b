//! The WebRTC gateway of one call, sans-IO: a browser on one side (ICE-lite,
//! DTLS-SRTP, rtcp-mux, BUNDLE, all done by str0m in RTP mode) and a
//! pbx-node on the other (plain RTP/AVP with PCMU/PCMA and
//! telephone-event). G.711 passes through untouched (browsers speak PCMU
//! and PCMA), so there is no transcoding: RTP payloads are moved between
//! SRTP and RTP, and only the telephone-event payload type is mapped when
//! the two sides numbered it differently.
//!
//! SDP is translated both ways, and the offer/answer state is tracked here:
//!
//! * browser offer → plain offer to the node (the browser's G.711 codecs in
//!   its order, its telephone-event/8000, its direction); the node's answer
//!   → str0m's answer to the browser, built with the one codec the node
//!   chose;
//! * node offer → str0m's offer to the browser (the node's codecs); the
//!   browser's answer → plain answer to the node.
//!
//! The browser's candidates are dropped before str0m sees them: as an
//! ICE-lite agent we answer the browser's checks and latch on their source
//! address, so an mDNS `.local` candidate (or any other) is never needed.

use std::net::SocketAddr;
use std::time::Instant;

use sip::sdp::{AudioCodec, AudioDescription, Direction as SdpDirection};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, FormatParams};
use str0m::media::{Direction, Frequency, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("WebRTC SDP: {0}")]
    BrowserSdp(String),
    #[error("SDP from the pbx-node: {0}")]
    NodeSdp(#[from] sip::sdp::SdpError),
    #[error("the browser offers no audio with PCMU or PCMA")]
    NoG711,
    #[error("WebRTC session: {0}")]
    Rtc(String),
}

/// Whether an SDP body describes WebRTC media (DTLS-SRTP with ICE), as a
/// browser sends it, rather than plain RTP.
pub fn is_webrtc(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    text.lines().any(|line| {
        line.starts_with("m=audio ")
            && line
                .split_whitespace()
                .nth(2)
                .is_some_and(|proto| proto.contains("SAVPF") || proto.contains("DTLS"))
    })
}

/// The browser's SDP without candidate lines, CRLF-terminated (str0m's
/// parser wants CRLF). Remote candidates are of no use to an ICE-lite
/// agent, and Chrome's mDNS names (`<uuid>.local`) are not addresses.
fn without_candidates(body: &[u8]) -> Result<String, GatewayError> {
    let text =
        std::str::from_utf8(body).map_err(|_| GatewayError::BrowserSdp("not UTF-8".into()))?;
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("a=candidate:") || line == "a=end-of-candidates" || line.is_empty() {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    Ok(out)
}

fn to_str0m(direction: SdpDirection) -> Direction {
    match direction {
        SdpDirection::SendRecv => Direction::SendRecv,
        SdpDirection::SendOnly => Direction::SendOnly,
        SdpDirection::RecvOnly => Direction::RecvOnly,
        SdpDirection::Inactive => Direction::Inactive,
    }
}

fn from_str0m(direction: Direction) -> SdpDirection {
    match direction {
        Direction::SendRecv => SdpDirection::SendRecv,
        Direction::SendOnly => SdpDirection::SendOnly,
        Direction::RecvOnly => SdpDirection::RecvOnly,
        Direction::Inactive => SdpDirection::Inactive,
    }
}

/// What the browser's audio m-line says, in plain-RTP terms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BrowserAudio {
    codecs: Vec<AudioCodec>,
    telephone_event: Option<u8>,
    direction: SdpDirection,
}

/// The audio of a browser's SDP (an answer is read with the same parser).
fn browser_audio(sdp: &SdpOffer) -> Result<BrowserAudio, GatewayError> {
    let media = sdp
        .media_lines
        .iter()
        .find(|m| m.typ.to_string() == "audio" && !m.disabled)
        .ok_or(GatewayError::NoG711)?;
    let mut codecs = Vec::new();
    let mut telephone_event = None;
    for params in media.rtp_params() {
        let spec = params.spec();
        match spec.codec {
            Codec::PCMU => codecs.push(AudioCodec::Pcmu),
            Codec::PCMA => codecs.push(AudioCodec::Pcma),
            Codec::Tele if spec.clock_rate == Frequency::EIGHT_KHZ => {
                telephone_event.get_or_insert(*params.pt());
            }
            _ => {}
        }
    }
    codecs.dedup();
    if codecs.is_empty() {
        return Err(GatewayError::NoG711);
    }
    Ok(BrowserAudio {
        codecs,
        telephone_event,
        direction: from_str0m(media.direction()),
    })
}

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// SRTP, STUN or DTLS to the browser.
    ToBrowser {
        destination: SocketAddr,
        data: Vec<u8>,
    },
    /// Plain RTP to the pbx-node.
    ToNode {
        destination: SocketAddr,
        data: Vec<u8>,
    },
}

enum Pending {
    Nothing,
    /// The browser offered; the node has yet to answer.
    BrowserOffer {
        offer: String,
        audio: BrowserAudio,
    },
    /// We offered to the browser on behalf of the node.
    OurOffer(SdpPendingOffer),
}

/// One call's gateway.
pub struct Gateway {
    /// Our ICE-lite host candidate: the public address and port the
    /// browser sends to.
    public: SocketAddr,
    /// Where the node sends RTP to us.
    node_side: SocketAddr,
    /// Where we send the node's RTP (from its SDP).
    node_rtp: Option<SocketAddr>,
    rtc: Option<Rtc>,
    mid: Option<Mid>,
    pending: Pending,
    /// Telephone-event payload types on each side, when negotiated.
    browser_event_pt: Option<u8>,
    node_event_pt: Option<u8>,
    session_id: u64,
    version: u64,
    /// The last body translated each way and its translation: a
    /// retransmitted INVITE, or the 200 repeating a 183's answer, gets the
    /// same translation instead of being taken for a new offer.
    last_inward: Option<(Vec<u8>, Vec<u8>)>,
    last_outward: Option<(Vec<u8>, Vec<u8>)>,
    /// Sequence numbers of what we write toward the browser.
    next_seq: u64,
    timeout: Option<Instant>,
    transmits: Vec<Transmit>,
    /// Packets relayed (browser → node, node → browser), for status and tests.
    pub relayed: [u64; 2],
}

impl Gateway {
    pub fn new(public: SocketAddr, node_side: SocketAddr) -> Gateway {
        Gateway {
            public,
            node_side,
            node_rtp: None,
            rtc: None,
            mid: None,
            pending: Pending::Nothing,
            browser_event_pt: None,
            node_event_pt: None,
            session_id: rand::random::<u32>().into(),
            version: 0,
            last_inward: None,
            last_outward: None,
            next_seq: 1,
            timeout: None,
            transmits: Vec::new(),
            relayed: [0; 2],
        }
    }

    /// An SDP body from the browser, toward the node: the plain-RTP body
    /// the node gets instead.
    pub fn from_browser(&mut self, body: &[u8], now: Instant) -> Result<Vec<u8>, GatewayError> {
        // While we wait for the browser's answer, whatever it sends is that
        // answer, even if it repeats an earlier body.
        if !matches!(self.pending, Pending::OurOffer(_)) {
            if let Some((seen, translated)) = &self.last_inward {
                if seen == body {
                    return Ok(translated.clone());
                }
            }
        }
        let sdp = without_candidates(body)?;
        let translated = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::OurOffer(pending) => self.browser_answer(pending, &sdp, now)?,
            Pending::Nothing | Pending::BrowserOffer { .. } => {
                let offer = SdpOffer::from_sdp_string(&sdp)
                    .map_err(|e| GatewayError::BrowserSdp(e.to_string()))?;
                let audio = browser_audio(&offer)?;
                let plain =
                    self.plain(audio.codecs.clone(), audio.telephone_event, audio.direction);
                self.pending = Pending::BrowserOffer { offer: sdp, audio };
                plain
            }
        };
        self.last_inward = Some((body.to_vec(), translated.clone()));
        Ok(translated)
    }

    /// An SDP body from the node, toward the browser: the WebRTC body the
    /// browser gets instead.
    pub fn from_node(&mut self, body: &[u8], now: Instant) -> Result<Vec<u8>, GatewayError> {
        // While the browser's offer waits, whatever the node sends is the
        // answer to it, even if it repeats an earlier body.
        if !matches!(self.pending, Pending::BrowserOffer { .. }) {
            if let Some((seen, translated)) = &self.last_outward {
                if seen == body {
                    return Ok(translated.clone());
                }
            }
        }
        let stream = sip::sdp::audio_stream(body)?;
        if stream.rtp.port() != 0 && !stream.rtp.ip().is_unspecified() {
            self.node_rtp = Some(stream.rtp);
        }
        let translated = match std::mem::replace(&mut self.pending, Pending::Nothing) {
            Pending::BrowserOffer { offer, audio } => {
                self.node_answer(&offer, &audio, &stream, now)?
            }
            Pending::Nothing | Pending::OurOffer(_) => self.node_offer(&stream, now)?,
        };
        self.last_outward = Some((body.to_vec(), translated.clone()));
        Ok(translated)
    }

    fn plain(
        &mut self,
        codecs: Vec<AudioCodec>,
        telephone_event: Option<u8>,
        direction: SdpDirection,
    ) -> Vec<u8> {
        self.version += 1;
        AudioDescription {
            session_id: self.session_id,
            version: self.version,
            rtp: self.node_side,
            codecs,
            telephone_event,
            direction,
        }
        .to_bytes()
    }

    /// A str0m instance for this call speaking `codecs` and, if given,
    /// telephone-event/8000 as payload type `event_pt`.
    fn new_rtc(
        &self,
        codecs: &[AudioCodec],
        event_pt: Option<u8>,
        now: Instant,
    ) -> Result<Rtc, GatewayError> {
        let mut config = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .clear_codecs();
        let codec_config = config.codec_config();
        codec_config.enable_pcmu(codecs.contains(&AudioCodec::Pcmu), false);
        codec_config.enable_pcma(codecs.contains(&AudioCodec::Pcma), false);
        if let Some(pt) = event_pt {
            codec_config.add_config(
                pt.into(),
                None,
                Codec::Tele,
                Frequency::EIGHT_KHZ,
                None,
                FormatParams::parse_line("0-16"),
            );
        }
        let mut rtc = config.build(now);
        let candidate =
            Candidate::host(self.public, "udp").map_err(|e| GatewayError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(candidate);
        Ok(rtc)
    }

    /// The node answered the browser's offer.
    fn node_answer(
        &mut self,
        offer: &str,
        audio: &BrowserAudio,
        stream: &sip::sdp::AudioStream,
        now: Instant,
    ) -> Result<Vec<u8>, GatewayError> {
        let codec = stream
            .codecs
            .first()
            .copied()
            .filter(|c| audio.codecs.contains(c))
            .ok_or(sip::sdp::SdpError::NoCommonCodec)?;
        self.node_event_pt = stream
            .telephone_event
            .filter(|_| audio.telephone_event.is_some());
        self.browser_event_pt = audio
            .telephone_event
            .filter(|_| self.node_event_pt.is_some());
        let offer = SdpOffer::from_sdp_string(offer)
            .map_err(|e| GatewayError::BrowserSdp(e.to_string()))?;
        if self.rtc.is_none() {
            self.rtc = Some(self.new_rtc(&[codec], self.browser_event_pt, now)?);
        }
        let rtc = self
            .rtc
            .as_mut()
            .ok_or(GatewayError::Rtc("no session".into()))?;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| GatewayError::Rtc(e.to_string()))?;
        self.mid = answer
            .media_lines
            .iter()
            .find(|m| m.typ.to_string() == "audio")
            .map(|m| m.mid());
        self.drain(now);
        Ok(answer.to_sdp_string().into_bytes())
    }

    /// The node offers (a call to the browser, or a re-INVITE).
    fn node_offer(
        &mut self,
        stream: &sip::sdp::AudioStream,
        now: Instant,
    ) -> Result<Vec<u8>, GatewayError> {
        if stream.codecs.is_empty() {
            return Err(sip::sdp::SdpError::NoCommonCodec.into());
        }
        let direction = to_str0m(stream.direction);
        if self.rtc.is_none() {
            self.node_event_pt = stream.telephone_event;
            self.browser_event_pt = stream.telephone_event;
            self.rtc = Some(self.new_rtc(&stream.codecs, stream.telephone_event, now)?);
        }
        let rtc = self
            .rtc
            .as_mut()
            .ok_or(GatewayError::Rtc("no session".into()))?;
        let mut change = rtc.sdp_api();
        match self.mid {
            None => {
                self.mid = Some(change.add_media(MediaKind::Audio, direction, None, None, None))
            }
            Some(mid) => {
                change.set_direction(mid, direction);
                if !change.has_changes() {
                    // A re-offer that changes nothing str0m knows of (the
                    // node moved its media): an offer is still owed.
                    change.ice_restart(true);
                }
            }
        }
        let (offer, pending) = change
            .apply()
            .ok_or(GatewayError::Rtc("no offer to make".into()))?;
        self.pending = Pending::OurOffer(pending);
        self.drain(now);
        Ok(offer.to_sdp_string().into_bytes())
    }

    /// The browser answered our offer.
    fn browser_answer(
        &mut self,
        pending: SdpPendingOffer,
        sdp: &str,
        now: Instant,
    ) -> Result<Vec<u8>, GatewayError> {
        let parse_error = |e: str0m::error::SdpError| GatewayError::BrowserSdp(e.to_string());
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(parse_error)?;
        let audio = browser_audio(&SdpOffer::from_sdp_string(sdp).map_err(parse_error)?)?;
        if audio.telephone_event.is_none() {
            self.node_event_pt = None;
            self.browser_event_pt = None;
        }
        let rtc = self
            .rtc
            .as_mut()
            .ok_or(GatewayError::Rtc("no session".into()))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| GatewayError::Rtc(e.to_string()))?;
        self.drain(now);
        let codec = audio.codecs.first().copied().ok_or(GatewayError::NoG711)?;
        Ok(self.plain(vec![codec], self.node_event_pt, audio.direction))
    }

    /// A datagram on the browser-facing socket.
    pub fn from_browser_socket(&mut self, source: SocketAddr, data: &[u8], now: Instant) {
        let Some(rtc) = self.rtc.as_mut() else {
            return;
        };
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.public, data) else {
            return;
        };
        if let Err(e) = rtc.handle_input(Input::Receive(now, receive)) {
            tracing::debug!(%source, error = %e, "WebRTC datagram refused");
        }
        self.drain(now);
    }

    /// A datagram on the node-facing socket: RTP toward the browser.
    pub fn from_node_socket(&mut self, data: &[u8], now: Instant) {
        if media::rtp::classify(data) != media::rtp::PacketKind::Rtp {
            return;
        }
        let Ok(packet) = media::rtp::RtpPacket::parse(data) else {
            return;
        };
        let (Some(rtc), Some(mid)) = (self.rtc.as_mut(), self.mid) else {
            return;
        };
        if !rtc.is_connected() {
            return;
        }
        let pt = match (self.node_event_pt, self.browser_event_pt) {
            (Some(node), Some(browser)) if packet.payload_type == node => browser,
            _ => packet.payload_type,
        };
        let mut api = rtc.direct_api();
        let Some(stream) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        stream.write_rtp(
            RtpWrite::new(
                pt.into(),
                self.next_seq.into(),
                packet.timestamp,
                now,
                packet.payload.to_vec(),
            )
            .marker(packet.marker),
        );
        self.next_seq += 1;
        self.relayed[1] += 1;
        self.drain(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(rtc) = self.rtc.as_mut() {
            if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
                tracing::debug!(error = %e, "WebRTC timeout");
            }
            self.drain(now);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timeout
    }

    /// Datagrams to send, oldest first.
    pub fn take_transmits(&mut self) -> Vec<Transmit> {
        std::mem::take(&mut self.transmits)
    }

    /// Whether the browser's ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.rtc.as_ref().is_some_and(Rtc::is_connected)
    }

    /// Runs str0m until it waits for time: what it sends is queued, the
    /// browser's RTP goes on to the node as plain RTP.
    fn drain(&mut self, _now: Instant) {
        let Some(rtc) = self.rtc.as_mut() else {
            return;
        };
        loop {
            let output = match rtc.poll_output() {
                Ok(output) => output,
                Err(e) => {
                    tracing::warn!(error = %e, "WebRTC session failed");
                    self.timeout = None;
                    return;
                }
            };
            match output {
                Output::Timeout(at) => {
                    self.timeout = Some(at);
                    return;
                }
                Output::Transmit(t) => self.transmits.push(Transmit::ToBrowser {
                    destination: t.destination,
                    data: t.contents.to_vec(),
                }),
                Output::Event(Event::RtpPacket(packet)) => {
                    let Some(destination) = self.node_rtp else {
                        continue;
                    };
                    let pt = *packet.header.payload_type;
                    let pt = match (self.browser_event_pt, self.node_event_pt) {
                        (Some(browser), Some(node)) if pt == browser => node,
                        _ => pt,
                    };
                    let mut plain = media::rtp::RtpPacket::new(
                        pt,
                        packet.header.sequence_number,
                        packet.header.timestamp,
                        *packet.header.ssrc,
                        &packet.payload,
                    );
                    plain.marker = packet.header.marker;
                    if let Ok(data) = plain.to_vec() {
                        self.relayed[0] += 1;
                        self.transmits.push(Transmit::ToNode { destination, data });
                    }
                }
                Output::Event(Event::IceConnectionStateChange(state)) => {
                    tracing::debug!(?state, "WebRTC ICE");
                    if state == IceConnectionState::Disconnected {
                        tracing::info!("WebRTC browser gone (ICE disconnected)");
                    }
                }
                Output::Event(Event::Connected) => tracing::debug!("WebRTC DTLS-SRTP up"),
                Output::Event(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PUBLIC: &str = "203.0.113.1:40000";
    const NODE_SIDE: &str = "10.0.0.100:40002";
    const NODE_RTP: &str = "10.0.0.3:20000";
    const BROWSER: &str = "198.51.100.7:54321";
    /// Chrome's number for telephone-event/8000; the node's is 101.
    const BROWSER_EVENT_PT: u8 = 126;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A browser as str0m plays one: full ICE (controlling), PCMU, PCMA,
    /// and telephone-event/8000 as Chrome numbers it.
    fn browser(now: Instant) -> Rtc {
        let mut config = Rtc::builder().set_rtp_mode(true).clear_codecs();
        let codecs = config.codec_config();
        codecs.enable_opus(true, false);
        codecs.enable_pcmu(true, false);
        codecs.enable_pcma(true, false);
        codecs.add_config(
            BROWSER_EVENT_PT.into(),
            None,
            Codec::Tele,
            Frequency::EIGHT_KHZ,
            None,
            FormatParams::default(),
        );
        let mut rtc = config.build(now);
        rtc.add_local_candidate(Candidate::host(addr(BROWSER), "udp").unwrap());
        rtc
    }

    /// The node's side of the SDP, as a pbx-node writes it.
    fn node_sdp(codecs: Vec<AudioCodec>, direction: SdpDirection) -> Vec<u8> {
        AudioDescription {
            session_id: 7,
            version: 1,
            rtp: addr(NODE_RTP),
            codecs,
            telephone_event: Some(101),
            direction,
        }
        .to_bytes()
    }

    /// What Chrome adds when it hides its host address: an mDNS name.
    fn with_mdns_candidate(sdp: &str) -> String {
        sdp.replacen(
            "a=mid:",
            "a=candidate:1 1 udp 2122260223 6b3c8f0e-1b2a-4c9e-9f7d-2a4c1e5b7d90.local 54321 typ host generation 0\r\na=mid:",
            1,
        )
    }

    /// Delivers datagrams both ways, and time, until `done` says so;
    /// returns what went to the node and the browser's events.
    fn run(
        gateway: &mut Gateway,
        browser: &mut Rtc,
        now: &mut Instant,
        mut act: impl FnMut(&mut Gateway, &mut Rtc, Instant),
        done: impl Fn(&Rtc, &[Transmit], &[Event]) -> bool,
    ) -> (Vec<Transmit>, Vec<Event>) {
        let mut sent_to_node = Vec::new();
        let mut browser_events = Vec::new();
        for _ in 0..2000 {
            act(gateway, browser, *now);
            let mut to_browser = std::collections::VecDeque::new();
            loop {
                // The browser's output after each datagram it is given:
                // str0m holds one received RTP packet at a time.
                loop {
                    match browser.poll_output().unwrap() {
                        Output::Timeout(_) => break,
                        Output::Transmit(t) => {
                            assert_eq!(
                                t.destination,
                                addr(PUBLIC),
                                "the browser sends to our candidate"
                            );
                            gateway.from_browser_socket(addr(BROWSER), &t.contents, *now);
                        }
                        Output::Event(e) => browser_events.push(e),
                    }
                }
                for transmit in gateway.take_transmits() {
                    match transmit {
                        Transmit::ToBrowser { destination, data } => {
                            assert_eq!(destination, addr(BROWSER), "latched on the source");
                            to_browser.push_back(data);
                        }
                        to_node => sent_to_node.push(to_node),
                    }
                }
                let Some(data) = to_browser.pop_front() else {
                    break;
                };
                let receive =
                    Receive::new(Protocol::Udp, addr(PUBLIC), addr(BROWSER), &data).unwrap();
                browser.handle_input(Input::Receive(*now, receive)).unwrap();
            }
            if done(browser, &sent_to_node, &browser_events) {
                return (sent_to_node, browser_events);
            }
            *now += Duration::from_millis(5);
            browser.handle_input(Input::Timeout(*now)).unwrap();
            gateway.handle_timeout(*now);
        }
        panic!("never done; to the node: {sent_to_node:?}");
    }

    fn rtp_to_node(sent: &[Transmit]) -> Vec<(u8, Vec<u8>)> {
        sent.iter()
            .filter_map(|t| match t {
                Transmit::ToNode { destination, data } => {
                    assert_eq!(*destination, addr(NODE_RTP));
                    let packet = media::rtp::RtpPacket::parse(data).unwrap();
                    Some((packet.payload_type, packet.payload.to_vec()))
                }
                Transmit::ToBrowser { .. } => None,
            })
            .collect()
    }

    fn rtp_at_browser(events: &[Event]) -> Vec<(u8, Vec<u8>)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::RtpPacket(p) => Some((*p.header.payload_type, p.payload.to_vec())),
                _ => None,
            })
            .collect()
    }

    /// Sends `packets` (payload type, payload) from the browser, 20 ms apart.
    fn browser_sends(
        rtc: &mut Rtc,
        mid: Mid,
        packets: &[(u8, &[u8])],
        now: Instant,
        sent: &mut usize,
    ) {
        if *sent >= packets.len() || !rtc.is_connected() {
            return;
        }
        let (pt, payload) = packets[*sent];
        let mut api = rtc.direct_api();
        let stream = api.stream_tx_by_mid(mid, None).unwrap();
        let seq = *sent as u64 + 1;
        stream.write_rtp(RtpWrite::new(
            pt.into(),
            seq.into(),
            160 * seq as u32,
            now,
            payload.to_vec(),
        ));
        *sent += 1;
    }

    fn plain_rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        media::rtp::RtpPacket::new(pt, seq, 160 * u32::from(seq), 0x1234, payload)
            .to_vec()
            .unwrap()
    }

    #[test]
    fn webrtc_sdp_is_told_from_plain() {
        assert!(!is_webrtc(&node_sdp(
            vec![AudioCodec::Pcmu],
            SdpDirection::SendRecv
        )));
        let now = Instant::now();
        let mut rtc = browser(now);
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, _) = change.apply().unwrap();
        assert!(is_webrtc(offer.to_sdp_string().as_bytes()));
        assert!(!is_webrtc(b"\xff\xfe"));
    }

    #[test]
    fn a_browser_call_reaches_the_node_as_plain_rtp_with_dtmf_both_ways() {
        let mut now = Instant::now();
        let mut gateway = Gateway::new(addr(PUBLIC), addr(NODE_SIDE));
        let mut browser = browser(now);
        let mut change = browser.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let offer = with_mdns_candidate(&offer.to_sdp_string());
        assert!(offer.contains(".local 54321 typ host"));

        // The node is offered plain RTP: the browser's G.711 and events.
        let plain = gateway.from_browser(offer.as_bytes(), now).unwrap();
        assert_eq!(
            gateway.from_browser(offer.as_bytes(), now).unwrap(),
            plain,
            "a retransmission"
        );
        let stream = sip::sdp::audio_stream(&plain).unwrap();
        assert_eq!(stream.rtp, addr(NODE_SIDE));
        assert_eq!(stream.codecs, [AudioCodec::Pcmu, AudioCodec::Pcma]);
        assert_eq!(stream.telephone_event, Some(BROWSER_EVENT_PT));
        assert_eq!(stream.direction, SdpDirection::SendRecv);
        let text = String::from_utf8(plain).unwrap();
        assert!(text.contains("RTP/AVP"), "{text}");
        for webrtc in ["SAVPF", "fingerprint", "ice-", "candidate", "opus"] {
            assert!(!text.contains(webrtc), "{webrtc} in {text}");
        }

        // The node answers PCMA with its own event number: the browser gets
        // an ICE-lite DTLS-SRTP answer with PCMA alone.
        let node_answer = node_sdp(vec![AudioCodec::Pcma], SdpDirection::SendRecv);
        let answer = String::from_utf8(gateway.from_node(&node_answer, now).unwrap()).unwrap();
        assert_eq!(
            gateway.from_node(&node_answer, now).unwrap(),
            answer.as_bytes(),
            "the 200 after a 183"
        );
        for needed in [
            "a=ice-lite",
            "a=fingerprint:sha-256",
            "UDP/TLS/RTP/SAVPF",
            "a=rtcp-mux",
            "a=group:BUNDLE",
            "a=setup:",
            "PCMA/8000",
            "203.0.113.1 40000 typ host",
        ] {
            assert!(answer.contains(needed), "{needed} missing in {answer}");
        }
        assert!(
            !answer.contains("PCMU") && !answer.contains("opus"),
            "{answer}"
        );
        browser
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();

        // ICE, DTLS, then media both ways with DTMF renumbered.
        let from_browser: &[(u8, &[u8])] = &[
            (8, b"alaw-1"),
            (BROWSER_EVENT_PT, &[5, 0x0a, 0, 160]),
            (8, b"alaw-2"),
        ];
        let mut sent = 0;
        let (to_node, _) = run(
            &mut gateway,
            &mut browser,
            &mut now,
            |_, rtc, now| browser_sends(rtc, mid, from_browser, now, &mut sent),
            |_, to_node, _| rtp_to_node(to_node).len() == 3,
        );
        assert!(gateway.is_connected());
        assert_eq!(
            rtp_to_node(&to_node),
            [
                (8, b"alaw-1".to_vec()),
                (101, vec![5, 0x0a, 0, 160]),
                (8, b"alaw-2".to_vec())
            ]
        );
        let from_node = [
            plain_rtp(8, 1, b"node-1"),
            plain_rtp(101, 2, &[9, 0x8a, 1, 64]),
            plain_rtp(8, 3, b"node-2"),
        ];
        let mut next = 0;
        let (_, events) = run(
            &mut gateway,
            &mut browser,
            &mut now,
            |gateway, _, now| {
                if let Some(packet) = from_node.get(next) {
                    gateway.from_node_socket(packet, now);
                    next += 1;
                }
            },
            |_, _, events| rtp_at_browser(events).len() == 3,
        );
        assert_eq!(
            rtp_at_browser(&events),
            [
                (8, b"node-1".to_vec()),
                (BROWSER_EVENT_PT, vec![9, 0x8a, 1, 64]),
                (8, b"node-2".to_vec())
            ]
        );
        assert_eq!(gateway.relayed, [3, 3]);
    }

    #[test]
    fn a_call_to_the_browser_is_offered_as_webrtc_and_answered_as_plain_rtp() {
        let mut now = Instant::now();
        let mut gateway = Gateway::new(addr(PUBLIC), addr(NODE_SIDE));
        let mut browser = browser(now);
        let node_offer = node_sdp(
            vec![AudioCodec::Pcmu, AudioCodec::Pcma],
            SdpDirection::SendRecv,
        );
        let offer = String::from_utf8(gateway.from_node(&node_offer, now).unwrap()).unwrap();
        for needed in [
            "a=ice-lite",
            "a=fingerprint:sha-256",
            "UDP/TLS/RTP/SAVPF",
            "a=rtcp-mux",
            "a=group:BUNDLE",
            "PCMU/8000",
            "PCMA/8000",
            "telephone-event/8000",
        ] {
            assert!(offer.contains(needed), "{needed} missing in {offer}");
        }
        let answer = browser
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&with_mdns_candidate(&offer)).unwrap())
            .unwrap()
            .to_sdp_string();
        let plain = gateway
            .from_browser(with_mdns_candidate(&answer).as_bytes(), now)
            .unwrap();
        let stream = sip::sdp::audio_stream(&plain).unwrap();
        assert_eq!(stream.rtp, addr(NODE_SIDE));
        assert_eq!(stream.codecs, [AudioCodec::Pcmu]);
        assert_eq!(stream.telephone_event, Some(101), "the node's own number");

        let (to_node, _) = run(
            &mut gateway,
            &mut browser,
            &mut now,
            |_, _, _| {},
            |rtc, _, _| rtc.is_connected(),
        );
        assert!(rtp_to_node(&to_node).is_empty());
        assert!(gateway.is_connected());

        // The node puts the browser on hold: a new offer, answered.
        let hold = node_sdp(vec![AudioCodec::Pcmu], SdpDirection::SendOnly);
        let offer = String::from_utf8(gateway.from_node(&hold, now).unwrap()).unwrap();
        assert!(offer.contains("a=sendonly"), "{offer}");
        let answer = browser
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer).unwrap())
            .unwrap()
            .to_sdp_string();
        let plain = gateway.from_browser(answer.as_bytes(), now).unwrap();
        assert_eq!(
            sip::sdp::audio_stream(&plain).unwrap().direction,
            SdpDirection::RecvOnly
        );
    }

    #[test]
    fn unusable_sdp_is_an_error_not_a_panic() {
        let now = Instant::now();
        let mut gateway = Gateway::new(addr(PUBLIC), addr(NODE_SIDE));
        assert!(gateway.from_browser(b"v=0\r\nnot sdp", now).is_err());
        assert!(gateway.from_browser(&[0xff, 0xfe], now).is_err());
        let mut rtc = browser(now);
        let mut change = rtc.sdp_api();
        change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, _) = change.apply().unwrap();
        let opus_only = offer
            .to_sdp_string()
            .lines()
            .filter(|l| !l.contains("PCM"))
            .map(|l| l.replace(" 0 8", "").replace(" 8 0", ""))
            .collect::<Vec<_>>()
            .join("\r\n");
        assert_eq!(
            gateway.from_browser(format!("{opus_only}\r\n").as_bytes(), now),
            Err(GatewayError::NoG711)
        );
        assert!(gateway.from_node(b"garbage", now).is_err());
        // Datagrams before any SDP, or not RTP at all, are ignored.
        gateway.from_browser_socket(addr(BROWSER), b"junk", now);
        gateway.from_node_socket(b"junk", now);
        assert!(gateway.take_transmits().is_empty());
    }
}
