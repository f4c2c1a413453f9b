//! Portal and API users, and tenants' custom roles. A system administrator
//! manages every user; a principal with `Users: Full Access` in a tenant
//! manages that tenant's users and roles, and can hand out only grants it
//! holds itself.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ErrorBody};
use super::listing::{ListParams, Listing};
use super::tenants::visible_tenant;
use super::{audit, require, ApiState};
use crate::access::{normalize, Area, Grant, Level, Principal, Role};
use crate::accounts::{self, CustomRole, User};
use crate::service::unix_now_ms;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Lower-case letters, digits and `._@-`.
    pub username: String,
    pub password: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub email: String,
    pub role: Role,
    /// The user's tenant; required for every role but system_admin.
    pub tenant_code: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A change to a user: omitted fields keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub password: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub role: Option<Role>,
    pub enabled: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub display_name: String,
    pub email: String,
    pub role: Role,
    pub tenant_code: Option<String>,
    pub enabled: bool,
    pub created_ms: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    pub items: Vec<UserView>,
    pub count: usize,
}

const LISTING: Listing<'static> = Listing {
    fields: &[
        "username",
        "display_name",
        "email",
        "role",
        "tenant_code",
        "enabled",
        "created_ms",
    ],
    search_fields: &["username", "display_name", "email"],
    default_order: "username",
};

async fn view(state: &ApiState, user: User) -> Result<UserView, ApiError> {
    let tenant_code = match &user.tenant_id {
        Some(id) => state.repo.tenant(id).await?.map(|t| t.code),
        None => None,
    };
    Ok(UserView {
        username: user.username,
        display_name: user.display_name,
        email: user.email,
        role: user.role,
        tenant_code,
        enabled: user.enabled,
        created_ms: user.created_ms,
    })
}

/// May `principal` manage users of `tenant_id` (`None` = system users)?
fn may_manage(principal: &Principal, tenant_id: Option<&str>) -> bool {
    match tenant_id {
        None => principal.holds(Area::SystemTenant, Level::FullAccess),
        Some(id) => principal.sees_tenant(id) && principal.holds(Area::Users, Level::FullAccess),
    }
}

fn may_view(principal: &Principal, tenant_id: Option<&str>) -> bool {
    match tenant_id {
        None => principal.holds(Area::SystemTenant, Level::ViewOnly),
        Some(id) => principal.sees_tenant(id) && principal.holds(Area::Users, Level::ViewOnly),
    }
}

/// The grants `role` gives in `tenant_id`, refusing a role that does not
/// fit where the user lives or exceeds what `principal` holds.
async fn check_role(
    state: &ApiState,
    principal: &Principal,
    role: &Role,
    tenant_id: Option<&str>,
) -> Result<(), ApiError> {
    let grants: Vec<Grant> = match (role, tenant_id) {
        (Role::SystemAdmin, None) => role.builtin_grants().unwrap_or_default().to_vec(),
        (Role::SystemAdmin, Some(_)) => {
            return Err(ApiError::invalid(
                "role",
                "a system administrator has no tenant",
            ))
        }
        (_, None) => {
            return Err(ApiError::invalid(
                "tenant_code",
                "every role but system_admin needs a tenant",
            ))
        }
        (Role::Custom(name), Some(tenant_id)) => {
            state
                .accounts
                .custom_role(tenant_id, name)
                .await?
                .ok_or_else(|| {
                    ApiError::invalid("role", format!("no custom role {name} in the tenant"))
                })?
                .grants
        }
        (role, Some(_)) => role.builtin_grants().unwrap_or_default().to_vec(),
    };
    if principal.covers(&grants) {
        Ok(())
    } else {
        Err(ApiError::forbidden("the role grants more than you hold"))
    }
}

/// The user `username`, if the caller may see it; 404 otherwise.
async fn visible_user(
    state: &ApiState,
    principal: &Principal,
    username: &str,
) -> Result<User, ApiError> {
    match state.accounts.user(username).await? {
        Some(user) if may_view(principal, user.tenant_id.as_deref()) => Ok(user),
        _ => Err(ApiError::not_found(format!("no user {username}"))),
    }
}

#[utoipa::path(
    get, path = "/api/v1/users", tag = "users",
    params(ListParams),
    responses(
        (status = 200, description = "The users the caller may see", body = UserList),
        (status = 400, description = "Bad list parameter", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
    )
)]
pub async fn list_users(
    State(state): State<ApiState>,
    principal: Principal,
    Query(params): Query<ListParams>,
) -> Result<Json<UserList>, ApiError> {
    Ok(Json(list(&state, &principal, &params).await?))
}

