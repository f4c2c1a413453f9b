//! Which pbx-node gets a new dialog or registration, sans-IO: every node
//! is probed with OPTIONS each `interval`. A node is alive while it says
//! anything: a probe's deadline (`timeout`) passing with nothing at all
//! heard from the node since the probe left (no answer to it, no response
//! or request of any call), or a send that fails, marks it down at once;
//! anything heard from it marks it up again. An overloaded node answers
//! its probe late but keeps answering calls, so it stays in the rotation
//! (with a single node, marking it down would turn its slowness into 503s
//! for everyone); a killed node says nothing, so it is down within
//! `interval + timeout` (1.9 s), and new calls go to the others within the
//! 2 s the failover promise allows. New work goes to a healthy node that is not
//! draining, chosen by rendezvous hashing of the Call-ID, so retransmissions,
//! CANCEL and the resubmission after a digest challenge reach the same node,
//! and a node going down moves only its own share.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchConfig {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(900),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChange {
    Up(usize),
    Down(usize),
}

#[derive(Debug, Clone)]
struct Node {
    addr: SocketAddr,
    healthy: bool,
    draining: bool,
    next_probe: Instant,
    /// The probe in flight: its number and when it is given up.
    pending: Option<Pending>,
    /// When the node last sent us anything.
    heard: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    id: u64,
    sent: Instant,
    deadline: Instant,
}

impl Node {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            addr: self.addr,
            healthy: self.healthy,
            draining: self.draining,
        }
    }
}

/// A node's state as the operator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub draining: bool,
}

#[derive(Debug)]
pub struct Dispatcher {
    config: DispatchConfig,
    nodes: Vec<Node>,
    next_probe_id: u64,
    metrics: Option<Metrics>,
}

/// `sbc_node_up`, `sbc_node_draining` and `sbc_dispatched_requests_total`,
/// labelled with each node's address.
#[derive(Debug)]
struct Metrics {
    up: IntGaugeVec,
    draining: IntGaugeVec,
    dispatched: IntCounterVec,
}

/// The method label of a dispatched request: a fixed set, so a phone
/// inventing methods cannot grow the metric without bound.
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 8] = [
        "INVITE",
        "REGISTER",
        "SUBSCRIBE",
        "NOTIFY",
        "MESSAGE",
        "OPTIONS",
        "PUBLISH",
        "REFER",
    ];
    KNOWN
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(method))
        .unwrap_or("other")
}

/// A probe to send: OPTIONS to `addr`, reported back with `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub node: usize,
    pub addr: SocketAddr,
    pub id: u64,
}

impl Dispatcher {
    /// Nodes start unknown-but-usable: healthy until a probe says otherwise,
    /// so the SBC serves at once after a start.
    pub fn new(addrs: &[SocketAddr], config: DispatchConfig, now: Instant) -> Dispatcher {
        Dispatcher {
            config,
            nodes: addrs
                .iter()
                .map(|&addr| Node {
                    addr,
                    healthy: true,
                    draining: false,
                    next_probe: now,
                    pending: None,
                    heard: None,
                })
                .collect(),
            next_probe_id: 1,
            metrics: None,
        }
    }

