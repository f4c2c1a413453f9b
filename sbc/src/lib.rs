//! sbc: the edge of the appliance, the only process phones talk to. It
//! owns every client connection (UDP, TCP, TLS, WSS), proxies signalling to
//! healthy pbx-nodes while hiding them, and relays every call's RTP. See
//! README.md.

pub mod challenge;
pub mod config;
pub mod dispatch;
pub mod drained;
pub mod guard;
pub mod keepalive;
pub mod log_throttle;
pub mod proxy;
pub mod relay;
pub mod server;
pub mod softphone;
#[cfg(test)]
mod test_metrics;
pub mod tls;
pub mod token;
pub mod webrtc;

pub use config::{Args, SbcConfig};
pub use server::{Sbc, SbcError, Status};
