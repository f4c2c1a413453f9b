//! Bulk operations on a tenant's extensions: create a number range, delete
//! a selection, export CSV, import CSV. Each write is one raft-store
//! transaction: all of it happens, or none of it.

use std::collections::{BTreeMap, BTreeSet};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::csv_rows::{column_of, read_csv, write_csv};
use super::error::{ApiError, ApiJson, ErrorBody, ErrorDetail};
use super::extensions::{build_extension, write_within_limit, ExtensionInput, ExtensionView};
use super::tenants::visible_tenant;
use super::{audit, require, ApiState};
use crate::access::{Area, Level, Principal};
use crate::model::{Extension, ExtensionKind};

/// Most extensions one bulk create or delete touches.
pub const MAX_BULK: usize = 1000;
/// Most rows one CSV import holds.
pub const MAX_IMPORT_ROWS: usize = 20_000;
/// Largest CSV upload.
pub const MAX_IMPORT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkCreate {
    /// The first number of the range.
    pub first: String,
    /// How many consecutive numbers, 1 to 1000.
    pub count: u32,
    /// The display name; `{number}` stands for each number. Default
    /// `Extension {number}`.
    #[serde(default)]
    pub display_name_pattern: Option<String>,
    /// The SIP password; `{number}` stands for the number and `{random}`
    /// for 12 random letters and digits. Default `{random}{random}`.
    #[serde(default)]
    pub password_pattern: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedCredentials {
    pub number: String,
    pub username: String,
    /// Shown this once: only hashes are stored.
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkCreated {
    pub items: Vec<CreatedCredentials>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkDelete {
    /// 1 to 1000 extension numbers, all of which must exist.
    pub numbers: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BulkDeleted {
    pub deleted: usize,
}

/// One bad row of an import.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RowError {
    /// The line of the file, the header being line 1.
    pub line: u64,
    pub field: String,
    pub reason: String,
}

/// The answer to an import that was refused for bad rows: nothing was
/// written, and every bad row is listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRefused {
    pub error: ErrorDetail,
    /// Every bad row; absent when the file as a whole was refused (not
    /// CSV, no header row), which is a plain error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<RowError>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportReport {
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
}

fn expand(pattern: &str, number: &str) -> String {
    let mut out = pattern.replace("{number}", number);
    while let Some(at) = out.find("{random}") {
        let random = Alphanumeric.sample_string(&mut rand::rng(), 12);
        out.replace_range(at..at + "{random}".len(), &random);
    }
    out
}

fn conflict() -> ApiError {
    ApiError::conflict(
        "a number or username is taken, or an extension changed meanwhile; nothing was written",
    )
}

#[utoipa::path(
    post, path = "/api/v1/tenants/{code}/extensions/bulk-create", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code")),
    request_body = BulkCreate,
    responses(
        (status = 201, description = "All created; their passwords, shown once", body = BulkCreated),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "A number is taken, or the tenant's limit reached; nothing created", body = ErrorBody),
    )
)]
pub async fn bulk_create(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    ApiJson(request): ApiJson<BulkCreate>,
) -> Result<Response, ApiError> {
    let created = create_range(&state, &principal, &code, request).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Creates the extensions of a number range in tenant `code`, all or none.
pub async fn create_range(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    request: BulkCreate,
) -> Result<BulkCreated, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    let count = request.count as usize;
    if count == 0 || count > MAX_BULK {
        return Err(ApiError::invalid(
            "count",
            format!("must be 1 to {MAX_BULK}"),
        ));
    }
    let first: u64 = request
        .first
        .parse()
        .ok()
        .filter(|_| (1..=16).contains(&request.first.len()))
        .ok_or_else(|| ApiError::invalid("first", "must be 1 to 16 digits"))?;
    let width = request.first.len();
    let name_pattern = request
        .display_name_pattern
        .unwrap_or_else(|| "Extension {number}".to_string());
    let password_pattern = request
        .password_pattern
        .unwrap_or_else(|| "{random}{random}".to_string());
    let mut extensions = Vec::with_capacity(count);
    let mut items = Vec::with_capacity(count);
    for offset in 0..count as u64 {
        // Keeps leading zeros: 0100 … 0199.
        let number = format!("{:0width$}", first + offset);
        let password = expand(&password_pattern, &number);
        let input = ExtensionInput {
            number: number.clone(),
            display_name: expand(&name_pattern, &number),
            password: Some(password.clone()),
            ..ExtensionInput::default()
        };
        let extension = build_extension(&tenant, input, None).map_err(|e| ApiError {
            message: format!("{number}: {}", e.message),
            field: e.field.map(|f| match f.as_str() {
                "password" => "password_pattern".to_string(),
                "display_name" => "display_name_pattern".to_string(),
                "number" => "first".to_string(),
                other => other.to_string(),
            }),
            ..e
        })?;
        items.push(CreatedCredentials {
            number,
            username: extension.username.clone(),
            password,
        });
        extensions.push(extension);
    }
    if !write_within_limit(state, &tenant, &extensions, &[]).await? {
        return Err(conflict());
    }
    let last = extensions.last().map(|e| e.number.as_str()).unwrap_or("");
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "create",
        &format!("extensions {}-{last} ({count})", request.first),
    )
    .await;
    Ok(BulkCreated { items })
}

