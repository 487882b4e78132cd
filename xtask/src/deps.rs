//! The Debian packages the kernel oracle needs, in one place.
//!
//! `cargo xtask deps` installs what is missing (CI runs it too, and
//! `cargo xtask deps --list` prints the list for cache keys); `--bench`
//! adds what `cargo xtask bench` compares against (fio).

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

/// What `cargo xtask bench` compares against (not needed for the oracle).
pub const BENCH_PACKAGES: &[&str] = &["fio"];

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/backports.list";

pub fn run(list: bool, bench: bool) -> Result<()> {
    let mut pkgs = PACKAGES.to_vec();
    if bench {
        pkgs.extend_from_slice(BENCH_PACKAGES);
    }
    if list {
        for p in pkgs {
            println!("{p}");
        }
        return Ok(());
    }
    ensure_packages(&pkgs)
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "installed")
        .unwrap_or(false)
}

/// Install the oracle's missing packages; a no-op when everything is there.
pub fn ensure() -> Result<()> {
    ensure_packages(PACKAGES)
}

/// Install those of `packages` that are missing.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
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
    let mut args: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
    if missing.contains(&"qemu-system-x86") {
        args.extend(qemu_pins());
        install.arg("--allow-downgrades");
    }
    install.args(&args);
    util::run(&mut install)
        .with_context(|| format!("installing packages with `{}`", show(&install)))
}

/// The scenarios and fixtures were made with the distribution's QEMU
/// (7.2 on bookworm: its switch ports carry no ACS capability, which the
/// IOMMU scenarios' expectations rely on). Machines that already carry
/// qemu-utils from backports cannot install that QEMU beside it, so pin
/// qemu-system-x86's candidate version for the QEMU packages installed, and
/// drop qemu-block-extra of another version (nothing here uses it).
fn qemu_pins() -> Vec<String> {
    let candidate = |pkg: &str| -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["policy", pkg])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Candidate:")
                    .map(|v| v.trim().to_string())
            })
            .filter(|v| v != "(none)")
    };
    let version = |pkg: &str| -> Option<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", pkg])
            .output()
            .ok()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !v.is_empty()).then_some(v)
    };
    let Some(want) = candidate("qemu-system-x86") else {
        return Vec::new();
    };
    let mut pins = vec![format!("qemu-system-x86={want}")];
    for p in [
        "qemu-utils",
        "qemu-system-common",
        "qemu-system-data",
        "qemu-system-gui",
    ] {
        if let Some(have) = version(p) {
            if installed(p) && have != want {
                pins.push(format!("{p}={want}"));
            }
        }
    }
    if installed("qemu-block-extra") && version("qemu-block-extra").is_some_and(|v| v != want) {
        pins.push("qemu-block-extra-".into());
    }
    pins
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
