//! Node-to-node transport: QUIC (quinn) with mutual TLS. Every RPC is one
//! bidirectional stream on a cached connection; a snapshot is one stream
//! carrying the file. Client requests made to one node at the same time
//! share a stream. A fault switch cuts a node off for partition tests.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::client::{ClientReply, ClientRequest};
use crate::codec;
use crate::metrics::Metrics;
use crate::snapshot::SnapshotFile;
use crate::tls::{node_dns_name, NodeIdentity, TlsError};
use crate::types::{NodeId, StoreSnapshot, TypeConfig};

/// The cached connection to one peer (an address and the name it must
/// prove). Requests take the live connection under a plain mutex, held for
/// a clone only; dialling is serialized by the async `dial` lock, so many
/// concurrent requests share one handshake.
struct Peer {
    name: String,
    current: std::sync::Mutex<Option<quinn::Connection>>,
    dial: tokio::sync::Mutex<()>,
}

impl Peer {
    fn live(&self) -> Option<quinn::Connection> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn set(&self, conn: Option<quinn::Connection>) -> Option<quinn::Connection> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut current, conn)
    }

    /// Forgets `conn` unless it was already replaced by a newer one.
    fn forget(&self, conn: &quinn::Connection) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            *current = None;
        }
    }
}

/// Client requests queued for one node, waiting for [`Transport::send_queued`].
#[derive(Default)]
struct Outbox {
    queued: std::sync::Mutex<Vec<Queued>>,
}

struct Queued {
    request: ClientRequest,
    timeout: Duration,
    reply: oneshot::Sender<Result<ClientReply, TransportError>>,
}

impl Outbox {
    /// Queues a request; true if it is the first, so nobody sends yet.
    fn push(&self, queued: Queued) -> bool {
        let mut q = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        q.push(queued);
        q.len() == 1
    }

