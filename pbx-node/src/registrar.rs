//! The registrar's decisions (RFC 3261 §10.3, RFC 3327 Path, RFC 5626
//! instance ids), sans IO: a REGISTER plus the extension and its current
//! bindings in, a plan of binding writes or a refusal out. The service
//! module does the authentication and the store reads and writes.

use std::net::IpAddr;

use ipnet::IpNet;
use sip::message::{Contact, NameAddr, SipMessage};

use crate::model::{Binding, Extension};
use crate::repo::{binding_key, BindingUpsert, StoredBinding};

/// The address a REGISTER came from as the device sent it: the packet's
/// source, or, when that is a trusted edge proxy (the SBC), the address
/// the proxy recorded in the device's Via (`received`, else its sent-by
/// host). `None` when a trusted proxy's request names no device address.
pub fn device_ip(
    request: &SipMessage,
    source: IpAddr,
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    if !trusted_proxies.iter().any(|net| net.contains(&source)) {
        return Some(source);
    }
    let vias = request.vias().ok()?;
    match vias.get(1) {
        // The proxy's own Via on top, the device's under it.
        Some(device) => device
            .param("received")
            .and_then(|p| p.value.as_deref())
            .unwrap_or(&device.host)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok(),
        // Sent from the proxy's host itself: no proxy in between.
        None => Some(source),
    }
}

/// Whether an extension's allowed registration networks admit the device;
/// its address (`device`) is only worked out when they restrict it.
pub fn registration_allowed(
    extension: &Extension,
    device: impl FnOnce() -> Option<IpAddr>,
) -> bool {
    let allowed = &extension.settings.allowed_registration_cidrs;
    allowed.is_empty() || device().is_some_and(|ip| allowed.iter().any(|net| net.contains(&ip)))
}

/// What a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactsChange {
    /// No Contact: report the current bindings.
    Query,
    /// `Contact: *` with `Expires: 0`.
    RemoveAll,
    Update(Vec<ContactEntry>),
}

/// One Contact of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactEntry {
    /// The contact without its `expires` parameter.
    pub contact: String,
    pub uri: String,
    pub instance: Option<String>,
    pub reg_id: Option<u32>,
    /// The `expires` parameter, if given.
    pub expires: Option<u32>,
}

impl ContactEntry {
    /// What identifies the device: its instance id (and reg-id, RFC 5626
    /// §6) when it has one, else the contact URI.
    fn identity(&self) -> String {
        match (&self.instance, self.reg_id) {
            (Some(instance), Some(reg_id)) => format!("instance:{instance};reg-id={reg_id}"),
            (Some(instance), None) => format!("instance:{instance}"),
            (None, _) => format!("uri:{}", self.uri),
        }
    }
}

/// The parts of a REGISTER the registrar acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// The user part of the To URI (the address of record).
    pub aor_user: String,
    pub call_id: String,
    pub cseq: u32,
    pub expires_header: Option<u32>,
    pub paths: Vec<String>,
    pub change: ContactsChange,
}

/// Why a REGISTER is refused, each mapping to one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    BadRequest(String),
    /// 423 with `Min-Expires`.
    IntervalTooBrief {
        min_expires: u32,
    },
    Forbidden(String),
    /// The same Call-ID with a CSeq not above the stored one (§10.3 step 7).
    OutOfOrder,
}

impl Refusal {
    /// The response to `request` for this refusal.
    pub fn response(&self, request: &SipMessage) -> SipMessage {
        match self {
            Refusal::BadRequest(reason) => sip::message::response_from_headers(
                &request.headers,
                400,
                &format!("Bad Request ({reason})"),
            ),
            Refusal::IntervalTooBrief { min_expires } => {
                let mut response = request.response(423);
                response
                    .headers
                    .push("Min-Expires", min_expires.to_string());
                response
            }
            Refusal::Forbidden(reason) => sip::message::response_from_headers(
                &request.headers,
                403,
                &format!("Forbidden ({reason})"),
            ),
            Refusal::OutOfOrder => sip::message::response_from_headers(
                &request.headers,
                500,
                "Server Internal Error (REGISTER out of order)",
            ),
        }
    }
}

fn bad(reason: impl Into<String>) -> Refusal {
    Refusal::BadRequest(reason.into())
}

