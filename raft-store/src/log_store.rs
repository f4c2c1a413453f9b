//! The Raft log and vote in RocksDB, with group commit: appends are written
//! at once and one flusher thread makes every append written so far durable
//! with a single WAL fsync, then acknowledges them all.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader};
use rocksdb::{Direction, IteratorMode, WriteBatch, DB};

use crate::codec;
use crate::data_dir::{key_u64, u64_key, CF_LOGS, CF_LOG_META};
use crate::types::TypeConfig;

const VOTE_KEY: &[u8] = b"vote";
const LAST_PURGED_KEY: &[u8] = b"last_purged";
const COMMITTED_KEY: &[u8] = b"committed";

/// Log storage of one node. Cloning shares the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    pub fn new(db: Arc<DB>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        // Weak: the database closes when the last store handle drops, on
        // that thread, not later on this one (RocksDB must not be torn down
        // concurrently with process exit).
        let flush_db = Arc::downgrade(&db);
        std::thread::Builder::new()
            .name("raft-log-fsync".into())
            .spawn(move || group_commit_loop(flush_db, rx))?;
        Ok(LogStore { db, flusher: tx })
    }

    fn cf(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io::Error::other(format!("column family {name} missing")))
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = self.cf(CF_LOG_META)?;
        match self.db.get_cf(cf, key).map_err(io::Error::other)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> io::Result<()> {
        let cf = self.cf(CF_LOG_META)?;
        self.db
            .put_cf(cf, key, codec::encode(value)?)
            .map_err(io::Error::other)
    }
}

/// Waits for appends, then makes all of them durable with one fsync.
fn group_commit_loop(db: Weak<DB>, rx: mpsc::Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.into_string()),
            None => Err("database closed".to_string()),
        };
        for callback in waiting {
            callback.io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOGS)?;
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&u64_key(start), Direction::Forward))
        {
            let (key, value) = item.map_err(io::Error::other)?;
            let index = key_u64(&key).ok_or_else(|| io::Error::other("malformed log key"))?;
            if !range.contains(&index) {
                break;
            }
            out.push(codec::decode::<EntryOf<TypeConfig>>(&value)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get_meta(VOTE_KEY)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let cf = self.cf(CF_LOGS)?;
        let last = match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => None,
            Some(item) => {
                let (_, value) = item.map_err(io::Error::other)?;
                Some(codec::decode::<EntryOf<TypeConfig>>(&value)?.log_id())
            }
        };
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(LAST_PURGED_KEY)?;
        let last_log_id = last.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let cf = self.cf(CF_LOG_META)?;
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        self.db
            .put_cf_opt(cf, VOTE_KEY, codec::encode(vote)?, &opts)
            .map_err(io::Error::other)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Rides on the next fsync; a lost update only means re-applying a
        // little more after a power cut, never serving a reverted state
        // (the node waits for recovery before serving reads).
        self.put_meta(COMMITTED_KEY, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<TypeConfig>>>(COMMITTED_KEY)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(CF_LOGS)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, u64_key(entry.index()), codec::encode(&entry)?);
        }
        self.db.write(batch).map_err(io::Error::other)?;
        self.flusher
            .send(callback)
            .map_err(|_| io::Error::other("log flusher thread stopped"))
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index() + 1);
        let cf = self.cf(CF_LOGS)?;
        self.db
            .delete_range_cf(cf, u64_key(from), u64_key(u64::MAX))
            .map_err(io::Error::other)?;
        // The last index itself is excluded by delete_range's half-open end.
        self.db
            .delete_cf(cf, u64_key(u64::MAX))
            .map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored
        // from then on, so a crash between the two steps leaves no hole.
        self.put_meta(LAST_PURGED_KEY, &log_id)?;
        let cf = self.cf(CF_LOGS)?;
        self.db
            .delete_range_cf(cf, u64_key(0), u64_key(log_id.index() + 1))
            .map_err(io::Error::other)
    }
}
