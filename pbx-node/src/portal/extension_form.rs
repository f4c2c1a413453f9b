//! The extension form: its sections and fields as reference/002 names
//! them, how each field becomes part of the API's `ExtensionInput` JSON
//! (the field names are the JSON paths, so the API's error `field` names
//! the form field), and how a stored extension fills the form.

use maud::{html, Markup};
use serde_json::{Map, Value};

use super::form::{first, FieldValues, FormData, FormErrors};
use super::layout::row;
use crate::api::error::{parse_json, ApiError};
use crate::api::extensions::{ExtensionInput, ExtensionView};
use crate::model::ExtensionKind;

/// How a field is edited and how its value reaches the JSON input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// A string, sent as typed (possibly empty).
    Text,
    /// A string left out when empty (defaults or keeps the stored value).
    Optional,
    /// A secret: left out when empty, so the stored one is kept.
    Secret,
    /// A whole number; empty = left out.
    Number,
    /// A whole number; empty = 0.
    NumberOrZero,
    /// A checkbox: true when ticked.
    Check,
    /// A list typed as text, one item per comma, space or line.
    List,
    /// Days of the week as a group of checkboxes.
    Days,
    /// One of fixed choices; none = left out (the default).
    Choice(&'static [(&'static str, &'static str)]),
    /// A time of day `HH:MM`; empty = left out.
    Time,
}

struct Field {
    /// The JSON path in `ExtensionInput`, which is also the input's name.
    name: &'static str,
    label: &'static str,
    control: Control,
    help: &'static str,
    /// The kinds that have this field; empty = every kind.
    kinds: &'static [ExtensionKind],
}

struct Section {
    title: &'static str,
    /// Laid out in two columns: a switch and its destination per line.
    paired: bool,
    fields: &'static [Field],
}

const PHONE: &[ExtensionKind] = &[ExtensionKind::Phone];
const CUSTOM: &[ExtensionKind] = &[ExtensionKind::Custom];
const VIRTUAL: &[ExtensionKind] = &[ExtensionKind::Virtual];
const ALL: &[ExtensionKind] = &[];

const fn field(
    name: &'static str,
    label: &'static str,
    control: Control,
    help: &'static str,
    kinds: &'static [ExtensionKind],
) -> Field {
    Field {
        name,
        label,
        control,
        help,
        kinds,
    }
}

const FILTER_MODES: &[(&str, &str)] = &[
    ("allow_all", "Allow all destinations"),
    ("block", "Block outbound calls"),
    ("regex", "Only numbers matching a pattern"),
];

const DAYS: &[(&str, &str)] = &[
    ("mon", "Mon"),
    ("tue", "Tue"),
    ("wed", "Wed"),
    ("thu", "Thu"),
    ("fri", "Fri"),
    ("sat", "Sat"),
    ("sun", "Sun"),
];

use Control::*;

