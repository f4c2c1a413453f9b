//! One raft-store node as its own process (`raft-node`, and `raft-bench
//! node`): for the multi-process tests, the benchmark and for poking at a
//! cluster by hand. Prints `ready` on stdout once it serves requests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::{NodeIdentity, RaftStore, StoreConfig};
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Run one raft-store node")]
pub struct Args {
    /// Node id, unique in the cluster.
    #[arg(long, env = "RAFT_NODE_ID")]
    id: u64,
    /// UDP address for QUIC.
    #[arg(long, env = "RAFT_LISTEN")]
    listen: SocketAddr,
    #[arg(long, env = "RAFT_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, env = "RAFT_CLUSTER_ID", default_value = "pbx")]
    cluster_id: String,
    /// PEM files: the cluster CA, this node's certificate and key.
    #[arg(long)]
    ca_cert: PathBuf,
    #[arg(long)]
    cert: PathBuf,
    #[arg(long)]
    key: PathBuf,
    /// Bootstrap a one-node cluster if this node was never initialized.
    #[arg(long)]
    init: bool,
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    #[arg(long, default_value_t = 250)]
    election_min_ms: u64,
    #[arg(long, default_value_t = 500)]
    election_max_ms: u64,
}

/// Runs a node until SIGINT.
pub async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("{}", p.display()));
    let identity = NodeIdentity {
        ca_pem: read(&args.ca_cert)?,
        cert_pem: read(&args.cert)?,
        key_pem: read(&args.key)?,
    };
    let mut config = StoreConfig::new(args.id, args.listen, &args.data_dir, identity);
    config.cluster_id = args.cluster_id;
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_ms);
    config.election_timeout_min = Duration::from_millis(args.election_min_ms);
    config.election_timeout_max = Duration::from_millis(args.election_max_ms);
    let store = RaftStore::start(config, &prometheus::Registry::new()).await?;
    if args.init && !store.raft().is_initialized().await? {
        store.initialize().await?;
    }
    println!("ready");
    tokio::signal::ctrl_c().await?;
    store.shutdown().await;
    Ok(())
}
