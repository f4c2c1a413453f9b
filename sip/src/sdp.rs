//! SDP offer/answer for audio (RFC 3264) on the webrtc-rs `sdp` crate's
//! parser: what a party offers (address, port, codecs, telephone-event,
//! direction), the answer we give with PCMU/PCMA and telephone-event, and
//! the offers we make ourselves (anchored media, music on hold).

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};

use sdp::description::common::{Address, Attribute, ConnectionInformation};
use sdp::description::media::{MediaName, RangedPort};
use sdp::description::session::{Origin, TimeDescription, Timing};
use sdp::{MediaDescription, SessionDescription};

/// The audio codecs this system speaks (no transcoding: G.711 only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
}

impl AudioCodec {
    pub fn payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
        }
    }

    fn encoding_name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
        }
    }

    /// The codec a static payload type or an rtpmap name stands for.
    fn recognise(payload_type: u8, rtpmap: Option<&str>) -> Option<AudioCodec> {
        let name = match rtpmap {
            Some(map) => map
                .split('/')
                .next()
                .unwrap_or_default()
                .to_ascii_uppercase(),
            None => match payload_type {
                0 => "PCMU".into(),
                8 => "PCMA".into(),
                _ => return None,
            },
        };
        match name.as_str() {
            "PCMU" => Some(AudioCodec::Pcmu),
            "PCMA" => Some(AudioCodec::Pcma),
            _ => None,
        }
    }
}

/// RFC 3264 §6.1 media direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// What the answerer says to this offered direction.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// Whether the party offering this is putting the other on hold.
    pub fn is_hold(self) -> bool {
        matches!(self, Direction::SendOnly | Direction::Inactive)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP does not parse: {0}")]
    Syntax(String),
    #[error("SDP has no audio stream")]
    NoAudio,
    #[error("SDP audio stream has no usable address")]
    NoAddress,
    #[error("no common codec: we take PCMU and PCMA")]
    NoCommonCodec,
}

/// The audio stream of a session description, as its author described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioStream {
    /// Where the author receives RTP (`c=` and `m=` port); port 0 = rejected.
    pub rtp: SocketAddr,
    /// The codecs in the author's order of preference.
    pub codecs: Vec<AudioCodec>,
    /// The telephone-event payload type (RFC 4733), if offered.
    pub telephone_event: Option<u8>,
    pub direction: Direction,
    pub rtcp_mux: bool,
}

/// What an answer settles on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: AudioCodec,
    pub telephone_event: Option<u8>,
    /// The direction of the answer.
    pub direction: Direction,
}

/// Our side of a stream: where we receive, and what we say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAudio {
    pub rtp: SocketAddr,
    pub codecs: &'static [AudioCodec],
    pub telephone_event: Option<u8>,
    pub direction: Direction,
}

/// Both G.711 laws, µ-law first (what North American and most SIP phones
/// prefer; A-law phones list PCMA first and an answer follows the offer).
pub const G711: &[AudioCodec] = &[AudioCodec::Pcmu, AudioCodec::Pcma];
/// The telephone-event payload type we offer.
pub const TELEPHONE_EVENT_PT: u8 = 101;

fn text_of(body: &[u8]) -> Result<&str, SdpError> {
    std::str::from_utf8(body).map_err(|e| SdpError::Syntax(e.to_string()))
}

fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    // The parser wants CRLF or LF line ends and a final line end.
    let text: Cow<'_, str> = if text.ends_with('\n') {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(format!("{text}\r\n"))
    };
    SessionDescription::unmarshal(&mut Cursor::new(text.as_bytes()))
        .map_err(|e| SdpError::Syntax(e.to_string()))
}

fn connection_ip(connection: Option<&ConnectionInformation>) -> Option<IpAddr> {
    let address = connection?.address.as_ref()?;
    // A multicast address may carry /ttl; unicast ones never do.
    address.address.split('/').next()?.parse().ok()
}

