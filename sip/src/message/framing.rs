//! Message framing (RFC 3261 §7.5, §18.3) for datagrams and streams, header
//! unfolding, and start-line parsing.

use std::borrow::Cow;

use super::headers::Headers;
use super::syntax::{is_token, parse_uri};
use super::{parse_u32, Method, SipMessage, StartLine};
use crate::text::{fields, split_at_byte};

/// What went wrong while framing or parsing a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("message is empty")]
    Empty,
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("malformed start line: {0}")]
    StartLine(String),
    #[error("invalid Request-URI: {0}")]
    RequestUri(String),
    #[error("malformed header line: {0}")]
    HeaderLine(String),
    #[error("header section is not terminated by an empty line")]
    UnterminatedHeaders,
    #[error("invalid Content-Length: {0}")]
    ContentLength(String),
    #[error("Content-Length {declared} exceeds the {available} bytes received")]
    BodyTruncated { declared: u32, available: usize },
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    TooLarge { size: usize, max: usize },
}

/// The headers that could be recovered from a message that failed to parse,
/// so a 400 can still be addressed (RFC 3261 §8.2.6).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// False when the start line looked like a status line.
    pub is_request: bool,
    /// The request method, if the request line could be read that far.
    pub method: Option<Method>,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub recovered: Recovered,
}

impl ParseError {
    pub(crate) fn bare(kind: ParseErrorKind) -> Self {
        Self {
            kind,
            recovered: Recovered {
                is_request: true,
                ..Recovered::default()
            },
        }
    }
}

/// Where the header section ends: (length of the head without the blank
/// line, offset of the body). Bare-LF line ends are tolerated.
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while let Some(nl) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let at = i + nl;
        match (buf.get(at + 1), buf.get(at + 2)) {
            (Some(b'\n'), _) => return Some((at, at + 2)),
            (Some(b'\r'), Some(b'\n')) => return Some((at, at + 3)),
            _ => i = at + 1,
        }
    }
    None
}

/// Parses a header section line by line, joining continuation lines
/// (those starting with SP or HTAB) onto the previous line with a single
/// space. Only a folded line is copied: the headers copy each value anyway.
fn parse_header_lines(head: &str) -> Result<Headers, String> {
    let lines = head.bytes().filter(|&b| b == b'\n').count() + 1;
    let mut headers = Headers::with_capacity(lines);
    let mut current: Option<Cow<'_, str>> = None;
    for raw in fields(head, b'\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.starts_with([' ', '\t']) {
            if let Some(prev) = current.as_mut() {
                let prev = prev.to_mut();
                prev.push(' ');
                prev.push_str(line.trim_start_matches([' ', '\t']));
                continue;
            }
        }
        if let Some(done) = current.replace(Cow::Borrowed(line)) {
            push_header_line(&mut headers, &done)?;
        }
    }
    if let Some(done) = current {
        push_header_line(&mut headers, &done)?;
    }
    Ok(headers)
}

fn push_header_line(headers: &mut Headers, line: &str) -> Result<(), String> {
    let Some((name, value)) = split_at_byte(line, b':') else {
        return Err(format!(
            "no ':' in '{}'",
            line.chars().take(30).collect::<String>()
        ));
    };
    let name = name.trim_end_matches([' ', '\t']);
    if !is_token(name) {
        return Err(format!("invalid header name '{name}'"));
    }
    headers.push(name, value.trim_matches([' ', '\t']));
    Ok(())
}

fn parse_version(v: &str) -> Result<String, ParseErrorKind> {
    let valid = v.len() > 4
        && v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && v.get(4..).is_some_and(|rest| {
            split_at_byte(rest, b'.').is_some_and(|(major, minor)| {
                !major.is_empty()
                    && !minor.is_empty()
                    && major
                        .bytes()
                        .chain(minor.bytes())
                        .all(|b| b.is_ascii_digit())
            })
        });
    if valid {
        Ok(v.to_ascii_uppercase())
    } else {
        Err(ParseErrorKind::StartLine(format!(
            "invalid SIP version '{v}'"
        )))
    }
}

fn parse_status_line(line: &str) -> Result<StartLine, ParseErrorKind> {
    let mut parts = line.splitn(3, ' ');
    let version = parse_version(parts.next().unwrap_or(""))?;
    let code = parts.next().unwrap_or("");
    let status = match code.parse::<u16>() {
        Ok(s) if code.len() == 3 && (100..=699).contains(&s) => s,
        _ => {
            return Err(ParseErrorKind::StartLine(format!(
                "invalid status code '{code}'"
            )))
        }
    };
    Ok(StartLine::Response {
        version,
        status,
        reason: parts.next().unwrap_or("").to_string(),
    })
}

