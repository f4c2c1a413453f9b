//! An in-process cluster of raft-store nodes on loopback, for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raft_store::{ClusterCa, NodeId, RaftStore, StoreConfig};

pub struct TestCluster {
    pub ca: ClusterCa,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<NodeId, Option<RaftStore>>,
    pub addrs: BTreeMap<NodeId, SocketAddr>,
    pub tune: fn(&mut StoreConfig),
    pub registries: BTreeMap<NodeId, prometheus::Registry>,
}

/// A free UDP port on 127.0.0.1 (QUIC listens on UDP).
pub fn free_addr() -> SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.local_addr().expect("addr")
}

pub fn fast_timeouts(c: &mut StoreConfig) {
    c.heartbeat_interval = Duration::from_millis(50);
    c.election_timeout_min = Duration::from_millis(250);
    c.election_timeout_max = Duration::from_millis(500);
    c.request_timeout = Duration::from_secs(3);
}

impl TestCluster {
    /// Starts `n` voters; node 1 bootstraps and adds the others.
    pub async fn start(n: u64, tune: fn(&mut StoreConfig)) -> TestCluster {
        let mut cluster = TestCluster {
            ca: ClusterCa::generate("test").expect("ca"),
            dir: tempfile::tempdir().expect("tempdir"),
            nodes: BTreeMap::new(),
            addrs: BTreeMap::new(),
            tune,
            registries: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.addrs.insert(id, free_addr());
            cluster.boot(id).await;
        }
        cluster.node(1).initialize().await.expect("initialize");
        for id in 2..=n {
            let addr = cluster.addrs[&id].to_string();
            cluster
                .node(1)
                .add_learner(id, &addr)
                .await
                .expect("add learner");
        }
        let voters: BTreeSet<NodeId> = (1..=n).collect();
        cluster
            .node(1)
            .change_voters(voters)
            .await
            .expect("change voters");
        cluster
    }

    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn config(&self, id: NodeId) -> StoreConfig {
        let identity = self.ca.issue_node(id).expect("node cert");
        let mut c = StoreConfig::new(id, self.addrs[&id], self.data_dir(id), identity);
        c.cluster_id = "test".into();
        (self.tune)(&mut c);
        c
    }

    /// Starts node `id` on its data directory. A stopped node's database
    /// and port are released only once in-flight calls through stale handles
    /// finish (a real process would have exited): retry for a while.
    pub async fn boot(&mut self, id: NodeId) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (store, registry) = loop {
            let registry = prometheus::Registry::new();
            match RaftStore::start(self.config(id), &registry).await {
                Ok(store) => break (store, registry),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "node {id} not startable yet");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("start node {id}: {e}"),
            }
        };
        self.nodes.insert(id, Some(store));
        self.registries.insert(id, registry);
    }

    pub fn node(&self, id: NodeId) -> &RaftStore {
        self.nodes[&id].as_ref().expect("node is running")
    }

    pub fn running(&self) -> impl Iterator<Item = &RaftStore> {
        self.nodes.values().flatten()
    }

    /// Stops a node as a crash would: nothing is flushed beyond what Raft
    /// already made durable.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(Some(node)) = self.nodes.insert(id, None) {
            node.shutdown().await;
        }
    }

    /// The current leader, waiting up to `within` for one to be elected
    /// among running nodes.
    pub async fn leader(&self, within: Duration) -> NodeId {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(node) = self.running().find(|n| n.leader() == Some(n.node_id())) {
                return node.node_id();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<_> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
