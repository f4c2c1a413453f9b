//! SDP offer/answer for audio (RFC 3264): what a party offers (address,
//! port, codecs, telephone-event, direction), the answer we give with
//! PCMU/PCMA and telephone-event, and the offers we make ourselves
//! (anchored media, music on hold).
//!
//! Descriptions are read by a small borrowing reader of the RFC 4566
//! grammar rather than the webrtc-rs `sdp` crate: the SBC re-addresses
//! every offer and answer, and with the crate's reader (a `String` per
//! field, a `BufRead` per line) that took 3.5 µs per body; now reading
//! takes 0.4 µs and re-addressing 0.9.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use crate::text::{fields, rsplit_at_byte, split_at_byte};

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
        let Some(map) = rtpmap else {
            return match payload_type {
                0 => Some(AudioCodec::Pcmu),
                8 => Some(AudioCodec::Pcma),
                _ => None,
            };
        };
        let name = map.split('/').next().unwrap_or_default();
        G711.iter()
            .copied()
            .find(|codec| name.eq_ignore_ascii_case(codec.encoding_name()))
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

fn syntax(what: &str, line: &str) -> SdpError {
    SdpError::Syntax(format!("{what}: {line:?}"))
}

/// The `<type>=<value>` lines of a description, CRLF or LF ended, blank
/// lines skipped. A line that is not `<letter>=` comes out with type 0.
fn lines(text: &str) -> impl Iterator<Item = (u8, &str)> {
    fields(text, b'\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .filter(|line| !line.is_empty())
        .map(|line| match line.as_bytes() {
            [kind @ b'a'..=b'z', b'=', ..] => (*kind, &line[2..]),
            _ => (0, line),
        })
}

/// A session description as offer/answer reads it, borrowing the text.
#[derive(Debug, Default)]
struct Description<'a> {
    /// The session-level `c=` value.
    connection: Option<&'a str>,
    attributes: Attributes<'a>,
    media: Vec<MediaSection<'a>>,
}

#[derive(Debug)]
struct MediaSection<'a> {
    media: &'a str,
    port: u16,
    /// The payload types (or other formats), in the author's order.
    formats: &'a str,
    connection: Option<&'a str>,
    attributes: Attributes<'a>,
}

/// The `a=` lines of one level that offer/answer reads; the rest pass.
#[derive(Debug, Default)]
struct Attributes<'a> {
    /// `a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]`.
    rtpmaps: Vec<(u8, &'a str)>,
    /// The first direction attribute.
    direction: Option<Direction>,
    rtcp_mux: bool,
}

impl<'a> Attributes<'a> {
    fn note(&mut self, attribute: &'a str) {
        let direction = match split_at_byte(attribute, b':') {
            Some(("rtpmap", map)) => {
                let entry = split_at_byte(map, b' ')
                    .and_then(|(pt, encoding)| Some((pt.trim().parse().ok()?, encoding.trim())));
                self.rtpmaps.extend(entry);
                return;
            }
            Some(_) => return,
            None => match attribute {
                "sendrecv" => Direction::SendRecv,
                "sendonly" => Direction::SendOnly,
                "recvonly" => Direction::RecvOnly,
                "inactive" => Direction::Inactive,
                "rtcp-mux" => {
                    self.rtcp_mux = true;
                    return;
                }
                _ => return,
            },
        };
        self.direction.get_or_insert(direction);
    }

    fn rtpmap(&self, payload_type: u8) -> Option<&'a str> {
        let (_, encoding) = self.rtpmaps.iter().find(|(pt, _)| *pt == payload_type)?;
        Some(encoding)
    }
}

