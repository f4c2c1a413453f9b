//! Untyped header storage with typed parsing on access.

use super::syntax::{split_list, SyntaxError};
use std::borrow::Cow;

/// A header field as received (after unfolding); known names are canonical
/// (and not copied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    pub name: Cow<'static, str>,
    pub value: String,
}

/// A header that is missing, repeated or unparsable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("more than one {0} header")]
    Multiple(&'static str),
    #[error("invalid {header} header: {problem}")]
    Invalid {
        header: &'static str,
        problem: String,
    },
}

impl HeaderError {
    pub(crate) fn invalid(header: &'static str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            header,
            problem: problem.into(),
        }
    }

    /// The header the error is about.
    pub fn header(&self) -> &'static str {
        match self {
            Self::Missing(h) | Self::Multiple(h) | Self::Invalid { header: h, .. } => h,
        }
    }
}

/// Compact forms (RFC 3261 §7.3.3 and the extensions that define one) and
/// the canonical spelling of common headers.
// Most frequent first: every header parsed and every lookup scans this
// until it finds the name.
const HEADER_NAMES: [(&str, Option<char>); 44] = [
    ("Via", Some('v')),
    ("From", Some('f')),
    ("To", Some('t')),
    ("Call-ID", Some('i')),
    ("CSeq", None),
    ("Contact", Some('m')),
    ("Max-Forwards", None),
    ("Content-Length", Some('l')),
    ("Content-Type", Some('c')),
    ("Record-Route", None),
    ("Route", None),
    ("Path", None),
    ("Authorization", None),
    ("Proxy-Authorization", None),
    ("Expires", None),
    ("User-Agent", None),
    ("Allow", None),
    ("Supported", Some('k')),
    ("Accept", None),
    ("Accept-Contact", Some('a')),
    ("Allow-Events", Some('u')),
    ("Content-Encoding", Some('e')),
    ("Date", None),
    ("Event", Some('o')),
    ("Identity", Some('y')),
    ("Min-Expires", None),
    ("Proxy-Authenticate", None),
    ("Proxy-Require", None),
    ("RAck", None),
    ("Reason", None),
    ("Refer-To", Some('r')),
    ("Referred-By", Some('b')),
    ("Reject-Contact", Some('j')),
    ("Request-Disposition", Some('d')),
    ("Require", None),
    ("Retry-After", None),
    ("RSeq", None),
    ("Server", None),
    ("Session-Expires", Some('x')),
    ("Subject", Some('s')),
    ("Unsupported", None),
    ("Warning", None),
    ("WWW-Authenticate", None),
    ("Authentication-Info", None),
];

/// Expands a compact form and fixes the case of known names; unknown names are kept.
/// Known names come back borrowed: header lookups call this for every
/// access, mostly with a name already canonical.
pub fn canonical_name(name: &str) -> Cow<'static, str> {
    if let Some((full, _)) = HEADER_NAMES.iter().find(|(full, _)| *full == name) {
        return Cow::Borrowed(full);
    }
    let compact = {
        let mut chars = name.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Some(c.to_ascii_lowercase()),
            _ => None,
        }
    };
    HEADER_NAMES
        .iter()
        .find(|(full, short)| match compact {
            Some(c) => *short == Some(c),
            None => full.eq_ignore_ascii_case(name),
        })
        .map_or_else(
            || Cow::Owned(name.to_string()),
            |(full, _)| Cow::Borrowed(*full),
        )
}