fn contact_entry(address: &NameAddr) -> Result<ContactEntry, Refusal> {
    let contact = Contact::Address(address.clone());
    let expires = match contact.expires() {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => return Err(bad(e.0)),
        None => None,
    };
    let mut without_expires = address.clone();
    without_expires
        .params
        .retain(|p| !p.name.eq_ignore_ascii_case("expires"));
    Ok(ContactEntry {
        contact: without_expires.to_string(),
        uri: address.uri.to_string(),
        instance: contact.instance(),
        reg_id: contact.reg_id(),
        expires,
    })
}

/// Reads a validated REGISTER.
pub fn parse_register(request: &SipMessage) -> Result<RegisterRequest, Refusal> {
    let to = request.to().map_err(|e| bad(e.to_string()))?;
    let aor_user = to
        .uri
        .as_sip()
        .and_then(|u| u.user_name())
        .ok_or_else(|| bad("To URI has no user"))?
        .to_string();
    let call_id = request
        .call_id()
        .map_err(|e| bad(e.to_string()))?
        .to_string();
    let cseq = request.cseq().map_err(|e| bad(e.to_string()))?.seq;
    let expires_header = request.expires().map_err(|e| bad(e.to_string()))?;
    let paths = request
        .paths()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(|p| p.to_string())
        .collect();
    let contacts = request.contacts().map_err(|e| bad(e.to_string()))?;
    let change = if contacts.is_empty() {
        ContactsChange::Query
    } else if contacts.iter().any(|c| matches!(c, Contact::Wildcard)) {
        // RFC 3261 §10.3 step 6: `*` only alone and only with Expires: 0.
        if contacts.len() != 1 || expires_header != Some(0) {
            return Err(bad("Contact * must be alone and with Expires: 0"));
        }
        ContactsChange::RemoveAll
    } else {
        let entries = contacts
            .iter()
            .filter_map(Contact::address)
            .map(contact_entry)
            .collect::<Result<Vec<_>, _>>()?;
        ContactsChange::Update(entries)
    };
    Ok(RegisterRequest {
        aor_user,
        call_id,
        cseq,
        expires_header,
        paths,
        change,
    })
}

/// The writes one REGISTER causes and the bindings that result.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingPlan {
    pub upserts: Vec<BindingUpsert>,
    pub removals: Vec<StoredBinding>,
    /// Every binding after the writes, for the 200 OK.
    pub result: Vec<Binding>,
}

/// Decides what a REGISTER from `received_from` does to `existing`.
pub fn plan_bindings(
    request: &RegisterRequest,
    extension: &Extension,
    tenant_id: &str,
    existing: &[StoredBinding],
    received_from: &str,
    now_ms: u64,
) -> Result<BindingPlan, Refusal> {
    let entries = match &request.change {
        ContactsChange::Query => {
            return Ok(BindingPlan {
                result: existing.iter().map(|s| s.binding.clone()).collect(),
                ..BindingPlan::default()
            })
        }
        ContactsChange::RemoveAll => {
            if let Some(newer) = existing
                .iter()
                .find(|s| is_out_of_order(request, &s.binding))
            {
                tracing::debug!(key = %newer.key, "wildcard REGISTER older than a binding");
                return Err(Refusal::OutOfOrder);
            }
            return Ok(BindingPlan {
                removals: existing.to_vec(),
                ..BindingPlan::default()
            });
        }
        ContactsChange::Update(entries) => entries,
    };

    // Every expiry is checked before anything is changed (§10.3 step 7).
    let mut granted = Vec::with_capacity(entries.len());
    for entry in entries {
        let asked = entry
            .expires
            .or(request.expires_header)
            .unwrap_or(extension.default_expires);
        if asked != 0 && asked < extension.min_expires {
            return Err(Refusal::IntervalTooBrief {
                min_expires: extension.min_expires,
            });
        }
        granted.push(asked.min(extension.max_expires));
    }

    let mut plan = BindingPlan::default();
    let mut touched: Vec<String> = Vec::new();
    for (entry, expires) in entries.iter().zip(granted) {
        let key = binding_key(tenant_id, &extension.number, &entry.identity());
        if touched.contains(&key) {
            continue;
        }
        touched.push(key.clone());
        let previous = existing.iter().find(|s| s.key == key);
        if let Some(prev) = previous {
            if is_out_of_order(request, &prev.binding) {
                return Err(Refusal::OutOfOrder);
            }
        }
        if expires == 0 {
            plan.removals.extend(previous.cloned());
            continue;
        }
        plan.upserts.push(BindingUpsert {
            key,
            binding: Binding {
                contact: entry.contact.clone(),
                uri: entry.uri.clone(),
                instance: entry.instance.clone(),
                reg_id: entry.reg_id,
                path: request.paths.clone(),
                call_id: request.call_id.clone(),
                cseq: request.cseq,
                expires_secs: expires,
                expires_at_ms: now_ms.saturating_add(u64::from(expires) * 1000),
                received_from: received_from.to_string(),
            },
            previous: previous.cloned(),
        });
    }

    let max = usize::try_from(extension.max_contacts).unwrap_or(usize::MAX);
    if plan.upserts.len() > max {
        return Err(Refusal::Forbidden(format!("more than {max} contacts")));
    }
    let mut kept: Vec<&StoredBinding> = existing
        .iter()
        .filter(|s| !touched.contains(&s.key))
        .collect();
    let overflow = (kept.len() + plan.upserts.len()).saturating_sub(max);
    if overflow > 0 {
        if !extension.remove_existing_on_register {
            return Err(Refusal::Forbidden(format!("more than {max} contacts")));
        }
        // The bindings that would lapse soonest make room for the new ones.
        kept.sort_by_key(|s| s.binding.expires_at_ms);
        let dropped: Vec<&StoredBinding> = kept.drain(..overflow).collect();
        plan.removals.extend(dropped.into_iter().cloned());
    }
    plan.result = kept
        .into_iter()
        .map(|s| s.binding.clone())
        .chain(plan.upserts.iter().map(|u| u.binding.clone()))
        .collect();
    Ok(plan)
}

