//! A run's timeline: what the client saw per second (requests offered and answered, resets,
//! misroutes, drops, reply latency) and when the events happened, with the share of service
//! instances released by then.
//!
//! It gives the release scenarios their judged figures and their plot ([`svg::render`]):
//! - capacity ([`Timeline::capacity_dip_pct`]): did each second answer the requests the client
//!   sent in it as well as the seconds before the first release did;
//! - latency ([`Timeline::latency_p99_ms`]) and pauses ([`Timeline::max_reply_gap_ms`]): a
//!   service that stops answering for less than the drop timeout loses no request, and only
//!   these show it.
//!
//! The load generator shares two cores with the lab, and on a busy virtual machine its thread
//! is sometimes not scheduled at all for hundreds of milliseconds. The client keeps its schedule
//! (a flow that could not send on time sends the requests it owes as soon as it runs), so the
//! requests *offered* in a second are what it actually sent, and a second is judged against
//! them: a stall neither lowers the bar nor hides a loss. A second in which the client offered
//! less than half its usual load is not judged, and a release with fewer than
//! [`MIN_JUDGED_SECONDS`] judged seconds on either side has no figure ([`NoFigure`]): the
//! scenario fails on it rather than passing on what it could not see. The client also records
//! when its own thread could not run ([`Timeline::stall`]); a latency sample or a gap between
//! two replies that such a stall overlaps is the client's, not the service's, and is not judged.
//!
//! Pure: the client feeds it (`workload::client::FlowBook`), nothing here reads a clock.

pub mod svg;

use std::collections::BTreeMap;

use serde::Serialize;

/// Judged seconds a release needs on each side for a capacity figure.
pub const MIN_JUDGED_SECONDS: usize = 3;

/// One second of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Second {
    /// Requests the client sent.
    pub offered: u64,
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
    /// Median latency, in microseconds, of the replies received in this second whose wait no
    /// client stall overlapped (0: none).
    pub latency_p50_us: u64,
    /// Their 99th percentile.
    pub latency_p99_us: u64,
    /// Their maximum.
    pub latency_max_us: u64,
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

/// One reply's timing.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Sample {
    flow: u32,
    sent_s: f64,
    received_s: f64,
}

