//! Linearizability checker for histories of single-key operations on a
//! key-value map (the etcd KV v3 subset used by `raft-store`).
//!
//! # Model
//!
//! The store is a map from byte-string keys to byte-string values; every key
//! starts out absent. Operations ([`KvOp`]) touch exactly one key:
//!
//! * `Put { key, value }` sets the key and returns [`KvResult::Written`];
//! * `Delete { key }` removes the key and returns [`KvResult::Written`];
//! * `Get { key }` returns [`KvResult::Value`] with the current value;
//! * `Cas { key, expected, new }` sets the key to `new` if its current value
//!   equals `expected` (`None` = key absent) and returns
//!   [`KvResult::CasResult`] telling whether it did.
//!
//! # Time
//!
//! Times are `u64` nanoseconds on a monotonic clock. [`History`] measures them
//! from its own creation (`Instant`-based), so histories recorded through it are
//! always consistent. Hand-built histories may use any monotonic `u64` unit.
//! Operation `a` precedes operation `b` in real time iff
//! `a.completed.0 < b.invoked_at` (strictly); equal timestamps count as
//! concurrent, which can only make the checker more permissive, never produce
//! a false violation.
//!
//! # Unknown outcomes
//!
//! An operation without a completion (timeout, lost connection, leader crash)
//! may have taken effect at any single instant after its invocation, or never.
//! A pending `Get` therefore constrains nothing and is ignored; a pending
//! `Put`/`Delete`/`Cas` may be linearized anywhere after its invocation or be
//! left out entirely (a pending `Cas` that is placed where it would fail is the
//! same as leaving it out).
//!
//! # Algorithm
//!
//! Single-key operations on a map are linearizable iff every key's
//! sub-history is (P-compositionality), so the history is split per key and
//! each sub-history is checked with the Wing & Gong search as improved by
//! Lowe: a depth-first search over "which operation takes effect next",
//! restricted to operations invoked before the earliest outstanding response,
//! with a memo of visited configurations (set of linearized operations,
//! model state) so that no configuration is explored twice. A read-only
//! candidate that is valid in the current state is taken without branching.
//!
//! Unknown-outcome operations never return, so they are kept out of the
//! event list and only tried once the completed candidates of a
//! configuration are exhausted, and only where they enable some candidate
//! (see `PendingOps::candidates` for why that loses nothing). The memo
//! treats them with subsumption: a configuration that already failed with
//! some set of them used also fails with any superset used. Valid histories
//! with timeouts check fast; proving a violation in a long history with many
//! timeouts can still run out of budget (reported as inconclusive).
//!
//! The search is bounded by [`CheckOptions`]; running out of budget yields
//! [`CheckError::Inconclusive`], which is an error: a test must never treat it
//! as a pass.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A single-key operation on the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    /// Compare-and-set: if the current value equals `expected` (`None` = the
    /// key is absent) then set it to `new`.
    Cas {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl KvOp {
    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Put { key, .. }
            | KvOp::Get { key }
            | KvOp::Cas { key, .. }
            | KvOp::Delete { key } => key,
        }
    }
}

/// The observed result of a completed operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvResult {
    /// Result of `Put` and `Delete`.
    Written,
    /// Result of `Get`: the value read (`None` = key absent).
    Value(Option<Vec<u8>>),
    /// Result of `Cas`: whether the swap happened.
    CasResult(bool),
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Who issued it (only used in reports).
    pub client: u64,
    pub op: KvOp,
    /// When the request was issued (ns, monotonic).
    pub invoked_at: u64,
    /// When the response arrived and what it said; `None` if the outcome is
    /// unknown.
    pub completed: Option<(u64, KvResult)>,
}

/// Thread-safe history recorder, cheap to clone and share between tokio tasks.
///
/// Call [`History::invoke`] right before sending a request and
/// [`OpHandle::complete`] right after its response arrives. Dropping the
/// handle without completing it records an unknown outcome.
#[derive(Clone)]
pub struct History {
    inner: Arc<Recorder>,
}

