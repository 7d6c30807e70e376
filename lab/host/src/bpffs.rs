//! A bpffs that only one thread sees, for as long as that thread runs: where two versions of a
//! program hand maps over by pinning (the only way aya's loader reuses a map), without a pin
//! in the machine's bpffs.
//!
//! The thread `unshare(CLONE_NEWNS)`s (a thread may: it gets a copy of the process's
//! filesystem context), makes every mount private to its new namespace, and mounts a fresh bpf
//! filesystem over `/sys/fs/bpf`. Nothing it pins there is visible to anyone else, and nothing
//! outlives it: when the thread ends, its mount namespace goes, the bpffs instance with it, and
//! the kernel drops the pins' references (the maps live on as long as programs or fds hold
//! them). A process killed mid-way leaves nothing behind either.

use std::{ffi::CString, io, path::Path, thread};

use crate::error::{LabError, Result};

/// Where the private bpffs is mounted (inside the thread's own mount namespace only).
const MOUNT_POINT: &str = "/sys/fs/bpf";

/// Runs `f` on a thread with a private, empty bpffs mounted at the directory it is given.
pub fn with_private<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> Result<T> {
    thread::scope(|s| {
        s.spawn(|| {
            private_bpffs()?;
            Ok(f(Path::new(MOUNT_POINT)))
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn private_bpffs() -> Result<()> {
    // SAFETY: plain system calls with valid, NUL-terminated arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(LabError::os("unshare", "a mount namespace for a private bpffs", io::Error::last_os_error()));
    }
    let root = CString::new("/").expect("no NUL");
    // SAFETY: as above; a NULL source and type are what MS_PRIVATE takes.
    let private = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if private != 0 {
        return Err(LabError::os(
            "make private",
            "the mounts of a private mount namespace",
            io::Error::last_os_error(),
        ));
    }
    let (source, target) = (CString::new("bpf").expect("no NUL"), CString::new(MOUNT_POINT).expect("no NUL"));
    // SAFETY: as above.
    let mounted = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if mounted != 0 {
        return Err(LabError::os("mount a private bpffs on", MOUNT_POINT, io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory made in the private bpffs is there for its thread, and not for another
    /// thread of the process while it exists, nor after.
    #[test]
    fn the_private_bpffs_is_seen_by_its_thread_alone() {
        let probe = Path::new(MOUNT_POINT).join("zrlab-private-probe");
        let (made, seen) = std::sync::mpsc::channel();
        let (checked, wait) = std::sync::mpsc::channel::<()>();
        let seen_outside = thread::scope(|s| {
            let private = s.spawn(move || {
                with_private(move |dir| {
                    std::fs::create_dir(dir.join("zrlab-private-probe")).expect("mkdir in the private bpffs");
                    made.send(dir.join("zrlab-private-probe").is_dir()).expect("send");
                    wait.recv().expect("recv");
                })
            });
            let seen_inside = seen.recv().expect("recv");
            let seen_outside = probe.exists();
            checked.send(()).expect("send");
            private.join().expect("thread").expect("private bpffs");
            assert!(seen_inside);
            seen_outside
        });
        assert!(!seen_outside);
        assert!(!probe.exists());
    }
}
