//! The SBC process: the phone-facing listeners (UDP, TCP, TLS, WSS), the
//! node-facing UDP socket, and one task driving the [`Proxy`] with their
//! messages and its timers; SIGHUP reloads the TLS certificate.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use media::ports::PortPool;
use sip::auth::NonceKey;
use sip::message::ParseErrorKind;
use sip::message::SipMessage;
use sip::transport::{
    ConnectionGate, ConnectionLimit, ConnectionTicket, InboundMessage, Transport, TransportConfig,
    TransportError, TransportLayer, UdpInbound,
};
use sip::validate::{classify, Inbound, Policy};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use crate::challenge::EdgeChallenges;
use crate::config::SbcConfig;
use crate::dispatch::{DispatchConfig, Dispatcher, NodeChange, NodeStatus};
use crate::drained::DrainedNodes;
use crate::guard::{Guard, Verdict};
use crate::proxy::{Action, FlowGone, Proxy, ProxyConfig, PublicPorts};
use crate::relay::{CallRelays, RelayAddresses};
use crate::tls::{CertificateSource, Certificates};
use crate::token::{Flow, TokenKey};

#[derive(Debug, thiserror::Error)]
pub enum SbcError {
    #[error("{what} {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("{path}: {detail}")]
    File {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("RTP ports: {0}")]
    Ports(String),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A running SBC and where it listens.
pub struct Sbc {
    /// Prometheus metrics of the SBC (`sbc_...`).
    pub registry: prometheus::Registry,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub wss: SocketAddr,
    /// The browser softphone page.
    pub https: SocketAddr,
    pub internal: SocketAddr,
    /// Where `/metrics` and the admin endpoints are served.
    pub http: SocketAddr,
    pub certificates: Arc<Certificates>,
    status: watch::Receiver<Status>,
    task: tokio::task::JoinHandle<()>,
    page_task: tokio::task::JoinHandle<()>,
}

/// What the SBC is doing, for tests and the status page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The pbx-nodes in configuration order.
    pub nodes: Vec<NodeStatus>,
    pub relayed_calls: usize,
    pub rtp_ports_in_use: usize,
}

/// The token key survives restarts, so the flow tokens in bindings the
/// nodes stored stay valid.
fn load_or_create_key(data_dir: &Path) -> Result<TokenKey, SbcError> {
    let path = data_dir.join("flow-token.key");
    let file_error = |detail: String| SbcError::File {
        path: path.clone(),
        detail,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let key: [u8; 32] = bytes
                .try_into()
                .map_err(|_| file_error("must hold exactly 32 bytes".into()))?;
            Ok(TokenKey::from_bytes(key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(|e| file_error(e.to_string()))?;
            let key: [u8; 32] = rand::random();
            std::fs::write(&path, key).map_err(|e| file_error(e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| file_error(e.to_string()))?;
            }
            Ok(TokenKey::from_bytes(key))
        }
        Err(e) => Err(file_error(e.to_string())),
    }
}

fn listen_error(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> SbcError {
    move |source| SbcError::Listen { what, addr, source }
}

/// Binds a phone-facing listener at `addr`. The default `[::]` is one
/// dual-stack socket (IPv6, and IPv4 as mapped addresses); on a host
/// without IPv6 it falls back to `0.0.0.0`, so the defaults start anywhere.
async fn bind_listener<T, F, Fut>(
    what: &'static str,
    addr: SocketAddr,
    bind: F,
) -> Result<T, SbcError>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    use std::io::ErrorKind;
    match bind(addr).await {
        Err(e)
            if addr.ip() == std::net::Ipv6Addr::UNSPECIFIED
                && !matches!(e.kind(), ErrorKind::AddrInUse | ErrorKind::PermissionDenied) =>
        {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, error = %e, "no IPv6 on this host: {what} on IPv4 only ({v4})");
            bind(v4).await.map_err(listen_error(what, v4))
        }
        result => result.map_err(listen_error(what, addr)),
    }
}

