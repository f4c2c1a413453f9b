//! The IO edge (tokio): UDP, TCP and TLS listeners and connections feeding
//! parsed messages into one channel. Stream connections live in a table
//! keyed by (transport, remote address) so requests and responses to the same
//! peer reuse them (RFC 3261 §18). Every connection has an idle timeout and a
//! per-message read timeout (a peer trickling bytes cannot hold it open), a
//! message size limit, and answers RFC 5626 CRLF pings. WS and WSS follow
//! RFC 7118: subprotocol `sip`, one SIP message per WebSocket message.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{rustls, TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::message::{
    parse_datagram, ParseError, ParseErrorKind, SipMessage, StreamFramer, StreamItem,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl Transport {
    /// Whether the transport is reliable (decides transaction timers).
    pub fn is_reliable(self) -> bool {
        self != Transport::Udp
    }

    /// The Via transport token.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }
}

/// A UDP socket or a stream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// A message (or a framing failure, so the caller can answer 400) from the network.
#[derive(Debug)]
pub struct InboundMessage {
    pub transport: Transport,
    pub source: SocketAddr,
    pub connection: ConnectionId,
    pub parsed: Result<SipMessage, ParseError>,
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub max_message_size: usize,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A started message must be complete within this time.
    pub read_timeout: Duration,
    /// TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Further inbound connections are refused beyond this.
    pub max_connections: usize,
    /// Receive buffer asked for each UDP socket (SO_RCVBUF). The
    /// kernel's default (208 KiB, about a hundred messages) fills within
    /// milliseconds at a few thousand messages a second whenever the
    /// process is not scheduled, and what does not fit is dropped and
    /// costs a retransmission 500 ms later. The kernel caps it at
    /// `net.core.rmem_max`.
    pub udp_receive_buffer: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            max_message_size: 65_535,
            idle_timeout: Duration::from_secs(180),
            read_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connections: 10_000,
            udp_receive_buffer: 4 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("no UDP socket is bound")]
    UdpNotBound,
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("no connection to {0}: open one with connect_tls or connect_ws")]
    NotConnected(SocketAddr),
    #[error("invalid TLS server name '{0}'")]
    ServerName(String),
    #[error("connection to {0} is closed")]
    Closed(SocketAddr),
    #[error("the write queue to {0} is full: the peer does not read")]
    Congested(SocketAddr),
    #[error("WebSocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("WebSocket server did not accept the 'sip' subprotocol")]
    NoSipSubprotocol,
}

impl From<tokio_tungstenite::tungstenite::Error> for TransportError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(e))
    }
}

/// What a listener speaks.
#[derive(Clone)]
enum ListenKind {
    Tcp,
    Tls(TlsAcceptor),
    Ws,
    Wss(TlsAcceptor),
}

impl ListenKind {
    fn transport(&self) -> Transport {
        match self {
            ListenKind::Tcp => Transport::Tcp,
            ListenKind::Tls(_) => Transport::Tls,
            ListenKind::Ws => Transport::Ws,
            ListenKind::Wss(_) => Transport::Wss,
        }
    }
}

const SIP_SUBPROTOCOL: &str = "sip";

fn offers_sip(headers: &tokio_tungstenite::tungstenite::http::HeaderMap) -> bool {
    headers
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SIP_SUBPROTOCOL))
}

/// Asks for a `wanted`-byte receive buffer on `socket` and warns when the
/// kernel grants less (Linux reports twice the size it was asked for, for
/// its bookkeeping; a grant below `wanted` is `net.core.rmem_max` capping
/// it).
fn size_receive_buffer(socket: &udp::Socket, wanted: usize) {
    let socket = socket2::SockRef::from(socket);
    if let Err(e) = socket.set_recv_buffer_size(wanted) {
        tracing::warn!(error = %e, "UDP receive buffer not enlarged");
        return;
    }
    match socket.recv_buffer_size() {
        Ok(granted) if granted < wanted => tracing::warn!(
            wanted,
            granted,
            "UDP receive buffer capped by the kernel: bursts may be dropped; \
             raise net.core.rmem_max to {wanted} or more"
        ),
        Ok(granted) => tracing::debug!(granted, "UDP receive buffer"),
        Err(e) => tracing::debug!(error = %e, "UDP receive buffer size unknown"),
    }
}

