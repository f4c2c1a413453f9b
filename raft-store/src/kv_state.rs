//! The key-value state machine proper: how each [`Command`] changes the
//! keys, leases, revision and history in RocksDB. Deterministic: every
//! replica applying the same command at the same log index reaches the same
//! state and the same result.

use std::collections::HashSet;
use std::io;

use rocksdb::{ColumnFamily, DBAccess, Direction, IteratorMode, ReadOptions, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::data_dir::{u64_key, CF_HISTORY, CF_KV, CF_LEASES, CF_LEASE_KEYS, CF_SM_META};
use crate::pending::Pending;
use crate::types::{
    prefix_end, Command, CommandResult, Compare, CompareTarget, Event, EventKind, KeyRange,
    KeyValue, Lease, LeaseId, OpResult, RangeResult, Rejection, Txn, TxnOp, TxnResult, WatchBatch,
};

pub const REVISION_KEY: &[u8] = b"revision";
pub const COMPACT_REVISION_KEY: &[u8] = b"compact_revision";
/// The last lease id given (absent in stores from before leases were
/// granted inside transactions: every id until then was its entry's index).
pub const LEASE_ID_KEY: &[u8] = b"lease_id";

/// A stored value: a [`KeyValue`] without its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredValue {
    value: Vec<u8>,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: Option<LeaseId>,
}

impl StoredValue {
    fn into_kv(self, key: Vec<u8>) -> KeyValue {
        KeyValue {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

/// How a lease changed, for the leader's lease clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Granted(Lease),
    Removed(LeaseId),
}

/// The outcome of applying one command: the result for the client, the
/// writes (already in the caller's pending writes), and what to tell watchers.
#[derive(Debug)]
pub struct Applied {
    pub result: CommandResult,
    /// One batch per revision the command made, in revision order.
    pub events: Vec<WatchBatch>,
    /// For the leader's lease clock, in the order they happened.
    pub lease_changes: Vec<LeaseChange>,
}

/// How many column families the state machine has.
pub const CF_COUNT: usize = 5;

/// The column families of the state machine.
#[derive(Clone, Copy)]
pub struct Cfs<'a> {
    kv: &'a ColumnFamily,
    leases: &'a ColumnFamily,
    lease_keys: &'a ColumnFamily,
    history: &'a ColumnFamily,
    meta: &'a ColumnFamily,
}

impl<'a> Cfs<'a> {
    pub fn of(db: &'a DB) -> io::Result<Self> {
        let cf = |name: &str| {
            db.cf_handle(name)
                .ok_or_else(|| io::Error::other(format!("column family {name} missing")))
        };
        Ok(Cfs {
            kv: cf(CF_KV)?,
            leases: cf(CF_LEASES)?,
            lease_keys: cf(CF_LEASE_KEYS)?,
            history: cf(CF_HISTORY)?,
            meta: cf(CF_SM_META)?,
        })
    }

    pub fn families(&self) -> [&'a ColumnFamily; CF_COUNT] {
        [
            self.kv,
            self.leases,
            self.lease_keys,
            self.history,
            self.meta,
        ]
    }

    pub fn meta(&self) -> &'a ColumnFamily {
        self.meta
    }
}

/// A key and value as RocksDB iteration yields them.
pub type Row = (Box<[u8]>, Box<[u8]>);
/// Rows in key order from some start key.
pub type Rows<'a> = Box<dyn Iterator<Item = io::Result<Row>> + 'a>;

/// Reads from the live database or from a point-in-time snapshot of it.
pub trait KvRead {
    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Rows from `start` on, before `end` if given. The bound lets RocksDB
    /// stop at it instead of reading on to the next live key, past any
    /// deleted ones.
    fn scan(&self, cf: &ColumnFamily, start: &[u8], end: Option<&[u8]>) -> Rows<'_>;

    fn scan_from(&self, cf: &ColumnFamily, start: &[u8]) -> Rows<'_> {
        self.scan(cf, start, None)
    }
}

fn bounded(mut options: ReadOptions, end: Option<&[u8]>) -> ReadOptions {
    if let Some(end) = end {
        options.set_iterate_upper_bound(end);
    }
    options
}

impl<D: DBAccess> KvRead for rocksdb::SnapshotWithThreadMode<'_, D> {
    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get_cf(cf, key).map_err(io::Error::other)
    }
    fn scan(&self, cf: &ColumnFamily, start: &[u8], end: Option<&[u8]>) -> Rows<'_> {
        Box::new(
            self.iterator_cf_opt(
                cf,
                bounded(ReadOptions::default(), end),
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|r| r.map_err(io::Error::other)),
        )
    }
}

/// A snapshot read once, whole, to build a Raft snapshot: its blocks
/// bypass the block cache, where they would only push out the hot ones.
pub struct ColdScan<'a, T>(pub &'a T);

fn cold() -> ReadOptions {
    let mut options = ReadOptions::default();
    options.fill_cache(false);
    options
}

impl<D: DBAccess> KvRead for ColdScan<'_, rocksdb::SnapshotWithThreadMode<'_, D>> {
    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.0.get_cf_opt(cf, key, cold()).map_err(io::Error::other)
    }
    fn scan(&self, cf: &ColumnFamily, start: &[u8], end: Option<&[u8]>) -> Rows<'_> {
        Box::new(
            self.0
                .iterator_cf_opt(
                    cf,
                    bounded(cold(), end),
                    IteratorMode::From(start, Direction::Forward),
                )
                .map(|r| r.map_err(io::Error::other)),
        )
    }
}

impl KvRead for DB {
    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        self.get_cf(cf, key).map_err(io::Error::other)
    }
    fn scan(&self, cf: &ColumnFamily, start: &[u8], end: Option<&[u8]>) -> Rows<'_> {
        Box::new(
            self.iterator_cf_opt(
                cf,
                bounded(ReadOptions::default(), end),
                IteratorMode::From(start, Direction::Forward),
            )
            .map(|r| r.map_err(io::Error::other)),
        )
    }
}

