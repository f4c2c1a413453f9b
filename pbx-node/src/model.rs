//! The domain records stored in raft-store as JSON.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Upper-case short name, the suffix of default SIP usernames (`100-DEMO`).
    pub code: String,
    /// The tenant's SIP domain; also the digest realm of its extensions.
    pub sip_domain: String,
    /// IANA time zone of the tenant's office hours (`Europe/Rome`).
    #[serde(default = "default_timezone")]
    pub timezone: String,
    #[serde(default)]
    pub limits: TenantLimits,
    /// A disabled tenant's phones cannot register or call.
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn default_timezone() -> String {
    "UTC".to_string()
}

fn enabled() -> bool {
    true
}

/// What a tenant may use; `None` = no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantLimits {
    pub max_extensions: Option<u32>,
    pub max_concurrent_calls: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    pub number: String,
    pub display_name: String,
    pub username: String,
    /// HA1 = MD5(username:realm:password); the password itself is never stored.
    pub ha1_md5: String,
    /// HA1 = SHA-256(username:realm:password).
    pub ha1_sha256: String,
    pub max_contacts: u32,
    pub min_expires: u32,
    pub default_expires: u32,
    pub max_expires: u32,
    /// On a new registration beyond `max_contacts`, drop the bindings that
    /// expire soonest instead of refusing the registration.
    pub remove_existing_on_register: bool,
    /// Inbound/Outbound Recording (reference/002); absent in records
    /// stored before recording existed, which then record nothing.
    #[serde(default)]
    pub recording: RecordingPolicy,
    /// What the management plane sets beyond registration: kind, call
    /// handling, security and the user's web access; absent in records
    /// stored before the management API, which then get the defaults.
    #[serde(default)]
    pub settings: ExtensionSettings,
}

/// The three kinds of extension in reference/002.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExtensionKind {
    /// A phone that registers with its username and password.
    #[default]
    Phone,
    /// Routes to a dial string or an external number.
    Custom,
    /// A number that rings a set of member extensions.
    Virtual,
}

/// One forwarding rule: where calls go when its condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ForwardRule {
    pub enabled: bool,
    /// An extension number of the tenant or an external number.
    pub destination: String,
}

/// Call forwarding ("Additional Destinations" in reference/002).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Forwarding {
    /// Every call, before the extension rings.
    pub unconditional: ForwardRule,
    /// After the ring timeout.
    pub no_answer: ForwardRule,
    /// When every device is busy.
    pub busy: ForwardRule,
    /// When no device is registered.
    pub offline: ForwardRule,
}

/// Find-me/follow-me: an alternate number rung after a delay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FindMeFollowMe {
    pub enabled: bool,
    pub number: String,
    /// Seconds the extension rings alone before the number is rung too.
    pub delay_secs: u32,
}

/// Which outbound destinations an extension may dial.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum OutboundFilter {
    #[default]
    AllowAll,
    Block,
    /// Only numbers matching the regular expression (anchored).
    Regex {
        pattern: String,
    },
}

/// When an extension may place outbound calls, in the tenant's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkingHours {
    /// Days of the week, `mon` … `sun`.
    pub days: Vec<String>,
    /// `HH:MM`, inclusive.
    pub start: String,
    /// `HH:MM`, exclusive; after `start`.
    pub end: String,
}

/// The caller identity presented on outbound calls.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CallerId {
    pub number: String,
    pub name: String,
}

/// Everything of an extension the management plane sets beyond its
/// registration limits (reference/002 sections).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionSettings {
    pub kind: ExtensionKind,
    pub description: String,
    pub email: String,
    pub department: String,
    /// Do not disturb: calls to the extension are not presented.
    pub dnd: bool,
    /// Seconds the extension rings; `None` = the node's ring timeout.
    pub ring_timeout_secs: Option<u32>,
    pub forwarding: Forwarding,
    pub find_me_follow_me: FindMeFollowMe,
    pub voicemail_enabled: bool,
    /// argon2 hash of the voicemail PIN.
    pub voicemail_pin_hash: Option<String>,
    pub outbound_filter: OutboundFilter,
    /// Longest outbound call in seconds; `None` = no limit.
    pub max_call_duration_secs: Option<u32>,
    /// `None` = outbound calls at any time.
    pub working_hours: Option<WorkingHours>,
    /// Registrations only from these networks; empty = from anywhere.
    pub allowed_registration_cidrs: Vec<ipnet::IpNet>,
    pub external_caller_id: CallerId,
    pub emergency_caller_id: String,
    /// Custom extensions: the dial string or external number called.
    pub custom_destination: String,
    /// Virtual extensions: the member extension numbers rung.
    pub members: Vec<String>,
    /// The extension's user may log in to the web portal and API.
    pub web_panel_enabled: bool,
    /// argon2 hash of the web password; `None` = no web login.
    pub web_password_hash: Option<String>,
}

