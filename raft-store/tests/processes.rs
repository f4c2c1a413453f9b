//! Three `raft-node` processes on loopback: kill -9 the leader under a
//! steady write load, then restart it.

#[path = "../src/bin/raft-bench/procs.rs"]
mod procs;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procs::ProcCluster;
use raft_store::KeyRange;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let program = vec![env!("CARGO_BIN_EXE_raft-node").to_string()];
    let mut c = ProcCluster::start(program, dir.path(), 3).await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    // Writers go through every node in turn; a write through a dead node
    // fails and is simply not acknowledged.
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (stop, acked, handle) = (stop.clone(), acked.clone(), c.handle.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let via = 1 + (w + i) % 3;
                let key = format!("w/{w}/{i}").into_bytes();
                if let Ok(rev) = handle.put(via, key.clone(), vec![7u8; 200]).await {
                    assert!(
                        acked.lock().unwrap().insert(rev, key).is_none(),
                        "revision {rev} twice"
                    );
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let leader = c.leader().await.expect("a leader");
    let old_pid = c.pid(leader).expect("leader runs");
    c.kill(leader).await.unwrap();
    assert_eq!(c.pid(leader), None);
    let killed = Instant::now();
    let survivors = c.live();
    let first_commit = loop {
        if c.handle
            .put(survivors[0], b"probe".to_vec(), b"x".to_vec())
            .await
            .is_ok()
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "no commit within 3 s of kill -9"
        );
    };
    println!("first commit {first_commit:?} after kill -9 of leader {leader}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    for id in &survivors {
        let all = c
            .handle
            .range(*id, KeyRange::prefix("w/"), true)
            .await
            .unwrap();
        let stored: BTreeMap<_, _> = all
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.mod_revision))
            .collect();
        for (rev, key) in &acked {
            assert_eq!(
                stored.get(key),
                Some(rev),
                "node {id}: acknowledged write at {rev} missing"
            );
        }
    }

    // Restart the killed node on its own data directory: it catches up.
    assert!(c.data_dir(leader).join("db").is_dir());
    c.spawn(leader, false).await.unwrap();
    assert_ne!(c.pid(leader), Some(old_pid));
    let target = c
        .handle
        .range(survivors[0], KeyRange::prefix(""), true)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mine) = c.handle.range(leader, KeyRange::prefix(""), false).await {
            if mine.revision >= target.revision {
                assert_eq!(mine.kvs.len(), target.kvs.len());
                break;
            }
        }
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
