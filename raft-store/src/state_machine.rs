//! openraft's state machine over [`kv_state`]: applies committed entries,
//! tells watchers and the lease keeper, builds and installs snapshots.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{WriteBatch, DB};
use tokio::sync::{broadcast, mpsc};

use crate::codec;
use crate::data_dir::CF_SM_META;
use crate::kv_state::{self, Cfs, ColdScan, KvRead, LeaseChange, Revisions};
use crate::metrics::Metrics;
use crate::pending::Pending;
use crate::snapshot::{self, SnapshotFile};
use crate::types::{CommandResult, StoreSnapshot, TypeConfig, WatchBatch};

const LAST_APPLIED_KEY: &[u8] = b"last_applied";
const MEMBERSHIP_KEY: &[u8] = b"membership";

/// What the state machine tells watchers.
#[derive(Debug, Clone)]
pub enum WatchSignal {
    /// The changes of one revision, in commit order.
    Changes(Arc<WatchBatch>),
    /// A snapshot replaced the state: watchers re-read history.
    Reset,
}

/// What the state machine tells the leader's lease clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseSignal {
    Changed(LeaseChange),
    /// A snapshot replaced every lease.
    Reset,
}

type DbSnapshot<'a> = rocksdb::Snapshot<'a>;

self_cell::self_cell!(
    /// A RocksDB point-in-time view that owns its database handle, so a
    /// snapshot can be built on another task while apply goes on.
    struct OwnedView {
        owner: Arc<DB>,
        #[covariant]
        dependent: DbSnapshot,
    }
);

pub struct StateMachine {
    db: Arc<DB>,
    revs: Revisions,
    snapshot_dir: PathBuf,
    watch_tx: broadcast::Sender<WatchSignal>,
    lease_tx: mpsc::UnboundedSender<LeaseSignal>,
    metrics: Arc<Metrics>,
}

impl StateMachine {
    pub fn new(
        db: Arc<DB>,
        snapshot_dir: PathBuf,
        watch_tx: broadcast::Sender<WatchSignal>,
        lease_tx: mpsc::UnboundedSender<LeaseSignal>,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let revs = Revisions::load(db.as_ref(), &Cfs::of(&db)?)?;
        Ok(StateMachine {
            db,
            revs,
            snapshot_dir,
            watch_tx,
            lease_tx,
            metrics,
        })
    }

    fn read_applied(
        reader: &impl KvRead,
        db: &DB,
    ) -> io::Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>)> {
        let meta = db
            .cf_handle(CF_SM_META)
            .ok_or_else(|| io::Error::other("column family sm_meta missing"))?;
        let applied = match reader.get(meta, LAST_APPLIED_KEY)? {
            None => None,
            Some(bytes) => codec::decode::<Option<LogIdOf<TypeConfig>>>(&bytes)?,
        };
        let membership = match reader.get(meta, MEMBERSHIP_KEY)? {
            None => StoredMembershipOf::<TypeConfig>::default(),
            Some(bytes) => codec::decode(&bytes)?,
        };
        Ok((applied, membership))
    }

    /// The newest snapshot file in the snapshot folder, if any.
    fn newest_snapshot_path(&self) -> io::Result<Option<PathBuf>> {
        let mut newest: Option<PathBuf> = None;
        for entry in std::fs::read_dir(&self.snapshot_dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "snap")
                && newest.as_ref().is_none_or(|n| path > *n)
            {
                newest = Some(path);
            }
        }
        Ok(newest)
    }
}

/// Snapshot files are named so that name order is log order.
fn snapshot_path(dir: &Path, meta: &SnapshotMetaOf<TypeConfig>) -> PathBuf {
    let index = meta.last_log_id.as_ref().map_or(0, |id| id.index());
    let nonce: u32 = rand::random();
    dir.join(format!("{index:020}-{nonce:08x}.snap"))
}

/// Removes every snapshot file but `keep`.
fn remove_other_snapshots(dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path != keep
            && path
                .extension()
                .is_some_and(|e| e == "snap" || e == "partial")
        {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove old snapshot");
            }
        }
    }
}