    /// Exposes each node's health and draining flag, and the requests
    /// dispatched to it, in `registry`.
    pub fn register_metrics(&mut self, registry: &Registry) -> Result<(), prometheus::Error> {
        let up = IntGaugeVec::new(
            Opts::new("sbc_node_up", "1 while the pbx-node is healthy, else 0"),
            &["node"],
        )?;
        let draining = IntGaugeVec::new(
            Opts::new(
                "sbc_node_draining",
                "1 while the pbx-node is drained (no new dialogs or registrations)",
            ),
            &["node"],
        )?;
        let dispatched = IntCounterVec::new(
            Opts::new(
                "sbc_dispatched_requests_total",
                "Requests outside a dialog (new dialogs, registrations) the dispatcher sent to \
                 each pbx-node; an INVITE's retransmissions, CANCEL and resubmission after a \
                 challenge follow the first and are not counted again",
            ),
            &["node", "method"],
        )?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(draining.clone()))?;
        registry.register(Box::new(dispatched.clone()))?;
        let metrics = Metrics {
            up,
            draining,
            dispatched,
        };
        for node in &self.nodes {
            metrics.show(node);
        }
        self.metrics = Some(metrics);
        Ok(())
    }

    /// A request outside a dialog went to `node` (for the metrics).
    pub fn dispatched(&self, node: usize, method: &str) {
        if let (Some(metrics), Some(n)) = (&self.metrics, self.nodes.get(node)) {
            metrics
                .dispatched
                .with_label_values(&[&n.addr.to_string(), method_label(method)])
                .inc();
        }
    }

    /// Sets a node's health; `true` if it changed.
    fn set_healthy(&mut self, node: usize, healthy: bool) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        let changed = std::mem::replace(&mut n.healthy, healthy) != healthy;
        // Every message from a node lands here: the gauges (a label
        // formatted, two lookups) only when something changed.
        if let (true, Some(metrics)) = (changed, &self.metrics) {
            metrics.show(n);
        }
        changed
    }

    pub fn addr(&self, node: usize) -> Option<SocketAddr> {
        self.nodes.get(node).map(|n| n.addr)
    }

    pub fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    pub fn status(&self) -> Vec<NodeStatus> {
        self.nodes.iter().map(Node::status).collect()
    }

    /// A draining node gets no new dialogs; its dialogs go on. `None`:
    /// no such node.
    pub fn set_draining(&mut self, node: usize, draining: bool) -> Option<NodeStatus> {
        let n = self.nodes.get_mut(node)?;
        n.draining = draining;
        if let Some(metrics) = &self.metrics {
            metrics.show(n);
        }
        Some(n.status())
    }

    pub fn is_healthy(&self, node: usize) -> bool {
        self.nodes.get(node).is_some_and(|n| n.healthy)
    }

    /// The node for new work keyed by `key` (the Call-ID).
    pub fn pick(&self, key: &str) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.healthy && !n.draining)
            .max_by_key(|(i, _)| {
                let mut hash = Sha256::new();
                hash.update((*i as u64).to_be_bytes());
                hash.update(key.as_bytes());
                let digest = hash.finalize();
                let mut first = [0u8; 8];
                first.copy_from_slice(&digest[..8]);
                u64::from_be_bytes(first)
            })
            .map(|(i, _)| i)
    }

    /// Probes due now; each is then in flight until answered or timed out.
    pub fn probes_due(&mut self, now: Instant) -> Vec<Probe> {
        let mut due = Vec::new();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            if node.pending.is_none() && node.next_probe <= now {
                let id = self.next_probe_id;
                self.next_probe_id += 1;
                node.pending = Some(Pending {
                    id,
                    sent: now,
                    deadline: now + self.config.timeout,
                });
                node.next_probe = now + self.config.interval;
                due.push(Probe {
                    node: index,
                    addr: node.addr,
                    id,
                });
            }
        }
        due
    }

    /// Any response to probe `id` (in time) ends the probe; the node is
    /// alive.
    pub fn probe_answered(&mut self, id: u64, now: Instant) -> Option<NodeChange> {
        let index = self
            .nodes
            .iter()
            .position(|n| n.pending.is_some_and(|p| p.id == id))?;
        self.nodes[index].pending = None;
        self.heard_from(index, now)
    }

    /// The node sent us something (a response, a request, a probe's answer
    /// however late): it is alive, and up again if it was down.
    pub fn heard_from(&mut self, node: usize, now: Instant) -> Option<NodeChange> {
        self.nodes.get_mut(node)?.heard = Some(now);
        self.set_healthy(node, true).then_some(NodeChange::Up(node))
    }

    /// Sending to the node failed (e.g. ICMP port unreachable): down now.
    pub fn send_failed(&mut self, node: usize) -> Option<NodeChange> {
        self.set_healthy(node, false)
            .then_some(NodeChange::Down(node))
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.nodes
            .iter()
            .map(|n| match n.pending {
                Some(p) => p.deadline,
                None => n.next_probe,
            })
            .min()
    }

    /// Gives up probes past their timeout; returns the nodes that went
    /// down: those that said nothing at all since their probe left.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<NodeChange> {
        let mut changes = Vec::new();
        for index in 0..self.nodes.len() {
            let node = &mut self.nodes[index];
            let Some(probe) = node.pending.filter(|p| p.deadline <= now) else {
                continue;
            };
            node.pending = None;
            let silent = node.heard.is_none_or(|heard| heard < probe.sent);
            if silent && self.set_healthy(index, false) {
                changes.push(NodeChange::Down(index));
            }
        }
        changes
    }
}

