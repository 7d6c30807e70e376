//! Fetches a Debian kernel series through the private apt configuration, extracts it, indexes
//! its modules and caches the result under `target/matrix/cache/kernels/<series>/`.
//!
//! Which packages: `linux-image-amd64` at the newest version of the series names the image
//! package. Before 7.x its `-unsigned` twin holds `vmlinuz` and the modules; from 7.x on the
//! image depends on `linux-binary-*`, `linux-modules-*` and `linux-base-*`, fetched together.
//! A cached kernel needs no network: `kernel.json`, written last, marks it complete.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    apt::{self, Apt},
    config::Kernel,
    modules::Index,
};
use crate::exec::exec;

const META_PACKAGE: &str = "linux-image-amd64";
const MARKER: &str = "kernel.json";

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Tree {
    /// The series (`6.1`).
    pub(crate) series: String,
    /// The Debian version (`6.1.192-2`).
    pub(crate) version: String,
    /// The kernel release (`6.1.0-56-amd64`).
    pub(crate) release: String,
    /// The image.
    pub(crate) vmlinuz: PathBuf,
    /// `.../lib/modules/<release>`.
    pub(crate) modules_dir: PathBuf,
}

/// The lazily prepared (and at most once updated) private apt.
pub(crate) struct AptState {
    dir: PathBuf,
    suites: Vec<String>,
    apt: Option<Apt>,
    updated: bool,
}

impl AptState {
    pub(crate) fn new(dir: PathBuf, suites: Vec<String>) -> Self {
        Self { dir, suites, apt: None, updated: false }
    }

    fn get(&mut self, say: &mut dyn FnMut(&str)) -> Result<&Apt> {
        if self.apt.is_none() {
            self.apt = Some(Apt::prepare(&self.dir, &self.suites)?);
        }
        if !self.updated {
            say("refreshing the private apt lists (apt-get update)");
            self.apt.as_ref().expect("set above").update()?;
            self.updated = true;
        }
        Ok(self.apt.as_ref().expect("set above"))
    }
}

/// Removes a directory on drop unless disarmed (partial downloads and extractions).
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// The cached kernel of `kernel.series`, fetching it first if needed.
pub(crate) fn ensure(cache: &Path, apt: &mut AptState, kernel: &Kernel, say: &mut dyn FnMut(&str)) -> Result<Tree> {
    let dir = cache.join("kernels").join(&kernel.series);
    if let Some(tree) = cached(&dir) {
        say(&format!("cached: Debian {} ({})", tree.version, tree.release));
        return Ok(tree);
    }
    let apt = apt.get(say)?;
    let versions = apt::parse_madison(&apt.madison(META_PACKAGE)?);
    let version = apt::newest_in_series(&versions, &kernel.series).with_context(|| {
        format!(
            "Debian has no {META_PACKAGE} of series {} in {} (versions seen: {})",
            kernel.series,
            kernel.suites.join(", "),
            versions.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(", ")
        )
    })?;
    let image = apt::depends(&apt.show(META_PACKAGE, &version)?)
        .into_iter()
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{META_PACKAGE} {version} depends on no linux-image-* package"))?;
    let abi = image.trim_start_matches("linux-image-").to_owned();
    let split: Vec<String> = apt::depends(&apt.show(&image, &version)?)
        .into_iter()
        .filter(|d| {
            ["linux-binary-", "linux-modules-", "linux-base-"].iter().any(|p| d.strip_prefix(p) == Some(abi.as_str()))
        })
        .collect();
    let packages = if split.is_empty() { vec![format!("{image}-unsigned")] } else { split };
    say(&format!("downloading Debian {version}: {}", packages.join(" ")));
    let debs = cache.join("debs").join(&kernel.series);
    let _ = fs::remove_dir_all(&debs);
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let debs_guard = Partial(Some(debs.clone()));
    let wanted: Vec<(String, String)> = packages.iter().map(|p| (p.clone(), version.clone())).collect();
    apt.download(&debs, &wanted)?;

    say("extracting and indexing modules");
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut tree_guard = Partial(Some(partial.clone()));
    let mut files: Vec<PathBuf> = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    files.sort();
    if files.len() != packages.len() {
        bail!("apt-get download left {} .deb files in {} for {} packages", files.len(), debs.display(), packages.len());
    }
    for deb in &files {
        exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))
            .with_context(|| format!("unpacking {} ({} free there)", deb.display(), free_space(&partial)))?;
    }
    let (release, modules_rel) = find_modules(&partial)?;
    let vmlinuz_rel = [PathBuf::from(format!("boot/vmlinuz-{release}")), modules_rel.join("vmlinuz")]
        .into_iter()
        .find(|p| partial.join(p).is_file())
        .with_context(|| format!("no vmlinuz for {release} in {}", partial.display()))?;
    let index = Index::load(&partial.join(&modules_rel))?;
    say(&format!("{} modules indexed", index.len()));
    fs::rename(&partial, &dir).with_context(|| format!("renaming {} to {}", partial.display(), dir.display()))?;
    tree_guard.0 = None;
    // The unpacked tree is the cache; the packages would only hold disk (the guard removes them).
    drop(debs_guard);
    let tree = Tree {
        series: kernel.series.clone(),
        version,
        release,
        vmlinuz: dir.join(vmlinuz_rel),
        modules_dir: dir.join(modules_rel),
    };
    fs::write(dir.join(MARKER), serde_json::to_string_pretty(&tree)?)
        .with_context(|| format!("writing {}", dir.join(MARKER).display()))?;
    Ok(tree)
}

/// Free space of the file system holding `path`, for errors (a full disk fails as "No space").
fn free_space(path: &Path) -> String {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statvfs is plain integers (all-zero is valid) and c_path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the kernel writes only into `st`.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    format!("{} MiB", st.f_bavail * st.f_frsize / (1 << 20))
}

fn cached(dir: &Path) -> Option<Tree> {
    let tree: Tree = serde_json::from_str(&fs::read_to_string(dir.join(MARKER)).ok()?).ok()?;
    (tree.vmlinuz.is_file() && tree.modules_dir.is_dir()).then_some(tree)
}

/// `(release, lib/modules/<release>)` of an extracted tree (usr-merged or not).
fn find_modules(root: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(root.join(base)) else {
            continue;
        };
        let mut releases: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("kernel").is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        releases.sort();
        if let Some(release) = releases.pop() {
            let rel = Path::new(base).join(&release);
            return Ok((release, rel));
        }
    }
    bail!("no lib/modules/<release>/kernel in {}", root.display())
}
