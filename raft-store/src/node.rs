//! One raft-store node: openraft wired to the RocksDB storage and the QUIC
//! transport, and the etcd-style API on top. Any node takes any request:
//! writes, read-index and keepalives go to the leader, reads are served
//! locally once the node has applied what the leader says they must see.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::error::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::{ReadPolicy, SnapshotResponse};
use openraft::type_config::alias::VoteOf;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use prometheus::Registry;
use rocksdb::DB;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::client::{ClientReply, ClientRequest, NodeStatus, StoreError, MAX_HOPS};
use crate::data_dir::{DataDir, DataDirError, ALL_CFS};
use crate::kv_state::LeaseChange;
use crate::kv_state::{self, Cfs, Revisions};
use crate::lease_keeper::{KeepAlive, LeaseClock};
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::network::{Inbound, NetworkFactory, PeerReply, PeerRequest, Transport, TransportError};
use crate::snapshot;
use crate::state_machine::{LeaseSignal, StateMachine, WatchSignal};
use crate::tls::NodeIdentity;
use crate::types::{
    Command, CommandResult, KeyRange, KeyValue, LeaseId, NodeId, OpResult, RangeResult,
    StoreSnapshot, Txn, TxnOp, TxnResult, TypeConfig,
};
use crate::watch::Watcher;

/// Settings of one node. [`StoreConfig::new`] gives defaults that suit a
/// LAN cluster; tests shorten the timeouts.
#[derive(Clone)]
pub struct StoreConfig {
    pub node_id: NodeId,
    /// Refuses data directories made for another cluster.
    pub cluster_id: String,
    pub listen: SocketAddr,
    /// The address peers dial; defaults to `listen`.
    pub advertise: Option<String>,
    pub data_dir: PathBuf,
    pub identity: NodeIdentity,
    /// How long an API call may wait for a leader, a quorum or its result.
    pub request_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many log entries. The state machine is
    /// durable in RocksDB, so a snapshot only lets the log be purged and a
    /// far-behind follower catch up; each one writes the whole state on
    /// every node (340 MB with 200,000 extensions, 1-1.6 s of a core), which
    /// at 50,000 entries came every 7 s under a registration load.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, so a slow follower can still
    /// catch up from the log (openraft issue #1706).
    pub logs_kept_after_snapshot: u64,
    /// Revisions of history kept for watches; older ones are compacted.
    pub history_retention: u64,
}

impl StoreConfig {
    pub fn new(
        node_id: NodeId,
        listen: SocketAddr,
        data_dir: impl Into<PathBuf>,
        identity: NodeIdentity,
    ) -> Self {
        StoreConfig {
            node_id,
            cluster_id: "pbx".into(),
            listen,
            advertise: None,
            data_dir: data_dir.into(),
            identity,
            request_timeout: Duration::from_secs(5),
            // On a LAN a heartbeat costs nothing; a short election timeout
            // is what keeps failover under a second.
            heartbeat_interval: Duration::from_millis(50),
            election_timeout_min: Duration::from_millis(250),
            election_timeout_max: Duration::from_millis(500),
            snapshot_every: 500_000,
            logs_kept_after_snapshot: 20_000,
            history_retention: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("raft config: {0}")]
    Config(String),
    #[error("{path}: {detail}")]
    Storage { path: PathBuf, detail: String },
}

type RaftNode = Raft<TypeConfig, StateMachine>;

struct Inner {
    id: NodeId,
    config: StoreConfig,
    raft: RaftNode,
    db: Arc<DB>,
    /// Shared by every column family of `db`.
    block_cache: rocksdb::Cache,
    snapshot_dir: PathBuf,
    transport: Arc<Transport>,
    watch_tx: broadcast::Sender<WatchSignal>,
    clock: LeaseClock,
    metrics: Arc<Metrics>,
    /// Commands this node proposes as leader, to [`run_proposer`].
    proposals: mpsc::UnboundedSender<Proposal>,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// A command waiting to be proposed, and who waits for its result.
struct Proposal {
    command: Command,
    /// `NoLeader` means it was refused before it was appended (this node
    /// does not lead after all): safe to retry.
    reply: oneshot::Sender<Result<CommandResult, StoreError>>,
}

/// Most transactions one log entry carries; beyond this a burst of
/// writes takes several entries.
const MAX_TXNS_PER_ENTRY: usize = 256;

/// A running node. Cheap to clone.
#[derive(Clone)]
pub struct RaftStore {
    inner: Arc<Inner>,
}

fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(e.to_string())
}

/// Pause between retries while a leader is being elected.
const RETRY_PAUSE: Duration = Duration::from_millis(30);

impl RaftStore {
    /// Opens the data directory and starts the node. A fresh node does
    /// nothing until [`RaftStore::initialize`] or a leader adds it.
    pub async fn start(config: StoreConfig, registry: &Registry) -> Result<RaftStore, StartError> {
        let data = DataDir::open(&config.data_dir, &config.cluster_id, config.node_id)?;
        let metrics = Arc::new(Metrics::new(registry)?);
        let storage_err = |e: std::io::Error| StartError::Storage {
            path: config.data_dir.clone(),
            detail: e.to_string(),
        };
        let snapshot_dir = data.snapshot_dir();
        let (watch_tx, _) = broadcast::channel(4096);
        let (lease_tx, lease_rx) = mpsc::unbounded_channel();
        let (proposals, proposal_rx) = mpsc::unbounded_channel();
        let sm = StateMachine::new(
            data.db.clone(),
            snapshot_dir.clone(),
            watch_tx.clone(),
            lease_tx,
            metrics.clone(),
        )
        .map_err(storage_err)?;
        let log_store = LogStore::new(data.db.clone()).map_err(storage_err)?;
        let transport = Transport::bind_node(config.listen, &config.identity, metrics.clone())?;

        let raft_config = openraft::Config {
            cluster_name: config.cluster_id.clone(),
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
            install_snapshot_timeout: 30_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Config(e.to_string()))?;
        let network = NetworkFactory {
            transport: transport.clone(),
            append_timeout: config.election_timeout_min,
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store,
            sm,
        )
        .await
        .map_err(|e| StartError::Config(e.to_string()))?;

        let store = RaftStore {
            inner: Arc::new(Inner {
                id: config.node_id,
                config,
                raft,
                db: data.db,
                block_cache: data.block_cache,
                snapshot_dir,
                transport: transport.clone(),
                watch_tx,
                clock: LeaseClock::default(),
                metrics,
                proposals,
                tasks: std::sync::Mutex::new(Vec::new()),
            }),
        };
        let serve = tokio::spawn(transport.serve(Arc::new(store.clone())));
        let keeper = tokio::spawn(store.clone().lease_keeper(lease_rx));
        let gauges = tokio::spawn(store.clone().update_gauges());
        let memory = tokio::spawn(store.clone().update_memory_gauges());
        let proposer = tokio::spawn(run_proposer(store.inner.raft.clone(), proposal_rx));
        store.track([serve, keeper, gauges, memory, proposer]);
        tracing::info!(node = store.inner.id, listen = %store.inner.config.listen, "raft-store node started");
        Ok(store)
    }

