//! Building responses and requests.

use rand::Rng;

use super::headers::Headers;
use super::syntax::{parse_name_addr, via_transport, Uri, Via};
use super::{Method, SipMessage, StartLine, SIP_2_0};

/// The RFC 3261 §17.2.3 magic cookie that starts every branch we generate.
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

fn random_token(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..36), 36).unwrap_or('0'))
        .collect()
}

/// A fresh From/To tag (RFC 3261 §19.3: at least 32 bits of randomness).
pub fn new_tag() -> String {
    random_token(12)
}

/// A fresh Via branch carrying the magic cookie.
pub fn new_branch() -> String {
    format!("{BRANCH_MAGIC_COOKIE}{}", random_token(16))
}

/// A fresh Call-ID.
pub fn new_call_id() -> String {
    random_token(24)
}

/// The standard reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// The headers RFC 3261 §8.2.6.2 copies from a request into its responses.
const COPIED_TO_RESPONSE: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];

/// Builds a response from whatever request headers are available. Used both
/// for well-formed requests and for 400s to requests that failed to parse.
/// A To tag is added to non-100 responses when the To value parses and has none.
pub fn response_from_headers(request_headers: &Headers, status: u16, reason: &str) -> SipMessage {
    let mut response = untagged_response(request_headers, status, reason);
    if status != 100 {
        response.ensure_to_tag(&new_tag());
    }
    response
}

/// A response whose To keeps the request's tag, if any, and gets none otherwise.
fn untagged_response(request_headers: &Headers, status: u16, reason: &str) -> SipMessage {
    let mut headers = request_headers.for_response();
    // RFC 3261 §12.1.1: a response that may establish a dialog carries the
    // request's Record-Route, in order, so that the caller's in-dialog
    // requests (ACK, BYE) pass the proxies that asked to stay in the path.
    if (101..300).contains(&status) {
        for value in request_headers.get_all("Record-Route") {
            headers.push("Record-Route", value);
        }
    }
    SipMessage {
        start: StartLine::Response {
            version: SIP_2_0.to_string(),
            status,
            reason: reason.to_string(),
        },
        headers,
        body: Vec::new(),
    }
}

impl Headers {
    /// What a response to this request copies of it (Via, From, To,
    /// Call-ID, CSeq): all that one who may answer it later must keep.
    pub fn for_response(&self) -> Headers {
        let mut headers = Headers::new();
        for name in COPIED_TO_RESPONSE {
            for value in self.get_all(name) {
                headers.push(name, value);
            }
        }
        headers
    }
}

impl SipMessage {
    /// A response to this request with the standard reason phrase.
    pub fn response(&self, status: u16) -> SipMessage {
        response_from_headers(&self.headers, status, reason_phrase(status))
    }

    /// A response carrying our dialog tag `to_tag` (kept if the request
    /// already has one): every response of one UAS dialog must use the same.
    pub fn response_with_tag(&self, status: u16, reason: &str, to_tag: &str) -> SipMessage {
        let mut response = untagged_response(&self.headers, status, reason);
        response.ensure_to_tag(to_tag);
        response
    }

    /// Adds `;tag=` to the To header if it has none and parses.
    pub fn ensure_to_tag(&mut self, tag: &str) {
        if let Ok(mut to) = self.to() {
            if to.tag().is_none() {
                to.set_param("tag", Some(tag.to_string()));
                self.headers.set("To", to.to_string());
            }
        }
    }

    /// The To tag of this message, if any.
    pub fn to_tag(&self) -> Option<String> {
        self.to().ok()?.tag().map(str::to_string)
    }

    pub fn from_tag(&self) -> Option<String> {
        self.from().ok()?.tag().map(str::to_string)
    }
}

/// Builds a request. Via, From, To, Call-ID, CSeq and Max-Forwards get
/// defaults where the caller does not set them.
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    method: Method,
    uri: Uri,
    headers: Headers,
    body: Vec<u8>,
}

