//! The repository's management-plane operations on tenants and
//! extensions: listing, updating and deleting whole records (the call
//! path only reads them, through the directory).

use raft_store::{Compare, CompareOp, KeyRange, Txn, TxnOp};

use crate::model::{Extension, Tenant};
use crate::repo::{
    code_index_key, decode, domain_index_key, encode, extension_key, prefix_end, tenant_key, text,
    username_index_key, Repo, RepoError,
};

impl Repo {
    /// Every tenant, in code order. The index read is linearizable; the
    /// records are then read locally, at least as new as the index.
    pub async fn tenants(&self) -> Result<Vec<Tenant>, RepoError> {
        let index = self
            .store()
            .range(KeyRange::prefix("/idx/code/"), 0)
            .await?;
        let mut tenants = Vec::with_capacity(index.kvs.len());
        for kv in index.kvs {
            let id = text(&kv.key, kv.value)?;
            let records = self
                .store()
                .range_stale(KeyRange::key(tenant_key(&id)), 1)?;
            if let Some(record) = records.kvs.first() {
                tenants.push(decode(&record.key, &record.value)?);
            }
        }
        Ok(tenants)
    }

    /// Replaces a tenant's record; its code and SIP domain must not change
    /// (the domain is the realm of every stored HA1).
    pub async fn update_tenant(&self, tenant: &Tenant) -> Result<(), RepoError> {
        let key = tenant_key(&tenant.id);
        let result = self
            .store()
            .txn(
                Txn::new()
                    .when([
                        Compare::exists(key.clone()),
                        Compare::value(
                            code_index_key(&tenant.code),
                            CompareOp::Equal,
                            tenant.id.clone(),
                        ),
                        Compare::value(
                            domain_index_key(&tenant.sip_domain),
                            CompareOp::Equal,
                            tenant.id.clone(),
                        ),
                    ])
                    .and_then([TxnOp::put(key, encode(tenant)?)]),
            )
            .await?;
        if !result.succeeded {
            return Err(RepoError::Invalid {
                field: "code",
                detail: format!("tenant {} changed or went away meanwhile", tenant.code),
            });
        }
        Ok(())
    }

    /// Deletes a tenant and everything under its prefix (extensions,
    /// bindings, CDRs, recordings' index, roles, audit) in one write.
    pub async fn delete_tenant(&self, tenant: &Tenant) -> Result<(), RepoError> {
        let prefix = format!("/t/{}/", tenant.id);
        let end = prefix_end(&prefix);
        self.store()
            .txn(Txn::new().and_then([
                TxnOp::delete(KeyRange::between(prefix.into_bytes(), end)),
                TxnOp::delete(KeyRange::key(code_index_key(&tenant.code))),
                TxnOp::delete(KeyRange::key(domain_index_key(&tenant.sip_domain))),
            ]))
            .await?;
        Ok(())
    }

    /// A tenant's extensions (linearizable), in key order.
    pub async fn extensions(&self, tenant_id: &str) -> Result<Vec<Extension>, RepoError> {
        Ok(self
            .extension_records(tenant_id)
            .await?
            .into_iter()
            .map(|(extension, _)| extension)
            .collect())
    }

    /// A tenant's extensions with the revision each was last written at,
    /// for writes that must not overwrite a change made meanwhile.
    pub async fn extension_records(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<(Extension, u64)>, RepoError> {
        let range = self
            .store()
            .range(KeyRange::prefix(extension_key(tenant_id, "")), 0)
            .await?;
        range
            .kvs
            .iter()
            .map(|kv| Ok((decode(&kv.key, &kv.value)?, kv.mod_revision)))
            .collect()
    }

    /// How many extensions the tenant has, and the store revision they
    /// were counted at (for [`Repo::write_extensions`]' `counted_at`).
    pub async fn count_extensions(&self, tenant_id: &str) -> Result<(usize, u64), RepoError> {
        // The username index changes only when an extension is created or
        // deleted, never on an update.
        let range = self
            .store()
            .range(KeyRange::prefix(username_index_key(tenant_id, "")), 0)
            .await?;
        Ok((range.kvs.len(), range.revision))
    }

    /// Creates `creates` and replaces `updates` (each with the revision it
    /// was read at) in one write: all of it, or nothing if a number or
    /// username is taken, an updated extension changed meanwhile, or (with
    /// `counted_at`) an extension was created or deleted in the tenant
    /// since that count.
    pub async fn write_extensions(
        &self,
        tenant_id: &str,
        creates: &[Extension],
        updates: &[(Extension, u64)],
        counted_at: Option<u64>,
    ) -> Result<bool, RepoError> {
        let mut compares = Vec::with_capacity(2 * creates.len() + updates.len() + 1);
        compares.extend(counted_at.map(|revision| {
            Compare::prefix_mod_revision(
                username_index_key(tenant_id, ""),
                CompareOp::Less,
                revision + 1,
            )
        }));
        let mut ops = Vec::with_capacity(2 * creates.len() + updates.len());
        for extension in creates {
            let key = extension_key(tenant_id, &extension.number);
            let index = username_index_key(tenant_id, &extension.username);
            compares.push(Compare::absent(key.clone()));
            compares.push(Compare::absent(index.clone()));
            ops.push(TxnOp::put(key, encode(extension)?));
            ops.push(TxnOp::put(index, extension.number.clone()));
        }
        for (extension, revision) in updates {
            let key = extension_key(tenant_id, &extension.number);
            compares.push(Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                *revision,
            ));
            ops.push(TxnOp::put(key, encode(extension)?));
        }
        if ops.is_empty() {
            return Ok(true);
        }
        let result = self
            .store()
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        Ok(result.succeeded)
    }

    /// Deletes `extensions` with their indexes and bindings in one write,
    /// if every one of them still exists.
    pub async fn delete_extensions(
        &self,
        tenant_id: &str,
        extensions: &[Extension],
    ) -> Result<bool, RepoError> {
        let mut compares = Vec::with_capacity(extensions.len());
        let mut ops = Vec::with_capacity(3 * extensions.len());
        for extension in extensions {
            let key = extension_key(tenant_id, &extension.number);
            let bindings = format!("/t/{tenant_id}/reg/{}/", extension.number);
            let bindings_end = prefix_end(&bindings);
            compares.push(Compare::exists(key.clone()));
            ops.push(TxnOp::delete(KeyRange::key(key)));
            ops.push(TxnOp::delete(KeyRange::key(username_index_key(
                tenant_id,
                &extension.username,
            ))));
            ops.push(TxnOp::delete(KeyRange::between(
                bindings.into_bytes(),
                bindings_end,
            )));
        }
        let result = self
            .store()
            .txn(Txn::new().when(compares).and_then(ops))
            .await?;
        Ok(result.succeeded)
    }

    /// Deletes an extension with its username index and its bindings.
    pub async fn delete_extension(
        &self,
        tenant_id: &str,
        extension: &Extension,
    ) -> Result<bool, RepoError> {
        self.delete_extensions(tenant_id, std::slice::from_ref(extension))
            .await
    }
}
