//! The management REST API under `/api/v1` (served by every node; all
//! state in raft-store, so any node answers for the whole cluster):
//! login sessions and API keys, roles and permissions, tenants,
//! extensions, users, custom roles, CDRs, recordings and the audit log.
//! The OpenAPI 3.1 document at `/api/v1/openapi.json` is generated from
//! these handlers' annotations.
//!
//! Errors are `{"error":{"code","message","field"}}`; whatever axum itself
//! refuses (an unknown route, a bad path or query) is rewritten into the
//! same shape by [`error::uniform_errors`].

pub mod audit;
pub mod auth;
pub mod bulk;
pub mod csv_rows;
pub mod error;
pub mod extensions;
pub mod listing;
pub mod records;
pub mod tenants;
pub mod users;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use governor::{DefaultKeyedRateLimiter, Quota};
use utoipa::OpenApi;

use crate::accounts::{Accounts, LockoutPolicy};
use crate::blobs::BlobStore;
use crate::repo::Repo;
use auth::BearerScheme;

/// Largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// `since` and `top` of a time-ordered listing (CDRs, recordings, audit).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SinceQuery {
    /// Records at or after this UTC unix millisecond.
    pub since: Option<u64>,
    /// At most this many, 1 to 100 (default 100).
    pub top: Option<u64>,
}

/// Settings of the management API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// How long a login session lasts.
    pub session_ttl: Duration,
    pub lockout: LockoutPolicy,
    /// Login attempts per minute from one source address.
    pub logins_per_minute: NonZeroU32,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            session_ttl: Duration::from_secs(8 * 3600),
            lockout: LockoutPolicy::default(),
            logins_per_minute: NonZeroU32::new(30).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// What every handler reaches.
#[derive(Clone)]
pub struct ApiState {
    pub repo: Repo,
    pub accounts: Accounts,
    pub blobs: Arc<dyn BlobStore>,
    pub settings: Arc<ApiSettings>,
    pub login_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl ApiState {
    pub fn new(repo: Repo, blobs: Arc<dyn BlobStore>, settings: ApiSettings) -> Self {
        let limiter = DefaultKeyedRateLimiter::keyed(Quota::per_minute(settings.logins_per_minute));
        ApiState {
            accounts: Accounts::new(repo.clone()),
            repo,
            blobs,
            settings: Arc::new(settings),
            login_limiter: Arc::new(limiter),
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "PBX management API",
        version = "1",
        description = "Tenants, extensions, users, roles, API keys, CDRs, recordings and the audit log. \
                       Authenticate with POST /api/v1/auth/login and send the token as \
                       `Authorization: Bearer <token>`, or send an API key the same way."
    ),
    paths(
        auth::login,
        auth::logout,
        auth::me,
        auth::list_api_keys,
        auth::create_api_key,
        auth::delete_api_key,
        tenants::list_tenants,
        tenants::create_tenant,
        tenants::get_tenant,
        tenants::update_tenant,
        tenants::delete_tenant,
        extensions::list_extensions,
        extensions::create_extension,
        extensions::get_extension,
        extensions::update_extension,
        extensions::delete_extension,
        bulk::bulk_create,
        bulk::bulk_delete,
        bulk::export_csv,
        bulk::import_csv,
        users::list_users,
        users::create_user,
        users::get_user,
        users::update_user,
        users::delete_user,
        users::list_roles,
        users::put_role,
        users::get_role,
        users::delete_role,
        records::list_cdrs,
        records::list_recordings,
        records::recording_audio,
        audit::tenant_audit,
        audit::system_audit,
    ),
    modifiers(&BearerScheme),
    security(("bearer" = []))
)]
pub struct ApiDoc;

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// The `/api/v1` routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/auth/login", post(auth::login))
        .route("/api/v1/auth/logout", post(auth::logout))
        .route("/api/v1/auth/me", get(auth::me))
        .route(
            "/api/v1/api-keys",
            get(auth::list_api_keys).post(auth::create_api_key),
        )
        .route(
            "/api/v1/api-keys/{id}",
            axum::routing::delete(auth::delete_api_key),
        )
        .route(
            "/api/v1/tenants",
            get(tenants::list_tenants).post(tenants::create_tenant),
        )
        .route(
            "/api/v1/tenants/{code}",
            get(tenants::get_tenant)
                .put(tenants::update_tenant)
                .delete(tenants::delete_tenant),
        )
        .route(
            "/api/v1/tenants/{code}/extensions",
            get(extensions::list_extensions).post(extensions::create_extension),
        )
        .route(
            "/api/v1/tenants/{code}/extensions/bulk-create",
            post(bulk::bulk_create),
        )
        .route(
            "/api/v1/tenants/{code}/extensions/bulk-delete",
            post(bulk::bulk_delete),
        )
        .route(
            "/api/v1/tenants/{code}/extensions/export.csv",
            get(bulk::export_csv),
        )
        .route(
            "/api/v1/tenants/{code}/extensions/import",
            post(bulk::import_csv).layer(DefaultBodyLimit::max(bulk::MAX_IMPORT_BYTES)),
        )
        .route(
            "/api/v1/tenants/{code}/extensions/{number}",
            get(extensions::get_extension)
                .put(extensions::update_extension)
                .delete(extensions::delete_extension),
        )
        .route(
            "/api/v1/users",
            get(users::list_users).post(users::create_user),
        )
        .route(
            "/api/v1/users/{username}",
            get(users::get_user)
                .put(users::update_user)
                .delete(users::delete_user),
        )
        .route("/api/v1/tenants/{code}/roles", get(users::list_roles))
        .route(
            "/api/v1/tenants/{code}/roles/{name}",
            get(users::get_role)
                .put(users::put_role)
                .delete(users::delete_role),
        )
        .route("/api/v1/tenants/{code}/cdrs", get(records::list_cdrs))
        .route(
            "/api/v1/tenants/{code}/recordings",
            get(records::list_recordings),
        )
        .route(
            "/api/v1/tenants/{code}/recordings/{id}/audio",
            get(records::recording_audio),
        )
        .route("/api/v1/tenants/{code}/audit", get(audit::tenant_audit))
        .route("/api/v1/audit", get(audit::system_audit))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Refuses with 403 unless `principal` holds `area` at `level`.
pub fn require(
    principal: &crate::access::Principal,
    area: crate::access::Area,
    level: crate::access::Level,
) -> Result<(), error::ApiError> {
    if principal.holds(area, level) {
        Ok(())
    } else {
        Err(error::ApiError::forbidden(format!(
            "needs {}",
            crate::access::Grant { area, level }
        )))
    }
}
