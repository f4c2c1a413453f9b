//! Authentication: login with a username and password (portal users, or
//! an extension's web credentials) for an expiring bearer token, logout,
//! API keys, and the [`Principal`] every other handler acts as.
//!
//! Unknown usernames get the same answer, after the same argon2 work, as
//! wrong passwords, and failed logins count against any username, so
//! neither the answer nor the lockout tells which accounts exist.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};

use super::error::{ApiError, ApiJson, ErrorBody};
use super::ApiState;
use crate::access::{Grant, Principal, Role};
use crate::accounts::{self, Session, Subject};
use crate::service::unix_now_ms;

/// Adds the bearer scheme to the OpenAPI document.
pub struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// A portal user's name, or an extension's username (`100-DEMO`).
    pub username: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// UTC unix milliseconds.
    pub expires_ms: u64,
    pub user: Me,
}

/// Who the caller is and what it may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    pub username: String,
    pub role: Role,
    /// The tenant the account belongs to; absent for system administrators.
    pub tenant_code: Option<String>,
    /// For an extension's user: its number.
    pub extension: Option<String>,
    pub grants: Vec<String>,
}

impl ApiState {
    /// The principal `subject` is now: users are re-read on every request,
    /// so disabling one or changing its role takes effect at once.
    async fn principal_of(&self, subject: &Subject) -> Result<Option<Principal>, ApiError> {
        match subject {
            Subject::User { username } => {
                let Some(user) = self.accounts.user(username).await? else {
                    return Ok(None);
                };
                if !user.enabled {
                    return Ok(None);
                }
                let grants = match (&user.role, &user.tenant_id) {
                    (Role::Custom(name), Some(tenant_id)) => self
                        .accounts
                        .custom_role(tenant_id, name)
                        .await?
                        .map(|r| r.grants)
                        .unwrap_or_default(),
                    (role, _) => role.builtin_grants().unwrap_or_default().to_vec(),
                };
                Ok(Some(Principal {
                    username: user.username,
                    role: user.role,
                    tenant_id: user.tenant_id,
                    extension: None,
                    grants,
                }))
            }
            Subject::Extension {
                tenant_id,
                number,
                username,
            } => {
                let Some(extension) = self.repo.extension(tenant_id, number).await? else {
                    return Ok(None);
                };
                if !extension.settings.web_panel_enabled || &extension.username != username {
                    return Ok(None);
                }
                Ok(Some(Principal {
                    username: username.clone(),
                    role: Role::User,
                    tenant_id: Some(tenant_id.clone()),
                    extension: Some(number.clone()),
                    grants: Role::User.builtin_grants().unwrap_or_default().to_vec(),
                }))
            }
        }
    }

    /// Checks a username and password; the subject on success.
    async fn check_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Subject>, ApiError> {
        if let Some(user) = self.accounts.user(username).await? {
            let ok =
                accounts::check_password(password, Some(&user.password_hash)).await && user.enabled;
            return Ok(ok.then_some(Subject::User {
                username: user.username,
            }));
        }
        // An extension's web login: `<number>-<CODE>` or `<number>_<CODE>`.
        let tenant = match username.rsplit_once(['-', '_']) {
            Some((_, code)) => self.repo.tenant_by_code(code).await?,
            None => None,
        };
        let extension = match &tenant {
            Some(t) => self.repo.extension_by_username(&t.id, username).await?,
            None => None,
        };
        match (tenant, extension) {
            (Some(tenant), Some(ext)) if ext.settings.web_panel_enabled => {
                let hash = ext.settings.web_password_hash.as_deref();
                let ok = accounts::check_password(password, hash).await;
                Ok(ok.then_some(Subject::Extension {
                    tenant_id: tenant.id,
                    number: ext.number,
                    username: ext.username,
                }))
            }
            _ => {
                // Same work as a real check, so timing reveals nothing.
                accounts::check_password(password, None).await;
                Ok(None)
            }
        }
    }

    /// Whom the live session `token` acts for; `None` when the session
    /// ended, expired, or its account can no longer log in.
    pub async fn session_principal(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        match self.accounts.session(token, unix_now_ms()).await? {
            Some(session) => self.principal_of(&session.subject).await,
            None => Ok(None),
        }
    }

    pub async fn me(&self, principal: &Principal) -> Result<Me, ApiError> {
        let tenant_code = match &principal.tenant_id {
            Some(id) => self.repo.tenant(id).await?.map(|t| t.code),
            None => None,
        };
        Ok(Me {
            username: principal.username.clone(),
            role: principal.role.clone(),
            tenant_code,
            extension: principal.extension.clone(),
            grants: principal.grants.iter().map(Grant::to_string).collect(),
        })
    }
}

/// The credential of a request: `Authorization: Bearer <token or API key>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<ApiState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Some(token) = bearer(&parts.headers) else {
            return Err(ApiError::unauthorized(
                "send Authorization: Bearer <token or API key>",
            ));
        };
        let principal = if accounts::parse_api_key(token).is_some() {
            match state.accounts.api_key(token).await? {
                Some(key) => state.principal_of(&key.subject).await?,
                None => None,
            }
        } else {
            state.session_principal(token).await?
        };
        principal.ok_or_else(|| ApiError::unauthorized("the token or API key is not valid"))
    }
}

