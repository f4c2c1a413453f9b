//! The `pbx-node` binary: reads the configuration, starts the node and
//! runs until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Parser;
use pbx_node::{Args, PbxNode};

// jemalloc, not glibc malloc: measured under 2,000 REGISTER/s, glibc kept
// about half of the leader's heap (350 of 710 MB) as free memory it never
// returned, spread over the per-thread arenas the runtime's workers use;
// jemalloc hands freed pages back after its decay time.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // openraft's info lines narrate every election step: keep them for RUST_LOG.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,openraft=warn".into());
    if args.log_json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = args.resolve().context("configuration")?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let node = PbxNode::start(&config).await.context("starting node")?;
    if !node.new_demo_credentials.is_empty() {
        // Shown once: only the HA1 hashes are stored.
        println!("demo tenant DEMO (domain demo.pbx.local) credentials:");
        for c in &node.new_demo_credentials {
            println!(
                "  extension {}  username {}  password {}",
                c.number, c.username, c.password
            );
        }
    }
    if let Some(password) = &node.new_admin_password {
        // Shown once: only the argon2 hash is stored.
        println!("system administrator: username admin  password {password}");
    }
    println!(
        "management API: http://{}/api/v1 (OpenAPI: /api/v1/openapi.json)",
        node.http.addr
    );
    println!(
        "ready sip_udp={} sip_tcp={}",
        node.sip.udp_addr, node.sip.tcp_addr
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    node.shutdown().await;
    Ok(())
}