    fn track(&self, handles: impl IntoIterator<Item = JoinHandle<()>>) {
        let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.extend(handles);
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.id
    }

    /// The address peers dial this node at.
    pub fn advertised_addr(&self) -> String {
        self.inner
            .config
            .advertise
            .clone()
            .unwrap_or_else(|| self.inner.config.listen.to_string())
    }

    /// The transport, for fault injection in tests (`set_isolated`).
    pub fn transport(&self) -> &Arc<Transport> {
        &self.inner.transport
    }

    /// The openraft instance, for metrics and waits.
    pub fn raft(&self) -> &RaftNode {
        &self.inner.raft
    }

    /// Stops the node; its data directory stays as it is.
    pub async fn shutdown(&self) {
        let _ = self.inner.raft.shutdown().await;
        self.inner.transport.close().await;
        let tasks: Vec<_> = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            t.abort();
        }
    }

    // ----- membership -----

    /// Bootstraps a one-node cluster of this node and waits until it leads
    /// with the membership committed (openraft issue #1885).
    pub async fn initialize(&self) -> Result<(), StoreError> {
        let mut members = BTreeMap::new();
        members.insert(
            self.inner.id,
            BasicNode {
                addr: self.advertised_addr(),
            },
        );
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| StoreError::Membership(e.to_string()))?;
        self.inner
            .raft
            .wait(Some(self.inner.config.request_timeout))
            .current_leader(self.inner.id, "initialize")
            .await
            .map_err(|e| StoreError::Membership(e.to_string()))?;
        self.read_index(0).await.map(|_| ())
    }

    /// Adds a learner and waits until it has caught up with the log.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), StoreError> {
        self.on_leader(ClientRequest::AddLearner {
            id,
            addr: addr.to_string(),
            hops: 0,
        })
        .await
        .map(|_| ())
    }

    /// Makes `voters` the voting members (others stay learners).
    pub async fn change_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), StoreError> {
        self.on_leader(ClientRequest::ChangeVoters { voters, hops: 0 })
            .await
            .map(|_| ())
    }

    /// Promotes learner `id` to voter (decided on the leader's view of the
    /// membership, never on this node's possibly stale one).
    pub async fn promote(&self, id: NodeId) -> Result<(), StoreError> {
        self.on_leader(ClientRequest::Promote { id, hops: 0 })
            .await
            .map(|_| ())
    }

    /// Removes `id` from the cluster altogether.
    pub async fn remove_node(&self, id: NodeId) -> Result<(), StoreError> {
        self.on_leader(ClientRequest::RemoveNode { id, hops: 0 })
            .await
            .map(|_| ())
    }

    /// Hands leadership to `to` and waits until it leads.
    pub async fn transfer_leader(&self, to: NodeId) -> Result<(), StoreError> {
        self.on_leader(ClientRequest::TransferLeader { to, hops: 0 })
            .await?;
        self.inner
            .raft
            .wait(Some(self.inner.config.request_timeout))
            .current_leader(to, "transfer leader")
            .await
            .map_err(|e| StoreError::Membership(e.to_string()))?;
        Ok(())
    }

    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .voter_ids()
            .collect()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    pub fn status(&self) -> Result<NodeStatus, StoreError> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        Ok(NodeStatus {
            node_id: self.inner.id,
            term: m.current_term,
            leader: m.current_leader,
            state: format!("{:?}", m.state),
            last_log_index: m.last_log_index,
            commit_index: m.cluster_committed.as_ref().map(|l| l.index()),
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            revision: self.revisions()?.revision,
        })
    }

    fn revisions(&self) -> Result<Revisions, StoreError> {
        Revisions::load(
            self.inner.db.as_ref(),
            &Cfs::of(&self.inner.db).map_err(fatal)?,
        )
        .map_err(fatal)
    }

    // ----- writes -----

    /// Proposes `command` and returns what applying it produced.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        let started = std::time::Instant::now();
        let result = self.propose_hops(command, 0).await;
        self.inner
            .metrics
            .proposal_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        match result? {
            CommandResult::Rejected(r) => Err(StoreError::Rejected(r)),
            other => Ok(other),
        }
    }

    async fn propose_hops(&self, command: Command, hops: u8) -> Result<CommandResult, StoreError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            let leader = self.leader_if_known();
            if leader == Some(self.inner.id) {
                let (reply, written) = oneshot::channel();
                let proposal = Proposal {
                    command: command.clone(),
                    reply,
                };
                if self.inner.proposals.send(proposal).is_err() {
                    return Err(fatal("the node is shutting down"));
                }
                // A leader cut off from its quorum never commits: give up at
                // the deadline without knowing whether it ever will.
                match tokio::time::timeout_at(deadline, written).await {
                    Err(_) => {
                        return Err(StoreError::Unknown(
                            "not committed before the deadline".into(),
                        ))
                    }
                    Ok(Err(_)) => return Err(fatal("the node is shutting down")),
                    // Refused before it was appended: safe to retry.
                    Ok(Ok(Err(StoreError::NoLeader(_)))) => {}
                    Ok(Ok(result)) => return result,
                }
            } else if let Some((leader, addr)) =
                leader.and_then(|l| self.node_addr(l).map(|a| (l, a)))
            {
                if hops < MAX_HOPS {
                    let request = ClientRequest::Write {
                        command: command.clone(),
                        hops: hops + 1,
                    };
                    match self.forward(leader, &addr, request).await {
                        Ok(ClientReply::Command(result)) => return Ok(result),
                        Ok(ClientReply::Error(StoreError::NoLeader(_))) => {}
                        Ok(ClientReply::Error(e)) => return Err(e),
                        Ok(other) => return Err(fatal(format!("unexpected reply {other:?}"))),
                        Err(e) if e.not_sent() => {}
                        Err(e) => return Err(StoreError::Unknown(e.to_string())),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoLeader(self.inner.config.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The leader this node knows of, if it is still reachable in principle.
    fn leader_if_known(&self) -> Option<NodeId> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            Some(l) if l == self.inner.id && m.state != ServerState::Leader => None,
            other => other,
        }
    }

    fn node_addr(&self, id: NodeId) -> Option<String> {
        self.inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Sends `request` to the leader `to`. Gives up as soon as this node
    /// learns of another leader: a leader killed mid-request never answers,
    /// and waiting for the connection to time out would only delay the
    /// retry on its successor.
    async fn forward(
        &self,
        to: NodeId,
        addr: &str,
        request: ClientRequest,
    ) -> Result<ClientReply, TransportError> {
        let call =
            self.inner
                .transport
                .call_client(addr, to, request, self.inner.config.request_timeout);
        let mut metrics = self.inner.raft.metrics();
        let leader_changed = async move {
            loop {
                let leader = metrics.borrow_watched().current_leader;
                if leader.is_some_and(|l| l != to) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    // The node is shutting down; let the call decide.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            reply = call => reply,
            _ = leader_changed => Err(TransportError::Remote(format!(
                "leader changed from node {to} during the request"
            ))),
        }
    }

    /// Runs a leader-only request here if this node leads, else on the
    /// leader, retrying until the deadline.
    async fn on_leader(&self, request: ClientRequest) -> Result<ClientReply, StoreError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        loop {
            let leader = self.leader_if_known();
            if leader == Some(self.inner.id) {
                match tokio::time::timeout_at(deadline, self.serve_leader_request(request.clone()))
                    .await
                {
                    Ok(Err(StoreError::NoLeader(_) | StoreError::MembershipChanging(_))) => {}
                    Ok(other) => return other,
                    Err(_) => return Err(StoreError::NoLeader(self.inner.config.request_timeout)),
                }
            } else if let Some((leader, addr)) =
                leader.and_then(|l| self.node_addr(l).map(|a| (l, a)))
            {
                match self
                    .forward(leader, &addr, bump_hops(request.clone()))
                    .await
                {
                    Ok(ClientReply::Error(
                        StoreError::NoLeader(_) | StoreError::MembershipChanging(_),
                    )) => {}
                    Ok(ClientReply::Error(e)) => return Err(e),
                    Ok(reply) => return Ok(reply),
                    // Every request routed here reads or sets a target state
                    // (writes go through `propose_hops`): asking again is harmless.
                    Err(e) => tracing::debug!(error = %e, "leader request failed; retrying"),
                }
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NoLeader(self.inner.config.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Leader-only requests, run on this node. `NoLeader` means "not the
    /// leader after all": the caller retries.
    async fn serve_leader_request(
        &self,
        request: ClientRequest,
    ) -> Result<ClientReply, StoreError> {
        let raft = &self.inner.raft;
        let membership_err = |e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>| match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
                StoreError::NoLeader(Duration::ZERO)
            }
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(p),
            )) => StoreError::MembershipChanging(p.to_string()),
            e => StoreError::Membership(e.to_string()),
        };
        match request {
            ClientRequest::ReadIndex { .. } => {
                self.leader_read_index().await.map(ClientReply::ReadIndex)
            }
            ClientRequest::KeepAlive { id, .. } => {
                self.leader_read_index().await?;
                match self.inner.clock.keep_alive(id, Instant::now()) {
                    KeepAlive::Renewed(ttl) => Ok(ClientReply::KeptAlive {
                        ttl_ms: ttl.as_millis() as u64,
                    }),
                    KeepAlive::NotFound => Err(StoreError::LeaseNotFound(id)),
                    // Leading, but the lease clock is still loading.
                    KeepAlive::NotLeader => Err(StoreError::NoLeader(Duration::ZERO)),
                }
            }
            ClientRequest::AddLearner { id, addr, .. } => raft
                .add_learner(id, BasicNode { addr }, true)
                .await
                .map(|_| ClientReply::Done)
                .map_err(membership_err),
            ClientRequest::ChangeVoters { voters, .. } => raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), true)
                .await
                .map(|_| ClientReply::Done)
                .map_err(membership_err),
            ClientRequest::Promote { id, .. } => raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
                .await
                .map(|_| ClientReply::Done)
                .map_err(membership_err),
            ClientRequest::RemoveNode { id, .. } => {
                // A voter must first become a learner; then it can leave.
                // Each step is skipped once done, so a retried request is harmless.
                let voters = self.voters();
                if voters.contains(&id) {
                    let rest = voters.into_iter().filter(|v| *v != id).collect();
                    raft.change_membership(ChangeMembers::ReplaceAllVoters(rest), true)
                        .await
                        .map_err(membership_err)?;
                }
                let is_member = raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .is_some();
                if is_member {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(membership_err)?;
                }
                Ok(ClientReply::Done)
            }
            ClientRequest::TransferLeader { to, .. } => {
                raft.trigger().transfer_leader(to).await.map_err(fatal)?;
                Ok(ClientReply::Done)
            }
            other => Err(StoreError::InvalidArgument(format!(
                "not a leader request: {other:?}"
            ))),
        }
    }

    /// Confirms leadership with a quorum round (read-index) and returns the
    /// log index every read started now must see.
    async fn leader_read_index(&self) -> Result<u64, StoreError> {
        match self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_)))
            | Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                Err(StoreError::NoLeader(Duration::ZERO))
            }
            Err(e) => Err(fatal(e)),
        }
    }

    /// Waits until this node has applied everything a linearizable read
    /// started now must see. `hops` counts forwards already made.
    async fn read_index(&self, hops: u8) -> Result<u64, StoreError> {
        let index = match self.on_leader(ClientRequest::ReadIndex { hops }).await? {
            ClientReply::ReadIndex(index) => index,
            other => return Err(fatal(format!("unexpected reply {other:?}"))),
        };
        self.wait_applied(index).await
    }

    async fn wait_applied(&self, index: u64) -> Result<u64, StoreError> {
        self.inner
            .raft
            .wait(Some(self.inner.config.request_timeout))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map_err(|_| StoreError::NoLeader(self.inner.config.request_timeout))?;
        Ok(index)
    }

    // ----- the KV API -----

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, StoreError> {
        Ok(self
            .txn(Txn::new().and_then([TxnOp::put(key, value)]))
            .await?
            .revision)
    }

    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Result<u64, StoreError> {
        let result = self
            .txn(Txn::new().and_then([TxnOp::put_with_lease(key, value, lease)]))
            .await;
        match result {
            Err(StoreError::Rejected(crate::types::Rejection::LeaseNotFound(id))) => {
                Err(StoreError::LeaseNotFound(id))
            }
            other => Ok(other?.revision),
        }
    }

    /// Deletes the keys of `range`; returns the deleted keys and the revision.
    pub async fn delete(&self, range: KeyRange) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let result = self
            .txn(Txn::new().and_then([TxnOp::delete(range)]))
            .await?;
        let deleted = match result.results.into_iter().next() {
            Some(OpResult::Delete { deleted }) => deleted,
            _ => Vec::new(),
        };
        Ok((deleted, result.revision))
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        match self.propose(Command::Txn(txn)).await? {
            CommandResult::Txn(result) => Ok(result),
            other => Err(fatal(format!("unexpected result {other:?}"))),
        }
    }

    /// A linearizable read of one key.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, StoreError> {
        Ok(self
            .range(KeyRange::Key(key.into()), 0)
            .await?
            .kvs
            .into_iter()
            .next())
    }

    /// A linearizable read: sees every write acknowledged before it began.
    pub async fn range(&self, range: KeyRange, limit: u64) -> Result<RangeResult, StoreError> {
        self.read_index(0).await?;
        self.range_stale(range, limit)
    }

    /// A read of this node's state as it is, which may lag the cluster.
    pub fn range_stale(&self, range: KeyRange, limit: u64) -> Result<RangeResult, StoreError> {
        let db = &self.inner.db;
        let cfs = Cfs::of(db).map_err(fatal)?;
        let view = db.snapshot();
        kv_state::range(&view, &cfs, &range, limit).map_err(fatal)
    }

    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let ttl_ms = ttl.as_millis() as u64;
        match self.propose(Command::LeaseGrant { ttl_ms }).await? {
            CommandResult::LeaseGranted { id, .. } => Ok(id),
            other => Err(fatal(format!("unexpected result {other:?}"))),
        }
    }

    /// Restarts the lease's TTL; returns the TTL.
    pub async fn lease_keep_alive(&self, id: LeaseId) -> Result<Duration, StoreError> {
        match self
            .on_leader(ClientRequest::KeepAlive { id, hops: 0 })
            .await?
        {
            ClientReply::KeptAlive { ttl_ms } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(fatal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Revokes the lease, deleting its keys. Returns the revision after.
    pub async fn lease_revoke(&self, id: LeaseId) -> Result<u64, StoreError> {
        match self.propose(Command::LeaseRevoke { id }).await? {
            CommandResult::LeaseRevoked {
                found: true,
                revision,
            } => Ok(revision),
            CommandResult::LeaseRevoked { found: false, .. } => Err(StoreError::LeaseNotFound(id)),
            other => Err(fatal(format!("unexpected result {other:?}"))),
        }
    }

    /// Forgets history before `revision`.
    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        self.propose(Command::Compact { revision })
            .await
            .map(|_| ())
    }

    /// Watches `range` from `from_revision` (0 = from now) on this node.
    pub fn watch(&self, range: KeyRange, from_revision: u64) -> Result<Watcher, StoreError> {
        Watcher::new(
            self.inner.db.clone(),
            self.inner.watch_tx.subscribe(),
            range,
            from_revision,
        )
    }

    // ----- snapshots, backup and restore -----

    /// Builds a fresh snapshot now and copies it to `dest`.
    pub async fn export_snapshot(&self, dest: &Path) -> Result<u64, StoreError> {
        self.inner.raft.trigger().snapshot().await.map_err(fatal)?;
        let applied = self.inner.raft.metrics().borrow_watched().last_applied;
        let index = applied.map(|l| l.index());
        self.inner
            .raft
            .wait(Some(Duration::from_secs(120)))
            .metrics(
                |m| m.snapshot.as_ref().map(|s| s.index()) >= index,
                "snapshot built",
            )
            .await
            .map_err(fatal)?;
        let snapshot = self
            .inner
            .raft
            .get_snapshot()
            .await
            .map_err(fatal)?
            .ok_or_else(|| fatal("no snapshot after building one"))?;
        std::fs::copy(&snapshot.snapshot.path, dest)
            .map_err(|e| fatal(format!("{}: {e}", dest.display())))
    }

    /// Loads an exported snapshot into this node, which must be a fresh,
    /// uninitialized node; then bootstraps a one-node cluster holding that
    /// state. Nodes added afterwards receive it by snapshot.
    pub async fn import_and_initialize(&self, file: &Path) -> Result<(), StoreError> {
        let initialized = self.inner.raft.is_initialized().await.map_err(fatal)?;
        if initialized || self.revisions()?.revision != 0 {
            return Err(StoreError::InvalidArgument(
                "import needs a fresh node that has never been initialized".into(),
            ));
        }
        let meta =
            snapshot::read_meta(file).map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        // Load the rows, but keep this cluster's own log position and membership.
        let mut batch = rocksdb::WriteBatch::default();
        snapshot::load_into_batch(&self.inner.db, file, &mut batch)
            .map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.inner.db.write_opt(batch, &opts).map_err(fatal)?;
        tracing::info!(file = %file.display(), source_log = ?meta.last_log_id, "snapshot imported");
        self.initialize().await?;
        // Snapshot and purge now, so that joining nodes get the imported
        // rows by snapshot rather than replaying a log that lacks them.
        let index = self.read_index(0).await?;
        self.inner.raft.trigger().snapshot().await.map_err(fatal)?;
        self.inner
            .raft
            .wait(Some(Duration::from_secs(120)))
            .metrics(
                |m| m.snapshot.as_ref().map(|s| s.index()) >= Some(index),
                "import snapshot",
            )
            .await
            .map_err(fatal)?;
        self.inner
            .raft
            .trigger()
            .purge_log(index)
            .await
            .map_err(fatal)?;
        Ok(())
    }

    // ----- background duties -----

    /// The leader's lease clock and history compaction; see `lease_keeper`.
    async fn lease_keeper(self, mut signals: mpsc::UnboundedReceiver<LeaseSignal>) {
        let clock = self.inner.clock.clone();
        let mut metrics = self.inner.raft.metrics();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut last_compact_check = Instant::now();
        loop {
            tokio::select! {
                signal = signals.recv() => match signal {
                    Some(LeaseSignal::Changed(LeaseChange::Granted(lease))) => clock.granted(&lease, Instant::now()),
                    Some(LeaseSignal::Changed(LeaseChange::Removed(id))) => clock.removed(id),
                    Some(LeaseSignal::Reset) => {
                        // A snapshot replaced every lease: reload if leading.
                        clock.stop_leading();
                        self.sync_lease_clock().await;
                    }
                    None => return,
                },
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    metrics.borrow_and_update();
                    self.sync_lease_clock().await;
                }
                _ = tick.tick() => {
                    self.sync_lease_clock().await;
                    for id in clock.take_expired(Instant::now()) {
                        tracing::info!(lease = id, "lease expired; proposing its removal");
                        let store = self.clone();
                        tokio::spawn(async move {
                            let expire = store.inner.raft.client_write(Command::LeaseExpire { id }).await;
                            if let Err(e) = expire {
                                tracing::debug!(lease = id, error = %e, "lease expiry not proposed; will retry");
                                store.inner.clock.expiry_failed(id);
                            }
                        });
                    }
                    if clock.leading_term().is_some() && last_compact_check.elapsed() > Duration::from_secs(1) {
                        last_compact_check = Instant::now();
                        self.compact_history_if_due().await;
                    }
                }
            }
        }
    }

    /// Starts or stops the lease clock as this node gains or loses leadership.
    async fn sync_lease_clock(&self) {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let leading = m.state == ServerState::Leader && m.current_leader == Some(self.inner.id);
        match (leading, self.inner.clock.leading_term()) {
            (true, Some(term)) if term == m.current_term => {}
            (true, _) => {
                self.inner.clock.stop_leading();
                self.take_over_leases(m.current_term).await;
            }
            (false, Some(_)) => self.inner.clock.stop_leading(),
            (false, None) => {}
        }
    }

    /// Becomes the lease clock for `term`: once the leader has applied every
    /// committed entry, every lease restarts its full TTL.
    async fn take_over_leases(&self, term: u64) {
        let confirmed = match self.leader_read_index().await {
            Ok(index) => self.wait_applied(index).await,
            Err(e) => Err(e),
        };
        if let Err(e) = confirmed {
            tracing::debug!(error = %e, "lease takeover deferred: leadership not confirmed");
            return;
        }
        let leases = Cfs::of(&self.inner.db)
            .and_then(|cfs| kv_state::list_leases(self.inner.db.as_ref(), &cfs));
        match leases {
            Ok(leases) => {
                tracing::info!(term, leases = leases.len(), "took over lease clock");
                self.inner.clock.start_leading(term, leases, Instant::now());
            }
            Err(e) => tracing::error!(error = %e, "could not load leases"),
        }
    }

    async fn compact_history_if_due(&self) {
        let Ok(revs) = self.revisions() else { return };
        let retention = self.inner.config.history_retention;
        // Compact in steps of a tenth of the retention, not on every write.
        if revs.revision.saturating_sub(revs.compact_revision) > retention + retention / 10 {
            let target = revs.revision - retention;
            if let Err(e) = self
                .inner
                .raft
                .client_write(Command::Compact { revision: target })
                .await
            {
                tracing::debug!(error = %e, "history compaction not proposed");
            }
        }
    }

    /// Mirrors openraft's metrics into Prometheus gauges.
    async fn update_gauges(self) {
        let mut rx = self.inner.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                let g = &self.inner.metrics;
                g.term.set(m.current_term as i64);
                g.leader_id.set(m.current_leader.unwrap_or(0) as i64);
                g.commit_index
                    .set(m.cluster_committed.as_ref().map_or(0, |l| l.index()) as i64);
                g.applied_index
                    .set(m.last_applied.as_ref().map_or(0, |l| l.index()) as i64);
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How often RocksDB's memory figures are read into the gauges.
const MEMORY_GAUGES_EVERY: Duration = Duration::from_secs(5);

impl RaftStore {
    /// Mirrors RocksDB's memory use into `raft_rocksdb_memory_bytes`.
    async fn update_memory_gauges(self) {
        let mut tick = tokio::time::interval(MEMORY_GAUGES_EVERY);
        loop {
            tick.tick().await;
            let db = &self.inner.db;
            // Summed over every column family; the block cache is one for all.
            let per_cf = |property: &str| -> u64 {
                ALL_CFS
                    .iter()
                    .filter_map(|name| db.cf_handle(name))
                    .filter_map(|cf| db.property_int_value_cf(cf, property).ok().flatten())
                    .sum()
            };
            let block_cache = u64::try_from(self.inner.block_cache.get_usage()).unwrap_or(u64::MAX);
            let gauge = &self.inner.metrics.rocksdb_memory_bytes;
            for (kind, bytes) in [
                ("memtables", per_cf("rocksdb.cur-size-all-mem-tables")),
                ("block_cache", block_cache),
                (
                    "table_readers",
                    per_cf("rocksdb.estimate-table-readers-mem"),
                ),
            ] {
                gauge
                    .with_label_values(&[kind])
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
    }
}

/// Proposes what [`RaftStore::propose_hops`] queues. The transactions
/// queued by the time it runs share one log entry: concurrent writers then
/// cost one entry to append, replicate and apply, not one each. It does not
/// wait for an entry to commit before proposing the next, so a lone writer
/// waits for nobody, and openraft still appends and replicates the entries
/// proposed meanwhile together (group commit).
async fn run_proposer(raft: RaftNode, mut queue: mpsc::UnboundedReceiver<Proposal>) {
    let mut queued = Vec::new();
    while queue.recv_many(&mut queued, MAX_TXNS_PER_ENTRY).await > 0 {
        let mut txns = Vec::new();
        let mut txn_replies = Vec::new();
        for proposal in queued.drain(..) {
            match proposal.command {
                Command::Txn(txn) => {
                    txns.push(txn);
                    txn_replies.push(proposal.reply);
                }
                // The rare others (lease grant and revoke outside a
                // transaction, compaction) keep an entry each.
                command => {
                    let raft = raft.clone();
                    tokio::spawn(async move {
                        // A waiter past its deadline is gone: nobody else
                        // wants the result.
                        let _ = proposal.reply.send(write_entry(&raft, command).await);
                    });
                }
            }
        }
        if !txns.is_empty() {
            tokio::spawn(write_txns(raft.clone(), txns, txn_replies));
        }
    }
}

/// Writes `txns` as one entry and hands each waiter its own result.
async fn write_txns(
    raft: RaftNode,
    mut txns: Vec<Txn>,
    replies: Vec<oneshot::Sender<Result<CommandResult, StoreError>>>,
) {
    let results = if txns.len() == 1 {
        vec![write_entry(&raft, Command::Txn(txns.remove(0))).await]
    } else {
        match write_entry(&raft, Command::TxnBatch(txns)).await {
            Ok(CommandResult::TxnBatch(results)) if results.len() == replies.len() => {
                results.into_iter().map(Ok).collect()
            }
            Ok(other) => vec![
                Err(fatal(format!(
                    "unexpected result for {} transactions: {other:?}",
                    replies.len()
                )));
                replies.len()
            ],
            Err(e) => vec![Err(e); replies.len()],
        }
    };
    for (reply, result) in replies.into_iter().zip(results) {
        // As above: a waiter that gave up wants nothing.
        let _ = reply.send(result);
    }
}

/// Writes one entry; `NoLeader` if it was refused before it was appended.
async fn write_entry(raft: &RaftNode, command: Command) -> Result<CommandResult, StoreError> {
    match raft.client_write(command).await {
        Ok(resp) => Ok(resp.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
            Err(StoreError::NoLeader(Duration::ZERO))
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
            Err(StoreError::Unknown(format!("log entry discarded: {f}")))
        }
        Err(e) => Err(fatal(e)),
    }
}

fn bump_hops(request: ClientRequest) -> ClientRequest {
    match request {
        ClientRequest::Write { command, hops } => ClientRequest::Write {
            command,
            hops: hops + 1,
        },
        ClientRequest::ReadIndex { hops } => ClientRequest::ReadIndex { hops: hops + 1 },
        ClientRequest::KeepAlive { id, hops } => ClientRequest::KeepAlive { id, hops: hops + 1 },
        ClientRequest::AddLearner { id, addr, hops } => ClientRequest::AddLearner {
            id,
            addr,
            hops: hops + 1,
        },
        ClientRequest::ChangeVoters { voters, hops } => ClientRequest::ChangeVoters {
            voters,
            hops: hops + 1,
        },
        ClientRequest::TransferLeader { to, hops } => {
            ClientRequest::TransferLeader { to, hops: hops + 1 }
        }
        ClientRequest::Promote { id, hops } => ClientRequest::Promote { id, hops: hops + 1 },
        ClientRequest::RemoveNode { id, hops } => ClientRequest::RemoveNode { id, hops: hops + 1 },
        other => other,
    }
}

fn hops_of(request: &ClientRequest) -> u8 {
    match request {
        ClientRequest::Write { hops, .. }
        | ClientRequest::ReadIndex { hops }
        | ClientRequest::KeepAlive { hops, .. }
        | ClientRequest::AddLearner { hops, .. }
        | ClientRequest::ChangeVoters { hops, .. }
        | ClientRequest::TransferLeader { hops, .. }
        | ClientRequest::Promote { hops, .. }
        | ClientRequest::RemoveNode { hops, .. } => *hops,
        ClientRequest::Range { .. } | ClientRequest::Status => 0,
    }
}

impl RaftStore {
    /// A client request that arrived over the transport.
    async fn serve_client(&self, request: ClientRequest) -> ClientReply {
        let hops = hops_of(&request);
        let result = match request {
            ClientRequest::Write { command, hops } => self
                .propose_hops(command, hops)
                .await
                .map(ClientReply::Command),
            ClientRequest::Range {
                range,
                limit,
                linearizable,
            } => {
                let read = if linearizable {
                    self.read_index(0).await.map(|_| ())
                } else {
                    Ok(())
                };
                read.and_then(|_| self.range_stale(range, limit))
                    .map(ClientReply::Range)
            }
            ClientRequest::Status => self.status().map(ClientReply::Status),
            leader_only if self.leader_if_known() == Some(self.inner.id) => {
                self.serve_leader_request(leader_only).await
            }
            // Not the leader: pass it on, unless it has travelled enough.
            leader_only if hops < MAX_HOPS => self.on_leader(leader_only).await,
            _ => Err(StoreError::NoLeader(Duration::ZERO)),
        };
        result.unwrap_or_else(ClientReply::Error)
    }
}

impl Inbound for RaftStore {
    fn handle(&self, request: PeerRequest) -> BoxFuture<'_, PeerReply> {
        async move {
            let raft = &self.inner.raft;
            match request {
                PeerRequest::Append(rpc) => match raft.append_entries(rpc).await {
                    Ok(r) => PeerReply::Append(r),
                    Err(e) => PeerReply::Failed(e.to_string()),
                },
                PeerRequest::Vote(rpc) => match raft.vote(rpc).await {
                    Ok(r) => PeerReply::Vote(r),
                    Err(e) => PeerReply::Failed(e.to_string()),
                },
                PeerRequest::PreVote(rpc) => match raft.pre_vote(rpc).await {
                    Ok(r) => PeerReply::Vote(r),
                    Err(e) => PeerReply::Failed(e.to_string()),
                },
                PeerRequest::TransferLeader(req) => match raft.handle_transfer_leader(req).await {
                    Ok(r) => PeerReply::TransferLeader(r),
                    Err(e) => PeerReply::Failed(e.to_string()),
                },
                PeerRequest::Client(request) => PeerReply::Client(self.serve_client(request).await),
                // Concurrently: the writes among them share a log entry.
                PeerRequest::Clients(requests) => PeerReply::Clients(
                    futures::future::join_all(requests.into_iter().map(|r| self.serve_client(r)))
                        .await,
                ),
            }
        }
        .boxed()
    }

    fn install_snapshot(
        &self,
        vote: VoteOf<TypeConfig>,
        snapshot: StoreSnapshot,
    ) -> BoxFuture<'_, Result<SnapshotResponse<TypeConfig>, String>> {
        async move {
            self.inner
                .raft
                .install_full_snapshot(vote, snapshot)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn snapshot_dir(&self) -> PathBuf {
        self.inner.snapshot_dir.clone()
    }
}
