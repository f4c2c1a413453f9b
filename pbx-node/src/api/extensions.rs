//! A tenant's extensions: phone, custom and virtual (reference/002), with
//! every field that changes call behaviour. `PUT` replaces the settings
//! as a whole (fields left out take their defaults), except the three
//! secrets (SIP password, voicemail PIN, web password), which are kept
//! when left out; so a record read with GET and sent back changes nothing.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::distr::{Alphanumeric, SampleString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ErrorBody};
use super::listing::{ListParams, Listing};
use super::tenants::visible_tenant;
use super::{audit, require, ApiState};
use crate::access::{Area, Level, Principal};
use crate::accounts;
use crate::model::{
    CallerId, Extension, ExtensionKind, ExtensionSettings, FindMeFollowMe, ForwardRule, Forwarding,
    OutboundFilter, RecordingPolicy, Tenant, WorkingHours, DEFAULT_EXPIRES, DEFAULT_MAX_CONTACTS,
    DEFAULT_MAX_EXPIRES, DEFAULT_MIN_EXPIRES,
};

/// An extension as a client sends it, to create or replace one.
#[derive(Debug, Clone, Default, Deserialize, Serialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionInput {
    /// 1 to 16 digits; on PUT it must be the number in the path.
    pub number: String,
    /// Shown as caller name; defaults to the number.
    pub display_name: String,
    /// SIP username; default `<number>-<CODE>`. Cannot change once created.
    pub username: Option<String>,
    /// SIP password (phones): at least 8 characters, not the username or
    /// number. Required to create a phone extension; left out = unchanged.
    pub password: Option<String>,
    pub kind: ExtensionKind,
    pub description: String,
    pub email: String,
    pub department: String,
    pub dnd: bool,
    /// 5 to 600 seconds; absent = the node's ring timeout.
    pub ring_timeout_secs: Option<u32>,
    pub forwarding: Forwarding,
    pub find_me_follow_me: FindMeFollowMe,
    pub voicemail_enabled: bool,
    /// 4 to 12 digits; left out = unchanged.
    pub voicemail_pin: Option<String>,
    pub outbound_filter: OutboundFilter,
    /// 1 to 86400 seconds; absent = no limit.
    pub max_call_duration_secs: Option<u32>,
    pub working_hours: Option<WorkingHours>,
    /// Networks registrations may come from (`192.0.2.0/24`); empty = any.
    pub allowed_registration_cidrs: Vec<String>,
    pub external_caller_id: CallerId,
    pub emergency_caller_id: String,
    /// Custom extensions: the dial string or external number called.
    pub custom_destination: String,
    /// Virtual extensions: the phone extensions rung.
    pub members: Vec<String>,
    pub web_panel_enabled: bool,
    /// The user's portal password (password policy applies); left out = unchanged.
    pub web_password: Option<String>,
    pub recording: RecordingPolicy,
    /// 1 to 100; default 3.
    pub max_contacts: Option<u32>,
    /// Registration expiry bounds in seconds: min <= default <= max <= 86400.
    pub min_expires: Option<u32>,
    pub default_expires: Option<u32>,
    pub max_expires: Option<u32>,
    /// Default true.
    pub remove_existing_on_register: Option<bool>,
}

/// An extension as the API shows it: no secret, only whether one is set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExtensionView {
    pub number: String,
    pub display_name: String,
    pub username: String,
    pub kind: ExtensionKind,
    pub description: String,
    pub email: String,
    pub department: String,
    pub dnd: bool,
    pub ring_timeout_secs: Option<u32>,
    pub forwarding: Forwarding,
    pub find_me_follow_me: FindMeFollowMe,
    pub voicemail_enabled: bool,
    pub has_voicemail_pin: bool,
    pub outbound_filter: OutboundFilter,
    pub max_call_duration_secs: Option<u32>,
    pub working_hours: Option<WorkingHours>,
    pub allowed_registration_cidrs: Vec<String>,
    pub external_caller_id: CallerId,
    pub emergency_caller_id: String,
    pub custom_destination: String,
    pub members: Vec<String>,
    pub web_panel_enabled: bool,
    pub has_web_password: bool,
    pub recording: RecordingPolicy,
    pub max_contacts: u32,
    pub min_expires: u32,
    pub default_expires: u32,
    pub max_expires: u32,
    pub remove_existing_on_register: bool,
}

