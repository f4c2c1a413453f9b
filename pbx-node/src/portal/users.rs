//! The users and roles pages, acting through `crate::api::users`.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};

use super::form::{first, FieldValues, FormErrors};
use super::layout::{
    alert, csrf, notice, page, page_with_status, role_label, row, time_label, Nav,
};
use super::{shown_on_form, PortalError, PortalSession, Posted};
use crate::access::{Area, Grant, Level, Role};
use crate::api::listing::ListParams;
use crate::api::users::{self, NewUser, RoleInput, UserUpdate, UserView};
use crate::api::ApiState;

const USER_FIELDS: &[&str] = &[
    "username",
    "password",
    "display_name",
    "email",
    "role",
    "tenant_code",
];

/// The roles a new user of the shown tenant may get: the built-in
/// tenant roles and the tenant's custom ones, plus system administrator
/// for a system administrator.
fn role_choices(session: &PortalSession, custom: &[String]) -> Vec<(String, String)> {
    let mut choices = vec![
        ("tenant_admin".to_string(), "Tenant admin".to_string()),
        ("queue_manager".to_string(), "Queue manager".to_string()),
    ];
    choices.extend(
        custom
            .iter()
            .map(|name| (format!("custom:{name}"), format!("Custom: {name}"))),
    );
    if session.is_system_wide() {
        choices.push((
            "system_admin".to_string(),
            "System admin (no tenant)".to_string(),
        ));
    }
    choices
}

/// The role select's value for `role`.
fn choice_of(role: &Role) -> String {
    match role {
        Role::SystemAdmin => "system_admin".into(),
        Role::TenantAdmin => "tenant_admin".into(),
        Role::QueueManager => "queue_manager".into(),
        Role::User => "user".into(),
        Role::Custom(name) => format!("custom:{name}"),
    }
}

fn role_of(choice: &str) -> Role {
    match choice {
        "system_admin" => Role::SystemAdmin,
        "queue_manager" => Role::QueueManager,
        other => match other.strip_prefix("custom:") {
            Some(name) => Role::Custom(name.to_string()),
            None => Role::TenantAdmin,
        },
    }
}

fn done_notice(done: Option<&str>) -> Option<Markup> {
    let text = match done? {
        "created" => "The user was created.",
        "updated" => "The user was saved.",
        "deleted" => "The user was deleted.",
        "saved" => "The role was saved.",
        "role-deleted" => "The role was deleted.",
        _ => return None,
    };
    Some(notice(text))
}

