//! Lenient-but-safe parsers for the pieces of header values (RFC 3261 §25):
//! tokens, quoted strings, parameters, URIs, name-addrs and Via values.
//! LWS is allowed around every separator because RFC 3261 permits it and
//! RFC 4475 `wsinv` exercises it.

use std::borrow::Cow;
use std::fmt;

use crate::text::split_at_byte;

/// Why a header value could not be parsed; the text names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(pub String);

fn err<T>(what: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(what.into()))
}

/// RFC 3261 `token` characters.
pub fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '.' | '!' | '%' | '*' | '_' | '+' | '`' | '\'' | '~'
        )
}

pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

/// A cursor over a header value.
pub(crate) struct Cursor<'a> {
    rest: &'a str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Self { rest: s }
    }

    pub(crate) fn rest(&self) -> &'a str {
        self.rest
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn skip_ws(&mut self) {
        self.rest = self.rest.trim_start_matches([' ', '\t']);
    }

    pub(crate) fn peek(&self) -> Option<char> {
        self.rest.chars().next()
    }

    /// Consumes `c` (after optional LWS) if it is next.
    pub(crate) fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        match self.rest.strip_prefix(c) {
            Some(r) => {
                self.rest = r;
                true
            }
            None => false,
        }
    }

    pub(crate) fn take_while(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let end = self.rest.find(|c: char| !f(c)).unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at(end);
        self.rest = rest;
        taken
    }

    pub(crate) fn token(&mut self) -> Result<&'a str, SyntaxError> {
        self.skip_ws();
        let t = self.take_while(is_token_char);
        if t.is_empty() {
            return err(format!("expected a token at '{}'", preview(self.rest)));
        }
        Ok(t)
    }

    /// A quoted string including its quotes, escapes left as they are.
    pub(crate) fn quoted(&mut self) -> Result<&'a str, SyntaxError> {
        self.skip_ws();
        let s = self.rest;
        let mut chars = s.char_indices();
        if !matches!(chars.next(), Some((_, '"'))) {
            return err("expected a quoted string");
        }
        while let Some((i, c)) = chars.next() {
            match c {
                // The guard consumes the escaped character.
                '\\' if chars.next().is_none() => break,
                '"' => {
                    let (q, rest) = s.split_at(i + 1);
                    self.rest = rest;
                    return Ok(q);
                }
                _ => {}
            }
        }
        err("unterminated quoted string")
    }
}

fn preview(s: &str) -> String {
    s.chars().take(20).collect()
}

/// Removes the quotes and `\` escapes of a quoted string; other text is returned as is.
pub fn unquote(s: &str) -> String {
    let Some(inner) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return s.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `;name[=value]` parameter. The value keeps its quotes if it had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Option<String>) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, ";{}={}", self.name, v),
            None => write!(f, ";{}", self.name),
        }
    }
}

/// Looks a parameter up by case-insensitive name.
pub fn find_param<'p>(params: &'p [Param], name: &str) -> Option<&'p Param> {
    params.iter().find(|p| p.name.eq_ignore_ascii_case(name))
}

/// Parses `*(SEMI generic-param)` until the end or a top-level `,`.
pub(crate) fn parse_params(cur: &mut Cursor<'_>) -> Result<Vec<Param>, SyntaxError> {
    let mut params = Vec::new();
    while cur.eat(';') {
        let name = cur.token()?;
        let value = if cur.eat('=') {
            cur.skip_ws();
            match cur.peek() {
                Some('"') => Some(cur.quoted()?.to_string()),
                Some('[') => {
                    let v = cur.take_while(|c| c != ']');
                    if !cur.eat(']') {
                        return err("unterminated IPv6 reference in parameter");
                    }
                    Some(format!("{v}]"))
                }
                _ => Some(cur.take_while(|c| is_token_char(c) || c == ':').to_string()),
            }
        } else {
            None
        };
        if value.as_deref() == Some("") {
            return err(format!("parameter '{name}' has an empty value"));
        }
        params.push(Param::new(name, value));
    }
    Ok(params)
}

/// Splits a header value at commas that are outside quotes and `<>`.
pub fn split_list(value: &str) -> ListElements<'_> {
    ListElements { rest: Some(value) }
}

/// The elements of a comma-separated header value, trimmed, in order
/// ([`split_list`]); found one at a time, so that reading the first (a
/// proxy's top Via) allocates nothing and scans no further.
#[derive(Debug, Clone)]
pub struct ListElements<'a> {
    /// What is left to split; `None` once the last element was returned.
    rest: Option<&'a str>,
}

