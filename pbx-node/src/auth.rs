//! SIP digest authentication of a request against the replicated HA1s:
//! REGISTER is challenged with 401/WWW-Authenticate, calls with
//! 407/Proxy-Authenticate (RFC 3261 §22). An unknown user gets exactly the
//! challenge a wrong password gets, so no extension can be enumerated.

use std::collections::HashMap;
use std::sync::Mutex;

use sip::auth::{
    AuthOutcome, ChallengeKind, DigestConfig, DigestCredentials, DigestVerifier, NonceKey,
};
use sip::message::SipMessage;

use crate::directory::Directory;
use crate::model::{Extension, Tenant};
use crate::repo::RepoError;
use sip::tenancy::{tenant_lookups, TenantLookup};

/// How long a nonce is accepted before the phone is told it is stale.
const NONCE_LIFETIME_SECS: u64 = 300;
/// Nonces remembered per realm for nonce-count replay checks.
const NONCE_CACHE_CAPACITY: usize = 10_000;
/// The realm of a challenge when the request names no tenant at all.
const UNKNOWN_REALM: &str = "pbx";

/// The result of authenticating a request.
#[derive(Debug)]
pub enum Authenticated {
    Extension {
        tenant: Tenant,
        extension: Box<Extension>,
    },
    /// Answer the request with this (a challenge or 400).
    Refused(SipMessage),
}

/// Digest verification for every tenant, shared by all requests.
pub struct Authenticator {
    directory: Directory,
    nonce_secret: Vec<u8>,
    /// The SBC's: phones may answer its challenges.
    edge_nonce_key: Option<NonceKey>,
    offer_sha256: bool,
    /// One verifier per realm: it keeps that realm's nonce counts.
    verifiers: Mutex<HashMap<String, DigestVerifier>>,
}

impl Authenticator {
    /// `offer_sha256 = false` leaves only the MD5 challenge.
    pub fn new(
        directory: Directory,
        nonce_secret: Vec<u8>,
        offer_sha256: bool,
        edge_nonce_key: Option<NonceKey>,
    ) -> Self {
        Authenticator {
            directory,
            nonce_secret,
            edge_nonce_key,
            offer_sha256,
            verifiers: Mutex::new(HashMap::new()),
        }
    }

    async fn find_tenant(&self, lookups: &[TenantLookup]) -> Result<Option<Tenant>, RepoError> {
        for lookup in lookups {
            let found = match lookup {
                TenantLookup::Domain(domain) => self.directory.tenant_by_domain(domain).await?,
                TenantLookup::Code(code) => self.directory.tenant_by_code(code).await?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn with_verifier<T>(&self, realm: &str, f: impl FnOnce(&mut DigestVerifier) -> T) -> T {
        let mut verifiers = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        let verifier = verifiers
            .entry(realm.to_string())
            .or_insert_with(|| self.verifier(realm.to_string(), NONCE_CACHE_CAPACITY));
        f(verifier)
    }

    fn verifier(&self, realm: String, nonce_cache_capacity: usize) -> DigestVerifier {
        let verifier = DigestVerifier::new(
            DigestConfig {
                realm,
                nonce_lifetime_secs: NONCE_LIFETIME_SECS,
                nonce_cache_capacity,
            },
            &self.nonce_secret,
        );
        match &self.edge_nonce_key {
            Some(key) => verifier.accepting(key.clone()),
            None => verifier,
        }
    }

    fn challenge(
        &self,
        request: &SipMessage,
        kind: ChallengeKind,
        values: Vec<String>,
    ) -> SipMessage {
        let mut response = request.response(kind.status());
        let offered = values
            .into_iter()
            .filter(|v| self.offer_sha256 || !v.contains("algorithm=SHA-256"));
        for value in offered {
            response.headers.push(kind.challenge_header(), value);
        }
        response
    }

    fn fresh_challenge(
        &self,
        request: &SipMessage,
        kind: ChallengeKind,
        realm: &str,
        now_secs: u64,
    ) -> SipMessage {
        let values = self.with_verifier(realm, |v| v.challenge(false, now_secs));
        self.challenge(request, kind, values)
    }

    /// Authenticates `request` as one of its tenant's extensions.
    pub async fn authenticate(
        &self,
        request: &SipMessage,
        kind: ChallengeKind,
        now_ms: u64,
    ) -> Result<Authenticated, RepoError> {
        let now_secs = now_ms / 1000;
        let method = request.method().map_or("", |m| m.as_str());
        let offered = kind.credentials(request);
        // Another scheme (RFC 4475 regaut01) is a challenge, not an error:
        // the phone may also speak Digest.
        let digest = offered.filter(|v| {
            v.trim_start()
                .get(..6)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("digest"))
        });
        let credentials = match digest.map(DigestCredentials::parse) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                return Ok(Authenticated::Refused(sip::message::response_from_headers(
                    &request.headers,
                    400,
                    &format!("Bad Request ({e})"),
                )))
            }
            None => None,
        };
        let username = credentials.as_ref().map(|c| c.username.as_str());
        let lookups = tenant_lookups(request, username);
        let Some(tenant) = self.find_tenant(&lookups).await? else {
            // An unknown domain is challenged like a known one (in a realm
            // named after it), so probing reveals no tenant either.
            let realm = match lookups.first() {
                Some(TenantLookup::Domain(domain)) => domain.clone(),
                _ => UNKNOWN_REALM.to_string(),
            };
            // A throwaway verifier: made-up domains must not grow memory.
            let values = self.verifier(realm, 1).challenge(false, now_secs);
            return Ok(Authenticated::Refused(
                self.challenge(request, kind, values),
            ));
        };
        let realm = tenant.sip_domain.clone();
        let Some(credentials) = credentials else {
            return Ok(Authenticated::Refused(
                self.fresh_challenge(request, kind, &realm, now_secs),
            ));
        };
        // An unknown user is verified against a decoy, so it gets exactly
        // the challenge a wrong password gets.
        let extension = self
            .directory
            .extension_by_username(&tenant.id, &credentials.username)
            .await?;
        let ha1 = extension.as_ref().map(Extension::stored_ha1);
        let outcome = self.with_verifier(&realm, |v| {
            v.verify(&credentials, method, ha1.as_ref(), now_secs)
        });
        Ok(match (outcome, extension) {
            // A disabled tenant's phones neither register nor call; they
            // proved who they are, so they may hear why.
            (AuthOutcome::Authorized, Some(_)) if !tenant.enabled => Authenticated::Refused(
                sip::message::response_from_headers(&request.headers, 403, "Tenant Disabled"),
            ),
            (AuthOutcome::Authorized, Some(extension)) => Authenticated::Extension {
                tenant,
                extension: Box::new(extension),
            },
            (AuthOutcome::Challenge(values), _) => {
                Authenticated::Refused(self.challenge(request, kind, values))
            }
            (AuthOutcome::Authorized, None) => {
                Authenticated::Refused(self.fresh_challenge(request, kind, &realm, now_secs))
            }
        })
    }
}