/// One page of the users the caller may see.
pub async fn list(
    state: &ApiState,
    principal: &Principal,
    params: &ListParams,
) -> Result<UserList, ApiError> {
    let mut views = Vec::new();
    for user in state.accounts.users().await? {
        if may_view(principal, user.tenant_id.as_deref()) {
            views.push(view(state, user).await?);
        }
    }
    let page = LISTING.apply(params, views)?;
    Ok(UserList {
        items: page.items,
        count: page.count,
    })
}

#[utoipa::path(
    post, path = "/api/v1/users", tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = UserView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access in the tenant, or System Tenant: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Username taken", body = ErrorBody),
    )
)]
pub async fn create_user(
    State(state): State<ApiState>,
    principal: Principal,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    let view = create(&state, &principal, new).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Creates a user, in the tenant `new` names or system-wide.
pub async fn create(
    state: &ApiState,
    principal: &Principal,
    new: NewUser,
) -> Result<UserView, ApiError> {
    let tenant = match &new.tenant_code {
        Some(code) => Some(visible_tenant(state, principal, code).await?),
        None => None,
    };
    let tenant_id = tenant.as_ref().map(|t| t.id.as_str());
    if !may_manage(principal, tenant_id) {
        return Err(ApiError::forbidden("you may not manage these users"));
    }
    let username = new.username.trim().to_string();
    accounts::check_username(&username).map_err(|e| ApiError::invalid("username", e))?;
    accounts::check_password_policy(&username, &new.password)
        .map_err(|e| ApiError::invalid("password", e))?;
    check_role(state, principal, &new.role, tenant_id).await?;
    let user = User {
        username,
        display_name: new.display_name.trim().to_string(),
        email: new.email.trim().to_string(),
        password_hash: accounts::hash_password_in_handler(&new.password)?,
        role: new.role,
        tenant_id: tenant_id.map(str::to_string),
        enabled: new.enabled,
        created_ms: unix_now_ms(),
    };
    state.accounts.create_user(&user).await?;
    audit::record(
        state,
        principal,
        tenant_id,
        "create",
        &format!("user {}", user.username),
    )
    .await;
    view(state, user).await
}

#[utoipa::path(
    get, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "Username")),
    responses(
        (status = 200, description = "The user", body = UserView),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn get_user(
    State(state): State<ApiState>,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(get(&state, &principal, &username).await?))
}

/// User `username`, if the caller may see it.
pub async fn get(
    state: &ApiState,
    principal: &Principal,
    username: &str,
) -> Result<UserView, ApiError> {
    let user = visible_user(state, principal, username).await?;
    view(state, user).await
}

