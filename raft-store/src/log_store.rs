//! The Raft log and vote in RocksDB, with group commit: appends are written
//! at once and one flusher thread makes every append written so far durable
//! with a single WAL fsync, then acknowledges them all. The newest entries
//! are also kept in memory: replication and apply read what was just
//! appended, and cloning it is cheaper than reading and decoding it again.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};

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

/// How many of the newest entries are kept in memory: a few replication
/// rounds' worth at full load.
const RECENT_ENTRIES: usize = 8192;
/// And how many bytes of them (encoded; decoded they take about twice
/// that): one entry can carry hundreds of transactions (`TxnBatch`), so a
/// count alone let 8,192 entries hold every binding of a 100,000-phone
/// registration burst. 8 MiB is over half a second of writes at 30,000
/// transactions a second, while replication and apply read back what was
/// appended milliseconds before; anything older comes from RocksDB.
const RECENT_BYTES: usize = 8 << 20;

/// Log storage of one node. Cloning shares the database, the flusher and
/// the recent entries.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
    recent: Arc<Mutex<Recent>>,
}

/// A copy of the log's newest entries: one run of consecutive indexes that
/// ends at the last entry in the database.
#[derive(Default)]
struct Recent {
    /// Each entry with its encoded size.
    entries: VecDeque<(EntryOf<TypeConfig>, usize)>,
    /// The sum of those sizes.
    bytes: usize,
}

