//! A run's timeline: what the client saw per second (requests answered, resets, misroutes,
//! drops) and when the events happened, with the share of service instances released by then.
//!
//! It gives the release scenarios their capacity figure ([`Timeline::capacity_dip_pct`]: did
//! requests answered per second stay within reach of the rate before the first release) and
//! their plot ([`svg::render`]).
//!
//! The load generator shares two cores with the lab, and on a busy virtual machine its thread
//! is sometimes not scheduled at all for hundreds of milliseconds (the hypervisor's steal time
//! reached a fifth of the CPU here). Two things keep that from reading as the service's dip:
//! the client keeps its schedule (a flow that could not send on time sends the requests it owes
//! as soon as it runs), and it records how long its thread could not run ([`Timeline::stall`]),
//! so that a second is expected to answer only for the share of it the client could run. A
//! service that stops answering while the client is free to ask still shows in full.
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
    /// heartbeat woke late by at least `workload::client`'s stall threshold): the generator
    /// offered no load then.
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
    pub(crate) fn add(&mut self, at_s: f64, f: impl FnOnce(&mut Second)) {
        let i = at_s.max(0.0) as usize;
        if self.seconds.len() <= i {
            self.seconds.resize(i + 1, Second::default());
        }
        f(&mut self.seconds[i]);
    }

    /// Records that the client's thread could not run from `from_s` to `to_s`, split over the
    /// seconds it spans.
    pub(crate) fn stall(&mut self, from_s: f64, to_s: f64) {
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
    /// release, 0 when they never did. `before` is the median of the whole seconds between the
    /// first (the client's start-up) and the first release's second; each second from the
    /// release's to the second-to-last (the last is cut short by the stop) is held against
    /// `before` scaled by the share of that second the client could run, and the figure is the
    /// worst shortfall: the generator's own stall lowers the bar by exactly its length, and
    /// never raises it (a stalled second whose owed requests went out when the client ran again
    /// counts as it was). Seconds in which the client ran less than half the time are not
    /// judged, on either side.
    pub fn capacity_dip_pct(&self) -> Result<u64, NoFigure> {
        let first = self.marks.iter().find(|m| m.released.is_some()).ok_or(NoFigure::NoSeconds)?.at_s as usize;
        let before = self.seconds.get(1..first).filter(|s| !s.is_empty()).ok_or(NoFigure::NoSeconds)?;
        let after = self
            .seconds
            .get(first..self.seconds.len().saturating_sub(1))
            .filter(|s| !s.is_empty())
            .ok_or(NoFigure::NoSeconds)?;
        let mut before: Vec<u64> = before.iter().filter(|s| s.ran() >= 0.5).map(|s| s.replies).collect();
        before.sort_unstable();
        let median = *before.get(before.len() / 2).ok_or(NoFigure::ClientStalled)? as f64;
        if median == 0.0 {
            return Err(NoFigure::NoSeconds);
        }
        let worst = after
            .iter()
            .filter(|s| s.ran() >= 0.5)
            .map(|s| 1.0 - s.replies as f64 / (median * s.ran()))
            .reduce(f64::max)
            .ok_or(NoFigure::ClientStalled)?;
        Ok((100.0 * worst).max(0.0).round() as u64)
    }
}

/// Why a run has no capacity figure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoFigure {
    /// No release, no whole second before or after it, or no reply before it.
    NoSeconds,
    /// Every second before the release, or every second after it, lost more than half its time
    /// to the client's own stalls: the load offered cannot be told from the service's answers.
    ClientStalled,
}

impl Second {
    /// The share of this second the client could run.
    fn ran(&self) -> f64 {
        1.0 - self.stalled_ms.min(1000) as f64 / 1000.0
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
        assert_eq!(t.capacity_dip_pct(), Ok(10));
        let t = timeline(&[10, 100, 100, 100, 101, 100, 5], 3.2);
        assert_eq!(t.capacity_dip_pct(), Ok(0));
    }

    #[test]
    fn a_stalled_client_is_not_a_dip_but_a_silent_service_is() {
        // Second 4 got 30% fewer replies. If the client could not run for 300 ms of it, the
        // service answered at its full rate whenever asked...
        let mut t = timeline(&[10, 100, 100, 100, 70, 100, 5], 3.2);
        t.stall(4.45, 4.75);
        assert_eq!(t.capacity_dip_pct(), Ok(0));
        // ...but with the client free to ask all second, the same second is a 30% dip.
        let t = timeline(&[10, 100, 100, 100, 70, 100, 5], 3.2);
        assert_eq!(t.capacity_dip_pct(), Ok(30));
        // A stall excuses only the time it took: 100 ms does not hide a 30% fall.
        let mut t = timeline(&[10, 100, 100, 100, 70, 100, 5], 3.2);
        t.stall(4.9, 5.0);
        assert_eq!(t.capacity_dip_pct(), Ok(22));
    }

    #[test]
    fn a_stall_before_the_release_does_not_raise_the_bar() {
        // Second 1 lost 300 ms to the client, which then sent what it owed: 100 replies, as
        // its neighbours. The rate to hold is 100, not 100 / 0.7, so 95 after the release is a
        // 5% dip, not a 34% one.
        let mut t = timeline(&[10, 100, 100, 100, 95, 5], 2.2);
        t.stall(1.2, 1.5);
        assert_eq!(t.capacity_dip_pct(), Ok(5));
    }

    #[test]
    fn a_stall_splits_over_the_seconds_it_spans_and_long_ones_are_not_judged() {
        let mut t = Timeline::default();
        t.stall(0.8, 2.1);
        let stalled: Vec<u64> = t.seconds.iter().map(|s| s.stalled_ms).collect();
        assert_eq!(stalled, [200, 1000, 100]);
        // The release's second lost 600 ms: it is not judged, the next one is.
        let mut t = timeline(&[10, 100, 100, 100, 30, 95, 5], 3.2);
        t.stall(4.0, 4.6);
        assert_eq!(t.capacity_dip_pct(), Ok(5));
        // Nothing judged after the release: no figure, and the report says why.
        let mut t = timeline(&[10, 100, 100, 100, 5], 3.2);
        t.stall(3.0, 4.0);
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::ClientStalled));
    }

    #[test]
    fn no_release_or_no_whole_second_gives_no_figure() {
        let mut t = timeline(&[100, 100, 100], 1.5);
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::NoSeconds), "nothing between start-up and the release");
        t.marks.clear();
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::NoSeconds));
    }
}