#[utoipa::path(
    post, path = "/api/v1/tenants/{code}/extensions/bulk-delete", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code")),
    request_body = BulkDelete,
    responses(
        (status = 200, description = "All deleted", body = BulkDeleted),
        (status = 400, description = "A number that is not an extension; nothing deleted", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn bulk_delete(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    ApiJson(request): ApiJson<BulkDelete>,
) -> Result<Json<BulkDeleted>, ApiError> {
    Ok(Json(
        delete_numbers(&state, &principal, &code, request).await?,
    ))
}

/// Deletes the listed extensions of tenant `code`, all or none.
pub async fn delete_numbers(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    request: BulkDelete,
) -> Result<BulkDeleted, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    if request.numbers.is_empty() || request.numbers.len() > MAX_BULK {
        return Err(ApiError::invalid(
            "numbers",
            format!("name 1 to {MAX_BULK} extensions"),
        ));
    }
    let existing: BTreeMap<String, Extension> = state
        .repo
        .extensions(&tenant.id)
        .await?
        .into_iter()
        .map(|e| (e.number.clone(), e))
        .collect();
    let mut doomed = Vec::with_capacity(request.numbers.len());
    let mut seen = BTreeSet::new();
    for (i, number) in request.numbers.iter().enumerate() {
        match existing.get(number) {
            Some(e) if seen.insert(number) => doomed.push(e.clone()),
            _ => {
                return Err(ApiError::invalid(
                    format!("numbers[{i}]"),
                    format!("{number} is not an extension of this tenant, or is listed twice"),
                ))
            }
        }
    }
    if !state.repo.delete_extensions(&tenant.id, &doomed).await? {
        return Err(conflict());
    }
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "delete",
        &format!("extensions {}", request.numbers.join(" ")),
    )
    .await;
    Ok(BulkDeleted {
        deleted: doomed.len(),
    })
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/extensions/export.csv", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code")),
    responses(
        (status = 200, description = "Every extension of the tenant as CSV, secrets left empty", content_type = "text/csv", body = String),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn export_csv(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
) -> Result<Response, ApiError> {
    let (file_name, csv) = export(&state, &principal, &code).await?;
    let disposition = format!("attachment; filename=\"{file_name}\"");
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        csv,
    )
        .into_response())
}

/// Every extension of tenant `code` as CSV, secrets left empty, with the
/// file name to offer it under.
pub async fn export(
    state: &ApiState,
    principal: &Principal,
    code: &str,
) -> Result<(String, Vec<u8>), ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::ViewOnly)?;
    let views: Vec<ExtensionView> = state
        .repo
        .extensions(&tenant.id)
        .await?
        .iter()
        .map(ExtensionView::from)
        .collect();
    let csv = write_csv(&views)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok((format!("extensions-{}.csv", tenant.code), csv))
}

fn refused(rows: Vec<RowError>) -> Response {
    let body = ImportRefused {
        error: ErrorDetail {
            code: "invalid_rows".into(),
            message: format!("{} bad rows; nothing was imported", rows.len()),
            field: None,
        },
        rows: Some(rows),
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

#[utoipa::path(
    post, path = "/api/v1/tenants/{code}/extensions/import", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code")),
    request_body(content = String, content_type = "text/csv",
        description = "A CSV with a header row naming columns of the export; rows create new extensions and replace existing ones, empty secrets keep theirs"),
    responses(
        (status = 200, description = "Every row applied", body = ImportReport),
        (status = 400, description = "Bad rows, each listed, or the file refused as a whole; nothing written", body = ImportRefused),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The tenant's limit, or a change made meanwhile; nothing written", body = ErrorBody),
        (status = 413, description = "File too large", body = ErrorBody),
    )
)]
pub async fn import_csv(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    Ok(match import(&state, &principal, &code, &body).await? {
        ImportOutcome::Applied(report) => Json(report).into_response(),
        ImportOutcome::Refused(rows) => refused(rows),
    })
}

