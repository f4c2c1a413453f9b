//! Digest challenges the SBC issues on the nodes' behalf, sans-IO.
//!
//! A phone's first REGISTER or INVITE carries no credentials, and all a
//! node does with it is answer 401 or 407. Once a node has challenged a
//! phone's request, the SBC challenges the like of it itself, in the
//! realm and with the algorithms the node used, and with a nonce signed
//! by the edge key the nodes also accept ([`sip::auth::NonceKey`]). The
//! challenged request, its answer and the ACK of an INVITE's never reach
//! a node, and a scanner's requests without credentials cost the nodes
//! nothing. The SBC verifies nothing: the phone's answer goes to a node,
//! which checks the digest against its HA1s as it checks its own nonces'.
//!
//! "The like of it": a node's realm is the domain of the request's tenant
//! ([`sip::tenancy`]: the Request-URI, To and From hosts, or the tenant
//! code of the From or To user when all three are IP addresses), and a
//! node could spare some sources a challenge (a trunk's). So what is
//! learnt is keyed on the source address, the method and what names the
//! tenant ([`Likeness`]). It is kept for [`LEARNT_FOR`]: a node's changed
//! configuration shows within it.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, Registry};
use sip::auth::{
    challenge_values, Algorithm, ChallengeKind, DigestChallenge, DigestCredentials, NonceKey,
};
use sip::message::{new_tag, reason_phrase, Method, SipMessage, Uri};
use sip::tenancy::{is_ip_host, tenant_lookups, TenantLookup};

use crate::log_throttle::LogThrottle;

/// How long a node's challenge is repeated by the SBC.
pub const LEARNT_FOR: Duration = Duration::from_secs(60);
/// A nonce of ours younger than this is one a node with our key accepts
/// as fresh: well within the nodes' nonce lifetime (300 s) and clear of
/// the minute of clock skew they allow.
const SURELY_FRESH_SECS: u64 = 180;
/// At most this many challenges are remembered (a scanner making up
/// domains fills it with its own, oldest first out).
const LEARNT_KEPT: usize = 4096;
/// Starts the To tag of every final response the SBC makes itself, so
/// that the ACK of one is recognised and goes no further. Nodes' tags
/// are alphanumeric.
const OWN_TAG_PREFIX: &str = "sbc-";

/// A tag for a final response of the SBC's own.
pub fn own_tag() -> String {
    format!("{OWN_TAG_PREFIX}{}", new_tag())
}

/// The ACK of a final response the SBC made itself.
pub fn acks_own_response(request: &SipMessage) -> bool {
    request.method() == Some(&Method::Ack)
        && request
            .to_tag()
            .is_some_and(|tag| tag.starts_with(OWN_TAG_PREFIX))
}

/// What decides a node's challenge of a request without credentials:
/// where it came from, its method, and what names its tenant (whose
/// domain is the realm).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Likeness {
    source: IpAddr,
    method: Method,
    tenant: Vec<TenantLookup>,
}

impl Likeness {
    /// The likeness of a phone's request from `source`, if it is one whose
    /// challenge can be learnt: outside a dialog, with no credentials,
    /// able to be challenged (not ACK or CANCEL), naming its tenant, with
    /// a Request-URI that names no other host than its To (the node's
    /// response, which the likeness is learnt from, has no Request-URI).
    pub fn of(request: &SipMessage, source: IpAddr) -> Option<Likeness> {
        let method = request.method()?;
        if matches!(method, Method::Ack | Method::Cancel)
            || request.authorization().is_some()
            || request.proxy_authorization().is_some()
        {
            return None;
        }
        let to = request.to().ok()?;
        if to.tag().is_some() {
            return None;
        }
        let host_of = |uri: &Uri| uri.as_sip().map(|u| u.host.to_ascii_lowercase());
        let adds_nothing = match request.request_uri().and_then(host_of) {
            Some(host) => is_ip_host(&host) || Some(host) == host_of(&to.uri),
            None => true,
        };
        adds_nothing
            .then(|| Self::keyed(source, method, request))
            .flatten()
    }

    /// The key of `message`: the request (whose Request-URI adds nothing
    /// to its tenant), or the node's response to it.
    fn keyed(source: IpAddr, method: &Method, message: &SipMessage) -> Option<Likeness> {
        let tenant = tenant_lookups(message, None);
        (!tenant.is_empty()).then(|| Likeness {
            source,
            method: method.clone(),
            tenant,
        })
    }
}