/// Parses `Method SP Request-URI SP SIP-Version`; extra spaces (RFC 4475
/// `lwsstart`, `trws`, `lwsruri`) are rejected rather than guessed at.
fn parse_request_line(line: &str, recovered: &mut Recovered) -> Result<StartLine, ParseErrorKind> {
    let mut parts = fields(line, b' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseErrorKind::StartLine(
            "expected 'Method SP Request-URI SP SIP-Version' separated by single spaces".into(),
        ));
    };
    let method = Method::parse(method).map_err(|e| ParseErrorKind::StartLine(e.0))?;
    recovered.method = Some(method.clone());
    let uri = parse_uri(uri).map_err(|e| ParseErrorKind::RequestUri(e.0))?;
    let version = parse_version(version)?;
    Ok(StartLine::Request {
        method,
        uri,
        version,
    })
}

/// Start line and headers of a head section. On failure the headers that
/// could be read are kept in the error.
fn parse_head(head: &[u8]) -> Result<(StartLine, Headers), ParseError> {
    let (start_bytes, rest) = match head.iter().position(|&b| b == b'\n') {
        Some(i) => (
            head.get(..i).unwrap_or_default(),
            head.get(i + 1..).unwrap_or_default(),
        ),
        None => (head, &[][..]),
    };
    let start_bytes = start_bytes.strip_suffix(b"\r").unwrap_or(start_bytes);
    let is_request = !start_bytes
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
    let mut recovered = Recovered {
        is_request,
        ..Recovered::default()
    };
    let fail = |kind, recovered: Recovered| ParseError { kind, recovered };

    let headers = match std::str::from_utf8(rest) {
        Ok("") => Ok(Headers::new()),
        Ok(text) => parse_header_lines(text).map_err(ParseErrorKind::HeaderLine),
        Err(_) => Err(ParseErrorKind::NotUtf8("header section")),
    };
    recovered.headers = match headers {
        Ok(h) => h,
        Err(kind) => return Err(fail(kind, recovered)),
    };
    let Ok(start_text) = std::str::from_utf8(start_bytes) else {
        return Err(fail(ParseErrorKind::NotUtf8("start line"), recovered));
    };
    let start = if is_request {
        parse_request_line(start_text, &mut recovered)
    } else {
        parse_status_line(start_text)
    };
    match start {
        Ok(start) => Ok((start, recovered.headers)),
        Err(kind) => Err(fail(kind, recovered)),
    }
}

/// The Content-Length value; more than one field is a framing error (RFC 4475 `mcl01`).
fn content_length(headers: &Headers) -> Result<Option<u32>, ParseErrorKind> {
    let mut values = headers.get_all("Content-Length");
    let (first, second) = (values.next(), values.next());
    match (first, second) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(ParseErrorKind::ContentLength("more than one value".into())),
        (Some(v), None) => parse_u32(v)
            .map(Some)
            .map_err(|e| ParseErrorKind::ContentLength(e.0)),
    }
}

fn with_recovered(kind: ParseErrorKind, start: &StartLine, headers: Headers) -> ParseError {
    ParseError {
        kind,
        recovered: Recovered {
            is_request: matches!(start, StartLine::Request { .. }),
            method: match start {
                StartLine::Request { method, .. } => Some(method.clone()),
                StartLine::Response { .. } => None,
            },
            headers,
        },
    }
}

/// Parses one message from a datagram (RFC 3261 §18.3): without
/// Content-Length the body is the rest of the datagram; bytes past
/// Content-Length are ignored (RFC 4475 `dblreq`); a Content-Length larger
/// than the datagram is an error (`clerr`). A missing empty line ends the
/// headers at the end of the datagram.
pub fn parse_datagram(data: &[u8]) -> Result<SipMessage, ParseError> {
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let mut data = data;
    while let Some(rest) = data.strip_prefix(b"\r\n") {
        data = rest;
    }
    if data.is_empty() {
        return Err(ParseError::bare(ParseErrorKind::Empty));
    }
    let (head, body_area) = match find_head_end(data) {
        Some((head_len, body_at)) => (
            data.get(..head_len).unwrap_or_default(),
            data.get(body_at..).unwrap_or_default(),
        ),
        None => {
            let head = data.strip_suffix(b"\n").unwrap_or(data);
            (head.strip_suffix(b"\r").unwrap_or(head), &[][..])
        }
    };
    let (start, headers) = parse_head(head)?;
    let body = match content_length(&headers) {
        Err(kind) => return Err(with_recovered(kind, &start, headers)),
        Ok(None) => body_area,
        Ok(Some(declared)) => match body_area.get(..declared as usize) {
            Some(body) => body,
            None => {
                let kind = ParseErrorKind::BodyTruncated {
                    declared,
                    available: body_area.len(),
                };
                return Err(with_recovered(kind, &start, headers));
            }
        },
    };
    Ok(SipMessage {
        start,
        headers,
        body: body.to_vec(),
    })
}

/// What a stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Message(SipMessage),
    /// RFC 5626 §4.4.1 keep-alive ping (CRLFCRLF): answer with a single CRLF.
    Ping,
    /// RFC 5626 pong (a single CRLF) answering our ping.
    Pong,
}

/// Accumulates stream bytes (TCP, TLS) and yields complete messages framed by
/// Content-Length (required on streams; absent means an empty body).
/// After an error the stream cannot be resynchronized: close the connection.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message_size: usize,
}

