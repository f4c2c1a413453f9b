//! Where a call to an extension goes before any of its phones ring
//! (reference/002): a custom extension's destination, unconditional
//! forwarding, do-not-disturb (treated as busy, so the busy forward
//! applies), and offline forwarding when no device is registered. Sans IO:
//! the B2BUA looks the numbers up and follows the forwards.

use crate::model::{Extension, ExtensionKind, ForwardRule};

/// How many forwards one call may follow before it is refused as a loop.
pub const MAX_FORWARDS: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Ring the devices of these extensions: the extension itself, or a
    /// virtual extension's members.
    Ring(Vec<String>),
    /// The call goes to another number of the tenant instead.
    Forward(String),
    /// The caller hears this.
    Refuse(Refusal),
}

/// A final status with its Q.850 cause (RFC 3326 Reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub cause: &'static str,
    pub q850: u16,
}

const BUSY: Route = Route::Refuse(Refusal {
    status: 486,
    cause: "USER_BUSY",
    q850: 17,
});

const OFFLINE: Route = Route::Refuse(Refusal {
    status: 480,
    cause: "SUBSCRIBER_ABSENT",
    q850: 20,
});

fn active(rule: &ForwardRule) -> Option<String> {
    (rule.enabled && !rule.destination.trim().is_empty())
        .then(|| rule.destination.trim().to_string())
}

/// The route decided from the extension's settings alone.
pub fn before_ringing(callee: &Extension) -> Route {
    let settings = &callee.settings;
    if settings.kind == ExtensionKind::Custom {
        return match settings.custom_destination.trim() {
            "" => OFFLINE,
            destination => Route::Forward(destination.to_string()),
        };
    }
    if let Some(destination) = active(&settings.forwarding.unconditional) {
        return Route::Forward(destination);
    }
    if settings.dnd {
        return active(&settings.forwarding.busy).map_or(BUSY, Route::Forward);
    }
    match settings.kind {
        ExtensionKind::Virtual => Route::Ring(settings.members.clone()),
        _ => Route::Ring(vec![callee.number.clone()]),
    }
}

/// The route when none of the extension's devices is registered.
pub fn when_offline(callee: &Extension) -> Route {
    active(&callee.settings.forwarding.offline).map_or(OFFLINE, Route::Forward)
}

/// The refusal of a number that is no extension of the tenant.
pub const UNALLOCATED: Refusal = Refusal {
    status: 404,
    cause: "UNALLOCATED_NUMBER",
    q850: 1,
};

/// The refusal of a call that forwarded more than [`MAX_FORWARDS`] times.
pub const FORWARD_LOOP: Refusal = Refusal {
    status: 482,
    cause: "EXCHANGE_ROUTING_ERROR",
    q850: 25,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ExtensionSettings;

    fn extension(settings: ExtensionSettings) -> Extension {
        Extension {
            number: "100".into(),
            display_name: String::new(),
            username: "100-T".into(),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
            max_contacts: 3,
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            remove_existing_on_register: true,
            recording: Default::default(),
            settings,
        }
    }

    fn rule(enabled: bool, destination: &str) -> ForwardRule {
        ForwardRule {
            enabled,
            destination: destination.into(),
        }
    }

    #[test]
    fn a_plain_phone_rings_itself() {
        let plain = extension(ExtensionSettings::default());
        assert_eq!(before_ringing(&plain), Route::Ring(vec!["100".into()]));
        assert_eq!(when_offline(&plain), OFFLINE);
    }

    #[test]
    fn unconditional_forward_wins_over_dnd_and_a_disabled_rule_is_ignored() {
        let mut settings = ExtensionSettings {
            dnd: true,
            ..Default::default()
        };
        settings.forwarding.unconditional = rule(true, " 200 ");
        assert_eq!(
            before_ringing(&extension(settings.clone())),
            Route::Forward("200".into())
        );
        settings.forwarding.unconditional = rule(false, "200");
        assert_eq!(before_ringing(&extension(settings)), BUSY);
    }

    #[test]
    fn dnd_is_busy_and_takes_the_busy_forward() {
        let mut settings = ExtensionSettings {
            dnd: true,
            ..Default::default()
        };
        assert_eq!(before_ringing(&extension(settings.clone())), BUSY);
        settings.forwarding.busy = rule(true, "300");
        assert_eq!(
            before_ringing(&extension(settings)),
            Route::Forward("300".into())
        );
    }

    #[test]
    fn offline_forward_applies_only_when_enabled_with_a_destination() {
        let mut settings = ExtensionSettings::default();
        settings.forwarding.offline = rule(true, "");
        assert_eq!(when_offline(&extension(settings.clone())), OFFLINE);
        settings.forwarding.offline = rule(true, "400");
        assert_eq!(
            when_offline(&extension(settings)),
            Route::Forward("400".into())
        );
    }

    #[test]
    fn custom_and_virtual_kinds() {
        let custom = ExtensionSettings {
            kind: ExtensionKind::Custom,
            custom_destination: "555".into(),
            ..Default::default()
        };
        assert_eq!(
            before_ringing(&extension(custom)),
            Route::Forward("555".into())
        );
        let virtual_ = ExtensionSettings {
            kind: ExtensionKind::Virtual,
            members: vec!["101".into(), "102".into()],
            ..Default::default()
        };
        assert_eq!(
            before_ringing(&extension(virtual_)),
            Route::Ring(vec!["101".into(), "102".into()])
        );
    }
}
