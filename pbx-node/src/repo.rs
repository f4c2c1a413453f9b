//! Repository: the domain records in raft-store, under tenant-prefixed keys.
//!
//! Layout (values are JSON unless noted):
//! - `/t/<tenant id>/tenant` → [`Tenant`]
//! - `/t/<tenant id>/ext/<number>` → [`Extension`]
//! - `/t/<tenant id>/reg/<number>/<binding key>` → [`Binding`], on a lease
//! - `/t/<tenant id>/idx/username/<username>` → extension number (plain text)
//! - `/idx/domain/<sip domain>` and `/idx/code/<CODE>` → tenant id (plain text)
//! - `/t/<tenant id>/cdr/<start ms, 16 digits>-<id>` → [`Cdr`], in time order
//! - `/t/<tenant id>/rec/<recording id>` → [`Recording`]; ids begin with the
//!   start time (16 digits), so these are in time order too
//! - `/t/<tenant id>/calls/<node id>-<call number>` → empty, on the node's
//!   lease: a call in progress of a tenant with a concurrent-call limit
//! - `/sys/sip/nonce-secret` → hex secret shared by all nodes for digest nonces

use std::time::Duration;

use raft_store::{
    Compare, CompareOp, KeyRange, KeyValue, LeaseId, OpResult, RaftStore, RangeResult, StoreError,
    Txn, TxnOp,
};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{Binding, Cdr, Extension, Recording, Tenant};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{key}: stored value is not valid: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("invalid {field}: {detail}")]
    Invalid { field: &'static str, detail: String },
    #[error("{what} kept changing: {attempts} attempts")]
    Conflict { what: String, attempts: u32 },
}

const NONCE_SECRET_KEY: &str = "/sys/sip/nonce-secret";

pub(crate) fn tenant_key(tenant_id: &str) -> String {
    format!("/t/{tenant_id}/tenant")
}

pub(crate) fn extension_key(tenant_id: &str, number: &str) -> String {
    format!("/t/{tenant_id}/ext/{number}")
}

pub(crate) fn username_index_key(tenant_id: &str, username: &str) -> String {
    format!("/t/{tenant_id}/idx/username/{username}")
}

fn cdr_prefix(tenant_id: &str) -> String {
    format!("/t/{tenant_id}/cdr/")
}

fn cdr_key(cdr: &Cdr) -> String {
    format!(
        "{}{:016}-{}",
        cdr_prefix(&cdr.tenant_id),
        cdr.start_ms,
        cdr.id
    )
}

fn recording_prefix(tenant_id: &str) -> String {
    format!("/t/{tenant_id}/rec/")
}

/// A recording id: its start time first, so ids sort by time.
pub fn new_recording_id(start_ms: u64) -> String {
    format!("{start_ms:016}-{}", random_hex(6))
}

pub(crate) fn domain_index_key(domain: &str) -> String {
    format!("/idx/domain/{}", domain.to_ascii_lowercase())
}

pub(crate) fn code_index_key(code: &str) -> String {
    format!("/idx/code/{}", code.to_ascii_uppercase())
}

fn call_slots_prefix(tenant_id: &str) -> String {
    format!("/t/{tenant_id}/calls/")
}

fn bindings_prefix(tenant_id: &str, number: &str) -> String {
    format!("/t/{tenant_id}/reg/{number}/")
}

/// The key of one binding: a hash of what identifies the device, so a
/// re-registration of the same device overwrites its binding.
pub fn binding_key(tenant_id: &str, number: &str, identity: &str) -> String {
    let digest = Sha256::digest(identity.as_bytes());
    format!(
        "{}{}",
        bindings_prefix(tenant_id, number),
        hex::encode(digest.get(..16).unwrap_or_default())
    )
}

/// What a directory key holds: the records and indexes that say who a
/// request is from, as opposed to bindings, CDRs and the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryKind {
    /// `/idx/domain/…`, `/idx/code/…` (→ tenant id) or
    /// `/t/<tenant id>/idx/username/…` (→ number): plain text.
    Index,
    /// `/t/<tenant id>/tenant` → [`Tenant`].
    Tenant,
    /// `/t/<tenant id>/ext/<number>` → [`Extension`].
    Extension,
}