    fn take(&self) -> Vec<Queued> {
        std::mem::take(&mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Most client requests one message carries.
const MAX_CLIENT_BATCH: usize = 256;

/// Largest RPC message accepted (an append batch or a client request).
const MAX_MESSAGE: usize = 64 << 20;
const STREAM_RPC: u8 = 1;
/// A peer on the cluster LAN answers a handshake in milliseconds; waiting
/// longer for a dead one only delays the retry to the new leader.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(500);
const STREAM_SNAPSHOT: u8 = 2;

/// A Raft or client request between nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    Client(ClientRequest),
    /// Client requests made at the same time, served concurrently; one
    /// reply each, in order.
    Clients(Vec<ClientRequest>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    Client(ClientReply),
    Clients(Vec<ClientReply>),
    /// The receiving node failed to handle the request.
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    vote: VoteOf<TypeConfig>,
    meta: SnapshotMetaOf<TypeConfig>,
    /// The file's length: a sender that gave up mid-file (openraft's
    /// timeout drops it, and quinn finishes a dropped stream cleanly) must
    /// not look like a whole snapshot to the receiver.
    len: u64,
}

/// What a node does with requests that arrive over the transport.
pub trait Inbound: Send + Sync + 'static {
    fn handle(&self, request: PeerRequest) -> BoxFuture<'_, PeerReply>;
    fn install_snapshot(
        &self,
        vote: VoteOf<TypeConfig>,
        snapshot: StoreSnapshot,
    ) -> BoxFuture<'_, Result<SnapshotResponse<TypeConfig>, String>>;
    /// Where received snapshot files are written.
    fn snapshot_dir(&self) -> PathBuf;
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node is cut off from the network (fault injection)")]
    Isolated,
    #[error("connect to {addr}: {detail}")]
    Connect { addr: String, detail: String },
    #[error("stream: {0}")]
    Stream(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("bad message: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("peer failed: {0}")]
    Remote(String),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("bind: {0}")]
    Bind(std::io::Error),
    #[error("transport closed")]
    Closed,
}

impl TransportError {
    /// True when the request surely did not reach the peer.
    pub fn not_sent(&self) -> bool {
        matches!(
            self,
            TransportError::Isolated | TransportError::Connect { .. } | TransportError::Closed
        )
    }

    /// This failure of a batch, for one of its requests: the same variant
    /// where the caller tells them apart (`not_sent`), the message otherwise.
    fn for_one_request(&self) -> TransportError {
        match self {
            TransportError::Isolated => TransportError::Isolated,
            TransportError::Closed => TransportError::Closed,
            TransportError::Connect { addr, detail } => TransportError::Connect {
                addr: addr.clone(),
                detail: detail.clone(),
            },
            TransportError::Timeout(t) => TransportError::Timeout(*t),
            TransportError::Codec(e) => TransportError::Codec(e.clone()),
            TransportError::Remote(detail) => TransportError::Remote(detail.clone()),
            other => TransportError::Stream(other.to_string()),
        }
    }
}

/// The QUIC endpoint of one node (or of a client tool).
pub struct Transport {
    /// Taken out on close, so the UDP port is released even while stale
    /// handles to this transport live on.
    endpoint: std::sync::Mutex<Option<quinn::Endpoint>>,
    client_config: quinn::ClientConfig,
    /// One entry per peer, so that dialling a dead peer never delays
    /// traffic to the live ones. Keyed by address, then by name.
    connections: std::sync::Mutex<HashMap<SocketAddr, Vec<Arc<Peer>>>>,
    /// Client requests on their way, by node address and id.
    outboxes: std::sync::Mutex<HashMap<(String, NodeId), Arc<Outbox>>>,
    isolated: AtomicBool,
    metrics: Option<Arc<Metrics>>,
}

impl Transport {
    /// Binds a node's endpoint: it accepts peers and dials them.
    pub fn bind_node(
        addr: SocketAddr,
        identity: &NodeIdentity,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Transport>, TransportError> {
        let endpoint = quinn::Endpoint::server(identity.quic_server_config()?, addr)
            .map_err(TransportError::Bind)?;
        Ok(Arc::new(Transport {
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            client_config: identity.quic_client_config()?,
            connections: std::sync::Mutex::new(HashMap::new()),
            outboxes: std::sync::Mutex::new(HashMap::new()),
            isolated: AtomicBool::new(false),
            metrics: Some(metrics),
        }))
    }

    /// A dial-only endpoint for tools that talk to a cluster.
    pub fn client(identity: &NodeIdentity) -> Result<Arc<Transport>, TransportError> {
        let bind: SocketAddr = ([127, 0, 0, 1], 0).into();
        let endpoint = quinn::Endpoint::client(bind).map_err(TransportError::Bind)?;
        Ok(Arc::new(Transport {
            endpoint: std::sync::Mutex::new(Some(endpoint)),
            client_config: identity.quic_client_config()?,
            connections: std::sync::Mutex::new(HashMap::new()),
            outboxes: std::sync::Mutex::new(HashMap::new()),
            isolated: AtomicBool::new(false),
            metrics: None,
        }))
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint()?.local_addr().map_err(TransportError::Bind)
    }

    /// Fault injection: drop all traffic to and from this node until healed.
    pub async fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::SeqCst);
        if isolated {
            for peer in self.peers() {
                if let Some(conn) = peer.set(None) {
                    conn.close(0u32.into(), b"isolated");
                }
            }
        }
    }

    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::SeqCst)
    }

    fn endpoint(&self) -> Result<quinn::Endpoint, TransportError> {
        let guard = self.endpoint.lock().unwrap_or_else(|p| p.into_inner());
        guard.clone().ok_or(TransportError::Closed)
    }

    /// Closes every connection and releases the UDP port.
    pub async fn close(&self) {
        let endpoint = self
            .endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        for peer in self.peers() {
            peer.set(None);
        }
        if let Some(endpoint) = endpoint {
            endpoint.close(0u32.into(), b"shutdown");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }

    fn peers(&self) -> Vec<Arc<Peer>> {
        let map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        map.values().flatten().cloned().collect()
    }

    fn peer(&self, addr: SocketAddr, name: &str) -> Arc<Peer> {
        let mut map = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let peers = map.entry(addr).or_default();
        if let Some(peer) = peers.iter().find(|p| p.name == name) {
            return peer.clone();
        }
        let peer = Arc::new(Peer {
            name: name.to_string(),
            current: std::sync::Mutex::new(None),
            dial: tokio::sync::Mutex::new(()),
        });
        peers.push(peer.clone());
        peer
    }

    async fn connection(
        &self,
        addr: &str,
        server_name: &str,
    ) -> Result<(quinn::Connection, Arc<Peer>), TransportError> {
        if self.is_isolated() {
            return Err(TransportError::Isolated);
        }
        let connect_err = |detail: String| TransportError::Connect {
            addr: addr.to_string(),
            detail,
        };
        let sock: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| connect_err(e.to_string()))?
            .next()
            .ok_or_else(|| connect_err("no address".into()))?;
        let peer = self.peer(sock, server_name);
        let conn = match peer.live() {
            Some(conn) => conn,
            None => self.dial(&peer, sock, addr).await?,
        };
        Ok((conn, peer))
    }

