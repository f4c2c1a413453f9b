//! Connection limits at the edge: the per-IP cap is enforced in the accept
//! loop (a connection over it is closed before any handshake, and a slot
//! frees when a connection ends), a TLS handshake that does not finish in
//! time is cut, and each is counted in `/metrics`.

mod common;

use std::time::Duration;

use common::{http, loopback_config};
use sbc::{Sbc, SbcConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Whether the server closed `stream` within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        timeout(wait, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn metric(metrics: &str, line_start: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_ip_cap_and_slow_handshakes_are_cut_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = SbcConfig {
        tls_handshake_timeout_ms: 500,
        ..loopback_config(dir.path())
    };
    config.guard.max_connections_per_ip = 3;
    let sbc = Sbc::start(&config).await.expect("start SBC");
    let short = Duration::from_millis(300);

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(sbc.tcp).await.expect("connect");
        assert!(!closed_within(&mut stream, short).await, "within the cap");
        held.push(stream);
    }
    let mut over = TcpStream::connect(sbc.tcp).await.expect("connect");
    assert!(closed_within(&mut over, short).await, "the 4th is closed");
    // The cap is per IP across transports: TLS is refused too.
    let mut over_tls = TcpStream::connect(sbc.tls).await.expect("connect");
    assert!(closed_within(&mut over_tls, short).await);

    // A connection ending frees its slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A TLS connection that never says hello is cut after 500 ms.
    let mut silent = TcpStream::connect(sbc.tls).await.expect("connect");
    assert!(
        !closed_within(&mut silent, short).await,
        "a free slot again"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(2)).await,
        "cut at the handshake timeout"
    );

    let (_, metrics) = http(sbc.http, "GET", "/metrics").await;
    assert_eq!(
        metric(&metrics, "sbc_connections_refused_total{reason=\"limit\"}"),
        2.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "sbc_handshake_timeouts_total"), 1.0);
    sbc.stop();
}
