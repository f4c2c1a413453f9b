//! The etcd-KV-v3-shaped data model: keys, revisions, compares, transactions,
//! leases and the log commands that carry them through Raft.

use std::fmt;

use openraft::BasicNode;
use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotFile;

/// Identifies a node in the cluster.
pub type NodeId = u64;
/// Identifies a lease: unique for the life of the cluster, never reused.
/// The state machine gives the log index of the granting entry, or one more
/// than the last id it gave if that is larger (one entry can grant several
/// leases: a `TxnBatch` of transactions with `PutOnNewLease`), so every
/// replica gives the same id.
pub type LeaseId = u64;

openraft::declare_raft_types!(
    /// The openraft type configuration of this store.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = BasicNode,
);

/// A key and its value at some revision, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation; a deleted key has version 0.
    pub version: u64,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// A set of keys: one key, every key with a prefix, or `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    Key(Vec<u8>),
    Prefix(Vec<u8>),
    /// `start` inclusive, `end` exclusive.
    Between {
        start: Vec<u8>,
        end: Vec<u8>,
    },
}

impl KeyRange {
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        KeyRange::Key(key.into())
    }

    pub fn prefix(prefix: impl Into<Vec<u8>>) -> Self {
        KeyRange::Prefix(prefix.into())
    }

    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange::Between {
            start: start.into(),
            end: end.into(),
        }
    }

    /// The first key to seek to.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) => k,
            KeyRange::Between { start, .. } => start,
        }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => key == k.as_slice(),
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Between { start, end } => key >= start.as_slice() && key < end.as_slice(),
        }
    }

    /// The first key past the range, where a scan can stop (`None` if no
    /// key sorts after it).
    pub fn end(&self) -> Option<Vec<u8>> {
        match self {
            KeyRange::Key(k) => Some([k.as_slice(), &[0]].concat()),
            KeyRange::Prefix(p) => prefix_end(p),
            KeyRange::Between { end, .. } => Some(end.clone()),
        }
    }

    /// True once iteration in key order has passed every key of the range.
    pub fn is_past(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => key > k.as_slice(),
            KeyRange::Prefix(p) => key > p.as_slice() && !key.starts_with(p),
            KeyRange::Between { end, .. } => key >= end.as_slice(),
        }
    }
}

/// The first key after every key that starts with `prefix` (`None` if
/// no key does: the prefix is empty or all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

/// What a compare looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(Vec<u8>),
    /// 0 for an absent key.
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    /// The compare's key is a prefix: every key under it has a
    /// `mod_revision` that compares so (true when there is none). With
    /// `Less` than a read's revision + 1 it says "nothing under the prefix
    /// was written since that read", as etcd's compare with a range end.
    PrefixModRevision(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction, evaluated against the state before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn value(key: impl Into<Vec<u8>>, op: CompareOp, value: impl Into<Vec<u8>>) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Value(value.into()),
        }
    }

    pub fn version(key: impl Into<Vec<u8>>, op: CompareOp, version: u64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::Version(version),
        }
    }

    pub fn mod_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::ModRevision(revision),
        }
    }

    pub fn create_revision(key: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Compare {
            key: key.into(),
            op,
            target: CompareTarget::CreateRevision(revision),
        }
    }

    /// Every key starting with `prefix` has a mod_revision that compares
    /// so to `revision`; see [`CompareTarget::PrefixModRevision`].
    pub fn prefix_mod_revision(prefix: impl Into<Vec<u8>>, op: CompareOp, revision: u64) -> Self {
        Compare {
            key: prefix.into(),
            op,
            target: CompareTarget::PrefixModRevision(revision),
        }
    }

    /// The key exists (version > 0).
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Self::version(key, CompareOp::Greater, 0)
    }

    /// The key does not exist (version == 0).
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Self::version(key, CompareOp::Equal, 0)
    }

    /// Evaluates against the key's current state (`None` = absent).
    /// As in etcd, a value compare against an absent key is false. For a
    /// [`CompareTarget::PrefixModRevision`] this judges one key under the
    /// prefix; the compare holds if it holds for each.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ordering: Ordering = match (&self.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(v), kv) => kv.map_or(0, |kv| kv.version).cmp(v),
            (CompareTarget::CreateRevision(r), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(r),
            (CompareTarget::ModRevision(r) | CompareTarget::PrefixModRevision(r), kv) => {
                kv.map_or(0, |kv| kv.mod_revision).cmp(r)
            }
        };
        match self.op {
            CompareOp::Equal => ordering == Ordering::Equal,
            CompareOp::NotEqual => ordering != Ordering::Equal,
            CompareOp::Greater => ordering == Ordering::Greater,
            CompareOp::Less => ordering == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        range: KeyRange,
    },
    /// Reads see the state before the transaction's writes.
    Range {
        range: KeyRange,
        /// 0 = no limit.
        limit: u64,
    },
    /// Grants a lease of `ttl_ms` and puts the key on it: one write where
    /// `lease_grant` then `put_with_lease` take two. The result names the
    /// lease.
    PutOnNewLease {
        key: Vec<u8>,
        value: Vec<u8>,
        ttl_ms: u64,
    },
    /// Revokes a lease after the branch's other writes: the keys still on
    /// it (not put or deleted by the branch) are deleted in the
    /// transaction's revision. A lease that is gone already (it expired) is
    /// no error: the result says whether it was found.
    LeaseRevoke {
        id: LeaseId,
    },
}