/// A node's challenge, to repeat.
#[derive(Debug)]
struct Learnt {
    kind: ChallengeKind,
    realm: String,
    algorithms: Vec<Algorithm>,
    until: Instant,
}

pub struct EdgeChallenges {
    key: NonceKey,
    learnt: HashMap<Likeness, Learnt>,
    /// Oldest first: what to forget when full.
    order: VecDeque<(Likeness, Instant)>,
    /// `sbc_auth_challenges_total`, once registered.
    issued: Option<IntCounter>,
    /// `sbc_auth_nonces_refused_total`, once registered.
    refused: Option<IntCounter>,
    /// A node refusing our nonces refuses them all: logged once per
    /// interval.
    refused_log: LogThrottle,
}

impl EdgeChallenges {
    pub fn new(key: NonceKey) -> Self {
        EdgeChallenges {
            key,
            learnt: HashMap::new(),
            order: VecDeque::new(),
            issued: None,
            refused: None,
            refused_log: LogThrottle::default(),
        }
    }

    pub fn register_metrics(&mut self, registry: &Registry) -> Result<(), prometheus::Error> {
        let issued = IntCounter::new(
            "sbc_auth_challenges_total",
            "Digest challenges (401, 407) the SBC answered phones' requests without credentials \
             with itself, on the pbx-nodes' behalf",
        )?;
        registry.register(Box::new(issued.clone()))?;
        self.issued = Some(issued);
        let refused = IntCounter::new(
            "sbc_auth_nonces_refused_total",
            "Phones' answers to the SBC's challenges that a pbx-node found stale although the \
             nonce was fresh: that node lacks the SBC's edge nonce key, or its clock is off",
        )?;
        registry.register(Box::new(refused.clone()))?;
        self.refused = Some(refused);
        Ok(())
    }

    /// Whether `request`'s credentials answer a challenge of ours that a
    /// node sharing our key would find fresh (it is then marked, so that
    /// a stale verdict on it shows a node that does not share it).
    pub fn answers_fresh_challenge(&self, request: &SipMessage, unix_secs: u64) -> bool {
        request
            .proxy_authorization()
            .or_else(|| request.authorization())
            .and_then(|value| DigestCredentials::parse(value).ok())
            .and_then(|c| self.key.issued_at(&c.realm, &c.nonce))
            .is_some_and(|issued| unix_secs.abs_diff(issued) < SURELY_FRESH_SECS)
    }

    /// A node found stale an answer to a fresh challenge of ours
    /// ([`answers_fresh_challenge`](Self::answers_fresh_challenge)). The
    /// phone retries with the node's nonce, so calls go on a round trip
    /// later; what is wrong is the configuration.
    pub fn node_refused_nonce(&mut self, node: SocketAddr, now: Instant) {
        if let Some(refused) = &self.refused {
            refused.inc();
        }
        if let Some(unlogged) = self.refused_log.occurred(now) {
            tracing::error!(%node, refused_since_last_line = unlogged,
                "a pbx-node found the SBC's fresh nonce stale: give it the SBC's \
                 edge_nonce_key_file, and check that their clocks agree");
        }
    }

    /// Learns a node's 401 or 407 to a request from `source` that was
    /// [`Likeness::of`] something. A stale challenge, or one the SBC
    /// could not repeat exactly, teaches nothing.
    pub fn learn(&mut self, source: IpAddr, response: &SipMessage, now: Instant) {
        let Some(kind) = response.status().and_then(ChallengeKind::of_status) else {
            return;
        };
        let Ok(cseq) = response.cseq() else {
            return;
        };
        let Some(likeness) = Likeness::keyed(source, &cseq.method, response) else {
            return;
        };
        let mut realm = None;
        let mut algorithms = Vec::new();
        for value in response.headers.get_all(kind.challenge_header()) {
            let Ok(challenge) = DigestChallenge::parse(value) else {
                return;
            };
            if challenge.stale || realm.get_or_insert(challenge.realm.clone()) != &challenge.realm {
                return;
            }
            algorithms.push(challenge.algorithm);
        }
        let Some(realm) = realm else {
            return;
        };
        let until = now + LEARNT_FOR;
        self.forget_old(now);
        self.order.push_back((likeness.clone(), until));
        self.learnt.insert(
            likeness,
            Learnt {
                kind,
                realm,
                algorithms,
                until,
            },
        );
    }

