//! A writer for the `newc` cpio format, the one the kernel unpacks as an initramfs
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`), and a reader for tests.
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes; `TRAILER!!!` ends
//! the archive. The kernel takes the archive uncompressed, so none is applied.

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// An archive being written.
pub(crate) struct Writer {
    buf: Vec<u8>,
    next_ino: u32,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Self { buf: Vec::new(), next_ino: 1 }
    }

    /// A directory (parents must come first).
    pub(crate) fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[]);
    }

    /// A regular file.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, (0, 0), data);
    }

    /// A character device node.
    pub(crate) fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, (0, 0), &[]);
        self.buf
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let name = name.trim_start_matches('/');
        let name = if name.is_empty() { "." } else { name };
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed, so the same inputs give the same bytes
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.buf.extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
}

/// One entry read back.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) name: String,
    pub(crate) mode: u32,
    pub(crate) rdev: (u32, u32),
    pub(crate) data: Vec<u8>,
}

/// Reads a newc archive up to its trailer.
#[cfg(test)]
pub(crate) fn read(mut bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        if bytes.len() < 110 || &bytes[..6] != MAGIC.as_bytes() {
            return Err(format!("bad header at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let text = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(text, 16).map_err(|e| e.to_string())
        };
        let (mode, size, namesize) = (field(1)?, field(6)? as usize, field(11)? as usize);
        let rdev = (field(9)?, field(10)?);
        let name_end = 110 + namesize;
        let name = std::str::from_utf8(&bytes[110..name_end - 1]).map_err(|e| e.to_string())?.to_owned();
        let data_start = align(name_end);
        let data = bytes[data_start..data_start + size].to_vec();
        let next = align(data_start + size);
        offset += next;
        bytes = &bytes[next..];
        if name == TRAILER {
            return Ok(entries);
        }
        entries.push(Entry { name, mode, rdev, data });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.dir("/");
        w.dir("/dev");
        w.char_dev("/dev/console", 0o600, 5, 1);
        w.file("/init", 0o755, b"\x7fELF...");
        w.file("/boot.conf", 0o644, b"root hostroot\n");
        w.file("/empty", 0o644, b"");
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        let entries = read(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, [".", "dev", "dev/console", "init", "boot.conf", "empty"]);
        assert_eq!(entries[2].mode, S_IFCHR | 0o600);
        assert_eq!(entries[2].rdev, (5, 1));
        assert_eq!(entries[3].mode, S_IFREG | 0o755);
        assert_eq!(entries[3].data, b"\x7fELF...");
        assert_eq!(entries[4].data, b"root hostroot\n");
        assert_eq!(entries[1].mode, S_IFDIR | 0o755);
    }

    #[test]
    fn header_layout_matches_the_format() {
        let mut w = Writer::new();
        w.file("a", 0o644, b"xyz");
        let bytes = w.finish();
        // magic, ino 1, mode 0100644, uid, gid, nlink 1, mtime, size 3, ..., namesize 2.
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(
            header,
            "07070100000001000081a4000000000000000000000001000000000000000300000000\
             00000000000000000000000000000002\
             00000000"
        );
        // Name "a\0" ends at 112 (aligned), data "xyz" padded to 116.
        assert_eq!(&bytes[110..116], b"a\0xyz\0");
    }
}
