//! Named network namespaces, created and removed the way `ip netns` does it.
//!
//! A namespace is made by a short-lived thread that `unshare(CLONE_NEWNET)`s and bind-mounts its
//! `/proc/thread-self/ns/net` onto `/run/netns/<name>`, so `ip netns exec <name> ...` can enter
//! it (that is how `--keep` lets a user reproduce an incident by hand). Removing it unmounts and
//! unlinks that file; the kernel destroys the namespace, and the veths in it, once nothing else
//! holds it.
//!
//! Namespaces are per thread: code runs inside one on a thread that `setns()`es first
//! ([`Netns::run`], [`Netns::spawn`]). Sockets, netlink sockets included, stay bound to the
//! namespace they were created in, so they can be used from any thread afterwards.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
    thread,
};

use crate::error::{LabError, Result};

/// Where named namespaces live (the `ip netns` convention).
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. Dropping it removes it, unless [`Netns::keep`] was called.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
    kept: bool,
}

impl Netns {
    /// Creates the namespace `name` (`ip netns add <name>`). Fails if it exists.
    pub fn create(name: &str) -> Result<Self> {
        let path = path_of(name);
        std::fs::create_dir_all(NETNS_DIR).map_err(|e| LabError::os("mkdir", NETNS_DIR, e))?;
        // O_EXCL: a name clash is an error, never a silent reuse of someone else's namespace.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| LabError::os("create", path.display().to_string(), e))?;
        let made = thread::scope(|s| s.spawn(|| unshare_and_bind(&path)).join())
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Self::open(name)
    }

    /// Opens the existing namespace `name`.
    pub fn open(name: &str) -> Result<Self> {
        let path = path_of(name);
        let file = File::open(&path).map_err(|e| LabError::os("open", path.display().to_string(), e))?;
        Ok(Self { name: name.to_owned(), file, kept: false })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a thread inside the namespace and returns its result (panics propagate).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a named thread inside the namespace running `f`.
    pub fn spawn<T: Send + 'static>(
        &self,
        thread_name: String,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let fd = self.file.try_clone().map_err(|e| LabError::os("dup", self.name.clone(), e))?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                setns(&fd, &name)?;
                Ok(f())
            })
            .map_err(|e| LabError::os("spawn thread in", self.name.clone(), e))
    }

    /// Moves the calling thread into the namespace (for the threads this module starts).
    fn enter(&self) -> Result<()> {
        setns(&self.file, &self.name)
    }

    /// Leaves the namespace in place when this value is dropped (`--keep`).
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// Removes the namespace now (`ip netns del <name>`), reporting failure.
    pub fn remove(mut self) -> Result<()> {
        self.kept = true; // Drop must not try again.
        remove_by_name(&self.name)
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.kept
            && let Err(e) = remove_by_name(&self.name)
        {
            tracing::warn!("leaving namespace {} behind: {e}", self.name);
        }
    }
}

/// The path of namespace `name`.
pub(crate) fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Names of every namespace in [`NETNS_DIR`].
pub fn list() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::os("read_dir", NETNS_DIR, e)),
    };
    Ok(entries.filter_map(|entry| entry.ok()?.file_name().into_string().ok()).collect())
}

/// Removes the namespace `name`: detaches its bind mount and unlinks the file.
pub(crate) fn remove_by_name(name: &str) -> Result<()> {
    let path = path_of(name);
    let c_path = c_path(&path)?;
    // SAFETY: c_path is a valid NUL-terminated path.
    if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (a half-made namespace); the file must still go.
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(LabError::os("umount", path.display().to_string(), err));
        }
    }
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(LabError::os("unlink", path.display().to_string(), e)),
        _ => Ok(()),
    }
}

fn unshare_and_bind(path: &Path) -> Result<()> {
    // SAFETY: unshare only affects this (short-lived) thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EPERM) {
            return Err(LabError::NotPrivileged("unshare(CLONE_NEWNET) was refused".into()));
        }
        return Err(LabError::os("unshare(CLONE_NEWNET) for", path.display().to_string(), err));
    }
    let source = c"/proc/thread-self/ns/net";
    let target = c_path(path)?;
    // SAFETY: both paths are valid NUL-terminated strings; no fs type or data for a bind mount.
    let rc =
        unsafe { libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) };
    if rc != 0 {
        return Err(LabError::last_os("mount --bind /proc/thread-self/ns/net", path.display().to_string()));
    }
    Ok(())
}

fn setns(file: &File, name: &str) -> Result<()> {
    // SAFETY: the fd is a valid namespace file; setns only affects the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::last_os("setns", name.to_owned()));
    }
    Ok(())
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| LabError::Path { what: "path contains NUL", path: path.to_owned() })
}