    /// Forgets what expired, and the oldest while full.
    fn forget_old(&mut self, now: Instant) {
        while let Some((likeness, until)) = self.order.front() {
            if *until > now && self.order.len() < LEARNT_KEPT {
                break;
            }
            // A likeness learnt again since has a later entry of its own.
            if self.learnt.get(likeness).is_some_and(|l| l.until == *until) {
                self.learnt.remove(likeness);
            }
            self.order.pop_front();
        }
    }

    /// The challenge to answer `request` with, if a node's for its
    /// likeness is known. `unix_secs` stamps the nonce, as the nodes'
    /// clocks stamp theirs.
    pub fn challenge(
        &mut self,
        likeness: &Likeness,
        request: &SipMessage,
        now: Instant,
        unix_secs: u64,
    ) -> Option<SipMessage> {
        let learnt = self.learnt.get(likeness).filter(|l| l.until > now)?;
        let status = learnt.kind.status();
        let mut response = request.response_with_tag(status, reason_phrase(status), &own_tag());
        let nonce = self.key.nonce(&learnt.realm, unix_secs);
        for value in challenge_values(&learnt.realm, &nonce, &learnt.algorithms, false) {
            response.headers.push(learnt.kind.challenge_header(), value);
        }
        if let Some(issued) = &self.issued {
            issued.inc();
        }
        Some(response)
    }
}

