//! The `SK_REUSEPORT` dispatcher of a release (`reuseport_select`; layouts in
//! `zrlab_common::reuseport`).
//!
//! A process's sockets go at its slot's indices of the dispatcher's socket array (a generation
//! is a consecutive range of slots); the dispatcher is attached to each `SO_REUSEPORT` group
//! (TCP and UDP) through any of its sockets (it then serves the whole group), and the
//! generation that takes new flows flips when the new process is ready.

use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{Array, ReusePortSockArray};
use serde::Serialize;
use zrlab_common::reuseport::{
    COUNTERS_MAP, GENERATION_MAP, Generation, MAX_SLOTS, MAX_SOCKETS, SOCKETS_MAP, UDP_BASE, counter,
};

use crate::bpf::{Loaded, Object, map_err, sum_counters};
use zrlab_host::error::{LabError, Result};

/// Which entry point dispatches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// New flows only (`BPF_SK_REUSEPORT_SELECT`): a closing listener's queue is reset.
    Select,
    /// New flows and a closing listener's requests (`BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`, 5.14+).
    SelectOrMigrate,
}

impl Dispatch {
    fn program(self) -> &'static str {
        match self {
            Self::Select => "rs_select",
            Self::SelectOrMigrate => "rs_select_or_migrate",
        }
    }
}

/// What the dispatcher counted, summed over CPUs (`zrlab_common::reuseport::counter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReuseportCounters {
    /// New flows sent to the generation.
    pub selected: u64,
    /// Accept-queue connections of a closing listener moved.
    pub migrated_established: u64,
    /// Fast Open connections waiting for their final ACK moved.
    pub migrated_syn_recv: u64,
    /// Requests moved by their SYN-ACK timer.
    pub migrated_request_timer: u64,
    /// Requests moved when their final ACK arrived.
    pub migrated_request_ack: u64,
    /// Selections that failed (the kernel's choice stood).
    pub select_failed: u64,
    /// Datagrams of existing UDP flows sent to the socket their connection id names.
    pub by_cid: u64,
    /// Connection ids naming a slot without a socket (sent to the generation).
    pub cid_orphaned: u64,
}

impl ReuseportCounters {
    /// Adds `other`'s counts (another dispatcher's) to these.
    pub fn absorb(&mut self, other: &Self) {
        self.selected += other.selected;
        self.migrated_established += other.migrated_established;
        self.migrated_syn_recv += other.migrated_syn_recv;
        self.migrated_request_timer += other.migrated_request_timer;
        self.migrated_request_ack += other.migrated_request_ack;
        self.select_failed += other.select_failed;
        self.by_cid += other.by_cid;
        self.cid_orphaned += other.cid_orphaned;
    }

    /// Every migration.
    pub fn migrated(&self) -> u64 {
        self.migrated_established + self.migrated_syn_recv + self.migrated_request_timer + self.migrated_request_ack
    }
}

/// A loaded dispatcher.
#[derive(Debug)]
pub struct ReuseportDispatch {
    bpf: Loaded,
    dispatch: Dispatch,
}

impl ReuseportDispatch {
    /// Loads and verifies `dispatch`'s program.
    pub fn load(dispatch: Dispatch) -> Result<Self> {
        let mut bpf = Loaded::load(Object::ReuseportSelect, &[])?;
        bpf.sk_reuseport(dispatch.program())?;
        Ok(Self { bpf, dispatch })
    }

    /// Puts `socket` (bound with `SO_REUSEPORT`; a listener must be listening) at `index`.
    pub fn set_socket(&mut self, index: u32, socket: &impl AsRawFd) -> Result<()> {
        if index >= MAX_SOCKETS {
            return Err(LabError::Usage(format!("socket index {index} beyond the array's {MAX_SOCKETS}")));
        }
        let mut sockets =
            ReusePortSockArray::try_from(self.bpf.map_mut(SOCKETS_MAP)?).map_err(map_err("RS_SOCKETS"))?;
        sockets.set(index, socket, 0).map_err(map_err("write RS_SOCKETS"))
    }

    /// Puts a process's sockets at its `slot`: its TCP listener and its UDP socket.
    pub fn set_slot(&mut self, slot: u32, tcp: Option<&impl AsRawFd>, udp: Option<&impl AsRawFd>) -> Result<()> {
        if slot >= MAX_SLOTS {
            return Err(LabError::Usage(format!("slot {slot} beyond the dispatcher's {MAX_SLOTS}")));
        }
        if let Some(tcp) = tcp {
            self.set_socket(slot, tcp)?;
        }
        if let Some(udp) = udp {
            self.set_socket(UDP_BASE + slot, udp)?;
        }
        Ok(())
    }

    /// Makes slots `first .. first + count` the generation that takes new flows (a listener's
    /// index is its slot; a UDP socket's, `UDP_BASE` above).
    pub fn set_generation(&mut self, first: u32, count: u32) -> Result<()> {
        if first.saturating_add(count) > MAX_SOCKETS {
            return Err(LabError::Usage(format!("generation {first}+{count} beyond the array's {MAX_SOCKETS}")));
        }
        let mut map: Array<_, Generation> =
            Array::try_from(self.bpf.map_mut(GENERATION_MAP)?).map_err(map_err("RS_GENERATION"))?;
        map.set(0, Generation { first, count }, 0).map_err(map_err("write RS_GENERATION"))
    }

    /// Attaches the dispatcher to the `SO_REUSEPORT` group of `socket` (it serves the whole
    /// group, and stays attached while the group exists).
    pub fn attach(&mut self, socket: impl AsFd) -> Result<()> {
        let name = self.dispatch.program();
        self.bpf
            .sk_reuseport(name)?
            .attach(socket)
            .map_err(|e| LabError::Bpf { what: format!("attach {name} to a reuseport group"), message: e.to_string() })
    }

    /// Replaces the dispatcher under its live listeners with a reload of it
    /// (`Loaded::reload`): its socket array, generation and counters handed over, then the new
    /// program attached to each group of `groups` (a socket of each), which swaps it for the
    /// old one in one step. Until then the old program runs, on the same maps.
    pub fn upgrade<S: AsFd>(&mut self, groups: &[S]) -> Result<()> {
        let mut new = Self { bpf: self.bpf.reload()?, dispatch: self.dispatch };
        // Verified before any group is touched.
        new.bpf.sk_reuseport(self.dispatch.program())?;
        for group in groups {
            new.attach(group)?;
        }
        *self = new;
        Ok(())
    }

    /// The kernel's id of the program now loaded.
    pub fn program_id(&self) -> Result<u32> {
        self.bpf.program_id(self.dispatch.program())
    }

    /// Its counters.
    pub fn counters(&self) -> Result<ReuseportCounters> {
        let slots = sum_counters(self.bpf.map(COUNTERS_MAP)?, counter::SLOTS, "RS_COUNTERS")?;
        let at = |slot: u32| slots[slot as usize];
        Ok(ReuseportCounters {
            selected: at(counter::SELECTED),
            migrated_established: at(counter::MIGRATED_ESTABLISHED),
            migrated_syn_recv: at(counter::MIGRATED_SYN_RECV),
            migrated_request_timer: at(counter::MIGRATED_REQUEST_TIMER),
            migrated_request_ack: at(counter::MIGRATED_REQUEST_ACK),
            select_failed: at(counter::SELECT_FAILED),
            by_cid: at(counter::BY_CID),
            cid_orphaned: at(counter::CID_ORPHANED),
        })
    }
}
