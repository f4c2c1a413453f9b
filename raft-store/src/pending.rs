//! The writes of one `apply` call on their way to RocksDB. Every command of
//! the call reads through them, so it sees what the commands before it
//! wrote, and all of them reach the database in one write: one WAL record
//! per call instead of one per entry.

use std::collections::BTreeMap;
use std::io;
use std::iter::Peekable;
use std::ops::Bound;

use rocksdb::{ColumnFamily, WriteBatch, DB};

use crate::kv_state::{Cfs, KvRead, Row, Rows, CF_COUNT};

/// Per column family: key → new value, `None` for a deletion.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct Pending<'a> {
    db: &'a DB,
    families: [&'a ColumnFamily; CF_COUNT],
    writes: [Writes; CF_COUNT],
    /// Ranges `[from, to)` deleted by this batch, by family: they hide
    /// stored rows. Pending writes inside a range are dropped when the
    /// range is deleted, so the ones left were written after it.
    deleted_ranges: [Vec<(Vec<u8>, Vec<u8>)>; CF_COUNT],
}

impl<'a> Pending<'a> {
    pub fn new(db: &'a DB, cfs: &Cfs<'a>) -> Self {
        Pending {
            db,
            families: cfs.families(),
            writes: Default::default(),
            deleted_ranges: Default::default(),
        }
    }

    /// Which of our families `cf` is. The database hands out one handle per
    /// family, so identity tells them apart.
    fn slot(&self, cf: &ColumnFamily) -> io::Result<usize> {
        self.families
            .iter()
            .position(|f| std::ptr::eq(*f, cf))
            .ok_or_else(|| io::Error::other("write to a column family outside the state machine"))
    }

    pub fn put(&mut self, cf: &ColumnFamily, key: &[u8], value: Vec<u8>) -> io::Result<()> {
        let slot = self.slot(cf)?;
        self.writes[slot].insert(key.to_vec(), Some(value));
        Ok(())
    }

    pub fn delete(&mut self, cf: &ColumnFamily, key: &[u8]) -> io::Result<()> {
        let slot = self.slot(cf)?;
        self.writes[slot].insert(key.to_vec(), None);
        Ok(())
    }

    /// Deletes every key in `[from, to)`.
    pub fn delete_range(&mut self, cf: &ColumnFamily, from: &[u8], to: &[u8]) -> io::Result<()> {
        let slot = self.slot(cf)?;
        if from >= to {
            return Ok(());
        }
        let writes = &mut self.writes[slot];
        let mut tail = writes.split_off(from);
        let mut after = tail.split_off(to);
        writes.append(&mut after);
        self.deleted_ranges[slot].push((from.to_vec(), to.to_vec()));
        Ok(())
    }

    /// Writes everything at once. Range deletions go first: every pending
    /// point write was made after the ranges that cover it.
    pub fn write(self) -> io::Result<()> {
        let mut batch = WriteBatch::default();
        for (cf, ranges) in self.families.iter().zip(&self.deleted_ranges) {
            for (from, to) in ranges {
                batch.delete_range_cf(*cf, from, to);
            }
        }
        for (cf, writes) in self.families.iter().zip(self.writes) {
            for (key, value) in writes {
                match value {
                    Some(value) => batch.put_cf(*cf, key, value),
                    None => batch.delete_cf(*cf, key),
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db.write(batch).map_err(io::Error::other)
    }

    fn hidden(&self, slot: usize, key: &[u8]) -> bool {
        self.deleted_ranges[slot]
            .iter()
            .any(|(from, to)| key >= from.as_slice() && key < to.as_slice())
    }
}

impl KvRead for Pending<'_> {
    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let slot = self.slot(cf)?;
        if let Some(value) = self.writes[slot].get(key) {
            return Ok(value.clone());
        }
        if self.hidden(slot, key) {
            return Ok(None);
        }
        KvRead::get(self.db, cf, key)
    }

    fn scan(&self, cf: &ColumnFamily, start: &[u8], end: Option<&[u8]>) -> Rows<'_> {
        let slot = match self.slot(cf) {
            Ok(slot) => slot,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let pending = (
            Bound::Included(start.to_vec()),
            end.map_or(Bound::Unbounded, |end| Bound::Excluded(end.to_vec())),
        );
        Box::new(Merged {
            stored: self.db.scan(cf, start, end).peekable(),
            pending: self.writes[slot].range(pending).peekable(),
            owner: self,
            slot,
        })
    }
}

/// Stored rows overlaid with pending writes, in key order.
struct Merged<'p, 'a> {
    stored: Peekable<Rows<'p>>,
    pending: Peekable<std::collections::btree_map::Range<'p, Vec<u8>, Option<Vec<u8>>>>,
    owner: &'p Pending<'a>,
    slot: usize,
}

impl Iterator for Merged<'_, '_> {
    type Item = io::Result<Row>;

    fn next(&mut self) -> Option<io::Result<Row>> {
        loop {
            let pending_first = match (self.stored.peek(), self.pending.peek()) {
                (None, None) => return None,
                (Some(Err(_)), _) => return self.stored.next(),
                (Some(Ok(_)), None) => false,
                (None, Some(_)) => true,
                (Some(Ok((stored, _))), Some((pending, _))) => {
                    if pending.as_slice() == &stored[..] {
                        // The pending write replaces the stored row.
                        self.stored.next();
                        true
                    } else {
                        pending.as_slice() < &stored[..]
                    }
                }
            };
            if pending_first {
                if let Some((key, Some(value))) = self.pending.next() {
                    return Some(Ok((key.clone().into(), value.clone().into())));
                }
            } else {
                match self.stored.next() {
                    Some(Ok((key, _))) if self.owner.hidden(self.slot, &key) => {}
                    row => return row,
                }
            }
        }
    }
}
