//! The B2BUA: authenticates a new INVITE (407), finds the callee in the
//! caller's own tenant, forks to its bindings and runs the call ([`call`],
//! sans-IO) in a task of its own. In-dialog requests, CANCEL, ACK and
//! retransmitted 2xx are routed to that task by dialog. Each call ends with
//! a CDR in raft-store. A call the caller's Outbound or the callee's
//! Inbound Recording policy covers has its media anchored at the node and
//! recorded from the answer on.

pub mod call;
pub mod local;
mod resend;
pub mod routing;
pub mod slots;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sip::endpoint::{ClientReply, Endpoint, Peer};
use sip::message::{parse_name_addr, Method, SipMessage, Uri};
use sip::transaction::{TimerConfig, TransactionKey};
use sip::transport::Transport;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::auth::{Authenticated, Authenticator};
use crate::media::anchor::AnchoredMedia;
use crate::media::conference::Conferences;
use crate::media::echo::start_echo;
use crate::media::moh::MusicOnHold;
use crate::media::prompts::Prompts;
use crate::media::MediaApp;
use crate::model::{Binding, Cdr, Extension, ExtensionKind, Tenant};
use crate::recording::{RecordingStart, Recordings};
use crate::repo::Repo;
use crate::service::unix_now_ms;
use call::{Call, CallEnd, CallSetup, ForkTarget, Input, LegAddr, Output, Side, Target};
use local::{LocalCall, LocalSetup, RemoteMedia};
use media::ports::PortPool;
use routing::{ForwardWhen, Refusal, Route, Unanswered};
use sip::auth::ChallengeKind;
use sip::sdp;
use slots::{CallSlot, CallSlots, Claim};

/// Settings of the call path.
#[derive(Debug, Clone)]
pub struct CallConfig {
    pub node_id: u64,
    pub ring_timeout: Duration,
    pub timers: TimerConfig,
    /// Where the SIP listeners are bound (a wildcard IP is replaced by the
    /// local address toward each peer).
    pub udp_listen: SocketAddr,
    pub tcp_listen: SocketAddr,
    /// The number that reaches the echo test, in every tenant.
    pub echo_test_number: String,
    /// `<prefix><room digits>` joins a conference room of the caller's tenant.
    pub conference_prefix: String,
    /// The address in our SDP; `None` = the local address toward the caller.
    pub media_ip: Option<IpAddr>,
}

/// What the node needs to anchor media.
pub struct MediaServices {
    pub ports: PortPool,
    pub prompts: Arc<Prompts>,
    pub conferences: Arc<Conferences>,
    /// `None` when no RTP port could be had for it at start.
    pub music: Option<MusicOnHold>,
    pub recordings: Arc<Recordings>,
}

/// A number the node answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LocalService {
    EchoTest,
    /// A conference room, named `<tenant id>/<room>` so tenants never meet.
    Conference(String),
}

/// Call counters for Prometheus.
#[derive(Clone)]
pub struct CallMetrics {
    active: prometheus::IntGauge,
    ended: prometheus::IntCounterVec,
}

impl CallMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<CallMetrics> {
        let active =
            prometheus::IntGauge::new("pbx_calls_active", "Calls in progress on this node")?;
        let ended = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "pbx_calls_total",
                "Calls ended on this node, by CDR disposition",
            ),
            &["disposition"],
        )?;
        registry.register(Box::new(active.clone()))?;
        registry.register(Box::new(ended.clone()))?;
        Ok(CallMetrics { active, ended })
    }
}

/// A call's dialogs are found by Call-ID and our tag.
type DialogKey = (String, String);
type CallInbox = mpsc::UnboundedSender<Input>;

#[derive(Default)]
struct CallTable {
    by_dialog: HashMap<DialogKey, CallInbox>,
    by_invite: HashMap<TransactionKey, CallInbox>,
}

/// Attempts at writing a CDR while the store has no leader.
const CDR_WRITE_ATTEMPTS: u32 = 20;
const CDR_RETRY_PAUSE: Duration = Duration::from_millis(250);

pub struct B2bua {
    auth: Arc<Authenticator>,
    repo: Repo,
    endpoint: Endpoint,
    config: CallConfig,
    metrics: CallMetrics,
    media: MediaServices,
    slots: Arc<CallSlots>,
    calls: Mutex<CallTable>,
    next_call: std::sync::atomic::AtomicU64,
}

/// What the driver needs of a call core: the B2BUA's [`Call`] and the
/// node-answered [`LocalCall`].
trait CallCore {
    fn handle(&mut self, input: Input, now: std::time::Instant);
    fn handle_timeout(&mut self, now: std::time::Instant);
    fn poll_timeout(&self) -> Option<std::time::Instant>;
    fn drain_outputs(&mut self) -> Vec<Output>;
    fn is_finished(&self) -> bool;
    fn dialog_keys(&self) -> Vec<(String, String)>;
    fn caller_invite_key(&self) -> &TransactionKey;
    /// The caller's media after a change, for the media application.
    fn remote_media(&mut self) -> Option<RemoteMedia> {
        // The B2BUA's SDP passes through: no media application of its own.
        None
    }
    /// The media application ended by itself.
    fn app_finished(&mut self, _now: std::time::Instant) {}
}

