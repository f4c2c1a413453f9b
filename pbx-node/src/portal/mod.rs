//! The web portal: server-rendered administration pages on the same HTTP
//! listener as the API (`/login`, `/extensions`, `/users`, `/roles`,
//! `/audit`). Every page acts through the same functions as the API
//! handlers (`crate::api::*`), so validation, permissions, tenant
//! isolation and the audit log are the API's own; the portal only turns
//! forms into their inputs and the API's errors (whose `field` is a JSON
//! path) into messages beside the form field at fault.
//!
//! A login sets a session cookie holding the same kind of session token the
//! API login issues (HttpOnly, SameSite=Strict), so logging out anywhere
//! ends it everywhere. Every state-changing form carries a CSRF token
//! derived from the session token; maud escapes everything rendered.

mod audit;
mod extension_form;
mod extensions;
mod form;
mod layout;
mod login;
mod users;

use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::access::{Area, Level, Principal};
use crate::api::error::ApiError;
use crate::api::listing::ListParams;
use crate::api::tenants::TenantView;
use crate::api::{ApiState, MAX_BODY_BYTES};
pub use form::FormData;

/// The cookie holding the session token.
pub const SESSION_COOKIE: &str = "pbx_session";
/// The cookie naming the tenant a system administrator is looking at.
pub const TENANT_COOKIE: &str = "pbx_tenant";
/// The name of the hidden CSRF field of every form.
pub const CSRF_FIELD: &str = "csrf";

static PORTAL_CSS: &str = include_str!("assets/portal.css");
static PORTAL_JS: &str = include_str!("assets/portal.js");

/// The portal's routes, mounted at `/`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login::page).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/tenant", post(login::switch_tenant))
        .route("/extensions", get(extensions::list_page))
        .route(
            "/extensions/new",
            get(extensions::new_page).post(extensions::create),
        )
        .route(
            "/extensions/bulk-create",
            get(extensions::bulk_create_page).post(extensions::bulk_create),
        )
        .route("/extensions/bulk-delete", post(extensions::bulk_delete))
        .route("/extensions/export.csv", get(extensions::export))
        .route(
            "/extensions/import",
            get(extensions::import_page)
                .post(extensions::import)
                // The CSV itself may be as large as the API accepts, plus
                // the multipart framing and the CSRF field.
                .layer(DefaultBodyLimit::max(
                    crate::api::bulk::MAX_IMPORT_BYTES + 64 * 1024,
                )),
        )
        .route(
            "/extensions/{number}",
            get(extensions::edit_page).post(extensions::update),
        )
        .route("/users", get(users::users_page).post(users::create_user))
        .route(
            "/users/{username}",
            get(users::user_page).post(users::update_user),
        )
        .route("/users/{username}/delete", post(users::delete_user))
        .route("/roles", get(users::roles_page).post(users::save_role))
        .route("/roles/{name}/delete", post(users::delete_role))
        .route("/audit", get(audit::page_view))
        .route("/assets/portal.css", get(css))
        .route("/assets/portal.js", get(js))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", PORTAL_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", PORTAL_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// `/`: the extensions when logged in, else the login page.
async fn home(session: Result<PortalSession, Response>) -> Redirect {
    match session {
        Ok(_) => Redirect::to("/extensions"),
        Err(_) => Redirect::to("/login"),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the portal: HttpOnly and SameSite=Strict, so
/// scripts cannot read it and other sites cannot send it.
fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}");
    // Every value set is base64url, hex or a tenant code: always a valid
    // header; an invalid one would only mean no cookie.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The CSRF token of a session: a hash of the session token, so every
/// node derives the same one, and it cannot be made without the token
/// (which scripts cannot read) nor tell anything about it.
fn csrf_token(session_token: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"pbx-portal-csrf:");
    hasher.update(session_token.as_bytes());
    hex::encode(hasher.finalize())
}