/// Small buffers: tungstenite's 128 KiB read and write buffers were most of
/// an idle WSS connection's memory (an SBC holds thousands); a SIP message
/// larger than the read chunk takes a few reads, and each message is
/// written out at once (write buffer 0) as SIP wants anyway.
fn ws_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// Server side of the RFC 7118 handshake: the client must offer `sip`.
async fn ws_accept<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    max_message_size: usize,
) -> Result<WebSocketStream<S>, TransportError> {
    // The error type is fixed by tungstenite's `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| {
        if !offers_sip(request.headers()) {
            let mut refusal = ErrorResponse::new(Some("the 'sip' subprotocol is required".into()));
            *refusal.status_mut() = StatusCode::BAD_REQUEST;
            return Err(refusal);
        }
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SIP_SUBPROTOCOL),
        );
        Ok(response)
    };
    let config = Some(ws_config(max_message_size));
    Ok(tokio_tungstenite::accept_hdr_async_with_config(stream, callback, config).await?)
}

struct Connection {
    id: ConnectionId,
    writer: mpsc::Sender<Vec<u8>>,
}

/// Held for as long as an admitted inbound connection lives (its
/// handshake included); dropping it tells the gate the connection ended.
pub type ConnectionTicket = Box<dyn Send>;

/// Why the transport gave up on an inbound connection by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// `max_connections` stream connections were already open.
    Total,
    /// The TLS or WebSocket handshake took longer than `connect_timeout`.
    HandshakeTimeout,
}

/// Decides on inbound stream connections before their handshake, and
/// hears of every limit the transport enforces itself (an SBC counts and
/// logs them; per-source limits and bans live behind `admit`).
pub trait ConnectionGate: Send + Sync {
    /// A TCP connection from `peer` arrived on a `transport` listener;
    /// `None` closes it at once.
    fn admit(&self, peer: SocketAddr, transport: Transport) -> Option<ConnectionTicket>;
    fn limit_hit(&self, peer: SocketAddr, transport: Transport, limit: ConnectionLimit);
}

