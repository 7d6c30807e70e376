//! A private apt configuration for fetching Debian kernels, leaving the system's apt untouched.
//!
//! Everything lives under `target/matrix/cache/apt/`: its own `apt.conf` (with
//! `Dir::Etc::parts` pointing at an empty directory, so the machine's `apt.conf.d` snippets do
//! not apply), its own `sources.list`, package lists, an empty dpkg status. The sources are
//! derived from the machine's own: the archive URIs (and keyring) of its deb822
//! `/etc/apt/sources.list.d/*.sources` or one-line `/etc/apt/sources.list`, combined with the
//! suites that `ci/kernels.toml` names. No host name is written in the project.

use std::{
    cmp::Ordering,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::exec::{describe, exec, output};

const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const SYSTEM_SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const SYSTEM_SOURCES_LIST: &str = "/etc/apt/sources.list";

/// One `deb` source of the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Source {
    pub(crate) uri: String,
    pub(crate) suites: Vec<String>,
    pub(crate) signed_by: Option<String>,
}

/// The archives to use: the main one and, if the machine has one, the security one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Archives {
    pub(crate) main: String,
    pub(crate) security: Option<String>,
    pub(crate) keyring: String,
}

/// Parses deb822 `.sources` text (`Types`, `URIs`, `Suites`, `Signed-By` stanzas).
pub(crate) fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let mut types = Vec::new();
        let mut uris = Vec::new();
        let mut suites = Vec::new();
        let mut signed_by = None;
        for line in stanza.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let words = || value.split_whitespace().map(str::to_owned);
            match key.trim().to_ascii_lowercase().as_str() {
                "types" => types.extend(words()),
                "uris" => uris.extend(words()),
                "suites" => suites.extend(words()),
                "signed-by" => signed_by = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        if types.iter().any(|t| t == "deb") {
            for uri in uris {
                sources.push(Source {
                    uri,
                    suites: suites.clone(),
                    signed_by: signed_by.clone().filter(|s| !s.is_empty()),
                });
            }
        }
    }
    sources
}

/// Parses one-line `sources.list` text (`deb [options] URI SUITE COMPONENTS...`).
pub(crate) fn parse_one_line(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, after)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts.split_whitespace().find_map(|o| o.strip_prefix("signed-by=").map(str::to_owned));
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(Source { uri: uri.to_owned(), suites: vec![suite.to_owned()], signed_by });
        }
    }
    sources
}

/// Picks the main and security archives among the machine's sources.
pub(crate) fn archives(sources: &[Source]) -> Result<Archives> {
    let is_security = |s: &Source| s.suites.iter().any(|suite| suite.ends_with("-security"));
    let main = sources.iter().find(|s| !is_security(s)).context("no Debian archive among the machine's apt sources")?;
    let security = sources.iter().find(|s| is_security(s));
    let keyring = main.signed_by.clone().filter(|k| k.starts_with('/')).unwrap_or_else(|| DEFAULT_KEYRING.to_owned());
    Ok(Archives { main: main.uri.clone(), security: security.map(|s| s.uri.clone()), keyring })
}

/// The machine's sources, read from the system's apt configuration files (read only).
pub(crate) fn system_sources() -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if let Ok(dir) = fs::read_dir(SYSTEM_SOURCES_DIR) {
        let mut files: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            if file.extension().is_some_and(|x| x == "sources") {
                let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                sources.extend(parse_deb822(&text));
            } else if file.extension().is_some_and(|x| x == "list") {
                let text = fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                sources.extend(parse_one_line(&text));
            }
        }
    }
    if let Ok(text) = fs::read_to_string(SYSTEM_SOURCES_LIST) {
        sources.extend(parse_one_line(&text));
    }
    Ok(sources)
}

/// The private configuration's `sources.list`: every wanted suite, from the right archive.
pub(crate) fn sources_list(archives: &Archives, suites: &[String]) -> String {
    let mut out = String::new();
    for suite in suites {
        let uri = match (&archives.security, suite.ends_with("-security")) {
            (Some(security), true) => security,
            (None, true) => continue,
            _ => &archives.main,
        };
        out.push_str(&format!("deb [signed-by={}] {uri} {suite} main\n", archives.keyring));
    }
    out
}

