//! pbx-node: the PBX core of the appliance: configuration, the
//! tenant/extension model in raft-store, tenant resolution, digest
//! authentication, the registrar and the B2BUA (sans-IO cores with tokio
//! drivers), and CDRs. See README.md.

pub mod access;
pub mod accounts;
pub mod api;
pub mod auth;
pub mod b2bua;
pub mod blobs;
pub mod config;
pub mod demo;
pub mod directory;
pub mod http;
pub mod media;
pub mod model;
pub mod node;
pub mod portal;
pub mod recording;
pub mod registrar;
pub mod repo;
mod repo_admin;
pub mod retention;
pub mod server;
pub mod service;

pub use config::{Args, NodeConfig};
pub use node::{NodeError, PbxNode};
pub use repo::Repo;
