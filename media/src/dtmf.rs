//! DTMF: RFC 4733 telephone-events (sender and receiver) and in-band
//! detection with the Goertzel algorithm.

use std::collections::VecDeque;
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DtmfError {
    #[error("telephone-event payload is {0} bytes, expected at least 4")]
    ShortPayload(usize),
    #[error("event code {0} is not a DTMF digit (0-15)")]
    NotADigit(u8),
    #[error("'{0}' is not a DTMF digit")]
    BadDigitChar(char),
    #[error("volume {0} out of range 0..=63 (-dBm0)")]
    BadVolume(u8),
    #[error("duration {0} samples exceeds the 16-bit duration field")]
    DurationTooLong(u32),
}

/// A DTMF digit, stored as its RFC 4733 event code (0-9, * = 10, # = 11,
/// A-D = 12-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digit(u8);

const DIGIT_CHARS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

impl Digit {
    pub fn from_event_code(code: u8) -> Result<Self, DtmfError> {
        if usize::from(code) < DIGIT_CHARS.len() {
            Ok(Digit(code))
        } else {
            Err(DtmfError::NotADigit(code))
        }
    }

    pub fn from_char(c: char) -> Result<Self, DtmfError> {
        let upper = c.to_ascii_uppercase();
        DIGIT_CHARS
            .iter()
            .position(|d| *d == upper)
            .map(|i| Digit(i as u8))
            .ok_or(DtmfError::BadDigitChar(c))
    }

    pub fn event_code(self) -> u8 {
        self.0
    }

    pub fn as_char(self) -> char {
        DIGIT_CHARS.get(usize::from(self.0)).copied().unwrap_or('?')
    }
}

/// The 4-byte telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    /// Power level in -dBm0 (0..=63).
    pub volume: u8,
    /// In timestamp units since the event's start.
    pub duration: u16,
}

impl TelephoneEvent {
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(TelephoneEvent {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3f,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(DtmfError::ShortPayload(payload.len())),
        }
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let [d0, d1] = self.duration.to_be_bytes();
        [
            self.event,
            u8::from(self.end) << 7 | (self.volume & 0x3f),
            d0,
            d1,
        ]
    }
}

/// One RTP packet's worth of a telephone-event, to be wrapped by the
/// caller's RTP session (which owns SSRC and sequence numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    pub marker: bool,
    /// The event's start timestamp, the same in every packet of the event.
    pub timestamp: u32,
    pub payload: [u8; 4],
}

/// Number of times the final packet is sent, for robustness (RFC 4733
/// §2.5.1.4 recommends three).
const END_REPEATS: u8 = 3;

/// Generates the packets of one digit press, one per call to
/// [`next_packet`](Self::next_packet) (i.e. per packetisation interval).
#[derive(Debug, Clone)]
pub struct DtmfSender {
    digit: Digit,
    timestamp: u32,
    volume: u8,
    total: u16,
    step: u16,
    sent_duration: u16,
    ends_sent: u8,
}

impl DtmfSender {
    /// `timestamp` is the RTP timestamp at which the tone starts;
    /// `duration` and `packet_interval` are in timestamp units (e.g. 800 and
    /// 160 for 100 ms in 20 ms packets at 8 kHz).
    pub fn new(
        digit: Digit,
        timestamp: u32,
        duration: u32,
        packet_interval: u16,
        volume: u8,
    ) -> Result<Self, DtmfError> {
        if volume > 63 {
            return Err(DtmfError::BadVolume(volume));
        }
        let total = u16::try_from(duration).map_err(|_| DtmfError::DurationTooLong(duration))?;
        Ok(DtmfSender {
            digit,
            timestamp,
            volume,
            total,
            step: packet_interval.max(1),
            sent_duration: 0,
            ends_sent: 0,
        })
    }

    pub fn is_finished(&self) -> bool {
        self.ends_sent >= END_REPEATS
    }

    pub fn next_packet(&mut self) -> Option<EventPacket> {
        if self.is_finished() {
            return None;
        }
        let first = self.sent_duration == 0 && self.ends_sent == 0;
        let end = self.sent_duration.saturating_add(self.step) >= self.total || self.ends_sent > 0;
        if end {
            self.sent_duration = self.total;
            self.ends_sent += 1;
        } else {
            self.sent_duration += self.step;
        }
        let event = TelephoneEvent {
            event: self.digit.event_code(),
            end,
            volume: self.volume,
            duration: self.sent_duration,
        };
        Some(EventPacket {
            marker: first,
            timestamp: self.timestamp,
            payload: event.to_bytes(),
        })
    }
}

/// What the receiver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEvent {
    /// First packet of a new press: enough for barge-in.
    Started(Digit),
    /// The press is over; `duration` in timestamp units.
    Ended { digit: Digit, duration: u16 },
}