/// The sections of reference/002's extension page that our fields belong to.
const SECTIONS: &[Section] = &[
    Section {
        title: "Information",
        paired: false,
        fields: &[
            field("number", "Extension number", Text, "1 to 16 digits.", ALL),
            field("display_name", "Display name", Text, "Shown as the caller name; defaults to the number.", ALL),
            field("username", "SIP username", Optional, "Defaults to <number>-<TENANT CODE>; cannot change later.", ALL),
            field("password", "SIP password", Secret, "8 to 64 characters, not the username or number. Leave empty to keep the current one.", PHONE),
            field("custom_destination", "Destination", Text, "The dial string or external number this extension calls.", CUSTOM),
            field("members", "Members", List, "The phone extensions rung, separated by commas.", VIRTUAL),
            field("dnd", "Do not disturb", Check, "", ALL),
            field("ring_timeout_secs", "Ring timeout (seconds)", Number, "5 to 600; empty = the system default.", ALL),
            field("voicemail_enabled", "Voicemail", Check, "", ALL),
            field("voicemail_pin", "Voicemail PIN", Secret, "4 to 12 digits. Leave empty to keep the current one.", ALL),
        ],
    },
    Section {
        title: "Call Settings",
        paired: false,
        fields: &[
            field("max_call_duration_secs", "Maximum call duration (seconds)", Number, "1 to 86400; empty = no limit.", ALL),
            field("max_contacts", "Maximum contacts", Number, "Devices registered at once, 1 to 100 (default 3).", PHONE),
            field("remove_existing_on_register", "Replace the oldest registration when full", Check, "", PHONE),
            field("min_expires", "Minimum registration expiry (s)", Number, "", PHONE),
            field("default_expires", "Default registration expiry (s)", Number, "", PHONE),
            field("max_expires", "Maximum registration expiry (s)", Number, "At most 86400.", PHONE),
        ],
    },
    Section {
        title: "Inbound Recording",
        paired: false,
        fields: &[field("recording.inbound", "Record calls received", Check, "", ALL)],
    },
    Section {
        title: "Outbound Recording",
        paired: false,
        fields: &[field("recording.outbound", "Record calls placed", Check, "", ALL)],
    },
    Section {
        title: "Security",
        paired: false,
        fields: &[
            field("allowed_registration_cidrs", "Allowed registration networks", List, "Addresses or networks such as 192.0.2.0/24; empty = anywhere.", PHONE),
            field("working_hours.days", "Outbound calls allowed on", Days, "No day ticked = at any time.", ALL),
            field("working_hours.start", "From", Time, "", ALL),
            field("working_hours.end", "Until", Time, "", ALL),
        ],
    },
    Section {
        title: "Web User Panel",
        paired: false,
        fields: &[
            field("web_panel_enabled", "Web user panel", Check, "The extension's user may log in to the portal.", ALL),
            field("web_password", "Web password", Secret, "Leave empty to keep the current one.", ALL),
        ],
    },
    Section {
        title: "Outbound Calls",
        paired: false,
        fields: &[
            field("external_caller_id.number", "External caller ID number", Text, "", ALL),
            field("external_caller_id.name", "External caller ID name", Text, "", ALL),
            field("emergency_caller_id", "Emergency caller ID", Text, "", ALL),
            field("outbound_filter.mode", "Outbound destinations", Choice(FILTER_MODES), "", ALL),
            field("outbound_filter.pattern", "Allowed pattern", Text, "A regular expression the whole number must match.", ALL),
        ],
    },
    Section {
        title: "Find me/Follow me",
        paired: false,
        fields: &[
            field("find_me_follow_me.enabled", "Find me/Follow me", Check, "", ALL),
            field("find_me_follow_me.number", "Alternate number", Text, "", ALL),
            field("find_me_follow_me.delay_secs", "Delay (seconds)", NumberOrZero, "How long the extension rings alone, 0 to 120.", ALL),
        ],
    },
    Section {
        title: "Additional Destinations",
        paired: true,
        fields: &[
            field("forwarding.unconditional.enabled", "Forward every call", Check, "", ALL),
            field("forwarding.unconditional.destination", "Destination", Text, "", ALL),
            field("forwarding.no_answer.enabled", "Forward on no answer", Check, "", ALL),
            field("forwarding.no_answer.destination", "Destination", Text, "", ALL),
            field("forwarding.busy.enabled", "Forward when busy", Check, "", ALL),
            field("forwarding.busy.destination", "Destination", Text, "", ALL),
            field("forwarding.offline.enabled", "Forward when offline", Check, "", ALL),
            field("forwarding.offline.destination", "Destination", Text, "", ALL),
        ],
    },
    Section {
        title: "Note",
        paired: false,
        fields: &[
            field("email", "Email", Text, "", ALL),
            field("department", "Department", Text, "", ALL),
            field("description", "Description", Text, "", ALL),
        ],
    },
];

impl Field {
    fn applies_to(&self, kind: ExtensionKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

/// The kind a form or query names (`phone` when none or unknown).
pub fn kind_of(name: &str) -> ExtensionKind {
    match name {
        "custom" => ExtensionKind::Custom,
        "virtual" => ExtensionKind::Virtual,
        _ => ExtensionKind::Phone,
    }
}

pub fn kind_name(kind: ExtensionKind) -> &'static str {
    match kind {
        ExtensionKind::Phone => "phone",
        ExtensionKind::Custom => "custom",
        ExtensionKind::Virtual => "virtual",
    }
}

/// The names of the fields a form of `kind` has, for placing errors.
pub fn field_names(kind: ExtensionKind) -> Vec<&'static str> {
    SECTIONS
        .iter()
        .flat_map(|s| s.fields)
        .filter(|f| f.applies_to(kind))
        .map(|f| f.name)
        .collect()
}

/// Sets `value` at dotted `path` in `object`.
fn put(object: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let child = object
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(child) = child {
                put(child, rest, value);
            }
        }
    }
}

