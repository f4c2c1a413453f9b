//! The SBC's signalling core, sans-IO: fed messages from phones (with the
//! flow they came over) and from pbx-nodes, and time; returns where to
//! send what. It is a proxy that hides the inside:
//!
//! * **Phone → node.** New dialogs and registrations go to a healthy node
//!   ([`Dispatcher`]); in-dialog requests go to the node named by the token
//!   in their Request-URI. We add our Via (carrying the flow token, so the
//!   response finds its way back statelessly), a Path with the flow token on
//!   REGISTER (RFC 3327, RFC 5626 §5.1), and replace the phone's Contact in
//!   dialogs by one at our internal address whose token holds the flow and
//!   the phone's own Contact: whichever node sends the next in-dialog
//!   request, it reaches us and goes out over the phone's own connection.
//! * **Node → phone.** The top Route (the Path) or the Request-URI (a
//!   rewritten Contact) names the flow. Every Via of the inside is taken off
//!   and kept here until the response, so the phone sees one Via, ours; the
//!   node's Contact becomes a node token at our public address; Record-Route
//!   and Path never leave. SDP is re-addressed to our media relay on both
//!   sides ([`MediaAnchor`]), so no internal address leaves in any header or body.
//!
//! * **Challenges.** A request without credentials that a node challenged
//!   the like of gets the same challenge from us ([`EdgeChallenges`]).
//!
//! Call-IDs are the nodes' own, which are random tokens with no address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts, Registry};
use sha2::{Digest, Sha256};
use sip::message::{
    parse_name_addr, reason_phrase, response_from_headers, Headers, Method, SipMessage, Uri,
};
use sip::transport::Transport;

use crate::challenge::{acks_own_response, own_tag, EdgeChallenges, Likeness};
use crate::dispatch::{Dispatcher, NodeChange, Probe};
use crate::keepalive::Keepalives;
use crate::log_throttle::LogThrottle;
use crate::token::{Flow, TokenKey};

/// Where we are, as each side must see us.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Our SIP address toward the pbx-nodes (UDP).
    pub internal: SocketAddr,
    /// The host phones see in our Via and Contact (public IP or name).
    pub public_host: String,
    /// Our public port for each transport phones use.
    pub public_ports: PublicPorts,
    /// How often a phone registered over UDP gets a keepalive; zero = never.
    pub udp_keepalive_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicPorts {
    pub udp: u16,
    pub tcp: u16,
    pub tls: u16,
    pub ws: u16,
    pub wss: u16,
}

impl PublicPorts {
    fn of(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tcp => self.tcp,
            Transport::Tls => self.tls,
            Transport::Ws => self.ws,
            Transport::Wss => self.wss,
        }
    }
}

/// Which way an SDP body is going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From a phone to a node.
    Inward,
    /// From a node to a phone.
    Outward,
}

/// What becomes of an SDP body on its way through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewritten {
    /// Send this body instead.
    Body(Vec<u8>),
    /// Pass the body as it is (not something the relay can anchor).
    AsIs,
    /// The body cannot be given to its recipient (a browser's offer
    /// without G.711, or a node's SDP without audio, which cannot be
    /// re-addressed): a request carrying it gets 488.
    Unacceptable,
    /// No relay could be started for the call (its port range or the
    /// process's open files are exhausted): a request carrying it gets
    /// 503. Passed on as it is, the body would take the media around the
    /// relay and show a node's address to the phone.
    NoRelay,
}

/// The media relay, as signalling steers it.
pub trait MediaAnchor {
    /// An SDP body of call `call_id` going `direction`, re-addressed to our
    /// relay's side facing its recipient; `phone` is the transport of the
    /// phone's flow (a browser's is WS or WSS).
    fn rewrite(
        &mut self,
        call_id: &str,
        direction: Direction,
        phone: Transport,
        body: &[u8],
    ) -> Rewritten;
    /// A 2xx answered an INVITE of the call.
    fn answered(&mut self, call_id: &str);
    /// An INVITE of the call was challenged (401 or 407): the phone will
    /// resubmit it with credentials, with the same Call-ID and SDP, so its
    /// relay may wait for that (until [`failed`](Self::failed)).
    fn challenged(&mut self, call_id: &str);
    /// An INVITE of the call failed: the call ends unless it was answered.
    fn failed(&mut self, call_id: &str);
    /// The call ended (BYE).
    fn end(&mut self, call_id: &str);
}

#[derive(Debug)]
pub enum Action {
    /// Send to a phone over its flow; if the flow is gone, send
    /// `if_flow_gone`'s response back to its node.
    ToPhone {
        flow: Flow,
        message: SipMessage,
        if_flow_gone: Option<FlowGone>,
    },
    ToNode {
        node: usize,
        message: SipMessage,
    },
    /// A node went up or down (for logs and metrics).
    Node(NodeChange),
    /// Send a keepalive ([`crate::keepalive::PING`]) over UDP to a
    /// registered phone, so its NAT keeps the mapping.
    Keepalive(SocketAddr),
    /// A phone's request that carried credentials was answered: refused
    /// (401, 407, 403: a failed authentication, what bans count) or not.
    /// A first challenge, to a request without credentials, is neither;
    /// a stale one (right credentials, old nonce) is no failure.
    Authenticated {
        source: std::net::IpAddr,
        failed: bool,
    },
}

/// A node's request to a phone, as a 430 Flow Failed (RFC 5626 §5.3)
/// would answer it: built only if the flow is gone, which is rare, from
/// the few headers a response copies.
#[derive(Debug)]
pub struct FlowGone {
    pub node: usize,
    request: Headers,
}

impl FlowGone {
    pub fn response(&self) -> SipMessage {
        response_from_headers(&self.request, 430, reason_phrase(430))
    }
}

/// The inside's Via stack of a request we sent to a phone.
#[derive(Debug)]
struct Hidden {
    vias: Vec<String>,
    node: usize,
    until: Instant,
    /// The Call-ID of an INVITE: if the call was not answered when the
    /// entry expires, its relay is given up.
    invite_of: Option<String>,
    /// A call to a phone (an INVITE outside a dialog) whose outcome is
    /// not counted yet.
    call_pending: bool,
}

/// Which node has a phone's INVITE transaction (outside a dialog), so its
/// retransmissions, its CANCEL, the ACK of its failure and its
/// resubmission after a challenge reach that node even when the
/// dispatcher would now pick another (the node started draining, or a
/// node came back up and the hash moved the Call-ID). When it expires an
/// unanswered call's relay is given up: a node that never answered (it
/// died, or dropped the INVITE under overload) would otherwise hold the
/// relay's ports for the hour of silence a lost BYE waits for.
#[derive(Debug)]
struct PhoneInvite {
    node: usize,
    until: Instant,
    call: CallState,
}

/// Where a phone's call stands for `sbc_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// No final response yet: if the transaction ends so, `no_response`.
    Pending,
    /// Challenged: the phone's resubmission makes it pending again; if
    /// none comes, it was no call (a scanner's INVITE is challenged too).
    Challenged,
    /// Its outcome is counted; retransmitted finals are not counted again.
    Counted,
}

/// Which way a call crosses the SBC, for `sbc_calls_total`.
#[derive(Debug, Clone, Copy)]
enum CallDirection {
    /// A phone's INVITE to the PBX.
    FromPhone,
    /// A pbx-node's INVITE to a phone.
    ToPhone,
}

impl CallDirection {
    fn label(self) -> &'static str {
        match self {
            CallDirection::FromPhone => "from_phone",
            CallDirection::ToPhone => "to_phone",
        }
    }
}

/// What a response to an INVITE says of its call: for the media anchor
/// and for `sbc_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallProgress {
    Provisional,
    /// 401 or 407: the resubmission is the same call.
    Challenged,
    Answered,
    /// Any other final response, and the outcome it counts as.
    Failed(&'static str),
}

impl CallProgress {
    fn of(status: u16) -> CallProgress {
        CallProgress::Failed(match status {
            ..200 => return CallProgress::Provisional,
            200..=299 => return CallProgress::Answered,
            401 | 407 => return CallProgress::Challenged,
            486 | 600 => "busy",
            408 | 480 => "no_answer",
            487 => "cancelled",
            500..=599 => "failed",
            _ => "rejected",
        })
    }

    /// The outcome a final response (not a challenge) counts as.
    fn outcome(self) -> Option<&'static str> {
        match self {
            CallProgress::Answered => Some("answered"),
            CallProgress::Failed(outcome) => Some(outcome),
            CallProgress::Provisional | CallProgress::Challenged => None,
        }
    }
}

/// A call whose INVITE transaction ended with no final response.
const NO_RESPONSE: &str = "no_response";

/// How long a node→phone transaction's Vias are kept: the longest an
/// INVITE may ring, then 2xx retransmissions.
const HIDDEN_INVITE: Duration = Duration::from_secs(300);
/// A phone's INVITE with no answer from the node, not even its immediate
/// 100 Trying, for Timer B (64·T1) is dead.
const TIMER_B: Duration = Duration::from_secs(32);
const HIDDEN_OTHER: Duration = Duration::from_secs(40);
const PROBE_CALL_ID: &str = "sbc-probe-";
/// Retry-After of the SBC's own 503s (no healthy node, no relay): both
/// are states that pass within seconds.
const RETRY_AFTER_SECS: &str = "5";