impl<'a> Iterator for ListElements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let value = self.rest?;
        let (mut in_quote, mut escaped, mut in_angle) = (false, false, false);
        for (i, c) in value.char_indices() {
            if in_quote {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => in_quote = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => in_quote = true,
                '<' => in_angle = true,
                '>' => in_angle = false,
                ',' if !in_angle => {
                    self.rest = value.get(i + 1..);
                    return value.get(..i).map(str::trim);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(value.trim())
    }
}

/// A URI. SIP and SIPS URIs are parsed into parts; other schemes (tel, http,
/// unknown ones: RFC 4475 `unkscm`) stay opaque so they can be rejected with
/// 416 or passed through rather than failing the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uri {
    Sip(SipUri),
    Other { scheme: String, opaque: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub secure: bool,
    /// The userinfo before `@` (user and optional `:password`), still %-escaped.
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
    /// The `?hname=hvalue&...` part without the `?`, still %-escaped.
    pub headers: Option<String>,
}

impl Uri {
    pub fn scheme(&self) -> &str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri> {
        match self {
            Uri::Sip(u) => Some(u),
            Uri::Other { .. } => None,
        }
    }

    /// Converts to rsip's typed URI where rsip's grammar accepts it.
    pub fn to_rsip(&self) -> Result<rsip::Uri, rsip::Error> {
        rsip::Uri::try_from(self.to_string())
    }
}

impl SipUri {
    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }

    /// The user part without a password.
    pub fn user_name(&self) -> Option<&str> {
        self.user
            .as_deref()
            .map(|u| u.split(':').next().unwrap_or(u))
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => u.fmt(f),
            Uri::Other { scheme, opaque } => write!(f, "{scheme}:{opaque}"),
        }
    }
}

impl fmt::Display for SipUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        for p in &self.params {
            p.fmt(f)?;
        }
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Uri {
    type Err = SyntaxError;

    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        parse_uri(s)
    }
}

fn is_uri_char(c: char) -> bool {
    c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | '\\' | '{' | '}' | '|' | '^')
}

/// Parses an absolute URI with no surrounding whitespace.
pub fn parse_uri(s: &str) -> Result<Uri, SyntaxError> {
    let Some((scheme, rest)) = split_at_byte(s, b':') else {
        return err(format!("URI '{}' has no scheme", preview(s)));
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return err(format!("URI '{}' has an invalid scheme", preview(s)));
    }
    if rest.is_empty() || !rest.chars().all(is_uri_char) {
        return err(format!("URI '{}' contains invalid characters", preview(s)));
    }
    let secure = if scheme.eq_ignore_ascii_case("sip") {
        false
    } else if scheme.eq_ignore_ascii_case("sips") {
        true
    } else {
        return Ok(Uri::Other {
            scheme: scheme.to_string(),
            opaque: rest.to_string(),
        });
    };
    // `@` is legal neither in params nor in headers, so the first one ends the userinfo.
    let (user, hostpart) = match split_at_byte(rest, b'@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return err("SIP URI has an empty user part"),
        None => (None, rest),
    };
    let (hostpart, headers) = match split_at_byte(hostpart, b'?') {
        Some((h, hd)) => (h, Some(hd.to_string())),
        None => (hostpart, None),
    };
    let mut cur = Cursor::new(hostpart);
    let (host, port) = parse_hostport(&mut cur)?;
    let params = parse_params(&mut cur)?;
    if !cur.is_empty() {
        return err(format!("unexpected '{}' in SIP URI", preview(cur.rest())));
    }
    Ok(Uri::Sip(SipUri {
        secure,
        user,
        host,
        port,
        params,
        headers,
    }))
}

/// `host [":" port]`, host being a name, IPv4 address or `[IPv6]` reference.
pub(crate) fn parse_hostport(cur: &mut Cursor<'_>) -> Result<(String, Option<u16>), SyntaxError> {
    cur.skip_ws();
    let host = if cur.peek() == Some('[') {
        let v6 = cur.take_while(|c| c != ']');
        if !cur.eat(']') {
            return err("unterminated IPv6 reference");
        }
        format!("{v6}]")
    } else {
        cur.take_while(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            .to_string()
    };
    if host.is_empty() {
        return err(format!("expected a host at '{}'", preview(cur.rest())));
    }
    let port = if cur.eat(':') {
        cur.skip_ws();
        let digits = cur.take_while(|c| c.is_ascii_digit());
        match digits.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => return err(format!("invalid port '{digits}'")),
        }
    } else {
        None
    };
    Ok((host, port))
}

