//! `reuseport-bpf`: both processes bind with `SO_REUSEPORT`; an `SK_REUSEPORT` program picks
//! the socket from a `REUSEPORT_SOCKARRAY` (`zrlab_control::reuseport`). New flows go to the
//! generation flipped to the ready process, UDP flows stay with the process their connection id
//! names, and the requests queued on the old listener when it closes migrate.

use std::os::fd::OwnedFd;

use crate::release::{
    FleetCounters,
    dispatcher::{Dispatcher, Step, sharing_ports_flags, sharing_ports_steps},
};
use zrlab_control::reuseport::{Dispatch, ReuseportDispatch};
use zrlab_features::Feature;
use zrlab_host::{error::Result, netns::Netns};

/// The `reuseport-bpf` strategy: a backend's `SK_REUSEPORT` dispatcher.
#[derive(Debug)]
pub(super) struct ReuseportBpf(ReuseportDispatch);

impl ReuseportBpf {
    /// Loads the dispatcher (select-or-migrate where the kernel has it).
    pub(super) async fn load() -> Result<Self> {
        let dispatch =
            if Feature::SelectOrMigrate.probe().await? { Dispatch::SelectOrMigrate } else { Dispatch::Select };
        Ok(Self(ReuseportDispatch::load(dispatch)?))
    }
}

impl Dispatcher for ReuseportBpf {
    fn service_flags(&self, _slot: u32) -> Vec<String> {
        sharing_ports_flags()
    }

    fn steps(&self) -> Vec<Step> {
        sharing_ports_steps()
    }

    fn start(&mut self, _netns: &Netns, _backend: &str, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        self.0.set_slot(0, tcp, udp)?;
        // Attached through the first process's sockets: the program serves their group.
        for socket in tcp.iter().chain(&udp) {
            self.0.attach(socket)?;
        }
        self.0.set_generation(0, 1)
    }

    fn install(&mut self, slot: u32, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        self.0.set_slot(slot, tcp, udp)?;
        self.0.set_generation(slot, 1)
    }

    fn count(&self, out: &mut FleetCounters) -> Result<()> {
        out.reuseport.absorb(&self.0.counters()?);
        Ok(())
    }

    fn steered_new(&self) -> Result<Option<u64>> {
        Ok(Some(self.0.counters()?.selected))
    }
}