impl From<&Extension> for ExtensionView {
    fn from(e: &Extension) -> Self {
        let s = &e.settings;
        ExtensionView {
            number: e.number.clone(),
            display_name: e.display_name.clone(),
            username: e.username.clone(),
            kind: s.kind,
            description: s.description.clone(),
            email: s.email.clone(),
            department: s.department.clone(),
            dnd: s.dnd,
            ring_timeout_secs: s.ring_timeout_secs,
            forwarding: s.forwarding.clone(),
            find_me_follow_me: s.find_me_follow_me.clone(),
            voicemail_enabled: s.voicemail_enabled,
            has_voicemail_pin: s.voicemail_pin_hash.is_some(),
            outbound_filter: s.outbound_filter.clone(),
            max_call_duration_secs: s.max_call_duration_secs,
            working_hours: s.working_hours.clone(),
            allowed_registration_cidrs: s
                .allowed_registration_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            external_caller_id: s.external_caller_id.clone(),
            emergency_caller_id: s.emergency_caller_id.clone(),
            custom_destination: s.custom_destination.clone(),
            members: s.members.clone(),
            web_panel_enabled: s.web_panel_enabled,
            has_web_password: s.web_password_hash.is_some(),
            recording: e.recording,
            max_contacts: e.max_contacts,
            min_expires: e.min_expires,
            default_expires: e.default_expires,
            max_expires: e.max_expires,
            remove_existing_on_register: e.remove_existing_on_register,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtensionList {
    pub items: Vec<ExtensionView>,
    /// How many matched the filter and search in all.
    pub count: usize,
}

pub const LISTING: Listing<'static> = Listing {
    fields: &[
        "number",
        "display_name",
        "username",
        "kind",
        "description",
        "email",
        "department",
        "dnd",
        "ring_timeout_secs",
        "forwarding",
        "find_me_follow_me",
        "voicemail_enabled",
        "outbound_filter",
        "max_call_duration_secs",
        "external_caller_id",
        "emergency_caller_id",
        "custom_destination",
        "web_panel_enabled",
        "recording",
        "max_contacts",
    ],
    search_fields: &[
        "number",
        "display_name",
        "username",
        "email",
        "department",
        "description",
    ],
    default_order: "number",
};

fn matches_chars(
    value: &str,
    len: std::ops::RangeInclusive<usize>,
    ok: impl Fn(char) -> bool,
) -> bool {
    len.contains(&value.len()) && value.chars().all(ok)
}

/// A number someone can be sent to: digits, `*`, `#`, `+`.
fn check_dialable(field: &str, value: &str) -> Result<(), ApiError> {
    if matches_chars(value, 1..=32, |c| {
        c.is_ascii_digit() || matches!(c, '*' | '#' | '+')
    }) {
        Ok(())
    } else {
        Err(ApiError::invalid(field, "must be 1 to 32 of 0-9 * # +"))
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters, without control characters"),
        ));
    }
    Ok(value.to_string())
}

fn check_rule(field: &str, rule: &ForwardRule) -> Result<(), ApiError> {
    if rule.enabled || !rule.destination.is_empty() {
        check_dialable(&format!("{field}.destination"), &rule.destination)?;
    }
    Ok(())
}

