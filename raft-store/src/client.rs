//! Requests a node serves for clients: forwarded from other nodes (a
//! follower hands writes, read-index and keepalives to the leader) or sent
//! by tools over the same QUIC transport with [`RemoteClient`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::{Transport, TransportError};
use crate::tls::NodeIdentity;
use crate::types::{Command, CommandResult, KeyRange, LeaseId, NodeId, RangeResult, Rejection};

/// How many times a request may be passed on between nodes before the
/// caller backs off and retries: bounds forwarding loops during elections.
pub const MAX_HOPS: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientRequest {
    Write {
        command: Command,
        hops: u8,
    },
    /// Confirm leadership and return the log index a linearizable read must wait for.
    ReadIndex {
        hops: u8,
    },
    KeepAlive {
        id: LeaseId,
        hops: u8,
    },
    /// A read served by the receiving node.
    Range {
        range: KeyRange,
        limit: u64,
        linearizable: bool,
    },
    AddLearner {
        id: NodeId,
        addr: String,
        hops: u8,
    },
    ChangeVoters {
        voters: BTreeSet<NodeId>,
        hops: u8,
    },
    TransferLeader {
        to: NodeId,
        hops: u8,
    },
    Promote {
        id: NodeId,
        hops: u8,
    },
    RemoveNode {
        id: NodeId,
        hops: u8,
    },
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ClientReply {
    Command(CommandResult),
    ReadIndex(u64),
    /// The lease's ttl, now restarted.
    KeptAlive {
        ttl_ms: u64,
    },
    Range(RangeResult),
    Done,
    Status(NodeStatus),
    Error(StoreError),
}

/// A node's view of the cluster, for `pbxctl cluster status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub state: String,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub revision: u64,
}

/// Why a store operation failed. Serializable: it crosses the wire when a
/// forwarded request fails on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum StoreError {
    /// No leader could be reached before the deadline: an election is in
    /// progress or this node is cut off. The request was not applied.
    #[error("no leader reachable within {0:?}")]
    NoLeader(Duration),
    /// The request may or may not have been applied (the leader changed or
    /// the connection broke after it was sent).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("rejected: {0}")]
    Rejected(Rejection),
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error(
        "required revision {requested} has been compacted (history starts at {compact_revision})"
    )]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("membership change failed: {0}")]
    Membership(String),
    /// Another membership change is still being committed; retried until
    /// the request deadline.
    #[error("a membership change is in progress: {0}")]
    MembershipChanging(String),
    #[error("store failure: {0}")]
    Fatal(String),
}

/// Talks to a cluster from outside it (tools, benchmarks, the 3-process
/// tests). Any node serves any request; followers forward to the leader.
pub struct RemoteClient {
    transport: Arc<Transport>,
    timeout: Duration,
}

impl RemoteClient {
    pub fn new(identity: &NodeIdentity, timeout: Duration) -> Result<Self, TransportError> {
        Ok(RemoteClient {
            transport: Transport::client(identity)?,
            timeout,
        })
    }

    /// Sends `request` to node `id` at `addr`.
    pub async fn call(
        &self,
        id: NodeId,
        addr: &str,
        request: ClientRequest,
    ) -> Result<ClientReply, TransportError> {
        self.transport
            .call_client(addr, id, request, self.timeout)
            .await
    }
}
