//! A run's timeline: what the client saw per second (requests answered, resets, misroutes,
//! drops) and when the events happened, with the share of service instances released by then.
//!
//! It gives the release scenarios their capacity figure ([`Timeline::capacity_dip_pct`]: did
//! requests answered per second stay within reach of the rate before the first release) and
//! their plot ([`svg::render`]).
//!
//! The load generator keeps its schedule (a flow that could not send on time sends the
//! requests it owes as soon as it runs), so the replies per second measure the service rather
//! than the generator's own scheduling. The client also records how long its thread could not
//! run ([`Timeline::stall`]), so a report can tell a stalled generator from a stalled service.
//!
//! Pure: the client feeds it (`workload::client::FlowBook`), nothing here reads a clock.

pub mod svg;

use serde::Serialize;

/// One second of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Replies received.
    pub replies: u64,
    /// Flows reset.
    pub resets: u64,
    /// Misrouted replies.
    pub misroutes: u64,
    /// Requests without an answer.
    pub drops: u64,
    /// Milliseconds of this second in which the client's own thread could not run (its
    /// heartbeat woke late by at least `workload::client`'s stall threshold).
    pub stalled_ms: u64,
}

/// An event of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mark {
    /// When it started, in seconds since the client started.
    pub at_s: f64,
    /// What happened.
    pub label: String,
    /// Share of the service's instances released once it is done (0 to 1), for releases.
    pub released: Option<f64>,
}

/// A run's timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Second `i` of the run, from the client's start.
    pub seconds: Vec<Second>,
    /// Events, in order.
    pub marks: Vec<Mark>,
}

impl Timeline {
    /// Adds to second `at_s` (seconds since the start).
    pub fn add(&mut self, at_s: f64, f: impl FnOnce(&mut Second)) {
        let i = at_s.max(0.0) as usize;
        if self.seconds.len() <= i {
            self.seconds.resize(i + 1, Second::default());
        }
        f(&mut self.seconds[i]);
    }

    /// Records that the client's thread could not run from `from_s` to `to_s`, split over the
    /// seconds it spans.
    pub fn stall(&mut self, from_s: f64, to_s: f64) {
        let mut at = from_s.max(0.0);
        while at < to_s {
            let end = to_s.min(at.floor() + 1.0);
            let ms = ((end - at) * 1000.0).round() as u64;
            self.add(at, |s| s.stalled_ms += ms);
            at = end;
        }
    }

    /// Records an event at `at_s`.
    pub fn mark(&mut self, at_s: f64, label: impl Into<String>, released: Option<f64>) {
        self.marks.push(Mark { at_s, label: label.into(), released });
    }

    /// How far, in percent, requests answered per second fell below the rate before the first
    /// release: `100 * (1 - worst / before)`, 0 when it never fell. `before` is the median of
    /// the whole seconds between the first (the client's start-up) and the first release's
    /// second; `worst` the lowest whole second from the first release's second to the
    /// second-to-last (the last is cut short by the stop). `None` without a release mark or
    /// without a whole second on either side.
    pub fn capacity_dip_pct(&self) -> Option<u64> {
        let first = self.marks.iter().find(|m| m.released.is_some())?.at_s as usize;
        let before: Vec<u64> = self.seconds.get(1..first)?.iter().map(|s| s.replies).collect();
        let after = self.seconds.get(first..self.seconds.len().saturating_sub(1))?;
        if before.is_empty() || after.is_empty() {
            return None;
        }
        let mut sorted = before;
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2] as f64;
        let worst = after.iter().map(|s| s.replies).min()? as f64;
        if median == 0.0 {
            return None;
        }
        Some((100.0 * (1.0 - worst / median)).max(0.0).round() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeline(replies: &[u64], release_at: f64) -> Timeline {
        let mut t = Timeline::default();
        for (i, r) in replies.iter().enumerate() {
            t.add(i as f64 + 0.5, |s| s.replies += r);
        }
        t.mark(release_at, "release be1", Some(0.5));
        t
    }

    #[test]
    fn the_dip_is_the_worst_whole_second_against_the_median_before() {
        // Second 0 (start-up) and the last (cut short) do not count.
        let t = timeline(&[10, 100, 98, 102, 90, 99, 5], 3.2);
        assert_eq!(t.capacity_dip_pct(), Some(10));
        let t = timeline(&[10, 100, 100, 100, 101, 100, 5], 3.2);
        assert_eq!(t.capacity_dip_pct(), Some(0));
    }

    #[test]
    fn a_stall_splits_over_the_seconds_it_spans() {
        let mut t = Timeline::default();
        t.stall(0.8, 2.1);
        let stalled: Vec<u64> = t.seconds.iter().map(|s| s.stalled_ms).collect();
        assert_eq!(stalled, [200, 1000, 100]);
    }

    #[test]
    fn no_release_or_no_whole_second_gives_none() {
        let mut t = timeline(&[100, 100, 100], 1.5);
        assert_eq!(t.capacity_dip_pct(), None, "nothing between start-up and the release");
        t.marks.clear();
        assert_eq!(t.capacity_dip_pct(), None);
    }
}
