//! The directory: this node's in-memory replica of the records that say who
//! a request is from — tenants with their domain and code indexes,
//! extensions with their username index ([`DirectoryKind`]) — fed by the
//! raft-store watch. Authentication reads it instead of making a
//! linearizable read (a quorum round through the leader) per lookup, which
//! was most of a REGISTER's cost.
//!
//! Freshness: the watch delivers every change in commit order with no gap,
//! so the replica follows this node's applied state, a few milliseconds
//! behind the leader. A lookup the replica cannot answer falls back to the
//! linearizable read, so an extension created an instant ago on another
//! node is still found; a change to an existing record (a new password, a
//! deleted extension) takes effect here once this node has applied it.
//! Binding reads and writes do not go through the directory: they stay
//! linearizable.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use raft_store::{Event, EventKind, KeyRange, KeyValue, StoreError};
use tokio::task::JoinHandle;

use crate::model::{Extension, Tenant};
use crate::repo::{
    code_index_key, decode, domain_index_key, extension_key, tenant_key, text, username_index_key,
    DirectoryKind, Repo, RepoError,
};

/// The pause before watching again after the watch failed.
const RESUME_PAUSE: Duration = Duration::from_millis(500);

/// One decoded directory record.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Record {
    Index(String),
    Tenant(Tenant),
    Extension(Box<Extension>),
}

/// Directory records by their raft-store key: lookups build keys with the
/// repository's own key builders and follow the same indexes it does.
#[derive(Debug, Default)]
struct Replica {
    records: HashMap<String, Record>,
}

impl Replica {
    /// Sets `key` to what a put of `value` made it. A value that does not
    /// decode is dropped, so lookups of it go to the store, which reports
    /// the corruption as it did before the directory existed.
    fn put(&mut self, key: &[u8], value: &[u8]) {
        let Some(kind) = DirectoryKind::of(key) else {
            return;
        };
        let decoded = match kind {
            DirectoryKind::Index => text(key, value.to_vec()).map(Record::Index),
            DirectoryKind::Tenant => decode(key, value).map(Record::Tenant),
            DirectoryKind::Extension => decode(key, value).map(|e| Record::Extension(Box::new(e))),
        };
        // DirectoryKind::of accepted the key, so it is UTF-8.
        let key = String::from_utf8_lossy(key).into_owned();
        match decoded {
            Ok(record) => {
                self.records.insert(key, record);
            }
            Err(e) => {
                tracing::warn!(error = %e, "directory record left to the store");
                self.records.remove(&key);
            }
        }
    }

    fn delete(&mut self, key: &[u8]) {
        if DirectoryKind::of(key).is_some() {
            if let Ok(key) = std::str::from_utf8(key) {
                self.records.remove(key);
            }
        }
    }

    fn apply(&mut self, event: &Event) {
        match event.kind {
            EventKind::Put => self.put(&event.kv.key, &event.kv.value),
            EventKind::Delete => self.delete(&event.kv.key),
        }
    }

    fn index(&self, key: &str) -> Option<&str> {
        match self.records.get(key)? {
            Record::Index(value) => Some(value),
            _ => None,
        }
    }

    fn tenant(&self, tenant_id: &str) -> Option<Tenant> {
        match self.records.get(&tenant_key(tenant_id))? {
            Record::Tenant(tenant) => Some(tenant.clone()),
            _ => None,
        }
    }

    fn extension(&self, tenant_id: &str, number: &str) -> Option<Extension> {
        match self.records.get(&extension_key(tenant_id, number))? {
            Record::Extension(extension) => Some(Extension::clone(extension)),
            _ => None,
        }
    }

    fn tenant_by_domain(&self, domain: &str) -> Option<Tenant> {
        self.tenant(self.index(&domain_index_key(domain))?)
    }

    fn tenant_by_code(&self, code: &str) -> Option<Tenant> {
        self.tenant(self.index(&code_index_key(code))?)
    }

    fn extension_by_username(&self, tenant_id: &str, username: &str) -> Option<Extension> {
        let number = self.index(&username_index_key(tenant_id, username))?;
        self.extension(tenant_id, number)
    }
}