/// Implements [`CallCore`] with the core's own methods of the same names.
macro_rules! call_core {
    ($core:ty { $($extra:item)* }) => {
        impl CallCore for $core {
            fn handle(&mut self, input: Input, now: std::time::Instant) {
                <$core>::handle(self, input, now);
            }
            fn handle_timeout(&mut self, now: std::time::Instant) {
                <$core>::handle_timeout(self, now);
            }
            fn poll_timeout(&self) -> Option<std::time::Instant> {
                <$core>::poll_timeout(self)
            }
            fn drain_outputs(&mut self) -> Vec<Output> {
                <$core>::drain_outputs(self)
            }
            fn is_finished(&self) -> bool {
                <$core>::is_finished(self)
            }
            fn dialog_keys(&self) -> Vec<(String, String)> {
                <$core>::dialog_keys(self)
            }
            fn caller_invite_key(&self) -> &TransactionKey {
                <$core>::caller_invite_key(self)
            }
            $($extra)*
        }
    };
}

call_core!(Call {});
call_core!(LocalCall {
    fn remote_media(&mut self) -> Option<RemoteMedia> {
        LocalCall::remote_media(self)
    }
    fn app_finished(&mut self, now: std::time::Instant) {
        self.hang_up(Side::System, "NORMAL_CLEARING", now);
    }
});

/// What a CDR needs beyond the call's outcome.
struct CdrContext {
    /// This node's number for the call; keys its music-on-hold listeners.
    call_number: u64,
    tenant_id: String,
    call_id: String,
    from: String,
    to: String,
    start_ms: u64,
    started: tokio::time::Instant,
}

/// Where a number of the tenant leads once its forwards are followed.
enum Resolution {
    Ring {
        callee: Box<Extension>,
        forks: Vec<ForkTarget>,
        /// Forwards followed to get here, counting earlier ones of the call.
        forwards: usize,
    },
    Refuse(Refusal),
}

enum Admission {
    /// The call may go on, holding this slot if its tenant has a limit.
    Admitted(Option<CallSlot>),
    /// The caller was refused.
    Refused,
}

/// What the driver keeps to forward a call after its phones rang.
struct Rerouting {
    tenant: Tenant,
    /// The extension ringing now.
    callee: Box<Extension>,
    forwards: usize,
}

/// What a call holds beside its signalling: its media as the node handles
/// it, and its place among the tenant's concurrent calls.
#[derive(Default)]
struct CallResources {
    slot: Option<CallSlot>,
    /// Music-on-hold listener keys this call added.
    music_listeners: std::collections::HashSet<u64>,
    anchored: Option<AnchoredMedia>,
    /// Why the call is recorded (see `Recording::reason`); `None` = it is not.
    record_reason: Option<&'static str>,
    /// Set once the recording runs (from the answer).
    recording_id: Option<String>,
}

/// Whose policy records a call, in `Recording::reason` terms.
fn record_reason(caller: &Extension, callee: &Extension) -> Option<&'static str> {
    match (callee.recording.inbound, caller.recording.outbound) {
        (true, true) => Some("inbound,outbound"),
        (true, false) => Some("inbound"),
        (false, true) => Some("outbound"),
        (false, false) => None,
    }
}

fn transport_of(uri: &Uri) -> Transport {
    let name = uri
        .as_sip()
        .and_then(|u| u.param("transport"))
        .and_then(|p| p.value.clone())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match name.as_str() {
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        "ws" => Transport::Ws,
        "wss" => Transport::Wss,
        _ if uri.scheme() == "sips" => Transport::Tls,
        _ => Transport::Udp,
    }
}

/// `udp:192.0.2.1:5060` as the registrar records where a REGISTER came from.
fn parse_received_from(text: &str) -> Option<Peer> {
    let (transport, addr) = text.split_once(':')?;
    let transport = match transport {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        "ws" => Transport::Ws,
        "wss" => Transport::Wss,
        _ => return None,
    };
    Some(Peer {
        transport,
        addr: addr.parse().ok()?,
    })
}

/// Where requests to a binding go: to the first Path hop (the edge proxy
/// that holds the device's flow) or else to where the device registered
/// from, which is right behind NAT too.
fn binding_peer(binding: &Binding) -> Option<Peer> {
    match binding.path.first() {
        Some(first) => {
            let uri = parse_name_addr(first).ok()?.uri;
            let sip_uri = uri.as_sip()?;
            let ip: IpAddr = sip_uri
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?;
            Some(Peer {
                transport: transport_of(&uri),
                addr: SocketAddr::new(ip, sip_uri.port.unwrap_or(5060)),
            })
        }
        None => parse_received_from(&binding.received_from),
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Caller => "caller",
        Side::Callee => "callee",
        Side::System => "system",
    }
}

