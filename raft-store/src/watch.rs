//! Watches: every change to a key range from a revision on, in commit order,
//! with no gap and no duplicate. A watcher replays stored history until it
//! reaches the live stream, and falls back to history whenever the live
//! stream skips (a slow watcher lagging, a snapshot install).

use std::collections::VecDeque;
use std::sync::Arc;

use rocksdb::DB;
use tokio::sync::broadcast;

use crate::client::StoreError;
use crate::kv_state::{self, Cfs, Revisions};
use crate::state_machine::WatchSignal;
use crate::types::{KeyRange, WatchBatch};

/// How many revisions one history read returns.
const HISTORY_PAGE: usize = 512;

pub struct Watcher {
    db: Arc<DB>,
    range: KeyRange,
    /// Which keys of the range the watcher wants (see [`Watcher::only`]).
    wanted: fn(&[u8]) -> bool,
    /// The next revision this watcher has not delivered or skipped.
    next: u64,
    live: broadcast::Receiver<WatchSignal>,
    catching_up: bool,
    ready: VecDeque<WatchBatch>,
}

fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(e.to_string())
}

impl Watcher {
    /// `from_revision` 0 means "changes after now".
    pub(crate) fn new(
        db: Arc<DB>,
        live: broadcast::Receiver<WatchSignal>,
        range: KeyRange,
        from_revision: u64,
    ) -> Result<Watcher, StoreError> {
        // Subscribed before reading the revision: nothing committed after
        // this point can be missed.
        let revs = Revisions::load(db.as_ref(), &Cfs::of(&db).map_err(fatal)?).map_err(fatal)?;
        let next = if from_revision == 0 {
            revs.revision + 1
        } else {
            from_revision
        };
        if next < revs.compact_revision {
            return Err(StoreError::Compacted {
                requested: next,
                compact_revision: revs.compact_revision,
            });
        }
        Ok(Watcher {
            db,
            range,
            wanted: |_| true,
            next,
            live,
            catching_up: true,
            ready: VecDeque::new(),
        })
    }

    /// Delivers only the changes to keys `wanted` accepts: the others are
    /// not copied, and revisions with none of them are skipped.
    pub fn only(mut self, wanted: fn(&[u8]) -> bool) -> Watcher {
        self.wanted = wanted;
        self
    }

    /// Where to resume after the last batch returned: the next batch will be
    /// at or after this revision.
    pub fn next_revision(&self) -> u64 {
        self.ready.front().map_or(self.next, |b| b.revision)
    }

    /// The next revision with changes in the watched range.
    pub async fn next(&mut self) -> Result<WatchBatch, StoreError> {
        loop {
            if let Some(batch) = self.ready.pop_front() {
                return Ok(batch);
            }
            if self.catching_up {
                self.read_history()?;
                continue;
            }
            match self.live.recv().await {
                Ok(WatchSignal::Changes(batch)) => {
                    if batch.revision < self.next {
                        continue;
                    }
                    if batch.revision > self.next {
                        self.catching_up = true;
                        continue;
                    }
                    self.next = batch.revision + 1;
                    if let Some(filtered) = self.filter(&batch) {
                        return Ok(filtered);
                    }
                }
                Ok(WatchSignal::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.catching_up = true
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Fatal("store shut down".into()))
                }
            }
        }
    }

    fn filter(&self, batch: &WatchBatch) -> Option<WatchBatch> {
        let events: Vec<_> = batch
            .events
            .iter()
            .filter(|e| self.range.contains(&e.kv.key) && (self.wanted)(&e.kv.key))
            .cloned()
            .collect();
        (!events.is_empty()).then_some(WatchBatch {
            revision: batch.revision,
            events,
        })
    }

    /// Reads one page of stored history from `next`; leaves catch-up mode
    /// when history has nothing more.
    fn read_history(&mut self) -> Result<(), StoreError> {
        let cfs = Cfs::of(&self.db).map_err(fatal)?;
        let view = self.db.snapshot();
        let revs = Revisions::load(&view, &cfs).map_err(fatal)?;
        if self.next < revs.compact_revision {
            return Err(StoreError::Compacted {
                requested: self.next,
                compact_revision: revs.compact_revision,
            });
        }
        let page = kv_state::history_since(&view, &cfs, self.next, HISTORY_PAGE).map_err(fatal)?;
        if page.len() < HISTORY_PAGE {
            self.catching_up = false;
        }
        for batch in page {
            self.next = batch.revision + 1;
            if let Some(filtered) = self.filter(&batch) {
                self.ready.push_back(filtered);
            }
        }
        Ok(())
    }
}
