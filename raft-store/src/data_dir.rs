//! The node's data directory: one RocksDB holding the Raft log, the vote and
//! the state machine in column families, plus a folder of snapshot files.
//!
//! Opening refuses anything it did not create itself, so a wrong path in a
//! config file never damages somebody else's data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::types::NodeId;

/// Raft log entries by index.
pub const CF_LOGS: &str = "logs";
/// Vote, last purged log id, committed log id, identity and format.
pub const CF_LOG_META: &str = "log_meta";
/// Live keys.
pub const CF_KV: &str = "kv";
/// Leases by id.
pub const CF_LEASES: &str = "leases";
/// `lease id ++ key` for every key attached to a lease.
pub const CF_LEASE_KEYS: &str = "lease_keys";
/// Change events by `revision ++ sequence`, for watches.
pub const CF_HISTORY: &str = "history";
/// Last applied log id, membership, revision, compact revision.
pub const CF_SM_META: &str = "sm_meta";

pub const ALL_CFS: [&str; 7] = [
    CF_LOGS,
    CF_LOG_META,
    CF_KV,
    CF_LEASES,
    CF_LEASE_KEYS,
    CF_HISTORY,
    CF_SM_META,
];

/// Bumped on any incompatible change of what is stored.
pub const FORMAT_VERSION: u32 = 1;
const IDENTITY_KEY: &[u8] = b"identity";

/// Written on creation; checked on every open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    format_version: u32,
    cluster_id: String,
    node_id: NodeId,
}

/// Why a data directory cannot be used. Each names the path and the problem.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {detail}")]
    Io { path: PathBuf, detail: String },
    #[error("{path}: not a raft-store data directory ({detail}); refusing to touch it")]
    Foreign { path: PathBuf, detail: String },
    #[error("{path}: data directory is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: written by a newer raft-store (format {found}, this build reads up to {supported}); refusing to open")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: belongs to {detail}; refusing to open")]
    WrongOwner { path: PathBuf, detail: String },
}

/// RocksDB's memory is bounded, not proportional to the data: writes are
/// durable once in the WAL (fsynced by the log's group commit), so
/// memtables only need to be large enough to batch flushes, and reads of
/// live keys mostly hit bloom filters or the newest memtable. With
/// RocksDB's defaults (a 64 MiB memtable per column family, two of them,
/// and a 32 MiB block cache per column family) its memory could grow with
/// the data to over 1 GiB.
///
/// One block cache shared by every column family.
const BLOCK_CACHE_BYTES: usize = 16 << 20;
/// One memtable (of at most two) of a column family that takes a write
/// per command (log entries, live keys, history); the others take small
/// rows.
const BUSY_MEMTABLE_BYTES: usize = 8 << 20;
const QUIET_MEMTABLE_BYTES: usize = 2 << 20;
/// All memtables together: past this the largest is flushed, so three busy
/// column families never hold their 48 MiB at once.
const ALL_MEMTABLES_BYTES: usize = 16 << 20;

/// An open data directory.
pub struct DataDir {
    pub db: Arc<DB>,
    pub root: PathBuf,
    /// The block cache every column family shares (for its usage figure).
    pub block_cache: Cache,
}