impl B2bua {
    pub fn new(
        auth: Arc<Authenticator>,
        repo: Repo,
        endpoint: Endpoint,
        config: CallConfig,
        metrics: CallMetrics,
        media: MediaServices,
    ) -> Arc<B2bua> {
        Arc::new(B2bua {
            auth,
            slots: CallSlots::new(repo.clone(), config.node_id),
            repo,
            endpoint,
            config,
            metrics,
            media,
            calls: Mutex::new(CallTable::default()),
            next_call: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, CallTable> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Our address as `peer` should see it.
    fn local_addr_toward(&self, peer: Peer) -> LegAddr {
        let listen = match peer.transport {
            Transport::Udp => self.config.udp_listen,
            _ => self.config.tcp_listen,
        };
        let ip = if listen.ip().is_unspecified() {
            sip::endpoint::local_ip_toward(peer.addr).unwrap_or(listen.ip())
        } else {
            listen.ip()
        };
        LegAddr {
            peer,
            local_host: match ip {
                IpAddr::V6(v6) => format!("[{v6}]"),
                IpAddr::V4(v4) => v4.to_string(),
            },
            local_port: listen.port(),
        }
    }

    /// The address in our SDP for a party we reach through `addr`.
    fn media_ip_toward(&self, addr: &LegAddr) -> IpAddr {
        self.config.media_ip.unwrap_or(
            addr.local_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        )
    }

    /// Number of calls in progress on this node.
    pub fn active_calls(&self) -> usize {
        self.table().by_invite.len()
    }

    /// RTP port pairs held by calls on this node (the music-on-hold
    /// stream's own pair, held for the node's life, is not counted).
    pub fn rtp_ports_in_use(&self) -> usize {
        let music = usize::from(self.media.music.is_some());
        self.media.ports.in_use().saturating_sub(music)
    }

    /// The RTP port of the music-on-hold stream, if it runs.
    pub fn music_port(&self) -> Option<u16> {
        self.media.music.as_ref().map(|m| m.port)
    }

    /// Held parties hearing music now.
    pub fn music_listeners(&self) -> usize {
        self.media
            .music
            .as_ref()
            .map_or(0, MusicOnHold::listener_count)
    }

    /// A new INVITE (no To tag).
    pub async fn on_invite(
        self: Arc<Self>,
        key: TransactionKey,
        request: SipMessage,
        source: Peer,
    ) {
        let now_ms = unix_now_ms();
        let (tenant, caller) = match self
            .auth
            .authenticate(&request, ChallengeKind::Proxy, now_ms)
            .await
        {
            Ok(Authenticated::Extension { tenant, extension }) => (tenant, extension),
            Ok(Authenticated::Refused(response)) => {
                self.endpoint.respond(&key, response);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "INVITE: store unavailable");
                self.endpoint.respond(&key, request.response(503));
                return;
            }
        };
        let span = tracing::info_span!(
            "call",
            tenant = %tenant.code,
            call_id = request.call_id().unwrap_or_default(),
            node = self.config.node_id
        );
        let placed = self
            .place_call(key.clone(), &request, source, &tenant, &caller, now_ms)
            .instrument(span)
            .await;
        if let Err(e) = placed {
            tracing::error!(error = %e, "INVITE: store unavailable");
            self.endpoint.respond(&key, request.response(503));
        }
    }

    async fn place_call(
        self: &Arc<Self>,
        key: TransactionKey,
        request: &SipMessage,
        source: Peer,
        tenant: &Tenant,
        caller: &Extension,
        now_ms: u64,
    ) -> Result<(), crate::repo::RepoError> {
        let dialled = request
            .request_uri()
            .and_then(Uri::as_sip)
            .and_then(|u| u.user_name())
            .unwrap_or_default()
            .to_string();
        let call_id = request.call_id().unwrap_or_default().to_string();
        let cdr = CdrContext {
            call_number: self
                .next_call
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            tenant_id: tenant.id.clone(),
            call_id: call_id.clone(),
            from: caller.number.clone(),
            to: dialled.clone(),
            start_ms: now_ms,
            started: tokio::time::Instant::now(),
        };
        let span = tracing::Span::current();
        if let Some(service) = self.local_service(&tenant.id, &dialled) {
            self.answer_locally(key, request, source, tenant, cdr, service)
                .await;
            return Ok(());
        }
        // No transcoding: an offer without PCMU or PCMA cannot be bridged.
        if !request.body().is_empty() {
            let codecs = sdp::audio_stream(request.body())
                .and_then(|offer| sdp::negotiate(&offer, sdp::G711));
            if let Err(e) = codecs {
                self.refuse_media(&key, request, &e.to_string(), &cdr).await;
                return Ok(());
            }
        }
        let (callee, forks, forwards) =
            match self.resolve(tenant, dialled.clone(), 0, now_ms).await? {
                Resolution::Ring {
                    callee,
                    forks,
                    forwards,
                } => (callee, forks, forwards),
                Resolution::Refuse(refusal) => {
                    self.refuse(&key, request, refusal, &cdr).await;
                    return Ok(());
                }
            };
        let Admission::Admitted(slot) = self.admit(&key, request, tenant, &cdr).await? else {
            return Ok(());
        };
        tracing::info!(from = %caller.number, to = %callee.number, forks = forks.len(), "calling");
        let caller_addr = self.local_addr_toward(source);
        let mut media = CallResources {
            slot,
            record_reason: record_reason(caller, &callee),
            ..CallResources::default()
        };
        if media.record_reason.is_some() {
            let caller_ip = self.media_ip_toward(&caller_addr);
            let callee_ip = forks
                .first()
                .map_or(caller_ip, |fork| self.media_ip_toward(&fork.addr));
            match AnchoredMedia::start(&self.media.ports, caller_ip, callee_ip) {
                Ok(anchored) => media.anchored = Some(anchored),
                // The call matters more than its recording.
                Err(e) => tracing::error!(error = %e, "call not recorded: no RTP ports"),
            }
        }
        let setup = CallSetup {
            invite: request.clone(),
            invite_key: key,
            caller: caller_addr.clone(),
            caller_identity: format!(
                "\"{}\" <sip:{}@{}>",
                caller.display_name.replace('"', ""),
                caller.number,
                tenant.sip_domain
            ),
            target: self.target(tenant, &callee, forks),
            timers: self.config.timers,
            music_on_hold: self
                .media
                .music
                .as_ref()
                .map(|m| SocketAddr::new(self.media_ip_toward(&caller_addr), m.port)),
            anchor: media.anchored.as_ref().map(|a| a.anchor),
        };
        let call = Call::start(setup, tokio::time::Instant::now().into_std());
        let rerouting = Rerouting {
            tenant: tenant.clone(),
            callee,
            forwards,
        };
        self.spawn_call(call, cdr, None, media, Some(rerouting), &span);
        Ok(())
    }

    /// Takes the call's place among the tenant's concurrent calls, or
    /// refuses it when they are at the tenant's limit.
    async fn admit(
        &self,
        key: &TransactionKey,
        request: &SipMessage,
        tenant: &Tenant,
        cdr: &CdrContext,
    ) -> Result<Admission, crate::repo::RepoError> {
        match self.slots.claim(tenant, cdr.call_number).await? {
            Claim::Unlimited => Ok(Admission::Admitted(None)),
            Claim::Held(slot) => Ok(Admission::Admitted(Some(slot))),
            Claim::Full { max } => {
                tracing::info!(max, "tenant at its concurrent-call limit");
                self.refuse(key, request, routing::TENANT_CALL_LIMIT, cdr)
                    .await;
                Ok(Admission::Refused)
            }
        }
    }

    /// Follows `number`'s forwards within the tenant (101 of one tenant
    /// can never reach 101 of another) to the devices that ring or the
    /// refusal the caller hears. `forwards` were followed before.
    async fn resolve(
        &self,
        tenant: &Tenant,
        mut number: String,
        mut forwards: usize,
        now_ms: u64,
    ) -> Result<Resolution, crate::repo::RepoError> {
        loop {
            let Some(callee) = self.repo.extension(&tenant.id, &number).await? else {
                return Ok(Resolution::Refuse(routing::UNALLOCATED));
            };
            let mut route = routing::before_ringing(&callee);
            let mut forks = Vec::new();
            if let Route::Ring(numbers) = &route {
                let members = callee.settings.kind == ExtensionKind::Virtual;
                forks = self.forks_to(tenant, numbers, members, now_ms).await?;
                if forks.is_empty() {
                    route = routing::when_offline(&callee);
                }
            }
            match route {
                Route::Ring(_) => {
                    return Ok(Resolution::Ring {
                        callee: Box::new(callee),
                        forks,
                        forwards,
                    })
                }
                Route::Forward(to) if forwards < routing::MAX_FORWARDS => {
                    tracing::info!(from = %callee.number, %to, "call forwarded");
                    forwards += 1;
                    number = to;
                }
                Route::Forward(_) => return Ok(Resolution::Refuse(routing::FORWARD_LOOP)),
                Route::Refuse(refusal) => return Ok(Resolution::Refuse(refusal)),
            }
        }
    }

    /// How the call core rings `callee`'s `forks`.
    fn target(&self, tenant: &Tenant, callee: &Extension, forks: Vec<ForkTarget>) -> Target {
        Target {
            callee_aor: format!("<sip:{}@{}>", callee.number, tenant.sip_domain),
            forks,
            ring_timeout: callee
                .settings
                .ring_timeout_secs
                .map_or(self.config.ring_timeout, |secs| {
                    Duration::from_secs(u64::from(secs))
                }),
            forward_when: ForwardWhen::of(callee),
            follow_me_after: routing::follow_me(callee).map(|(_, delay)| delay),
        }
    }

    /// The phones rang and nobody took the call: where the callee's
    /// forward leads, or what the caller hears.
    async fn reroute(&self, rerouting: &mut Rerouting, why: Unanswered) -> Input {
        let Some(to) = routing::when_unanswered(&rerouting.callee, why) else {
            return Input::Refuse(routing::unanswered_refusal(why));
        };
        if rerouting.forwards >= routing::MAX_FORWARDS {
            return Input::Refuse(routing::FORWARD_LOOP);
        }
        tracing::info!(from = %rerouting.callee.number, %to, ?why, "call forwarded after ringing");
        let resolved = self
            .resolve(&rerouting.tenant, to, rerouting.forwards + 1, unix_now_ms())
            .await;
        match resolved {
            Ok(Resolution::Ring {
                callee,
                forks,
                forwards,
            }) => {
                let target = self.target(&rerouting.tenant, &callee, forks);
                rerouting.callee = callee;
                rerouting.forwards = forwards;
                Input::Retarget(target)
            }
            Ok(Resolution::Refuse(refusal)) => Input::Refuse(refusal),
            Err(e) => {
                tracing::error!(error = %e, "forward not followed: store unavailable");
                Input::Refuse(routing::unanswered_refusal(why))
            }
        }
    }

    /// Find-me/follow-me is due: the devices its number rings (none if it
    /// leads to a refusal).
    async fn follow_me_forks(&self, rerouting: &Rerouting) -> Vec<ForkTarget> {
        let Some((number, _)) = routing::follow_me(&rerouting.callee) else {
            return Vec::new();
        };
        let resolved = self
            .resolve(
                &rerouting.tenant,
                number.clone(),
                rerouting.forwards + 1,
                unix_now_ms(),
            )
            .await;
        match resolved {
            Ok(Resolution::Ring { forks, .. }) => {
                tracing::info!(%number, forks = forks.len(), "find-me/follow-me rings");
                forks
            }
            Ok(Resolution::Refuse(refusal)) => {
                tracing::info!(%number, status = refusal.status, "find-me/follow-me number not rung");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "find-me/follow-me: store unavailable");
                Vec::new()
            }
        }
    }

    /// The devices registered to these extensions of the tenant, all of
    /// them forked to at once. When they are a virtual extension's
    /// `members`, those in do-not-disturb are skipped (a phone's own DND
    /// was decided before it got here).
    async fn forks_to(
        &self,
        tenant: &Tenant,
        numbers: &[String],
        members: bool,
        now_ms: u64,
    ) -> Result<Vec<ForkTarget>, crate::repo::RepoError> {
        let mut forks = Vec::new();
        for number in numbers {
            if members {
                match self.repo.extension(&tenant.id, number).await? {
                    Some(member) if !member.settings.dnd => {}
                    _ => continue,
                }
            }
            let bindings = self.repo.bindings(&tenant.id, number, now_ms).await?;
            forks.extend(bindings.iter().filter_map(|stored| {
                let binding = &stored.binding;
                let peer = binding_peer(binding)?;
                Some(ForkTarget {
                    uri: binding.uri.parse().ok()?,
                    route: binding.path.clone(),
                    addr: self.local_addr_toward(peer),
                })
            }));
        }
        Ok(forks)
    }

    /// Registers the call's dialogs and runs it in a task of its own.
    fn spawn_call<C: CallCore + Send + 'static>(
        self: &Arc<Self>,
        call: C,
        cdr: CdrContext,
        app: Option<MediaApp>,
        media: CallResources,
        rerouting: Option<Rerouting>,
        span: &tracing::Span,
    ) {
        let (inbox, inputs) = mpsc::unbounded_channel();
        self.table()
            .by_invite
            .insert(call.caller_invite_key().clone(), inbox);
        self.index_dialogs(&call);
        self.metrics.active.inc();
        let b2bua = self.clone();
        tokio::spawn(
            async move { b2bua.drive(call, inputs, cdr, app, media, rerouting).await }
                .instrument(span.clone()),
        );
    }

