//! RFC 3261 §17 transactions, sans-IO: each transaction is a state machine
//! fed messages and `Instant`s that returns [`Action`]s; the caller sleeps
//! until [`Transaction::poll_timeout`] and then calls `handle_timeout`.
//! [`TransactionLayer`] keys transactions by branch (§17.1.3, §17.2.3) and
//! routes incoming messages. Terminated transactions are removed by the layer.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::ops::Deref;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::message::{Headers, Method, SipMessage, StartLine, SIP_2_0};

/// T1, T2 and T4 of RFC 3261 §17.1.1.1 / Table 4, and how long an INVITE
/// server waits for its TU before it sends 100 Trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// §17.2.1: the 100 is only owed when the TU will not answer within
    /// 200 ms. A TU that challenges or rejects at once, or whose callee
    /// rings quickly, saves the 100 and one datagram per hop.
    pub trying: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            trying: Duration::from_millis(200),
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hand this message to the transport.
    Send(SipMessage),
    /// Pass this message up to the transaction user.
    Deliver(SipMessage),
    /// Timer B, F or H fired: tell the TU the transaction timed out.
    Timeout,
    /// The transaction is over; drop it.
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ClientInvite,
    ClientNonInvite,
    ServerInvite,
    ServerNonInvite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calling (INVITE client) or Trying (non-INVITE).
    Trying,
    Proceeding,
    Completed,
    /// INVITE server after the ACK.
    Confirmed,
    /// INVITE server after a 2xx (RFC 6026): absorbs retransmitted INVITEs
    /// for 64·T1 (Timer L) so they do not start a new transaction.
    Accepted,
    Terminated,
}

/// Why a message could not start or drive a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    #[error("message has no usable top Via branch")]
    NoBranch,
    #[error("message is not a request")]
    NotRequest,
    #[error("message is not a response")]
    NotResponse,
    #[error("no transaction with that key")]
    Unknown,
    #[error("responses can only be sent by server transactions that are not completed")]
    InvalidResponse,
}

/// One client or server transaction.
#[derive(Debug, Clone)]
pub struct Transaction {
    kind: Kind,
    state: State,
    reliable: bool,
    timers: TimerConfig,
    /// A client's request, which Timers A and E resend and the ACK of a
    /// non-2xx is built from. Server transactions keep none: they only
    /// resend their last response, and a registrar holds one per REGISTER
    /// for Timer J (32 s).
    client_request: Option<SipMessage>,
    /// The last response sent (server) or the ACK sent (INVITE client),
    /// while a retransmission may call for it again.
    last_sent: Option<Resend>,
    /// Timer A, E or G, with the interval to use next.
    retransmit: Option<(Instant, Duration)>,
    /// Timer B, F or H.
    timeout_at: Option<Instant>,
    /// Timer D, I, J or K.
    end_at: Option<Instant>,
    /// The due time the layer has queued for this transaction.
    queued_at: Option<Instant>,
    /// When an INVITE server sends the 100 Trying held in `last_sent`,
    /// unless the TU answers first.
    trying_at: Option<Instant>,
}

/// A message a transaction repeats when its peer retransmits (or Timer G
/// fires).
#[derive(Debug, Clone)]
enum Resend {
    Message(SipMessage),
    /// A non-INVITE server's final response waiting out Timer J (32 s on
    /// UDP): one buffer instead of a parsed message's dozens of
    /// allocations, as a registrar holds one per REGISTER. Parsed again
    /// only if the request is retransmitted.
    Wire(Vec<u8>),
}

impl Resend {
    fn message(&self) -> Option<SipMessage> {
        match self {
            Resend::Message(message) => Some(message.clone()),
            Resend::Wire(bytes) => crate::message::parse_datagram(bytes).ok(),
        }
    }
}

impl Transaction {
    /// Starts a client transaction: sends the request and arms its timers.
    pub fn client(
        request: SipMessage,
        reliable: bool,
        timers: TimerConfig,
        now: Instant,
    ) -> Result<(Self, Vec<Action>), TransactionError> {
        if !request.is_request() {
            return Err(TransactionError::NotRequest);
        }
        let kind = if request.method() == Some(&Method::Invite) {
            Kind::ClientInvite
        } else {
            Kind::ClientNonInvite
        };
        let tx = Self {
            kind,
            state: State::Trying,
            reliable,
            timers,
            retransmit: (!reliable).then(|| (now + timers.t1, timers.t1)),
            timeout_at: Some(now + 64 * timers.t1),
            end_at: None,
            queued_at: None,
            trying_at: None,
            last_sent: None,
            client_request: Some(request.clone()),
        };
        Ok((tx, vec![Action::Send(request)]))
    }