fn direction_of(attributes: &[Attribute]) -> Option<Direction> {
    attributes.iter().find_map(|a| match a.key.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

/// The first audio stream of an SDP body.
pub fn audio_stream(body: &[u8]) -> Result<AudioStream, SdpError> {
    audio_stream_of(&parse(text_of(body)?)?)
}

fn audio_stream_of(session: &SessionDescription) -> Result<AudioStream, SdpError> {
    let media = session
        .media_descriptions
        .iter()
        .find(|m| m.media_name.media == "audio")
        .ok_or(SdpError::NoAudio)?;
    let ip = connection_ip(media.connection_information.as_ref())
        .or_else(|| connection_ip(session.connection_information.as_ref()))
        .ok_or(SdpError::NoAddress)?;
    let port = u16::try_from(media.media_name.port.value).map_err(|_| SdpError::NoAddress)?;
    let rtpmap = |pt: u8| {
        media.attributes.iter().find_map(|a| {
            let value = a.value.as_deref().filter(|_| a.key == "rtpmap")?;
            let (number, map) = value.split_once(' ')?;
            (number.trim().parse::<u8>().ok()? == pt).then(|| map.trim())
        })
    };
    let mut codecs = Vec::new();
    let mut telephone_event = None;
    for format in &media.media_name.formats {
        let Ok(pt) = format.parse::<u8>() else {
            continue;
        };
        let map = rtpmap(pt);
        if map.is_some_and(|m| m.to_ascii_lowercase().starts_with("telephone-event/8000")) {
            telephone_event.get_or_insert(pt);
        } else if let Some(codec) = AudioCodec::recognise(pt, map) {
            if !codecs.contains(&codec) {
                codecs.push(codec);
            }
        }
    }
    // RFC 3264 §5.1: a connection address of 0.0.0.0 is the old way of
    // saying hold.
    let direction = if ip.is_unspecified() {
        Direction::Inactive
    } else {
        direction_of(&media.attributes)
            .or_else(|| direction_of(&session.attributes))
            .unwrap_or(Direction::SendRecv)
    };
    Ok(AudioStream {
        rtp: SocketAddr::new(ip, port),
        codecs,
        telephone_event,
        direction,
        rtcp_mux: media.has_attribute("rtcp-mux"),
    })
}

/// Our answer to an offered audio stream: the offerer's first codec we
/// take, telephone-event with the offerer's payload type, the mirrored
/// direction. `NoCommonCodec` means the request gets 488.
pub fn negotiate(offer: &AudioStream, ours: &[AudioCodec]) -> Result<Negotiated, SdpError> {
    let codec = offer
        .codecs
        .iter()
        .copied()
        .find(|c| ours.contains(c))
        .ok_or(SdpError::NoCommonCodec)?;
    Ok(Negotiated {
        codec,
        telephone_event: offer.telephone_event,
        direction: offer.direction.answer(),
    })
}

fn connection_to(ip: IpAddr) -> ConnectionInformation {
    ConnectionInformation {
        network_type: "IN".into(),
        address_type: address_type(ip).into(),
        address: Some(Address {
            address: ip.to_string(),
            ttl: None,
            range: None,
        }),
    }
}

/// ICE and RTCP-port attributes describe the author's own transport
/// addresses; once media is anchored they would point past the anchor.
const TRANSPORT_ATTRIBUTES: &[&str] = &[
    "rtcp",
    "candidate",
    "remote-candidates",
    "end-of-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
];

/// Re-addresses a session description to media anchored at `ours`: its
/// first audio stream is received at `ours` (address and port; our RTCP is
/// the port above), the origin and every stream's `c=` name our address
/// (so the author's is not shown past the anchor), ICE and `a=rtcp` lines
/// go, everything else (codecs, telephone-event, direction, rtcp-mux) is
/// kept as written, and other streams are declined with port 0, since only
/// audio is relayed. An address of 0.0.0.0 (old-style hold) and a port of
/// 0 (a declined stream) keep their meaning. Returns the new body and the
/// author's own audio stream, where the anchor sends to.
pub fn anchor_audio(body: &[u8], ours: SocketAddr) -> Result<(Vec<u8>, AudioStream), SdpError> {
    // Parsed to check it and to read the author's stream; rewritten line
    // by line, since re-serialising the parsed description cost more than
    // parsing it and changed what we do not own.
    let text = text_of(body)?;
    let theirs = audio_stream_of(&parse(text)?)?;
    let ip = if theirs.rtp.ip().is_unspecified() {
        theirs.rtp.ip()
    } else {
        ours.ip()
    };
    let mut anchored = String::with_capacity(body.len() + 32);
    let mut audio_seen = false;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (kind, value) = line.split_at_checked(2).unwrap_or((line, ""));
        // Written to a String: cannot fail.
        let _ = match kind {
            "o=" => match value.rsplitn(3, ' ').nth(2) {
                // Username, session id and version, network type stay.
                Some(kept) => write!(
                    anchored,
                    "o={kept} {} {}",
                    address_type(ours.ip()),
                    ours.ip()
                ),
                None => anchored.write_str(line),
            },
            // Every stream's (a declined one's address means nothing).
            "c=" => write!(anchored, "c=IN {} {ip}", address_type(ip)),
            "m=" => {
                // Media, port (replaced), and the rest as written.
                let mut fields = value.splitn(3, ' ');
                let media = fields.next().unwrap_or_default();
                let rest = fields.nth(1).unwrap_or_default();
                let first_audio = media == "audio" && !audio_seen;
                audio_seen |= first_audio;
                match (first_audio, theirs.rtp.port()) {
                    (true, 0) => anchored.write_str(line),
                    (true, _) => write!(anchored, "m={media} {} {rest}", ours.port()),
                    (false, _) => write!(anchored, "m={media} 0 {rest}"),
                }
            }
            "a=" if TRANSPORT_ATTRIBUTES.contains(&value.split(':').next().unwrap_or_default()) => {
                continue
            }
            _ => anchored.write_str(line),
        };
        anchored.push_str("\r\n");
    }
    Ok((anchored.into_bytes(), theirs))
}

fn address_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// A session description of one audio stream.
#[derive(Debug, Clone)]
pub struct AudioDescription {
    pub session_id: u64,
    /// Bumped on every change (RFC 3264 §8).
    pub version: u64,
    pub rtp: SocketAddr,
    pub codecs: Vec<AudioCodec>,
    pub telephone_event: Option<u8>,
    pub direction: Direction,
}

impl AudioDescription {
    /// An answer built on a negotiation.
    pub fn answer(session_id: u64, version: u64, rtp: SocketAddr, negotiated: Negotiated) -> Self {
        AudioDescription {
            session_id,
            version,
            rtp,
            codecs: vec![negotiated.codec],
            telephone_event: negotiated.telephone_event,
            direction: negotiated.direction,
        }
    }

    /// An offer of everything in `local`.
    pub fn offer(session_id: u64, version: u64, local: LocalAudio) -> Self {
        AudioDescription {
            session_id,
            version,
            rtp: local.rtp,
            codecs: local.codecs.to_vec(),
            telephone_event: local.telephone_event,
            direction: local.direction,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for AudioDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address_type = if self.rtp.is_ipv4() { "IP4" } else { "IP6" };
        let connection = connection_to(self.rtp.ip());
        let mut formats: Vec<String> = self
            .codecs
            .iter()
            .map(|c| c.payload_type().to_string())
            .collect();
        let mut attributes: Vec<Attribute> = self
            .codecs
            .iter()
            .map(|c| Attribute {
                key: "rtpmap".into(),
                value: Some(format!("{} {}/8000", c.payload_type(), c.encoding_name())),
            })
            .collect();
        if let Some(pt) = self.telephone_event {
            formats.push(pt.to_string());
            attributes.push(Attribute {
                key: "rtpmap".into(),
                value: Some(format!("{pt} telephone-event/8000")),
            });
            attributes.push(Attribute {
                key: "fmtp".into(),
                value: Some(format!("{pt} 0-16")),
            });
        }
        attributes.push(Attribute {
            key: "ptime".into(),
            value: Some("20".into()),
        });
        attributes.push(Attribute {
            key: self.direction.attribute().into(),
            value: None,
        });
        let media = MediaDescription {
            media_name: MediaName {
                media: "audio".into(),
                port: RangedPort {
                    value: isize::try_from(self.rtp.port()).unwrap_or_default(),
                    range: None,
                },
                protos: vec!["RTP".into(), "AVP".into()],
                formats,
            },
            attributes,
            ..MediaDescription::default()
        };
        let session = SessionDescription {
            version: 0,
            origin: Origin {
                username: "-".into(),
                session_id: self.session_id,
                session_version: self.version,
                network_type: "IN".into(),
                address_type: address_type.into(),
                unicast_address: self.rtp.ip().to_string(),
            },
            session_name: "pbx".into(),
            connection_information: Some(connection),
            time_descriptions: vec![TimeDescription {
                timing: Timing {
                    start_time: 0,
                    stop_time: 0,
                },
                repeat_times: Vec::new(),
            }],
            media_descriptions: vec![media],
            ..SessionDescription::default()
        };
        f.write_str(&session.marshal())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const BARESIP: &str =
        "v=0\r\no=- 492239846 816978946 IN IP4 192.0.2.2\r\ns=-\r\nc=IN IP4 192.0.2.2\r\n\
        t=0 0\r\nm=audio 36706 RTP/AVP 8 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\na=ptime:20\r\n";

    #[test]
    fn reads_address_codecs_in_order_telephone_event_and_direction() {
        let stream = audio_stream(BARESIP.as_bytes()).unwrap();
        assert_eq!(stream.rtp, "192.0.2.2:36706".parse().unwrap());
        assert_eq!(stream.codecs, [AudioCodec::Pcma, AudioCodec::Pcmu]);
        assert_eq!(stream.telephone_event, Some(101));
        assert_eq!(stream.direction, Direction::SendRecv);
        let negotiated = negotiate(&stream, G711).unwrap();
        assert_eq!(
            negotiated.codec,
            AudioCodec::Pcma,
            "the offerer's preference"
        );
    }

    #[test]
    fn hold_by_attribute_or_by_zero_address() {
        let held = BARESIP.replace("a=sendrecv", "a=sendonly");
        let stream = audio_stream(held.as_bytes()).unwrap();
        assert!(stream.direction.is_hold());
        assert_eq!(
            negotiate(&stream, G711).unwrap().direction,
            Direction::RecvOnly
        );
        let old_style = BARESIP.replace("c=IN IP4 192.0.2.2", "c=IN IP4 0.0.0.0");
        assert_eq!(
            audio_stream(old_style.as_bytes()).unwrap().direction,
            Direction::Inactive
        );
    }

    #[test]
    fn no_common_codec_and_no_audio_are_errors() {
        let g729 = BARESIP
            .replace("RTP/AVP 8 0 101", "RTP/AVP 18 101")
            .replace(
                "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n",
                "a=rtpmap:18 G729/8000\r\n",
            );
        let stream = audio_stream(g729.as_bytes()).unwrap();
        assert_eq!(negotiate(&stream, G711), Err(SdpError::NoCommonCodec));
        let video = BARESIP.replace("m=audio", "m=video");
        assert_eq!(audio_stream(video.as_bytes()), Err(SdpError::NoAudio));
        assert!(matches!(audio_stream(b"not sdp"), Err(SdpError::Syntax(_))));
    }

    #[test]
    fn anchoring_moves_audio_to_us_and_declines_video() {
        let offer = format!(
            "{}a=X-note:kept  as written\r\na=rtcp:36707 IN IP4 192.0.2.2\r\na=candidate:1 1 UDP 1 192.0.2.2 36706 typ host\r\n\
             m=video 36708 RTP/AVP 96\r\na=rtpmap:96 VP8/90000\r\n",
            BARESIP.replace("a=fmtp:101 0-15\r\n", "a=fmtp:101 0-15\r\na=rtcp-mux\r\n")
        );
        let ours: SocketAddr = "198.51.100.7:20000".parse().unwrap();
        let (anchored, theirs) = anchor_audio(offer.as_bytes(), ours).unwrap();
        assert_eq!(theirs.rtp, "192.0.2.2:36706".parse().unwrap());
        let text = String::from_utf8(anchored.clone()).unwrap();
        let stream = audio_stream(&anchored).unwrap();
        assert_eq!(stream.rtp, ours);
        assert_eq!(stream.codecs, theirs.codecs);
        assert_eq!(stream.telephone_event, Some(101));
        assert!(stream.rtcp_mux);
        assert!(!text.contains("192.0.2.2 36706"), "no candidate: {text}");
        assert!(!text.contains("a=rtcp:"), "no RTCP port: {text}");
        assert!(text.contains("m=video 0 "), "video declined: {text}");
        assert!(
            !text.contains("192.0.2.2"),
            "no trace of the author: {text}"
        );
        assert!(
            text.contains("\r\no=- 492239846 816978946 IN IP4 198.51.100.7\r\n"),
            "our origin: {text}"
        );
        assert!(
            text.contains("\r\na=X-note:kept  as written\r\n"),
            "what we do not own passes as written: {text}"
        );

        // Old-style hold stays hold, a declined stream stays declined.
        let held = BARESIP.replace("c=IN IP4 192.0.2.2", "c=IN IP4 0.0.0.0");
        let (anchored, _) = anchor_audio(held.as_bytes(), ours).unwrap();
        assert_eq!(
            audio_stream(&anchored).unwrap().direction,
            Direction::Inactive
        );
        let declined = BARESIP.replace("m=audio 36706", "m=audio 0");
        let (anchored, _) = anchor_audio(declined.as_bytes(), ours).unwrap();
        assert_eq!(audio_stream(&anchored).unwrap().rtp.port(), 0);
        assert!(anchor_audio(b"not sdp", ours).is_err());
    }

    #[test]
    fn our_description_parses_back() {
        let ours = AudioDescription::offer(
            7,
            1,
            LocalAudio {
                rtp: "10.0.0.5:30000".parse().unwrap(),
                codecs: G711,
                telephone_event: Some(TELEPHONE_EVENT_PT),
                direction: Direction::SendOnly,
            },
        );
        let back = audio_stream(&ours.to_bytes()).unwrap();
        assert_eq!(back.rtp, "10.0.0.5:30000".parse().unwrap());
        assert_eq!(back.codecs, G711);
        assert_eq!(back.telephone_event, Some(101));
        assert_eq!(back.direction, Direction::SendOnly);
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = audio_stream(&body);
        }

        #[test]
        fn mangled_sdp_never_panics(cut in 0usize..200, junk in "[ -~\r\n]{0,40}") {
            let mut text = BARESIP.to_string();
            text.insert_str(cut.min(text.len()), &junk);
            let _ = audio_stream(text.as_bytes());
        }
    }
}
