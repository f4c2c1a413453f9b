//! Prometheus metrics of one node, registered in the registry the caller
//! gives (each process exposes its own on `/metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub term: IntGauge,
    pub leader_id: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub proposal_duration_seconds: Histogram,
    pub snapshot_size_bytes: IntGauge,
    pub snapshot_duration_seconds: Histogram,
    pub peer_rtt_seconds: HistogramVec,
    pub peer_refused_total: IntCounter,
    /// RocksDB's memory by kind: `memtables`, `block_cache`, `table_readers`
    /// (indexes and bloom filters of open table files).
    pub rocksdb_memory_bytes: IntGaugeVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let latency_buckets = prometheus::exponential_buckets(0.000_1, 2.0, 16)?;
        let proposal_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "raft_proposal_duration_seconds",
                "Time from proposal to applied result, on the node that took the request",
            )
            .buckets(latency_buckets.clone()),
        )?;
        registry.register(Box::new(proposal_duration_seconds.clone()))?;
        let snapshot_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "raft_snapshot_duration_seconds",
                "Time to build a snapshot file",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
        )?;
        registry.register(Box::new(snapshot_duration_seconds.clone()))?;
        let peer_rtt_seconds = HistogramVec::new(
            HistogramOpts::new(
                "raft_peer_rtt_seconds",
                "Round trip of Raft RPCs to each peer",
            )
            .buckets(latency_buckets),
            &["peer"],
        )?;
        registry.register(Box::new(peer_rtt_seconds.clone()))?;
        let peer_refused_total = IntCounter::with_opts(Opts::new(
            "raft_peer_refused_total",
            "Connections refused because the peer's certificate is not from the cluster CA",
        ))?;
        registry.register(Box::new(peer_refused_total.clone()))?;
        let rocksdb_memory_bytes = IntGaugeVec::new(
            Opts::new(
                "raft_rocksdb_memory_bytes",
                "Memory RocksDB holds, by kind (memtables, block_cache, table_readers)",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(rocksdb_memory_bytes.clone()))?;
        Ok(Metrics {
            term: gauge("raft_term", "Current Raft term")?,
            leader_id: gauge(
                "raft_leader_id",
                "Node id of the current leader, 0 if unknown",
            )?,
            commit_index: gauge("raft_commit_index", "Highest log index known committed")?,
            applied_index: gauge(
                "raft_applied_index",
                "Highest log index applied to the state machine",
            )?,
            proposal_duration_seconds,
            snapshot_size_bytes: gauge(
                "raft_snapshot_size_bytes",
                "Size of the last snapshot file built",
            )?,
            snapshot_duration_seconds,
            peer_rtt_seconds,
            peer_refused_total,
            rocksdb_memory_bytes,
        })
    }
}
