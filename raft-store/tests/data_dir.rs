//! Starting on a data directory that is not ours, is corrupt, or is from a
//! newer version: a clear error naming the path, and nothing overwritten.

use std::path::Path;
use std::time::Duration;

use raft_store::data_dir::{set_format_version_for_test, DataDir};
use raft_store::{ClusterCa, DataDirError, RaftStore, StartError, StoreConfig};

fn config(dir: &Path, node: u64, cluster: &str) -> StoreConfig {
    let ca = ClusterCa::generate("t").unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut c = StoreConfig::new(
        node,
        sock.local_addr().unwrap(),
        dir,
        ca.issue_node(node).unwrap(),
    );
    c.cluster_id = cluster.into();
    c.request_timeout = Duration::from_secs(1);
    c
}

fn snapshot_of_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    // RocksDB's informational LOG files record every open attempt; every
    // other file must stay byte for byte as it was.
    let mut out = Vec::new();
    for entry in walk(dir) {
        if entry
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("LOG"))
        {
            continue;
        }
        out.push((entry.display().to_string(), std::fs::read(&entry).unwrap()));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

async fn start_err(c: StoreConfig) -> StartError {
    match RaftStore::start(c, &prometheus::Registry::new()).await {
        Ok(_) => panic!("started on a bad data dir"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_of_somebody_elses_files_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("important.txt"), b"do not touch").unwrap();
    let before = snapshot_of_dir(dir.path());
    let err = start_err(config(dir.path(), 1, "pbx")).await;
    let msg = err.to_string();
    assert!(
        matches!(err, StartError::DataDir(DataDirError::Foreign { .. })),
        "{msg}"
    );
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert_eq!(snapshot_of_dir(dir.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_or_clusters_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(DataDir::open(dir.path(), "pbx", 1).unwrap());
    let before = snapshot_of_dir(dir.path());
    let err = start_err(config(dir.path(), 2, "pbx")).await;
    assert!(
        matches!(err, StartError::DataDir(DataDirError::WrongOwner { .. })),
        "{err}"
    );
    let err = start_err(config(dir.path(), 1, "other")).await;
    assert!(err.to_string().contains("other"), "{err}");
    assert_eq!(snapshot_of_dir(dir.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(DataDir::open(dir.path(), "pbx", 1).unwrap());
    set_format_version_for_test(dir.path(), 99).unwrap();
    let before = snapshot_of_dir(dir.path());
    let err = start_err(config(dir.path(), 1, "pbx")).await;
    assert!(
        matches!(
            err,
            StartError::DataDir(DataDirError::NewerFormat { found: 99, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
    assert_eq!(snapshot_of_dir(dir.path()), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let data = DataDir::open(dir.path(), "pbx", 1).unwrap();
        data.db.flush().unwrap();
    }
    // Scribble over every table and the manifest.
    for file in walk(&dir.path().join("db")) {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".sst") || name.starts_with("MANIFEST") {
            let mut bytes = std::fs::read(&file).unwrap();
            for b in bytes.iter_mut().skip(16).step_by(7) {
                *b ^= 0x5a;
            }
            std::fs::write(&file, bytes).unwrap();
        }
    }
    let before = snapshot_of_dir(dir.path());
    let err = start_err(config(dir.path(), 1, "pbx")).await;
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(
        matches!(err, StartError::DataDir(DataDirError::Corrupt { .. })),
        "expected a corruption error, got {msg}"
    );
    assert_eq!(snapshot_of_dir(dir.path()), before);
}
