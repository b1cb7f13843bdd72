//! Compiled rules and the per-request decision.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use globset::GlobMatcher;

use super::actions::{CrashSpec, LatencySpec, ShortSpec};
use super::caller::{Caller, CallerCache};
use super::data::{CorruptPlan, Purpose, decide};
use super::errno::Errno;
use super::spec::{ActionKind, DATA_OPS, ENOSPC_OPS, RuleSpec};
use super::values::OneOrMany;
use super::values::{RuleError, saturating_u64};
use super::{AttrOverride, Call, CorruptMode, DataFault, Op, OpSet, RuleStats, Verdict};

/// Ops whose faults are not about metadata (see [`Engine::may_touch_meta`]).
const NON_META_OPS: OpSet = OpSet::of(&[Op::Read, Op::Write, Op::Flush, Op::Release, Op::Fsync]);

#[derive(Debug)]
enum GlobSel {
    /// Pattern without `/`: matches the file name.
    Name(GlobMatcher),
    /// Pattern with `/`: matches the whole relative path.
    Path(GlobMatcher),
}

impl GlobSel {
    fn matches(&self, path: &Path) -> bool {
        match self {
            GlobSel::Name(m) => path.file_name().is_some_and(|n| m.is_match(n)),
            GlobSel::Path(m) => m.is_match(path),
        }
    }
}

#[derive(Debug)]
enum Action {
    Errno {
        choices: Box<[(Errno, u32)]>,
        total: u64,
    },
    Latency {
        delay: Duration,
        jitter: Duration,
    },
    Attr(AttrOverride),
    Corrupt {
        mode: CorruptMode,
        max_bytes: usize,
    },
    Short(ShortSpec),
    Full,
    Crash(CrashSpec),
}

/// One compiled rule with its counters.
#[derive(Debug)]
struct Rule {
    ops: OpSet,
    glob: Option<GlobSel>,
    /// Fault when the percent decision is below this; `None`: always (100 %).
    threshold: Option<u64>,
    pids: Box<[u32]>,
    uids: Box<[u32]>,
    comms: Box<[Box<[u8]>]>,
    after: u64,
    every: u64,
    times: Option<u64>,
    action: Action,
    matched: AtomicU64,
    injected: AtomicU64,
}

impl Rule {
    fn compile(spec: &RuleSpec) -> Result<Rule, RuleError> {
        spec.check()?;
        let kind = spec.action_kind()?;
        let ops = spec.op_set(kind)?;
        let glob = match &spec.glob {
            None => None,
            Some(g) => {
                let m = g
                    .matcher()
                    .ok_or_else(|| RuleError::new(Some("glob"), "does not compile"))?;
                Some(if g.is_path_glob() {
                    GlobSel::Path(m)
                } else {
                    GlobSel::Name(m)
                })
            }
        };
        let threshold = match spec.percent.map(|p| p.get()) {
            None => None,
            Some(p) if p >= 100.0 => None,
            Some(p) => Some(saturating_u64(p / 100.0 * 18_446_744_073_709_551_616.0)),
        };
        let action = match kind {
            ActionKind::Errno => {
                let choices = spec.errno.as_ref().map(|e| e.choices()).unwrap_or_default();
                let total = choices.iter().map(|(_, w)| u64::from(*w)).sum();
                if total == 0 {
                    return Err(RuleError::new(Some("errno"), "no errno to choose from"));
                }
                Action::Errno {
                    choices: choices.into(),
                    total,
                }
            }
            ActionKind::Latency => {
                let l = spec.latency.unwrap_or(LatencySpec {
                    delay: Duration::ZERO,
                    jitter: Duration::ZERO,
                });
                Action::Latency {
                    delay: l.delay,
                    jitter: l.jitter,
                }
            }
            ActionKind::Attr => Action::Attr(spec.attr.unwrap_or_default().to_override()),
            ActionKind::Corrupt => {
                let c = spec
                    .corrupt
                    .ok_or_else(|| RuleError::new(Some("corrupt"), "missing"))?;
                Action::Corrupt {
                    mode: c.mode,
                    max_bytes: c.effective_max_bytes(),
                }
            }
            ActionKind::Short => Action::Short(
                spec.short
                    .ok_or_else(|| RuleError::new(Some("short"), "missing"))?,
            ),
            ActionKind::Full => Action::Full,
            ActionKind::Crash => Action::Crash(spec.crash.unwrap_or_default()),
        };
        let list = |v: &Option<OneOrMany<u32>>| -> Box<[u32]> {
            v.as_ref().map(|l| l.0.clone()).unwrap_or_default().into()
        };
        Ok(Rule {
            ops,
            glob,
            threshold,
            pids: list(&spec.pid),
            uids: list(&spec.uid),
            comms: spec
                .comm
                .as_ref()
                .map(|l| l.0.iter().map(|c| c.as_str().as_bytes().into()).collect())
                .unwrap_or_default(),
            after: spec.after.unwrap_or(0),
            every: spec.every.unwrap_or(1).max(1),
            times: spec.times,
            action,
            matched: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        })
    }

