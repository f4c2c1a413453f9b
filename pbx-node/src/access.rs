//! Who may do what: permission areas and levels with the names of the
//! reference documents (`Users: View Only`, `Analytics: Full Access`,
//! `System Tenant: View Only` …), the four built-in roles, custom roles
//! that combine grants, and the principal an API request acts as.
//! Pure logic, no IO.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A part of the product a permission covers.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Area {
    /// Tenants and system settings: only system administrators hold it.
    #[serde(rename = "System Tenant")]
    SystemTenant,
    /// A tenant's extensions, users, roles and API keys.
    #[serde(rename = "Users")]
    Users,
    /// One's own extension and profile.
    #[serde(rename = "User")]
    User,
    /// A tenant's routing: trunks, rules, callflows, IVRs, ring groups.
    #[serde(rename = "PhoneSystem")]
    PhoneSystem,
    /// Call queues and their agents.
    #[serde(rename = "Call Queues")]
    CallQueues,
    /// CDRs, recordings, reports and the audit log.
    #[serde(rename = "Analytics")]
    Analytics,
}

impl Area {
    pub const ALL: [Area; 6] = [
        Area::SystemTenant,
        Area::Users,
        Area::User,
        Area::PhoneSystem,
        Area::CallQueues,
        Area::Analytics,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Area::SystemTenant => "System Tenant",
            Area::Users => "Users",
            Area::User => "User",
            Area::PhoneSystem => "PhoneSystem",
            Area::CallQueues => "Call Queues",
            Area::Analytics => "Analytics",
        }
    }
}

/// How much of an area a grant allows; `FullAccess` includes `ViewOnly`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub enum Level {
    #[serde(rename = "View Only")]
    ViewOnly,
    #[serde(rename = "Full Access")]
    FullAccess,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::ViewOnly => "View Only",
            Level::FullAccess => "Full Access",
        }
    }
}

/// One permission: an area at a level.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
pub struct Grant {
    pub area: Area,
    pub level: Level,
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.area.name(), self.level.name())
    }
}

const fn grant(area: Area, level: Level) -> Grant {
    Grant { area, level }
}

/// A role: one of the four built in, or a tenant's custom role by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    SystemAdmin,
    TenantAdmin,
    QueueManager,
    /// An extension's user, logged in with its web credentials.
    User,
    /// A custom role of the user's tenant, with the grants stored for it.
    Custom(String),
}

const SYSTEM_ADMIN_GRANTS: &[Grant] = &[
    grant(Area::SystemTenant, Level::FullAccess),
    grant(Area::Users, Level::FullAccess),
    grant(Area::User, Level::FullAccess),
    grant(Area::PhoneSystem, Level::FullAccess),
    grant(Area::CallQueues, Level::FullAccess),
    grant(Area::Analytics, Level::FullAccess),
];

const TENANT_ADMIN_GRANTS: &[Grant] = &[
    grant(Area::Users, Level::FullAccess),
    grant(Area::User, Level::FullAccess),
    grant(Area::PhoneSystem, Level::FullAccess),
    grant(Area::CallQueues, Level::FullAccess),
    grant(Area::Analytics, Level::FullAccess),
];

const QUEUE_MANAGER_GRANTS: &[Grant] = &[
    grant(Area::Users, Level::ViewOnly),
    grant(Area::User, Level::FullAccess),
    grant(Area::CallQueues, Level::FullAccess),
    grant(Area::Analytics, Level::ViewOnly),
];

const USER_GRANTS: &[Grant] = &[grant(Area::User, Level::FullAccess)];

impl Role {
    /// The grants of a built-in role; `None` for a custom one, whose
    /// grants are stored with it.
    pub fn builtin_grants(&self) -> Option<&'static [Grant]> {
        match self {
            Role::SystemAdmin => Some(SYSTEM_ADMIN_GRANTS),
            Role::TenantAdmin => Some(TENANT_ADMIN_GRANTS),
            Role::QueueManager => Some(QUEUE_MANAGER_GRANTS),
            Role::User => Some(USER_GRANTS),
            Role::Custom(_) => None,
        }
    }
}

