//! Protection at the edge (sans-IO): per-source-IP request-rate limits,
//! bans after repeated failed authentications, CIDR allow/deny lists and a
//! cap on concurrent connections per IP.
//!
//! The driver asks the guard before handing anything to the proxy:
//! `check_request` for requests from phones, `check_message` for responses
//! (bans and lists only: a response is an answer to something we sent, so
//! rate-limiting it would only break our own transactions), and
//! `connection_opened`/`connection_closed` around TCP/TLS/WSS connections.
//! A dropped message gets no response at all, so a spoofed source cannot
//! use us as a reflector.
//!
//! Authentication failures are reported by the proxy, which sees the
//! node's answers: it calls `auth_failed` only when a request that carried
//! credentials (Authorization / Proxy-Authorization) got 401, 407 or 403.
//! The first challenge of a credential-less request is the normal start of
//! digest auth and is never reported, so a phone that registers correctly
//! can never be banned. A 2xx to a credentialed request is reported with
//! `auth_succeeded` and forgets the IP's failures.
//!
//! Memory stays bounded under a flood of spoofed sources: at most
//! `max_tracked_ips` addresses have state. State that says nothing (no ban,
//! no connection, no recent failure, a full bucket) is idle and can be
//! forgotten without changing any decision. The driver calls
//! `handle_timeout(now)` when `poll_timeout()` is reached to sweep idle
//! state; when the table is full a sweep also runs lazily (at most once per
//! `sweep_interval_ms`, so a flood cannot make every packet pay an O(n)
//! sweep). A new source arriving while the table is full of live state is
//! dropped as rate-limited: failing closed under a flood keeps existing
//! phones served and the bans in force.
//!
//! Time is always passed in, so tests run on fake time.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Deserialize;

/// The `[guard]` table of sbc.toml. Every field has a safe default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Sustained requests per second allowed from one source IP (negative
    /// or NaN counts as 0: only the burst, never refilled).
    pub requests_per_sec: f64,
    /// Requests one source IP may send at once above the sustained rate.
    pub burst: u32,
    /// Failed authentications within `failure_window_secs` that start a ban.
    /// 0 disables bans.
    pub ban_after_failures: u32,
    pub failure_window_secs: u64,
    pub ban_duration_secs: u64,
    /// If non-empty, only sources inside these networks are served.
    pub allow: Vec<IpNet>,
    /// Sources inside these networks are never served (wins over `allow`).
    pub deny: Vec<IpNet>,
    pub max_connections_per_ip: u32,
    /// Upper bound on the number of source IPs with state.
    pub max_tracked_ips: usize,
    /// How often idle state is swept.
    pub sweep_interval_ms: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            // A phone's steady state is far below 1 request/s; 20/s leaves
            // room for an office NAT with a few dozen phones behind one IP.
            requests_per_sec: 20.0,
            // A phone booting with many BLF keys sends a REGISTER plus one
            // SUBSCRIBE per key (and each challenge resubmission) at once.
            burst: 100,
            ban_after_failures: 5,
            failure_window_secs: 60,
            ban_duration_secs: 600,
            allow: Vec::new(),
            deny: Vec::new(),
            max_connections_per_ip: 32,
            // ~100 bytes of state each: about 10-20 MB at the cap.
            max_tracked_ips: 100_000,
            sweep_interval_ms: 1_000,
        }
    }
}

/// What the driver does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Drop silently: no response, no log line per message.
    Drop(DropReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The source is banned after failed authentications.
    Banned,
    /// The source is in the deny list.
    Denied,
    /// The source exceeded its request rate (or the state table is full).
    RateLimited,
    /// The allow list is non-empty and the source is not in it.
    NotAllowed,
}

/// State kept per source IP.
#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    /// Times of recent failed authentications, at most
    /// `ban_after_failures` of them.
    failures: VecDeque<Instant>,
    banned_until: Option<Instant>,
    connections: u32,
    /// Whether the last request was rate-limited, so a run of drops is
    /// logged once and not per packet.
    limited: bool,
    /// Whether the last connection was refused for the per-IP cap (logged
    /// once per run, likewise).
    connections_limited: bool,
}

