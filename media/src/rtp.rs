//! RTP packets (RFC 3550 §5.1): zero-copy parsing, building into a caller's
//! buffer, in-place header rewriting for the relay, and rtcp-mux
//! demultiplexing (RFC 5761 §4).

use thiserror::Error;

/// Length of the fixed RTP header.
pub const HEADER_LEN: usize = 12;
/// The CC field is 4 bits wide.
pub const MAX_CSRCS: usize = 15;
const VERSION: u8 = 2;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("RTP packet too short: {len} bytes, need at least {needed}")]
    TooShort { len: usize, needed: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTP padding count {count} invalid for {available} bytes after the header")]
    BadPadding { count: usize, available: usize },
    #[error("RTP payload type {0} does not fit in 7 bits")]
    BadPayloadType(u8),
    #[error("too many CSRCs: {0}, at most 15")]
    TooManyCsrcs(usize),
    #[error("RTP header extension is {0} bytes, must be a multiple of 4")]
    ExtensionNotAligned(usize),
    #[error("RTP extension too long: {0} bytes")]
    ExtensionTooLong(usize),
    #[error("padding must be 0..=255 bytes and cannot be 1 when a count byte is needed: got {0}")]
    BadPaddingLength(usize),
    #[error("output buffer of {have} bytes is too small, need {needed}")]
    BufferTooSmall { have: usize, needed: usize },
}

/// The contributing sources of a packet, stored inline so parsing never
/// allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CsrcList {
    ids: [u32; MAX_CSRCS],
    len: u8,
}

impl CsrcList {
    pub fn new(csrcs: &[u32]) -> Result<Self, RtpError> {
        if csrcs.len() > MAX_CSRCS {
            return Err(RtpError::TooManyCsrcs(csrcs.len()));
        }
        let mut list = CsrcList::default();
        for (slot, id) in list.ids.iter_mut().zip(csrcs) {
            *slot = *id;
        }
        list.len = csrcs.len() as u8;
        Ok(list)
    }

    pub fn as_slice(&self) -> &[u32] {
        self.ids.get(..usize::from(self.len)).unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A header extension (RFC 3550 §5.3.1): a profile-defined 16-bit id and
/// data whose length is a multiple of 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// One RTP packet; when parsed, `payload` and `extension` borrow from the
/// datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub csrcs: CsrcList,
    pub extension: Option<RtpExtension<'a>>,
    pub payload: &'a [u8],
    /// Padding bytes at the end, including the final count byte; 0 = none.
    pub padding: u8,
}

fn be_u16(buf: &[u8], at: usize) -> Option<u16> {
    let bytes = buf.get(at..at + 2)?;
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn too_short(len: usize, needed: usize) -> RtpError {
    RtpError::TooShort { len, needed }
}

impl<'a> RtpPacket<'a> {
    /// A packet with no CSRCs, extension or padding.
    pub fn new(
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &'a [u8],
    ) -> Self {
        RtpPacket {
            marker: false,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrcs: CsrcList::default(),
            extension: None,
            payload,
            padding: 0,
        }
    }

    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        let (&first, &second) = match (buf.first(), buf.get(1)) {
            (Some(a), Some(b)) if len >= HEADER_LEN => (a, b),
            _ => return Err(too_short(len, HEADER_LEN)),
        };
        let version = first >> 6;
        if version != VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = first & 0x20 != 0;
        let has_extension = first & 0x10 != 0;
        let csrc_count = usize::from(first & 0x0f);
        let sequence = be_u16(buf, 2).ok_or(too_short(len, HEADER_LEN))?;
        let timestamp = be_u32(buf, 4).ok_or(too_short(len, HEADER_LEN))?;
        let ssrc = be_u32(buf, 8).ok_or(too_short(len, HEADER_LEN))?;

        let mut at = HEADER_LEN;
        let mut csrcs = CsrcList::default();
        for slot in csrcs.ids.iter_mut().take(csrc_count) {
            *slot = be_u32(buf, at).ok_or(too_short(len, at + 4))?;
            at += 4;
        }
        csrcs.len = csrc_count as u8;

        let extension = if has_extension {
            let profile = be_u16(buf, at).ok_or(too_short(len, at + 4))?;
            let words = be_u16(buf, at + 2).ok_or(too_short(len, at + 4))?;
            let data_len = usize::from(words) * 4;
            let data = buf
                .get(at + 4..at + 4 + data_len)
                .ok_or(too_short(len, at + 4 + data_len))?;
            at += 4 + data_len;
            Some(RtpExtension { profile, data })
        } else {
            None
        };

        let available = len - at;
        let padding = if has_padding {
            let count = usize::from(buf.last().copied().unwrap_or(0));
            if count == 0 || count > available {
                return Err(RtpError::BadPadding { count, available });
            }
            count
        } else {
            0
        };
        let payload = buf
            .get(at..len - padding)
            .ok_or(too_short(len, at + padding))?;
        Ok(RtpPacket {
            marker: second & 0x80 != 0,
            payload_type: second & 0x7f,
            sequence,
            timestamp,
            ssrc,
            csrcs,
            extension,
            payload,
            padding: padding as u8,
        })
    }

    /// Bytes [`write_to`](Self::write_to) will produce.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + 4 * self.csrcs.len()
            + self.extension.map_or(0, |ext| 4 + ext.data.len())
            + self.payload.len()
            + usize::from(self.padding)
    }

