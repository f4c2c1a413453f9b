//! Extensions as CSV rows, for import and export. One column per field;
//! nested settings get one column each (`forward_busy`,
//! `forward_busy_enabled` …), lists are space-separated, and the three
//! secrets (`password`, `voicemail_pin`, `web_password`) are exported
//! empty, which on import means "keep as it is". So an exported file
//! imported again changes nothing. Pure: no IO.

use serde::{Deserialize, Serialize};

use super::extensions::{ExtensionInput, ExtensionView};
use crate::model::{
    CallerId, ExtensionKind, FindMeFollowMe, ForwardRule, Forwarding, OutboundFilter,
    RecordingPolicy, WorkingHours,
};

/// One CSV row; the header is these field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtensionRow {
    pub number: String,
    pub display_name: String,
    pub username: String,
    pub password: String,
    /// phone, custom or virtual.
    pub kind: String,
    pub description: String,
    pub email: String,
    pub department: String,
    pub dnd: String,
    pub ring_timeout_secs: String,
    pub forward_unconditional: String,
    pub forward_unconditional_enabled: String,
    pub forward_no_answer: String,
    pub forward_no_answer_enabled: String,
    pub forward_busy: String,
    pub forward_busy_enabled: String,
    pub forward_offline: String,
    pub forward_offline_enabled: String,
    pub fmfm_number: String,
    pub fmfm_enabled: String,
    pub fmfm_delay_secs: String,
    pub voicemail_enabled: String,
    pub voicemail_pin: String,
    /// `allow_all`, `block` or `regex:<pattern>`.
    pub outbound_filter: String,
    pub max_call_duration_secs: String,
    /// `mon tue wed 08:30-18:00`, empty = any time.
    pub working_hours: String,
    pub allowed_registration_cidrs: String,
    pub external_caller_id_number: String,
    pub external_caller_id_name: String,
    pub emergency_caller_id: String,
    pub custom_destination: String,
    pub members: String,
    pub web_panel_enabled: String,
    pub web_password: String,
    pub recording_inbound: String,
    pub recording_outbound: String,
    pub max_contacts: String,
    pub min_expires: String,
    pub default_expires: String,
    pub max_expires: String,
    pub remove_existing_on_register: String,
}

/// A cell that does not convert: its column and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellError {
    pub field: String,
    pub reason: String,
}

fn cell_error(field: &str, reason: impl Into<String>) -> CellError {
    CellError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn flag(value: bool) -> String {
    if value { "true" } else { "false" }.to_string()
}

fn number_cell(value: Option<u32>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn rule_cells(rule: &ForwardRule) -> (String, String) {
    (rule.destination.clone(), flag(rule.enabled))
}

impl From<&ExtensionView> for ExtensionRow {
    fn from(v: &ExtensionView) -> Self {
        let f = &v.forwarding;
        let (forward_unconditional, forward_unconditional_enabled) = rule_cells(&f.unconditional);
        let (forward_no_answer, forward_no_answer_enabled) = rule_cells(&f.no_answer);
        let (forward_busy, forward_busy_enabled) = rule_cells(&f.busy);
        let (forward_offline, forward_offline_enabled) = rule_cells(&f.offline);
        ExtensionRow {
            number: v.number.clone(),
            display_name: v.display_name.clone(),
            username: v.username.clone(),
            password: String::new(),
            kind: kind_name(v.kind).to_string(),
            description: v.description.clone(),
            email: v.email.clone(),
            department: v.department.clone(),
            dnd: flag(v.dnd),
            ring_timeout_secs: number_cell(v.ring_timeout_secs),
            forward_unconditional,
            forward_unconditional_enabled,
            forward_no_answer,
            forward_no_answer_enabled,
            forward_busy,
            forward_busy_enabled,
            forward_offline,
            forward_offline_enabled,
            fmfm_number: v.find_me_follow_me.number.clone(),
            fmfm_enabled: flag(v.find_me_follow_me.enabled),
            fmfm_delay_secs: v.find_me_follow_me.delay_secs.to_string(),
            voicemail_enabled: flag(v.voicemail_enabled),
            voicemail_pin: String::new(),
            outbound_filter: match &v.outbound_filter {
                OutboundFilter::AllowAll => "allow_all".to_string(),
                OutboundFilter::Block => "block".to_string(),
                OutboundFilter::Regex { pattern } => format!("regex:{pattern}"),
            },
            max_call_duration_secs: number_cell(v.max_call_duration_secs),
            working_hours: v
                .working_hours
                .as_ref()
                .map(|h| format!("{} {}-{}", h.days.join(" "), h.start, h.end))
                .unwrap_or_default(),
            allowed_registration_cidrs: v.allowed_registration_cidrs.join(" "),
            external_caller_id_number: v.external_caller_id.number.clone(),
            external_caller_id_name: v.external_caller_id.name.clone(),
            emergency_caller_id: v.emergency_caller_id.clone(),
            custom_destination: v.custom_destination.clone(),
            members: v.members.join(" "),
            web_panel_enabled: flag(v.web_panel_enabled),
            web_password: String::new(),
            recording_inbound: flag(v.recording.inbound),
            recording_outbound: flag(v.recording.outbound),
            max_contacts: v.max_contacts.to_string(),
            min_expires: v.min_expires.to_string(),
            default_expires: v.default_expires.to_string(),
            max_expires: v.max_expires.to_string(),
            remove_existing_on_register: flag(v.remove_existing_on_register),
        }
    }
}

fn kind_name(kind: ExtensionKind) -> &'static str {
    match kind {
        ExtensionKind::Phone => "phone",
        ExtensionKind::Custom => "custom",
        ExtensionKind::Virtual => "virtual",
    }
}

fn parse_bool(field: &str, value: &str) -> Result<bool, CellError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "" | "false" | "no" | "0" => Ok(false),
        "true" | "yes" | "1" => Ok(true),
        _ => Err(cell_error(field, "must be true or false")),
    }
}