    /// Routes every dialog of the call to its task, forks added since it
    /// started included.
    fn index_dialogs<C: CallCore>(&self, call: &C) {
        let mut table = self.table();
        let Some(inbox) = table.by_invite.get(call.caller_invite_key()).cloned() else {
            return;
        };
        for dialog_key in call.dialog_keys() {
            table.by_dialog.insert(dialog_key, inbox.clone());
        }
    }

    /// The service a dialled number names, if the node answers it itself.
    fn local_service(&self, tenant_id: &str, dialled: &str) -> Option<LocalService> {
        if dialled == self.config.echo_test_number {
            return Some(LocalService::EchoTest);
        }
        let room = dialled.strip_prefix(self.config.conference_prefix.as_str())?;
        (!room.is_empty() && room.bytes().all(|b| b.is_ascii_digit()))
            .then(|| LocalService::Conference(format!("{tenant_id}/{room}")))
    }

    /// A service the node answers itself.
    async fn answer_locally(
        self: &Arc<Self>,
        key: TransactionKey,
        request: &SipMessage,
        source: Peer,
        tenant: &Tenant,
        cdr: CdrContext,
        service: LocalService,
    ) {
        let offer = match sdp::audio_stream(request.body()) {
            Ok(offer) => offer,
            Err(e) => {
                // Without an offer there is nothing to answer (no late offer yet).
                self.refuse_media(&key, request, &e.to_string(), &cdr).await;
                return;
            }
        };
        let negotiated = match sdp::negotiate(&offer, sdp::G711) {
            Ok(n) => n,
            Err(e) => {
                self.refuse_media(&key, request, &e.to_string(), &cdr).await;
                return;
            }
        };
        let caller = self.local_addr_toward(source);
        let media_ip = self.media_ip_toward(&caller);
        let (lease, socket) = match self.media.ports.bind(media_ip) {
            Ok(bound) => bound,
            Err(e) => {
                tracing::warn!(error = %e, "no RTP port for a local call");
                self.endpoint.respond(&key, request.response(503));
                return;
            }
        };
        let slot = match self.admit(&key, request, tenant, &cdr).await {
            Ok(Admission::Admitted(slot)) => slot,
            Ok(Admission::Refused) => return,
            Err(e) => {
                tracing::error!(error = %e, "INVITE: store unavailable");
                self.endpoint.respond(&key, request.response(503));
                return;
            }
        };
        let local_rtp = SocketAddr::new(media_ip, lease.rtp_port);
        let mut call = LocalCall::answer(
            LocalSetup {
                invite: request.clone(),
                invite_key: key,
                caller,
                offer,
                negotiated,
                local_rtp,
                timers: self.config.timers,
            },
            tokio::time::Instant::now().into_std(),
        );
        let Some(remote) = call.remote_media() else {
            return;
        };
        let app = match &service {
            LocalService::EchoTest => {
                let intro = vec![
                    self.media.prompts.echo_test.clone(),
                    self.media.prompts.beep.clone(),
                ];
                start_echo(socket, lease, intro, remote)
            }
            LocalService::Conference(room) => {
                self.media.conferences.join(room, socket, lease, remote)
            }
        };
        tracing::info!(%local_rtp, ?service, "answered by the node");
        let resources = CallResources {
            slot,
            ..CallResources::default()
        };
        let span = tracing::Span::current();
        self.spawn_call(call, cdr, Some(app), resources, None, &span);
    }