/// `name-addr` or `addr-spec` followed by header parameters, as in From, To,
/// Contact, Route, Record-Route and Path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The display name as written (quoted strings keep their quotes).
    pub display_name: Option<String>,
    pub uri: Uri,
    pub params: Vec<Param>,
}

impl NameAddr {
    pub fn new(uri: Uri) -> Self {
        Self {
            display_name: None,
            uri,
            params: Vec::new(),
        }
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").and_then(|p| p.value.as_deref())
    }

    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        self.params.retain(|p| !p.name.eq_ignore_ascii_case(name));
        self.params.push(Param::new(name, value));
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display_name {
            write!(f, "{d} ")?;
        }
        write!(f, "<{}>", self.uri)?;
        for p in &self.params {
            p.fmt(f)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for NameAddr {
    type Err = SyntaxError;

    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        parse_name_addr(s)
    }
}

/// Parses one name-addr/addr-spec value with its parameters.
pub fn parse_name_addr(value: &str) -> Result<NameAddr, SyntaxError> {
    let mut cur = Cursor::new(value);
    cur.skip_ws();
    let display_name = if cur.peek() == Some('"') {
        Some(cur.quoted()?.to_string())
    } else if let Some(lt) = cur.rest().find('<') {
        let dn = cur.rest()[..lt].trim();
        if !dn
            .split([' ', '\t'])
            .filter(|w| !w.is_empty())
            .all(is_token)
        {
            return err(format!("display name '{}' must be quoted", preview(dn)));
        }
        cur = Cursor::new(&cur.rest()[lt..]);
        (!dn.is_empty()).then(|| dn.to_string())
    } else {
        None
    };
    let uri = if cur.eat('<') {
        let inner = cur.take_while(|c| c != '>');
        if !cur.eat('>') {
            return err("missing '>' after URI");
        }
        parse_uri(inner)?
    } else {
        if display_name.is_some() {
            return err("display name without <URI>");
        }
        cur.skip_ws();
        // In an addr-spec, `;` starts header parameters (RFC 3261 §20), and
        // `?`/`,` cannot appear (RFC 4475 `regbadct`).
        let spec = cur.take_while(|c| is_uri_char(c) && c != ';' && c != ',');
        if spec.contains('?') {
            return err("URI with headers must be enclosed in <>");
        }
        parse_uri(spec)?
    };
    let params = parse_params(&mut cur)?;
    cur.skip_ws();
    if !cur.is_empty() {
        return err(format!(
            "unexpected '{}' after address",
            preview(cur.rest())
        ));
    }
    Ok(NameAddr {
        display_name,
        uri,
        params,
    })
}

/// One Via value: `SIP/2.0/UDP host:port;params`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Protocol name and version, e.g. `SIP/2.0`. The usual values are not
    /// copied: every message has Vias, and a proxy parses them all.
    pub protocol: Cow<'static, str>,
    /// Transport as written upper-cased (UDP, TCP, TLS, SCTP, WS, WSS or any token).
    pub transport: Cow<'static, str>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<Param>,
}

/// A Via transport upper-cased, the known ones without a copy.
pub(crate) fn via_transport(name: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 6] = ["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"];
    match KNOWN.iter().find(|known| known.eq_ignore_ascii_case(name)) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.to_ascii_uppercase()),
    }
}

impl Via {
    pub fn param(&self, name: &str) -> Option<&Param> {
        find_param(&self.params, name)
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").and_then(|p| p.value.as_deref())
    }

    pub fn received(&self) -> Option<&str> {
        self.param("received").and_then(|p| p.value.as_deref())
    }

