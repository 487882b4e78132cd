//! Holding peerdma against the kernel for one scenario's results: the
//! kernel's verdicts against peerdma's model read from the guest's snapshot
//! and from the guest's own copy of its sysfs, the P2P smoke tests against
//! what the scenario expects, and each copy against its expectation, the
//! guest's independent byte check and the kernel's verdicts for the
//! provider it used (or for every provider, when it bounced).
//!
//! Works on a result directory (`target/vm/<scenario>/`) and on a fixture
//! directory (`tests/fixtures/kernel/<scenario>/`) alike: both hold
//! `verdicts`, `snapshot.json`, `root/`, `acs-warnings.txt`, `smoke.json`,
//! `copy.json` and `traces/` (the kernel's DMA mapping event lines of each
//! probe and copy).
//!
//! - [`records`]: the guest's outputs as records (`smoke.json`, `copy.json`);
//! - [`copy`]: each copy held against its case, the byte check and the kernel;
//! - [`expect`]: the kernel's verdicts against the scenario's expectations;
//! - [`observed`]: the path each run was observed to take (`--trace`),
//!   from peerdma's report and from the kernel's own event lines
//!   (`traces/`), against the kernel's verdicts;
//! - [`render`]: summaries, findings and the per-scenario table;
//! - here: [`evaluate`], which reads one directory and puts it all together.

mod copy;
mod expect;
pub mod observed;
mod records;
mod render;

pub use copy::CopyEval;
pub use expect::check as check_expectations;
pub use records::{copy_from_files, smoke_from_report, CopyFile, Smoke, SmokeFile};
pub use render::table;

use crate::scenario::Scenario;
use crate::util;
use anyhow::{bail, Context, Result};
use copy::evaluate_copy;
use peerdma_mem::Bdf;
use peerdma_p2p::oracle::{self, Comparison, FixCheck, FixRun, KernelVerdicts};
use peerdma_pci::{Source, Topology};
use records::CopyRun;
use std::path::Path;

/// Everything known about one scenario's run.
pub struct Evaluation {
    pub description: String,
    /// The kernel's verdicts, as read from `verdicts`.
    pub kernel: KernelVerdicts,
    pub functions: usize,
    pub kernel_pairs: usize,
    pub counts: String,
    pub snapshot: Comparison,
    pub root: Comparison,
    pub smoke: Vec<Smoke>,
    pub copies: Vec<CopyEval>,
    /// The distinct kernel-parameter fixes peerdma proposes from the
    /// snapshot, each held against the kernel booted with it (`fixes/<k>/`).
    pub fixes_proposed: usize,
    pub fixes: Vec<FixCheck>,
    /// Each probe's and copy's trace against the kernel (`probe N`, then
    /// `copy N`).
    pub traced: Vec<observed::Traced>,
    /// Expectations not met (kernel verdicts, smoke tests, copies, missing files).
    pub problems: Vec<String>,
}

impl Evaluation {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.snapshot.ok() && self.root.ok()
    }
}