struct Recorder {
    epoch: Instant,
    ops: Mutex<Vec<Operation>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    pub fn new() -> Self {
        History {
            inner: Arc::new(Recorder {
                epoch: Instant::now(),
                ops: Mutex::new(Vec::new()),
            }),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        self.inner
            .ops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the invocation of `op` by `client`, timestamped now.
    #[must_use = "dropping the handle records the operation's outcome as unknown"]
    pub fn invoke(&self, client: u64, op: KvOp) -> OpHandle {
        let mut ops = self.lock();
        let invoked_at = self.now();
        ops.push(Operation {
            client,
            op,
            invoked_at,
            completed: None,
        });
        OpHandle {
            history: self.clone(),
            index: ops.len() - 1,
        }
    }

    /// Snapshot of everything recorded so far, in invocation order.
    /// Operations whose handles are still alive appear with unknown outcome.
    pub fn into_operations(self) -> Vec<Operation> {
        self.lock().clone()
    }
}

/// An invoked operation waiting for its response.
pub struct OpHandle {
    history: History,
    index: usize,
}

impl OpHandle {
    /// Records that the operation completed with `result`, timestamped now.
    pub fn complete(self, result: KvResult) {
        let mut ops = self.history.lock();
        let at = self.history.now();
        ops[self.index].completed = Some((at, result));
    }
}

/// Search budget for [`check_with`].
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Maximum number of search steps spent on one key.
    pub max_steps_per_key: u64,
    /// Maximum wall-clock time for the whole check.
    pub time_limit: Duration,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 20_000_000,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// Why a history was not accepted.
#[derive(Clone)]
pub enum CheckError {
    /// The history is definitely not linearizable.
    NotLinearizable(Box<Violation>),
    /// The search ran out of budget; nothing is known. Treat as a failure.
    Inconclusive(Inconclusive),
    /// The history itself is malformed (wrong result type, time going
    /// backwards); `index` is the position in the slice given to [`check`].
    InvalidHistory { index: usize, reason: String },
}

/// Evidence that one key's sub-history is not linearizable.
///
/// Operations are given with their index in the slice passed to [`check`].
/// The checker reports the deepest point its search reached: the longest
/// prefix it could linearize, then the operation whose response had already
/// arrived but which could not be placed next (nor could any alternative).
#[derive(Clone, Debug)]
pub struct Violation {
    pub key: Vec<u8>,
    /// Number of operations on this key that the check considered (pending
    /// `Get`s are not counted).
    pub ops_on_key: usize,
    /// Length of the longest linearizable prefix the search found.
    pub linearized: usize,
    /// Value of the key after that prefix.
    pub value_after_prefix: Option<Vec<u8>>,
    /// The last few operations of that prefix, in linearization order.
    pub prefix_tail: Vec<(usize, Operation)>,
    /// The operation that had to come next but could not.
    pub stuck: (usize, Operation),
    /// The other operations that could have come next (all dead ends).
    pub alternatives: Vec<(usize, Operation)>,
}

/// The search for one key ran out of budget.
#[derive(Clone, Debug)]
pub struct Inconclusive {
    pub key: Vec<u8>,
    pub ops_on_key: usize,
    pub steps: u64,
    pub elapsed: Duration,
    /// Which limit was hit.
    pub limit: &'static str,
}

/// Checks that `ops` is linearizable, with the default budget.
pub fn check(ops: &[Operation]) -> Result<(), CheckError> {
    check_with(ops, &CheckOptions::default())
}

/// Checks that `ops` is linearizable. Keys are checked in byte order; the
/// first violation found is returned, otherwise the first inconclusive key.
pub fn check_with(ops: &[Operation], options: &CheckOptions) -> Result<(), CheckError> {
    let start = Instant::now();
    let deadline = start + options.time_limit;
    let mut by_key: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        validate(op).map_err(|reason| CheckError::InvalidHistory { index, reason })?;
        by_key.entry(op.op.key()).or_default().push(index);
    }
    let mut keys: Vec<&[u8]> = by_key.keys().copied().collect();
    keys.sort_unstable();
    let mut inconclusive = None;
    for key in keys {
        let sub = prepare(ops, &by_key[key]);
        let mut budget = Budget {
            steps: 0,
            max_steps: options.max_steps_per_key,
            deadline,
            limit: "",
        };
        match search(&sub.ops, sub.done_len, sub.pending_len, &mut budget) {
            Outcome::Linearizable => {}
            Outcome::Violation(diag) => {
                return Err(CheckError::NotLinearizable(Box::new(
                    sub.violation(ops, key, &diag),
                )));
            }
            Outcome::Inconclusive => {
                if inconclusive.is_none() {
                    inconclusive = Some(Inconclusive {
                        key: key.to_vec(),
                        ops_on_key: sub.ops.len(),
                        steps: budget.steps,
                        elapsed: start.elapsed(),
                        limit: budget.limit,
                    });
                }
            }
        }
    }
    match inconclusive {
        Some(inc) => Err(CheckError::Inconclusive(inc)),
        None => Ok(()),
    }
}

fn validate(op: &Operation) -> Result<(), String> {
    let Some((done, result)) = &op.completed else {
        return Ok(());
    };
    if *done < op.invoked_at {
        return Err(format!(
            "completed at {done}, before its invocation at {}",
            op.invoked_at
        ));
    }
    let ok = matches!(
        (&op.op, result),
        (KvOp::Put { .. } | KvOp::Delete { .. }, KvResult::Written)
            | (KvOp::Get { .. }, KvResult::Value(_))
            | (KvOp::Cas { .. }, KvResult::CasResult(_))
    );
    if ok {
        Ok(())
    } else {
        Err(format!(
            "result {result:?} does not fit operation {:?}",
            op.op
        ))
    }
}

// ---------------------------------------------------------------------------
// Per-key preparation.

/// Model state: 0 = key absent, `v + 1` = interned value `v`.
type State = u32;

#[derive(Clone, Copy, Debug)]
enum Step {
    Write(State),
    Read(State),
    CasOk { expected: State, new: State },
    CasFail { expected: State },
}

impl Step {
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Write(new) => Some(new),
            Step::Read(seen) => (seen == state).then_some(state),
            Step::CasOk { expected, new } => (expected == state).then_some(new),
            Step::CasFail { expected } => (expected != state).then_some(state),
        }
    }
}

