//! A tenant's maximum concurrent calls, enforced across the cluster. Each
//! call of a tenant with a limit holds a slot in raft-store on this node's
//! lease, so the slots of a node that dies are freed when its lease
//! expires. A slot is taken only if none of the tenant's slots was taken
//! since they were counted (the same compare-guarded write as REGISTER's),
//! so two nodes can never both take the last one. Tenants without a limit
//! cost nothing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use raft_store::{LeaseId, StoreError};

use crate::model::Tenant;
use crate::repo::{Repo, RepoError};

/// How long the slots of a node that stopped renewing its lease live on.
const LEASE_TTL: Duration = Duration::from_secs(15);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);
/// Counts and takes tried while other calls of the tenant keep changing them.
const ATTEMPTS: u32 = 5;

/// One call's place among its tenant's concurrent calls.
#[derive(Debug)]
pub struct CallSlot {
    tenant_id: String,
    name: String,
}

#[derive(Debug)]
pub enum Claim {
    /// The tenant has no limit: nothing is held.
    Unlimited,
    Held(CallSlot),
    /// The tenant's calls are at its limit.
    Full {
        max: u32,
    },
}

pub struct CallSlots {
    repo: Repo,
    node_id: u64,
    /// The node's lease for its slots, granted on first use and renewed
    /// while this lives.
    lease: tokio::sync::Mutex<Option<LeaseId>>,
}

impl CallSlots {
    pub fn new(repo: Repo, node_id: u64) -> Arc<CallSlots> {
        Arc::new(CallSlots {
            repo,
            node_id,
            lease: tokio::sync::Mutex::new(None),
        })
    }

    /// Takes a slot for call `call_number` if the tenant has room.
    pub async fn claim(
        self: &Arc<Self>,
        tenant: &Tenant,
        call_number: u64,
    ) -> Result<Claim, RepoError> {
        let Some(max) = tenant.limits.max_concurrent_calls else {
            return Ok(Claim::Unlimited);
        };
        let name = format!("{}-{call_number}", self.node_id);
        for _ in 0..ATTEMPTS {
            let (in_progress, counted_at) =
                self.repo.count_call_slots(&tenant.id, max.into()).await?;
            if in_progress >= max as usize {
                return Ok(Claim::Full { max });
            }
            let lease = self.lease().await?;
            match self
                .repo
                .take_call_slot(&tenant.id, &name, lease, counted_at)
                .await
            {
                Ok(true) => {
                    return Ok(Claim::Held(CallSlot {
                        tenant_id: tenant.id.clone(),
                        name,
                    }))
                }
                Ok(false) => continue,
                // Our lease expired (the node was cut off for a while):
                // its slots are gone with it; take a new one.
                Err(RepoError::Store(StoreError::LeaseNotFound(id))) => self.forget(id).await,
                Err(e) => return Err(e),
            }
        }
        Err(RepoError::Conflict {
            what: format!("calls of tenant {}", tenant.code),
            attempts: ATTEMPTS,
        })
    }

    /// Frees a call's slot; a failure leaves it to the lease.
    pub async fn release(&self, slot: CallSlot) {
        if let Err(e) = self.repo.free_call_slot(&slot.tenant_id, &slot.name).await {
            tracing::warn!(error = %e, slot = %slot.name, "call slot not freed: the lease will");
        }
    }

    async fn lease(self: &Arc<Self>) -> Result<LeaseId, RepoError> {
        let mut lease = self.lease.lock().await;
        if let Some(id) = *lease {
            return Ok(id);
        }
        let id = self.repo.store().lease_grant(LEASE_TTL).await?;
        *lease = Some(id);
        tokio::spawn(keep_alive(Arc::downgrade(self), id));
        Ok(id)
    }

    async fn forget(&self, id: LeaseId) {
        let mut lease = self.lease.lock().await;
        if *lease == Some(id) {
            *lease = None;
        }
    }
}

/// Renews the node's slot lease until the slots are dropped or the lease
/// is gone.
async fn keep_alive(slots: Weak<CallSlots>, id: LeaseId) {
    loop {
        tokio::time::sleep(KEEPALIVE_EVERY).await;
        let Some(slots) = slots.upgrade() else {
            return;
        };
        match slots.repo.store().lease_keep_alive(id).await {
            Ok(_) => {}
            Err(StoreError::LeaseNotFound(_)) => {
                slots.forget(id).await;
                return;
            }
            // No leader for now: the TTL outlasts an election.
            Err(e) => tracing::warn!(error = %e, "call slot lease not renewed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantLimits;
    use crate::repo::tests::one_node_store;

    fn tenant(max: Option<u32>) -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "T".into(),
            code: "T".into(),
            sip_domain: "t.example".into(),
            timezone: "UTC".into(),
            limits: TenantLimits {
                max_extensions: None,
                max_concurrent_calls: max,
            },
            enabled: true,
        }
    }

    #[tokio::test]
    async fn the_limit_holds_across_nodes_and_a_freed_slot_is_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        // Two nodes' slot keepers over one store.
        let node_a = CallSlots::new(repo.clone(), 1);
        let node_b = CallSlots::new(repo.clone(), 2);
        let limited = tenant(Some(2));
        let Claim::Held(first) = node_a.claim(&limited, 1).await.expect("claim") else {
            panic!("room for the first call");
        };
        assert!(matches!(
            node_b.claim(&limited, 1).await.expect("claim"),
            Claim::Held(_)
        ));
        assert!(matches!(
            node_a.claim(&limited, 2).await.expect("claim"),
            Claim::Full { max: 2 }
        ));
        node_a.release(first).await;
        assert!(matches!(
            node_b.claim(&limited, 2).await.expect("claim"),
            Claim::Held(_)
        ));
        assert!(matches!(
            node_a.claim(&tenant(None), 3).await.expect("claim"),
            Claim::Unlimited
        ));
    }

    #[tokio::test]
    async fn concurrent_claims_never_pass_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let limited = tenant(Some(3));
        let nodes: Vec<_> = (1..=4).map(|id| CallSlots::new(repo.clone(), id)).collect();
        let claims = nodes.iter().enumerate().flat_map(|(n, slots)| {
            let limited = limited.clone();
            (0..3).map(move |call| {
                let slots = slots.clone();
                let limited = limited.clone();
                tokio::spawn(async move { slots.claim(&limited, (n * 10 + call) as u64).await })
            })
        });
        let mut held = 0;
        for claim in claims.collect::<Vec<_>>() {
            match claim.await.expect("task") {
                Ok(Claim::Held(_)) => held += 1,
                Ok(Claim::Full { .. }) | Err(RepoError::Conflict { .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // Some may give up on contention; none may pass the limit.
        assert!((1..=3).contains(&held), "{held} held");
        let (in_progress, _) = repo.count_call_slots("t1", 10).await.expect("count");
        assert_eq!(in_progress, held);
    }
}
