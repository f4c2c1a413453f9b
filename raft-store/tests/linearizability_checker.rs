//! Unit tests for the linearizability checker in `tests/common/linearizability.rs`.

#[path = "common/linearizability.rs"]
mod linearizability;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linearizability::{
    check, check_with, CheckError, CheckOptions, History, KvOp, KvResult, Operation, Violation,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------
// Helpers for hand-written histories. Times are plain integers.

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put(key: &str, value: &str) -> KvOp {
    KvOp::Put {
        key: b(key),
        value: b(value),
    }
}

fn get(key: &str) -> KvOp {
    KvOp::Get { key: b(key) }
}

fn cas(key: &str, expected: Option<&str>, new: &str) -> KvOp {
    KvOp::Cas {
        key: b(key),
        expected: expected.map(b),
        new: b(new),
    }
}

fn del(key: &str) -> KvOp {
    KvOp::Delete { key: b(key) }
}

fn written() -> KvResult {
    KvResult::Written
}

fn value(v: Option<&str>) -> KvResult {
    KvResult::Value(v.map(b))
}

fn swapped(ok: bool) -> KvResult {
    KvResult::CasResult(ok)
}

/// A completed operation.
fn op(client: u64, op: KvOp, from: u64, to: u64, result: KvResult) -> Operation {
    Operation {
        client,
        op,
        invoked_at: from,
        completed: Some((to, result)),
    }
}

/// An operation whose outcome is unknown.
fn lost(client: u64, op: KvOp, from: u64) -> Operation {
    Operation {
        client,
        op,
        invoked_at: from,
        completed: None,
    }
}

#[track_caller]
fn assert_linearizable(ops: &[Operation]) {
    if let Err(e) = check(ops) {
        panic!("expected a linearizable history, got:\n{e}");
    }
}

#[track_caller]
fn assert_violation(ops: &[Operation], key: &str) -> Violation {
    match check(ops) {
        Err(CheckError::NotLinearizable(v)) => {
            assert_eq!(v.key, b(key), "violation on the wrong key:\n{v}");
            *v
        }
        Ok(()) => panic!("expected a violation on key {key:?}, but the history was accepted"),
        Err(e) => panic!("expected a violation on key {key:?}, got:\n{e}"),
    }
}

// ---------------------------------------------------------------------------
// Histories that must be accepted.

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_history_is_linearizable() {
    let ops = [
        op(1, get("x"), 0, 1, value(None)),
        op(1, put("x", "a"), 2, 3, written()),
        op(2, get("x"), 4, 5, value(Some("a"))),
        op(2, cas("x", Some("a"), "b"), 6, 7, swapped(true)),
        op(1, cas("x", Some("a"), "c"), 8, 9, swapped(false)),
        op(3, get("x"), 10, 11, value(Some("b"))),
        op(3, del("x"), 12, 13, written()),
        op(1, get("x"), 14, 15, value(None)),
        op(2, cas("x", None, "d"), 16, 17, swapped(true)),
        op(2, cas("x", None, "e"), 18, 19, swapped(false)),
        op(3, get("x"), 20, 21, value(Some("d"))),
        op(1, put("y", "other"), 22, 23, written()),
        op(1, get("y"), 24, 25, value(Some("other"))),
    ];
    assert_linearizable(&ops);
}

#[test]
fn concurrent_ops_linearizable_in_some_order() {
    // A long put, with reads on both sides of its linearization point.
    assert_linearizable(&[
        op(1, put("x", "1"), 0, 100, written()),
        op(2, get("x"), 5, 15, value(None)),
        op(3, get("x"), 10, 20, value(Some("1"))),
        op(2, get("x"), 30, 40, value(Some("1"))),
    ]);
    // Two concurrent puts; later reads agree on which one won. The order of
    // the history slice does not matter.
    assert_linearizable(&[
        op(3, get("x"), 20, 30, value(Some("a"))),
        op(1, put("x", "a"), 0, 10, written()),
        op(2, put("x", "b"), 0, 10, written()),
        op(3, get("x"), 40, 50, value(Some("a"))),
    ]);
    // Two concurrent CAS on the same expected value: exactly one wins, and
    // the response order is the opposite of the linearization order.
    assert_linearizable(&[
        op(1, put("x", "0"), 0, 10, written()),
        op(2, cas("x", Some("0"), "1"), 20, 60, swapped(false)),
        op(3, cas("x", Some("0"), "2"), 25, 50, swapped(true)),
        op(1, get("x"), 70, 80, value(Some("2"))),
    ]);
    // Reads overlapping a delete and a re-create.
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        op(2, del("x"), 20, 40, written()),
        op(3, cas("x", None, "b"), 30, 60, swapped(true)),
        op(4, get("x"), 25, 35, value(Some("a"))),
        op(4, get("x"), 36, 45, value(None)),
        op(4, get("x"), 50, 70, value(Some("b"))),
    ]);
    // Operations touching at the same instant count as concurrent.
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        op(2, get("x"), 10, 20, value(None)),
    ]);
}

