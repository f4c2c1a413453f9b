//! Validation of inbound messages (RFC 3261 §8.2, §16.3, §18; RFC 4475).
//!
//! [`classify_datagram`] and [`classify`] turn bytes or a parse result into
//! an [`Inbound`] verdict: accept, reject with a status (and the response to
//! send), or drop silently. Some checks depend on the [`Role`]: an endpoint
//! (UAS, registrar, B2BUA) answers unknown methods with 501 and unsupported
//! `Require` with 420; a proxy checks `Proxy-Require` and Max-Forwards 0.

use crate::message::{
    parse_datagram, reason_phrase, response_from_headers, HeaderError, Method, ParseError,
    ParseErrorKind, SipMessage, SIP_2_0,
};

/// The element's role, which decides role-dependent verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// UAS, registrar or B2BUA.
    Endpoint,
    Proxy,
}

/// What the element supports.
#[derive(Debug, Clone)]
pub struct Policy {
    pub role: Role,
    /// Datagrams above this are answered with 513.
    pub max_message_size: usize,
    /// Methods an endpoint implements (listed in Allow on 501).
    pub allowed_methods: Vec<Method>,
    /// Option tags understood (Require / Proxy-Require).
    pub supported_extensions: Vec<String>,
    /// Request-URI schemes handled; others get 416.
    pub uri_schemes: Vec<String>,
    /// Body types an endpoint can send in INVITE responses; an INVITE whose
    /// Accept lists none of them gets 406 (RFC 4475 `sdp01`).
    pub response_body_types: Vec<String>,
}

impl Policy {
    pub fn endpoint() -> Self {
        Self {
            role: Role::Endpoint,
            max_message_size: 65_535,
            allowed_methods: vec![
                Method::Invite,
                Method::Ack,
                Method::Bye,
                Method::Cancel,
                Method::Options,
                Method::Register,
                Method::Prack,
                Method::Update,
                Method::Info,
                Method::Refer,
                Method::Notify,
                Method::Subscribe,
                Method::Message,
            ],
            supported_extensions: ["path", "outbound", "gruu", "100rel", "timer", "replaces"]
                .map(String::from)
                .to_vec(),
            uri_schemes: ["sip", "sips", "tel"].map(String::from).to_vec(),
            response_body_types: vec!["application/sdp".into()],
        }
    }

    pub fn proxy() -> Self {
        Self {
            role: Role::Proxy,
            ..Self::endpoint()
        }
    }
}

/// The verdict on an inbound message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Well-formed; hand it to the transaction layer.
    Accept(SipMessage),
    /// Answer with `status`. `response` is `None` when not even a Via could
    /// be recovered (nowhere to send it) or the request was an ACK.
    Reject {
        status: u16,
        reason: String,
        response: Option<SipMessage>,
    },
    /// Discard silently (malformed responses, RFC 3261 §8.1.3.3, §18.1.2).
    Drop { reason: String },
}

/// Parses and validates one datagram.
pub fn classify_datagram(data: &[u8], policy: &Policy) -> Inbound {
    if data.len() > policy.max_message_size {
        let kind = ParseErrorKind::TooLarge {
            size: data.len(),
            max: policy.max_message_size,
        };
        // Headers are still parsed so the 513 can be addressed.
        let recovered = match parse_datagram(data) {
            Ok(msg) => crate::message::Recovered {
                is_request: msg.is_request(),
                method: msg.method().cloned(),
                headers: msg.headers,
            },
            Err(e) => e.recovered,
        };
        return classify(Err(ParseError { kind, recovered }), policy);
    }
    classify(parse_datagram(data), policy)
}

