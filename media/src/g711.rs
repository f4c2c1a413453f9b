//! G.711 µ-law (PCMU, payload type 0) and A-law (PCMA, payload type 8),
//! bit-exact with ITU-T G.711 and the G.191 reference conversion from
//! 16-bit left-justified linear samples.
//!
//! Decoding uses 256-entry tables built at compile time; encoding computes
//! the segment from the position of the highest set bit, which is cheaper
//! than a 64K table in cache.

/// The two G.711 companding laws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    MuLaw,
    ALaw,
}

impl Law {
    /// Static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::MuLaw => 0,
            Law::ALaw => 8,
        }
    }

    pub fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Law::MuLaw),
            8 => Some(Law::ALaw),
            _ => None,
        }
    }

    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            Law::MuLaw => linear_to_ulaw(sample),
            Law::ALaw => linear_to_alaw(sample),
        }
    }

    pub fn decode_sample(self, code: u8) -> i16 {
        match self {
            Law::MuLaw => ulaw_to_linear(code),
            Law::ALaw => alaw_to_linear(code),
        }
    }

    /// Encodes `samples` into `out`, stopping at the shorter of the two.
    pub fn encode(self, samples: &[i16], out: &mut [u8]) {
        for (code, sample) in out.iter_mut().zip(samples) {
            *code = self.encode_sample(*sample);
        }
    }

    /// Decodes `codes` into `out`, stopping at the shorter of the two.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) {
        for (sample, code) in out.iter_mut().zip(codes) {
            *sample = self.decode_sample(*code);
        }
    }
}

/// µ-law bias: adding 33 (in 14-bit units) makes every segment start at a
/// power of two.
const ULAW_BIAS: u16 = 33;
const ULAW_MAX_BIASED: u16 = 0x1fff;

pub fn linear_to_ulaw(sample: i16) -> u8 {
    // Negative values use the one's complement, so v and -v-1 share an
    // interval (G.191); the 16-bit input carries 14 significant bits.
    let (sign, magnitude) = if sample < 0 {
        (0x80u8, (!sample >> 2) as u16)
    } else {
        (0x00, (sample >> 2) as u16)
    };
    let biased = (magnitude + ULAW_BIAS).min(ULAW_MAX_BIASED);
    // biased is in [32 << segment, 64 << segment).
    let segment = (15 - biased.leading_zeros() as u16) - 5;
    let quant = (biased >> (segment + 1)) & 0x0f;
    !(sign | (segment << 4) as u8 | quant as u8)
}