struct Shared {
    config: TransportConfig,
    inbound: mpsc::Sender<InboundMessage>,
    connections: Mutex<HashMap<(Transport, SocketAddr), Connection>>,
    udp: Mutex<Option<(ConnectionId, Arc<udp::Socket>)>>,
    next_id: AtomicU64,
    gate: Option<Arc<dyn ConnectionGate>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The datagrams of a bound UDP socket, parsed, for the task that reads them.
pub struct UdpInbound {
    socket: Arc<udp::Socket>,
    id: ConnectionId,
    max_message_size: usize,
    /// The datagrams of the last receive, and the next one to hand out.
    batch: udp::RecvBatch,
    next: usize,
}

/// Datagrams read per system call. A proxy under load finds about a dozen
/// waiting each time it wakes.
const RECV_BATCH: usize = 16;

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

impl UdpInbound {
    /// The next message. Cancel-safe: nothing is lost when a `select!`
    /// drops it.
    pub async fn recv(&mut self) -> InboundMessage {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The socket, for sending from it directly (many datagrams per
    /// system call with [`udp::Socket::send_batch`]).
    pub fn socket(&self) -> &Arc<udp::Socket> {
        &self.socket
    }

    /// The next message, or `Pending` (with `cx` woken when one may be
    /// there). Once a receive has drained the socket, `Pending` costs no
    /// system call.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<InboundMessage> {
        loop {
            while let Some((bytes, len, source)) = self.batch.get(self.next) {
                self.next += 1;
                if let Some(msg) = self.message(bytes, len, source) {
                    return Poll::Ready(msg);
                }
            }
            self.next = 0;
            match self.socket.poll_recv_batch(cx, &mut self.batch) {
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return Poll::Pending,
                // An unconnected UDP socket reports no peer's errors; what
                // is left (out of memory) passes: tried again after the
                // other tasks had their turn.
                Poll::Ready(Err(error)) => {
                    tracing::warn!(%error, "UDP receive failed");
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }

    /// A datagram of `len` bytes (`bytes`, cut short if over the size
    /// limit), parsed; `None` for a stray keep-alive CRLF (RFC 5626 §4.4.2
    /// uses STUN on UDP), which is ignored.
    fn message(&self, bytes: &[u8], len: usize, source: SocketAddr) -> Option<InboundMessage> {
        let parsed = if len > self.max_message_size {
            Err(ParseError::bare(ParseErrorKind::TooLarge {
                size: len,
                max: self.max_message_size,
            }))
        } else {
            parse_datagram(bytes)
        };
        if matches!(&parsed, Err(e) if e.kind == ParseErrorKind::Empty) {
            return None;
        }
        Some(InboundMessage {
            transport: Transport::Udp,
            source,
            connection: self.id,
            parsed,
        })
    }
}

/// Handle to the transports; cheap to clone.
#[derive(Clone)]
pub struct TransportLayer {
    shared: Arc<Shared>,
}

impl TransportLayer {
    /// The receiver gets every inbound message from every transport.
    pub fn new(config: TransportConfig) -> (Self, mpsc::Receiver<InboundMessage>) {
        Self::build(config, None)
    }

    /// Like `new`, with `gate` deciding on every inbound stream connection.
    pub fn gated(
        config: TransportConfig,
        gate: Arc<dyn ConnectionGate>,
    ) -> (Self, mpsc::Receiver<InboundMessage>) {
        Self::build(config, Some(gate))
    }

    fn build(
        config: TransportConfig,
        gate: Option<Arc<dyn ConnectionGate>>,
    ) -> (Self, mpsc::Receiver<InboundMessage>) {
        let (inbound, rx) = mpsc::channel(1024);
        let shared = Arc::new(Shared {
            config,
            inbound,
            connections: Mutex::new(HashMap::new()),
            udp: Mutex::new(None),
            next_id: AtomicU64::new(1),
            gate,
        });
        (Self { shared }, rx)
    }

    fn next_id(&self) -> ConnectionId {
        ConnectionId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Open stream connections.
    pub fn connection_count(&self) -> usize {
        lock(&self.shared.connections).len()
    }

    /// Binds the UDP socket used for receiving and sending.
    pub async fn bind_udp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let (local, mut datagrams) = self.bind_udp_unspawned(addr).await?;
        let shared = self.shared.clone();
        tokio::spawn(
            async move { while shared.inbound.send(datagrams.recv().await).await.is_ok() {} },
        );
        Ok(local)
    }

    /// Binds the UDP socket like [`bind_udp`](Self::bind_udp), but its
    /// datagrams are read by the caller's own task through the returned
    /// [`UdpInbound`] instead of a task of ours and the channel: a proxy
    /// that handles every message in one task saves a task hop per
    /// message. Sending from it is unchanged.
    pub async fn bind_udp_unspawned(
        &self,
        addr: SocketAddr,
    ) -> io::Result<(SocketAddr, UdpInbound)> {
        let socket = udp::Socket::bind(addr)?;
        size_receive_buffer(&socket, self.shared.config.udp_receive_buffer);
        let socket = Arc::new(socket);
        let local = socket.local_addr()?;
        let id = self.next_id();
        *lock(&self.shared.udp) = Some((id, socket.clone()));
        let inbound = UdpInbound {
            socket,
            id,
            max_message_size: self.shared.config.max_message_size,
            // One byte over the limit, so that a datagram over it shows.
            batch: udp::RecvBatch::new(
                RECV_BATCH,
                self.shared
                    .config
                    .max_message_size
                    .saturating_add(1)
                    .min(MAX_DATAGRAM),
            ),
            next: 0,
        };
        Ok((local, inbound))
    }

    /// Accepts TCP connections.
    pub async fn listen_tcp(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.listen(addr, ListenKind::Tcp).await
    }

    /// Accepts WebSocket connections (RFC 7118).
    pub async fn listen_ws(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        self.listen(addr, ListenKind::Ws).await
    }

    /// Accepts secure WebSocket connections.
    pub async fn listen_wss(
        &self,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<SocketAddr> {
        self.listen(addr, ListenKind::Wss(TlsAcceptor::from(config)))
            .await
    }

    /// Accepts TLS connections (handshake bounded by `connect_timeout`).
    pub async fn listen_tls(
        &self,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> io::Result<SocketAddr> {
        self.listen(addr, ListenKind::Tls(TlsAcceptor::from(config)))
            .await
    }

    async fn listen(&self, addr: SocketAddr, kind: ListenKind) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let layer = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let transport = kind.transport();
                let gate = layer.shared.gate.clone();
                if layer.connection_count() >= layer.shared.config.max_connections {
                    tracing::warn!(%peer, "connection limit reached, refusing");
                    if let Some(gate) = &gate {
                        gate.limit_hit(peer, transport, ConnectionLimit::Total);
                    }
                    continue;
                }
                let ticket = match &gate {
                    Some(gate) => match gate.admit(peer, transport) {
                        Some(ticket) => Some(ticket),
                        None => continue,
                    },
                    None => None,
                };
                let layer = layer.clone();
                let kind = kind.clone();
                // Handshakes run in their own task, bounded in time, so a
                // slow peer cannot stall accepts.
                tokio::spawn(async move {
                    let limit = layer.shared.config.connect_timeout;
                    if timeout(limit, layer.accept(stream, peer, kind, ticket))
                        .await
                        .is_err()
                    {
                        tracing::warn!(%peer, ?transport, timeout_ms = limit.as_millis(), "handshake timed out: connection closed");
                        if let Some(gate) = &gate {
                            gate.limit_hit(peer, transport, ConnectionLimit::HandshakeTimeout);
                        }
                    }
                });
            }
        });
        Ok(local)
    }

    /// Runs the handshake of an inbound connection and starts its tasks;
    /// `ticket` lives as long as the connection.
    async fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        kind: ListenKind,
        ticket: Option<ConnectionTicket>,
    ) {
        let max = self.shared.config.max_message_size;
        let result = match kind {
            ListenKind::Tcp => Ok(self.spawn_connection(stream, Transport::Tcp, peer, ticket)),
            ListenKind::Tls(acceptor) => acceptor
                .accept(stream)
                .await
                .map(|tls| self.spawn_connection(tls, Transport::Tls, peer, ticket))
                .map_err(TransportError::from),
            ListenKind::Ws => ws_accept(stream, max)
                .await
                .map(|ws| self.spawn_ws_connection(ws, Transport::Ws, peer, ticket)),
            ListenKind::Wss(acceptor) => match acceptor.accept(stream).await {
                Ok(tls) => ws_accept(tls, max)
                    .await
                    .map(|ws| self.spawn_ws_connection(ws, Transport::Wss, peer, ticket)),
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "handshake failed");
        }
    }

    /// Opens (or reuses) a WebSocket connection to `dest`; with `tls`
    /// (server name and client config) it is WSS.
    pub async fn connect_ws(
        &self,
        dest: SocketAddr,
        tls: Option<(&str, Arc<rustls::ClientConfig>)>,
    ) -> Result<ConnectionId, TransportError> {
        let transport = if tls.is_some() {
            Transport::Wss
        } else {
            Transport::Ws
        };
        if let Some(c) = lock(&self.shared.connections).get(&(transport, dest)) {
            return Ok(c.id);
        }
        let url = match &tls {
            Some((name, _)) => format!("wss://{name}:{}/", dest.port()),
            None => format!("ws://{dest}/"),
        };
        let mut request = url.into_client_request()?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SIP_SUBPROTOCOL),
        );
        let config = Some(ws_config(self.shared.config.max_message_size));
        let connect = async {
            let tcp = TcpStream::connect(dest).await?;
            match tls {
                None => {
                    let (ws, response) =
                        tokio_tungstenite::client_async_with_config(request, tcp, config).await?;
                    if !offers_sip(response.headers()) {
                        return Err(TransportError::NoSipSubprotocol);
                    }
                    Ok(self.spawn_ws_connection(ws, transport, dest, None))
                }
                Some((name, client_config)) => {
                    let name = ServerName::try_from(name.to_string())
                        .map_err(|_| TransportError::ServerName(name.to_string()))?;
                    let stream = TlsConnector::from(client_config).connect(name, tcp).await?;
                    let (ws, response) =
                        tokio_tungstenite::client_async_with_config(request, stream, config)
                            .await?;
                    if !offers_sip(response.headers()) {
                        return Err(TransportError::NoSipSubprotocol);
                    }
                    Ok(self.spawn_ws_connection(ws, transport, dest, None))
                }
            }
        };
        timeout(self.shared.config.connect_timeout, connect)
            .await
            .map_err(|_| TransportError::ConnectTimeout(dest))?
    }