// ---------------------------------------------------------------------------
// Histories that must be rejected.

#[test]
fn stale_read_is_rejected() {
    let ops = [
        op(1, put("x", "a"), 0, 10, written()),
        op(2, put("x", "b"), 20, 30, written()),
        op(3, get("x"), 40, 50, value(Some("a"))),
    ];
    let v = assert_violation(&ops, "x");
    assert_eq!(
        v.stuck.0, 2,
        "the read is the operation that cannot be placed:\n{v}"
    );
    assert_eq!(v.linearized, 2);
    assert_eq!(v.value_after_prefix, Some(b("b")));
    assert_eq!(
        v.prefix_tail.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(v.alternatives.is_empty(), "{v}");
}

#[test]
fn lost_write_is_rejected() {
    // An acknowledged put vanishes.
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(2, get("x"), 20, 30, value(None)),
        ],
        "x",
    );
    // Two acknowledged concurrent puts: readers first see one win, then the
    // other reappears.
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(2, put("x", "b"), 0, 10, written()),
            op(3, get("x"), 20, 30, value(Some("b"))),
            op(3, get("x"), 40, 50, value(Some("a"))),
        ],
        "x",
    );
    // A lost increment: both CAS steps succeeded but the counter shows one.
    assert_violation(
        &[
            op(1, put("n", "0"), 0, 10, written()),
            op(1, cas("n", Some("0"), "1"), 20, 30, swapped(true)),
            op(2, cas("n", Some("1"), "2"), 40, 50, swapped(true)),
            op(3, get("n"), 60, 70, value(Some("1"))),
        ],
        "n",
    );
}

#[test]
fn two_cas_successes_from_same_expected_value_are_rejected() {
    let v = assert_violation(
        &[
            op(1, put("x", "0"), 0, 10, written()),
            op(2, cas("x", Some("0"), "1"), 20, 40, swapped(true)),
            op(3, cas("x", Some("0"), "2"), 25, 45, swapped(true)),
        ],
        "x",
    );
    assert_eq!(v.linearized, 2, "{v}");
    // Create-if-absent twice.
    assert_violation(
        &[
            op(1, cas("lock", None, "owner-1"), 0, 20, swapped(true)),
            op(2, cas("lock", None, "owner-2"), 5, 25, swapped(true)),
        ],
        "lock",
    );
}

#[test]
fn cas_failing_on_matching_value_is_rejected() {
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(2, cas("x", Some("a"), "b"), 20, 30, swapped(false)),
        ],
        "x",
    );
}

#[test]
fn read_of_value_never_written_is_rejected() {
    let v = assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(2, put("x", "b"), 5, 30, written()),
            op(3, get("x"), 15, 25, value(Some("zzz"))),
        ],
        "x",
    );
    assert_eq!(v.stuck.0, 2, "{v}");
    // A value written to another key does not count.
    assert_violation(
        &[
            op(1, put("y", "a"), 0, 10, written()),
            op(2, get("x"), 0, 10, value(Some("a"))),
        ],
        "x",
    );
}

