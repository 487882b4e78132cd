//! `cargo xtask vm`: boot the oracle kernel in QEMU on the scenarios'
//! topologies and bring back what the guest collected.
//!
//! The guest (xtask/guest/init.sh) prints `/out` as base64(tar.gz) between
//! two marker lines carrying a per-run nonce; we decode it into
//! `<out>/<scenario>/` next to the full console log. Then peerdma is held
//! against the kernel ([`crate::oracle`]): its verdicts from the guest's
//! snapshot and from the guest's sysfs copy, the P2P smoke tests that
//! `peerdma probe` ran in the guest, and the `peerdma copy` runs between
//! its drives (with the guest's own byte check of every destination),
//! against the scenario's expectations and the kernel's verdicts.
//!
//! - [`initramfs`]: what the guest boots with (busybox, the guest scripts,
//!   peerdma and its libraries, each scenario's probe and copy lists);
//! - [`qemu`]: the disks, the QEMU command line, and one boot with its
//!   console read until the guest's output markers;
//! - [`collect`](mod@collect): unpacking what the guest brought back and evaluating it;
//! - here: the arguments, the run over scenarios with the KVM-to-TCG
//!   fallback, and the final report.

mod collect;
mod fixes;
mod initramfs;
mod qemu;

use crate::kernel;
use crate::oracle::{self, Evaluation};
use crate::scenario::{self, Scenario};
use crate::util;
use anyhow::{bail, Context, Result};
use collect::collect;
use initramfs::{build_initramfs, build_peerdma, strip_into};
use qemu::{boot, create_disks, kvm_usable, Boot};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct VmArgs {
    /// Scenario to boot (repeatable); see xtask/scenarios/*.toml.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Boot every scenario.
    #[arg(long)]
    all: bool,
    /// The peerdma binary to install in the guest as /bin/peerdma (with its
    /// shared libraries) [default: build it with `cargo build -p peerdma`].
    #[arg(long, value_name = "PATH")]
    peerdma: Option<PathBuf>,
    /// Output directory; each scenario goes to DIR/<scenario>/ [default: target/vm].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Per-scenario timeout in seconds [default: 300 under TCG, 120 under KVM].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Accelerator: try KVM and fall back to TCG (auto), or force one.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Boot this kernel image instead of the cached oracle kernel.
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Console lines kept for error messages.
const CONSOLE_TAIL: usize = 30;

/// One scenario's run: where its results are and what they say.
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub dir: PathBuf,
    pub result: Result<Evaluation>,
}