#[utoipa::path(
    put, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "Username")),
    request_body = UserUpdate,
    responses(
        (status = 200, description = "Updated", body = UserView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn update_user(
    State(state): State<ApiState>,
    principal: Principal,
    Path(username): Path<String>,
    ApiJson(update): ApiJson<UserUpdate>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(
        self::update(&state, &principal, &username, update).await?,
    ))
}

/// Changes user `username` as `update` says.
pub async fn update(
    state: &ApiState,
    principal: &Principal,
    username: &str,
    update: UserUpdate,
) -> Result<UserView, ApiError> {
    let mut user = visible_user(state, principal, username).await?;
    let own = user.username == principal.username && principal.extension.is_none();
    let only_password = update.role.is_none() && update.enabled.is_none();
    // Everyone may change their own password, name and email.
    if !(may_manage(principal, user.tenant_id.as_deref()) || own && only_password) {
        return Err(ApiError::forbidden("you may not manage this user"));
    }
    if let Some(password) = &update.password {
        accounts::check_password_policy(&user.username, password)
            .map_err(|e| ApiError::invalid("password", e))?;
        user.password_hash = accounts::hash_password_in_handler(password)?;
    }
    if let Some(name) = update.display_name {
        user.display_name = name.trim().to_string();
    }
    if let Some(email) = update.email {
        user.email = email.trim().to_string();
    }
    if let Some(role) = update.role {
        check_role(state, principal, &role, user.tenant_id.as_deref()).await?;
        user.role = role;
    }
    if let Some(enabled) = update.enabled {
        if own && !enabled {
            return Err(ApiError::invalid("enabled", "you cannot disable yourself"));
        }
        user.enabled = enabled;
    }
    state.accounts.update_user(&user).await?;
    audit::record(
        state,
        principal,
        user.tenant_id.as_deref(),
        "update",
        &format!("user {}", user.username),
    )
    .await;
    view(state, user).await
}

#[utoipa::path(
    delete, path = "/api/v1/users/{username}", tag = "users",
    params(("username" = String, Path, description = "Username")),
    responses(
        (status = 204, description = "Deleted with its API keys"),
        (status = 400, description = "Deleting yourself", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Not allowed", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    )
)]
pub async fn delete_user(
    State(state): State<ApiState>,
    principal: Principal,
    Path(username): Path<String>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &principal, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes user `username` with its API keys.
pub async fn delete(
    state: &ApiState,
    principal: &Principal,
    username: &str,
) -> Result<(), ApiError> {
    let user = visible_user(state, principal, username).await?;
    if !may_manage(principal, user.tenant_id.as_deref()) {
        return Err(ApiError::forbidden("you may not manage this user"));
    }
    if user.username == principal.username {
        return Err(ApiError::invalid("username", "you cannot delete yourself"));
    }
    state.accounts.delete_user(&user.username).await?;
    audit::record(
        state,
        principal,
        user.tenant_id.as_deref(),
        "delete",
        &format!("user {}", user.username),
    )
    .await;
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleInput {
    pub grants: Vec<Grant>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RoleList {
    pub items: Vec<CustomRole>,
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/roles", tag = "users",
    params(("code" = String, Path, description = "Tenant code")),
    responses(
        (status = 200, description = "The tenant's custom roles", body = RoleList),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn list_roles(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
) -> Result<Json<RoleList>, ApiError> {
    Ok(Json(roles(&state, &principal, &code).await?))
}

/// Tenant `code`'s custom roles.
pub async fn roles(
    state: &ApiState,
    principal: &Principal,
    code: &str,
) -> Result<RoleList, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::ViewOnly)?;
    Ok(RoleList {
        items: state.accounts.custom_roles(&tenant.id).await?,
    })
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/roles/{name}", tag = "users",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("name" = String, Path, description = "Role name"),
    ),
    responses(
        (status = 200, description = "The role", body = CustomRole),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant or role", body = ErrorBody),
    )
)]
pub async fn get_role(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, name)): Path<(String, String)>,
) -> Result<Json<CustomRole>, ApiError> {
    let tenant = visible_tenant(&state, &principal, &code).await?;
    require(&principal, Area::Users, Level::ViewOnly)?;
    state
        .accounts
        .custom_role(&tenant.id, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no role {name}")))
}

#[utoipa::path(
    put, path = "/api/v1/tenants/{code}/roles/{name}", tag = "users",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("name" = String, Path, description = "Role name: lower-case letters, digits and ._@-"),
    ),
    request_body = RoleInput,
    responses(
        (status = 200, description = "Created or replaced", body = CustomRole),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access and every grant given", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn put_role(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, name)): Path<(String, String)>,
    ApiJson(input): ApiJson<RoleInput>,
) -> Result<Json<CustomRole>, ApiError> {
    Ok(Json(
        save_role(&state, &principal, &code, name, input).await?,
    ))
}

/// Creates or replaces custom role `name` of tenant `code`.
pub async fn save_role(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    name: String,
    input: RoleInput,
) -> Result<CustomRole, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    accounts::check_username(&name).map_err(|e| ApiError::invalid("name", e))?;
    let grants = normalize(&input.grants);
    if grants.iter().any(|g| g.area == Area::SystemTenant) {
        return Err(ApiError::invalid(
            "grants",
            "System Tenant is for system administrators only",
        ));
    }
    if !principal.covers(&grants) {
        return Err(ApiError::forbidden("the role grants more than you hold"));
    }
    let role = CustomRole { name, grants };
    state.accounts.put_custom_role(&tenant.id, &role).await?;
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "update",
        &format!("role {}", role.name),
    )
    .await;
    Ok(role)
}

#[utoipa::path(
    delete, path = "/api/v1/tenants/{code}/roles/{name}", tag = "users",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("name" = String, Path, description = "Role name"),
    ),
    responses(
        (status = 204, description = "Deleted; its users keep no grants until given another role"),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant or role", body = ErrorBody),
    )
)]
pub async fn delete_role(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    remove_role(&state, &principal, &code, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes custom role `name` of tenant `code`.
pub async fn remove_role(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    name: &str,
) -> Result<(), ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    if !state.accounts.delete_custom_role(&tenant.id, name).await? {
        return Err(ApiError::not_found(format!("no role {name}")));
    }
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "delete",
        &format!("role {name}"),
    )
    .await;
    Ok(())
}