struct SearchOp {
    /// Index in the caller's slice.
    index: usize,
    step: Step,
    invoked: u64,
    /// `None` = unknown outcome.
    completed: Option<u64>,
    /// Bit position in the "done" set (completed ops) or in the "pending"
    /// set (unknown outcome).
    slot: usize,
}

impl SearchOp {
    fn pending(&self) -> bool {
        self.completed.is_none()
    }
}

struct SubHistory {
    ops: Vec<SearchOp>,
    done_len: usize,
    pending_len: usize,
    values: Vec<Vec<u8>>,
}

/// Maps each distinct value of one key to a small [`State`].
#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a [u8], State>,
    values: Vec<&'a [u8]>,
}

impl<'a> Interner<'a> {
    fn intern(&mut self, value: Option<&'a Vec<u8>>) -> State {
        let Some(value) = value else {
            return 0;
        };
        if let Some(&id) = self.ids.get(value.as_slice()) {
            return id;
        }
        self.values.push(value);
        let id = State::try_from(self.values.len()).expect("too many distinct values");
        self.ids.insert(value, id);
        id
    }
}

fn prepare(all: &[Operation], indices: &[usize]) -> SubHistory {
    let mut values = Interner::default();
    let mut ops = Vec::with_capacity(indices.len());
    for &index in indices {
        let op = &all[index];
        let result = op.completed.as_ref().map(|(_, r)| r);
        let step = match (&op.op, result) {
            (KvOp::Get { .. }, None) => continue,
            (KvOp::Get { .. }, Some(KvResult::Value(v))) => Step::Read(values.intern(v.as_ref())),
            (KvOp::Put { value, .. }, _) => Step::Write(values.intern(Some(value))),
            (KvOp::Delete { .. }, _) => Step::Write(0),
            (KvOp::Cas { expected, new, .. }, None | Some(KvResult::CasResult(true))) => {
                Step::CasOk {
                    expected: values.intern(expected.as_ref()),
                    new: values.intern(Some(new)),
                }
            }
            (KvOp::Cas { expected, .. }, Some(_)) => Step::CasFail {
                expected: values.intern(expected.as_ref()),
            },
            (KvOp::Get { .. }, Some(_)) => unreachable!("validated"),
        };
        ops.push(SearchOp {
            index,
            step,
            invoked: op.invoked_at,
            completed: op.completed.as_ref().map(|(t, _)| *t),
            slot: 0,
        });
    }
    // Number bits in invocation order so that the linearized set is mostly a
    // dense prefix, which the memo encodes compactly.
    ops.sort_by_key(|o| (o.invoked, o.index));
    let (mut done_len, mut pending_len) = (0, 0);
    for op in &mut ops {
        let counter = if op.pending() {
            &mut pending_len
        } else {
            &mut done_len
        };
        op.slot = *counter;
        *counter += 1;
    }
    SubHistory {
        ops,
        done_len,
        pending_len,
        values: values.values.iter().map(|v| v.to_vec()).collect(),
    }
}

