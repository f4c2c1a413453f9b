//! SIP messages: framing, parsing, typed accessors, builders, serialization.
//!
//! Framing and header unfolding are done here rather than by rsip because
//! rsip 0.4 rejects folded headers, takes bytes past Content-Length as body
//! and has a closed method enum. Headers are kept untyped and parsed on
//! access, so one odd header never makes the whole message unreadable.
//! [`SipMessage::to_rsip`] and [`SipMessage::from_rsip`] convert to and from
//! rsip where its grammar allows.

mod builder;
mod framing;
mod headers;
pub mod syntax;

pub use builder::{
    new_branch, new_call_id, new_tag, reason_phrase, response_from_headers, RequestBuilder,
    BRANCH_MAGIC_COOKIE,
};
pub use framing::{
    parse_datagram, ParseError, ParseErrorKind, Recovered, StreamFramer, StreamItem,
};
pub use headers::{HeaderError, HeaderField, Headers};
pub use syntax::{parse_name_addr, NameAddr, Param, SipUri, SyntaxError, Uri, Via};

use std::fmt;

/// A request method; methods this crate does not know are kept as extension tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Prack,
    Subscribe,
    Notify,
    Publish,
    Info,
    Refer,
    Message,
    Update,
    Extension(String),
}

const KNOWN_METHODS: [(Method, &str); 14] = [
    (Method::Invite, "INVITE"),
    (Method::Ack, "ACK"),
    (Method::Bye, "BYE"),
    (Method::Cancel, "CANCEL"),
    (Method::Options, "OPTIONS"),
    (Method::Register, "REGISTER"),
    (Method::Prack, "PRACK"),
    (Method::Subscribe, "SUBSCRIBE"),
    (Method::Notify, "NOTIFY"),
    (Method::Publish, "PUBLISH"),
    (Method::Info, "INFO"),
    (Method::Refer, "REFER"),
    (Method::Message, "MESSAGE"),
    (Method::Update, "UPDATE"),
];

impl Method {
    /// Parses a method token. Method names are case-sensitive (RFC 3261 §7.1).
    pub fn parse(token: &str) -> Result<Self, SyntaxError> {
        if !syntax::is_token(token) {
            return Err(SyntaxError(format!("invalid method '{token}'")));
        }
        Ok(KNOWN_METHODS
            .iter()
            .find(|(_, name)| *name == token)
            .map(|(m, _)| m.clone())
            .unwrap_or_else(|| Method::Extension(token.to_string())))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Method::Extension(s) => s,
            known => KNOWN_METHODS
                .iter()
                .find(|(m, _)| m == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// rsip's closed enum has no room for extension methods.
    pub fn to_rsip(&self) -> Option<rsip::Method> {
        rsip::Method::all()
            .into_iter()
            .find(|m| m.to_string() == self.as_str())
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protocol version this crate speaks.
pub const SIP_2_0: &str = "SIP/2.0";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request {
        method: Method,
        uri: Uri,
        /// As received, e.g. `SIP/2.0`; anything else earns a 505.
        version: String,
    },
    Response {
        version: String,
        status: u16,
        reason: String,
    },
}

/// CSeq: sequence number and method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// One Contact value: `*` or an address with parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Wildcard,
    Address(NameAddr),
}

impl Contact {
    pub fn address(&self) -> Option<&NameAddr> {
        match self {
            Contact::Wildcard => None,
            Contact::Address(a) => Some(a),
        }
    }

    /// The `expires` parameter; `Some(Err)` if it is present but not a u32.
    pub fn expires(&self) -> Option<Result<u32, SyntaxError>> {
        let value = self.address()?.param("expires")?.value.as_deref();
        Some(
            parse_u32(value.unwrap_or(""))
                .map_err(|e| SyntaxError(format!("Contact expires: {e}"))),
        )
    }

    /// The RFC 5626 `+sip.instance` value without its quotes.
    pub fn instance(&self) -> Option<String> {
        let v = self.address()?.param("+sip.instance")?.value.as_deref()?;
        Some(syntax::unquote(v))
    }

    /// The RFC 5626 `reg-id` parameter.
    pub fn reg_id(&self) -> Option<u32> {
        self.address()?
            .param("reg-id")?
            .value
            .as_deref()?
            .parse()
            .ok()
    }
}

impl fmt::Display for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contact::Wildcard => f.write_str("*"),
            Contact::Address(a) => a.fmt(f),
        }
    }
}

/// Parses a decimal u32, allowing leading zeros (RFC 4475 `wsinv`).
pub(crate) fn parse_u32(s: &str) -> Result<u32, SyntaxError> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyntaxError(format!("'{s}' is not a number")));
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 10 {
        return Err(SyntaxError(format!("'{s}' is out of range")));
    }
    if digits.is_empty() {
        return Ok(0);
    }
    digits
        .parse::<u32>()
        .map_err(|_| SyntaxError(format!("'{s}' is out of range")))
}

