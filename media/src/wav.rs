//! WAV files: reading prompts (8 kHz mono 16-bit PCM, A-law or µ-law) and
//! writing recordings (mono or stereo) with a streaming writer whose header
//! is patched on `finish`, so a long call never sits in memory.

use crate::g711::Law;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;
use thiserror::Error;

const FORMAT_PCM: u16 = 1;
const FORMAT_ALAW: u16 = 6;
const FORMAT_MULAW: u16 = 7;
const FORMAT_EXTENSIBLE: u16 = 0xfffe;
const EXPECTED: &str = "expected 8000 Hz mono 16-bit PCM or G.711";

#[derive(Debug, Error)]
pub enum WavError {
    #[error("{file}: {found}; {EXPECTED}")]
    UnsupportedFormat { file: String, found: String },
    #[error("{file}: not a WAV file: {reason}")]
    Malformed { file: String, reason: &'static str },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("writing WAV: {0}")]
    Write(#[from] io::Error),
    #[error("a WAV file cannot hold more than 4 GiB of audio")]
    TooLong,
}

/// Sample encoding of a WAV file this crate reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WavEncoding {
    Pcm16,
    G711(Law),
}

impl WavEncoding {
    fn format_tag(self) -> u16 {
        match self {
            WavEncoding::Pcm16 => FORMAT_PCM,
            WavEncoding::G711(Law::ALaw) => FORMAT_ALAW,
            WavEncoding::G711(Law::MuLaw) => FORMAT_MULAW,
        }
    }

    fn bytes_per_sample(self) -> u16 {
        match self {
            WavEncoding::Pcm16 => 2,
            WavEncoding::G711(_) => 1,
        }
    }
}

/// Audio read from a WAV file, decoded to 16-bit linear samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavAudio {
    pub encoding: WavEncoding,
    pub samples: Vec<i16>,
}

/// The `fmt ` chunk as found, for the error message.
struct FoundFormat {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
}

impl fmt::Display for FoundFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels = match self.channels {
            1 => "mono".to_string(),
            2 => "stereo".to_string(),
            n => format!("{n}-channel"),
        };
        let encoding = match self.tag {
            FORMAT_PCM => "PCM".to_string(),
            FORMAT_ALAW => "A-law".to_string(),
            FORMAT_MULAW => "µ-law".to_string(),
            3 => "IEEE float".to_string(),
            FORMAT_EXTENSIBLE => "extensible".to_string(),
            other => format!("format tag {other}"),
        };
        write!(
            f,
            "{} Hz {} {}-bit {}",
            self.rate, channels, self.bits, encoding
        )
    }
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at + 2)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a prompt from memory; `name` is used in error messages.
pub fn parse_wav(name: &str, bytes: &[u8]) -> Result<WavAudio, WavError> {
    let malformed = |reason| WavError::Malformed {
        file: name.to_string(),
        reason,
    };
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..12) != Some(b"WAVE") {
        return Err(malformed("missing RIFF/WAVE header"));
    }
    let mut at = 12;
    let mut format = None;
    while let (Some(id), Some(size)) = (bytes.get(at..at + 4), le_u32(bytes, at + 4)) {
        let body_start = at + 8;
        let size = size as usize;
        // Writers that never patched the size leave 0 or too large a value
        // for data; read what is there.
        let body = bytes
            .get(body_start..body_start.saturating_add(size))
            .or_else(|| {
                if id == b"data" {
                    bytes.get(body_start..)
                } else {
                    None
                }
            });
        let body = body.ok_or_else(|| malformed("chunk runs past the end of the file"))?;
        match id {
            b"fmt " => {
                let found = FoundFormat {
                    tag: le_u16(body, 0).ok_or_else(|| malformed("fmt chunk too short"))?,
                    channels: le_u16(body, 2).ok_or_else(|| malformed("fmt chunk too short"))?,
                    rate: le_u32(body, 4).ok_or_else(|| malformed("fmt chunk too short"))?,
                    bits: le_u16(body, 14).ok_or_else(|| malformed("fmt chunk too short"))?,
                };
                let encoding = match (found.tag, found.channels, found.rate, found.bits) {
                    (FORMAT_PCM, 1, 8000, 16) => WavEncoding::Pcm16,
                    (FORMAT_ALAW, 1, 8000, 8) => WavEncoding::G711(Law::ALaw),
                    (FORMAT_MULAW, 1, 8000, 8) => WavEncoding::G711(Law::MuLaw),
                    _ => {
                        return Err(WavError::UnsupportedFormat {
                            file: name.to_string(),
                            found: found.to_string(),
                        })
                    }
                };
                format = Some(encoding);
            }
            b"data" => {
                let encoding = format.ok_or_else(|| malformed("data chunk before fmt chunk"))?;
                let samples = match encoding {
                    WavEncoding::Pcm16 => body
                        .chunks_exact(2)
                        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
                        .collect(),
                    WavEncoding::G711(law) => {
                        body.iter().map(|code| law.decode_sample(*code)).collect()
                    }
                };
                return Ok(WavAudio { encoding, samples });
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        at = body_start.saturating_add(size).saturating_add(size % 2);
    }
    Err(malformed("no data chunk"))
}

/// Reads a prompt from disk.
pub fn read_wav_file(path: &Path) -> Result<WavAudio, WavError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| WavError::Io {
        file: name.clone(),
        source,
    })?;
    parse_wav(&name, &bytes)
}

