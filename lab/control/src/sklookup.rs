//! The `SK_LOOKUP` dispatcher of a release (`sk_lookup_steer`; maps and rules in
//! `zrlab_common::sklookup`): attached to a backend's network namespace, it steers the service's
//! ports to the ready process's sockets.

use std::os::fd::AsRawFd;

use aya::maps::{Array, SockMap};
use serde::Serialize;
use zrlab_common::sklookup::{
    COUNTERS_MAP, MAX_SLOTS, NO_SLOT, PORTS_MAP, Ports, READY_MAP, SOCKETS_MAP, UDP_BASE, counter,
};

use crate::bpf::{Loaded, Object, map_err, sum_counters};
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

/// What the dispatcher counted, summed over CPUs (`zrlab_common::sklookup::counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SkLookupCounters {
    /// New flows sent to the ready slot.
    pub steered_new: u64,
    /// Datagrams of remembered UDP flows sent to their own slot.
    pub steered_flow: u64,
    /// Remembered UDP flows whose slot had no socket any more.
    pub flow_orphaned: u64,
    /// Assignments that failed (the kernel's lookup decided).
    pub assign_failed: u64,
}

impl SkLookupCounters {
    /// Adds `other`'s counts (another dispatcher's) to these.
    pub fn absorb(&mut self, other: &Self) {
        self.steered_new += other.steered_new;
        self.steered_flow += other.steered_flow;
        self.flow_orphaned += other.flow_orphaned;
        self.assign_failed += other.assign_failed;
    }
}

/// A loaded dispatcher.
#[derive(Debug)]
pub struct SkLookupDispatch {
    bpf: Loaded,
}

impl SkLookupDispatch {
    /// Loads and verifies the program, steering TCP port `tcp` and UDP port `udp` (0: none);
    /// nobody is ready yet.
    pub fn load(tcp: u16, udp: u16) -> Result<Self> {
        let bpf = Loaded::load(Object::SkLookupSteer, &[])?;
        let mut dispatch = Self { bpf };
        let mut ports: Array<_, Ports> =
            Array::try_from(dispatch.bpf.map_mut(PORTS_MAP)?).map_err(map_err("SL_PORTS"))?;
        ports.set(0, Ports { tcp: u32::from(tcp), udp: u32::from(udp) }, 0).map_err(map_err("write SL_PORTS"))?;
        dispatch.set_ready(None)?;
        Ok(dispatch)
    }

    /// Attaches the program to `netns` (it stays attached while this value lives).
    pub fn attach(&mut self, netns: &Netns) -> Result<()> {
        self.bpf.attach_sk_lookup("sk_lookup_steer", netns)
    }

    /// Replaces the program under its live listeners with a reload of it
    /// (`Loaded::reload`): its maps (ports, ready slot, sockets, remembered flows, counters)
    /// handed over, its namespace link swapped with one update. Steering goes on throughout.
    pub fn upgrade(&mut self) -> Result<()> {
        self.bpf = self.bpf.reload()?;
        Ok(())
    }

    /// The kernel's id of the program now loaded.
    pub fn program_id(&self) -> Result<u32> {
        self.bpf.program_id("sk_lookup_steer")
    }

    /// Puts a process's sockets at its `slot`: its TCP listener and its UDP socket.
    pub fn set_slot(&mut self, slot: u32, tcp: Option<&impl AsRawFd>, udp: Option<&impl AsRawFd>) -> Result<()> {
        if slot >= MAX_SLOTS {
            return Err(LabError::Usage(format!("slot {slot} beyond the dispatcher's {MAX_SLOTS}")));
        }
        let mut sockets = SockMap::try_from(self.bpf.map_mut(SOCKETS_MAP)?).map_err(map_err("SL_SOCKETS"))?;
        if let Some(tcp) = tcp {
            sockets.set(slot, tcp, 0).map_err(map_err("write SL_SOCKETS"))?;
        }
        if let Some(udp) = udp {
            sockets.set(UDP_BASE + slot, udp, 0).map_err(map_err("write SL_SOCKETS"))?;
        }
        Ok(())
    }

    /// Makes `slot` the one that takes new flows (`None`: nobody; the kernel's lookup decides).
    pub fn set_ready(&mut self, slot: Option<u32>) -> Result<()> {
        let mut ready: Array<_, u32> = Array::try_from(self.bpf.map_mut(READY_MAP)?).map_err(map_err("SL_READY"))?;
        ready.set(0, slot.unwrap_or(NO_SLOT), 0).map_err(map_err("write SL_READY"))
    }

    /// Its counters.
    pub fn counters(&self) -> Result<SkLookupCounters> {
        let slots = sum_counters(self.bpf.map(COUNTERS_MAP)?, counter::SLOTS, "SL_COUNTERS")?;
        let at = |slot: u32| slots[slot as usize];
        Ok(SkLookupCounters {
            steered_new: at(counter::STEERED_NEW),
            steered_flow: at(counter::STEERED_FLOW),
            flow_orphaned: at(counter::FLOW_ORPHANED),
            assign_failed: at(counter::ASSIGN_FAILED),
        })
    }
}