    /// 488 for an offer we cannot take (RFC 3261 §21.4.26, Warning 304/305).
    async fn refuse_media(
        &self,
        key: &TransactionKey,
        request: &SipMessage,
        why: &str,
        cdr: &CdrContext,
    ) {
        let mut response = request.response(488);
        response
            .headers
            .push("Warning", format!("305 pbx \"{}\"", why.replace('"', "'")));
        response
            .headers
            .push("Reason", "Q.850;cause=65;text=\"BEARERCAPABILITY_NOTIMPL\"");
        self.endpoint.respond(key, response);
        tracing::info!(why, "call refused: media");
        let end = CallEnd {
            disposition: call::Disposition::Failed,
            hangup_cause: "INCOMPATIBLE_DESTINATION",
            hangup_by: Side::System,
            answered_at: None,
            ended_at: tokio::time::Instant::now().into_std(),
            final_status: Some(488),
        };
        self.write_cdr(cdr, &end, None).await;
    }

    /// Refuses a call before any fork (unknown number, offline callee).
    async fn refuse(
        &self,
        key: &TransactionKey,
        request: &SipMessage,
        refusal: Refusal,
        cdr: &CdrContext,
    ) {
        let Refusal {
            status,
            cause,
            q850,
        } = refusal;
        let mut response = request.response(status);
        response
            .headers
            .push("Reason", format!("Q.850;cause={q850};text=\"{cause}\""));
        self.endpoint.respond(key, response);
        tracing::info!(status, cause, "call refused");
        let end = CallEnd {
            // Do-not-disturb refuses as busy, and the CDR says so.
            disposition: if status == 486 {
                call::Disposition::Busy
            } else {
                call::Disposition::Failed
            },
            hangup_cause: cause,
            hangup_by: Side::System,
            answered_at: None,
            ended_at: tokio::time::Instant::now().into_std(),
            final_status: Some(status),
        };
        self.write_cdr(cdr, &end, None).await;
    }

