//! CDR retention: every hour the raft leader deletes each tenant's CDRs
//! older than the configured number of days (one node does it, and the
//! deletes are replicated like any write). Zero days keeps them forever.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::repo::Repo;
use crate::service::unix_now_ms;

const PASS_INTERVAL: Duration = Duration::from_secs(3600);
/// The first pass waits for the cluster to settle after a start.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);
/// CDRs deleted per write.
const DELETE_BATCH: u64 = 1000;
const DAY_MS: u64 = 86_400_000;

/// Starts the hourly pass; `None` when CDRs are kept forever.
pub fn start(repo: Repo, retention_days: u32) -> Option<JoinHandle<()>> {
    if retention_days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        let start = tokio::time::Instant::now() + FIRST_PASS_AFTER;
        let mut ticks = tokio::time::interval_at(start, PASS_INTERVAL);
        loop {
            ticks.tick().await;
            let store = repo.store();
            if store.leader() != Some(store.node_id()) {
                continue;
            }
            let cutoff = unix_now_ms().saturating_sub(u64::from(retention_days) * DAY_MS);
            match delete_before(&repo, cutoff).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, retention_days, "old CDRs deleted"),
                Err(e) => tracing::warn!(error = %e, "CDR retention pass failed; next hour again"),
            }
        }
    }))
}

async fn delete_before(repo: &Repo, cutoff_ms: u64) -> Result<usize, crate::repo::RepoError> {
    let mut deleted = 0;
    for tenant_id in repo.tenant_ids().await? {
        deleted += repo
            .delete_cdrs_before(&tenant_id, cutoff_ms, DELETE_BATCH)
            .await?;
    }
    Ok(deleted)
}
