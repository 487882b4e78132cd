//! `cargo xtask capture`: boot the scenarios and keep what `cargo test`
//! needs to hold peerdma against the kernel without QEMU, under
//! `tests/fixtures/kernel/<scenario>/`:
//!
//! * `verdicts`: the kernel's own verdicts (pci_p2pdma debugfs);
//! * `acs-warnings.txt`: the kernel's `pci=disable_acs_redir=` advice from
//!   the verbose pass (both log lines of each warning);
//! * `snapshot.json`: `peerdma snapshot --live` in the guest;
//! * `root/`: the guest's shell copy of its sysfs and `proc/cpuinfo`
//!   (independent of peerdma's own tree writer);
//! * `smoke.json`: the P2P smoke tests' outcomes (`peerdma probe` reports);
//! * `copy.json`: the `peerdma copy` runs between the drives (reports and
//!   the guest's byte checks);
//! * `traces/`: the kernel's DMA mapping event lines of each probe and
//!   copy (`--trace`), read again by `cargo test`;
//! * `scenario.toml`: the scenario as run.
//!
//! and one `tests/fixtures/kernel/README.md` listing scenarios and outcomes.

use crate::oracle::{self, Evaluation};
use crate::scenario;
use crate::util;
use crate::vm::{self, VmArgs};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Fixture directory [default: tests/fixtures/kernel].
    #[arg(long, value_name = "DIR")]
    fixtures: Option<PathBuf>,
    /// Boot nothing: only rewrite the fixtures' README.md from what is there.
    #[arg(long)]
    readme_only: bool,
}

/// The files of a result directory that make a fixture.
const FILES: &[&str] = &[
    "verdicts",
    "acs-warnings.txt",
    "snapshot.json",
    "smoke.json",
    "copy.json",
    "scenario.toml",
];

/// The files of a fix run (`fixes/<k>/`) that make a fixture: the fix as
/// proposed, the kernel's verdicts and `/proc/cmdline` of the boot with
/// it, and the guest's snapshot of that boot.
const FIX_FILES: &[&str] = &["fix.json", "verdicts", "cmdline", "snapshot.json"];

pub fn fixtures_dir() -> PathBuf {
    util::workspace_root().join("tests/fixtures/kernel")
}

pub fn run(args: &CaptureArgs) -> Result<()> {
    let fixtures = args.fixtures.clone().unwrap_or_else(fixtures_dir);
    if args.readme_only {
        let readme = fixtures.join("README.md");
        util::write(&readme, readme_text(&fixtures)?)?;
        eprintln!("capture: wrote {}", readme.display());
        return Ok(());
    }
    let runs = vm::run_many(&args.vm, true)?;
    let mut failed = Vec::new();
    for r in &runs {
        let name = &r.scenario.name;
        match &r.result {
            Ok(_) => {
                let to = fixtures.join(name);
                store(&r.dir, &to)
                    .with_context(|| format!("storing the fixture of scenario {name}"))?;
                eprintln!("capture: {name} -> {}", to.display());
            }
            Err(_) => {
                eprintln!("capture: {name}: no fixture written (the run failed; the old one, if any, stays)");
                failed.push(name.clone());
            }
        }
    }
    let readme = fixtures.join("README.md");
    util::write(&readme, readme_text(&fixtures)?)?;
    eprintln!("capture: wrote {}", readme.display());
    let all_ok = vm::report(&runs);
    if !all_ok || !failed.is_empty() {
        bail!("some scenarios failed, disagree with the kernel or missed a smoke test expectation (fixtures were written for every scenario that ran)");
    }
    Ok(())
}

/// Replace the fixture `to` with the files of result directory `from`.
fn store(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("new");
    util::remove_dir_all_if_exists(&tmp)?;
    util::create_dir_all(&tmp)?;
    for f in FILES {
        let (a, b) = (from.join(f), tmp.join(f));
        std::fs::copy(&a, &b)
            .with_context(|| format!("cannot copy {} to {}", a.display(), b.display()))?;
    }
    copy_tree(&from.join("root"), &tmp.join("root"))?;
    for (d, _) in oracle::fix_runs(from)? {
        let Some(k) = d.file_name() else { continue };
        let t = tmp.join("fixes").join(k);
        util::create_dir_all(&t)?;
        for f in FIX_FILES {
            let (a, b) = (d.join(f), t.join(f));
            std::fs::copy(&a, &b)
                .with_context(|| format!("cannot copy {} to {}", a.display(), b.display()))?;
        }
    }
    copy_tree(&from.join("traces"), &tmp.join("traces"))?;
    util::remove_dir_all_if_exists(to)?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), to.display()))
}