async fn users_content(
    state: &ApiState,
    session: &PortalSession,
    values: &FieldValues,
    errors: &FormErrors,
    done: Option<&str>,
) -> Result<Markup, PortalError> {
    let code = session.tenant_code()?;
    // The shown tenant's users; a system administrator sees the system
    // administrators too.
    let mut filters = vec![format!("tenant_code eq '{code}'")];
    if session.is_system_wide() {
        filters.push("tenant_code eq null".to_string());
    }
    let mut listed = Vec::new();
    for filter in filters {
        let params = ListParams {
            filter: Some(filter),
            ..ListParams::default()
        };
        listed.extend(users::list(state, &session.principal, &params).await?.items);
    }
    let custom = custom_role_names(state, session).await?;
    let writable = session.can_manage_users();
    let chosen_role = first(values, "role");
    Ok(html! {
        @if let Some(n) = done_notice(done) { (n) }
        div.card.flush {
            table.data id="users" {
                thead { tr { th { "Username" } th { "Name" } th { "Email" } th { "Role" } th { "Tenant" } th { "Status" } th { "Created" } @if writable { th {} } } }
                tbody {
                    @for u in &listed {
                        tr {
                            td { a href={ "/users/" (u.username) } { (u.username) } }
                            td { (u.display_name) }
                            td { (u.email) }
                            td { span.badge { (role_label(&u.role)) } }
                            td { (u.tenant_code.as_deref().unwrap_or("—")) }
                            td { @if u.enabled { "Enabled" } @else { span.muted { "Disabled" } } }
                            td { (time_label(u.created_ms)) }
                            @if writable {
                                td.actions {
                                    @if u.username != session.principal.username {
                                        form method="post" action={ "/users/" (u.username) "/delete" } {
                                            (csrf(session))
                                            button.btn.small.danger type="submit" data-confirm={ "Delete user " (u.username) "?" } { "Delete" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if writable {
            h2 { "New user" }
            @if let Some(summary) = errors.summary() { (alert(&summary)) }
            form.card method="post" action="/users" {
                (csrf(session))
                div.grid {
                    (row("Username", "u-username", html! { input #u-username type="text" name="username" value=(first(values, "username")) autocomplete="off"; }, "Lower-case letters, digits and . _ @ -", errors.on("username")))
                    (row("Password", "u-password", html! { input #u-password type="password" name="password" autocomplete="new-password"; }, "At least 10 characters, with letters and digits, not the username.", errors.on("password")))
                    (row("Name", "u-display_name", html! { input #u-display_name type="text" name="display_name" value=(first(values, "display_name")); }, "", errors.on("display_name")))
                    (row("Email", "u-email", html! { input #u-email type="text" name="email" value=(first(values, "email")); }, "", errors.on("email")))
                    (row("Role", "u-role", html! {
                        select #u-role name="role" {
                            @for (value, label) in role_choices(session, &custom) {
                                option value=(value) selected[value == chosen_role] { (label) }
                            }
                        }
                    }, "", errors.on("role").or(errors.on("tenant_code"))))
                }
                div.form-actions { button.btn.primary type="submit" id="create-user" { "Create user" } }
            }
        }
    })
}

/// `GET /users`.
pub async fn users_page(
    State(state): State<ApiState>,
    session: PortalSession,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, PortalError> {
    let query = super::FormData::parse(raw.unwrap_or_default().as_bytes());
    let content = users_content(
        &state,
        &session,
        &FieldValues::new(),
        &FormErrors::default(),
        query.get("done"),
    )
    .await?;
    Ok(page(&session, Nav::Users, "Users", content))
}

/// `POST /users`: a user of the shown tenant (or a system administrator).
pub async fn create_user(
    State(state): State<ApiState>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?.to_string();
    let role = role_of(form.text("role"));
    let new = NewUser {
        username: form.text("username").to_string(),
        password: form.get("password").unwrap_or("").to_string(),
        display_name: form.text("display_name").to_string(),
        email: form.text("email").to_string(),
        tenant_code: (role != Role::SystemAdmin).then_some(code),
        role,
        enabled: true,
    };
    match users::create(&state, &session.principal, new).await {
        Ok(_) => Ok(Redirect::to("/users?done=created").into_response()),
        Err(e) if shown_on_form(&e) => {
            let errors = FormErrors::place(&e, USER_FIELDS);
            let content = users_content(&state, &session, &form.values(), &errors, None).await?;
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Users,
                "Users",
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

const EDIT_FIELDS: &[&str] = &["password", "display_name", "email", "role", "enabled"];

fn user_form(
    session: &PortalSession,
    user: &UserView,
    custom: &[String],
    values: &FieldValues,
    errors: &FormErrors,
) -> Markup {
    let writable = session.can_manage_users();
    let chosen_role = first(values, "role");
    let mut choices = role_choices(session, custom);
    if !choices.iter().any(|(value, _)| value == chosen_role) {
        choices.push((chosen_role.to_string(), role_label(&role_of(chosen_role))));
    }
    html! {
        @if let Some(summary) = errors.summary() { (alert(&summary)) }
        form.card method="post" action={ "/users/" (user.username) } {
            (csrf(session))
            fieldset.plain disabled[!writable] {
                div.grid {
                    (row("Username", "u-username", html! { input #u-username type="text" value=(user.username) readonly; }, "", None))
                    (row("Tenant", "u-tenant", html! { input #u-tenant type="text" value=(user.tenant_code.as_deref().unwrap_or("— (system)")) readonly; }, "", None))
                    (row("Name", "u-display_name", html! { input #u-display_name type="text" name="display_name" value=(first(values, "display_name")); }, "", errors.on("display_name")))
                    (row("Email", "u-email", html! { input #u-email type="text" name="email" value=(first(values, "email")); }, "", errors.on("email")))
                    (row("Role", "u-role", html! {
                        select #u-role name="role" {
                            @for (value, label) in &choices {
                                option value=(value) selected[value == chosen_role] { (label) }
                            }
                        }
                    }, "", errors.on("role")))
                    (row("Status", "u-enabled", html! {
                        label.check {
                            input #u-enabled type="checkbox" name="enabled" checked[!first(values, "enabled").is_empty()];
                            span { "Enabled" }
                        }
                    }, "A disabled user cannot log in; its sessions stop working at once.", errors.on("enabled")))
                    (row("New password", "u-password", html! { input #u-password type="password" name="password" autocomplete="new-password"; }, "Leave empty to keep the current one.", errors.on("password")))
                }
            }
            div.form-actions {
                @if writable { button.btn.primary type="submit" id="save-user" { "Save user" } }
                a.btn.ghost href="/users" { "Back to the users" }
            }
        }
    }
}

fn values_of(user: &UserView) -> FieldValues {
    let mut values = FieldValues::new();
    values.insert("display_name".into(), vec![user.display_name.clone()]);
    values.insert("email".into(), vec![user.email.clone()]);
    values.insert("role".into(), vec![choice_of(&user.role)]);
    if user.enabled {
        values.insert("enabled".into(), vec!["on".into()]);
    }
    values
}

/// The custom roles a user of the shown tenant may get.
async fn custom_role_names(
    state: &ApiState,
    session: &PortalSession,
) -> Result<Vec<String>, PortalError> {
    let code = session.tenant_code()?;
    Ok(users::roles(state, &session.principal, code)
        .await?
        .items
        .into_iter()
        .map(|r| r.name)
        .collect())
}

/// `GET /users/{username}`.
pub async fn user_page(
    State(state): State<ApiState>,
    session: PortalSession,
    Path(username): Path<String>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, PortalError> {
    let user = users::get(&state, &session.principal, &username).await?;
    let custom = custom_role_names(&state, &session).await?;
    let query = super::FormData::parse(raw.unwrap_or_default().as_bytes());
    let content = html! {
        @if let Some(n) = done_notice(query.get("done")) { (n) }
        (user_form(&session, &user, &custom, &values_of(&user), &FormErrors::default()))
    };
    Ok(page(
        &session,
        Nav::Users,
        &format!("User {}", user.username),
        content,
    ))
}

/// `POST /users/{username}`: only what changed is sent, as the API's
/// update leaves out what stays.
pub async fn update_user(
    State(state): State<ApiState>,
    Path(username): Path<String>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let user = users::get(&state, &session.principal, &username).await?;
    let role = role_of(form.text("role"));
    let enabled = form.get("enabled").is_some();
    let update = UserUpdate {
        password: form
            .get("password")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
        display_name: Some(form.text("display_name").to_string()),
        email: Some(form.text("email").to_string()),
        role: (role != user.role).then_some(role),
        enabled: (enabled != user.enabled).then_some(enabled),
    };
    match users::update(&state, &session.principal, &username, update).await {
        Ok(_) => Ok(Redirect::to(&format!("/users/{username}?done=updated")).into_response()),
        Err(e) if shown_on_form(&e) => {
            let custom = custom_role_names(&state, &session).await?;
            let errors = FormErrors::place(&e, EDIT_FIELDS);
            let content = user_form(&session, &user, &custom, &form.values(), &errors);
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Users,
                &format!("User {}", user.username),
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /users/{username}/delete`.
pub async fn delete_user(
    State(state): State<ApiState>,
    Path(username): Path<String>,
    posted: Posted,
) -> Result<Response, PortalError> {
    users::delete(&state, &posted.session.principal, &username).await?;
    Ok(Redirect::to("/users?done=deleted").into_response())
}

/// The areas a custom role may grant: all but System Tenant.
const ROLE_AREAS: &[Area] = &[
    Area::Users,
    Area::User,
    Area::PhoneSystem,
    Area::CallQueues,
    Area::Analytics,
];

fn area_field(area: Area) -> String {
    format!("grant.{}", area.name())
}

fn grants_label(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "—".into();
    }
    grants
        .iter()
        .map(Grant::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn roles_content(
    state: &ApiState,
    session: &PortalSession,
    values: &FieldValues,
    errors: &FormErrors,
    done: Option<&str>,
) -> Result<Markup, PortalError> {
    let code = session.tenant_code()?;
    let custom = users::roles(state, &session.principal, code).await?.items;
    let writable = session.can_manage_users();
    let builtin = [Role::TenantAdmin, Role::QueueManager, Role::User];
    Ok(html! {
        @if let Some(n) = done_notice(done) { (n) }
        h2 { "Built-in roles" }
        div.card.flush {
            table.data id="builtin-roles" {
                thead { tr { th { "Role" } th { "Permissions" } } }
                tbody {
                    @for role in &builtin {
                        tr { td { (role_label(role)) } td { (grants_label(role.builtin_grants().unwrap_or_default())) } }
                    }
                }
            }
        }
        h2 { "Custom roles of " (code) }
        div.card.flush {
            table.data id="custom-roles" {
                thead { tr { th { "Name" } th { "Permissions" } @if writable { th {} } } }
                tbody {
                    @for r in &custom {
                        tr {
                            td { (r.name) }
                            td { (grants_label(&r.grants)) }
                            @if writable {
                                td.actions {
                                    form method="post" action={ "/roles/" (r.name) "/delete" } {
                                        (csrf(session))
                                        button.btn.small.danger type="submit" data-confirm={ "Delete role " (r.name) "?" } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                    @if custom.is_empty() { tr { td.empty colspan="3" { "No custom roles yet." } } }
                }
            }
        }
        @if writable {
            h2 { "Create or replace a custom role" }
            @if let Some(summary) = errors.summary() { (alert(&summary)) }
            form.card method="post" action="/roles" {
                (csrf(session))
                div.grid {
                    (row("Name", "r-name", html! { input #r-name type="text" name="name" value=(first(values, "name")); }, "Lower-case letters, digits and . _ @ -", errors.on("name")))
                    @for area in ROLE_AREAS {
                        @let name = area_field(*area);
                        @let chosen = first(values, &name);
                        (row(area.name(), &name, html! {
                            select id=(name) name=(name) {
                                option value="" { "No access" }
                                option value="view" selected[chosen == "view"] { (Level::ViewOnly.name()) }
                                option value="full" selected[chosen == "full"] { (Level::FullAccess.name()) }
                            }
                        }, "", None))
                    }
                }
                @if let Some(message) = errors.on("grants") { div.field-error { (message) } }
                div.form-actions { button.btn.primary type="submit" id="save-role" { "Save role" } }
            }
        }
    })
}

/// `GET /roles`.
pub async fn roles_page(
    State(state): State<ApiState>,
    session: PortalSession,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Response, PortalError> {
    let query = super::FormData::parse(raw.unwrap_or_default().as_bytes());
    let content = roles_content(
        &state,
        &session,
        &FieldValues::new(),
        &FormErrors::default(),
        query.get("done"),
    )
    .await?;
    Ok(page(&session, Nav::Roles, "Roles", content))
}

/// `POST /roles`.
pub async fn save_role(
    State(state): State<ApiState>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let Posted { session, form } = posted;
    let code = session.tenant_code()?;
    let grants = ROLE_AREAS
        .iter()
        .filter_map(|area| {
            let level = match form.text(&area_field(*area)) {
                "view" => Level::ViewOnly,
                "full" => Level::FullAccess,
                _ => return None,
            };
            Some(Grant { area: *area, level })
        })
        .collect();
    let name = form.text("name").to_string();
    match users::save_role(&state, &session.principal, code, name, RoleInput { grants }).await {
        Ok(_) => Ok(Redirect::to("/roles?done=saved").into_response()),
        Err(e) if shown_on_form(&e) => {
            let errors = FormErrors::place(&e, &["name", "grants"]);
            let content = roles_content(&state, &session, &form.values(), &errors, None).await?;
            Ok(page_with_status(
                e.status,
                &session,
                Nav::Roles,
                "Roles",
                content,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /roles/{name}/delete`.
pub async fn delete_role(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    posted: Posted,
) -> Result<Response, PortalError> {
    let code = posted.session.tenant_code()?;
    users::remove_role(&state, &posted.session.principal, code, &name).await?;
    Ok(Redirect::to("/roles?done=role-deleted").into_response())
}
