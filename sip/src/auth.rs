//! Server-side SIP digest authentication (RFC 3261 §22, RFC 7616, RFC 8760):
//! MD5 and SHA-256 with `qop=auth`, verified against stored HA1 values.
//!
//! Nonces are stateless: `timestamp || random || HMAC-SHA256(key, timestamp ||
//! random || realm)`, so any node holding the same secret accepts them. Time
//! is passed in as unix seconds (wall clock, comparable across nodes). The
//! nonce-count cache that rejects replays is node-local and bounded.

use std::collections::{HashMap, VecDeque};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::message::syntax::{unquote, Cursor};
use crate::message::SipMessage;

type HmacSha256 = Hmac<Sha256>;

/// A digest algorithm (RFC 8760 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Algorithm::Md5, Algorithm::Sha256]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// Lower-case hex of H(parts joined by ':').
    fn hex(self, parts: &[&str]) -> String {
        fn run<D: Digest>(parts: &[&str]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p.as_bytes());
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Md5 => run::<Md5>(parts),
            Algorithm::Sha256 => run::<Sha256>(parts),
        }
    }
}

/// HA1 = H(username:realm:password), lower-case hex.
pub fn compute_ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hex(&[username, realm, password])
}

/// The HA1 values stored for one user, one per algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredHa1 {
    pub md5: String,
    pub sha256: String,
}

impl StoredHa1 {
    pub fn compute(username: &str, realm: &str, password: &str) -> Self {
        Self {
            md5: compute_ha1(Algorithm::Md5, username, realm, password),
            sha256: compute_ha1(Algorithm::Sha256, username, realm, password),
        }
    }

    fn for_algorithm(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Md5 => &self.md5,
            Algorithm::Sha256 => &self.sha256,
        }
    }
}

/// Why an Authorization header could not be parsed (the caller answers 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("malformed digest parameters: {0}")]
    Syntax(String),
    #[error("duplicate digest parameter '{0}'")]
    Duplicate(String),
    #[error("missing digest parameter '{0}'")]
    Missing(&'static str),
    #[error("nc must be 8 hex digits, got '{0}'")]
    NonceCount(String),
}

/// The `name=value` parameters of a `Digest ...` header value, names in
/// lower case. Quoted values may hold commas and `\` escapes.
fn digest_params(value: &str) -> Result<HashMap<String, String>, CredentialsError> {
    let value = value.trim_start();
    let (scheme, rest) = value.split_at(value.find([' ', '\t']).unwrap_or(value.len()));
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(CredentialsError::NotDigest);
    }
    let mut params: HashMap<String, String> = HashMap::new();
    let mut cur = Cursor::new(rest);
    loop {
        let name = cur
            .token()
            .map_err(|e| CredentialsError::Syntax(e.0))?
            .to_ascii_lowercase();
        if !cur.eat('=') {
            return Err(CredentialsError::Syntax(format!("'{name}' has no value")));
        }
        cur.skip_ws();
        let raw = if cur.peek() == Some('"') {
            unquote(cur.quoted().map_err(|e| CredentialsError::Syntax(e.0))?)
        } else {
            cur.token()
                .map_err(|e| CredentialsError::Syntax(e.0))?
                .to_string()
        };
        if params.insert(name.clone(), raw).is_some() {
            return Err(CredentialsError::Duplicate(name));
        }
        if !cur.eat(',') {
            break;
        }
    }
    cur.skip_ws();
    if !cur.is_empty() {
        return Err(CredentialsError::Syntax(format!(
            "unexpected '{}'",
            cur.rest()
        )));
    }
    Ok(params)
}

/// Parsed `Authorization` / `Proxy-Authorization` digest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// Absent means MD5 (RFC 7616 §3.4).
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub cnonce: Option<String>,
    pub nc: Option<u32>,
    pub opaque: Option<String>,
}

impl DigestCredentials {
    /// Parses a header value such as `Digest username="a", nc=00000001, ...`.
    pub fn parse(value: &str) -> Result<Self, CredentialsError> {
        let mut params = digest_params(value)?;
        let nc = match params.remove("nc") {
            Some(nc) if nc.len() == 8 && nc.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(u32::from_str_radix(&nc, 16).map_err(|_| CredentialsError::NonceCount(nc))?)
            }
            Some(nc) => return Err(CredentialsError::NonceCount(nc)),
            None => None,
        };
        let mut required =
            |name: &'static str| params.remove(name).ok_or(CredentialsError::Missing(name));
        Ok(Self {
            username: required("username")?,
            realm: required("realm")?,
            nonce: required("nonce")?,
            uri: required("uri")?,
            response: required("response")?,
            algorithm: params.remove("algorithm"),
            qop: params.remove("qop"),
            cnonce: params.remove("cnonce"),
            nc,
            opaque: params.remove("opaque"),
        })
    }
}