fn parse_u32(field: &str, value: &str) -> Result<Option<u32>, CellError> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| cell_error(field, "must be a whole number"))
}

fn optional_text(value: &str) -> Option<String> {
    Some(value.to_string()).filter(|v| !v.is_empty())
}

fn parse_rule(field: &str, destination: &str, enabled: &str) -> Result<ForwardRule, CellError> {
    let destination = destination.trim().to_string();
    // A destination with no enabled column given is meant to be used.
    let enabled = if enabled.trim().is_empty() {
        !destination.is_empty()
    } else {
        parse_bool(&format!("{field}_enabled"), enabled)?
    };
    Ok(ForwardRule {
        enabled,
        destination,
    })
}

fn parse_working_hours(value: &str) -> Result<Option<WorkingHours>, CellError> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let Some((span, days)) = words.split_last() else {
        return Ok(None);
    };
    let (start, end) = span.split_once('-').ok_or_else(|| {
        cell_error(
            "working_hours",
            "must be days then HH:MM-HH:MM, e.g. mon tue 08:30-18:00",
        )
    })?;
    Ok(Some(WorkingHours {
        days: days.iter().map(|d| d.to_ascii_lowercase()).collect(),
        start: start.to_string(),
        end: end.to_string(),
    }))
}

impl ExtensionRow {
    /// The API input this row stands for; cells that do not even parse
    /// are reported here, the rest is checked like any API input.
    pub fn to_input(&self) -> Result<ExtensionInput, CellError> {
        let kind = match self.kind.trim().to_ascii_lowercase().as_str() {
            "" | "phone" => ExtensionKind::Phone,
            "custom" => ExtensionKind::Custom,
            "virtual" => ExtensionKind::Virtual,
            _ => return Err(cell_error("kind", "must be phone, custom or virtual")),
        };
        let outbound_filter = match self.outbound_filter.trim() {
            "" | "allow_all" => OutboundFilter::AllowAll,
            "block" => OutboundFilter::Block,
            other => match other.strip_prefix("regex:") {
                Some(pattern) => OutboundFilter::Regex {
                    pattern: pattern.to_string(),
                },
                None => {
                    return Err(cell_error(
                        "outbound_filter",
                        "must be allow_all, block or regex:<pattern>",
                    ))
                }
            },
        };
        Ok(ExtensionInput {
            number: self.number.trim().to_string(),
            display_name: self.display_name.clone(),
            username: optional_text(self.username.trim()),
            password: optional_text(&self.password),
            kind,
            description: self.description.clone(),
            email: self.email.clone(),
            department: self.department.clone(),
            dnd: parse_bool("dnd", &self.dnd)?,
            ring_timeout_secs: parse_u32("ring_timeout_secs", &self.ring_timeout_secs)?,
            forwarding: Forwarding {
                unconditional: parse_rule(
                    "forward_unconditional",
                    &self.forward_unconditional,
                    &self.forward_unconditional_enabled,
                )?,
                no_answer: parse_rule(
                    "forward_no_answer",
                    &self.forward_no_answer,
                    &self.forward_no_answer_enabled,
                )?,
                busy: parse_rule(
                    "forward_busy",
                    &self.forward_busy,
                    &self.forward_busy_enabled,
                )?,
                offline: parse_rule(
                    "forward_offline",
                    &self.forward_offline,
                    &self.forward_offline_enabled,
                )?,
            },
            find_me_follow_me: FindMeFollowMe {
                enabled: if self.fmfm_enabled.trim().is_empty() {
                    !self.fmfm_number.trim().is_empty()
                } else {
                    parse_bool("fmfm_enabled", &self.fmfm_enabled)?
                },
                number: self.fmfm_number.trim().to_string(),
                delay_secs: parse_u32("fmfm_delay_secs", &self.fmfm_delay_secs)?.unwrap_or(0),
            },
            voicemail_enabled: parse_bool("voicemail_enabled", &self.voicemail_enabled)?,
            voicemail_pin: optional_text(self.voicemail_pin.trim()),
            outbound_filter,
            max_call_duration_secs: parse_u32(
                "max_call_duration_secs",
                &self.max_call_duration_secs,
            )?,
            working_hours: parse_working_hours(&self.working_hours)?,
            allowed_registration_cidrs: self
                .allowed_registration_cidrs
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            external_caller_id: CallerId {
                number: self.external_caller_id_number.trim().to_string(),
                name: self.external_caller_id_name.clone(),
            },
            emergency_caller_id: self.emergency_caller_id.trim().to_string(),
            custom_destination: self.custom_destination.trim().to_string(),
            members: self
                .members
                .split_whitespace()
                .map(str::to_string)
                .collect(),
            web_panel_enabled: parse_bool("web_panel_enabled", &self.web_panel_enabled)?,
            web_password: optional_text(&self.web_password),
            recording: RecordingPolicy {
                inbound: parse_bool("recording_inbound", &self.recording_inbound)?,
                outbound: parse_bool("recording_outbound", &self.recording_outbound)?,
            },
            max_contacts: parse_u32("max_contacts", &self.max_contacts)?,
            min_expires: parse_u32("min_expires", &self.min_expires)?,
            default_expires: parse_u32("default_expires", &self.default_expires)?,
            max_expires: parse_u32("max_expires", &self.max_expires)?,
            remove_existing_on_register: if self.remove_existing_on_register.trim().is_empty() {
                None
            } else {
                Some(parse_bool(
                    "remove_existing_on_register",
                    &self.remove_existing_on_register,
                )?)
            },
        })
    }
}