    /// Starts a server transaction for a new request and delivers it to the
    /// TU. An INVITE gets a 100 Trying (§17.2.1) once `timers.trying` passes
    /// without a response from the TU, or at once when it is retransmitted.
    pub fn server(
        request: SipMessage,
        reliable: bool,
        timers: TimerConfig,
        now: Instant,
    ) -> Result<(Self, Vec<Action>), TransactionError> {
        if !request.is_request() {
            return Err(TransactionError::NotRequest);
        }
        let invite = request.method() == Some(&Method::Invite);
        let mut tx = Self {
            kind: if invite {
                Kind::ServerInvite
            } else {
                Kind::ServerNonInvite
            },
            state: if invite {
                State::Proceeding
            } else {
                State::Trying
            },
            reliable,
            timers,
            retransmit: None,
            timeout_at: None,
            end_at: None,
            queued_at: None,
            trying_at: None,
            last_sent: None,
            client_request: None,
        };
        if invite {
            tx.last_sent = Some(Resend::Message(request.response(100)));
            tx.trying_at = Some(now + timers.trying);
        }
        Ok((tx, vec![Action::Deliver(request)]))
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.retransmit.map(|(at, _)| at),
            self.timeout_at,
            self.end_at,
            self.trying_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn terminate(&mut self, actions: &mut Vec<Action>) {
        self.state = State::Terminated;
        self.retransmit = None;
        self.timeout_at = None;
        self.end_at = None;
        actions.push(Action::Terminated);
    }

    /// Enters Completed with the end timer (D/I/J/K) set to `wait`, or zero
    /// on reliable transports.
    fn complete(&mut self, state: State, wait: Duration, now: Instant, actions: &mut Vec<Action>) {
        self.state = state;
        self.retransmit = None;
        self.timeout_at = None;
        if self.reliable {
            self.terminate(actions);
        } else {
            self.end_at = Some(now + wait);
        }
    }

    /// Feeds a response (client) or a retransmitted request / ACK (server).
    pub fn handle_message(&mut self, msg: SipMessage, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.kind {
            Kind::ClientInvite | Kind::ClientNonInvite => self.on_response(msg, now, &mut actions),
            Kind::ServerInvite | Kind::ServerNonInvite => self.on_request(&msg, now, &mut actions),
        }
        actions
    }

    fn on_response(&mut self, response: SipMessage, now: Instant, actions: &mut Vec<Action>) {
        let Some(status) = response.status() else {
            return;
        };
        let invite = self.kind == Kind::ClientInvite;
        match (self.state, status) {
            (State::Trying | State::Proceeding, 100..=199) => {
                if invite {
                    // Timers A and B only run in Calling.
                    self.retransmit = None;
                    self.timeout_at = None;
                } else if let Some((at, _)) = self.retransmit {
                    self.retransmit = Some((at, self.timers.t2));
                }
                self.state = State::Proceeding;
                actions.push(Action::Deliver(response));
            }
            (State::Trying | State::Proceeding, 200..=299) if invite => {
                actions.push(Action::Deliver(response));
                self.terminate(actions);
            }
            (State::Trying | State::Proceeding, _) => {
                let ack = invite
                    .then_some(self.client_request.as_ref())
                    .flatten()
                    .and_then(|request| ack_for(request, &response));
                if let Some(ack) = ack {
                    self.last_sent = Some(Resend::Message(ack.clone()));
                    actions.push(Action::Send(ack));
                }
                actions.push(Action::Deliver(response));
                let wait = if invite {
                    Duration::from_secs(32)
                } else {
                    self.timers.t4
                };
                self.complete(State::Completed, wait, now, actions);
            }
            // Retransmitted final response: re-ACK (INVITE) or absorb.
            (State::Completed, 300..) if invite => {
                if let Some(ack) = self.last_sent.as_ref().and_then(Resend::message) {
                    actions.push(Action::Send(ack));
                }
            }
            _ => {}
        }
    }

    fn on_request(&mut self, request: &SipMessage, now: Instant, actions: &mut Vec<Action>) {
        let is_ack = request.method() == Some(&Method::Ack);
        match (self.kind, self.state, is_ack) {
            (Kind::ServerInvite, State::Completed, true) => {
                let wait = self.timers.t4;
                self.complete(State::Confirmed, wait, now, actions);
            }
            // RFC 6026 §8.7: a retransmitted INVITE is absorbed (the TU
            // resends its 2xx itself); an ACK matching it goes to the TU.
            (Kind::ServerInvite, State::Accepted, true) => {
                actions.push(Action::Deliver(request.clone()));
            }
            (Kind::ServerInvite, State::Accepted, false) => {}
            // Retransmission: repeat the last response (none yet in Trying;
            // a held 100 Trying is due now).
            (_, State::Proceeding | State::Completed, false) => {
                self.trying_at = None;
                if let Some(last) = self.last_sent.as_ref().and_then(Resend::message) {
                    actions.push(Action::Send(last));
                }
            }
            _ => {}
        }
    }

    /// Sends a response from the TU through this server transaction.
    pub fn send_response(
        &mut self,
        response: SipMessage,
        now: Instant,
    ) -> Result<Vec<Action>, TransactionError> {
        let status = response.status().ok_or(TransactionError::NotResponse)?;
        let server = matches!(self.kind, Kind::ServerInvite | Kind::ServerNonInvite);
        let accepted_2xx = self.state == State::Accepted && (200..300).contains(&status);
        if !server || !(matches!(self.state, State::Trying | State::Proceeding) || accepted_2xx) {
            return Err(TransactionError::InvalidResponse);
        }
        self.last_sent = match (self.kind, status) {
            // Repeated when the request is.
            (_, 100..=199) => Some(Resend::Message(response.clone())),
            // A 2xx is repeated by the TU, through send_response.
            (Kind::ServerInvite, 200..=299) => None,
            // Repeated by Timer G until the ACK.
            (Kind::ServerInvite, _) => Some(Resend::Message(response.clone())),
            // A reliable transport ends the transaction at once.
            _ if self.reliable => None,
            _ => Some(Resend::Wire(response.to_bytes())),
        };
        self.trying_at = None;
        let mut actions = vec![Action::Send(response)];
        match (self.kind, status) {
            (_, 100..=199) => self.state = State::Proceeding,
            // 2xx retransmission is the TU's job (§13.3.1.4); RFC 6026 keeps
            // the transaction for Timer L to absorb INVITE retransmissions.
            (Kind::ServerInvite, 200..=299) if self.state != State::Accepted => {
                self.state = State::Accepted;
                self.retransmit = None;
                self.timeout_at = None;
                self.end_at = Some(now + 64 * self.timers.t1);
            }
            (Kind::ServerInvite, 200..=299) => {}
            (Kind::ServerInvite, _) => {
                self.state = State::Completed;
                self.timeout_at = Some(now + 64 * self.timers.t1);
                if !self.reliable {
                    self.retransmit = Some((now + self.timers.t1, self.timers.t1));
                }
            }
            _ => {
                let wait = 64 * self.timers.t1;
                self.complete(State::Completed, wait, now, &mut actions);
            }
        }
        Ok(actions)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.trying_at.is_some_and(|at| at <= now) {
            self.trying_at = None;
            actions.extend(
                self.last_sent
                    .as_ref()
                    .and_then(Resend::message)
                    .map(Action::Send),
            );
        }
        if self.timeout_at.is_some_and(|at| at <= now) {
            // Timer B, F or H.
            actions.push(Action::Timeout);
            self.terminate(&mut actions);
            return actions;
        }
        if self.end_at.is_some_and(|at| at <= now) {
            // Timer D, I, J or K.
            self.terminate(&mut actions);
            return actions;
        }
        if let Some((_, interval)) = self.retransmit.filter(|(at, _)| *at <= now) {
            let client_request = || self.client_request.clone();
            let (resend, next) = match self.kind {
                // Timer A doubles without a cap (§17.1.1.2).
                Kind::ClientInvite => (client_request(), interval * 2),
                Kind::ClientNonInvite if self.state == State::Proceeding => {
                    (client_request(), self.timers.t2)
                }
                Kind::ClientNonInvite => (client_request(), (interval * 2).min(self.timers.t2)),
                // Timer G: the final response, doubling up to T2.
                Kind::ServerInvite | Kind::ServerNonInvite => (
                    self.last_sent.as_ref().and_then(Resend::message),
                    (interval * 2).min(self.timers.t2),
                ),
            };
            let Some(resend) = resend else {
                return actions;
            };
            self.retransmit = Some((now + next, next));
            actions.push(Action::Send(resend));
        }
        actions
    }
}

/// The ACK for a non-2xx final response (§17.1.1.3).
fn ack_for(request: &SipMessage, response: &SipMessage) -> Option<SipMessage> {
    let uri = request.request_uri()?.clone();
    let mut headers = Headers::new();
    if let Some(via) = request.headers.get("Via") {
        headers.push("Via", via);
    }
    for name in ["From", "Call-ID"] {
        if let Some(v) = request.headers.get(name) {
            headers.push(name, v);
        }
    }
    if let Some(to) = response.headers.get("To") {
        headers.push("To", to);
    }
    let seq = request.cseq().map_or(1, |c| c.seq);
    headers.push("CSeq", format!("{seq} ACK"));
    for route in request.headers.get_all("Route") {
        headers.push("Route", route);
    }
    headers.push("Max-Forwards", "70");
    Some(SipMessage {
        start: StartLine::Request {
            method: Method::Ack,
            uri,
            version: SIP_2_0.to_string(),
        },
        headers,
        body: Vec::new(),
    })
}

/// Identifies a transaction: the top Via branch plus, for server
/// transactions, the sent-by (§17.2.3), and the method (ACK matches INVITE).
/// Its fields are read through `Deref`. A message's key is cloned into
/// several tables and events, and looked up several times, so it is shared
/// rather than copied, and hashed once (with a per-process random key, as
/// its parts come from the network).
#[derive(Debug, Clone)]
pub struct TransactionKey(Arc<HashedKey>);

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct KeyFields {
    pub branch: String,
    /// `host[:port]` of the top Via for server transactions; empty for client ones.
    pub sent_by: String,
    /// Call-ID and CSeq number of a server transaction's request (empty for
    /// client ones). Retransmissions, the CANCEL and the ACK all repeat
    /// them, so §17.2.3 matching is unchanged; a peer that reuses a branch
    /// for a different request (the RFC 4475 corpus does) still gets a new
    /// transaction instead of a replayed answer.
    pub request_id: String,
    pub method: Method,
    pub server: bool,
}

impl Deref for TransactionKey {
    type Target = KeyFields;
    fn deref(&self) -> &KeyFields {
        &self.0.fields
    }
}

#[derive(Debug)]
struct HashedKey {
    fields: KeyFields,
    hash: u64,
}

impl PartialEq for TransactionKey {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.0.hash == other.0.hash && self.0.fields == other.0.fields)
    }
}