#[utoipa::path(
    post, path = "/api/v1/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Wrong username or password, or the account is locked", body = ErrorBody),
        (status = 429, description = "Too many logins from this address", body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(request): ApiJson<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let (token, session, principal) =
        open_session(&state, peer.ip(), &request.username, &request.password).await?;
    Ok(Json(LoginResponse {
        token,
        token_type: "Bearer".into(),
        expires_ms: session.expires_ms,
        user: state.me(&principal).await?,
    }))
}

/// Checks a login from `source` (rate limit, lockout, credentials) and
/// starts a session: its token, the session and whom it acts for. The API
/// hands the token out as a bearer token, the portal as a cookie.
pub async fn open_session(
    state: &ApiState,
    source: IpAddr,
    username: &str,
    password: &str,
) -> Result<(String, Session, Principal), ApiError> {
    if state.login_limiter.check_key(&source).is_err() {
        tracing::warn!(%source, "login rate limit hit");
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many logins from this address; try again in a minute",
        ));
    }
    state.login_limiter.retain_recent();
    let now = unix_now_ms();
    let username = username.trim().to_string();
    let invalid = || ApiError::unauthorized("wrong username or password");
    // A name no account can have is refused without touching the store,
    // after the same work as a real check.
    let lockout_name = username.to_ascii_lowercase();
    if !accounts::is_login_name(&lockout_name) {
        accounts::check_password(password, None).await;
        return Err(invalid());
    }
    let lockout = state.accounts.lockout(&lockout_name).await?;
    if lockout.is_locked(now) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "account_locked",
            "too many failed logins: the account is locked for a while",
        ));
    }
    let Some(subject) = state.check_credentials(&username, password).await? else {
        if state
            .accounts
            .record_failed_login(&lockout_name, now, &state.settings.lockout)
            .await?
        {
            tracing::warn!(username = %lockout_name, %source, "account locked after failed logins");
        }
        return Err(invalid());
    };
    if !lockout.failures_ms.is_empty() {
        state.accounts.clear_failed_logins(&lockout_name).await?;
    }
    let principal = state.principal_of(&subject).await?.ok_or_else(invalid)?;
    let (token, session) = state
        .accounts
        .create_session(subject, now, state.settings.session_ttl)
        .await?;
    Ok((token, session, principal))
}

#[utoipa::path(
    post, path = "/api/v1/auth/logout", tag = "auth",
    responses(
        (status = 204, description = "The session is over"),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<ApiState>,
    _principal: Principal,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    // An API key is not a session: it is deleted, not logged out.
    if let Some(token) = bearer(&headers).filter(|t| accounts::parse_api_key(t).is_none()) {
        state.accounts.end_session(token).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get, path = "/api/v1/auth/me", tag = "auth",
    responses(
        (status = 200, description = "The caller", body = Me),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn me(State(state): State<ApiState>, principal: Principal) -> Result<Json<Me>, ApiError> {
    Ok(Json(state.me(&principal).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// What the key is for, e.g. `crm-sync`.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub created_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub id: String,
    pub name: String,
    /// The key; shown this once, only its hash is kept.
    pub key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKeyView>,
}

fn subject_of(principal: &Principal) -> Subject {
    match (&principal.extension, &principal.tenant_id) {
        (Some(number), Some(tenant_id)) => Subject::Extension {
            tenant_id: tenant_id.clone(),
            number: number.clone(),
            username: principal.username.clone(),
        },
        _ => Subject::User {
            username: principal.username.clone(),
        },
    }
}

#[utoipa::path(
    get, path = "/api/v1/api-keys", tag = "auth",
    responses(
        (status = 200, description = "The caller's API keys", body = ApiKeyList),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn list_api_keys(
    State(state): State<ApiState>,
    principal: Principal,
) -> Result<Json<ApiKeyList>, ApiError> {
    let keys = state.accounts.api_keys_of(&subject_of(&principal)).await?;
    Ok(Json(ApiKeyList {
        items: keys
            .into_iter()
            .map(|k| ApiKeyView {
                id: k.id,
                name: k.name,
                created_ms: k.created_ms,
            })
            .collect(),
    }))
}

#[utoipa::path(
    post, path = "/api/v1/api-keys", tag = "auth",
    request_body = NewApiKey,
    responses(
        (status = 201, description = "Created; the key is in the body", body = CreatedApiKey),
        (status = 400, description = "Bad request", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn create_api_key(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(new): ApiJson<NewApiKey>,
) -> Result<Response, ApiError> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(ApiError::invalid("name", "must be 1 to 64 characters"));
    }
    let (key, stored) = state
        .accounts
        .create_api_key(name, subject_of(&principal), unix_now_ms())
        .await?;
    super::audit::record(
        &state,
        &principal,
        principal.tenant_id.as_deref(),
        "create",
        &format!("api-key {}", stored.id),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKey {
            id: stored.id,
            name: stored.name,
            key,
        }),
    )
        .into_response())
}

#[utoipa::path(
    delete, path = "/api/v1/api-keys/{id}", tag = "auth",
    params(("id" = String, Path, description = "The key's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 404, description = "The caller has no such key", body = ErrorBody),
    )
)]
pub async fn delete_api_key(
    State(state): State<ApiState>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state
        .accounts
        .delete_api_key(&subject_of(&principal), &id)
        .await?
    {
        super::audit::record(
            &state,
            &principal,
            principal.tenant_id.as_deref(),
            "delete",
            &format!("api-key {id}"),
        )
        .await;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no API key {id}")))
    }
}