    async fn dial(
        &self,
        peer: &Peer,
        sock: SocketAddr,
        addr: &str,
    ) -> Result<quinn::Connection, TransportError> {
        let connect_err = |detail: String| TransportError::Connect {
            addr: addr.to_string(),
            detail,
        };
        let _dialling = peer.dial.lock().await;
        // Someone else may have dialled while this request waited.
        if let Some(conn) = peer.live() {
            return Ok(conn);
        }
        let connecting = self
            .endpoint()?
            .connect_with(self.client_config.clone(), sock, &peer.name)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .map_err(|_| connect_err("handshake timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        // Cut off while dialling: keep no connection around.
        if self.is_isolated() {
            conn.close(0u32.into(), b"isolated");
            return Err(TransportError::Isolated);
        }
        peer.set(Some(conn.clone()));
        Ok(conn)
    }

    /// Sends one request to the node `server_name` at `addr` and waits for its reply.
    pub async fn call(
        &self,
        addr: &str,
        server_name: &str,
        request: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, TransportError> {
        let started = Instant::now();
        let frame = codec::encode_after(STREAM_RPC, request)?;
        let (conn, peer) = self.connection(addr, server_name).await?;
        let exchange = async {
            let (mut send, mut recv) = conn
                .open_bi()
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            send.finish()
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            let bytes = recv
                .read_to_end(MAX_MESSAGE)
                .await
                .map_err(|e| TransportError::Stream(e.to_string()))?;
            Ok::<_, TransportError>(codec::decode::<PeerReply>(&bytes)?)
        };
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Timeout(timeout)),
        };
        if let Err(TransportError::Stream(_)) = &result {
            peer.forget(&conn);
        }
        if self.is_isolated() {
            return Err(TransportError::Isolated);
        }
        if let (Ok(_), Some(m)) = (&result, &self.metrics) {
            m.peer_rtt_seconds
                .with_label_values(&[server_name])
                .observe(started.elapsed().as_secs_f64());
        }
        match result? {
            PeerReply::Failed(detail) => Err(TransportError::Remote(detail)),
            reply => Ok(reply),
        }
    }

    /// Sends a client request to node `node` at `addr` and returns its reply.
    /// Requests made to one node at the same time travel together: one
    /// stream, one message and one task on the node for all of them.
    pub async fn call_client(
        self: &Arc<Self>,
        addr: &str,
        node: NodeId,
        request: ClientRequest,
        timeout: Duration,
    ) -> Result<ClientReply, TransportError> {
        let outbox = {
            let mut outboxes = self.outboxes.lock().unwrap_or_else(|p| p.into_inner());
            outboxes
                .entry((addr.to_string(), node))
                .or_default()
                .clone()
        };
        let (reply, replied) = oneshot::channel();
        let queued = Queued {
            request,
            timeout,
            reply,
        };
        if outbox.push(queued) {
            tokio::spawn(self.clone().send_queued(addr.to_string(), node, outbox));
        }
        match tokio::time::timeout(timeout, replied).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(TransportError::Stream("request abandoned".into())),
            Err(_) => Err(TransportError::Timeout(timeout)),
        }
    }

    /// Sends what is queued for `node` as one message and hands out the
    /// replies.
    async fn send_queued(self: Arc<Self>, addr: String, node: NodeId, outbox: Arc<Outbox>) {
        // Requests are made in bursts (one commit answers many writers,
        // who all write again): let the rest of the burst join.
        tokio::task::yield_now().await;
        let mut queued = outbox.take();
        while queued.len() > MAX_CLIENT_BATCH {
            let rest = queued.split_off(MAX_CLIENT_BATCH);
            tokio::spawn(self.clone().send_batch(addr.clone(), node, queued));
            queued = rest;
        }
        self.send_batch(addr, node, queued).await;
    }