/// A parsed SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    pub start: StartLine,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl SipMessage {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&Uri> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    pub fn version(&self) -> &str {
        match &self.start {
            StartLine::Request { version, .. } | StartLine::Response { version, .. } => version,
        }
    }

    /// Every Via value, topmost first.
    pub fn vias(&self) -> Result<Vec<Via>, HeaderError> {
        self.headers.parse_list("Via", syntax::parse_via)
    }

    pub fn top_via(&self) -> Result<Via, HeaderError> {
        self.via_iter()
            .next()
            .unwrap_or(Err(HeaderError::Missing("Via")))
    }

    /// The Via values topmost first, each parsed only when reached.
    pub fn via_iter(&self) -> impl Iterator<Item = Result<Via, HeaderError>> + '_ {
        self.headers.list_elements("Via", syntax::parse_via)
    }

    pub fn from(&self) -> Result<NameAddr, HeaderError> {
        self.headers.parse_single("From", syntax::parse_name_addr)
    }

    pub fn to(&self) -> Result<NameAddr, HeaderError> {
        self.headers.parse_single("To", syntax::parse_name_addr)
    }

    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let id = self.headers.single("Call-ID")?;
        if id.is_empty() || id.contains([' ', '\t']) {
            return Err(HeaderError::invalid("Call-ID", "must be one word"));
        }
        Ok(id)
    }

    pub fn cseq(&self) -> Result<CSeq, HeaderError> {
        self.headers.parse_single("CSeq", |v| {
            let mut parts = v.split([' ', '\t']).filter(|p| !p.is_empty());
            let (Some(seq), Some(method), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(SyntaxError("expected 'number method'".into()));
            };
            Ok(CSeq {
                seq: parse_u32(seq)?,
                method: Method::parse(method)?,
            })
        })
    }

    /// Every Contact value (`*` included).
    pub fn contacts(&self) -> Result<Vec<Contact>, HeaderError> {
        self.headers.parse_list("Contact", |v| {
            if v == "*" {
                Ok(Contact::Wildcard)
            } else {
                syntax::parse_name_addr(v).map(Contact::Address)
            }
        })
    }

    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.headers.parse_optional("Expires", parse_u32)
    }

    /// Max-Forwards, which is 0..=255 (RFC 3261 §20.22 allows more digits but
    /// RFC 4475 `scalar02` treats larger values as errors).
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.headers.parse_optional("Max-Forwards", |v| {
            let n = parse_u32(v)?;
            u8::try_from(n).map_err(|_| SyntaxError(format!("{n} exceeds 255")))
        })
    }

    pub fn routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.headers.parse_list("Route", syntax::parse_name_addr)
    }

    pub fn record_routes(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.headers
            .parse_list("Record-Route", syntax::parse_name_addr)
    }

    pub fn paths(&self) -> Result<Vec<NameAddr>, HeaderError> {
        self.headers.parse_list("Path", syntax::parse_name_addr)
    }

    /// Raw Authorization value; parse it with [`crate::auth::DigestCredentials::parse`].
    pub fn authorization(&self) -> Option<&str> {
        self.headers.get("Authorization")
    }

    pub fn proxy_authorization(&self) -> Option<&str> {
        self.headers.get("Proxy-Authorization")
    }

    pub fn content_type(&self) -> Option<&str> {
        self.headers.get("Content-Type")
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Serializes the message; Content-Length is always written from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_len_hint() + self.body.len());
        self.write_head(&mut out);
        out.extend_from_slice(&self.body);
        out
    }

    /// About the length of the start line and headers, to size a buffer once.
    fn head_len_hint(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.name.len() + h.value.len() + 4)
            .sum();
        headers + 128
    }

    /// Writes the start line and headers (not the body); Content-Length is
    /// written from the body. Straight into the buffer: going through
    /// `fmt` for every header was a good part of a proxy's cost per message.
    fn write_head(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = match &self.start {
            StartLine::Request {
                method,
                uri,
                version,
            } => write!(out, "{method} {uri} {version}\r\n"),
            StartLine::Response {
                version,
                status,
                reason,
            } => write!(out, "{version} {status} {reason}\r\n"),
        };
        for h in self.headers.iter() {
            if !h.name.eq_ignore_ascii_case("Content-Length") {
                out.extend_from_slice(h.name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(h.value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", self.body.len());
    }

    /// Converts to rsip's message type (fails where rsip's grammar is narrower,
    /// e.g. extension methods or `;` in a URI user part).
    pub fn to_rsip(&self) -> Result<rsip::SipMessage, rsip::Error> {
        rsip::SipMessage::try_from(self.to_bytes())
    }

    /// Converts from rsip by serializing and re-parsing it.
    pub fn from_rsip(msg: &rsip::SipMessage) -> Result<Self, ParseError> {
        let bytes: Vec<u8> = msg.clone().into();
        parse_datagram(&bytes)
    }
}

/// Writes the start line and headers (not the body).
impl fmt::Display for SipMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut head = Vec::with_capacity(self.head_len_hint());
        self.write_head(&mut head);
        // Names, values and the start line are all strings.
        f.write_str(&String::from_utf8_lossy(&head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
v: SIP/2.0/TCP [2001:db8::9]:5070;branch=z9hG4bK2;received=192.0.2.9\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
f: \"Alice, A.\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
i: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
m: <sip:alice@pc33.atlanta.example.com>;expires=60;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>\";reg-id=1, *\r\n\
Route: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Record-Route: <sip:rr.example.com;lr>\r\n\
Path: <sip:edge.example.com;lr;ob>\r\n\
Expires: 0300\r\n\
c: application/sdp\r\n\
l: 4\r\n\
\r\n\
v=0\r\n";

    #[test]
    fn typed_accessors() {
        let msg = parse_datagram(INVITE.as_bytes()).unwrap();
        assert_eq!(msg.method(), Some(&Method::Invite));
        assert_eq!(
            msg.request_uri().unwrap().to_string(),
            "sip:bob@biloxi.example.com"
        );
        let vias = msg.vias().unwrap();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(vias[0].rport(), Some(None));
        assert_eq!(vias[1].transport, "TCP");
        assert_eq!(vias[1].host, "[2001:db8::9]");
        assert_eq!(vias[1].received(), Some("192.0.2.9"));
        assert_eq!(msg.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(msg.to().unwrap().tag(), None);
        assert_eq!(
            msg.call_id().unwrap(),
            "a84b4c76e66710@pc33.atlanta.example.com"
        );
        assert_eq!(
            msg.cseq().unwrap(),
            CSeq {
                seq: 314159,
                method: Method::Invite
            }
        );
        let contacts = msg.contacts().unwrap();
        assert_eq!(contacts.len(), 2);
        assert_eq!(contacts[0].expires().unwrap().unwrap(), 60);
        assert_eq!(
            contacts[0].instance().as_deref(),
            Some("<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>")
        );
        assert_eq!(contacts[0].reg_id(), Some(1));
        assert_eq!(contacts[1], Contact::Wildcard);
        assert_eq!(msg.routes().unwrap().len(), 2);
        assert_eq!(msg.record_routes().unwrap().len(), 1);
        assert!(msg.paths().unwrap()[0]
            .uri
            .as_sip()
            .unwrap()
            .param("ob")
            .is_some());
        assert_eq!(msg.expires().unwrap(), Some(300));
        assert_eq!(msg.max_forwards().unwrap(), Some(70));
        assert_eq!(msg.content_type(), Some("application/sdp"));
        assert_eq!(msg.body(), b"v=0\r");
    }

    #[test]
    fn serialization_round_trips_and_expands_compact_forms() {
        let msg = parse_datagram(INVITE.as_bytes()).unwrap();
        let bytes = msg.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains("\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n"));
        assert!(text.contains("\r\nContent-Length: 4\r\n\r\nv=0\r"));
        assert_eq!(parse_datagram(&bytes).unwrap(), msg);
    }

    #[test]
    fn extension_methods_and_rsip_interop() {
        assert_eq!(
            Method::parse("FOO").unwrap(),
            Method::Extension("FOO".into())
        );
        assert_eq!(
            Method::parse("invite").unwrap(),
            Method::Extension("invite".into())
        );
        assert!(Method::parse("IN VITE").is_err());
        assert_eq!(Method::Invite.to_rsip(), Some(rsip::Method::Invite));
        assert_eq!(Method::Extension("FOO".into()).to_rsip(), None);

        let msg = parse_datagram(INVITE.as_bytes()).unwrap();
        let rsip_msg = msg.to_rsip().unwrap();
        assert!(rsip_msg.is_request());
        let back = SipMessage::from_rsip(&rsip_msg).unwrap();
        assert_eq!(back.call_id().unwrap(), msg.call_id().unwrap());
        assert_eq!(back.body(), msg.body());
    }

    #[test]
    fn scalar_limits() {
        assert_eq!(parse_u32("0009").unwrap(), 9);
        assert_eq!(parse_u32("4294967295").unwrap(), u32::MAX);
        assert!(parse_u32("4294967296").is_err());
        assert!(parse_u32("-1").is_err());
        assert!(parse_u32("").is_err());
    }
}
