//! Linearizability under leader kills: several clients run concurrent
//! put/get/cas/delete through random nodes while a nemesis stops the leader
//! and brings it back; the recorded history must be linearizable.
//! (tests/linearizability_checker.rs shows the checker rejects bad histories.)

#[path = "common/cluster.rs"]
mod cluster;
// Shared with the checker's own tests; each binary uses part of it.
#[allow(dead_code)]
#[path = "common/linearizability.rs"]
mod linearizability;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cluster::{fast_timeouts, TestCluster};
use linearizability::{check, History, KvOp, KvResult};
use raft_store::{Compare, CompareOp, KeyRange, RaftStore, StoreError, Txn, TxnOp};
use rand::{Rng, SeedableRng};

const KEYS: [&str; 3] = ["x", "y", "z"];

/// Runs one operation; `None` when its outcome is unknown.
async fn run(node: &RaftStore, op: &KvOp) -> Option<KvResult> {
    let key = op.key().to_vec();
    let result = match op {
        KvOp::Put { value, .. } => node
            .put(key, value.clone())
            .await
            .map(|_| KvResult::Written),
        KvOp::Delete { .. } => node
            .delete(KeyRange::Key(key))
            .await
            .map(|_| KvResult::Written),
        KvOp::Get { .. } => node
            .get(key)
            .await
            .map(|kv| KvResult::Value(kv.map(|kv| kv.value))),
        KvOp::Cas { expected, new, .. } => {
            let compare = match expected {
                Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                None => Compare::absent(key.clone()),
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([TxnOp::put(key, new.clone())]);
            node.txn(txn)
                .await
                .map(|r| KvResult::CasResult(r.succeeded))
        }
    };
    match result {
        Ok(r) => Some(r),
        // Refused before anything was proposed: it surely did not happen,
        // but recording it as unknown is never wrong.
        Err(StoreError::NoLeader(_)) | Err(StoreError::Unknown(_)) | Err(StoreError::Fatal(_)) => {
            None
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn random_op(rng: &mut impl Rng, client: u64, seq: u64) -> KvOp {
    let key = KEYS[rng.random_range(0..KEYS.len())].as_bytes().to_vec();
    let value = format!("{client}-{seq}").into_bytes();
    match rng.random_range(0..10) {
        0..=3 => KvOp::Get { key },
        4..=6 => KvOp::Put { key, value },
        7 => KvOp::Delete { key },
        _ => {
            // Guess a value some client may have written, or absence.
            let expected = if rng.random_bool(0.3) {
                None
            } else {
                Some(
                    format!(
                        "{}-{}",
                        rng.random_range(0..5),
                        seq.saturating_sub(rng.random_range(0..3))
                    )
                    .into_bytes(),
                )
            };
            KvOp::Cas {
                key,
                expected,
                new: value,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_leader_kills_is_linearizable() {
    let mut c = TestCluster::start(3, fast_timeouts).await;
    let running: Arc<RwLock<Vec<RaftStore>>> =
        Arc::new(RwLock::new(c.running().cloned().collect()));
    let history = History::new();
    let seed: u64 = rand::random();
    println!("client seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));

    let mut clients = Vec::new();
    for client in 0..5u64 {
        let (running, history, stop) = (running.clone(), history.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed + client);
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let node = {
                    let nodes = running.read().unwrap();
                    nodes[rng.random_range(0..nodes.len())].clone()
                };
                let op = random_op(&mut rng, client, seq);
                let handle = history.invoke(client, op.clone());
                if let Some(result) = run(&node, &op).await {
                    handle.complete(result);
                }
            }
        }));
    }

    // The nemesis: stop the leader, let the others elect, bring it back.
    let mut kills = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let leader = c.leader(Duration::from_secs(5)).await;
        c.stop(leader).await;
        *running.write().unwrap() = c.running().cloned().collect();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(800)).await;
        c.boot(leader).await;
        *running.write().unwrap() = c.running().cloned().collect();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let ops = history.into_operations();
    let completed = ops.iter().filter(|o| o.completed.is_some()).count();
    println!(
        "{kills} leader kills, {} operations, {completed} completed",
        ops.len()
    );
    assert!(
        completed > 200,
        "too few operations completed to mean anything: {completed}"
    );
    check(&ops).unwrap();
    c.shutdown().await;
}
