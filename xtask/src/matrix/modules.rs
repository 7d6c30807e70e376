//! The modules of an extracted Debian kernel: an index (name to file), their dependencies read
//! from each module's `.modinfo` section, and their bytes, decompressed.
//!
//! No kmod is involved: the guest's init loads the files with `finit_module` in dependency
//! order, so the host needs neither `depmod` nor `modprobe`. Debian compresses modules with xz
//! (older releases ship them plain; zstd is handled too), decompressed with the `xz` and `zstd`
//! tools of `cargo xtask setup`.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{describe, output};

/// Module name (with `-` as `_`, as the kernel does) to file, relative to the modules dir.
#[derive(Debug, Default)]
pub(crate) struct Index {
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: Vec<String>,
}

const INDEX_FILE: &str = "zrlab-modules.index";

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let stem = ["ko", "ko.xz", "ko.zst", "ko.gz"].iter().find_map(|ext| name.strip_suffix(&format!(".{ext}")))?;
    Some(normalise(stem))
}

impl Index {
    /// Loads the index of `modules_dir` (`.../lib/modules/<release>`), building and caching it
    /// in that directory the first time.
    pub(crate) fn load(modules_dir: &Path) -> Result<Self> {
        let cached = modules_dir.join(INDEX_FILE);
        let mut files = BTreeMap::new();
        if let Ok(text) = fs::read_to_string(&cached) {
            for line in text.lines() {
                if let Some((name, path)) = line.split_once(' ') {
                    files.insert(name.to_owned(), PathBuf::from(path));
                }
            }
        } else {
            walk(modules_dir, modules_dir, &mut files)?;
            if files.is_empty() {
                bail!("no kernel modules under {}", modules_dir.display());
            }
            let text: String = files.iter().map(|(name, path)| format!("{name} {}\n", path.display())).collect();
            fs::write(&cached, text).with_context(|| format!("writing {}", cached.display()))?;
        }
        let builtin = fs::read_to_string(modules_dir.join("modules.builtin"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| module_name(Path::new(l)))
            .collect();
        Ok(Self { dir: modules_dir.to_path_buf(), files, builtin })
    }

    /// Number of modules indexed.
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// The modules to load for `wanted`, dependencies first, each once, decompressed. A wanted
    /// module that is built into the kernel is left out; one that is neither is an error.
    pub(crate) fn resolve(&self, wanted: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        let mut order = Vec::new();
        for name in wanted {
            self.visit(&normalise(name), &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<(String, Vec<u8>)>, stack: &mut Vec<String>) -> Result<()> {
        if order.iter().any(|(n, _)| n == name) {
            return Ok(());
        }
        if stack.iter().any(|n| n == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let Some(rel) = self.files.get(name) else {
            if self.builtin.iter().any(|b| b == name) {
                return Ok(());
            }
            bail!("kernel module {name} is neither in {} nor built in", self.dir.display());
        };
        let bytes = decompress(&self.dir.join(rel))?;
        let info = modinfo(&bytes).with_context(|| format!("reading .modinfo of {}", self.dir.join(rel).display()))?;
        stack.push(name.to_owned());
        for dep in info
            .iter()
            .filter_map(|kv| kv.strip_prefix("depends="))
            .flat_map(|d| d.split(','))
            .filter(|d| !d.is_empty())
        {
            self.visit(&normalise(dep), order, stack)?;
        }
        stack.pop();
        order.push((name.to_owned(), bytes));
        Ok(())
    }
}

fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(root, &path, files)?;
        } else if let Some(name) = module_name(&path) {
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            files.entry(name).or_insert(rel);
        }
    }
    Ok(())
}

/// A module file's bytes, decompressed by its extension.
fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    let Some(tool) = tool else {
        return fs::read(path).with_context(|| format!("reading {}", path.display()));
    };
    let mut cmd = Command::new(tool);
    cmd.args(["-d", "-c", "-q"]).arg(path);
    let out = output(&mut cmd)?;
    if !out.status.success() {
        bail!("{} failed ({}): {}", describe(&cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}

/// The `key=value` strings of an ELF64 little-endian module's `.modinfo` section.
pub(crate) fn modinfo(elf: &[u8]) -> Result<Vec<String>> {
    let u16_at =
        |o: usize| -> Result<u16> { Ok(u16::from_le_bytes(elf.get(o..o + 2).context("truncated ELF")?.try_into()?)) };
    let u32_at =
        |o: usize| -> Result<u32> { Ok(u32::from_le_bytes(elf.get(o..o + 4).context("truncated ELF")?.try_into()?)) };
    let u64_at =
        |o: usize| -> Result<u64> { Ok(u64::from_le_bytes(elf.get(o..o + 8).context("truncated ELF")?.try_into()?)) };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        bail!("not a little-endian ELF64 file");
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let section = |i: usize| -> Result<(u32, usize, usize)> {
        let base = shoff + i * shentsize;
        Ok((u32_at(base)?, u64_at(base + 0x18)? as usize, u64_at(base + 0x20)? as usize))
    };
    let (_, names_off, names_len) = section(shstrndx)?;
    let names = elf.get(names_off..names_off + names_len).context("section names out of bounds")?;
    for i in 0..shnum {
        let (name_off, off, len) = section(i)?;
        let name = names.get(name_off as usize..).and_then(|n| n.split(|b| *b == 0).next()).unwrap_or_default();
        if name == b".modinfo" {
            let data = elf.get(off..off + len).context(".modinfo out of bounds")?;
            return Ok(data
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect());
        }
    }
    bail!("no .modinfo section")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a section-name table and a `.modinfo` section.
    fn tiny_module(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, len: usize| {
            let mut s = vec![0u8; 64];
            s[..4].copy_from_slice(&name.to_le_bytes());
            s[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            s[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
            elf.extend_from_slice(&s);
        };
        sh(0, 0, 0);
        sh(1, shstr_off, shstr.len());
        sh(11, info_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo_and_resolves_dependencies_first() {
        let dir = std::env::temp_dir().join(format!("zrlab-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kernel/fs/9p")).unwrap();
        fs::create_dir_all(dir.join("kernel/net/9p")).unwrap();
        fs::write(dir.join("kernel/fs/9p/9p.ko"), tiny_module(b"license=GPL\0depends=9pnet,netfs\0name=9p\0")).unwrap();
        fs::write(dir.join("kernel/net/9p/9pnet.ko"), tiny_module(b"depends=\0name=9pnet\0")).unwrap();
        fs::write(dir.join("kernel/net/9p/9pnet_virtio.ko"), tiny_module(b"depends=9pnet,virtio-ring\0")).unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/drivers/virtio/virtio_ring.ko\nkernel/fs/netfs/netfs.ko\n")
            .unwrap();
        let index = Index::load(&dir).unwrap();
        assert_eq!(index.len(), 3);
        let order: Vec<String> = index.resolve(&["9pnet_virtio", "9p"]).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["9pnet", "9pnet_virtio", "9p"]);
        assert!(index.resolve(&["veth"]).is_err());
        // The cached index gives the same answer.
        assert_eq!(Index::load(&dir).unwrap().len(), 3);
        assert_eq!(modinfo(&tiny_module(b"a=1\0b=2\0")).unwrap(), ["a=1", "b=2"]);
        assert!(modinfo(b"not an elf").is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
