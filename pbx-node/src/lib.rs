//! pbx-node: the PBX core of the appliance. This slice holds the
//! configuration, the tenant/extension model in raft-store, tenant
//! resolution and the registrar (sans-IO core plus tokio driver).
//! See README.md.

pub mod config;
pub mod demo;
pub mod model;
pub mod node;
pub mod registrar;
pub mod repo;
pub mod server;
pub mod service;
pub mod tenant;

pub use config::{Args, NodeConfig};
pub use node::{NodeError, PbxNode};
pub use repo::Repo;
