//! Call recorder: both legs of a call into one WAV file, mixed to mono or
//! one leg per stereo channel. Each leg is placed on a shared timeline by
//! its RTP timestamps, so lost packets become silence and the legs stay
//! aligned however their packets arrive.

use crate::g711::Law;
use crate::rtp::RtpPacket;
use crate::wav::{WavEncoding, WavError, WavWriter};
use crate::{Leg, SAMPLE_RATE};
use std::io::{Seek, Write};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordingLayout {
    /// Both legs summed (saturating) into one channel.
    Mixed,
    /// Leg A left, leg B right.
    Stereo,
}

/// How long audio is held back before being written, so reordered packets
/// still land in place.
pub const DEFAULT_HOLD_BACK: Duration = Duration::from_millis(200);
/// A timestamp further than this from the expected position means the
/// source restarted: re-anchor the leg on arrival time.
const MAX_TIMESTAMP_JUMP: u64 = 10 * SAMPLE_RATE as u64;

#[derive(Debug, Default)]
struct LegTimeline {
    /// (ssrc, RTP timestamp, timeline position) of the anchoring packet.
    anchor: Option<(u32, u32, u64)>,
    /// Samples from the recorder's written position onwards.
    pending: Vec<i16>,
}

pub struct CallRecorder<W: Write + Seek> {
    writer: WavWriter<W>,
    layout: RecordingLayout,
    start: Instant,
    hold_back: Duration,
    /// Samples per channel already written.
    written: u64,
    legs: [LegTimeline; 2],
    out: Vec<i16>,
}

fn position_at(start: Instant, now: Instant) -> u64 {
    (now.saturating_duration_since(start).as_nanos() * u128::from(SAMPLE_RATE) / 1_000_000_000)
        as u64
}

impl<W: Write + Seek> CallRecorder<W> {
    pub fn new(
        out: W,
        encoding: WavEncoding,
        layout: RecordingLayout,
        start: Instant,
    ) -> Result<Self, WavError> {
        let channels = match layout {
            RecordingLayout::Mixed => 1,
            RecordingLayout::Stereo => 2,
        };
        Ok(CallRecorder {
            writer: WavWriter::new(out, encoding, channels)?,
            layout,
            start,
            hold_back: DEFAULT_HOLD_BACK,
            written: 0,
            legs: Default::default(),
            out: Vec::new(),
        })
    }

    /// Adds decoded audio from one leg's packet.
    pub fn push(
        &mut self,
        leg: Leg,
        ssrc: u32,
        rtp_timestamp: u32,
        samples: &[i16],
        arrival: Instant,
    ) {
        let arrival_position = position_at(self.start, arrival);
        let written = self.written;
        let timeline = &mut self.legs[leg.index()];
        let position = match timeline.anchor {
            Some((anchor_ssrc, anchor_ts, anchor_pos)) if anchor_ssrc == ssrc => {
                let offset = i64::from(rtp_timestamp.wrapping_sub(anchor_ts) as i32);
                let position = anchor_pos as i64 + offset;
                if position.abs_diff(arrival_position as i64) <= MAX_TIMESTAMP_JUMP {
                    Some(position)
                } else {
                    None
                }
            }
            _ => None,
        };
        let position = position.unwrap_or_else(|| {
            timeline.anchor = Some((ssrc, rtp_timestamp, arrival_position));
            arrival_position as i64
        });
        // Drop whatever falls before the written position (too late).
        let skip = (written as i64 - position).max(0) as usize;
        let Some(samples) = samples.get(skip..) else {
            return;
        };
        let start = (position + skip as i64 - written as i64) as usize;
        let end = start + samples.len();
        if timeline.pending.len() < end {
            timeline.pending.resize(end, 0);
        }
        if let Some(dst) = timeline.pending.get_mut(start..end) {
            dst.copy_from_slice(samples);
        }
    }

    /// Adds one leg's RTP packet if it carries G.711; anything else
    /// (telephone-event, another codec, not RTP) is left out. Returns
    /// whether the packet was used.
    pub fn push_rtp(&mut self, leg: Leg, packet: &[u8], arrival: Instant) -> bool {
        let Ok(packet) = RtpPacket::parse(packet) else {
            return false;
        };
        let Some(law) = Law::from_payload_type(packet.payload_type) else {
            return false;
        };
        // One G.711 byte per sample; an Ethernet frame holds < 1500.
        let mut samples = [0i16; 1500];
        let count = packet.payload.len().min(samples.len());
        law.decode(&packet.payload[..count], &mut samples[..count]);
        self.push(
            leg,
            packet.ssrc,
            packet.timestamp,
            &samples[..count],
            arrival,
        );
        true
    }