fn parse_hhmm(field: &str, value: &str) -> Result<u32, ApiError> {
    let parsed = value.split_once(':').and_then(|(h, m)| {
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (value.len() == 5 && h < 24 && m < 60).then_some(h * 60 + m)
    });
    parsed.ok_or_else(|| ApiError::invalid(field, "must be HH:MM"))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn check_working_hours(hours: &WorkingHours) -> Result<(), ApiError> {
    let mut seen = BTreeSet::new();
    if hours.days.is_empty() {
        return Err(ApiError::invalid(
            "working_hours.days",
            "name at least one day",
        ));
    }
    for (i, day) in hours.days.iter().enumerate() {
        if !DAYS.contains(&day.as_str()) || !seen.insert(day) {
            return Err(ApiError::invalid(
                format!("working_hours.days[{i}]"),
                "must be one of mon tue wed thu fri sat sun, each once",
            ));
        }
    }
    let start = parse_hhmm("working_hours.start", &hours.start)?;
    let end = parse_hhmm("working_hours.end", &hours.end)?;
    if start >= end {
        return Err(ApiError::invalid(
            "working_hours.end",
            "must be after start",
        ));
    }
    Ok(())
}

/// The SIP password rule: long enough, and not guessable from the
/// extension itself.
fn check_sip_password(password: &str, username: &str, number: &str) -> Result<(), ApiError> {
    if password.chars().count() < 8 || password.chars().count() > 64 {
        return Err(ApiError::invalid("password", "must be 8 to 64 characters"));
    }
    if password.eq_ignore_ascii_case(username) || password == number {
        return Err(ApiError::invalid(
            "password",
            "must not be the username or the number",
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "password",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Builds the stored extension from `input`, keeping `existing`'s secrets
/// where the input leaves them out. Everything but the members' existence
/// is checked here.
pub fn build_extension(
    tenant: &Tenant,
    input: ExtensionInput,
    existing: Option<&Extension>,
) -> Result<Extension, ApiError> {
    let number = input.number.trim().to_string();
    if !matches_chars(&number, 1..=16, |c| c.is_ascii_digit()) {
        return Err(ApiError::invalid("number", "must be 1 to 16 digits"));
    }
    let username = match (existing, &input.username) {
        (Some(e), Some(u)) if *u != e.username => {
            return Err(ApiError::invalid("username", "cannot change once created"))
        }
        (Some(e), _) => e.username.clone(),
        (None, Some(u)) => u.trim().to_string(),
        (None, None) => Extension::default_username(&number, &tenant.code),
    };
    if !matches_chars(&username, 1..=64, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')
    }) {
        return Err(ApiError::invalid(
            "username",
            "must be 1 to 64 of A-Z a-z 0-9 - _ . +",
        ));
    }
    let display_name = match check_text("display_name", &input.display_name, 128)? {
        name if name.is_empty() => number.clone(),
        name => name,
    };
    let ha1 = match (&input.password, existing) {
        (Some(password), _) => {
            check_sip_password(password, &username, &number)?;
            sip::auth::StoredHa1::compute(&username, &tenant.sip_domain, password)
        }
        (None, Some(e)) => e.stored_ha1(),
        (None, None) if input.kind == ExtensionKind::Phone => {
            return Err(ApiError::invalid(
                "password",
                "a phone extension needs a password",
            ))
        }
        // Custom and virtual extensions never register: a random secret
        // nobody knows, so no digest can ever match.
        (None, None) => sip::auth::StoredHa1::compute(
            &username,
            &tenant.sip_domain,
            &Alphanumeric.sample_string(&mut rand::rng(), 32),
        ),
    };
    let email = check_text("email", &input.email, 254)?;
    if !email.is_empty()
        && !email
            .split_once('@')
            .is_some_and(|(a, d)| !a.is_empty() && d.contains('.'))
    {
        return Err(ApiError::invalid(
            "email",
            "must be an address such as name@example.com",
        ));
    }
    if let Some(secs) = input.ring_timeout_secs {
        if !(5..=600).contains(&secs) {
            return Err(ApiError::invalid("ring_timeout_secs", "must be 5 to 600"));
        }
    }
    check_rule("forwarding.unconditional", &input.forwarding.unconditional)?;
    check_rule("forwarding.no_answer", &input.forwarding.no_answer)?;
    check_rule("forwarding.busy", &input.forwarding.busy)?;
    check_rule("forwarding.offline", &input.forwarding.offline)?;
    let fmfm = &input.find_me_follow_me;
    if fmfm.enabled || !fmfm.number.is_empty() {
        check_dialable("find_me_follow_me.number", &fmfm.number)?;
    }
    if fmfm.delay_secs > 120 {
        return Err(ApiError::invalid(
            "find_me_follow_me.delay_secs",
            "must be 0 to 120",
        ));
    }
    let voicemail_pin_hash = match (&input.voicemail_pin, existing) {
        (Some(pin), _) => {
            if !matches_chars(pin, 4..=12, |c| c.is_ascii_digit()) {
                return Err(ApiError::invalid("voicemail_pin", "must be 4 to 12 digits"));
            }
            Some(accounts::hash_password_in_handler(pin)?)
        }
        (None, Some(e)) => e.settings.voicemail_pin_hash.clone(),
        (None, None) => None,
    };
    if let OutboundFilter::Regex { pattern } = &input.outbound_filter {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 16)
            .build()
            .map_err(|e| ApiError::invalid("outbound_filter.pattern", e.to_string()))?;
    }
    if let Some(secs) = input.max_call_duration_secs {
        if !(1..=86_400).contains(&secs) {
            return Err(ApiError::invalid(
                "max_call_duration_secs",
                "must be 1 to 86400",
            ));
        }
    }
    if let Some(hours) = &input.working_hours {
        check_working_hours(hours)?;
    }
    let mut cidrs = Vec::with_capacity(input.allowed_registration_cidrs.len());
    for (i, text) in input.allowed_registration_cidrs.iter().enumerate() {
        let net = text
            .trim()
            .parse::<ipnet::IpNet>()
            .or_else(|_| {
                text.trim()
                    .parse::<std::net::IpAddr>()
                    .map(ipnet::IpNet::from)
            })
            .map_err(|_| {
                ApiError::invalid(
                    format!("allowed_registration_cidrs[{i}]"),
                    "must be an address or network such as 192.0.2.0/24",
                )
            })?;
        cidrs.push(net);
    }
    if !input.external_caller_id.number.is_empty() {
        check_dialable(
            "external_caller_id.number",
            &input.external_caller_id.number,
        )?;
    }
    let external_caller_id = CallerId {
        number: input.external_caller_id.number.clone(),
        name: check_text(
            "external_caller_id.name",
            &input.external_caller_id.name,
            64,
        )?,
    };
    if !input.emergency_caller_id.is_empty() {
        check_dialable("emergency_caller_id", &input.emergency_caller_id)?;
    }
    match input.kind {
        ExtensionKind::Custom
            if !matches_chars(&input.custom_destination, 1..=128, |c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '*' | '#' | '+' | '@' | '.' | ':' | '_' | '-')
            }) =>
        {
            return Err(ApiError::invalid(
                "custom_destination",
                "a custom extension needs a dial string: 1 to 128 of A-Z a-z 0-9 * # + @ . : _ -",
            ));
        }
        ExtensionKind::Custom => {}
        _ if !input.custom_destination.is_empty() => {
            return Err(ApiError::invalid(
                "custom_destination",
                "only custom extensions have one",
            ))
        }
        _ => {}
    }
    match input.kind {
        ExtensionKind::Virtual => {
            if input.members.is_empty() || input.members.len() > 50 {
                return Err(ApiError::invalid(
                    "members",
                    "a virtual extension needs 1 to 50 members",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, member) in input.members.iter().enumerate() {
                if member == &number || !seen.insert(member) {
                    return Err(ApiError::invalid(
                        format!("members[{i}]"),
                        "members must be other extensions, each once",
                    ));
                }
            }
        }
        _ if !input.members.is_empty() => {
            return Err(ApiError::invalid(
                "members",
                "only virtual extensions have members",
            ))
        }
        _ => {}
    }
    let web_password_hash = match (&input.web_password, existing) {
        (Some(password), _) => {
            accounts::check_password_policy(&username, password)
                .map_err(|e| ApiError::invalid("web_password", e))?;
            Some(accounts::hash_password_in_handler(password)?)
        }
        (None, Some(e)) => e.settings.web_password_hash.clone(),
        (None, None) => None,
    };
    if input.web_panel_enabled && web_password_hash.is_none() {
        return Err(ApiError::invalid(
            "web_password",
            "the web panel needs a web password",
        ));
    }
    let max_contacts = input.max_contacts.unwrap_or(DEFAULT_MAX_CONTACTS);
    if !(1..=100).contains(&max_contacts) {
        return Err(ApiError::invalid("max_contacts", "must be 1 to 100"));
    }
    let min_expires = input.min_expires.unwrap_or(DEFAULT_MIN_EXPIRES);
    let default_expires = input.default_expires.unwrap_or(DEFAULT_EXPIRES);
    let max_expires = input.max_expires.unwrap_or(DEFAULT_MAX_EXPIRES);
    if min_expires == 0 {
        return Err(ApiError::invalid("min_expires", "must be at least 1"));
    }
    if default_expires < min_expires {
        return Err(ApiError::invalid(
            "default_expires",
            "must be at least min_expires",
        ));
    }
    if max_expires < default_expires || max_expires > 86_400 {
        return Err(ApiError::invalid(
            "max_expires",
            "must be default_expires to 86400",
        ));
    }
    Ok(Extension {
        number,
        display_name,
        username,
        ha1_md5: ha1.md5,
        ha1_sha256: ha1.sha256,
        max_contacts,
        min_expires,
        default_expires,
        max_expires,
        remove_existing_on_register: input.remove_existing_on_register.unwrap_or(true),
        recording: input.recording,
        settings: ExtensionSettings {
            kind: input.kind,
            description: check_text("description", &input.description, 256)?,
            email,
            department: check_text("department", &input.department, 64)?,
            dnd: input.dnd,
            ring_timeout_secs: input.ring_timeout_secs,
            forwarding: input.forwarding,
            find_me_follow_me: input.find_me_follow_me,
            voicemail_enabled: input.voicemail_enabled,
            voicemail_pin_hash,
            outbound_filter: input.outbound_filter,
            max_call_duration_secs: input.max_call_duration_secs,
            working_hours: input.working_hours,
            allowed_registration_cidrs: cidrs,
            external_caller_id,
            emergency_caller_id: input.emergency_caller_id,
            custom_destination: input.custom_destination,
            members: input.members,
            web_panel_enabled: input.web_panel_enabled,
            web_password_hash,
        },
    })
}

/// Virtual members must be phone extensions of the same tenant.
pub async fn check_members(
    state: &ApiState,
    tenant_id: &str,
    extension: &Extension,
) -> Result<(), ApiError> {
    for (i, member) in extension.settings.members.iter().enumerate() {
        match state.repo.extension(tenant_id, member).await? {
            Some(m) if m.settings.kind == ExtensionKind::Phone => {}
            _ => {
                return Err(ApiError::invalid(
                    format!("members[{i}]"),
                    format!("{member} is not a phone extension of this tenant"),
                ))
            }
        }
    }
    Ok(())
}

/// The tenant's room for `adding` more extensions: `Some(revision)` the
/// count was taken at when the tenant has a limit.
async fn check_limit(
    state: &ApiState,
    tenant: &Tenant,
    adding: usize,
) -> Result<Option<u64>, ApiError> {
    let Some(max) = tenant.limits.max_extensions else {
        return Ok(None);
    };
    let (current, counted_at) = state.repo.count_extensions(&tenant.id).await?;
    if current + adding > max as usize {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "limit_reached",
            format!(
                "tenant {} may have at most {max} extensions and has {current}",
                tenant.code
            ),
        ));
    }
    Ok(Some(counted_at))
}

/// Counts and writes attempted while other creates and deletes in the
/// tenant keep moving its count.
const LIMITED_WRITE_ATTEMPTS: u32 = 5;

/// Creates `creates` and replaces `updates` within the tenant's maximum
/// extensions. The count and the write are one compare-guarded step (the
/// write fails if any extension was created or deleted since the count),
/// so creates on several nodes at once can never pass the limit together.
/// `false` = a number or username is taken, or an update lost a race.
pub async fn write_within_limit(
    state: &ApiState,
    tenant: &Tenant,
    creates: &[Extension],
    updates: &[(Extension, u64)],
) -> Result<bool, ApiError> {
    for _ in 0..LIMITED_WRITE_ATTEMPTS {
        let counted_at = check_limit(state, tenant, creates.len()).await?;
        let written = state
            .repo
            .write_extensions(&tenant.id, creates, updates, counted_at)
            .await?;
        // Without a limit a failure has no other cause to retry for.
        if written || counted_at.is_none() {
            return Ok(written);
        }
    }
    Ok(false)
}

/// An extension's user may read its own extension; everything else of
/// extensions needs `Users`.
fn may_read(principal: &Principal, number: &str) -> Result<(), ApiError> {
    if principal.extension.as_deref() == Some(number)
        && principal.holds(Area::User, Level::ViewOnly)
    {
        return Ok(());
    }
    require(principal, Area::Users, Level::ViewOnly)
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/extensions", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code"), ListParams),
    responses(
        (status = 200, description = "One page of the tenant's extensions", body = ExtensionList),
        (status = 400, description = "Bad list parameter", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: View Only", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
    )
)]
pub async fn list_extensions(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<ExtensionList>, ApiError> {
    Ok(Json(list(&state, &principal, &code, &params).await?))
}

/// One page of tenant `code`'s extensions, as the caller may see them.
pub async fn list(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    params: &ListParams,
) -> Result<ExtensionList, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::ViewOnly)?;
    let views: Vec<ExtensionView> = state
        .repo
        .extensions(&tenant.id)
        .await?
        .iter()
        .map(ExtensionView::from)
        .collect();
    let page = LISTING.apply(params, views)?;
    Ok(ExtensionList {
        items: page.items,
        count: page.count,
    })
}