    async fn send_batch(self: Arc<Self>, addr: String, node: NodeId, queued: Vec<Queued>) {
        let timeout = queued.iter().map(|q| q.timeout).max().unwrap_or_default();
        let (mut requests, replies): (Vec<_>, Vec<_>) =
            queued.into_iter().map(|q| (q.request, q.reply)).unzip();
        let count = requests.len();
        let request = match requests.pop() {
            Some(one) if requests.is_empty() => PeerRequest::Client(one),
            Some(last) => {
                requests.push(last);
                PeerRequest::Clients(requests)
            }
            None => return,
        };
        let results: Vec<_> = match self
            .call(&addr, &node_dns_name(node), &request, timeout)
            .await
        {
            Ok(PeerReply::Client(reply)) if count == 1 => vec![Ok(reply)],
            Ok(PeerReply::Clients(replies)) if replies.len() == count => {
                replies.into_iter().map(Ok).collect()
            }
            Ok(other) => {
                let e = TransportError::Remote(format!("unexpected reply {other:?}"));
                (0..count).map(|_| Err(e.for_one_request())).collect()
            }
            Err(e) => (0..count).map(|_| Err(e.for_one_request())).collect(),
        };
        for (reply, result) in replies.into_iter().zip(results) {
            // A caller past its deadline is gone; nobody else wants it.
            let _ = reply.send(result);
        }
    }

    /// Streams a snapshot file to a peer, which installs it.
    async fn send_snapshot(
        &self,
        addr: &str,
        server_name: &str,
        vote: VoteOf<TypeConfig>,
        snapshot: StoreSnapshot,
    ) -> Result<SnapshotResponse<TypeConfig>, TransportError> {
        let (conn, _) = self.connection(addr, server_name).await?;
        let stream_err = |e: &dyn std::fmt::Display| TransportError::Stream(e.to_string());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| stream_err(&e))?;
        let mut file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| stream_err(&e))?;
        let len = file.metadata().await.map_err(|e| stream_err(&e))?.len();
        let header = codec::encode(&SnapshotHeader {
            vote,
            meta: snapshot.meta.clone(),
            len,
        })?;
        send.write_all(&[STREAM_SNAPSHOT])
            .await
            .map_err(|e| stream_err(&e))?;
        send.write_all(&(header.len() as u32).to_be_bytes())
            .await
            .map_err(|e| stream_err(&e))?;
        send.write_all(&header).await.map_err(|e| stream_err(&e))?;
        tokio::io::copy(&mut file, &mut send)
            .await
            .map_err(|e| stream_err(&e))?;
        send.finish().map_err(|e| stream_err(&e))?;
        let bytes = recv
            .read_to_end(MAX_MESSAGE)
            .await
            .map_err(|e| stream_err(&e))?;
        match codec::decode::<PeerReply>(&bytes)? {
            PeerReply::Snapshot(resp) => Ok(resp),
            PeerReply::Failed(detail) => Err(TransportError::Remote(detail)),
            other => Err(TransportError::Remote(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Accepts peers until the endpoint closes. Refused handshakes (a
    /// certificate from another CA, no certificate) are logged and counted.
    pub async fn serve(self: Arc<Self>, inbound: Arc<dyn Inbound>) {
        let Ok(endpoint) = self.endpoint() else {
            return;
        };
        while let Some(incoming) = endpoint.accept().await {
            let remote = incoming.remote_address();
            if self.is_isolated() {
                incoming.refuse();
                continue;
            }
            let transport = self.clone();
            let inbound = inbound.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => transport.serve_connection(conn, inbound).await,
                    Err(e) => {
                        tracing::warn!(%remote, error = %e, "refused peer connection");
                        if let Some(m) = &transport.metrics {
                            m.peer_refused_total.inc();
                        }
                    }
                }
            });
        }
    }

    async fn serve_connection(self: Arc<Self>, conn: quinn::Connection, inbound: Arc<dyn Inbound>) {
        while let Ok((send, recv)) = conn.accept_bi().await {
            if self.is_isolated() {
                conn.close(0u32.into(), b"isolated");
                return;
            }
            let inbound = inbound.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_stream(send, recv, inbound).await {
                    tracing::debug!(error = %e, "peer stream failed");
                }
            });
        }
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    inbound: Arc<dyn Inbound>,
) -> Result<(), TransportError> {
    let stream_err = |e: &dyn std::fmt::Display| TransportError::Stream(e.to_string());
    let mut kind = [0u8; 1];
    recv.read_exact(&mut kind)
        .await
        .map_err(|e| stream_err(&e))?;
    let reply = match kind[0] {
        STREAM_RPC => {
            let bytes = recv
                .read_to_end(MAX_MESSAGE)
                .await
                .map_err(|e| stream_err(&e))?;
            match codec::decode::<PeerRequest>(&bytes) {
                Ok(request) => inbound.handle(request).await,
                Err(e) => PeerReply::Failed(format!("undecodable request: {e}")),
            }
        }
        STREAM_SNAPSHOT => receive_snapshot(&mut recv, inbound.as_ref()).await,
        other => PeerReply::Failed(format!("unknown stream kind {other}")),
    };
    send.write_all(&codec::encode(&reply)?)
        .await
        .map_err(|e| stream_err(&e))?;
    // Dropping a finished stream still delivers what was written: no need
    // to keep this task until the peer acknowledges it.
    send.finish().map_err(|e| stream_err(&e))
}