/// What an import did: applied every row, or refused bad rows and wrote
/// nothing.
#[derive(Debug)]
pub enum ImportOutcome {
    Applied(ImportReport),
    /// Every bad row, in line order.
    Refused(Vec<RowError>),
}

/// Imports a CSV of extensions into tenant `code`: all rows or none.
pub async fn import(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    body: &[u8],
) -> Result<ImportOutcome, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    let parsed = read_csv(body).map_err(|e| ApiError::invalid("file", e.reason))?;
    if parsed.len() > MAX_IMPORT_ROWS {
        return Err(ApiError::invalid(
            "file",
            format!("at most {MAX_IMPORT_ROWS} rows"),
        ));
    }
    let existing: BTreeMap<String, (Extension, u64)> = state
        .repo
        .extension_records(&tenant.id)
        .await?
        .into_iter()
        .map(|(e, revision)| (e.number.clone(), (e, revision)))
        .collect();
    let mut bad = Vec::new();
    let mut creates = Vec::new();
    let mut updates = Vec::new();
    let mut unchanged = 0;
    let mut numbers = BTreeSet::new();
    let mut usernames: BTreeMap<String, String> = existing
        .values()
        .map(|(e, _)| (e.username.clone(), e.number.clone()))
        .collect();
    for (line, row) in parsed {
        let input = match row.and_then(|r| r.to_input()) {
            Ok(input) => input,
            Err(e) => {
                bad.push(RowError {
                    line,
                    field: e.field,
                    reason: e.reason,
                });
                continue;
            }
        };
        if !numbers.insert(input.number.clone()) {
            bad.push(RowError {
                line,
                field: "number".into(),
                reason: format!("{} appears on an earlier line", input.number),
            });
            continue;
        }
        let current = existing.get(input.number.trim());
        match build_extension(&tenant, input, current.map(|(e, _)| e)) {
            Ok(extension) => match current {
                Some((old, _)) if *old == extension => unchanged += 1,
                Some((_, revision)) => updates.push((extension, *revision)),
                None => {
                    if let Some(owner) =
                        usernames.insert(extension.username.clone(), extension.number.clone())
                    {
                        bad.push(RowError {
                            line,
                            field: "username".into(),
                            reason: format!(
                                "{} is already extension {owner}'s",
                                extension.username
                            ),
                        });
                    } else {
                        creates.push((line, extension));
                    }
                }
            },
            Err(e) => bad.push(RowError {
                line,
                field: e.field.map_or_else(|| "row".into(), |f| column_of(&f)),
                reason: e.message,
            }),
        }
    }
    // Virtual members may be created by the same file.
    for (line, extension) in &creates {
        for member in &extension.settings.members {
            let is_phone = existing
                .get(member)
                .map(|(e, _)| e.settings.kind == ExtensionKind::Phone)
                .or_else(|| {
                    creates
                        .iter()
                        .find(|(_, c)| &c.number == member)
                        .map(|(_, c)| c.settings.kind == ExtensionKind::Phone)
                })
                .unwrap_or(false);
            if !is_phone {
                bad.push(RowError {
                    line: *line,
                    field: "members".into(),
                    reason: format!("{member} is not a phone extension of this tenant"),
                });
            }
        }
    }
    if !bad.is_empty() {
        bad.sort_by_key(|r| r.line);
        return Ok(ImportOutcome::Refused(bad));
    }
    let creates: Vec<Extension> = creates.into_iter().map(|(_, e)| e).collect();
    if !write_within_limit(state, &tenant, &creates, &updates).await? {
        return Err(conflict());
    }
    if !creates.is_empty() || !updates.is_empty() {
        audit::record(
            state,
            principal,
            Some(&tenant.id),
            "import",
            &format!(
                "extensions: {} created, {} updated",
                creates.len(),
                updates.len()
            ),
        )
        .await;
    }
    Ok(ImportOutcome::Applied(ImportReport {
        created: creates.len(),
        updated: updates.len(),
        unchanged,
    }))
}
