//! The Debian packages the kernel oracle needs, in one place.
//!
//! `cargo xtask deps` installs what is missing (CI runs it too, and
//! `cargo xtask deps --list` prints the list for cache keys).

use crate::util::{self, show};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// The kernel source package; it lives in bookworm-backports.
pub const KERNEL_SOURCE_PKG: &str = "linux-source-6.12";

/// Everything `cargo xtask kernel` and `cargo xtask vm` use.
pub const PACKAGES: &[&str] = &[
    KERNEL_SOURCE_PKG,
    // kernel build
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "dwarves",
    "xz-utils",
    "patch",
    // guest
    "qemu-system-x86",
    "busybox-static",
];

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/backports.list";

pub fn run(list: bool) -> Result<()> {
    if list {
        for p in PACKAGES {
            println!("{p}");
        }
        return Ok(());
    }
    ensure()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// Install the missing packages; a no-op when everything is there.
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("deps: missing packages: {}", missing.join(" "));
    // As root, or through passwordless sudo (CI runners).
    let sudo = if util::is_root() {
        None
    } else if Command::new("sudo")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("sudo")
    } else {
        bail!(
            "packages missing and not running as root (nor with passwordless sudo); run \
             `cargo xtask deps` as root or `apt-get install {}` (linux-source-6.12 comes \
             from bookworm-backports)",
            missing.join(" ")
        );
    };
    let apt = |args: &[&str]| {
        let mut cmd = match sudo {
            Some(s) => {
                let mut c = Command::new(s);
                c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
                c
            }
            None => Command::new("apt-get"),
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    if missing.contains(&KERNEL_SOURCE_PKG) {
        ensure_backports(sudo)?;
    }
    util::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    util::run(&mut install)
        .with_context(|| format!("installing packages with `{}`", show(&install)))
}

/// Add `<codename>-backports` to apt's sources unless some source has it.
fn ensure_backports(sudo: Option<&str>) -> Result<()> {
    let os_release = util::read_string(Path::new("/etc/os-release"))?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release")?;
    let suite = format!("{codename}-backports");
    let mut sources = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        sources.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let present = sources
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .any(|text| {
            text.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains(&suite))
        });
    if present {
        return Ok(());
    }
    let line = format!("deb http://deb.debian.org/debian {suite} main\n");
    eprintln!("deps: adding {suite} to {BACKPORTS_LIST}");
    match sudo {
        None => util::write(Path::new(BACKPORTS_LIST), line),
        Some(s) => {
            let mut tee = Command::new(s);
            tee.args(["-n", "tee", BACKPORTS_LIST])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null());
            let mut child = tee
                .spawn()
                .with_context(|| format!("cannot start `{}`", show(&tee)))?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                stdin
                    .write_all(line.as_bytes())
                    .with_context(|| format!("writing to `{}`", show(&tee)))?;
            }
            let status = child.wait().context("waiting for sudo tee")?;
            if !status.success() {
                bail!("`{}` failed ({status})", show(&tee));
            }
            Ok(())
        }
    }
}
