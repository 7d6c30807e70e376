//! `sk-lookup`: an `SK_LOOKUP` program steers the service's ports to the ready process's
//! sockets through a socket map (`zrlab_control::sklookup`); UDP flows stay with their process
//! by a 4-tuple table; the closing listener's queued requests migrate through the kernel's
//! `tcp_migrate_req`.

use std::os::fd::OwnedFd;

use crate::release::{
    FleetCounters,
    dispatcher::{Dispatcher, Step, sharing_ports_flags, sharing_ports_steps},
};
use zrlab_control::sklookup::SkLookupDispatch;
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

/// The `sk-lookup` strategy: a backend's `SK_LOOKUP` dispatcher.
#[derive(Debug)]
pub(super) struct SkLookup(SkLookupDispatch);

impl SkLookup {
    /// Loads the dispatcher of the service's TCP and UDP ports.
    pub(super) fn load((tcp_port, udp_port): (u16, u16)) -> Result<Self> {
        Ok(Self(SkLookupDispatch::load(tcp_port, udp_port)?))
    }
}

impl Dispatcher for SkLookup {
    fn service_flags(&self, _slot: u32) -> Vec<String> {
        sharing_ports_flags()
    }

    fn steps(&self) -> Vec<Step> {
        sharing_ports_steps()
    }

    fn start(&mut self, netns: &Netns, backend: &str, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        self.0.set_slot(0, tcp, udp)?;
        self.0.attach(netns)?;
        self.0.set_ready(Some(0))?;
        // The closing listener's queued requests move to the new one (the group both
        // processes' listeners share): the kernel's own migration.
        netns
            .run(|| std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1"))?
            .map_err(|e| LabError::os("write", format!("net.ipv4.tcp_migrate_req in {backend}"), e))
    }

    fn install(&mut self, slot: u32, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        self.0.set_slot(slot, tcp, udp)?;
        self.0.set_ready(Some(slot))
    }

    fn count(&self, out: &mut FleetCounters) -> Result<()> {
        out.sk_lookup.absorb(&self.0.counters()?);
        Ok(())
    }

    fn steered_new(&self) -> Result<Option<u64>> {
        Ok(Some(self.0.counters()?.steered_new))
    }
}
