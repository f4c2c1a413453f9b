//! One call through the B2BUA, sans-IO: fed requests, responses and time,
//! it returns [`Output`]s for the driver to carry out.
//!
//! The caller's leg (A) is a UAS dialog; each of the callee's registered
//! contacts gets its own INVITE (a fork, with its own Call-ID). The first
//! 2xx wins and the other forks are CANCELled. Once answered, the call is
//! symmetric: a request from one side is re-issued in the other side's
//! dialog and its response relayed back. SDP passes through unchanged,
//! unless the call's media is anchored at the node (to record it): then
//! every SDP crossing the B2BUA is re-addressed to the anchor's side facing
//! its recipient, and the author's own address is handed to the relay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sip::dialog::Dialog;
use sip::endpoint::{ClientEvent, Peer};
use sip::message::{reason_phrase, Method, RequestBuilder, SipMessage, Uri};
use sip::transaction::{TimerConfig, TransactionKey};

use super::resend::{Resend, ResendDue};
use super::routing::{ForwardWhen, Refusal, Unanswered};

/// How the B2BUA reaches one side and names itself there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegAddr {
    /// Where requests are physically sent (the flow, behind NAT too).
    pub peer: Peer,
    /// Our `host:port` as that side should see it (Via, Contact).
    pub local_host: String,
    pub local_port: u16,
}

/// One registered contact of the callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkTarget {
    /// The contact's URI: the Request-URI of the fork's INVITE.
    pub uri: Uri,
    /// The registered Path (RFC 3327), sent as Route headers.
    pub route: Vec<String>,
    pub addr: LegAddr,
}

/// Everything a call starts from.
#[derive(Debug, Clone)]
pub struct CallSetup {
    pub invite: SipMessage,
    pub invite_key: TransactionKey,
    pub caller: LegAddr,
    /// The caller as the callee sees it, e.g. `"Demo 100" <sip:100@demo.pbx.local>`.
    pub caller_identity: String,
    pub target: Target,
    pub timers: TimerConfig,
    /// The node's music-on-hold stream; `None` = a held party hears silence.
    pub music_on_hold: Option<std::net::SocketAddr>,
    /// Where the node relays this call's media; `None` = end to end.
    pub anchor: Option<MediaAnchor>,
}

/// Who a call rings, and what happens when nobody there answers.
#[derive(Debug, Clone)]
pub struct Target {
    /// The callee's address of record, e.g. `<sip:101@demo.pbx.local>`.
    pub callee_aor: String,
    pub forks: Vec<ForkTarget>,
    pub ring_timeout: Duration,
    /// The outcomes the callee forwards: the driver is asked for a new
    /// target instead of the caller getting the failure.
    pub forward_when: ForwardWhen,
    /// Find-me/follow-me: after this long the driver is asked for more forks.
    pub follow_me_after: Option<Duration>,
}

/// The two faces of a call's media relay at the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaAnchor {
    /// What the caller is told to send to (the relay's leg A).
    pub toward_caller: std::net::SocketAddr,
    /// What the callee's devices are told to send to (leg B).
    pub toward_callee: std::net::SocketAddr,
}

/// How a call ended, in CDR terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Answered,
    Busy,
    NoAnswer,
    Cancelled,
    Failed,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Answered => "ANSWERED",
            Disposition::Busy => "BUSY",
            Disposition::NoAnswer => "NO ANSWER",
            Disposition::Cancelled => "CANCELLED",
            Disposition::Failed => "FAILED",
        }
    }
}

/// Which side hung up or ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Caller,
    Callee,
    System,
}

/// The outcome of a call, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEnd {
    pub disposition: Disposition,
    /// Q.850 cause name, as FreeSWITCH and PortSIP report it.
    pub hangup_cause: &'static str,
    pub hangup_by: Side,
    pub answered_at: Option<Instant>,
    pub ended_at: Instant,
    /// The final status sent to the caller for an unanswered call.
    pub final_status: Option<u16>,
}

/// What the driver must do.
#[derive(Debug)]
pub enum Output {
    /// Answer server transaction `key`.
    Respond {
        key: TransactionKey,
        response: SipMessage,
    },
    /// Start a client transaction; its events come back with `txn`.
    Request {
        txn: u64,
        request: SipMessage,
        target: Peer,
    },
    /// Send outside any transaction (ACK for 2xx, 2xx retransmission).
    Stateless {
        message: SipMessage,
        target: Peer,
    },
    /// The call is over (reported once; later outputs may still follow,
    /// e.g. ACK and BYE for a fork that answers after a CANCEL).
    Ended(CallEnd),
    /// Stream music on hold to a held party (`listener`: 0 = the caller,
    /// 1 + n = fork n), or stop it.
    StartMusic {
        listener: usize,
        target: std::net::SocketAddr,
        codec: sip::sdp::AudioCodec,
    },
    StopMusic {
        listener: usize,
    },
    /// Anchored media: the relay's `leg` (A = caller, B = callee) now
    /// sends to the stream its side described.
    RelayTo {
        leg: media::Leg,
        stream: sip::sdp::AudioStream,
    },
    /// The caller got the 2xx: the conversation begins.
    Answered,
    /// Nobody at the target took the call, and the callee forwards such
    /// calls: the driver answers with [`Input::Retarget`] or [`Input::Refuse`].
    Unanswered(Unanswered),
    /// Find-me/follow-me is due: the driver answers with [`Input::AddForks`]
    /// (empty when the number cannot be rung).
    FollowMeDue,
}

/// What the driver feeds in.
#[derive(Debug)]
pub enum Input {
    /// An in-dialog request (or ACK, `key` = None) from either side.
    Request {
        key: Option<TransactionKey>,
        request: SipMessage,
    },
    /// The caller CANCELled the INVITE.
    Cancel,
    /// A response that matched no transaction (a 2xx retransmission).
    StrayResponse(SipMessage),
    /// An event of client transaction `txn`.
    Client { txn: u64, event: ClientEvent },
    /// After [`Output::Unanswered`]: ring this target instead.
    Retarget(Target),
    /// After [`Output::Unanswered`]: the forward leads nowhere; the caller
    /// hears this.
    Refuse(Refusal),
    /// After [`Output::FollowMeDue`]: ring these too.
    AddForks(Vec<ForkTarget>),
}

