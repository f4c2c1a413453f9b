//! `raft-node`: one raft-store node as a process; see `raft_store::standalone`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    raft_store::standalone::run(raft_store::standalone::Args::parse()).await
}
