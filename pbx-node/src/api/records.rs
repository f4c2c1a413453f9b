//! A tenant's call records: CDRs, recordings and each recording's audio
//! (`Analytics: View Only`).

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::tenants::visible_tenant;
use super::{require, ApiState, SinceQuery};
use crate::access::{Area, Level, Principal};
use crate::blobs::BlobError;
use crate::model::{Cdr, Recording, Tenant};
use crate::repo::RepoError;

#[derive(Debug, Serialize, ToSchema)]
pub struct CdrList {
    pub items: Vec<Cdr>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RecordingList {
    pub items: Vec<Recording>,
}

/// The tenant, when the caller may read its analytics; and `(since, top)`.
async fn analytics_of(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    query: &SinceQuery,
) -> Result<(Tenant, u64, u64), ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Analytics, Level::ViewOnly)?;
    let top = query.top.unwrap_or(100);
    if !(1..=100).contains(&top) {
        return Err(ApiError::invalid("top", "must be between 1 and 100"));
    }
    Ok((tenant, query.since.unwrap_or(0), top))
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/cdrs", tag = "analytics",
    params(("code" = String, Path, description = "Tenant code"), SinceQuery),
    responses(
        (status = 200, description = "CDRs of calls started at or after `since`, oldest first", body = CdrList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Analytics: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn list_cdrs(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    Query(query): Query<SinceQuery>,
) -> Result<Json<CdrList>, ApiError> {
    let (tenant, since, top) = analytics_of(&state, &principal, &code, &query).await?;
    let items = state.repo.cdrs(&tenant.id, since, top).await?;
    Ok(Json(CdrList { items }))
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/recordings", tag = "analytics",
    params(("code" = String, Path, description = "Tenant code"), SinceQuery),
    responses(
        (status = 200, description = "Recordings of calls answered at or after `since`, oldest first", body = RecordingList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Analytics: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn list_recordings(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    Query(query): Query<SinceQuery>,
) -> Result<Json<RecordingList>, ApiError> {
    let (tenant, since, top) = analytics_of(&state, &principal, &code, &query).await?;
    let items = state.repo.recordings(&tenant.id, since, top).await?;
    Ok(Json(RecordingList { items }))
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/recordings/{id}/audio", tag = "analytics",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("id" = String, Path, description = "Recording id"),
    ),
    responses(
        (status = 200, description = "The WAV", content_type = "audio/wav", body = Vec<u8>),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Analytics: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant or recording, or its audio is on another node", body = ErrorBody),
        (status = 503, description = "Blob store unavailable", body = ErrorBody),
    )
)]
pub async fn recording_audio(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let tenant = visible_tenant(&state, &principal, &code).await?;
    require(&principal, Area::Analytics, Level::ViewOnly)?;
    let recording = match state.repo.recording(&tenant.id, &id).await {
        Ok(Some(recording)) => recording,
        Ok(None) | Err(RepoError::Invalid { .. }) => {
            return Err(ApiError::not_found(format!("no recording {id}")))
        }
        Err(e) => return Err(e.into()),
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
