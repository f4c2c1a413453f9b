//! The page shell (header with the tenant switcher, left navigation) and
//! the small pieces every page uses. maud escapes every interpolated
//! value, so nothing a user typed is ever markup.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::{PortalSession, CSRF_FIELD};
use crate::access::{Area, Level};

/// The entries of the left navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Extensions,
    Users,
    Roles,
    Audit,
}

/// An HTML response with the headers every portal page carries: no
/// framing, no caching of pages that show tenant data, scripts and styles
/// only from the portal itself.
pub fn html_response(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn document(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · PBX Admin" }
                link rel="stylesheet" href="/assets/portal.css";
                script src="/assets/portal.js" defer {}
            }
            body { (body) }
        }
    }
}

/// A page of the logged-in portal.
pub fn page(session: &PortalSession, nav: Nav, title: &str, content: Markup) -> Response {
    page_with_status(StatusCode::OK, session, nav, title, content)
}

/// A page of the logged-in portal with another status (a refused form).
pub fn page_with_status(
    status: StatusCode,
    session: &PortalSession,
    nav: Nav,
    title: &str,
    content: Markup,
) -> Response {
    let principal = &session.principal;
    let link = |entry: Nav, href: &str, label: &str| {
        html! {
            a href=(href) class={ "nav-link" @if entry == nav { " active" } } { (label) }
        }
    };
    let body = html! {
        header.topbar {
            a.brand href="/extensions" { span.logo { "☎" } " PBX Admin" }
            div.tenant {
                @if session.tenants.is_empty() {
                    @if let Some(t) = &session.tenant {
                        span.tenant-name { (t.name) " (" (t.code) ")" }
                    }
                } @else {
                    form.switcher method="post" action="/tenant" {
                        (csrf(session))
                        label for="tenant-switch" { "Tenant" }
                        select id="tenant-switch" name="tenant" {
                            @for t in &session.tenants {
                                option value=(t.code)
                                    selected[session.tenant.as_ref().is_some_and(|s| s.code == t.code)] {
                                    (t.name) " (" (t.code) ")"
                                }
                            }
                        }
                        button.btn.small type="submit" { "Switch" }
                    }
                }
            }
            div.account {
                span.user { (principal.username) }
                span.role { (role_label(&principal.role)) }
                form method="post" action="/logout" {
                    (csrf(session))
                    button.btn.small.ghost type="submit" id="logout" { "Log out" }
                }
            }
        }
        div.shell {
            nav.sidebar {
                @if let (Some(own), false) = (&principal.extension, principal.holds(Area::Users, Level::ViewOnly)) {
                    (link(Nav::Extensions, &format!("/extensions/{own}"), "My extension"))
                }
                @if principal.holds(Area::Users, Level::ViewOnly) {
                    (link(Nav::Extensions, "/extensions", "Extensions"))
                    (link(Nav::Users, "/users", "Users"))
                    (link(Nav::Roles, "/roles", "Roles"))
                }
                @if principal.holds(Area::Analytics, Level::ViewOnly)
                    || principal.holds(Area::SystemTenant, Level::ViewOnly) {
                    (link(Nav::Audit, "/audit", "Audit log"))
                }
            }
            main.content {
                h1 { (title) }
                (content)
            }
        }
    };
    html_response(status, document(title, body))
}

/// A page outside the logged-in shell (login).
pub fn bare_page(status: StatusCode, title: &str, content: Markup) -> Response {
    let body = html! {
        div.bare {
            div.card.narrow {
                div.brand-large { span.logo { "☎" } " PBX Admin" }
                (content)
            }
        }
    };
    html_response(status, document(title, body))
}

/// A refusal or failure, with a way back.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let title = match status {
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        s if s.is_server_error() => "Something went wrong",
        _ => "Request refused",
    };
    bare_page(
        status,
        title,
        html! {
            h1 { (title) }
            p.error-text id="error-message" { (message) }
            p { a href="/extensions" { "Back to the portal" } }
        },
    )
}

/// The hidden CSRF field of a form.
pub fn csrf(session: &PortalSession) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(session.csrf); }
}

/// A labelled form row with its control, help text and error message.
pub fn row(label: &str, id: &str, control: Markup, help: &str, error: Option<&str>) -> Markup {
    html! {
        div class={ "field" @if error.is_some() { " has-error" } } {
            label for=(id) { (label) }
            (control)
            @if let Some(message) = error {
                div.field-error id={ (id) "-error" } { (message) }
            } @else if !help.is_empty() {
                div.help { (help) }
            }
        }
    }
}

/// A notice above a page's content (after a change was saved).
pub fn notice(text: &str) -> Markup {
    html! { div.notice role="status" { (text) } }
}

/// An error summary above a refused form.
pub fn alert(text: &str) -> Markup {
    html! { div.alert role="alert" id="form-error" { (text) } }
}

pub fn role_label(role: &crate::access::Role) -> String {
    use crate::access::Role;
    match role {
        Role::SystemAdmin => "System admin".into(),
        Role::TenantAdmin => "Tenant admin".into(),
        Role::QueueManager => "Queue manager".into(),
        Role::User => "User".into(),
        Role::Custom(name) => format!("Custom: {name}"),
    }
}

/// A UTC unix millisecond time as `2026-01-02 15:04:05 UTC`.
pub fn time_label(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}