impl Sbc {
    /// Starts everything on the current runtime.
    pub async fn start(config: &SbcConfig) -> Result<Sbc, SbcError> {
        Sbc::start_with_media(config, Handle::current()).await
    }

    /// Starts signalling on the current runtime and the media relays and
    /// WebRTC gateways on `media`. The proxy handles every message in one
    /// task, so signalling needs one thread; on a runtime of its own it
    /// never waits behind relay tasks, and the relays, on threads of their
    /// own, are not interrupted by signalling work.
    pub async fn start_with_media(config: &SbcConfig, media: Handle) -> Result<Sbc, SbcError> {
        let key = load_or_create_key(&config.data_dir)?;
        let public_host = config.public_host();
        let certificates = Certificates::load(CertificateSource::resolve(
            config.tls_cert.clone().zip(config.tls_key.clone()),
            &config.data_dir,
            &public_host,
        )?)?;
        let tls_config = certificates.server_config();

        let registry = prometheus::Registry::new();
        let guard = Arc::new(Mutex::new(Guard::new(config.guard.clone(), &registry)?));
        let (external, external_rx) = TransportLayer::gated(
            TransportConfig {
                max_message_size: config.max_message_bytes,
                max_connections: config.max_connections,
                connect_timeout: std::time::Duration::from_millis(config.tls_handshake_timeout_ms),
                ..TransportConfig::default()
            },
            Arc::new(GuardGate(guard.clone())),
        );
        // The driver reads both UDP sockets itself (no task hop per message).
        let (udp, phone_udp) =
            bind_listener("UDP", config.udp_listen, |a| external.bind_udp_unspawned(a)).await?;
        let tcp = bind_listener("TCP", config.tcp_listen, |a| external.listen_tcp(a)).await?;
        let tls = bind_listener("TLS", config.tls_listen, |a| {
            external.listen_tls(a, tls_config.clone())
        })
        .await?;
        let wss = bind_listener("WSS", config.wss_listen, |a| {
            external.listen_wss(a, tls_config.clone())
        })
        .await?;
        let (https, page_task) = bind_listener("HTTPS", config.https_listen, |a| {
            crate::softphone::serve(a, tls_config.clone(), wss.port())
        })
        .await?;
        // Node-facing is UDP only, so nothing comes through its channel.
        let (internal, _) = TransportLayer::new(TransportConfig::default());
        let (internal_addr, node_udp) =
            internal
                .bind_udp_unspawned(config.internal_listen)
                .await
                .map_err(listen_error("internal UDP", config.internal_listen))?;

        let ports = PortPool::new(config.rtp_port_min, config.rtp_port_max)
            .map_err(|e| SbcError::Ports(e.to_string()))?;
        let (mut relays, abandoned) = CallRelays::new(
            ports,
            RelayAddresses {
                public_bind: config.media_public_bind,
                public_advertised: config.media_public_ip(),
                internal: config.media_internal_ip(),
            },
            media,
        );
        let mut dispatcher = Dispatcher::new(
            &config.nodes,
            DispatchConfig {
                interval: std::time::Duration::from_millis(config.probe_interval_ms),
                timeout: std::time::Duration::from_millis(config.probe_timeout_ms),
            },
            Instant::now(),
        );
        dispatcher.register_metrics(&registry)?;
        relays.register_metrics(&registry)?;
        let drained = DrainedNodes::load(&config.data_dir)?;
        for addr in drained.nodes() {
            match dispatcher.node_at(addr) {
                Some(node) => {
                    dispatcher.set_draining(node, true);
                    tracing::warn!(node = %addr, "drained before the restart: still drained");
                }
                None => tracing::warn!(node = %addr,
                    "recorded as drained but not configured: drained if it comes back"),
            }
        }
        let media_gauges = MediaGauges::register(&registry)?;
        let proxy = Proxy::new(
            key,
            ProxyConfig {
                internal: internal_addr,
                public_host: public_host.clone(),
                public_ports: PublicPorts {
                    udp: udp.port(),
                    tcp: tcp.port(),
                    tls: tls.port(),
                    ws: wss.port(),
                    wss: wss.port(),
                },
                udp_keepalive_interval: std::time::Duration::from_secs(
                    config.udp_keepalive_interval_secs,
                ),
            },
            dispatcher,
            relays,
        );
        let mut proxy = match &config.edge_nonce_key_file {
            Some(path) => {
                let key = NonceKey::from_file(path).map_err(|e| SbcError::File {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                tracing::info!("challenging phones on the pbx-nodes' behalf");
                proxy.with_edge_challenges(EdgeChallenges::new(key))
            }
            None => proxy,
        };
        proxy.register_metrics(&registry)?;
        // Published from the start, so that `/admin/nodes` never answers
        // before the driver's first round with no nodes.
        let (status_tx, status) = watch::channel(Status {
            nodes: proxy.dispatcher.status(),
            ..Status::default()
        });
        let (admin_tx, admin_rx) = mpsc::channel(16);
        let (http, http_task) = serve_http(
            config.http_listen,
            registry.clone(),
            status.clone(),
            Admin {
                nodes: config.nodes.clone(),
                drained: Arc::new(tokio::sync::Mutex::new(drained)),
                driver: admin_tx,
            },
        )
        .await?;
        let driver = Driver {
            proxy,
            guard,
            external,
            phone_socket: phone_udp.socket().clone(),
            node_socket: node_udp.socket().clone(),
            to_phones: udp::Outbox::new(),
            to_nodes: udp::Outbox::new(),
            status: status_tx,
            media_gauges,
            certificates: certificates.clone(),
        };
        let task = tokio::spawn(async move {
            driver
                .run(
                    Sources {
                        phone_udp,
                        phone_streams: external_rx,
                        node_udp,
                    },
                    abandoned,
                    admin_rx,
                )
                .await;
            http_task.abort();
        });
        tracing::info!(
            %udp, %tcp, %tls, %wss, %https, internal = %internal_addr, host = %public_host,
            nodes = ?config.nodes, "SBC listening"
        );
        Ok(Sbc {
            registry,
            udp,
            tcp,
            tls,
            wss,
            https,
            internal: internal_addr,
            http,
            certificates,
            status,
            task,
            page_task,
        })
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn stop(&self) {
        self.task.abort();
        self.page_task.abort();
    }
}

struct Driver {
    proxy: Proxy<CallRelays>,
    /// Shared with the external transport's connection gate.
    guard: Arc<Mutex<Guard>>,
    external: TransportLayer,
    /// The UDP sockets facing phones and nodes, and the datagrams queued
    /// for each: sent together after each round of messages (one
    /// `sendmmsg` for many, and the receivers woken once for several). The
    /// tag says what a refused datagram was.
    phone_socket: Arc<udp::Socket>,
    node_socket: Arc<udp::Socket>,
    to_phones: udp::Outbox<Option<FlowGone>>,
    to_nodes: udp::Outbox<usize>,
    status: watch::Sender<Status>,
    media_gauges: MediaGauges,
    certificates: Arc<Certificates>,
}

/// `sbc_media_sessions` and `sbc_rtp_port_pairs_in_use`.
struct MediaGauges {
    sessions: prometheus::IntGauge,
    port_pairs: prometheus::IntGauge,
}

impl MediaGauges {
    fn register(registry: &prometheus::Registry) -> Result<MediaGauges, prometheus::Error> {
        let sessions = prometheus::IntGauge::new(
            "sbc_media_sessions",
            "Calls whose media the SBC relays now (relays and WebRTC gateways)",
        )?;
        let port_pairs = prometheus::IntGauge::new(
            "sbc_rtp_port_pairs_in_use",
            "RTP port pairs held by calls (two per call)",
        )?;
        registry.register(Box::new(sessions.clone()))?;
        registry.register(Box::new(port_pairs.clone()))?;
        Ok(MediaGauges {
            sessions,
            port_pairs,
        })
    }
}

/// Messages handled in a row, when they are already waiting, before the
/// driver looks at its timers and other sources again.
const BATCH: usize = 32;

/// A message from the network, checked as a proxy checks it; a request
/// that fails gets its 4xx/5xx from here.
fn checked(
    inbound: InboundMessage,
    policy: &Policy,
) -> (
    Transport,
    SocketAddr,
    Result<SipMessage, Option<SipMessage>>,
) {
    let verdict = match classify(inbound.parsed, policy) {
        Inbound::Accept(message) => Ok(message),
        Inbound::Reject {
            status,
            reason,
            response,
        } => {
            tracing::debug!(source = %inbound.source, status, %reason, "refused");
            Err(response)
        }
        Inbound::Drop { reason } => {
            tracing::debug!(source = %inbound.source, %reason, "dropped");
            Err(None)
        }
    };
    (inbound.transport, inbound.source, verdict)
}

fn lock(guard: &Mutex<Guard>) -> MutexGuard<'_, Guard> {
    guard.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guard deciding on the phone-facing stream connections: lists, bans
/// and the per-IP cap before the handshake; the ticket gives the
/// connection back when it ends.
struct GuardGate(Arc<Mutex<Guard>>);

struct GuardTicket {
    guard: Arc<Mutex<Guard>>,
    ip: std::net::IpAddr,
}

impl Drop for GuardTicket {
    fn drop(&mut self) {
        lock(&self.guard).connection_closed(self.ip);
    }
}

impl ConnectionGate for GuardGate {
    fn admit(&self, peer: SocketAddr, _transport: Transport) -> Option<ConnectionTicket> {
        let ip = peer.ip();
        lock(&self.0)
            .connection_opened(ip, Instant::now())
            .then(|| {
                Box::new(GuardTicket {
                    guard: self.0.clone(),
                    ip,
                }) as ConnectionTicket
            })
    }

    fn limit_hit(&self, _peer: SocketAddr, _transport: Transport, limit: ConnectionLimit) {
        match limit {
            ConnectionLimit::Total => lock(&self.0).total_connections_hit(),
            ConnectionLimit::HandshakeTimeout => lock(&self.0).handshake_timed_out(),
        }
    }
}

/// Where the driver's messages come from.
struct Sources {
    /// Datagrams to the phone-facing UDP socket.
    phone_udp: UdpInbound,
    /// Messages on phones' TCP, TLS and WebSocket connections.
    phone_streams: mpsc::Receiver<InboundMessage>,
    /// Datagrams from the nodes.
    node_udp: UdpInbound,
}

/// Which side a message came from.
enum Side {
    Node,
    Phone,
}

impl Sources {
    /// A message already waiting, the nodes' first; `None` (with `cx`
    /// registered) when there is none.
    fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Option<(Side, InboundMessage)> {
        if let Poll::Ready(message) = self.node_udp.poll_recv(cx) {
            return Some((Side::Node, message));
        }
        if let Poll::Ready(message) = self.phone_udp.poll_recv(cx) {
            return Some((Side::Phone, message));
        }
        let message = self.phone_streams.try_recv().ok()?;
        Some((Side::Phone, message))
    }
}

impl Driver {
    fn guard(&self) -> MutexGuard<'_, Guard> {
        lock(&self.guard)
    }

    async fn run(
        mut self,
        mut inbound: Sources,
        mut abandoned: mpsc::UnboundedReceiver<String>,
        mut admin: mpsc::Receiver<Drain>,
    ) {
        let policy = Policy::proxy();
        let mut hangup = signal_hangup();
        // One timer, moved only when the deadline changes: a fresh sleep
        // per message was a timer-wheel insert and removal each time.
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed = None;
        loop {
            self.publish_status();
            let deadline = [
                self.proxy.poll_timeout(),
                self.guard().poll_timeout(),
                self.proxy.media.handover_due(),
            ]
            .into_iter()
            .flatten()
            .min();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(at.into());
                }
                armed = deadline;
            }
            let actions = tokio::select! {
                message = inbound.phone_udp.recv() => self.on_phone_message(message, &policy),
                Some(message) = inbound.phone_streams.recv() => self.on_phone_message(message, &policy),
                message = inbound.node_udp.recv() => self.on_node_message(message),
                Some(call_id) = abandoned.recv() => {
                    tracing::warn!(%call_id, "media silent both ways for an hour: relay stopped");
                    crate::proxy::MediaAnchor::end(&mut self.proxy.media, &call_id);
                    Vec::new()
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    // Each part whose deadline passed: the media hand-over
                    // comes a hundred times a second under load, and the
                    // proxy's timeouts walk all its transactions.
                    let now = Instant::now();
                    let due = |deadline: Option<Instant>| deadline.is_some_and(|d| d <= now);
                    if due(self.proxy.media.handover_due()) {
                        self.proxy.media.hand_over();
                    }
                    if due(self.guard().poll_timeout()) {
                        self.guard().handle_timeout(now);
                    }
                    if due(self.proxy.poll_timeout()) {
                        self.proxy.handle_timeout(now)
                    } else {
                        Vec::new()
                    }
                }
                Some(drain) = admin.recv() => {
                    let node = self.proxy.dispatcher.node_at(drain.node);
                    let status = node.and_then(|node| {
                        self.proxy.dispatcher.set_draining(node, drain.draining)
                    });
                    if status.is_some() {
                        tracing::warn!(node = %drain.node, draining = drain.draining,
                            "admin: {}", if drain.draining {
                                "draining, no new dialogs or registrations to it"
                            } else {
                                "undrained, back in the rotation"
                            });
                    }
                    let _ = drain.reply.send(status);
                    Vec::new()
                }
                Some(()) = hangup.recv() => {
                    if let Err(e) = self.certificates.reload() {
                        tracing::error!(error = %e, "SIGHUP: certificate not reloaded, the old one stays");
                    }
                    Vec::new()
                }
            };
            for action in actions {
                self.carry_out(action);
            }
            // Under load, messages that are already waiting are handled
            // before going back to the select (and its bookkeeping above);
            // bounded, so timers and the other sources are not starved.
            for _ in 0..BATCH {
                let waiting =
                    std::future::poll_fn(|cx| Poll::Ready(inbound.poll_waiting(cx))).await;
                let actions = match waiting {
                    Some((Side::Node, message)) => self.on_node_message(message),
                    Some((Side::Phone, message)) => self.on_phone_message(message, &policy),
                    None => break,
                };
                for action in actions {
                    self.carry_out(action);
                }
            }
            self.send_datagrams().await;
        }
    }