fn read_u64(reader: &impl KvRead, cf: &ColumnFamily, key: &[u8]) -> io::Result<u64> {
    match reader.get(cf, key)? {
        None => Ok(0),
        Some(bytes) => Ok(codec::decode(&bytes)?),
    }
}

pub fn get_kv(reader: &impl KvRead, cfs: &Cfs<'_>, key: &[u8]) -> io::Result<Option<KeyValue>> {
    match reader.get(cfs.kv, key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(
            codec::decode::<StoredValue>(&bytes)?.into_kv(key.to_vec()),
        )),
    }
}

/// Keys of `range` in order, at most `limit` (0 = all).
pub fn range_kvs(
    reader: &impl KvRead,
    cfs: &Cfs<'_>,
    range: &KeyRange,
    limit: u64,
) -> io::Result<(Vec<KeyValue>, bool)> {
    if let KeyRange::Key(key) = range {
        return Ok((get_kv(reader, cfs, key)?.into_iter().collect(), false));
    }
    let mut kvs = Vec::new();
    for item in reader.scan(cfs.kv, range.start(), range.end().as_deref()) {
        let (key, value) = item?;
        if range.is_past(&key) {
            break;
        }
        if !range.contains(&key) {
            continue;
        }
        if limit != 0 && kvs.len() as u64 == limit {
            return Ok((kvs, true));
        }
        kvs.push(codec::decode::<StoredValue>(&value)?.into_kv(key.into_vec()));
    }
    Ok((kvs, false))
}

/// A consistent read: keys and the revision they were read at.
pub fn range(
    reader: &impl KvRead,
    cfs: &Cfs<'_>,
    range: &KeyRange,
    limit: u64,
) -> io::Result<RangeResult> {
    let (kvs, more) = range_kvs(reader, cfs, range, limit)?;
    Ok(RangeResult {
        kvs,
        more,
        revision: read_u64(reader, cfs.meta, REVISION_KEY)?,
    })
}

/// History from `from_revision` on, grouped by revision, at most `max_revisions`.
pub fn history_since(
    reader: &impl KvRead,
    cfs: &Cfs<'_>,
    from_revision: u64,
    max_revisions: usize,
) -> io::Result<Vec<WatchBatch>> {
    let mut out: Vec<WatchBatch> = Vec::new();
    for item in reader.scan_from(cfs.history, &u64_key(from_revision)) {
        let (_, value) = item?;
        let event: Event = codec::decode(&value)?;
        let revision = event.kv.mod_revision;
        match out.last_mut() {
            Some(last) if last.revision == revision => last.events.push(event),
            _ => {
                if out.len() == max_revisions {
                    break;
                }
                out.push(WatchBatch {
                    revision,
                    events: vec![event],
                })
            }
        }
    }
    Ok(out)
}

pub fn list_leases(reader: &impl KvRead, cfs: &Cfs<'_>) -> io::Result<Vec<Lease>> {
    reader
        .scan_from(cfs.leases, &[])
        .map(|item| item.and_then(|(_, v)| Ok(codec::decode::<Lease>(&v)?)))
        .collect()
}

/// The state machine's counters (revisions, lease ids) kept in memory,
/// mirrored in `sm_meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revisions {
    pub revision: u64,
    pub compact_revision: u64,
    /// The last lease id given; see [`LeaseId`].
    pub lease_id: LeaseId,
}

impl Revisions {
    pub fn load(reader: &impl KvRead, cfs: &Cfs<'_>) -> io::Result<Self> {
        Ok(Revisions {
            revision: read_u64(reader, cfs.meta, REVISION_KEY)?,
            compact_revision: read_u64(reader, cfs.meta, COMPACT_REVISION_KEY)?,
            lease_id: read_u64(reader, cfs.meta, LEASE_ID_KEY)?,
        })
    }
}

/// Applies `cmd`, found at log `index`, on top of `pending` (which it reads
/// through and adds its writes to). `revs` is advanced to what the pending
/// writes will store once written.
pub fn apply(
    pending: &mut Pending<'_>,
    cfs: &Cfs<'_>,
    revs: &mut Revisions,
    index: u64,
    cmd: &Command,
) -> io::Result<Applied> {
    let mut writer = Writer {
        pending,
        cfs,
        revs,
        index,
        events: Vec::new(),
        sealed: Vec::new(),
        lease_changes: Vec::new(),
    };
    let result = match cmd {
        Command::Txn(txn) => writer.txn(txn)?,
        Command::TxnBatch(txns) => {
            let mut results = Vec::with_capacity(txns.len());
            for txn in txns {
                results.push(writer.txn(txn)?);
                writer.seal_events();
            }
            CommandResult::TxnBatch(results)
        }
        Command::LeaseGrant { ttl_ms } => {
            if *ttl_ms == 0 {
                CommandResult::Rejected(Rejection::ZeroTtl)
            } else {
                let id = writer.grant_lease(*ttl_ms)?;
                CommandResult::LeaseGranted {
                    id,
                    ttl_ms: *ttl_ms,
                }
            }
        }
        Command::LeaseRevoke { id } | Command::LeaseExpire { id } => {
            let found = match writer.lease_rows(*id)? {
                Some(rows) => {
                    if !rows.attached.is_empty() {
                        writer.bump_revision()?;
                    }
                    writer.remove_lease(*id, rows)?;
                    true
                }
                None => false,
            };
            CommandResult::LeaseRevoked {
                found,
                revision: writer.revs.revision,
            }
        }
        Command::Compact { revision } => writer.compact(*revision)?,
    };
    writer.seal_events();
    Ok(Applied {
        result,
        events: writer.sealed,
        lease_changes: writer.lease_changes,
    })
}

struct Writer<'a, 'b, 'c> {
    pending: &'a mut Pending<'c>,
    cfs: &'a Cfs<'b>,
    revs: &'a mut Revisions,
    /// The log index of the command.
    index: u64,
    /// Changes of the current revision.
    events: Vec<Event>,
    /// Changes of the revisions already made, one batch each.
    sealed: Vec<WatchBatch>,
    lease_changes: Vec<LeaseChange>,
}

