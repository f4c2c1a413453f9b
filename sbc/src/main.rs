use anyhow::Context;
use clap::Parser;
use sbc::{Args, Sbc};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    let sbc = Sbc::start(&config).await.context("starting the SBC")?;
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