#[test]
fn read_your_writes_violation_is_rejected() {
    // Client 1 writes and then reads its own key back as absent, while
    // client 2's concurrent put gives no excuse (it cannot produce absent).
    assert_violation(
        &[
            op(1, put("x", "mine"), 0, 10, written()),
            op(2, put("x", "theirs"), 5, 50, written()),
            op(1, get("x"), 20, 30, value(None)),
        ],
        "x",
    );
}

#[test]
fn new_old_inversion_is_rejected() {
    // Once a read has seen the new value, a later read cannot see the old one,
    // even though the write is still in flight.
    assert_violation(
        &[
            op(1, put("x", "1"), 0, 100, written()),
            op(2, get("x"), 10, 20, value(Some("1"))),
            op(3, get("x"), 30, 40, value(None)),
        ],
        "x",
    );
}

#[test]
fn read_after_delete_is_rejected() {
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(1, del("x"), 20, 30, written()),
            op(2, get("x"), 40, 50, value(Some("a"))),
        ],
        "x",
    );
}

#[test]
fn keys_are_checked_independently() {
    // "a" is fine, "b" is not: the violation names "b".
    let v = assert_violation(
        &[
            op(1, put("a", "1"), 0, 10, written()),
            op(1, put("b", "1"), 0, 10, written()),
            op(2, get("a"), 20, 30, value(Some("1"))),
            op(2, get("b"), 20, 30, value(Some("2"))),
        ],
        "b",
    );
    assert_eq!(v.ops_on_key, 2);
    assert_eq!(v.stuck.1.op, get("b"));
}

#[test]
fn violation_report_is_readable() {
    let ops = [
        op(7, put("user/1", "alice"), 0, 10, written()),
        op(8, put("user/1", "bob"), 20, 30, written()),
        op(9, get("user/1"), 40, 50, value(Some("alice"))),
        op(9, put("bin", "\u{1}\u{2}"), 60, 70, written()),
    ];
    let report = check(&ops).unwrap_err().to_string();
    for needle in [
        "NOT linearizable",
        "key \"user/1\"",
        "#2 client 9: get \"user/1\" -> \"alice\"  [40..50]",
        "#1 client 8: put \"user/1\" = \"bob\" -> ok",
        "leaving the key = \"bob\"",
    ] {
        assert!(
            report.contains(needle),
            "{needle:?} missing from:\n{report}"
        );
    }
    // Debug is the same readable text, so `check(..).unwrap()` reports well.
    assert_eq!(format!("{:?}", check(&ops).unwrap_err()), report);
    // Non-printable bytes are shown as hex.
    let ops = [op(
        1,
        get("bin"),
        0,
        1,
        KvResult::Value(Some(vec![0xff, 0])),
    )];
    let report = check(&ops).unwrap_err().to_string();
    assert!(report.contains("0xff00"), "{report}");
}

#[test]
fn malformed_histories_are_reported() {
    match check(&[op(1, put("x", "a"), 0, 1, value(None))]) {
        Err(e @ CheckError::InvalidHistory { index: 0, .. }) => {
            assert!(e.to_string().contains("operation #0"), "{e}");
        }
        other => panic!("expected InvalidHistory, got {other:?}"),
    }
    match check(&[
        op(1, put("x", "a"), 0, 1, written()),
        op(1, get("x"), 10, 5, value(Some("a"))),
    ]) {
        Err(CheckError::InvalidHistory { index: 1, reason }) => {
            assert!(reason.contains("before its invocation"), "{reason}");
        }
        other => panic!("expected InvalidHistory, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Unknown outcomes.

#[test]
fn timed_out_put_read_later_is_fine() {
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        lost(2, put("x", "b"), 20),
        op(3, get("x"), 30, 40, value(Some("a"))),
        op(3, get("x"), 1000, 1010, value(Some("b"))),
        op(3, get("x"), 2000, 2010, value(Some("b"))),
    ]);
}

#[test]
fn timed_out_put_read_before_its_invocation_is_rejected() {
    let v = assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            op(3, get("x"), 20, 30, value(Some("b"))),
            lost(2, put("x", "b"), 40),
        ],
        "x",
    );
    assert_eq!(v.stuck.0, 1, "{v}");
}