    /// Runs one call to its end: feeds it inputs, client transaction
    /// events and time, carries out what it asks, and keeps its media
    /// application (if any) told of the caller's media.
    async fn drive<C: CallCore>(
        self: Arc<Self>,
        mut call: C,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        cdr: CdrContext,
        mut app: Option<MediaApp>,
        mut media: CallResources,
        mut rerouting: Option<Rerouting>,
    ) {
        let (replies, mut reply_rx) = mpsc::unbounded_channel();
        let now = || tokio::time::Instant::now().into_std();
        loop {
            if let (Some(app), Some(media)) = (app.as_ref(), call.remote_media()) {
                app.update(media);
            }
            let mut answers = Vec::new();
            for output in call.drain_outputs() {
                let answer = self
                    .carry_out(output, &replies, &cdr, &mut media, rerouting.as_mut())
                    .await;
                answers.extend(answer);
            }
            if !answers.is_empty() {
                for answer in answers {
                    call.handle(answer, now());
                }
                // A new target's forks have dialogs of their own.
                self.index_dialogs(&call);
                continue;
            }
            if call.is_finished() {
                break;
            }
            let deadline = call.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let app_done = async {
                match app.as_mut() {
                    Some(app) => app.finished().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(input) = inputs.recv() => call.handle(input, now()),
                Some((txn, event)) = reply_rx.recv() => {
                    call.handle(call::Input::Client { txn, event }, now());
                }
                () = sleep => call.handle_timeout(now()),
                () = app_done => {
                    app = None;
                    call.app_finished(now());
                }
            }
        }
        // Stops the application and frees its RTP ports, and the music.
        drop(app);
        if let Some(music) = &self.media.music {
            for listener in media.music_listeners {
                music.remove(listener);
            }
        }
        if let Some(anchored) = media.anchored {
            anchored.stop().await;
        }
        if let Some(slot) = media.slot {
            self.slots.release(slot).await;
        }
        self.metrics.active.dec();
        let mut table = self.table();
        for dialog_key in call.dialog_keys() {
            table.by_dialog.remove(&dialog_key);
        }
        table.by_invite.remove(call.caller_invite_key());
    }

    async fn carry_out(
        &self,
        output: Output,
        replies: &mpsc::UnboundedSender<(u64, sip::endpoint::ClientEvent)>,
        cdr: &CdrContext,
        media: &mut CallResources,
        rerouting: Option<&mut Rerouting>,
    ) -> Option<Input> {
        // Listener keys: the call's number with the leg in the low bits.
        let music_key = |listener: usize| (cdr.call_number << 16) | (listener as u64 & 0xffff);
        match output {
            Output::StartMusic {
                listener,
                target,
                codec,
            } => {
                if let Some(music) = &self.media.music {
                    music.add(music_key(listener), target, codec);
                    media.music_listeners.insert(music_key(listener));
                }
            }
            Output::StopMusic { listener } => {
                if let Some(music) = &self.media.music {
                    music.remove(music_key(listener));
                    media.music_listeners.remove(&music_key(listener));
                }
            }
            Output::RelayTo { leg, stream } => {
                if let Some(anchored) = &media.anchored {
                    anchored.send_to(leg, &stream);
                }
            }
            Output::Answered => self.start_recording(cdr, media),
            Output::Unanswered(why) => {
                return Some(match rerouting {
                    Some(rerouting) => self.reroute(rerouting, why).await,
                    None => Input::Refuse(routing::unanswered_refusal(why)),
                });
            }
            Output::FollowMeDue => {
                return Some(Input::AddForks(match rerouting {
                    Some(rerouting) => self.follow_me_forks(rerouting).await,
                    None => Vec::new(),
                }));
            }
            Output::Respond { key, response } => self.endpoint.respond(&key, response),
            Output::Request {
                txn,
                request,
                target,
            } => self.endpoint.request(
                request,
                target,
                ClientReply {
                    tag: txn,
                    to: replies.clone(),
                },
            ),
            Output::Stateless { message, target } => {
                if let Err(e) = self.endpoint.send_stateless(&message, target).await {
                    tracing::warn!(dest = %target.addr, error = %e, "send failed");
                }
            }
            Output::Ended(end) => {
                tracing::info!(
                    disposition = end.disposition.as_str(),
                    cause = end.hangup_cause,
                    by = side_name(end.hangup_by),
                    "call ended"
                );
                self.write_cdr(cdr, &end, media.recording_id.clone()).await;
            }
        }
        None
    }

    /// Records an anchored call from its answer on.
    fn start_recording(&self, cdr: &CdrContext, media: &mut CallResources) {
        let (Some(anchored), Some(reason)) = (&media.anchored, media.record_reason) else {
            return;
        };
        let start_ms = unix_now_ms();
        let id = crate::repo::new_recording_id(start_ms);
        let start = RecordingStart {
            id: id.clone(),
            tenant_id: cdr.tenant_id.clone(),
            call_id: cdr.call_id.clone(),
            from: cdr.from.clone(),
            to: cdr.to.clone(),
            reason: reason.to_string(),
            start_ms,
        };
        match self.media.recordings.tap(start) {
            Ok(tap) => {
                anchored.tap(tap);
                tracing::info!(recording = %id, reason, "recording");
                media.recording_id = Some(id);
            }
            Err(e) => tracing::error!(error = %e, "call not recorded"),
        }
    }

    fn wall_ms(cdr: &CdrContext, at: std::time::Instant) -> u64 {
        let elapsed = at.saturating_duration_since(cdr.started.into_std());
        cdr.start_ms + u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
    }

    async fn write_cdr(&self, context: &CdrContext, end: &CallEnd, recording_id: Option<String>) {
        self.metrics
            .ended
            .with_label_values(&[end.disposition.as_str()])
            .inc();
        let cdr = Cdr {
            id: sip::message::new_tag(),
            tenant_id: context.tenant_id.clone(),
            call_id: context.call_id.clone(),
            from: context.from.clone(),
            to: context.to.clone(),
            start_ms: context.start_ms,
            answer_ms: end.answered_at.map(|at| Self::wall_ms(context, at)),
            end_ms: Self::wall_ms(context, end.ended_at),
            disposition: end.disposition.as_str().to_string(),
            hangup_cause: end.hangup_cause.to_string(),
            hangup_by: side_name(end.hangup_by).to_string(),
            sip_status: end.final_status,
            node_id: self.config.node_id,
            recording_id,
        };
        for attempt in 1..=CDR_WRITE_ATTEMPTS {
            match self.repo.put_cdr(&cdr).await {
                Ok(()) => return,
                Err(e) if attempt == CDR_WRITE_ATTEMPTS => {
                    tracing::error!(error = %e, call_id = %cdr.call_id, "CDR not written");
                }
                // A leader election is the usual cause: wait it out.
                Err(_) => tokio::time::sleep(CDR_RETRY_PAUSE).await,
            }
        }
    }

    /// Hands an in-dialog request to its call; `false` if no call owns it.
    pub fn route_request(&self, key: &TransactionKey, request: &SipMessage) -> bool {
        let dialog_key = request
            .call_id()
            .ok()
            .zip(request.to_tag())
            .map(|(c, t)| (c.to_string(), t));
        let inbox = dialog_key.and_then(|k| self.table().by_dialog.get(&k).cloned());
        inbox.is_some_and(|inbox| {
            inbox
                .send(Input::Request {
                    key: Some(key.clone()),
                    request: request.clone(),
                })
                .is_ok()
        })
    }

    /// A CANCEL for the pending INVITE `invite`.
    pub fn route_cancel(&self, invite: &TransactionKey) {
        if let Some(inbox) = self.table().by_invite.get(invite) {
            let _ = inbox.send(Input::Cancel);
        }
    }

    /// An ACK for a 2xx, or a retransmitted 2xx: ours if a dialog matches.
    pub fn route_stray(&self, message: SipMessage) {
        let our_tag = if message.is_request() {
            if message.method() != Some(&Method::Ack) {
                return;
            }
            message.to_tag()
        } else {
            message.from_tag()
        };
        let Some(dialog_key) = message
            .call_id()
            .ok()
            .zip(our_tag)
            .map(|(c, t)| (c.to_string(), t))
        else {
            return;
        };
        let Some(inbox) = self.table().by_dialog.get(&dialog_key).cloned() else {
            return;
        };
        let input = if message.is_request() {
            Input::Request {
                key: None,
                request: message,
            }
        } else {
            Input::StrayResponse(message)
        };
        let _ = inbox.send(input);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RecordingPolicy;

    fn extension(inbound: bool, outbound: bool) -> Extension {
        Extension {
            number: "100".into(),
            display_name: String::new(),
            username: "100-T".into(),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
            max_contacts: 1,
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            remove_existing_on_register: true,
            recording: RecordingPolicy { inbound, outbound },
            settings: Default::default(),
        }
    }

    #[test]
    fn the_callers_outbound_and_the_callees_inbound_policy_record() {
        let cases = [
            ((false, false), (false, false), None),
            ((false, true), (false, false), Some("outbound")),
            ((false, false), (true, false), Some("inbound")),
            ((false, true), (true, false), Some("inbound,outbound")),
            // The caller's inbound and the callee's outbound are not about this call.
            ((true, false), (false, true), None),
        ];
        for ((ci, co), (ei, eo), reason) in cases {
            assert_eq!(
                record_reason(&extension(ci, co), &extension(ei, eo)),
                reason,
                "caller {ci}/{co} callee {ei}/{eo}"
            );
        }
    }
}
