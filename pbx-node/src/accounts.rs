//! Accounts of the management plane, replicated in raft-store: portal and
//! API users (argon2 password hashes), custom roles, login sessions on
//! leases, API keys, and the lockout after repeated failed logins.
//!
//! Layout:
//! - `/users/<username>` → [`User`]
//! - `/t/<tenant id>/role/<name>` → [`CustomRole`]
//! - `/auth/session/<SHA-256 of the token, hex>` → [`Session`], on a lease
//!   whose TTL is the session's life, so it ends on every node at once
//! - `/auth/apikey/<id>` → [`ApiKey`] (the secret only as SHA-256)
//! - `/auth/lockout/<username>` → [`Lockout`]

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use raft_store::{Compare, KeyRange, Txn, TxnOp};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use crate::access::{Grant, Role};
use crate::repo::{decode, Repo, RepoError};

/// A portal/API user. Extensions' users log in with the extension's web
/// credentials instead and have no record here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub display_name: String,
    pub email: String,
    /// argon2id in PHC string form.
    pub password_hash: String,
    pub role: Role,
    /// `None` for system-wide users (system administrators).
    pub tenant_id: Option<String>,
    pub enabled: bool,
    pub created_ms: u64,
}

/// A tenant's named set of grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CustomRole {
    pub name: String,
    pub grants: Vec<Grant>,
}

/// Who a session or API key acts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    User {
        username: String,
    },
    /// An extension's user, logged in with its web credentials.
    Extension {
        tenant_id: String,
        number: String,
        username: String,
    },
}

impl Subject {
    pub fn username(&self) -> &str {
        match self {
            Subject::User { username } | Subject::Extension { username, .. } => username,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub subject: Subject,
    pub created_ms: u64,
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub subject: Subject,
    /// SHA-256 of the secret part, hex: the secret is random, 256 bits,
    /// so a fast hash is enough and keeps every API call cheap.
    pub secret_sha256: String,
    pub created_ms: u64,
}

/// Failed logins of one username and the lock they caused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lockout {
    /// Times of the failures inside the window, oldest first.
    pub failures_ms: Vec<u64>,
    pub locked_until_ms: u64,
}

/// When repeated failures lock an account, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutPolicy {
    pub max_failures: usize,
    pub window_ms: u64,
    pub lock_ms: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            window_ms: 15 * 60 * 1000,
            lock_ms: 15 * 60 * 1000,
        }
    }
}

impl Lockout {
    pub fn is_locked(&self, now_ms: u64) -> bool {
        now_ms < self.locked_until_ms
    }

    /// Counts a failure at `now_ms`; returns true when it locks the account.
    pub fn record_failure(&mut self, now_ms: u64, policy: &LockoutPolicy) -> bool {
        let since = now_ms.saturating_sub(policy.window_ms);
        self.failures_ms.retain(|&t| t > since);
        self.failures_ms.push(now_ms);
        if self.failures_ms.len() >= policy.max_failures {
            self.locked_until_ms = now_ms + policy.lock_ms;
            self.failures_ms.clear();
            return true;
        }
        false
    }
}

/// The password policy of portal, API and web-panel passwords: long
/// enough, with letters and digits, and not the username.
pub fn check_password_policy(username: &str, password: &str) -> Result<(), String> {
    if password.chars().count() < 10 {
        return Err("must be at least 10 characters".into());
    }
    if password.chars().count() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if !password.chars().any(|c| c.is_alphabetic()) || !password.chars().any(|c| c.is_numeric()) {
        return Err("must contain letters and digits".into());
    }
    if password.eq_ignore_ascii_case(username) {
        return Err("must not be the username".into());
    }
    Ok(())
}

/// argon2id hash of a password, PHC string form.
pub fn hash_password(password: &str) -> Result<String, RepoError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| RepoError::Invalid {
        field: "password",
        detail: e.to_string(),
    })?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RepoError::Invalid {
            field: "password",
            detail: e.to_string(),
        })
}

