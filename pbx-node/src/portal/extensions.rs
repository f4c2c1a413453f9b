//! The extension pages: the list (search, sort, paging, column choice,
//! row selection, bulk delete with confirmation, CSV export), the create
//! and edit forms of each kind, bulk create and the CSV import with its
//! row report. Each acts through `crate::api::extensions` and
//! `crate::api::bulk`, the functions the API handlers call.

use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::extension_form::{
    default_values, field_names, input_from_form, kind_name, kind_of, render_sections,
    values_from_view,
};
use super::form::{first, FieldValues, FormData, FormErrors};
use super::layout::{alert, csrf, notice, page, page_with_status, row, Nav};
use super::{shown_on_form, PortalError, PortalSession, Posted, CSRF_FIELD};
use crate::access::{Area, Level};
use crate::api::bulk::{self, BulkCreate, BulkCreated, BulkDelete, ImportOutcome};
use crate::api::error::ApiError;
use crate::api::extensions::{self, ExtensionView};
use crate::api::listing::ListParams;
use crate::api::ApiState;
use crate::model::ExtensionKind;

/// The columns the list can show: API field and heading.
const COLUMNS: &[(&str, &str)] = &[
    ("number", "Number"),
    ("display_name", "Name"),
    ("kind", "Kind"),
    ("username", "SIP username"),
    ("department", "Department"),
    ("email", "Email"),
    ("dnd", "DND"),
    ("voicemail_enabled", "Voicemail"),
    ("ring_timeout_secs", "Ring timeout"),
    ("max_contacts", "Max contacts"),
    ("description", "Description"),
];
const DEFAULT_COLUMNS: &[&str] = &[
    "number",
    "display_name",
    "kind",
    "username",
    "department",
    "dnd",
];
const PAGE_SIZES: &[usize] = &[10, 25, 50, 100];

/// The list's state as its query string carries it.
struct ListState {
    search: String,
    sort: &'static str,
    descending: bool,
    page: usize,
    size: usize,
    columns: Vec<&'static str>,
}

impl ListState {
    fn from_query(query: &FormData) -> ListState {
        let known = |name: &str| COLUMNS.iter().map(|(c, _)| *c).find(|c| *c == name);
        let mut columns: Vec<&'static str> =
            query.all("cols").into_iter().filter_map(known).collect();
        if columns.is_empty() {
            columns = DEFAULT_COLUMNS.to_vec();
        }
        let size = query
            .text("size")
            .parse()
            .ok()
            .filter(|s| PAGE_SIZES.contains(s))
            .unwrap_or(25);
        ListState {
            search: query.text("search").to_string(),
            sort: known(query.text("sort")).unwrap_or("number"),
            descending: query.text("desc") == "1",
            page: query
                .text("page")
                .parse()
                .ok()
                .filter(|p| *p >= 1)
                .unwrap_or(1),
            size,
            columns,
        }
    }

    /// How many items come before this page; a page number typed beyond
    /// any count just shows an empty page.
    fn skip(&self) -> usize {
        (self.page - 1).saturating_mul(self.size)
    }

    /// The list URL with this state, changed by `change`.
    fn url(&self, change: impl FnOnce(&mut ListQuery)) -> String {
        let mut q = ListQuery {
            search: self.search.clone(),
            sort: self.sort,
            descending: self.descending,
            page: self.page,
            size: self.size,
        };
        change(&mut q);
        let mut out = form_urlencoded::Serializer::new(String::new());
        if !q.search.is_empty() {
            out.append_pair("search", &q.search);
        }
        out.append_pair("sort", q.sort);
        if q.descending {
            out.append_pair("desc", "1");
        }
        out.append_pair("page", &q.page.to_string());
        out.append_pair("size", &q.size.to_string());
        for c in &self.columns {
            out.append_pair("cols", c);
        }
        format!("/extensions?{}", out.finish())
    }

