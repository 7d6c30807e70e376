//! Per-run names: every namespace, cgroup and pin of a lab run carries the run's prefix.
//!
//! A prefix is `zrlab-<pid>-<start>-<seq>` (`zrlabk-...` for a run kept up with `--keep`):
//! - `<pid>` and `<start>` (the owner's start time in clock ticks since boot, field 22 of
//!   `/proc/<pid>/stat`) identify the owning process even after its pid is reused, so a later
//!   run can tell a live run from a killed one's leftovers;
//! - `<seq>` counts runs within the process, so tests running in parallel never collide.
//!
//! Kept runs are never removed by the automatic clean at the start of a run, only by an explicit
//! `zrlab clean`.

use std::{
    fmt,
    sync::atomic::{AtomicU32, Ordering},
};

const PREFIX: &str = "zrlab-";
const KEPT_PREFIX: &str = "zrlabk-";

static NEXT_SEQ: AtomicU32 = AtomicU32::new(0);

/// The identity of one lab run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RunId {
    /// The owning process.
    pub pid: u32,
    /// The owner's start time (clock ticks since boot).
    pub start: u64,
    /// The run's number within its process.
    pub seq: u32,
    /// Whether the run is kept up after it ends (`--keep`).
    pub kept: bool,
}

impl RunId {
    /// A fresh id owned by this process.
    pub fn new(kept: bool) -> Self {
        let pid = std::process::id();
        Self { pid, start: start_time(pid).unwrap_or(0), seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed), kept }
    }

    /// Parses the run id at the start of a lab object's name, returning the rest of the name
    /// (after the `-` that follows the id, or empty).
    pub fn parse(name: &str) -> Option<(Self, &str)> {
        let (kept, rest) = if let Some(rest) = name.strip_prefix(KEPT_PREFIX) {
            (true, rest)
        } else {
            (false, name.strip_prefix(PREFIX)?)
        };
        let mut parts = rest.splitn(4, '-');
        let pid = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        Some((Self { pid, start, seq, kept }, parts.next().unwrap_or("")))
    }

    /// The name of this run's object called `what` (a node, a cgroup leaf, ...).
    pub fn name(&self, what: &str) -> String {
        format!("{self}-{what}")
    }

    /// Whether the process that owns this run is still alive (same pid, same start time, and
    /// not a zombie: a killed owner whose parent has not reaped it yet is dead).
    pub(crate) fn owner_alive(&self) -> bool {
        let Some((state, start)) = state_and_start(self.pid) else {
            return false;
        };
        start == self.start && !matches!(state, 'Z' | 'X')
    }

    /// Whether `name` belongs to some lab run (live or not).
    pub(crate) fn is_lab_name(name: &str) -> bool {
        Self::parse(name).is_some()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = if self.kept { KEPT_PREFIX } else { PREFIX };
        write!(f, "{prefix}{}-{}-{}", self.pid, self.start, self.seq)
    }
}

/// Start time of `pid` in clock ticks since boot, if the process exists.
fn start_time(pid: u32) -> Option<u64> {
    state_and_start(pid).map(|(_, start)| start)
}

/// State (field 3) and start time (field 22) of `pid` from `/proc/<pid>/stat`.
fn state_and_start(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: fields after it are
    // counted from the last ')'.
    let mut fields = stat[stat.rfind(')')? + 2..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 22 (starttime) is the 19th field after the state.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_names() {
        let id = RunId::new(false);
        let name = id.name("be-1");
        assert_eq!(RunId::parse(&name), Some((id, "be-1")));
        let kept = RunId { kept: true, ..id };
        assert_eq!(RunId::parse(&kept.to_string()), Some((kept, "")));
    }

    #[test]
    fn own_run_is_alive_and_foreign_names_are_not_lab_names() {
        assert!(RunId::new(false).owner_alive());
        assert!(!RunId { start: 1, ..RunId::new(false) }.owner_alive());
        for foreign in ["zrlab", "zrlab-x-1-2", "netns-1", "zrlab-1-2"] {
            assert!(!RunId::is_lab_name(foreign), "{foreign}");
        }
    }
}