pub struct Proxy<M> {
    key: TokenKey,
    config: ProxyConfig,
    pub dispatcher: Dispatcher,
    pub media: M,
    hidden: HashMap<(String, String), Hidden>,
    /// Phones' INVITE transactions by Call-ID.
    invites: HashMap<String, PhoneInvite>,
    pub keepalives: Keepalives,
    /// `sbc_calls_total`, once registered.
    calls: Option<IntCounterVec>,
    /// While no node is up every phone's request gets the 503: logged
    /// once per interval (the node gauges tell the rest).
    no_node_log: LogThrottle,
    /// Challenges made here on the nodes' behalf, when they accept our
    /// nonces.
    challenges: Option<EdgeChallenges>,
}

/// Records where the phone's request really came from in its Via, as a
/// server transport must (RFC 3261 §18.2.1, RFC 3581 `rport`): the nodes
/// trust this from the SBC to check an extension's allowed registration
/// networks. A `received` the phone wrote itself is replaced. Returns the
/// Via's branch.
fn stamp_source(request: &mut SipMessage, source: SocketAddr) -> Option<String> {
    let top = request.headers.pop_first("Via")?;
    let (stamped, branch) = match sip::message::syntax::parse_via(&top) {
        Ok(mut via) => {
            via.set_param("received", Some(source.ip().to_string()));
            if via.param("rport").is_some() {
                via.set_param("rport", Some(source.port().to_string()));
            }
            let branch = via.branch().map(str::to_string);
            (via.to_string(), branch)
        }
        // Validation let it through; leave what cannot be parsed as it is.
        Err(_) => (top, None),
    };
    request.headers.push_front("Via", stamped);
    branch
}

/// `z9hG4bK` and a hash of what identifies the transaction upstream, so a
/// retransmission, the CANCEL and the non-2xx ACK of a request get the same
/// branch as the request itself (RFC 3261 §16.11).
fn derived_branch(parts: &[&str]) -> String {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    // Written digit by digit: a `format!` per byte was a dozen
    // allocations on every message through the proxy.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut branch = String::with_capacity(7 + 24);
    branch.push_str("z9hG4bK");
    for byte in digest.iter().take(12) {
        branch.push(char::from(HEX[usize::from(byte >> 4)]));
        branch.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    branch
}

/// A final response of our own: its ACK, tagged so, goes no further.
fn reply(request: &SipMessage, status: u16) -> SipMessage {
    request.response_with_tag(status, reason_phrase(status), &own_tag())
}

fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A refusal of the SBC's own, to either side: a 503 says when to try
/// again.
fn own_refusal(mut response: SipMessage) -> SipMessage {
    if response.status() == Some(503) {
        response.headers.push("Retry-After", RETRY_AFTER_SECS);
    }
    response
}

/// An INVITE outside a dialog: a call, as `sbc_calls_total` counts them.
fn opens_call(request: &SipMessage) -> bool {
    request.method() == Some(&Method::Invite) && request.to_tag().is_none()
}

fn is_sdp(message: &SipMessage) -> bool {
    message.content_type().is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
    }) && !message.body().is_empty()
}

/// The user part of a SIP URI `uri` if its host:port is `host`/`port`.
fn user_at<'a>(uri: &'a Uri, host: &str, port: u16) -> Option<&'a str> {
    let sip = uri.as_sip()?;
    let host_matches = sip.host.eq_ignore_ascii_case(host)
        || sip.host.trim_matches(['[', ']']) == host.trim_matches(['[', ']']);
    (host_matches && sip.port.unwrap_or(5060) == port)
        .then_some(sip.user.as_deref())
        .flatten()
}

fn transport_param(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
        Transport::Ws => ";transport=ws",
        Transport::Wss => ";transport=wss",
    }
}

impl<M: MediaAnchor> Proxy<M> {
    pub fn new(key: TokenKey, config: ProxyConfig, dispatcher: Dispatcher, media: M) -> Self {
        Proxy {
            key,
            keepalives: Keepalives::new(config.udp_keepalive_interval),
            config,
            dispatcher,
            media,
            hidden: HashMap::new(),
            invites: HashMap::new(),
            calls: None,
            no_node_log: LogThrottle::default(),
            challenges: None,
        }
    }

    /// Challenges phones' requests itself once a node has challenged
    /// their like ([`crate::challenge`]).
    pub fn with_edge_challenges(mut self, challenges: EdgeChallenges) -> Self {
        self.challenges = Some(challenges);
        self
    }