impl StreamFramer {
    pub fn new(max_message_size: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_message_size,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete item, `None` if more bytes are needed.
    pub fn next_item(&mut self) -> Option<Result<StreamItem, ParseError>> {
        if self.buf.starts_with(b"\r\n\r\n") {
            self.buf.drain(..4);
            return Some(Ok(StreamItem::Ping));
        }
        if self.buf.starts_with(b"\r\n") {
            // A lone CRLF is a pong only once we know it is not half a ping.
            let maybe_half_ping = matches!(
                (self.buf.get(2), self.buf.get(3)),
                (None, _) | (Some(b'\r'), None)
            );
            if maybe_half_ping {
                return None;
            }
            self.buf.drain(..2);
            return Some(Ok(StreamItem::Pong));
        }
        let Some((head_len, body_at)) = find_head_end(&self.buf) else {
            return (self.buf.len() > self.max_message_size)
                .then(|| Err(self.too_large(self.buf.len())));
        };
        let (start, headers) = match parse_head(self.buf.get(..head_len).unwrap_or_default()) {
            Ok(parsed) => parsed,
            Err(e) => return Some(Err(e)),
        };
        let declared = match content_length(&headers) {
            Ok(cl) => cl.unwrap_or(0) as usize,
            Err(kind) => return Some(Err(with_recovered(kind, &start, headers))),
        };
        let total = body_at.saturating_add(declared);
        if total > self.max_message_size {
            return Some(Err(self.too_large(total)));
        }
        let body = self.buf.get(body_at..total)?.to_vec();
        self.buf.drain(..total);
        Some(Ok(StreamItem::Message(SipMessage {
            start,
            headers,
            body,
        })))
    }

    fn too_large(&self, size: usize) -> ParseError {
        ParseError::bare(ParseErrorKind::TooLarge {
            size,
            max: self.max_message_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &[u8] =
        b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 5\r\n\r\nhello";

    #[test]
    fn folded_headers_are_unfolded() {
        let msg = parse_datagram(
            b"OPTIONS sip:a@b SIP/2.0\r\nSubject: one\r\n  two\r\n\tthree\r\nl: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(msg.headers.get("Subject"), Some("one two three"));
    }

    #[test]
    fn datagram_body_is_framed_by_content_length() {
        let mut data = OPTIONS.to_vec();
        data.extend_from_slice(b"TRAILING GARBAGE");
        assert_eq!(parse_datagram(&data).unwrap().body, b"hello");
        let short = &OPTIONS[..OPTIONS.len() - 1];
        assert!(matches!(
            parse_datagram(short).unwrap_err().kind,
            ParseErrorKind::BodyTruncated {
                declared: 5,
                available: 4
            }
        ));
    }

    #[test]
    fn errors_keep_recovered_headers() {
        let err = parse_datagram(b"INVITE  sip:a@b SIP/2.0\r\nCall-ID: abc\r\n\r\n").unwrap_err();
        assert!(matches!(err.kind, ParseErrorKind::StartLine(_)));
        assert_eq!(err.recovered.headers.get("call-id"), Some("abc"));
        assert!(err.recovered.is_request);
        let bad_header =
            parse_datagram(b"INVITE sip:a@b SIP/2.0\r\nno colon here\r\n\r\n").unwrap_err();
        assert!(matches!(bad_header.kind, ParseErrorKind::HeaderLine(_)));
        let resp = parse_datagram(b"SIP/2.0 4294967301 Big\r\n\r\n").unwrap_err();
        assert!(!resp.recovered.is_request);
    }

    #[test]
    fn stream_framer_handles_split_messages_and_keepalives() {
        let mut framer = StreamFramer::new(4096);
        framer.push(b"\r\n\r\n");
        assert_eq!(framer.next_item(), Some(Ok(StreamItem::Ping)));
        framer.push(b"\r\n");
        assert_eq!(framer.next_item(), None, "could still become a ping");
        framer.push(&OPTIONS[..40]);
        assert_eq!(framer.next_item(), Some(Ok(StreamItem::Pong)));
        assert_eq!(framer.next_item(), None);
        framer.push(&OPTIONS[40..]);
        framer.push(OPTIONS);
        for _ in 0..2 {
            match framer.next_item() {
                Some(Ok(StreamItem::Message(m))) => assert_eq!(m.body, b"hello"),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(framer.next_item(), None);
        assert_eq!(framer.buffered(), 0);
    }

    #[test]
    fn stream_framer_enforces_size_limit() {
        let mut framer = StreamFramer::new(64);
        framer.push(&[b'A'; 65]);
        assert!(matches!(
            framer.next_item(),
            Some(Err(ParseError {
                kind: ParseErrorKind::TooLarge { .. },
                ..
            }))
        ));
        let mut framer = StreamFramer::new(OPTIONS.len() - 1);
        framer.push(OPTIONS);
        assert!(matches!(
            framer.next_item(),
            Some(Err(ParseError {
                kind: ParseErrorKind::TooLarge { .. },
                ..
            }))
        ));
    }
}