    /// Writes everything older than the hold-back; call periodically.
    pub fn flush(&mut self, now: Instant) -> Result<(), WavError> {
        let due = position_at(self.start, now)
            .saturating_sub(position_at(self.start, self.start + self.hold_back));
        self.write_until(due)
    }

    /// Writes all buffered audio and completes the WAV header.
    pub fn finish(mut self) -> Result<W, WavError> {
        let end = self.written
            + self
                .legs
                .iter()
                .map(|l| l.pending.len() as u64)
                .max()
                .unwrap_or(0);
        self.write_until(end)?;
        Ok(self.writer.finish()?)
    }

    fn write_until(&mut self, position: u64) -> Result<(), WavError> {
        let count = position.saturating_sub(self.written) as usize;
        if count == 0 {
            return Ok(());
        }
        let [a, b] = &mut self.legs;
        let sample = |pending: &[i16], i: usize| pending.get(i).copied().unwrap_or(0);
        self.out.clear();
        for i in 0..count {
            let (left, right) = (sample(&a.pending, i), sample(&b.pending, i));
            match self.layout {
                RecordingLayout::Mixed => self.out.push(left.saturating_add(right)),
                RecordingLayout::Stereo => self.out.extend([left, right]),
            }
        }
        for leg in [a, b] {
            leg.pending.drain(..count.min(leg.pending.len()));
        }
        self.written = position;
        self.writer.write_samples(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wav::parse_wav;
    use std::io::Cursor;

    const FRAME: Duration = Duration::from_millis(20);

    fn stereo_channels(bytes: &[u8]) -> (Vec<i16>, Vec<i16>) {
        // parse_wav refuses stereo prompts, so read the data directly.
        let data: Vec<i16> = bytes[44..]
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect();
        (
            data.iter().step_by(2).copied().collect(),
            data.iter().skip(1).step_by(2).copied().collect(),
        )
    }

    #[test]
    fn rtp_packets_are_decoded_and_telephone_events_left_out() {
        let t0 = Instant::now();
        let mut recorder = CallRecorder::new(
            Cursor::new(Vec::new()),
            WavEncoding::Pcm16,
            RecordingLayout::Stereo,
            t0,
        )
        .unwrap();
        let ulaw = [Law::MuLaw.encode_sample(1000); 160];
        let alaw = [Law::ALaw.encode_sample(-2000); 160];
        let voice_a = RtpPacket::new(0, 1, 0, 7, &ulaw).to_vec().unwrap();
        let voice_b = RtpPacket::new(8, 1, 0, 9, &alaw).to_vec().unwrap();
        let event = RtpPacket::new(101, 2, 160, 7, &[5, 0x8a, 0, 160])
            .to_vec()
            .unwrap();
        assert!(recorder.push_rtp(Leg::A, &voice_a, t0));
        assert!(recorder.push_rtp(Leg::B, &voice_b, t0));
        assert!(!recorder.push_rtp(Leg::A, &event, t0 + FRAME));
        assert!(!recorder.push_rtp(Leg::A, b"not rtp", t0 + FRAME));
        let bytes = recorder.finish().unwrap().into_inner();
        let (left, right) = stereo_channels(&bytes);
        assert_eq!(left.len(), 160, "the event added no audio");
        assert!(
            left.iter().all(|s| (s - 1000).abs() < 40),
            "{:?}",
            &left[..4]
        );
        assert!(
            right.iter().all(|s| (s + 2000).abs() < 80),
            "{:?}",
            &right[..4]
        );
    }

    #[test]
    fn stereo_keeps_legs_aligned_across_loss_and_reordering() {
        let t0 = Instant::now();
        let mut recorder = CallRecorder::new(
            Cursor::new(Vec::new()),
            WavEncoding::Pcm16,
            RecordingLayout::Stereo,
            t0,
        )
        .unwrap();
        // Leg A: frames 0..10 with frame 3 lost and frames 5/6 swapped.
        // Leg B starts 2 frames later with an unrelated timestamp base.
        let order_a = [0u32, 1, 2, 4, 6, 5, 7, 8, 9];
        for (slot, frame) in order_a.iter().enumerate() {
            let arrival = t0 + FRAME * slot as u32 + Duration::from_millis(3);
            recorder.push(
                Leg::A,
                1,
                1000 + frame * 160,
                &[(frame + 1) as i16; 160],
                arrival,
            );
            if slot >= 2 {
                let b_frame = slot as u32 - 2;
                recorder.push(
                    Leg::B,
                    2,
                    90_000 + b_frame * 160,
                    &[-100 - b_frame as i16; 160],
                    arrival,
                );
            }
            recorder.flush(arrival).unwrap();
        }
        let bytes = recorder.finish().unwrap().into_inner();
        let (left, right) = stereo_channels(&bytes);
        assert_eq!(left.len(), right.len());
        // Both legs were anchored by packets arriving 3 ms (24 samples)
        // into their slot.
        let base = 24;
        assert!(left[..base].iter().all(|s| *s == 0));
        for frame in 0..10usize {
            let expected = if frame == 3 { 0 } else { frame as i16 + 1 };
            let at = base + frame * 160;
            assert!(
                left[at..at + 160].iter().all(|s| *s == expected),
                "A frame {frame}"
            );
        }
        assert!(
            right[..base + 320].iter().all(|s| *s == 0),
            "B silent before it started"
        );
        for b_frame in 0..7usize {
            let at = base + (b_frame + 2) * 160;
            assert!(
                right[at..at + 160]
                    .iter()
                    .all(|s| *s == -100 - b_frame as i16),
                "B frame {b_frame}"
            );
        }
    }

    #[test]
    fn mixed_layout_saturates_and_decodes_as_a_mono_prompt() {
        let t0 = Instant::now();
        let mut recorder = CallRecorder::new(
            Cursor::new(Vec::new()),
            WavEncoding::Pcm16,
            RecordingLayout::Mixed,
            t0,
        )
        .unwrap();
        recorder.push(Leg::A, 1, 0, &[30_000; 160], t0);
        recorder.push(Leg::B, 2, 0, &[10_000; 160], t0);
        recorder.push(Leg::A, 1, 160, &[-30_000; 160], t0 + FRAME);
        recorder.push(Leg::B, 2, 160, &[-10_000; 160], t0 + FRAME);
        recorder.push(Leg::A, 1, 320, &[100; 160], t0 + FRAME * 2);
        recorder.push(Leg::B, 2, 320, &[-30; 160], t0 + FRAME * 2);
        let audio = parse_wav("mix.wav", &recorder.finish().unwrap().into_inner()).unwrap();
        assert_eq!(audio.samples.len(), 480);
        assert!(audio.samples[..160].iter().all(|s| *s == i16::MAX));
        assert!(audio.samples[160..320].iter().all(|s| *s == i16::MIN));
        assert!(audio.samples[320..].iter().all(|s| *s == 70));
    }

    #[test]
    fn late_packets_are_dropped_and_ssrc_change_reanchors() {
        let t0 = Instant::now();
        let mut recorder = CallRecorder::new(
            Cursor::new(Vec::new()),
            WavEncoding::Pcm16,
            RecordingLayout::Mixed,
            t0,
        )
        .unwrap();
        recorder.push(Leg::A, 1, 0, &[1; 160], t0);
        recorder.flush(t0 + Duration::from_secs(1)).unwrap();
        // Frame 1 arrives after its slot was written: dropped.
        recorder.push(Leg::A, 1, 160, &[9; 160], t0 + Duration::from_secs(1));
        // A new source (transfer) with a random timestamp base lands at
        // its arrival time.
        recorder.push(
            Leg::A,
            7,
            123_456,
            &[5; 160],
            t0 + Duration::from_millis(1200),
        );
        let audio = parse_wav("r.wav", &recorder.finish().unwrap().into_inner()).unwrap();
        let samples = audio.samples;
        assert_eq!(samples.len(), 9600 + 160);
        assert!(samples[..160].iter().all(|s| *s == 1));
        assert!(samples[160..9600].iter().all(|s| *s == 0));
        assert!(samples[9600..].iter().all(|s| *s == 5));
    }
}