/// [`hash_password`] from a request handler: on the multi-threaded
/// runtime the worker hands its other tasks to the rest for the tens of
/// milliseconds argon2 takes, instead of stalling them.
pub fn hash_password_in_handler(password: &str) -> Result<String, RepoError> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(|| hash_password(password)),
        _ => hash_password(password),
    }
}

/// Checks a password against a stored hash; a hash that does not parse
/// matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// [`verify_password`] on the blocking pool (argon2 spends tens of
/// milliseconds of CPU, which must not stall the async workers). Without a
/// hash the decoy is checked, so a missing account takes as long.
pub async fn check_password(password: &str, hash: Option<&str>) -> bool {
    let password = password.to_string();
    let hash = hash.map(str::to_string);
    tokio::task::spawn_blocking(move || match hash {
        Some(hash) => verify_password(&password, &hash),
        None => {
            verify_password(&password, decoy_hash());
            false
        }
    })
    .await
    .unwrap_or(false)
}

/// The system administrator every cluster starts with.
pub const ADMIN_USERNAME: &str = "admin";

/// A random password that meets the policy: 4 groups of 5 letters and
/// digits, with a digit in each group.
pub fn random_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    use rand::Rng;
    let mut rng = rand::rng();
    (0..4)
        .map(|_| {
            let mut group = Alphanumeric.sample_string(&mut rng, 4);
            group.push(char::from(b'0' + rng.random_range(0..10u8)));
            group
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// A hash nobody's password matches, verified for unknown usernames so a
/// login takes as long whether or not the account exists.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let mut random = [0u8; 24];
        rand::rng().fill_bytes(&mut random);
        hash_password(&hex::encode(random)).unwrap_or_default()
    })
}

/// Usernames: lower-case letters, digits and `._@-`, 1 to 64 of them.
pub fn check_username(username: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&username.len())
        && username.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '@' | '-')
        });
    if ok {
        Ok(())
    } else {
        Err("1 to 64 of a-z, 0-9 and . _ @ -".into())
    }
}

/// Could name an account (a portal user or an extension's username), so
/// its failed logins are counted under `/auth/lockout/<name>`.
pub fn is_login_name(name: &str) -> bool {
    (1..=128).contains(&name.len()) && !name.contains('/') && !name.chars().any(char::is_control)
}

fn user_key(username: &str) -> String {
    format!("/users/{username}")
}

fn role_prefix(tenant_id: &str) -> String {
    format!("/t/{tenant_id}/role/")
}