/// Reads a description, checking its grammar (RFC 4566 §5): `v=0` first,
/// then the origin and the session name, a timing before the first
/// stream, only the line types each level may have, and well-formed
/// `o=`, `c=` and `m=` lines. Lines we do not interpret (bandwidth, keys,
/// attributes) are taken as written.
fn parse(text: &str) -> Result<Description<'_>, SdpError> {
    let mut lines = lines(text);
    match lines.next() {
        Some((b'v', "0")) => {}
        Some((_, line)) => return Err(syntax("not SDP version 0", line)),
        None => return Err(SdpError::Syntax("empty".into())),
    }
    match lines.next() {
        Some((b'o', origin)) => check_origin(origin)?,
        Some((_, line)) => return Err(syntax("expected the origin", line)),
        None => return Err(SdpError::Syntax("no origin".into())),
    }
    match lines.next() {
        Some((b's', _)) => {}
        Some((_, line)) => return Err(syntax("expected the session name", line)),
        None => return Err(SdpError::Syntax("no session name".into())),
    }
    let mut description = Description::default();
    let mut timed = false;
    for (kind, value) in lines {
        match (kind, description.media.last_mut()) {
            (b'm', _) if !timed => return Err(syntax("a stream before any t=", value)),
            (b'm', _) => description.media.push(media_section(value)?),
            (b'c', None) => description.connection = Some(check_connection(value)?),
            (b'a', None) => description.attributes.note(value),
            (b't', None) => timed = true,
            (b'i' | b'u' | b'e' | b'p' | b'b' | b'r' | b'z' | b'k', None) => {}
            (b'c', Some(media)) => media.connection = Some(check_connection(value)?),
            (b'a', Some(media)) => media.attributes.note(value),
            (b'i' | b'b' | b'k', Some(_)) => {}
            (0, _) => return Err(syntax("not a <type>=<value> line", value)),
            (_, level) => {
                let level = if level.is_some() { "stream" } else { "session" };
                return Err(SdpError::Syntax(format!(
                    "no {}= line at {level} level",
                    char::from(kind)
                )));
            }
        }
    }
    if !timed {
        return Err(SdpError::Syntax("no t= line".into()));
    }
    Ok(description)
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.
fn check_origin(origin: &str) -> Result<(), SdpError> {
    let mut fields = fields(origin, b' ').skip(1);
    let (Some(id), Some(version), Some(_), Some(_), Some(address), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(syntax("malformed o=", origin));
    };
    if is_digits(id) && is_digits(version) && !address.is_empty() {
        Ok(())
    } else {
        Err(syntax("malformed o=", origin))
    }
}

fn is_digits(field: &str) -> bool {
    !field.is_empty() && field.bytes().all(|b| b.is_ascii_digit())
}

/// `c=<nettype> <addrtype> <address>`; returns the value.
fn check_connection(connection: &str) -> Result<&str, SdpError> {
    let mut fields = fields(connection, b' ');
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some(_), Some(_), Some(address), None) if !address.is_empty() => Ok(connection),
        _ => Err(syntax("malformed c=", connection)),
    }
}

/// `m=<media> <port>[/<count>] <proto> <fmt> ...`.
fn media_section(value: &str) -> Result<MediaSection<'_>, SdpError> {
    let malformed = || syntax("malformed m=", value);
    let (media, rest) = split_at_byte(value, b' ').ok_or_else(malformed)?;
    let (port, rest) = split_at_byte(rest, b' ').ok_or_else(malformed)?;
    let (_proto, formats) = split_at_byte(rest, b' ').ok_or_else(malformed)?;
    let port = split_at_byte(port, b'/').map_or(port, |(port, _count)| port);
    let port = port.parse().map_err(|_| syntax("bad port in m=", value))?;
    if media.is_empty() || formats.trim().is_empty() {
        return Err(malformed());
    }
    Ok(MediaSection {
        media,
        port,
        formats,
        connection: None,
        attributes: Attributes::default(),
    })
}

