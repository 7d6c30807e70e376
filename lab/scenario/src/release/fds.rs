//! Taking a socket out of another process: `pidfd_open(2)` and `pidfd_getfd(2)` (5.6+).
//!
//! A release's dispatcher lives in the lab, not in the service: the service announces its
//! sockets' descriptor numbers (`workload::phase::Sockets`), and the lab duplicates them into
//! its own table to put them into the dispatcher's socket map. The copies refer to the same
//! sockets (as `SCM_RIGHTS` would give them), so the dispatcher sees exactly the sockets the
//! service serves.

use std::os::fd::{FromRawFd as _, OwnedFd};

use zrlab_host::error::{LabError, Result};

/// A duplicate of descriptor `fd` of process `pid`.
pub(super) fn take(pid: u32, fd: i32) -> Result<OwnedFd> {
    let what = || format!("descriptor {fd} of process {pid}");
    // SAFETY: plain system calls; the returned descriptors are new and owned here.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(LabError::os("pidfd_open", what(), std::io::Error::last_os_error()));
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0);
        if copy < 0 {
            return Err(LabError::os("pidfd_getfd", what(), std::io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}
