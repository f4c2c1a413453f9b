//! The browser softphone page, served over HTTPS with the SBC's own
//! certificate (so a browser that accepted it for the page accepts it for
//! the WSS listener too). The page and its JsSIP bundle are compiled into
//! the binary: `softphone/dist/softphone.js` is built from
//! `softphone/src` by `npm run build` (esbuild) and committed, so a
//! fresh clone builds without Node; tests/run-all.sh rebuilds it from the
//! locked npm packages and fails if it differs from the committed one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

const INDEX_HTML: &str = include_str!("../softphone/index.html");
const BUNDLE_JS: &str = include_str!("../softphone/dist/softphone.js");

/// A TLS handshake that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTPS listener as axum sees it: handshakes run in their own tasks,
/// so a slow client cannot stall others; finished ones queue here.
struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (its socket failed): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

fn app(wss_port: u16) -> axum::Router {
    let config = format!("{{\"wss_port\":{wss_port}}}");
    axum::Router::new()
        .route(
            "/",
            axum::routing::get(|| async {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML)
            }),
        )
        .route(
            "/softphone.js",
            axum::routing::get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    BUNDLE_JS,
                )
            }),
        )
        .route(
            "/config.json",
            axum::routing::get(move || {
                let config = config.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], config).into_response() }
            }),
        )
}

/// Serves the page on `listen`; the page registers over WSS to `wss_port`.
pub async fn serve(
    listen: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    wss_port: u16,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls);
    let (queue, ready) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        let accepting = async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    // Out of descriptors and the like: try again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let queue = queue.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = queue.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "softphone page: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "softphone page: TLS handshake timed out"),
                    }
                });
            }
        };
        let serving = axum::serve(TlsListener { local, ready }, app(wss_port));
        tokio::select! {
            () = accepting => {}
            served = serving => if let Err(e) = served {
                tracing::error!(error = %e, "softphone page listener stopped");
            },
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_the_bundle_which_holds_jssip() {
        assert!(INDEX_HTML.contains("<script src=\"softphone.js\">"));
        assert!(BUNDLE_JS.contains("JsSIP"), "JsSIP is bundled");
        assert!(BUNDLE_JS.contains("config.json"), "our code is bundled");
    }
}