impl DirectoryKind {
    /// The kind of directory key `key` is, if it is one: the inverse of the
    /// key builders above, kept beside them so the layout lives in one place.
    pub fn of(key: &[u8]) -> Option<DirectoryKind> {
        let key = std::str::from_utf8(key).ok()?;
        if let Some(index) = key.strip_prefix("/idx/") {
            return (index.starts_with("domain/") || index.starts_with("code/"))
                .then_some(DirectoryKind::Index);
        }
        // Segments never contain '/' (check_segment), so this split is exact.
        let (_tenant_id, rest) = key.strip_prefix("/t/")?.split_once('/')?;
        if rest == "tenant" {
            Some(DirectoryKind::Tenant)
        } else if rest.starts_with("ext/") {
            Some(DirectoryKind::Extension)
        } else if rest.starts_with("idx/username/") {
            Some(DirectoryKind::Index)
        } else {
            None
        }
    }
}

/// How many directory records one local read returns while loading.
const DIRECTORY_PAGE: u64 = 1000;

/// The first key after every key starting with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    // Every prefix here ends in '/', which is never 0xff.
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// A stored binding with its key, lease and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBinding {
    pub key: String,
    pub lease: Option<LeaseId>,
    pub mod_revision: u64,
    pub binding: Binding,
}

impl StoredBinding {
    fn from_kv(kv: KeyValue) -> Result<StoredBinding, RepoError> {
        let binding: Binding = decode(&kv.key, &kv.value)?;
        Ok(StoredBinding {
            key: text(&kv.key, kv.key.clone())?,
            lease: kv.lease,
            mod_revision: kv.mod_revision,
            binding,
        })
    }
}

/// An extension's bindings as read at one store revision: what a
/// REGISTER plans from, and what [`Repo::write_bindings`] checks is still
/// there when it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AorBindings {
    prefix: String,
    /// The store revision the read saw.
    pub revision: u64,
    /// Every stored binding, with those whose time is up but whose lease
    /// the leader has not expired yet.
    stored: Vec<StoredBinding>,
}

impl AorBindings {
    fn from_range(prefix: String, range: RangeResult) -> Result<AorBindings, RepoError> {
        Ok(AorBindings {
            prefix,
            revision: range.revision,
            stored: range
                .kvs
                .into_iter()
                .map(StoredBinding::from_kv)
                .collect::<Result<_, _>>()?,
        })
    }

    /// The bindings whose time is not up at `now_ms`.
    pub fn live(&self, now_ms: u64) -> Vec<StoredBinding> {
        self.stored
            .iter()
            .filter(|s| s.binding.expires_at_ms > now_ms)
            .cloned()
            .collect()
    }
}

/// A binding to write, with the stored one it replaces (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingUpsert {
    pub key: String,
    pub binding: Binding,
    pub previous: Option<StoredBinding>,
}

/// What a new extension is made from.
#[derive(Debug, Clone)]
pub struct NewExtension {
    pub number: String,
    pub display_name: String,
    /// `None` = the default `<number>-<CODE>`.
    pub username: Option<String>,
    pub password: String,
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, RepoError> {
    serde_json::from_slice(value).map_err(|e| RepoError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, RepoError> {
    serde_json::to_vec(value).map_err(|e| RepoError::Invalid {
        field: "value",
        detail: e.to_string(),
    })
}

pub(crate) fn text(key: &[u8], value: Vec<u8>) -> Result<String, RepoError> {
    String::from_utf8(value).map_err(|e| RepoError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

/// Key segments must not contain `/`, or one tenant's keys could alias another's.
pub(crate) fn check_segment(field: &'static str, value: &str) -> Result<(), RepoError> {
    let ok = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '*' | '#'));
    if ok {
        Ok(())
    } else {
        Err(RepoError::Invalid {
            field,
            detail: format!("'{value}' must be non-empty letters, digits or -_.+*#"),
        })
    }
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Typed access to the domain records. Cheap to clone.
#[derive(Clone)]
pub struct Repo {
    store: RaftStore,
}

impl Repo {
    pub fn new(store: RaftStore) -> Self {
        Repo { store }
    }

    pub fn store(&self) -> &RaftStore {
        &self.store
    }

    async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, RepoError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(&kv.key, &kv.value)?)),
            None => Ok(None),
        }
    }