impl DataDir {
    pub fn db_path(root: &Path) -> PathBuf {
        root.join("db")
    }

    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// Opens `root`, creating it only if it is missing or empty.
    pub fn open(root: &Path, cluster_id: &str, node_id: NodeId) -> Result<DataDir, DataDirError> {
        let io_err = |path: &Path, e: std::io::Error| DataDirError::Io {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
        let db_path = Self::db_path(root);
        let fresh = match std::fs::read_dir(root) {
            Ok(mut entries) => {
                if entries.next().is_none() {
                    true
                } else if !db_path.join("CURRENT").is_file() {
                    return Err(DataDirError::Foreign {
                        path: root.to_path_buf(),
                        detail: "it is not empty and has no db/CURRENT".into(),
                    });
                } else {
                    false
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err(root, e)),
        };
        if fresh {
            std::fs::create_dir_all(&db_path).map_err(|e| io_err(&db_path, e))?;
        }
        std::fs::create_dir_all(root.join("snapshots")).map_err(|e| io_err(root, e))?;

        let want = Identity {
            format_version: FORMAT_VERSION,
            cluster_id: cluster_id.to_string(),
            node_id,
        };
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        if !fresh {
            // Check whose directory this is through a read-only open first:
            // a refused directory gets no new manifest or log file.
            let ro = DB::open_cf_for_read_only(&opts, &db_path, ALL_CFS, false)
                .map_err(|e| classify_open_error(&db_path, e))?;
            match read_identity(&ro, &db_path)? {
                Some(found) => check_identity(&found, &want, &db_path)?,
                None => {
                    return Err(DataDirError::Foreign {
                        path: db_path,
                        detail: "a RocksDB without a raft-store identity record".into(),
                    })
                }
            }
        }
        opts.create_if_missing(fresh);
        opts.create_missing_column_families(fresh);
        // A write only fills RocksDB's WAL buffer; the log's group-commit
        // thread writes and fsyncs it (`flush_wal(true)`), so a burst of
        // appends and applies costs one write(2) and one fsync, not one
        // write(2) each. Sync writes (vote, snapshot install) flush it too.
        opts.set_manual_wal_flush(true);
        opts.set_db_write_buffer_size(ALL_MEMTABLES_BYTES);
        let block_cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &block_cache)));
        let db = DB::open_cf_descriptors(&opts, &db_path, cfs)
            .map_err(|e| classify_open_error(&db_path, e))?;
        if fresh {
            let meta = db
                .cf_handle(CF_LOG_META)
                .ok_or_else(|| DataDirError::Foreign {
                    path: db_path.clone(),
                    detail: format!("column family {CF_LOG_META} is missing"),
                })?;
            let bytes = codec::encode(&want).map_err(|e| DataDirError::Io {
                path: db_path.clone(),
                detail: e.to_string(),
            })?;
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(meta, IDENTITY_KEY, bytes, &wo)
                .map_err(|e| classify_open_error(&db_path, e))?;
        }
        let db = Arc::new(db);
        Ok(DataDir {
            db,
            root: root.to_path_buf(),
            block_cache,
        })
    }
}

fn read_identity(db: &DB, db_path: &Path) -> Result<Option<Identity>, DataDirError> {
    let meta = db
        .cf_handle(CF_LOG_META)
        .ok_or_else(|| DataDirError::Foreign {
            path: db_path.to_path_buf(),
            detail: format!("column family {CF_LOG_META} is missing"),
        })?;
    let Some(bytes) = db
        .get_cf(meta, IDENTITY_KEY)
        .map_err(|e| classify_open_error(db_path, e))?
    else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|e| DataDirError::Corrupt {
            path: db_path.to_path_buf(),
            detail: format!("identity record unreadable: {e}"),
        })
}

fn check_identity(found: &Identity, want: &Identity, db_path: &Path) -> Result<(), DataDirError> {
    if found.format_version > FORMAT_VERSION {
        return Err(DataDirError::NewerFormat {
            path: db_path.to_path_buf(),
            found: found.format_version,
            supported: FORMAT_VERSION,
        });
    }
    if found.cluster_id != want.cluster_id || found.node_id != want.node_id {
        return Err(DataDirError::WrongOwner {
            path: db_path.to_path_buf(),
            detail: format!(
                "cluster {:?} node {}, not cluster {:?} node {}",
                found.cluster_id, found.node_id, want.cluster_id, want.node_id
            ),
        });
    }
    Ok(())
}

fn cf_options(name: &str, block_cache: &Cache) -> Options {
    let mut o = Options::default();
    // Uncompressed: a PBX's state is hundreds of MB at most, and LZ4 cost
    // about half of a follower's compaction CPU under a registration load.
    o.set_compression_type(rocksdb::DBCompressionType::None);
    o.set_write_buffer_size(match name {
        CF_LOGS | CF_KV | CF_HISTORY => BUSY_MEMTABLE_BYTES,
        _ => QUIET_MEMTABLE_BYTES,
    });
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(block_cache);
    if name == CF_KV {
        // Every put looks its key up first (for version and create
        // revision); most new keys are absent, which bloom filters answer
        // without searching the memtable or reading table blocks.
        table.set_bloom_filter(10.0, false);
        o.set_memtable_prefix_bloom_ratio(0.02);
        o.set_memtable_whole_key_filtering(true);
    }
    o.set_block_based_table_factory(&table);
    o
}