/// Which challenge a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeKind {
    /// 401 with WWW-Authenticate (a registrar, a UAS).
    Www,
    /// 407 with Proxy-Authenticate (a call through the PBX).
    Proxy,
}

impl ChallengeKind {
    /// The kind of a 401 or 407.
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            401 => Some(ChallengeKind::Www),
            407 => Some(ChallengeKind::Proxy),
            _ => None,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ChallengeKind::Www => 401,
            ChallengeKind::Proxy => 407,
        }
    }

    pub fn challenge_header(self) -> &'static str {
        match self {
            ChallengeKind::Www => "WWW-Authenticate",
            ChallengeKind::Proxy => "Proxy-Authenticate",
        }
    }

    /// The request's answer to this kind of challenge.
    pub fn credentials(self, request: &SipMessage) -> Option<&str> {
        match self {
            ChallengeKind::Www => request.authorization(),
            ChallengeKind::Proxy => request.proxy_authorization(),
        }
    }
}

/// What a `WWW-Authenticate` / `Proxy-Authenticate` digest challenge
/// asks for: what an edge proxy needs to issue the same challenge itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub algorithm: Algorithm,
    /// The credentials were right, only their nonce was too old.
    pub stale: bool,
}

impl DigestChallenge {
    pub fn parse(value: &str) -> Result<Self, CredentialsError> {
        let mut params = digest_params(value)?;
        let mut required =
            |name: &'static str| params.remove(name).ok_or(CredentialsError::Missing(name));
        let realm = required("realm")?;
        let nonce = required("nonce")?;
        let algorithm = match params.remove("algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::from_name(&name)
                .ok_or_else(|| CredentialsError::Syntax(format!("unknown algorithm '{name}'")))?,
        };
        let stale = params
            .remove("stale")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(Self {
            realm,
            nonce,
            algorithm,
            stale,
        })
    }
}

/// Challenge header values for `nonce`, one per algorithm in the order
/// given (RFC 8760 §2.4: the preferred first), all with `qop="auth"`.
pub fn challenge_values(
    realm: &str,
    nonce: &str,
    algorithms: &[Algorithm],
    stale: bool,
) -> Vec<String> {
    algorithms
        .iter()
        .map(|alg| {
            let mut value = format!(
                "Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                alg.name()
            );
            if stale {
                value.push_str(", stale=true");
            }
            value
        })
        .collect()
}

const NONCE_RANDOM_LEN: usize = 8;
const NONCE_MAC_LEN: usize = 16;
const NONCE_LEN: usize = 8 + NONCE_RANDOM_LEN + NONCE_MAC_LEN;

/// A shared key's shortest text: 32 characters of `openssl rand -hex 16`.
const MIN_SHARED_KEY_LEN: usize = 32;

/// Why a shared nonce key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{0}")]
    Read(#[from] std::io::Error),
    #[error("a nonce key needs at least {MIN_SHARED_KEY_LEN} characters, this one has {0}")]
    Weak(usize),
}

/// Signs stateless nonces and checks them: `timestamp || random ||
/// HMAC-SHA256(key, timestamp || random || realm)`, in hex. Whoever holds
/// the same secret (every node of a cluster; the SBC with the nodes'
/// edge key) issues nonces the others accept.
#[derive(Clone)]
pub struct NonceKey {
    mac: HmacSha256,
}

impl NonceKey {
    pub fn new(secret: &[u8]) -> Self {
        // Keying with SHA-256(secret) in a fixed-size key makes construction
        // infallible whatever the secret's length.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&Sha256::digest(secret));
        Self {
            mac: <HmacSha256 as KeyInit>::new(&key.into()),
        }
    }