impl Recent {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }

    fn push(&mut self, entry: EntryOf<TypeConfig>, size: usize) {
        let index = entry.index();
        self.truncate_from(index);
        if self
            .entries
            .back()
            .is_some_and(|(e, _)| e.index() + 1 != index)
        {
            self.clear();
        }
        self.entries.push_back((entry, size));
        self.bytes += size;
        // The newest entry stays, however large.
        while self.entries.len() > 1
            && (self.entries.len() > RECENT_ENTRIES || self.bytes > RECENT_BYTES)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Forgets entries at `index` and after.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.index() >= index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets entries up to and including `index`.
    fn purge_to(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|(e, _)| e.index() <= index)
        {
            self.pop_front();
        }
    }
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
        Ok(LogStore {
            db,
            flusher: tx,
            recent: Arc::default(),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
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
        {
            let recent = self.recent();
            if recent.first_index().is_some_and(|first| first <= start) {
                return Ok(recent
                    .entries
                    .iter()
                    .map(|(e, _)| e)
                    .skip_while(|e| e.index() < start)
                    .take_while(|e| range.contains(&e.index()))
                    .cloned()
                    .collect());
            }
        }
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
        let entries: Vec<_> = entries.into_iter().collect();
        let mut buf = Vec::new();
        let mut sizes = Vec::with_capacity(entries.len());
        for entry in &entries {
            codec::encode_into(entry, &mut buf)?;
            batch.put_cf(cf, u64_key(entry.index()), &buf);
            sizes.push(buf.len());
        }
        let mut recent = self.recent();
        if let Err(e) = self.db.write(batch) {
            // Whatever the database holds now, the copy may not match it.
            recent.clear();
            return Err(io::Error::other(e));
        }
        for (entry, size) in entries.into_iter().zip(sizes) {
            recent.push(entry, size);
        }
        drop(recent);
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
        let mut recent = self.recent();
        recent.truncate_from(from);
        let deleted = self
            .db
            .delete_range_cf(cf, u64_key(from), u64_key(u64::MAX))
            // The last index itself is excluded by delete_range's half-open end.
            .and_then(|()| self.db.delete_cf(cf, u64_key(u64::MAX)));
        if deleted.is_err() {
            // The database may still hold entries the copy no longer has.
            recent.clear();
        }
        deleted.map_err(io::Error::other)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // Record the purge point first: entries at or below it are ignored
        // from then on, so a crash between the two steps leaves no hole.
        self.put_meta(LAST_PURGED_KEY, &log_id)?;
        self.recent().purge_to(log_id.index());
        let cf = self.cf(CF_LOGS)?;
        self.db
            .delete_range_cf(cf, u64_key(0), u64_key(log_id.index() + 1))
            .map_err(io::Error::other)?;
        // The range tombstone hides the entries; whole table files under it
        // are dropped now rather than read and rewritten by a compaction
        // (which took most of a leader's compaction CPU). Readers of the
        // log hold iterators, which keep the files they started on.
        self.db
            .delete_file_in_range_cf(cf, u64_key(0), u64_key(log_id.index()))
            .map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data_dir::DataDir;
    use openraft::testing::{blank_ent, log_id};

    async fn append(log: &mut LogStore, indexes: std::ops::RangeInclusive<u64>, term: u64) {
        let entries = indexes.map(|i| blank_ent::<TypeConfig>(term, 1, i));
        log.append(entries, IOFlushed::noop()).await.unwrap();
    }

    /// What the in-memory copy serves equals what the database holds,
    /// through appends, overwrites, truncation and purge.
    #[tokio::test]
    async fn recent_entries_match_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path(), "test", 1).unwrap();
        let mut log = LogStore::new(data.db.clone()).unwrap();
        append(&mut log, 1..=10, 1).await;
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 6)))
            .await
            .unwrap();
        append(&mut log, 7..=12, 2).await;
        // Overwritten without a truncation first, then a gap.
        append(&mut log, 11..=11, 3).await;
        log.purge(log_id::<TypeConfig>(1, 1, 3)).await.unwrap();
        append(&mut log, 20..=21, 3).await;
        assert_eq!(log.recent().first_index(), Some(20));
        // Each blank entry encodes to a few bytes: the copy's size is theirs.
        let bytes = log.recent().bytes;
        assert!(bytes > 0 && bytes < 2 * 64, "{bytes}");

        let mut from_db = LogStore::new(data.db.clone()).unwrap();
        for (start, end) in [(0, 30), (4, 8), (11, 11), (12, 25), (20, 21), (21, 40)] {
            let cached = log.try_get_log_entries(start..=end).await.unwrap();
            let stored = from_db.try_get_log_entries(start..=end).await.unwrap();
            let ids = |v: &[EntryOf<TypeConfig>]| v.iter().map(|e| e.log_id()).collect::<Vec<_>>();
            assert_eq!(ids(&cached), ids(&stored), "{start}..={end}");
        }
    }

    /// A purge drops the table files it covers at once (those below level
    /// 0), and leaves the entries after it readable.
    #[tokio::test]
    async fn purge_drops_the_tables_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path(), "test", 1).unwrap();
        let mut log = LogStore::new(data.db.clone()).unwrap();
        let log_tables = || {
            let files = data.db.live_files().unwrap();
            files
                .iter()
                .filter(|f| f.column_family_name == CF_LOGS)
                .count()
        };
        let cf = data.db.cf_handle(CF_LOGS).unwrap();
        // Each hundred in a table of its own below level 0, where a busy
        // log's tables go (the purge leaves level 0 to compactions).
        for first in [1, 101, 201] {
            append(&mut log, first..=first + 99, 1).await;
            data.db.flush_cf(cf).unwrap();
            let (from, to) = (u64_key(first), u64_key(first + 99));
            data.db.compact_range_cf(cf, Some(from), Some(to));
        }
        assert_eq!(log_tables(), 3);
        log.purge(log_id::<TypeConfig>(1, 1, 250)).await.unwrap();
        // The third table still holds 251..=300.
        assert_eq!(log_tables(), 1);
        let mut from_db = LogStore::new(data.db.clone()).unwrap();
        let left = from_db.try_get_log_entries(0..=400).await.unwrap();
        let indexes: Vec<u64> = left.iter().map(|e| e.log_id().index()).collect();
        assert_eq!(indexes, (251..=300).collect::<Vec<_>>());
    }

    /// The copy keeps at most RECENT_BYTES of entries (but always the
    /// newest); older ones are read from the database.
    #[test]
    fn recent_entries_are_bounded_in_bytes() {
        let mut recent = Recent::default();
        let quarter = RECENT_BYTES / 4;
        for i in 1..=6 {
            recent.push(blank_ent::<TypeConfig>(1, 1, i), quarter);
        }
        assert_eq!(recent.first_index(), Some(3));
        assert_eq!(recent.bytes, RECENT_BYTES);
        recent.push(blank_ent::<TypeConfig>(1, 1, 7), 2 * RECENT_BYTES);
        assert_eq!(recent.first_index(), Some(7));
        assert_eq!(recent.bytes, 2 * RECENT_BYTES);
        recent.truncate_from(7);
        assert_eq!((recent.first_index(), recent.bytes), (None, 0));
    }
}