impl Eq for TransactionKey {}

impl Hash for TransactionKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.hash);
    }
}

impl From<KeyFields> for TransactionKey {
    fn from(fields: KeyFields) -> Self {
        static SEED: OnceLock<RandomState> = OnceLock::new();
        let hash = SEED.get_or_init(RandomState::new).hash_one(&fields);
        TransactionKey(Arc::new(HashedKey { fields, hash }))
    }
}

impl TransactionKey {
    /// The key of the INVITE a CANCEL with this key targets (§9.2).
    fn of_invite(&self) -> TransactionKey {
        KeyFields {
            branch: self.branch.clone(),
            sent_by: self.sent_by.clone(),
            request_id: self.request_id.clone(),
            method: Method::Invite,
            server: self.server,
        }
        .into()
    }

    /// The key of the server transaction `request` belongs to.
    pub fn for_request(request: &SipMessage) -> Result<Self, TransactionError> {
        let method = request.method().ok_or(TransactionError::NotRequest)?;
        let via = request.top_via().map_err(|_| TransactionError::NoBranch)?;
        let branch = match via.branch() {
            Some(b) if b.starts_with(crate::message::BRANCH_MAGIC_COOKIE) => b.to_string(),
            // An RFC 2543 peer: §17.2.3 matches on Request-URI, From tag,
            // Call-ID and CSeq number instead (the last two and the Via's
            // sent-by are in every server key). The To tag is left out so the ACK of a non-2xx, which
            // carries it, still finds the INVITE.
            _ => {
                let uri = request.request_uri().ok_or(TransactionError::NotRequest)?;
                let from_tag = request.from_tag().unwrap_or_default();
                format!("rfc2543 {uri} {from_tag}")
            }
        };
        let sent_by = match via.port {
            Some(p) => format!("{}:{p}", via.host.to_ascii_lowercase()),
            None => via.host.to_ascii_lowercase(),
        };
        let call_id = request.call_id().map_err(|_| TransactionError::NoBranch)?;
        let seq = request.cseq().map_err(|_| TransactionError::NoBranch)?.seq;
        Ok(KeyFields {
            branch,
            sent_by,
            request_id: format!("{call_id} {seq}"),
            method: if *method == Method::Ack {
                Method::Invite
            } else {
                method.clone()
            },
            server: true,
        }
        .into())
    }

