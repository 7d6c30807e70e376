//! Holding many sockets at once without the open-file limit of this process.
//!
//! The 443 patterns need up to 24,000 sockets open together, but a process may not be allowed
//! more than its hard `RLIMIT_NOFILE` (20,000 on these machines, and raising it needs
//! `CAP_SYS_RESOURCE`). So the sockets live in helper processes, at most
//! [`PER_PROCESS`] each: every helper is forked from the calling thread (so it shares that
//! thread's network namespace), creates and binds its sockets in the `pre_exec` hook with
//! nothing but system calls, then executes `sleep infinity`, which keeps the inherited
//! descriptors open. Dropping the [`Holder`] kills the helpers, which closes their sockets.
//!
//! Helpers get `PR_SET_PDEATHSIG=SIGKILL`, as the lab's services do: a benchmark, probe or test
//! killed mid-run (SIGKILL included) takes its helpers along, so no `sleep` keeps a removed
//! namespace alive behind its sockets. The signal follows the thread that forked them, which
//! here is the thread that also uses and drops them.

use std::{
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use socket2::SockAddr;

use crate::port443::sockets::Flags;
use zrlab_host::error::{LabError, Result};

/// Sockets per helper process (below any plausible hard limit of open files).
pub(crate) const PER_PROCESS: usize = 8_000;

/// Helper processes holding bound (and perhaps listening) sockets.
pub(crate) struct Holder {
    children: Vec<Child>,
}

impl Holder {
    /// Binds one TCP socket per address of `addrs` with `flags`, listening if `listen`, in the
    /// calling thread's network namespace.
    pub(super) fn spawn(addrs: &[SocketAddr], flags: Flags, listen: bool) -> Result<Self> {
        let mut holder = Self { children: Vec::new() };
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        for chunk in addrs.chunks(PER_PROCESS) {
            let addrs: Vec<SockAddr> = chunk.iter().map(|a| SockAddr::from(*a)).collect();
            let mut cmd = Command::new("sleep");
            cmd.arg("infinity").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            // SAFETY: the hook only makes system calls (prctl, getppid, socket, setsockopt,
            // bind, listen) on data prepared before the fork; it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // The parent may have died before prctl: then nobody would kill us.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    for addr in &addrs {
                        bind_raw(addr, flags, listen)?;
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(|e| {
                LabError::os("bind sockets in a helper process", format!("{} sockets on port 443", chunk.len()), e)
            })?;
            holder.children.push(child);
        }
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One socket: created, flagged, bound, perhaps listening; left open (no close-on-exec).
fn bind_raw(addr: &SockAddr, flags: Flags, listen: bool) -> std::io::Result<()> {
    let family = i32::from(addr.family());
    // SAFETY: plain system calls on a descriptor this function owns; `addr` outlives them.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let on: libc::c_int = 1;
        let set =
            |level, name| libc::setsockopt(fd, level, name, (&raw const on).cast(), size_of::<libc::c_int>() as u32);
        if flags.reuseport && set(libc::SOL_SOCKET, libc::SO_REUSEPORT) != 0
            || flags.reuseaddr && set(libc::SOL_SOCKET, libc::SO_REUSEADDR) != 0
            || flags.freebind && set(libc::SOL_IP, libc::IP_FREEBIND) != 0
            || libc::bind(fd, addr.as_ptr().cast(), addr.len()) != 0
            || listen && libc::listen(fd, 64) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
