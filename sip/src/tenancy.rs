//! Which tenant a request belongs to. Phones configured with the PBX's
//! domain name say so in the Request-URI, To or From host; phones given an
//! IP address carry the tenant only in their username's `-CODE` suffix
//! (the `<number>-<CODE>` pattern of reference/002). The pbx-nodes look
//! the tenant up so; the SBC needs to know what decides it, to repeat a
//! node's challenge (its realm is the tenant's).

use std::net::IpAddr;

use crate::message::{SipMessage, Uri};

/// One way to find the tenant, tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantLookup {
    Domain(String),
    Code(String),
}

pub fn is_ip_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok()
}

/// The tenant code in a username such as `100-DEMO` or `100_DEMO`.
pub fn code_from_username(username: &str) -> Option<&str> {
    let (_, code) = username.rsplit_once(['-', '_'])?;
    (!code.is_empty()).then_some(code)
}

fn sip_host(uri: &Uri) -> Option<&str> {
    uri.as_sip().map(|u| u.host.as_str())
}

/// The lookups for `request`: each distinct domain host of the
/// Request-URI, To and From; if none is a domain name, the code suffix of
/// `username` (the digest username, or else the From or To user). Of a
/// response, the To and From alone.
pub fn tenant_lookups(request: &SipMessage, username: Option<&str>) -> Vec<TenantLookup> {
    let to = request.to().ok();
    let from = request.from().ok();
    let hosts = [
        request.request_uri().and_then(sip_host),
        to.as_ref().and_then(|t| sip_host(&t.uri)),
        from.as_ref().and_then(|f| sip_host(&f.uri)),
    ];
    let mut lookups = Vec::new();
    for host in hosts.into_iter().flatten() {
        if is_ip_host(host) {
            continue;
        }
        let lookup = TenantLookup::Domain(host.to_ascii_lowercase());
        if !lookups.contains(&lookup) {
            lookups.push(lookup);
        }
    }
    if lookups.is_empty() {
        // The caller's identity (digest username, From) before the To,
        // which in a call names the callee.
        let user_of = |addr: Option<&crate::message::NameAddr>| {
            addr.and_then(|a| a.uri.as_sip())
                .and_then(|u| u.user_name())
                .map(str::to_string)
        };
        let candidates = [
            username.map(str::to_string),
            user_of(from.as_ref()),
            user_of(to.as_ref()),
        ];
        let code = candidates
            .iter()
            .flatten()
            .find_map(|user| code_from_username(user));
        if let Some(code) = code {
            lookups.push(TenantLookup::Code(code.to_ascii_uppercase()));
        }
    }
    lookups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::parse_datagram;

    fn register(ruri: &str, to: &str) -> SipMessage {
        let text = format!(
            "REGISTER {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
             From: <{to}>;tag=a\r\nTo: <{to}>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
        );
        parse_datagram(text.as_bytes()).expect("valid REGISTER")
    }

    #[test]
    fn domain_host_wins() {
        let req = register("sip:Demo.PBX.local", "sip:100@demo.pbx.local");
        assert_eq!(
            tenant_lookups(&req, Some("100-OTHER")),
            vec![TenantLookup::Domain("demo.pbx.local".into())]
        );
    }

    #[test]
    fn ip_hosts_fall_back_to_username_code() {
        let req = register("sip:10.0.0.5", "sip:100-demo@10.0.0.5");
        assert_eq!(
            tenant_lookups(&req, None),
            vec![TenantLookup::Code("DEMO".into())]
        );
        assert_eq!(
            tenant_lookups(&req, Some("101_acme")),
            vec![TenantLookup::Code("ACME".into())]
        );
        let ipv6 = register("sip:[2001:db8::1]", "sip:100@[2001:db8::1]");
        assert!(tenant_lookups(&ipv6, None).is_empty());
    }
}