/// Validates a parse result (from [`parse_datagram`] or a [`crate::message::StreamFramer`]).
pub fn classify(parsed: Result<SipMessage, ParseError>, policy: &Policy) -> Inbound {
    match parsed {
        Err(e) if !e.recovered.is_request => Inbound::Drop {
            reason: format!("malformed response: {}", e.kind),
        },
        Err(e) => {
            let status = if matches!(e.kind, ParseErrorKind::TooLarge { .. }) {
                513
            } else {
                400
            };
            let is_ack = e.recovered.method == Some(Method::Ack);
            reject_with(
                status,
                &e.kind.to_string(),
                &e.recovered.headers,
                is_ack,
                &[],
            )
        }
        Ok(msg) if msg.is_request() => match check_request(&msg, policy) {
            Ok(()) => Inbound::Accept(msg),
            Err(r) => {
                let is_ack = msg.method() == Some(&Method::Ack);
                reject_with(r.status, &r.reason, &msg.headers, is_ack, &r.extra_headers)
            }
        },
        Ok(msg) => match check_response(&msg, policy) {
            Ok(()) => Inbound::Accept(msg),
            Err(reason) => Inbound::Drop { reason },
        },
    }
}

/// A failed request check.
struct Rejection {
    status: u16,
    reason: String,
    extra_headers: Vec<(&'static str, String)>,
}

fn rejection(status: u16, reason: impl Into<String>) -> Rejection {
    Rejection {
        status,
        reason: reason.into(),
        extra_headers: Vec::new(),
    }
}

fn bad_header(e: HeaderError) -> Rejection {
    rejection(400, e.to_string())
}

fn reject_with(
    status: u16,
    reason: &str,
    headers: &crate::message::Headers,
    is_ack: bool,
    extra_headers: &[(&'static str, String)],
) -> Inbound {
    // Never respond to an ACK (RFC 3261 §17.2.1); without a Via there is no
    // one to respond to.
    let response = (!is_ack && headers.contains("Via")).then(|| {
        let phrase = format!("{} ({reason})", reason_phrase(status));
        let mut response = response_from_headers(headers, status, &phrase);
        for (name, value) in extra_headers {
            response.headers.push(name, value.clone());
        }
        response
    });
    Inbound::Reject {
        status,
        reason: reason.to_string(),
        response,
    }
}

fn check_request(msg: &SipMessage, policy: &Policy) -> Result<(), Rejection> {
    let (Some(method), Some(uri)) = (msg.method(), msg.request_uri()) else {
        return Err(rejection(400, "not a request"));
    };
    if msg.version() != SIP_2_0 {
        return Err(rejection(
            505,
            format!("{} is not supported", msg.version()),
        ));
    }
    // A proxy checks only what it reads, the top Via among the Vias, and
    // passes the rest on unchanged for the next hop to judge (RFC 3261
    // §16.3 step 1): From, To and Contact are the endpoint's to check.
    let top_via = match policy.role {
        Role::Endpoint => msg
            .vias()
            .map_err(bad_header)?
            .into_iter()
            .next()
            .ok_or_else(|| bad_header(HeaderError::Missing("Via")))?,
        Role::Proxy => msg.top_via().map_err(bad_header)?,
    };
    if top_via.protocol != SIP_2_0 {
        return Err(rejection(505, format!("Via names {}", top_via.protocol)));
    }
    msg.call_id().map_err(bad_header)?;
    let cseq = msg.cseq().map_err(bad_header)?;
    // Max-Forwards may be absent for RFC 2543 peers (RFC 4475 `inv2543`).
    let max_forwards = msg.max_forwards().map_err(bad_header)?;
    if policy.role == Role::Endpoint {
        msg.from().map_err(bad_header)?;
        msg.to().map_err(bad_header)?;
        msg.contacts().map_err(bad_header)?;
    }

    if policy.role == Role::Endpoint && !policy.allowed_methods.contains(method) {
        let allow = policy
            .allowed_methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Rejection {
            extra_headers: vec![("Allow", allow)],
            ..rejection(501, format!("method {method} is not implemented"))
        });
    }
    if cseq.method != *method {
        return Err(rejection(
            400,
            format!("CSeq method {} does not match {method}", cseq.method),
        ));
    }
    if !policy
        .uri_schemes
        .iter()
        .any(|s| s.eq_ignore_ascii_case(uri.scheme()))
    {
        return Err(rejection(
            416,
            format!("URI scheme '{}' is not supported", uri.scheme()),
        ));
    }
    if policy.role == Role::Proxy && max_forwards == Some(0) {
        return Err(rejection(483, "Max-Forwards is 0"));
    }
    check_extensions(msg, method, policy)?;
    if policy.role == Role::Endpoint && *method == Method::Invite {
        check_accept(msg, policy)?;
    }
    Ok(())
}

/// RFC 3261 §8.2.2.3 / §16.3: unknown option tags in Require (endpoint) or
/// Proxy-Require (proxy) earn a 420 listing them in Unsupported.
fn check_extensions(msg: &SipMessage, method: &Method, policy: &Policy) -> Result<(), Rejection> {
    if matches!(method, Method::Ack | Method::Cancel) {
        return Ok(());
    }
    let header = match policy.role {
        Role::Endpoint => "Require",
        Role::Proxy => "Proxy-Require",
    };
    let unsupported: Vec<&str> = msg
        .headers
        .list(header)
        .into_iter()
        .filter(|tag| {
            !policy
                .supported_extensions
                .iter()
                .any(|s| s.eq_ignore_ascii_case(tag))
        })
        .collect();
    if unsupported.is_empty() {
        return Ok(());
    }
    let list = unsupported.join(", ");
    Err(Rejection {
        extra_headers: vec![("Unsupported", list.clone())],
        ..rejection(420, format!("unsupported {header}: {list}"))
    })
}

/// RFC 3261 §21.4.7: 406 when Accept allows none of the types we can send.
fn check_accept(msg: &SipMessage, policy: &Policy) -> Result<(), Rejection> {
    let accepted = msg.headers.list("Accept");
    if !msg.headers.contains("Accept") || accepted.is_empty() {
        return Ok(());
    }
    let matches = |range: &str, ty: &str| {
        let range = range.split(';').next().unwrap_or("").trim();
        let (rt, rs) = range.split_once('/').unwrap_or((range, ""));
        let (t, s) = ty.split_once('/').unwrap_or((ty, ""));
        (rt == "*" || rt.eq_ignore_ascii_case(t)) && (rs == "*" || rs.eq_ignore_ascii_case(s))
    };
    let ok = accepted.iter().any(|range| {
        policy
            .response_body_types
            .iter()
            .any(|ty| matches(range, ty))
    });
    if ok {
        return Ok(());
    }
    Err(Rejection {
        extra_headers: vec![(
            "Warning",
            "399 - \"no acceptable response body type in Accept\"".into(),
        )],
        ..rejection(406, "Accept lists no type we can send")
    })
}

fn check_response(msg: &SipMessage, policy: &Policy) -> Result<(), String> {
    if msg.version() != SIP_2_0 {
        return Err(format!("{} is not supported", msg.version()));
    }
    msg.call_id().map_err(|e| e.to_string())?;
    msg.cseq().map_err(|e| e.to_string())?;
    match policy.role {
        Role::Endpoint => {
            let vias = msg.vias().map_err(|e| e.to_string())?;
            msg.from().map_err(|e| e.to_string())?;
            msg.to().map_err(|e| e.to_string())?;
            // RFC 3261 §8.1.3.3: a UAC discards responses with more than one Via.
            if vias.len() != 1 {
                return Err(format!(
                    "response has {} Via values, expected 1",
                    vias.len()
                ));
            }
            Ok(())
        }
        // A proxy reads its own Via and the one it forwards to (RFC 3261
        // §16.7), nothing below them (§16.3 step 1, as for requests).
        Role::Proxy => {
            let mut vias = msg.via_iter();
            let ours = vias.next().unwrap_or(Err(HeaderError::Missing("Via")));
            ours.map_err(|e| e.to_string())?;
            match vias.next().transpose().map_err(|e| e.to_string())? {
                // RFC 4475 `bcast`: never forward to a broadcast address.
                Some(next) if next.host == "255.255.255.255" => {
                    Err("next Via is the broadcast address".into())
                }
                _ => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ: &str = "OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    fn status_of(text: &str, policy: &Policy) -> Option<u16> {
        match classify_datagram(text.as_bytes(), policy) {
            Inbound::Accept(_) => None,
            Inbound::Reject { status, .. } => Some(status),
            Inbound::Drop { .. } => Some(0),
        }
    }

    #[test]
    fn valid_request_is_accepted() {
        assert_eq!(status_of(REQ, &Policy::endpoint()), None);
    }

    #[test]
    fn missing_header_gives_400_naming_it() {
        let text = REQ.replace("Call-ID: x\r\n", "");
        let Inbound::Reject {
            status,
            reason,
            response,
        } = classify_datagram(text.as_bytes(), &Policy::endpoint())
        else {
            panic!("expected a rejection");
        };
        assert_eq!(status, 400);
        assert_eq!(reason, "missing Call-ID header");
        let bytes = response.unwrap().to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("SIP/2.0 400 Bad Request (missing Call-ID header)\r\n"),
            "{text}"
        );
        assert!(text.contains("Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"));
    }

    #[test]
    fn role_dependent_statuses() {
        let unknown = REQ.replace("OPTIONS", "FOO");
        let Inbound::Reject {
            status: 501,
            response: Some(r),
            ..
        } = classify_datagram(unknown.as_bytes(), &Policy::endpoint())
        else {
            panic!("expected 501");
        };
        assert!(r.headers.get("Allow").unwrap().contains("INVITE"));
        assert_eq!(status_of(&unknown, &Policy::proxy()), None);

        let zero_mf = REQ.replace("Max-Forwards: 70", "Max-Forwards: 0");
        assert_eq!(status_of(&zero_mf, &Policy::endpoint()), None);
        assert_eq!(status_of(&zero_mf, &Policy::proxy()), Some(483));

        let require = REQ.replace("Max-Forwards: 70", "Max-Forwards: 70\r\nRequire: path, foo");
        let Inbound::Reject {
            status: 420,
            response: Some(r),
            ..
        } = classify_datagram(require.as_bytes(), &Policy::endpoint())
        else {
            panic!("expected 420");
        };
        assert_eq!(r.headers.get("Unsupported"), Some("foo"));
        assert_eq!(status_of(&require, &Policy::proxy()), None);
    }

    #[test]
    fn a_proxy_judges_only_what_it_reads() {
        // A lower Via, From, To and Contact are the next hop's to judge.
        let below = REQ
            .replace(
                "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n",
                "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP ;;\r\n",
            )
            .replace("<sip:b@example.com>;tag=1", "Bell, Alexander <sip:b@x>")
            .replace("Max-Forwards: 70", "Max-Forwards: 70\r\nContact: <sip:c@x");
        assert_eq!(status_of(&below, &Policy::endpoint()), Some(400));
        assert_eq!(status_of(&below, &Policy::proxy()), None);
        // What it reads is still checked: the top Via, Call-ID, CSeq.
        let top = REQ.replace("SIP/2.0/UDP h;", "SIP/2.0/UDP ;");
        assert_eq!(status_of(&top, &Policy::proxy()), Some(400));
        let cseq = REQ.replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
        assert_eq!(status_of(&cseq, &Policy::proxy()), Some(400));

        let response = |vias: &str| {
            format!(
                "SIP/2.0 200 OK\r\n{vias}From: <sip:b@example.com>;tag=1\r\n\
                 To: <sip:a@example.com>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        let accepted = |text: &str| {
            matches!(
                classify_datagram(text.as_bytes(), &Policy::proxy()),
                Inbound::Accept(_)
            )
        };
        let ours = "Via: SIP/2.0/UDP p;branch=z9hG4bK2\r\n";
        let next = "Via: SIP/2.0/UDP h;branch=z9hG4bK1\r\n";
        assert!(accepted(&response(&format!(
            "{ours}{next}Via: SIP/2.0/UDP ;;\r\n"
        ))));
        assert!(!accepted(&response(&format!(
            "{ours}Via: SIP/2.0/UDP ;;\r\n"
        ))));
        assert!(!accepted(&response(&format!(
            "{ours}Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1\r\n"
        ))));
    }

    #[test]
    fn size_limit_gives_513() {
        let policy = Policy {
            max_message_size: 100,
            ..Policy::endpoint()
        };
        assert_eq!(status_of(REQ, &policy), Some(513));
    }

    #[test]
    fn malformed_ack_is_never_answered() {
        let ack = REQ
            .replace("OPTIONS", "ACK")
            .replace("CSeq: 1 ACK", "CSeq: 1 INVITE");
        let Inbound::Reject {
            status: 400,
            response: None,
            ..
        } = classify_datagram(ack.as_bytes(), &Policy::endpoint())
        else {
            panic!("expected a silent 400");
        };
    }
}