/// The private apt configuration.
pub(crate) struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// Writes (or rewrites) the configuration under `dir` for `suites`.
    pub(crate) fn prepare(dir: &Path, suites: &[String]) -> Result<Self> {
        let archives = archives(&system_sources()?)?;
        for sub in
            ["etc/apt.conf.d", "etc/sources.list.d", "etc/preferences.d", "lists/partial", "cache/archives/partial"]
        {
            fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "").with_context(|| format!("writing {}", status.display()))?;
        }
        let list = sources_list(&archives, suites);
        write_if_changed(&dir.join("etc/sources.list"), &list)?;
        let d = dir.display();
        let conf = format!(
            "Dir::Etc::main \"{d}/etc/apt.conf\";\n\
             Dir::Etc::parts \"{d}/etc/apt.conf.d\";\n\
             Dir::Etc::sourcelist \"{d}/etc/sources.list\";\n\
             Dir::Etc::sourceparts \"{d}/etc/sources.list.d\";\n\
             Dir::Etc::preferencesparts \"{d}/etc/preferences.d\";\n\
             Dir::State::Lists \"{d}/lists\";\n\
             Dir::State::status \"{d}/status\";\n\
             Dir::Cache \"{d}/cache\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::IndexTargets::deb::DEP-11::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled \"false\";\n\
             Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled \"false\";\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             APT::Sandbox::User \"root\";\n\
             Acquire::Check-Valid-Until \"false\";\n"
        );
        fs::write(dir.join("etc/apt.conf"), "").context("writing the empty main apt.conf")?;
        write_if_changed(&dir.join("apt.conf"), &conf)?;
        Ok(Self { dir: dir.to_path_buf() })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", self.dir.join("apt.conf")).env("DEBIAN_FRONTEND", "noninteractive").env("LC_ALL", "C");
        cmd
    }

    /// `apt-get update` with the private configuration.
    pub(crate) fn update(&self) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.args(["update", "-q"]);
        let out = output(&mut cmd)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E:") || l.starts_with("W: Failed")) {
            bail!("{} failed ({}): {}", describe(&cmd), out.status, stderr.trim());
        }
        Ok(())
    }

    /// `apt-cache madison PKG` text.
    pub(crate) fn madison(&self, package: &str) -> Result<String> {
        self.query(&["madison", package])
    }

    /// `apt-cache show PKG=VERSION` text.
    pub(crate) fn show(&self, package: &str, version: &str) -> Result<String> {
        self.query(&["show", &format!("{package}={version}")])
    }

    fn query(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command("apt-cache");
        cmd.args(args);
        let out = output(&mut cmd)?;
        if !out.status.success() {
            bail!("{} failed ({}): {}", describe(&cmd), out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `apt-get download PKG=VERSION...` into `dir`.
    pub(crate) fn download(&self, dir: &Path, packages: &[(String, String)]) -> Result<()> {
        let mut cmd = self.command("apt-get");
        cmd.current_dir(dir).args(["download", "-q"]);
        for (package, version) in packages {
            cmd.arg(format!("{package}={version}"));
        }
        exec(&mut cmd)
    }
}

fn write_if_changed(path: &Path, text: &str) -> Result<()> {
    if fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// `(version, origin)` pairs of `apt-cache madison` output.
pub(crate) fn parse_madison(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut cols = line.split('|').map(str::trim);
            let _package = cols.next()?;
            let version = cols.next()?;
            let origin = cols.next()?;
            (!version.is_empty()).then(|| (version.to_owned(), origin.to_owned()))
        })
        .collect()
}

/// The newest version whose upstream part is `series` or `series.*` (`6.1` matches
/// `6.1.192-2`, not `6.12.117-1`).
pub(crate) fn newest_in_series(versions: &[(String, String)], series: &str) -> Option<String> {
    versions
        .iter()
        .map(|(v, _)| v)
        .filter(|v| {
            let upstream = upstream_of(v);
            upstream == series || upstream.strip_prefix(series).is_some_and(|rest| rest.starts_with(['.', '~', '+']))
        })
        .max_by(|a, b| compare_versions(a, b))
        .cloned()
}

fn upstream_of(version: &str) -> &str {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(u, _)| u)
}

/// Debian version ordering (`deb-version(7)`): epoch, then upstream, then revision, each
/// compared as alternating non-digit and digit runs, `~` sorting before everything.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let split = |v: &str| -> (u64, String, String) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, r)) => (e.parse().unwrap_or(0), r),
            None => (0, v),
        };
        let (upstream, revision) = match rest.rsplit_once('-') {
            Some((u, r)) => (u, r),
            None => (rest, ""),
        };
        (epoch, upstream.to_owned(), revision.to_owned())
    };
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb).then_with(|| compare_part(&ua, &ub)).then_with(|| compare_part(&ra, &rb))
}