    /// The key of the transaction an inbound message belongs to: a server
    /// one for a request, a client one for a response.
    pub fn of_incoming(msg: &SipMessage) -> Result<Self, TransactionError> {
        if msg.is_request() {
            Self::for_request(msg)
        } else {
            Self::for_client(msg)
        }
    }

    /// The key of the client transaction a response (or our own request) belongs to.
    pub fn for_client(msg: &SipMessage) -> Result<Self, TransactionError> {
        let via = msg.top_via().map_err(|_| TransactionError::NoBranch)?;
        let branch = via.branch().ok_or(TransactionError::NoBranch)?;
        let method = msg.cseq().map_err(|_| TransactionError::NoBranch)?.method;
        Ok(KeyFields {
            branch: branch.to_string(),
            sent_by: String::new(),
            request_id: String::new(),
            method,
            server: false,
        }
        .into())
    }
}

/// What the transaction layer asks of its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEvent {
    /// Send through the transport, to where transaction `key` talks to.
    Send {
        key: TransactionKey,
        message: SipMessage,
    },
    /// A new request for the TU; answer with [`TransactionLayer::send_response`].
    Request {
        key: TransactionKey,
        request: SipMessage,
    },
    /// A CANCEL (§9.2): answer it with 200, and the INVITE it matches (if
    /// still pending) with 487; with no match answer the CANCEL with 481.
    Cancel {
        key: TransactionKey,
        request: SipMessage,
        invite: Option<TransactionKey>,
    },
    /// A response for the TU.
    Response {
        key: TransactionKey,
        response: SipMessage,
    },
    Timeout {
        key: TransactionKey,
    },
    /// Matches no transaction: ACKs for 2xx and stray responses go to the
    /// TU/dialog layer (§17.1.1.2, §17.2.1).
    Stray(SipMessage),
    /// The transaction is gone; state kept beside it can be dropped.
    Terminated {
        key: TransactionKey,
    },
}

/// A burst leaves a table sized for its peak (32 s of transactions at the
/// peak rate, tens of MB on a registrar); once it has drained to a quarter
/// of that, the memory goes back. Halving keeps the rehash cost amortized
/// over the removals that led to it.
pub(crate) fn release_spare_capacity<K: Eq + std::hash::Hash, V>(table: &mut HashMap<K, V>) {
    const KEEP: usize = 1024;
    let capacity = table.capacity();
    if capacity > KEEP && table.len() * 4 < capacity {
        table.shrink_to((table.len() * 2).max(KEEP));
    }
}

/// All live transactions of one element.
#[derive(Debug, Default)]
pub struct TransactionLayer {
    timers: TimerConfig,
    transactions: HashMap<TransactionKey, Transaction>,
    /// Due times, so a busy element does not scan every transaction per
    /// event. Entries go stale when a transaction's timer moves or it ends;
    /// stale ones are skipped when they come due (the sequence number only
    /// keeps equal instants apart).
    deadlines: BTreeMap<(Instant, u64), TransactionKey>,
    next_seq: u64,
}

