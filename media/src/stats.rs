//! Receiver statistics per RFC 3550 appendix A: sequence validation and the
//! extended highest sequence number (A.1), expected/lost/fraction lost
//! (A.3) and interarrival jitter (A.8), reset when the source changes.

use crate::rtcp::{delay_since_last_sr, NtpTimestamp, ReportBlock, SenderInfo};
use std::time::{Instant, SystemTime};

const SEQ_MOD: u32 = 1 << 16;
/// A source is valid after this many packets in sequence (A.1).
const MIN_SEQUENTIAL: u32 = 2;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;

/// Whether a packet counts towards the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// In sequence, a modest jump, or a late/duplicate packet: counted.
    Valid,
    /// The source is still on probation; not counted yet.
    Probation,
    /// A jump too large to trust on its own; a second packet following it
    /// makes the receiver accept a restarted sender.
    Invalid,
}

/// Statistics for one SSRC.
#[derive(Debug, Clone)]
pub struct SourceStats {
    ssrc: u32,
    clock_rate: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Arrival clock origin for converting `Instant`s to RTP units.
    epoch: Instant,
    last_transit: Option<i64>,
    /// Jitter scaled by 16, as in the A.8 integer form.
    jitter_q4: u32,
    /// Middle 32 bits of the last SR's NTP time and when it arrived, for
    /// the LSR/DLSR fields of our reports.
    last_sr: Option<(u32, Instant)>,
}