#[test]
fn timed_out_ops_that_never_happened_are_fine() {
    assert_linearizable(&[
        lost(2, put("x", "never"), 0),
        lost(2, del("x"), 1),
        lost(2, cas("x", None, "never-either"), 2),
        op(1, put("x", "a"), 10, 20, written()),
        op(1, get("x"), 30, 40, value(Some("a"))),
        op(1, get("x"), 50, 60, value(Some("a"))),
    ]);
}

#[test]
fn timed_out_write_takes_effect_at_most_once() {
    // The lost put happened (the first read sees it), so it cannot also
    // explain a later return to the old value.
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            lost(2, put("x", "b"), 5),
            op(3, get("x"), 20, 30, value(Some("b"))),
            op(3, get("x"), 40, 50, value(Some("a"))),
        ],
        "x",
    );
    // But a second write of the old value does explain it.
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        lost(2, put("x", "b"), 5),
        lost(4, put("x", "a"), 6),
        op(3, get("x"), 20, 30, value(Some("b"))),
        op(3, get("x"), 40, 50, value(Some("a"))),
    ]);
}

#[test]
fn timed_out_cas_and_delete() {
    // A lost CAS whose effect is observed.
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        lost(2, cas("x", Some("a"), "b"), 20),
        op(3, get("x"), 30, 40, value(Some("b"))),
    ]);
    // A lost CAS cannot apply when its expectation is never met.
    assert_violation(
        &[
            op(1, put("x", "a"), 0, 10, written()),
            lost(2, cas("x", Some("zzz"), "b"), 20),
            op(3, get("x"), 30, 40, value(Some("b"))),
        ],
        "x",
    );
    // A lost delete observed, then a put.
    assert_linearizable(&[
        op(1, put("x", "a"), 0, 10, written()),
        lost(2, del("x"), 20),
        op(3, get("x"), 30, 40, value(None)),
        op(3, put("x", "c"), 50, 60, written()),
        op(3, get("x"), 70, 80, value(Some("c"))),
    ]);
    // A lost get constrains nothing.
    assert_linearizable(&[lost(1, get("x"), 0), lost(1, get("y"), 5)]);
}

// ---------------------------------------------------------------------------
// Budget exhaustion must be reported, never passed.

/// Many fully concurrent writes and reads of distinct values followed by an
/// impossible read: proving the violation needs an exponential search.
fn pathological_history() -> Vec<Operation> {
    let mut ops = Vec::new();
    for i in 0..24u64 {
        let v = format!("v{i}");
        ops.push(op(i, put("x", &v), 0, 1000, written()));
        ops.push(op(100 + i, get("x"), 0, 1000, value(Some(&v))));
    }
    ops.push(op(999, get("x"), 2000, 2001, value(Some("never"))));
    ops
}