    /// A key shared through a file (the SBC's and the nodes' edge key):
    /// its text, surrounding white space left out.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path)?;
        let secret = text.trim();
        if secret.len() < MIN_SHARED_KEY_LEN {
            return Err(KeyFileError::Weak(secret.len()));
        }
        Ok(Self::new(secret.as_bytes()))
    }

    fn mac(&self, stamp_and_random: &[u8], realm: &str) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(stamp_and_random);
        mac.update(realm.as_bytes());
        mac
    }

    /// A fresh nonce of `realm` stamped with `now_unix_secs`.
    pub fn nonce(&self, realm: &str, now_unix_secs: u64) -> String {
        let mut raw = [0u8; NONCE_LEN];
        let (head, tag) = raw.split_at_mut(8 + NONCE_RANDOM_LEN);
        let (stamp, random) = head.split_at_mut(8);
        stamp.copy_from_slice(&now_unix_secs.to_be_bytes());
        rand::rng().fill_bytes(random);
        let full = self.mac(head, realm).finalize().into_bytes();
        tag.copy_from_slice(full.get(..NONCE_MAC_LEN).unwrap_or_default());
        hex::encode(raw)
    }

    /// The timestamp of `nonce` if this key signed it for `realm`.
    pub fn issued_at(&self, realm: &str, nonce: &str) -> Option<u64> {
        let raw = hex::decode(nonce).ok()?;
        if raw.len() != NONCE_LEN {
            return None;
        }
        let (head, tag) = raw.split_at(8 + NONCE_RANDOM_LEN);
        self.mac(head, realm).verify_truncated_left(tag).ok()?;
        Some(u64::from_be_bytes(head.get(..8)?.try_into().ok()?))
    }
}