    /// Opens (or reuses) a TLS connection to `dest`, verifying `server_name`.
    pub async fn connect_tls(
        &self,
        dest: SocketAddr,
        server_name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<ConnectionId, TransportError> {
        if let Some(c) = lock(&self.shared.connections).get(&(Transport::Tls, dest)) {
            return Ok(c.id);
        }
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TransportError::ServerName(server_name.to_string()))?;
        let connect = async {
            let tcp = TcpStream::connect(dest).await?;
            TlsConnector::from(config).connect(name, tcp).await
        };
        let stream = timeout(self.shared.config.connect_timeout, connect)
            .await
            .map_err(|_| TransportError::ConnectTimeout(dest))??;
        Ok(self.spawn_connection(stream, Transport::Tls, dest, None))
    }

    /// Sends a message: UDP from the bound socket; TCP and TLS over the
    /// existing connection to `dest` (TCP connects if there is none).
    pub async fn send(
        &self,
        transport: Transport,
        dest: SocketAddr,
        message: &SipMessage,
    ) -> Result<ConnectionId, TransportError> {
        let bytes = message.to_bytes();
        if transport == Transport::Udp {
            let (id, socket) = lock(&self.shared.udp)
                .clone()
                .ok_or(TransportError::UdpNotBound)?;
            socket.send_to(&bytes, dest).await?;
            return Ok(id);
        }
        let existing = lock(&self.shared.connections)
            .get(&(transport, dest))
            .map(|c| (c.id, c.writer.clone()));
        let (id, writer) = match (existing, transport) {
            (Some(found), _) => found,
            (None, Transport::Tls | Transport::Ws | Transport::Wss) => {
                return Err(TransportError::NotConnected(dest))
            }
            (None, _) => {
                let stream = timeout(self.shared.config.connect_timeout, TcpStream::connect(dest))
                    .await
                    .map_err(|_| TransportError::ConnectTimeout(dest))??;
                let id = self.spawn_connection(stream, Transport::Tcp, dest, None);
                let writer = lock(&self.shared.connections)
                    .get(&(transport, dest))
                    .map(|c| c.writer.clone())
                    .ok_or(TransportError::Closed(dest))?;
                (id, writer)
            }
        };
        writer
            .send(bytes)
            .await
            .map_err(|_| TransportError::Closed(dest))?;
        Ok(id)
    }