async fn receive_snapshot(recv: &mut quinn::RecvStream, inbound: &dyn Inbound) -> PeerReply {
    let result = async {
        let mut len = [0u8; 4];
        recv.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(format!("snapshot header of {len} bytes"));
        }
        let mut header = vec![0u8; len];
        recv.read_exact(&mut header)
            .await
            .map_err(|e| e.to_string())?;
        let header: SnapshotHeader = codec::decode(&header).map_err(|e| e.to_string())?;
        let nonce: u64 = rand::random();
        let path = inbound
            .snapshot_dir()
            .join(format!("incoming-{nonce:016x}.recv"));
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| e.to_string())?;
        let copied = tokio::io::copy(recv, &mut file).await;
        let synced = file.sync_all().await;
        let whole = match copied {
            Ok(n) if n == header.len => synced.map_err(|e| e.to_string()),
            Ok(n) => Err(format!(
                "snapshot stream ended after {n} of {} bytes",
                header.len
            )),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = whole {
            // A partial file must never reach the state machine: refused
            // here, the leader sends it again.
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let snapshot = StoreSnapshot {
            meta: header.meta,
            snapshot: SnapshotFile { path: path.clone() },
        };
        let result = inbound.install_snapshot(header.vote, snapshot).await;
        // Installed files are moved into place; anything left is garbage.
        let _ = tokio::fs::remove_file(&path).await;
        result
    }
    .await;
    match result {
        Ok(resp) => PeerReply::Snapshot(resp),
        Err(e) => PeerReply::Failed(e),
    }
}

/// openraft's view of the transport: one client per peer.
pub struct NetworkFactory {
    pub transport: Arc<Transport>,
    /// The least time an append (or heartbeat) may take. openraft allows
    /// one heartbeat interval; on a busy machine a large append, fsync on
    /// the follower included, takes longer. Giving up then wastes it (it is
    /// sent again, with whatever was added meanwhile, so more likely to
    /// time out again) and every failure counts towards openraft's
    /// replication backoff, which stalls commits. A follower that does not
    /// answer within an election timeout is treated as gone anyway.
    pub append_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            addr: node.addr.clone(),
            server_name: node_dns_name(target),
            append_timeout: self.append_timeout,
        }
    }
}

pub struct PeerClient {
    transport: Arc<Transport>,
    addr: String,
    server_name: String,
    append_timeout: Duration,
}

fn rpc_error(e: TransportError) -> RPCError<TypeConfig> {
    if e.not_sent() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl PeerClient {
    async fn call(
        &self,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerReply, RPCError<TypeConfig>> {
        self.transport
            .call(&self.addr, &self.server_name, &request, timeout)
            .await
            .map_err(rpc_error)
    }
}

fn unexpected(reply: PeerReply) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&TransportError::Remote(format!(
        "unexpected reply {reply:?}"
    ))))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let timeout = option.hard_ttl().max(self.append_timeout);
        match self.call(PeerRequest::Append(rpc), timeout).await? {
            PeerReply::Append(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(PeerRequest::Vote(rpc), option.hard_ttl()).await? {
            PeerReply::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::PreVote(rpc), option.hard_ttl())
            .await?
        {
            PeerReply::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .call(PeerRequest::TransferLeader(req), option.hard_ttl())
            .await?
        {
            PeerReply::TransferLeader(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: StoreSnapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let send = self
            .transport
            .send_snapshot(&self.addr, &self.server_name, vote, snapshot);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|e| {
                if e.not_sent() {
                    StreamingError::Unreachable(Unreachable::new(&e))
                } else {
                    StreamingError::Network(NetworkError::new(&e))
                }
            }),
        }
    }
}
