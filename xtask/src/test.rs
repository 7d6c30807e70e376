//! `cargo xtask test`: set-up, then every suite, then the table of the tests that skipped and what
//! each missed (a kernel feature by its probe, or a second CPU); every skip is recorded by the
//! suites in `target/test-skips.tsv`, so none is silent when libtest hides a passing test's output.
//!
//! Tests that touch the kernel run as root and give every namespace, cgroup and pin a name unique
//! to the test, so cargo's parallel test threads cannot collide; the few that measure or load the
//! machine serialise themselves. The lab binary is built first: scenario tests start its
//! `service` subcommand as child processes inside the lab's namespaces (`ZRLAB_EXE`).

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result};

use crate::{build, exec, setup};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// Extra arguments for `cargo test` (a filter, `-- --nocapture`, ...).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Entry point of `cargo xtask test`.
pub(crate) fn run(opts: Options) -> Result<()> {
    setup::ensure(true)?;
    if !exec::is_root() {
        eprintln!("[test] warning: not root; tests that build namespaces will fail with EPERM");
    }
    let binary = build::lab_binary(build::Profile::Dev)?;
    let skips = exec::workspace_root().join("target/test-skips.tsv");
    match std::fs::remove_file(&skips) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", skips.display()));
        }
        _ => {}
    }
    let result = exec::exec(
        Command::new(env!("CARGO"))
            .current_dir(exec::workspace_root())
            // Every failing suite, not just the first one.
            .args(["test", "--no-fail-fast"])
            .args(&opts.args)
            .env("ZRLAB_EXE", binary)
            .env(SKIPS_ENV, &skips),
    );
    print!("{}", skip_table(&skips)?);
    result
}

/// The variable the suites read (`suites/tests/common/mod.rs`): the file every skip is
/// appended to, one `test<TAB>what was missing` line each.
const SKIPS_ENV: &str = "ZRLAB_SKIPS";

/// The skipped tests as a table, sorted, or a line saying that none skipped.
fn skip_table(path: &Path) -> Result<String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut rows: Vec<(&str, &str)> = text.lines().filter_map(|line| line.split_once('\t')).collect();
    rows.sort_unstable();
    rows.dedup();
    if rows.is_empty() {
        return Ok("[test] no test skipped\n".into());
    }
    let width = rows.iter().map(|(test, _)| test.len()).max().unwrap_or(0).max("skipped test".len());
    let mut out = format!("[test] {} skipped test(s):\n{:width$}  missing\n", rows.len(), "skipped test");
    for (test, missing) in rows {
        out.push_str(&format!("{test:width$}  {missing}\n"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_listed_once_each_sorted_and_none_is_said_too() {
        let dir = std::env::temp_dir().join(format!("xtask-skips-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("skips.tsv");
        assert_eq!(skip_table(&path).unwrap(), "[test] no test skipped\n");
        std::fs::write(&path, "b_test\tthe kernel lacks x\na\ttwo CPUs\nb_test\tthe kernel lacks x\n").unwrap();
        let table = skip_table(&path).unwrap();
        assert_eq!(
            table,
            "[test] 2 skipped test(s):\nskipped test  missing\na             two CPUs\nb_test        the kernel lacks x\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