impl SourceStats {
    pub fn new(ssrc: u32, first_seq: u16, clock_rate: u32, now: Instant) -> Self {
        let mut stats = SourceStats {
            ssrc,
            clock_rate,
            max_seq: first_seq.wrapping_sub(1),
            cycles: 0,
            base_seq: 0,
            bad_seq: SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            epoch: now,
            last_transit: None,
            jitter_q4: 0,
            last_sr: None,
        };
        stats.init_seq(first_seq);
        stats.max_seq = first_seq.wrapping_sub(1);
        stats
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// Feeds one packet's sequence number, RTP timestamp and arrival time.
    pub fn update(&mut self, seq: u16, rtp_timestamp: u32, arrival: Instant) -> SeqVerdict {
        let verdict = self.update_seq(seq);
        if verdict == SeqVerdict::Valid {
            self.update_jitter(rtp_timestamp, arrival);
        }
        verdict
    }

    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        let delta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return SeqVerdict::Valid;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        }
        if delta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(delta) <= SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a big jump: the sender
                // restarted, so start counting afresh.
                self.init_seq(seq);
                self.last_transit = None;
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (SEQ_MOD - 1);
                return SeqVerdict::Invalid;
            }
        }
        // Otherwise a duplicate or reordered packet: counted, max unchanged.
        self.received += 1;
        SeqVerdict::Valid
    }

    fn update_jitter(&mut self, rtp_timestamp: u32, arrival: Instant) {
        let arrival_units = arrival.saturating_duration_since(self.epoch).as_nanos()
            * u128::from(self.clock_rate)
            / 1_000_000_000;
        // Transit is only ever compared with itself, so wrapping to 32 bits
        // (the RTP timestamp width) is harmless.
        let transit = i64::from((arrival_units as u32).wrapping_sub(rtp_timestamp) as i32);
        if let Some(last) = self.last_transit {
            let d = (transit - last)
                .unsigned_abs()
                .min(u64::from(u32::MAX / 32)) as u32;
            // J += (|D| - J) / 16, in the scaled integer form of A.8.
            self.jitter_q4 = self
                .jitter_q4
                .wrapping_add(d)
                .wrapping_sub((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub fn extended_highest_sequence(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    pub fn expected(&self) -> u32 {
        if self.received == 0 {
            return 0;
        }
        self.extended_highest_sequence()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    pub fn received(&self) -> u32 {
        self.received
    }

    /// Cumulative packets lost; negative when duplicates outnumber losses.
    pub fn cumulative_lost(&self) -> i64 {
        i64::from(self.expected()) - i64::from(self.received)
    }

    /// Interarrival jitter in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Records an SR from this source so the next report block carries
    /// LSR/DLSR and the sender can compute the round-trip time.
    pub fn on_sender_report(&mut self, ntp: NtpTimestamp, arrival: Instant) {
        self.last_sr = Some((ntp.middle_32(), arrival));
    }

    /// Builds a report block at `now` and starts a new reporting interval
    /// for the fraction-lost computation.
    pub fn report_block(&mut self, now: Instant) -> ReportBlock {
        let (last_sr, delay) = match self.last_sr {
            Some((lsr, at)) => (lsr, delay_since_last_sr(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        let expected = self.expected();
        let expected_interval = expected.wrapping_sub(self.expected_prior);
        let received_interval = self.received.wrapping_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            extended_highest_sequence: self.extended_highest_sequence(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr: delay,
        }
    }
}

/// Send-side counters for the sender info of our SRs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    packets: u32,
    octets: u32,
}

impl SenderStats {
    pub fn on_packet_sent(&mut self, payload_len: usize) {
        self.packets = self.packets.wrapping_add(1);
        // The octet count wraps, as RFC 3550 §6.4.1 allows.
        self.octets = self.octets.wrapping_add(payload_len as u32);
    }

    /// Sender info for an SR sent at wall-clock `now`, whose RTP clock reads
    /// `rtp_timestamp` at that instant.
    pub fn sender_info(&self, now: SystemTime, rtp_timestamp: u32) -> SenderInfo {
        SenderInfo {
            ntp_timestamp: NtpTimestamp::from_system_time(now),
            rtp_timestamp,
            packet_count: self.packets,
            octet_count: self.octets,
        }
    }
}

/// Receive side of one RTP session: tracks the current source and restarts
/// the statistics when the SSRC changes (a transfer or re-INVITE can swap
/// the sender mid-call).
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    clock_rate: u32,
    current: Option<SourceStats>,
}

impl RtpReceiver {
    pub fn new(clock_rate: u32) -> Self {
        RtpReceiver {
            clock_rate,
            current: None,
        }
    }

    pub fn on_packet(
        &mut self,
        ssrc: u32,
        seq: u16,
        rtp_timestamp: u32,
        arrival: Instant,
    ) -> SeqVerdict {
        let stats = match &mut self.current {
            Some(stats) if stats.ssrc == ssrc => stats,
            slot => slot.insert(SourceStats::new(ssrc, seq, self.clock_rate, arrival)),
        };
        stats.update(seq, rtp_timestamp, arrival)
    }

    pub fn source(&self) -> Option<&SourceStats> {
        self.current.as_ref()
    }

    pub fn source_mut(&mut self) -> Option<&mut SourceStats> {
        self.current.as_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FRAME: Duration = Duration::from_millis(20);

    fn feed(stats: &mut SourceStats, seqs: impl IntoIterator<Item = u16>, start: Instant) {
        for seq in seqs {
            let ts = u32::from(seq) * 160;
            stats.update(seq, ts, start + FRAME * u32::from(seq));
        }
    }

    #[test]
    fn probation_then_counts_every_packet() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 10, 8000, t0);
        assert_eq!(stats.update(10, 0, t0), SeqVerdict::Probation);
        assert_eq!(stats.update(11, 160, t0 + FRAME), SeqVerdict::Valid);
        for seq in 12..20u16 {
            assert_eq!(
                stats.update(
                    seq,
                    u32::from(seq - 10) * 160,
                    t0 + FRAME * u32::from(seq - 10)
                ),
                SeqVerdict::Valid
            );
        }
        assert_eq!(stats.extended_highest_sequence(), 19);
        assert_eq!(stats.expected(), 9);
        assert_eq!(stats.received(), 9);
        assert_eq!(stats.cumulative_lost(), 0);
        assert_eq!(stats.jitter(), 0, "perfectly paced stream has no jitter");
    }

    #[test]
    fn sequence_wrap_extends_and_loss_is_counted() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 65530, 8000, t0);
        let seqs: Vec<u16> = (65530u32..65546)
            .map(|s| s as u16)
            .filter(|s| *s != 2 && *s != 65534)
            .collect();
        for (i, seq) in seqs.iter().enumerate() {
            stats.update(*seq, i as u32 * 160, t0 + FRAME * i as u32);
        }
        assert_eq!(stats.extended_highest_sequence(), 65536 + 9);
        // Base is 65531 (the packet that ended probation).
        assert_eq!(stats.expected(), 15);
        assert_eq!(stats.cumulative_lost(), 2);
        let block = stats.report_block(t0);
        assert_eq!(block.fraction_lost, (2 * 256 / 15) as u8);
        assert_eq!(block.cumulative_lost, 2);
        assert_eq!(block.extended_highest_sequence, 65545);
        // A second interval with no loss reports fraction 0 but keeps the total.
        for seq in 10..20u16 {
            stats.update(seq, 0, t0);
        }
        let block = stats.report_block(t0);
        assert_eq!(block.fraction_lost, 0);
        assert_eq!(block.cumulative_lost, 2);
    }

    #[test]
    fn duplicates_and_reordering_do_not_move_the_highest_sequence() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 100, 8000, t0);
        feed(&mut stats, [100, 101, 103, 102, 102, 104], t0);
        assert_eq!(stats.extended_highest_sequence(), 104);
        // 100 ended probation uncounted; 101..=104 plus one duplicate.
        assert_eq!(stats.received(), 5);
        assert_eq!(
            stats.cumulative_lost(),
            -1,
            "a duplicate makes the loss negative"
        );
    }

    #[test]
    fn a_big_jump_needs_confirmation_then_restarts() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 0, 8000, t0);
        feed(&mut stats, 0..5, t0);
        assert_eq!(stats.update(40_000, 0, t0), SeqVerdict::Invalid);
        assert_eq!(stats.update(40_001, 160, t0), SeqVerdict::Valid);
        assert_eq!(stats.extended_highest_sequence(), 40_001);
        assert_eq!(stats.received(), 1);
        assert_eq!(
            stats.update(7, 0, t0),
            SeqVerdict::Invalid,
            "a lone stray packet is not accepted"
        );
    }

    #[test]
    fn jitter_follows_the_a8_estimator() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 0, 8000, t0);
        // Alternate arrivals 10 ms early/late: |D| is 160 units per packet
        // after the first pair, so J converges towards 160.
        for seq in 0..400u16 {
            let skew = if seq % 2 == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(20)
            };
            stats.update(
                seq,
                u32::from(seq) * 160,
                t0 + FRAME * u32::from(seq) + skew,
            );
        }
        let j = stats.jitter();
        assert!((150..=160).contains(&j), "jitter {j}");
    }

    #[test]
    fn receiver_restarts_statistics_on_ssrc_change() {
        let t0 = Instant::now();
        let mut receiver = RtpReceiver::new(8000);
        for seq in 0..10u16 {
            receiver.on_packet(0xa, seq, u32::from(seq) * 160, t0);
        }
        assert_eq!(receiver.source().unwrap().received(), 9);
        assert_eq!(receiver.on_packet(0xb, 5000, 99, t0), SeqVerdict::Probation);
        assert_eq!(receiver.on_packet(0xb, 5001, 259, t0), SeqVerdict::Valid);
        let source = receiver.source_mut().unwrap();
        assert_eq!(source.ssrc(), 0xb);
        assert_eq!(source.received(), 1);
        assert_eq!(source.report_block(t0).ssrc, 0xb);
    }

    #[test]
    fn report_block_carries_lsr_and_dlsr_and_gives_the_sender_its_rtt() {
        let t0 = Instant::now();
        let mut stats = SourceStats::new(1, 0, 8000, t0);
        feed(&mut stats, 0..3, t0);
        assert_eq!(
            (
                stats.report_block(t0).last_sr,
                stats.report_block(t0).delay_since_last_sr
            ),
            (0, 0)
        );
        let sr_ntp = NtpTimestamp(0x0000_b705_2000_0000);
        stats.on_sender_report(sr_ntp, t0);
        let block = stats.report_block(t0 + std::time::Duration::from_millis(5250));
        assert_eq!(block.last_sr, 0xb705_2000);
        assert_eq!(block.delay_since_last_sr, 0x0005_4000);
        // The SR's sender gets the block back 6.125 s after sending the SR.
        let arrival = NtpTimestamp(0x0000_b710_8000_0000);
        assert_eq!(
            crate::rtcp::round_trip_time(arrival, &block),
            Some(Duration::from_millis(6125))
        );
    }

    #[test]
    fn sender_stats_count_packets_and_payload_octets() {
        let mut sender = SenderStats::default();
        for _ in 0..50 {
            sender.on_packet_sent(160);
        }
        let info = sender.sender_info(std::time::UNIX_EPOCH + Duration::from_secs(1), 8000);
        assert_eq!(
            (info.packet_count, info.octet_count, info.rtp_timestamp),
            (50, 8000, 8000)
        );
        assert_eq!(info.ntp_timestamp.0 >> 32, 2_208_988_801);
    }
}
