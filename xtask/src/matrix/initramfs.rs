//! The initramfs, built in Rust: the static `zrlab-init` as `/init`, its `/boot.conf`, the
//! modules it loads (9p over virtio, and veth for the lab), and the two device nodes the
//! kernel and Rust's runtime need before `/dev` is mounted.

use std::path::Path;

use anyhow::{Context as _, Result};
use zrlab_guest::boot::{BootConfig, CONFIG_PATH};

use super::{cpio, modules::Index};

/// Modules the guest needs, by name (dependencies are added). 9p and its virtio transport
/// mount the host's file systems; veth is the lab's only link type and a module on Debian.
pub(crate) const MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "veth"];

/// The 9p tag of the host root.
pub(crate) const ROOT_TAG: &str = "hostroot";
/// The 9p tag of the workspace.
pub(crate) const WORK_TAG: &str = "work";

/// Builds the archive for a kernel's modules, with the plan at `plan` (a path the guest sees).
pub(crate) fn build(init: &Path, modules: &Index, workspace: &Path, plan: &Path) -> Result<Vec<u8>> {
    let init = std::fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    let resolved = modules.resolve(MODULES)?;
    let mut w = cpio::Writer::new();
    for dir in ["/", "/dev", "/proc", "/sys", "/newroot", "/modules"] {
        w.dir(dir);
    }
    w.char_dev("/dev/console", 0o600, 5, 1);
    w.char_dev("/dev/null", 0o666, 1, 3);
    let mut config = BootConfig {
        root_tag: ROOT_TAG.into(),
        shares: vec![(WORK_TAG.into(), workspace.to_path_buf())],
        plan: plan.to_path_buf(),
        ..BootConfig::default()
    };
    for (name, bytes) in &resolved {
        let path = format!("/modules/{name}.ko");
        w.file(&path, 0o644, bytes);
        config.modules.push(path.into());
    }
    w.file(CONFIG_PATH, 0o644, config.render().as_bytes());
    w.file("/init", 0o755, &init);
    Ok(w.finish())
}