    /// Exposes the calls through the SBC by direction and outcome in
    /// `registry`.
    pub fn register_metrics(&mut self, registry: &Registry) -> Result<(), prometheus::Error> {
        let calls = IntCounterVec::new(
            Opts::new(
                "sbc_calls_total",
                "Calls (INVITEs outside a dialog) through the SBC by direction (from_phone, \
                 to_phone) and outcome: answered, busy, no_answer, cancelled, rejected (other \
                 3xx, 4xx, 6xx), failed (5xx, and no pbx-node to take it), no_response (no \
                 final response before the transaction ended)",
            ),
            &["direction", "outcome"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        self.calls = Some(calls);
        if let Some(challenges) = &mut self.challenges {
            challenges.register_metrics(registry)?;
        }
        Ok(())
    }

    fn count_calls(&self, direction: CallDirection, outcome: &str, count: u64) {
        if let Some(calls) = self.calls.as_ref().filter(|_| count > 0) {
            calls
                .with_label_values(&[direction.label(), outcome])
                .inc_by(count);
        }
    }

    fn internal_host(&self) -> String {
        match self.config.internal {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        }
    }

    /// A message from a phone, validated by the transport driver.
    pub fn from_phone(&mut self, flow: Flow, message: SipMessage, now: Instant) -> Vec<Action> {
        if message.is_request() {
            self.request_from_phone(flow, message, now)
        } else {
            self.response_from_phone(flow, message, now)
        }
    }

    /// A message from the node at `source`.
    pub fn from_node(
        &mut self,
        source: SocketAddr,
        message: SipMessage,
        now: Instant,
    ) -> Vec<Action> {
        let Some(node) = self.dispatcher.node_at(source) else {
            tracing::warn!(%source, "SIP from an address that is no configured node: dropped");
            return Vec::new();
        };
        // Whatever a node says shows it alive (an overloaded node answers
        // its probes late, not its calls).
        let up = self.dispatcher.heard_from(node, now).map(Action::Node);
        let mut actions = if message.is_request() {
            self.request_from_node(node, message, now)
        } else {
            self.response_from_node(node, message, now)
        };
        actions.extend(up);
        actions
    }

    /// Decrements Max-Forwards; `false` when it was exhausted.
    fn forward_hop(message: &mut SipMessage) -> bool {
        match message.max_forwards() {
            Ok(Some(0)) => false,
            Ok(Some(n)) => {
                message.headers.set("Max-Forwards", (n - 1).to_string());
                true
            }
            _ => {
                message.headers.set("Max-Forwards", "70");
                true
            }
        }
    }

    /// The node for a phone's request outside a dialog: the one that has
    /// the Call-ID's INVITE transaction while it is up, else the
    /// dispatcher's pick (a healthy node that is not draining).
    fn node_outside_dialog(
        &mut self,
        call_id: &str,
        method: &Method,
        now: Instant,
    ) -> Option<usize> {
        let invite = *method == Method::Invite;
        if let Some(known) = self.invites.get_mut(call_id) {
            if self.dispatcher.is_healthy(known.node) {
                if invite {
                    // The resubmission after a challenge starts anew.
                    known.until = known.until.max(now + TIMER_B);
                    if known.call == CallState::Challenged {
                        known.call = CallState::Pending;
                    }
                }
                return Some(known.node);
            }
        }
        let node = self.dispatcher.pick(call_id)?;
        self.dispatcher.dispatched(node, method.as_str());
        if invite {
            self.invites.insert(
                call_id.to_string(),
                PhoneInvite {
                    node,
                    until: now + TIMER_B,
                    call: CallState::Pending,
                },
            );
        }
        Some(node)
    }

    fn request_from_phone(
        &mut self,
        flow: Flow,
        mut request: SipMessage,
        now: Instant,
    ) -> Vec<Action> {
        let Some(method) = request.method().cloned() else {
            return Vec::new();
        };
        let answer = |status: u16, request: &SipMessage| {
            if method == Method::Ack {
                return Vec::new();
            }
            vec![Action::ToPhone {
                flow,
                message: own_refusal(reply(request, status)),
                if_flow_gone: None,
            }]
        };
        if acks_own_response(&request) {
            return Vec::new();
        }
        let new_call = opens_call(&request);
        if !Self::forward_hop(&mut request) {
            return answer(483, &request);
        }
        // Outside a dialog and without credentials: if a node challenged
        // its like, we do; else the node's challenge is learnt.
        let learnable = self
            .challenges
            .as_ref()
            .and_then(|_| Likeness::of(&request, flow.remote.ip()));
        if let (Some(challenges), Some(likeness)) = (&mut self.challenges, &learnable) {
            if let Some(challenge) = challenges.challenge(likeness, &request, now, unix_now_secs())
            {
                return vec![Action::ToPhone {
                    flow,
                    message: challenge,
                    if_flow_gone: None,
                }];
            }
        }
        let call_id = request.call_id().unwrap_or_default().to_string();
        // A phone with us as outbound proxy names us in a Route: consumed.
        let public_port = self.config.public_ports.of(flow.transport);
        while let Some(top) = request.headers.list("Route").first().copied() {
            let ours = parse_name_addr(top).is_ok_and(|r| {
                r.uri
                    .as_sip()
                    .is_some_and(|u| u.host.eq_ignore_ascii_case(&self.config.public_host))
            });
            if !ours {
                break;
            }
            request.headers.pop_first("Route");
        }
        // In-dialog: the Request-URI is a node token we handed out.
        let in_dialog = request
            .request_uri()
            .and_then(|uri| user_at(uri, &self.config.public_host, public_port))
            .and_then(|user| self.key.open_node_contact(user));
        let node = match in_dialog {
            Some((node, user, params)) => {
                let Some(addr) = self.dispatcher.addr(node) else {
                    return answer(404, &request);
                };
                let uri = format!("sip:{user}@{addr}{params}");
                match uri.parse() {
                    Ok(uri) => set_request_uri(&mut request, uri),
                    Err(_) => return answer(400, &request),
                }
                node
            }
            None => match self.node_outside_dialog(&call_id, &method, now) {
                Some(node) => node,
                None => {
                    if let Some(unlogged) = self.no_node_log.occurred(now) {
                        tracing::warn!(%call_id, refused_since_last_line = unlogged,
                            "no healthy pbx-node: 503");
                    }
                    if method == Method::Invite {
                        self.count_calls(CallDirection::FromPhone, "failed", 1);
                    }
                    return answer(503, &request);
                }
            },
        };
        let top_branch = stamp_source(&mut request, flow.remote).unwrap_or_default();
        let flow_token = self.key.flow_token(&flow);
        let branch = derived_branch(&[&top_branch, &flow_token]);
        // Marks a request with credentials, so its answer can be told to
        // the guard without keeping state.
        let credentials =
            request.authorization().is_some() || request.proxy_authorization().is_some();
        // ... and one answering a fresh challenge of ours.
        let ours_fresh = credentials
            && self
                .challenges
                .as_ref()
                .is_some_and(|c| c.answers_fresh_challenge(&request, unix_now_secs()));
        request.headers.push_front(
            "Via",
            format!(
                "SIP/2.0/UDP {};branch={branch};ft={flow_token}{}{}{}",
                self.config.internal,
                if credentials { ";cr" } else { "" },
                if ours_fresh { ";cn" } else { "" },
                if learnable.is_some() { ";ch" } else { "" }
            ),
        );
        if method == Method::Register {
            request.headers.push_front(
                "Path",
                format!("<sip:{flow_token}@{};lr;ob>", self.config.internal),
            );
            if !request
                .headers
                .list("Supported")
                .iter()
                .any(|t| t.eq_ignore_ascii_case("path"))
            {
                request.headers.push("Supported", "path");
            }
        } else {
            self.rewrite_phone_contact(&flow, &mut request);
        }
        if let Err(status) =
            self.anchor_sdp(&call_id, Direction::Inward, flow.transport, &mut request)
        {
            if new_call {
                self.count_calls(CallDirection::FromPhone, "failed", 1);
            }
            return answer(status, &request);
        }
        if method == Method::Bye {
            self.media.end(&call_id);
        }
        vec![Action::ToNode {
            node,
            message: request,
        }]
    }

    /// The phone's Contact as the nodes must see it: at our internal
    /// address, with its flow and its own URI in the token.
    fn rewrite_phone_contact(&self, flow: &Flow, message: &mut SipMessage) {
        let Some(contact) = message.headers.get("Contact") else {
            return;
        };
        let Ok(address) = parse_name_addr(contact) else {
            return;
        };
        let token = self.key.flow_contact_token(flow, &address.uri.to_string());
        message
            .headers
            .set("Contact", format!("<sip:{token}@{}>", self.config.internal));
    }

    /// The node's Contact as phones must see it: a token at our public
    /// address, for the transport of the phone's flow.
    fn rewrite_node_contact(&self, node: usize, flow: &Flow, message: &mut SipMessage) {
        let Some(contact) = message.headers.get("Contact") else {
            return;
        };
        let Ok(address) = parse_name_addr(contact) else {
            message.headers.remove("Contact");
            return;
        };
        let Some(uri) = address.uri.as_sip() else {
            message.headers.remove("Contact");
            return;
        };
        let params: String = uri
            .params
            .iter()
            .filter(|p| !p.name.eq_ignore_ascii_case("transport"))
            .map(|p| p.to_string())
            .collect();
        let user = uri.user.clone().unwrap_or_default();
        match self.key.node_contact_token(node, &user, &params) {
            Some(token) => message.headers.set(
                "Contact",
                format!(
                    "<sip:{token}@{}:{}{}>",
                    self.config.public_host,
                    self.config.public_ports.of(flow.transport),
                    transport_param(flow.transport)
                ),
            ),
            None => message.headers.remove("Contact"),
        }
    }

    fn response_from_phone(
        &mut self,
        flow: Flow,
        mut response: SipMessage,
        now: Instant,
    ) -> Vec<Action> {
        let Some(branch) = response
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
        else {
            return Vec::new();
        };
        let Ok(cseq) = response.cseq() else {
            return Vec::new();
        };
        let key = (branch, cseq.method.as_str().to_string());
        let Some(hidden) = self.hidden.get_mut(&key) else {
            tracing::debug!(branch = %key.0, "response to no request of ours: dropped");
            return Vec::new();
        };
        hidden.until = hidden.until.max(now + HIDDEN_OTHER);
        let progress = CallProgress::of(response.status().unwrap_or(0));
        let outcome = progress.outcome().filter(|_| hidden.call_pending);
        // A challenge too: the node's resubmission is a call of its own.
        hidden.call_pending &= progress == CallProgress::Provisional;
        let (node, vias) = (hidden.node, hidden.vias.clone());
        if let Some(outcome) = outcome {
            self.count_calls(CallDirection::ToPhone, outcome, 1);
        }
        response.headers.remove("Via");
        for via in vias.iter().rev() {
            response.headers.push_front("Via", via.clone());
        }
        let call_id = response.call_id().unwrap_or_default().to_string();
        if cseq.method != Method::Register {
            self.rewrite_phone_contact(&flow, &mut response);
        }
        // Refused or not, the body is fit to go on (or gone).
        let _ = self.anchor_sdp(&call_id, Direction::Inward, flow.transport, &mut response);
        self.note_invite_outcome(&cseq.method, progress, &call_id);
        vec![Action::ToNode {
            node,
            message: response,
        }]
    }

    /// Re-addresses the SDP body of `message` (if any) to the call's media
    /// relay or WebRTC gateway. `Err(status)`: the body cannot go on; a
    /// request gets `status` (488: unacceptable to its recipient; 503: no
    /// relay), and a response loses the body, since the recipient must
    /// never see what it cannot use.
    fn anchor_sdp(
        &mut self,
        call_id: &str,
        direction: Direction,
        phone: Transport,
        message: &mut SipMessage,
    ) -> Result<(), u16> {
        if !is_sdp(message) {
            return Ok(());
        }
        let status = match self
            .media
            .rewrite(call_id, direction, phone, message.body())
        {
            Rewritten::Body(body) => {
                message.body = body;
                return Ok(());
            }
            Rewritten::AsIs => return Ok(()),
            Rewritten::Unacceptable => 488,
            Rewritten::NoRelay => 503,
        };
        if !message.is_request() {
            message.body = Vec::new();
            message.headers.remove("Content-Type");
        }
        Err(status)
    }

    fn note_invite_outcome(&mut self, method: &Method, progress: CallProgress, call_id: &str) {
        if *method != Method::Invite {
            return;
        }
        match progress {
            CallProgress::Answered => self.media.answered(call_id),
            CallProgress::Challenged => self.media.challenged(call_id),
            CallProgress::Failed(_) => self.media.failed(call_id),
            CallProgress::Provisional => {}
        }
    }

    fn request_from_node(
        &mut self,
        node: usize,
        mut request: SipMessage,
        now: Instant,
    ) -> Vec<Action> {
        let Some(method) = request.method().cloned() else {
            return Vec::new();
        };
        // What a refusal copies, taken before the request changes (not a
        // copy of the whole request).
        let answerable = request.headers.for_response();
        let refuse = |status: u16| {
            if method == Method::Ack {
                return Vec::new();
            }
            let message = response_from_headers(&answerable, status, reason_phrase(status));
            vec![Action::ToNode {
                node,
                message: own_refusal(message),
            }]
        };
        let new_call = opens_call(&request);
        if !Self::forward_hop(&mut request) {
            return refuse(483);
        }
        let internal_host = self.internal_host();
        let internal_port = self.config.internal.port();
        // The Path (our flow token) as the top Route …
        let mut flow = None;
        if let Some(top) = request.headers.list("Route").first() {
            if let Ok(route) = parse_name_addr(top) {
                flow = user_at(&route.uri, &internal_host, internal_port)
                    .and_then(|user| self.key.open_flow(user));
            }
            if flow.is_some() {
                request.headers.pop_first("Route");
            }
        }
        // … or a phone Contact we rewrote, as the Request-URI.
        if flow.is_none() {
            let target = request
                .request_uri()
                .and_then(|uri| user_at(uri, &internal_host, internal_port))
                .and_then(|user| self.key.open_flow_contact(user));
            if let Some((found, uri)) = target {
                match uri.parse() {
                    Ok(uri) => set_request_uri(&mut request, uri),
                    Err(_) => return refuse(400),
                }
                flow = Some(found);
            }
        }
        let Some(flow) = flow else {
            tracing::warn!(method = %method.as_str(), "request from a node names no flow of ours: 404");
            return refuse(404);
        };
        let call_id = request.call_id().unwrap_or_default().to_string();
        let top_branch = request
            .top_via()
            .ok()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        let branch = derived_branch(&[&top_branch, &node.to_string()]);
        let vias = request.headers.take_all("Via");
        if method != Method::Ack {
            let ttl = if method == Method::Invite {
                HIDDEN_INVITE
            } else {
                HIDDEN_OTHER
            };
            self.hidden.insert(
                (branch.clone(), method.as_str().to_string()),
                Hidden {
                    vias,
                    node,
                    until: now + ttl,
                    invite_of: (method == Method::Invite).then(|| call_id.clone()),
                    call_pending: new_call,
                },
            );
        }
        request.headers.push_front(
            "Via",
            format!(
                "SIP/2.0/{} {}:{};branch={branch};rport",
                flow.transport.via_name(),
                self.config.public_host,
                self.config.public_ports.of(flow.transport)
            ),
        );
        request.headers.remove("Record-Route");
        request.headers.remove("Route");
        self.rewrite_node_contact(node, &flow, &mut request);
        if let Err(status) =
            self.anchor_sdp(&call_id, Direction::Outward, flow.transport, &mut request)
        {
            if new_call {
                self.count_calls(CallDirection::ToPhone, "failed", 1);
            }
            return refuse(status);
        }
        if method == Method::Bye {
            self.media.end(&call_id);
        }
        let if_flow_gone = (method != Method::Ack).then_some(FlowGone {
            node,
            request: answerable,
        });
        vec![Action::ToPhone {
            flow,
            message: request,
            if_flow_gone,
        }]
    }

    fn response_from_node(
        &mut self,
        node: usize,
        mut response: SipMessage,
        now: Instant,
    ) -> Vec<Action> {
        let call_id = response.call_id().unwrap_or_default().to_string();
        if let Some(probe) = call_id.strip_prefix(PROBE_CALL_ID) {
            return probe
                .parse()
                .ok()
                .and_then(|id| self.dispatcher.probe_answered(id, now))
                .map(Action::Node)
                .into_iter()
                .collect();
        }
        let Some(ours) = response.headers.pop_first("Via") else {
            return Vec::new();
        };
        let via = sip::message::syntax::parse_via(&ours).ok();
        let flow = via
            .as_ref()
            .and_then(|via| via.param("ft").and_then(|p| p.value.clone()))
            .and_then(|token| self.key.open_flow(&token));
        let Some(flow) = flow else {
            tracing::debug!("response from a node without our Via: dropped");
            return Vec::new();
        };
        let status = response.status().unwrap_or(0);
        let mut actions = Vec::new();
        let marked = |param: &str| via.as_ref().is_some_and(|v| v.param(param).is_some());
        let stale = crate::challenge::is_stale(&response);
        if marked("cr") && status >= 200 {
            actions.push(Action::Authenticated {
                source: flow.remote.ip(),
                // Stale: the credentials were right.
                failed: matches!(status, 401 | 403 | 407) && !stale,
            });
        }
        if stale && marked("cn") {
            let node_addr = self.dispatcher.addr(node);
            if let (Some(challenges), Some(addr)) = (self.challenges.as_mut(), node_addr) {
                challenges.node_refused_nonce(addr, now);
            }
        }
        if let Some(challenges) = self.challenges.as_mut().filter(|_| marked("ch")) {
            challenges.learn(flow.remote.ip(), &response, now);
        }
        let Ok(cseq) = response.cseq() else {
            return Vec::new();
        };
        // The inside's routing never leaves (RFC 3327 echoes Path in the 200).
        response.headers.remove("Path");
        response.headers.remove("Record-Route");
        // A registrar's 200 lists the phone's own bindings: they stay.
        if cseq.method != Method::Register {
            self.rewrite_node_contact(node, &flow, &mut response);
        } else if flow.transport == Transport::Udp && (200..300).contains(&status) {
            self.keepalives
                .registered(flow.remote, registered_until(&response, now), now);
        }
        // Refused or not, the body is fit to go on (or gone).
        let _ = self.anchor_sdp(&call_id, Direction::Outward, flow.transport, &mut response);
        let progress = CallProgress::of(status);
        self.note_invite_outcome(&cseq.method, progress, &call_id);
        let mut outcome = None;
        if let Some(invite) = self
            .invites
            .get_mut(&call_id)
            .filter(|_| cseq.method == Method::Invite)
        {
            match (progress, invite.call) {
                (_, CallState::Counted) | (CallProgress::Provisional, _) => {}
                (CallProgress::Challenged, _) => invite.call = CallState::Challenged,
                (CallProgress::Answered | CallProgress::Failed(_), _) => {
                    invite.call = CallState::Counted;
                    outcome = progress.outcome();
                }
            }
            invite.until = if status < 200 {
                // Ringing: as long as an INVITE may ring.
                invite.until.max(now + HIDDEN_INVITE)
            } else {
                // Kept a while for the ACK of a failure and the
                // resubmission after a challenge.
                now + HIDDEN_OTHER
            };
        }
        if let Some(outcome) = outcome {
            self.count_calls(CallDirection::FromPhone, outcome, 1);
        }
        actions.push(Action::ToPhone {
            flow,
            message: response,
            if_flow_gone: None,
        });
        actions
    }

    /// An OPTIONS probe of `probe.node`.
    pub fn probe_request(&self, probe: &Probe) -> SipMessage {
        let text = format!(
            "OPTIONS sip:{addr} SIP/2.0\r\nVia: SIP/2.0/UDP {us};branch=z9hG4bKprobe{id}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:sbc@{us}>;tag=sbc\r\nTo: <sip:{addr}>\r\n\
             Call-ID: {PROBE_CALL_ID}{id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            addr = probe.addr,
            us = self.config.internal,
            id = probe.id
        );
        // Built from our own well-formed text: it parses.
        sip::message::parse_datagram(text.as_bytes()).unwrap_or_else(|_| unreachable!())
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.dispatcher.poll_timeout(),
            self.keepalives.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Probes due and probes given up; forgets Vias past their time.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut dead_invites = Vec::new();
        let (mut unanswered_to_phones, mut unanswered_from_phones) = (0, 0);
        self.hidden.retain(|_, h| {
            let live = h.until > now;
            if !live {
                dead_invites.extend(h.invite_of.take());
                unanswered_to_phones += u64::from(h.call_pending);
            }
            live
        });
        self.invites.retain(|call_id, i| {
            let live = i.until > now;
            if !live {
                dead_invites.push(call_id.clone());
                unanswered_from_phones += u64::from(i.call == CallState::Pending);
            }
            live
        });
        self.count_calls(CallDirection::ToPhone, NO_RESPONSE, unanswered_to_phones);
        self.count_calls(
            CallDirection::FromPhone,
            NO_RESPONSE,
            unanswered_from_phones,
        );
        // Ends the relay of a call that was not answered (no-op otherwise).
        for call_id in dead_invites {
            self.media.failed(&call_id);
        }
        let mut actions: Vec<Action> = self
            .dispatcher
            .handle_timeout(now)
            .into_iter()
            .map(Action::Node)
            .collect();
        for probe in self.dispatcher.probes_due(now) {
            actions.push(Action::ToNode {
                node: probe.node,
                message: self.probe_request(&probe),
            });
        }
        actions.extend(self.keepalives.due(now).into_iter().map(Action::Keepalive));
        actions
    }

    /// The driver could not send to `node`.
    pub fn node_unreachable(&mut self, node: usize) -> Option<Action> {
        self.dispatcher.send_failed(node).map(Action::Node)
    }
}

/// Until when a registrar's 2xx keeps bindings: its longest one (a
/// Contact's `expires`, else the Expires header, else RFC 3261's default
/// of an hour); `None` when it lists none.
fn registered_until(response: &SipMessage, now: Instant) -> Option<Instant> {
    let default = response.expires().ok().flatten().unwrap_or(3600);
    response
        .contacts()
        .ok()?
        .iter()
        .filter(|c| c.address().is_some())
        .map(|c| c.expires().and_then(Result::ok).unwrap_or(default))
        .max()
        .filter(|&secs| secs > 0)
        .map(|secs| now + Duration::from_secs(u64::from(secs)))
}

fn set_request_uri(request: &mut SipMessage, uri: Uri) {
    if let sip::message::StartLine::Request { uri: target, .. } = &mut request.start {
        *target = uri;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::DispatchConfig;
    use sip::auth::{challenge_values, Algorithm, DigestChallenge, NonceKey};
    use sip::message::parse_datagram;

    /// Records what signalling told the media relay; answers with a marker
    /// SDP, or with `NoRelay` once `no_relay` is set.
    #[derive(Default)]
    struct FakeMedia {
        log: Vec<String>,
        no_relay: bool,
    }

    impl MediaAnchor for FakeMedia {
        fn rewrite(
            &mut self,
            call_id: &str,
            direction: Direction,
            _phone: Transport,
            _body: &[u8],
        ) -> Rewritten {
            self.log.push(format!("rewrite {call_id} {direction:?}"));
            if self.no_relay {
                return Rewritten::NoRelay;
            }
            Rewritten::Body(format!("v=0\r\nc=IN IP4 {direction:?}\r\n").into_bytes())
        }
        fn answered(&mut self, call_id: &str) {
            self.log.push(format!("answered {call_id}"));
        }
        fn challenged(&mut self, call_id: &str) {
            self.log.push(format!("challenged {call_id}"));
        }
        fn failed(&mut self, call_id: &str) {
            self.log.push(format!("failed {call_id}"));
        }
        fn end(&mut self, call_id: &str) {
            self.log.push(format!("end {call_id}"));
        }
    }

    const NODES: [&str; 2] = ["10.0.0.1:5060", "10.0.0.2:5060"];

    fn proxy(now: Instant) -> Proxy<FakeMedia> {
        proxy_probing(now, DispatchConfig::default())
    }

    fn proxy_probing(now: Instant, probes: DispatchConfig) -> Proxy<FakeMedia> {
        let nodes: Vec<SocketAddr> = NODES.iter().map(|n| n.parse().unwrap()).collect();
        Proxy::new(
            TokenKey::generate(),
            ProxyConfig {
                internal: "10.0.0.100:5080".parse().unwrap(),
                public_host: "203.0.113.1".into(),
                public_ports: PublicPorts {
                    udp: 5060,
                    tcp: 5060,
                    tls: 5061,
                    ws: 8443,
                    wss: 8443,
                },
                udp_keepalive_interval: Duration::from_secs(20),
            },
            Dispatcher::new(&nodes, probes, now),
            FakeMedia::default(),
        )
    }

    /// A proxy whose probes never come due within a test: the nodes stay
    /// up whatever the test's clock does.
    fn unprobed_proxy(now: Instant) -> Proxy<FakeMedia> {
        let hour = Duration::from_secs(3600);
        proxy_probing(
            now,
            DispatchConfig {
                interval: hour,
                timeout: hour,
            },
        )
    }

    /// The phone's INVITE number `cseq` of call `call_id`, to 101.
    fn phone_invite(call_id: &str, cseq: u32) -> SipMessage {
        with_sdp(&format!(
            "INVITE sip:101@demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bK{call_id}{cseq}\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:101@demo.pbx.local>\n\
             Call-ID: {call_id}\nCSeq: {cseq} INVITE\nContact: <sip:100@192.168.1.7:5061;transport=tls>\n"
        ))
    }

    fn phone() -> Flow {
        Flow {
            transport: Transport::Tls,
            remote: "198.51.100.7:40001".parse().unwrap(),
        }
    }

    fn parse(text: &str) -> SipMessage {
        parse_datagram(text.replace('\n', "\r\n").as_bytes()).expect("test message")
    }

    fn with_sdp(head: &str) -> SipMessage {
        let sdp = "v=0\r\no=- 1 1 IN IP4 192.168.1.7\r\ns=-\r\nc=IN IP4 192.168.1.7\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        parse(&format!(
            "{head}Content-Type: application/sdp\nContent-Length: {}\n\n{sdp}",
            sdp.len()
        ))
    }

    fn one(actions: Vec<Action>) -> Action {
        assert_eq!(actions.len(), 1, "{actions:?}");
        actions.into_iter().next().unwrap()
    }

    fn to_node(action: Action) -> (usize, SipMessage) {
        match action {
            Action::ToNode { node, message } => (node, message),
            other => panic!("expected ToNode, got {other:?}"),
        }
    }

    fn to_phone(action: Action) -> (Flow, SipMessage, Option<FlowGone>) {
        match action {
            Action::ToPhone {
                flow,
                message,
                if_flow_gone,
            } => (flow, message, if_flow_gone),
            other => panic!("expected ToPhone, got {other:?}"),
        }
    }

    /// Nothing of the inside may leave: no 10.0.0.x, whatever the header.
    fn assert_hidden(message: &SipMessage) {
        let text = String::from_utf8_lossy(&message.to_bytes()).into_owned();
        assert!(
            !text.contains("10.0.0."),
            "internal address leaked:\n{text}"
        );
    }

    #[test]
    fn register_gets_a_path_with_the_flow_and_the_reply_comes_back_over_it() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let register = parse(
            "REGISTER sip:demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKr1\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:100@demo.pbx.local>\n\
             Call-ID: reg-1\nCSeq: 1 REGISTER\nContact: <sip:100@192.168.1.7:5061;transport=tls>\n\
             Content-Length: 0\n\n",
        );
        let (node, forwarded) = to_node(one(p.from_phone(phone(), register.clone(), t0)));
        let again = to_node(one(p.from_phone(phone(), register, t0)));
        assert_eq!(again.0, node, "a retransmission goes to the same node");
        assert_eq!(again.1.headers.get("Via"), forwarded.headers.get("Via"));
        assert_eq!(forwarded.max_forwards().unwrap(), Some(69));
        let path = forwarded.headers.get("Path").expect("Path");
        assert!(path.starts_with("<sip:") && path.contains("@10.0.0.100:5080;lr;ob>"));
        assert!(forwarded.headers.list("Supported").contains(&"path"));
        assert_eq!(
            forwarded.headers.get("Contact"),
            Some("<sip:100@192.168.1.7:5061;transport=tls>"),
            "a binding keeps the phone's own Contact"
        );
        let vias = forwarded.headers.list("Via");
        assert_eq!(vias.len(), 2);
        // The node learns where the phone really is (allowed networks).
        assert_eq!(
            vias[1],
            "SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKr1;received=198.51.100.7"
        );

        let mut ok = forwarded.response(200);
        ok.headers.push("Path", path.to_string());
        let bindings = "<sip:100@192.168.1.7:5061;transport=tls>;expires=300";
        ok.headers.push("Contact", bindings);
        let source: SocketAddr = NODES[node].parse().unwrap();
        let (flow, reply, _) = to_phone(one(p.from_node(source, ok, t0)));
        assert_eq!(flow, phone());
        // The phone's own Via, with where we saw it (as any server adds).
        assert_eq!(
            reply.headers.list("Via"),
            ["SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKr1;received=198.51.100.7"]
        );
        assert!(reply.headers.get("Path").is_none());
        assert_eq!(
            reply.headers.get("Contact"),
            Some(bindings),
            "bindings listed as they are"
        );
        assert_hidden(&reply);
    }