    /// Hidden fields carrying the state into a GET form that changes part of it.
    fn hidden_except(&self, changed: &[&str]) -> Markup {
        html! {
            @if !changed.contains(&"search") && !self.search.is_empty() {
                input type="hidden" name="search" value=(self.search);
            }
            @if !changed.contains(&"sort") {
                input type="hidden" name="sort" value=(self.sort);
                @if self.descending { input type="hidden" name="desc" value="1"; }
            }
            @if !changed.contains(&"size") {
                input type="hidden" name="size" value=(self.size);
            }
            @if !changed.contains(&"cols") {
                @for c in &self.columns { input type="hidden" name="cols" value=(c); }
            }
        }
    }
}

struct ListQuery {
    search: String,
    sort: &'static str,
    descending: bool,
    page: usize,
    size: usize,
}

fn cell(view: &serde_json::Value, column: &str) -> String {
    match view.get(column) {
        Some(serde_json::Value::Bool(true)) => "Yes".into(),
        Some(serde_json::Value::Bool(false)) | Some(serde_json::Value::Null) | None => "—".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn done_notice(query: &FormData) -> Option<Markup> {
    let text = match query.text("done") {
        "created" => "The extension was created.",
        "saved" => "The changes were saved.",
        "deleted" => "The selected extensions were deleted.",
        _ => return None,
    };
    Some(notice(text))
}

/// `GET /extensions`.
pub async fn list_page(
    State(state): State<ApiState>,
    session: PortalSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PortalError> {
    // An extension's own user may not list extensions, only read its own.
    if let Some(own) = &session.principal.extension {
        if !session.principal.holds(Area::Users, Level::ViewOnly) {
            return Ok(Redirect::to(&format!("/extensions/{own}")).into_response());
        }
    }
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let list = ListState::from_query(&query);
    let code = session.tenant_code()?;
    let orderby = match (list.sort, list.descending) {
        ("number", false) => "number".to_string(),
        ("number", true) => "number desc".to_string(),
        (sort, false) => format!("{sort}, number"),
        (sort, true) => format!("{sort} desc, number"),
    };
    let params = ListParams {
        search: Some(list.search.clone()).filter(|s| !s.is_empty()),
        orderby: Some(orderby),
        skip: Some(list.skip()),
        top: Some(list.size),
        filter: None,
    };
    let result = extensions::list(&state, &session.principal, code, &params).await?;
    let rows: Vec<serde_json::Value> = result
        .items
        .iter()
        .map(|v| serde_json::to_value(v).unwrap_or_default())
        .collect();
    let writable = session.can_manage_users();
    let shown_end = list.skip().saturating_add(rows.len());
    let (first_shown, last_shown) = if rows.is_empty() {
        (0, 0)
    } else {
        (list.skip().saturating_add(1), shown_end)
    };
    let more = shown_end < result.count;
    let content = html! {
        @if let Some(n) = done_notice(&query) { (n) }
        div.toolbar {
            form.search method="get" action="/extensions" {
                (list.hidden_except(&["search"]))
                input #search type="search" name="search" value=(list.search)
                    placeholder="Search number, name, username, email…";
                button.btn type="submit" id="search-button" { "Search" }
                @if !list.search.is_empty() {
                    a.btn.ghost href=(list.url(|q| { q.search.clear(); q.page = 1; })) { "Clear" }
                }
            }
            div.actions {
                @if writable {
                    a.btn.primary href="/extensions/new?kind=phone" id="new-extension" { "+ New extension" }
                    a.btn href="/extensions/bulk-create" { "Bulk create" }
                    a.btn href="/extensions/import" id="import-csv" { "Import CSV" }
                }
                a.btn href="/extensions/export.csv" id="export-csv" { "Export CSV" }
                details.columns {
                    summary.btn { "Columns" }
                    form.menu method="get" action="/extensions" {
                        (list.hidden_except(&["cols"]))
                        @for (column, label) in COLUMNS {
                            label.check {
                                input type="checkbox" name="cols" value=(column)
                                    checked[list.columns.contains(column)];
                                span { (label) }
                            }
                        }
                        button.btn.small.primary type="submit" id="apply-columns" { "Apply" }
                    }
                }
            }
        }
        div.card.flush {
            table.data id="extensions" {
                thead {
                    tr {
                        @if writable {
                            th.select { input type="checkbox" data-select-all aria-label="Select all"; }
                        }
                        @for column in &list.columns {
                            @let label = COLUMNS.iter().find(|(c, _)| c == column).map(|(_, l)| *l).unwrap_or(column);
                            @let descending = list.sort == *column && !list.descending;
                            th {
                                a href=(list.url(|q| { q.sort = column; q.descending = descending; q.page = 1; })) {
                                    (label)
                                    @if list.sort == *column {
                                        span.sort { @if list.descending { " ▼" } @else { " ▲" } }
                                    }
                                }
                            }
                        }
                    }
                }
                tbody {
                    @for row in &rows {
                        @let number = cell(row, "number");
                        tr {
                            @if writable {
                                td.select {
                                    input type="checkbox" form="bulk" name="numbers" value=(number)
                                        data-row aria-label={ "Select " (number) };
                                }
                            }
                            @for column in &list.columns {
                                td {
                                    @if *column == "number" {
                                        a href={ "/extensions/" (number) } { (number) }
                                    } @else if *column == "kind" {
                                        span class={ "badge kind-" (cell(row, column)) } { (cell(row, column)) }
                                    } @else {
                                        (cell(row, column))
                                    }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() {
                        tr { td.empty colspan=(list.columns.len() + 1) { "No extensions match." } }
                    }
                }
            }
        }
        div.pager {
            span id="showing" { "Showing " (first_shown) "–" (last_shown) " of " (result.count) }
            @if writable {
                form #bulk method="post" action="/extensions/bulk-delete" {
                    (csrf(&session))
                    button.btn.danger type="submit" data-bulk-action id="bulk-delete" { "Delete selected" }
                }
            }
            form.inline method="get" action="/extensions" {
                (list.hidden_except(&["size"]))
                label for="size" { "Per page" }
                select #size name="size" {
                    @for s in PAGE_SIZES { option value=(s) selected[*s == list.size] { (s) } }
                }
                button.btn.small type="submit" { "Go" }
            }
            span.pages {
                @if list.page > 1 {
                    a.btn.small href=(list.url(|q| q.page -= 1)) { "‹ Previous" }
                }
                @if more {
                    a.btn.small href=(list.url(|q| q.page += 1)) id="next-page" { "Next ›" }
                }
            }
        }
    };
    Ok(page(&session, Nav::Extensions, "Extensions", content))
}

fn kind_tabs(current: ExtensionKind) -> Markup {
    html! {
        div.tabs {
            @for (kind, label) in [(ExtensionKind::Phone, "Phone"), (ExtensionKind::Custom, "Custom"), (ExtensionKind::Virtual, "Virtual")] {
                a class={ "tab" @if kind == current { " active" } }
                    href={ "/extensions/new?kind=" (kind_name(kind)) } { (label) }
            }
        }
    }
}

/// The create or edit form of `kind`.
fn extension_form(
    session: &PortalSession,
    kind: ExtensionKind,
    values: &FieldValues,
    errors: &FormErrors,
    existing: Option<&ExtensionView>,
) -> Markup {
    let action = match existing {
        Some(e) => format!("/extensions/{}", e.number),
        None => "/extensions/new".to_string(),
    };
    let writable = session.can_manage_users();
    html! {
        @if let Some(summary) = errors.summary() { (alert(&summary)) }
        form.extension-form method="post" action=(action) {
            (csrf(session))
            input type="hidden" name="kind" value=(kind_name(kind));
            fieldset.plain disabled[!writable] {
                (render_sections(kind, values, errors, existing))
            }
            div.form-actions {
                @if writable {
                    button.btn.primary type="submit" id="save" {
                        @if existing.is_some() { "Save changes" } @else { "Create extension" }
                    }
                }
                a.btn.ghost href="/extensions" { "Back to the list" }
            }
        }
        @if let (Some(e), true) = (existing, writable) {
            form.danger-zone method="post" action="/extensions/bulk-delete" {
                (csrf(session))
                input type="hidden" name="numbers" value=(e.number);
                button.btn.danger type="submit" id="delete-extension" { "Delete extension " (e.number) }
            }
        }
    }
}

/// `GET /extensions/new?kind=…`.
pub async fn new_page(
    session: PortalSession,
    RawQuery(raw): RawQuery,
) -> Result<Response, PortalError> {
    session.tenant_code()?;
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let kind = kind_of(query.text("kind"));
    let content = html! {
        (kind_tabs(kind))
        (extension_form(&session, kind, &default_values(), &FormErrors::default(), None))
    };
    let title = format!("New {} extension", kind_name(kind));
    Ok(page(&session, Nav::Extensions, &title, content))
}

/// `POST /extensions/new`.
pub async fn create(
    State(state): State<ApiState>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?;
    session.require_user_admin()?;
    let kind = kind_of(form.text("kind"));
    let created = match input_from_form(&form, kind) {
        Ok(input) => extensions::create(&state, &session.principal, code, input).await,
        Err(e) => Err(e),
    };
    match created {
        Ok(view) => {
            Ok(Redirect::to(&format!("/extensions/{}?done=created", view.number)).into_response())
        }
        Err(e) if shown_on_form(&e) => {
            let errors = FormErrors::place(&e, &field_names(kind));
            let content = html! {
                (kind_tabs(kind))
                (extension_form(&session, kind, &form.values(), &errors, None))
            };
            let title = format!("New {} extension", kind_name(kind));
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Extensions,
                &title,
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /extensions/{number}`.
pub async fn edit_page(
    State(state): State<ApiState>,
    session: PortalSession,
    Path(number): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, PortalError> {
    let code = session.tenant_code()?;
    let view = extensions::get(&state, &session.principal, code, &number).await?;
    let query = FormData::parse(raw.unwrap_or_default().as_bytes());
    let content = html! {
        @if let Some(n) = done_notice(&query) { (n) }
        (extension_form(&session, view.kind, &values_from_view(&view), &FormErrors::default(), Some(&view)))
    };
    let title = format!("Extension {} · {}", view.number, view.display_name);
    Ok(page(&session, Nav::Extensions, &title, content))
}

/// `POST /extensions/{number}`.
pub async fn update(
    State(state): State<ApiState>,
    Path(number): Path<String>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?;
    session.require_user_admin()?;
    let current = extensions::get(&state, &session.principal, code, &number).await?;
    let updated = match input_from_form(&form, current.kind) {
        Ok(input) => extensions::update(&state, &session.principal, code, &number, input).await,
        Err(e) => Err(e),
    };
    match updated {
        Ok(view) => {
            Ok(Redirect::to(&format!("/extensions/{}?done=saved", view.number)).into_response())
        }
        Err(e) if shown_on_form(&e) => {
            let errors = FormErrors::place(&e, &field_names(current.kind));
            let content = extension_form(
                &session,
                current.kind,
                &form.values(),
                &errors,
                Some(&current),
            );
            let title = format!("Extension {} · {}", current.number, current.display_name);
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Extensions,
                &title,
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /extensions/bulk-delete`: without `confirmed`, the confirmation
/// page; with it, the deletion (all or none).
pub async fn bulk_delete(
    State(state): State<ApiState>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?;
    let numbers: Vec<String> = form
        .all("numbers")
        .into_iter()
        .map(str::to_string)
        .collect();
    if numbers.is_empty() {
        return Err(PortalError::new(
            StatusCode::BAD_REQUEST,
            "Select at least one extension to delete.",
        ));
    }
    if form.get("confirmed").is_some() {
        bulk::delete_numbers(&state, &session.principal, code, BulkDelete { numbers }).await?;
        return Ok(Redirect::to("/extensions?done=deleted").into_response());
    }
    let content = html! {
        div.card.confirm {
            p { "Delete " strong { (numbers.len()) } " extension(s) of tenant " strong { (code) } " with their registrations? This cannot be undone." }
            ul.numbers { @for n in &numbers { li { (n) } } }
            form method="post" action="/extensions/bulk-delete" {
                (csrf(&session))
                @for n in &numbers { input type="hidden" name="numbers" value=(n); }
                input type="hidden" name="confirmed" value="yes";
                button.btn.danger.solid type="submit" id="confirm-delete" { "Delete" }
                " "
                a.btn.ghost href="/extensions" { "Cancel" }
            }
        }
    };
    Ok(page(&session, Nav::Extensions, "Confirm deletion", content))
}

/// `GET /extensions/export.csv`: the API's export, as a download.
pub async fn export(
    State(state): State<ApiState>,
    session: PortalSession,
) -> Result<Response, PortalError> {
    let code = session.tenant_code()?;
    let (file_name, csv) = bulk::export(&state, &session.principal, code).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        csv,
    )
        .into_response())
}

const BULK_FIELDS: &[&str] = &["first", "count", "display_name_pattern", "password_pattern"];

fn bulk_create_form(session: &PortalSession, values: &FieldValues, errors: &FormErrors) -> Markup {
    let input = |name: &str, placeholder: &str| {
        html! { input type="text" id={ "f-" (name) } name=(name) value=(first(values, name)) placeholder=(placeholder); }
    };
    html! {
        @if let Some(summary) = errors.summary() { (alert(&summary)) }
        form.card method="post" action="/extensions/bulk-create" {
            (csrf(session))
            div.grid {
                (row("First number", "f-first", input("first", "200"), "Leading zeros are kept.", errors.on("first")))
                (row("How many", "f-count", input("count", "10"), "1 to 1000.", errors.on("count")))
                (row("Display name pattern", "f-display_name_pattern", input("display_name_pattern", "Extension {number}"), "{number} stands for each number.", errors.on("display_name_pattern")))
                (row("SIP password pattern", "f-password_pattern", input("password_pattern", "{random}{random}"), "{random} = 12 random letters and digits; the passwords are shown once.", errors.on("password_pattern")))
            }
            div.form-actions {
                button.btn.primary type="submit" id="bulk-create" { "Create extensions" }
                a.btn.ghost href="/extensions" { "Cancel" }
            }
        }
    }
}

/// `GET /extensions/bulk-create`.
pub async fn bulk_create_page(session: PortalSession) -> Result<Response, PortalError> {
    session.tenant_code()?;
    let content = bulk_create_form(&session, &FieldValues::new(), &FormErrors::default());
    Ok(page(
        &session,
        Nav::Extensions,
        "Bulk create extensions",
        content,
    ))
}

/// `POST /extensions/bulk-create`: the created numbers with their
/// passwords, shown this once.
pub async fn bulk_create(
    State(state): State<ApiState>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?;
    session.require_user_admin()?;
    let optional = |name: &str| Some(form.text(name).to_string()).filter(|v| !v.is_empty());
    let created = match form.text("count").parse::<u32>() {
        Ok(count) => {
            let request = BulkCreate {
                first: form.text("first").to_string(),
                count,
                display_name_pattern: optional("display_name_pattern"),
                password_pattern: optional("password_pattern"),
            };
            bulk::create_range(&state, &session.principal, code, request).await
        }
        Err(_) => Err(ApiError::invalid("count", "must be a whole number")),
    };
    match created {
        Ok(BulkCreated { items }) => {
            let content = html! {
                (notice(&format!("{} extensions were created. Note their passwords now: they are not shown again.", items.len())))
                div.card.flush {
                    table.data id="created" {
                        thead { tr { th { "Number" } th { "SIP username" } th { "SIP password" } } }
                        tbody {
                            @for c in &items {
                                tr { td { a href={ "/extensions/" (c.number) } { (c.number) } } td { (c.username) } td.mono { (c.password) } }
                            }
                        }
                    }
                }
                p { a.btn href="/extensions" { "Back to the list" } }
            };
            Ok(page(
                &session,
                Nav::Extensions,
                "Extensions created",
                content,
            ))
        }
        Err(e) if shown_on_form(&e) => {
            let errors = FormErrors::place(&e, BULK_FIELDS);
            let content = bulk_create_form(&session, &form.values(), &errors);
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Extensions,
                "Bulk create extensions",
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

fn import_form(session: &PortalSession) -> Markup {
    html! {
        form.card method="post" action="/extensions/import" enctype="multipart/form-data" {
            (csrf(session))
            p { "A CSV file with a header row naming columns of the export. Rows create new extensions and replace existing ones; empty secrets keep the stored ones. Nothing is written unless every row is valid." }
            div.field {
                label for="csv-file" { "CSV file" }
                input #csv-file type="file" name="file" accept=".csv,text/csv" required;
            }
            div.form-actions {
                button.btn.primary type="submit" id="upload" { "Import" }
                a.btn.ghost href="/extensions/export.csv" { "Download the current extensions as a template" }
            }
        }
    }
}

/// `GET /extensions/import`.
pub async fn import_page(session: PortalSession) -> Result<Response, PortalError> {
    session.tenant_code()?;
    Ok(page(
        &session,
        Nav::Extensions,
        "Import extensions",
        import_form(&session),
    ))
}

/// `POST /extensions/import` (multipart): the CSRF field is checked before
/// the file is looked at; then the API's import, and its report.
pub async fn import(
    State(state): State<ApiState>,
    session: PortalSession,
    mut multipart: Multipart,
) -> Result<Response, PortalError> {
    let code = session.tenant_code()?;
    session.require_user_admin()?;
    let mut token = None;
    let mut file = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return Err(PortalError::new(e.status(), e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_string();
        let bytes = field
            .bytes()
            .await
            .map_err(|e| PortalError::new(e.status(), e.body_text()))?;
        match name.as_str() {
            CSRF_FIELD => token = Some(String::from_utf8_lossy(&bytes).into_owned()),
            "file" => file = Some(bytes),
            _ => {}
        }
    }
    session.check_csrf(token.as_deref())?;
    let Some(file) = file else {
        return Err(PortalError::new(
            StatusCode::BAD_REQUEST,
            "Choose a CSV file to import.",
        ));
    };
    let outcome = bulk::import(&state, &session.principal, code, &file).await;
    let (status, result) = match outcome {
        Ok(ImportOutcome::Applied(report)) => (
            StatusCode::OK,
            html! {
                div.notice role="status" id="import-done" {
                    "Imported: " (report.created) " created, " (report.updated) " updated, " (report.unchanged) " unchanged."
                }
            },
        ),
        Ok(ImportOutcome::Refused(rows)) => (
            StatusCode::BAD_REQUEST,
            html! {
                (alert(&format!("{} bad row(s); nothing was imported. Correct them and upload the file again.", rows.len())))
                div.card.flush {
                    table.data id="import-report" {
                        thead { tr { th { "Line" } th { "Field" } th { "Reason" } } }
                        tbody {
                            @for r in &rows { tr { td { (r.line) } td.mono { (r.field) } td { (r.reason) } } }
                        }
                    }
                }
            },
        ),
        Err(e) if shown_on_form(&e) => (e.status, alert(&e.message)),
        Err(e) => return Err(e.into()),
    };
    let content = html! { (result) (import_form(&session)) };
    Ok(page_with_status(
        status,
        &session,
        Nav::Extensions,
        "Import extensions",
        content,
    ))
}