/// The address of a `c=` value. A multicast address may carry /ttl;
/// unicast ones never do. None for a name rather than an address.
fn connection_ip(connection: Option<&str>) -> Option<IpAddr> {
    let address = fields(connection?, b' ').nth(2)?;
    let address = split_at_byte(address, b'/').map_or(address, |(address, _ttl)| address);
    address.parse().ok()
}

/// The first audio stream of an SDP body.
pub fn audio_stream(body: &[u8]) -> Result<AudioStream, SdpError> {
    audio_stream_of(&parse(text_of(body)?)?)
}

fn audio_stream_of(session: &Description<'_>) -> Result<AudioStream, SdpError> {
    let media = session
        .media
        .iter()
        .find(|m| m.media == "audio")
        .ok_or(SdpError::NoAudio)?;
    let ip = connection_ip(media.connection)
        .or_else(|| connection_ip(session.connection))
        .ok_or(SdpError::NoAddress)?;
    let mut codecs = Vec::new();
    let mut telephone_event = None;
    for format in media.formats.split_ascii_whitespace() {
        let Ok(pt) = format.parse::<u8>() else {
            continue;
        };
        let map = media.attributes.rtpmap(pt);
        let is_named = |name: &str| {
            map.and_then(|m| m.get(..name.len()))
                .is_some_and(|m| m.eq_ignore_ascii_case(name))
        };
        if is_named("telephone-event/8000") {
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
        (media.attributes.direction)
            .or(session.attributes.direction)
            .unwrap_or(Direction::SendRecv)
    };
    Ok(AudioStream {
        rtp: SocketAddr::new(ip, media.port),
        codecs,
        telephone_event,
        direction,
        rtcp_mux: media.attributes.rtcp_mux,
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
    let origin = format!("{} {}", address_type(ours.ip()), ours.ip());
    let connection = format!("c=IN {} {ip}", address_type(ip));
    let mut anchored = String::with_capacity(body.len() + 32);
    let mut audio_seen = false;
    for (kind, value) in lines(text) {
        match kind {
            // Username, session id and version, network type stay; the
            // address type and address are ours.
            b'o' => {
                let kept = rsplit_at_byte(value, b' ')
                    .and_then(|(rest, _address)| rsplit_at_byte(rest, b' '))
                    .map(|(kept, _address_type)| kept);
                anchored.push_str("o=");
                anchored.push_str(kept.unwrap_or(value));
                if kept.is_some() {
                    anchored.push(' ');
                    anchored.push_str(&origin);
                }
            }
            // Every stream's (a declined one's address means nothing).
            b'c' => anchored.push_str(&connection),
            b'm' => {
                // Media, port (replaced), and the rest as written.
                let (media, rest) = split_at_byte(value, b' ').unwrap_or((value, ""));
                let rest = split_at_byte(rest, b' ').map_or("", |(_port, rest)| rest);
                let first_audio = media == "audio" && !audio_seen;
                audio_seen |= first_audio;
                let port = match (first_audio, theirs.rtp.port()) {
                    (true, 0) => 0,
                    (true, _) => ours.port(),
                    (false, _) => 0,
                };
                // Written to a String: cannot fail.
                let _ = write!(anchored, "m={media} {port} {rest}");
            }
            b'a' if TRANSPORT_ATTRIBUTES
                .contains(&split_at_byte(value, b':').map_or(value, |(name, _)| name)) =>
            {
                continue
            }
            _ => {
                anchored.push(char::from(kind));
                anchored.push('=');
                anchored.push_str(value);
            }
        }
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
        let ip = self.rtp.ip();
        let address_type = address_type(ip);
        write!(
            f,
            "v=0\r\no=- {} {} IN {address_type} {ip}\r\ns=pbx\r\nc=IN {address_type} {ip}\r\n\
             t=0 0\r\nm=audio {} RTP/AVP",
            self.session_id,
            self.version,
            self.rtp.port()
        )?;
        for codec in &self.codecs {
            write!(f, " {}", codec.payload_type())?;
        }
        if let Some(pt) = self.telephone_event {
            write!(f, " {pt}")?;
        }
        f.write_str("\r\n")?;
        for codec in &self.codecs {
            let pt = codec.payload_type();
            write!(f, "a=rtpmap:{pt} {}/8000\r\n", codec.encoding_name())?;
        }
        if let Some(pt) = self.telephone_event {
            write!(
                f,
                "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-16\r\n"
            )?;
        }
        write!(f, "a=ptime:20\r\na={}\r\n", self.direction.attribute())
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

    #[test]
    fn our_offer_is_written_as_phones_expect() {
        let offer = AudioDescription::offer(
            7,
            1,
            LocalAudio {
                rtp: "10.0.0.5:30000".parse().unwrap(),
                codecs: G711,
                telephone_event: Some(TELEPHONE_EVENT_PT),
                direction: Direction::SendOnly,
            },
        );
        assert_eq!(
            offer.to_string(),
            "v=0\r\no=- 7 1 IN IP4 10.0.0.5\r\ns=pbx\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendonly\r\n"
        );
        let negotiated = Negotiated {
            codec: AudioCodec::Pcma,
            telephone_event: None,
            direction: Direction::SendRecv,
        };
        let answer =
            AudioDescription::answer(7, 2, "[2001:db8::1]:30000".parse().unwrap(), negotiated);
        assert_eq!(
            answer.to_string(),
            "v=0\r\no=- 7 2 IN IP6 2001:db8::1\r\ns=pbx\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\na=sendrecv\r\n"
        );
    }

    #[test]
    fn the_grammar_is_checked() {
        let bad = [
            ("no version", BARESIP.replacen("v=0\r\n", "", 1)),
            ("version 1", BARESIP.replacen("v=0", "v=1", 1)),
            (
                "short origin",
                BARESIP.replacen("o=- 492239846 ", "o=- ", 1),
            ),
            ("no session name", BARESIP.replacen("s=-\r\n", "", 1)),
            ("no timing", BARESIP.replacen("t=0 0\r\n", "", 1)),
            (
                "a line that is not type=value",
                BARESIP.replacen("a=sendrecv", "sendrecv", 1),
            ),
            (
                "a session-level type in a stream",
                format!("{BARESIP}t=0 0\r\n"),
            ),
            (
                "an unknown type",
                BARESIP.replacen("a=sendrecv", "x=sendrecv", 1),
            ),
            (
                "a short c=",
                BARESIP.replacen("c=IN IP4 192.0.2.2", "c=IN 192.0.2.2", 1),
            ),
            (
                "a long c=",
                BARESIP.replacen("c=IN IP4 192.0.2.2", "c=IN IP4 192.0.2.2 x", 1),
            ),
            (
                "a port that is not a number",
                BARESIP.replacen("36706", "rtp", 1),
            ),
            ("a port over 65535", BARESIP.replacen("36706", "70000", 1)),
            (
                "no formats",
                BARESIP.replacen("RTP/AVP 8 0 101", "RTP/AVP", 1),
            ),
        ];
        for (what, body) in bad {
            assert!(
                matches!(audio_stream(body.as_bytes()), Err(SdpError::Syntax(_))),
                "{what} is refused"
            );
        }
        // LF line ends, no final line end, trailing blank lines, a port
        // count and a stream-level address all read.
        let relaxed = BARESIP
            .replace("\r\n", "\n")
            .replacen("m=audio 36706 ", "m=audio 36706/2 ", 1)
            .replacen("a=rtpmap:0", "c=IN IP4 192.0.2.9\na=rtpmap:0", 1);
        let relaxed = format!("{}\n\n", relaxed.trim_end());
        let stream = audio_stream(relaxed.trim_end().as_bytes()).unwrap();
        assert_eq!(stream.rtp, "192.0.2.9:36706".parse().unwrap());
        assert_eq!(audio_stream(relaxed.as_bytes()).unwrap(), stream);
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