    /// A REGISTER from `flow` through the proxy and the node's 2xx listing
    /// `contacts` back: what reaches the phone.
    fn register_round_trip(
        p: &mut Proxy<FakeMedia>,
        flow: Flow,
        contacts: &[&str],
        now: Instant,
    ) -> SipMessage {
        let register = parse(
            "REGISTER sip:demo.pbx.local SIP/2.0\nVia: SIP/2.0/UDP 192.168.1.7:5060;branch=z9hG4bKu1\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:100@demo.pbx.local>\n\
             Call-ID: reg-udp\nCSeq: 1 REGISTER\nContact: <sip:100@192.168.1.7:5060>\n\
             Content-Length: 0\n\n",
        );
        let (node, forwarded) = to_node(one(p.from_phone(flow, register, now)));
        let mut ok = forwarded.response(200);
        for contact in contacts {
            ok.headers.push("Contact", *contact);
        }
        let source: SocketAddr = NODES[node].parse().unwrap();
        to_phone(one(p.from_node(source, ok, now))).1
    }

    fn keepalives(actions: Vec<Action>) -> Vec<SocketAddr> {
        actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Keepalive(remote) => Some(remote),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_phone_registered_over_udp_gets_keepalives_until_it_unregisters() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut p = unprobed_proxy(t0);
        let udp = Flow {
            transport: Transport::Udp,
            remote: "198.51.100.8:5060".parse().unwrap(),
        };
        register_round_trip(&mut p, udp, &["<sip:100@192.168.1.7:5060>;expires=120"], t0);
        // A phone on TLS keeps its own connection alive: no keepalives.
        register_round_trip(&mut p, phone(), &["<sip:100@x>;expires=120"], t0);
        assert_eq!(p.keepalives.len(), 1);
        assert!(p.poll_timeout().is_some_and(|t| t <= t0 + secs(20)));
        p.handle_timeout(t0);
        assert!(keepalives(p.handle_timeout(t0 + secs(19))).is_empty());
        assert_eq!(
            keepalives(p.handle_timeout(t0 + secs(20))),
            vec![udp.remote]
        );
        assert_eq!(
            keepalives(p.handle_timeout(t0 + secs(40))),
            vec![udp.remote]
        );
        // The registrar's 2xx to an unregistration lists no binding.
        register_round_trip(&mut p, udp, &[], t0 + secs(45));
        assert!(keepalives(p.handle_timeout(t0 + secs(60))).is_empty());
        assert!(p.keepalives.is_empty());
        // A binding that runs out without a re-registration ends the pings.
        let t1 = t0 + secs(100);
        register_round_trip(&mut p, udp, &["<sip:100@192.168.1.7:5060>;expires=30"], t1);
        assert_eq!(
            keepalives(p.handle_timeout(t1 + secs(20))),
            vec![udp.remote]
        );
        assert!(keepalives(p.handle_timeout(t1 + secs(40))).is_empty());
        assert!(p.keepalives.is_empty());
    }

