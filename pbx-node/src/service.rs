//! The registrar service: digest authentication against the replicated
//! HA1s, tenant lookup and binding writes around the sans-IO core.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use sip::endpoint::Peer;
use sip::message::SipMessage;

use crate::auth::{Authenticated, Authenticator};
use crate::registrar::{
    device_ip, ok_response, parse_register, plan_bindings, registration_allowed,
};
use crate::repo::{Repo, RepoError};
use sip::auth::ChallengeKind;

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How many times a REGISTER plans and writes before giving up: each
/// retry follows a write by someone else to the same extension's bindings
/// (or this node's lag, once).
const WRITE_ATTEMPTS: u32 = 5;

/// Answers REGISTER for every tenant.
pub struct RegistrarService {
    repo: Repo,
    auth: Arc<Authenticator>,
    /// Edge proxies (the SBC) whose requests name the device's address in
    /// its Via.
    trusted_proxies: Vec<IpNet>,
}

/// `udp:192.0.2.1:5060`: where a binding's device is reached when it has
/// no Path.
fn received_from(source: Peer) -> String {
    let transport = source.transport.via_name().to_ascii_lowercase();
    format!("{transport}:{}", source.addr)
}

impl RegistrarService {
    pub fn new(repo: Repo, auth: Arc<Authenticator>, trusted_proxies: Vec<IpNet>) -> Self {
        RegistrarService {
            repo,
            auth,
            trusted_proxies,
        }
    }

    /// The response to a validated REGISTER from `source`.
    pub async fn handle_register(
        &self,
        request: &SipMessage,
        source: Peer,
        now_ms: u64,
    ) -> SipMessage {
        match self.register(request, source, now_ms).await {
            Ok(response) => response,
            Err(e @ RepoError::Conflict { .. }) => {
                tracing::warn!(error = %e, "REGISTER gave up");
                let mut response = sip::message::response_from_headers(
                    &request.headers,
                    500,
                    "Server Internal Error (bindings changed concurrently)",
                );
                response.headers.push("Retry-After", "1");
                response
            }
            Err(e) => {
                tracing::error!(error = %e, "REGISTER failed on the store");
                sip::message::response_from_headers(
                    &request.headers,
                    500,
                    "Server Internal Error (store unavailable)",
                )
            }
        }
    }

    async fn register(
        &self,
        request: &SipMessage,
        source: Peer,
        now_ms: u64,
    ) -> Result<SipMessage, RepoError> {
        let (tenant, extension) = match self
            .auth
            .authenticate(request, ChallengeKind::Www, now_ms)
            .await?
        {
            Authenticated::Extension { tenant, extension } => (tenant, extension),
            Authenticated::Refused(response) => return Ok(response),
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
        // Checked only once authenticated, so it reveals nothing to a
        // stranger.
        let device = || device_ip(request, source.addr.ip(), &self.trusted_proxies);
        if !registration_allowed(&extension, device) {
            tracing::info!(
                tenant = %tenant.code,
                extension = %extension.number,
                device = ?device(),
                "REGISTER from outside the extension's allowed networks"
            );
            return Ok(sip::message::response_from_headers(
                &request.headers,
                403,
                "Forbidden (registration not allowed from this network)",
            ));
        }
        let received_from = received_from(source);
        // Planned from this node's copy of the bindings; the write checks
        // that the leader's copy is the same (another node may have
        // written since, or this node may lag) and else hands back the
        // current one to plan again from.
        let mut bindings = self.repo.local_bindings(&tenant.id, &extension.number)?;
        // Whether `bindings` are known to be the leader's: a refusal (too
        // many contacts, out of order) must not come from a lagging copy.
        let mut confirmed = false;
        let mut attempts = 0;
        let plan = loop {
            let plan = match plan_bindings(
                &register,
                &extension,
                &tenant.id,
                &bindings.live(now_ms),
                &received_from,
                now_ms,
            ) {
                Ok(plan) => plan,
                Err(_) if !confirmed => {
                    bindings = self
                        .repo
                        .current_bindings(&tenant.id, &extension.number)
                        .await?;
                    confirmed = true;
                    continue;
                }
                Err(refusal) => return Ok(refusal.response(request)),
            };
            match self
                .repo
                .write_bindings(&bindings, &plan.upserts, &plan.removals)
                .await?
            {
                None => break plan,
                Some(current) => {
                    bindings = current;
                    confirmed = true;
                }
            }
            attempts += 1;
            if attempts == WRITE_ATTEMPTS {
                return Err(RepoError::Conflict {
                    what: format!("the bindings of {}", extension.number),
                    attempts,
                });
            }
        };
        // Debug, not info: at thousands of REGISTERs a second the log would
        // cost more than the registration.
        tracing::debug!(
            tenant = %tenant.code,
            extension = %extension.number,
            call_id = %register.call_id,
            bindings = plan.result.len(),
            "registered"
        );
        Ok(ok_response(request, &plan.result, now_ms))
    }
}