/// Evaluate the results in `dir` against scenario `sc`.
pub fn evaluate(dir: &Path, sc: &Scenario) -> Result<Evaluation> {
    let vpath = dir.join("verdicts");
    if !vpath.is_file() {
        bail!("{} does not exist", vpath.display());
    }
    let kernel = oracle::parse_verdicts(&util::read_string(&vpath)?, &vpath.display().to_string())?;
    let acs_path = dir.join("acs-warnings.txt");
    let acs = oracle::parse_acs_warnings(
        &util::read_string(&acs_path)?,
        &acs_path.display().to_string(),
    )?;
    let mut problems: Vec<String> = expect::check(&kernel, &sc.expect)
        .into_iter()
        .map(|p| format!("kernel expectation not met: {p}"))
        .collect();

    let snap_path = dir.join("snapshot.json");
    let snap_topo = Source::Snapshot(snap_path.clone())
        .load()
        .with_context(|| format!("peerdma cannot read {}", snap_path.display()))?;
    let snapshot = oracle::compare(&snap_topo, &kernel, Some(&acs), "snapshot.json");
    let root_path = dir.join("root");
    let root_topo = Source::Root(root_path.clone())
        .load()
        .with_context(|| format!("peerdma cannot read {}", root_path.display()))?;
    let root = oracle::compare(&root_topo, &kernel, Some(&acs), "root/");

    let smoke_path = dir.join("smoke.json");
    let smoke: Vec<Smoke> = if smoke_path.is_file() {
        let f: SmokeFile = serde_json::from_str(&util::read_string(&smoke_path)?)
            .with_context(|| format!("invalid {}", smoke_path.display()))?;
        f.probes
    } else {
        Vec::new()
    };
    if smoke.len() != sc.probe.len() {
        problems.push(format!(
            "the scenario lists {} probe(s), {} has {}",
            sc.probe.len(),
            smoke_path.display(),
            smoke.len()
        ));
    }
    for s in &smoke {
        if !s.as_expected() {
            problems.push(format!(
                "smoke test {}: {} where the scenario expects {}: {}",
                s.label(),
                s.outcome,
                s.expect,
                s.message
            ));
        }
    }

    let copy_path = dir.join("copy.json");
    let runs: Vec<CopyRun> = if copy_path.is_file() {
        let f: CopyFile = serde_json::from_str(&util::read_string(&copy_path)?)
            .with_context(|| format!("invalid {}", copy_path.display()))?;
        f.copies
    } else {
        Vec::new()
    };
    if runs.len() != sc.copy.len() {
        problems.push(format!(
            "the scenario lists {} copy case(s), {} has {}",
            sc.copy.len(),
            copy_path.display(),
            runs.len()
        ));
    }
    let (fixes_proposed, fixes, fix_problems) = evaluate_fixes(dir, &snap_topo)?;
    problems.extend(fix_problems);
    let mut traced = Vec::new();
    for (i, s) in smoke.iter().enumerate() {
        let devices: Vec<Bdf> = [Some(&s.provider), Some(&s.client), s.to.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|b| b.parse().ok())
            .collect();
        traced.push(observed::check(
            &format!("probe {} ({})", i + 1, s.label()),
            &s.report,
            read_trace(dir, "probe", i + 1).as_deref(),
            &devices,
            &snap_topo,
            &kernel,
        ));
    }
    let providers = published_providers(&snap_topo);
    let mut copies = Vec::new();
    for (i, (c, run)) in sc.copy.iter().zip(runs).enumerate() {
        if (run.src.as_str(), run.dst.as_str()) != (c.src.as_str(), c.dst.as_str()) {
            problems.push(format!(
                "{} records copy {} where the scenario has {}",
                copy_path.display(),
                run.label(),
                c.label()
            ));
            continue;
        }
        let devices: Vec<Bdf> = [&run.src, &run.dst]
            .into_iter()
            .filter_map(|b| b.parse().ok())
            .collect();
        traced.push(observed::check(
            &format!("copy {} ({}, {})", i + 1, run.label(), run.range()),
            &run.report,
            read_trace(dir, "copy", i + 1).as_deref(),
            &devices,
            &snap_topo,
            &kernel,
        ));
        let e = evaluate_copy(c, run, &kernel, &providers);
        for q in &e.problems {
            problems.push(format!(
                "copy {} ({}{}): {q}",
                e.run.label(),
                e.run.range(),
                if e.run.flags.is_empty() {
                    String::new()
                } else {
                    format!(", {}", e.run.flags)
                }
            ));
        }
        copies.push(e);
    }
    for t in &traced {
        for q in &t.problems {
            problems.push(format!("trace of {}: {q}", t.label));
        }
    }
    Ok(Evaluation {
        traced,
        description: sc.description.clone(),
        functions: kernel.devices.len(),
        kernel_pairs: kernel.pairs.len(),
        counts: kernel
            .counts()
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        snapshot,
        root,
        smoke,
        copies,
        fixes_proposed,
        fixes,
        problems,
        kernel,
    })
}

