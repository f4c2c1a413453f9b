//! raft-store: the replicated key-value store every PBX node shares.
//!
//! An etcd-KV-v3-shaped API (revisions, txn, leases, watch) over openraft,
//! with the Raft log, vote and state machine in one RocksDB per node and a
//! QUIC + mutual-TLS transport between nodes. See README.md.

pub mod client;
mod codec;
pub mod data_dir;
mod kv_state;
mod lease_keeper;
mod log_store;
pub mod metrics;
pub mod network;
mod node;
mod pending;
pub mod snapshot;
pub mod standalone;
mod state_machine;
#[cfg(test)]
mod storage_suite;
pub mod tls;
pub mod types;
mod watch;

pub use client::{ClientReply, ClientRequest, NodeStatus, RemoteClient, StoreError};
pub use data_dir::DataDirError;
pub use node::{RaftStore, StartError, StoreConfig};
pub use tls::{ClusterCa, NodeIdentity};
pub use types::*;
pub use watch::Watcher;
