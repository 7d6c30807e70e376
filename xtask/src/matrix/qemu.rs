//! Boots a kernel under QEMU and watches its console.
//!
//! The guest's root is the host's (read-only 9p, tag `hostroot`) and the workspace is shared
//! read-write at its own path (tag `work`): the guest runs the host's binaries and leaves its
//! results in the run directory. The console (serial, on QEMU's stdout) is written to
//! `console.log` and watched for the init's step markers (progress), its verdict line, and the
//! kernel's panic and soft-lockup messages, which stop QEMU at once. A run past its time limit
//! is stopped too. QEMU dies with this process (`PR_SET_PDEATHSIG`) and on every error path.
//!
//! Acceleration: TCG (`-accel tcg,thread=multi -cpu max`) unless a probe shows KVM runs a
//! guest here ([`kvm_works`]); on these machines `/dev/kvm` is a paravirtual KVM on which QEMU
//! aborts, so TCG it is.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use zrlab_guest::{INIT_FAILURE, INIT_SUCCESS, STEP_MARKER};

use crate::exec::describe;

use super::initramfs::{ROOT_TAG, WORK_TAG};

const QEMU: &str = "qemu-system-x86_64";
/// Console lines that mean the guest kernel is gone or wedged.
const PANIC_MARKERS: &[&str] = &["Kernel panic", "soft lockup", "BUG: "];
/// `loglevel=4`: errors and worse reach `console.log`, so an OOM kill or a BPF splat is on record.
const KERNEL_ARGS: &str = "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic rdinit=/init";
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Accel {
    /// Binary translation, works everywhere.
    Tcg,
    /// Hardware virtualisation, where it works.
    Kvm,
}

impl Accel {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Tcg => "tcg",
            Self::Kvm => "kvm",
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Self::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
            Self::Kvm => ["-accel", "kvm", "-cpu", "host"],
        }
    }
}

/// The QEMU binary, or an error saying how to install it.
pub(crate) fn qemu() -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(QEMU))
        .find(|p| p.is_file())
        .with_context(|| format!("{QEMU} not found on PATH: `cargo xtask setup --matrix` installs qemu-system-x86"))
}

/// Kills and reaps QEMU when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn command(qemu: &Path, accel: Accel) -> Command {
    let mut cmd = Command::new(qemu);
    cmd.args(accel.args())
        .args(["-M", "pc", "-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-no-reboot", "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Whether KVM runs a guest here: a 64 KiB firmware whose reset vector writes `K` to the
/// serial port must print it within a few seconds.
pub(crate) fn kvm_works(qemu: &Path, scratch: &Path) -> bool {
    let Ok(kvm) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else {
        return false;
    };
    drop(kvm);
    let mut bios = vec![0u8; 64 * 1024];
    // At the reset vector (the image's last 16 bytes): mov dx,0x3f8; mov al,'K'; out dx,al;
    // mov al,'\n'; out dx,al; cli; hlt; jmp back to hlt.
    let code = [0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xb0, b'\n', 0xee, 0xfa, 0xf4, 0xeb, 0xfd];
    bios[0xfff0..0xfff0 + code.len()].copy_from_slice(&code);
    let path = scratch.join("kvm-probe.bin");
    if std::fs::write(&path, &bios).is_err() {
        return false;
    }
    let mut cmd = command(qemu, Accel::Kvm);
    cmd.args(["-m", "16", "-bios"]).arg(&path);
    let Ok(child) = cmd.spawn() else {
        return false;
    };
    let mut guard = Guard(child);
    let mut stdout = guard.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).is_ok_and(|n| n == 1) {
            if byte[0] == b'K' {
                let _ = tx.send(());
                return;
            }
        }
    });
    let works = rx.recv_timeout(KVM_PROBE_TIMEOUT).is_ok();
    drop(guard);
    let _ = std::fs::remove_file(&path);
    works
}

/// One boot.
pub(crate) struct Boot<'a> {
    pub(crate) qemu: &'a Path,
    pub(crate) accel: Accel,
    pub(crate) vmlinuz: &'a Path,
    pub(crate) initrd: &'a Path,
    pub(crate) workspace: &'a Path,
    pub(crate) memory: &'a str,
    pub(crate) cpus: u32,
    pub(crate) timeout: Duration,
    pub(crate) console_log: &'a Path,
    /// Stop with [`NO_SIGN_OF_LIFE`] when the console stays silent this long (KVM boots: a
    /// paravirtual KVM that runs the probe's firmware can still hang a Linux kernel silently).
    pub(crate) sign_of_life: Option<Duration>,
}

