//! Builds the eBPF programs of `ebpf/programs` with aya-build and leaves one object per program
//! in `OUT_DIR`, where `src/bpf.rs` embeds them.
//!
//! The kernel side needs the pinned nightly (with rust-src) and bpf-linker; both come from
//! `cargo xtask setup`. When one is missing, this says so and names that command, instead of
//! letting the nested cargo fail somewhere less readable.
include!("../../ebpf/pins.rs");

use std::{path::PathBuf, process::Command};

fn main() -> anyhow::Result<()> {
    if let Err(missing) = check_tools() {
        anyhow::bail!("{missing}\nrun `cargo xtask setup` (it installs what the eBPF build needs)");
    }
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../ebpf/programs");
    let root = root.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path {root:?}"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "zrlab-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}

/// Fails with a readable line when bpf-linker or the eBPF toolchain is absent.
fn check_tools() -> Result<(), String> {
    // An explicit skip (AYA_BUILD_SKIP=1) is honoured by aya-build itself.
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        return Ok(());
    }
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(out) if out.status.success() => {}
        _ => {
            return Err(format!("bpf-linker {BPF_LINKER_VERSION} (built for LLVM {LLVM_MAJOR}) is not on PATH"));
        }
    }
    let toolchain = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .env("RUSTUP_AUTO_INSTALL", "0")
        .output();
    match toolchain {
        Ok(out) if out.status.success() => {
            let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let src = PathBuf::from(sysroot).join("lib/rustlib/src/rust/library");
            if !src.is_dir() {
                return Err(format!("toolchain {EBPF_TOOLCHAIN} lacks the rust-src component"));
            }
        }
        _ => return Err(format!("toolchain {EBPF_TOOLCHAIN} is not installed")),
    }
    Ok(())
}
