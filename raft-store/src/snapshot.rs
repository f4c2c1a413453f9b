//! Snapshot files: the whole state machine at one log position, streamed to
//! disk from a RocksDB point-in-time view, so building one never blocks
//! apply. The same file is what a lagging follower receives over QUIC and
//! what `export`/`import` write and read for backup and restore.
//!
//! Layout: `MAGIC`, then records `tag u8 · key len u32 · key · value len u32 ·
//! value`, then `TAG_END` and a CRC-32 of every byte before it.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::type_config::alias::SnapshotMetaOf;
use rocksdb::{ColumnFamily, WriteBatch, DB};

use crate::codec;
use crate::data_dir::{CF_HISTORY, CF_KV, CF_LEASES, CF_LEASE_KEYS, CF_SM_META};
use crate::kv_state::{KvRead, COMPACT_REVISION_KEY, LEASE_ID_KEY, REVISION_KEY};
use crate::types::TypeConfig;

const MAGIC: &[u8; 8] = b"PBXSNAP1";
const TAG_END: u8 = 0;
const TAG_META: u8 = 1;
/// Tags of state-machine rows: the column family each belongs to.
const ROW_CFS: [(u8, &str); 5] = [
    (2, CF_KV),
    (3, CF_LEASES),
    (4, CF_LEASE_KEYS),
    (5, CF_HISTORY),
    (6, CF_SM_META),
];
/// sm_meta keys that travel in a snapshot; applied log id and membership
/// travel in the openraft meta record instead.
const SNAPSHOT_SM_META_KEYS: [&[u8]; 3] = [REVISION_KEY, COMPACT_REVISION_KEY, LEASE_ID_KEY];
/// A record longer than this is corruption, not data.
const MAX_RECORD: u32 = 256 << 20;

/// A snapshot on disk: what openraft hands around as `SnapshotData`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a raft-store snapshot ({detail})")]
    Invalid { path: PathBuf, detail: String },
}

impl From<SnapshotError> for io::Error {
    fn from(e: SnapshotError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e.to_string())
    }
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> CrcWriter<W> {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        self.inner.write_all(bytes)
    }

    fn record(&mut self, tag: u8, key: &[u8], value: &[u8]) -> io::Result<()> {
        let too_long = |_| io::Error::other("record over 4 GiB");
        self.put(&[tag])?;
        self.put(&u32::try_from(key.len()).map_err(too_long)?.to_be_bytes())?;
        self.put(key)?;
        self.put(&u32::try_from(value.len()).map_err(too_long)?.to_be_bytes())?;
        self.put(value)
    }
}

/// Writes a snapshot of `reader` (a point-in-time view) to `path`; returns its size.
pub fn write(
    db: &DB,
    reader: &impl KvRead,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
) -> Result<u64, SnapshotError> {
    let io_err = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    let file = File::create(&tmp).map_err(io_err)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    let body = (|| -> io::Result<()> {
        w.put(MAGIC)?;
        w.record(TAG_META, &[], &codec::encode(meta)?)?;
        for (tag, cf_name) in ROW_CFS {
            let cf = cf(db, cf_name)?;
            if cf_name == CF_SM_META {
                for key in SNAPSHOT_SM_META_KEYS {
                    if let Some(value) = reader.get(cf, key)? {
                        w.record(tag, key, &value)?;
                    }
                }
                continue;
            }
            for item in reader.scan_from(cf, &[]) {
                let (key, value) = item?;
                w.record(tag, &key, &value)?;
            }
        }
        let crc = w.crc.clone().finalize();
        w.put(&[TAG_END])?;
        w.inner.write_all(&crc.to_be_bytes())?;
        w.inner.flush()?;
        w.inner.get_ref().sync_all()
    })();
    body.map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)?;
    Ok(w.len + 4)
}

fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io::Error::other(format!("column family {name} missing")))
}

/// A record: tag, key, value.
type Record = (u8, Vec<u8>, Vec<u8>);

/// Reads a snapshot file record by record, checking the CRC at the end.
struct Records {
    path: PathBuf,
    inner: BufReader<File>,
    crc: crc32fast::Hasher,
}

impl Records {
    fn open(path: &Path) -> Result<Self, SnapshotError> {
        let file = File::open(path).map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut r = Records {
            path: path.to_path_buf(),
            inner: BufReader::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.invalid("bad magic"));
        }
        Ok(r)
    }

    fn invalid(&self, detail: impl Into<String>) -> SnapshotError {
        SnapshotError::Invalid {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner
            .read_exact(buf)
            .map_err(|e| self.invalid(format!("truncated: {e}")))?;
        self.crc.update(buf);
        Ok(())
    }

    fn take_vec(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let len = u32::from_be_bytes(len);
        if len > MAX_RECORD {
            return Err(self.invalid(format!("record of {len} bytes")));
        }
        let mut buf = vec![0u8; len as usize];
        self.take(&mut buf)?;
        Ok(buf)
    }

    /// The next record, or `None` after a verified end.
    fn next_record(&mut self) -> Result<Option<Record>, SnapshotError> {
        let mut tag = [0u8; 1];
        self.inner
            .read_exact(&mut tag)
            .map_err(|e| self.invalid(format!("truncated: {e}")))?;
        if tag[0] == TAG_END {
            // The CRC covers everything before the end tag.
            let expected = self.crc.clone().finalize();
            let mut crc = [0u8; 4];
            self.inner
                .read_exact(&mut crc)
                .map_err(|e| self.invalid(format!("truncated: {e}")))?;
            if u32::from_be_bytes(crc) != expected {
                return Err(self.invalid("checksum mismatch"));
            }
            return Ok(None);
        }
        self.crc.update(&tag);
        let key = self.take_vec()?;
        let value = self.take_vec()?;
        Ok(Some((tag[0], key, value)))
    }
}

/// Reads only the openraft meta record of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMetaOf<TypeConfig>, SnapshotError> {
    let mut r = Records::open(path)?;
    match r.next_record()? {
        Some((TAG_META, _, value)) => {
            codec::decode(&value).map_err(|e| r.invalid(format!("meta record: {e}")))
        }
        _ => Err(r.invalid("first record is not the meta record")),
    }
}

/// Loads a whole snapshot file into one write batch that replaces the state
/// machine's rows. Nothing is written unless the file checks out.
pub fn load_into_batch(
    db: &DB,
    path: &Path,
    batch: &mut WriteBatch,
) -> Result<SnapshotMetaOf<TypeConfig>, SnapshotError> {
    let mut r = Records::open(path)?;
    let meta: SnapshotMetaOf<TypeConfig> = match r.next_record()? {
        Some((TAG_META, _, value)) => {
            codec::decode(&value).map_err(|e| r.invalid(format!("meta record: {e}")))?
        }
        _ => return Err(r.invalid("first record is not the meta record")),
    };
    let io_err = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    for (_, cf_name) in ROW_CFS {
        let cf = cf(db, cf_name).map_err(io_err)?;
        if cf_name == CF_SM_META {
            for key in SNAPSHOT_SM_META_KEYS {
                batch.delete_cf(cf, key);
            }
            continue;
        }
        for item in db.scan_from(cf, &[]) {
            let (key, _) = item.map_err(io_err)?;
            batch.delete_cf(cf, key);
        }
    }
    while let Some((tag, key, value)) = r.next_record()? {
        let Some((_, cf_name)) = ROW_CFS.iter().find(|(t, _)| *t == tag) else {
            return Err(r.invalid(format!("unknown record tag {tag}")));
        };
        let cf = cf(db, cf_name).map_err(io_err)?;
        batch.put_cf(cf, key, value);
    }
    Ok(meta)
}