/// The error text of a boot stopped for a silent console (see [`Boot::sign_of_life`]).
pub(crate) const NO_SIGN_OF_LIFE: &str = "no sign of life on the console";

/// What the boot showed.
pub(crate) struct Booted {
    /// `Some(true)` on `init: success`, `Some(false)` on `init: failure`.
    pub(crate) verdict: Option<bool>,
    /// Seconds until the init started its first step.
    pub(crate) boot_s: Option<f64>,
}

enum Line {
    Console(String),
    Eof,
}

/// Boots, reports step progress through `say`, and returns once QEMU exits.
pub(crate) fn run(boot: &Boot<'_>, say: &mut dyn FnMut(&str)) -> Result<Booted> {
    let mut cmd = command(boot.qemu, boot.accel);
    cmd.args(["-m", boot.memory, "-smp", &boot.cpus.to_string()])
        .arg("-kernel")
        .arg(boot.vmlinuz)
        .arg("-initrd")
        .arg(boot.initrd)
        .args(["-append", KERNEL_ARGS])
        .arg("-fsdev")
        .arg("local,id=root,path=/,security_model=none,readonly=on,multidevs=remap")
        .arg("-device")
        .arg(format!("virtio-9p-pci,fsdev=root,mount_tag={ROOT_TAG}"))
        .arg("-fsdev")
        .arg(format!("local,id=work,path={},security_model=none,multidevs=remap", boot.workspace.display()))
        .arg("-device")
        .arg(format!("virtio-9p-pci,fsdev=work,mount_tag={WORK_TAG}"));
    let line = describe(&cmd);
    let child = cmd.spawn().with_context(|| format!("failed to run {line}"))?;
    let mut guard = Guard(child);
    let started = Instant::now();
    let stdout = guard.0.stdout.take().expect("piped");
    let mut stderr = guard.0.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Line::Eof);
                    return;
                }
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(Line::Console(text)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stderr_text = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut log = File::create(boot.console_log).with_context(|| format!("creating {}", boot.console_log.display()))?;
    let log_path = boot.console_log.display();
    let deadline = started + boot.timeout;
    let silent_until = boot.sign_of_life.map(|d| started + d);
    let mut heard = false;
    let mut booted = Booted { verdict: None, boot_s: None };
    loop {
        let until = match silent_until {
            Some(limit) if !heard => limit.min(deadline),
            _ => deadline,
        };
        let line = match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(Line::Console(line)) => line,
            Ok(Line::Eof) => break,
            Err(_) if !heard && silent_until.is_some_and(|limit| Instant::now() >= limit) => {
                drop(guard);
                bail!("{NO_SIGN_OF_LIFE} after {} s; QEMU stopped", started.elapsed().as_secs());
            }
            Err(_) => {
                drop(guard);
                bail!(
                    "the guest did not finish within {} s (hung?); QEMU stopped; console log: {log_path}",
                    boot.timeout.as_secs()
                );
            }
        };
        heard = true;
        writeln!(log, "{line}").context("writing the console log")?;
        if let Some(marker) = PANIC_MARKERS.iter().find(|m| line.contains(**m)) {
            drop(guard);
            bail!("the guest kernel reported {marker:?}: {line:?}; QEMU stopped; console log: {log_path}");
        }
        if let Some(step) = line.strip_prefix(STEP_MARKER) {
            if booted.boot_s.is_none() {
                booted.boot_s = Some(started.elapsed().as_secs_f64());
                say(&format!("booted in {:.1} s", started.elapsed().as_secs_f64()));
            }
            if !step.ends_with(" start") {
                say(step);
            }
        } else if line.starts_with(INIT_SUCCESS) {
            booted.verdict = Some(true);
        } else if line.starts_with(INIT_FAILURE) {
            booted.verdict = Some(false);
        } else if line.starts_with("init: ") {
            say(&line);
        }
    }
    let status = guard.0.wait().context("waiting for QEMU")?;
    let stderr_text = stderr_text.join().unwrap_or_default();
    if booted.verdict.is_none() {
        bail!(
            "the guest stopped without an init verdict (QEMU {status}{}); console log: {log_path}",
            if stderr_text.trim().is_empty() { String::new() } else { format!(": {}", stderr_text.trim()) }
        );
    }
    Ok(booted)
}