/// A grant list with no area twice: for each area the highest level.
pub fn normalize(grants: &[Grant]) -> Vec<Grant> {
    let mut out: Vec<Grant> = Vec::new();
    for g in grants {
        match out.iter_mut().find(|o| o.area == g.area) {
            Some(o) => o.level = o.level.max(g.level),
            None => out.push(*g),
        }
    }
    out.sort();
    out
}

/// Whom a request acts for: the user's name, its tenant (none for a
/// system administrator) and its effective grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub username: String,
    pub role: Role,
    /// `None`: not bound to a tenant (system administrators).
    pub tenant_id: Option<String>,
    /// For an extension's user: its extension number.
    pub extension: Option<String>,
    pub grants: Vec<Grant>,
}

impl Principal {
    /// Holds `area` at `level` or above.
    pub fn holds(&self, area: Area, level: Level) -> bool {
        self.grants
            .iter()
            .any(|g| g.area == area && g.level >= level)
    }

    /// May see `tenant_id` at all: system-wide principals see every
    /// tenant, the others only their own. Anything else answers 404, as
    /// if the tenant did not exist.
    pub fn sees_tenant(&self, tenant_id: &str) -> bool {
        match &self.tenant_id {
            None => self.holds(Area::SystemTenant, Level::ViewOnly),
            Some(own) => own == tenant_id,
        }
    }

    /// Every grant in `grants` is one this principal holds too, so it
    /// cannot hand out more than it has.
    pub fn covers(&self, grants: &[Grant]) -> bool {
        grants.iter().all(|g| self.holds(g.area, g.level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, tenant: Option<&str>) -> Principal {
        Principal {
            username: "u".into(),
            grants: role.builtin_grants().unwrap_or_default().to_vec(),
            role,
            tenant_id: tenant.map(str::to_string),
            extension: None,
        }
    }

    #[test]
    fn full_access_includes_view_only_and_nothing_else() {
        let admin = principal(Role::TenantAdmin, Some("t1"));
        assert!(admin.holds(Area::Users, Level::ViewOnly));
        assert!(admin.holds(Area::Users, Level::FullAccess));
        assert!(!admin.holds(Area::SystemTenant, Level::ViewOnly));
        let manager = principal(Role::QueueManager, Some("t1"));
        assert!(manager.holds(Area::Users, Level::ViewOnly));
        assert!(!manager.holds(Area::Users, Level::FullAccess));
        let user = principal(Role::User, Some("t1"));
        assert!(!user.holds(Area::Users, Level::ViewOnly));
        assert!(user.holds(Area::User, Level::FullAccess));
    }

    #[test]
    fn tenants_are_seen_only_by_their_own_and_by_system_admins() {
        let admin = principal(Role::TenantAdmin, Some("t1"));
        assert!(admin.sees_tenant("t1"));
        assert!(!admin.sees_tenant("t2"));
        let system = principal(Role::SystemAdmin, None);
        assert!(system.sees_tenant("t2"));
        // A principal without a tenant and without System Tenant sees none.
        let odd = principal(Role::User, None);
        assert!(!odd.sees_tenant("t1"));
    }

    #[test]
    fn grants_use_the_reference_names_and_normalize_to_the_highest_level() {
        let json =
            serde_json::to_string(&grant(Area::SystemTenant, Level::ViewOnly)).expect("serialize");
        assert_eq!(json, r#"{"area":"System Tenant","level":"View Only"}"#);
        let parsed: Grant =
            serde_json::from_str(r#"{"area":"Analytics","level":"Full Access"}"#).expect("parse");
        assert_eq!(parsed.to_string(), "Analytics: Full Access");
        let merged = normalize(&[
            grant(Area::Users, Level::ViewOnly),
            grant(Area::Analytics, Level::ViewOnly),
            grant(Area::Users, Level::FullAccess),
        ]);
        assert_eq!(
            merged,
            [
                grant(Area::Users, Level::FullAccess),
                grant(Area::Analytics, Level::ViewOnly)
            ]
        );
    }

    #[test]
    fn a_principal_cannot_hand_out_more_than_it_holds() {
        let manager = principal(Role::QueueManager, Some("t1"));
        assert!(manager.covers(&[grant(Area::CallQueues, Level::FullAccess)]));
        assert!(!manager.covers(&[grant(Area::Users, Level::FullAccess)]));
    }
}