fn classify_open_error(path: &Path, e: rocksdb::Error) -> DataDirError {
    let detail = e.into_string();
    if detail.contains("Corruption") || detail.contains("checksum") || detail.contains("bad magic")
    {
        DataDirError::Corrupt {
            path: path.to_path_buf(),
            detail,
        }
    } else if detail.contains("Column famil") || detail.contains("does not exist") {
        DataDirError::Foreign {
            path: path.to_path_buf(),
            detail,
        }
    } else {
        DataDirError::Io {
            path: path.to_path_buf(),
            detail,
        }
    }
}

/// Big-endian so that RocksDB's byte order is numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn key_u64(bytes: &[u8]) -> Option<u64> {
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(arr))
}

/// Overwrites the stored format version; only for tests of the refusal path.
#[doc(hidden)]
pub fn set_format_version_for_test(root: &Path, version: u32) -> Result<(), DataDirError> {
    let db_path = DataDir::db_path(root);
    let db = DB::open_cf(&Options::default(), &db_path, ALL_CFS)
        .map_err(|e| classify_open_error(&db_path, e))?;
    let mut id = read_identity(&db, &db_path)?.ok_or_else(|| DataDirError::Foreign {
        path: db_path.clone(),
        detail: "no identity record".into(),
    })?;
    id.format_version = version;
    let bytes = codec::encode(&id).map_err(|e| DataDirError::Io {
        path: db_path.clone(),
        detail: e.to_string(),
    })?;
    let meta = db
        .cf_handle(CF_LOG_META)
        .ok_or_else(|| DataDirError::Foreign {
            path: db_path.clone(),
            detail: "no meta column family".into(),
        })?;
    db.put_cf(meta, IDENTITY_KEY, bytes)
        .map_err(|e| classify_open_error(&db_path, e))
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;

    fn memtables_bytes(db: &DB, name: &str) -> u64 {
        let cf = db.cf_handle(name).expect("column family");
        db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
            .expect("property")
            .expect("value")
    }

    /// Memtables and the block cache stay within their bounds however much
    /// is written and read: the node's memory does not grow with its data.
    #[test]
    fn rocksdb_memory_is_bounded_not_proportional_to_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path(), "test", 1).unwrap();
        let db = &data.db;
        // Random values: compression cannot make them small.
        let mut value = vec![0u8; 4096];
        let mut rng = rand::rng();
        for (name, count) in [(CF_KV, 12_000u32), (CF_LEASES, 2_000)] {
            let cf = db.cf_handle(name).unwrap();
            for i in 0..count {
                rng.fill_bytes(&mut value);
                db.put_cf(cf, i.to_be_bytes(), &value).unwrap();
            }
        }
        // 48 MiB into kv, 8 MiB into leases: more than a memtable each.
        let kv = memtables_bytes(db, CF_KV);
        assert!(kv <= 2 * BUSY_MEMTABLE_BYTES as u64, "kv memtables {kv}");
        let leases = memtables_bytes(db, CF_LEASES);
        assert!(
            leases <= 2 * QUIET_MEMTABLE_BYTES as u64,
            "leases memtables {leases}"
        );
        // Reading everything back goes through the one shared cache.
        for name in [CF_KV, CF_LEASES] {
            let cf = db.cf_handle(name).unwrap();
            db.flush_cf(cf).unwrap();
            for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                item.unwrap();
            }
        }
        let cached = data.block_cache.get_usage();
        assert!(
            cached > BLOCK_CACHE_BYTES / 2 && cached <= BLOCK_CACHE_BYTES,
            "block cache {cached}"
        );
    }
}
