//! Tenants: listed and changed by system administrators; a tenant's own
//! principals may read their tenant's record. Every tenant-scoped route
//! goes through [`visible_tenant`], which answers 404 for a tenant the
//! caller may not see, exactly as for one that does not exist.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ErrorBody};
use super::listing::{ListParams, Listing};
use super::{audit, require, ApiState};
use crate::access::{Area, Level, Principal};
use crate::model::{Tenant, TenantLimits};
use crate::repo::random_hex;

/// The tenant `code` names, if the caller may see it; 404 otherwise.
pub async fn visible_tenant(
    state: &ApiState,
    principal: &Principal,
    code: &str,
) -> Result<Tenant, ApiError> {
    match state.repo.tenant_by_code(code).await? {
        Some(tenant) if principal.sees_tenant(&tenant.id) => Ok(tenant),
        _ => Err(ApiError::not_found(format!("no tenant {code}"))),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    /// Letters and digits, upper-cased; the suffix of SIP usernames.
    pub code: String,
    /// The SIP domain phones register to; the digest realm.
    pub sip_domain: String,
    /// IANA time zone, default `UTC`.
    pub timezone: Option<String>,
    pub limits: Option<TenantLimits>,
    pub enabled: Option<bool>,
}

/// A change to a tenant: omitted fields keep their value. The code and
/// SIP domain cannot change (the domain is the realm of stored HA1s).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUpdate {
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub limits: Option<TenantLimits>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub code: String,
    pub sip_domain: String,
    pub timezone: String,
    pub limits: TenantLimits,
    pub enabled: bool,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        TenantView {
            id: t.id,
            name: t.name,
            code: t.code,
            sip_domain: t.sip_domain,
            timezone: t.timezone,
            limits: t.limits,
            enabled: t.enabled,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<TenantView>,
    /// How many matched the filter and search in all.
    pub count: usize,
}

const LISTING: Listing<'static> = Listing {
    fields: &[
        "id",
        "name",
        "code",
        "sip_domain",
        "timezone",
        "limits",
        "enabled",
    ],
    search_fields: &["name", "code", "sip_domain"],
    default_order: "code",
};

fn check_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::invalid("name", "must be 1 to 128 characters"));
    }
    Ok(name.to_string())
}

fn check_timezone(timezone: &str) -> Result<String, ApiError> {
    jiff::tz::TimeZone::get(timezone)
        .map(|_| timezone.to_string())
        .map_err(|_| {
            ApiError::invalid("timezone", format!("'{timezone}' is not an IANA time zone"))
        })
}

fn check_code(code: &str) -> Result<String, ApiError> {
    let ok = (2..=20).contains(&code.len()) && code.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(code.to_ascii_uppercase())
    } else {
        Err(ApiError::invalid(
            "code",
            "must be 2 to 20 letters or digits",
        ))
    }
}

fn check_domain(domain: &str) -> Result<String, ApiError> {
    let domain = domain.trim().to_ascii_lowercase();
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() <= 253 && domain.split('.').count() >= 2 && domain.split('.').all(label_ok) {
        Ok(domain)
    } else {
        Err(ApiError::invalid(
            "sip_domain",
            "must be a DNS name such as pbx.example.com",
        ))
    }
}

#[utoipa::path(
    get, path = "/api/v1/tenants", tag = "tenants",
    params(ListParams),
    responses(
        (status = 200, description = "Tenants the caller may see", body = TenantList),
        (status = 400, description = "Bad list parameter", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn list_tenants(
    State(state): State<ApiState>,
    principal: Principal,
    Query(params): Query<ListParams>,
) -> Result<Json<TenantList>, ApiError> {
    Ok(Json(list(&state, &principal, &params).await?))
}

/// One page of the tenants the caller may see.
pub async fn list(
    state: &ApiState,
    principal: &Principal,
    params: &ListParams,
) -> Result<TenantList, ApiError> {
    let visible: Vec<TenantView> = state
        .repo
        .tenants()
        .await?
        .into_iter()
        .filter(|t| principal.sees_tenant(&t.id))
        .map(TenantView::from)
        .collect();
    let page = LISTING.apply(params, visible)?;
    Ok(TenantList {
        items: page.items,
        count: page.count,
    })
}

#[utoipa::path(
    post, path = "/api/v1/tenants", tag = "tenants",
    request_body = NewTenant,
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs System Tenant: Full Access", body = ErrorBody),
        (status = 409, description = "Code or domain taken", body = ErrorBody),
    )
)]
pub async fn create_tenant(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(new): ApiJson<NewTenant>,
) -> Result<Response, ApiError> {
    require(&principal, Area::SystemTenant, Level::FullAccess)?;
    let tenant = Tenant {
        id: random_hex(8),
        name: check_name(&new.name)?,
        code: check_code(&new.code)?,
        sip_domain: check_domain(&new.sip_domain)?,
        timezone: check_timezone(new.timezone.as_deref().unwrap_or("UTC"))?,
        limits: new.limits.unwrap_or_default(),
        enabled: new.enabled.unwrap_or(true),
    };
    let tenant = state.repo.insert_tenant(tenant).await?;
    audit::record(
        &state,
        &principal,
        None,
        "create",
        &format!("tenant {}", tenant.code),
    )
    .await;
    Ok((StatusCode::CREATED, Json(TenantView::from(tenant))).into_response())
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}", tag = "tenants",
    params(("code" = String, Path, description = "Tenant code")),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn get_tenant(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = visible_tenant(&state, &principal, &code).await?;
    Ok(Json(tenant.into()))
}

#[utoipa::path(
    put, path = "/api/v1/tenants/{code}", tag = "tenants",
    params(("code" = String, Path, description = "Tenant code")),
    request_body = TenantUpdate,
    responses(
        (status = 200, description = "Updated", body = TenantView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs System Tenant: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn update_tenant(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    ApiJson(update): ApiJson<TenantUpdate>,
) -> Result<Json<TenantView>, ApiError> {
    let mut tenant = visible_tenant(&state, &principal, &code).await?;
    require(&principal, Area::SystemTenant, Level::FullAccess)?;
    if let Some(name) = &update.name {
        tenant.name = check_name(name)?;
    }
    if let Some(timezone) = &update.timezone {
        tenant.timezone = check_timezone(timezone)?;
    }
    if let Some(limits) = update.limits {
        tenant.limits = limits;
    }
    if let Some(enabled) = update.enabled {
        tenant.enabled = enabled;
    }
    state.repo.update_tenant(&tenant).await?;
    audit::record(
        &state,
        &principal,
        None,
        "update",
        &format!("tenant {}", tenant.code),
    )
    .await;
    Ok(Json(tenant.into()))
}

#[utoipa::path(
    delete, path = "/api/v1/tenants/{code}", tag = "tenants",
    params(("code" = String, Path, description = "Tenant code")),
    responses(
        (status = 204, description = "Deleted with all its data and users"),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs System Tenant: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn delete_tenant(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = visible_tenant(&state, &principal, &code).await?;
    require(&principal, Area::SystemTenant, Level::FullAccess)?;
    state.repo.delete_tenant(&tenant).await?;
    for user in state.accounts.users().await? {
        if user.tenant_id.as_deref() == Some(tenant.id.as_str()) {
            state.accounts.delete_user(&user.username).await?;
        }
    }
    audit::record(
        &state,
        &principal,
        None,
        "delete",
        &format!("tenant {}", tenant.code),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}
