//! openraft's storage conformance suite, run against our RocksDB log store
//! and state machine.

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tokio::sync::{broadcast, mpsc};

use crate::data_dir::DataDir;
use crate::log_store::LogStore;
use crate::metrics::Metrics;
use crate::state_machine::StateMachine;
use crate::types::TypeConfig;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = DataDir::open(dir.path(), "suite", 1).expect("open data dir");
        let metrics = Arc::new(Metrics::new(&prometheus::Registry::new()).expect("metrics"));
        let (watch_tx, _) = broadcast::channel(16);
        let (lease_tx, _) = mpsc::unbounded_channel();
        let sm = StateMachine::new(
            data.db.clone(),
            data.snapshot_dir(),
            watch_tx,
            lease_tx,
            metrics,
        )
        .expect("state machine");
        let log = LogStore::new(data.db.clone()).expect("log store");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    Suite::test_all(RocksBuilder).await.expect("storage suite");
}
