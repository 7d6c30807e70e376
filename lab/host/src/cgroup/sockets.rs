//! Sockets that belong to a cgroup the calling process is not in.
//!
//! cgroup-attached BPF programs (sock_ops among them) act on a socket according to the cgroup of
//! the task that *created* it, for the socket's whole life. The lab's client flows run on a
//! thread of the `zrlab` process, which must stay outside the lab's cgroups (removing a run's
//! cgroup kills everything inside it). So a short-lived child is forked into the cgroup, creates
//! the sockets there and hands them back over a Unix socket (`SCM_RIGHTS`): the sockets are the
//! cgroup's, the process using them is not. The child inherits the calling thread's network
//! namespace, so call this from a thread inside the node's namespace.
//!
//! Between `fork` and `_exit` the child makes only async-signal-safe system calls on memory
//! prepared before the fork (the parent is multi-threaded).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

/// Sockets handed over per message (the kernel's limit is 253 descriptors per `SCM_RIGHTS`).
const BATCH: usize = 128;

/// Creates `count` sockets of `domain`/`kind` (`libc::AF_INET`, `libc::SOCK_STREAM`, ...) as a
/// member of the cgroup v2 directory `cgroup`, in the calling thread's network namespace.
pub fn sockets_in(cgroup: &Path, domain: i32, kind: i32, count: usize) -> io::Result<Vec<OwnedFd>> {
    let procs = CString::new(cgroup.join("cgroup.procs").into_os_string().into_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cgroup path contains NUL"))?;
    let mut pair = [0 as RawFd; 2];
    // SAFETY: `pair` has room for the two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, pair.as_mut_ptr()) } != 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors, owned from here on.
    let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // The child's message buffer, allocated before the fork.
    let space = unsafe { libc::CMSG_SPACE((BATCH * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];

    // SAFETY: the child only runs `child` (async-signal-safe calls) and `_exit`s.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: in the child; see `child`.
        unsafe { child(&procs, theirs.as_raw_fd(), domain, kind, count, &mut control) };
    }
    drop(theirs);
    let received = receive(&ours, count);
    let mut status = 0;
    // SAFETY: `pid` is our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let fds = received?;
    if fds.len() != count {
        let errno = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 0 };
        let cause =
            if errno > 0 { io::Error::from_raw_os_error(errno).to_string() } else { format!("status {status}") };
        return Err(io::Error::other(format!(
            "a helper in cgroup {} made {} of {count} sockets: {cause}",
            cgroup.display(),
            fds.len()
        )));
    }
    Ok(fds)
}

/// The child: join the cgroup, make the sockets, send them in batches, exit with 0 or errno.
///
/// # Safety
/// Only to be called in a freshly forked child; never returns.
unsafe fn child(procs: &CString, to: RawFd, domain: i32, kind: i32, count: usize, control: &mut [u8]) -> ! {
    let fail = || -> ! {
        // SAFETY: errno location and _exit are async-signal-safe.
        unsafe { libc::_exit(*libc::__errno_location()) }
    };
    // SAFETY: plain system calls on prepared memory.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        // Writing "0" to cgroup.procs moves the writer itself.
        if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            fail();
        }
        libc::close(fd);
        let mut left = count;
        let mut batch = [0 as RawFd; BATCH];
        while left > 0 {
            let n = left.min(BATCH);
            for slot in batch.iter_mut().take(n) {
                *slot = libc::socket(domain, kind | libc::SOCK_CLOEXEC, 0);
                if *slot < 0 {
                    fail();
                }
            }
            let mut byte = 0u8;
            let mut iov = libc::iovec { iov_base: (&raw mut byte).cast(), iov_len: 1 };
            let mut msg: libc::msghdr = core::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE((n * size_of::<RawFd>()) as u32) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((n * size_of::<RawFd>()) as u32) as _;
            core::ptr::copy_nonoverlapping(batch.as_ptr(), libc::CMSG_DATA(cmsg).cast::<RawFd>(), n);
            if libc::sendmsg(to, &msg, libc::MSG_NOSIGNAL) != 1 {
                fail();
            }
            for fd in batch.iter().take(n) {
                libc::close(*fd);
            }
            left -= n;
        }
        libc::_exit(0)
    }
}

/// Receives descriptors until `count` arrived or the child hung up.
fn receive(from: &OwnedFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let space = unsafe { libc::CMSG_SPACE((BATCH * size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let mut byte = 0u8;
        let mut iov = libc::iovec { iov_base: (&raw mut byte).cast(), iov_len: 1 };
        // SAFETY: zeroed msghdr is a valid empty header; the buffers outlive the call.
        let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        // SAFETY: as above.
        let got = unsafe { libc::recvmsg(from.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if got < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if got == 0 {
            break;
        }
        // SAFETY: walking the control messages the kernel wrote into `control`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                    for i in 0..bytes / size_of::<RawFd>() {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
    }
    Ok(fds)
}