/// Whether a submitted CSRF value is the expected one (constant time).
fn csrf_matches(expected: &str, submitted: Option<&str>) -> bool {
    submitted.is_some_and(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
}

/// A logged-in portal request: whom it acts for, its CSRF token and the
/// tenant its pages show.
pub struct PortalSession {
    pub principal: Principal,
    token: String,
    pub csrf: String,
    /// The tenant shown: the principal's own, or for a system
    /// administrator the one chosen in the switcher (the first by default).
    pub tenant: Option<TenantView>,
    /// The tenants a system administrator may switch between; empty for
    /// everyone else.
    pub tenants: Vec<TenantView>,
}

impl PortalSession {
    /// The shown tenant's code, or a page saying there is none.
    pub fn tenant_code(&self) -> Result<&str, PortalError> {
        self.tenant
            .as_ref()
            .map(|t| t.code.as_str())
            .ok_or_else(|| {
                PortalError::new(
                    StatusCode::NOT_FOUND,
                    "There is no tenant to show yet: create one through the API first.",
                )
            })
    }

    /// Not bound to a tenant: a system administrator.
    pub fn is_system_wide(&self) -> bool {
        self.principal.tenant_id.is_none()
    }

    /// May change extensions, users and roles: the write buttons show.
    pub fn can_manage_users(&self) -> bool {
        self.principal.holds(Area::Users, Level::FullAccess)
    }

    /// Refuses a change to extensions, users or roles from a principal
    /// that may only look, before its form is even read: the API's own
    /// check, which the API functions repeat.
    pub fn require_user_admin(&self) -> Result<(), PortalError> {
        crate::api::require(&self.principal, Area::Users, Level::FullAccess).map_err(Into::into)
    }

    /// Refuses a form whose CSRF field (`submitted`) is not this session's.
    pub fn check_csrf(&self, submitted: Option<&str>) -> Result<(), PortalError> {
        if csrf_matches(&self.csrf, submitted) {
            Ok(())
        } else {
            Err(bad_csrf())
        }
    }
}

fn bad_csrf() -> PortalError {
    PortalError::new(
        StatusCode::FORBIDDEN,
        "The form was not sent from this portal session (its security token is missing or \
         wrong). Nothing was changed; reload the page and try again.",
    )
}

impl FromRequestParts<ApiState> for PortalSession {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Response> {
        let to_login = || Redirect::to("/login").into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let principal = match state.session_principal(token).await {
            Ok(Some(principal)) => principal,
            Ok(None) => return Err(to_login()),
            Err(e) => return Err(PortalError::from(e).into_response()),
        };
        let wanted = cookie(&parts.headers, TENANT_COOKIE);
        shown_tenants(state, &principal, wanted)
            .await
            .map(|(tenant, tenants)| PortalSession {
                csrf: csrf_token(token),
                token: token.to_string(),
                principal,
                tenant,
                tenants,
            })
            .map_err(|e| PortalError::from(e).into_response())
    }
}

/// The tenant the pages show and, for a system administrator, those it may
/// switch between; `wanted` is the switcher's choice. Tenant-bound
/// principals always see their own tenant, whatever the cookie says.
async fn shown_tenants(
    state: &ApiState,
    principal: &Principal,
    wanted: Option<&str>,
) -> Result<(Option<TenantView>, Vec<TenantView>), ApiError> {
    if let Some(own) = &principal.tenant_id {
        let tenant = state.repo.tenant(own).await?.map(TenantView::from);
        return Ok((tenant, Vec::new()));
    }
    let tenants = crate::api::tenants::list(state, principal, &ListParams::default())
        .await?
        .items;
    let shown = tenants
        .iter()
        .position(|t| Some(t.code.as_str()) == wanted)
        .or((!tenants.is_empty()).then_some(0))
        .map(|i| tenants[i].clone());
    Ok((shown, tenants))
}

/// A submitted form of a logged-in session whose CSRF token was checked:
/// every state-changing page but login and the CSV upload takes this.
pub struct Posted {
    pub session: PortalSession,
    pub form: FormData,
}

impl FromRequest<ApiState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let session = PortalSession::from_request_parts(&mut parts, state).await?;
        let request = Request::from_parts(parts, body);
        let form = FormData::from_request(request, state).await?;
        session
            .check_csrf(form.get(CSRF_FIELD))
            .map_err(IntoResponse::into_response)?;
        Ok(Posted { session, form })
    }
}

/// A page that could not be shown: its status and what to tell the user.
#[derive(Debug)]
pub struct PortalError {
    pub status: StatusCode,
    pub message: String,
}

impl PortalError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        PortalError {
            status,
            message: message.into(),
        }
    }
}

/// A refusal a form shows beside its fields (a bad field, a taken name, a
/// limit reached) rather than on a page of its own (no permission, no
/// such tenant).
pub fn shown_on_form(e: &ApiError) -> bool {
    matches!(e.status, StatusCode::BAD_REQUEST | StatusCode::CONFLICT)
}

impl From<ApiError> for PortalError {
    fn from(e: ApiError) -> Self {
        PortalError::new(e.status, e.message)
    }
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        // A session that ended meanwhile: log in again.
        if self.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/login").into_response();
        }
        layout::error_page(self.status, &self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name_among_several() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("x_pbx_session=no; pbx_session=abc; pbx_tenant=ACME"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, TENANT_COOKIE), Some("ACME"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn the_csrf_token_is_bound_to_the_session_and_checked_exactly() {
        let token = csrf_token("session-a");
        assert_eq!(token, csrf_token("session-a"));
        assert_ne!(token, csrf_token("session-b"));
        assert!(!token.contains("session-a"));
        assert!(csrf_matches(&token, Some(&token)));
        assert!(!csrf_matches(&token, Some(&token[1..])));
        assert!(!csrf_matches(&token, Some("")));
        assert!(!csrf_matches(&token, None));
    }

    #[test]
    fn session_cookies_are_http_only_and_same_site_strict() {
        let value = set_cookie(SESSION_COOKIE, "abc", 60);
        let text = value.to_str().unwrap_or_default();
        assert!(text.contains("HttpOnly"), "{text}");
        assert!(text.contains("SameSite=Strict"), "{text}");
        assert!(text.starts_with("pbx_session=abc;"), "{text}");
    }
}