#[test]
fn exhausted_step_budget_is_inconclusive() {
    let options = CheckOptions {
        max_steps_per_key: 10_000,
        time_limit: Duration::from_secs(60),
    };
    match check_with(&pathological_history(), &options) {
        Err(e @ CheckError::Inconclusive(_)) => {
            let text = e.to_string();
            assert!(text.contains("INCONCLUSIVE"), "{text}");
            assert!(text.contains("step budget"), "{text}");
            assert!(text.contains("not a pass"), "{text}");
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
}

#[test]
fn exhausted_time_budget_is_inconclusive() {
    let options = CheckOptions {
        max_steps_per_key: u64::MAX,
        time_limit: Duration::ZERO,
    };
    match check_with(&pathological_history(), &options) {
        Err(CheckError::Inconclusive(inc)) => {
            assert_eq!(inc.key, b("x"));
            assert_eq!(inc.ops_on_key, 49);
            assert!(inc.limit.contains("time limit"), "{inc}");
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
}

#[test]
#[should_panic(expected = "INCONCLUSIVE")]
fn inconclusive_fails_an_unwrapping_test() {
    let options = CheckOptions {
        max_steps_per_key: 1_000,
        time_limit: Duration::from_secs(60),
    };
    check_with(&pathological_history(), &options).unwrap();
}

// ---------------------------------------------------------------------------
// Randomized histories generated from a real sequential execution.

struct GenConfig {
    ops: usize,
    keys: &'static [&'static str],
    /// Each op is invoked up to `spread` before its linearization point and
    /// completes up to `spread` after it; points are 100 apart.
    spread: u64,
    /// Probability that a (real) operation's response is lost.
    p_lost: f64,
    /// Probability of adding a timed-out put that never took effect.
    p_phantom: f64,
}

/// Runs random operations sequentially against a map, one every 100 time
/// units, and records each with a random interval around its execution time.
/// Written values are unique.
fn generate(seed: u64, cfg: &GenConfig) -> Vec<Operation> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut written_values: Vec<Vec<u8>> = Vec::new();
    let mut ops = Vec::new();
    for i in 0..cfg.ops {
        let at = cfg.spread + 100 * i as u64;
        let key = b(cfg.keys[rng.random_range(0..cfg.keys.len())]);
        let fresh = format!("s{seed}-v{i}").into_bytes();
        let current = model.get(&key).cloned();
        let (kv_op, result) = match rng.random_range(0..100) {
            0..30 => {
                model.insert(key.clone(), fresh.clone());
                written_values.push(fresh.clone());
                let o = KvOp::Put { key, value: fresh };
                (o, KvResult::Written)
            }
            30..65 => (KvOp::Get { key }, KvResult::Value(current)),
            65..85 => {
                let expected = if rng.random_bool(0.5) || written_values.is_empty() {
                    current.clone()
                } else if rng.random_bool(0.2) {
                    None
                } else {
                    Some(written_values[rng.random_range(0..written_values.len())].clone())
                };
                let ok = expected == current;
                if ok {
                    model.insert(key.clone(), fresh.clone());
                    written_values.push(fresh.clone());
                }
                let o = KvOp::Cas {
                    key,
                    expected,
                    new: fresh,
                };
                (o, KvResult::CasResult(ok))
            }
            _ => {
                model.remove(&key);
                (KvOp::Delete { key }, KvResult::Written)
            }
        };
        let invoked_at = at - rng.random_range(0..=cfg.spread);
        let completed = if rng.random_bool(cfg.p_lost) {
            None
        } else {
            Some((at + rng.random_range(0..=cfg.spread), result))
        };
        ops.push(Operation {
            client: rng.random_range(0..8),
            op: kv_op,
            invoked_at,
            completed,
        });
        if rng.random_bool(cfg.p_phantom) {
            let key = cfg.keys[rng.random_range(0..cfg.keys.len())];
            ops.push(lost(99, put(key, &format!("phantom-{i}")), at));
        }
    }
    ops
}

fn completed_reads(ops: &[Operation]) -> Vec<usize> {
    (0..ops.len())
        .filter(|&i| matches!(ops[i].op, KvOp::Get { .. }) && ops[i].completed.is_some())
        .collect()
}

/// Replaces the result of a completed read.
fn corrupt_read(ops: &mut [Operation], read: usize, seen: Option<Vec<u8>>) {
    let (_, result) = ops[read].completed.as_mut().expect("completed read");
    *result = KvResult::Value(seen);
}

/// Finds a read R and a value-writing op P such that P completed before some
/// definitely-effective write W on the same key was invoked, and W completed
/// before R was invoked: R returning P's (unique) value is impossible.
fn find_stale_corruption(ops: &[Operation], rng: &mut StdRng) -> Option<(usize, Vec<u8>)> {
    let effective = |o: &Operation| match (&o.op, &o.completed) {
        (KvOp::Put { .. } | KvOp::Delete { .. }, Some(_)) => true,
        (KvOp::Cas { .. }, Some((_, KvResult::CasResult(ok)))) => *ok,
        _ => false,
    };
    let written_value = |o: &Operation| match (&o.op, &o.completed) {
        (KvOp::Put { value, .. }, Some(_)) => Some(value.clone()),
        (KvOp::Cas { new, .. }, Some((_, KvResult::CasResult(true)))) => Some(new.clone()),
        _ => None,
    };
    let mut reads = completed_reads(ops);
    // Try reads in a random order.
    for i in (1..reads.len()).rev() {
        reads.swap(i, rng.random_range(0..=i));
    }
    for r in reads {
        let read = &ops[r];
        let key = read.op.key();
        for w in ops.iter().filter(|w| w.op.key() == key && effective(w)) {
            if w.completed.as_ref().unwrap().0 >= read.invoked_at {
                continue;
            }
            let stale = ops.iter().find_map(|p| {
                let done = p.completed.as_ref()?.0;
                (p.op.key() == key && done < w.invoked_at)
                    .then(|| written_value(p))
                    .flatten()
            });
            if let Some(stale) = stale {
                return Some((r, stale));
            }
        }
    }
    None
}

#[test]
fn randomized_histories_pass_and_corruptions_fail() {
    let mut stale_checked = 0;
    for seed in 0..40 {
        let cfg = GenConfig {
            ops: 300,
            keys: &["a", "b", "c"],
            spread: [50, 200, 400][seed as usize % 3],
            p_lost: 0.05,
            p_phantom: 0.03,
        };
        let ops = generate(seed, &cfg);
        if let Err(e) = check(&ops) {
            panic!("seed {seed}: valid history rejected:\n{e}");
        }
        let mut rng = StdRng::seed_from_u64(seed + 1000);

        // Corruption 1: a read returns a value that was never written.
        let reads = completed_reads(&ops);
        let r = reads[rng.random_range(0..reads.len())];
        let mut bad = ops.clone();
        corrupt_read(&mut bad, r, Some(b("never-written")));
        let key = String::from_utf8(ops[r].op.key().to_vec()).unwrap();
        match check(&bad) {
            Err(CheckError::NotLinearizable(v)) => assert_eq!(v.key, b(&key), "seed {seed}"),
            other => panic!("seed {seed}: corrupted read #{r} not detected: {other:?}"),
        }

        // Corruption 2: a read returns a value that was provably overwritten.
        if let Some((r, stale)) = find_stale_corruption(&ops, &mut rng) {
            let mut bad = ops.clone();
            corrupt_read(&mut bad, r, Some(stale));
            match check(&bad) {
                Err(CheckError::NotLinearizable(v)) => {
                    assert_eq!(v.key, ops[r].op.key(), "seed {seed}")
                }
                other => panic!("seed {seed}: stale read #{r} not detected: {other:?}"),
            }
            stale_checked += 1;
        }
    }
    assert!(
        stale_checked >= 30,
        "only {stale_checked} stale corruptions"
    );
}

#[test]
fn large_single_key_history_is_checked_quickly() {
    let options = CheckOptions {
        max_steps_per_key: 20_000_000,
        time_limit: Duration::from_secs(30),
    };
    let cfg = GenConfig {
        ops: 5000,
        keys: &["hot"],
        spread: 500,
        p_lost: 0.02,
        p_phantom: 0.01,
    };
    let ops = generate(7, &cfg);
    let started = Instant::now();
    if let Err(e) = check_with(&ops, &options) {
        panic!("valid history rejected:\n{e}");
    }
    println!(
        "{} ops on one key accepted in {:?}",
        ops.len(),
        started.elapsed()
    );

    // Corrupt a read near the end: the search must exhaust every way of
    // ordering everything before it. (Many lost responses multiply that
    // space; this history only has timed-out puts that never took effect.)
    let cfg = GenConfig { p_lost: 0.0, ..cfg };
    let ops = generate(8, &cfg);
    let reads = completed_reads(&ops);
    let r = reads[reads.len() - 5];
    let mut bad = ops.clone();
    corrupt_read(&mut bad, r, Some(b("never-written")));
    let started = Instant::now();
    match check_with(&bad, &options) {
        Err(CheckError::NotLinearizable(v)) => assert_eq!(v.stuck.0, r, "{v}"),
        other => panic!("corruption not detected: {other:?}"),
    }
    println!(
        "{} ops on one key rejected in {:?}",
        ops.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------
// The recorder.

type Store = Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>;

/// Executes `op` atomically against an in-memory map.
fn apply(store: &Store, op: &KvOp) -> KvResult {
    let mut map = store.lock().unwrap();
    match op {
        KvOp::Put { key, value } => {
            map.insert(key.clone(), value.clone());
            KvResult::Written
        }
        KvOp::Get { key } => KvResult::Value(map.get(key).cloned()),
        KvOp::Cas { key, expected, new } => {
            let ok = map.get(key) == expected.as_ref();
            if ok {
                map.insert(key.clone(), new.clone());
            }
            KvResult::CasResult(ok)
        }
        KvOp::Delete { key } => {
            map.remove(key);
            KvResult::Written
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorder_captures_concurrent_tasks() {
    let history = History::new();
    let store: Store = Arc::default();
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let history = history.clone();
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(client);
            for i in 0..150 {
                let key = b(["a", "b"][rng.random_range(0..2)]);
                let fresh = format!("c{client}-{i}").into_bytes();
                let kv_op = match rng.random_range(0..4) {
                    0 => KvOp::Put { key, value: fresh },
                    1 => KvOp::Get { key },
                    2 => KvOp::Cas {
                        expected: store.lock().unwrap().get(&key).cloned(),
                        key,
                        new: fresh,
                    },
                    _ => KvOp::Delete { key },
                };
                let handle = history.invoke(client, kv_op.clone());
                tokio::task::yield_now().await;
                match rng.random_range(0..20) {
                    // Timed out after taking effect.
                    0 => {
                        let _ = apply(&store, &kv_op);
                    }
                    // Timed out before taking effect.
                    1 => {}
                    _ => {
                        let result = apply(&store, &kv_op);
                        tokio::task::yield_now().await;
                        handle.complete(result);
                        continue;
                    }
                }
                drop(handle);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let ops = history.into_operations();
    assert_eq!(ops.len(), 8 * 150);
    assert!(ops.iter().any(|o| o.completed.is_none()));
    for o in &ops {
        if let Some((done, _)) = &o.completed {
            assert!(*done >= o.invoked_at);
        }
    }
    if let Err(e) = check(&ops) {
        panic!("recorded history of a linearizable store rejected:\n{e}");
    }
}

#[test]
fn recorder_catches_a_lagging_replica() {
    // A buggy store that serves reads from a replica one write behind.
    let history = History::default();
    let leader: Store = Arc::default();
    let replica: Store = Arc::default();
    let mut last_write: Option<KvOp> = None;
    for i in 0..3 {
        let w = put("x", &format!("v{i}"));
        let h = history.invoke(1, w.clone());
        let result = apply(&leader, &w);
        if let Some(prev) = last_write.replace(w) {
            apply(&replica, &prev);
        }
        h.complete(result);
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = get("x");
    let h = history.invoke(2, r.clone());
    let result = apply(&replica, &r);
    h.complete(result);
    let ops = history.into_operations();
    assert_eq!(ops[3].completed.as_ref().unwrap().1, value(Some("v1")));
    let v = assert_violation(&ops, "x");
    assert_eq!(v.stuck.0, 3, "{v}");
}