/// A 401 or 407 saying the credentials were right but their nonce too
/// old (or one the node cannot check): no failed authentication.
pub fn is_stale(response: &SipMessage) -> bool {
    response
        .status()
        .and_then(ChallengeKind::of_status)
        .is_some_and(|kind| {
            response
                .headers
                .get_all(kind.challenge_header())
                .any(|value| DigestChallenge::parse(value).is_ok_and(|c| c.stale))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_UNIX: u64 = 1_800_000_000;
    const PHONE: [u8; 4] = [192, 0, 2, 10];

    fn parse(text: &str) -> SipMessage {
        sip::message::parse_datagram(text.replace('\n', "\r\n").as_bytes()).unwrap()
    }

    fn request(method: &str, uri: &str, to: &str, from: &str, extra: &str) -> SipMessage {
        parse(&format!(
            "{method} {uri} SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKa\n\
             Max-Forwards: 70\nFrom: <{from}>;tag=f\nTo: <{to}>\nCall-ID: c1\n\
             CSeq: 1 {method}\n{extra}Content-Length: 0\n\n"
        ))
    }

    fn invite() -> SipMessage {
        request(
            "INVITE",
            "sip:200@pbx.example.com",
            "sip:200@pbx.example.com",
            "sip:100@pbx.example.com",
            "",
        )
    }

    fn node_challenge(request: &SipMessage, status: u16, values: &[String]) -> SipMessage {
        let mut response = request.response_with_tag(status, reason_phrase(status), "nodetag");
        let kind = ChallengeKind::of_status(status).unwrap_or(ChallengeKind::Proxy);
        for value in values {
            response
                .headers
                .push(kind.challenge_header(), value.clone());
        }
        response
    }

    fn md5_only(realm: &str) -> Vec<String> {
        challenge_values(realm, "00", &[Algorithm::Md5], false)
    }

    #[test]
    fn what_a_node_challenged_the_sbc_challenges_alike_with_a_nonce_the_node_accepts() {
        let key = NonceKey::new(b"edge key of the cluster");
        let mut edge = EdgeChallenges::new(key.clone());
        let t0 = Instant::now();
        let source = IpAddr::from(PHONE);
        let first = invite();
        let likeness = Likeness::of(&first, source).expect("learnable");
        assert!(edge.challenge(&likeness, &first, t0, NOW_UNIX).is_none());
        edge.learn(
            source,
            &node_challenge(&first, 407, &md5_only("pbx.example.com")),
            t0,
        );

        let ours = edge
            .challenge(&likeness, &invite(), t0 + Duration::from_secs(1), NOW_UNIX)
            .expect("learnt");
        assert_eq!(ours.status(), Some(407));
        assert!(ours.to_tag().is_some_and(|t| t.starts_with(OWN_TAG_PREFIX)));
        let values = ours
            .headers
            .get_all("Proxy-Authenticate")
            .collect::<Vec<_>>();
        assert_eq!(values.len(), 1);
        let asked = DigestChallenge::parse(values[0]).unwrap();
        assert_eq!(
            (asked.realm.as_str(), asked.algorithm, asked.stale),
            ("pbx.example.com", Algorithm::Md5, false)
        );
        // The nonce is the edge key's, for that realm, stamped now.
        assert_eq!(
            key.issued_at("pbx.example.com", &asked.nonce),
            Some(NOW_UNIX)
        );
        // Its ACK is recognised as ours.
        let mut ack = request(
            "ACK",
            "sip:200@pbx.example.com",
            "sip:200@pbx.example.com",
            "sip:100@pbx.example.com",
            "",
        );
        ack.headers
            .set("To", ours.headers.get("To").unwrap().to_string());
        assert!(acks_own_response(&ack));
        assert!(!acks_own_response(&invite()));

        // A minute later the node is asked again.
        assert!(edge
            .challenge(&likeness, &invite(), t0 + LEARNT_FOR, NOW_UNIX)
            .is_none());
    }

    #[test]
    fn only_the_same_source_method_and_hosts_get_the_learnt_challenge() {
        let mut edge = EdgeChallenges::new(NonceKey::new(b"k"));
        let t0 = Instant::now();
        let source = IpAddr::from(PHONE);
        let register = request(
            "REGISTER",
            "sip:pbx.example.com",
            "sip:100@pbx.example.com",
            "sip:100@pbx.example.com",
            "",
        );
        let values = challenge_values(
            "pbx.example.com",
            "00",
            &[Algorithm::Sha256, Algorithm::Md5],
            false,
        );
        edge.learn(source, &node_challenge(&register, 401, &values), t0);
        let ours = edge
            .challenge(
                &Likeness::of(&register, source).unwrap(),
                &register,
                t0,
                NOW_UNIX,
            )
            .expect("learnt");
        assert_eq!(ours.status(), Some(401));
        let algorithms: Vec<_> = ours
            .headers
            .get_all("WWW-Authenticate")
            .map(|v| DigestChallenge::parse(v).unwrap().algorithm)
            .collect();
        assert_eq!(algorithms, [Algorithm::Sha256, Algorithm::Md5]);

        let elsewhere = IpAddr::from([198, 51, 100, 7]);
        let other_domain = request(
            "REGISTER",
            "sip:other.example.com",
            "sip:100@other.example.com",
            "sip:100@other.example.com",
            "",
        );
        for (request, source) in [
            (register.clone(), elsewhere),
            (invite(), source),
            (other_domain, source),
        ] {
            let likeness = Likeness::of(&request, source).unwrap();
            assert!(edge.challenge(&likeness, &request, t0, NOW_UNIX).is_none());
        }
    }

    #[test]
    fn requests_naming_no_tenant_or_another_host_are_not_learnt() {
        let source = IpAddr::from(PHONE);
        let no_tenant = request(
            "INVITE",
            "sip:200@203.0.113.5",
            "sip:200@203.0.113.5",
            "sip:100@203.0.113.5",
            "",
        );
        let other_uri_host = request(
            "INVITE",
            "sip:200@other.example.com",
            "sip:200@pbx.example.com",
            "sip:100@pbx.example.com",
            "",
        );
        let with_credentials = request(
            "INVITE",
            "sip:200@pbx.example.com",
            "sip:200@pbx.example.com",
            "sip:100@pbx.example.com",
            "Proxy-Authorization: Digest username=\"100\"\n",
        );
        let mut in_dialog = invite();
        in_dialog
            .headers
            .set("To", "<sip:200@pbx.example.com>;tag=t");
        for request in [no_tenant, other_uri_host, with_credentials, in_dialog] {
            assert_eq!(Likeness::of(&request, source), None);
        }
        // A Request-URI at an IP address adds nothing.
        let uri_at_ip = request(
            "INVITE",
            "sip:200@203.0.113.5",
            "sip:200@pbx.example.com",
            "sip:100@pbx.example.com",
            "",
        );
        assert_eq!(
            Likeness::of(&uri_at_ip, source),
            Likeness::of(&invite(), source)
        );
        // Phones given an IP address: the tenant code of the user, one
        // likeness for the tenant's extensions.
        let by_code = |from: &str| {
            let invite = request(
                "INVITE",
                "sip:200@203.0.113.5",
                "sip:200@203.0.113.5",
                from,
                "",
            );
            Likeness::of(&invite, source)
        };
        assert!(by_code("sip:100-DEMO@203.0.113.5").is_some());
        assert_eq!(
            by_code("sip:100-DEMO@203.0.113.5"),
            by_code("sip:101-DEMO@203.0.113.5")
        );
        assert_ne!(
            by_code("sip:100-DEMO@203.0.113.5"),
            by_code("sip:100-ACME@203.0.113.5")
        );
    }

    #[test]
    fn stale_or_mixed_challenges_teach_nothing_and_stale_is_no_failure() {
        let mut edge = EdgeChallenges::new(NonceKey::new(b"k"));
        let t0 = Instant::now();
        let source = IpAddr::from(PHONE);
        let likeness = Likeness::of(&invite(), source).unwrap();
        let stale = challenge_values("pbx.example.com", "00", &[Algorithm::Md5], true);
        let stale_response = node_challenge(&invite(), 407, &stale);
        assert!(is_stale(&stale_response));
        edge.learn(source, &stale_response, t0);
        let mut mixed = md5_only("pbx.example.com");
        mixed.extend(md5_only("other.example.com"));
        edge.learn(source, &node_challenge(&invite(), 407, &mixed), t0);
        edge.learn(source, &node_challenge(&invite(), 407, &[]), t0);
        edge.learn(
            source,
            &node_challenge(&invite(), 407, &["Basic realm=\"x\"".into()]),
            t0,
        );
        edge.learn(
            source,
            &node_challenge(&invite(), 403, &md5_only("pbx.example.com")),
            t0,
        );
        assert!(edge.challenge(&likeness, &invite(), t0, NOW_UNIX).is_none());
        assert!(!is_stale(&node_challenge(&invite(), 407, &md5_only("r"))));
    }

    #[test]
    fn only_an_answer_to_a_fresh_nonce_of_ours_is_marked() {
        let key = NonceKey::new(b"edge key");
        let edge = EdgeChallenges::new(key.clone());
        let answering = |nonce: &str| {
            request(
                "INVITE",
                "sip:200@pbx.example.com",
                "sip:200@pbx.example.com",
                "sip:100@pbx.example.com",
                &format!(
                    "Proxy-Authorization: Digest username=\"100\", realm=\"pbx.example.com\", \
                     nonce=\"{nonce}\", uri=\"sip:200@pbx.example.com\", response=\"00\"\n"
                ),
            )
        };
        let ours = key.nonce("pbx.example.com", NOW_UNIX);
        assert!(edge.answers_fresh_challenge(&answering(&ours), NOW_UNIX + 10));
        let later = NOW_UNIX + SURELY_FRESH_SECS;
        assert!(!edge.answers_fresh_challenge(&answering(&ours), later));
        let nodes = NonceKey::new(b"node secret").nonce("pbx.example.com", NOW_UNIX);
        assert!(!edge.answers_fresh_challenge(&answering(&nodes), NOW_UNIX));
        assert!(!edge.answers_fresh_challenge(&invite(), NOW_UNIX));
    }

    #[test]
    fn what_is_learnt_is_bounded() {
        let mut edge = EdgeChallenges::new(NonceKey::new(b"k"));
        let t0 = Instant::now();
        for i in 0..(LEARNT_KEPT as u32 + 100) {
            let source = IpAddr::from(i.to_be_bytes());
            edge.learn(source, &node_challenge(&invite(), 407, &md5_only("r")), t0);
        }
        assert!(edge.learnt.len() <= LEARNT_KEPT);
        assert!(edge.order.len() <= LEARNT_KEPT);
        // The newest is kept.
        let newest = IpAddr::from((LEARNT_KEPT as u32 + 99).to_be_bytes());
        let likeness = Likeness::of(&invite(), newest).unwrap();
        assert!(edge.challenge(&likeness, &invite(), t0, NOW_UNIX).is_some());
    }
}