fn compare_part(a: &str, b: &str) -> Ordering {
    fn order(c: Option<u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_alphabetic() => i32::from(c),
            Some(c) => i32::from(c) + 256,
        }
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        // Non-digit run.
        while a.first().is_some_and(|c| !c.is_ascii_digit()) || b.first().is_some_and(|c| !c.is_ascii_digit()) {
            let ca = a.first().copied().filter(|c| !c.is_ascii_digit());
            let cb = b.first().copied().filter(|c| !c.is_ascii_digit());
            let (oa, ob) = (order(ca), order(cb));
            if oa != ob {
                return oa.cmp(&ob);
            }
            if ca.is_some() {
                a = &a[1..];
            }
            if cb.is_some() {
                b = &b[1..];
            }
        }
        // Digit run, numerically.
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (na, nb) = (digits(a), digits(b));
        let num = |s: &[u8]| -> u128 { std::str::from_utf8(s).ok().and_then(|t| t.parse().ok()).unwrap_or(0) };
        let ord = num(&a[..na]).cmp(&num(&b[..nb]));
        if ord != Ordering::Equal {
            return ord;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

/// The package names of a `Depends:` field (alternatives and versions dropped).
pub(crate) fn depends(show: &str) -> Vec<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .map(|deps| deps.split([',', '|']).filter_map(|d| d.split_whitespace().next()).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MADISON: &str = "\
linux-image-amd64 | 7.3.4-1~bpo13+1 | http://archive.example/debian trixie-backports/main amd64 Packages
linux-image-amd64 |   7.2.13-1 | http://archive.example/debian sid/main amd64 Packages
linux-image-amd64 | 6.12.117-1 | http://archive.example/debian trixie/main amd64 Packages
linux-image-amd64 |  6.1.192-2 | http://security.example/debian-security bookworm-security/main amd64 Packages
linux-image-amd64 |  6.1.176-1 | http://archive.example/debian bookworm/main amd64 Packages
linux-image-amd64 | 5.10.262-1 | http://security.example/debian-security bullseye-security/main amd64 Packages
linux-image-amd64 | 5.10.223-1 | http://archive.example/debian bullseye/main amd64 Packages
";

    #[test]
    fn picks_the_newest_version_of_each_series() {
        let versions = parse_madison(MADISON);
        assert_eq!(versions.len(), 7);
        let pick = |s| newest_in_series(&versions, s);
        assert_eq!(pick("5.10").as_deref(), Some("5.10.262-1"));
        assert_eq!(pick("6.1").as_deref(), Some("6.1.192-2"));
        assert_eq!(pick("6.12").as_deref(), Some("6.12.117-1"));
        assert_eq!(pick("7.2").as_deref(), Some("7.2.13-1"));
        assert_eq!(pick("7.3").as_deref(), Some("7.3.4-1~bpo13+1"));
        assert_eq!(pick("4.19"), None);
        assert_eq!(pick("12.117"), None);
    }

    #[test]
    fn debian_version_order() {
        use Ordering::*;
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0-1~bpo13+1", "1.0-1", Less),
            ("6.1.192-2", "6.1.176-1", Greater),
            ("6.1.9-1", "6.1.10-1", Less),
            ("1:1.0", "2.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0", Greater),
            ("1.0-1", "1.0-1+deb12u1", Less),
        ] {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn derives_archives_from_the_machine_sources() {
        let deb822 = "\
Types: deb
# a comment
URIs: http://archive.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
";
        let sources = parse_deb822(deb822);
        assert_eq!(sources.len(), 2);
        let archives = archives(&sources).unwrap();
        assert_eq!(archives.main, "http://archive.example/debian");
        assert_eq!(archives.security.as_deref(), Some("http://security.example/debian-security"));
        let list = sources_list(&archives, &["bullseye-security".into(), "sid".into()]);
        assert_eq!(
            list,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://security.example/debian-security bullseye-security main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://archive.example/debian sid main\n"
        );
        let one_line = parse_one_line(
            "# c\ndeb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\ndeb-src http://a.example/debian bookworm main\n",
        );
        assert_eq!(
            one_line,
            [Source {
                uri: "http://a.example/debian".into(),
                suites: vec!["bookworm".into()],
                signed_by: Some("/k.gpg".into())
            }]
        );
        assert!(archives_of_nothing().is_err());
    }

    fn archives_of_nothing() -> Result<Archives> {
        archives(&[])
    }

    #[test]
    fn reads_depends() {
        let show = "Package: linux-image-7.3.4+deb13-amd64\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-amd64 (= 7.3.4-1~bpo13+1)\n";
        assert_eq!(
            depends(show),
            [
                "dracut",
                "initramfs-tools",
                "linux-initramfs-tool",
                "linux-base-7.3.4+deb13-amd64",
                "linux-binary-7.3.4+deb13-amd64"
            ]
        );
    }
}