/// The API input a submitted form of `kind` stands for. A field that is
/// not a whole number where one is needed is refused here, naming it;
/// everything else is for the API's own validation.
pub fn input_from_form(form: &FormData, kind: ExtensionKind) -> Result<ExtensionInput, ApiError> {
    let mut object = Map::new();
    object.insert("kind".into(), Value::String(kind_name(kind).into()));
    for field in SECTIONS.iter().flat_map(|s| s.fields) {
        if !field.applies_to(kind) {
            continue;
        }
        let text = form.text(field.name);
        let value = match field.control {
            Text => Some(Value::String(text.to_string())),
            Optional | Secret | Time | Choice(_) if text.is_empty() => None,
            Optional | Time => Some(Value::String(text.to_string())),
            // Secrets are sent exactly as typed: spaces may belong to them.
            Secret => form.get(field.name).map(|v| Value::String(v.to_string())),
            Number if text.is_empty() => None,
            NumberOrZero if text.is_empty() => Some(Value::from(0)),
            Number | NumberOrZero => match text.parse::<u64>() {
                Ok(n) => Some(Value::from(n)),
                Err(_) => return Err(ApiError::invalid(field.name, "must be a whole number")),
            },
            Check => Some(Value::Bool(form.get(field.name).is_some())),
            List => Some(Value::Array(
                text.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|item| !item.is_empty())
                    .map(|item| Value::String(item.to_string()))
                    .collect(),
            )),
            Days => Some(Value::Array(
                form.all(field.name)
                    .into_iter()
                    .map(|d| Value::String(d.to_string()))
                    .collect(),
            )),
            Choice(_) => Some(Value::String(text.to_string())),
        };
        if let Some(value) = value {
            put(&mut object, field.name, value);
        }
    }
    // Working hours are set when any part of them is; a pattern only
    // belongs to the regex filter.
    let no_hours = form.all("working_hours.days").is_empty()
        && form.text("working_hours.start").is_empty()
        && form.text("working_hours.end").is_empty();
    if no_hours {
        object.remove("working_hours");
    }
    let mut no_filter = false;
    if let Some(Value::Object(filter)) = object.get_mut("outbound_filter") {
        if form.text("outbound_filter.mode") != "regex" {
            filter.remove("pattern");
        }
        no_filter = filter.is_empty();
    }
    if no_filter {
        object.remove("outbound_filter");
    }
    let json = serde_json::to_vec(&Value::Object(object))
        .map_err(|e| ApiError::invalid("form", e.to_string()))?;
    parse_json(&json)
}

/// The form values showing a stored extension (secrets empty).
pub fn values_from_view(view: &ExtensionView) -> FieldValues {
    let json = serde_json::to_value(view).unwrap_or(Value::Null);
    let mut values = FieldValues::new();
    for field in SECTIONS.iter().flat_map(|s| s.fields) {
        let found = field
            .name
            .split('.')
            .try_fold(&json, |v, key| v.get(key))
            .unwrap_or(&Value::Null);
        let shown: Vec<String> = match (field.control, found) {
            (Secret, _) | (_, Value::Null) => Vec::new(),
            (Check, Value::Bool(true)) => vec!["on".into()],
            (Check, _) => Vec::new(),
            (_, Value::Array(items)) if field.control == Days => items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_string))
                .collect(),
            (_, Value::Array(items)) => vec![items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")],
            (_, Value::String(s)) => vec![s.clone()],
            (_, other) => vec![other.to_string()],
        };
        values.insert(field.name.to_string(), shown);
    }
    values
}

/// The values of an empty form: the API's defaults.
pub fn default_values() -> FieldValues {
    let mut values = FieldValues::new();
    values.insert("remove_existing_on_register".into(), vec!["on".into()]);
    values.insert("outbound_filter.mode".into(), vec!["allow_all".into()]);
    values
}

/// The form's sections for `kind`; on an existing extension the number and
/// username are shown but cannot change, and set secrets say so.
pub fn render_sections(
    kind: ExtensionKind,
    values: &FieldValues,
    errors: &FormErrors,
    existing: Option<&ExtensionView>,
) -> Markup {
    html! {
        @for section in SECTIONS {
            @let fields: Vec<&Field> = section.fields.iter().filter(|f| f.applies_to(kind)).collect();
            @if !fields.is_empty() {
                fieldset.section {
                    legend { (section.title) }
                    div class={ "grid" @if section.paired { " pairs" } } {
                        @for f in fields {
                            (render_field(f, values, errors, existing))
                        }
                    }
                }
            }
        }
    }
}

fn input_id(name: &str) -> String {
    format!("f-{}", name.replace('.', "-"))
}