/// Which of an extension's calls are recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RecordingPolicy {
    /// Calls the extension receives.
    pub inbound: bool,
    /// Calls the extension places.
    pub outbound: bool,
}

impl Extension {
    /// The default username pattern: `<number>-<tenant code>`.
    pub fn default_username(number: &str, tenant_code: &str) -> String {
        format!("{number}-{tenant_code}")
    }

    pub fn stored_ha1(&self) -> sip::auth::StoredHa1 {
        sip::auth::StoredHa1 {
            md5: self.ha1_md5.clone(),
            sha256: self.ha1_sha256.clone(),
        }
    }
}

/// The registration limits a new extension gets unless told otherwise.
pub const DEFAULT_MAX_CONTACTS: u32 = 3;
pub const DEFAULT_MIN_EXPIRES: u32 = 60;
pub const DEFAULT_EXPIRES: u32 = 3600;
pub const DEFAULT_MAX_EXPIRES: u32 = 7200;

/// One registered contact of an extension (RFC 3261 §10.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The Contact as registered, without its `expires` parameter.
    pub contact: String,
    /// The URI of the contact, which requests to this device are sent to.
    pub uri: String,
    /// RFC 5626 `+sip.instance`, when the device sent one.
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// RFC 3327 Path headers, in order: the route back to the device.
    pub path: Vec<String>,
    pub call_id: String,
    pub cseq: u32,
    /// The expiry the registrar granted, in seconds; also the lease TTL.
    pub expires_secs: u32,
    /// UTC unix milliseconds when the binding lapses.
    pub expires_at_ms: u64,
    /// Where the REGISTER came from, e.g. `udp:192.0.2.1:5060`.
    pub received_from: String,
}

impl Binding {
    /// Seconds left at `now_ms`, rounded up so a live binding never shows 0.
    pub fn remaining_secs(&self, now_ms: u64) -> u32 {
        let left_ms = self.expires_at_ms.saturating_sub(now_ms);
        u32::try_from(left_ms.div_ceil(1000)).unwrap_or(u32::MAX)
    }
}

/// One call's detail record (CDR), written once when the call ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cdr {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    /// The calling extension's number.
    pub from: String,
    /// The dialled number.
    pub to: String,
    /// UTC unix milliseconds.
    pub start_ms: u64,
    pub answer_ms: Option<u64>,
    pub end_ms: u64,
    /// ANSWERED, BUSY, NO ANSWER, CANCELLED or FAILED.
    pub disposition: String,
    /// Q.850 cause name, e.g. NORMAL_CLEARING, USER_BUSY, NO_ANSWER.
    pub hangup_cause: String,
    /// caller, callee or system.
    pub hangup_by: String,
    /// The SIP status the caller got for an unanswered call.
    pub sip_status: Option<u16>,
    /// The pbx-node (raft node id) that handled the call.
    pub node_id: u64,
    /// The call's recording, if it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording_id: Option<String>,
}

/// One recorded call, indexed in raft-store; the audio is a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Recording {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    /// The calling extension's number.
    pub from: String,
    /// The dialled number.
    pub to: String,
    /// Whose policy asked for it: `outbound` (the caller's), `inbound`
    /// (the callee's) or `inbound,outbound`.
    pub reason: String,
    /// UTC unix milliseconds: the answer, and the hang-up.
    pub start_ms: u64,
    pub end_ms: u64,
    /// `stereo` (caller left, callee right) or `mixed`.
    pub layout: String,
    /// Always `audio/wav` (16-bit PCM, 8 kHz).
    pub content_type: String,
    pub size_bytes: u64,
    /// Where the audio is in the blob store.
    pub blob_key: String,
    /// The pbx-node (raft node id) that recorded the call.
    pub node_id: u64,
}