fn session_key(token: &str) -> String {
    format!(
        "/auth/session/{}",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

fn api_key_key(id: &str) -> String {
    format!("/auth/apikey/{id}")
}

fn lockout_key(username: &str) -> String {
    format!("/auth/lockout/{}", username.to_ascii_lowercase())
}

fn random_token(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The prefix of every API key, so leaked keys are easy to spot.
const API_KEY_PREFIX: &str = "pbxk";

/// Splits `pbxk_<id>_<secret>`.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(API_KEY_PREFIX)?.strip_prefix('_')?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
        .then_some((id, secret))
}

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, RepoError> {
    serde_json::to_vec(value).map_err(|e| RepoError::Invalid {
        field: "value",
        detail: e.to_string(),
    })
}

/// Typed access to the account records.
#[derive(Clone)]
pub struct Accounts {
    repo: Repo,
}

impl Accounts {
    pub fn new(repo: Repo) -> Self {
        Accounts { repo }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, RepoError> {
        match self.repo.store().get(key).await? {
            Some(kv) => Ok(Some(decode(&kv.key, &kv.value)?)),
            None => Ok(None),
        }
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, RepoError> {
        let range = self.repo.store().range(KeyRange::prefix(prefix), 0).await?;
        range
            .kvs
            .iter()
            .map(|kv| decode(&kv.key, &kv.value))
            .collect()
    }

    pub async fn user(&self, username: &str) -> Result<Option<User>, RepoError> {
        if check_username(username).is_err() {
            return Ok(None);
        }
        self.get(&user_key(username)).await
    }

    pub async fn users(&self) -> Result<Vec<User>, RepoError> {
        self.list("/users/").await
    }

    /// Stores a new user; the username must be free.
    pub async fn create_user(&self, user: &User) -> Result<(), RepoError> {
        check_username(&user.username).map_err(|detail| RepoError::Invalid {
            field: "username",
            detail,
        })?;
        if !self.put_user_if(user, Compare::absent).await? {
            return Err(RepoError::AlreadyExists {
                what: format!("user {}", user.username),
            });
        }
        Ok(())
    }

    /// Replaces an existing user.
    pub async fn update_user(&self, user: &User) -> Result<(), RepoError> {
        if !self.put_user_if(user, Compare::exists).await? {
            return Err(RepoError::Invalid {
                field: "username",
                detail: format!("no user {}", user.username),
            });
        }
        Ok(())
    }

    /// Writes `user` if its key passes `condition`; whether it did.
    async fn put_user_if(
        &self,
        user: &User,
        condition: fn(String) -> Compare,
    ) -> Result<bool, RepoError> {
        let key = user_key(&user.username);
        let result = self
            .repo
            .store()
            .txn(
                Txn::new()
                    .when([condition(key.clone())])
                    .and_then([TxnOp::put(key, encode_json(user)?)]),
            )
            .await?;
        Ok(result.succeeded)
    }

    /// Deletes a user, its API keys and its lockout record; its sessions
    /// stop working at once because each request re-reads the user.
    pub async fn delete_user(&self, username: &str) -> Result<bool, RepoError> {
        let subject = Subject::User {
            username: username.to_string(),
        };
        let mut ops = vec![
            TxnOp::delete(KeyRange::key(user_key(username))),
            TxnOp::delete(KeyRange::key(lockout_key(username))),
        ];
        for key in self.api_keys_of(&subject).await? {
            ops.push(TxnOp::delete(KeyRange::key(api_key_key(&key.id))));
        }
        let result = self
            .repo
            .store()
            .txn(
                Txn::new()
                    .when([Compare::exists(user_key(username))])
                    .and_then(ops),
            )
            .await?;
        Ok(result.succeeded)
    }

    pub async fn custom_role(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<CustomRole>, RepoError> {
        if check_username(name).is_err() {
            return Ok(None);
        }
        self.get(&format!("{}{name}", role_prefix(tenant_id))).await
    }

    pub async fn custom_roles(&self, tenant_id: &str) -> Result<Vec<CustomRole>, RepoError> {
        self.list(&role_prefix(tenant_id)).await
    }

    /// Creates or replaces a tenant's custom role.
    pub async fn put_custom_role(
        &self,
        tenant_id: &str,
        role: &CustomRole,
    ) -> Result<(), RepoError> {
        check_username(&role.name).map_err(|detail| RepoError::Invalid {
            field: "name",
            detail,
        })?;
        self.repo
            .store()
            .put(
                format!("{}{}", role_prefix(tenant_id), role.name),
                encode_json(role)?,
            )
            .await?;
        Ok(())
    }

    pub async fn delete_custom_role(&self, tenant_id: &str, name: &str) -> Result<bool, RepoError> {
        if check_username(name).is_err() {
            return Ok(false);
        }
        let (deleted, _) = self
            .repo
            .store()
            .delete(KeyRange::key(format!("{}{name}", role_prefix(tenant_id))))
            .await?;
        Ok(!deleted.is_empty())
    }

    /// Starts a session for `subject`; returns the bearer token, which
    /// exists nowhere else.
    pub async fn create_session(
        &self,
        subject: Subject,
        now_ms: u64,
        ttl: Duration,
    ) -> Result<(String, Session), RepoError> {
        let token = random_token(32);
        let session = Session {
            subject,
            created_ms: now_ms,
            expires_ms: now_ms + u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let store = self.repo.store();
        let lease = store.lease_grant(ttl).await?;
        store
            .put_with_lease(session_key(&token), encode_json(&session)?, lease)
            .await?;
        Ok((token, session))
    }

    /// The live session of a bearer token.
    pub async fn session(&self, token: &str, now_ms: u64) -> Result<Option<Session>, RepoError> {
        let session: Option<Session> = self.get(&session_key(token)).await?;
        // The lease ends it on every node; this covers the instant between
        // its expiry and the leader applying that.
        Ok(session.filter(|s| s.expires_ms > now_ms))
    }

    /// Ends a session; its lease goes with it.
    pub async fn end_session(&self, token: &str) -> Result<(), RepoError> {
        let store = self.repo.store();
        let (deleted, _) = store.delete(KeyRange::key(session_key(token))).await?;
        for kv in deleted {
            if let Some(lease) = kv.lease {
                // Already expired is fine: the key is gone either way.
                let _ = store.lease_revoke(lease).await;
            }
        }
        Ok(())
    }

    /// Creates an API key acting for `subject`; returns the key, shown once.
    pub async fn create_api_key(
        &self,
        name: &str,
        subject: Subject,
        now_ms: u64,
    ) -> Result<(String, ApiKey), RepoError> {
        let mut raw_id = [0u8; 8];
        rand::rng().fill_bytes(&mut raw_id);
        let id = hex::encode(raw_id);
        let secret = random_token(32);
        let key = ApiKey {
            id: id.clone(),
            name: name.to_string(),
            subject,
            secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
            created_ms: now_ms,
        };
        self.repo
            .store()
            .put(api_key_key(&id), encode_json(&key)?)
            .await?;
        Ok((format!("{API_KEY_PREFIX}_{id}_{secret}"), key))
    }

    /// The API key `key` names, if its secret matches.
    pub async fn api_key(&self, key: &str) -> Result<Option<ApiKey>, RepoError> {
        let Some((id, secret)) = parse_api_key(key) else {
            return Ok(None);
        };
        let stored: Option<ApiKey> = self.get(&api_key_key(id)).await?;
        let presented = hex::encode(Sha256::digest(secret.as_bytes()));
        Ok(stored.filter(|k| bool::from(k.secret_sha256.as_bytes().ct_eq(presented.as_bytes()))))
    }

    pub async fn api_keys_of(&self, subject: &Subject) -> Result<Vec<ApiKey>, RepoError> {
        let all: Vec<ApiKey> = self.list("/auth/apikey/").await?;
        Ok(all.into_iter().filter(|k| &k.subject == subject).collect())
    }

    /// Deletes `subject`'s key `id`; false if it has none by that id.
    pub async fn delete_api_key(&self, subject: &Subject, id: &str) -> Result<bool, RepoError> {
        if !id.chars().all(|c| c.is_ascii_hexdigit()) || id.is_empty() {
            return Ok(false);
        }
        let stored: Option<ApiKey> = self.get(&api_key_key(id)).await?;
        match stored {
            Some(key) if &key.subject == subject => {
                self.repo
                    .store()
                    .delete(KeyRange::key(api_key_key(id)))
                    .await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Creates the system administrator `admin` if it does not exist, with
    /// `password` or a random one; returns the password it was given when
    /// it was created now (shown once: only its hash is kept).
    pub async fn ensure_admin(
        &self,
        password: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<String>, RepoError> {
        if self.user(ADMIN_USERNAME).await?.is_some() {
            return Ok(None);
        }
        let password = match password {
            Some(p) => {
                check_password_policy(ADMIN_USERNAME, p).map_err(|detail| RepoError::Invalid {
                    field: "admin_password",
                    detail,
                })?;
                p.to_string()
            }
            None => random_password(),
        };
        let admin = User {
            username: ADMIN_USERNAME.to_string(),
            display_name: "System administrator".to_string(),
            email: String::new(),
            password_hash: hash_password(&password)?,
            role: Role::SystemAdmin,
            tenant_id: None,
            enabled: true,
            created_ms: now_ms,
        };
        match self.create_user(&admin).await {
            Ok(()) => Ok(Some(password)),
            // Another node created it first.
            Err(RepoError::AlreadyExists { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn lockout(&self, username: &str) -> Result<Lockout, RepoError> {
        Ok(self.get(&lockout_key(username)).await?.unwrap_or_default())
    }

    /// Records a failed login; returns true when it locked the account.
    pub async fn record_failed_login(
        &self,
        username: &str,
        now_ms: u64,
        policy: &LockoutPolicy,
    ) -> Result<bool, RepoError> {
        let mut lockout = self.lockout(username).await?;
        let locked = lockout.record_failure(now_ms, policy);
        // On a lease that outlives both the window and the lock, so the
        // records of names tried once (existing or not) go away by themselves.
        let store = self.repo.store();
        let ttl = Duration::from_millis(policy.window_ms.max(policy.lock_ms));
        let lease = store.lease_grant(ttl).await?;
        store
            .put_with_lease(lockout_key(username), encode_json(&lockout)?, lease)
            .await?;
        Ok(locked)
    }

    pub async fn clear_failed_logins(&self, username: &str) -> Result<(), RepoError> {
        self.repo
            .store()
            .delete(KeyRange::key(lockout_key(username)))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_in_the_window_lock_the_account_for_a_while() {
        let policy = LockoutPolicy::default();
        let mut lockout = Lockout::default();
        for i in 0..4 {
            assert!(!lockout.record_failure(1_000 + i, &policy));
        }
        assert!(!lockout.is_locked(2_000));
        assert!(lockout.record_failure(2_000, &policy));
        assert!(lockout.is_locked(2_000 + policy.lock_ms - 1));
        assert!(!lockout.is_locked(2_000 + policy.lock_ms));
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let policy = LockoutPolicy::default();
        let mut lockout = Lockout::default();
        for i in 0..4 {
            lockout.record_failure(i, &policy);
        }
        assert!(!lockout.record_failure(policy.window_ms + 10, &policy));
        assert_eq!(lockout.failures_ms.len(), 1);
    }

    #[test]
    fn password_policy_refuses_short_simple_and_username_passwords() {
        assert!(check_password_policy("alice", "short1").is_err());
        assert!(check_password_policy("alice", "onlyletterslong").is_err());
        assert!(check_password_policy("alice", "1234567890").is_err());
        assert!(check_password_policy("alice1234567", "ALICE1234567").is_err());
        assert!(check_password_policy("alice", "correct horse 9").is_ok());
    }

    #[test]
    fn passwords_verify_only_against_their_own_hash() {
        let hash = hash_password("s3cret-password").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("s3cret-password", &hash));
        assert!(!verify_password("s3cret-passwore", &hash));
        assert!(!verify_password("s3cret-password", "not a hash"));
        assert!(!verify_password("anything", decoy_hash()));
    }

    #[test]
    fn api_keys_split_into_id_and_secret() {
        assert_eq!(
            parse_api_key("pbxk_0a1b_sec_ret"),
            Some(("0a1b", "sec_ret"))
        );
        assert_eq!(parse_api_key("pbxk__secret"), None);
        assert_eq!(parse_api_key("pbxk_zz_secret"), None);
        assert_eq!(parse_api_key("Bearer xyz"), None);
    }

    #[test]
    fn usernames_are_lower_case_and_cannot_escape_their_key() {
        assert!(check_username("alice@acme.example").is_ok());
        assert!(check_username("Alice").is_err());
        assert!(check_username("a/b").is_err());
        assert!(check_username("").is_err());
    }
}