fn render_field(
    f: &Field,
    values: &FieldValues,
    errors: &FormErrors,
    existing: Option<&ExtensionView>,
) -> Markup {
    let id = input_id(f.name);
    let value = first(values, f.name);
    let error = errors.on(f.name);
    let fixed = existing.is_some() && matches!(f.name, "number" | "username");
    let secret_set = existing.is_some_and(|e| match f.name {
        "password" => true,
        "voicemail_pin" => e.has_voicemail_pin,
        "web_password" => e.has_web_password,
        _ => false,
    });
    let control = match f.control {
        Check => html! {
            label.check {
                input type="checkbox" id=(id) name=(f.name) checked[!value.is_empty()];
                span { "Enabled" }
            }
        },
        Days => html! {
            div.days id=(id) {
                @for (day, label) in DAYS {
                    label.check {
                        input type="checkbox" name=(f.name) value=(day)
                            checked[values.get(f.name).is_some_and(|v| v.iter().any(|d| d == day))];
                        span { (label) }
                    }
                }
            }
        },
        Choice(choices) => html! {
            select id=(id) name=(f.name) {
                @for (choice, label) in choices {
                    option value=(choice) selected[value == *choice] { (label) }
                }
            }
        },
        Secret => html! {
            input type="password" id=(id) name=(f.name) autocomplete="new-password"
                placeholder=(if secret_set { "•••••• (unchanged)" } else { "" });
        },
        Number | NumberOrZero => html! {
            input type="text" inputmode="numeric" id=(id) name=(f.name) value=(value);
        },
        Time => html! { input type="time" id=(id) name=(f.name) value=(value); },
        Text | Optional | List => html! {
            input type="text" id=(id) name=(f.name) value=(value) readonly[fixed];
        },
    };
    row(f.label, &id, control, f.help, error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ForwardRule, OutboundFilter};

    #[test]
    fn a_phone_form_becomes_the_api_input() {
        let form = FormData::parse(
            b"number=200&display_name=Reception&password=sip-secret-1&dnd=on\
              &ring_timeout_secs=25&forwarding.busy.enabled=on&forwarding.busy.destination=101\
              &allowed_registration_cidrs=10.0.0.0%2F8%2C+192.0.2.1\
              &outbound_filter.mode=regex&outbound_filter.pattern=1%5Cd%2B\
              &working_hours.days=mon&working_hours.days=fri&working_hours.start=09%3A00\
              &working_hours.end=17%3A00&voicemail_pin=&find_me_follow_me.delay_secs=\
              &remove_existing_on_register=on&csrf=x",
        );
        let input = input_from_form(&form, ExtensionKind::Phone).expect("valid form");
        assert_eq!(input.number, "200");
        assert_eq!(input.password.as_deref(), Some("sip-secret-1"));
        assert!(input.dnd);
        assert_eq!(input.ring_timeout_secs, Some(25));
        assert_eq!(
            input.forwarding.busy,
            ForwardRule {
                enabled: true,
                destination: "101".into()
            }
        );
        assert_eq!(
            input.allowed_registration_cidrs,
            ["10.0.0.0/8", "192.0.2.1"]
        );
        assert_eq!(
            input.outbound_filter,
            OutboundFilter::Regex {
                pattern: "1\\d+".into()
            }
        );
        let hours = input.working_hours.expect("hours");
        assert_eq!(hours.days, ["mon", "fri"]);
        assert_eq!(
            input.voicemail_pin, None,
            "an empty secret keeps the stored one"
        );
        assert_eq!(input.find_me_follow_me.delay_secs, 0);
        assert_eq!(input.remove_existing_on_register, Some(true));
    }

    #[test]
    fn a_bad_number_is_refused_naming_its_field_and_other_kinds_skip_phone_fields() {
        let bad = FormData::parse(b"number=200&ring_timeout_secs=soon");
        let error = input_from_form(&bad, ExtensionKind::Phone).expect_err("refused");
        assert_eq!(error.field.as_deref(), Some("ring_timeout_secs"));
        let custom = FormData::parse(
            b"number=300&custom_destination=%2B15551234567&max_contacts=7&password=ignored1",
        );
        let input = input_from_form(&custom, ExtensionKind::Custom).expect("valid");
        assert_eq!(input.kind, ExtensionKind::Custom);
        assert_eq!(input.custom_destination, "+15551234567");
        assert_eq!(input.max_contacts, None);
        assert_eq!(input.password, None);
        assert_eq!(input.working_hours, None);
        assert_eq!(input.outbound_filter, OutboundFilter::AllowAll);
    }

    #[test]
    fn a_stored_extension_fills_the_form_and_round_trips() {
        let form = FormData::parse(
            b"number=300&kind=virtual&members=100%2C101&display_name=Sales\
              &outbound_filter.mode=block&forwarding.offline.enabled=on\
              &forwarding.offline.destination=555",
        );
        let input = input_from_form(&form, ExtensionKind::Virtual).expect("valid");
        assert_eq!(input.members, ["100", "101"]);
        let tenant = crate::model::Tenant {
            id: "t1".into(),
            name: "Acme".into(),
            code: "ACME".into(),
            sip_domain: "acme.example".into(),
            timezone: "UTC".into(),
            limits: Default::default(),
            enabled: true,
        };
        let stored = crate::api::extensions::build_extension(&tenant, input, None).expect("valid");
        let view = ExtensionView::from(&stored);
        let values = values_from_view(&view);
        assert_eq!(first(&values, "members"), "100, 101");
        assert_eq!(first(&values, "outbound_filter.mode"), "block");
        assert_eq!(first(&values, "forwarding.offline.enabled"), "on");
        assert_eq!(first(&values, "dnd"), "");
        assert_eq!(first(&values, "username"), "300-ACME");
    }
}
