//! The node's HTTP listener: Prometheus metrics at `/metrics` and the CDR
//! listing at `/api/v1/tenants/{code}/cdrs`. It binds to loopback by
//! default because the management API's authentication (roles, tokens)
//! is not built yet; until then whoever can reach it may read CDRs.

use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::model::Cdr;
use crate::repo::Repo;

/// Most CDRs one request returns (PortSIP's `top` limit).
const MAX_TOP: u64 = 100;

#[derive(Clone)]
struct HttpState {
    repo: Repo,
    registry: prometheus::Registry,
}

/// The bound HTTP listener.
pub struct HttpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub async fn start(
        listen: SocketAddr,
        repo: Repo,
        registry: prometheus::Registry,
    ) -> std::io::Result<HttpServer> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/api/v1/tenants/{code}/cdrs", get(list_cdrs))
            .with_state(HttpState { repo, registry });
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
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

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Serialize)]
struct ErrorDetail {
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

fn error(
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                code,
                message,
                field,
            },
        }),
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let mut text = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut text) {
        Ok(()) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics",
            e.to_string(),
            None,
        ),
    }
}

#[derive(Debug, Deserialize)]
struct CdrQuery {
    /// Calls started at or after this UTC unix millisecond.
    since: Option<u64>,
    top: Option<u64>,
}

#[derive(Debug, Serialize)]
struct CdrList {
    items: Vec<Cdr>,
}

async fn list_cdrs(
    State(state): State<HttpState>,
    Path(code): Path<String>,
    query: Result<Query<CdrQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "since and top must be non-negative integers".into(),
            None,
        );
    };
    let top = query.top.unwrap_or(MAX_TOP);
    if top == 0 || top > MAX_TOP {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_top",
            format!("top must be between 1 and {MAX_TOP}"),
            Some("top"),
        );
    }
    let tenant = match state.repo.tenant_by_code(&code).await {
        Ok(Some(tenant)) => tenant,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no tenant with code {code}"),
                None,
            )
        }
        Err(e) => return unavailable(&e),
    };
    match state
        .repo
        .cdrs(&tenant.id, query.since.unwrap_or(0), top)
        .await
    {
        Ok(items) => Json(CdrList { items }).into_response(),
        Err(e) => unavailable(&e),
    }
}

fn unavailable(e: &crate::repo::RepoError) -> Response {
    tracing::warn!(error = %e, "CDR listing failed");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
        None,
    )
}
