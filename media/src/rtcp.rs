//! RTCP (RFC 3550 §6): SR, RR, SDES, BYE in compound packets, NTP time and
//! round-trip time from LSR/DLSR.

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;

const VERSION: u8 = 2;
const PT_SR: u8 = 200;
const PT_RR: u8 = 201;
const PT_SDES: u8 = 202;
const PT_BYE: u8 = 203;
const SDES_END: u8 = 0;
const SDES_CNAME: u8 = 1;
/// The RC/SC field is 5 bits wide.
const MAX_COUNT: usize = 31;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RtcpError {
    #[error("RTCP packet truncated: {0}")]
    Truncated(&'static str),
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTCP padding bit set on a packet that is not last in the compound")]
    PaddingNotLast,
    #[error("RTCP {packet_type} packet body of {len} bytes cannot hold its {count} entries")]
    CountMismatch {
        packet_type: u8,
        count: usize,
        len: usize,
    },
    #[error("too many entries for one RTCP packet: {0}, at most 31")]
    TooManyEntries(usize),
    #[error("SDES item longer than 255 bytes")]
    SdesItemTooLong,
    #[error("empty compound packet")]
    Empty,
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// 24-bit signed on the wire; clamped when built.
    pub cumulative_lost: i32,
    pub extended_highest_sequence: u32,
    pub jitter: u32,
    pub last_sr: u32,
    pub delay_since_last_sr: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp_timestamp: NtpTimestamp,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    pub sender_info: SenderInfo,
    pub reports: Vec<ReportBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverReport {
    pub ssrc: u32,
    pub reports: Vec<ReportBlock>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesItem {
    pub kind: u8,
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk {
    pub ssrc: u32,
    pub items: Vec<SdesItem>,
}

impl SdesChunk {
    pub fn cname(ssrc: u32, cname: &str) -> Self {
        SdesChunk {
            ssrc,
            items: vec![SdesItem {
                kind: SDES_CNAME,
                value: cname.as_bytes().to_vec(),
            }],
        }
    }

    pub fn find_cname(&self) -> Option<&[u8]> {
        self.items
            .iter()
            .find(|item| item.kind == SDES_CNAME)
            .map(|item| item.value.as_slice())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bye {
    pub sources: Vec<u32>,
    pub reason: Option<Vec<u8>>,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport(SenderReport),
    ReceiverReport(ReceiverReport),
    SourceDescription(Vec<SdesChunk>),
    Bye(Bye),
    /// APP, feedback and anything newer, kept verbatim so the relay and
    /// tools can pass it on.
    Other {
        packet_type: u8,
        count: u8,
        body: Vec<u8>,
    },
}

/// 64-bit NTP timestamp: seconds since 1900 in the high word, fraction in
/// the low word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct NtpTimestamp(pub u64);

impl NtpTimestamp {
    pub fn from_system_time(time: SystemTime) -> Self {
        let since_unix = time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let secs = since_unix.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS);
        let fraction = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTimestamp(secs << 32 | fraction)
    }

    /// The middle 32 bits, as carried in LSR and compared for RTT.
    pub fn middle_32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

/// Round-trip time from a report block received at `arrival` (RFC 3550
/// §6.4.1: RTT = A - LSR - DLSR in 1/65536 s). `None` when the peer has not
/// yet received an SR from us (LSR = 0) or the result is negative (clock
/// skew or a stale block).
pub fn round_trip_time(arrival: NtpTimestamp, block: &ReportBlock) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = arrival
        .middle_32()
        .wrapping_sub(block.last_sr)
        .wrapping_sub(block.delay_since_last_sr);
    // A wrapped difference above 2^31 is really negative.
    if rtt > u32::MAX / 2 {
        return None;
    }
    Some(Duration::from_nanos(
        u64::from(rtt) * 1_000_000_000 / 65_536,
    ))
}

/// DLSR for a report: `delay` expressed in 1/65536 s, saturating.
pub fn delay_since_last_sr(delay: Duration) -> u32 {
    let units = delay.as_nanos() * 65_536 / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RtcpError> {
        if n > self.buf.len() {
            return Err(RtcpError::Truncated(self.what));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RtcpError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, RtcpError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Parses a compound RTCP datagram into its packets.
pub fn parse_compound(datagram: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    if datagram.is_empty() {
        return Err(RtcpError::Empty);
    }
    let mut packets = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let mut header = Reader {
            buf: rest,
            what: "header",
        };
        let first = header.u8()?;
        let packet_type = header.u8()?;
        let length_words = header.take(2)?;
        let body_len = usize::from(u16::from_be_bytes([length_words[0], length_words[1]])) * 4;
        let version = first >> 6;
        if version != VERSION {
            return Err(RtcpError::BadVersion(version));
        }
        let mut body = header
            .take(body_len)
            .map_err(|_| RtcpError::Truncated("length field"))?;
        rest = header.buf;
        if first & 0x20 != 0 {
            if !rest.is_empty() {
                return Err(RtcpError::PaddingNotLast);
            }
            let pad = usize::from(body.last().copied().unwrap_or(0));
            if pad == 0 || pad > body.len() {
                return Err(RtcpError::Truncated("padding"));
            }
            body = body.get(..body.len() - pad).unwrap_or(&[]);
        }
        let count = first & 0x1f;
        packets.push(parse_one(packet_type, count, body)?);
    }
    Ok(packets)
}

fn parse_report_blocks(
    reader: &mut Reader<'_>,
    count: u8,
    packet_type: u8,
) -> Result<Vec<ReportBlock>, RtcpError> {
    let count = usize::from(count);
    if reader.buf.len() < count * 24 {
        return Err(RtcpError::CountMismatch {
            packet_type,
            count,
            len: reader.buf.len(),
        });
    }
    let mut blocks = Vec::with_capacity(count);
    for _ in 0..count {
        let ssrc = reader.u32()?;
        let loss = reader.u32()?;
        // Sign-extend the 24-bit cumulative loss.
        let cumulative_lost = ((loss << 8) as i32) >> 8;
        blocks.push(ReportBlock {
            ssrc,
            fraction_lost: (loss >> 24) as u8,
            cumulative_lost,
            extended_highest_sequence: reader.u32()?,
            jitter: reader.u32()?,
            last_sr: reader.u32()?,
            delay_since_last_sr: reader.u32()?,
        });
    }
    Ok(blocks)
}

fn parse_one(packet_type: u8, count: u8, body: &[u8]) -> Result<RtcpPacket, RtcpError> {
    let mut reader = Reader {
        buf: body,
        what: "body",
    };
    Ok(match packet_type {
        PT_SR => {
            let ssrc = reader.u32()?;
            let ntp_high = reader.u32()?;
            let ntp_low = reader.u32()?;
            let sender_info = SenderInfo {
                ntp_timestamp: NtpTimestamp(u64::from(ntp_high) << 32 | u64::from(ntp_low)),
                rtp_timestamp: reader.u32()?,
                packet_count: reader.u32()?,
                octet_count: reader.u32()?,
            };
            let reports = parse_report_blocks(&mut reader, count, packet_type)?;
            RtcpPacket::SenderReport(SenderReport {
                ssrc,
                sender_info,
                reports,
            })
        }
        PT_RR => {
            let ssrc = reader.u32()?;
            let reports = parse_report_blocks(&mut reader, count, packet_type)?;
            RtcpPacket::ReceiverReport(ReceiverReport { ssrc, reports })
        }
        PT_SDES => {
            let mut chunks = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                chunks.push(parse_sdes_chunk(&mut reader)?);
            }
            RtcpPacket::SourceDescription(chunks)
        }
        PT_BYE => {
            let mut sources = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                sources.push(reader.u32()?);
            }
            let reason = if reader.buf.is_empty() {
                None
            } else {
                let len = usize::from(reader.u8()?);
                Some(reader.take(len)?.to_vec())
            };
            RtcpPacket::Bye(Bye { sources, reason })
        }
        _ => RtcpPacket::Other {
            packet_type,
            count,
            body: body.to_vec(),
        },
    })
}

fn parse_sdes_chunk(reader: &mut Reader<'_>) -> Result<SdesChunk, RtcpError> {
    let start_len = reader.buf.len();
    let ssrc = reader.u32()?;
    let mut items = Vec::new();
    loop {
        let kind = reader.u8()?;
        if kind == SDES_END {
            break;
        }
        let len = usize::from(reader.u8()?);
        items.push(SdesItem {
            kind,
            value: reader.take(len)?.to_vec(),
        });
    }
    // Chunks end on a 32-bit boundary: skip the null padding.
    let consumed = start_len - reader.buf.len();
    let pad = (4 - consumed % 4) % 4;
    reader.take(pad)?;
    Ok(SdesChunk { ssrc, items })
}

/// Serialises packets into one compound datagram. RFC 3550 §6.1 wants an
/// SR or RR first and an SDES CNAME in every compound; that is the
/// caller's choice (reduced-size RTCP, RFC 5506, omits them).
pub fn write_compound(packets: &[RtcpPacket]) -> Result<Vec<u8>, RtcpError> {
    let mut out = Vec::with_capacity(128);
    for packet in packets {
        write_one(packet, &mut out)?;
    }
    Ok(out)
}

fn checked_count(n: usize) -> Result<u8, RtcpError> {
    if n > MAX_COUNT {
        return Err(RtcpError::TooManyEntries(n));
    }
    Ok(n as u8)
}

fn write_report_blocks(blocks: &[ReportBlock], out: &mut Vec<u8>) {
    for block in blocks {
        let lost = block.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32 & 0x00ff_ffff;
        out.extend_from_slice(&block.ssrc.to_be_bytes());
        out.extend_from_slice(&(u32::from(block.fraction_lost) << 24 | lost).to_be_bytes());
        out.extend_from_slice(&block.extended_highest_sequence.to_be_bytes());
        out.extend_from_slice(&block.jitter.to_be_bytes());
        out.extend_from_slice(&block.last_sr.to_be_bytes());
        out.extend_from_slice(&block.delay_since_last_sr.to_be_bytes());
    }
}

fn write_one(packet: &RtcpPacket, out: &mut Vec<u8>) -> Result<(), RtcpError> {
    let start = out.len();
    let (packet_type, count) = match packet {
        RtcpPacket::SenderReport(sr) => (PT_SR, checked_count(sr.reports.len())?),
        RtcpPacket::ReceiverReport(rr) => (PT_RR, checked_count(rr.reports.len())?),
        RtcpPacket::SourceDescription(chunks) => (PT_SDES, checked_count(chunks.len())?),
        RtcpPacket::Bye(bye) => (PT_BYE, checked_count(bye.sources.len())?),
        RtcpPacket::Other {
            packet_type, count, ..
        } => (*packet_type, checked_count(usize::from(*count))?),
    };
    out.extend_from_slice(&[VERSION << 6 | count, packet_type, 0, 0]);
    match packet {
        RtcpPacket::SenderReport(sr) => {
            out.extend_from_slice(&sr.ssrc.to_be_bytes());
            out.extend_from_slice(&sr.sender_info.ntp_timestamp.0.to_be_bytes());
            out.extend_from_slice(&sr.sender_info.rtp_timestamp.to_be_bytes());
            out.extend_from_slice(&sr.sender_info.packet_count.to_be_bytes());
            out.extend_from_slice(&sr.sender_info.octet_count.to_be_bytes());
            write_report_blocks(&sr.reports, out);
        }
        RtcpPacket::ReceiverReport(rr) => {
            out.extend_from_slice(&rr.ssrc.to_be_bytes());
            write_report_blocks(&rr.reports, out);
        }
        RtcpPacket::SourceDescription(chunks) => {
            for chunk in chunks {
                let chunk_start = out.len();
                out.extend_from_slice(&chunk.ssrc.to_be_bytes());
                for item in &chunk.items {
                    let len =
                        u8::try_from(item.value.len()).map_err(|_| RtcpError::SdesItemTooLong)?;
                    out.extend_from_slice(&[item.kind, len]);
                    out.extend_from_slice(&item.value);
                }
                // The END item, then null bytes to the next 32-bit boundary.
                out.push(SDES_END);
                let pad = (4 - (out.len() - chunk_start) % 4) % 4;
                out.resize(out.len() + pad, 0);
            }
        }
        RtcpPacket::Bye(bye) => {
            for source in &bye.sources {
                out.extend_from_slice(&source.to_be_bytes());
            }
            if let Some(reason) = &bye.reason {
                let len = u8::try_from(reason.len()).map_err(|_| RtcpError::SdesItemTooLong)?;
                out.push(len);
                out.extend_from_slice(reason);
                let pad = (4 - (out.len() - start) % 4) % 4;
                out.resize(out.len() + pad, 0);
            }
        }
        RtcpPacket::Other { body, .. } => {
            out.extend_from_slice(body);
            let pad = (4 - body.len() % 4) % 4;
            out.resize(out.len() + pad, 0);
        }
    }
    let words = (out.len() - start) / 4 - 1;
    let words = u16::try_from(words).map_err(|_| RtcpError::TooManyEntries(words))?;
    if let Some(length) = out.get_mut(start + 2..start + 4) {
        length.copy_from_slice(&words.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: -3,
            extended_highest_sequence: 0x0001_0005,
            jitter: 17,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_0000,
        }
    }

    #[test]
    fn compound_sr_sdes_bye_round_trips() {
        let packets = vec![
            RtcpPacket::SenderReport(SenderReport {
                ssrc: 0xaabb_ccdd,
                sender_info: SenderInfo {
                    ntp_timestamp: NtpTimestamp(0x0102_0304_0506_0708),
                    rtp_timestamp: 160_000,
                    packet_count: 1000,
                    octet_count: 160_000,
                },
                reports: vec![block(1), block(2)],
            }),
            RtcpPacket::SourceDescription(vec![
                SdesChunk::cname(0xaabb_ccdd, "user@10.0.0.1"),
                SdesChunk::cname(7, "ab"),
            ]),
            RtcpPacket::Bye(Bye {
                sources: vec![0xaabb_ccdd],
                reason: Some(b"hangup".to_vec()),
            }),
        ];
        let bytes = write_compound(&packets).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..2], &[0x82, 200]);
        // SR: 4 header + 24 sender + 2*24 blocks = 76 bytes = 19 words - 1.
        assert_eq!(&bytes[2..4], &[0, 18]);
        let parsed = parse_compound(&bytes).unwrap();
        assert_eq!(parsed, packets);
        match &parsed[1] {
            RtcpPacket::SourceDescription(chunks) => {
                assert_eq!(chunks[0].find_cname(), Some(&b"user@10.0.0.1"[..]))
            }
            other => panic!("expected SDES, got {other:?}"),
        }
    }

    #[test]
    fn receiver_report_and_unknown_packets_round_trip() {
        let packets = vec![
            RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: 9,
                reports: vec![block(3)],
            }),
            RtcpPacket::Other {
                packet_type: 205,
                count: 1,
                body: vec![0, 0, 0, 9, 0, 0, 0, 3],
            },
            RtcpPacket::Bye(Bye {
                sources: vec![9, 10],
                reason: None,
            }),
        ];
        assert_eq!(
            parse_compound(&write_compound(&packets).unwrap()).unwrap(),
            packets
        );
    }

    #[test]
    fn cumulative_loss_is_24_bit_signed_and_clamped() {
        let mut big = block(1);
        big.cumulative_lost = 10_000_000;
        let rr = RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 1,
            reports: vec![big],
        });
        let parsed = parse_compound(&write_compound(&[rr]).unwrap()).unwrap();
        match &parsed[0] {
            RtcpPacket::ReceiverReport(rr) => assert_eq!(rr.reports[0].cumulative_lost, 0x7f_ffff),
            other => panic!("expected RR, got {other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_compounds() {
        let rr = write_compound(&[RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: 1,
            reports: vec![block(1)],
        })])
        .unwrap();
        assert!(matches!(
            parse_compound(&rr[..rr.len() - 4]),
            Err(RtcpError::Truncated(_))
        ));
        let mut wrong_version = rr.clone();
        wrong_version[0] = 0x41;
        assert_eq!(
            parse_compound(&wrong_version),
            Err(RtcpError::BadVersion(1))
        );
        let mut overcount = rr.clone();
        overcount[0] = 0x82;
        assert!(matches!(
            parse_compound(&overcount),
            Err(RtcpError::CountMismatch { .. })
        ));
        let mut padded_first = rr.clone();
        padded_first[0] |= 0x20;
        padded_first.extend_from_slice(&rr);
        assert_eq!(
            parse_compound(&padded_first),
            Err(RtcpError::PaddingNotLast)
        );
        assert_eq!(parse_compound(&[]), Err(RtcpError::Empty));
        let too_many = RtcpPacket::Bye(Bye {
            sources: vec![0; 32],
            reason: None,
        });
        assert_eq!(
            write_compound(&[too_many]),
            Err(RtcpError::TooManyEntries(32))
        );
    }

    #[test]
    fn rtt_from_lsr_and_dlsr() {
        // RFC 3550 §6.4.1 example: A = 0xb710:8000 (46864.5 s), LSR =
        // 0xb705:2000 (46853.125 s), DLSR = 0x0005:4000 (5.25 s) -> 6.125 s.
        let arrival = NtpTimestamp(0x0000_b710_8000_0000);
        let report = ReportBlock {
            last_sr: 0xb705_2000,
            delay_since_last_sr: 0x0005_4000,
            ..ReportBlock::default()
        };
        assert_eq!(
            round_trip_time(arrival, &report),
            Some(Duration::from_millis(6125))
        );
        assert_eq!(round_trip_time(arrival, &ReportBlock::default()), None);
        let skewed = ReportBlock {
            last_sr: 0xb711_0000,
            ..report
        };
        assert_eq!(round_trip_time(arrival, &skewed), None);
        assert_eq!(
            delay_since_last_sr(Duration::from_millis(5250)),
            0x0005_4000
        );
    }

    #[test]
    fn ntp_time_from_system_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1500);
        let ntp = NtpTimestamp::from_system_time(t);
        assert_eq!(ntp.0 >> 32, NTP_UNIX_OFFSET_SECS + 1);
        assert_eq!(ntp.0 & 0xffff_ffff, 0x8000_0000);
        assert_eq!(
            ntp.middle_32(),
            ((NTP_UNIX_OFFSET_SECS + 1) as u32) << 16 | 0x8000
        );
    }
}