/// A run's timeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Timeline {
    /// Second `i` of the run, from the client's start.
    pub seconds: Vec<Second>,
    /// Events, in order.
    pub marks: Vec<Mark>,
    /// Every reply's timing, in the order received.
    #[serde(skip)]
    samples: Vec<Sample>,
    /// When the client's thread could not run (from, to), in seconds.
    #[serde(skip)]
    stalls: Vec<(f64, f64)>,
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

    /// Records a request sent at `at_s`.
    pub(crate) fn offered(&mut self, at_s: f64) {
        self.add(at_s, |s| s.offered += 1);
    }

    /// Records the timing of a reply of `flow` to a request sent at `sent_s`, received at
    /// `received_s` (its count goes in with the flow's other figures, [`Timeline::add`]).
    pub(crate) fn replied(&mut self, flow: u32, sent_s: f64, received_s: f64) {
        self.samples.push(Sample { flow, sent_s, received_s });
    }

    /// Records that the client's thread could not run from `from_s` to `to_s`, split over the
    /// seconds it spans.
    pub(crate) fn stall(&mut self, from_s: f64, to_s: f64) {
        self.stalls.push((from_s, to_s));
        let mut at = from_s.max(0.0);
        while at < to_s {
            let end = to_s.min(at.floor() + 1.0);
            let ms = ((end - at) * 1000.0).round() as u64;
            self.add(at, |s| s.stalled_ms += ms);
            at = end;
        }
    }

    /// Whether a client stall overlaps the interval from `from_s` to `to_s`.
    fn stalled_during(&self, from_s: f64, to_s: f64) -> bool {
        self.stalled_for(from_s, to_s) > 0.0
    }

    /// How long, in seconds, the client's thread could not run between `from_s` and `to_s`.
    fn stalled_for(&self, from_s: f64, to_s: f64) -> f64 {
        self.stalls.iter().map(|&(a, b)| (b.min(to_s) - a.max(from_s)).max(0.0)).sum()
    }

    /// Records an event at `at_s`, in time order (an event may be recorded after a later one:
    /// a release's own steps are marked when the release is done).
    pub fn mark(&mut self, at_s: f64, label: impl Into<String>, released: Option<f64>) {
        let at = self.marks.partition_point(|m| m.at_s <= at_s);
        self.marks.insert(at, Mark { at_s, label: label.into(), released });
    }

    /// Fills each second's latency figures from the replies received in it.
    pub fn summarize(&mut self) {
        let mut per_second: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for s in self.samples.iter().filter(|s| !self.stalled_during(s.sent_s, s.received_s)) {
            let us = ((s.received_s - s.sent_s).max(0.0) * 1e6).round() as u64;
            per_second.entry(s.received_s.max(0.0) as usize).or_default().push(us);
        }
        for (i, mut latencies) in per_second {
            latencies.sort_unstable();
            let rank = |q: f64| latencies[((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1];
            let (p50, p99, max) = (rank(0.5), rank(0.99), latencies[latencies.len() - 1]);
            self.add(i as f64, |s| (s.latency_p50_us, s.latency_p99_us, s.latency_max_us) = (p50, p99, max));
        }
    }

    /// The worst second's 99th-percentile reply latency, in milliseconds (rounded up), over the
    /// whole seconds of the run (the first and the last, cut short, aside); `None` without one.
    /// Call [`Timeline::summarize`] first.
    pub fn latency_p99_ms(&self) -> Option<u64> {
        let whole = self.seconds.get(1..self.seconds.len().saturating_sub(1))?;
        whole.iter().filter(|s| s.latency_max_us > 0).map(|s| s.latency_p99_us.div_ceil(1000)).max()
    }

    /// The longest time, in milliseconds, between two consecutive replies of one of the flows
    /// `counted` picks, less the time the client's own thread could not run in between: a
    /// service that pauses shorter than the drop timeout shows here and nowhere else. A flow
    /// that `ended` (reset, stalled, closed: it got no reply any more) counts its last gap until
    /// the last reply of the run. `None` when no such flow had two replies and none ended after
    /// a reply.
    pub fn max_reply_gap_ms(&self, counted: impl Fn(u32) -> bool, ended: impl Fn(u32) -> bool) -> Option<u64> {
        self.reply_gaps_ms(counted, ended).into_values().max()
    }

    /// Per flow `counted` picks, its longest gap between replies as
    /// [`Timeline::max_reply_gap_ms`] measures it (flows with no gap are absent).
    pub fn reply_gaps_ms(&self, counted: impl Fn(u32) -> bool, ended: impl Fn(u32) -> bool) -> BTreeMap<u32, u64> {
        let mut last: BTreeMap<u32, f64> = BTreeMap::new();
        let mut gaps = Vec::new();
        for s in self.samples.iter().filter(|s| counted(s.flow)) {
            if let Some(prev) = last.insert(s.flow, s.received_s) {
                gaps.push((s.flow, prev, s.received_s));
            }
        }
        let end = self.samples.iter().map(|s| s.received_s).fold(0.0, f64::max);
        gaps.extend(last.iter().filter(|(flow, _)| ended(**flow)).map(|(flow, at)| (*flow, *at, end)));
        let mut longest: BTreeMap<u32, u64> = BTreeMap::new();
        for (flow, from, to) in gaps {
            let ms = ((to - from - self.stalled_for(from, to)).max(0.0) * 1000.0).round() as u64;
            let entry = longest.entry(flow).or_default();
            *entry = (*entry).max(ms);
        }
        longest
    }

    /// How far, in percent, the share of offered requests answered per second fell below that
    /// share before the first release, 0 when it never did. The share to hold is the median of
    /// the judged whole seconds between the first (the client's start-up) and the first
    /// release's second; each judged second from the release's to the second-to-last (the last
    /// is cut short by the stop) is held against it, and the figure is the worst shortfall. A
    /// second is judged when the client offered at least half the median load of the seconds
    /// before the release: it sent what it owed after a stall, so a loss in a stalled second
    /// shows in full, and a second it could not offer load in says nothing.
    pub fn capacity_dip_pct(&self) -> Result<u64, NoFigure> {
        let first = self.marks.iter().find(|m| m.released.is_some()).ok_or(NoFigure::NoRelease)?.at_s as usize;
        let before = self.seconds.get(1..first).unwrap_or_default();
        let after = self.seconds.get(first..self.seconds.len().saturating_sub(1)).unwrap_or_default();
        let mut offered: Vec<u64> = before.iter().map(|s| s.offered).collect();
        offered.sort_unstable();
        let usual = offered.get(offered.len() / 2).copied().unwrap_or(0);
        let judged = |s: &&Second| usual > 0 && s.offered * 2 >= usual;
        let share = |s: &Second| s.replies as f64 / s.offered as f64;
        let mut held: Vec<f64> = before.iter().filter(judged).map(share).collect();
        let after: Vec<f64> = after.iter().filter(judged).map(share).collect();
        if held.len() < MIN_JUDGED_SECONDS || after.len() < MIN_JUDGED_SECONDS {
            return Err(NoFigure::TooFewJudged { before: held.len(), after: after.len() });
        }
        held.sort_by(f64::total_cmp);
        let median = held[held.len() / 2];
        if median == 0.0 {
            return Err(NoFigure::NothingAnswered);
        }
        let worst = after.iter().map(|share| 1.0 - share / median).fold(f64::MIN, f64::max);
        Ok((100.0 * worst).max(0.0).round() as u64)
    }
}

/// Why a run has no capacity figure: the scenario cannot be judged on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoFigure {
    /// No release in the run.
    NoRelease,
    /// Fewer than [`MIN_JUDGED_SECONDS`] judged seconds before or after the first release.
    TooFewJudged {
        /// Judged seconds before it.
        before: usize,
        /// Judged seconds after it.
        after: usize,
    },
    /// No request was answered before the release.
    NothingAnswered,
}