#[utoipa::path(
    post, path = "/api/v1/tenants/{code}/extensions", tag = "extensions",
    params(("code" = String, Path, description = "Tenant code")),
    request_body = ExtensionInput,
    responses(
        (status = 201, description = "Created", body = ExtensionView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Number or username taken, or the tenant's limit reached", body = ErrorBody),
    )
)]
pub async fn create_extension(
    State(state): State<ApiState>,
    principal: Principal,
    Path(code): Path<String>,
    ApiJson(input): ApiJson<ExtensionInput>,
) -> Result<Response, ApiError> {
    let view = create(&state, &principal, &code, input).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Creates an extension of tenant `code` from `input`.
pub async fn create(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    input: ExtensionInput,
) -> Result<ExtensionView, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    let extension = build_extension(&tenant, input, None)?;
    check_members(state, &tenant.id, &extension).await?;
    if !write_within_limit(state, &tenant, std::slice::from_ref(&extension), &[]).await? {
        return Err(crate::repo::RepoError::AlreadyExists {
            what: format!(
                "extension {} or username {}",
                extension.number, extension.username
            ),
        }
        .into());
    }
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "create",
        &format!("extension {}", extension.number),
    )
    .await;
    Ok(ExtensionView::from(&extension))
}

async fn existing(state: &ApiState, tenant: &Tenant, number: &str) -> Result<Extension, ApiError> {
    let found = if matches_chars(number, 1..=16, |c| c.is_ascii_digit()) {
        state.repo.extension(&tenant.id, number).await?
    } else {
        None
    };
    found.ok_or_else(|| ApiError::not_found(format!("no extension {number}")))
}

