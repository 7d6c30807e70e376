//! Per-flow accounting and the tally a scenario judges (DESIGN.md section 2).
//!
//! - A **reset** is a flow that ended because a host refused it: a TCP RST on an established
//!   connection (`ECONNRESET`), or, for UDP, an ICMP port unreachable (`ECONNREFUSED`) after the
//!   flow was established. Counted once per flow.
//! - A **misroute** is a reply from any socket other than the flow's owner (the socket that
//!   answered its first request). Counted per reply.
//! - A **drop** is a request that got no answer in time. Counted per request; a connection that
//!   could not be opened, or a reply that was not a valid one, counts as one drop too.
//!
//! Consistent routing is required "unless that socket's host is down": flows whose owner is on a
//! node a scenario took down are tallied apart as *excused*, so a verdict can demand zero on the
//! others and still check that the event really hit someone.
//!
//! Pure logic: no I/O, no clock.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Range,
};

use serde::Serialize;

use zrlab_wire::{Proto, message::Identity};

/// Why a flow ended before the workload stopped it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ending {
    /// TCP RST (`ECONNRESET`).
    Reset,
    /// UDP port unreachable (`ECONNREFUSED`).
    Refused,
    /// The server closed the connection (FIN) with a request outstanding.
    Closed,
    /// A TCP request got no reply in time; the connection is abandoned.
    Stalled,
    /// The connection could not be opened.
    ConnectFailed(String),
    /// The peer sent something that is not a valid reply.
    Protocol(String),
}

/// What one flow saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    /// Transport.
    pub proto: Proto,
    /// The flow's number.
    pub id: u32,
    /// The socket that answered first.
    pub owner: Option<Identity>,
    /// Replies received.
    pub replies: u64,
    /// Replies from a socket other than the owner.
    pub misroutes: u64,
    /// Requests without an answer.
    pub drops: u64,
    /// Requests completed (answered or dropped): the flow's clock.
    pub rounds: u64,
    /// Why it ended, if it did.
    pub ending: Option<Ending>,
    /// How many of the timeline's events had been applied when the flow opened (0: it opened
    /// before the first). Lets a verdict ask where flows opened after an event went.
    pub epoch: u64,
    /// A TCP flow's maximum segment size after its last reply (`TCP_MAXSEG`): what path-MTU
    /// discovery left it with.
    pub mss: Option<u32>,
}

impl FlowRecord {
    /// A flow that has not sent anything yet, opened after `epoch` events.
    pub fn new(proto: Proto, id: u32, epoch: u64) -> Self {
        Self { proto, id, owner: None, replies: 0, misroutes: 0, drops: 0, rounds: 0, ending: None, epoch, mss: None }
    }

    /// Records a reply from `who`.
    pub(crate) fn reply(&mut self, who: &Identity) {
        self.replies += 1;
        self.rounds += 1;
        match &self.owner {
            None => self.owner = Some(who.clone()),
            Some(owner) if owner != who => self.misroutes += 1,
            Some(_) => {}
        }
    }

    /// Records a request that got no answer.
    pub(crate) fn drop_request(&mut self) {
        self.drops += 1;
        self.rounds += 1;
    }

    /// Records the flow's end (the first cause wins).
    pub(crate) fn end(&mut self, ending: Ending) {
        self.ending.get_or_insert(ending);
    }

    /// Whether the flow still runs.
    pub fn live(&self) -> bool {
        self.ending.is_none()
    }

    /// Whether the flow saw anything a verdict counts: a reset, a misroute or a drop.
    pub fn anomalous(&self) -> bool {
        self.misroutes > 0 || self.drops > 0 || self.ending.is_some()
    }

    /// Whether the flow ended by a reset (see the module docs).
    pub(crate) fn was_reset(&self) -> bool {
        matches!(self.ending, Some(Ending::Reset | Ending::Refused))
    }
}

/// Totals over a set of flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Flows.
    pub flows: u64,
    /// Flows that were reset.
    pub resets: u64,
    /// Misrouted replies.
    pub misroutes: u64,
    /// Unanswered requests.
    pub drops: u64,
    /// Of those, on TCP flows.
    pub tcp_drops: u64,
    /// Of those, on UDP flows.
    pub udp_drops: u64,
}

impl Counts {
    fn add(&mut self, flow: &FlowRecord) {
        self.flows += 1;
        self.resets += u64::from(flow.was_reset());
        self.misroutes += flow.misroutes;
        // A connection never opened, or a reply that was not one: its request went unanswered.
        let unanswered = matches!(flow.ending, Some(Ending::ConnectFailed(_) | Ending::Protocol(_)));
        let drops = flow.drops + u64::from(unanswered);
        self.drops += drops;
        match flow.proto {
            Proto::Tcp => self.tcp_drops += drops,
            Proto::Udp => self.udp_drops += drops,
        }
    }
}