impl RequestBuilder {
    pub fn new(method: Method, uri: Uri) -> Self {
        Self {
            method,
            uri,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Adds a Via with a fresh branch (and `rport`, RFC 3581).
    pub fn via(mut self, transport: &str, host: &str, port: Option<u16>) -> Self {
        let via = Via {
            protocol: SIP_2_0.into(),
            transport: via_transport(transport),
            host: host.to_string(),
            port,
            params: vec![
                super::Param::new("branch", Some(new_branch())),
                super::Param::new("rport", None),
            ],
        };
        self.headers.push("Via", via.to_string());
        self
    }

    /// From with the given tag (a new one if `None`).
    pub fn from(mut self, addr: &str, tag: Option<&str>) -> Self {
        let value = match parse_name_addr(addr) {
            Ok(mut na) => {
                if na.tag().is_none() {
                    na.set_param("tag", Some(tag.map_or_else(new_tag, str::to_string)));
                }
                na.to_string()
            }
            Err(_) => addr.to_string(),
        };
        self.headers.set("From", value);
        self
    }

    pub fn to(mut self, addr: &str) -> Self {
        self.headers.set("To", addr);
        self
    }

    pub fn call_id(mut self, call_id: &str) -> Self {
        self.headers.set("Call-ID", call_id);
        self
    }

    pub fn cseq(mut self, seq: u32) -> Self {
        self.headers.set("CSeq", format!("{seq} {}", self.method));
        self
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(name, value);
        self
    }

    pub fn body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.set("Content-Type", content_type);
        self.body = body;
        self
    }

    pub fn build(mut self) -> SipMessage {
        if !self.headers.contains("Call-ID") {
            self.headers.push("Call-ID", new_call_id());
        }
        if !self.headers.contains("CSeq") {
            self.headers.push("CSeq", format!("1 {}", self.method));
        }
        if !self.headers.contains("Max-Forwards") {
            self.headers.push("Max-Forwards", "70");
        }
        SipMessage {
            start: StartLine::Request {
                method: self.method,
                uri: self.uri,
                version: SIP_2_0.to_string(),
            },
            headers: self.headers,
            body: self.body,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_datagram, CSeq};

    fn request() -> SipMessage {
        RequestBuilder::new(Method::Invite, "sip:bob@example.com".parse().unwrap())
            .via("udp", "192.0.2.1", Some(5060))
            .from("Alice <sip:alice@example.com>", Some("a1"))
            .to("<sip:bob@example.com>")
            .call_id("c1")
            .cseq(7)
            .body("application/sdp", b"v=0\r\n".to_vec())
            .build()
    }

    #[test]
    fn provisional_and_success_responses_carry_the_record_route() {
        let mut req = request();
        req.headers.push("Record-Route", "<sip:p1.example.com;lr>");
        req.headers
            .push("Record-Route", "<sip:p2.example.com;lr;ftag=a1>");
        let copied = |status| {
            let response = parse_datagram(&req.response(status).to_bytes()).unwrap();
            response
                .record_routes()
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let both = ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr;ftag=a1>"];
        assert_eq!(copied(180), both);
        assert_eq!(copied(200), both);
        // 100 is hop by hop; a failure establishes no dialog.
        assert!(copied(100).is_empty());
        assert!(copied(486).is_empty());
        assert!(request()
            .response(200)
            .headers
            .get("Record-Route")
            .is_none());
    }

    #[test]
    fn request_builder_produces_a_parsable_request() {
        let req = parse_datagram(&request().to_bytes()).unwrap();
        assert_eq!(req.method(), Some(&Method::Invite));
        let via = req.top_via().unwrap();
        assert_eq!(via.transport, "UDP");
        assert!(via.branch().unwrap().starts_with(BRANCH_MAGIC_COOKIE));
        assert_eq!(req.from().unwrap().tag(), Some("a1"));
        assert_eq!(
            req.cseq().unwrap(),
            CSeq {
                seq: 7,
                method: Method::Invite
            }
        );
        assert_eq!(req.max_forwards().unwrap(), Some(70));
        assert_eq!(req.body(), b"v=0\r\n");
    }

    #[test]
    fn response_copies_headers_and_adds_to_tag() {
        let req = request();
        let resp = parse_datagram(&req.response(486).to_bytes()).unwrap();
        assert_eq!(resp.status(), Some(486));
        assert_eq!(resp.headers.get("Via"), req.headers.get("Via"));
        assert_eq!(resp.call_id().unwrap(), "c1");
        assert_eq!(resp.from().unwrap().tag(), Some("a1"));
        assert!(resp.to().unwrap().tag().is_some());
        assert!(req.response(100).to().unwrap().tag().is_none());
        assert!(resp.headers.get("Content-Type").is_none());
    }
}