    /// Serialises into `out`, returning the number of bytes written.
    pub fn write_to(&self, out: &mut [u8]) -> Result<usize, RtpError> {
        if self.payload_type > 0x7f {
            return Err(RtpError::BadPayloadType(self.payload_type));
        }
        if let Some(ext) = self.extension {
            if ext.data.len() % 4 != 0 {
                return Err(RtpError::ExtensionNotAligned(ext.data.len()));
            }
            if ext.data.len() / 4 > usize::from(u16::MAX) {
                return Err(RtpError::ExtensionTooLong(ext.data.len()));
            }
        }
        let needed = self.encoded_len();
        let have = out.len();
        let out = out
            .get_mut(..needed)
            .ok_or(RtpError::BufferTooSmall { have, needed })?;

        let mut first = VERSION << 6 | self.csrcs.len() as u8;
        if self.padding > 0 {
            first |= 0x20;
        }
        if self.extension.is_some() {
            first |= 0x10;
        }
        let mut writer = Writer { out, at: 0 };
        writer.put(&[first, u8::from(self.marker) << 7 | self.payload_type]);
        writer.put(&self.sequence.to_be_bytes());
        writer.put(&self.timestamp.to_be_bytes());
        writer.put(&self.ssrc.to_be_bytes());
        for id in self.csrcs.as_slice() {
            writer.put(&id.to_be_bytes());
        }
        if let Some(ext) = self.extension {
            writer.put(&ext.profile.to_be_bytes());
            writer.put(&((ext.data.len() / 4) as u16).to_be_bytes());
            writer.put(ext.data);
        }
        writer.put(self.payload);
        if self.padding > 0 {
            let zeros = [0u8; 255];
            let pad = usize::from(self.padding);
            writer.put(zeros.get(..pad - 1).unwrap_or(&[]));
            writer.put(&[self.padding]);
        }
        Ok(needed)
    }

    pub fn to_vec(&self) -> Result<Vec<u8>, RtpError> {
        let mut out = vec![0; self.encoded_len()];
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Sequential writer into a buffer already checked to be long enough.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
}

/// Overwrites SSRC, sequence number and timestamp of an RTP packet in place,
/// so the relay can re-anchor a stream without copying the packet.
pub fn rewrite_stream_fields(
    packet: &mut [u8],
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
) -> Result<(), RtpError> {
    let len = packet.len();
    let header = packet
        .get_mut(..HEADER_LEN)
        .ok_or(too_short(len, HEADER_LEN))?;
    header[2..4].copy_from_slice(&sequence.to_be_bytes());
    header[4..8].copy_from_slice(&timestamp.to_be_bytes());
    header[8..12].copy_from_slice(&ssrc.to_be_bytes());
    Ok(())
}

/// What arrived on a socket carrying both RTP and RTCP (RFC 5761 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
    /// Not RTP version 2 at all (STUN, DTLS, garbage).
    Other,
}