    /// Sends the datagrams queued in this round. A flow to a phone that
    /// fails sends its 430 to the node in the same go.
    async fn send_datagrams(&mut self) {
        if !self.to_phones.is_empty() {
            for refused in self.phone_socket.send_batch(&mut self.to_phones).await {
                tracing::info!(remote = %refused.target, error = %refused.error, "datagram to the phone not sent");
                if let Some(gone) = refused.tag {
                    self.queue_to_node(gone.node, &gone.response());
                }
            }
        }
        if !self.to_nodes.is_empty() {
            for refused in self.node_socket.send_batch(&mut self.to_nodes).await {
                tracing::warn!(addr = %refused.target, error = %refused.error, "send to pbx-node failed");
                if let Some(Action::Node(change)) = self.proxy.node_unreachable(refused.tag) {
                    self.carry_out(Action::Node(change));
                }
            }
        }
    }

    /// A message from a phone: the guard first (a banned, denied or
    /// flooding source gets nothing back, not even a 400: no reflection),
    /// then validation, then the proxy.
    fn on_phone_message(&mut self, inbound: InboundMessage, policy: &Policy) -> Vec<Action> {
        let now = Instant::now();
        let is_request = match &inbound.parsed {
            Ok(message) => message.is_request(),
            Err(e) => e.recovered.is_request,
        };
        let admitted = if is_request {
            self.guard().check_request(inbound.source.ip(), now)
        } else {
            self.guard().check_message(inbound.source.ip(), now)
        };
        if admitted != Verdict::Admit {
            return Vec::new();
        }
        if let Err(e) = &inbound.parsed {
            if let ParseErrorKind::TooLarge { size, max } = e.kind {
                tracing::warn!(source = %inbound.source, size, max, "message over the size limit");
                self.guard().message_too_large();
            }
        }
        let (transport, source, verdict) = checked(inbound, policy);
        match verdict {
            Ok(message) => self.proxy.from_phone(
                Flow {
                    transport,
                    remote: source,
                },
                message,
                Instant::now(),
            ),
            Err(Some(response)) => vec![Action::ToPhone {
                flow: Flow {
                    transport,
                    remote: source,
                },
                message: response,
                if_flow_gone: None,
            }],
            Err(None) => Vec::new(),
        }
    }