/// Which leg of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leg {
    Caller,
    Fork(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForkState {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional response came: a CANCEL may now be sent.
    Proceeding,
    /// A final response came (or the transaction failed).
    Done,
}

#[derive(Debug)]
struct Fork {
    target: ForkTarget,
    invite: SipMessage,
    state: ForkState,
    /// A CANCEL is due as soon as the fork is proceeding.
    cancel_wanted: bool,
    dialog: Option<Dialog>,
    final_status: Option<u16>,
}

/// A request of one side re-issued on the other, awaiting its response.
#[derive(Debug)]
struct Relay {
    origin: Leg,
    origin_key: TransactionKey,
    origin_request: SipMessage,
    method: Method,
    /// The other side was offered our music instead of the holder's SDP.
    music: bool,
}

/// A 2xx we keep sending until its ACK comes (§13.3.1.4), and the ACK we
/// then owe the other side for its 2xx.
#[derive(Debug)]
struct Unacked2xx {
    leg: Leg,
    response: SipMessage,
    cseq: u32,
    resend: Resend,
    /// The other leg and the CSeq of the INVITE whose 2xx we must ACK there.
    owed_ack: Option<(Leg, u32)>,
}

/// A reliable provisional (RFC 3262) sent to the caller, until PRACKed.
#[derive(Debug)]
struct Unpracked {
    response: SipMessage,
    rseq: u32,
    resend: Resend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ringing,
    /// 2xx sent to the caller.
    Answered,
    Over,
}

/// The state of one call.
#[derive(Debug)]
pub struct Call {
    timers: TimerConfig,
    invite: SipMessage,
    invite_key: TransactionKey,
    caller: LegAddr,
    caller_dialog: Option<Dialog>,
    /// Our To tag toward the caller.
    local_tag: String,
    caller_100rel: bool,
    caller_identity: String,
    /// The To of every fork's INVITE: the current target's address of record.
    callee_aor: String,
    /// Max-Forwards of every fork's INVITE.
    max_forwards: u8,
    forks: Vec<Fork>,
    /// The first fork of the current target (earlier ones belong to a
    /// target the call was forwarded away from).
    target_start: usize,
    forward_when: ForwardWhen,
    follow_me_at: Option<Instant>,
    /// [`Output::Unanswered`] was sent: the driver's answer is awaited.
    awaiting_route: bool,
    winner: Option<usize>,
    phase: Phase,
    ring_deadline: Option<Instant>,
    relays: HashMap<u64, Relay>,
    unacked: Vec<Unacked2xx>,
    unpracked: Option<Unpracked>,
    next_rseq: u32,
    next_txn: u64,
    answered_at: Option<Instant>,
    ended: bool,
    /// Transactions whose outcome we still wait for before the task may go.
    outstanding: HashMap<u64, Leg>,
    /// Fork INVITEs' transaction ids, for telling their responses apart.
    fork_of_txn: HashMap<u64, usize>,
    music_on_hold: Option<std::net::SocketAddr>,
    anchor: Option<MediaAnchor>,
    /// Legs hearing our music now.
    on_hold_music: Vec<Leg>,
    sdp_session: u64,
    sdp_version: u64,
    outputs: Vec<Output>,
}

fn listener_of(leg: Leg) -> usize {
    match leg {
        Leg::Caller => 0,
        Leg::Fork(i) => i + 1,
    }
}

fn header_has_token(message: &SipMessage, header: &str, token: &str) -> bool {
    message
        .headers
        .list(header)
        .iter()
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_sdp(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}

pub(super) fn contact_of(addr: &LegAddr, user: &str) -> String {
    let transport = match addr.peer.transport {
        sip::transport::Transport::Udp => String::new(),
        other => format!(";transport={}", other.via_name().to_ascii_lowercase()),
    };
    format!(
        "<sip:{user}@{}:{}{transport}>",
        addr.local_host, addr.local_port
    )
}

pub(super) fn via(builder: RequestBuilder, addr: &LegAddr) -> RequestBuilder {
    builder.via(
        addr.peer.transport.via_name(),
        &addr.local_host,
        Some(addr.local_port),
    )
}

/// Which failure the caller hears when every fork failed (§16.7 step 6,
/// with busy preferred over other 4xx because it is what the user did).
fn best_failure(statuses: &[u16]) -> u16 {
    if let Some(s) = statuses.iter().copied().find(|s| *s >= 600) {
        return s;
    }
    if statuses.contains(&486) {
        return 486;
    }
    statuses
        .iter()
        .copied()
        .filter(|s| (400..500).contains(s) && *s != 408 && *s != 487)
        .min()
        .or_else(|| statuses.iter().copied().filter(|s| *s >= 500).min())
        .unwrap_or(480)
}

fn failure_outcome(status: u16) -> (Disposition, &'static str, u16) {
    match status {
        486 | 600 => (Disposition::Busy, "USER_BUSY", status),
        // Nobody answered in time, or every device was unreachable.
        408 | 480 | 487 => (Disposition::NoAnswer, "NO_ANSWER", 480),
        603 => (Disposition::Failed, "CALL_REJECTED", 603),
        _ => (Disposition::Failed, "NORMAL_TEMPORARY_FAILURE", status),
    }
}

/// Q.850 cause number of a cause name (RFC 3326 Reason header).
fn q850(cause: &str) -> u16 {
    match cause {
        "USER_BUSY" => 17,
        "NO_ANSWER" => 19,
        "CALL_REJECTED" => 21,
        "ORIGINATOR_CANCEL" => 16,
        _ => 41,
    }
}

impl Call {
    /// Starts the call: one INVITE per contact, and the ring timer.
    pub fn start(setup: CallSetup, now: Instant) -> Call {
        let caller_100rel = header_has_token(&setup.invite, "Supported", "100rel")
            || header_has_token(&setup.invite, "Require", "100rel");
        let max_forwards = setup
            .invite
            .max_forwards()
            .ok()
            .flatten()
            .unwrap_or(70)
            .saturating_sub(1);
        let mut call = Call {
            timers: setup.timers,
            invite_key: setup.invite_key,
            caller: setup.caller,
            caller_dialog: None,
            local_tag: sip::message::new_tag(),
            caller_100rel,
            caller_identity: setup.caller_identity,
            callee_aor: String::new(),
            max_forwards,
            forks: Vec::new(),
            target_start: 0,
            forward_when: ForwardWhen::default(),
            follow_me_at: None,
            awaiting_route: false,
            winner: None,
            phase: Phase::Ringing,
            ring_deadline: None,
            relays: HashMap::new(),
            unacked: Vec::new(),
            unpracked: None,
            next_rseq: 1,
            next_txn: 0,
            answered_at: None,
            ended: false,
            outstanding: HashMap::new(),
            fork_of_txn: HashMap::new(),
            music_on_hold: setup.music_on_hold,
            anchor: setup.anchor,
            on_hold_music: Vec::new(),
            sdp_session: u64::from(rand::random::<u32>()),
            sdp_version: 0,
            outputs: Vec::new(),
            invite: setup.invite,
        };
        call.ring(setup.target, now);
        call
    }

    /// Rings a target: its forks, its ring timer, its forwards.
    fn ring(&mut self, target: Target, now: Instant) {
        self.callee_aor = target.callee_aor;
        self.target_start = self.forks.len();
        self.forward_when = target.forward_when;
        self.ring_deadline = Some(now + target.ring_timeout);
        self.follow_me_at = target.follow_me_after.map(|delay| now + delay);
        self.awaiting_route = false;
        self.add_forks(target.forks);
        if self.forks.len() == self.target_start {
            self.fail_caller(480, now);
        }
    }

    /// One INVITE per contact, all at once.
    fn add_forks(&mut self, targets: Vec<ForkTarget>) {
        for target in targets {
            let index = self.forks.len();
            let mut builder = via(
                RequestBuilder::new(Method::Invite, target.uri.clone()),
                &target.addr,
            )
            .from(&self.caller_identity, None)
            .to(&self.callee_aor)
            .cseq(1)
            .header("Max-Forwards", self.max_forwards.to_string())
            .header("Contact", contact_of(&target.addr, "pbx"));
            for route in &target.route {
                builder = builder.header("Route", route.clone());
            }
            // Only offer reliable provisionals if the caller can take them.
            if self.caller_100rel {
                builder = builder.header("Supported", "100rel");
            }
            for name in ["Allow", "Accept"] {
                if let Some(value) = self.invite.headers.get(name) {
                    builder = builder.header(name, value);
                }
            }
            let caller_invite = self.invite.clone();
            let invite = self
                .copy_body(builder, Leg::Fork(index), &caller_invite)
                .build();
            let txn = self.send_request(Leg::Fork(index), invite.clone(), target.addr.peer);
            self.fork_of_txn.insert(txn, index);
            self.forks.push(Fork {
                target,
                invite,
                state: ForkState::Calling,
                cancel_wanted: false,
                dialog: None,
                final_status: None,
            });
        }
    }

    /// Whether the call still rings its target (not answered, not over,
    /// not waiting for the driver to say where it goes next).
    fn ringing(&self) -> bool {
        self.phase == Phase::Ringing && !self.awaiting_route
    }

    /// Nobody at the target took the call: forwarded if the callee says
    /// so, else the caller gets `status`.
    fn unanswered(&mut self, status: u16, now: Instant) {
        let why = match status {
            486 | 600 | 603 => Unanswered::Busy,
            _ => Unanswered::NoAnswer,
        };
        if self.forward_when.covers(why) {
            self.awaiting_route = true;
            self.ring_deadline = None;
            self.follow_me_at = None;
            self.outputs.push(Output::Unanswered(why));
        } else {
            self.fail_caller(status, now);
        }
    }

    /// The Call-ID and our tag of every dialog this call owns: the caller's
    /// and each fork's. Requests arrive with our tag in To; responses in From.
    pub fn dialog_keys(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        if let Ok(call_id) = self.invite.call_id() {
            keys.push((call_id.to_string(), self.local_tag.clone()));
        }
        for fork in &self.forks {
            if let (Ok(call_id), Some(tag)) = (fork.invite.call_id(), fork.invite.from_tag()) {
                keys.push((call_id.to_string(), tag));
            }
        }
        keys
    }

    pub fn caller_invite_key(&self) -> &TransactionKey {
        &self.invite_key
    }

    /// Whether the driver can drop the call: it is over and nothing is
    /// outstanding that could still need an answer (a late 2xx, a BYE).
    pub fn is_finished(&self) -> bool {
        self.ended && self.outstanding.is_empty() && self.unacked.is_empty()
    }

    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let ringing = self.ringing();
        let ring = self.ring_deadline.filter(|_| ringing);
        let follow_me = self.follow_me_at.filter(|_| ringing);
        let unacked = self.unacked.iter().map(|u| u.resend.poll_timeout());
        let unpracked = self.unpracked.as_ref().map(|u| u.resend.poll_timeout());
        ring.into_iter()
            .chain(follow_me)
            .chain(unacked)
            .chain(unpracked)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ringing() && self.ring_deadline.is_some_and(|at| at <= now) {
            self.ring_deadline = None;
            self.cancel_forks(None);
            self.unanswered(480, now);
        }
        if self.ringing() && self.follow_me_at.is_some_and(|at| at <= now) {
            self.follow_me_at = None;
            self.outputs.push(Output::FollowMeDue);
        }
        let mut gave_up = false;
        for unacked in &mut self.unacked {
            match unacked.resend.fire(now) {
                ResendDue::GiveUp => gave_up = true,
                ResendDue::Resend => {
                    let target = match unacked.leg {
                        Leg::Caller => self.caller.peer,
                        Leg::Fork(i) => match self.forks.get(i) {
                            Some(f) => f.target.addr.peer,
                            None => continue,
                        },
                    };
                    self.outputs.push(Output::Stateless {
                        message: unacked.response.clone(),
                        target,
                    });
                }
                ResendDue::Nothing => {}
            }
        }
        if gave_up {
            // §13.3.1.4: no ACK in 64*T1 means the session is dead.
            self.unacked.retain(|u| u.resend.poll_timeout() > now);
            self.send_bye(Leg::Caller);
            if let Some(winner) = self.winner {
                self.send_bye(Leg::Fork(winner));
            }
            self.finish_answered(Side::System, "RECOVERY_ON_TIMER_EXPIRE", now);
        }
        if let Some(unpracked) = &mut self.unpracked {
            match unpracked.resend.fire(now) {
                ResendDue::GiveUp => self.unpracked = None,
                ResendDue::Resend => self.outputs.push(Output::Stateless {
                    message: unpracked.response.clone(),
                    target: self.caller.peer,
                }),
                ResendDue::Nothing => {}
            }
        }
    }

    pub fn handle(&mut self, input: Input, now: Instant) {
        match input {
            Input::Cancel => self.on_caller_cancel(now),
            Input::Retarget(target) => {
                if self.phase == Phase::Ringing && self.awaiting_route {
                    self.ring(target, now);
                }
            }
            Input::Refuse(refusal) => {
                if self.phase == Phase::Ringing && self.awaiting_route {
                    self.refuse_caller(refusal, now);
                }
            }
            Input::AddForks(forks) => {
                if self.ringing() {
                    self.add_forks(forks);
                }
            }
            Input::Request { key, request } => self.on_request(key, request, now),
            Input::StrayResponse(response) => self.on_stray_response(&response),
            Input::Client { txn, event } => {
                let response = match event {
                    ClientEvent::Response(r) => r,
                    ClientEvent::Timeout => self.synthetic_response(txn, 408),
                    ClientEvent::TransportFailed(_) => self.synthetic_response(txn, 503),
                };
                let is_final = response.status().is_some_and(|s| s >= 200);
                if is_final {
                    self.outstanding.remove(&txn);
                }
                if let Some(&fork) = self.fork_of_txn.get(&txn) {
                    self.on_fork_response(fork, response, now);
                } else if let Some(relay) = self.relays.remove(&txn) {
                    if is_final {
                        self.on_relayed_response(relay, &response, now);
                    } else {
                        self.relays.insert(txn, relay);
                    }
                }
            }
        }
    }

    /// Stands in for a response that never came, built on the request sent.
    fn synthetic_response(&self, txn: u64, status: u16) -> SipMessage {
        let request = self
            .fork_of_txn
            .get(&txn)
            .and_then(|&i| self.forks.get(i))
            .map(|f| &f.invite)
            .unwrap_or(&self.invite);
        sip::message::response_from_headers(&request.headers, status, reason_phrase(status))
    }

    fn send_request(&mut self, leg: Leg, request: SipMessage, target: Peer) -> u64 {
        self.next_txn += 1;
        let txn = self.next_txn;
        self.outstanding.insert(txn, leg);
        self.outputs.push(Output::Request {
            txn,
            request,
            target,
        });
        txn
    }

    /// `from`'s body as it goes to `to`: as is, or with its SDP
    /// re-addressed to the anchor's face toward `to` while the relay is
    /// told where the author receives.
    fn body_toward(&mut self, to: Leg, from: &SipMessage) -> Option<(String, Vec<u8>)> {
        let content_type = from.content_type()?.to_string();
        let Some(anchor) = self.anchor.filter(|_| is_sdp(&content_type)) else {
            return Some((content_type, from.body().to_vec()));
        };
        let (ours, author) = match to {
            Leg::Caller => (anchor.toward_caller, media::Leg::B),
            Leg::Fork(_) => (anchor.toward_callee, media::Leg::A),
        };
        match sip::sdp::anchor_audio(from.body(), ours) {
            Ok((body, stream)) => {
                self.outputs.push(Output::RelayTo {
                    leg: author,
                    stream,
                });
                Some((content_type, body))
            }
            Err(e) => {
                // Media then flows end to end, past the anchor.
                tracing::warn!(error = %e, "SDP not anchored");
                Some((content_type, from.body().to_vec()))
            }
        }
    }

    fn copy_body(&mut self, builder: RequestBuilder, to: Leg, from: &SipMessage) -> RequestBuilder {
        match self.body_toward(to, from) {
            Some((content_type, body)) => builder.body(&content_type, body),
            None => builder,
        }
    }

    fn set_body(&mut self, response: &mut SipMessage, to: Leg, from: &SipMessage) {
        if let Some((content_type, body)) = self.body_toward(to, from) {
            response.headers.set("Content-Type", content_type);
            response.body = body;
        }
    }

    fn respond_caller(&mut self, status: u16, reason: &str) -> SipMessage {
        self.invite
            .response_with_tag(status, reason, &self.local_tag)
    }

    fn leg_addr(&self, leg: Leg) -> Option<&LegAddr> {
        match leg {
            Leg::Caller => Some(&self.caller),
            Leg::Fork(i) => self.forks.get(i).map(|f| &f.target.addr),
        }
    }

    fn dialog_mut(&mut self, leg: Leg) -> Option<&mut Dialog> {
        match leg {
            Leg::Caller => self.caller_dialog.as_mut(),
            Leg::Fork(i) => self.forks.get_mut(i).and_then(|f| f.dialog.as_mut()),
        }
    }

    /// The side across from `leg` once the call is set up.
    fn other(&self, leg: Leg) -> Option<Leg> {
        match leg {
            Leg::Caller => self.winner.map(Leg::Fork),
            Leg::Fork(_) => Some(Leg::Caller),
        }
    }

    fn end(&mut self, end: CallEnd) {
        if !self.ended {
            self.ended = true;
            self.phase = Phase::Over;
            self.outputs.push(Output::Ended(end));
        }
    }

    /// Sends the final failure the forks' `status` makes, and ends the call.
    fn fail_caller(&mut self, status: u16, now: Instant) {
        let (_, cause, status) = failure_outcome(status);
        self.refuse_caller(
            Refusal {
                status,
                cause,
                q850: q850(cause),
            },
            now,
        );
    }

    /// Sends a final failure to the caller and ends the call.
    fn refuse_caller(&mut self, refusal: Refusal, now: Instant) {
        let Refusal {
            status,
            cause,
            q850,
        } = refusal;
        let mut response = self.respond_caller(status, reason_phrase(status));
        response
            .headers
            .push("Reason", format!("Q.850;cause={q850};text=\"{cause}\""));
        self.outputs.push(Output::Respond {
            key: self.invite_key.clone(),
            response,
        });
        self.end(CallEnd {
            disposition: failure_outcome(status).0,
            hangup_cause: cause,
            hangup_by: Side::Callee,
            answered_at: None,
            ended_at: now,
            final_status: Some(status),
        });
    }

    /// CANCELs every pending fork except `keep`, now or once it is proceeding.
    fn cancel_forks(&mut self, keep: Option<usize>) {
        for index in 0..self.forks.len() {
            if Some(index) == keep {
                continue;
            }
            if let Some(fork) = self.forks.get_mut(index) {
                if fork.state != ForkState::Done && !fork.cancel_wanted {
                    fork.cancel_wanted = true;
                    if fork.state == ForkState::Proceeding {
                        self.send_cancel(index);
                    }
                }
            }
        }
    }

    /// §9.1: same Request-URI, Call-ID, From, To, CSeq number and top Via.
    fn send_cancel(&mut self, index: usize) {
        let Some(fork) = self.forks.get(index) else {
            return;
        };
        let invite = &fork.invite;
        let (Some(uri), Ok(cseq)) = (invite.request_uri(), invite.cseq()) else {
            return;
        };
        let mut builder = RequestBuilder::new(Method::Cancel, uri.clone()).cseq(cseq.seq);
        for name in ["Via", "From", "To", "Call-ID", "Route", "Max-Forwards"] {
            for value in invite.headers.get_all(name) {
                builder = builder.header(name, value);
            }
        }
        let cancel = builder.build();
        let target = fork.target.addr.peer;
        self.send_request(Leg::Fork(index), cancel, target);
    }

    fn on_fork_response(&mut self, index: usize, response: SipMessage, now: Instant) {
        let Some(status) = response.status() else {
            return;
        };
        let Some(fork) = self.forks.get_mut(index) else {
            return;
        };
        match status {
            100..=199 => {
                let first = fork.state == ForkState::Calling;
                if fork.state != ForkState::Done {
                    fork.state = ForkState::Proceeding;
                }
                if status > 100 && fork.dialog.is_none() {
                    fork.dialog = Dialog::as_uac(&fork.invite, &response).ok();
                }
                if first && fork.cancel_wanted {
                    self.send_cancel(index);
                    return;
                }
                if status > 100 && self.phase == Phase::Ringing {
                    self.prack_if_reliable(index, &response);
                    self.relay_provisional(&response, now);
                }
            }
            200..=299 => {
                fork.state = ForkState::Done;
                fork.final_status = Some(status);
                let dialog = Dialog::as_uac(&fork.invite, &response).ok();
                let Some(mut dialog) = dialog else {
                    tracing::warn!(status, "2xx without a usable Contact or To tag");
                    self.after_fork_failure(now);
                    return;
                };
                let _ = dialog.update_from_response(&response);
                fork.dialog = Some(dialog);
                if self.winner.is_none() && self.phase == Phase::Ringing {
                    self.winner = Some(index);
                    self.answer_caller(index, &response, now);
                } else {
                    // Answered after another fork won or the caller left:
                    // confirm and release it (§13.2.2.4 still wants the ACK).
                    self.ack_fork(index, None);
                    self.send_bye(Leg::Fork(index));
                }
            }
            _ => {
                fork.state = ForkState::Done;
                fork.final_status = Some(status);
                self.after_fork_failure(now);
            }
        }
    }

    /// When every fork of the target has failed, the best failure decides
    /// whether the call is forwarded or what the caller hears.
    fn after_fork_failure(&mut self, now: Instant) {
        let target = self.forks.get(self.target_start..).unwrap_or_default();
        let all_done = target.iter().all(|f| f.state == ForkState::Done);
        if all_done && self.winner.is_none() && self.ringing() {
            let statuses: Vec<u16> = target.iter().filter_map(|f| f.final_status).collect();
            self.unanswered(best_failure(&statuses), now);
        }
    }

    /// RFC 3262: a reliable provisional from a callee is PRACKed by us.
    fn prack_if_reliable(&mut self, index: usize, response: &SipMessage) {
        if !header_has_token(response, "Require", "100rel") {
            return;
        }
        let Some(fork) = self.forks.get_mut(index) else {
            return;
        };
        let addr = fork.target.addr.clone();
        let Some(dialog) = fork.dialog.as_mut() else {
            return;
        };
        if let Ok(builder) = dialog.prack(response) {
            let prack = via(builder, &addr).build();
            self.send_request(Leg::Fork(index), prack, addr.peer);
        }
    }

    /// 180/183 to the caller, with the callee's early-media SDP; reliable
    /// when it carries SDP and the caller supports 100rel.
    fn relay_provisional(&mut self, response: &SipMessage, now: Instant) {
        let status = response.status().unwrap_or(180);
        let reason = response
            .reason()
            .unwrap_or_else(|| reason_phrase(status))
            .to_string();
        let mut relayed = self.respond_caller(status, &reason);
        relayed
            .headers
            .push("Contact", contact_of(&self.caller, "pbx"));
        self.set_body(&mut relayed, Leg::Caller, response);
        let reliable = self.caller_100rel && !response.body().is_empty();
        if reliable {
            if self.unpracked.is_some() {
                // §3 of RFC 3262: one unacknowledged reliable provisional at a time.
                return;
            }
            let rseq = self.next_rseq;
            self.next_rseq += 1;
            relayed.headers.push("Require", "100rel");
            relayed.headers.push("RSeq", rseq.to_string());
            if !self.caller.peer.transport.is_reliable() {
                self.unpracked = Some(Unpracked {
                    response: relayed.clone(),
                    rseq,
                    resend: Resend::provisional(self.timers, now),
                });
            }
        }
        self.outputs.push(Output::Respond {
            key: self.invite_key.clone(),
            response: relayed,
        });
    }

    fn answer_caller(&mut self, index: usize, response: &SipMessage, now: Instant) {
        self.cancel_forks(Some(index));
        self.unpracked = None;
        let mut ok = self.respond_caller(response.status().unwrap_or(200), "OK");
        ok.headers.push("Contact", contact_of(&self.caller, "pbx"));
        self.set_body(&mut ok, Leg::Caller, response);
        self.caller_dialog = Dialog::as_uas(&self.invite, &self.local_tag, false).ok();
        self.phase = Phase::Answered;
        self.answered_at = Some(now);
        self.outputs.push(Output::Respond {
            key: self.invite_key.clone(),
            response: ok.clone(),
        });
        self.outputs.push(Output::Answered);
        let cseq = self.invite.cseq().map_or(1, |c| c.seq);
        let fork_cseq = self
            .forks
            .get(index)
            .and_then(|f| f.invite.cseq().ok())
            .map_or(1, |c| c.seq);
        self.track_2xx(
            Leg::Caller,
            ok,
            cseq,
            Some((Leg::Fork(index), fork_cseq)),
            now,
        );
    }

    /// Retransmits a 2xx we sent until its ACK (only needed over UDP, but
    /// also carries the ACK owed to the other side, so it is kept always).
    fn track_2xx(
        &mut self,
        leg: Leg,
        response: SipMessage,
        cseq: u32,
        owed_ack: Option<(Leg, u32)>,
        now: Instant,
    ) {
        let reliable = self
            .leg_addr(leg)
            .is_some_and(|a| a.peer.transport.is_reliable());
        self.unacked.push(Unacked2xx {
            leg,
            response,
            cseq,
            resend: Resend::final_response(self.timers, reliable, now),
            owed_ack,
        });
    }

    /// ACK for a fork's 2xx, carrying the caller's ACK body when there is
    /// one (late offer: the SDP answer comes in the ACK).
    fn ack_fork(&mut self, index: usize, body_from: Option<&SipMessage>) {
        let Some(fork) = self.forks.get(index) else {
            return;
        };
        let seq = fork.invite.cseq().map_or(1, |c| c.seq);
        self.send_ack(Leg::Fork(index), seq, body_from);
    }

    fn send_ack(&mut self, leg: Leg, seq: u32, body_from: Option<&SipMessage>) {
        let Some(addr) = self.leg_addr(leg).cloned() else {
            return;
        };
        let Some(dialog) = self.dialog_mut(leg) else {
            return;
        };
        let mut builder = via(dialog.ack(seq), &addr);
        if let Some(from) = body_from {
            builder = self.copy_body(builder, leg, from);
        }
        self.outputs.push(Output::Stateless {
            message: builder.build(),
            target: addr.peer,
        });
    }

    /// BYE in `leg`'s dialog, if it has one.
    fn send_bye(&mut self, leg: Leg) {
        let Some(addr) = self.leg_addr(leg).cloned() else {
            return;
        };
        let Some(dialog) = self.dialog_mut(leg) else {
            return;
        };
        let bye = via(dialog.new_request(Method::Bye), &addr).build();
        self.send_request(leg, bye, addr.peer);
    }

    /// Ends an answered call.
    fn finish_answered(&mut self, by: Side, cause: &'static str, now: Instant) {
        self.end(CallEnd {
            disposition: Disposition::Answered,
            hangup_cause: cause,
            hangup_by: by,
            answered_at: self.answered_at,
            ended_at: now,
            final_status: None,
        });
    }

    fn on_caller_cancel(&mut self, now: Instant) {
        if self.phase != Phase::Ringing {
            return;
        }
        let mut response = self.respond_caller(487, reason_phrase(487));
        response
            .headers
            .push("Reason", "Q.850;cause=16;text=\"ORIGINATOR_CANCEL\"");
        self.outputs.push(Output::Respond {
            key: self.invite_key.clone(),
            response,
        });
        self.cancel_forks(None);
        self.end(CallEnd {
            disposition: Disposition::Cancelled,
            hangup_cause: "ORIGINATOR_CANCEL",
            hangup_by: Side::Caller,
            answered_at: None,
            ended_at: now,
            final_status: Some(487),
        });
    }

    /// Which leg an in-dialog message belongs to, by Call-ID.
    fn leg_of(&self, message: &SipMessage) -> Option<Leg> {
        let call_id = message.call_id().ok()?;
        if self.invite.call_id().ok() == Some(call_id) {
            return Some(Leg::Caller);
        }
        self.forks
            .iter()
            .position(|f| f.invite.call_id().ok() == Some(call_id))
            .map(Leg::Fork)
    }

    fn on_request(&mut self, key: Option<TransactionKey>, request: SipMessage, now: Instant) {
        let Some(leg) = self.leg_of(&request) else {
            return;
        };
        let Some(method) = request.method().cloned() else {
            return;
        };
        if method == Method::Ack {
            self.on_ack(leg, &request);
            return;
        }
        let Some(key) = key else {
            return;
        };
        if let Some(dialog) = self.dialog_mut(leg) {
            if let Err(e) = dialog.handle_remote_request(&request) {
                let response =
                    request.response_with_tag(500, &format!("Server Internal Error ({e})"), "");
                self.outputs.push(Output::Respond { key, response });
                return;
            }
        }
        match method {
            Method::Prack if leg == Leg::Caller => self.on_prack(key, &request),
            Method::Bye => {
                self.outputs.push(Output::Respond {
                    key,
                    response: request.response(200),
                });
                let by = if leg == Leg::Caller {
                    Side::Caller
                } else {
                    Side::Callee
                };
                // The one who hung up is gone: stop waiting for its ACK,
                // but the other side still gets the ACK it is owed.
                let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unacked)
                    .into_iter()
                    .partition(|u| u.leg == leg);
                self.unacked = kept;
                for unacked in gone {
                    if let Some((other, seq)) = unacked.owed_ack {
                        self.send_ack(other, seq, None);
                    }
                }
                if let Some(other) = self.other(leg) {
                    self.send_bye(other);
                }
                self.finish_answered(by, "NORMAL_CLEARING", now);
            }
            _ => self.relay_request(leg, key, &request),
        }
    }

    fn on_prack(&mut self, key: TransactionKey, request: &SipMessage) {
        let rack_rseq = request
            .headers
            .get("RAck")
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        let matches = self
            .unpracked
            .as_ref()
            .is_some_and(|u| Some(u.rseq) == rack_rseq);
        let status = if matches || (rack_rseq.is_some() && rack_rseq < Some(self.next_rseq)) {
            self.unpracked = None;
            200
        } else {
            481
        };
        self.outputs.push(Output::Respond {
            key,
            response: request.response(status),
        });
    }

    fn on_ack(&mut self, leg: Leg, ack: &SipMessage) {
        let seq = ack.cseq().map_or(0, |c| c.seq);
        let Some(position) = self
            .unacked
            .iter()
            .position(|u| u.leg == leg && u.cseq == seq)
        else {
            return;
        };
        let unacked = self.unacked.remove(position);
        if let Some((other, other_seq)) = unacked.owed_ack {
            self.send_ack(other, other_seq, Some(ack));
        }
    }

    /// A 2xx retransmitted by a callee means our ACK was lost: send it again.
    fn on_stray_response(&mut self, response: &SipMessage) {
        let Some(Leg::Fork(index)) = self.leg_of(response) else {
            return;
        };
        let (Some(200..=299), Ok(cseq)) = (response.status(), response.cseq()) else {
            return;
        };
        if cseq.method != Method::Invite {
            return;
        }
        let still_owed = self
            .unacked
            .iter()
            .any(|u| u.owed_ack == Some((Leg::Fork(index), cseq.seq)));
        if !still_owed {
            self.send_ack(Leg::Fork(index), cseq.seq, None);
        }
    }

    /// Re-issues an in-dialog request (re-INVITE, UPDATE, INFO …) on the other side.
    fn relay_request(&mut self, origin: Leg, key: TransactionKey, request: &SipMessage) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        let target_leg = match (origin, self.phase) {
            (_, Phase::Over) => None,
            (Leg::Caller, _) => self.other(origin),
            (Leg::Fork(i), Phase::Answered) if Some(i) == self.winner => Some(Leg::Caller),
            // A callee's early-dialog UPDATE/INFO goes to the caller's early dialog.
            (Leg::Fork(_), Phase::Ringing) if method != Method::Invite => Some(Leg::Caller),
            _ => None,
        };
        let target = target_leg.and_then(|leg| Some((leg, self.leg_addr(leg)?.clone())));
        let Some((target_leg, addr)) = target else {
            self.outputs.push(Output::Respond {
                key,
                response: request.response(481),
            });
            return;
        };
        // Glare (RFC 3261 §14.2): one re-INVITE at a time on a leg.
        let invite_pending = self.relays.values().any(|r| r.method == Method::Invite)
            || self.unacked.iter().any(|u| u.leg == origin);
        if method == Method::Invite && invite_pending {
            self.outputs.push(Output::Respond {
                key,
                response: request.response(491),
            });
            return;
        }
        if target_leg == Leg::Caller && self.caller_dialog.is_none() {
            // Early dialog toward the caller: built from its INVITE.
            self.caller_dialog = Dialog::as_uas(&self.invite, &self.local_tag, true).ok();
        }
        let Some(dialog) = self.dialog_mut(target_leg) else {
            self.outputs.push(Output::Respond {
                key,
                response: request.response(481),
            });
            return;
        };
        let mut builder = via(dialog.new_request(method.clone()), &addr);
        if method == Method::Invite {
            builder = builder.header("Contact", contact_of(&addr, "pbx"));
        }
        // A hold re-INVITE: the held side is offered our music instead.
        let held = method == Method::Invite
            && sip::sdp::audio_stream(request.body()).is_ok_and(|offer| offer.direction.is_hold());
        let music = match self.music_on_hold {
            Some(rtp) if held => {
                self.sdp_version += 1;
                let offer = sip::sdp::AudioDescription::offer(
                    self.sdp_session,
                    self.sdp_version,
                    sip::sdp::LocalAudio {
                        rtp,
                        codecs: sip::sdp::G711,
                        telephone_event: None,
                        direction: sip::sdp::Direction::SendOnly,
                    },
                );
                builder = builder.body("application/sdp", offer.to_bytes());
                true
            }
            _ => {
                builder = self.copy_body(builder, target_leg, request);
                false
            }
        };
        if method == Method::Invite && !held && self.on_hold_music.contains(&target_leg) {
            // Taken off hold: the holder's SDP goes through, the music stops.
            self.on_hold_music.retain(|leg| *leg != target_leg);
            self.outputs.push(Output::StopMusic {
                listener: listener_of(target_leg),
            });
        }
        let relayed = builder.build();
        let txn = self.send_request(target_leg, relayed, addr.peer);
        self.relays.insert(
            txn,
            Relay {
                origin,
                origin_key: key,
                origin_request: request.clone(),
                method,
                music,
            },
        );
    }

    /// The final response to a relayed request goes back to its origin.
    fn on_relayed_response(&mut self, relay: Relay, response: &SipMessage, now: Instant) {
        let status = response.status().unwrap_or(500);
        if relay.music && (200..300).contains(&status) {
            let held = self.other(relay.origin);
            let answer = sip::sdp::audio_stream(response.body()).ok();
            if let (Some(held), Some(answer)) = (held, answer) {
                if let Some(codec) = answer.codecs.first() {
                    if !self.on_hold_music.contains(&held) {
                        self.on_hold_music.push(held);
                    }
                    self.outputs.push(Output::StartMusic {
                        listener: listener_of(held),
                        target: answer.rtp,
                        codec: *codec,
                    });
                }
            }
        }
        let Some(origin_addr) = self.leg_addr(relay.origin).cloned() else {
            return;
        };
        let tag = match relay.origin {
            Leg::Caller => self.local_tag.clone(),
            Leg::Fork(i) => self
                .forks
                .get(i)
                .and_then(|f| f.invite.from_tag())
                .unwrap_or_default(),
        };
        let reason = response
            .reason()
            .unwrap_or_else(|| reason_phrase(status))
            .to_string();
        let origin_request = &relay.origin_request;
        let mut relayed = origin_request.response_with_tag(status, &reason, &tag);
        self.set_body(&mut relayed, relay.origin, response);
        // A holder offering sendonly may keep sending: it is answered with
        // the music's address, so its audio stops at us, not at the held side.
        let our_answer = self
            .music_on_hold
            .filter(|_| relay.music && (200..300).contains(&status))
            .and_then(|rtp| {
                let offer = sip::sdp::audio_stream(relay.origin_request.body()).ok()?;
                let negotiated = sip::sdp::negotiate(&offer, sip::sdp::G711).ok()?;
                Some((rtp, negotiated))
            });
        if let Some((rtp, negotiated)) = our_answer {
            self.sdp_version += 1;
            let answer = sip::sdp::AudioDescription::answer(
                self.sdp_session,
                self.sdp_version,
                rtp,
                negotiated,
            );
            relayed.headers.set("Content-Type", "application/sdp");
            relayed.body = answer.to_bytes();
        }
        if relay.method == Method::Invite && (200..300).contains(&status) {
            relayed
                .headers
                .push("Contact", contact_of(&origin_addr, "pbx"));
            let origin_seq = origin_request.cseq().map_or(0, |c| c.seq);
            let other = self.other(relay.origin);
            let other_seq = response.cseq().map_or(0, |c| c.seq);
            if let Some(dialog) = other.and_then(|leg| self.dialog_mut(leg)) {
                let _ = dialog.update_from_response(response);
            }
            self.track_2xx(
                relay.origin,
                relayed.clone(),
                origin_seq,
                other.map(|leg| (leg, other_seq)),
                now,
            );
        }
        self.outputs.push(Output::Respond {
            key: relay.origin_key,
            response: relayed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip::message::parse_datagram;
    use sip::transport::Transport;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn udp(port: u16) -> LegAddr {
        LegAddr {
            peer: Peer {
                transport: Transport::Udp,
                addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            },
            local_host: "127.0.0.1".into(),
            local_port: 5060,
        }
    }

    fn caller_invite(extra: &str) -> SipMessage {
        let sdp = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let text = format!(
            "INVITE sip:101@test.pbx.local SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bKcaller1\r\n\
             From: <sip:100@test.pbx.local>;tag=caller\r\nTo: <sip:101@test.pbx.local>\r\n\
             Call-ID: a-leg\r\nCSeq: 2 INVITE\r\nContact: <sip:100@127.0.0.1:6000>\r\nMax-Forwards: 70\r\n\
             {extra}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        parse_datagram(text.as_bytes()).expect("INVITE")
    }

    /// `forks` devices of extension `number`, on ports 7000 + 10 × (number − 101) up.
    fn target(number: u16, forks: usize, forward_when: ForwardWhen) -> Target {
        let first_port = 7000 + 10 * (number - 101);
        Target {
            callee_aor: format!("<sip:{number}@test.pbx.local>"),
            forks: (0..forks)
                .map(|i| {
                    let port = first_port + u16::try_from(i).expect("small");
                    ForkTarget {
                        uri: format!("sip:{number}@127.0.0.1:{port}")
                            .parse()
                            .expect("uri"),
                        route: Vec::new(),
                        addr: udp(port),
                    }
                })
                .collect(),
            ring_timeout: Duration::from_secs(30),
            forward_when,
            follow_me_after: None,
        }
    }

    fn start(forks: usize, extra: &str, t0: Instant) -> (Call, Vec<Output>) {
        start_anchored(forks, extra, None, t0)
    }

    fn start_anchored(
        forks: usize,
        extra: &str,
        anchor: Option<MediaAnchor>,
        t0: Instant,
    ) -> (Call, Vec<Output>) {
        start_full(
            target(101, forks, ForwardWhen::default()),
            extra,
            anchor,
            t0,
        )
    }

    fn start_full(
        target: Target,
        extra: &str,
        anchor: Option<MediaAnchor>,
        t0: Instant,
    ) -> (Call, Vec<Output>) {
        let invite = caller_invite(extra);
        let setup = CallSetup {
            invite_key: TransactionKey::for_request(&invite).expect("key"),
            invite,
            caller: udp(6000),
            caller_identity: "\"Test 100\" <sip:100@test.pbx.local>".into(),
            target,
            timers: TimerConfig::default(),
            music_on_hold: Some("10.9.9.9:30000".parse().expect("addr")),
            anchor,
        };
        let mut call = Call::start(setup, t0);
        let outputs = call.drain_outputs();
        (call, outputs)
    }

    /// The requests sent, as (txn, method, request).
    fn requests(outputs: &[Output]) -> Vec<(u64, Method, SipMessage)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Request { txn, request, .. } => {
                    Some((*txn, request.method()?.clone(), request.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn responses(outputs: &[Output]) -> Vec<SipMessage> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Respond { response, .. } => Some(response.clone()),
                _ => None,
            })
            .collect()
    }

    fn stateless(outputs: &[Output]) -> Vec<SipMessage> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::Stateless { message, .. } => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn ended(outputs: &[Output]) -> Option<CallEnd> {
        outputs.iter().find_map(|o| match o {
            Output::Ended(end) => Some(end.clone()),
            _ => None,
        })
    }

    /// The callee's answer to `request` (with its dialog tag and Contact).
    fn answer(request: &SipMessage, status: u16, tag: &str, sdp: bool) -> SipMessage {
        let mut response = request.response_with_tag(status, reason_phrase(status), tag);
        response.headers.push("Contact", "<sip:101@127.0.0.1:7000>");
        if sdp {
            response.headers.set("Content-Type", "application/sdp");
            response.body = b"v=0\r\nm=audio 5000 RTP/AVP 0\r\n".to_vec();
        }
        response
    }

    fn feed(call: &mut Call, txn: u64, response: SipMessage, now: Instant) -> Vec<Output> {
        call.handle(
            Input::Client {
                txn,
                event: ClientEvent::Response(response),
            },
            now,
        );
        call.drain_outputs()
    }

    fn in_dialog(
        from_caller: &SipMessage,
        method: &str,
        cseq: u32,
        to_tag: &str,
        body: &str,
    ) -> SipMessage {
        let text = format!(
            "{method} sip:pbx@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:6000;branch=z9hG4bK{method}{cseq}\r\n\
             From: <sip:100@test.pbx.local>;tag=caller\r\nTo: <sip:101@test.pbx.local>;tag={to_tag}\r\n\
             Call-ID: {}\r\nCSeq: {cseq} {method}\r\nContact: <sip:100@127.0.0.1:6000>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            from_caller.call_id().expect("call-id"),
            body.len()
        );
        parse_datagram(text.as_bytes()).expect("request")
    }

    /// One fork that answers: the call after the caller's ACK.
    fn answered_call(t0: Instant) -> (Call, SipMessage, String) {
        let (mut call, out) = start(1, "", t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(
            &mut call,
            txn,
            answer(&invite, 200, "callee", true),
            t0 + MS(10),
        );
        let tag = call.local_tag.clone();
        let ack = in_dialog(&call.invite.clone(), "ACK", 2, &tag, "");
        call.handle(
            Input::Request {
                key: None,
                request: ack,
            },
            t0 + MS(20),
        );
        call.drain_outputs();
        (call, invite, tag)
    }

    fn relayed_to(outputs: &[Output]) -> Vec<(media::Leg, std::net::SocketAddr)> {
        outputs
            .iter()
            .filter_map(|o| match o {
                Output::RelayTo { leg, stream } => Some((*leg, stream.rtp)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn anchored_media_readdresses_every_sdp_and_steers_the_relay() {
        let t0 = Instant::now();
        let anchor = MediaAnchor {
            toward_caller: "10.0.0.1:20000".parse().expect("addr"),
            toward_callee: "10.0.0.1:20002".parse().expect("addr"),
        };
        let sdp_at = |port: u16| {
            format!(
                "v=0\r\no=b 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\n\
                 m=audio {port} RTP/AVP 0\r\n"
            )
        };
        let (mut call, out) = start_anchored(1, "", Some(anchor), t0);
        let (txn, _, invite) = requests(&out).remove(0);
        let offer = sip::sdp::audio_stream(invite.body()).expect("offer");
        assert_eq!(offer.rtp, anchor.toward_callee, "callee sends to us");
        assert_eq!(
            relayed_to(&out),
            vec![(media::Leg::A, "127.0.0.1:4000".parse().expect("addr"))]
        );

        let mut ok = answer(&invite, 200, "callee", false);
        ok.headers.set("Content-Type", "application/sdp");
        ok.body = sdp_at(5000).into_bytes();
        let out = feed(&mut call, txn, ok, t0 + MS(10));
        let to_caller = responses(&out).remove(0);
        assert_eq!(
            sip::sdp::audio_stream(to_caller.body())
                .expect("answer")
                .rtp,
            anchor.toward_caller
        );
        assert_eq!(
            relayed_to(&out),
            vec![(media::Leg::B, "127.0.0.2:5000".parse().expect("addr"))]
        );
        assert!(out.iter().any(|o| matches!(o, Output::Answered)));
        let tag = call.local_tag.clone();
        let ack = in_dialog(&call.invite.clone(), "ACK", 2, &tag, "");
        call.handle(
            Input::Request {
                key: None,
                request: ack,
            },
            t0 + MS(20),
        );
        call.drain_outputs();

        // The callee moves its media (re-INVITE): the caller is offered
        // the anchor again, and the relay sends to the new port.
        let reinvite = parse_datagram(
            format!(
                "INVITE sip:pbx@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:7000;branch=z9hG4bKre\r\n\
                 From: <sip:101@test.pbx.local>;tag=callee\r\nTo: {};tag={}\r\nCall-ID: {}\r\n\
                 CSeq: 7 INVITE\r\nContact: <sip:101@127.0.0.1:7000>\r\nMax-Forwards: 70\r\n\
                 Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
                invite.headers.get("From").expect("from").split(";tag=").next().expect("uri"),
                invite.from_tag().expect("tag"),
                invite.call_id().expect("call-id"),
                sdp_at(5100).len(),
                sdp_at(5100)
            )
            .as_bytes(),
        )
        .expect("re-INVITE");
        let key = TransactionKey::for_request(&reinvite).expect("key");
        call.handle(
            Input::Request {
                key: Some(key),
                request: reinvite,
            },
            t0 + MS(30),
        );
        let out = call.drain_outputs();
        let (_, _, to_caller) = requests(&out).remove(0);
        assert_eq!(
            sip::sdp::audio_stream(to_caller.body()).expect("offer").rtp,
            anchor.toward_caller
        );
        assert_eq!(
            relayed_to(&out),
            vec![(media::Leg::B, "127.0.0.2:5100".parse().expect("addr"))]
        );
    }

    #[test]
    fn first_2xx_wins_and_the_other_fork_is_cancelled() {
        let t0 = Instant::now();
        let (mut call, out) = start(2, "", t0);
        let invites = requests(&out);
        assert_eq!(invites.len(), 2);
        assert!(invites.iter().all(|(_, m, r)| *m == Method::Invite
            && r.body().starts_with(b"v=0")
            && r.call_id().is_ok()));
        assert_ne!(
            invites[0].2.call_id().ok(),
            invites[1].2.call_id().ok(),
            "own Call-ID per fork"
        );

        let ringing = feed(
            &mut call,
            invites[0].0,
            answer(&invites[0].2, 180, "b0", false),
            t0 + MS(5),
        );
        assert_eq!(responses(&ringing)[0].status(), Some(180));
        let trying = feed(
            &mut call,
            invites[1].0,
            invites[1].2.response(100),
            t0 + MS(6),
        );
        assert!(trying.is_empty());

        let ok = feed(
            &mut call,
            invites[0].0,
            answer(&invites[0].2, 200, "b0", true),
            t0 + MS(50),
        );
        let to_caller = responses(&ok);
        assert_eq!(to_caller[0].status(), Some(200));
        assert_eq!(
            to_caller[0].body(),
            b"v=0\r\nm=audio 5000 RTP/AVP 0\r\n",
            "SDP passed through"
        );
        assert_eq!(to_caller[0].to_tag(), Some(call.local_tag.clone()));
        let cancels = requests(&ok);
        assert_eq!(cancels.len(), 1);
        assert_eq!(cancels[0].1, Method::Cancel);
        assert_eq!(
            cancels[0]
                .2
                .top_via()
                .ok()
                .and_then(|v| v.branch().map(str::to_string)),
            invites[1]
                .2
                .top_via()
                .ok()
                .and_then(|v| v.branch().map(str::to_string)),
            "CANCEL carries the INVITE's branch"
        );
        assert!(
            stateless(&ok).is_empty(),
            "the callee's ACK waits for the caller's"
        );

        let ack = in_dialog(&call.invite.clone(), "ACK", 2, &call.local_tag.clone(), "");
        call.handle(
            Input::Request {
                key: None,
                request: ack,
            },
            t0 + MS(60),
        );
        let acks = stateless(&call.drain_outputs());
        assert_eq!(acks.len(), 1);
        assert_eq!(acks[0].method(), Some(&Method::Ack));
        assert_eq!(acks[0].call_id().ok(), invites[0].2.call_id().ok());
        assert!(!call.is_finished());
    }

    #[test]
    fn ring_timeout_cancels_and_a_late_answer_is_released() {
        let t0 = Instant::now();
        let (mut call, out) = start(1, "", t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(
            &mut call,
            txn,
            answer(&invite, 180, "b0", false),
            t0 + MS(5),
        );
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        call.handle_timeout(t0 + Duration::from_secs(30));
        let out = call.drain_outputs();
        let refusal = &responses(&out)[0];
        assert_eq!(refusal.status(), Some(480));
        assert!(refusal
            .headers
            .get("Reason")
            .is_some_and(|r| r.contains("cause=19")));
        assert_eq!(requests(&out)[0].1, Method::Cancel);
        let end = ended(&out).expect("ended");
        assert_eq!(
            (end.disposition, end.hangup_cause),
            (Disposition::NoAnswer, "NO_ANSWER")
        );
        assert!(!call.is_finished(), "the INVITE and CANCEL are still open");

        // The callee answered as the CANCEL crossed: ACK it and hang up.
        let late = feed(
            &mut call,
            txn,
            answer(&invite, 200, "b0", true),
            t0 + Duration::from_secs(31),
        );
        assert_eq!(stateless(&late)[0].method(), Some(&Method::Ack));
        assert_eq!(requests(&late)[0].1, Method::Bye);
        assert!(ended(&late).is_none(), "reported once");
    }

    #[test]
    fn every_fork_failing_gives_the_caller_the_best_failure() {
        let t0 = Instant::now();
        let (mut call, out) = start(2, "", t0);
        let invites = requests(&out);
        feed(
            &mut call,
            invites[0].0,
            answer(&invites[0].2, 480, "b0", false),
            t0,
        );
        let out = feed(
            &mut call,
            invites[1].0,
            answer(&invites[1].2, 486, "b1", false),
            t0,
        );
        assert_eq!(responses(&out)[0].status(), Some(486));
        assert_eq!(ended(&out).map(|e| e.disposition), Some(Disposition::Busy));
        assert!(call.is_finished());
        assert_eq!(best_failure(&[408, 503]), 503);
        assert_eq!(best_failure(&[486, 603]), 603);
    }

    fn unanswered(outputs: &[Output]) -> Option<Unanswered> {
        outputs.iter().find_map(|o| match o {
            Output::Unanswered(why) => Some(*why),
            _ => None,
        })
    }

    #[test]
    fn busy_devices_hand_the_call_back_and_the_forward_target_answers() {
        let t0 = Instant::now();
        let forwards = ForwardWhen {
            busy: true,
            no_answer: false,
        };
        let (mut call, out) = start_full(target(101, 2, forwards), "", None, t0);
        let invites = requests(&out);
        feed(
            &mut call,
            invites[0].0,
            answer(&invites[0].2, 486, "b0", false),
            t0,
        );
        // A decline counts as busy too.
        let out = feed(
            &mut call,
            invites[1].0,
            answer(&invites[1].2, 603, "b1", false),
            t0,
        );
        assert_eq!(unanswered(&out), Some(Unanswered::Busy));
        assert!(responses(&out).is_empty(), "the caller still waits");
        assert!(ended(&out).is_none());
        assert_eq!(call.poll_timeout(), None, "no ring timer while rerouting");

        call.handle(
            Input::Retarget(target(102, 1, ForwardWhen::default())),
            t0 + MS(10),
        );
        let out = call.drain_outputs();
        let (txn, method, invite) = requests(&out).remove(0);
        assert_eq!(method, Method::Invite);
        assert!(invite
            .headers
            .get("To")
            .is_some_and(|to| to.contains("sip:102@")));
        assert_eq!(
            call.poll_timeout(),
            Some(t0 + MS(10) + Duration::from_secs(30))
        );
        let out = feed(
            &mut call,
            txn,
            answer(&invite, 200, "c0", true),
            t0 + MS(20),
        );
        assert_eq!(responses(&out)[0].status(), Some(200));
        assert!(out.iter().any(|o| matches!(o, Output::Answered)));
    }

    #[test]
    fn no_answer_forward_cancels_the_phones_and_a_dead_end_refuses_the_caller() {
        let t0 = Instant::now();
        let forwards = ForwardWhen {
            busy: false,
            no_answer: true,
        };
        let (mut call, out) = start_full(target(101, 1, forwards), "", None, t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(&mut call, txn, answer(&invite, 180, "b0", false), t0);
        call.handle_timeout(t0 + Duration::from_secs(30));
        let out = call.drain_outputs();
        assert_eq!(requests(&out)[0].1, Method::Cancel);
        assert_eq!(unanswered(&out), Some(Unanswered::NoAnswer));
        assert!(responses(&out).is_empty());
        // The cancelled phone's 487 does not fail the call meanwhile.
        let out = feed(
            &mut call,
            txn,
            answer(&invite, 487, "b0", false),
            t0 + Duration::from_secs(30),
        );
        assert!(responses(&out).is_empty() && ended(&out).is_none());

        call.handle(
            Input::Refuse(Refusal {
                status: 404,
                cause: "UNALLOCATED_NUMBER",
                q850: 1,
            }),
            t0 + Duration::from_secs(31),
        );
        let out = call.drain_outputs();
        assert_eq!(responses(&out)[0].status(), Some(404));
        let end = ended(&out).expect("ended");
        assert_eq!(
            (end.disposition, end.hangup_cause),
            (Disposition::Failed, "UNALLOCATED_NUMBER")
        );
    }

    #[test]
    fn unforwarded_outcomes_fail_as_before_and_forwarded_ones_only_for_their_kind() {
        let t0 = Instant::now();
        let busy_only = ForwardWhen {
            busy: true,
            no_answer: false,
        };
        let (mut call, out) = start_full(target(101, 1, busy_only), "", None, t0);
        let (txn, _, invite) = requests(&out).remove(0);
        let out = feed(&mut call, txn, answer(&invite, 408, "b0", false), t0);
        assert_eq!(unanswered(&out), None);
        assert_eq!(responses(&out)[0].status(), Some(480));
    }

    #[test]
    fn follow_me_adds_forks_after_its_delay_under_the_same_ring_timer() {
        let t0 = Instant::now();
        let mut first = target(101, 1, ForwardWhen::default());
        first.follow_me_after = Some(Duration::from_secs(10));
        let (mut call, out) = start_full(first, "", None, t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(&mut call, txn, answer(&invite, 180, "b0", false), t0);
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        call.handle_timeout(t0 + Duration::from_secs(10));
        let out = call.drain_outputs();
        assert!(out.iter().any(|o| matches!(o, Output::FollowMeDue)));
        call.handle(
            Input::AddForks(target(105, 1, ForwardWhen::default()).forks),
            t0 + Duration::from_secs(10),
        );
        let out = call.drain_outputs();
        let (txn2, method, invite2) = requests(&out).remove(0);
        assert_eq!(method, Method::Invite);
        assert!(invite2
            .request_uri()
            .is_some_and(|u| u.to_string().contains(":7040")));
        assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        // The follow-me number answers; the phone is cancelled.
        let out = feed(
            &mut call,
            txn2,
            answer(&invite2, 200, "f0", true),
            t0 + Duration::from_secs(12),
        );
        assert_eq!(responses(&out)[0].status(), Some(200));
        assert_eq!(requests(&out)[0].1, Method::Cancel);
    }

    #[test]
    fn unacknowledged_2xx_is_retransmitted_then_the_call_is_torn_down() {
        let t0 = Instant::now();
        let (mut call, out) = start(1, "", t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(&mut call, txn, answer(&invite, 200, "b0", true), t0);
        assert_eq!(call.poll_timeout(), Some(t0 + MS(500)));
        call.handle_timeout(t0 + MS(500));
        let again = stateless(&call.drain_outputs());
        assert_eq!(
            again[0].status(),
            Some(200),
            "Timer G-like 2xx retransmission"
        );
        assert_eq!(call.poll_timeout(), Some(t0 + MS(1500)));
        call.handle_timeout(t0 + MS(32_000));
        let out = call.drain_outputs();
        let byes: Vec<Method> = requests(&out).into_iter().map(|(_, m, _)| m).collect();
        assert_eq!(byes, [Method::Bye, Method::Bye], "both legs released");
        assert_eq!(
            ended(&out).map(|e| e.hangup_cause),
            Some("RECOVERY_ON_TIMER_EXPIRE")
        );
    }

    #[test]
    fn hold_reinvite_is_relayed_and_its_ack_forwarded() {
        let t0 = Instant::now();
        let (mut call, _, tag) = answered_call(t0);
        let hold = in_dialog(
            &call.invite.clone(),
            "INVITE",
            3,
            &tag,
            "v=0\r\na=sendonly\r\n",
        );
        let key = TransactionKey::for_request(&hold).expect("key");
        call.handle(
            Input::Request {
                key: Some(key.clone()),
                request: hold,
            },
            t0 + MS(100),
        );
        let out = call.drain_outputs();
        let (txn, method, relayed) = requests(&out).remove(0);
        assert_eq!(method, Method::Invite);
        assert_eq!(relayed.body(), b"v=0\r\na=sendonly\r\n");
        assert_eq!(
            relayed.to_tag().as_deref(),
            Some("callee"),
            "in the callee's dialog"
        );
        assert_eq!(relayed.cseq().map(|c| c.seq).ok(), Some(2));

        let out = feed(
            &mut call,
            txn,
            answer(&relayed, 200, "callee", true),
            t0 + MS(110),
        );
        let ok = responses(&out).remove(0);
        assert_eq!(ok.status(), Some(200));
        assert_eq!(ok.to_tag().as_deref(), Some(tag.as_str()));
        assert!(matches!(&out[0], Output::Respond { key: k, .. } if *k == key));

        let ack = in_dialog(&call.invite.clone(), "ACK", 3, &tag, "");
        call.handle(
            Input::Request {
                key: None,
                request: ack,
            },
            t0 + MS(120),
        );
        let acks = stateless(&call.drain_outputs());
        assert_eq!(
            acks[0].cseq().map(|c| c.seq).ok(),
            Some(2),
            "ACK for the callee's re-INVITE"
        );

        // BYE from the caller: 200, BYE to the callee, the call ends.
        let bye = in_dialog(&call.invite.clone(), "BYE", 4, &tag, "");
        let key = TransactionKey::for_request(&bye).expect("key");
        call.handle(
            Input::Request {
                key: Some(key),
                request: bye,
            },
            t0 + MS(2_000),
        );
        let out = call.drain_outputs();
        assert_eq!(responses(&out)[0].status(), Some(200));
        assert_eq!(requests(&out)[0].1, Method::Bye);
        let end = ended(&out).expect("ended");
        assert_eq!(
            (end.disposition, end.hangup_by),
            (Disposition::Answered, Side::Caller)
        );
    }

    #[test]
    fn held_callee_is_offered_our_music_and_gets_it_until_unhold() {
        let t0 = Instant::now();
        let (mut call, _, tag) = answered_call(t0);
        let hold = in_dialog(
            &call.invite.clone(),
            "INVITE",
            3,
            &tag,
            "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n",
        );
        let key = TransactionKey::for_request(&hold).expect("key");
        call.handle(
            Input::Request {
                key: Some(key),
                request: hold,
            },
            t0 + MS(100),
        );
        let (txn, _, offer) = requests(&call.drain_outputs()).remove(0);
        let offered = sip::sdp::audio_stream(offer.body()).expect("our offer");
        assert_eq!(
            offered.rtp,
            "10.9.9.9:30000".parse().unwrap(),
            "the music's address"
        );
        assert_eq!(offered.direction, sip::sdp::Direction::SendOnly);
        let mut answer = answer(&offer, 200, "callee", false);
        answer.headers.set("Content-Type", "application/sdp");
        answer.body = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\na=recvonly\r\n".to_vec();
        let out = feed(&mut call, txn, answer, t0 + MS(110));
        assert!(out.iter().any(
            |o| matches!(o, Output::StartMusic { listener: 1, target, codec }
            if *target == "127.0.0.1:7000".parse().unwrap() && *codec == sip::sdp::AudioCodec::Pcma)
        ));
        let ack = in_dialog(&call.invite.clone(), "ACK", 3, &tag, "");
        call.handle(
            Input::Request {
                key: None,
                request: ack,
            },
            t0 + MS(120),
        );
        call.drain_outputs();

        let resume = in_dialog(
            &call.invite.clone(),
            "INVITE",
            4,
            &tag,
            "v=0\r\no=- 1 3 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
        );
        let key = TransactionKey::for_request(&resume).expect("key");
        call.handle(
            Input::Request {
                key: Some(key),
                request: resume,
            },
            t0 + MS(200),
        );
        let out = call.drain_outputs();
        assert!(out
            .iter()
            .any(|o| matches!(o, Output::StopMusic { listener: 1 })));
        let (_, _, relayed) = requests(&out).remove(0);
        assert!(
            relayed.body().ends_with(b"a=sendrecv\r\n"),
            "the holder's own SDP again"
        );
    }

    #[test]
    fn reliable_183_is_pracked_and_relayed_reliably_to_a_100rel_caller() {
        let t0 = Instant::now();
        let (mut call, out) = start(1, "Supported: 100rel\r\n", t0);
        let (txn, _, invite) = requests(&out).remove(0);
        assert!(header_has_token(&invite, "Supported", "100rel"));
        let mut early = answer(&invite, 183, "b0", true);
        early.headers.push("Require", "100rel");
        early.headers.push("RSeq", "42");
        let out = feed(&mut call, txn, early, t0 + MS(5));
        let prack = requests(&out).remove(0);
        assert_eq!(prack.1, Method::Prack);
        assert_eq!(prack.2.headers.get("RAck"), Some("42 1 INVITE"));
        let relayed = responses(&out).remove(0);
        assert_eq!(relayed.status(), Some(183));
        assert_eq!(relayed.headers.get("RSeq"), Some("1"));
        assert!(!relayed.body().is_empty(), "early media SDP");

        call.handle_timeout(t0 + MS(505));
        assert_eq!(
            stateless(&call.drain_outputs())[0].status(),
            Some(183),
            "retransmitted until PRACK"
        );
        let tag = call.local_tag.clone();
        let mut caller_prack = in_dialog(&call.invite.clone(), "PRACK", 3, &tag, "");
        caller_prack.headers.push("RAck", "1 2 INVITE");
        let key = TransactionKey::for_request(&caller_prack).expect("key");
        call.handle(
            Input::Request {
                key: Some(key),
                request: caller_prack,
            },
            t0 + MS(600),
        );
        assert_eq!(responses(&call.drain_outputs())[0].status(), Some(200));
        assert!(call.unpracked.is_none());
    }

    #[test]
    fn caller_cancel_answers_487_and_cancels_forks() {
        let t0 = Instant::now();
        let (mut call, out) = start(1, "", t0);
        let (txn, _, invite) = requests(&out).remove(0);
        feed(&mut call, txn, answer(&invite, 180, "b0", false), t0);
        call.handle(Input::Cancel, t0 + MS(100));
        let out = call.drain_outputs();
        assert_eq!(responses(&out)[0].status(), Some(487));
        assert_eq!(requests(&out)[0].1, Method::Cancel);
        assert_eq!(
            ended(&out).map(|e| e.disposition),
            Some(Disposition::Cancelled)
        );
    }
}