/// The fix runs stored under `dir/fixes/<k>/`, in order.
pub fn fix_runs(dir: &Path) -> Result<Vec<(std::path::PathBuf, FixRun)>> {
    let fixes = dir.join("fixes");
    if !fixes.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&fixes)
        .with_context(|| format!("cannot list {}", fixes.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort_by_key(|d| {
        d.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(u32::MAX)
    });
    dirs.into_iter()
        .map(|d| {
            let f = d.join("fix.json");
            let run = FixRun::parse(&util::read_string(&f)?, &f.display().to_string())
                .map_err(anyhow::Error::msg)?;
            Ok((d, run))
        })
        .collect()
}

/// Hold the fixes peerdma proposes for the machine of `dir` (read from its
/// snapshot, `base`) against the fix runs stored there: how many it
/// proposes, each run's check, and what is missing or stale.
pub fn evaluate_fixes(dir: &Path, base: &Topology) -> Result<(usize, Vec<FixCheck>, Vec<String>)> {
    let proposed = peerdma_p2p::acs_boot::proposed_fixes(base);
    let runs = fix_runs(dir)?;
    let stored: Vec<_> = runs.iter().map(|(_, r)| r.fix.clone()).collect();
    let mut problems: Vec<String> = oracle::match_fix_runs(&proposed, &stored)
        .into_iter()
        .map(|p| format!("fix: {p}"))
        .collect();
    let mut checks = Vec::new();
    for (d, run) in &runs {
        let vpath = d.join("verdicts");
        let kernel =
            oracle::parse_verdicts(&util::read_string(&vpath)?, &vpath.display().to_string())?;
        let snap = d.join("snapshot.json");
        let after = Source::Snapshot(snap.clone())
            .load()
            .with_context(|| format!("peerdma cannot read {}", snap.display()))?;
        let c = oracle::hold_fix(
            &run.fix,
            &kernel,
            &util::read_string(&d.join("cmdline"))?,
            Some(&after),
        );
        for p in &c.problems {
            problems.push(format!("fix {} ({}): {p}", c.params.join(" "), d.display()));
        }
        // The machine booted with the fix: peerdma agrees with its kernel.
        let cmp = oracle::compare(
            &after,
            &kernel,
            None,
            &d.join("snapshot.json").display().to_string(),
        );
        problems.extend(cmp.render_problems().lines().map(str::to_string));
        checks.push(c);
    }
    Ok((proposed.len(), checks, problems))
}

/// The kernel's event lines of a run, `traces/KIND-N.trace`.
fn read_trace(dir: &Path, kind: &str, n: usize) -> Option<String> {
    std::fs::read_to_string(dir.join("traces").join(format!("{kind}-{n}.trace"))).ok()
}

/// Functions that publish P2P memory, as the guest's snapshot shows them.
fn published_providers(topo: &Topology) -> Vec<Bdf> {
    peerdma_p2p::providers(topo)
        .into_iter()
        .map(|f| topo.function(f).bdf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of a fixture with ACS advice, its scenario, and the copy's
    /// `acs-warnings.txt`.
    fn fixture_copy() -> (tempfile::TempDir, std::path::PathBuf, Scenario) {
        let name = "acs-redirect-mfd-amd";
        let from = crate::capture::fixtures_dir().join(name);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        crate::capture::copy_tree(&from, &dir).unwrap();
        let sc = crate::scenario::load_file(&dir.join("scenario.toml"), name).unwrap();
        assert!(evaluate(&dir, &sc).unwrap().ok());
        (tmp, dir, sc)
    }

    #[test]
    fn an_orphan_acs_line_is_an_error_naming_the_line() {
        let (_tmp, dir, sc) = fixture_copy();
        let path = dir.join("acs-warnings.txt");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() >= 2, "{text}");
        // The provider's line of the first warning goes missing: its advice
        // is an orphan (the shared parser used to drop it and pass).
        let cut: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, cut).unwrap();
        let e = format!(
            "{:#}",
            evaluate(&dir, &sc).err().expect("an orphan line must fail")
        );
        assert!(
            e.starts_with(&format!("{}:1: orphan line", path.display())),
            "{e}"
        );
    }

    #[test]
    fn a_malformed_verdicts_line_is_an_error_naming_the_line() {
        let (_tmp, dir, sc) = fixture_copy();
        let path = dir.join("verdicts");
        let text = std::fs::read_to_string(&path).unwrap();
        let bad: String = text
            .lines()
            .zip(1..)
            .map(|(l, n)| {
                if n == 4 {
                    "dev 0000:00:02.0 acs_redir\n".to_string()
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&path, bad).unwrap();
        let e = format!(
            "{:#}",
            evaluate(&dir, &sc)
                .err()
                .expect("a malformed line must fail")
        );
        assert!(
            e.starts_with(&format!("{}:4: malformed line", path.display())),
            "{e}"
        );
    }
}