/// A lease's rows: its `lease_keys` entries and the keys they attach.
struct LeaseRows {
    lease_keys: Vec<Box<[u8]>>,
    attached: Vec<KeyValue>,
}

impl Writer<'_, '_, '_> {
    /// Closes the current revision's changes into a watch batch.
    fn seal_events(&mut self) {
        if !self.events.is_empty() {
            self.sealed.push(WatchBatch {
                revision: self.revs.revision,
                events: std::mem::take(&mut self.events),
            });
        }
    }

    fn txn(&mut self, txn: &Txn) -> io::Result<CommandResult> {
        let mut succeeded = true;
        for compare in &txn.compare {
            if !self.compare_holds(compare)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if let Some(rejection) = self.check_branch(ops)? {
            return Ok(CommandResult::Rejected(rejection));
        }

        // Reads and the prior state of every write see the state before the
        // transaction; the revision is bumped only if something changes.
        let mut plans = Vec::with_capacity(ops.len());
        let mut changes = false;
        for op in ops {
            let plan = match op {
                TxnOp::Put { key, .. } | TxnOp::PutOnNewLease { key, .. } => {
                    changes = true;
                    Plan::Put(get_kv(&*self.pending, self.cfs, key)?)
                }
                TxnOp::Delete { range } => {
                    let (found, _) = range_kvs(&*self.pending, self.cfs, range, 0)?;
                    changes |= !found.is_empty();
                    Plan::Delete(found)
                }
                TxnOp::Range { range, limit } => {
                    let (kvs, more) = range_kvs(&*self.pending, self.cfs, range, *limit)?;
                    Plan::Range(RangeResult {
                        kvs,
                        more,
                        revision: self.revs.revision,
                    })
                }
                TxnOp::LeaseRevoke { id } => Plan::Revoke(self.lease_rows(*id)?),
            };
            plans.push(plan);
        }
        // A revoke deletes only the keys the rest of the branch leaves
        // alone: a key put by the branch has moved off the lease, a deleted
        // one is gone, and one on a lease revoked twice goes once.
        let mut claimed: HashSet<Vec<u8>> = HashSet::new();
        for (op, plan) in ops.iter().zip(&plans) {
            match (op, plan) {
                (TxnOp::Put { key, .. } | TxnOp::PutOnNewLease { key, .. }, _) => {
                    claimed.insert(key.clone());
                }
                (_, Plan::Delete(found)) => claimed.extend(found.iter().map(|kv| kv.key.clone())),
                _ => {}
            }
        }
        for plan in &mut plans {
            if let Plan::Revoke(Some(rows)) = plan {
                rows.attached.retain(|kv| claimed.insert(kv.key.clone()));
                changes |= !rows.attached.is_empty();
            }
        }
        if changes {
            self.bump_revision()?;
        }
        let revision = self.revs.revision;
        let mut results = Vec::with_capacity(ops.len());
        for (op, plan) in ops.iter().zip(plans) {
            results.push(match (op, plan) {
                (TxnOp::Put { key, value, lease }, Plan::Put(prev)) => {
                    self.put_key(key, value, *lease, prev.as_ref(), revision)?;
                    OpResult::Put { prev }
                }
                (TxnOp::PutOnNewLease { key, value, ttl_ms }, Plan::Put(prev)) => {
                    let lease = self.grant_lease(*ttl_ms)?;
                    self.put_key(key, value, Some(lease), prev.as_ref(), revision)?;
                    OpResult::PutOnNewLease { prev, lease }
                }
                (TxnOp::Delete { .. }, Plan::Delete(found)) => {
                    for kv in &found {
                        self.delete_key(kv)?;
                    }
                    OpResult::Delete { deleted: found }
                }
                (_, Plan::Range(result)) => OpResult::Range(result),
                (TxnOp::LeaseRevoke { id }, Plan::Revoke(rows)) => {
                    let found = rows.is_some();
                    if let Some(rows) = rows {
                        self.remove_lease(*id, rows)?;
                    }
                    OpResult::LeaseRevoke { found }
                }
                _ => {
                    return Err(io::Error::other(
                        "transaction plan out of step with its ops",
                    ))
                }
            });
        }
        Ok(CommandResult::Txn(TxnResult {
            revision,
            succeeded,
            results,
        }))
    }

    fn compare_holds(&self, compare: &Compare) -> io::Result<bool> {
        if let CompareTarget::PrefixModRevision(_) = compare.target {
            let prefix = KeyRange::Prefix(compare.key.clone());
            let (kvs, _) = range_kvs(&*self.pending, self.cfs, &prefix, 0)?;
            return Ok(kvs.iter().all(|kv| compare.holds(Some(kv))));
        }
        let current = get_kv(&*self.pending, self.cfs, &compare.key)?;
        Ok(compare.holds(current.as_ref()))
    }

    /// Writes `key` at `revision`, moving it from its previous lease (if
    /// any) to `lease`.
    fn put_key(
        &mut self,
        key: &[u8],
        value: &[u8],
        lease: Option<LeaseId>,
        prev: Option<&KeyValue>,
        revision: u64,
    ) -> io::Result<()> {
        let stored = StoredValue {
            value: value.to_vec(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
            lease,
        };
        if let Some(old) = prev.and_then(|p| p.lease) {
            if Some(old) != lease {
                self.pending
                    .delete(self.cfs.lease_keys, &lease_key(old, key))?;
            }
        }
        if let Some(new) = lease {
            self.pending
                .put(self.cfs.lease_keys, &lease_key(new, key), Vec::new())?;
        }
        self.pending
            .put(self.cfs.kv, key, codec::encode(&stored)?)?;
        self.record(EventKind::Put, stored.into_kv(key.to_vec()))
    }

    /// Refuses a branch that writes one key twice, names a missing lease,
    /// grants one of no time, or writes to a lease it revokes.
    fn check_branch(&self, ops: &[TxnOp]) -> io::Result<Option<Rejection>> {
        let revoked: HashSet<LeaseId> = ops
            .iter()
            .filter_map(|op| match op {
                TxnOp::LeaseRevoke { id } => Some(*id),
                _ => None,
            })
            .collect();
        let mut put_keys = HashSet::new();
        for op in ops {
            let (key, lease) = match op {
                TxnOp::Put { key, lease, .. } => (key, *lease),
                TxnOp::PutOnNewLease { key, ttl_ms, .. } => {
                    if *ttl_ms == 0 {
                        return Ok(Some(Rejection::ZeroTtl));
                    }
                    (key, None)
                }
                _ => continue,
            };
            if !put_keys.insert(key.as_slice()) {
                return Ok(Some(Rejection::DuplicateKey(
                    String::from_utf8_lossy(key).into_owned(),
                )));
            }
            if let Some(id) = lease {
                if revoked.contains(&id) {
                    return Ok(Some(Rejection::LeaseUsedAndRevoked(id)));
                }
                if KvRead::get(&*self.pending, self.cfs.leases, &u64_key(id))?.is_none() {
                    return Ok(Some(Rejection::LeaseNotFound(id)));
                }
            }
        }
        for op in ops {
            if let TxnOp::Delete { range } = op {
                if let Some(key) = put_keys.iter().find(|k| range.contains(k)) {
                    return Ok(Some(Rejection::DuplicateKey(
                        String::from_utf8_lossy(key).into_owned(),
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Gives the next lease id (see [`LeaseId`]) to a new lease of `ttl_ms`.
    fn grant_lease(&mut self, ttl_ms: u64) -> io::Result<LeaseId> {
        let id = self.index.max(self.revs.lease_id + 1);
        self.revs.lease_id = id;
        self.pending
            .put(self.cfs.meta, LEASE_ID_KEY, codec::encode(&id)?)?;
        let lease = Lease { id, ttl_ms };
        self.pending
            .put(self.cfs.leases, &u64_key(id), codec::encode(&lease)?)?;
        self.lease_changes.push(LeaseChange::Granted(lease));
        Ok(id)
    }

    fn bump_revision(&mut self) -> io::Result<()> {
        self.revs.revision += 1;
        self.pending.put(
            self.cfs.meta,
            REVISION_KEY,
            codec::encode(&self.revs.revision)?,
        )
    }

    fn delete_key(&mut self, kv: &KeyValue) -> io::Result<()> {
        self.pending.delete(self.cfs.kv, &kv.key)?;
        if let Some(lease) = kv.lease {
            self.pending
                .delete(self.cfs.lease_keys, &lease_key(lease, &kv.key))?;
        }
        let tombstone = KeyValue {
            key: kv.key.clone(),
            value: Vec::new(),
            create_revision: kv.create_revision,
            mod_revision: self.revs.revision,
            version: 0,
            lease: None,
        };
        self.record(EventKind::Delete, tombstone)
    }

    fn record(&mut self, kind: EventKind, kv: KeyValue) -> io::Result<()> {
        let mut key = u64_key(self.revs.revision).to_vec();
        key.extend_from_slice(&(self.events.len() as u32).to_be_bytes());
        let event = Event { kind, kv };
        self.pending
            .put(self.cfs.history, &key, codec::encode(&event)?)?;
        self.events.push(event);
        Ok(())
    }

    /// The lease's rows, or `None` if there is no such lease.
    fn lease_rows(&self, id: LeaseId) -> io::Result<Option<LeaseRows>> {
        if KvRead::get(&*self.pending, self.cfs.leases, &u64_key(id))?.is_none() {
            return Ok(None);
        }
        let prefix = u64_key(id);
        let mut rows = LeaseRows {
            lease_keys: Vec::new(),
            attached: Vec::new(),
        };
        let end = prefix_end(&prefix);
        for item in self
            .pending
            .scan(self.cfs.lease_keys, &prefix, end.as_deref())
        {
            let (lk, _) = item?;
            if !lk.starts_with(&prefix) {
                break;
            }
            if let Some(kv) = get_kv(&*self.pending, self.cfs, &lk[prefix.len()..])? {
                rows.attached.push(kv);
            }
            rows.lease_keys.push(lk);
        }
        Ok(Some(rows))
    }

    /// Deletes the lease, its `lease_keys` rows and the keys in
    /// `rows.attached`, in the current revision.
    fn remove_lease(&mut self, id: LeaseId, rows: LeaseRows) -> io::Result<()> {
        for lk in &rows.lease_keys {
            self.pending.delete(self.cfs.lease_keys, lk)?;
        }
        for kv in &rows.attached {
            self.delete_key(kv)?;
        }
        self.pending.delete(self.cfs.leases, &u64_key(id))?;
        self.lease_changes.push(LeaseChange::Removed(id));
        Ok(())
    }

    fn compact(&mut self, revision: u64) -> io::Result<CommandResult> {
        if revision <= self.revs.compact_revision {
            return Ok(CommandResult::Rejected(Rejection::AlreadyCompacted {
                requested: revision,
                compacted: self.revs.compact_revision,
            }));
        }
        if revision > self.revs.revision {
            return Ok(CommandResult::Rejected(Rejection::FutureRevision {
                requested: revision,
                current: self.revs.revision,
            }));
        }
        self.pending
            .delete_range(self.cfs.history, &u64_key(0), &u64_key(revision))?;
        self.revs.compact_revision = revision;
        self.pending.put(
            self.cfs.meta,
            COMPACT_REVISION_KEY,
            codec::encode(&revision)?,
        )?;
        Ok(CommandResult::Compacted { revision })
    }
}

enum Plan {
    Put(Option<KeyValue>),
    Delete(Vec<KeyValue>),
    Range(RangeResult),
    /// The lease's rows, if it exists.
    Revoke(Option<LeaseRows>),
}

fn lease_key(lease: LeaseId, key: &[u8]) -> Vec<u8> {
    let mut out = u64_key(lease).to_vec();
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::data_dir::DataDir;
    use crate::types::{Compare, CompareOp, Lease, Rejection};

    struct Sm {
        _dir: tempfile::TempDir,
        data: DataDir,
        revs: Revisions,
        index: u64,
    }

    impl Sm {
        fn new() -> Sm {
            let dir = tempfile::tempdir().unwrap();
            let data = DataDir::open(dir.path(), "test", 1).unwrap();
            Sm {
                _dir: dir,
                data,
                revs: Revisions::default(),
                index: 0,
            }
        }

        fn apply(&mut self, cmd: Command) -> Applied {
            self.apply_all(vec![cmd]).remove(0)
        }

        /// Applies `cmds` as one batch, as one `apply` call of openraft does.
        fn apply_all(&mut self, cmds: Vec<Command>) -> Vec<Applied> {
            let db = self.data.db.clone();
            let cfs = Cfs::of(&db).unwrap();
            let mut pending = Pending::new(&db, &cfs);
            let mut out = Vec::new();
            for cmd in &cmds {
                self.index += 1;
                out.push(apply(&mut pending, &cfs, &mut self.revs, self.index, cmd).unwrap());
            }
            pending.write().unwrap();
            out
        }

        /// Every row of every state-machine column family.
        fn dump(&self) -> Vec<Vec<Row>> {
            let cfs = Cfs::of(&self.data.db).unwrap();
            cfs.families()
                .iter()
                .map(|cf| {
                    self.data
                        .db
                        .scan_from(cf, &[])
                        .collect::<io::Result<Vec<_>>>()
                        .unwrap()
                })
                .collect()
        }

        fn txn(&mut self, txn: Txn) -> TxnResult {
            match self.apply(Command::Txn(txn)).result {
                CommandResult::Txn(r) => r,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn put(&mut self, k: &str, v: &str) -> TxnResult {
            self.txn(Txn::new().and_then([TxnOp::put(k, v)]))
        }

        fn get(&self, k: &str) -> Option<KeyValue> {
            let cfs = Cfs::of(&self.data.db).unwrap();
            get_kv(self.data.db.as_ref(), &cfs, k.as_bytes()).unwrap()
        }

        fn range(&self, r: KeyRange, limit: u64) -> RangeResult {
            let cfs = Cfs::of(&self.data.db).unwrap();
            range(self.data.db.as_ref(), &cfs, &r, limit).unwrap()
        }

        fn history(&self, from: u64) -> Vec<WatchBatch> {
            let cfs = Cfs::of(&self.data.db).unwrap();
            history_since(self.data.db.as_ref(), &cfs, from, 1000).unwrap()
        }
    }

    #[test]
    fn every_write_bumps_the_revision_and_versions_count_writes() {
        let mut sm = Sm::new();
        assert_eq!(sm.put("a", "1").revision, 1);
        assert_eq!(sm.put("b", "1").revision, 2);
        assert_eq!(sm.put("a", "2").revision, 3);
        let a = sm.get("a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
        assert_eq!(a.value, b"2");
        // Deleting a missing key changes nothing and does not bump.
        let r = sm.txn(Txn::new().and_then([TxnOp::delete(KeyRange::key("zz"))]));
        assert_eq!(r.revision, 3);
        // Delete then re-create starts a new life.
        sm.txn(Txn::new().and_then([TxnOp::delete(KeyRange::key("a"))]));
        assert_eq!(sm.get("a"), None);
        sm.put("a", "3");
        let a = sm.get("a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    }

    #[test]
    fn txn_compares_pick_the_branch_atomically() {
        let mut sm = Sm::new();
        sm.put("k", "v1");
        // Value compare.
        let r = sm.txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "v1")])
                .and_then([TxnOp::put("k", "v2"), TxnOp::put("other", "x")])
                .or_else([TxnOp::get("k")]),
        );
        assert!(r.succeeded);
        assert_eq!(r.revision, 2, "both puts share one revision");
        assert_eq!(sm.get("other").unwrap().mod_revision, 2);
        // Failing compare runs the failure branch, which reads the pre-state.
        let r = sm.txn(
            Txn::new()
                .when([Compare::value("k", CompareOp::Equal, "v1")])
                .and_then([TxnOp::put("k", "never")])
                .or_else([TxnOp::get("k")]),
        );
        assert!(!r.succeeded);
        assert_eq!(r.revision, 2, "a read-only branch does not bump");
        match &r.results[0] {
            OpResult::Range(rr) => assert_eq!(rr.kvs[0].value, b"v2"),
            other => panic!("{other:?}"),
        }
        // Version, mod_revision, create_revision and existence.
        for (cmp, expect) in [
            (Compare::version("k", CompareOp::Equal, 2), true),
            (Compare::version("k", CompareOp::Greater, 2), false),
            (Compare::mod_revision("k", CompareOp::Less, 3), true),
            (Compare::create_revision("k", CompareOp::Equal, 1), true),
            (Compare::exists("k"), true),
            (Compare::absent("k"), false),
            (Compare::absent("missing"), true),
            (Compare::value("missing", CompareOp::NotEqual, "x"), false),
        ] {
            let r = sm.txn(Txn::new().when([cmp.clone()]));
            assert_eq!(r.succeeded, expect, "{cmp:?}");
        }
        // All compares must hold.
        let r = sm.txn(
            Txn::new()
                .when([Compare::exists("k"), Compare::absent("k")])
                .and_then([TxnOp::put("k", "no")]),
        );
        assert!(!r.succeeded);
        assert_eq!(sm.get("k").unwrap().value, b"v2");
    }

    #[test]
    fn a_branch_writing_a_key_twice_is_rejected_whole() {
        let mut sm = Sm::new();
        let before = sm.revs;
        let a = sm.apply(Command::Txn(Txn::new().and_then([
            TxnOp::put("x", "1"),
            TxnOp::put("y", "1"),
            TxnOp::put("x", "2"),
        ])));
        assert!(matches!(
            a.result,
            CommandResult::Rejected(Rejection::DuplicateKey(_))
        ));
        let a = sm.apply(Command::Txn(Txn::new().and_then([
            TxnOp::put("p/1", "1"),
            TxnOp::delete(KeyRange::prefix("p/")),
        ])));
        assert!(matches!(
            a.result,
            CommandResult::Rejected(Rejection::DuplicateKey(_))
        ));
        assert_eq!(sm.revs, before);
        assert_eq!(sm.get("y"), None);
    }

    #[test]
    fn ranges_by_prefix_and_interval_with_limit() {
        let mut sm = Sm::new();
        for k in ["a/1", "a/2", "a/3", "b/1", "a"] {
            sm.put(k, "v");
        }
        let r = sm.range(KeyRange::prefix("a/"), 0);
        let keys: Vec<_> = r
            .kvs
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect();
        assert_eq!(keys, ["a/1", "a/2", "a/3"]);
        assert_eq!(r.revision, 5);
        let r = sm.range(KeyRange::prefix("a/"), 2);
        assert_eq!(r.kvs.len(), 2);
        assert!(r.more);
        let r = sm.range(KeyRange::between("a/2", "b/1"), 0);
        let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
        assert_eq!(keys, [b"a/2".to_vec(), b"a/3".to_vec()]);
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_in_one_revision() {
        let mut sm = Sm::new();
        let granted = sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        let CommandResult::LeaseGranted { id: lease, .. } = granted.result else {
            panic!("{granted:?}")
        };
        assert!(matches!(
            granted.lease_changes[..],
            [LeaseChange::Granted(Lease { ttl_ms: 1000, .. })]
        ));
        sm.txn(Txn::new().and_then([
            TxnOp::put_with_lease("reg/1", "c1", lease),
            TxnOp::put_with_lease("reg/2", "c2", lease),
        ]));
        sm.put("keep", "v");
        // Re-putting without the lease detaches the key.
        sm.put("reg/2", "c2-static");
        let a = sm.apply(Command::LeaseExpire { id: lease });
        assert_eq!(a.lease_changes, [LeaseChange::Removed(lease)]);
        let [batch] = &a.events[..] else {
            panic!("one revision of events: {:?}", a.events)
        };
        assert_eq!(batch.revision, 4);
        assert_eq!(batch.events.len(), 1);
        assert_eq!(batch.events[0].kind, EventKind::Delete);
        assert_eq!(batch.events[0].kv.key, b"reg/1");
        assert_eq!(sm.get("reg/1"), None);
        assert_eq!(sm.get("reg/2").unwrap().value, b"c2-static");
        // Gone: a second revoke finds nothing; a put on it is refused.
        assert!(matches!(
            sm.apply(Command::LeaseRevoke { id: lease }).result,
            CommandResult::LeaseRevoked { found: false, .. }
        ));
        assert!(matches!(
            sm.apply(Command::Txn(
                Txn::new().and_then([TxnOp::put_with_lease("z", "v", lease)])
            ))
            .result,
            CommandResult::Rejected(Rejection::LeaseNotFound(_))
        ));
        assert!(matches!(
            sm.apply(Command::LeaseGrant { ttl_ms: 0 }).result,
            CommandResult::Rejected(Rejection::ZeroTtl)
        ));
    }

    #[test]
    fn history_is_in_commit_order_grouped_by_revision() {
        let mut sm = Sm::new();
        sm.put("a", "1");
        sm.txn(Txn::new().and_then([TxnOp::put("b", "1"), TxnOp::put("c", "1")]));
        sm.txn(Txn::new().and_then([TxnOp::delete(KeyRange::prefix(""))]));
        let h = sm.history(1);
        let revs: Vec<_> = h.iter().map(|b| b.revision).collect();
        assert_eq!(revs, [1, 2, 3]);
        assert_eq!(h[1].events.len(), 2);
        assert_eq!(h[2].events.len(), 3);
        assert!(h[2]
            .events
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 3));
        assert_eq!(sm.history(3).len(), 1);
    }

    /// Commands that read what earlier ones wrote: puts over puts, compares
    /// on versions, deletes of fresh keys, leases granted, used and revoked,
    /// compaction over fresh history.
    fn dependent_commands() -> Vec<Command> {
        let txn = |t: Txn| Command::Txn(t);
        vec![
            txn(Txn::new().and_then([TxnOp::put("a", "1"), TxnOp::put("b/1", "1")])),
            txn(Txn::new().and_then([TxnOp::put("a", "2")])),
            txn(Txn::new()
                .when([Compare::version("a", CompareOp::Equal, 2)])
                .and_then([TxnOp::put("b/2", "2")])
                .or_else([TxnOp::put("wrong", "x")])),
            txn(Txn::new().and_then([TxnOp::Range {
                range: KeyRange::prefix("b/"),
                limit: 0,
            }])),
            Command::LeaseGrant { ttl_ms: 1000 },
            txn(Txn::new().and_then([
                TxnOp::put_with_lease("reg/1", "c", 5),
                TxnOp::put_with_lease("reg/2", "c", 5),
            ])),
            txn(Txn::new().and_then([TxnOp::put("reg/2", "static")])),
            txn(Txn::new().and_then([TxnOp::delete(KeyRange::prefix("b/"))])),
            txn(Txn::new()
                .when([Compare::absent("b/2")])
                .and_then([TxnOp::put("b/2", "again")])),
            Command::Compact { revision: 4 },
            Command::LeaseRevoke { id: 5 },
            txn(Txn::new().and_then([TxnOp::put_with_lease("reg/3", "c", 5)])),
            txn(Txn::new()
                .when([Compare::mod_revision("a", CompareOp::Equal, 2)])
                .and_then([TxnOp::delete(KeyRange::prefix(""))])),
            Command::Compact { revision: 9 },
            txn(Txn::new().and_then([TxnOp::put("a", "3")])),
        ]
    }

    #[test]
    fn one_batch_of_commands_equals_one_batch_each() {
        let mut each = Sm::new();
        let one_by_one: Vec<_> = dependent_commands()
            .into_iter()
            .map(|cmd| each.apply(cmd))
            .collect();
        let mut all = Sm::new();
        let batched = all.apply_all(dependent_commands());
        assert_eq!(format!("{one_by_one:?}"), format!("{batched:?}"));
        assert_eq!(each.revs, all.revs);
        assert_eq!(each.dump(), all.dump());
        // The script did what it says.
        assert!(matches!(
            &batched[2].result,
            CommandResult::Txn(TxnResult {
                succeeded: true,
                ..
            })
        ));
        assert!(matches!(
            batched[10].result,
            CommandResult::LeaseRevoked { found: true, .. }
        ));
        assert_eq!(all.get("a").unwrap().version, 1);
        assert_eq!(all.history(0).first().map(|b| b.revision), Some(9));
    }

    /// Transactions carried by one entry get what they would get with an
    /// entry each: results (a rejection included), revisions, watch
    /// batches and rows.
    #[test]
    fn a_txn_batch_equals_one_entry_per_txn() {
        let txns: Vec<Txn> = dependent_commands()
            .into_iter()
            .filter_map(|cmd| match cmd {
                Command::Txn(t) => Some(t),
                _ => None,
            })
            .collect();
        let mut each = Sm::new();
        let applied: Vec<_> = txns
            .iter()
            .map(|t| each.apply(Command::Txn(t.clone())))
            .collect();
        let mut all = Sm::new();
        let batched = all.apply(Command::TxnBatch(txns));
        let results: Vec<_> = applied.iter().map(|a| a.result.clone()).collect();
        assert_eq!(batched.result, CommandResult::TxnBatch(results));
        let events: Vec<_> = applied.into_iter().flat_map(|a| a.events).collect();
        assert_eq!(batched.events, events);
        assert_eq!(each.revs, all.revs);
        assert_eq!(each.dump(), all.dump());
        // Without the lease, the leased puts were rejected, alone.
        let CommandResult::TxnBatch(results) = &batched.result else {
            unreachable!()
        };
        assert!(matches!(
            results[4],
            CommandResult::Rejected(Rejection::LeaseNotFound(5))
        ));
        assert!(events.len() > 5);
    }

    fn new_lease_of(result: &OpResult) -> LeaseId {
        match result {
            OpResult::PutOnNewLease { lease, .. } => *lease,
            other => panic!("not a put on a new lease: {other:?}"),
        }
    }

    fn leases_and_lease_keys(sm: &Sm) -> (Vec<LeaseId>, Vec<(LeaseId, Vec<u8>)>) {
        let cfs = Cfs::of(&sm.data.db).unwrap();
        let leases = list_leases(sm.data.db.as_ref(), &cfs)
            .unwrap()
            .iter()
            .map(|l| l.id)
            .collect();
        let lease_keys = sm.dump()[2]
            .iter()
            .map(|(k, _)| {
                let (id, key) = k.split_at(8);
                (u64::from_be_bytes(id.try_into().unwrap()), key.to_vec())
            })
            .collect();
        (leases, lease_keys)
    }

    #[test]
    fn a_txn_grants_leases_and_revokes_stale_ones_in_one_revision() {
        let mut sm = Sm::new();
        sm.put("x", "1");
        // Entry 2: two keys, each on a lease of its own, in one revision.
        let a = sm.apply(Command::Txn(Txn::new().and_then([
            TxnOp::put_on_new_lease("reg/1", "c1", Duration::from_secs(60)),
            TxnOp::put_on_new_lease("reg/2", "c2", Duration::from_secs(30)),
        ])));
        let CommandResult::Txn(r) = &a.result else {
            panic!("{a:?}")
        };
        let (l1, l2) = (new_lease_of(&r.results[0]), new_lease_of(&r.results[1]));
        assert_eq!((l1, l2), (2, 3), "the entry's index, then the next id");
        assert_eq!(r.revision, 2);
        assert_eq!(
            a.lease_changes,
            [
                LeaseChange::Granted(Lease {
                    id: 2,
                    ttl_ms: 60_000
                }),
                LeaseChange::Granted(Lease {
                    id: 3,
                    ttl_ms: 30_000
                }),
            ]
        );
        assert_eq!(sm.get("reg/1").unwrap().lease, Some(l1));
        assert_eq!(sm.get("reg/2").unwrap().lease, Some(l2));
        // A plain grant at entry 3 cannot have 3 again.
        assert!(matches!(
            sm.apply(Command::LeaseGrant { ttl_ms: 1000 }).result,
            CommandResult::LeaseGranted { id: 4, .. }
        ));

        // A re-registration: reg/1 moves to a new lease and its old one is
        // revoked; revoking reg/2's lease deletes reg/2; a lease that is
        // gone already is no error. All in one revision.
        let a = sm.apply(Command::Txn(Txn::new().and_then([
            TxnOp::lease_revoke(l1),
            TxnOp::put_on_new_lease("reg/1", "c1b", Duration::from_secs(60)),
            TxnOp::lease_revoke(l2),
            TxnOp::lease_revoke(99),
        ])));
        let CommandResult::Txn(r) = &a.result else {
            panic!("{a:?}")
        };
        assert_eq!(r.revision, 3);
        assert_eq!(r.results[0], OpResult::LeaseRevoke { found: true });
        let l1b = new_lease_of(&r.results[1]);
        assert_eq!(l1b, 5);
        assert_eq!(r.results[2], OpResult::LeaseRevoke { found: true });
        assert_eq!(r.results[3], OpResult::LeaseRevoke { found: false });
        assert_eq!(
            a.lease_changes,
            [
                LeaseChange::Removed(l1),
                LeaseChange::Granted(Lease {
                    id: l1b,
                    ttl_ms: 60_000
                }),
                LeaseChange::Removed(l2),
            ]
        );
        let [batch] = &a.events[..] else {
            panic!("one revision of events: {:?}", a.events)
        };
        let events: Vec<_> = batch
            .events
            .iter()
            .map(|e| (e.kind, e.kv.key.as_slice()))
            .collect();
        assert_eq!(
            events,
            [
                (EventKind::Put, b"reg/1".as_slice()),
                (EventKind::Delete, b"reg/2".as_slice())
            ]
        );
        let reg1 = sm.get("reg/1").unwrap();
        assert_eq!((reg1.lease, reg1.version), (Some(l1b), 2));
        assert_eq!(sm.get("reg/2"), None);
        assert_eq!(
            leases_and_lease_keys(&sm),
            (vec![4, l1b], vec![(l1b, b"reg/1".to_vec())])
        );
        // The new lease expires like any other.
        sm.apply(Command::LeaseExpire { id: l1b });
        assert_eq!(sm.get("reg/1"), None);
        assert_eq!(leases_and_lease_keys(&sm), (vec![4], vec![]));
    }

    #[test]
    fn a_branch_may_not_write_to_a_lease_it_revokes_nor_grant_no_time() {
        let mut sm = Sm::new();
        let CommandResult::LeaseGranted { id: lease, .. } =
            sm.apply(Command::LeaseGrant { ttl_ms: 1000 }).result
        else {
            panic!("no lease")
        };
        let before = sm.revs;
        for (txn, expected) in [
            (
                Txn::new().and_then([
                    TxnOp::put_with_lease("k", "v", lease),
                    TxnOp::lease_revoke(lease),
                ]),
                Rejection::LeaseUsedAndRevoked(lease),
            ),
            (
                Txn::new().and_then([TxnOp::put_on_new_lease("k", "v", Duration::ZERO)]),
                Rejection::ZeroTtl,
            ),
            (
                Txn::new().and_then([
                    TxnOp::put_on_new_lease("k", "v", Duration::from_secs(1)),
                    TxnOp::put("k", "w"),
                ]),
                Rejection::DuplicateKey("k".into()),
            ),
        ] {
            assert_eq!(
                sm.apply(Command::Txn(txn)).result,
                CommandResult::Rejected(expected)
            );
        }
        assert_eq!(sm.revs, before);
        assert_eq!(sm.get("k"), None);
        assert_eq!(leases_and_lease_keys(&sm), (vec![lease], vec![]));
    }

    #[test]
    fn a_prefix_compare_sees_any_write_under_the_prefix_since_a_read() {
        let mut sm = Sm::new();
        sm.put("aor/1", "a");
        sm.put("other", "x");
        let read = sm.range(KeyRange::prefix("aor/"), 0);
        let guarded = |revision: u64| {
            Txn::new()
                .when([Compare::prefix_mod_revision(
                    "aor/",
                    CompareOp::Less,
                    revision + 1,
                )])
                .and_then([TxnOp::put("aor/2", "b")])
                .or_else([TxnOp::Range {
                    range: KeyRange::prefix("aor/"),
                    limit: 0,
                }])
        };
        // A write elsewhere does not matter.
        sm.put("other", "y");
        assert!(sm.txn(guarded(read.revision)).succeeded);
        // The prefix changed since the read: the compare fails, and the
        // failure branch reads what is there now.
        let r = sm.txn(guarded(read.revision));
        assert!(!r.succeeded);
        let OpResult::Range(now) = &r.results[0] else {
            panic!("{r:?}")
        };
        assert_eq!(now.kvs.len(), 2);
        assert!(sm.txn(guarded(now.revision)).succeeded);
        // Nothing under a prefix: it holds.
        let empty = Txn::new().when([Compare::prefix_mod_revision("none/", CompareOp::Less, 1)]);
        assert!(sm.txn(empty).succeeded);
    }

    #[test]
    fn a_snapshot_carries_the_leases_and_the_last_lease_id() {
        let mut sm = Sm::new();
        let ttl = Duration::from_secs(60);
        sm.apply(Command::TxnBatch(vec![
            Txn::new().and_then([TxnOp::put_on_new_lease("reg/1", "c", ttl)]),
            Txn::new().and_then([
                TxnOp::put_on_new_lease("reg/2", "c", ttl),
                TxnOp::put_on_new_lease("reg/3", "c", ttl),
            ]),
        ]));
        assert_eq!(sm.revs.lease_id, 3);
        let path = sm._dir.path().join("state.snap");
        let meta =
            openraft::type_config::alias::SnapshotMetaOf::<crate::types::TypeConfig>::default();
        crate::snapshot::write(&sm.data.db, sm.data.db.as_ref(), &meta, &path).unwrap();

        let mut restored = Sm::new();
        let mut batch = rocksdb::WriteBatch::default();
        crate::snapshot::load_into_batch(&restored.data.db, &path, &mut batch).unwrap();
        restored.data.db.write(batch).unwrap();
        let cfs = Cfs::of(&restored.data.db).unwrap();
        restored.revs = Revisions::load(restored.data.db.as_ref(), &cfs).unwrap();
        assert_eq!(restored.revs, sm.revs);
        assert_eq!(restored.dump(), sm.dump());
        // The next grant, at the next entry, gets the same fresh id on both.
        restored.index = sm.index;
        for node in [&mut sm, &mut restored] {
            let r = node.txn(Txn::new().and_then([TxnOp::put_on_new_lease("reg/4", "c", ttl)]));
            assert_eq!(new_lease_of(&r.results[0]), 4);
        }
        assert_eq!(restored.dump(), sm.dump());
    }

    #[test]
    fn compaction_drops_old_history_and_refuses_bad_targets() {
        let mut sm = Sm::new();
        for i in 0..10 {
            sm.put("k", &i.to_string());
        }
        assert!(matches!(
            sm.apply(Command::Compact { revision: 11 }).result,
            CommandResult::Rejected(Rejection::FutureRevision { .. })
        ));
        assert_eq!(
            sm.apply(Command::Compact { revision: 6 }).result,
            CommandResult::Compacted { revision: 6 }
        );
        assert_eq!(sm.revs.compact_revision, 6);
        let h = sm.history(0);
        assert_eq!(h.first().map(|b| b.revision), Some(6));
        assert_eq!(h.len(), 5);
        assert!(matches!(
            sm.apply(Command::Compact { revision: 6 }).result,
            CommandResult::Rejected(Rejection::AlreadyCompacted { .. })
        ));
        // Live data is untouched.
        assert_eq!(sm.get("k").unwrap().value, b"9");
        let cfs = Cfs::of(&sm.data.db).unwrap();
        assert_eq!(Revisions::load(sm.data.db.as_ref(), &cfs).unwrap(), sm.revs);
    }
}
