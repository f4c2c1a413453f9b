use anyhow::Context;
use clap::Parser;
use sbc::{Args, Sbc, SbcConfig};

// jemalloc, as in pbx-node, not glibc malloc: every SIP message is a few
// dozen short-lived allocations, and jemalloc's thread caches make them
// cheap. Measured in sbc-bench.sh, same machine: calls/s through the SBC
// 1,700–2,000 → 2,300–2,600, relayed calls per core about 1,100 →
// 1,200–1,500, and an idle TLS connection 20.4 → 11.8 KiB (glibc kept its
// handshake's freed memory in the arena).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Signalling runs on a single-threaded runtime on a thread of its own,
/// media on a multi-threaded one (`media_threads`): see
/// `Sbc::start_with_media`.
fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = args.resolve().context("configuration")?;
    let media_threads = config.media_threads();
    tracing::info!(threads = media_threads, "media runtime");
    let media = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(media_threads)
        .thread_name("sbc-media")
        .enable_all()
        .build()
        .context("starting the media runtime")?;
    let media = media.handle().clone();
    std::thread::Builder::new()
        .name("sbc-signalling".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the signalling runtime")?
                .block_on(run(config, media))
        })
        .context("starting the signalling thread")?
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the signalling thread panicked")))
}

async fn run(config: SbcConfig, media: tokio::runtime::Handle) -> anyhow::Result<()> {
    // Soft limit up to the hard one (systemd gives services 1,024 soft):
    // 10,000 phones on TLS and the relays' ports need far more. Short of
    // descriptors, calls go unrelayed and connections are refused.
    let needed = config.open_files_needed();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < needed => tracing::warn!(
            limit,
            needed,
            "open files limit below one descriptor per RTP port and connection: \
             raise LimitNOFILE (or ulimit -n)"
        ),
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "open files limit not raised"),
    }
    let sbc = Sbc::start_with_media(&config, media)
        .await
        .context("starting the SBC")?;
    println!(
        "SBC ready: SIP udp/tcp {} tls {} wss {}; pbx-nodes {:?}",
        sbc.udp, sbc.tls, sbc.wss, config.nodes
    );
    println!(
        "Browser softphone: https://{}:{}/",
        config.public_host(),
        sbc.https.port()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    sbc.stop();
    Ok(())
}