const fn ulaw_decode(code: u8) -> i16 {
    let bits = !code;
    let segment = (bits >> 4) & 0x07;
    let quant = (bits & 0x0f) as i32;
    let magnitude = (((2 * quant + 33) << segment) - 33) * 4;
    if bits & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

pub fn linear_to_alaw(sample: i16) -> u8 {
    let (sign, magnitude) = if sample < 0 {
        (0x00u8, (!sample >> 4) as u16)
    } else {
        (0x80, (sample >> 4) as u16)
    };
    // 12-bit magnitude: segment 0 is [0, 16), segment s >= 1 is
    // [16 << (s-1), 32 << (s-1)) with 16 steps each.
    let code = if magnitude < 16 {
        magnitude as u8
    } else {
        let segment = 16 - magnitude.leading_zeros() as u16 - 4;
        ((segment << 4) | ((magnitude >> (segment - 1)) & 0x0f)) as u8
    };
    // Even bits are inverted on the line to keep ones density up.
    (sign | code) ^ 0x55
}

const fn alaw_decode(code: u8) -> i16 {
    let bits = code ^ 0x55;
    let segment = ((bits >> 4) & 0x07) as i32;
    let quant = (bits & 0x0f) as i32;
    let magnitude = if segment == 0 {
        (quant << 4) + 8
    } else {
        (((quant + 16) << 4) + 8) << (segment - 1)
    };
    if bits & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

const fn build_table(law: Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = match law {
            Law::MuLaw => ulaw_decode(code as u8),
            Law::ALaw => alaw_decode(code as u8),
        };
        code += 1;
    }
    table
}

static ULAW_TO_LINEAR: [i16; 256] = build_table(Law::MuLaw);
static ALAW_TO_LINEAR: [i16; 256] = build_table(Law::ALaw);

pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One quantisation interval of the ITU tables, on the magnitude scale
    /// the law works in (14-bit for µ-law, 13-bit for A-law).
    struct Interval {
        lower: i32,
        decoded: i32,
    }

    /// µ-law per G.711 Table 2: 8 segments of 16 intervals, end points 1,
    /// 31, 95, 223, 479, 991, 2015, 4063, 8159; segment 0 has a first
    /// interval of width 1 (decoded as 0) then steps of 2, segment s >= 1
    /// steps of 2^(s+1). Decoded value is the interval midpoint.
    fn ulaw_intervals() -> Vec<Interval> {
        let mut intervals = vec![Interval {
            lower: 0,
            decoded: 0,
        }];
        let mut lower = 1;
        for _ in 1..16 {
            intervals.push(Interval {
                lower,
                decoded: lower + 1,
            });
            lower += 2;
        }
        for segment in 1..8 {
            let width = 2 << segment;
            for _ in 0..16 {
                intervals.push(Interval {
                    lower,
                    decoded: lower + width / 2,
                });
                lower += width;
            }
        }
        assert_eq!(lower, 8159);
        intervals
    }

    /// A-law per G.711 Table 1 on the 4096 scale: segments 0 and 1 step 2,
    /// then the step doubles per segment up to 128; decoded value is the
    /// midpoint.
    fn alaw_intervals() -> Vec<Interval> {
        let mut intervals = Vec::new();
        let mut lower = 0;
        for segment in 0..8 {
            let width = if segment == 0 { 2 } else { 1 << segment };
            for _ in 0..16 {
                intervals.push(Interval {
                    lower,
                    decoded: lower + width / 2,
                });
                lower += width;
            }
        }
        assert_eq!(lower, 4096);
        intervals
    }

    /// Reference µ-law encoder: scale to 14 bits (floor), take the
    /// magnitude with G.191's one's complement for negatives, find the
    /// interval by search, clip to the last one. Codes are 0xFF - index for
    /// positive and 0x7F - index for negative values.
    fn reference_ulaw(sample: i16) -> u8 {
        let v = i32::from(sample) >> 2;
        let (negative, magnitude) = if v < 0 { (true, -v - 1) } else { (false, v) };
        let index = ulaw_intervals()
            .iter()
            .rposition(|i| magnitude >= i.lower)
            .unwrap() as u8;
        if negative {
            0x7f - index
        } else {
            0xff - index
        }
    }

    fn reference_alaw(sample: i16) -> u8 {
        let v = i32::from(sample) >> 3;
        let (negative, magnitude) = if v < 0 { (true, -v - 1) } else { (false, v) };
        let index = alaw_intervals()
            .iter()
            .rposition(|i| magnitude >= i.lower)
            .unwrap() as u8;
        let sign = if negative { 0 } else { 0x80 };
        (sign | index) ^ 0x55
    }

    fn code_index(code: u8) -> (bool, usize) {
        (code & 0x80 == 0, usize::from(code & 0x7f))
    }

    #[test]
    fn ulaw_decodes_all_codes_to_itu_values() {
        let intervals = ulaw_intervals();
        for code in 0..=255u8 {
            let (negative, inverted) = code_index(code);
            let index = 0x7f - inverted;
            let magnitude = intervals[index].decoded * 4;
            let expected = if negative { -magnitude } else { magnitude };
            assert_eq!(
                i32::from(ulaw_to_linear(code)),
                expected,
                "code {code:#04x}"
            );
        }
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
    }

    #[test]
    fn alaw_decodes_all_codes_to_itu_values() {
        let intervals = alaw_intervals();
        for code in 0..=255u8 {
            let (negative, index) = code_index(code ^ 0x55);
            let magnitude = intervals[index].decoded * 8;
            let expected = if negative { -magnitude } else { magnitude };
            assert_eq!(
                i32::from(alaw_to_linear(code)),
                expected,
                "code {code:#04x}"
            );
        }
        assert_eq!(alaw_to_linear(0xd5), 8);
        assert_eq!(alaw_to_linear(0xaa), 32256);
    }

    #[test]
    fn ulaw_encodes_every_linear_value_like_the_reference() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(
                linear_to_ulaw(sample),
                reference_ulaw(sample),
                "sample {sample}"
            );
        }
    }

    #[test]
    fn alaw_encodes_every_linear_value_like_the_reference() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(
                linear_to_alaw(sample),
                reference_alaw(sample),
                "sample {sample}"
            );
        }
    }

    #[test]
    fn code_to_linear_to_code_is_identity() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
            // µ-law has two zeros: 0xFF (+0) and 0x7F (-0) both decode to 0,
            // which encodes back to the positive zero.
            let expected = if code == 0x7f { 0xff } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "µ-law {code:#04x}"
            );
        }
        assert_eq!(ulaw_to_linear(0x7f), 0);
        assert_eq!(ulaw_to_linear(0xff), 0);
    }

    #[test]
    fn law_helpers_convert_buffers_and_payload_types() {
        let samples = [0i16, 1000, -1000, i16::MAX, i16::MIN];
        for law in [Law::MuLaw, Law::ALaw] {
            let mut codes = [0u8; 5];
            law.encode(&samples, &mut codes);
            let mut back = [0i16; 5];
            law.decode(&codes, &mut back);
            for (original, decoded) in samples.iter().zip(back) {
                assert!(
                    (i32::from(*original) - i32::from(decoded)).abs() <= 1024,
                    "{law:?} {original} {decoded}"
                );
            }
            assert_eq!(Law::from_payload_type(law.payload_type()), Some(law));
        }
        assert_eq!(Law::from_payload_type(9), None);
    }
}
