//! What the guest boots with: an initramfs of busybox, the guest scripts
//! (xtask/guest/), peerdma with its shared libraries, and each scenario's
//! probe and copy lists for the scripts.

use super::target_dir;
use crate::cpio::Cpio;
use crate::scenario::Scenario;
use crate::util::{self, show};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_DIR: &str = "xtask/guest";

/// `cargo build -p peerdma` (the dev profile, which `cargo test` has
/// usually built already); the binary's path.
pub(super) fn build_peerdma() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "peerdma"])
        .current_dir(util::workspace_root());
    eprintln!("vm: {}", show(&cmd));
    util::run(&mut cmd)?;
    let bin = target_dir().join("debug/peerdma");
    if !bin.is_file() {
        bail!("`{}` did not produce {}", show(&cmd), bin.display());
    }
    Ok(bin)
}

/// Copy `bin` to `out` without debug information (a smaller initramfs).
pub(super) fn strip_into(bin: &Path, out: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!("peerdma binary {} does not exist", bin.display());
    }
    let mut cmd = Command::new("objcopy");
    cmd.arg("--strip-debug").arg(bin).arg(out);
    if util::output(&mut cmd).is_err() {
        // No binutils: the unstripped binary works too, only bigger.
        std::fs::copy(bin, out)
            .with_context(|| format!("cannot copy {} to {}", bin.display(), out.display()))?;
    }
    Ok(())
}

/// busybox, the guest scripts, peerdma with its libraries, and each
/// scenario's probe list (`etc/peerdma/probes/<scenario>`, one
/// `PROVIDER CLIENT TO SIZE` line per probe, `-` for a default).
pub(super) fn build_initramfs(peerdma: &Path, scenarios: &[Scenario]) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    let mut dirs = BTreeSet::new();
    let mut mkdirs = |c: &mut Cpio, path: &str| {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if dirs.insert(prefix.clone()) {
                c.dir(&prefix);
            }
        }
    };
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "out",
        "etc/peerdma/probes",
        "etc/peerdma/copies",
        "root",
    ] {
        mkdirs(&mut c, d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);

    let busybox = Path::new("/bin/busybox");
    if !shared_libs(busybox)?.is_empty() {
        bail!(
            "{} is dynamically linked; install busybox-static",
            busybox.display()
        );
    }
    c.file("bin/busybox", 0o755, &util::read(busybox)?);
    let list = util::stdout(Command::new(busybox).arg("--list-full"))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        if let Some((parent, _)) = applet.rsplit_once('/') {
            mkdirs(&mut c, parent);
        }
        c.symlink(applet, "/bin/busybox");
    }

    let guest = util::workspace_root().join(GUEST_DIR);
    c.file("init", 0o755, &util::read(&guest.join("init.sh"))?);
    c.file(
        "etc/peerdma/peerdma.sh",
        0o755,
        &util::read(&guest.join("peerdma.sh"))?,
    );

    for sc in scenarios {
        let mut list = String::new();
        for p in &sc.probe {
            list.push_str(&format!(
                "{} {} {} {}\n",
                p.provider,
                p.client,
                p.to.as_deref().unwrap_or("-"),
                p.size.as_deref().unwrap_or("-")
            ));
        }
        c.file(
            &format!("etc/peerdma/probes/{}", sc.name),
            0o644,
            list.as_bytes(),
        );
        c.file(
            &format!("etc/peerdma/copies/{}", sc.name),
            0o644,
            copy_list(sc)?.as_bytes(),
        );
    }

    c.file("bin/peerdma", 0o755, &util::read(peerdma)?);
    for lib in shared_libs(peerdma)? {
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        if let Some((parent, _)) = name.rsplit_once('/') {
            mkdirs(&mut c, parent);
        }
        c.file(&name, 0o755, &util::read(&lib)?);
    }
    Ok(c.finish())
}

/// A scenario's copy cases for xtask/guest/peerdma.sh, one line each:
/// `SRC DST SKIP SEEK COUNT VIA FLAGS` (bytes; `-` for no --via or no flags;
/// flags: a comma list of `no-bounce`, `unchecked-via`).
fn copy_list(sc: &Scenario) -> Result<String> {
    let mut list = String::new();
    for c in &sc.copy {
        let (skip, seek, count) = c.range()?;
        let mut flags = Vec::new();
        if c.no_bounce {
            flags.push("no-bounce");
        }
        if c.unchecked_via {
            flags.push("unchecked-via");
        }
        list.push_str(&format!(
            "{} {} {skip} {seek} {count} {} {}\n",
            c.src,
            c.dst,
            c.via.as_deref().unwrap_or("-"),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            }
        ));
    }
    Ok(list)
}

/// Shared libraries of an executable, as `ldd` shows them (including the
/// dynamic loader); empty for a static executable.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("cannot run `ldd {}`", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("`ldd {}`: {}", bin.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs)
}