    /// A message from the inside. It is not validated as a phone's is: a
    /// node built it with the same SIP stack, from requests that the node
    /// validated itself, and the proxy drops what lacks a field it reads.
    /// Nothing from an address that is no configured node gets a reply.
    fn on_node_message(&mut self, inbound: InboundMessage) -> Vec<Action> {
        match inbound.parsed {
            Ok(message) => self
                .proxy
                .from_node(inbound.source, message, Instant::now()),
            Err(e) => {
                tracing::debug!(source = %inbound.source, error = %e.kind, "unparsable message from the inside: dropped");
                Vec::new()
            }
        }
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::ToPhone {
                flow,
                message,
                if_flow_gone,
            } if flow.transport == Transport::Udp => {
                self.to_phones
                    .push(message.to_bytes(), flow.remote, if_flow_gone);
            }
            Action::ToPhone {
                flow,
                message,
                if_flow_gone,
            } => {
                // Not awaited: a phone that stops reading fills its own
                // queue and loses its messages, and holds up no one else.
                if let Err(e) = self
                    .external
                    .try_send(flow.transport, flow.remote, &message)
                {
                    if matches!(e, TransportError::Congested(_)) {
                        tracing::warn!(remote = %flow.remote, "the phone does not read: message dropped");
                        self.guard().write_queue_full();
                    } else {
                        tracing::info!(remote = %flow.remote, error = %e, "flow to the phone failed");
                    }
                    if let Some(gone) = if_flow_gone {
                        self.queue_to_node(gone.node, &gone.response());
                    }
                }
            }
            Action::ToNode { node, message } => self.queue_to_node(node, &message),
            Action::Authenticated { source, failed } => {
                if failed {
                    tracing::info!(%source, "authentication failed");
                    self.guard().auth_failed(source, Instant::now());
                } else {
                    self.guard().auth_succeeded(source);
                }
            }
            Action::Keepalive(remote) => {
                self.to_phones
                    .push(crate::keepalive::PING.to_vec(), remote, None);
            }
            Action::Node(change) => match change {
                NodeChange::Up(node) => {
                    tracing::info!(node = ?self.proxy.dispatcher.addr(node), "pbx-node up")
                }
                NodeChange::Down(node) => {
                    tracing::warn!(node = ?self.proxy.dispatcher.addr(node), "pbx-node down: no new dialogs to it")
                }
            },
        }
    }

    fn queue_to_node(&mut self, node: usize, message: &SipMessage) {
        if let Some(addr) = self.proxy.dispatcher.addr(node) {
            self.to_nodes.push(message.to_bytes(), addr, node);
        }
    }

    fn publish_status(&self) {
        let status = Status {
            nodes: self.proxy.dispatcher.status(),
            relayed_calls: self.proxy.media.active(),
            rtp_ports_in_use: self.proxy.media.ports_in_use(),
        };
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.media_gauges.sessions.set(gauge(status.relayed_calls));
        self.media_gauges
            .port_pairs
            .set(gauge(status.rtp_ports_in_use));
        self.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}