/// Flows that may have gone to a host that died before every LB node took it out of its
/// rings. They never got an answer, so which backend they went to is unknown; they are
/// excused only if they failed, and only these: flows whose first request was in flight when
/// the host died, and flows opened after its death until the last LB node took it out (or
/// its detection budget ran out: a control without health checks keeps sending new flows to
/// it after that, and those count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dying {
    /// Epochs from a death to its detection.
    pub epochs: Vec<Range<u64>>,
    /// Flows that were live and had no answer yet when a host died.
    pub in_flight: BTreeSet<u32>,
}

impl Dying {
    /// Whether `flow` is one a dying host may have taken, and failed.
    pub fn covers(&self, flow: &FlowRecord) -> bool {
        flow.owner.is_none()
            && flow.anomalous()
            && (self.in_flight.contains(&flow.id) || self.epochs.iter().any(|e| e.contains(&flow.epoch)))
    }
}

/// The tally a verdict is computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Flows whose owner's host stayed up: these must route consistently.
    pub counted: Counts,
    /// Flows whose owner's host was taken down.
    pub excused: Counts,
    /// Flows owned by each node.
    pub owners: BTreeMap<String, u64>,
    /// Flows opened after the first event.
    pub late_flows: u64,
    /// Flows opened after a backend was drained whose owner is that backend: the rings must
    /// not send new flows to a drained backend.
    pub late_on_drained: u64,
    /// Failed flows without an answer that a dying host may have taken (see [`Dying`]); they
    /// are among the excused.
    pub lost_to_dying: u64,
}