#[derive(Debug, Clone, Copy)]
struct CurrentEvent {
    timestamp: u32,
    digit: Digit,
    duration: u16,
    ended: bool,
}

/// Turns a stream of telephone-event packets into presses. An event is
/// identified by its timestamp, so the redundant end packets collapse and
/// two presses of the same digit stay separate.
#[derive(Debug, Default)]
pub struct DtmfReceiver {
    current: Option<CurrentEvent>,
    events: VecDeque<DtmfEvent>,
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the RTP timestamp and payload of one telephone-event packet.
    /// Events that are not digits (e.g. flash) are ignored.
    pub fn handle_packet(&mut self, timestamp: u32, payload: &[u8]) -> Result<(), DtmfError> {
        let event = TelephoneEvent::parse(payload)?;
        let Ok(digit) = Digit::from_event_code(event.event) else {
            return Ok(());
        };
        match &mut self.current {
            Some(current) if current.timestamp == timestamp => {
                if current.ended {
                    return Ok(());
                }
                current.duration = current.duration.max(event.duration);
                if event.end {
                    current.ended = true;
                    self.events.push_back(DtmfEvent::Ended {
                        digit: current.digit,
                        duration: current.duration,
                    });
                }
            }
            Some(current) if timestamp.wrapping_sub(current.timestamp) as i32 <= 0 => {
                // A straggler from an older event.
            }
            slot => {
                if let Some(previous) = slot.take() {
                    if !previous.ended {
                        // All end packets of the previous press were lost.
                        self.events.push_back(DtmfEvent::Ended {
                            digit: previous.digit,
                            duration: previous.duration,
                        });
                    }
                }
                self.events.push_back(DtmfEvent::Started(digit));
                if event.end {
                    self.events.push_back(DtmfEvent::Ended {
                        digit,
                        duration: event.duration,
                    });
                }
                *slot = Some(CurrentEvent {
                    timestamp,
                    digit,
                    duration: event.duration,
                    ended: event.end,
                });
            }
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.events.pop_front()
    }
}

const ROW_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMN_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYPAD: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];

/// Block length: 205 samples at 8 kHz puts the eight DTMF frequencies
/// close to bin centres while keeping blocks ~25 ms.
pub const GOERTZEL_BLOCK: usize = 205;
/// Minimum mean power per sample (about -33 dBm0 per tone).
const MIN_TONE_POWER: f32 = 3.0e4;
/// The two tones must carry this share of the block's energy.
const MIN_TONE_SHARE: f32 = 0.6;
/// Strongest row/column must beat the others in its group by 8 dB.
const MIN_PEAK_RATIO: f32 = 6.3;
/// Column tone may be 8 dB above the row (normal twist) or 4 dB below
/// (reverse twist).
const MAX_NORMAL_TWIST: f32 = 6.3;
const MAX_REVERSE_TWIST: f32 = 2.5;

/// Power of one frequency in `samples` (Goertzel), normalised so a sine
/// of amplitude A gives about A²/2 regardless of block length.
pub fn goertzel_power(samples: &[i16], frequency_hz: f32, sample_rate_hz: f32) -> f32 {
    let coefficient = 2.0 * (2.0 * std::f32::consts::PI * frequency_hz / sample_rate_hz).cos();
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for sample in samples {
        let s0 = f32::from(*sample) + coefficient * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let n = samples.len().max(1) as f32;
    (s1 * s1 + s2 * s2 - coefficient * s1 * s2) * 2.0 / (n * n)
}

fn strongest(powers: &[f32; 4]) -> (usize, f32, f32) {
    let mut best = 0;
    for (i, p) in powers.iter().enumerate() {
        if *p > powers[best] {
            best = i;
        }
    }
    let runner_up = powers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != best)
        .map(|(_, p)| *p)
        .fold(0.0, f32::max);
    (best, powers[best], runner_up)
}

/// The digit present in one block, if the block passes every check.
fn classify_block(block: &[i16]) -> Option<Digit> {
    let n = block.len().max(1) as f32;
    let mean_power = block
        .iter()
        .map(|s| f32::from(*s) * f32::from(*s))
        .sum::<f32>()
        / n;
    if mean_power < MIN_TONE_POWER {
        return None;
    }
    let rows = ROW_HZ.map(|f| goertzel_power(block, f, 8000.0));
    let columns = COLUMN_HZ.map(|f| goertzel_power(block, f, 8000.0));
    let (row, row_power, row_runner_up) = strongest(&rows);
    let (column, column_power, column_runner_up) = strongest(&columns);
    let passes = row_power > MIN_PEAK_RATIO * row_runner_up
        && column_power > MIN_PEAK_RATIO * column_runner_up
        && column_power < MAX_NORMAL_TWIST * row_power
        && row_power < MAX_REVERSE_TWIST * column_power
        && row_power + column_power > MIN_TONE_SHARE * mean_power;
    if !passes {
        return None;
    }
    let key = KEYPAD.get(row).and_then(|r| r.get(column)).copied()?;
    Digit::from_char(key).ok()
}