    /// Does this rule fail requests with an errno on `op`?
    fn fails(&self, op: Op) -> bool {
        match self.action {
            Action::Errno { .. } => true,
            Action::Full => ENOSPC_OPS.contains(op),
            _ => false,
        }
    }

    fn path_may_match(&self, path: &Path) -> bool {
        self.glob.as_ref().is_none_or(|g| g.matches(path))
    }

    /// Does the selection (glob, uid, pid, comm) pick this request? `ops` is checked by the
    /// per-op plan already.
    fn selects(&self, call: &Call<'_>, who: &mut Who<'_>) -> bool {
        if !self.uids.is_empty() && !self.uids.contains(&call.uid) {
            return false;
        }
        if let Some(g) = &self.glob
            && !g.matches(call.path)
        {
            return false;
        }
        if !self.pids.is_empty() && !self.pids.contains(&call.pid) {
            match who.get(call.pid) {
                Some(c) if self.pids.contains(&c.tgid) => {}
                _ => return false,
            }
        }
        if !self.comms.is_empty() {
            let Some(c) = who.get(call.pid) else {
                return false;
            };
            let (thread, process) = (c.comm.as_bytes(), c.leader_comm.as_bytes());
            if !self.comms.iter().any(|n| **n == *thread || **n == *process) {
                return false;
            }
        }
        true
    }

    /// Count a selected request and say whether `after`/`every`/`percent` let it be faulted.
    /// Returns the request's sequence number in this rule and the decision.
    fn count(&self, seed: u64, index: usize) -> (u64, bool) {
        let seq = self.matched.fetch_add(1, Ordering::Relaxed);
        if seq < self.after {
            return (seq, false);
        }
        if self.every > 1 && !(seq - self.after + 1).is_multiple_of(self.every) {
            return (seq, false);
        }
        let fire = match self.threshold {
            None => true,
            Some(t) => decide(seed, index, seq, Purpose::Percent) < t,
        };
        (seq, fire)
    }

    /// Take one of the `times` allowed faults; false when they are used up.
    fn take(&self) -> bool {
        match self.times {
            None => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(t) => self
                .injected
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    (c < t).then_some(c + 1)
                })
                .is_ok(),
        }
    }
}

/// The caller of the request being evaluated, looked up at most once.
struct Who<'a> {
    cache: Option<&'a CallerCache>,
    looked_up: Option<Option<Caller>>,
}

impl Who<'_> {
    fn get(&mut self, tid: u32) -> Option<Caller> {
        let cache = self.cache?;
        *self.looked_up.get_or_insert_with(|| cache.get(tid))
    }
}

/// Rules that apply to one op, in spec order: first those that fail the request with an errno,
/// then the others.
#[derive(Debug, Default)]
struct OpPlan {
    failing: Box<[u16]>,
    others: Box<[u16]>,
}

/// A compiled, non-empty rule set.
#[derive(Debug)]
pub(crate) struct Engine {
    rules: Box<[Rule]>,
    plans: Box<[OpPlan]>,
    seed: u64,
    uses_paths: bool,
    callers: Option<CallerCache>,
}

/// Most rules a spec may have (indexes are kept as `u16`).
pub(crate) const MAX_RULES: usize = 4096;