#[utoipa::path(
    get, path = "/api/v1/tenants/{code}/extensions/{number}", tag = "extensions",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("number" = String, Path, description = "Extension number"),
    ),
    responses(
        (status = 200, description = "The extension", body = ExtensionView),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: View Only (or be this extension's user)", body = ErrorBody),
        (status = 404, description = "No such tenant or extension", body = ErrorBody),
    )
)]
pub async fn get_extension(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, number)): Path<(String, String)>,
) -> Result<Json<ExtensionView>, ApiError> {
    Ok(Json(get(&state, &principal, &code, &number).await?))
}

/// Extension `number` of tenant `code`, if the caller may read it.
pub async fn get(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    number: &str,
) -> Result<ExtensionView, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    may_read(principal, number)?;
    let extension = existing(state, &tenant, number).await?;
    Ok(ExtensionView::from(&extension))
}

#[utoipa::path(
    put, path = "/api/v1/tenants/{code}/extensions/{number}", tag = "extensions",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("number" = String, Path, description = "Extension number"),
    ),
    request_body = ExtensionInput,
    responses(
        (status = 200, description = "Replaced", body = ExtensionView),
        (status = 400, description = "Invalid field", body = ErrorBody),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant or extension", body = ErrorBody),
    )
)]
pub async fn update_extension(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, number)): Path<(String, String)>,
    ApiJson(input): ApiJson<ExtensionInput>,
) -> Result<Json<ExtensionView>, ApiError> {
    Ok(Json(
        update(&state, &principal, &code, &number, input).await?,
    ))
}