/// Header fields in order of appearance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<HeaderField>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(fields: usize) -> Self {
        Self(Vec::with_capacity(fields))
    }

    pub fn iter(&self) -> impl Iterator<Item = &HeaderField> {
        self.0.iter()
    }

    /// Appends a header; the name is canonicalized (compact forms expanded).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(HeaderField {
            name: canonical_name(name),
            value: value.into(),
        });
    }

    /// Replaces every occurrence of `name` with one value.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.remove(name);
        self.push(name, value);
    }

    /// Inserts before all others (e.g. a new top Via).
    pub fn push_front(&mut self, name: &str, value: impl Into<String>) {
        self.0.insert(
            0,
            HeaderField {
                name: canonical_name(name),
                value: value.into(),
            },
        );
    }

    pub fn remove(&mut self, name: &str) {
        let name = canonical_name(name);
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(&name));
    }

    /// Values of every field named `name` (each may still hold a comma list).
    pub fn get_all<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = canonical_name(name);
        self.0
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(&name))
            .map(|h| h.value.as_str())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.get_all(name).next()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every comma-separated value of `name`, across all its fields.
    pub fn list<'a>(&'a self, name: &str) -> Vec<&'a str> {
        self.get_all(name)
            .flat_map(split_list)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Removes and returns the first value of `name` (the top Via or
    /// Route), keeping the rest of a comma list in place.
    pub fn pop_first(&mut self, name: &str) -> Option<String> {
        let name = canonical_name(name);
        let index = self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(&name))?;
        let values: Vec<String> = split_list(&self.0[index].value)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        let mut values = values.into_iter();
        let first = values.next();
        let rest: Vec<String> = values.collect();
        if rest.is_empty() {
            self.0.remove(index);
        } else {
            self.0[index].value = rest.join(", ");
        }
        first
    }

    /// Removes every field of `name`, returning their values in order.
    pub fn take_all(&mut self, name: &str) -> Vec<String> {
        let values = self.list(name).into_iter().map(str::to_string).collect();
        self.remove(name);
        values
    }

    /// The one value of a header that must appear exactly once.
    pub(crate) fn single(&self, name: &'static str) -> Result<&str, HeaderError> {
        let mut all = self.get_all(name);
        match (all.next(), all.next()) {
            (None, _) => Err(HeaderError::Missing(name)),
            (Some(v), None) => Ok(v),
            (Some(_), Some(_)) => Err(HeaderError::Multiple(name)),
        }
    }

    pub(crate) fn parse_single<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, SyntaxError>,
    ) -> Result<T, HeaderError> {
        parse(self.single(name)?).map_err(|e| HeaderError::invalid(name, e.0))
    }

    pub(crate) fn parse_optional<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, SyntaxError>,
    ) -> Result<Option<T>, HeaderError> {
        match self.parse_single(name, parse) {
            Ok(v) => Ok(Some(v)),
            Err(HeaderError::Missing(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn parse_list<T>(
        &self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, SyntaxError>,
    ) -> Result<Vec<T>, HeaderError> {
        self.list_elements(name, parse).collect()
    }

    /// The elements of a list header, each parsed only when reached (a
    /// proxy reads the top Via of every message it passes on, and no more).
    pub(crate) fn list_elements<'a, T>(
        &'a self,
        name: &'static str,
        parse: impl Fn(&str) -> Result<T, SyntaxError> + 'a,
    ) -> impl Iterator<Item = Result<T, HeaderError>> + 'a {
        self.get_all(name).flat_map(split_list).map(move |v| {
            if v.is_empty() {
                return Err(HeaderError::invalid(name, "empty list element"));
            }
            parse(v).map_err(|e| HeaderError::invalid(name, e.0))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_canonical() {
        assert_eq!(canonical_name("i"), "Call-ID");
        assert_eq!(canonical_name("V"), "Via");
        assert_eq!(canonical_name("call-id"), "Call-ID");
        assert_eq!(canonical_name("MaX-fOrWaRdS"), "Max-Forwards");
        assert_eq!(canonical_name("X-Custom"), "X-Custom");
        assert_eq!(canonical_name("q"), "q");
    }

    #[test]
    fn single_list_and_set() {
        let mut h = Headers::new();
        h.push("v", "SIP/2.0/UDP a, SIP/2.0/UDP b");
        h.push("Via", "SIP/2.0/UDP c");
        h.push("To", "<sip:a@b>");
        h.push("t", "<sip:c@d>");
        assert_eq!(h.list("VIA").len(), 3);
        assert_eq!(h.single("To"), Err(HeaderError::Multiple("To")));
        assert_eq!(h.single("From"), Err(HeaderError::Missing("From")));
        h.set("to", "<sip:e@f>");
        assert_eq!(h.single("To"), Ok("<sip:e@f>"));
        h.push_front("Via", "SIP/2.0/UDP z");
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP z"));
        let err = h.parse_list("Via", |_| Ok(())).is_ok();
        assert!(err);
        h.push("Via", ",");
        assert!(h.parse_list("Via", |_| Ok(())).is_err());
    }

    #[test]
    fn pop_first_takes_the_top_value_of_a_list() {
        let mut h = Headers::new();
        h.push("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b");
        h.push("Via", "SIP/2.0/UDP c");
        assert_eq!(h.pop_first("v").as_deref(), Some("SIP/2.0/UDP a"));
        assert_eq!(h.list("Via"), ["SIP/2.0/UDP b", "SIP/2.0/UDP c"]);
        assert_eq!(h.pop_first("Via").as_deref(), Some("SIP/2.0/UDP b"));
        assert_eq!(h.take_all("Via"), ["SIP/2.0/UDP c"]);
        assert_eq!(h.pop_first("Via"), None);
    }
}