    #[test]
    fn a_call_to_the_phone_hides_the_node_and_its_dialog_comes_back_over_the_flow() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let path = format!("<sip:{}@10.0.0.100:5080;lr;ob>", p.key.flow_token(&phone()));
        let invite = with_sdp(&format!(
            "INVITE sip:100@192.168.1.7:5061;transport=tls SIP/2.0\n\
             Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKnode1\nRoute: {path}\nMax-Forwards: 70\n\
             From: \"Demo 101\" <sip:101@demo.pbx.local>;tag=b2b\nTo: <sip:100@demo.pbx.local>\n\
             Call-ID: fork-1\nCSeq: 1 INVITE\nContact: <sip:pbx@10.0.0.2:5060>\n"
        ));
        let node_addr: SocketAddr = NODES[1].parse().unwrap();
        let (flow, out, if_gone) = to_phone(one(p.from_node(node_addr, invite, t0)));
        assert_eq!(flow, phone());
        assert_hidden(&out);
        let vias = out.headers.list("Via");
        assert_eq!(vias.len(), 1);
        assert!(vias[0].starts_with("SIP/2.0/TLS 203.0.113.1:5061;branch=z9hG4bK"));
        assert!(out.headers.get("Route").is_none());
        let contact = out.headers.get("Contact").expect("Contact").to_string();
        assert!(
            contact.ends_with("@203.0.113.1:5061;transport=tls>"),
            "{contact}"
        );
        assert_eq!(out.body(), b"v=0\r\nc=IN IP4 Outward\r\n");
        assert_eq!(
            if_gone
                .expect("430 if the flow is gone")
                .response()
                .status(),
            Some(430)
        );

