//! SIP for the PBX appliance, shared by `pbx-node` and `sbc`: message
//! framing, parsing and validation on top of rsip, server digest
//! authentication, sans-IO transaction and dialog state machines, and the
//! tokio transports (UDP, TCP, TLS, WS, WSS). See README.md.

pub mod auth;
pub mod dialog;
pub mod endpoint;
pub mod message;
pub mod sdp;
pub mod tenancy;
mod text;
pub mod transaction;
pub mod transport;
pub mod validate;