/// Replaces the settings of extension `number` of tenant `code`.
pub async fn update(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    number: &str,
    mut input: ExtensionInput,
) -> Result<ExtensionView, ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    let current = existing(state, &tenant, number).await?;
    if input.number.is_empty() {
        input.number = number.to_string();
    } else if input.number != number {
        return Err(ApiError::invalid(
            "number",
            "must be the number in the path",
        ));
    }
    let extension = build_extension(&tenant, input, Some(&current))?;
    check_members(state, &tenant.id, &extension).await?;
    if extension != current {
        state.repo.update_extension(&tenant.id, &extension).await?;
        audit::record(
            state,
            principal,
            Some(&tenant.id),
            "update",
            &format!("extension {number}"),
        )
        .await;
    }
    Ok(ExtensionView::from(&extension))
}

#[utoipa::path(
    delete, path = "/api/v1/tenants/{code}/extensions/{number}", tag = "extensions",
    params(
        ("code" = String, Path, description = "Tenant code"),
        ("number" = String, Path, description = "Extension number"),
    ),
    responses(
        (status = 204, description = "Deleted, with its registrations"),
        (status = 401, description = "Not logged in", body = ErrorBody),
        (status = 403, description = "Needs Users: Full Access", body = ErrorBody),
        (status = 404, description = "No such tenant or extension", body = ErrorBody),
    )
)]
pub async fn delete_extension(
    State(state): State<ApiState>,
    principal: Principal,
    Path((code, number)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    delete(&state, &principal, &code, &number).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes extension `number` of tenant `code` with its registrations.
pub async fn delete(
    state: &ApiState,
    principal: &Principal,
    code: &str,
    number: &str,
) -> Result<(), ApiError> {
    let tenant = visible_tenant(state, principal, code).await?;
    require(principal, Area::Users, Level::FullAccess)?;
    let current = existing(state, &tenant, number).await?;
    if !state.repo.delete_extension(&tenant.id, &current).await? {
        return Err(ApiError::not_found(format!("no extension {number}")));
    }
    audit::record(
        state,
        principal,
        Some(&tenant.id),
        "delete",
        &format!("extension {number}"),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "Acme".into(),
            code: "ACME".into(),
            sip_domain: "acme.example".into(),
            timezone: "UTC".into(),
            limits: Default::default(),
            enabled: true,
        }
    }

    fn phone(number: &str) -> ExtensionInput {
        ExtensionInput {
            number: number.into(),
            password: Some("sip-secret-1".into()),
            ..ExtensionInput::default()
        }
    }

    fn field_of(result: Result<Extension, ApiError>) -> String {
        result
            .expect_err("refused")
            .field
            .unwrap_or_else(|| "<none>".into())
    }

    #[test]
    fn a_phone_gets_the_default_username_and_only_ha1s() {
        let ext = build_extension(&tenant(), phone("100"), None).expect("valid");
        assert_eq!(ext.username, "100-ACME");
        assert_eq!(ext.display_name, "100");
        let expected = sip::auth::StoredHa1::compute("100-ACME", "acme.example", "sip-secret-1");
        assert_eq!(ext.stored_ha1(), expected);
        assert_eq!(ext.max_contacts, DEFAULT_MAX_CONTACTS);
    }

    #[test]
    fn each_bad_field_is_named() {
        let t = tenant();
        let cases: Vec<(ExtensionInput, &str)> = vec![
            (phone("10a"), "number"),
            (
                ExtensionInput {
                    password: None,
                    ..phone("100")
                },
                "password",
            ),
            (
                ExtensionInput {
                    password: Some("100".into()),
                    ..phone("100")
                },
                "password",
            ),
            (
                ExtensionInput {
                    ring_timeout_secs: Some(2),
                    ..phone("100")
                },
                "ring_timeout_secs",
            ),
            (
                ExtensionInput {
                    forwarding: Forwarding {
                        busy: ForwardRule {
                            enabled: true,
                            destination: String::new(),
                        },
                        ..Forwarding::default()
                    },
                    ..phone("100")
                },
                "forwarding.busy.destination",
            ),
            (
                ExtensionInput {
                    voicemail_pin: Some("12".into()),
                    ..phone("100")
                },
                "voicemail_pin",
            ),
            (
                ExtensionInput {
                    outbound_filter: OutboundFilter::Regex {
                        pattern: "(".into(),
                    },
                    ..phone("100")
                },
                "outbound_filter.pattern",
            ),
            (
                ExtensionInput {
                    allowed_registration_cidrs: vec!["10.0.0.0/8".into(), "nonsense".into()],
                    ..phone("100")
                },
                "allowed_registration_cidrs[1]",
            ),
            (
                ExtensionInput {
                    working_hours: Some(WorkingHours {
                        days: vec!["mon".into(), "funday".into()],
                        start: "09:00".into(),
                        end: "17:00".into(),
                    }),
                    ..phone("100")
                },
                "working_hours.days[1]",
            ),
            (
                ExtensionInput {
                    working_hours: Some(WorkingHours {
                        days: vec!["mon".into()],
                        start: "17:00".into(),
                        end: "09:00".into(),
                    }),
                    ..phone("100")
                },
                "working_hours.end",
            ),
            (
                ExtensionInput {
                    kind: ExtensionKind::Custom,
                    ..phone("100")
                },
                "custom_destination",
            ),
            (
                ExtensionInput {
                    kind: ExtensionKind::Virtual,
                    ..phone("100")
                },
                "members",
            ),
            (
                ExtensionInput {
                    members: vec!["101".into()],
                    ..phone("100")
                },
                "members",
            ),
            (
                ExtensionInput {
                    web_panel_enabled: true,
                    ..phone("100")
                },
                "web_password",
            ),
            (
                ExtensionInput {
                    web_password: Some("short".into()),
                    ..phone("100")
                },
                "web_password",
            ),
            (
                ExtensionInput {
                    email: "nobody".into(),
                    ..phone("100")
                },
                "email",
            ),
            (
                ExtensionInput {
                    max_contacts: Some(0),
                    ..phone("100")
                },
                "max_contacts",
            ),
            (
                ExtensionInput {
                    min_expires: Some(600),
                    default_expires: Some(60),
                    ..phone("100")
                },
                "default_expires",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(
                field_of(build_extension(&t, input.clone(), None)),
                field,
                "{input:?}"
            );
        }
    }

    #[test]
    fn custom_and_virtual_extensions_need_no_password_and_get_an_unknowable_one() {
        let t = tenant();
        let custom = ExtensionInput {
            number: "200".into(),
            kind: ExtensionKind::Custom,
            custom_destination: "+15551234567".into(),
            ..ExtensionInput::default()
        };
        let ext = build_extension(&t, custom, None).expect("valid");
        assert!(!ext.ha1_md5.is_empty());
        assert_ne!(
            ext.stored_ha1(),
            sip::auth::StoredHa1::compute("200-ACME", "acme.example", "")
        );
        let virt = ExtensionInput {
            number: "300".into(),
            kind: ExtensionKind::Virtual,
            members: vec!["100".into(), "101".into()],
            ..ExtensionInput::default()
        };
        assert!(build_extension(&t, virt, None).is_ok());
    }

    #[test]
    fn an_update_without_secrets_keeps_them_and_cannot_rename() {
        let t = tenant();
        let created = build_extension(
            &t,
            ExtensionInput {
                voicemail_pin: Some("1234".into()),
                web_panel_enabled: true,
                web_password: Some("portal pass 42".into()),
                ..phone("100")
            },
            None,
        )
        .expect("valid");
        let update = ExtensionInput {
            number: "100".into(),
            dnd: true,
            web_panel_enabled: true,
            ..ExtensionInput::default()
        };
        let updated = build_extension(&t, update, Some(&created)).expect("valid");
        assert_eq!(updated.stored_ha1(), created.stored_ha1());
        assert_eq!(
            updated.settings.voicemail_pin_hash,
            created.settings.voicemail_pin_hash
        );
        assert_eq!(
            updated.settings.web_password_hash,
            created.settings.web_password_hash
        );
        assert!(updated.settings.dnd);
        let rename = ExtensionInput {
            username: Some("other".into()),
            ..phone("100")
        };
        assert_eq!(
            field_of(build_extension(&t, rename, Some(&created))),
            "username"
        );
    }
}