impl SubHistory {
    fn value(&self, state: State) -> Option<Vec<u8>> {
        (state != 0).then(|| self.values[state as usize - 1].clone())
    }

    fn violation(&self, all: &[Operation], key: &[u8], diag: &Diagnosis) -> Violation {
        let describe = |local: usize| {
            let index = self.ops[local].index;
            (index, all[index].clone())
        };
        Violation {
            key: key.to_vec(),
            ops_on_key: self.ops.len(),
            linearized: diag.depth,
            value_after_prefix: self.value(diag.state),
            prefix_tail: diag.tail.iter().map(|&o| describe(o)).collect(),
            stuck: describe(diag.stuck),
            alternatives: diag.alternatives.iter().map(|&o| describe(o)).collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// The search.

struct Budget {
    steps: u64,
    max_steps: u64,
    deadline: Instant,
    limit: &'static str,
}

impl Budget {
    /// Counts one step; returns false once the budget is exhausted.
    fn tick(&mut self) -> bool {
        self.steps += 1;
        if self.steps > self.max_steps {
            self.limit = "step budget (CheckOptions::max_steps_per_key)";
            return false;
        }
        if self.steps.is_multiple_of(4096) && Instant::now() > self.deadline {
            self.limit = "time limit (CheckOptions::time_limit)";
            return false;
        }
        true
    }
}

/// The deepest dead end found, for the report.
struct Diagnosis {
    depth: usize,
    state: State,
    tail: Vec<usize>,
    stuck: usize,
    alternatives: Vec<usize>,
}

enum Outcome {
    Linearizable,
    Violation(Diagnosis),
    Inconclusive,
}

const NIL: usize = usize::MAX;
const TAIL_LEN: usize = 8;

/// Doubly linked list of the call and return events of the completed
/// operations, sorted by time, with entry 0 as the head sentinel. Removing an
/// operation unlinks both of its events; re-inserting in reverse order of
/// removal restores the list exactly. Unknown-outcome operations are not in
/// the list: they never return, so they never constrain anything.
struct Events {
    prev: Vec<usize>,
    next: Vec<usize>,
    /// For each entry: (local op, is_call, time). Unused for the sentinel.
    what: Vec<(usize, bool, u64)>,
    call_entry: Vec<usize>,
    return_entry: Vec<usize>,
}

impl Events {
    fn new(ops: &[SearchOp]) -> Events {
        // Calls sort before returns at equal times: they are concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            if let Some(completed) = op.completed {
                events.push((op.invoked, false, i));
                events.push((completed, true, i));
            }
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut ev = Events {
            prev: (0..len).map(|e| e.wrapping_sub(1)).collect(),
            next: (1..=len).map(|e| if e == len { NIL } else { e }).collect(),
            what: Vec::with_capacity(len),
            call_entry: vec![NIL; ops.len()],
            return_entry: vec![NIL; ops.len()],
        };
        ev.what.push((NIL, false, 0));
        for (entry, &(time, is_return, op)) in events.iter().enumerate() {
            let entry = entry + 1;
            ev.what.push((op, !is_return, time));
            if is_return {
                ev.return_entry[op] = entry;
            } else {
                ev.call_entry[op] = entry;
            }
        }
        ev
    }

    fn is_empty(&self) -> bool {
        self.next[0] == NIL
    }

    /// Pushes the ops whose call precedes the first return (the ones that
    /// may take effect next) and returns that first return's entry.
    fn candidates(&self, out: &mut Vec<usize>) -> usize {
        let mut e = self.next[0];
        while e != NIL {
            let (op, is_call, _) = self.what[e];
            if !is_call {
                return e;
            }
            out.push(op);
            e = self.next[e];
        }
        unreachable!("every call is followed by its return")
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        self.unlink(self.return_entry[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.return_entry[op]);
        self.relink(self.call_entry[op]);
    }
}

/// Unknown-outcome operations, grouped by the state they would produce.
struct PendingOps {
    /// (resulting state, ops in invocation order), sorted by state.
    groups: Vec<(State, Vec<usize>)>,
    group_of: HashMap<State, usize>,
    /// Blind writes of values that no operation reads or compares against,
    /// in invocation order: they are interchangeable.
    unmentioned: Vec<usize>,
    cas: Vec<usize>,
    /// Scratch space.
    targets: Vec<State>,
}

impl PendingOps {
    fn new(ops: &[SearchOp]) -> PendingOps {
        let mut mentioned = std::collections::HashSet::new();
        for op in ops {
            match op.step {
                Step::Read(v) | Step::CasOk { expected: v, .. } | Step::CasFail { expected: v } => {
                    mentioned.insert(v);
                }
                Step::Write(_) => {}
            }
        }
        let mut by_result: HashMap<State, Vec<usize>> = HashMap::new();
        let mut unmentioned = Vec::new();
        let mut cas = Vec::new();
        for (i, op) in ops.iter().enumerate().filter(|(_, op)| op.pending()) {
            let result = match op.step {
                Step::Write(new) if !mentioned.contains(&new) => {
                    unmentioned.push(i);
                    continue;
                }
                Step::Write(new) => new,
                Step::CasOk { new, .. } => {
                    cas.push(i);
                    new
                }
                Step::Read(_) | Step::CasFail { .. } => unreachable!("never pending"),
            };
            // `ops` is in invocation order, so each group is too.
            by_result.entry(result).or_default().push(i);
        }
        let mut groups: Vec<(State, Vec<usize>)> = by_result.into_iter().collect();
        groups.sort_unstable_by_key(|&(state, _)| state);
        let group_of = groups
            .iter()
            .enumerate()
            .map(|(g, &(s, _))| (s, g))
            .collect();
        PendingOps {
            groups,
            group_of,
            unmentioned,
            cas,
            targets: Vec::new(),
        }
    }

    /// Pushes the unknown-outcome ops worth trying next in a configuration
    /// with model `state`, whose completed candidates are `completed`, whose
    /// first return happens at `limit`, and where the unknown-outcome ops in
    /// `linearized` are already used.
    ///
    /// The search only looks for linearizations of a canonical form, which
    /// exists whenever any linearization does:
    ///
    /// * every unknown-outcome op is immediately followed by an op that it
    ///   *enables* (invalid before it, valid after it). Any linearization can
    ///   be rewritten into this form: an unknown-outcome op that does not
    ///   change the state, or is immediately followed by a blind write, or is
    ///   last, can be left out; one immediately followed by a read-only op
    ///   that was valid without it can swap places with that op.
    /// * among available unused blind writes of the same value, or of values
    ///   that no operation reads or compares against, the one invoked last
    ///   is used first (they are interchangeable, and the earlier ones stay
    ///   usable wherever the later one is).
    fn candidates(
        &mut self,
        ops: &[SearchOp],
        linearized: &[u64],
        state: State,
        completed: &[usize],
        limit: u64,
        out: &mut Vec<usize>,
    ) {
        let available = |p: usize| {
            let op = &ops[p];
            op.invoked <= limit && linearized[op.slot / 64] & (1 << (op.slot % 64)) == 0
        };
        let targets = &mut self.targets;
        targets.clear();
        let mut any = false;
        for &c in completed {
            match ops[c].step {
                Step::Read(seen) if seen != state => targets.push(seen),
                Step::CasOk { expected, .. } if expected != state => targets.push(expected),
                Step::CasFail { expected } if expected == state => any = true,
                _ => {}
            }
        }
        for &p in &self.cas {
            if let Step::CasOk { expected, .. } = ops[p].step {
                if expected != state && available(p) {
                    targets.push(expected);
                }
            }
        }
        if any {
            let useless = self
                .unmentioned
                .iter()
                .rev()
                .copied()
                .find(|&p| available(p) && matches!(ops[p].step, Step::Write(v) if v != state));
            out.extend(useless);
        }
        let mut push_group = |group: &[usize]| {
            let mut write_seen = false;
            for &p in group.iter().rev() {
                let is_write = matches!(ops[p].step, Step::Write(_));
                if (is_write && write_seen) || !available(p) {
                    continue;
                }
                write_seen |= is_write;
                out.push(p);
            }
        };
        if any {
            for (result, group) in &self.groups {
                if *result != state {
                    push_group(group);
                }
            }
            return;
        }
        targets.sort_unstable();
        targets.dedup();
        for t in targets.iter() {
            if let Some(&g) = self.group_of.get(t) {
                push_group(&self.groups[g].1);
            }
        }
    }
}

/// Adds `op` to (or removes it from) the set of linearized operations.
fn mark(op: &SearchOp, done: &mut [u64], pending: &mut [u64], on: bool) {
    let set = if op.pending() { pending } else { done };
    let (word, bit) = (op.slot / 64, 1u64 << (op.slot % 64));
    if on {
        set[word] |= bit;
    } else {
        set[word] &= !bit;
    }
}

/// If some candidate is read-only (a `Get`, or a `Cas` that failed) and may
/// take effect now, keeps only that one and returns true (no other op,
/// including unknown-outcome ones, needs to be tried here).
///
/// Sound because any linearization from here can be rewritten to start with
/// that op: it is already allowed by real time, valid in the current state,
/// and changes nothing for the ops it moves ahead of. (Right after an
/// unknown-outcome op it must also satisfy the "enabled" rule of
/// [`PendingOps::candidates`], which then makes it a fine successor.)
fn force_read_only(
    ops: &[SearchOp],
    candidates: &mut Vec<usize>,
    state: State,
    after_pending: Option<State>,
) -> bool {
    let forced = candidates.iter().copied().find(|&c| {
        let step = ops[c].step;
        matches!(step, Step::Read(_) | Step::CasFail { .. })
            && step.apply(state).is_some()
            && after_pending.is_none_or(|s| step.apply(s).is_none())
    });
    match forced {
        Some(c) => {
            candidates.clear();
            candidates.push(c);
            true
        }
        None => false,
    }
}

/// One configuration on the search path.
#[derive(Default)]
struct Frame {
    /// The op whose linearization led here, and the state before it.
    op: usize,
    prev_state: State,
    /// `Some(prev_state)` if `op` has an unknown outcome: the next op must
    /// then be one that `op` enabled (invalid in `prev_state`).
    after_pending: Option<State>,
    /// Ops to try from here: completed ones first, then unknown-outcome ones
    /// once those are exhausted.
    candidates: Vec<usize>,
    tried: usize,
    completed_candidates: usize,
    /// Whether unknown-outcome candidates were added (or are not needed).
    pending_added: bool,
    /// Entry of the first return event in this configuration.
    first_return: usize,
}

/// Wing–Gong–Lowe depth-first search for one key.
fn search(ops: &[SearchOp], done_len: usize, pending_len: usize, budget: &mut Budget) -> Outcome {
    let mut events = Events::new(ops);
    if events.is_empty() {
        return Outcome::Linearizable;
    }
    let mut pending_ops = PendingOps::new(ops);
    let mut memo = Memo::new(pending_len);
    let mut done = vec![0u64; done_len.div_ceil(64)];
    let mut pending = vec![0u64; pending_len.div_ceil(64).max(1)];
    let mut extra = Vec::new();
    let mut state: State = 0;
    let mut best: Option<Diagnosis> = None;
    // frames[..depth] is the search path; frames[0] is the empty prefix.
    // Frames beyond `depth` are kept only to reuse their allocations.
    let mut frames = vec![Frame {
        op: NIL,
        ..Frame::default()
    }];
    frames[0].first_return = events.candidates(&mut frames[0].candidates);
    frames[0].pending_added = force_read_only(ops, &mut frames[0].candidates, 0, None);
    frames[0].completed_candidates = frames[0].candidates.len();
    let mut depth = 1;
    loop {
        if !budget.tick() {
            return Outcome::Inconclusive;
        }
        let frame = &mut frames[depth - 1];
        if frame.tried < frame.candidates.len() {
            let c = frame.candidates[frame.tried];
            frame.tried += 1;
            let op = &ops[c];
            if frame
                .after_pending
                .is_some_and(|s| op.step.apply(s).is_some())
            {
                continue;
            }
            let Some(next_state) = op.step.apply(state) else {
                continue;
            };
            if op.pending() && next_state == state {
                continue;
            }
            let after_pending = op.pending().then_some(state);
            mark(op, &mut done, &mut pending, true);
            if !memo.insert(&done, &pending, next_state, after_pending) {
                mark(op, &mut done, &mut pending, false);
                continue;
            }
            if !op.pending() {
                events.lift(c);
                if events.is_empty() {
                    return Outcome::Linearizable;
                }
            }
            if frames.len() == depth {
                frames.push(Frame::default());
            }
            let next = &mut frames[depth];
            next.op = c;
            next.prev_state = state;
            next.after_pending = after_pending;
            next.candidates.clear();
            next.first_return = events.candidates(&mut next.candidates);
            next.pending_added =
                force_read_only(ops, &mut next.candidates, next_state, after_pending);
            next.completed_candidates = next.candidates.len();
            next.tried = 0;
            state = next_state;
            depth += 1;
            continue;
        }
        if !frame.pending_added {
            frame.pending_added = true;
            if pending_len > 0 {
                extra.clear();
                pending_ops.candidates(
                    ops,
                    &pending,
                    state,
                    &frame.candidates[..frame.completed_candidates],
                    events.what[frame.first_return].2,
                    &mut extra,
                );
                frame.candidates.extend_from_slice(&extra);
            }
            continue;
        }
        // Dead end: the op returning first must take effect now, and no
        // candidate leads anywhere.
        let stuck = events.what[frame.first_return].0;
        if best.as_ref().is_none_or(|b| depth - 1 > b.depth) {
            let alternatives = frame
                .candidates
                .iter()
                .copied()
                .filter(|&c| c != stuck)
                .collect();
            let path = &frames[depth.saturating_sub(TAIL_LEN).max(1)..depth];
            best = Some(Diagnosis {
                depth: depth - 1,
                state,
                tail: path.iter().map(|f| f.op).collect(),
                stuck,
                alternatives,
            });
        }
        if depth == 1 {
            return Outcome::Violation(best.expect("recorded above"));
        }
        depth -= 1;
        let frame = &frames[depth];
        let op = &ops[frame.op];
        mark(op, &mut done, &mut pending, false);
        if !op.pending() {
            events.unlift(frame.op);
        }
        state = frame.prev_state;
    }
}

/// Memo of visited configurations. Key: run-length encoded set of linearized
/// completed ops, the model state and the pending-op constraint
/// ([`Frame::after_pending`]). Value: the sets of unknown-outcome ops
/// linearized with that key (flattened, `stride` words each). A configuration
/// is redundant if a visited one has the same key and a subset of its
/// unknown-outcome ops: that one either failed (and so does this one, which
/// has fewer options left) or is an ancestor on the search path (which
/// explores everything this one could, by leaving the extra ops out).
struct Memo {
    map: HashMap<Box<[u64]>, Vec<u64>, BuildHasherDefault<WordHasher>>,
    stride: usize,
    scratch: Vec<u64>,
}

impl Memo {
    fn new(pending_len: usize) -> Memo {
        Memo {
            map: HashMap::default(),
            stride: pending_len.div_ceil(64).max(1),
            scratch: Vec::new(),
        }
    }

    /// Returns true if the configuration is new (and records it).
    fn insert(
        &mut self,
        done: &[u64],
        pending: &[u64],
        state: State,
        after_pending: Option<State>,
    ) -> bool {
        encode(done, &mut self.scratch);
        self.scratch.push(u64::from(state));
        self.scratch
            .push(after_pending.map_or(0, |s| u64::from(s) + 1));
        match self.map.get_mut(self.scratch.as_slice()) {
            Some(seen) => {
                let subsumed = seen
                    .chunks_exact(self.stride)
                    .any(|s| s.iter().zip(pending).all(|(a, b)| a & !b == 0));
                if subsumed {
                    return false;
                }
                seen.extend_from_slice(pending);
            }
            None => {
                self.map
                    .insert(self.scratch.clone().into_boxed_slice(), pending.to_vec());
            }
        }
        true
    }
}

/// Canonical compact encoding of a bit set: (count of all-ones words, next
/// word that is not all ones)* up to the last non-zero word, then the count
/// of trailing all-ones words.
fn encode(bits: &[u64], out: &mut Vec<u64>) {
    out.clear();
    let end = bits.iter().rposition(|&w| w != 0).map_or(0, |p| p + 1);
    let mut run = 0u64;
    for &w in &bits[..end] {
        if w == u64::MAX {
            run += 1;
        } else {
            out.push(run);
            out.push(w);
            run = 0;
        }
    }
    out.push(run);
}

/// Small multiplicative hasher for word slices.
#[derive(Default)]
struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, w: u64) {
        self.add(w);
    }

    fn write_usize(&mut self, w: usize) {
        self.add(w as u64);
    }
}

// ---------------------------------------------------------------------------
// Reporting.

struct Bytes<'a>(&'a [u8]);