const HEADER_LEN: u32 = 44;

/// Streams 8 kHz audio into a WAV file. Stereo input is interleaved
/// (left, right, left, ...).
pub struct WavWriter<W: Write + Seek> {
    out: W,
    encoding: WavEncoding,
    channels: u16,
    data_bytes: u32,
    encode_buffer: Vec<u8>,
}

impl<W: Write + Seek> WavWriter<W> {
    pub fn new(mut out: W, encoding: WavEncoding, channels: u16) -> io::Result<Self> {
        out.write_all(&header(encoding, channels, 0))?;
        Ok(WavWriter {
            out,
            encoding,
            channels,
            data_bytes: 0,
            encode_buffer: Vec::new(),
        })
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    /// Appends samples (interleaved when stereo).
    pub fn write_samples(&mut self, samples: &[i16]) -> Result<(), WavError> {
        self.encode_buffer.clear();
        match self.encoding {
            WavEncoding::Pcm16 => self
                .encode_buffer
                .extend(samples.iter().flat_map(|s| s.to_le_bytes())),
            WavEncoding::G711(law) => self
                .encode_buffer
                .extend(samples.iter().map(|s| law.encode_sample(*s))),
        }
        let added = u32::try_from(self.encode_buffer.len()).map_err(|_| WavError::TooLong)?;
        let total = self
            .data_bytes
            .checked_add(added)
            .filter(|t| *t <= u32::MAX - HEADER_LEN)
            .ok_or(WavError::TooLong)?;
        self.out.write_all(&self.encode_buffer)?;
        self.data_bytes = total;
        Ok(())
    }

    /// Patches the sizes into the header and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if self.data_bytes % 2 == 1 {
            self.out.write_all(&[0])?;
        }
        self.out.seek(SeekFrom::Start(0))?;
        self.out
            .write_all(&header(self.encoding, self.channels, self.data_bytes))?;
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Completes a file a [`WavWriter`] was writing when the process died:
/// keeps every whole sample frame written, cuts a partial one, and writes
/// the sizes into the header. Returns the samples per channel kept. A file
/// that does not begin with our header is refused, untouched.
pub fn complete_interrupted(
    path: &Path,
    encoding: WavEncoding,
    channels: u16,
) -> Result<u64, WavError> {
    let name = path.display().to_string();
    let io = |source: io::Error| WavError::Io {
        file: name.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let mut head = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut head).map_err(io)?;
    let expected = header(encoding, channels, 0);
    // Everything but the two size fields must be what the writer wrote.
    let same = |range: std::ops::Range<usize>| head.get(range.clone()) == expected.get(range);
    if !(same(0..4) && same(8..40)) {
        return Err(WavError::Malformed {
            file: name,
            reason: "not a recording this system started",
        });
    }
    let length = file.metadata().map_err(io)?.len();
    let block = u64::from(encoding.bytes_per_sample() * channels);
    let frames = (length.saturating_sub(u64::from(HEADER_LEN)) / block)
        .min(u64::from((u32::MAX - HEADER_LEN) / block as u32));
    let data_bytes = u32::try_from(frames * block).map_err(|_| WavError::TooLong)?;
    file.set_len(u64::from(HEADER_LEN) + u64::from(data_bytes))
        .map_err(io)?;
    if data_bytes % 2 == 1 {
        file.seek(SeekFrom::End(0)).map_err(io)?;
        file.write_all(&[0]).map_err(io)?;
    }
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header(encoding, channels, data_bytes))
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(frames)
}

