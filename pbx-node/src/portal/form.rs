//! Submitted forms: the urlencoded body (or query string) as name/value
//! pairs, and the field map a page renders back, with the API's error
//! field (a JSON path such as `forwarding.busy.destination` or
//! `members[1]`) mapped onto the form field that shows its message.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::PortalError;
use crate::api::error::ApiError;

/// The pairs of an `application/x-www-form-urlencoded` body or a query
/// string, in order; a name may repeat (checkbox groups, row selection).
#[derive(Debug, Clone, Default)]
pub struct FormData {
    pairs: Vec<(String, String)>,
}

impl FormData {
    pub fn parse(encoded: &[u8]) -> FormData {
        FormData {
            pairs: form_urlencoded::parse(encoded).into_owned().collect(),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, or "" when absent.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).map(str::trim).unwrap_or("")
    }

    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The values as a field map, to render a submitted form back.
    pub fn values(&self) -> FieldValues {
        let mut values = FieldValues::new();
        for (k, v) in &self.pairs {
            values.entry(k.clone()).or_default().push(v.clone());
        }
        values
    }
}

impl<S: Send + Sync> FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let is_form = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim() == "application/x-www-form-urlencoded");
        if !is_form {
            return Err(PortalError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Send the page's form as it is.",
            )
            .into_response());
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            PortalError::new(StatusCode::PAYLOAD_TOO_LARGE, e.body_text()).into_response()
        })?;
        Ok(FormData::parse(&bytes))
    }
}

/// What a form shows in each field: its values by field name.
pub type FieldValues = BTreeMap<String, Vec<String>>;

/// One value of a field, or "".
pub fn first<'a>(values: &'a FieldValues, name: &str) -> &'a str {
    values
        .get(name)
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or("")
}

/// The message of a refused form: on the field it names when the form
/// has that field, else above the form.
#[derive(Debug, Default)]
pub struct FormErrors {
    pub field: Option<String>,
    pub message: Option<String>,
}

impl FormErrors {
    /// Places `error` on the form field among `fields` its JSON path
    /// belongs to: `members[1]` on `members`, `working_hours` on the first
    /// `working_hours.` field; otherwise above the form.
    pub fn place(error: &ApiError, fields: &[&str]) -> FormErrors {
        let field = error
            .field
            .as_deref()
            .and_then(|path| form_field_of(path, fields));
        FormErrors {
            field: field.map(str::to_string),
            message: Some(error.message.clone()),
        }
    }

    /// The message for field `name`, if it is the one at fault.
    pub fn on(&self, name: &str) -> Option<&str> {
        match (&self.field, &self.message) {
            (Some(field), Some(message)) if field == name => Some(message),
            _ => None,
        }
    }

    /// The message to show above the form: the error itself when no field
    /// holds it, else a pointer to the field.
    pub fn summary(&self) -> Option<String> {
        match (&self.field, &self.message) {
            (None, Some(message)) => Some(message.clone()),
            (Some(_), Some(_)) => Some("Please correct the field marked below.".to_string()),
            _ => None,
        }
    }
}

/// The form field among `fields` that shows an error at JSON `path`.
pub fn form_field_of<'a>(path: &str, fields: &[&'a str]) -> Option<&'a str> {
    let base = path.split('[').next().unwrap_or(path);
    fields.iter().copied().find(|f| *f == base).or_else(|| {
        let prefix = format!("{base}.");
        fields.iter().copied().find(|f| f.starts_with(&prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_names_keep_every_value_in_order() {
        let form = FormData::parse(b"numbers=100&numbers=101&csrf=x&search=a+b%26c");
        assert_eq!(form.all("numbers"), ["100", "101"]);
        assert_eq!(form.get("search"), Some("a b&c"));
        assert_eq!(form.text("missing"), "");
    }

    #[test]
    fn api_error_paths_land_on_their_form_fields() {
        let fields = [
            "members",
            "forwarding.busy.destination",
            "working_hours.days",
            "working_hours.start",
            "outbound_filter.mode",
        ];
        assert_eq!(form_field_of("members[1]", &fields), Some("members"));
        assert_eq!(
            form_field_of("forwarding.busy.destination", &fields),
            Some("forwarding.busy.destination")
        );
        assert_eq!(
            form_field_of("working_hours.days[0]", &fields),
            Some("working_hours.days")
        );
        assert_eq!(
            form_field_of("working_hours", &fields),
            Some("working_hours.days")
        );
        assert_eq!(
            form_field_of("outbound_filter", &fields),
            Some("outbound_filter.mode")
        );
        assert_eq!(form_field_of("nothing", &fields), None);
        let error = ApiError::invalid("members[0]", "100 is not a phone extension");
        let placed = FormErrors::place(&error, &fields);
        assert_eq!(placed.on("members"), Some("100 is not a phone extension"));
        assert_eq!(placed.on("working_hours.days"), None);
        let unplaced = FormErrors::place(&ApiError::conflict("taken"), &fields);
        assert_eq!(unplaced.summary().as_deref(), Some("taken"));
    }
}