/// Tenant and extension lookups served from this node's replica. Cheap to
/// clone.
#[derive(Clone)]
pub struct Directory {
    repo: Repo,
    replica: Arc<RwLock<Replica>>,
}

impl Directory {
    /// Loads the directory, then follows the store's changes in a task
    /// that runs until it is aborted.
    pub async fn start(repo: Repo) -> Result<(Directory, JoinHandle<()>), RepoError> {
        let (replica, revision) = load(&repo).await?;
        let directory = Directory {
            repo,
            replica: Arc::new(RwLock::new(replica)),
        };
        let task = tokio::spawn(directory.clone().follow(revision + 1));
        Ok((directory, task))
    }

    fn read<T>(&self, f: impl FnOnce(&Replica) -> Option<T>) -> Option<T> {
        // A panic under the lock leaves at most one record half-applied
        // (each change is one map operation): poisoning is ignored.
        f(&self.replica.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Replica> {
        self.replica.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies the store's changes from revision `next` on, in commit
    /// order, for ever: after an error the watch resumes where it stopped;
    /// if that history is compacted away, the directory is loaded afresh.
    async fn follow(self, mut next: u64) {
        loop {
            // Bindings, CDRs and calls change far more often than the
            // directory, and are not copied to it.
            let watch = self.repo.store().watch(KeyRange::prefix("/"), next);
            let error = match watch.map(|w| w.only(|key| DirectoryKind::of(key).is_some())) {
                Ok(mut watcher) => loop {
                    match watcher.next().await {
                        Ok(batch) => {
                            let mut replica = self.write();
                            batch.events.iter().for_each(|e| replica.apply(e));
                            next = batch.revision + 1;
                        }
                        Err(e) => break e,
                    }
                },
                Err(e) => e,
            };
            if let StoreError::Compacted { .. } = error {
                tracing::warn!(next, error = %error, "directory watch behind compaction: reloading");
                match load(&self.repo).await {
                    Ok((replica, revision)) => {
                        *self.write() = replica;
                        next = revision + 1;
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "directory reload failed"),
                }
            } else {
                tracing::warn!(next, error = %error, "directory watch failed: resuming");
            }
            tokio::time::sleep(RESUME_PAUSE).await;
        }
    }

    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Option<Tenant>, RepoError> {
        match self.read(|r| r.tenant_by_domain(domain)) {
            Some(tenant) => Ok(Some(tenant)),
            None => self.repo.tenant_by_domain(domain).await,
        }
    }

    pub async fn tenant_by_code(&self, code: &str) -> Result<Option<Tenant>, RepoError> {
        match self.read(|r| r.tenant_by_code(code)) {
            Some(tenant) => Ok(Some(tenant)),
            None => self.repo.tenant_by_code(code).await,
        }
    }

    pub async fn extension_by_username(
        &self,
        tenant_id: &str,
        username: &str,
    ) -> Result<Option<Extension>, RepoError> {
        match self.read(|r| r.extension_by_username(tenant_id, username)) {
            Some(extension) => Ok(Some(extension)),
            None => self.repo.extension_by_username(tenant_id, username).await,
        }
    }
}

/// A replica of every directory record, and the revision it is complete to.
async fn load(repo: &Repo) -> Result<(Replica, u64), RepoError> {
    let mut replica = Replica::default();
    let revision = repo
        .directory_records(|kv: KeyValue| replica.put(&kv.key, &kv.value))
        .await?;
    Ok((replica, revision))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::tests::one_node_store;
    use crate::repo::NewExtension;

    fn tenant() -> Tenant {
        Tenant {
            id: "t1".into(),
            name: "Acme".into(),
            code: "ACME".into(),
            sip_domain: "acme.example".into(),
            timezone: "UTC".into(),
            limits: Default::default(),
            enabled: true,
        }
    }

    fn extension(number: &str, ha1_md5: &str) -> Extension {
        Extension {
            number: number.into(),
            display_name: format!("Ext {number}"),
            username: format!("{number}-ACME"),
            ha1_md5: ha1_md5.into(),
            ha1_sha256: "sha".into(),
            max_contacts: 3,
            min_expires: 60,
            default_expires: 3600,
            max_expires: 7200,
            remove_existing_on_register: true,
            recording: Default::default(),
            settings: Default::default(),
        }
    }

    fn event(kind: EventKind, key: &str, value: Vec<u8>) -> Event {
        Event {
            kind,
            kv: KeyValue {
                key: key.as_bytes().to_vec(),
                value,
                create_revision: 1,
                mod_revision: 1,
                version: 1,
                lease: None,
            },
        }
    }

    fn put_json<T: serde::Serialize>(key: &str, value: &T) -> Event {
        let json = serde_json::to_vec(value).expect("encode");
        event(EventKind::Put, key, json)
    }

    fn put_text(key: &str, value: &str) -> Event {
        event(EventKind::Put, key, value.as_bytes().to_vec())
    }

    fn delete(key: &str) -> Event {
        event(EventKind::Delete, key, Vec::new())
    }

    /// The events that create tenant t1 with extension 100.
    fn acme_with_100(ha1: &str) -> Vec<Event> {
        vec![
            put_json("/t/t1/tenant", &tenant()),
            put_text("/idx/code/ACME", "t1"),
            put_text("/idx/domain/acme.example", "t1"),
            put_json("/t/t1/ext/100", &extension("100", ha1)),
            put_text("/t/t1/idx/username/100-ACME", "100"),
        ]
    }

    fn replica_of(events: &[Event]) -> Replica {
        let mut replica = Replica::default();
        events.iter().for_each(|e| replica.apply(e));
        replica
    }

    #[test]
    fn lookups_follow_the_indexes_as_the_repository_does() {
        let replica = replica_of(&acme_with_100("h1"));
        // The key builders normalise case, as for the store's own lookups.
        assert_eq!(replica.tenant_by_domain("ACME.example"), Some(tenant()));
        assert_eq!(replica.tenant_by_code("acme"), Some(tenant()));
        assert_eq!(
            replica.extension_by_username("t1", "100-ACME"),
            Some(extension("100", "h1"))
        );
        assert_eq!(replica.extension_by_username("t2", "100-ACME"), None);
        assert_eq!(replica.tenant_by_domain("other.example"), None);
    }

    #[test]
    fn changes_apply_in_order_updates_replace_and_deletes_remove() {
        let mut events = acme_with_100("h1");
        // A new password, then the extension deleted and created again.
        events.push(put_json("/t/t1/ext/100", &extension("100", "h2")));
        events.push(delete("/t/t1/ext/100"));
        events.push(delete("/t/t1/idx/username/100-ACME"));
        let replica = replica_of(&events);
        assert_eq!(replica.extension_by_username("t1", "100-ACME"), None);
        assert_eq!(replica.extension("t1", "100"), None);

        events.push(put_json("/t/t1/ext/100", &extension("100", "h3")));
        events.push(put_text("/t/t1/idx/username/100-ACME", "100"));
        let replica = replica_of(&events);
        assert_eq!(
            replica.extension_by_username("t1", "100-ACME"),
            Some(extension("100", "h3"))
        );

        // The same changes in another order end elsewhere: order matters.
        let (last, rest) = events.split_last().expect("events");
        let mut reordered = vec![last.clone()];
        reordered.extend(rest.iter().cloned());
        assert_eq!(
            replica_of(&reordered).extension_by_username("t1", "100-ACME"),
            None
        );
    }

    #[test]
    fn other_keys_are_ignored_and_corrupt_records_left_to_the_store() {
        let mut events = acme_with_100("h1");
        events.push(put_text("/t/t1/reg/100/abc", "{}"));
        events.push(put_text("/t/t1/cdr/0000000000001000-c1", "{}"));
        events.push(put_text("/sys/sip/nonce-secret", "00"));
        let replica = replica_of(&events);
        assert_eq!(replica.records.len(), 5);

        events.push(put_text("/t/t1/ext/100", "not json"));
        let replica = replica_of(&events);
        assert_eq!(replica.extension_by_username("t1", "100-ACME"), None);
        assert_eq!(replica.records.len(), 4);
    }

    /// Polls `f` until it holds (at most 5 s).
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    fn new_extension(number: &str) -> NewExtension {
        NewExtension {
            number: number.into(),
            display_name: number.into(),
            username: None,
            password: "pw".into(),
        }
    }

    /// Whether the replica itself (not the fallback) has `username`.
    fn cached(directory: &Directory, tenant_id: &str, username: &str) -> bool {
        directory
            .read(|r| r.extension_by_username(tenant_id, username))
            .is_some()
    }

    #[tokio::test]
    async fn follows_the_store_and_falls_back_on_a_miss() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let acme = repo
            .create_tenant("Acme", "ACME", "acme.example")
            .await
            .expect("tenant");
        repo.create_extension(&acme, new_extension("100"))
            .await
            .expect("100");
        let (directory, task) = Directory::start(repo.clone()).await.expect("start");
        // Loaded, then followed.
        assert!(cached(&directory, &acme.id, "100-ACME"));
        let other = repo
            .create_tenant("Other", "OTHER", "other.example")
            .await
            .expect("tenant");
        repo.create_extension(&other, new_extension("200"))
            .await
            .expect("200");
        eventually("200 replicated", || {
            cached(&directory, &other.id, "200-OTHER")
        })
        .await;
        assert_eq!(
            directory
                .tenant_by_domain("other.example")
                .await
                .expect("read"),
            Some(other.clone())
        );

        // A miss is answered by the store: an unknown user stays unknown,
        // and a record the replica has not seen yet is still found.
        assert_eq!(
            directory
                .extension_by_username(&acme.id, "999-ACME")
                .await
                .expect("read"),
            None
        );
        task.abort();
        let _ = task.await;
        let late = repo
            .create_extension(&acme, new_extension("101"))
            .await
            .expect("101");
        assert!(!cached(&directory, &acme.id, "101-ACME"));
        assert_eq!(
            directory
                .extension_by_username(&acme.id, "101-ACME")
                .await
                .expect("read"),
            Some(late)
        );
        repo.store().shutdown().await;
    }

    #[tokio::test]
    async fn resumes_from_a_revision_and_reloads_after_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let acme = repo
            .create_tenant("Acme", "ACME", "acme.example")
            .await
            .expect("tenant");
        repo.create_extension(&acme, new_extension("100"))
            .await
            .expect("100");
        let directory_at = |replica| Directory {
            repo: repo.clone(),
            replica: Arc::new(RwLock::new(replica)),
        };

        // Resume: changes made after the load are replayed from its revision.
        let (replica, revision) = load(&repo).await.expect("load");
        repo.create_extension(&acme, new_extension("101"))
            .await
            .expect("101");
        let resumed = directory_at(replica);
        let task = tokio::spawn(resumed.clone().follow(revision + 1));
        eventually("101 replayed", || cached(&resumed, &acme.id, "101-ACME")).await;
        task.abort();

        // Compaction: history after the load is gone, including the
        // deletion of 100, which only a fresh load can show.
        let (replica, revision) = load(&repo).await.expect("load");
        assert!(replica
            .extension_by_username(&acme.id, "100-ACME")
            .is_some());
        repo.store()
            .delete(KeyRange::key(format!("/t/{}/ext/100", acme.id)))
            .await
            .expect("delete 100");
        let created = repo
            .create_extension(&acme, new_extension("102"))
            .await
            .expect("102");
        let now = repo
            .store()
            .range_stale(KeyRange::key("/"), 0)
            .expect("revision");
        repo.store().compact(now.revision).await.expect("compact");
        let reloaded = directory_at(replica);
        let task = tokio::spawn(reloaded.clone().follow(revision + 1));
        eventually("reloaded", || {
            cached(&reloaded, &acme.id, "102-ACME")
                && reloaded.read(|r| r.extension(&acme.id, "100")).is_none()
        })
        .await;
        assert_eq!(
            reloaded.read(|r| r.extension_by_username(&acme.id, "102-ACME")),
            Some(created)
        );
        task.abort();
        repo.store().shutdown().await;
    }
}
