//! The audit log: who changed what and when, written by every mutating
//! API call and read-only through the API. A tenant's entries live under
//! `/t/<tenant id>/audit/<ms>-<id>` (its admins see them), system-level
//! ones (tenants, system users) under `/sys/audit/<ms>-<id>`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::tenants::visible_tenant;
use super::{ApiState, SinceQuery};
use crate::access::{Area, Level, Principal};
use crate::repo::{encode, random_hex};
use crate::service::unix_now_ms;

/// One change made through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    /// UTC unix milliseconds.
    pub time_ms: u64,
    /// The username that made the change.
    pub actor: String,
    /// The tenant the change was in; absent for system-level changes.
    pub tenant_id: Option<String>,
    /// `create`, `update` or `delete`.
    pub action: String,
    /// What was changed, e.g. `extension 100`.
    pub resource: String,
}

fn prefix(tenant_id: Option<&str>) -> String {
    match tenant_id {
        Some(id) => format!("/t/{id}/audit/"),
        None => "/sys/audit/".to_string(),
    }
}

/// Appends an entry. The change it describes is already made, so a
/// failure here is logged rather than reported to the caller.
pub async fn record(
    state: &ApiState,
    principal: &Principal,
    tenant_id: Option<&str>,
    action: &str,
    resource: &str,
) {
    let time_ms = unix_now_ms();
    let id = format!("{time_ms:016}-{}", random_hex(6));
    let entry = AuditEntry {
        id: id.clone(),
        time_ms,
        actor: principal.username.clone(),
        tenant_id: tenant_id.map(str::to_string),
        action: action.to_string(),
        resource: resource.to_string(),
    };
    let written = match encode(&entry) {
        Ok(value) => state
            .repo
            .store()
            .put(format!("{}{id}", prefix(tenant_id)), value)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = written {
        tracing::error!(error = %e, actor = %entry.actor, action, resource, "audit entry not written");
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    pub items: Vec<AuditEntry>,
}

async fn list(
    state: &ApiState,
    tenant_id: Option<&str>,
    query: &SinceQuery,
) -> Result<Vec<AuditEntry>, ApiError> {
    let top = query.top.unwrap_or(100);
    if !(1..=100).contains(&top) {
        return Err(ApiError::invalid("top", "must be between 1 and 100"));
    }
    Ok(state
        .repo
        .time_ordered(&prefix(tenant_id), query.since.unwrap_or(0), top)
        .await?)
}

/// Tenant `code`'s audit entries from `query.since` on, oldest first.
pub async fn tenant_entries(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    query: &SinceQuery,
) -> Result<Vec<AuditEntry>, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    super::require(principal, Area::Analytics, Level::ViewOnly)?;
    list(state, Some(&tenant.id), query).await
}

/// The system-level audit entries from `query.since` on, oldest first.
pub async fn system_entries(
    state: &ApiState,
    principal: &Principal,
    query: &SinceQuery,
) -> Result<Vec<AuditEntry>, ApiError> {
    super::require(principal, Area::SystemTenant, Level::ViewOnly)?;
    list(state, None, query).await
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/audit", tag = "audit",
    params(("code" = String, Path, description = "Tenant code"), SinceQuery),
    responses(
        (status = 200, description = "The tenant's audit log, oldest first", body = AuditList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Analytics: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn tenant_audit(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    Query(query): Query<SinceQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let items = tenant_entries(&state, &principal, &code, &query).await?;
    Ok(Json(AuditList { items }))
}

#[utoipa::path(
    get, path = "/api/v1/audit", tag = "audit",
    params(SinceQuery),
    responses(
        (status = 200, description = "System-level audit log, oldest first", body = AuditList),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs System Tenant: View Only", body = ErrorBody),
    )
)]
pub async fn system_audit(
    State(state): State<ApiState>,
    principal: Principal,
    Query(query): Query<SinceQuery>,
) -> Result<Json<AuditList>, ApiError> {
    let items = system_entries(&state, &principal, &query).await?;
    Ok(Json(AuditList { items }))
}
