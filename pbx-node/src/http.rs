//! The node's HTTP listener: Prometheus metrics at `/metrics`, the CDR
//! listing at `/api/v1/tenants/{code}/cdrs`, the recordings at
//! `/api/v1/tenants/{code}/recordings` and each one's audio at
//! `.../recordings/{id}/audio`. It binds to loopback by default because
//! the management API's authentication (roles, tokens) is not built yet;
//! until then whoever can reach it may read CDRs and recordings.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::blobs::{BlobError, BlobStore};
use crate::model::{Cdr, Recording, Tenant};
use crate::repo::{Repo, RepoError};

/// Most records one request returns (PortSIP's `top` limit).
const MAX_TOP: u64 = 100;

#[derive(Clone)]
struct HttpState {
    repo: Repo,
    blobs: Arc<dyn BlobStore>,
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
        blobs: Arc<dyn BlobStore>,
        registry: prometheus::Registry,
    ) -> std::io::Result<HttpServer> {
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/api/v1/tenants/{code}/cdrs", get(list_cdrs))
            .route("/api/v1/tenants/{code}/recordings", get(list_recordings))
            .route(
                "/api/v1/tenants/{code}/recordings/{id}/audio",
                get(recording_audio),
            )
            .with_state(HttpState {
                repo,
                blobs,
                registry,
            });
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

/// An API error: `{"error":{"code","message","field"}}` with its status.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            code,
            message,
            field: None,
        }
    }

    fn not_found(message: String) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// The store could not answer (no leader, node shutting down).
    fn unavailable(e: &RepoError) -> Self {
        tracing::warn!(error = %e, "store read failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                field: self.field,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Result<Response, ApiError> {
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&state.registry.gather(), &mut text)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// `since` and `top` of a time-ordered listing.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Records of calls started at or after this UTC unix millisecond.
    since: Option<u64>,
    top: Option<u64>,
}

type QueryResult = Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>;

#[derive(Debug, Serialize)]
struct ItemList<T> {
    items: Vec<T>,
}

/// The checked `(since, top)` of a listing.
fn list_bounds(query: QueryResult) -> Result<(u64, u64), ApiError> {
    let Ok(Query(query)) = query else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "since and top must be non-negative integers".into(),
        ));
    };
    let top = query.top.unwrap_or(MAX_TOP);
    if top == 0 || top > MAX_TOP {
        return Err(ApiError {
            field: Some("top"),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_top",
                format!("top must be between 1 and {MAX_TOP}"),
            )
        });
    }
    Ok((query.since.unwrap_or(0), top))
}

async fn tenant_of(state: &HttpState, code: &str) -> Result<Tenant, ApiError> {
    match state.repo.tenant_by_code(code).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(ApiError::not_found(format!("no tenant with code {code}"))),
        Err(e) => Err(ApiError::unavailable(&e)),
    }
}

async fn list_cdrs(
    State(state): State<HttpState>,
    Path(code): Path<String>,
    query: QueryResult,
) -> Result<Json<ItemList<Cdr>>, ApiError> {
    let (since, top) = list_bounds(query)?;
    let tenant = tenant_of(&state, &code).await?;
    let items = state
        .repo
        .cdrs(&tenant.id, since, top)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(ItemList { items }))
}

async fn list_recordings(
    State(state): State<HttpState>,
    Path(code): Path<String>,
    query: QueryResult,
) -> Result<Json<ItemList<Recording>>, ApiError> {
    let (since, top) = list_bounds(query)?;
    let tenant = tenant_of(&state, &code).await?;
    let items = state
        .repo
        .recordings(&tenant.id, since, top)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(ItemList { items }))
}

async fn recording_audio(
    State(state): State<HttpState>,
    Path((code, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &code).await?;
    let recording = match state.repo.recording(&tenant.id, &id).await {
        Ok(Some(recording)) => recording,
        Ok(None) | Err(RepoError::Invalid { .. }) => {
            return Err(ApiError::not_found(format!("no recording {id}")))
        }
        Err(e) => return Err(ApiError::unavailable(&e)),
    };
    match state.blobs.get(&recording.blob_key).await {
        Ok(audio) => Ok(([(header::CONTENT_TYPE, recording.content_type)], audio).into_response()),
        Err(BlobError::NotFound(_)) => Err(ApiError::not_found(format!(
            "the audio of recording {id} is not in this node's blob store (recorded on node {})",
            recording.node_id
        ))),
        Err(e) => {
            tracing::error!(error = %e, "recording audio unreadable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "blob_unavailable",
                e.to_string(),
            ))
        }
    }
}