/// In-band DTMF detector for 8 kHz audio. A digit is reported once when it
/// has been seen in two consecutive blocks; the same digit is reported
/// again only after at least one block without it.
#[derive(Debug, Default)]
pub struct InbandDetector {
    block: Vec<i16>,
    candidate: Option<Digit>,
    reported: Option<Digit>,
}

impl InbandDetector {
    pub fn new() -> Self {
        InbandDetector {
            block: Vec::with_capacity(GOERTZEL_BLOCK),
            candidate: None,
            reported: None,
        }
    }

    /// Feeds audio of any length; returns digits whose press began in it.
    pub fn push_samples(&mut self, samples: &[i16], detected: &mut Vec<Digit>) {
        for sample in samples {
            self.block.push(*sample);
            if self.block.len() == GOERTZEL_BLOCK {
                let digit = classify_block(&self.block);
                self.block.clear();
                if let Some(d) = self.on_block(digit) {
                    detected.push(d);
                }
            }
        }
    }

    fn on_block(&mut self, digit: Option<Digit>) -> Option<Digit> {
        let confirmed = digit.is_some() && digit == self.candidate;
        self.candidate = digit;
        match digit {
            None => {
                self.reported = None;
                None
            }
            Some(d) if confirmed && self.reported != Some(d) => {
                self.reported = Some(d);
                Some(d)
            }
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digit(c: char) -> Digit {
        Digit::from_char(c).unwrap()
    }

    #[test]
    fn digits_map_to_event_codes() {
        assert_eq!(digit('5').event_code(), 5);
        assert_eq!(digit('*').event_code(), 10);
        assert_eq!(digit('#').event_code(), 11);
        assert_eq!(digit('d').event_code(), 15);
        assert_eq!(Digit::from_event_code(11).unwrap().as_char(), '#');
        assert_eq!(Digit::from_event_code(16), Err(DtmfError::NotADigit(16)));
        assert_eq!(Digit::from_char('x'), Err(DtmfError::BadDigitChar('x')));
    }

    #[test]
    fn sender_emits_marker_updates_and_three_ends() {
        let mut sender = DtmfSender::new(digit('7'), 48_000, 800, 160, 10).unwrap();
        let mut packets = Vec::new();
        while let Some(p) = sender.next_packet() {
            packets.push(p);
        }
        assert_eq!(packets.len(), 4 + 3, "4 updates of 160 then 3 ends at 800");
        assert!(packets[0].marker);
        assert!(packets[1..].iter().all(|p| !p.marker));
        assert!(packets.iter().all(|p| p.timestamp == 48_000));
        let events: Vec<TelephoneEvent> = packets
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        let durations: Vec<u16> = events.iter().map(|e| e.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = events.iter().map(|e| e.end).collect();
        assert_eq!(ends, vec![false, false, false, false, true, true, true]);
        assert!(events.iter().all(|e| e.event == 7 && e.volume == 10));
        assert!(sender.is_finished());
        assert_eq!(
            DtmfSender::new(digit('1'), 0, 70_000, 160, 10).unwrap_err(),
            DtmfError::DurationTooLong(70_000)
        );
        assert_eq!(
            DtmfSender::new(digit('1'), 0, 800, 160, 64).unwrap_err(),
            DtmfError::BadVolume(64)
        );
    }

    fn send(receiver: &mut DtmfReceiver, d: char, timestamp: u32) {
        let mut sender = DtmfSender::new(digit(d), timestamp, 640, 160, 10).unwrap();
        while let Some(p) = sender.next_packet() {
            receiver.handle_packet(p.timestamp, &p.payload).unwrap();
        }
    }

    fn drain(receiver: &mut DtmfReceiver) -> Vec<DtmfEvent> {
        std::iter::from_fn(|| receiver.poll_event()).collect()
    }

    #[test]
    fn receiver_collapses_redundant_ends_and_separates_repeats() {
        let mut receiver = DtmfReceiver::new();
        send(&mut receiver, '5', 1000);
        send(&mut receiver, '5', 3000);
        send(&mut receiver, '#', 5000);
        let five = digit('5');
        assert_eq!(
            drain(&mut receiver),
            vec![
                DtmfEvent::Started(five),
                DtmfEvent::Ended {
                    digit: five,
                    duration: 640
                },
                DtmfEvent::Started(five),
                DtmfEvent::Ended {
                    digit: five,
                    duration: 640
                },
                DtmfEvent::Started(digit('#')),
                DtmfEvent::Ended {
                    digit: digit('#'),
                    duration: 640
                },
            ]
        );
    }

    #[test]
    fn receiver_survives_lost_start_and_lost_ends() {
        let mut receiver = DtmfReceiver::new();
        // Start packet lost: the first update still starts the press.
        let update = TelephoneEvent {
            event: 2,
            end: false,
            volume: 10,
            duration: 320,
        };
        receiver.handle_packet(100, &update.to_bytes()).unwrap();
        // All end packets lost; the next press closes this one.
        let next = TelephoneEvent {
            event: 3,
            end: false,
            volume: 10,
            duration: 160,
        };
        receiver.handle_packet(2000, &next.to_bytes()).unwrap();
        // A reordered packet of the old press is ignored.
        receiver
            .handle_packet(
                100,
                &TelephoneEvent {
                    end: true,
                    ..update
                }
                .to_bytes(),
            )
            .unwrap();
        assert_eq!(
            drain(&mut receiver),
            vec![
                DtmfEvent::Started(digit('2')),
                DtmfEvent::Ended {
                    digit: digit('2'),
                    duration: 320
                },
                DtmfEvent::Started(digit('3')),
            ]
        );
        assert_eq!(
            receiver.handle_packet(0, &[1, 2]),
            Err(DtmfError::ShortPayload(2))
        );
    }

    /// Deterministic pseudo-random noise so the test is reproducible.
    fn noise(state: &mut u32) -> f32 {
        *state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (*state >> 16) as f32 / 65_536.0 - 0.5
    }

    fn tones(
        frequencies: &[f32],
        amplitude: f32,
        samples: usize,
        noise_amplitude: f32,
        seed: u32,
    ) -> Vec<i16> {
        let mut state = seed;
        (0..samples)
            .map(|n| {
                let t = n as f32 / 8000.0;
                let tone: f32 = frequencies
                    .iter()
                    .map(|f| amplitude * (2.0 * std::f32::consts::PI * f * t).sin())
                    .sum();
                (tone + noise_amplitude * noise(&mut state)) as i16
            })
            .collect()
    }

    fn detect(audio: &[i16]) -> String {
        let mut detector = InbandDetector::new();
        let mut found = Vec::new();
        // Feed in 20 ms frames as the media path would.
        for frame in audio.chunks(160) {
            detector.push_samples(frame, &mut found);
        }
        found.iter().map(|d| d.as_char()).collect()
    }

    fn key_audio(keys: &str, noise_amplitude: f32) -> Vec<i16> {
        let mut audio = Vec::new();
        for key in keys.chars() {
            let (row, column) = (0..4)
                .flat_map(|r| (0..4).map(move |c| (r, c)))
                .find(|(r, c)| KEYPAD[*r][*c] == key)
                .unwrap();
            audio.extend(tones(
                &[ROW_HZ[row], COLUMN_HZ[column]],
                6000.0,
                800,
                noise_amplitude,
                7,
            ));
            audio.extend(tones(&[], 0.0, 480, noise_amplitude, 11));
        }
        audio
    }

    #[test]
    fn detects_every_key_including_repeats() {
        assert_eq!(
            detect(&key_audio("123A456B789C*0#D", 0.0)),
            "123A456B789C*0#D"
        );
        assert_eq!(detect(&key_audio("55", 0.0)), "55");
    }

    #[test]
    fn detects_digits_in_noise() {
        // Noise at about 15 dB below each tone.
        assert_eq!(detect(&key_audio("1590#", 2000.0)), "1590#");
    }

    #[test]
    fn ignores_non_dtmf_sounds() {
        let single_tone = tones(&[1000.0], 8000.0, 8000, 0.0, 1);
        assert_eq!(detect(&single_tone), "");
        let dial_tone = tones(&[350.0, 440.0], 6000.0, 8000, 0.0, 1);
        assert_eq!(detect(&dial_tone), "");
        // A row tone plus a non-column tone is not a digit.
        let off_grid = tones(&[770.0, 1100.0], 6000.0, 8000, 0.0, 1);
        assert_eq!(detect(&off_grid), "");
        let noise_only = tones(&[], 0.0, 8000, 20000.0, 3);
        assert_eq!(detect(&noise_only), "");
    }

    #[test]
    fn a_single_block_blip_is_not_a_digit() {
        let mut audio = tones(&[697.0, 1209.0], 6000.0, 205, 0.0, 1);
        audio.extend(tones(&[], 0.0, 1000, 0.0, 1));
        assert_eq!(detect(&audio), "");
    }
}