        // The phone answers: the node gets its own Vias back, and a Contact
        // at our internal address holding the flow.
        let mut ok = out.response(200);
        ok.ensure_to_tag("phone");
        ok.headers
            .push("Contact", "<sip:100@192.168.1.7:5061;transport=tls>");
        ok.headers.set("Content-Type", "application/sdp");
        ok.body = b"v=0\r\n".to_vec();
        let (node, inside) = to_node(one(p.from_phone(phone(), ok, t0)));
        assert_eq!(node, 1);
        assert_eq!(
            inside.headers.list("Via"),
            ["SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKnode1"]
        );
        let phone_contact = parse_name_addr(inside.headers.get("Contact").unwrap()).unwrap();
        assert_eq!(
            phone_contact
                .uri
                .as_sip()
                .map(|u| (u.host.as_str(), u.port)),
            Some(("10.0.0.100", Some(5080)))
        );
        assert_eq!(
            p.media.log,
            [
                "rewrite fork-1 Outward",
                "rewrite fork-1 Inward",
                "answered fork-1"
            ]
        );

        // Any node's BYE to that Contact leaves over the phone's flow,
        // addressed to the phone's own Contact.
        let bye = parse(&format!(
            "BYE {} SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKbye\nMax-Forwards: 70\n\
             From: <sip:101@demo.pbx.local>;tag=b2b\nTo: <sip:100@demo.pbx.local>;tag=phone\n\
             Call-ID: fork-1\nCSeq: 2 BYE\nContent-Length: 0\n\n",
            phone_contact.uri
        ));
        let (flow, out, _) = to_phone(one(p.from_node(NODES[0].parse().unwrap(), bye, t0)));
        assert_eq!(flow, phone());
        assert_eq!(
            out.request_uri().map(ToString::to_string).as_deref(),
            Some("sip:100@192.168.1.7:5061;transport=tls")
        );
        assert_hidden(&out);
        assert_eq!(p.media.log.last().map(String::as_str), Some("end fork-1"));
    }

    #[test]
    fn a_call_from_the_phone_reaches_one_node_and_its_dialog_stays_there() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let invite = with_sdp(
            "INVITE sip:101@demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKc1\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:101@demo.pbx.local>\n\
             Call-ID: call-1\nCSeq: 1 INVITE\nContact: <sip:100@192.168.1.7:5061;transport=tls>\n",
        );
        let (node, inside) = to_node(one(p.from_phone(phone(), invite, t0)));
        assert!(inside
            .headers
            .get("Contact")
            .is_some_and(|c| c.ends_with("@10.0.0.100:5080>")));
        assert_eq!(inside.body(), b"v=0\r\nc=IN IP4 Inward\r\n");

        let mut ok = inside.response(200);
        ok.ensure_to_tag("node");
        ok.headers
            .push("Contact", format!("<sip:pbx@{}>", NODES[node]));
        ok.headers.push("Record-Route", "<sip:10.0.0.9;lr>");
        let (_, out, _) = to_phone(one(p.from_node(NODES[node].parse().unwrap(), ok, t0)));
        assert_hidden(&out);
        assert_eq!(
            out.headers.list("Via"),
            ["SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKc1;received=198.51.100.7"]
        );
        let node_contact = parse_name_addr(out.headers.get("Contact").unwrap()).unwrap();

        // The phone's BYE goes to the node that owns the dialog, even if
        // the hash would now pick another.
        p.dispatcher.set_draining(node, true);
        let bye = parse(&format!(
            "BYE {} SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKc2\nMax-Forwards: 70\n\
             From: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:101@demo.pbx.local>;tag=node\n\
             Call-ID: call-1\nCSeq: 2 BYE\nContent-Length: 0\n\n",
            node_contact.uri
        ));
        let (bye_node, inside) = to_node(one(p.from_phone(phone(), bye, t0)));
        assert_eq!(bye_node, node);
        assert_eq!(
            inside.request_uri().map(ToString::to_string),
            Some(format!("sip:pbx@{}", NODES[node]))
        );
    }

    #[test]
    fn a_draining_node_gets_no_new_work_but_keeps_its_transactions() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let request = |method: &str, call_id: &str| {
            parse(&format!(
                "{method} sip:101@demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bK{call_id}\n\
                 Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:101@demo.pbx.local>\n\
                 Call-ID: {call_id}\nCSeq: 1 {method}\nContent-Length: 0\n\n"
            ))
        };
        let node_of = |p: &mut Proxy<FakeMedia>, method: &str, call_id: &str| {
            to_node(one(p.from_phone(phone(), request(method, call_id), t0))).0
        };
        // A call ringing on node 0 when it starts to drain.
        let ringing = (0..100)
            .map(|i| format!("ring-{i}"))
            .find(|id| p.dispatcher.pick(id) == Some(0))
            .expect("some Call-ID hashes to node 0");
        let (_, invite) = to_node(one(p.from_phone(phone(), request("INVITE", &ringing), t0)));
        assert!(p
            .dispatcher
            .set_draining(0, true)
            .is_some_and(|n| n.draining));
        for i in 0..50 {
            assert_eq!(node_of(&mut p, "INVITE", &format!("new-{i}")), 1);
            assert_eq!(node_of(&mut p, "REGISTER", &format!("reg-{i}")), 1);
        }
        assert_eq!(node_of(&mut p, "INVITE", &ringing), 0, "retransmission");
        assert_eq!(node_of(&mut p, "CANCEL", &ringing), 0);
        let cancelled = invite.response(487);
        to_phone(one(p.from_node(NODES[0].parse().unwrap(), cancelled, t0)));
        assert_eq!(node_of(&mut p, "ACK", &ringing), 0, "the failure's ACK");
        // Forgotten after the ACK's time: then it is new work like any.
        p.handle_timeout(t0 + HIDDEN_OTHER);
        assert_eq!(node_of(&mut p, "OPTIONS", &ringing), 1);

        assert!(p.dispatcher.set_draining(0, false).is_some());
        assert_eq!(node_of(&mut p, "OPTIONS", &ringing), 0, "undrained");
        assert!(p.dispatcher.set_draining(7, true).is_none(), "no node 7");
    }

    #[test]
    fn an_unanswered_calls_relay_is_given_up_when_its_invite_is_dead() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut p = unprobed_proxy(t0);
        let invite = |call_id: &str| phone_invite(call_id, 1);
        let failed = |p: &Proxy<FakeMedia>| {
            p.media
                .log
                .iter()
                .filter(|l| l.starts_with("failed"))
                .cloned()
                .collect::<Vec<_>>()
        };
        // The node never answers, not even 100 Trying: dead after Timer B.
        to_node(one(p.from_phone(phone(), invite("lost"), t0)));
        // This one rings (the node's 180), then is answered.
        let (node, ringing) = to_node(one(p.from_phone(phone(), invite("rings"), t0)));
        let source: SocketAddr = NODES[node].parse().unwrap();
        p.from_node(source, ringing.response(180), t0 + secs(1));
        p.handle_timeout(t0 + secs(31));
        assert!(failed(&p).is_empty());
        p.handle_timeout(t0 + TIMER_B);
        assert_eq!(failed(&p), ["failed lost"]);
        p.handle_timeout(t0 + secs(200));
        assert_eq!(failed(&p), ["failed lost"], "ringing is not dead");
        let mut ok = ringing.response(200);
        ok.ensure_to_tag("node");
        p.from_node(source, ok, t0 + secs(250));
        p.handle_timeout(t0 + secs(250) + HIDDEN_OTHER);
        assert_eq!(
            failed(&p),
            ["failed lost", "failed rings"],
            "told when the transaction is forgotten (a no-op for an answered call)"
        );

        // A node's INVITE to a phone that never answers: given up with
        // the Vias kept for it.
        let path = format!("<sip:{}@10.0.0.100:5080;lr;ob>", p.key.flow_token(&phone()));
        let to_phone_invite = with_sdp(&format!(
            "INVITE sip:100@192.168.1.7:5061;transport=tls SIP/2.0\n\
             Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKsilent\nRoute: {path}\nMax-Forwards: 70\n\
             From: <sip:101@demo.pbx.local>;tag=b2b\nTo: <sip:100@demo.pbx.local>\n\
             Call-ID: silent-phone\nCSeq: 1 INVITE\nContact: <sip:pbx@10.0.0.2:5060>\n"
        ));
        let t1 = t0 + secs(1000);
        p.from_node(NODES[1].parse().unwrap(), to_phone_invite, t1);
        p.handle_timeout(t1 + HIDDEN_INVITE);
        assert_eq!(
            failed(&p).last().map(String::as_str),
            Some("failed silent-phone")
        );
    }

    #[test]
    fn a_challenged_invite_keeps_its_relay_until_its_transaction_is_dead() {
        let t0 = Instant::now();
        let mut p = unprobed_proxy(t0);
        let (node, first) = to_node(one(p.from_phone(
            phone(),
            phone_invite("challenged", 1),
            t0,
        )));
        let source: SocketAddr = NODES[node].parse().unwrap();
        p.from_node(source, first.response(407), t0);
        assert_eq!(
            p.media.log,
            ["rewrite challenged Inward", "challenged challenged"],
            "a challenge is not a failure"
        );
        // The phone never resubmits: given up with the transaction.
        p.handle_timeout(t0 + HIDDEN_OTHER - Duration::from_secs(1));
        assert_eq!(p.media.log.len(), 2);
        p.handle_timeout(t0 + HIDDEN_OTHER);
        assert_eq!(
            p.media.log.last().map(String::as_str),
            Some("failed challenged")
        );
    }

    #[test]
    fn once_a_node_challenged_a_phone_the_sbc_challenges_its_like_itself() {
        let t0 = Instant::now();
        let key = NonceKey::new(b"the cluster's edge key");
        let mut p = unprobed_proxy(t0).with_edge_challenges(EdgeChallenges::new(key.clone()));
        let registry = Registry::new();
        p.register_metrics(&registry).unwrap();
        let edge_challenges =
            |r: &Registry| crate::test_metrics::counter(r, "sbc_auth_challenges_total", &[]);

        // The first goes to a node, marked as one to learn from.
        let (node, inside) = to_node(one(p.from_phone(phone(), phone_invite("first", 1), t0)));
        assert!(inside.headers.get("Via").unwrap().ends_with(";ch"));
        let mut challenge = inside.response(407);
        for value in challenge_values("demo.pbx.local", "00", &[Algorithm::Md5], false) {
            challenge.headers.push("Proxy-Authenticate", value);
        }
        let source: SocketAddr = NODES[node].parse().unwrap();
        let (_, relayed, _) = to_phone(one(p.from_node(source, challenge, t0)));
        assert_eq!(relayed.status(), Some(407));
        assert_eq!(edge_challenges(&registry), 0.0);

        // The next call's INVITE without credentials is answered here:
        // nothing reaches a node and no relay starts.
        let (flow, ours, _) = to_phone(one(p.from_phone(phone(), phone_invite("next", 1), t0)));
        assert_eq!((flow, ours.status()), (phone(), Some(407)));
        let asked =
            DigestChallenge::parse(ours.headers.get("Proxy-Authenticate").unwrap()).unwrap();
        assert_eq!(asked.realm, "demo.pbx.local");
        let nonce = asked.nonce;
        assert!(key.issued_at("demo.pbx.local", &nonce).is_some());
        assert_eq!(edge_challenges(&registry), 1.0);
        assert!(!p.media.log.iter().any(|l| l.contains("next")));
        let ack = parse(&format!(
            "ACK sip:101@demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKnext1\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: {}\n\
             Call-ID: next\nCSeq: 1 ACK\nContent-Length: 0\n\n",
            ours.headers.get("To").unwrap()
        ));
        assert!(
            p.from_phone(phone(), ack, t0).is_empty(),
            "the ACK stops here"
        );

        // The answer with credentials goes to a node, which checks them.
        let answering = |nonce: &str, cseq: u32| {
            let mut resubmitted = phone_invite("next", cseq);
            resubmitted.headers.push(
                "Proxy-Authorization",
                format!(
                    "Digest username=\"100\", realm=\"demo.pbx.local\", nonce=\"{nonce}\", \
                     uri=\"sip:101@demo.pbx.local\", response=\"00\""
                ),
            );
            resubmitted
        };
        let (node, inside) = to_node(one(p.from_phone(phone(), answering(&nonce, 2), t0)));
        let via = inside.headers.get("Via").unwrap().to_string();
        assert!(via.contains(";cr;cn") && !via.contains(";ch"), "{via}");
        assert_eq!(
            p.media.log.last().map(String::as_str),
            Some("rewrite next Inward")
        );
        // A node without our key finds our fresh nonce stale: the phone
        // retries, no failure is counted, and the refusal is.
        let refused =
            |r: &Registry| crate::test_metrics::counter(r, "sbc_auth_nonces_refused_total", &[]);
        let stale_to = |p: &mut Proxy<FakeMedia>, inside: &SipMessage| {
            let mut stale = inside.response(407);
            for value in challenge_values("demo.pbx.local", "00", &[Algorithm::Md5], true) {
                stale.headers.push("Proxy-Authenticate", value);
            }
            p.from_node(NODES[node].parse().unwrap(), stale, t0)
        };
        let verdicts = stale_to(&mut p, &inside);
        assert!(verdicts
            .iter()
            .any(|a| matches!(a, Action::Authenticated { failed: false, .. })));
        assert_eq!(refused(&registry), 1.0);
        // A node's own nonce, found stale, is the node's business.
        let (_, inside) = to_node(one(p.from_phone(phone(), answering("0badc0de", 3), t0)));
        assert!(!inside.headers.get("Via").unwrap().contains(";cn"));
        stale_to(&mut p, &inside);
        assert_eq!(refused(&registry), 1.0);
        // Another phone's is the node's to challenge.
        let elsewhere = Flow {
            transport: Transport::Tls,
            remote: "198.51.100.8:40001".parse().unwrap(),
        };
        to_node(one(p.from_phone(
            elsewhere,
            phone_invite("elsewhere", 1),
            t0,
        )));
        // A minute on, the node is asked again.
        let later = t0 + crate::challenge::LEARNT_FOR;
        to_node(one(p.from_phone(phone(), phone_invite("later", 1), later)));
        assert_eq!(edge_challenges(&registry), 1.0);
    }

    /// An unprobed proxy whose metrics are in the registry.
    fn metered_proxy(now: Instant) -> (Proxy<FakeMedia>, Registry) {
        let mut p = unprobed_proxy(now);
        let registry = Registry::new();
        p.register_metrics(&registry).unwrap();
        (p, registry)
    }

    /// Calls counted in `sbc_calls_total` going `direction` with `outcome`.
    fn calls_counted(registry: &Registry, direction: &str, outcome: &str) -> u64 {
        let labels = [("direction", direction), ("outcome", outcome)];
        crate::test_metrics::counter(registry, "sbc_calls_total", &labels) as u64
    }

    #[test]
    fn calls_are_counted_once_by_direction_and_outcome() {
        let t0 = Instant::now();
        let (mut p, registry) = metered_proxy(t0);
        let count = |direction: &str, outcome: &str| calls_counted(&registry, direction, outcome);
        // The node answers `call_id`'s INVITE number `cseq` with `statuses`.
        let answer = |p: &mut Proxy<FakeMedia>, call_id: &str, cseq: u32, statuses: &[u16]| {
            let (node, inside) =
                to_node(one(p.from_phone(phone(), phone_invite(call_id, cseq), t0)));
            for &status in statuses {
                let mut response = inside.response(status);
                response.ensure_to_tag("node");
                p.from_node(NODES[node].parse().unwrap(), response, t0);
            }
        };

        // Challenged, resubmitted, answered; the 200 retransmitted.
        answer(&mut p, "answered", 1, &[100, 407]);
        answer(&mut p, "answered", 2, &[180, 200, 200]);
        answer(&mut p, "busy", 1, &[486, 486]);
        // Challenged and never resubmitted (a scanner's, say): no call.
        answer(&mut p, "abandoned", 1, &[407]);
        // The node never answers at all.
        to_node(one(p.from_phone(phone(), phone_invite("lost", 1), t0)));
        assert_eq!(count("from_phone", "answered"), 1);
        assert_eq!(count("from_phone", "busy"), 1);
        p.handle_timeout(t0 + HIDDEN_INVITE);
        assert_eq!(count("from_phone", "no_response"), 1);

        // A node's call to the phone, cancelled (the 487 retransmitted),
        // then a re-INVITE in another call's dialog, which is no call.
        let path = format!("<sip:{}@10.0.0.100:5080;lr;ob>", p.key.flow_token(&phone()));
        let from_node = |call_id: &str, to_tag: &str| {
            with_sdp(&format!(
                "INVITE sip:100@192.168.1.7:5061;transport=tls SIP/2.0\n\
                 Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bK{call_id}\nRoute: {path}\nMax-Forwards: 70\n\
                 From: <sip:101@demo.pbx.local>;tag=b2b\nTo: <sip:100@demo.pbx.local>{to_tag}\n\
                 Call-ID: {call_id}\nCSeq: 1 INVITE\nContact: <sip:pbx@10.0.0.2:5060>\n"
            ))
        };
        let node: SocketAddr = NODES[1].parse().unwrap();
        let t1 = t0 + HIDDEN_INVITE;
        for (call_id, to_tag, statuses) in [
            ("cancelled", "", &[180, 487, 487][..]),
            ("reinvite", ";tag=phone", &[200][..]),
        ] {
            let (_, out, _) = to_phone(one(p.from_node(node, from_node(call_id, to_tag), t1)));
            for &status in statuses {
                let mut response = out.response(status);
                response.ensure_to_tag("phone");
                to_node(one(p.from_phone(phone(), response, t1)));
            }
        }
        assert_eq!(count("to_phone", "cancelled"), 1);
        assert_eq!(count("to_phone", "answered"), 0);

        // No node to take a call: the SBC's own 503 counts as failed.
        p.node_unreachable(0);
        p.node_unreachable(1);
        let (_, refused, _) = to_phone(one(p.from_phone(phone(), phone_invite("no-node", 1), t1)));
        assert_eq!(refused.status(), Some(503));
        assert_eq!(count("from_phone", "failed"), 1);
        p.handle_timeout(t1 + HIDDEN_INVITE);
        assert_eq!(count("from_phone", "no_response"), 1, "only the lost call");
        assert_eq!(count("to_phone", "no_response"), 0);
    }

    #[test]
    fn without_a_relay_a_call_gets_503_and_no_sdp_leaves_unanchored() {
        let t0 = Instant::now();
        let (mut p, registry) = metered_proxy(t0);
        let failed = |direction: &str| calls_counted(&registry, direction, "failed");
        // A node's 200 that finds no relay (its offer came late, when the
        // ports had run out): its body would name the node.
        let (node, inside) = to_node(one(p.from_phone(phone(), phone_invite("c1", 1), t0)));
        p.media.no_relay = true;
        let mut ok = inside.response(200);
        ok.ensure_to_tag("node");
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 0\r\n"
            .to_vec();
        let (_, out, _) = to_phone(one(p.from_node(NODES[node].parse().unwrap(), ok, t0)));
        assert_eq!(out.status(), Some(200));
        assert!(out.body().is_empty() && out.headers.get("Content-Type").is_none());
        assert_hidden(&out);

        // The phone's new call: 503, retry in a while; nothing to a node.
        let (flow, refusal, _) = to_phone(one(p.from_phone(phone(), phone_invite("c2", 1), t0)));
        assert_eq!(flow, phone());
        assert_eq!(refusal.status(), Some(503));
        assert_eq!(refusal.headers.get("Retry-After"), Some(RETRY_AFTER_SECS));
        assert_eq!(failed("from_phone"), 1);

        // A node's call to the phone: 503 back to the node.
        let path = format!("<sip:{}@10.0.0.100:5080;lr;ob>", p.key.flow_token(&phone()));
        let invite = with_sdp(&format!(
            "INVITE sip:100@192.168.1.7:5061;transport=tls SIP/2.0\n\
             Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKnode9\nRoute: {path}\nMax-Forwards: 70\n\
             From: <sip:101@demo.pbx.local>;tag=b2b\nTo: <sip:100@demo.pbx.local>\n\
             Call-ID: c3\nCSeq: 1 INVITE\nContact: <sip:pbx@10.0.0.2:5060>\n"
        ));
        let (node, refusal) = to_node(one(p.from_node(NODES[1].parse().unwrap(), invite, t0)));
        assert_eq!(node, 1);
        assert_eq!(refusal.status(), Some(503));
        assert_eq!(refusal.headers.get("Retry-After"), Some(RETRY_AFTER_SECS));
        assert_eq!(failed("to_phone"), 1);
    }

    #[test]
    fn only_answers_to_requests_with_credentials_count_for_bans() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let register = |authorization: &str| {
            parse(&format!(
                "REGISTER sip:demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKa\n\
                 Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:100@demo.pbx.local>\n\
                 Call-ID: reg-2\nCSeq: 2 REGISTER\n{authorization}Content-Length: 0\n\n"
            ))
        };
        let outcomes = |p: &mut Proxy<FakeMedia>, request: SipMessage, status: u16| {
            let (node, inside) = to_node(one(p.from_phone(phone(), request, t0)));
            p.from_node(NODES[node].parse().unwrap(), inside.response(status), t0)
                .into_iter()
                .filter_map(|a| match a {
                    Action::Authenticated { source, failed } => Some((source, failed)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let ip = phone().remote.ip();
        assert!(
            outcomes(&mut p, register(""), 401).is_empty(),
            "a first challenge"
        );
        let with = "Authorization: Digest username=\"100-DEMO\", response=\"x\"\n";
        assert_eq!(outcomes(&mut p, register(with), 401), [(ip, true)]);
        let (node, inside) = to_node(one(p.from_phone(phone(), register(with), t0)));
        let mut stale = inside.response(401);
        for value in challenge_values("demo.pbx.local", "00", &[Algorithm::Md5], true) {
            stale.headers.push("WWW-Authenticate", value);
        }
        let stale_outcome = p.from_node(NODES[node].parse().unwrap(), stale, t0);
        assert!(
            stale_outcome
                .iter()
                .any(|a| matches!(a, Action::Authenticated { failed: false, .. })),
            "stale: the credentials were right"
        );
        assert_eq!(outcomes(&mut p, register(with), 403), [(ip, true)]);
        assert_eq!(outcomes(&mut p, register(with), 200), [(ip, false)]);
    }

    #[test]
    fn refusals_no_node_no_flow_and_exhausted_max_forwards() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        p.dispatcher.send_failed(0);
        p.dispatcher.send_failed(1);
        let options = parse(
            "OPTIONS sip:demo.pbx.local SIP/2.0\nVia: SIP/2.0/TLS 192.168.1.7:5061;branch=z9hG4bKo\n\
             Max-Forwards: 70\nFrom: <sip:100@demo.pbx.local>;tag=a\nTo: <sip:demo.pbx.local>\n\
             Call-ID: o-1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        );
        let (_, refusal, _) = to_phone(one(p.from_phone(phone(), options.clone(), t0)));
        assert_eq!(refusal.status(), Some(503));
        let mut looped = options;
        looped.headers.set("Max-Forwards", "0");
        let (_, refusal, _) = to_phone(one(p.from_phone(phone(), looped, t0)));
        assert_eq!(refusal.status(), Some(483));

        let stray = parse(
            "INVITE sip:100@192.168.1.7 SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKs\n\
             Max-Forwards: 70\nFrom: <sip:a@b>;tag=x\nTo: <sip:c@d>\nCall-ID: s-1\nCSeq: 1 INVITE\n\
             Content-Length: 0\n\n",
        );
        let mut actions = p.from_node(NODES[0].parse().unwrap(), stray.clone(), t0);
        assert!(
            matches!(actions.pop(), Some(Action::Node(NodeChange::Up(0)))),
            "a node that speaks is alive: up again"
        );
        let (node, refusal) = to_node(one(actions));
        assert_eq!((node, refusal.status()), (0, Some(404)));
        assert!(
            p.from_node("10.9.9.9:5060".parse().unwrap(), stray, t0)
                .is_empty(),
            "not a configured node"
        );
    }

    #[test]
    fn a_derived_branch_is_the_magic_cookie_and_24_hex_digits_of_the_hash() {
        let digest = Sha256::digest(b"z9hG4bKabc\0flow\0");
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            derived_branch(&["z9hG4bKabc", "flow"]),
            format!("z9hG4bK{hex}")
        );
        assert_ne!(
            derived_branch(&["z9hG4bKabc", "flow"]),
            derived_branch(&["z9hG4bKab", "cflow"]),
            "the parts are separated"
        );
    }

    #[test]
    fn probes_go_out_on_time_and_their_answers_keep_nodes_up() {
        let t0 = Instant::now();
        let mut p = proxy(t0);
        let probes = p.handle_timeout(t0);
        assert_eq!(probes.len(), 2);
        let mut probes = probes.into_iter();
        let (node, options) = to_node(probes.next().unwrap());
        let (_, options_1) = to_node(probes.next().unwrap());
        assert_eq!(node, 0);
        assert_eq!(options.method(), Some(&Method::Options));
        assert!(p
            .from_node(NODES[0].parse().unwrap(), options.response(200), t0)
            .is_empty());
        let later = p.handle_timeout(t0 + Duration::from_millis(950));
        assert!(
            later
                .iter()
                .any(|a| matches!(a, Action::Node(NodeChange::Down(1)))),
            "{later:?}"
        );
        assert!(!later
            .iter()
            .any(|a| matches!(a, Action::Node(NodeChange::Down(0)))));
        // Node 1 answers late: it is alive after all, up again at once.
        let late = p.from_node(
            NODES[1].parse().unwrap(),
            options_1.response(200),
            t0 + Duration::from_millis(960),
        );
        assert!(
            matches!(late.as_slice(), [Action::Node(NodeChange::Up(1))]),
            "{late:?}"
        );
    }
}