fn header(encoding: WavEncoding, channels: u16, data_bytes: u32) -> [u8; HEADER_LEN as usize] {
    let block_align = encoding.bytes_per_sample() * channels;
    let padded = data_bytes + data_bytes % 2;
    let mut h = [0u8; HEADER_LEN as usize];
    let fields: [&[u8]; 13] = [
        b"RIFF",
        &(HEADER_LEN - 8 + padded).to_le_bytes(),
        b"WAVE",
        b"fmt ",
        &16u32.to_le_bytes(),
        &encoding.format_tag().to_le_bytes(),
        &channels.to_le_bytes(),
        &crate::SAMPLE_RATE.to_le_bytes(),
        &(crate::SAMPLE_RATE * u32::from(block_align)).to_le_bytes(),
        &block_align.to_le_bytes(),
        &(encoding.bytes_per_sample() * 8).to_le_bytes(),
        b"data",
        &data_bytes.to_le_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        if let Some(dst) = h.get_mut(at..at + field.len()) {
            dst.copy_from_slice(field);
        }
        at += field.len();
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn write(encoding: WavEncoding, channels: u16, samples: &[i16]) -> Vec<u8> {
        let mut writer = WavWriter::new(Cursor::new(Vec::new()), encoding, channels).unwrap();
        writer.write_samples(samples).unwrap();
        writer.finish().unwrap().into_inner()
    }

    #[test]
    fn pcm_round_trips() {
        let samples: Vec<i16> = (0..1000).map(|i| (i * 37 - 15_000) as i16).collect();
        let bytes = write(WavEncoding::Pcm16, 1, &samples);
        assert_eq!(bytes.len(), 44 + 2000);
        assert_eq!(&bytes[40..44], &2000u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &(36u32 + 2000).to_le_bytes());
        let audio = parse_wav("a.wav", &bytes).unwrap();
        assert_eq!(
            audio,
            WavAudio {
                encoding: WavEncoding::Pcm16,
                samples
            }
        );
    }

    #[test]
    fn g711_files_decode_through_the_codec() {
        for law in [Law::ALaw, Law::MuLaw] {
            let samples: Vec<i16> = (-20..21).map(|i| i * 1500).collect();
            let bytes = write(WavEncoding::G711(law), 1, &samples);
            assert_eq!(
                u16::from_le_bytes([bytes[20], bytes[21]]),
                if law == Law::ALaw { 6 } else { 7 }
            );
            // 41 bytes of data: padded to even.
            assert_eq!(bytes.len(), 44 + 42);
            let audio = parse_wav("g.wav", &bytes).unwrap();
            assert_eq!(audio.encoding, WavEncoding::G711(law));
            let expected: Vec<i16> = samples
                .iter()
                .map(|s| law.decode_sample(law.encode_sample(*s)))
                .collect();
            assert_eq!(audio.samples, expected);
        }
    }

    #[test]
    fn skips_unknown_chunks_including_odd_sized_ones() {
        let bytes = write(WavEncoding::Pcm16, 1, &[1, 2, 3]);
        let mut with_list = bytes[..36].to_vec();
        with_list.extend_from_slice(b"LIST");
        with_list.extend_from_slice(&3u32.to_le_bytes());
        with_list.extend_from_slice(b"abc\0");
        with_list.extend_from_slice(&bytes[36..]);
        assert_eq!(
            parse_wav("l.wav", &with_list).unwrap().samples,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn stereo_is_written_interleaved_but_not_accepted_as_a_prompt() {
        let bytes = write(WavEncoding::Pcm16, 2, &[1, -1, 2, -2]);
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2);
        assert_eq!(u16::from_le_bytes([bytes[32], bytes[33]]), 4, "block align");
        let err = parse_wav("rec.wav", &bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "rec.wav: 8000 Hz stereo 16-bit PCM; expected 8000 Hz mono 16-bit PCM or G.711"
        );
    }

    #[test]
    fn other_formats_get_a_clear_error() {
        let mut cd_quality = write(WavEncoding::Pcm16, 2, &[0; 4]);
        cd_quality[24..28].copy_from_slice(&44_100u32.to_le_bytes());
        let err = parse_wav("prompt.wav", &cd_quality).unwrap_err();
        assert_eq!(
            err.to_string(),
            "prompt.wav: 44100 Hz stereo 16-bit PCM; expected 8000 Hz mono 16-bit PCM or G.711"
        );
        let mut float = write(WavEncoding::Pcm16, 1, &[0; 4]);
        float[20..22].copy_from_slice(&3u16.to_le_bytes());
        float[34..36].copy_from_slice(&32u16.to_le_bytes());
        assert_eq!(
            parse_wav("f.wav", &float).unwrap_err().to_string(),
            "f.wav: 8000 Hz mono 32-bit IEEE float; expected 8000 Hz mono 16-bit PCM or G.711"
        );
    }

    #[test]
    fn malformed_files_are_errors_not_panics() {
        let good = write(WavEncoding::Pcm16, 1, &[5; 10]);
        for cut in [0, 4, 11, 12, 20, 30, 43] {
            assert!(
                matches!(
                    parse_wav("c.wav", &good[..cut]),
                    Err(WavError::Malformed { .. })
                ),
                "cut at {cut}"
            );
        }
        // Truncated data chunk (e.g. a recorder that crashed) still reads.
        assert_eq!(
            parse_wav("t.wav", &good[..50]).unwrap().samples,
            vec![5, 5, 5]
        );
        let mut no_fmt = good.clone();
        no_fmt[12..16].copy_from_slice(b"junk");
        assert!(matches!(
            parse_wav("n.wav", &no_fmt),
            Err(WavError::Malformed { .. })
        ));
        assert!(matches!(
            parse_wav("x.wav", b"not a wav file at all"),
            Err(WavError::Malformed { .. })
        ));
    }

    #[test]
    fn reads_from_disk_and_names_missing_files() {
        let dir = std::env::temp_dir().join(format!("media-wav-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hello.wav");
        std::fs::write(&path, write(WavEncoding::G711(Law::MuLaw), 1, &[0; 160])).unwrap();
        assert_eq!(read_wav_file(&path).unwrap().samples.len(), 160);
        let missing = dir.join("missing.wav");
        let err = read_wav_file(&missing).unwrap_err();
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_recording_is_completed_up_to_its_last_whole_frame() {
        let dir = std::env::temp_dir().join(format!("media-wav-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cut.wav");
        // A stereo writer that died after 100 frames and one odd byte,
        // never patching its header.
        let mut writer =
            WavWriter::new(std::fs::File::create(&path).unwrap(), WavEncoding::Pcm16, 2).unwrap();
        let samples: Vec<i16> = (0..200).map(|i| i as i16).collect();
        writer.write_samples(&samples).unwrap();
        drop(writer);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&[7]).unwrap();
        drop(file);

        assert_eq!(
            complete_interrupted(&path, WavEncoding::Pcm16, 2).unwrap(),
            100
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 400);
        assert_eq!(&bytes[40..44], &400u32.to_le_bytes(), "data size");
        assert_eq!(&bytes[4..8], &(36u32 + 400).to_le_bytes(), "RIFF size");
        assert_eq!(i16::from_le_bytes([bytes[442], bytes[443]]), 199);

        // Anything else is refused and left alone.
        std::fs::write(&path, b"RIFF....WAVEjunk and more junk than a header").unwrap();
        assert!(complete_interrupted(&path, WavEncoding::Pcm16, 2).is_err());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"RIFF....WAVEjunk and more junk than a header"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