pub fn run(args: &VmArgs) -> Result<()> {
    let runs = run_many(args, false)?;
    if !report(&runs) {
        let bad: Vec<&str> = runs
            .iter()
            .filter(|r| !r.result.as_ref().is_ok_and(Evaluation::ok))
            .map(|r| r.scenario.name.as_str())
            .collect();
        bail!(
            "{} scenario(s) failed, disagree with the kernel or missed a smoke test expectation: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// Boot the chosen scenarios (all of them if none is chosen and
/// `default_all`) and evaluate each.
pub fn run_many(args: &VmArgs, default_all: bool) -> Result<Vec<ScenarioRun>> {
    let mut names = if args.all || (default_all && args.scenarios.is_empty()) {
        scenario::all_names()?
    } else {
        Vec::new()
    };
    for n in &args.scenarios {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if names.is_empty() {
        let known = scenario::all_names()?.join(", ");
        bail!("give --scenario NAME (repeatable) or --all; known scenarios: {known}");
    }
    let scenarios = names
        .iter()
        .map(|n| scenario::load(n))
        .collect::<Result<Vec<_>>>()?;

    let kernel = match &args.kernel {
        Some(k) if k.is_file() => k.clone(),
        Some(k) => bail!("kernel image {} does not exist", k.display()),
        None => kernel::ensure(false)?,
    };
    let out_root = match &args.out {
        Some(dir) => dir.clone(),
        None => target_dir().join("vm"),
    };
    util::create_dir_all(&out_root)?;
    let peerdma = match &args.peerdma {
        Some(p) => p.clone(),
        None => build_peerdma()?,
    };
    let guest_bin = out_root.join("peerdma-guest");
    strip_into(&peerdma, &guest_bin)?;
    let initramfs = out_root.join("initramfs.cpio");
    util::write(&initramfs, build_initramfs(&guest_bin, &scenarios)?)?;

    let mut accel = match args.accel {
        Accel::Auto if !kvm_usable() => {
            eprintln!("vm: /dev/kvm is not usable, using TCG");
            Accel::Tcg
        }
        a => a,
    };
    let mut runs = Vec::new();
    for sc in scenarios {
        let dir = out_root.join(&sc.name);
        let result = run_scenario(&sc, &kernel, &initramfs, &dir, &mut accel, args);
        if let Err(e) = &result {
            eprintln!("vm: scenario {}: FAILED: {e:#}", sc.name);
        }
        runs.push(ScenarioRun {
            scenario: sc,
            dir,
            result,
        });
    }
    Ok(runs)
}

/// Print every finding and the per-scenario table; true if all is well.
pub fn report(runs: &[ScenarioRun]) -> bool {
    let mut all_ok = true;
    eprintln!();
    for r in runs {
        match &r.result {
            Ok(e) => {
                let details = e.details();
                if !details.is_empty() {
                    eprintln!("{}:", r.scenario.name);
                    for d in details {
                        eprintln!("  {d}");
                    }
                }
                all_ok &= e.ok();
            }
            Err(_) => all_ok = false,
        }
    }
    let rows: Vec<(String, std::result::Result<&Evaluation, String>)> = runs
        .iter()
        .map(|r| {
            (
                r.scenario.name.clone(),
                r.result.as_ref().map_err(|e| format!("{e:#}")),
            )
        })
        .collect();
    eprintln!();
    eprint!("{}", oracle::table(&rows));
    all_ok
}

/// `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
}

fn run_scenario(
    sc: &Scenario,
    kernel: &Path,
    initramfs: &Path,
    dir: &Path,
    accel: &mut Accel,
    args: &VmArgs,
) -> Result<Evaluation> {
    util::remove_dir_all_if_exists(dir)?;
    util::create_dir_all(dir)?;
    let source = scenario::dir().join(format!("{}.toml", sc.name));
    std::fs::copy(&source, dir.join("scenario.toml"))
        .with_context(|| format!("cannot copy {} to {}", source.display(), dir.display()))?;
    create_disks(sc, dir)?;
    loop {
        let used = if *accel == Accel::Auto {
            Accel::Kvm
        } else {
            *accel
        };
        eprintln!(
            "vm: scenario {}: booting ({}) - {}",
            sc.name,
            used.name(),
            sc.description
        );
        match boot(sc, kernel, initramfs, dir, used, args)? {
            Boot::KvmFailed(why) if *accel == Accel::Auto => {
                eprintln!("vm: KVM failed ({why}); using TCG for the rest of this run");
                *accel = Accel::Tcg;
                let (from, to) = (dir.join("console.log"), dir.join("console-kvm.log"));
                std::fs::rename(&from, &to).with_context(|| {
                    format!("cannot rename {} to {}", from.display(), to.display())
                })?;
            }
            Boot::KvmFailed(why) => bail!("scenario {}: KVM failed: {why}", sc.name),
            Boot::Done { payload, elapsed } => {
                if *accel == Accel::Auto {
                    *accel = Accel::Kvm;
                }
                collect(sc, dir, &payload, used, elapsed)?;
                fixes::run_fixes(sc, kernel, initramfs, dir, used, args)?;
                // Again, with the fix runs.
                return oracle::evaluate(dir, sc);
            }
        }
    }
}
