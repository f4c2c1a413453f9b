//! Login, logout and the system administrator's tenant switcher.
//!
//! The login form has no session to bind a CSRF token to, so it uses a
//! double-submit token: a random value in an HttpOnly, SameSite=Strict
//! cookie and the same value in a hidden field.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::form::FormData;
use super::layout::{alert, bare_page};
use super::{
    cookie, csrf_matches, set_cookie, PortalError, PortalSession, Posted, CSRF_FIELD,
    SESSION_COOKIE, TENANT_COOKIE,
};
use crate::api::ApiState;
use crate::repo::random_hex;

const LOGIN_CSRF_COOKIE: &str = "pbx_login_csrf";
/// How long a login form stays usable.
const LOGIN_FORM_SECS: u64 = 3600;

fn login_form(status: StatusCode, csrf: &str, username: &str, error: Option<&str>) -> Response {
    let mut response = bare_page(
        status,
        "Log in",
        html! {
            h1 { "Log in" }
            @if let Some(error) = error { (alert(error)) }
            form.stack method="post" action="/login" {
                input type="hidden" name=(CSRF_FIELD) value=(csrf);
                div.field {
                    label for="username" { "Username" }
                    input #username type="text" name="username" value=(username)
                        autocomplete="username" required autofocus;
                }
                div.field {
                    label for="password" { "Password" }
                    input #password type="password" name="password"
                        autocomplete="current-password" required;
                }
                button.btn.primary.wide type="submit" id="login" { "Log in" }
            }
            p.help { "System and tenant administrators, and extensions with the web user panel enabled." }
        },
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, csrf, LOGIN_FORM_SECS),
    );
    response
}

/// `GET /login`: the form, or the extensions when already logged in. A
/// login token the browser already holds is reused, so two open login
/// forms both work.
pub async fn page(session: Result<PortalSession, Response>, headers: HeaderMap) -> Response {
    if session.is_ok() {
        return Redirect::to("/extensions").into_response();
    }
    let token = cookie(&headers, LOGIN_CSRF_COOKIE)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| random_hex(16), str::to_string);
    login_form(StatusCode::OK, &token, "", None)
}

/// `POST /login`: the API's own login (rate limit, lockout, password
/// check, session) with the token put in the session cookie.
pub async fn submit(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: FormData,
) -> Response {
    let username = form.text("username").to_string();
    if !csrf_matches(
        cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or(""),
        form.get(CSRF_FIELD).filter(|v| !v.is_empty()),
    ) {
        return login_form(
            StatusCode::FORBIDDEN,
            &random_hex(16),
            &username,
            Some("The login form expired or came from another site. Please log in again."),
        );
    }
    let password = form.get("password").unwrap_or("");
    match crate::api::auth::open_session(&state, peer.ip(), &username, password).await {
        Ok((token, session, _)) => {
            let max_age = session.expires_ms.saturating_sub(session.created_ms) / 1000;
            let mut response = Redirect::to("/extensions").into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, max_age),
            );
            headers.append(header::SET_COOKIE, set_cookie(LOGIN_CSRF_COOKIE, "", 0));
            response
        }
        Err(e) => login_form(e.status, &random_hex(16), &username, Some(&e.message)),
    }
}

/// `POST /logout`: ends the session everywhere (it is the API's session)
/// and forgets the cookies.
pub async fn logout(State(state): State<ApiState>, posted: Posted) -> Response {
    if let Err(e) = state.accounts.end_session(&posted.session.token).await {
        return PortalError::from(crate::api::error::ApiError::from(e)).into_response();
    }
    let mut response = Redirect::to("/login").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    headers.append(header::SET_COOKIE, set_cookie(TENANT_COOKIE, "", 0));
    response
}

/// `POST /tenant`: a system administrator picks the tenant the pages show.
/// Only a tenant it may see is accepted; others keep their own anyway.
pub async fn switch_tenant(posted: Posted) -> Response {
    let wanted = posted.form.text("tenant");
    let Some(tenant) = posted.session.tenants.iter().find(|t| t.code == wanted) else {
        return PortalError::new(StatusCode::NOT_FOUND, format!("No tenant {wanted}."))
            .into_response();
    };
    let mut response = Redirect::to("/extensions").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(TENANT_COOKIE, &tenant.code, 30 * 24 * 3600),
    );
    response
}