    /// `None`: no rport; `Some(None)`: rport requested; `Some(Some(p))`: filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport")
            .map(|p| p.value.as_deref().and_then(|v| v.parse().ok()))
    }

    pub fn set_param(&mut self, name: &str, value: Option<String>) {
        self.params.retain(|p| !p.name.eq_ignore_ascii_case(name));
        self.params.push(Param::new(name, value));
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        for p in &self.params {
            p.fmt(f)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Via {
    type Err = SyntaxError;

    fn from_str(s: &str) -> Result<Self, SyntaxError> {
        parse_via(s)
    }
}

/// Parses one Via value (not a comma list).
pub fn parse_via(value: &str) -> Result<Via, SyntaxError> {
    let mut cur = Cursor::new(value);
    let name = cur.token()?;
    if !cur.eat('/') {
        return err("Via: expected '/' after protocol name");
    }
    let version = cur.token()?;
    if !cur.eat('/') {
        return err("Via: expected '/' after protocol version");
    }
    let transport = via_transport(cur.token()?);
    let (host, port) = parse_hostport(&mut cur)?;
    let params = parse_params(&mut cur)?;
    cur.skip_ws();
    if !cur.is_empty() {
        return err(format!("Via: unexpected '{}'", preview(cur.rest())));
    }
    let protocol = if name.eq_ignore_ascii_case("SIP") && version == "2.0" {
        Cow::Borrowed(super::SIP_2_0)
    } else {
        Cow::Owned(format!("{}/{}", name.to_ascii_uppercase(), version))
    };
    Ok(Via {
        protocol,
        transport,
        host,
        port,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_with_semicolon_in_user_part() {
        let uri = parse_uri("sip:user;par=u%40example.net@example.com").unwrap();
        let sip = uri.as_sip().unwrap();
        assert_eq!(sip.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(sip.host, "example.com");
        assert_eq!(uri.to_string(), "sip:user;par=u%40example.net@example.com");
    }

    #[test]
    fn sip_uri_parts_and_ipv6() {
        let uri = parse_uri("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?subject=x").unwrap();
        let sip = uri.as_sip().unwrap();
        assert!(sip.secure);
        assert_eq!(sip.user_name(), Some("alice"));
        assert_eq!(sip.host, "[2001:db8::1]");
        assert_eq!(sip.port, Some(5061));
        assert_eq!(
            sip.param("TRANSPORT").unwrap().value.as_deref(),
            Some("tcp")
        );
        assert!(sip.param("lr").is_some());
        assert_eq!(sip.headers.as_deref(), Some("subject=x"));
    }

    #[test]
    fn unknown_scheme_is_opaque() {
        let uri = parse_uri("nobodyKnowsThisScheme:totallyopaquecontent").unwrap();
        assert_eq!(uri.scheme(), "nobodyKnowsThisScheme");
        assert!(uri.as_sip().is_none());
        assert!(parse_uri("<sip:a@b>").is_err());
        assert!(parse_uri("sip:").is_err());
    }

    #[test]
    fn via_with_lws_everywhere() {
        let via =
            parse_via("SIP  /   2.0 /UDP  192.0.2.2 ; branch = z9hG4bK1 ;rport;received=10.0.0.1")
                .unwrap();
        assert_eq!(via.protocol, "SIP/2.0");
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.branch(), Some("z9hG4bK1"));
        assert_eq!(via.rport(), Some(None));
        assert_eq!(via.received(), Some("10.0.0.1"));
        let v6 = parse_via("SIP/2.0/WSS [::1]:8443;rport=5;branch=z9hG4bKx").unwrap();
        assert_eq!(v6.host, "[::1]");
        assert_eq!(v6.port, Some(8443));
        assert_eq!(v6.rport(), Some(Some(5)));
        assert!(parse_via("SIP/2.0/UDP 192.0.2.15;;").is_err());
    }

    #[test]
    fn name_addr_forms() {
        let na =
            parse_name_addr("\"J \\\"R\\\"\" <sip:j@example.com>;tag = abc ; x=\"a,b\"").unwrap();
        assert_eq!(unquote(na.display_name.as_deref().unwrap()), "J \"R\"");
        assert_eq!(na.tag(), Some("abc"));
        assert_eq!(na.param("x").unwrap().value.as_deref(), Some("\"a,b\""));
        let spec = parse_name_addr("sip:+1972@gw1.example.net;unknownparam").unwrap();
        assert!(spec.param("unknownparam").is_some());
        assert!(spec.uri.as_sip().unwrap().params.is_empty());
        let lws = parse_name_addr("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(lws.display_name.as_deref(), Some("caller"));
        assert!(parse_name_addr("\"unterminated <sip:a@b>").is_err());
        assert!(parse_name_addr("Bell, Alexander <sip:a@b>").is_err());
        assert!(parse_name_addr("sip:user@example.com?Route=%3Csip:x%3E").is_err());
    }

    #[test]
    fn list_split_respects_quotes_and_angles() {
        assert_eq!(
            split_list("\"a,b\" <sip:x@y;p=1,2>, <sip:z@w>").collect::<Vec<_>>(),
            vec!["\"a,b\" <sip:x@y;p=1,2>", "<sip:z@w>"]
        );
        assert_eq!(
            split_list(" a ,, b,").collect::<Vec<_>>(),
            vec!["a", "", "b", ""],
            "empty elements are kept, for validation to refuse"
        );
        assert_eq!(split_list("").collect::<Vec<_>>(), vec![""]);
    }
}