impl Source {
    fn new(burst: u32, now: Instant) -> Self {
        Source {
            tokens: f64::from(burst),
            refilled: now,
            failures: VecDeque::new(),
            banned_until: None,
            connections: 0,
            limited: false,
            connections_limited: false,
        }
    }

    fn refill(&mut self, config: &GuardConfig, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        // `max` also turns a NaN rate from a bad config into 0 (no refill)
        // instead of a bucket that compares false with everything.
        let rate = config.requests_per_sec.max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(config.burst));
        self.refilled = self.refilled.max(now);
    }

    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| now < until)
    }

    fn expire_failures(&mut self, window: Duration, now: Instant) {
        while self
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.failures.pop_front();
        }
    }

    /// Forgetting idle state changes no future decision.
    fn idle(&mut self, config: &GuardConfig, now: Instant) -> bool {
        self.refill(config, now);
        self.expire_failures(Duration::from_secs(config.failure_window_secs), now);
        !self.banned(now)
            && self.connections == 0
            && self.failures.is_empty()
            && self.tokens >= f64::from(config.burst)
    }
}

struct Metrics {
    rate_limited: IntCounter,
    bans: IntCounter,
    banned_dropped: IntCounter,
    denied: IntCounterVec,
    connections_refused: IntCounterVec,
    handshake_timeouts: IntCounter,
    oversized: IntCounter,
    congested: IntCounter,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let rate_limited = IntCounter::new(
            "sbc_rate_limited_total",
            "Requests dropped because their source IP exceeded its rate or the guard's table was full",
        )?;
        let bans = IntCounter::new(
            "sbc_bans_total",
            "Source IPs banned after repeated failed authentications",
        )?;
        let banned_dropped = IntCounter::new(
            "sbc_banned_dropped_total",
            "Messages dropped because their source IP is banned",
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "sbc_denied_total",
                "Messages dropped by the CIDR lists (list=deny: in the deny list, list=allow: outside the allow list)",
            ),
            &["list"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "sbc_connections_refused_total",
                "TCP/TLS/WSS connections refused by the guard, by reason",
            ),
            &["reason"],
        )?;
        let handshake_timeouts = IntCounter::new(
            "sbc_handshake_timeouts_total",
            "TLS/WSS/WS connections closed because their handshake took longer than the limit",
        )?;
        registry.register(Box::new(handshake_timeouts.clone()))?;
        let oversized = IntCounter::new(
            "sbc_oversized_messages_total",
            "Messages refused for exceeding max_message_bytes",
        )?;
        registry.register(Box::new(oversized.clone()))?;
        let congested = IntCounter::new(
            "sbc_congested_drops_total",
            "Messages to a phone dropped because its connection's write queue was full (the phone does not read)",
        )?;
        registry.register(Box::new(congested.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(bans.clone()))?;
        registry.register(Box::new(banned_dropped.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        Ok(Metrics {
            rate_limited,
            bans,
            banned_dropped,
            denied,
            connections_refused,
            handshake_timeouts,
            oversized,
            congested,
        })
    }
}

/// The guard's decisions; see the module documentation.
pub struct Guard {
    config: GuardConfig,
    sources: HashMap<IpAddr, Source>,
    next_sweep: Option<Instant>,
    /// Whether the table was full at the last insertion attempt, so the
    /// condition is logged once when it starts.
    full: bool,
    metrics: Metrics,
}

impl Guard {
    /// Builds a guard and registers its counters on `registry`.
    pub fn new(config: GuardConfig, registry: &Registry) -> Result<Guard, prometheus::Error> {
        Ok(Guard {
            config,
            sources: HashMap::new(),
            next_sweep: None,
            full: false,
            metrics: Metrics::register(registry)?,
        })
    }

    /// A request from a phone: lists, ban, then rate limit.
    pub fn check_request(&mut self, source: IpAddr, now: Instant) -> Verdict {
        if let Some(reason) = self.check_lists(source) {
            return Verdict::Drop(reason);
        }
        if self.drop_if_banned(source, now) {
            return Verdict::Drop(DropReason::Banned);
        }
        let config = &self.config;
        let Some(state) = Self::track(
            &mut self.sources,
            config,
            &mut self.next_sweep,
            &mut self.full,
            source,
            now,
        ) else {
            self.metrics.rate_limited.inc();
            return Verdict::Drop(DropReason::RateLimited);
        };
        state.refill(config, now);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            state.limited = false;
            Verdict::Admit
        } else {
            if !state.limited {
                state.limited = true;
                tracing::warn!(%source, requests_per_sec = config.requests_per_sec, burst = config.burst, "source rate-limited");
            }
            self.metrics.rate_limited.inc();
            Verdict::Drop(DropReason::RateLimited)
        }
    }

    /// A response (or anything not rate-limited): lists and ban only.
    pub fn check_message(&mut self, source: IpAddr, now: Instant) -> Verdict {
        if let Some(reason) = self.check_lists(source) {
            return Verdict::Drop(reason);
        }
        if self.drop_if_banned(source, now) {
            return Verdict::Drop(DropReason::Banned);
        }
        Verdict::Admit
    }

    /// A request that carried credentials was refused (401/407/403). Never
    /// call this for the first challenge of a request without credentials.
    pub fn auth_failed(&mut self, source: IpAddr, now: Instant) {
        let threshold = self.config.ban_after_failures;
        if threshold == 0 {
            return;
        }
        let window = Duration::from_secs(self.config.failure_window_secs);
        let ban = Duration::from_secs(self.config.ban_duration_secs);
        let Some(state) = Self::track(
            &mut self.sources,
            &self.config,
            &mut self.next_sweep,
            &mut self.full,
            source,
            now,
        ) else {
            return;
        };
        if state.banned(now) {
            return;
        }
        state.expire_failures(window, now);
        state.failures.push_back(now);
        if state.failures.len() >= threshold as usize {
            state.failures.clear();
            state.banned_until = Some(now + ban);
            self.metrics.bans.inc();
            tracing::warn!(%source, failures = threshold, window_secs = window.as_secs(), ban_secs = ban.as_secs(), "source banned after failed authentications");
        }
    }

    /// A request that carried credentials got a 2xx: its failures are
    /// forgotten.
    pub fn auth_succeeded(&mut self, source: IpAddr) {
        if let Some(state) = self.sources.get_mut(&source) {
            state.failures.clear();
        }
    }

    /// A TCP/TLS/WSS connection was accepted from `source`; false = close
    /// it at once. Each true must be matched by one `connection_closed`.
    pub fn connection_opened(&mut self, source: IpAddr, now: Instant) -> bool {
        let reason = match self.check_lists(source) {
            Some(DropReason::Denied) => Some("denied"),
            Some(_) => Some("not_allowed"),
            None if self.is_banned(source, now) => Some("banned"),
            None => None,
        };
        if let Some(reason) = reason {
            self.metrics
                .connections_refused
                .with_label_values(&[reason])
                .inc();
            return false;
        }
        let max = self.config.max_connections_per_ip;
        let Some(state) = Self::track(
            &mut self.sources,
            &self.config,
            &mut self.next_sweep,
            &mut self.full,
            source,
            now,
        ) else {
            self.metrics
                .connections_refused
                .with_label_values(&["table_full"])
                .inc();
            return false;
        };
        if state.connections >= max {
            // Logged once per run of refusals: a client retrying in a loop
            // would otherwise flood the log; the counter records each.
            if !std::mem::replace(&mut state.connections_limited, true) {
                tracing::warn!(%source, max, "connection refused: per-IP limit");
            }
            self.metrics
                .connections_refused
                .with_label_values(&["limit"])
                .inc();
            return false;
        }
        state.connections_limited = false;
        state.connections += 1;
        true
    }

    /// The transport refused a connection because `max_connections` were
    /// open (it logs that itself).
    pub fn total_connections_hit(&mut self) {
        self.metrics
            .connections_refused
            .with_label_values(&["total"])
            .inc();
    }

    /// The transport closed a connection whose handshake took too long
    /// (it logs that itself).
    pub fn handshake_timed_out(&mut self) {
        self.metrics.handshake_timeouts.inc();
    }

    /// A message over the size limit arrived (the driver logs it).
    pub fn message_too_large(&mut self) {
        self.metrics.oversized.inc();
    }

    /// A message to a phone was dropped: its connection's write queue was
    /// full (the driver logs it).
    pub fn write_queue_full(&mut self) {
        self.metrics.congested.inc();
    }

    pub fn connection_closed(&mut self, source: IpAddr) {
        if let Some(state) = self.sources.get_mut(&source) {
            state.connections = state.connections.saturating_sub(1);
        }
    }

    pub fn is_banned(&self, source: IpAddr, now: Instant) -> bool {
        self.sources.get(&source).is_some_and(|s| s.banned(now))
    }

    /// When the driver should call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Forgets idle state. Cheap to call late; calling it early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        Self::sweep(&mut self.sources, &self.config, &mut self.next_sweep, now);
    }

    /// Number of source IPs with state (never above `max_tracked_ips`).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn check_lists(&self, source: IpAddr) -> Option<DropReason> {
        // An IPv4-mapped IPv6 address (dual-stack socket) is matched as the
        // IPv4 address it is, so IPv4 lists apply to it.
        let source = source.to_canonical();
        if self.config.deny.iter().any(|net| net.contains(&source)) {
            self.metrics.denied.with_label_values(&["deny"]).inc();
            tracing::debug!(%source, "dropped: deny list");
            return Some(DropReason::Denied);
        }
        if !self.config.allow.is_empty()
            && !self.config.allow.iter().any(|net| net.contains(&source))
        {
            self.metrics.denied.with_label_values(&["allow"]).inc();
            tracing::debug!(%source, "dropped: not in allow list");
            return Some(DropReason::NotAllowed);
        }
        None
    }

    fn drop_if_banned(&mut self, source: IpAddr, now: Instant) -> bool {
        if self.is_banned(source, now) {
            self.metrics.banned_dropped.inc();
            true
        } else {
            false
        }
    }

    /// The state for `source`, created if there is room (after a lazy sweep
    /// when the table is full). None = no room.
    fn track<'a>(
        sources: &'a mut HashMap<IpAddr, Source>,
        config: &GuardConfig,
        next_sweep: &mut Option<Instant>,
        full: &mut bool,
        source: IpAddr,
        now: Instant,
    ) -> Option<&'a mut Source> {
        if next_sweep.is_none() {
            *next_sweep = Some(now + Duration::from_millis(config.sweep_interval_ms));
        }
        if !sources.contains_key(&source) && sources.len() >= config.max_tracked_ips {
            if next_sweep.is_some_and(|at| now >= at) {
                Self::sweep(sources, config, next_sweep, now);
            }
            if sources.len() >= config.max_tracked_ips {
                if !*full {
                    *full = true;
                    tracing::warn!(
                        max = config.max_tracked_ips,
                        "guard table full: new sources dropped until state expires"
                    );
                }
                return None;
            }
        }
        *full = false;
        Some(
            sources
                .entry(source)
                .or_insert_with(|| Source::new(config.burst, now)),
        )
    }

    fn sweep(
        sources: &mut HashMap<IpAddr, Source>,
        config: &GuardConfig,
        next_sweep: &mut Option<Instant>,
        now: Instant,
    ) {
        sources.retain(|_, state| !state.idle(config, now));
        *next_sweep = Some(now + Duration::from_millis(config.sweep_interval_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_metrics::counter;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn guard(config: GuardConfig) -> (Guard, Registry) {
        let registry = Registry::new();
        let guard = Guard::new(config, &registry).unwrap();
        (guard, registry)
    }

    #[test]
    fn rate_limit_with_burst_and_refill() {
        let (mut g, registry) = guard(GuardConfig {
            requests_per_sec: 2.0,
            burst: 3,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(g.check_request(a, t0), Verdict::Admit);
        }
        assert_eq!(
            g.check_request(a, t0),
            Verdict::Drop(DropReason::RateLimited)
        );
        // Another source has its own bucket.
        assert_eq!(g.check_request(ip("192.0.2.2"), t0), Verdict::Admit);
        // Responses are never rate-limited.
        assert_eq!(g.check_message(a, t0), Verdict::Admit);
        // 2/s: one token after 500 ms, not before.
        assert_eq!(
            g.check_request(a, t0 + Duration::from_millis(400)),
            Verdict::Drop(DropReason::RateLimited)
        );
        assert_eq!(
            g.check_request(a, t0 + Duration::from_millis(500)),
            Verdict::Admit
        );
        assert_eq!(
            g.check_request(a, t0 + Duration::from_millis(500)),
            Verdict::Drop(DropReason::RateLimited)
        );
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(g.check_request(a, later), Verdict::Admit);
        }
        assert_eq!(
            g.check_request(a, later),
            Verdict::Drop(DropReason::RateLimited)
        );
        assert_eq!(counter(&registry, "sbc_rate_limited_total", &[]), 4.0);
    }

    #[test]
    fn ban_after_exactly_n_failures_in_window() {
        let (mut g, registry) = guard(GuardConfig::default());
        let t0 = Instant::now();
        let a = ip("198.51.100.7");
        for i in 0..4 {
            g.auth_failed(a, t0 + Duration::from_secs(i * 10));
            assert!(!g.is_banned(a, t0 + Duration::from_secs(i * 10)));
        }
        g.auth_failed(a, t0 + Duration::from_secs(59));
        assert!(g.is_banned(a, t0 + Duration::from_secs(59)));
        assert_eq!(counter(&registry, "sbc_bans_total", &[]), 1.0);
    }

    #[test]
    fn n_failures_spread_beyond_window_do_not_ban() {
        let (mut g, registry) = guard(GuardConfig::default());
        let t0 = Instant::now();
        let a = ip("198.51.100.8");
        // 20 failures, one every 15 s: never 5 within 60 s.
        for i in 0..20 {
            let t = t0 + Duration::from_secs(i * 15);
            g.auth_failed(a, t);
            assert!(!g.is_banned(a, t), "banned at failure {i}");
        }
        assert_eq!(counter(&registry, "sbc_bans_total", &[]), 0.0);
    }

    /// The proxy reports only failures of requests that carried
    /// credentials; the first 401 challenge is never reported. A phone that
    /// gets challenged and then authenticates, over and over, is never
    /// banned, and one wrong password among successes is forgotten.
    #[test]
    fn first_challenge_never_bans_and_success_resets() {
        let (mut g, _registry) = guard(GuardConfig::default());
        let t0 = Instant::now();
        let a = ip("203.0.113.5");
        // 100 REGISTERs: each gets a challenge (not reported), then the
        // credentialed resubmission succeeds.
        for i in 0..100 {
            let t = t0 + Duration::from_millis(i * 100);
            assert_eq!(g.check_request(a, t), Verdict::Admit);
            assert_eq!(g.check_request(a, t), Verdict::Admit);
            g.auth_succeeded(a);
        }
        assert!(!g.is_banned(a, t0 + Duration::from_secs(10)));
        // 4 failures, a success, 4 more failures: no ban (count reset).
        let t = t0 + Duration::from_secs(20);
        for _ in 0..4 {
            g.auth_failed(a, t);
        }
        g.auth_succeeded(a);
        for _ in 0..4 {
            g.auth_failed(a, t);
        }
        assert!(!g.is_banned(a, t));
        // The 5th consecutive failure bans.
        g.auth_failed(a, t);
        assert!(g.is_banned(a, t));
    }

    #[test]
    fn ban_expires() {
        let (mut g, _registry) = guard(GuardConfig {
            ban_after_failures: 2,
            ban_duration_secs: 600,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        let a = ip("198.51.100.9");
        g.auth_failed(a, t0);
        g.auth_failed(a, t0);
        assert!(g.is_banned(a, t0 + Duration::from_secs(599)));
        let after = t0 + Duration::from_secs(600);
        assert!(!g.is_banned(a, after));
        assert_eq!(g.check_request(a, after), Verdict::Admit);
        // The failure count started afresh: one failure does not re-ban.
        g.auth_failed(a, after);
        assert!(!g.is_banned(a, after));
        // An expired ban is idle state and is swept.
        g.auth_succeeded(a);
        g.handle_timeout(after + Duration::from_secs(60));
        assert_eq!(g.tracked(), 0);
    }

    #[test]
    fn banned_source_dropped_for_requests_responses_and_connections() {
        let (mut g, registry) = guard(GuardConfig {
            ban_after_failures: 1,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        let a = ip("2001:db8::66");
        g.auth_failed(a, t0);
        assert_eq!(g.check_request(a, t0), Verdict::Drop(DropReason::Banned));
        assert_eq!(g.check_message(a, t0), Verdict::Drop(DropReason::Banned));
        assert!(!g.connection_opened(a, t0));
        // Others are unaffected.
        assert_eq!(g.check_request(ip("2001:db8::67"), t0), Verdict::Admit);
        assert_eq!(counter(&registry, "sbc_bans_total", &[]), 1.0);
        assert_eq!(counter(&registry, "sbc_banned_dropped_total", &[]), 2.0);
        assert_eq!(
            counter(
                &registry,
                "sbc_connections_refused_total",
                &[("reason", "banned")]
            ),
            1.0
        );
    }

    #[test]
    fn allow_and_deny_lists_v4_and_v6() {
        let config: GuardConfig = toml::from_str(
            r#"
            allow = ["10.0.0.0/8", "2001:db8::/32"]
            deny = ["10.6.6.0/24", "2001:db8:bad::/48"]
            "#,
        )
        .unwrap();
        let (mut g, registry) = guard(config);
        let t0 = Instant::now();
        assert_eq!(g.check_request(ip("10.1.2.3"), t0), Verdict::Admit);
        assert_eq!(g.check_request(ip("2001:db8:1::1"), t0), Verdict::Admit);
        // A v4-mapped v6 source matches the v4 lists.
        assert_eq!(g.check_request(ip("::ffff:10.1.2.3"), t0), Verdict::Admit);
        assert_eq!(
            g.check_request(ip("10.6.6.6"), t0),
            Verdict::Drop(DropReason::Denied)
        );
        assert_eq!(
            g.check_message(ip("2001:db8:bad::1"), t0),
            Verdict::Drop(DropReason::Denied)
        );
        assert_eq!(
            g.check_request(ip("192.0.2.1"), t0),
            Verdict::Drop(DropReason::NotAllowed)
        );
        assert_eq!(
            g.check_message(ip("2001:db9::1"), t0),
            Verdict::Drop(DropReason::NotAllowed)
        );
        assert!(!g.connection_opened(ip("10.6.6.7"), t0));
        assert!(!g.connection_opened(ip("192.0.2.9"), t0));
        assert_eq!(
            counter(&registry, "sbc_denied_total", &[("list", "deny")]),
            3.0
        );
        assert_eq!(
            counter(&registry, "sbc_denied_total", &[("list", "allow")]),
            3.0
        );
        // Refused sources leave no state behind.
        assert_eq!(g.tracked(), 3);
    }

    #[test]
    fn deny_only_lets_everything_else_through() {
        let (mut g, _registry) = guard(GuardConfig {
            deny: vec!["192.0.2.0/24".parse().unwrap()],
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(
            g.check_request(ip("192.0.2.200"), t0),
            Verdict::Drop(DropReason::Denied)
        );
        assert_eq!(
            g.check_request(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), t0),
            Verdict::Admit
        );
        assert_eq!(
            g.check_request(IpAddr::V6(Ipv6Addr::LOCALHOST), t0),
            Verdict::Admit
        );
    }

    #[test]
    fn connection_cap_per_ip() {
        let (mut g, registry) = guard(GuardConfig {
            max_connections_per_ip: 2,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        let a = ip("192.0.2.10");
        assert!(g.connection_opened(a, t0));
        assert!(g.connection_opened(a, t0));
        assert!(!g.connection_opened(a, t0));
        assert!(g.connection_opened(ip("192.0.2.11"), t0));
        g.connection_closed(a);
        assert!(g.connection_opened(a, t0));
        assert!(!g.connection_opened(a, t0));
        assert_eq!(
            counter(
                &registry,
                "sbc_connections_refused_total",
                &[("reason", "limit")]
            ),
            2.0
        );
        // Open connections keep state alive through sweeps.
        g.handle_timeout(t0 + Duration::from_secs(3600));
        assert!(!g.connection_opened(a, t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn memory_bounded_under_a_million_spoofed_sources() {
        let cap = 10_000;
        let (mut g, registry) = guard(GuardConfig {
            max_tracked_ips: cap,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        let a = ip("2001:db8::1");
        // A real phone, banned earlier, must stay banned through the flood.
        let banned = ip("2001:db8::bad");
        for _ in 0..5 {
            g.auth_failed(banned, t0);
        }
        assert_eq!(g.check_request(a, t0), Verdict::Admit);
        let mut admitted = 0u32;
        for i in 0..1_000_000u32 {
            // 1 ms per packet: the flood lasts 1000 s of fake time.
            let now = t0 + Duration::from_millis(u64::from(i));
            let spoofed = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | i));
            if g.check_request(spoofed, now) == Verdict::Admit {
                admitted += 1;
            }
            assert!(g.tracked() <= cap);
            if i == 500_000 {
                // 500 s into the flood the ban (600 s) still holds.
                assert_eq!(
                    g.check_message(banned, now),
                    Verdict::Drop(DropReason::Banned)
                );
            }
            if let Some(at) = g.poll_timeout() {
                if now >= at {
                    g.handle_timeout(now);
                }
            }
        }
        assert!(g.tracked() <= cap);
        // Sweeps let most of the flood through the table (one request per
        // source is within any rate), so the guard did not lock up.
        assert!(admitted > 900_000, "admitted {admitted}");
        assert_eq!(
            counter(&registry, "sbc_rate_limited_total", &[]),
            f64::from(1_000_000 - admitted)
        );
    }

    #[test]
    fn full_table_fails_closed_for_new_sources() {
        let (mut g, registry) = guard(GuardConfig {
            max_tracked_ips: 2,
            ..GuardConfig::default()
        });
        let t0 = Instant::now();
        assert_eq!(g.check_request(ip("192.0.2.1"), t0), Verdict::Admit);
        assert_eq!(g.check_request(ip("192.0.2.2"), t0), Verdict::Admit);
        // Both buckets are below full, so nothing is idle: a third source
        // is refused, and known sources keep being served.
        assert_eq!(
            g.check_request(ip("192.0.2.3"), t0),
            Verdict::Drop(DropReason::RateLimited)
        );
        assert_eq!(g.check_request(ip("192.0.2.1"), t0), Verdict::Admit);
        assert_eq!(g.tracked(), 2);
        assert_eq!(counter(&registry, "sbc_rate_limited_total", &[]), 1.0);
        // Once the buckets refill, a lazy sweep makes room.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(g.check_request(ip("192.0.2.3"), later), Verdict::Admit);
        assert_eq!(g.tracked(), 1);
    }

    #[test]
    fn defaults_are_safe_and_config_deserializes() {
        let config: GuardConfig = toml::from_str("").unwrap();
        assert_eq!(config, GuardConfig::default());
        assert_eq!(config.ban_after_failures, 5);
        assert_eq!(config.failure_window_secs, 60);
        assert_eq!(config.ban_duration_secs, 600);
        assert_eq!(config.max_connections_per_ip, 32);
        assert_eq!(config.max_tracked_ips, 100_000);
        let config: GuardConfig = toml::from_str("burst = 7\nrequests_per_sec = 1.5").unwrap();
        assert_eq!(config.burst, 7);
        assert!(toml::from_str::<GuardConfig>("bogus = 1").is_err());
        assert!(toml::from_str::<GuardConfig>("deny = [\"10.0.0.0/33\"]").is_err());
    }

    #[test]
    fn limits_the_transport_and_driver_hit_are_counted() {
        let (mut g, registry) = guard(GuardConfig::default());
        g.message_too_large();
        g.handshake_timed_out();
        g.write_queue_full();
        g.write_queue_full();
        for (name, count) in [
            ("sbc_oversized_messages_total", 1.0),
            ("sbc_handshake_timeouts_total", 1.0),
            ("sbc_congested_drops_total", 2.0),
        ] {
            assert_eq!(counter(&registry, name, &[]), count, "{name}");
        }
    }

    #[test]
    fn registering_twice_on_one_registry_fails() {
        let registry = Registry::new();
        assert!(Guard::new(GuardConfig::default(), &registry).is_ok());
        assert!(Guard::new(GuardConfig::default(), &registry).is_err());
    }
}