fn is_out_of_order(request: &RegisterRequest, stored: &Binding) -> bool {
    stored.call_id == request.call_id && request.cseq <= stored.cseq
}

/// The 200 OK listing every current binding with the seconds it has left.
pub fn ok_response(request: &SipMessage, bindings: &[Binding], now_ms: u64) -> SipMessage {
    let mut response = request.response(200);
    for binding in bindings {
        response.headers.push(
            "Contact",
            format!(
                "{};expires={}",
                binding.contact,
                binding.remaining_secs(now_ms)
            ),
        );
    }
    // RFC 3327 §5.3: the Path is echoed when the UA said it supports it.
    let supports_path = request
        .headers
        .list("Supported")
        .iter()
        .any(|o| o.eq_ignore_ascii_case("path"));
    if supports_path {
        for path in request.headers.get_all("Path") {
            response.headers.push("Path", path);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip::message::parse_datagram;

    const TENANT: &str = "t1";
    const NOW: u64 = 1_700_000_000_000;

    fn extension(max_contacts: u32, remove_existing: bool) -> Extension {
        Extension {
            number: "100".into(),
            display_name: "Alice".into(),
            username: "100-DEMO".into(),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
            max_contacts,
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            remove_existing_on_register: remove_existing,
            recording: Default::default(),
            settings: Default::default(),
        }
    }

    #[test]
    fn the_device_address_is_the_source_unless_a_trusted_proxy_names_it() {
        let via_sbc = |device_via: &str| {
            let text = format!(
                "REGISTER sip:demo.pbx.local SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKsbc\r\n\
                 Via: {device_via}\r\n\
                 From: <sip:100@demo.pbx.local>;tag=a\r\nTo: <sip:100@demo.pbx.local>\r\n\
                 Call-ID: d1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
            );
            parse_datagram(text.as_bytes()).expect("REGISTER")
        };
        let sbc: IpAddr = "10.0.0.5".parse().expect("ip");
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().expect("net")];
        let natted = via_sbc(
            "SIP/2.0/UDP 192.168.1.7:5060;branch=z9hG4bK1;received=198.51.100.9;rport=4444",
        );
        assert_eq!(
            device_ip(&natted, sbc, &trusted),
            Some("198.51.100.9".parse().expect("ip"))
        );
        let public = via_sbc("SIP/2.0/TLS [2001:db8::7]:5061;branch=z9hG4bK1");
        assert_eq!(
            device_ip(&public, sbc, &trusted),
            Some("2001:db8::7".parse().expect("ip"))
        );
        // From an untrusted source, what its Vias say does not count.
        assert_eq!(device_ip(&natted, sbc, &[]), Some(sbc));
        // The proxy's host registering itself.
        let direct = register("d2", 1, "");
        assert_eq!(device_ip(&direct, sbc, &trusted), Some(sbc));
        let named = via_sbc("SIP/2.0/UDP phone.example;branch=z9hG4bK1");
        assert_eq!(device_ip(&named, sbc, &trusted), None);
    }

    #[test]
    fn allowed_networks_admit_only_their_devices() {
        let mut phone = extension(1, true);
        assert!(
            registration_allowed(&phone, || None),
            "empty = from anywhere"
        );
        phone.settings.allowed_registration_cidrs = vec![
            "198.51.100.0/24".parse().expect("net"),
            "2001:db8::/32".parse().expect("net"),
        ];
        let at = |ip: &str| {
            let ip: IpAddr = ip.parse().expect("ip");
            move || Some(ip)
        };
        assert!(registration_allowed(&phone, at("198.51.100.9")));
        assert!(registration_allowed(&phone, at("2001:db8::7")));
        assert!(!registration_allowed(&phone, at("203.0.113.1")));
        assert!(
            !registration_allowed(&phone, || None),
            "an unknown address is not allowed"
        );
    }

    fn register(call_id: &str, cseq: u32, extra: &str) -> SipMessage {
        let text = format!(
            "REGISTER sip:demo.pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:100@demo.pbx.local>;tag=a\r\nTo: <sip:100@demo.pbx.local>\r\n\
             Call-ID: {call_id}\r\nCSeq: {cseq} REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        parse_datagram(text.as_bytes()).expect("valid REGISTER")
    }

    fn plan(
        msg: &SipMessage,
        ext: &Extension,
        existing: &[StoredBinding],
    ) -> Result<BindingPlan, Refusal> {
        let request = parse_register(msg)?;
        plan_bindings(&request, ext, TENANT, existing, "udp:192.0.2.1:5060", NOW)
    }

    /// Stores the upserts of a plan as the driver would.
    fn stored(plan: &BindingPlan) -> Vec<StoredBinding> {
        plan.upserts
            .iter()
            .enumerate()
            .map(|(i, u)| StoredBinding {
                key: u.key.clone(),
                lease: Some(i as u64 + 1),
                mod_revision: i as u64 + 1,
                binding: u.binding.clone(),
            })
            .collect()
    }

    #[test]
    fn expiry_defaults_clamps_and_header() {
        let ext = extension(5, false);
        let msg = register(
            "c1",
            1,
            "Contact: <sip:100@192.0.2.1:5060>\r\nContact: <sip:100@192.0.2.2>;expires=99999\r\n",
        );
        let p = plan(&msg, &ext, &[]).expect("plan");
        let expiries: Vec<u32> = p.upserts.iter().map(|u| u.binding.expires_secs).collect();
        assert_eq!(expiries, vec![3600, 7200]);
        assert_eq!(p.upserts[0].binding.expires_at_ms, NOW + 3_600_000);

        let msg = register("c1", 1, "Contact: <sip:100@192.0.2.1>\r\nExpires: 120\r\n");
        let p = plan(&msg, &ext, &[]).expect("plan");
        assert_eq!(p.upserts[0].binding.expires_secs, 120);
    }

    #[test]
    fn too_brief_gets_423_with_min_expires() {
        let ext = extension(5, false);
        let msg = register("c1", 1, "Contact: <sip:100@192.0.2.1>;expires=30\r\n");
        let refusal = plan(&msg, &ext, &[]).expect_err("too brief");
        assert_eq!(refusal, Refusal::IntervalTooBrief { min_expires: 60 });
        let response = refusal.response(&msg);
        assert_eq!(response.status(), Some(423));
        assert_eq!(response.headers.get("Min-Expires"), Some("60"));
    }

    #[test]
    fn wildcard_removes_all_and_needs_expires_zero() {
        let ext = extension(5, false);
        let first = plan(
            &register(
                "c1",
                1,
                "Contact: <sip:100@192.0.2.1>\r\nContact: <sip:100@192.0.2.2>\r\n",
            ),
            &ext,
            &[],
        )
        .expect("plan");
        let existing = stored(&first);
        let p = plan(
            &register("c2", 1, "Contact: *\r\nExpires: 0\r\n"),
            &ext,
            &existing,
        )
        .expect("plan");
        assert_eq!(p.removals, existing);
        assert!(p.result.is_empty());
        let refusal = plan(&register("c2", 1, "Contact: *\r\n"), &ext, &existing)
            .expect_err("needs Expires 0");
        assert!(matches!(refusal, Refusal::BadRequest(_)));
    }

    #[test]
    fn query_lists_bindings_without_changes() {
        let ext = extension(5, false);
        let first = plan(
            &register("c1", 1, "Contact: <sip:100@192.0.2.1>\r\n"),
            &ext,
            &[],
        )
        .expect("plan");
        let existing = stored(&first);
        let p = plan(&register("c9", 1, ""), &ext, &existing).expect("plan");
        assert!(p.upserts.is_empty() && p.removals.is_empty());
        assert_eq!(p.result.len(), 1);
        let response = ok_response(&register("c9", 1, ""), &p.result, NOW + 1_500);
        assert_eq!(
            response.headers.get("Contact"),
            Some("<sip:100@192.0.2.1>;expires=3599")
        );
    }

    #[test]
    fn refresh_replaces_binding_of_same_instance_and_keeps_path() {
        let ext = extension(5, false);
        let first = plan(
            &register(
                "c1",
                1,
                "Contact: <sip:100@192.0.2.1:5060>;+sip.instance=\"<urn:uuid:1>\"\r\nPath: <sip:sbc.example;lr>\r\n",
            ),
            &ext,
            &[],
        )
        .expect("plan");
        assert_eq!(
            first.upserts[0].binding.instance.as_deref(),
            Some("<urn:uuid:1>")
        );
        assert_eq!(
            first.upserts[0].binding.path,
            vec!["<sip:sbc.example;lr>".to_string()]
        );
        let existing = stored(&first);
        // Same device, new address (e.g. after a NAT rebinding).
        let p = plan(
            &register(
                "c1",
                2,
                "Contact: <sip:100@192.0.2.9:5060>;+sip.instance=\"<urn:uuid:1>\"\r\n",
            ),
            &ext,
            &existing,
        )
        .expect("plan");
        assert_eq!(p.upserts.len(), 1);
        assert_eq!(p.upserts[0].key, existing[0].key);
        assert_eq!(p.upserts[0].previous.as_ref(), Some(&existing[0]));
        assert_eq!(p.result.len(), 1);
        assert_eq!(p.result[0].uri, "sip:100@192.0.2.9:5060");
    }

    #[test]
    fn out_of_order_cseq_is_refused() {
        let ext = extension(5, false);
        let first = plan(
            &register("c1", 5, "Contact: <sip:100@192.0.2.1>\r\n"),
            &ext,
            &[],
        )
        .expect("plan");
        let existing = stored(&first);
        let refusal = plan(
            &register("c1", 5, "Contact: <sip:100@192.0.2.1>\r\n"),
            &ext,
            &existing,
        )
        .expect_err("same CSeq");
        assert_eq!(refusal, Refusal::OutOfOrder);
    }

    #[test]
    fn max_contacts_refuses_or_removes_soonest_expiring() {
        let strict = extension(2, false);
        let first = plan(
            &register(
                "c1",
                1,
                "Contact: <sip:100@192.0.2.1>;expires=100\r\nContact: <sip:100@192.0.2.2>\r\n",
            ),
            &strict,
            &[],
        )
        .expect("plan");
        let existing = stored(&first);
        let third = register("c2", 1, "Contact: <sip:100@192.0.2.3>\r\n");
        let refusal = plan(&third, &strict, &existing).expect_err("over max");
        assert_eq!(refusal.response(&third).status(), Some(403));

        let lenient = extension(2, true);
        let p = plan(&third, &lenient, &existing).expect("plan");
        assert_eq!(p.removals.len(), 1);
        assert_eq!(p.removals[0].binding.uri, "sip:100@192.0.2.1");
        let uris: Vec<&str> = p.result.iter().map(|b| b.uri.as_str()).collect();
        assert_eq!(uris, vec!["sip:100@192.0.2.2", "sip:100@192.0.2.3"]);
    }

    #[test]
    fn expires_zero_removes_one_binding() {
        let ext = extension(5, false);
        let first = plan(
            &register(
                "c1",
                1,
                "Contact: <sip:100@192.0.2.1>\r\nContact: <sip:100@192.0.2.2>\r\n",
            ),
            &ext,
            &[],
        )
        .expect("plan");
        let existing = stored(&first);
        let p = plan(
            &register("c1", 2, "Contact: <sip:100@192.0.2.1>;expires=0\r\n"),
            &ext,
            &existing,
        )
        .expect("plan");
        assert_eq!(p.removals, vec![existing[0].clone()]);
        assert_eq!(p.result, vec![existing[1].binding.clone()]);
    }
}
