//! The initramfs's configuration (`/boot.conf`), written by the host next to the init:
//!
//! ```text
//! module /modules/virtio_pci.ko
//! module /modules/9p.ko
//! root hostroot
//! share work /home/me/zrlab
//! plan /home/me/zrlab/target/matrix/runs/6.1/plan.txt
//! ```
//!
//! Modules load in the order given (dependencies first). `root` is the 9p mount tag of the
//! host's root file system, mounted read-only as the guest's root; each `share TAG PATH` is a
//! read-write 9p export mounted at the same `PATH` inside it; `plan` is read after the switch.

use std::path::PathBuf;

/// Path of the configuration inside the initramfs.
pub const CONFIG_PATH: &str = "/boot.conf";

/// What the init does before running the plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    /// Module files inside the initramfs, in load order.
    pub modules: Vec<PathBuf>,
    /// 9p tag of the read-only root.
    pub root_tag: String,
    /// Read-write 9p shares: (tag, mount point inside the new root).
    pub shares: Vec<(String, PathBuf)>,
    /// The plan, as a path inside the new root.
    pub plan: PathBuf,
}

impl BootConfig {
    /// The configuration as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for module in &self.modules {
            out.push_str(&format!("module {}\n", module.display()));
        }
        out.push_str(&format!("root {}\n", self.root_tag));
        for (tag, path) in &self.shares {
            out.push_str(&format!("share {tag} {}\n", path.display()));
        }
        out.push_str(&format!("plan {}\n", self.plan.display()));
        out
    }

    /// Reads the configuration.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut config = Self::default();
        for (i, line) in text.lines().enumerate() {
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "module" => config.modules.push(value.into()),
                "root" => config.root_tag = value.into(),
                "share" => {
                    let (tag, path) =
                        value.split_once(' ').ok_or_else(|| format!("line {}: share needs TAG PATH", i + 1))?;
                    config.shares.push((tag.into(), path.into()));
                }
                "plan" => config.plan = value.into(),
                "" => {}
                other => return Err(format!("line {}: unknown key {other:?}", i + 1)),
            }
        }
        if config.root_tag.is_empty() || config.plan.as_os_str().is_empty() {
            return Err("`root` and `plan` are required".into());
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let config = BootConfig {
            modules: vec!["/modules/virtio_pci.ko".into(), "/modules/9p.ko".into()],
            root_tag: "hostroot".into(),
            shares: vec![("work".into(), "/home/me/zr lab".into())],
            plan: "/home/me/zr lab/target/plan.txt".into(),
        };
        assert_eq!(BootConfig::parse(&config.render()).unwrap(), config);
        assert!(BootConfig::parse("module /a\n").is_err());
    }
}