impl TxnOp {
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    pub fn put_with_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: LeaseId,
    ) -> Self {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: Some(lease),
        }
    }

    pub fn put_on_new_lease(
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        ttl: std::time::Duration,
    ) -> Self {
        TxnOp::PutOnNewLease {
            key: key.into(),
            value: value.into(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    pub fn delete(range: KeyRange) -> Self {
        TxnOp::Delete { range }
    }

    pub fn lease_revoke(id: LeaseId) -> Self {
        TxnOp::LeaseRevoke { id }
    }

    pub fn get(key: impl Into<Vec<u8>>) -> Self {
        TxnOp::Range {
            range: KeyRange::Key(key.into()),
            limit: 0,
        }
    }
}

/// An atomic compare-then-act, as etcd's `Txn`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn when(mut self, compare: impl IntoIterator<Item = Compare>) -> Self {
        self.compare.extend(compare);
        self
    }

    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }

    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
}

/// What the Raft log carries. Every state change goes through one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Txn(Txn),
    LeaseGrant {
        ttl_ms: u64,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    /// Proposed only by the leader when its lease clock runs out.
    LeaseExpire {
        id: LeaseId,
    },
    /// Forget history older than `revision`.
    Compact {
        revision: u64,
    },
    /// Transactions from concurrent clients carried by one log entry, so
    /// they share its per-entry costs (log key, replication, apply call).
    /// Each is applied in order as if it had its own entry: its own
    /// revision, watch batch and result.
    TxnBatch(Vec<Txn>),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Txn(t) => write!(
                f,
                "txn({} compares, {}+{} ops)",
                t.compare.len(),
                t.success.len(),
                t.failure.len()
            ),
            Command::LeaseGrant { ttl_ms } => write!(f, "lease-grant({ttl_ms}ms)"),
            Command::LeaseRevoke { id } => write!(f, "lease-revoke({id})"),
            Command::LeaseExpire { id } => write!(f, "lease-expire({id})"),
            Command::Compact { revision } => write!(f, "compact({revision})"),
            Command::TxnBatch(txns) => write!(f, "txn-batch({})", txns.len()),
        }
    }
}

/// The result of one operation of the taken branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put {
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: Vec<KeyValue>,
    },
    Range(RangeResult),
    PutOnNewLease {
        prev: Option<KeyValue>,
        lease: LeaseId,
    },
    LeaseRevoke {
        found: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys matched than `limit` allowed.
    pub more: bool,
    /// The store revision the read saw.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// Store revision after the transaction.
    pub revision: u64,
    pub succeeded: bool,
    pub results: Vec<OpResult>,
}

/// A command rejected deterministically by the state machine: every replica
/// rejects it the same way and nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    #[error("duplicate key in one transaction branch: {0}")]
    DuplicateKey(String),
    #[error("revision {requested} is already compacted (compacted up to {compacted})")]
    AlreadyCompacted { requested: u64, compacted: u64 },
    #[error("cannot compact to future revision {requested} (current {current})")]
    FutureRevision { requested: u64, current: u64 },
    #[error("lease ttl must be at least 1 ms")]
    ZeroTtl,
    #[error("lease {0} is both written to and revoked in one transaction branch")]
    LeaseUsedAndRevoked(LeaseId),
}

/// What applying a [`Command`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    #[default]
    None,
    Txn(TxnResult),
    LeaseGranted {
        id: LeaseId,
        ttl_ms: u64,
    },
    LeaseRevoked {
        found: bool,
        revision: u64,
    },
    Compacted {
        revision: u64,
    },
    Rejected(Rejection),
    /// The results of a [`Command::TxnBatch`], in its order: each a `Txn`
    /// or a `Rejected`.
    TxnBatch(Vec<CommandResult>),
}

/// A lease as the state machine stores it. The deadline is not stored: it is
/// the leader's in-memory clock (see `lease_keeper`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: LeaseId,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, as a watcher sees it. For a delete, `kv.value` is empty and
/// `kv.mod_revision` is the revision of the deletion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// All changes of one revision that match a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchBatch {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// openraft's snapshot type, naming our on-disk snapshot file.
pub type StoreSnapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_ends_at_the_first_key_past_it() {
        assert_eq!(prefix_end(b"/t/a/"), Some(b"/t/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        for range in [
            KeyRange::key("k"),
            KeyRange::prefix("/t/a/"),
            KeyRange::prefix("a\u{7f}"),
            KeyRange::between("b", "d"),
        ] {
            let end = range.end().expect("an end");
            assert!(!range.contains(&end), "{range:?} holds its end");
            assert!(range.is_past(&end), "{range:?} not past its end");
        }
    }
}