/// Copy a directory tree; symlinks stay symlinks with the same target.
pub(crate) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    util::create_dir_all(to)?;
    let entries =
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?;
    let mut entries: Vec<_> = entries
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("cannot list {}", from.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (a, b) = (e.path(), to.join(e.file_name()));
        let ty = e
            .file_type()
            .with_context(|| format!("cannot stat {}", a.display()))?;
        if ty.is_symlink() {
            let target =
                std::fs::read_link(&a).with_context(|| format!("cannot read {}", a.display()))?;
            std::os::unix::fs::symlink(&target, &b)
                .with_context(|| format!("cannot create symlink {}", b.display()))?;
        } else if ty.is_dir() {
            copy_tree(&a, &b)?;
        } else {
            std::fs::copy(&a, &b)
                .with_context(|| format!("cannot copy {} to {}", a.display(), b.display()))?;
        }
    }
    Ok(())
}

/// Evaluate every fixture directory (sorted by name).
pub fn evaluate_all(fixtures: &Path) -> Result<Vec<(String, Result<Evaluation>)>> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures)
        .with_context(|| format!("cannot list {}", fixtures.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("verdicts").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names
        .into_iter()
        .map(|n| {
            let dir = fixtures.join(&n);
            let r = scenario::load_file(&dir.join("scenario.toml"), &n)
                .and_then(|sc| oracle::evaluate(&dir, &sc));
            (n, r)
        })
        .collect())
}

/// The fixes peerdma proposed for one scenario and what the kernel said.
fn fix_section(s: &mut String, e: &Evaluation) {
    if e.fixes.is_empty() {
        return;
    }
    s.push_str("| fix booted | pairs as predicted | ACS control as predicted | confirmed |\n| --- | ---: | ---: | --- |\n");
    for f in &e.fixes {
        let _ = writeln!(
            s,
            "| `{}` | {}/{} | {}/{} | {} |",
            f.params.join(" "),
            f.pairs_confirmed,
            f.pairs_compared,
            f.acs_confirmed,
            f.acs_compared,
            if f.confirmed() { "yes" } else { "**no**" }
        );
    }
    s.push('\n');
}

