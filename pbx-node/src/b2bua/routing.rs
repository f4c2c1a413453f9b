//! Where a call to an extension goes (reference/002). Before any of its
//! phones ring: a custom extension's destination, unconditional
//! forwarding, do-not-disturb (treated as busy, so the busy forward
//! applies), and offline forwarding when no device is registered. After
//! they rang: the busy forward when every device refused, the no-answer
//! forward when nobody answered in time, and find-me/follow-me's number
//! rung beside the phones after its delay. Sans IO: the B2BUA looks the
//! numbers up and follows the forwards.

use std::time::Duration;

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

/// Why the phones of an extension that rang did not take the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// Every device refused: busy, or the user declined.
    Busy,
    /// The ring timeout passed, or every device failed otherwise.
    NoAnswer,
}

/// For which outcomes the callee has a forward: the call core then hands
/// the call back for a new route instead of failing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardWhen {
    pub busy: bool,
    pub no_answer: bool,
}

impl ForwardWhen {
    pub fn of(callee: &Extension) -> ForwardWhen {
        ForwardWhen {
            busy: when_unanswered(callee, Unanswered::Busy).is_some(),
            no_answer: when_unanswered(callee, Unanswered::NoAnswer).is_some(),
        }
    }

    pub fn covers(self, why: Unanswered) -> bool {
        match why {
            Unanswered::Busy => self.busy,
            Unanswered::NoAnswer => self.no_answer,
        }
    }
}

/// Where the call goes after the extension's phones rang without taking it.
pub fn when_unanswered(callee: &Extension, why: Unanswered) -> Option<String> {
    let forwarding = &callee.settings.forwarding;
    active(match why {
        Unanswered::Busy => &forwarding.busy,
        Unanswered::NoAnswer => &forwarding.no_answer,
    })
}

/// What the caller hears when an unanswered call is not forwarded.
pub fn unanswered_refusal(why: Unanswered) -> Refusal {
    match why {
        Unanswered::Busy => Refusal {
            status: 486,
            cause: "USER_BUSY",
            q850: 17,
        },
        Unanswered::NoAnswer => Refusal {
            status: 480,
            cause: "NO_ANSWER",
            q850: 19,
        },
    }
}

/// Find-me/follow-me: the number rung beside the extension's phones, and
/// after how long.
pub fn follow_me(callee: &Extension) -> Option<(String, Duration)> {
    let fmfm = &callee.settings.find_me_follow_me;
    let number = fmfm.number.trim();
    (fmfm.enabled && !number.is_empty()).then(|| {
        (
            number.to_string(),
            Duration::from_secs(fmfm.delay_secs.into()),
        )
    })
}

/// The refusal of a number that is no extension of the tenant.
pub const UNALLOCATED: Refusal = Refusal {
    status: 404,
    cause: "UNALLOCATED_NUMBER",
    q850: 1,
};

/// The refusal of a call past its tenant's maximum concurrent calls
/// (RFC 3398 maps cause 34 to 503).
pub const TENANT_CALL_LIMIT: Refusal = Refusal {
    status: 503,
    cause: "NO_CIRCUIT_AVAILABLE",
    q850: 34,
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
    use crate::model::{ExtensionSettings, FindMeFollowMe};

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
    fn busy_and_no_answer_forwards_apply_after_ringing() {
        let mut settings = ExtensionSettings::default();
        settings.forwarding.busy = rule(true, "200");
        settings.forwarding.no_answer = rule(false, "300");
        let callee = extension(settings);
        assert_eq!(
            ForwardWhen::of(&callee),
            ForwardWhen {
                busy: true,
                no_answer: false
            }
        );
        assert_eq!(
            when_unanswered(&callee, Unanswered::Busy),
            Some("200".into())
        );
        assert_eq!(when_unanswered(&callee, Unanswered::NoAnswer), None);
        assert_eq!(unanswered_refusal(Unanswered::NoAnswer).status, 480);
        // Neither forward changes where the call goes before it rings.
        assert_eq!(before_ringing(&callee), Route::Ring(vec!["100".into()]));
    }

    #[test]
    fn follow_me_needs_to_be_enabled_with_a_number() {
        let mut settings = ExtensionSettings {
            find_me_follow_me: FindMeFollowMe {
                enabled: false,
                number: "555".into(),
                delay_secs: 10,
            },
            ..Default::default()
        };
        assert_eq!(follow_me(&extension(settings.clone())), None);
        settings.find_me_follow_me.enabled = true;
        assert_eq!(
            follow_me(&extension(settings)),
            Some(("555".into(), Duration::from_secs(10)))
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
