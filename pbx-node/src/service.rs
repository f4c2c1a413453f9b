//! The registrar service: digest authentication against the replicated
//! HA1s, tenant lookup and binding writes around the sans-IO core.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use sip::auth::{AuthOutcome, DigestConfig, DigestCredentials, DigestVerifier};
use sip::message::{Method, SipMessage};

use crate::model::{Extension, Tenant};
use crate::registrar::{ok_response, parse_register, plan_bindings};
use crate::repo::{Repo, RepoError};
use crate::tenant::{tenant_lookups, TenantLookup};

/// How long a nonce is accepted before the phone is told it is stale.
const NONCE_LIFETIME_SECS: u64 = 300;
/// Nonces remembered per realm for nonce-count replay checks.
const NONCE_CACHE_CAPACITY: usize = 10_000;
const ALLOWED_METHODS: &str = "REGISTER, OPTIONS";

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Answers requests for every tenant. Shared by all transports.
pub struct RegistrarService {
    repo: Repo,
    nonce_secret: Vec<u8>,
    offer_sha256: bool,
    /// One verifier per realm: it keeps that realm's nonce counts.
    verifiers: Mutex<HashMap<String, DigestVerifier>>,
}

impl RegistrarService {
    /// `offer_sha256 = false` leaves only the MD5 challenge in 401s.
    pub fn new(repo: Repo, nonce_secret: Vec<u8>, offer_sha256: bool) -> Self {
        RegistrarService {
            repo,
            nonce_secret,
            offer_sha256,
            verifiers: Mutex::new(HashMap::new()),
        }
    }

    /// The response to a validated request, `None` when none is due (ACK).
    pub async fn handle_request(
        &self,
        request: &SipMessage,
        received_from: &str,
        now_ms: u64,
    ) -> Option<SipMessage> {
        match request.method()? {
            Method::Register => Some(match self.register(request, received_from, now_ms).await {
                Ok(response) => response,
                Err(e) => {
                    tracing::error!(error = %e, "REGISTER failed on the store");
                    sip::message::response_from_headers(
                        &request.headers,
                        500,
                        "Server Internal Error (store unavailable)",
                    )
                }
            }),
            Method::Ack => None,
            Method::Options => {
                let mut response = request.response(200);
                response.headers.push("Allow", ALLOWED_METHODS);
                Some(response)
            }
            _ => {
                let mut response = request.response(405);
                response.headers.push("Allow", ALLOWED_METHODS);
                Some(response)
            }
        }
    }

    async fn find_tenant(&self, lookups: &[TenantLookup]) -> Result<Option<Tenant>, RepoError> {
        for lookup in lookups {
            let found = match lookup {
                TenantLookup::Domain(domain) => self.repo.tenant_by_domain(domain).await?,
                TenantLookup::Code(code) => self.repo.tenant_by_code(code).await?,
            };
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn with_verifier<T>(&self, realm: &str, f: impl FnOnce(&mut DigestVerifier) -> T) -> T {
        let mut verifiers = self.verifiers.lock().unwrap_or_else(|p| p.into_inner());
        let verifier = verifiers.entry(realm.to_string()).or_insert_with(|| {
            DigestVerifier::new(
                DigestConfig {
                    realm: realm.to_string(),
                    nonce_lifetime_secs: NONCE_LIFETIME_SECS,
                    nonce_cache_capacity: NONCE_CACHE_CAPACITY,
                },
                &self.nonce_secret,
            )
        });
        f(verifier)
    }

    fn challenge(&self, request: &SipMessage, values: Vec<String>) -> SipMessage {
        let mut response = request.response(401);
        let offered = values
            .into_iter()
            .filter(|v| self.offer_sha256 || !v.contains("algorithm=SHA-256"));
        for value in offered {
            response.headers.push("WWW-Authenticate", value);
        }
        response
    }

    async fn register(
        &self,
        request: &SipMessage,
        received_from: &str,
        now_ms: u64,
    ) -> Result<SipMessage, RepoError> {
        let now_secs = now_ms / 1000;
        let credentials = match request.authorization().map(DigestCredentials::parse) {
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                return Ok(sip::message::response_from_headers(
                    &request.headers,
                    400,
                    &format!("Bad Request ({e})"),
                ))
            }
            None => None,
        };
        let username = credentials.as_ref().map(|c| c.username.as_str());
        let Some(tenant) = self.find_tenant(&tenant_lookups(request, username)).await? else {
            return Ok(sip::message::response_from_headers(
                &request.headers,
                404,
                "Not Found (unknown domain)",
            ));
        };
        let realm = tenant.sip_domain.clone();
        let Some(credentials) = credentials else {
            return Ok(self.challenge(
                request,
                self.with_verifier(&realm, |v| v.challenge(false, now_secs)),
            ));
        };
        // An unknown user is verified against a decoy, so it gets exactly
        // the challenge a wrong password gets.
        let extension: Option<Extension> = self
            .repo
            .extension_by_username(&tenant.id, &credentials.username)
            .await?;
        let ha1 = extension.as_ref().map(Extension::stored_ha1);
        let outcome = self.with_verifier(&realm, |v| {
            v.verify(&credentials, "REGISTER", ha1.as_ref(), now_secs)
        });
        let extension = match (outcome, extension) {
            (AuthOutcome::Authorized, Some(extension)) => extension,
            (AuthOutcome::Challenge(values), _) => return Ok(self.challenge(request, values)),
            (AuthOutcome::Authorized, None) => {
                return Ok(self.challenge(
                    request,
                    self.with_verifier(&realm, |v| v.challenge(false, now_secs)),
                ))
            }
        };
        let register = match parse_register(request) {
            Ok(r) => r,
            Err(refusal) => return Ok(refusal.response(request)),
        };
        // A user may only change its own bindings (RFC 3261 §10.3 step 3).
        if register.aor_user != extension.number && register.aor_user != extension.username {
            return Ok(sip::message::response_from_headers(
                &request.headers,
                403,
                "Forbidden (credentials do not match the address of record)",
            ));
        }
        let existing = self
            .repo
            .bindings(&tenant.id, &extension.number, now_ms)
            .await?;
        let plan = match plan_bindings(
            &register,
            &extension,
            &tenant.id,
            &existing,
            received_from,
            now_ms,
        ) {
            Ok(plan) => plan,
            Err(refusal) => return Ok(refusal.response(request)),
        };
        self.repo
            .apply_bindings(&plan.upserts, &plan.removals)
            .await?;
        tracing::info!(
            tenant = %tenant.code,
            extension = %extension.number,
            call_id = %register.call_id,
            bindings = plan.result.len(),
            "registered"
        );
        Ok(ok_response(request, &plan.result, now_ms))
    }
}
