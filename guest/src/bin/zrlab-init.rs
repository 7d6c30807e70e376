//! `zrlab-init`: PID 1 of the kernel matrix's initramfs (linked statically).
//!
//! 1. mounts `/proc`, `/sys`, `/dev`; loads the modules of `/boot.conf` (9p, virtio, veth);
//! 2. mounts the host's root file system read-only over 9p at `/newroot`, then inside it fresh
//!    `proc`, `sysfs`, `devtmpfs`, `devpts`, tmpfs on `/tmp` and `/run` (so `/run/netns` is
//!    writable), cgroup v2 on `/sys/fs/cgroup`, bpffs on `/sys/fs/bpf`, and the read-write
//!    shares (the workspace, where results go);
//! 3. switches root with `chroot`, brings `lo` up, and runs the plan with
//!    [`zrlab_guest::runner`] (reaping orphans, as PID 1 must);
//! 4. prints `init: success` or `init: failure`, syncs, and powers off.
//!
//! There is no shell and no busybox: everything the steps run comes from the host's root.

use std::{
    ffi::CString,
    fs,
    io::{self, Write as _},
    os::fd::AsRawFd as _,
    path::Path,
};

use zrlab_guest::{
    INIT_FAILURE, INIT_SUCCESS, STEP_MARKER,
    boot::{BootConfig, CONFIG_PATH},
    plan::Plan,
    runner::{self, Event},
};

const NEWROOT: &str = "/newroot";
const NINEP_OPTS: &str = "trans=virtio,version=9p2000.L,msize=512000";

fn main() {
    let verdict = match boot_and_run() {
        Ok(true) => INIT_SUCCESS,
        Ok(false) => INIT_FAILURE,
        Err(e) => {
            println!("init: error: {e}");
            INIT_FAILURE
        }
    };
    println!("{verdict}");
    let _ = io::stdout().flush();
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Not reached unless reboot failed (not PID 1, or not root).
    std::process::exit(1);
}

fn boot_and_run() -> Result<bool, String> {
    mount("proc", "/proc", "proc", 0, "")?;
    mount("sysfs", "/sys", "sysfs", 0, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    let config = fs::read_to_string(CONFIG_PATH).map_err(|e| format!("{CONFIG_PATH}: {e}"))?;
    let config = BootConfig::parse(&config)?;
    for module in &config.modules {
        load_module(module)?;
    }
    fs::create_dir_all(NEWROOT).map_err(|e| format!("mkdir {NEWROOT}: {e}"))?;
    mount(&config.root_tag, NEWROOT, "9p", libc::MS_RDONLY, &format!("{NINEP_OPTS},cache=loose"))?;
    let inside = |p: &str| format!("{NEWROOT}{p}");
    mount("proc", &inside("/proc"), "proc", 0, "")?;
    mount("sysfs", &inside("/sys"), "sysfs", 0, "")?;
    mount("devtmpfs", &inside("/dev"), "devtmpfs", 0, "")?;
    mount("tmpfs", &inside("/tmp"), "tmpfs", 0, "mode=1777")?;
    mount("tmpfs", &inside("/run"), "tmpfs", 0, "mode=755")?;
    mount("cgroup2", &inside("/sys/fs/cgroup"), "cgroup2", 0, "")?;
    mount("bpf", &inside("/sys/fs/bpf"), "bpf", 0, "")?;
    // Conveniences a test may use; their absence is not fatal.
    let _ = fs::create_dir_all(inside("/dev/pts"));
    let _ = mount("devpts", &inside("/dev/pts"), "devpts", 0, "");
    let _ = fs::create_dir_all(inside("/dev/shm"));
    let _ = mount("tmpfs", &inside("/dev/shm"), "tmpfs", 0, "mode=1777");
    let _ = mount("debugfs", &inside("/sys/kernel/debug"), "debugfs", 0, "");
    let _ = mount("tracefs", &inside("/sys/kernel/tracing"), "tracefs", 0, "");
    for (tag, path) in &config.shares {
        let target = inside(&path.to_string_lossy());
        // A share under /tmp or /run (a workspace cloned to /tmp) needs its mount point made in
        // the fresh tmpfs; elsewhere it exists on the host's root already.
        let _ = fs::create_dir_all(&target);
        mount(tag, &target, "9p", 0, &format!("{NINEP_OPTS},cache=none"))?;
    }
    let root = CString::new(NEWROOT).expect("no NUL");
    // SAFETY: valid C strings; chroot/chdir have no other preconditions.
    unsafe {
        if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(format!("chroot {NEWROOT}: {}", io::Error::last_os_error()));
        }
    }
    loopback_up()?;
    raise_limits()?;
    let plan_text =
        fs::read_to_string(&config.plan).map_err(|e| format!("reading the plan {}: {e}", config.plan.display()))?;
    let plan = Plan::parse(&plan_text).map_err(|e| e.to_string())?;
    let results = runner::run(&plan, runner::Options { reap_orphans: true }, |event| match event {
        Event::Start(step) => println!("{STEP_MARKER}{} start", step.name),
        Event::Done(result) => {
            println!("{STEP_MARKER}{} {} ({:.1} s)", result.name, result.outcome, result.secs)
        }
    })
    .map_err(|e| format!("running the plan: {e}"))?;
    Ok(results.iter().all(|r| r.ok()))
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<(), String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("NUL in {s:?}"));
    let (src, tgt, fs, dat) = (c(source)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: valid C strings that outlive the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, dat.as_ptr().cast()) };
    if rc != 0 {
        return Err(format!("mount -t {fstype} {source} {target}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// `insmod`: `finit_module` on the (uncompressed) file; a module already there is fine.
fn load_module(path: &Path) -> Result<(), String> {
    let file = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    // SAFETY: a valid fd and an empty NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), c"".as_ptr(), 0) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("loading module {}: {e}", path.display()));
        }
    }
    Ok(())
}

/// The kernel gives PID 1 `RLIMIT_NOFILE` 1024/4096 and a small `RLIMIT_MEMLOCK`; the host's
/// login session has more. The 443 patterns hold 8,000 sockets per helper process and kernels
/// before 5.11 charge BPF maps to memlock, so raise both (root may) for every step.
fn raise_limits() -> Result<(), String> {
    for (resource, name, value) in
        [(libc::RLIMIT_NOFILE, "RLIMIT_NOFILE", 65_536), (libc::RLIMIT_MEMLOCK, "RLIMIT_MEMLOCK", libc::RLIM_INFINITY)]
    {
        let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(format!("setrlimit {name}: {}", io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// `ip link set lo up` in the guest's initial namespace, through `SIOCSIFFLAGS`.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq that names `lo`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", io::Error::last_os_error()));
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let mut rc = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if rc == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            rc = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(format!("bringing lo up: {err}"));
        }
    }
    Ok(())
}