impl Engine {
    /// Compile rules; errors carry the rule index.
    pub(crate) fn new(specs: &[RuleSpec], seed: u64) -> Result<Engine, (usize, RuleError)> {
        if specs.len() > MAX_RULES {
            return Err((
                MAX_RULES,
                RuleError::new(None, format!("too many rules (at most {MAX_RULES})")),
            ));
        }
        let rules: Box<[Rule]> = specs
            .iter()
            .enumerate()
            .map(|(i, s)| Rule::compile(s).map_err(|e| (i, e)))
            .collect::<Result<_, _>>()?;
        let plans = Op::ALL
            .iter()
            .map(|&op| {
                let applies = |r: &&Rule| r.ops.contains(op);
                // An index is below MAX_RULES (checked above), so it always fits a u16.
                let idx = |(i, _): (usize, &Rule)| u16::try_from(i).ok();
                OpPlan {
                    failing: rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| applies(r) && r.fails(op))
                        .filter_map(idx)
                        .collect(),
                    others: rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| applies(r) && !r.fails(op))
                        .filter_map(idx)
                        .collect(),
                }
            })
            .collect();
        let uses_paths = rules.iter().any(|r| r.glob.is_some());
        let needs_callers = rules
            .iter()
            .any(|r| !r.pids.is_empty() || !r.comms.is_empty());
        if needs_callers {
            super::caller::prepare_proc();
        }
        Ok(Engine {
            rules,
            plans,
            seed,
            uses_paths,
            callers: needs_callers.then(CallerCache::new),
        })
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn uses_paths(&self) -> bool {
        self.uses_paths
    }

    /// Rule `i` of a plan if it selects `call`: its index, the rule, and its match count
    /// (the match's sequence number and whether it fires; counted only here).
    fn matching(
        &self,
        i: u16,
        call: &Call<'_>,
        who: &mut Who<'_>,
    ) -> Option<(usize, &Rule, u64, bool)> {
        let i = usize::from(i);
        let rule = &self.rules[i];
        if !rule.selects(call, who) {
            return None;
        }
        let (seq, fire) = rule.count(self.seed, i);
        Some((i, rule, seq, fire))
    }

    pub(crate) fn evaluate(&self, call: &Call<'_>) -> Verdict {
        let mut v = Verdict::default();
        let Some(plan) = self.plans.get(call.op as usize) else {
            return v;
        };
        if plan.failing.is_empty() && plan.others.is_empty() {
            return v;
        }
        let mut who = Who {
            cache: self.callers.as_ref(),
            looked_up: None,
        };
        let seed = self.seed;

        // Errno-class rules: the first that fires wins; the others only count the match.
        for &i in plan.failing.iter() {
            let Some((i, rule, seq, fire)) = self.matching(i, call, &mut who) else {
                continue;
            };
            if !fire || v.errno.is_some() || !rule.take() {
                continue;
            }
            match &rule.action {
                Action::Errno { choices, total } => {
                    let mut r = decide(seed, i, seq, Purpose::ErrnoChoice) % total;
                    let mut chosen = choices[0].0;
                    for &(e, w) in choices.iter() {
                        if r < u64::from(w) {
                            chosen = e;
                            break;
                        }
                        r -= u64::from(w);
                    }
                    v.errno = Some(chosen.code());
                }
                Action::Full => {
                    v.errno = Some(libc::ENOSPC);
                    v.full = true;
                }
                _ => {}
            }
        }

        // Everything else, in spec order.
        for &i in plan.others.iter() {
            let Some((i, rule, seq, fire)) = self.matching(i, call, &mut who) else {
                continue;
            };
            if !fire {
                continue;
            }
            match &rule.action {
                Action::Latency { delay, jitter } => {
                    if rule.take() {
                        let d = jittered(*delay, *jitter, decide(seed, i, seq, Purpose::Jitter));
                        v.delay = Some(v.delay.unwrap_or_default().saturating_add(d));
                    }
                }
                Action::Attr(o) => {
                    if v.errno.is_none() && rule.take() {
                        let merged = merge_attr(v.attr.unwrap_or_default(), o);
                        v.attr = Some(merged);
                    }
                }
                Action::Corrupt { mode, max_bytes } => {
                    if v.errno.is_none() && v.data.is_none() && rule.take() {
                        v.data = Some(DataFault::Corrupt);
                        v.corrupt = Some(CorruptPlan {
                            mode: *mode,
                            max_bytes: *max_bytes,
                            seed: decide(seed, i, seq, Purpose::Corrupt),
                        });
                    }
                }
                Action::Short(s) => {
                    if v.errno.is_none() && v.data.is_none() && rule.take() {
                        let cap = match s {
                            ShortSpec::Bytes(n) => usize::try_from(*n).unwrap_or(usize::MAX),
                            ShortSpec::Fraction(_) => usize::MAX,
                        };
                        v.data = Some(DataFault::Short(cap));
                        v.short = Some(*s);
                    }
                }
                Action::Full => {
                    // statfs (ENOSPC ops are in the failing list).
                    if v.errno.is_none() && rule.take() {
                        v.full = true;
                    }
                }
                Action::Crash(crash) => {
                    // Whatever else the request would get, the power goes.
                    if v.crash.is_none() && rule.take() {
                        v.crash = Some(*crash);
                    }
                }
                Action::Errno { .. } => {}
            }
        }
        v
    }

    pub(crate) fn may_touch_data(&self, path: &Path) -> bool {
        self.rules
            .iter()
            .any(|r| r.ops.intersects(DATA_OPS) && r.path_may_match(path))
    }

    pub(crate) fn may_touch_meta(&self, path: &Path) -> bool {
        self.rules.iter().any(|r| {
            (matches!(r.action, Action::Attr(_)) || !r.ops.difference(NON_META_OPS).is_empty())
                && r.path_may_match(path)
        })
    }

    pub(crate) fn stats(&self) -> Vec<RuleStats> {
        self.rules
            .iter()
            .map(|r| RuleStats {
                matched: r.matched.load(Ordering::Relaxed),
                injected: r.injected.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// `delay ± jitter`, uniform, never below zero.
fn jittered(delay: Duration, jitter: Duration, r: u64) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let j = u64::try_from(jitter.as_nanos())
        .unwrap_or(u64::MAX)
        .min(u64::MAX / 4);
    let offset = i128::from(r % (2 * j + 1)) - i128::from(j);
    // A Duration's nanoseconds (< 2^94) always fit an i128; MAX is only a formal fallback.
    let nanos = (i128::try_from(delay.as_nanos()).unwrap_or(i128::MAX) + offset).max(0);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Later rules override the fields they set.
fn merge_attr(mut base: AttrOverride, o: &AttrOverride) -> AttrOverride {
    macro_rules! take {
        ($($f:ident),*) => { $( if o.$f.is_some() { base.$f = o.$f; } )* };
    }
    take!(perm, uid, gid, size, atime, mtime, ctime, nlink, kind);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_never_negative() {
        let d = Duration::from_millis(100);
        let j = Duration::from_millis(50);
        let mut lo = Duration::MAX;
        let mut hi = Duration::ZERO;
        for r in 0..10_000u64 {
            let x = jittered(d, j, super::super::data::mix(r));
            assert!(x >= Duration::from_millis(50) && x <= Duration::from_millis(150));
            lo = lo.min(x);
            hi = hi.max(x);
        }
        assert!(lo < Duration::from_millis(55) && hi > Duration::from_millis(145));
        for r in 0..1000u64 {
            let x = jittered(
                Duration::from_millis(1),
                Duration::from_millis(10),
                r * 7919,
            );
            assert!(x <= Duration::from_millis(11));
        }
        assert_eq!(jittered(d, Duration::ZERO, 5), d);
    }

    #[test]
    fn attr_merge_later_wins_per_field() {
        let a = AttrOverride {
            perm: Some(0o600),
            uid: Some(1),
            ..Default::default()
        };
        let b = AttrOverride {
            uid: Some(2),
            size: Some(9),
            ..Default::default()
        };
        let m = merge_attr(merge_attr(AttrOverride::default(), &a), &b);
        assert_eq!((m.perm, m.uid, m.size), (Some(0o600), Some(2), Some(9)));
    }
}
