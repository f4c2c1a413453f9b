//! What the SBC's integration tests share: a configuration on loopback
//! and a minimal HTTP client for its admin and metrics listener.

use std::net::SocketAddr;
use std::path::Path;

use sbc::SbcConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Every listener on a free port of 127.0.0.1, state in `dir`.
pub fn loopback_config(dir: &Path) -> SbcConfig {
    SbcConfig {
        udp_listen: localhost(),
        tcp_listen: localhost(),
        tls_listen: localhost(),
        wss_listen: localhost(),
        https_listen: localhost(),
        public_host: Some("127.0.0.1".into()),
        internal_listen: localhost(),
        http_listen: localhost(),
        data_dir: dir.join("sbc"),
        rtp_port_min: 42_000,
        rtp_port_max: 42_099,
        media_public_bind: "127.0.0.1".parse().expect("IP"),
        ..SbcConfig::default()
    }
}

/// `POST` (or `GET`) on the SBC's HTTP listener: status code and body.
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("read");
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = reply
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}
