//! The audit log page: a tenant's entries, and for a system administrator
//! the system-level ones, through `crate::api::audit`.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::html;

use super::form::FormData;
use super::layout::{page, time_label, Nav};
use super::{PortalError, PortalSession};
use crate::api::{audit, ApiState, SinceQuery};

/// Entries per page.
const PAGE: u64 = 100;

/// `GET /audit?scope=system&since=<ms>`: oldest first from `since`.
pub async fn page_view(
    State(state): State<ApiState>,
    session: PortalSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PortalError> {
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let system = query.text("scope") == "system" && session.is_system_wide();
    let since = query.text("since").parse().ok();
    let request = SinceQuery {
        since,
        top: Some(PAGE),
    };
    let (scope_label, entries) = if system {
        (
            "system".to_string(),
            audit::system_entries(&state, &session.principal, &request).await?,
        )
    } else {
        let code = session.tenant_code()?;
        (
            format!("tenant {code}"),
            audit::tenant_entries(&state, &session.principal, code, &request).await?,
        )
    };
    let next = entries
        .last()
        .filter(|_| entries.len() as u64 == PAGE)
        .map(|e| e.time_ms.saturating_add(1));
    let scope_param = if system { "&scope=system" } else { "" };
    let content = html! {
        div.toolbar {
            p.muted { "Changes to " (scope_label) ", oldest first." }
            @if session.is_system_wide() {
                div.actions {
                    a class={ "btn" @if !system { " primary" } } href="/audit" { "Tenant" }
                    a class={ "btn" @if system { " primary" } } href="/audit?scope=system" { "System" }
                }
            }
        }
        div.card.flush {
            table.data id="audit" {
                thead { tr { th { "Time" } th { "Who" } th { "Action" } th { "What" } } }
                tbody {
                    @for e in &entries {
                        tr {
                            td.mono { (time_label(e.time_ms)) }
                            td { (e.actor) }
                            td { span class={ "badge action-" (e.action) } { (e.action) } }
                            td { (e.resource) }
                        }
                    }
                    @if entries.is_empty() { tr { td.empty colspan="4" { "No changes recorded." } } }
                }
            }
        }
        @if let Some(next) = next {
            p { a.btn href={ "/audit?since=" (next) (scope_param) } { "Later entries ›" } }
        }
    };
    Ok(page(&session, Nav::Audit, "Audit log", content))
}