    /// Queues a message on the open stream connection to `dest` without
    /// waiting: `NotConnected` if there is none (none is opened, and UDP
    /// has none), `Congested` when its write queue is full. A proxy that
    /// handles every message in one task must not stall behind a peer that
    /// stopped reading.
    pub fn try_send(
        &self,
        transport: Transport,
        dest: SocketAddr,
        message: &SipMessage,
    ) -> Result<ConnectionId, TransportError> {
        // Serialised before the table is locked: the connections' own
        // tasks lock it too.
        let bytes = message.to_bytes();
        let connections = lock(&self.shared.connections);
        let connection = connections
            .get(&(transport, dest))
            .ok_or(TransportError::NotConnected(dest))?;
        connection.writer.try_send(bytes).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Congested(dest),
            mpsc::error::TrySendError::Closed(_) => TransportError::Closed(dest),
        })?;
        Ok(connection.id)
    }

    /// Adds a connection to the table; returns its id and write channel.
    fn register(
        &self,
        transport: Transport,
        peer: SocketAddr,
    ) -> (ConnectionId, mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
        let id = self.next_id();
        let (writer_tx, writer_rx) = mpsc::channel::<Vec<u8>>(64);
        lock(&self.shared.connections).insert(
            (transport, peer),
            Connection {
                id,
                writer: writer_tx.clone(),
            },
        );
        (id, writer_tx, writer_rx)
    }

    /// Registers a stream and starts its reader and writer tasks.
    fn spawn_connection<S>(
        &self,
        stream: S,
        transport: Transport,
        peer: SocketAddr,
        ticket: Option<ConnectionTicket>,
    ) -> ConnectionId
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (id, writer_tx, mut writer_rx) = self.register(transport, peer);
        let (mut reader, mut writer) = tokio::io::split(stream);
        tokio::spawn(async move {
            while let Some(bytes) = writer_rx.recv().await {
                if writer.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = writer.shutdown().await;
        });
        let shared = self.shared.clone();
        tokio::spawn(async move {
            read_loop(&shared, &mut reader, &writer_tx, transport, peer, id).await;
            shared.unregister(transport, peer, id);
            drop(ticket);
        });
        id
    }

    /// Starts the tasks of a WebSocket connection: each text or binary
    /// WebSocket message is one SIP message.
    fn spawn_ws_connection<S>(
        &self,
        ws: WebSocketStream<S>,
        transport: Transport,
        peer: SocketAddr,
        ticket: Option<ConnectionTicket>,
    ) -> ConnectionId
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (id, writer_tx, mut writer_rx) = self.register(transport, peer);
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move {
            while let Some(bytes) = writer_rx.recv().await {
                let frame = match String::from_utf8(bytes) {
                    Ok(text) => Message::text(text),
                    Err(e) => Message::binary(e.into_bytes()),
                };
                if sink.send(frame).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let idle = shared.config.idle_timeout;
            while let Ok(Some(Ok(frame))) = timeout(idle, stream.next()).await {
                let data: &[u8] = match &frame {
                    Message::Text(text) => text.as_bytes(),
                    Message::Binary(bytes) => bytes,
                    Message::Close(_) => break,
                    _ => continue,
                };
                // SIP over WebSocket clients (SIP.js) send RFC 5626's
                // double-CRLF ping as a message of its own and wait for
                // the CRLF pong; a lone CRLF is a pong and is ignored.
                if data == b"\r\n\r\n" {
                    let _ = writer_tx.send(b"\r\n".to_vec()).await;
                    continue;
                }
                if data == b"\r\n" {
                    continue;
                }
                let parsed = parse_datagram(data);
                let msg = InboundMessage {
                    transport,
                    source: peer,
                    connection: id,
                    parsed,
                };
                if shared.inbound.send(msg).await.is_err() {
                    break;
                }
            }
            shared.unregister(transport, peer, id);
            drop(ticket);
        });
        id
    }
}