/// The verifier's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Authorized,
    /// Answer 401/407 with these WWW-Authenticate / Proxy-Authenticate values
    /// (SHA-256 first, then MD5).
    Challenge(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct DigestConfig {
    pub realm: String,
    /// How long a nonce is accepted; older ones get `stale=true`.
    pub nonce_lifetime_secs: u64,
    /// Nonces tracked for nonce-count replay protection.
    pub nonce_cache_capacity: usize,
}

/// Issues challenges and verifies credentials for one realm.
pub struct DigestVerifier {
    config: DigestConfig,
    /// Signs our nonces.
    key: NonceKey,
    /// Whose nonces are accepted too.
    also_accepted: Vec<NonceKey>,
    /// Stand-in HA1s for unknown users, so they cost the same work and get
    /// the same answer as a known user with a wrong password.
    decoy: StoredHa1,
    /// Highest nc seen per nonce, with insertion order for eviction.
    nonce_counts: HashMap<String, u32>,
    nonce_order: VecDeque<String>,
}

impl DigestVerifier {
    /// `secret` is shared by every node of the cluster so they accept each
    /// other's nonces.
    pub fn new(config: DigestConfig, secret: &[u8]) -> Self {
        let mut decoy_password = [0u8; 16];
        rand::rng().fill_bytes(&mut decoy_password);
        let decoy = StoredHa1::compute("", &config.realm, &hex::encode(decoy_password));
        Self {
            config,
            key: NonceKey::new(secret),
            also_accepted: Vec::new(),
            decoy,
            nonce_counts: HashMap::new(),
            nonce_order: VecDeque::new(),
        }
    }

    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// Also accepts the nonces `key` signs: an SBC's, which challenges
    /// phones on the nodes' behalf.
    pub fn accepting(mut self, key: NonceKey) -> Self {
        self.also_accepted.push(key);
        self
    }

    /// A fresh nonce stamped with `now_unix_secs`.
    pub fn new_nonce(&self, now_unix_secs: u64) -> String {
        self.key.nonce(&self.config.realm, now_unix_secs)
    }

    /// The nonce's timestamp if we (or a key we accept) signed it.
    fn nonce_timestamp(&self, nonce: &str) -> Option<u64> {
        std::iter::once(&self.key)
            .chain(&self.also_accepted)
            .find_map(|k| k.issued_at(&self.config.realm, nonce))
    }

    /// Challenge header values, SHA-256 first (RFC 8760 §2.4).
    pub fn challenge(&self, stale: bool, now_unix_secs: u64) -> Vec<String> {
        challenge_values(
            &self.config.realm,
            &self.new_nonce(now_unix_secs),
            &[Algorithm::Sha256, Algorithm::Md5],
            stale,
        )
    }

    /// Verifies credentials for a request with `method`. `ha1` is `None` for
    /// an unknown user: the same work is done and the same challenge given.
    pub fn verify(
        &mut self,
        credentials: &DigestCredentials,
        method: &str,
        ha1: Option<&StoredHa1>,
        now_unix_secs: u64,
    ) -> AuthOutcome {
        let algorithm = match credentials.algorithm.as_deref() {
            None => Some(Algorithm::Md5),
            Some(name) => Algorithm::from_name(name),
        };
        let (Some(algorithm), Some("auth"), Some(cnonce), Some(nc)) = (
            algorithm,
            credentials.qop.as_deref(),
            credentials.cnonce.as_deref(),
            credentials.nc,
        ) else {
            return AuthOutcome::Challenge(self.challenge(false, now_unix_secs));
        };
        let stored = ha1.unwrap_or(&self.decoy).for_algorithm(algorithm);
        let ha2 = algorithm.hex(&[method, &credentials.uri]);
        let nc_hex = format!("{nc:08x}");
        let expected = algorithm.hex(&[stored, &credentials.nonce, &nc_hex, cnonce, "auth", &ha2]);
        let response = credentials.response.to_ascii_lowercase();
        let digest_ok: bool = expected.as_bytes().ct_eq(response.as_bytes()).into();
        let digest_ok = digest_ok && ha1.is_some() && credentials.realm == self.config.realm;

        let Some(issued) = self.nonce_timestamp(&credentials.nonce) else {
            // Right credentials over a nonce no key of ours signed (an SBC
            // whose edge key we were not given): the phone knows the
            // password, so it is told to retry with our nonce (stale)
            // rather than to ask its user again.
            return AuthOutcome::Challenge(self.challenge(digest_ok, now_unix_secs));
        };
        if !digest_ok {
            return AuthOutcome::Challenge(self.challenge(false, now_unix_secs));
        }
        let age = now_unix_secs.saturating_sub(issued);
        if age > self.config.nonce_lifetime_secs || issued > now_unix_secs.saturating_add(60) {
            return AuthOutcome::Challenge(self.challenge(true, now_unix_secs));
        }
        if !self.accept_nonce_count(&credentials.nonce, nc, now_unix_secs) {
            return AuthOutcome::Challenge(self.challenge(false, now_unix_secs));
        }
        AuthOutcome::Authorized
    }

    /// Records `nc` for `nonce`; false if it does not exceed the last one seen.
    fn accept_nonce_count(&mut self, nonce: &str, nc: u32, now_unix_secs: u64) -> bool {
        if let Some(last) = self.nonce_counts.get_mut(nonce) {
            if nc <= *last {
                return false;
            }
            *last = nc;
            return true;
        }
        if self.nonce_counts.len() >= self.config.nonce_cache_capacity {
            self.evict(now_unix_secs);
        }
        self.nonce_counts.insert(nonce.to_string(), nc);
        self.nonce_order.push_back(nonce.to_string());
        true
    }

    /// Drops nonces from the oldest end while they are expired or the
    /// cache is full: amortised O(1) per new nonce, where scanning the whole
    /// cache made every registration past the capacity cost 10,000 HMACs.
    /// A live nonce evicted because the cache is full loses its replay
    /// record; the capacity is sized so that only floods reach it.
    fn evict(&mut self, now_unix_secs: u64) {
        let lifetime = self.config.nonce_lifetime_secs;
        let capacity = self.config.nonce_cache_capacity.max(1);
        while let Some(oldest) = self.nonce_order.front() {
            let expired = self
                .nonce_timestamp(oldest)
                .is_none_or(|t| now_unix_secs.saturating_sub(t) > lifetime);
            if !expired && self.nonce_counts.len() < capacity {
                break;
            }
            if let Some(oldest) = self.nonce_order.pop_front() {
                self.nonce_counts.remove(&oldest);
            }
        }
    }

    /// Nonces currently tracked.
    pub fn tracked_nonces(&self) -> usize {
        self.nonce_counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REALM: &str = "pbx.example.com";
    const NOW: u64 = 1_700_000_000;

    fn verifier() -> DigestVerifier {
        DigestVerifier::new(
            DigestConfig {
                realm: REALM.into(),
                nonce_lifetime_secs: 300,
                nonce_cache_capacity: 4,
            },
            b"cluster secret",
        )
    }

    fn nonce_of(challenge: &str) -> String {
        let start = challenge.find("nonce=\"").unwrap() + 7;
        challenge[start..start + NONCE_LEN * 2].to_string()
    }

    /// What a client computes (RFC 7616 §3.4.1).
    fn client_credentials(
        alg: Algorithm,
        nonce: &str,
        nc: u32,
        password: &str,
    ) -> DigestCredentials {
        let ha1 = compute_ha1(alg, "1001", REALM, password);
        let ha2 = alg.hex(&["REGISTER", "sip:pbx.example.com"]);
        let nc_hex = format!("{nc:08x}");
        let response = alg.hex(&[&ha1, nonce, &nc_hex, "abc", "auth", &ha2]);
        let header = format!(
            "Digest username=\"1001\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:pbx.example.com\", \
             response=\"{response}\", algorithm={}, qop=auth, cnonce=\"abc\", nc={nc_hex}",
            alg.name()
        );
        DigestCredentials::parse(&header).unwrap()
    }

    #[test]
    fn known_ha1_vectors() {
        // RFC 7616 §3.9.1 example (Mufasa / Circle of Life).
        assert_eq!(
            compute_ha1(
                Algorithm::Md5,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life"
            ),
            "3d78807defe7de2157e2b0b6573a855f"
        );
        assert_eq!(
            compute_ha1(
                Algorithm::Sha256,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life"
            ),
            "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232"
        );
    }

    #[test]
    fn challenge_offers_sha256_then_md5() {
        let c = verifier().challenge(false, NOW);
        assert_eq!(c.len(), 2);
        assert!(c[0].contains("algorithm=SHA-256") && c[0].contains("qop=\"auth\""));
        assert!(c[1].contains("algorithm=MD5"));
        assert!(!c[0].contains("stale"));
    }

    #[test]
    fn both_algorithms_authorize_and_replays_are_rejected() {
        let mut v = verifier();
        let stored = StoredHa1::compute("1001", REALM, "secret");
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let nonce = nonce_of(&v.challenge(false, NOW)[0]);
            let first = client_credentials(alg, &nonce, 1, "secret");
            assert_eq!(
                v.verify(&first, "REGISTER", Some(&stored), NOW),
                AuthOutcome::Authorized
            );
            assert!(matches!(
                v.verify(&first, "REGISTER", Some(&stored), NOW),
                AuthOutcome::Challenge(_)
            ));
            let second = client_credentials(alg, &nonce, 2, "secret");
            assert_eq!(
                v.verify(&second, "REGISTER", Some(&stored), NOW + 1),
                AuthOutcome::Authorized
            );
        }
    }

    #[test]
    fn nonces_from_another_node_with_the_same_secret_are_accepted() {
        let nonce = nonce_of(&verifier().challenge(false, NOW)[0]);
        let stored = StoredHa1::compute("1001", REALM, "secret");
        let creds = client_credentials(Algorithm::Sha256, &nonce, 1, "secret");
        assert_eq!(
            verifier().verify(&creds, "REGISTER", Some(&stored), NOW),
            AuthOutcome::Authorized
        );
        let mut other = DigestVerifier::new(
            DigestConfig {
                realm: REALM.into(),
                nonce_lifetime_secs: 300,
                nonce_cache_capacity: 4,
            },
            b"another secret",
        );
        // Right credentials over a nonce it cannot check: retry, not a
        // wrong password.
        let AuthOutcome::Challenge(c) = other.verify(&creds, "REGISTER", Some(&stored), NOW) else {
            panic!("a foreign nonce must not authorize");
        };
        assert!(c.iter().all(|h| h.contains("stale=true")));
        let wrong = client_credentials(Algorithm::Sha256, &nonce, 1, "guess");
        let AuthOutcome::Challenge(c) = other.verify(&wrong, "REGISTER", Some(&stored), NOW) else {
            panic!("a wrong password must not authorize");
        };
        assert!(c.iter().all(|h| !h.contains("stale")));
    }

    #[test]
    fn nonces_signed_with_an_accepted_edge_key_authorize_once() {
        let edge = NonceKey::new(b"edge key");
        let mut v = verifier().accepting(edge.clone());
        let stored = StoredHa1::compute("1001", REALM, "secret");
        let nonce = edge.nonce(REALM, NOW);
        assert_eq!(edge.issued_at(REALM, &nonce), Some(NOW));
        assert_eq!(edge.issued_at("other.example.com", &nonce), None);
        let creds = client_credentials(Algorithm::Md5, &nonce, 1, "secret");
        assert_eq!(
            v.verify(&creds, "REGISTER", Some(&stored), NOW),
            AuthOutcome::Authorized
        );
        // Its replay is refused as any nonce's is.
        assert!(matches!(
            v.verify(&creds, "REGISTER", Some(&stored), NOW),
            AuthOutcome::Challenge(_)
        ));
        // Stale like ours past the lifetime.
        let old = edge.nonce(REALM, NOW);
        let creds = client_credentials(Algorithm::Md5, &old, 1, "secret");
        let AuthOutcome::Challenge(c) = v.verify(&creds, "REGISTER", Some(&stored), NOW + 301)
        else {
            panic!("an old nonce must not authorize");
        };
        assert!(c.iter().all(|h| h.contains("stale=true")));
    }

    #[test]
    fn a_challenge_parses_back_to_what_it_asks() {
        let values = verifier().challenge(true, NOW);
        let nonce = nonce_of(&values[0]);
        let parsed: Vec<_> = values
            .iter()
            .map(|v| DigestChallenge::parse(v).unwrap())
            .collect();
        assert_eq!(
            parsed,
            [Algorithm::Sha256, Algorithm::Md5].map(|algorithm| DigestChallenge {
                realm: REALM.into(),
                nonce: nonce.clone(),
                algorithm,
                stale: true,
            })
        );
        let bare = DigestChallenge::parse("Digest realm=\"r\", nonce=\"n\"").unwrap();
        assert_eq!((bare.algorithm, bare.stale), (Algorithm::Md5, false));
        assert!(DigestChallenge::parse("Digest nonce=\"n\"").is_err());
        assert!(DigestChallenge::parse("Digest realm=\"r\"").is_err());
        assert!(
            DigestChallenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-512-256")
                .is_err()
        );
        assert!(DigestChallenge::parse("Basic realm=\"r\"").is_err());
    }

    #[test]
    fn expired_nonce_is_stale() {
        let mut v = verifier();
        let stored = StoredHa1::compute("1001", REALM, "secret");
        let nonce = nonce_of(&v.challenge(false, NOW)[0]);
        let creds = client_credentials(Algorithm::Sha256, &nonce, 1, "secret");
        let AuthOutcome::Challenge(c) = v.verify(&creds, "REGISTER", Some(&stored), NOW + 301)
        else {
            panic!("expected a challenge");
        };
        assert!(c.iter().all(|h| h.contains("stale=true")));
    }

    #[test]
    fn unknown_user_and_wrong_password_get_the_same_answer() {
        let mut v = verifier();
        let stored = StoredHa1::compute("1001", REALM, "secret");
        let nonce = nonce_of(&v.challenge(false, NOW)[0]);
        let wrong = client_credentials(Algorithm::Sha256, &nonce, 1, "guess");
        let strip = |o: AuthOutcome| match o {
            AuthOutcome::Challenge(c) => c
                .iter()
                .map(|h| h.replace(&nonce_of(h), "N"))
                .collect::<Vec<_>>(),
            AuthOutcome::Authorized => panic!("must not authorize"),
        };
        let known = strip(v.verify(&wrong, "REGISTER", Some(&stored), NOW));
        let unknown = strip(v.verify(&wrong, "REGISTER", None, NOW));
        assert_eq!(known, unknown);
        assert_eq!(v.tracked_nonces(), 0);
    }

    #[test]
    fn nonce_cache_is_bounded() {
        let mut v = verifier();
        let stored = StoredHa1::compute("1001", REALM, "secret");
        for i in 0..10 {
            let nonce = v.new_nonce(NOW + i);
            let creds = client_credentials(Algorithm::Md5, &nonce, 1, "secret");
            assert_eq!(
                v.verify(&creds, "REGISTER", Some(&stored), NOW + i),
                AuthOutcome::Authorized
            );
        }
        assert!(v.tracked_nonces() <= 4);
    }

    #[test]
    fn credentials_parsing() {
        let c = DigestCredentials::parse(
            "Digest username=\"a\\\"b\", realm=\"r, with comma\",nonce=\"n\", uri=\"sip:x\", \
             response=\"AB\", nc=0000000a, qop=auth, cnonce=\"c\"",
        )
        .unwrap();
        assert_eq!(c.username, "a\"b");
        assert_eq!(c.realm, "r, with comma");
        assert_eq!(c.nc, Some(10));
        assert_eq!(c.algorithm, None);
        let base = "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\"";
        assert!(DigestCredentials::parse(base).is_ok());
        assert_eq!(
            DigestCredentials::parse(&format!("{base}, nc=123")),
            Err(CredentialsError::NonceCount("123".into()))
        );
        assert_eq!(
            DigestCredentials::parse(&format!("{base}, realm=\"s\"")),
            Err(CredentialsError::Duplicate("realm".into()))
        );
        assert_eq!(
            DigestCredentials::parse("Basic abc"),
            Err(CredentialsError::NotDigest)
        );
        assert_eq!(
            DigestCredentials::parse("Digest realm=\"r\""),
            Err(CredentialsError::Missing("username"))
        );
        assert!(DigestCredentials::parse("Digest username=\"a").is_err());
    }
}