impl std::fmt::Display for NoFigure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoRelease => write!(f, "no release in the run"),
            Self::TooFewJudged { before, after } => write!(
                f,
                "{before} judged seconds before the first release and {after} after it (at least \
                 {MIN_JUDGED_SECONDS} each: a second counts when the client offered half its usual load)"
            ),
            Self::NothingAnswered => write!(f, "no request answered before the first release"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_recorded_late_takes_its_place_in_time() {
        let mut t = Timeline::default();
        t.mark(2.0, "release be1", Some(0.25));
        t.mark(2.5, "be1: old process draining", None);
        t.mark(2.2, "be1: new process ready", None);
        let order: Vec<&str> = t.marks.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(order, ["release be1", "be1: new process ready", "be1: old process draining"]);
    }

    /// Seconds offering 100 requests each, answering `replies`, and a release at `release_at`.
    fn timeline(replies: &[u64], release_at: f64) -> Timeline {
        let mut t = Timeline::default();
        for (i, r) in replies.iter().enumerate() {
            t.add(i as f64 + 0.5, |s| (s.offered, s.replies) = (100, *r));
        }
        t.mark(release_at, "release be1", Some(0.5));
        t
    }

    #[test]
    fn the_dip_is_the_worst_judged_second_against_the_median_share_before() {
        // Second 0 (start-up) and the last (cut short) do not count.
        let t = timeline(&[10, 100, 98, 102, 90, 99, 97, 5], 4.2);
        assert_eq!(t.capacity_dip_pct(), Ok(10));
        let t = timeline(&[10, 100, 100, 100, 101, 100, 100, 5], 4.2);
        assert_eq!(t.capacity_dip_pct(), Ok(0));
    }

    /// The figure before issue 20 scaled a stalled second's bar by the share of it the client
    /// ran, although the client had sent in it what it owed: a 30% loss in a second with 300 ms
    /// of stall read as 0%. Judged against what was offered, it is 30%.
    #[test]
    fn a_loss_in_a_stalled_second_is_judged_against_the_requests_sent_in_it() {
        let mut t = timeline(&[10, 100, 100, 100, 70, 100, 100, 5], 4.2);
        t.stall(4.45, 4.75);
        assert_eq!(t.capacity_dip_pct(), Ok(30));
    }

    #[test]
    fn a_second_the_client_could_not_offer_load_in_is_not_judged() {
        // Second 5: the client sent 40 requests (less than half its usual 100), all answered
        // but late: it says nothing either way.
        let mut t = timeline(&[10, 100, 100, 100, 95, 100, 100, 100, 5], 4.2);
        t.seconds[5] = Second { offered: 40, replies: 10, ..Second::default() };
        assert_eq!(t.capacity_dip_pct(), Ok(5));
    }

    #[test]
    fn too_few_judged_seconds_give_no_figure_never_a_pass() {
        // Two judged seconds after the release (the third offered nothing): no figure.
        let mut t = timeline(&[10, 100, 100, 100, 100, 100, 0, 5], 4.2);
        t.seconds[6].offered = 0;
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::TooFewJudged { before: 3, after: 2 }));
        // Two before it.
        let t = timeline(&[10, 100, 100, 100, 100, 100, 100, 5], 3.2);
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::TooFewJudged { before: 2, after: 4 }));
        let mut t = timeline(&[10, 100, 100, 100, 100, 5], 4.2);
        t.marks.clear();
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::NoRelease));
    }

    /// Seconds of (offered, replies) each, and a release at `release_at`.
    fn offered_and_answered(seconds: &[(u64, u64)], release_at: f64) -> Timeline {
        let mut t = Timeline::default();
        for (i, &(offered, replies)) in seconds.iter().enumerate() {
            t.add(i as f64 + 0.5, |s| (s.offered, s.replies) = (offered, replies));
        }
        t.mark(release_at, "release be1", Some(0.5));
        t
    }

    /// The load that makes a second judged is the median offered before the release (not its
    /// least), at least half of it counts, and a second's share is its replies over what it
    /// offered: with unequal loads, each of these decides the figure.
    #[test]
    fn the_bar_is_the_median_share_of_the_seconds_offered_half_the_median_load() {
        let t = offered_and_answered(
            &[
                (10, 10),
                // Before: judged shares 0.8, 0.8, 0.9, 0.9 (median 0.9); 40 is under half the
                // median load of 100 and says nothing.
                (100, 80),
                (100, 80),
                (100, 90),
                (60, 54),
                (40, 40),
                // After: 0.45 in a second offered 60 (judged: 50% short); 0.1 in one offered 40
                // (not judged).
                (100, 90),
                (60, 27),
                (100, 90),
                (40, 4),
                (100, 90),
                (10, 0),
            ],
            6.2,
        );
        assert_eq!(t.capacity_dip_pct(), Ok(50));
    }

    #[test]
    fn no_load_offered_before_the_release_gives_no_figure() {
        let t = offered_and_answered(
            &[(0, 0), (0, 0), (0, 0), (0, 0), (0, 0), (100, 100), (100, 100), (100, 100), (100, 100), (1, 0)],
            5.2,
        );
        assert_eq!(t.capacity_dip_pct(), Err(NoFigure::TooFewJudged { before: 0, after: 0 }));
    }

    #[test]
    fn why_there_is_no_figure_is_said() {
        assert_eq!(NoFigure::NoRelease.to_string(), "no release in the run");
        assert_eq!(NoFigure::NothingAnswered.to_string(), "no request answered before the first release");
        let few = NoFigure::TooFewJudged { before: 2, after: 5 }.to_string();
        assert!(few.starts_with("2 judged seconds before the first release and 5 after it (at least 3 each"), "{few}");
    }

    #[test]
    fn each_request_sent_counts_in_its_second() {
        let mut t = Timeline::default();
        for at in [0.2, 1.5, 1.7, 3.0] {
            t.offered(at);
        }
        let offered: Vec<u64> = t.seconds.iter().map(|s| s.offered).collect();
        assert_eq!(offered, [1, 2, 0, 1]);
    }

    #[test]
    fn a_run_without_replies_has_no_latency_figure() {
        let mut t = Timeline::default();
        t.offered(0.5);
        t.offered(4.5);
        t.summarize();
        assert_eq!(t.latency_p99_ms(), None);
    }

    #[test]
    fn a_stall_splits_over_the_seconds_it_spans() {
        let mut t = Timeline::default();
        t.stall(0.8, 2.1);
        let stalled: Vec<u64> = t.seconds.iter().map(|s| s.stalled_ms).collect();
        assert_eq!(stalled, [200, 1000, 100]);
    }

    #[test]
    fn latency_percentiles_leave_out_the_waits_a_client_stall_overlapped() {
        let mut t = Timeline::default();
        // Second 1: 100 replies of 1..=100 ms; second 2: one of 300 ms, overlapped by a stall.
        for ms in 1..=100u32 {
            t.replied(ms, 1.0, 1.0 + f64::from(ms) / 1000.0);
        }
        t.replied(1, 2.1, 2.4);
        t.stall(2.2, 2.3);
        t.replied(2, 2.5, 2.52);
        t.add(3.5, |_| {});
        t.summarize();
        let s = t.seconds[1];
        assert_eq!((s.latency_p50_us, s.latency_p99_us, s.latency_max_us), (50_000, 99_000, 100_000));
        assert_eq!(t.seconds[2].latency_max_us, 20_000, "the stalled wait is not judged");
        assert_eq!(t.latency_p99_ms(), Some(99));
    }

    #[test]
    fn the_longest_gap_between_replies_shows_a_pause_under_the_drop_timeout() {
        let mut t = Timeline::default();
        // Flow 1 every 100 ms, with one 350 ms pause; flow 2 with a 350 ms gap in which the
        // client itself could not run for 200 ms.
        for at in [2.0, 2.1, 2.2, 2.55, 2.65] {
            t.replied(1, at - 0.01, at);
        }
        for at in [1.0, 1.35, 1.45] {
            t.replied(2, at - 0.01, at);
        }
        t.stall(1.1, 1.3);
        let running = |_| false;
        assert_eq!(t.max_reply_gap_ms(|_| true, running), Some(350));
        assert_eq!(t.max_reply_gap_ms(|flow| flow == 2, running), Some(150), "the client's stall is taken out");
        assert_eq!(t.max_reply_gap_ms(|_| false, running), None);
        assert_eq!(t.reply_gaps_ms(|_| true, running), BTreeMap::from([(1, 350), (2, 150)]), "per flow");
        // Flow 2 ended after its last reply (a reset): no reply from 1.45 to the run's last,
        // 2.65; a stall in that time is taken out, not the whole gap.
        assert_eq!(t.max_reply_gap_ms(|flow| flow == 2, |flow| flow == 2), Some(1200));
        t.stall(2.0, 2.1);
        assert_eq!(t.max_reply_gap_ms(|flow| flow == 2, |flow| flow == 2), Some(1100));
    }
}