impl fmt::Display for Bytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 48;
        let shown = &self.0[..self.0.len().min(MAX)];
        if shown.iter().all(|b| (0x20..0x7f).contains(b)) {
            write!(f, "{:?}", String::from_utf8_lossy(shown))?;
        } else {
            f.write_str("0x")?;
            for b in shown {
                write!(f, "{b:02x}")?;
            }
        }
        if self.0.len() > MAX {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

struct Value<'a>(Option<&'a [u8]>);

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => Bytes(v).fmt(f),
            None => f.write_str("<absent>"),
        }
    }
}

impl fmt::Display for KvOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOp::Put { key, value } => write!(f, "put {} = {}", Bytes(key), Bytes(value)),
            KvOp::Get { key } => write!(f, "get {}", Bytes(key)),
            KvOp::Cas { key, expected, new } => write!(
                f,
                "cas {} if {} then {}",
                Bytes(key),
                Value(expected.as_deref()),
                Bytes(new)
            ),
            KvOp::Delete { key } => write!(f, "delete {}", Bytes(key)),
        }
    }
}

impl fmt::Display for KvResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvResult::Written => f.write_str("ok"),
            KvResult::Value(v) => Value(v.as_deref()).fmt(f),
            KvResult::CasResult(swapped) => {
                f.write_str(if *swapped { "swapped" } else { "not swapped" })
            }
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.completed {
            Some((at, result)) => write!(
                f,
                "client {}: {} -> {}  [{}..{}]",
                self.client, self.op, result, self.invoked_at, at
            ),
            None => write!(
                f,
                "client {}: {} -> ? (unknown outcome)  [{}..]",
                self.client, self.op, self.invoked_at
            ),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history is NOT linearizable on key {} ({} operations on this key)",
            Bytes(&self.key),
            self.ops_on_key
        )?;
        writeln!(
            f,
            "  longest linearizable prefix: {} operations, leaving the key = {}",
            self.linearized,
            Value(self.value_after_prefix.as_deref())
        )?;
        if !self.prefix_tail.is_empty() {
            writeln!(f, "  end of that prefix, in linearization order:")?;
            for (i, op) in &self.prefix_tail {
                writeln!(f, "    #{i} {op}")?;
            }
        }
        writeln!(
            f,
            "  next, this operation must take effect (its response came before anything else could), but cannot:"
        )?;
        writeln!(f, "    #{} {}", self.stuck.0, self.stuck.1)?;
        if !self.alternatives.is_empty() {
            writeln!(
                f,
                "  other operations that could go first there (each leads to a dead end):"
            )?;
            for (i, op) in &self.alternatives {
                writeln!(f, "    #{i} {op}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Inconclusive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "linearizability check INCONCLUSIVE (this is not a pass): the search on key {} \
             ({} operations) hit the {} after {} steps, {:.1?} in total",
            Bytes(&self.key),
            self.ops_on_key,
            self.limit,
            self.steps,
            self.elapsed
        )
    }
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::NotLinearizable(v) => v.fmt(f),
            CheckError::Inconclusive(i) => i.fmt(f),
            CheckError::InvalidHistory { index, reason } => {
                write!(f, "invalid history: operation #{index}: {reason}")
            }
        }
    }
}

/// Same as `Display`, so that `check(..).unwrap()` prints a readable report.
impl fmt::Debug for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
