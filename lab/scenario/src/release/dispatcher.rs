//! What every release strategy provides: the [`Dispatcher`] trait the fleet drives, and the
//! [`Step`]s a release is made of.
//!
//! A strategy is a [`super::Strategy`] variant plus one file here that implements the trait (the
//! service flags of its processes, the steps of one release, and, for the strategies that
//! dispatch in the kernel, the socket map they keep). The fleet knows no strategy by name.

use std::{os::fd::OwnedFd, time::Duration};

use crate::release::FleetCounters;
use zrlab_host::{
    error::{LabError, Result},
    netns::Netns,
};

/// One step of a backend's release, in the order a strategy lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Take the backend out of the LB's rings (`false`) or put it back (`true`).
    Health(bool),
    /// Wait (a drain period: what operators wait, not a wait for a condition).
    Wait(Duration),
    /// SIGTERM the old process and wait until it has exited.
    StopOld,
    /// Start the new process (in the next slot) and wait until it is ready.
    StartNew,
    /// Put the new process's sockets into the dispatcher and make it the one new flows reach.
    Install,
    /// SIGTERM the old process and let it serve what it has (it closes its listener).
    SignalOld,
}

/// A backend's release machinery under one strategy.
pub(super) trait Dispatcher: std::fmt::Debug + Send {
    /// The service flags of the backend's process in `slot` (besides instance and slot).
    fn service_flags(&self, slot: u32) -> Vec<String>;

    /// The steps of one release.
    fn steps(&self) -> Vec<Step>;

    /// Takes the backend's first process (slot 0, ready), with copies of its first TCP
    /// listener and UDP socket, in the backend's namespace `netns` (`backend` names it in
    /// errors). The fleet drops the copies right after.
    fn start(&mut self, netns: &Netns, backend: &str, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        let _ = (netns, backend, tcp, udp);
        Ok(())
    }

    /// [`Step::Install`]: the ready process in `slot`, with copies of its first TCP listener
    /// and UDP socket, becomes the one new flows reach. The fleet drops the copies right after.
    fn install(&mut self, slot: u32, tcp: Option<&OwnedFd>, udp: Option<&OwnedFd>) -> Result<()> {
        let _ = (slot, tcp, udp);
        Err(LabError::Unsupported(format!("{self:?} has no sockets to install")))
    }

    /// Adds what its BPF programs counted to `out`.
    fn count(&self, out: &mut FleetCounters) -> Result<()> {
        let _ = out;
        Ok(())
    }

    /// New connections and flows its program has steered to the ready process so far; `None`
    /// for a strategy without a program (the kernel's own lookup decides there).
    fn steered_new(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// How long a released process serves what it has (its drain timeout): longer than any
/// scenario; the lab's teardown ends it.
pub(super) const OLD_SERVES: &str = "--drain-timeout=3600s";

/// The service flags of the strategies whose processes bind the same ports with
/// `SO_REUSEPORT` and whose dispatcher picks the ready one (`reuseport-bpf`, `sk-lookup`).
pub(super) fn sharing_ports_flags() -> Vec<String> {
    vec!["--reuseport".into(), OLD_SERVES.into()]
}

/// Their steps: the new process starts next to the old one, its sockets go into the
/// dispatcher, then the old one is told to stop.
pub(super) fn sharing_ports_steps() -> Vec<Step> {
    vec![Step::StartNew, Step::Install, Step::SignalOld]
}