/// The column an API field error belongs to (`forwarding.busy.destination`
/// is the `forward_busy` column), so a report names what the file holds.
pub fn column_of(api_field: &str) -> String {
    let base = api_field.split('[').next().unwrap_or(api_field);
    let column = match base {
        "forwarding.unconditional.destination" => "forward_unconditional",
        "forwarding.no_answer.destination" => "forward_no_answer",
        "forwarding.busy.destination" => "forward_busy",
        "forwarding.offline.destination" => "forward_offline",
        "find_me_follow_me.number" => "fmfm_number",
        "find_me_follow_me.delay_secs" => "fmfm_delay_secs",
        "external_caller_id.number" => "external_caller_id_number",
        "external_caller_id.name" => "external_caller_id_name",
        "outbound_filter.pattern" => "outbound_filter",
        other if other.starts_with("working_hours") => "working_hours",
        other => other,
    };
    column.to_string()
}

/// The CSV text of `views`, with a header row.
pub fn write_csv(views: &[ExtensionView]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::WriterBuilder::new()
        .has_headers(false)
        .from_writer(Vec::new());
    writer.write_record(ROW_COLUMNS)?;
    for view in views {
        writer.serialize(ExtensionRow::from(view))?;
    }
    writer
        .into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))
}

/// A row of an uploaded file: its line, and the row or what is wrong with it.
pub type ParsedRow = (u64, Result<ExtensionRow, CellError>);