impl Metrics {
    fn show(&self, node: &Node) {
        let label = node.addr.to_string();
        self.up
            .with_label_values(&[&label])
            .set(i64::from(node.healthy));
        self.draining
            .with_label_values(&[&label])
            .set(i64::from(node.draining));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(now: Instant) -> Dispatcher {
        let addrs: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:5060").parse().unwrap())
            .collect();
        Dispatcher::new(&addrs, DispatchConfig::default(), now)
    }

    #[test]
    fn picks_are_stable_and_only_the_dead_nodes_share_moves() {
        let t0 = Instant::now();
        let mut d = three(t0);
        let keys: Vec<String> = (0..300).map(|i| format!("call-{i}")).collect();
        let before: Vec<usize> = keys.iter().map(|k| d.pick(k).unwrap()).collect();
        for node in 0..3 {
            let share = before.iter().filter(|&&n| n == node).count();
            assert!(
                (60..=140).contains(&share),
                "node {node} gets {share} of 300"
            );
        }
        assert_eq!(d.send_failed(1), Some(NodeChange::Down(1)));
        assert_eq!(d.send_failed(1), None, "reported once");
        for (key, was) in keys.iter().zip(&before) {
            let now = d.pick(key).unwrap();
            assert_ne!(now, 1);
            if *was != 1 {
                assert_eq!(now, *was, "{key} stays where it was");
            }
        }
        d.set_draining(0, true);
        assert!(keys.iter().all(|k| d.pick(k) == Some(2)));
        d.send_failed(2);
        assert_eq!(d.pick("any"), None, "nothing healthy and not draining");
    }

    #[test]
    fn an_unanswered_probe_marks_down_and_an_answer_marks_up() {
        let t0 = Instant::now();
        let mut d = three(t0);
        let probes = d.probes_due(t0);
        assert_eq!(probes.len(), 3);
        assert!(d.probes_due(t0).is_empty(), "one probe in flight per node");
        assert_eq!(d.probe_answered(probes[0].id, t0), None, "was already up");
        assert_eq!(d.probe_answered(probes[2].id, t0), None);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(900)));
        let changes = d.handle_timeout(t0 + Duration::from_millis(900));
        assert_eq!(changes, vec![NodeChange::Down(1)]);
        assert!(d.status()[0].healthy && !d.status()[1].healthy);

        let t1 = t0 + Duration::from_secs(1);
        let probes = d.probes_due(t1);
        assert_eq!(probes.len(), 3);
        let for_node_1 = probes.iter().find(|p| p.node == 1).unwrap();
        assert_eq!(d.probe_answered(for_node_1.id, t1), Some(NodeChange::Up(1)));
        assert_eq!(d.probe_answered(for_node_1.id, t1), None, "answered once");
    }

    fn metrics_text(registry: &Registry) -> String {
        use prometheus::Encoder;
        let mut text = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn metrics_show_health_draining_and_dispatches_per_node() {
        let t0 = Instant::now();
        let mut d = three(t0);
        let registry = Registry::new();
        d.register_metrics(&registry).unwrap();
        d.send_failed(1);
        d.set_draining(2, true);
        d.dispatched(0, "INVITE");
        d.dispatched(0, "invite");
        d.dispatched(0, "REGISTER");
        d.dispatched(0, "X-INVENTED");
        let text = metrics_text(&registry);
        for line in [
            r#"sbc_node_up{node="10.0.0.1:5060"} 1"#,
            r#"sbc_node_up{node="10.0.0.2:5060"} 0"#,
            r#"sbc_node_up{node="10.0.0.3:5060"} 1"#,
            r#"sbc_node_draining{node="10.0.0.2:5060"} 0"#,
            r#"sbc_node_draining{node="10.0.0.3:5060"} 1"#,
            r#"sbc_dispatched_requests_total{method="INVITE",node="10.0.0.1:5060"} 2"#,
            r#"sbc_dispatched_requests_total{method="REGISTER",node="10.0.0.1:5060"} 1"#,
            r#"sbc_dispatched_requests_total{method="other",node="10.0.0.1:5060"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        d.heard_from(1, t0);
        let text = metrics_text(&registry);
        assert!(text
            .lines()
            .any(|l| l == r#"sbc_node_up{node="10.0.0.2:5060"} 1"#));
    }

    #[test]
    fn a_node_that_answers_calls_but_not_its_probe_in_time_stays_up() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = three(t0);
        d.heard_from(2, t0 - ms(10));
        let probes = d.probes_due(t0);
        // Node 0 answers a call's request while its probe waits in its
        // queue; node 1 says nothing; node 2 spoke only before the probe.
        assert_eq!(d.heard_from(0, t0 + ms(500)), None, "was up");
        let changes = d.handle_timeout(t0 + ms(900));
        assert_eq!(changes, vec![NodeChange::Down(1), NodeChange::Down(2)]);
        assert!(d.is_healthy(0));
        // Node 0's probe answer comes late: ignored as an answer, but it
        // is word from the node, which stays up. Node 2's late answer (a
        // message from it) brings it back at once.
        assert_eq!(d.probe_answered(probes[0].id, t0 + ms(950)), None);
        assert_eq!(d.heard_from(0, t0 + ms(950)), None);
        assert_eq!(d.heard_from(2, t0 + ms(950)), Some(NodeChange::Up(2)));
        assert_eq!(d.pick("any").map(|n| n != 1), Some(true));

        // Killed: nothing heard after the next probe leaves at 1 s, so it
        // is down at 1.9 s, within the 2 s promised for failover.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(d.probes_due(t1).len(), 3);
        let changes = d.handle_timeout(t1 + ms(900));
        assert_eq!(
            changes,
            vec![NodeChange::Down(0), NodeChange::Down(2)],
            "1 was down"
        );
        assert_eq!(d.pick("any"), None);
    }
}