impl TransactionLayer {
    pub fn new(timers: TimerConfig) -> Self {
        Self {
            timers,
            transactions: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.transactions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.transactions.is_empty()
    }

    pub fn get(&self, key: &TransactionKey) -> Option<&Transaction> {
        self.transactions.get(key)
    }

    /// Starts a client transaction (the request's top Via must carry the branch).
    pub fn send_request(
        &mut self,
        request: SipMessage,
        reliable: bool,
        now: Instant,
    ) -> Result<(TransactionKey, Vec<LayerEvent>), TransactionError> {
        let key = TransactionKey::for_client(&request)?;
        let (tx, actions) = Transaction::client(request, reliable, self.timers, now)?;
        self.transactions.insert(key.clone(), tx);
        let events = self.apply(&key, actions);
        Ok((key, events))
    }

    /// Routes a validated inbound message.
    pub fn handle_incoming(
        &mut self,
        msg: SipMessage,
        reliable: bool,
        now: Instant,
    ) -> Vec<LayerEvent> {
        let key = TransactionKey::of_incoming(&msg).ok();
        self.handle_incoming_keyed(key, msg, reliable, now)
    }

    /// [`Self::handle_incoming`] for a caller that already took the
    /// message's key (`None`: it has none).
    pub fn handle_incoming_keyed(
        &mut self,
        key: Option<TransactionKey>,
        msg: SipMessage,
        reliable: bool,
        now: Instant,
    ) -> Vec<LayerEvent> {
        let Some(key) = key else {
            return vec![LayerEvent::Stray(msg)];
        };
        if let Some(tx) = self.transactions.get_mut(&key) {
            let actions = tx.handle_message(msg, now);
            return self.apply(&key, actions);
        }
        if !msg.is_request() || msg.method() == Some(&Method::Ack) {
            return vec![LayerEvent::Stray(msg)];
        }
        match Transaction::server(msg, reliable, self.timers, now) {
            Ok((tx, actions)) => {
                self.transactions.insert(key.clone(), tx);
                self.apply(&key, actions)
            }
            Err(_) => Vec::new(),
        }
    }

    /// Sends the TU's response through server transaction `key`.
    pub fn send_response(
        &mut self,
        key: &TransactionKey,
        response: SipMessage,
        now: Instant,
    ) -> Result<Vec<LayerEvent>, TransactionError> {
        let tx = self
            .transactions
            .get_mut(key)
            .ok_or(TransactionError::Unknown)?;
        let actions = tx.send_response(response, now)?;
        Ok(self.apply(key, actions))
    }

    /// When `handle_timeouts` must next be called (possibly a little early).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeouts(&mut self, now: Instant) -> Vec<LayerEvent> {
        let mut events = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((queued, _), key) = entry.remove_entry();
            let Some(tx) = self.transactions.get_mut(&key) else {
                continue;
            };
            if tx.queued_at == Some(queued) {
                tx.queued_at = None;
            }
            if tx.poll_timeout().is_none_or(|at| at > now) {
                self.schedule(&key);
                continue;
            }
            let actions = tx.handle_timeout(now);
            events.extend(self.apply(&key, actions));
        }
        events
    }

    /// Records the transaction's next due time after it changed.
    fn schedule(&mut self, key: &TransactionKey) {
        let Some(tx) = self.transactions.get_mut(key) else {
            return;
        };
        match tx.poll_timeout() {
            // An earlier queued entry wakes the layer in time to requeue.
            Some(at) if tx.queued_at.is_none_or(|queued| queued > at) => {
                tx.queued_at = Some(at);
                self.next_seq += 1;
                self.deadlines.insert((at, self.next_seq), key.clone());
            }
            _ => {}
        }
    }

    fn apply(&mut self, key: &TransactionKey, actions: Vec<Action>) -> Vec<LayerEvent> {
        let mut events = Vec::new();
        for action in actions {
            match action {
                Action::Send(message) => events.push(LayerEvent::Send {
                    key: key.clone(),
                    message,
                }),
                Action::Deliver(m) if m.method() == Some(&Method::Cancel) => {
                    let invite = key.of_invite();
                    let pending = self
                        .transactions
                        .get(&invite)
                        .is_some_and(|tx| tx.state() == State::Proceeding);
                    events.push(LayerEvent::Cancel {
                        key: key.clone(),
                        request: m,
                        invite: pending.then_some(invite),
                    });
                }
                Action::Deliver(m) if m.is_request() => events.push(LayerEvent::Request {
                    key: key.clone(),
                    request: m,
                }),
                Action::Deliver(m) => events.push(LayerEvent::Response {
                    key: key.clone(),
                    response: m,
                }),
                Action::Timeout => events.push(LayerEvent::Timeout { key: key.clone() }),
                Action::Terminated => {
                    self.transactions.remove(key);
                    release_spare_capacity(&mut self.transactions);
                    events.push(LayerEvent::Terminated { key: key.clone() });
                }
            }
        }
        self.schedule(key);
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_datagram, RequestBuilder};

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn request(method: Method) -> SipMessage {
        RequestBuilder::new(method, "sip:bob@example.com".parse().unwrap())
            .via("UDP", "192.0.2.1", Some(5060))
            .from("<sip:alice@example.com>", Some("a"))
            .to("<sip:bob@example.com>")
            .call_id("call-1")
            .header("Route", "<sip:proxy.example.com;lr>")
            .build()
    }

    fn sends(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(m) => Some(match m.status() {
                    Some(s) => s.to_string(),
                    None => m.method().map(|m| m.to_string()).unwrap_or_default(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Fires timers until `until`, returning the offsets (ms from `t0`) at which requests were resent.
    fn retransmissions(tx: &mut Transaction, t0: Instant, until: Duration) -> Vec<u128> {
        let mut at = Vec::new();
        while let Some(due) = tx.poll_timeout().filter(|d| *d <= t0 + until) {
            let actions = tx.handle_timeout(due);
            if !sends(&actions).is_empty() {
                at.push((due - t0).as_millis());
            }
        }
        at
    }

    #[test]
    fn timer_a_doubles_and_timer_b_times_out() {
        let t0 = Instant::now();
        let (mut tx, actions) =
            Transaction::client(request(Method::Invite), false, TimerConfig::default(), t0)
                .unwrap();
        assert_eq!(sends(&actions), ["INVITE"]);
        // Timer A: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; Timer B at 32 s.
        assert_eq!(
            retransmissions(&mut tx, t0, Duration::from_secs(31)),
            [500, 1500, 3500, 7500, 15500]
        );
        let actions = tx.handle_timeout(tx.poll_timeout().unwrap());
        assert_eq!(sends(&actions), ["INVITE"]);
        let due = tx.poll_timeout().unwrap();
        assert_eq!(due - t0, Duration::from_secs(32));
        assert_eq!(
            tx.handle_timeout(due),
            [Action::Timeout, Action::Terminated]
        );
    }

    #[test]
    fn invite_client_acks_non_2xx_and_timer_d_ends_it() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let (mut tx, _) =
            Transaction::client(req.clone(), false, TimerConfig::default(), t0).unwrap();
        let ringing = tx.handle_message(req.response(180), t0 + MS(100));
        assert!(matches!(ringing.as_slice(), [Action::Deliver(_)]));
        assert_eq!(tx.state(), State::Proceeding);
        assert_eq!(tx.poll_timeout(), None, "A and B stop in Proceeding");
        let busy = req.response(486);
        let actions = tx.handle_message(busy.clone(), t0 + MS(200));
        assert_eq!(sends(&actions), ["ACK"]);
        let Some(Action::Send(ack)) = actions.first() else {
            panic!()
        };
        let ack = parse_datagram(&ack.to_bytes()).unwrap();
        assert_eq!(ack.cseq().unwrap().method, Method::Ack);
        assert_eq!(ack.to().unwrap().tag(), busy.to().unwrap().tag());
        assert_eq!(ack.headers.get("Via"), req.headers.get("Via"));
        assert_eq!(ack.routes().unwrap().len(), 1);
        // A retransmitted 486 is re-ACKed, not delivered again.
        assert_eq!(sends(&tx.handle_message(busy, t0 + MS(300))), ["ACK"]);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + MS(200) + Duration::from_secs(32))
        );
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(33)),
            [Action::Terminated]
        );
    }

    #[test]
    fn invite_client_2xx_terminates_and_reliable_skips_retransmissions() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let (mut tx, _) =
            Transaction::client(req.clone(), true, TimerConfig::default(), t0).unwrap();
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "only Timer B on TCP"
        );
        let actions = tx.handle_message(req.response(200), t0 + MS(10));
        assert!(matches!(
            actions.as_slice(),
            [Action::Deliver(_), Action::Terminated]
        ));
    }

    #[test]
    fn timer_e_caps_at_t2_and_timer_f_times_out() {
        let t0 = Instant::now();
        let (mut tx, _) =
            Transaction::client(request(Method::Options), false, TimerConfig::default(), t0)
                .unwrap();
        let resent = retransmissions(&mut tx, t0, Duration::from_secs(12));
        assert_eq!(resent, [500, 1500, 3500, 7500, 11500]);
        let mut last = Vec::new();
        while let Some(due) = tx.poll_timeout() {
            last = tx.handle_timeout(due);
        }
        assert_eq!(last, [Action::Timeout, Action::Terminated]);
    }

    #[test]
    fn non_invite_client_proceeding_uses_t2_and_timer_k() {
        let t0 = Instant::now();
        let req = request(Method::Register);
        let (mut tx, _) =
            Transaction::client(req.clone(), false, TimerConfig::default(), t0).unwrap();
        tx.handle_message(req.response(100), t0 + MS(100));
        assert_eq!(
            retransmissions(&mut tx, t0, Duration::from_secs(5)),
            [500, 4500]
        );
        let done = tx.handle_message(req.response(200), t0 + Duration::from_secs(5));
        assert!(matches!(done.as_slice(), [Action::Deliver(_)]));
        assert!(tx
            .handle_message(req.response(200), t0 + Duration::from_secs(6))
            .is_empty());
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(10)),
            "Timer K = T4"
        );
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(10)),
            [Action::Terminated]
        );
    }

    #[test]
    fn invite_server_sends_trying_and_timers_g_h() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let (mut tx, actions) =
            Transaction::server(req.clone(), false, TimerConfig::default(), t0).unwrap();
        assert!(sends(&actions).is_empty(), "the 100 waits for the TU");
        assert!(matches!(actions.as_slice(), [Action::Deliver(_)]));
        // A retransmitted INVITE is absorbed and gets the held 100 at once,
        // and then again on each retransmission.
        assert_eq!(sends(&tx.handle_message(req.clone(), t0 + MS(50))), ["100"]);
        assert_eq!(tx.poll_timeout(), None, "the 100 went out: no Trying timer");
        assert_eq!(sends(&tx.handle_message(req.clone(), t0 + MS(60))), ["100"]);
        assert_eq!(
            sends(&tx.send_response(req.response(486), t0).unwrap()),
            ["486"]
        );
        // Timer G: 0.5, 1.5, 3.5, 7.5, 11.5 ... capped at T2; Timer H at 32 s.
        let resent = retransmissions(&mut tx, t0, Duration::from_secs(16));
        assert_eq!(resent, [500, 1500, 3500, 7500, 11500, 15500]);
        assert_eq!(
            sends(&tx.handle_message(req.clone(), t0 + Duration::from_secs(16))),
            ["486"]
        );
        let mut last = Vec::new();
        while let Some(due) = tx.poll_timeout() {
            last = tx.handle_timeout(due);
            if tx.state() == State::Terminated {
                assert_eq!(due - t0, Duration::from_secs(32));
            }
        }
        assert_eq!(last, [Action::Timeout, Action::Terminated]);
    }

    #[test]
    fn invite_server_sends_trying_only_for_a_slow_tu() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let timers = TimerConfig::default();
        // A TU that is still routing after 200 ms: the 100 goes out then,
        // and only once.
        let (mut slow, _) = Transaction::server(req.clone(), false, timers, t0).unwrap();
        assert_eq!(slow.poll_timeout(), Some(t0 + MS(200)));
        assert!(slow.handle_timeout(t0 + MS(199)).is_empty());
        assert_eq!(sends(&slow.handle_timeout(t0 + MS(200))), ["100"]);
        assert_eq!(slow.poll_timeout(), None);
        assert_eq!(
            sends(&slow.send_response(req.response(180), t0 + MS(300)).unwrap()),
            ["180"]
        );
        // A TU that challenges at once: the 407 is the only response, and
        // no timer is left to send a late 100.
        let (mut quick, _) = Transaction::server(req.clone(), false, timers, t0).unwrap();
        let challenged = quick.send_response(req.response(407), t0 + MS(1)).unwrap();
        assert_eq!(sends(&challenged), ["407"]);
        let mut resent = Vec::new();
        while let Some(due) = quick.poll_timeout().filter(|due| *due < t0 + MS(1000)) {
            resent.extend(sends(&quick.handle_timeout(due)));
        }
        assert_eq!(resent, ["407"], "Timer G repeats the 407, never a 100");
    }

    #[test]
    fn invite_server_ack_confirms_and_timer_i_ends() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let (mut tx, _) =
            Transaction::server(req.clone(), false, TimerConfig::default(), t0).unwrap();
        tx.send_response(req.response(603), t0).unwrap();
        let ack = RequestBuilder::new(Method::Ack, "sip:bob@example.com".parse().unwrap()).build();
        assert!(tx.handle_message(ack.clone(), t0 + MS(10)).is_empty());
        assert_eq!(tx.state(), State::Confirmed);
        assert!(tx.handle_message(ack, t0 + MS(20)).is_empty());
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + MS(10) + Duration::from_secs(5)),
            "Timer I = T4"
        );
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(6)),
            [Action::Terminated]
        );
        assert!(tx.send_response(req.response(200), t0).is_err());
    }

    #[test]
    fn invite_server_after_2xx_absorbs_retransmissions_until_timer_l() {
        let t0 = Instant::now();
        let req = request(Method::Invite);
        let (mut tx, _) =
            Transaction::server(req.clone(), false, TimerConfig::default(), t0).unwrap();
        let sent = tx.send_response(req.response(200), t0).unwrap();
        assert_eq!(sends(&sent), ["200"]);
        assert_eq!(tx.state(), State::Accepted);
        assert!(
            tx.handle_message(req.clone(), t0 + MS(400)).is_empty(),
            "absorbed, not a new INVITE"
        );
        assert_eq!(
            sends(&tx.send_response(req.response(200), t0 + MS(500)).unwrap()),
            ["200"]
        );
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer L = 64*T1"
        );
        assert_eq!(
            tx.handle_timeout(t0 + Duration::from_secs(32)),
            [Action::Terminated]
        );
    }

    #[test]
    fn non_invite_server_absorbs_and_timer_j() {
        let t0 = Instant::now();
        let req = request(Method::Options);
        let (mut tx, actions) =
            Transaction::server(req.clone(), false, TimerConfig::default(), t0).unwrap();
        assert!(
            sends(&actions).is_empty(),
            "no automatic 100 for non-INVITE"
        );
        assert!(
            tx.handle_message(req.clone(), t0).is_empty(),
            "nothing to resend yet"
        );
        let ok = req.response(200);
        tx.send_response(ok.clone(), t0).unwrap();
        // Kept serialized for Timer J, and repeated as it went on the wire.
        let resent = tx.handle_message(req.clone(), t0 + MS(5));
        let [Action::Send(again)] = resent.as_slice() else {
            panic!("{resent:?}")
        };
        assert_eq!(again.to_bytes(), ok.to_bytes());
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + Duration::from_secs(32)),
            "Timer J = 64*T1"
        );
        let (mut reliable, _) =
            Transaction::server(req.clone(), true, TimerConfig::default(), t0).unwrap();
        let actions = reliable.send_response(req.response(200), t0).unwrap();
        assert_eq!(
            actions.last(),
            Some(&Action::Terminated),
            "Timer J is 0 on TCP"
        );
    }

    #[test]
    fn custom_t1_scales_timers() {
        let t0 = Instant::now();
        let timers = TimerConfig {
            t1: MS(100),
            t2: MS(400),
            t4: MS(1000),
            ..TimerConfig::default()
        };
        let (mut tx, _) = Transaction::client(request(Method::Options), false, timers, t0).unwrap();
        assert_eq!(
            retransmissions(&mut tx, t0, MS(1500)),
            [100, 300, 700, 1100, 1500]
        );
    }

    #[test]
    fn rfc2543_requests_without_magic_cookie_still_get_transactions() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let mut invite = request(Method::Invite);
        invite
            .headers
            .set("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=old-style-1");
        let events = layer.handle_incoming(invite.clone(), false, t0);
        assert!(matches!(events.last(), Some(LayerEvent::Request { .. })));
        let again = layer.handle_incoming(invite.clone(), false, t0 + MS(500));
        assert!(
            matches!(again.as_slice(), [LayerEvent::Send { .. }]),
            "absorbed"
        );
        invite.headers.set("Via", "SIP/2.0/UDP 192.0.2.1:5060");
        let events = layer.handle_incoming(invite, false, t0);
        assert!(
            matches!(events.as_slice(), [LayerEvent::Send { .. }]),
            "no branch at all is the same RFC 2543 transaction"
        );
    }

    #[test]
    fn a_reused_branch_on_another_request_starts_a_new_transaction() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let first = request(Method::Register);
        let mut second = first.clone();
        second.headers.set("Call-ID", "another-call");
        let events = layer.handle_incoming(first, false, t0);
        assert!(matches!(events.as_slice(), [LayerEvent::Request { .. }]));
        let events = layer.handle_incoming(second, false, t0);
        assert!(
            matches!(events.as_slice(), [LayerEvent::Request { .. }]),
            "{events:?}"
        );
        assert_eq!(layer.len(), 2);
    }

    #[test]
    fn the_table_gives_back_its_memory_after_a_burst() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        for _ in 0..20_000 {
            layer
                .send_request(request(Method::Options), false, t0)
                .unwrap();
        }
        let peak = layer.transactions.capacity();
        assert!(peak >= 20_000);
        // Timer F ends every one of them.
        layer.handle_timeouts(t0 + Duration::from_secs(40));
        assert!(layer.is_empty());
        assert!(
            layer.transactions.capacity() <= 2048,
            "{} of {peak} kept",
            layer.transactions.capacity()
        );
    }

    #[test]
    fn layer_fires_timers_from_its_deadline_queue() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let invite = request(Method::Invite);
        let (key, _) = layer.send_request(invite.clone(), false, t0).unwrap();
        assert_eq!(layer.poll_timeout(), Some(t0 + MS(500)));
        assert!(layer.handle_timeouts(t0 + MS(499)).is_empty());
        let fired = layer.handle_timeouts(t0 + MS(500));
        assert!(matches!(fired.as_slice(), [LayerEvent::Send { key: k, .. }] if *k == key));
        assert_eq!(layer.poll_timeout(), Some(t0 + MS(1500)), "Timer A doubled");
        // A provisional response stops Timers A and B: nothing is due any more.
        let events = layer.handle_incoming(invite.response(180), false, t0 + MS(600));
        assert!(matches!(events.as_slice(), [LayerEvent::Response { .. }]));
        assert!(layer.handle_timeouts(t0 + MS(40_000)).is_empty());
        assert_eq!(layer.poll_timeout(), None);
        assert_eq!(
            layer.len(),
            1,
            "a proceeding INVITE waits for its final response"
        );
    }

    #[test]
    fn layer_routes_retransmissions_responses_and_cancel() {
        let t0 = Instant::now();
        let mut layer = TransactionLayer::new(TimerConfig::default());
        let invite = request(Method::Invite);
        let events = layer.handle_incoming(invite.clone(), false, t0);
        let Some(LayerEvent::Request { key, .. }) = events.last() else {
            panic!("{events:?}")
        };
        let key = key.clone();
        assert_eq!(events.len(), 1, "no 100 before the TU had its 200 ms");
        assert_eq!(layer.poll_timeout(), Some(t0 + MS(200)));
        let trying = layer.handle_timeouts(t0 + MS(200));
        assert!(
            matches!(trying.as_slice(), [LayerEvent::Send { message, .. }] if message.status() == Some(100))
        );
        // Retransmission: absorbed, 100 repeated, no new request for the TU.
        let again = layer.handle_incoming(invite.clone(), false, t0 + MS(500));
        assert!(matches!(again.as_slice(), [LayerEvent::Send { .. }]));
        assert_eq!(layer.len(), 1);

        let mut cancel = invite.clone();
        cancel.start = StartLine::Request {
            method: Method::Cancel,
            uri: invite.request_uri().unwrap().clone(),
            version: SIP_2_0.into(),
        };
        cancel.headers.set("CSeq", "1 CANCEL");
        let events = layer.handle_incoming(cancel, false, t0 + MS(600));
        let [LayerEvent::Cancel {
            key: cancel_key,
            invite: Some(matched),
            ..
        }] = events.as_slice()
        else {
            panic!("{events:?}")
        };
        assert_eq!(matched, &key);
        let cancel_key = cancel_key.clone();
        layer
            .send_response(&cancel_key, invite.response(200), t0 + MS(601))
            .unwrap();
        layer
            .send_response(&key, invite.response(487), t0 + MS(602))
            .unwrap();
        assert_eq!(layer.len(), 2);

        // Client side: a response is routed to its transaction by branch and CSeq method.
        let options = request(Method::Options);
        let (client_key, sent) = layer.send_request(options.clone(), true, t0).unwrap();
        assert!(matches!(sent.as_slice(), [LayerEvent::Send { .. }]));
        let events = layer.handle_incoming(options.response(200), true, t0 + MS(5));
        assert!(
            matches!(events.as_slice(), [LayerEvent::Response { key, .. }, LayerEvent::Terminated { .. }] if *key == client_key)
        );
        assert!(layer.get(&client_key).is_none(), "Timer K is 0 on TCP");
        let stray = layer.handle_incoming(options.response(200), true, t0 + MS(6));
        assert!(matches!(stray.as_slice(), [LayerEvent::Stray(_)]));

        // Everything ends once the timers run out.
        let end = t0 + Duration::from_secs(64);
        while layer.poll_timeout().is_some_and(|d| d <= end) {
            layer.handle_timeouts(layer.poll_timeout().unwrap());
        }
        assert!(layer.is_empty());
    }
}
