//! Sending whole frames out of an interface: an `AF_PACKET` socket (the kind a capture uses)
//! created inside the interface's namespace. Frames go out as given, Ethernet header included:
//! the caller sets the MAC addresses.

use std::os::fd::{AsRawFd as _, OwnedFd};

use crate::{
    error::{LabError, Result},
    netns::Netns,
};

/// A packet socket bound to one interface, for sending.
#[derive(Debug)]
pub struct Injector {
    socket: OwnedFd,
    what: String,
}

impl Injector {
    /// An injector on `ifname` inside `netns`.
    pub fn open(netns: &Netns, ifname: &str) -> Result<Self> {
        let what = format!("{ifname} in {}", netns.name());
        let name = ifname.to_owned();
        let socket = netns
            .run(move || super::open(&name))?
            .map_err(|e| LabError::os("open a packet socket on", what.clone(), e))?;
        Ok(Self { socket, what })
    }

    /// Sends `frame` (from its Ethernet header on).
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is live and as long as passed.
        let sent = unsafe { libc::send(self.socket.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if sent < 0 {
            return Err(LabError::os("send a frame on", self.what.clone(), std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