/// Reads the rows of a CSV upload. A header naming unknown columns fails
/// the whole file; a row that does not fit its header fails alone.
pub fn read_csv(bytes: &[u8]) -> Result<Vec<ParsedRow>, CellError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::Headers)
        .from_reader(bytes);
    let headers = reader
        .headers()
        .map_err(|e| cell_error("header", e.to_string()))?
        .clone();
    for name in headers.iter() {
        if !ROW_COLUMNS.contains(&name) {
            return Err(cell_error("header", format!("unknown column '{name}'")));
        }
    }
    if !headers.iter().any(|h| h == "number") {
        return Err(cell_error("header", "the number column is required"));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let (line, row) = match record {
            Ok(record) => {
                let line = record.position().map_or(0, csv::Position::line);
                let row = record
                    .deserialize::<ExtensionRow>(Some(&headers))
                    .map_err(|e| cell_error("row", e.to_string()));
                (line, row)
            }
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                (line, Err(cell_error("row", e.to_string())))
            }
        };
        rows.push((line, row));
    }
    Ok(rows)
}

/// The columns of [`ExtensionRow`], in order.
pub const ROW_COLUMNS: &[&str] = &[
    "number",
    "display_name",
    "username",
    "password",
    "kind",
    "description",
    "email",
    "department",
    "dnd",
    "ring_timeout_secs",
    "forward_unconditional",
    "forward_unconditional_enabled",
    "forward_no_answer",
    "forward_no_answer_enabled",
    "forward_busy",
    "forward_busy_enabled",
    "forward_offline",
    "forward_offline_enabled",
    "fmfm_number",
    "fmfm_enabled",
    "fmfm_delay_secs",
    "voicemail_enabled",
    "voicemail_pin",
    "outbound_filter",
    "max_call_duration_secs",
    "working_hours",
    "allowed_registration_cidrs",
    "external_caller_id_number",
    "external_caller_id_name",
    "emergency_caller_id",
    "custom_destination",
    "members",
    "web_panel_enabled",
    "web_password",
    "recording_inbound",
    "recording_outbound",
    "max_contacts",
    "min_expires",
    "default_expires",
    "max_expires",
    "remove_existing_on_register",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_row_fields_in_order() {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.serialize(ExtensionRow::default()).expect("row");
        let text = String::from_utf8(writer.into_inner().expect("flush")).expect("utf8");
        assert_eq!(text.lines().next(), Some(ROW_COLUMNS.join(",").as_str()));
    }

    #[test]
    fn unknown_columns_fail_the_file_and_bad_cells_their_row() {
        let e = read_csv(b"number,passwd\n100,x\n").expect_err("unknown column");
        assert_eq!(e.field, "header");
        let rows = read_csv(b"number,dnd,kind\n100,true,phone\n101,maybe,phone\n102,false,robot\n")
            .expect("rows");
        assert_eq!(rows.len(), 3);
        let converted: Vec<(u64, Result<ExtensionInput, CellError>)> = rows
            .into_iter()
            .map(|(line, row)| (line, row.and_then(|r| r.to_input())))
            .collect();
        assert!(converted[0].1.is_ok());
        assert_eq!(converted[1].0, 3);
        assert_eq!(converted[1].1.as_ref().expect_err("bad dnd").field, "dnd");
        assert_eq!(converted[2].1.as_ref().expect_err("bad kind").field, "kind");
    }

    #[test]
    fn api_fields_map_to_their_columns() {
        assert_eq!(column_of("forwarding.busy.destination"), "forward_busy");
        assert_eq!(column_of("members[2]"), "members");
        assert_eq!(column_of("working_hours.days[0]"), "working_hours");
        assert_eq!(column_of("password"), "password");
        for column in ROW_COLUMNS {
            assert_eq!(column_of(column), *column);
        }
    }

    #[test]
    fn a_row_converts_every_setting() {
        let rows = read_csv(
            b"number,forward_busy,working_hours,outbound_filter,members,kind,allowed_registration_cidrs\n\
              300,200,mon tue 08:30-18:00,regex:0[1-9].*,100 101,virtual,10.0.0.0/8 192.0.2.1\n",
        )
        .expect("rows");
        let input = rows[0].1.clone().expect("row").to_input().expect("input");
        assert_eq!(
            input.forwarding.busy,
            ForwardRule {
                enabled: true,
                destination: "200".into()
            }
        );
        assert_eq!(
            input.working_hours,
            Some(WorkingHours {
                days: vec!["mon".into(), "tue".into()],
                start: "08:30".into(),
                end: "18:00".into()
            })
        );
        assert_eq!(
            input.outbound_filter,
            OutboundFilter::Regex {
                pattern: "0[1-9].*".into()
            }
        );
        assert_eq!(input.members, ["100", "101"]);
        assert_eq!(input.kind, ExtensionKind::Virtual);
        assert_eq!(input.allowed_registration_cidrs.len(), 2);
    }
}