/// The copies of one scenario: what ran, what peerdma reported next to the
/// kernel's verdicts, and what the byte check found.
fn copy_section(s: &mut String, e: &Evaluation) {
    if e.copies.is_empty() {
        return;
    }
    s.push_str(
        "| copy src -> dst | range | flags | kernel (provider: legs) | path | observed (--trace) | verify | bytes | expected | why |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    // e.traced holds the probes' traces, then the copies'.
    let observed = |i: usize| {
        e.traced
            .get(e.smoke.len() + i)
            .map_or("-".to_string(), |t| t.observed())
    };
    for (i, c) in e.copies.iter().enumerate() {
        let r = &c.run;
        let path = match &r.path {
            Some(p) if r.fallback.is_some() => format!("{p} (fallback)"),
            Some(p) => p.clone(),
            None => r.outcome(),
        };
        let bytes = if r.path.is_none() {
            if r.unchanged == "exact" {
                "untouched".to_string()
            } else {
                format!("changed ({})", r.unchanged)
            }
        } else if r.pattern == "exact" {
            "exact".to_string()
        } else if r.zeros {
            format!("wrong: zeros ({})", r.pattern)
        } else {
            format!("wrong ({})", r.pattern)
        };
        let mark = |x: String| {
            if c.as_expected() {
                x
            } else {
                format!("**{x}**")
            }
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label(),
            r.range(),
            if r.flags.is_empty() { "-" } else { &r.flags },
            c.kernel,
            mark(path),
            observed(i),
            r.verify.as_deref().unwrap_or("-"),
            bytes,
            r.expect,
            r.why
        );
    }
    for (i, c) in e.copies.iter().enumerate() {
        let r = &c.run;
        if let Some(f) = &r.fallback {
            let _ = writeln!(s, "\nFallback ({}): {f}", r.label());
        }
        if r.path.is_none() && !r.error.is_empty() {
            let _ = writeln!(
                s,
                "\nRefusal ({}, exit {}): `{}`",
                r.label(),
                r.exit_code.map_or("?".into(), |x| x.to_string()),
                r.error.lines().last().unwrap_or("")
            );
        }
        if r.path.is_some() && r.verify.as_deref() == Some("mismatch") {
            let _ = writeln!(
                s,
                "\nFinding ({}, {}): the copy reported success and {} bytes and the kernel's DMA mapping events show the mappings it made ({}), but `--verify` found the destination different from the source from byte {} on ({}); exit status {}, not a silent pass.",
                r.label(),
                r.range(),
                r.count,
                observed(i),
                r.first_difference.map_or("?".into(), |x| x.to_string()),
                if r.zeros {
                    "the range reads back as zeros"
                } else {
                    "wrong bytes in the range"
                },
                r.exit_code.map_or("?".into(), |x| x.to_string())
            );
        }
        for q in &c.problems {
            let _ = writeln!(s, "\nNOT AS EXPECTED ({}): {q}", r.label());
        }
    }
    s.push('\n');
}

fn readme_text(fixtures: &Path) -> Result<String> {
    let evals = evaluate_all(fixtures)?;
    let mut s = String::from(
        "# Kernel oracle fixtures\n\
         \n\
         Written by `cargo xtask capture` (do not edit by hand): for each scenario of\n\
         `xtask/scenarios/`, what the P2PDMA oracle kernel said in QEMU and what the\n\
         guest saw. `cargo test` (crates/p2p/tests/kernel_oracle.rs) holds peerdma's\n\
         verdict and distance for every ordered pair against the kernel's, from both\n\
         `snapshot.json` and `root/`, plus every `dev` line and every\n\
         `pci=disable_acs_redir=` list, without QEMU.\n\
         \n\
         Per scenario: `verdicts` (the kernel's, kernel/README.md has the format),\n\
         `acs-warnings.txt` (the kernel's ACS advice from its log), `snapshot.json`\n\
         (`peerdma snapshot --live` in the guest), `root/` (the guest's own shell copy\n\
         of its sysfs and `proc/cpuinfo`), `smoke.json` (`peerdma probe` reports: real\n\
         P2P DMA through an NVMe CMB, bytes checked), `copy.json` (`peerdma copy\n\
         --verify` between the drives: the path it reported, its verify, and the\n\
         guest's own byte-for-byte check of the destination and the 4 KiB around it)\n\
         `traces/` (the kernel's DMA mapping event lines of each probe and copy, all\n\
         run with `--trace`) and `scenario.toml`. `cargo test -p xtask` holds\n\
         `smoke.json`, `copy.json` and `traces/` against each scenario's\n\
         expectations and the kernel's verdicts: every mapping into a BAR must be\n\
         what the kernel's verdict for its pair gives.\n\
         \n\
         `fixes/<k>/`: the scenario booted again with each distinct kernel-parameter\n\
         fix that `peerdma check` proposes for its pairs (`fix.json`: the fix, the\n\
         verdicts it predicts for the pairs that propose it and the ACS control it\n\
         predicts; `verdicts`, `cmdline` and `snapshot.json` of that boot). `cargo\n\
         test` holds every prediction against the kernel's verdicts and the booted\n\
         machine, and fails when peerdma proposes a fix no run has booted.\n\
         \n\
         | scenario | functions | pairs | agree (snapshot) | agree (root/) | disable_acs_redir lists | fixes proposed/confirmed | smoke test | copy | observed (--trace) |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |\n",
    );
    for (name, r) in &evals {
        match r {
            Ok(e) => {
                let acs = e.root.acs_compared.map_or("-".to_string(), |n| {
                    format!("{}/{n}", n - e.root.acs_mismatches.len().min(n))
                });
                let _ = writeln!(
                    s,
                    "| {name} | {} | {} | {} | {} | {acs} | {} | {} | {} | {} |",
                    e.functions,
                    e.kernel_pairs,
                    e.snapshot.pairs_agreeing,
                    e.root.pairs_agreeing,
                    e.fixes_summary(),
                    e.smoke_summary(),
                    e.copy_summary(),
                    e.observed_summary()
                );
            }
            Err(err) => {
                let _ = writeln!(
                    s,
                    "| {name} | - | - | - | - | - | - | unreadable: {err:#} | - | - |"
                );
            }
        }
    }
    s.push_str("\n## Scenarios, smoke tests and copies\n");
    for (name, r) in &evals {
        let Ok(e) = r else { continue };
        let _ = write!(s, "\n### {name}\n\n{}.\n\n", e.description);
        fix_section(&mut s, e);
        copy_section(&mut s, e);
        if e.smoke.is_empty() {
            s.push_str("No smoke test.\n");
            continue;
        }
        s.push_str("| provider <- client [-> to] | verdict per transfer | outcome | expected | why |\n| --- | --- | --- | --- | --- |\n");
        for p in &e.smoke {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                p.label(),
                p.verdict,
                if p.as_expected() {
                    p.outcome.clone()
                } else {
                    format!("**{}**", p.outcome)
                },
                p.expect,
                p.why
            );
        }
        for p in e
            .smoke
            .iter()
            .filter(|p| p.outcome != "ok" && p.outcome != "eremoteio")
        {
            let _ = writeln!(s, "\nFinding ({}): {}", p.label(), p.outcome);
            for t in p.report["transfers"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "- {}: {}{}",
                    t["transfer"].as_str().unwrap_or("?"),
                    t["result"].as_str().unwrap_or("?"),
                    t["message"]
                        .as_str()
                        .map(|m| format!(" — {m}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stored runs (smoke tests, copies) meet the expectations of the
    /// scenario they were captured with, and peerdma agrees with the kernel.
    #[test]
    fn the_fixtures_meet_their_scenarios() {
        let evals = evaluate_all(&fixtures_dir()).unwrap();
        assert!(evals.len() >= 8, "{} fixtures", evals.len());
        for (name, r) in evals {
            let e = r.unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(e.ok(), "{name}:\n{}", e.details().join("\n"));
        }
    }
}