pub struct SnapshotBuilder {
    view: Arc<OwnedView>,
    dir: PathBuf,
    metrics: Arc<Metrics>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<StoreSnapshot, io::Error> {
        let started = Instant::now();
        let (applied, membership) = self
            .view
            .with_dependent(|db, view| StateMachine::read_applied(view, db))?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: applied,
            last_membership: membership,
        };
        let path = snapshot_path(&self.dir, &meta);
        let (view, write_meta, write_path) = (self.view.clone(), meta.clone(), path.clone());
        let size = tokio::task::spawn_blocking(move || {
            view.with_dependent(|db, view| {
                snapshot::write(db, &ColdScan(view), &write_meta, &write_path)
            })
        })
        .await
        .map_err(io::Error::other)??;
        remove_other_snapshots(&self.dir, &path);
        self.metrics.snapshot_size_bytes.set(size as i64);
        self.metrics
            .snapshot_duration_seconds
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(path = %path.display(), size, "snapshot built");
        Ok(StoreSnapshot {
            meta,
            snapshot: SnapshotFile { path },
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        Self::read_applied(self.db.as_ref(), &self.db)
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let db = self.db.clone();
        let cfs = Cfs::of(&db)?;
        let meta_cf = cfs.meta();
        // Every entry of this call goes into one write; the results wait
        // until it is done, so nobody hears of a change before it is readable.
        let mut pending = Pending::new(&db, &cfs);
        let mut revs = self.revs;
        let mut last_applied = None;
        let mut outcomes = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            let log_id = entry.log_id();
            let applied = match &entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(cmd) => Some(kv_state::apply(
                    &mut pending,
                    &cfs,
                    &mut revs,
                    log_id.index(),
                    cmd,
                )?),
                EntryPayload::Membership(m) => {
                    let stored = StoredMembershipOf::<TypeConfig>::new(Some(log_id), m.clone());
                    pending.put(meta_cf, MEMBERSHIP_KEY, codec::encode(&stored)?)?;
                    None
                }
            };
            last_applied = Some(log_id);
            outcomes.push((applied, responder));
        }
        if last_applied.is_some() {
            pending.put(meta_cf, LAST_APPLIED_KEY, codec::encode(&last_applied)?)?;
        }
        // Durability comes from the log: this write reaches the WAL with
        // the next group commit; a crash before it only means re-applying
        // these entries from the log.
        pending.write()?;
        self.revs = revs;

        for (applied, responder) in outcomes {
            let result = match applied {
                None => CommandResult::None,
                Some(applied) => {
                    for events in applied.events {
                        // No receiver is fine: nobody watches.
                        let _ = self.watch_tx.send(WatchSignal::Changes(Arc::new(events)));
                    }
                    for change in applied.lease_changes {
                        let _ = self.lease_tx.send(LeaseSignal::Changed(change));
                    }
                    applied.result
                }
            };
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            view: Arc::new(OwnedView::new(self.db.clone(), |db| db.snapshot())),
            dir: self.snapshot_dir.clone(),
            metrics: self.metrics.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let applied = codec::encode(&meta.last_log_id)?;
        let membership = codec::encode(&meta.last_membership)?;
        let (load_db, path) = (db.clone(), snapshot.path.clone());
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            let meta_cf = load_db
                .cf_handle(CF_SM_META)
                .ok_or_else(|| io::Error::other("column family sm_meta missing"))?;
            let mut batch = WriteBatch::default();
            snapshot::load_into_batch(&load_db, &path, &mut batch)?;
            batch.put_cf(meta_cf, LAST_APPLIED_KEY, applied);
            batch.put_cf(meta_cf, MEMBERSHIP_KEY, membership);
            let mut opts = rocksdb::WriteOptions::default();
            opts.set_sync(true);
            load_db.write_opt(batch, &opts).map_err(io::Error::other)
        })
        .await
        .map_err(io::Error::other)??;
        self.revs = Revisions::load(db.as_ref(), &Cfs::of(&db)?)?;

        // Keep the installed file as this node's current snapshot.
        let kept = if snapshot.path.parent() == Some(self.snapshot_dir.as_path()) {
            snapshot.path.clone()
        } else {
            let dest = snapshot_path(&self.snapshot_dir, meta);
            if std::fs::rename(&snapshot.path, &dest).is_err() {
                std::fs::copy(&snapshot.path, &dest)?;
            }
            dest
        };
        remove_other_snapshots(&self.snapshot_dir, &kept);
        let _ = self.watch_tx.send(WatchSignal::Reset);
        let _ = self.lease_tx.send(LeaseSignal::Reset);
        tracing::info!(last_log_id = ?meta.last_log_id, revision = self.revs.revision, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<StoreSnapshot>, io::Error> {
        let Some(path) = self.newest_snapshot_path()? else {
            return Ok(None);
        };
        let meta = snapshot::read_meta(&path)?;
        Ok(Some(StoreSnapshot {
            meta,
            snapshot: SnapshotFile { path },
        }))
    }
}
