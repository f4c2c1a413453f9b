//! Media engine of the PBX: everything that touches audio packets and
//! samples, and nothing that knows about SIP.
//!
//! Protocol logic is sans-IO (state machines fed packets and `Instant`s);
//! the only IO lives in [`pacing`] (tokio timer) and [`relay::udp`] (tokio
//! UDP sockets).

pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod mixer;
pub mod pacing;
pub mod player;
pub mod ports;
pub mod recorder;
pub mod relay;
pub mod rtcp;
pub mod rtp;
pub mod stats;
pub mod wav;

/// Sample rate of narrowband telephony audio (G.711, RFC 4733 events).
pub const SAMPLE_RATE: u32 = 8000;
/// Samples in one 20 ms frame at 8 kHz, the packetisation used throughout.
pub const FRAME_SAMPLES: usize = 160;
/// One 20 ms frame of 16-bit linear audio.
pub type Frame = [i16; FRAME_SAMPLES];
/// A frame of digital silence.
pub const SILENT_FRAME: Frame = [0; FRAME_SAMPLES];

/// One of the two legs of a call (caller side and callee side).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    /// 0 for A, 1 for B: the index into per-leg arrays.
    pub fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}