impl Tally {
    /// Tallies `flows`, excusing those owned by a node in `down`; `drained` maps each drained
    /// backend to the epochs it was out of the rings in (from the epoch its drain completed in
    /// to the one its restore did, open while it stays drained): flows opened then must not
    /// land on it, flows opened after its restore may; `dying` names the flows a dying host
    /// may have taken.
    pub fn of(
        flows: &[FlowRecord],
        down: &BTreeSet<String>,
        drained: &BTreeMap<String, Vec<Range<u64>>>,
        dying: &Dying,
    ) -> Self {
        let mut tally = Self::default();
        for flow in flows {
            let owner = flow.owner.as_ref().map(|o| o.node.as_str());
            if let Some(node) = owner {
                *tally.owners.entry(node.to_owned()).or_default() += 1;
            }
            tally.late_flows += u64::from(flow.epoch > 0);
            if owner
                .and_then(|node| drained.get(node))
                .is_some_and(|spans| spans.iter().any(|s| s.contains(&flow.epoch)))
            {
                tally.late_on_drained += 1;
            }
            if dying.covers(flow) {
                tally.lost_to_dying += 1;
                tally.excused.add(flow);
            } else if owner.is_some_and(|node| down.contains(node)) {
                tally.excused.add(flow);
            } else {
                tally.counted.add(flow);
            }
        }
        tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(node: &str) -> Identity {
        Identity { node: node.into(), instance: "a".into(), pid: 1 }
    }

    #[test]
    fn owner_is_the_first_replier_and_others_are_misroutes() {
        let mut flow = FlowRecord::new(Proto::Udp, 0, 0);
        flow.reply(&who("be1"));
        assert!(!flow.anomalous());
        flow.reply(&who("be2"));
        flow.reply(&who("be1"));
        flow.drop_request();
        assert_eq!((flow.replies, flow.misroutes, flow.drops, flow.rounds), (3, 1, 1, 4));
        assert!(flow.anomalous());
        assert_eq!(flow.owner, Some(who("be1")));
    }

    /// Misroutes count replies, not flows: a flow answered by two wrong sockets, three times,
    /// is three misroutes; drops count requests, and a connection that never opened is one.
    #[test]
    fn misroutes_count_every_misrouted_reply_and_drops_every_unanswered_request() {
        let mut a = FlowRecord::new(Proto::Udp, 0, 0);
        for node in ["be1", "be2", "be3", "be1", "be2"] {
            a.reply(&who(node));
        }
        let mut b = FlowRecord::new(Proto::Udp, 1, 0);
        b.reply(&who("be2"));
        b.reply(&who("be4"));
        b.drop_request();
        b.drop_request();
        let mut c = FlowRecord::new(Proto::Tcp, 2, 0);
        c.end(Ending::ConnectFailed("refused".into()));
        assert_eq!((a.misroutes, b.misroutes), (3, 1));
        let mut d = FlowRecord::new(Proto::Tcp, 3, 0);
        d.reply(&who("be1"));
        let tally = Tally::of(&[a, b, c, d], &BTreeSet::new(), &BTreeMap::new(), &Dying::default());
        assert_eq!(tally.counted, Counts { flows: 4, resets: 0, misroutes: 4, drops: 3, tcp_drops: 1, udp_drops: 2 });
        // Flows per owner (the first replier): what the share of each backend is judged from.
        assert_eq!(tally.owners, BTreeMap::from([("be1".to_owned(), 2), ("be2".to_owned(), 1)]));
    }

    /// A misroute, a drop or an ending each alone makes a flow anomalous (listed in the report,
    /// and excusable when a dying host may have taken it); a flow runs until it ends, whatever
    /// else it saw.
    #[test]
    fn a_misroute_a_drop_or_an_ending_each_make_a_flow_anomalous() {
        let fresh = FlowRecord::new(Proto::Udp, 0, 0);
        assert!(fresh.live() && !fresh.anomalous());
        let mut misrouted = fresh.clone();
        misrouted.reply(&who("be1"));
        misrouted.reply(&who("be2"));
        let mut dropped = fresh.clone();
        dropped.drop_request();
        let mut ended = fresh.clone();
        ended.end(Ending::Closed);
        for (what, flow) in [("misrouted", &misrouted), ("dropped", &dropped), ("ended", &ended)] {
            assert!(flow.anomalous(), "{what}");
        }
        assert!(misrouted.live() && dropped.live() && !ended.live());
    }

    #[test]
    fn flows_of_downed_hosts_are_excused() {
        let mut kept = FlowRecord::new(Proto::Tcp, 0, 0);
        kept.reply(&who("be1"));
        kept.end(Ending::Reset);
        let mut gone = FlowRecord::new(Proto::Tcp, 1, 0);
        gone.reply(&who("be4"));
        gone.end(Ending::Reset);
        gone.end(Ending::Closed);
        let tally =
            Tally::of(&[kept, gone.clone()], &BTreeSet::from(["be4".to_owned()]), &BTreeMap::new(), &Dying::default());
        assert_eq!(tally.counted, Counts { flows: 1, resets: 1, ..Counts::default() });
        assert_eq!(tally.excused, Counts { flows: 1, resets: 1, ..Counts::default() });
        assert_eq!(gone.ending, Some(Ending::Reset), "the first cause wins");
    }

    #[test]
    fn flows_opened_after_a_drain_must_not_land_on_the_drained_backend() {
        let flow = |epoch: u64, node: &str| {
            let mut flow = FlowRecord::new(Proto::Tcp, 0, epoch);
            flow.reply(&who(node));
            flow
        };
        // be4 was drained by the second event (epoch 2 from then on).
        let span = |from: u64, to: u64| vec![Range { start: from, end: to }];
        let drained = BTreeMap::from([("be4".to_owned(), span(2, u64::MAX))]);
        let flows = [flow(0, "be4"), flow(1, "be4"), flow(2, "be1"), flow(2, "be4"), flow(3, "be4")];
        let tally = Tally::of(&flows, &BTreeSet::new(), &drained, &Dying::default());
        assert_eq!(tally.late_flows, 4);
        assert_eq!(tally.late_on_drained, 2, "flows opened in epoch 2 and 3 on be4");
        // Restored by the fourth event: flows opened from epoch 4 on may land on it again
        // (until issue 20 they were counted as long as the run lasted).
        let restored = BTreeMap::from([("be4".to_owned(), span(2, 4))]);
        let flows = [flow(2, "be4"), flow(3, "be4"), flow(4, "be4"), flow(5, "be4")];
        assert_eq!(
            Tally::of(&flows, &BTreeSet::new(), &restored, &Dying::default()).late_on_drained,
            2,
            "epochs 2 and 3 only"
        );
    }

    /// A host died in epoch 1 and was out of every ring from epoch 2: failed flows without an
    /// answer from epoch 1, or in flight at the death, are excused; the same failure in epoch
    /// 2 (the rings should have moved on) or in a flow that had an owner is not.
    #[test]
    fn only_unanswered_failures_a_dying_host_may_have_taken_are_excused() {
        let failed = |id: u32, epoch: u64| {
            let mut flow = FlowRecord::new(Proto::Tcp, id, epoch);
            flow.end(Ending::ConnectFailed("timed out".into()));
            flow
        };
        let mut owned = FlowRecord::new(Proto::Tcp, 5, 1);
        owned.reply(&who("be1"));
        owned.drop_request();
        let healthy = FlowRecord::new(Proto::Tcp, 6, 1);
        let flows = [failed(0, 0), failed(1, 0), failed(2, 1), failed(3, 2), failed(4, 1), owned, healthy];
        let dying = Dying { epochs: vec![Range { start: 1, end: 2 }], in_flight: BTreeSet::from([1]) };
        let tally = Tally::of(&flows, &BTreeSet::new(), &BTreeMap::new(), &dying);
        assert_eq!(tally.lost_to_dying, 3, "flows 1 (in flight), 2 and 4 (opened while dying)");
        assert_eq!(tally.excused, Counts { flows: 3, drops: 3, tcp_drops: 3, ..Counts::default() });
        assert_eq!(
            tally.counted,
            Counts { flows: 4, drops: 3, tcp_drops: 3, ..Counts::default() },
            "flows 0, 3, 5 and 6"
        );
    }
}