/// An admin request to drain a node (or undrain it); the reply is the
/// node's state, `None` if no node has that address.
struct Drain {
    node: SocketAddr,
    draining: bool,
    reply: tokio::sync::oneshot::Sender<Option<NodeStatus>>,
}

/// What the admin endpoints act on.
struct Admin {
    /// The configured pbx-nodes.
    nodes: Vec<SocketAddr>,
    /// Held from the check of a drain to its hand-over to the driver, so
    /// that the file and the dispatcher see drains in the same order.
    drained: Arc<tokio::sync::Mutex<DrainedNodes>>,
    driver: mpsc::Sender<Drain>,
}

/// The SBC's HTTP listener (loopback by default: it has no
/// authentication): `GET /metrics` in the Prometheus text format,
/// `GET /admin/nodes` (each node's address, health and draining flag as
/// JSON), `POST /admin/nodes/{addr}/drain` and `/undrain`. A drain is
/// recorded in the data directory before it takes effect, so it outlives
/// a restart; if it cannot be recorded, nothing changes (500).
async fn serve_http(
    listen: SocketAddr,
    registry: prometheus::Registry,
    status: watch::Receiver<Status>,
    admin: Admin,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), SbcError> {
    use axum::extract::Path;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Json;
    use prometheus::Encoder;

    let admin = Arc::new(admin);
    let drain = |draining: bool| {
        let admin = admin.clone();
        move |Path(node): Path<String>| {
            let admin = admin.clone();
            async move {
                let Ok(node) = node.parse::<SocketAddr>() else {
                    return (StatusCode::BAD_REQUEST, format!("'{node}' is no ip:port\n"))
                        .into_response();
                };
                if !admin.nodes.contains(&node) {
                    return (StatusCode::NOT_FOUND, format!("no pbx-node {node}\n"))
                        .into_response();
                }
                let mut drained = admin.drained.lock().await;
                let mut updated = drained.clone();
                // A file write and two syncs: off the signalling thread.
                let recorded = tokio::task::spawn_blocking(move || {
                    updated.set(node, draining).map(|()| updated)
                })
                .await;
                match recorded {
                    Ok(Ok(updated)) => *drained = updated,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, %node, draining, "admin: drain not recorded, nothing changed");
                        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
                            .into_response();
                    }
                    Err(_) => {
                        return (StatusCode::SERVICE_UNAVAILABLE, "SBC stopping\n").into_response()
                    }
                }
                let (reply, answer) = tokio::sync::oneshot::channel();
                let asked = admin
                    .driver
                    .send(Drain {
                        node,
                        draining,
                        reply,
                    })
                    .await;
                match (asked, answer.await) {
                    (Ok(()), Ok(Some(status))) => Json(status).into_response(),
                    (Ok(()), Ok(None)) => {
                        (StatusCode::NOT_FOUND, format!("no pbx-node {node}\n")).into_response()
                    }
                    _ => (StatusCode::SERVICE_UNAVAILABLE, "SBC stopping\n").into_response(),
                }
            }
        }
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = Vec::new();
                    match prometheus::TextEncoder::new().encode(&registry.gather(), &mut text) {
                        Ok(()) => (StatusCode::OK, text),
                        Err(e) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            e.to_string().into_bytes(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/admin/nodes",
            get(move || {
                let nodes = status.borrow().nodes.clone();
                async move { Json(nodes) }
            }),
        )
        .route("/admin/nodes/{node}/drain", post(drain(true)))
        .route("/admin/nodes/{node}/undrain", post(drain(false)));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_error("HTTP", listen))?;
    let addr = listener
        .local_addr()
        .map_err(listen_error("HTTP", listen))?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP listener stopped");
        }
    });
    Ok((addr, task))
}

/// SIGHUP as a stream (never fires where there are no signals).
fn signal_hangup() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
}
