//! The node's HTTP listener: Prometheus metrics at `/metrics`, the
//! management API under `/api/v1` (see [`crate::api`]) and the web portal
//! at `/` (see [`crate::portal`]). Every error outside the portal's HTML
//! pages, its own or axum's, has the API's error shape.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tokio::task::JoinHandle;

use crate::api::error::{uniform_errors, ApiError};
use crate::api::ApiState;

/// The bound HTTP listener.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(
        listen: SocketAddr,
        api: ApiState,
        registry: prometheus::Registry,
    ) -> std::io::Result<HttpServer> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .with_state(registry)
            .merge(crate::api::router(api.clone()))
            .merge(crate::portal::router(api))
            .layer(axum::middleware::from_fn(uniform_errors));
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service).await {
                tracing::error!(error = %e, "HTTP listener stopped");
            }
        });
        tracing::info!(%addr, "HTTP listening");
        Ok(HttpServer { addr, task })
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn metrics(State(registry): State<prometheus::Registry>) -> Result<Response, ApiError> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut text)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