    async fn get_text(&self, key: &str) -> Result<Option<String>, RepoError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(text(&kv.key, kv.value)?)),
            None => Ok(None),
        }
    }

    /// Hands every directory record ([`DirectoryKind`]) to `each` and returns
    /// the revision a watch must resume after so that it misses no change.
    /// The first read (the tenant indexes) is linearizable, so what is
    /// loaded is at least as new as the cluster was when the load began;
    /// the rest are local reads, page by page, at that revision or later.
    /// Replaying changes from the returned revision over them is harmless:
    /// each change sets a key to what it became, and the last one wins.
    pub async fn directory_records(
        &self,
        mut each: impl FnMut(KeyValue),
    ) -> Result<u64, RepoError> {
        let indexes = self.store.range(KeyRange::prefix("/idx/"), 0).await?;
        let mut tenant_ids = Vec::new();
        for kv in indexes.kvs {
            if kv.key.starts_with(b"/idx/code/") {
                tenant_ids.push(text(&kv.key, kv.value.clone())?);
            }
            each(kv);
        }
        for tenant_id in tenant_ids {
            if let Some(kv) = self
                .store
                .range_stale(KeyRange::key(tenant_key(&tenant_id)), 0)?
                .kvs
                .into_iter()
                .next()
            {
                each(kv);
            }
            for prefix in [
                extension_key(&tenant_id, ""),
                username_index_key(&tenant_id, ""),
            ] {
                let end = prefix_end(&prefix);
                let mut start = prefix.into_bytes();
                loop {
                    let page = self.store.range_stale(
                        KeyRange::between(start.clone(), end.clone()),
                        DIRECTORY_PAGE,
                    )?;
                    if let Some(last) = page.kvs.last() {
                        start.clone_from(&last.key);
                        start.push(0);
                    }
                    page.kvs.into_iter().for_each(&mut each);
                    if !page.more {
                        break;
                    }
                }
            }
        }
        Ok(indexes.revision)
    }

    /// The digest nonce secret shared by every node; the first node to ask
    /// creates it (a compare-and-put, so concurrent first starts agree).
    pub async fn ensure_nonce_secret(&self) -> Result<Vec<u8>, RepoError> {
        let candidate = random_hex(32);
        let result = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::absent(NONCE_SECRET_KEY)])
                    .and_then([TxnOp::put(NONCE_SECRET_KEY, candidate.clone())])
                    .or_else([TxnOp::get(NONCE_SECRET_KEY)]),
            )
            .await?;
        if result.succeeded {
            return Ok(candidate.into_bytes());
        }
        match result.results.into_iter().next() {
            Some(OpResult::Range(range)) => match range.kvs.into_iter().next() {
                Some(kv) => Ok(kv.value),
                None => Err(RepoError::Corrupt {
                    key: NONCE_SECRET_KEY.into(),
                    detail: "vanished between compare and read".into(),
                }),
            },
            _ => Err(RepoError::Corrupt {
                key: NONCE_SECRET_KEY.into(),
                detail: "unexpected transaction result".into(),
            }),
        }
    }

    /// Creates a tenant with a fresh id and default settings; its code and
    /// domain must be unused.
    pub async fn create_tenant(
        &self,
        name: &str,
        code: &str,
        sip_domain: &str,
    ) -> Result<Tenant, RepoError> {
        self.insert_tenant(Tenant {
            id: random_hex(8),
            name: name.to_string(),
            code: code.to_string(),
            sip_domain: sip_domain.to_string(),
            timezone: "UTC".to_string(),
            limits: Default::default(),
            enabled: true,
        })
        .await
    }

    /// Stores a new tenant (code upper-cased, domain lower-cased) if its
    /// code and domain are unused.
    pub async fn insert_tenant(&self, mut tenant: Tenant) -> Result<Tenant, RepoError> {
        tenant.code = tenant.code.to_ascii_uppercase();
        tenant.sip_domain = tenant.sip_domain.to_ascii_lowercase();
        let (code, sip_domain) = (tenant.code.clone(), tenant.sip_domain.clone());
        check_segment("code", &code)?;
        check_segment("sip_domain", &sip_domain)?;
        let result = self
            .store
            .txn(
                Txn::new()
                    .when([
                        Compare::absent(code_index_key(&code)),
                        Compare::absent(domain_index_key(&sip_domain)),
                    ])
                    .and_then([
                        TxnOp::put(tenant_key(&tenant.id), encode(&tenant)?),
                        TxnOp::put(code_index_key(&code), tenant.id.clone()),
                        TxnOp::put(domain_index_key(&sip_domain), tenant.id.clone()),
                    ]),
            )
            .await?;
        if !result.succeeded {
            return Err(RepoError::AlreadyExists {
                what: format!("tenant code {code} or domain {sip_domain}"),
            });
        }
        Ok(tenant)
    }

    pub async fn tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, RepoError> {
        self.get_json(&tenant_key(tenant_id)).await
    }

    pub async fn tenant_by_domain(&self, domain: &str) -> Result<Option<Tenant>, RepoError> {
        match self.get_text(&domain_index_key(domain)).await? {
            Some(id) => self.tenant(&id).await,
            None => Ok(None),
        }
    }

    pub async fn tenant_by_code(&self, code: &str) -> Result<Option<Tenant>, RepoError> {
        match self.get_text(&code_index_key(code)).await? {
            Some(id) => self.tenant(&id).await,
            None => Ok(None),
        }
    }

    /// Creates an extension; the password is kept only as HA1s for the
    /// tenant's realm (its SIP domain).
    pub async fn create_extension(
        &self,
        tenant: &Tenant,
        new: NewExtension,
    ) -> Result<Extension, RepoError> {
        check_segment("number", &new.number)?;
        let username = new
            .username
            .unwrap_or_else(|| Extension::default_username(&new.number, &tenant.code));
        check_segment("username", &username)?;
        let ha1 = sip::auth::StoredHa1::compute(&username, &tenant.sip_domain, &new.password);
        let extension = Extension {
            number: new.number,
            display_name: new.display_name,
            username,
            ha1_md5: ha1.md5,
            ha1_sha256: ha1.sha256,
            max_contacts: crate::model::DEFAULT_MAX_CONTACTS,
            min_expires: crate::model::DEFAULT_MIN_EXPIRES,
            default_expires: crate::model::DEFAULT_EXPIRES,
            max_expires: crate::model::DEFAULT_MAX_EXPIRES,
            remove_existing_on_register: true,
            recording: Default::default(),
            settings: Default::default(),
        };
        self.insert_extension(&tenant.id, &extension).await?;
        Ok(extension)
    }

    /// Stores a fully specified extension if neither its number nor its
    /// username is taken in the tenant.
    pub async fn insert_extension(
        &self,
        tenant_id: &str,
        extension: &Extension,
    ) -> Result<(), RepoError> {
        check_segment("number", &extension.number)?;
        check_segment("username", &extension.username)?;
        if !self
            .write_extensions(tenant_id, std::slice::from_ref(extension), &[], None)
            .await?
        {
            return Err(RepoError::AlreadyExists {
                what: format!(
                    "extension {} or username {}",
                    extension.number, extension.username
                ),
            });
        }
        Ok(())
    }

    pub async fn extension(
        &self,
        tenant_id: &str,
        number: &str,
    ) -> Result<Option<Extension>, RepoError> {
        self.get_json(&extension_key(tenant_id, number)).await
    }

    pub async fn extension_by_username(
        &self,
        tenant_id: &str,
        username: &str,
    ) -> Result<Option<Extension>, RepoError> {
        match self
            .get_text(&username_index_key(tenant_id, username))
            .await?
        {
            Some(number) => self.extension(tenant_id, &number).await,
            None => Ok(None),
        }
    }

    /// Replaces a stored extension's settings; its number and username
    /// stay as they are (the username index is not rewritten).
    pub async fn update_extension(
        &self,
        tenant_id: &str,
        extension: &Extension,
    ) -> Result<(), RepoError> {
        let ext_key = extension_key(tenant_id, &extension.number);
        let idx_key = username_index_key(tenant_id, &extension.username);
        let result = self
            .store
            .txn(
                Txn::new()
                    .when([
                        Compare::exists(ext_key.clone()),
                        Compare::value(idx_key, CompareOp::Equal, extension.number.clone()),
                    ])
                    .and_then([TxnOp::put(ext_key, encode(extension)?)]),
            )
            .await?;
        if !result.succeeded {
            return Err(RepoError::Invalid {
                field: "extension",
                detail: format!(
                    "no extension {} with username {}",
                    extension.number, extension.username
                ),
            });
        }
        Ok(())
    }

    pub async fn put_recording(&self, recording: &Recording) -> Result<(), RepoError> {
        check_segment("recording id", &recording.id)?;
        let key = format!("{}{}", recording_prefix(&recording.tenant_id), recording.id);
        self.store.put(key, encode(recording)?).await?;
        Ok(())
    }

    pub async fn recording(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<Recording>, RepoError> {
        check_segment("recording id", id)?;
        self.get_json(&format!("{}{id}", recording_prefix(tenant_id)))
            .await
    }

    /// A tenant's recordings of calls answered at or after `since_ms`,
    /// oldest first, at most `limit`.
    pub async fn recordings(
        &self,
        tenant_id: &str,
        since_ms: u64,
        limit: u64,
    ) -> Result<Vec<Recording>, RepoError> {
        self.time_ordered(&recording_prefix(tenant_id), since_ms, limit)
            .await
    }

    /// Records under `prefix` whose keys begin with a 16-digit time at or
    /// after `since_ms`, oldest first, at most `limit`.
    pub(crate) async fn time_ordered<T: DeserializeOwned>(
        &self,
        prefix: &str,
        since_ms: u64,
        limit: u64,
    ) -> Result<Vec<T>, RepoError> {
        // The prefix ends in '/'; '0' is the byte after it, so the prefix
        // with '0' in its place ends the prefix's key space.
        let end = format!("{}0", prefix.trim_end_matches('/'));
        let range = self
            .store
            .range(
                KeyRange::between(format!("{prefix}{since_ms:016}"), end),
                limit,
            )
            .await?;
        range
            .kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect()
    }

    pub async fn put_cdr(&self, cdr: &Cdr) -> Result<(), RepoError> {
        check_segment("cdr id", &cdr.id)?;
        self.store.put(cdr_key(cdr), encode(cdr)?).await?;
        Ok(())
    }

    /// Every tenant's id (from the code index).
    pub async fn tenant_ids(&self) -> Result<Vec<String>, RepoError> {
        let range = self.store.range(KeyRange::prefix("/idx/code/"), 0).await?;
        range
            .kvs
            .into_iter()
            .map(|kv| text(&kv.key, kv.value))
            .collect()
    }

    /// Deletes a tenant's CDRs of calls started before `cutoff_ms`, at most
    /// `batch` per write so one write stays small; returns how many went.
    pub async fn delete_cdrs_before(
        &self,
        tenant_id: &str,
        cutoff_ms: u64,
        batch: u64,
    ) -> Result<usize, RepoError> {
        let prefix = cdr_prefix(tenant_id);
        let end = format!("{prefix}{cutoff_ms:016}");
        let mut deleted = 0;
        loop {
            let old = self
                .store
                .range(KeyRange::between(prefix.clone(), end.clone()), batch)
                .await?
                .kvs;
            let Some(last) = old.last() else {
                return Ok(deleted);
            };
            // Up to and including the batch's last key.
            let mut through = last.key.clone();
            through.push(0);
            self.store
                .txn(
                    Txn::new()
                        .and_then([TxnOp::delete(KeyRange::between(prefix.clone(), through))]),
                )
                .await?;
            deleted += old.len();
        }
    }

    /// A tenant's CDRs of calls started at or after `since_ms`, oldest
    /// first, at most `limit`.
    pub async fn cdrs(
        &self,
        tenant_id: &str,
        since_ms: u64,
        limit: u64,
    ) -> Result<Vec<Cdr>, RepoError> {
        self.time_ordered(&cdr_prefix(tenant_id), since_ms, limit)
            .await
    }

    /// The extension's bindings as this node sees them after catching up with
    /// the leader; ones whose lease the leader has not yet expired but whose
    /// time is up at `now_ms` are left out.
    pub async fn bindings(
        &self,
        tenant_id: &str,
        number: &str,
        now_ms: u64,
    ) -> Result<Vec<StoredBinding>, RepoError> {
        Ok(self.current_bindings(tenant_id, number).await?.live(now_ms))
    }

    /// The extension's bindings after this node caught up with the leader.
    pub async fn current_bindings(
        &self,
        tenant_id: &str,
        number: &str,
    ) -> Result<AorBindings, RepoError> {
        let prefix = bindings_prefix(tenant_id, number);
        let range = self
            .store
            .range(KeyRange::prefix(prefix.clone()), 0)
            .await?;
        AorBindings::from_range(prefix, range)
    }

    /// The extension's bindings as this node has applied them: no round
    /// trip, but possibly behind the leader, which [`Repo::write_bindings`]
    /// detects.
    pub fn local_bindings(&self, tenant_id: &str, number: &str) -> Result<AorBindings, RepoError> {
        let prefix = bindings_prefix(tenant_id, number);
        let range = self
            .store
            .range_stale(KeyRange::prefix(prefix.clone()), 0)?;
        AorBindings::from_range(prefix, range)
    }

    /// How many calls of the tenant are in progress cluster-wide (counting
    /// stops past `up_to`), and the store revision they were counted at.
    pub async fn count_call_slots(
        &self,
        tenant_id: &str,
        up_to: u64,
    ) -> Result<(usize, u64), RepoError> {
        let range = self
            .store
            .range(KeyRange::prefix(call_slots_prefix(tenant_id)), up_to + 1)
            .await?;
        Ok((range.kvs.len(), range.revision))
    }

    /// Takes call slot `name` on `lease` if no slot of the tenant was taken
    /// or freed since `counted_at`; `false` = they changed, count again.
    pub async fn take_call_slot(
        &self,
        tenant_id: &str,
        name: &str,
        lease: LeaseId,
        counted_at: u64,
    ) -> Result<bool, RepoError> {
        let prefix = call_slots_prefix(tenant_id);
        let result = self
            .store
            .txn(
                Txn::new()
                    .when([Compare::prefix_mod_revision(
                        prefix.clone(),
                        CompareOp::Less,
                        counted_at + 1,
                    )])
                    .and_then([TxnOp::put_with_lease(
                        format!("{prefix}{name}"),
                        Vec::new(),
                        lease,
                    )]),
            )
            .await?;
        Ok(result.succeeded)
    }

    pub async fn free_call_slot(&self, tenant_id: &str, name: &str) -> Result<(), RepoError> {
        let key = format!("{}{name}", call_slots_prefix(tenant_id));
        self.store.delete(KeyRange::key(key)).await?;
        Ok(())
    }

    /// Writes `upserts` (each on a new lease whose TTL is the binding's
    /// expiry, the lease it had revoked) and removes `removals`, in one
    /// transaction (one Raft entry), if the extension's bindings are still
    /// those of `read`: nothing written under them since, none of them
    /// gone. Otherwise nothing is written and the bindings as they are now
    /// come back, to plan again from. A plan with no writes is checked
    /// the same way, so its answer is never older than the leader's state.
    pub async fn write_bindings(
        &self,
        read: &AorBindings,
        upserts: &[BindingUpsert],
        removals: &[StoredBinding],
    ) -> Result<Option<AorBindings>, RepoError> {
        let mut compares = Vec::with_capacity(read.stored.len() + 1);
        compares.push(Compare::prefix_mod_revision(
            read.prefix.clone(),
            CompareOp::Less,
            read.revision + 1,
        ));
        compares.extend(
            read.stored
                .iter()
                .map(|s| Compare::mod_revision(s.key.clone(), CompareOp::Equal, s.mod_revision)),
        );
        let mut ops = Vec::with_capacity(2 * (upserts.len() + removals.len()));
        for BindingUpsert {
            key,
            binding,
            previous,
        } in upserts
        {
            let ttl = Duration::from_secs(u64::from(binding.expires_secs));
            ops.push(TxnOp::put_on_new_lease(key.clone(), encode(binding)?, ttl));
            // The key moves to its new lease, so revoking the old one only
            // frees it.
            ops.extend(
                previous
                    .iter()
                    .filter_map(|p| p.lease)
                    .map(TxnOp::lease_revoke),
            );
        }
        for removed in removals {
            ops.push(TxnOp::delete(KeyRange::key(removed.key.clone())));
            ops.extend(removed.lease.map(TxnOp::lease_revoke));
        }
        let result = self
            .store
            .txn(
                Txn::new()
                    .when(compares)
                    .and_then(ops)
                    .or_else([TxnOp::Range {
                        range: KeyRange::prefix(read.prefix.clone()),
                        limit: 0,
                    }]),
            )
            .await?;
        if result.succeeded {
            return Ok(None);
        }
        match result.results.into_iter().next() {
            Some(OpResult::Range(range)) => {
                Ok(Some(AorBindings::from_range(read.prefix.clone(), range)?))
            }
            _ => Err(RepoError::Corrupt {
                key: read.prefix.clone(),
                detail: "unexpected transaction result".into(),
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use raft_store::{ClusterCa, StoreConfig};

    /// A one-node store in a temporary directory.
    pub(crate) async fn one_node_store(dir: &std::path::Path) -> RaftStore {
        let ca = ClusterCa::generate("test").expect("CA");
        let identity = ca.issue_node(1).expect("node certificate");
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free port");
        let store = RaftStore::start(
            StoreConfig::new(1, addr, dir.join("raft"), identity),
            &prometheus::Registry::new(),
        )
        .await
        .expect("start store");
        store.initialize().await.expect("initialize");
        store
    }

    fn binding(uri: &str, expires_secs: u32, now_ms: u64) -> Binding {
        Binding {
            contact: format!("<{uri}>"),
            uri: uri.into(),
            instance: None,
            reg_id: None,
            path: Vec::new(),
            call_id: "c1".into(),
            cseq: 1,
            expires_secs,
            expires_at_ms: now_ms + u64::from(expires_secs) * 1000,
            received_from: "udp:127.0.0.1:5060".into(),
        }
    }

    #[tokio::test]
    async fn tenants_and_extensions_are_found_through_their_indexes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let tenant = repo
            .create_tenant("Acme", "acme", "Acme.Example")
            .await
            .expect("tenant");
        assert_eq!(tenant.code, "ACME");
        assert_eq!(
            repo.tenant_by_domain("acme.example").await.expect("read"),
            Some(tenant.clone())
        );
        assert_eq!(
            repo.tenant_by_code("Acme").await.expect("read"),
            Some(tenant.clone())
        );
        assert!(repo.tenant_by_code("OTHER").await.expect("read").is_none());
        assert!(matches!(
            repo.create_tenant("Again", "ACME", "other.example").await,
            Err(RepoError::AlreadyExists { .. })
        ));

        let new = NewExtension {
            number: "100".into(),
            display_name: "Alice".into(),
            username: None,
            password: "s3cret".into(),
        };
        let ext = repo
            .create_extension(&tenant, new.clone())
            .await
            .expect("extension");
        assert_eq!(ext.username, "100-ACME");
        let expected = sip::auth::StoredHa1::compute("100-ACME", "acme.example", "s3cret");
        assert_eq!(ext.stored_ha1(), expected);
        assert_eq!(
            repo.extension_by_username(&tenant.id, "100-ACME")
                .await
                .expect("read"),
            Some(ext.clone())
        );
        assert!(matches!(
            repo.create_extension(&tenant, new).await,
            Err(RepoError::AlreadyExists { .. })
        ));
        // The password appears nowhere in what was stored.
        let all = repo
            .store()
            .range(KeyRange::prefix("/"), 0)
            .await
            .expect("range");
        assert!(all
            .kvs
            .iter()
            .all(|kv| !String::from_utf8_lossy(&kv.value).contains("s3cret")));
        assert!(matches!(
            repo.create_tenant("Bad", "A/B", "x.example").await,
            Err(RepoError::Invalid { field: "code", .. })
        ));
        repo.store().shutdown().await;
    }

    #[tokio::test]
    async fn old_cdrs_are_deleted_in_batches_and_new_ones_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        for start_ms in [1_000, 2_000, 3_000, 4_000, 5_000] {
            let cdr = Cdr {
                id: format!("c{start_ms}"),
                tenant_id: "t1".into(),
                call_id: format!("call-{start_ms}"),
                from: "100".into(),
                to: "101".into(),
                start_ms,
                answer_ms: None,
                end_ms: start_ms + 10,
                disposition: "BUSY".into(),
                hangup_cause: "USER_BUSY".into(),
                hangup_by: "callee".into(),
                sip_status: Some(486),
                node_id: 1,
                recording_id: None,
            };
            repo.put_cdr(&cdr).await.expect("put CDR");
        }
        let deleted = repo
            .delete_cdrs_before("t1", 4_000, 2)
            .await
            .expect("delete");
        assert_eq!(deleted, 3);
        let left: Vec<u64> = repo
            .cdrs("t1", 0, 0)
            .await
            .expect("list")
            .iter()
            .map(|c| c.start_ms)
            .collect();
        assert_eq!(left, [4_000, 5_000]);
        assert_eq!(
            repo.delete_cdrs_before("t2", 4_000, 2).await.expect("none"),
            0
        );
        repo.store().shutdown().await;
    }

    #[tokio::test]
    async fn nonce_secret_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let first = repo.ensure_nonce_secret().await.expect("secret");
        let second = repo.ensure_nonce_secret().await.expect("secret");
        assert_eq!(first.len(), 64);
        assert_eq!(first, second);
        repo.store().shutdown().await;
    }

    #[tokio::test]
    async fn bindings_live_on_leases_and_are_written_only_over_what_was_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::new(one_node_store(dir.path()).await);
        let now = crate::service::unix_now_ms();
        let short = BindingUpsert {
            key: binding_key("t1", "100", "uri:sip:a@192.0.2.1"),
            binding: binding("sip:a@192.0.2.1", 1, now),
            previous: None,
        };
        let long = BindingUpsert {
            key: binding_key("t1", "100", "uri:sip:b@192.0.2.2"),
            binding: binding("sip:b@192.0.2.2", 60, now),
            previous: None,
        };
        let empty = repo.local_bindings("t1", "100").expect("read");
        assert!(empty.live(now).is_empty());
        let written = repo
            .write_bindings(&empty, &[short.clone(), long.clone()], &[])
            .await
            .expect("write");
        assert_eq!(written, None);
        let stored = repo.bindings("t1", "100", now).await.expect("read");
        assert_eq!(stored.len(), 2);
        assert!(stored[0].lease.is_some() && stored[0].lease != stored[1].lease);

        // Planned from a read that no longer holds: nothing is written, and
        // the bindings as they are come back.
        let third = BindingUpsert {
            key: binding_key("t1", "100", "uri:sip:c@192.0.2.3"),
            binding: binding("sip:c@192.0.2.3", 60, now),
            previous: None,
        };
        let current = repo
            .write_bindings(&empty, std::slice::from_ref(&third), &[])
            .await
            .expect("write")
            .expect("a conflict");
        assert_eq!(current.live(now), stored);
        assert_eq!(repo.bindings("t1", "100", now).await.expect("read"), stored);

        // A refresh moves the binding to a new lease and revokes the old.
        let long_stored = stored
            .iter()
            .find(|s| s.key == long.key)
            .cloned()
            .expect("long binding");
        let refresh = BindingUpsert {
            previous: Some(long_stored.clone()),
            ..long.clone()
        };
        let written = repo
            .write_bindings(&current, &[refresh], &[])
            .await
            .expect("refresh");
        assert_eq!(written, None);
        let after = repo.bindings("t1", "100", now).await.expect("read");
        let refreshed = after
            .iter()
            .find(|s| s.key == long.key)
            .expect("still there");
        assert!(refreshed.lease > long_stored.lease);
        let old_lease = long_stored.lease.expect("on a lease");
        assert!(matches!(
            repo.store().lease_keep_alive(old_lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));

        // The leader expires the 1 s lease, deleting the key in the store.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let raw = repo
            .store()
            .range(KeyRange::prefix("/t/t1/reg/100/"), 0)
            .await
            .expect("range");
        let keys: Vec<String> = raw
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        assert_eq!(keys, vec![long.key.clone()]);

        let read = repo.local_bindings("t1", "100").expect("read");
        let live = read.live(now);
        assert_eq!(
            repo.write_bindings(&read, &[], &live)
                .await
                .expect("remove"),
            None
        );
        assert!(repo
            .bindings("t1", "100", now)
            .await
            .expect("read")
            .is_empty());
        assert!(repo
            .store()
            .range(KeyRange::prefix("/t/t1/reg/"), 0)
            .await
            .expect("range")
            .kvs
            .is_empty());
        repo.store().shutdown().await;
    }
}