/// Classifies a datagram on an rtcp-mux socket: RTCP packet types 200–223
/// fall in the 7-bit range 64–95 that RTP payload types must avoid.
pub fn classify(datagram: &[u8]) -> PacketKind {
    match (datagram.first(), datagram.get(1)) {
        (Some(first), Some(second)) if first >> 6 == VERSION => {
            if (64..=95).contains(&(second & 0x7f)) {
                PacketKind::Rtcp
            } else {
                PacketKind::Rtp
            }
        }
        _ => PacketKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_header_feature() {
        let ext_data = [1, 2, 3, 4, 5, 6, 7, 8];
        let packet = RtpPacket {
            marker: true,
            payload_type: 101,
            sequence: 0xfffe,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
            csrcs: CsrcList::new(&[7, 8, 9]).unwrap(),
            extension: Some(RtpExtension {
                profile: 0xbede,
                data: &ext_data,
            }),
            payload: b"hello",
            padding: 3,
        };
        let bytes = packet.to_vec().unwrap();
        assert_eq!(bytes.len(), 12 + 12 + 4 + 8 + 5 + 3);
        assert_eq!(bytes[0], 0b1011_0011);
        assert_eq!(bytes[1], 0x80 | 101);
        assert_eq!(*bytes.last().unwrap(), 3);
        assert_eq!(RtpPacket::parse(&bytes).unwrap(), packet);
    }

    #[test]
    fn plain_packet_is_twelve_bytes_plus_payload() {
        let bytes = RtpPacket::new(0, 1, 160, 42, &[0xff; 160])
            .to_vec()
            .unwrap();
        assert_eq!(bytes.len(), 172);
        let parsed = RtpPacket::parse(&bytes).unwrap();
        assert!(!parsed.marker);
        assert_eq!(parsed.payload.len(), 160);
        assert!(parsed.csrcs.is_empty());
        assert_eq!(parsed.extension, None);
    }

    #[test]
    fn rejects_malformed_packets() {
        let good = RtpPacket::new(0, 1, 2, 3, b"abcd").to_vec().unwrap();
        assert!(matches!(
            RtpPacket::parse(&good[..11]),
            Err(RtpError::TooShort { .. })
        ));
        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::BadVersion(1)));
        let mut csrc_overrun = good.clone();
        csrc_overrun[0] |= 0x02;
        assert!(matches!(
            RtpPacket::parse(&csrc_overrun),
            Err(RtpError::TooShort { .. })
        ));
        let mut bad_pad = good.clone();
        bad_pad[0] |= 0x20;
        *bad_pad.last_mut().unwrap() = 200;
        assert!(matches!(
            RtpPacket::parse(&bad_pad),
            Err(RtpError::BadPadding { .. })
        ));
        let mut ext_overrun = good.clone();
        ext_overrun[0] |= 0x10;
        assert!(matches!(
            RtpPacket::parse(&ext_overrun),
            Err(RtpError::TooShort { .. })
        ));
    }

    #[test]
    fn refuses_to_build_invalid_packets() {
        let mut packet = RtpPacket::new(128, 0, 0, 0, &[]);
        assert_eq!(packet.to_vec(), Err(RtpError::BadPayloadType(128)));
        packet.payload_type = 0;
        packet.extension = Some(RtpExtension {
            profile: 1,
            data: &[1, 2, 3],
        });
        assert_eq!(packet.to_vec(), Err(RtpError::ExtensionNotAligned(3)));
        assert_eq!(CsrcList::new(&[0; 16]), Err(RtpError::TooManyCsrcs(16)));
        let mut small = [0u8; 11];
        let plain = RtpPacket::new(0, 0, 0, 0, &[]);
        assert_eq!(
            plain.write_to(&mut small),
            Err(RtpError::BufferTooSmall {
                have: 11,
                needed: 12
            })
        );
    }

    #[test]
    fn rewrites_stream_fields_in_place() {
        let mut bytes = RtpPacket::new(8, 5, 6, 7, b"xy").to_vec().unwrap();
        rewrite_stream_fields(&mut bytes, 70, 50, 60).unwrap();
        let parsed = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(
            (parsed.ssrc, parsed.sequence, parsed.timestamp),
            (70, 50, 60)
        );
        assert_eq!(parsed.payload, b"xy");
        assert!(rewrite_stream_fields(&mut [0u8; 4], 1, 1, 1).is_err());
    }

    #[test]
    fn demultiplexes_rtcp_by_payload_type_range() {
        let rtp = RtpPacket::new(0, 1, 2, 3, &[]).to_vec().unwrap();
        assert_eq!(classify(&rtp), PacketKind::Rtp);
        let mut marked_dtmf = RtpPacket::new(101, 1, 2, 3, &[]);
        marked_dtmf.marker = true;
        assert_eq!(classify(&marked_dtmf.to_vec().unwrap()), PacketKind::Rtp);
        for rtcp_type in 200u8..=204 {
            assert_eq!(classify(&[0x80, rtcp_type, 0, 1]), PacketKind::Rtcp);
        }
        assert_eq!(classify(&[0x80, 0x80 | 63]), PacketKind::Rtp);
        assert_eq!(classify(&[0x80, 96]), PacketKind::Rtp);
        assert_eq!(classify(&[0x00, 0x01]), PacketKind::Other);
        assert_eq!(classify(&[0x80]), PacketKind::Other);
    }
}