impl Shared {
    /// Removes a closed connection unless a newer one took its place.
    fn unregister(&self, transport: Transport, peer: SocketAddr, id: ConnectionId) {
        let mut table = lock(&self.connections);
        if table.get(&(transport, peer)).is_some_and(|c| c.id == id) {
            table.remove(&(transport, peer));
        }
        tracing::debug!(%peer, ?transport, "connection closed");
    }
}

/// Reads and frames until EOF, an error, a timeout or a framing error.
async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    reader: &mut R,
    writer: &mpsc::Sender<Vec<u8>>,
    transport: Transport,
    peer: SocketAddr,
    id: ConnectionId,
) {
    let config = &shared.config;
    let mut framer = StreamFramer::new(config.max_message_size);
    let mut buf = vec![0u8; 16 * 1024];
    let mut message_started: Option<Instant> = None;
    loop {
        let deadline = match message_started {
            Some(start) => start + config.read_timeout,
            None => Instant::now() + config.idle_timeout,
        };
        let n = match tokio::time::timeout_at(deadline, reader.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return,
        };
        framer.push(buf.get(..n).unwrap_or_default());
        while let Some(item) = framer.next_item() {
            let parsed = match item {
                Ok(StreamItem::Ping) => {
                    let _ = writer.send(b"\r\n".to_vec()).await;
                    continue;
                }
                Ok(StreamItem::Pong) => continue,
                Ok(StreamItem::Message(m)) => Ok(m),
                Err(e) => Err(e),
            };
            let fatal = parsed.is_err();
            let msg = InboundMessage {
                transport,
                source: peer,
                connection: id,
                parsed,
            };
            if shared.inbound.send(msg).await.is_err() || fatal {
                // A stream cannot be resynchronized after a framing error (RFC 4475 §3.1.2.3).
                return;
            }
        }
        message_started = match (framer.buffered(), message_started) {
            (0, _) => None,
            (_, Some(start)) => Some(start),
            (_, None) => Some(Instant::now()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Method, RequestBuilder};

    fn options() -> SipMessage {
        RequestBuilder::new(Method::Options, "sip:pbx@127.0.0.1".parse().unwrap())
            .via("TCP", "127.0.0.1", None)
            .from("<sip:a@127.0.0.1>", None)
            .to("<sip:pbx@127.0.0.1>")
            .build()
    }

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn recv(rx: &mut mpsc::Receiver<InboundMessage>) -> InboundMessage {
        timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn udp_round_trip() {
        let (server, mut server_rx) = TransportLayer::new(TransportConfig::default());
        let (client, mut client_rx) = TransportLayer::new(TransportConfig::default());
        let server_addr = server.bind_udp(localhost()).await.unwrap();
        let client_addr = client.bind_udp(localhost()).await.unwrap();
        let request = options();
        client
            .send(Transport::Udp, server_addr, &request)
            .await
            .unwrap();
        let inbound = recv(&mut server_rx).await;
        assert_eq!(inbound.transport, Transport::Udp);
        assert_eq!(inbound.source, client_addr);
        let received = inbound.parsed.unwrap();
        assert_eq!(
            received,
            crate::message::parse_datagram(&request.to_bytes()).unwrap()
        );
        server
            .send(Transport::Udp, inbound.source, &received.response(200))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut client_rx).await.parsed.unwrap().status(),
            Some(200)
        );
    }

    #[tokio::test]
    async fn udp_sockets_get_the_receive_buffer_asked_for() {
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let wanted = 1 << 20;
        let (layer, _rx) = TransportLayer::new(TransportConfig {
            udp_receive_buffer: wanted,
            ..TransportConfig::default()
        });
        let (_, inbound) = layer.bind_udp_unspawned(localhost()).await.unwrap();
        let granted = socket2::SockRef::from(&*inbound.socket)
            .recv_buffer_size()
            .unwrap();
        // Linux doubles what it grants, for its bookkeeping.
        assert_eq!(granted, 2 * wanted.min(rmem_max));
    }

    #[tokio::test]
    async fn tcp_reuses_the_connection_both_ways() {
        let (server, mut server_rx) = TransportLayer::new(TransportConfig::default());
        let (client, mut client_rx) = TransportLayer::new(TransportConfig::default());
        let server_addr = server.listen_tcp(localhost()).await.unwrap();
        let first = client
            .send(Transport::Tcp, server_addr, &options())
            .await
            .unwrap();
        let second = client
            .send(Transport::Tcp, server_addr, &options())
            .await
            .unwrap();
        assert_eq!(first, second);
        let a = recv(&mut server_rx).await;
        let b = recv(&mut server_rx).await;
        assert_eq!(a.connection, b.connection);
        assert_eq!(a.transport, Transport::Tcp);
        // The response goes back over the same connection, not a new one.
        let response = a.parsed.unwrap().response(200);
        let used = server
            .send(Transport::Tcp, a.source, &response)
            .await
            .unwrap();
        assert_eq!(used, a.connection);
        let back = recv(&mut client_rx).await;
        assert_eq!(back.connection, first);
        assert_eq!(back.parsed.unwrap().status(), Some(200));
        assert_eq!(client.connection_count(), 1);
        assert_eq!(server.connection_count(), 1);
    }

    #[tokio::test]
    async fn try_send_to_a_peer_that_stops_reading_reports_congestion_without_waiting() {
        let (layer, _rx) = TransportLayer::new(TransportConfig::default());
        // A peer that accepts and then never reads.
        let silent = std::net::TcpListener::bind(localhost()).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let connected = layer
            .send(Transport::Tcp, silent_addr, &options())
            .await
            .unwrap();
        let (_held, _) = silent.accept().unwrap();
        let mut big = options();
        big.headers.set("Content-Type", "text/plain");
        big.body = vec![b'x'; 60_000];
        let mut sent = 0;
        let congested = timeout(Duration::from_secs(10), async {
            loop {
                match layer.try_send(Transport::Tcp, silent_addr, &big) {
                    Ok(id) => {
                        assert_eq!(id, connected);
                        sent += 1;
                    }
                    Err(e) => return e,
                }
                // The writer task fills the kernel's buffers meanwhile.
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the queue fills: no endless buffering");
        assert!(
            matches!(congested, TransportError::Congested(addr) if addr == silent_addr),
            "{congested}"
        );
        assert!(
            sent > 64,
            "the kernel took some before the queue of 64 filled: {sent}"
        );
        // No connection is opened by try_send.
        let nobody = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(matches!(
            layer.try_send(Transport::Tcp, nobody, &options()),
            Err(TransportError::NotConnected(_))
        ));
    }

    #[tokio::test]
    async fn tcp_answers_crlf_ping_and_enforces_limits() {
        let config = TransportConfig {
            max_message_size: 256,
            read_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_secs(1),
            ..TransportConfig::default()
        };
        let (server, mut server_rx) = TransportLayer::new(config);
        let addr = server.listen_tcp(localhost()).await.unwrap();

        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"\r\n\r\n").await.unwrap();
        let mut pong = [0u8; 2];
        raw.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"\r\n");
        // Idle: closed by the server after idle_timeout.
        let mut rest = Vec::new();
        let closed = timeout(Duration::from_secs(2), raw.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))));

        // A trickled, never-finished message is cut off by read_timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"OPTIONS sip:a@b SIP/2.0\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let closed = timeout(Duration::from_secs(2), slow.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))));
        assert!(started.elapsed() < Duration::from_millis(900));

        // Oversized: reported and closed.
        let mut big = TcpStream::connect(addr).await.unwrap();
        big.write_all(&[b'A'; 300]).await.unwrap();
        let inbound = recv(&mut server_rx).await;
        assert!(matches!(
            inbound.parsed,
            Err(ParseError {
                kind: ParseErrorKind::TooLarge { .. },
                ..
            })
        ));
        let closed = timeout(Duration::from_secs(2), big.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(0))));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(server.connection_count(), 0);
    }

    /// A self-signed certificate for `pbx.test` and configs that trust it.
    fn tls_configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = rcgen::generate_simple_self_signed(vec!["pbx.test".to_string()]).unwrap();
        let cert = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server_config), Arc::new(client_config))
    }

    #[tokio::test]
    async fn tls_round_trip() {
        let (server_config, client_config) = tls_configs();
        let (server, mut server_rx) = TransportLayer::new(TransportConfig::default());
        let (client, mut client_rx) = TransportLayer::new(TransportConfig::default());
        let addr = server.listen_tls(localhost(), server_config).await.unwrap();
        assert!(matches!(
            client.send(Transport::Tls, addr, &options()).await,
            Err(TransportError::NotConnected(_))
        ));
        let id = client
            .connect_tls(addr, "pbx.test", client_config.clone())
            .await
            .unwrap();
        assert_eq!(
            client
                .connect_tls(addr, "pbx.test", client_config)
                .await
                .unwrap(),
            id
        );
        client.send(Transport::Tls, addr, &options()).await.unwrap();
        let inbound = recv(&mut server_rx).await;
        assert_eq!(inbound.transport, Transport::Tls);
        let response = inbound.parsed.unwrap().response(200);
        server
            .send(Transport::Tls, inbound.source, &response)
            .await
            .unwrap();
        let back = recv(&mut client_rx).await;
        assert_eq!(back.connection, id);
        assert_eq!(back.parsed.unwrap().status(), Some(200));
    }

    #[tokio::test]
    async fn ws_and_wss_round_trips() {
        let (server_config, client_config) = tls_configs();
        let (server, mut server_rx) = TransportLayer::new(TransportConfig::default());
        let (client, mut client_rx) = TransportLayer::new(TransportConfig::default());
        let ws_addr = server.listen_ws(localhost()).await.unwrap();
        let wss_addr = server.listen_wss(localhost(), server_config).await.unwrap();
        let plain = client.connect_ws(ws_addr, None).await.unwrap();
        let secure = client
            .connect_ws(wss_addr, Some(("pbx.test", client_config)))
            .await
            .unwrap();
        assert_ne!(plain, secure);
        for (transport, addr, id) in [
            (Transport::Ws, ws_addr, plain),
            (Transport::Wss, wss_addr, secure),
        ] {
            client.send(transport, addr, &options()).await.unwrap();
            let inbound = recv(&mut server_rx).await;
            assert_eq!(inbound.transport, transport);
            let response = inbound.parsed.unwrap().response(200);
            server
                .send(transport, inbound.source, &response)
                .await
                .unwrap();
            let back = recv(&mut client_rx).await;
            assert_eq!((back.transport, back.connection), (transport, id));
            assert_eq!(back.parsed.unwrap().status(), Some(200));
        }
        assert_eq!(server.connection_count(), 2);
    }

    #[tokio::test]
    async fn ws_without_sip_subprotocol_is_refused() {
        let (server, _rx) = TransportLayer::new(TransportConfig::default());
        let addr = server.listen_ws(localhost()).await.unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let refused = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp).await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn ws_answers_a_double_crlf_ping_with_a_crlf_pong() {
        let (server, mut server_rx) = TransportLayer::new(TransportConfig::default());
        let addr = server.listen_ws(localhost()).await.unwrap();
        let mut request = format!("ws://{addr}/").into_client_request().unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SIP_SUBPROTOCOL),
        );
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
        ws.send(Message::text("\r\n\r\n")).await.unwrap();
        let pong = timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(pong.into_data().as_ref(), b"\r\n");
        // The ping reached no one; the next message does.
        ws.send(Message::text(
            String::from_utf8(options().to_bytes()).unwrap(),
        ))
        .await
        .unwrap();
        assert!(recv(&mut server_rx).await.parsed.is_ok());
    }
}
