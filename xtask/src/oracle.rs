//! Holding peerdma against the kernel for one scenario's results: the
//! kernel's verdicts against peerdma's model read from the guest's snapshot
//! and from the guest's own copy of its sysfs, the P2P smoke tests against
//! what the scenario expects, and each copy against its expectation, the
//! guest's independent byte check and the kernel's verdicts for the
//! provider it used (or for every provider, when it bounced).
//!
//! Works on a result directory (`target/vm/<scenario>/`) and on a fixture
//! directory (`tests/fixtures/kernel/<scenario>/`) alike: both hold
//! `verdicts`, `snapshot.json`, `root/`, `acs-warnings.txt`, `smoke.json`
//! and `copy.json`.

use crate::scenario::{CopyCase, Scenario};
use crate::util;
use crate::verdicts;
use anyhow::{bail, Context, Result};
use peerdma_mem::Bdf;
use peerdma_p2p::oracle::{self, Comparison, KernelVerdicts};
use peerdma_p2p::MapType;
use peerdma_pci::{Source, Topology};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One smoke test as `smoke.json` records it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Smoke {
    pub provider: String,
    pub client: String,
    pub to: Option<String>,
    pub size: Option<String>,
    /// What the scenario says this probe must report.
    pub expect: String,
    pub why: String,
    /// What it reported (`ok`, `eremoteio`, `wrong_bytes`, `error`).
    pub outcome: String,
    /// Whether that is what the verdict predicts (the probe's own view).
    pub agrees_with_verdict: bool,
    /// The verdict per transfer (`drive_to_p2pmem bus_addr, ...`).
    pub verdict: String,
    pub exit_code: Option<i32>,
    pub message: String,
    /// The probe's full JSON report (null if it printed none).
    pub report: serde_json::Value,
}

impl Smoke {
    pub fn label(&self) -> String {
        match &self.to {
            Some(t) => format!("{} <- {} -> {t}", self.provider, self.client),
            None => format!("{} <- {}", self.provider, self.client),
        }
    }

    pub fn as_expected(&self) -> bool {
        self.outcome == self.expect
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SmokeFile {
    pub probes: Vec<Smoke>,
}

/// One `peerdma copy` run in the guest as `copy.json` records it: what the
/// scenario asked, what peerdma reported, and what the guest's independent
/// byte check (busybox dd + cmp, xtask/guest/peerdma.sh) found.
#[derive(Debug, Serialize, Deserialize)]
pub struct CopyRun {
    pub src: String,
    pub dst: String,
    pub skip: u64,
    pub seek: u64,
    pub count: u64,
    /// `--via X`, `--no-bounce`, `unchecked` (PEERDMA_COPY_UNCHECKED_VIA=1).
    pub flags: String,
    /// What the scenario expects, in words.
    pub expect: String,
    pub why: String,
    /// The drives' namespaces in the guest.
    pub src_dev: Option<String>,
    pub dst_dev: Option<String>,
    pub exit_code: Option<i32>,
    /// stderr, when peerdma printed an error.
    pub error: String,
    /// From peerdma's report (null when it printed none).
    pub path: Option<String>,
    pub provider: Option<String>,
    pub read_leg: Option<String>,
    pub write_leg: Option<String>,
    pub reason: Option<String>,
    pub fallback: Option<String>,
    /// "direct" or "shifted".
    pub mode: Option<String>,
    /// `--verify`: "equal" or "mismatch" (null: no verify in the report).
    pub verify: Option<String>,
    pub first_difference: Option<u64>,
    pub bytes_per_sec: Option<f64>,
    /// The guest's byte check of the destination range: "exact" when it
    /// holds the pattern, else "differ OFFSET" (first wrong byte).
    pub pattern: String,
    /// The same range against what it held before the copy.
    pub unchanged: String,
    /// Whether the range reads back as zeros.
    pub zeros: bool,
    /// The 4 KiB before and after the range: "untouched" or how not.
    pub outside: String,
    /// The check script's own failure, if any.
    pub check_error: Option<String>,
    /// The full report.
    pub report: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CopyFile {
    pub copies: Vec<CopyRun>,
}

/// `key=value` lines of a `copies/N.check` file.
fn check_value<'a>(check: &'a str, key: &str) -> Option<&'a str> {
    check
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// Build a [`CopyRun`] from a copy case's files in the guest's output.
pub fn copy_from_files(
    c: &CopyCase,
    stdout: &str,
    stderr: &str,
    rc: Option<i32>,
    check: &str,
) -> Result<CopyRun> {
    let (skip, seek, count) = c.range()?;
    let report: serde_json::Value = serde_json::from_str(stdout).unwrap_or(serde_json::Value::Null);
    let st = |v: &serde_json::Value| v.as_str().map(String::from);
    let verify = &report["verify"];
    Ok(CopyRun {
        src: c.src.clone(),
        dst: c.dst.clone(),
        skip,
        seek,
        count,
        flags: c.describe_flags(),
        expect: c.describe_expect(),
        why: c.why.clone(),
        src_dev: check_value(check, "src_dev").map(String::from),
        dst_dev: check_value(check, "dst_dev").map(String::from),
        exit_code: rc,
        error: stderr.trim().to_string(),
        path: st(&report["path"]),
        provider: st(&report["staging"]["provider"]),
        read_leg: st(&report["read_leg"]),
        write_leg: st(&report["write_leg"]),
        reason: st(&report["reason"]),
        fallback: st(&report["fallback"]),
        mode: st(&report["mode"]),
        verify: verify["equal"]
            .as_bool()
            .map(|e| if e { "equal" } else { "mismatch" }.to_string()),
        first_difference: verify["first_difference"].as_u64(),
        bytes_per_sec: report["bytes_per_sec"].as_f64(),
        pattern: check_value(check, "pattern").unwrap_or("").to_string(),
        unchanged: check_value(check, "unchanged").unwrap_or("").to_string(),
        zeros: check_value(check, "zeros") == Some("yes"),
        outside: check_value(check, "outside").unwrap_or("").to_string(),
        check_error: check_value(check, "error")
            .map(String::from)
            .or_else(|| check.trim().is_empty().then(|| "no check file".to_string())),
        report,
    })
}

impl CopyRun {
    pub fn label(&self) -> String {
        format!("{} -> {}", self.src, self.dst)
    }

    /// `8 MiB` or `8000003 bytes, 1049000 -> 3146152`.
    pub fn range(&self) -> String {
        if self.skip == 0 && self.seek == 0 {
            peerdma_mem::format_size(self.count)
        } else {
            format!("{} bytes, {} -> {}", self.count, self.skip, self.seek)
        }
    }

    /// What happened, in a few words: `p2p_bus_addr, verify equal, bytes
    /// exact`, `refused (exit 2)`, `error (exit 2)`.
    pub fn outcome(&self) -> String {
        let Some(path) = &self.path else {
            return match self.exit_code {
                Some(2) if self.unchanged == "exact" => "refused".into(),
                Some(rc) => format!("error (exit {rc})"),
                None => "error (no exit status)".into(),
            };
        };
        let mut s = path.clone();
        if self.fallback.is_some() {
            s.push_str(" after fallback");
        }
        s.push_str(&format!(
            ", verify {}, bytes {}",
            self.verify.as_deref().unwrap_or("none"),
            if self.pattern == "exact" {
                "exact".to_string()
            } else if self.zeros {
                format!("wrong ({}: zeros)", self.pattern)
            } else if self.unchanged == "exact" {
                format!("wrong ({}: unchanged)", self.pattern)
            } else {
                format!("wrong ({})", self.pattern)
            }
        ));
        s
    }

    /// The first differing offset the byte check found.
    fn check_first_difference(&self) -> Option<u64> {
        self.pattern.strip_prefix("differ ")?.parse().ok()
    }
}

/// The kernel's map type for a provider and a client.
fn kernel_map(k: &KernelVerdicts, provider: Bdf, client: Bdf) -> Option<MapType> {
    k.verdict(provider, client).map(|(map, _)| map)
}

/// A copy held against its case and the kernel.
#[derive(Debug)]
pub struct CopyEval {
    pub run: CopyRun,
    /// What the kernel says for the copy's drives: the legs through the
    /// provider used, or which providers could serve both.
    pub kernel: String,
    pub problems: Vec<String>,
}

impl CopyEval {
    pub fn as_expected(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Hold a copy against what its case expects and what the kernel says.
pub fn evaluate_copy(
    c: &CopyCase,
    run: CopyRun,
    kernel: &KernelVerdicts,
    providers: &[Bdf],
) -> CopyEval {
    let mut p: Vec<String> = Vec::new();
    let bdf = |s: &str| s.parse::<Bdf>().ok();
    let (sb, db) = (bdf(&run.src), bdf(&run.dst));
    // Providers the kernel lets both drives reach.
    let both: Vec<Bdf> = match (sb, db) {
        (Some(s), Some(d)) => providers
            .iter()
            .copied()
            .filter(|&pv| {
                kernel_map(kernel, pv, s).is_some_and(MapType::is_p2p)
                    && kernel_map(kernel, pv, d).is_some_and(MapType::is_p2p)
            })
            .collect(),
        _ => Vec::new(),
    };
    let legs = |pv: Bdf| -> (Option<MapType>, Option<MapType>) {
        (
            sb.and_then(|s| kernel_map(kernel, pv, s)),
            db.and_then(|d| kernel_map(kernel, pv, d)),
        )
    };
    let show = |m: Option<MapType>| m.map_or("?".to_string(), |m| m.to_string());
    let used: Option<Bdf> = run
        .provider
        .as_deref()
        .and_then(bdf)
        .or_else(|| c.via.as_deref().and_then(bdf));
    let kernel_text = match used {
        Some(pv) => {
            let (r, w) = legs(pv);
            format!("{pv}: read {}, write {}", show(r), show(w))
        }
        None if both.is_empty() => "no published P2P memory reachable by both".to_string(),
        None => format!(
            "P2P possible via {}",
            both.iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    if let Some(e) = &run.check_error {
        p.push(format!("the guest's byte check failed: {e}"));
    }
    if run.outside != "untouched" {
        p.push(format!(
            "bytes outside the destination range were {}",
            if run.outside.is_empty() {
                "not checked"
            } else {
                &run.outside
            }
        ));
    }
    if c.expect_refused {
        if run.exit_code != Some(2) || run.path.is_some() {
            p.push(format!(
                "expected a refusal (exit 2, no report), got exit {:?}{}",
                run.exit_code,
                run.path
                    .as_ref()
                    .map(|x| format!(" and path {x}"))
                    .unwrap_or_default()
            ));
        }
        for b in [&run.src, &run.dst] {
            if !run.error.contains(b.as_str()) {
                p.push(format!("the error does not name {b}: {:?}", run.error));
            }
        }
        if run.unchanged != "exact" {
            p.push(format!(
                "a refused copy changed the destination ({})",
                run.unchanged
            ));
        }
        if !both.is_empty() {
            p.push(format!(
                "refused, but the kernel lets both drives reach {kernel_text}"
            ));
        }
        return CopyEval {
            run,
            kernel: kernel_text,
            problems: p,
        };
    }
    let Some(path) = run.path.clone() else {
        p.push(format!(
            "no report (exit {:?}): {}",
            run.exit_code,
            run.error.lines().last().unwrap_or("")
        ));
        return CopyEval {
            run,
            kernel: kernel_text,
            problems: p,
        };
    };
    if Some(&path) != c.expect_path.as_ref() {
        p.push(format!(
            "path {path} where the scenario expects {}",
            c.expect_path.as_deref().unwrap_or("?")
        ));
    }
    if run.fallback.is_some() != c.expect_fallback {
        p.push(match &run.fallback {
            Some(f) => format!("unexpected fallback: {f}"),
            None => "expected the kernel to refuse P2P mid-copy (fallback), it did not".into(),
        });
    }
    let want_rc = if c.expect_verify == "equal" { 0 } else { 1 };
    if run.exit_code != Some(want_rc) {
        p.push(format!(
            "exit status {:?}, expected {want_rc}",
            run.exit_code
        ));
    }
    match run.verify.as_deref() {
        Some(v) if v == c.expect_verify => {}
        Some(v) => p.push(format!(
            "--verify found {v}, the scenario expects {}",
            c.expect_verify
        )),
        None => p.push("the report has no verify result".into()),
    }
    // peerdma's verify against the independent byte check.
    match (run.verify.as_deref(), run.pattern.as_str()) {
        (Some("equal"), "exact") => {}
        (Some("mismatch"), x) if x.starts_with("differ") => {
            if run.first_difference.is_some()
                && run.check_first_difference().is_some()
                && run.first_difference != run.check_first_difference()
            {
                p.push(format!(
                    "--verify's first difference {:?} is not the byte check's {:?}",
                    run.first_difference,
                    run.check_first_difference()
                ));
            }
        }
        (v, x) => p.push(format!(
            "SILENT DISAGREEMENT: --verify says {} but the byte check says {x}",
            v.unwrap_or("nothing")
        )),
    }
    if run.report["bytes"].as_u64() != Some(run.count) {
        p.push(format!(
            "the report says {:?} bytes, the copy was of {}",
            run.report["bytes"], run.count
        ));
    }
    // The path against the kernel's verdicts.
    match path.as_str() {
        "p2p_bus_addr" | "p2p_thru_host_bridge" => match used {
            Some(pv) => {
                let (r, w) = legs(pv);
                let (rl, wl) = (run.read_leg.as_deref(), run.write_leg.as_deref());
                if r.map(|m| m.to_string()).as_deref() != rl
                    || w.map(|m| m.to_string()).as_deref() != wl
                {
                    p.push(format!(
                        "the report's legs (read {}, write {}) are not the kernel's ({kernel_text})",
                        rl.unwrap_or("-"),
                        wl.unwrap_or("-")
                    ));
                }
                let want = match (r, w) {
                    (Some(MapType::BusAddr), Some(MapType::BusAddr)) => "p2p_bus_addr",
                    _ => "p2p_thru_host_bridge",
                };
                if path != want {
                    p.push(format!("path {path}, but the kernel's legs make it {want}"));
                }
                if !(r.is_some_and(MapType::is_p2p) && w.is_some_and(MapType::is_p2p)) {
                    p.push(format!(
                        "P2P without a fallback where the kernel says not supported ({kernel_text})"
                    ));
                }
            }
            None => p.push("a P2P path without a provider in the report".into()),
        },
        _ => {
            if run.fallback.is_some() {
                let refused = used.is_some_and(|pv| {
                    let (r, w) = legs(pv);
                    !(r.is_some_and(MapType::is_p2p) && w.is_some_and(MapType::is_p2p))
                });
                if !refused {
                    p.push(format!(
                        "fell back although the kernel's verdicts allow P2P ({kernel_text})"
                    ));
                }
            } else if run.mode.as_deref() == Some("direct") && c.via.is_none() && !both.is_empty() {
                p.push(format!(
                    "bounced, but the kernel lets both drives reach P2P memory ({kernel_text})"
                ));
            }
            if run.reason.is_none() && run.fallback.is_none() {
                p.push("bounced without saying why (no reason in the report)".into());
            }
        }
    }
    CopyEval {
        run,
        kernel: kernel_text,
        problems: p,
    }
}

/// Build a [`Smoke`] from a probe's JSON output.
pub fn smoke_from_report(
    p: &crate::scenario::Probe,
    stdout: &str,
    stderr: &str,
    rc: Option<i32>,
) -> Smoke {
    let report: serde_json::Value = serde_json::from_str(stdout).unwrap_or(serde_json::Value::Null);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
    let verdict = report["transfers"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| format!("{} {}", s(&t["transfer"]), s(&t["verdict"]["map_type"])))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let (outcome, message) = if report.is_null() {
        (
            "error".to_string(),
            format!(
                "peerdma probe printed no report (exit {}): {}",
                rc.map_or("?".into(), |r| r.to_string()),
                stderr.trim()
            ),
        )
    } else {
        (s(&report["outcome"]), s(&report["message"]))
    };
    Smoke {
        provider: p.provider.clone(),
        client: p.client.clone(),
        to: p.to.clone(),
        size: p.size.clone(),
        expect: p.expect.clone(),
        why: p.why.clone(),
        outcome,
        agrees_with_verdict: report["agrees"].as_bool().unwrap_or(false),
        verdict,
        exit_code: rc,
        message,
        report,
    }
}

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
    /// Expectations not met (kernel verdicts, smoke tests, copies, missing files).
    pub problems: Vec<String>,
}

impl Evaluation {
    pub fn ok(&self) -> bool {
        self.problems.is_empty() && self.snapshot.ok() && self.root.ok()
    }

    /// `ok 2/2`, `wrong_bytes (expected) 1/1`, `-`.
    pub fn smoke_summary(&self) -> String {
        if self.smoke.is_empty() {
            return "-".into();
        }
        let mut outcomes: Vec<String> = Vec::new();
        for s in &self.smoke {
            let o = if s.as_expected() {
                s.outcome.clone()
            } else {
                format!("{} (expected {})", s.outcome, s.expect)
            };
            if !outcomes.contains(&o) {
                outcomes.push(o);
            }
        }
        let good = self.smoke.iter().filter(|s| s.as_expected()).count();
        format!(
            "{} ({good}/{} as expected)",
            outcomes.join(", "),
            self.smoke.len()
        )
    }

    /// `p2p_bus_addr 2, refused 1 (3/3 as expected)`, `-`.
    pub fn copy_summary(&self) -> String {
        if self.copies.is_empty() {
            return "-".into();
        }
        let mut counts: Vec<(String, usize)> = Vec::new();
        for c in &self.copies {
            let mut k = match &c.run.path {
                Some(p) if c.run.fallback.is_some() => format!("{p} after fallback"),
                Some(p) => p.clone(),
                None => c.run.outcome(),
            };
            if c.run.verify.as_deref() == Some("mismatch") {
                k.push_str(" + verify mismatch");
            }
            match counts.iter_mut().find(|(n, _)| *n == k) {
                Some((_, n)) => *n += 1,
                None => counts.push((k, 1)),
            }
        }
        let good = self.copies.iter().filter(|c| c.as_expected()).count();
        format!(
            "{} ({good}/{} as expected)",
            counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.copies.len()
        )
    }

    /// Lines worth printing: disagreements, unmet expectations, and smoke
    /// tests and copies that moved wrong bytes even where expected (a finding).
    pub fn details(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in [&self.snapshot, &self.root] {
            out.extend(c.render_problems().lines().map(str::to_string));
        }
        out.extend(self.problems.iter().cloned());
        for s in &self.smoke {
            if s.outcome == "wrong_bytes" || s.outcome == "error" || !s.agrees_with_verdict {
                out.push(format!(
                    "FINDING: probe {} ({}): {}{}",
                    s.label(),
                    s.verdict,
                    s.message,
                    if s.as_expected() {
                        " [the scenario expects this]"
                    } else {
                        ""
                    }
                ));
            }
        }
        for c in &self.copies {
            let wrong = c.run.verify.as_deref() == Some("mismatch") || c.run.pattern != "exact";
            if c.run.path.is_some() && wrong {
                out.push(format!(
                    "FINDING: copy {} ({}; kernel {}): {}{}",
                    c.run.label(),
                    c.run.range(),
                    c.kernel,
                    c.run.outcome(),
                    if c.as_expected() {
                        " [the scenario expects this]"
                    } else {
                        ""
                    }
                ));
            }
        }
        out
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
    let mut problems: Vec<String> = verdicts::check(&kernel, &sc.expect)
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
    let providers = published_providers(&snap_topo);
    let mut copies = Vec::new();
    for (c, run) in sc.copy.iter().zip(runs) {
        if (run.src.as_str(), run.dst.as_str()) != (c.src.as_str(), c.dst.as_str()) {
            problems.push(format!(
                "{} records copy {} where the scenario has {}",
                copy_path.display(),
                run.label(),
                c.label()
            ));
            continue;
        }
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
    Ok(Evaluation {
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
        problems,
        kernel,
    })
}

/// Functions that publish P2P memory, as the guest's snapshot shows them.
fn published_providers(topo: &Topology) -> Vec<Bdf> {
    peerdma_p2p::providers(topo)
        .into_iter()
        .map(|f| topo.function(f).bdf)
        .collect()
}

/// The per-scenario table.
pub fn table(rows: &[(String, Result<&Evaluation, String>)]) -> String {
    let mut lines: Vec<[String; 8]> = vec![[
        "scenario",
        "functions",
        "pairs",
        "agree (snapshot)",
        "agree (root/)",
        "acs lists",
        "smoke test",
        "copy",
    ]
    .map(String::from)];
    for (name, r) in rows {
        lines.push(match r {
            Ok(e) => {
                let acs = e.root.acs_compared.map_or("-".into(), |n| {
                    let bad = e
                        .root
                        .acs_mismatches
                        .len()
                        .max(e.snapshot.acs_mismatches.len());
                    format!("{}/{n}", n - bad.min(n))
                });
                [
                    name.clone(),
                    e.functions.to_string(),
                    e.kernel_pairs.to_string(),
                    e.snapshot.pairs_agreeing.to_string(),
                    e.root.pairs_agreeing.to_string(),
                    acs,
                    e.smoke_summary(),
                    e.copy_summary(),
                ]
            }
            Err(why) => {
                let mut l = [
                    name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    String::new(),
                    String::new(),
                ];
                l[6] = format!("FAILED: {}", why.lines().next().unwrap_or(""));
                l
            }
        });
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for l in &lines {
        let mut line = format!("{:<w$}", l[0], w = widths[0]);
        for i in 1..6 {
            line.push_str(&format!("  {:>w$}", l[i], w = widths[i]));
        }
        line.push_str(&format!("  {:<w$}  ", l[6], w = widths[6]));
        line.push_str(&l[7]);
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Probe;

    fn probe(expect: &str) -> Probe {
        Probe {
            provider: "0000:03:00.0".into(),
            client: "0000:04:00.0".into(),
            to: None,
            size: None,
            expect: expect.into(),
            why: String::new(),
        }
    }

    #[test]
    fn smoke_from_a_report() {
        let json = r#"{"outcome": "wrong_bytes", "agrees": false, "message": "WRONG BYTES",
            "transfers": [{"transfer": "drive_to_p2pmem", "verdict": {"map_type": "bus_addr"}}]}"#;
        let s = smoke_from_report(&probe("wrong_bytes"), json, "", Some(1));
        assert_eq!(s.outcome, "wrong_bytes");
        assert!(s.as_expected() && !s.agrees_with_verdict);
        assert_eq!(s.verdict, "drive_to_p2pmem bus_addr");
        assert_eq!(s.label(), "0000:03:00.0 <- 0000:04:00.0");
    }

    #[test]
    fn a_probe_without_a_report_is_an_error() {
        let s = smoke_from_report(&probe("ok"), "", "peerdma: error: boom\n", Some(2));
        assert_eq!(s.outcome, "error");
        assert!(!s.as_expected());
        assert!(
            s.message.contains("exit 2") && s.message.contains("boom"),
            "{}",
            s.message
        );
        assert!(s.report.is_null());
    }

    const VERDICTS: &str = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
        dev 0000:03:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        dev 0000:04:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        dev 0000:05:00.0 acs_redir 0 host_bridge - wl_same 0 wl_cross 0\n\
        pair 0000:03:00.0 0000:04:00.0 bus_addr 4\npair 0000:04:00.0 0000:03:00.0 bus_addr 4\n\
        pair 0000:03:00.0 0000:05:00.0 not_supported 6\npair 0000:05:00.0 0000:03:00.0 not_supported 6\n\
        pair 0000:04:00.0 0000:05:00.0 not_supported 6\npair 0000:05:00.0 0000:04:00.0 not_supported 6\n";

    fn case(toml_text: &str) -> CopyCase {
        toml::from_str(toml_text).unwrap()
    }

    fn eval(c: &CopyCase, json: &str, err: &str, rc: i32, check: &str) -> CopyEval {
        let k = oracle::parse_verdicts(VERDICTS, "test").unwrap();
        let providers: Vec<Bdf> = ["0000:03:00.0", "0000:04:00.0", "0000:05:00.0"]
            .iter()
            .map(|b| b.parse().unwrap())
            .collect();
        let run = copy_from_files(c, json, err, Some(rc), check).unwrap();
        evaluate_copy(c, run, &k, &providers)
    }

    const EXACT: &str = "src_dev=/dev/nvme0n1\ndst_dev=/dev/nvme1n1\npattern=exact\n\
        unchanged=differ 0\nzeros=no\noutside=untouched\n";

    fn p2p_report(equal: bool) -> String {
        format!(
            r#"{{"path": "p2p_bus_addr", "bytes": 8388608, "mode": "direct",
            "read_leg": "bus_addr", "write_leg": "bus_addr",
            "staging": {{"kind": "p2p", "provider": "0000:03:00.0"}},
            "verify": {{"equal": {equal}, "first_difference": {}}}}}"#,
            if equal { "null" } else { "0" }
        )
    }

    #[test]
    fn a_p2p_copy_is_held_to_the_kernel_and_the_byte_check() {
        let c = case(
            "src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"p2p_bus_addr\"\n",
        );
        let e = eval(&c, &p2p_report(true), "", 0, EXACT);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(e.kernel, "0000:03:00.0: read bus_addr, write bus_addr");
        assert_eq!(e.run.outcome(), "p2p_bus_addr, verify equal, bytes exact");
        // --verify says equal, the bytes are wrong: the worst case, named.
        let wrong = EXACT.replace("pattern=exact", "pattern=differ 0");
        let e = eval(&c, &p2p_report(true), "", 0, &wrong);
        assert!(
            e.problems.iter().any(|p| p.contains("SILENT DISAGREEMENT")),
            "{:?}",
            e.problems
        );
        // The report's legs must be the kernel's.
        let json = p2p_report(true).replace(
            r#""write_leg": "bus_addr""#,
            r#""write_leg": "thru_host_bridge""#,
        );
        let e = eval(&c, &json, "", 0, EXACT);
        assert!(
            e.problems.iter().any(|p| p.contains("not the kernel's")),
            "{:?}",
            e.problems
        );
        // Bytes outside the range must stay.
        let e = eval(
            &c,
            &p2p_report(true),
            "",
            0,
            &EXACT.replace("untouched", "changed after the range"),
        );
        assert!(
            e.problems.iter().any(|p| p.contains("outside")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn wrong_bytes_must_be_caught_by_verify() {
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"p2p_bus_addr\"\nexpect_verify = \"mismatch\"\n");
        let zeros = EXACT
            .replace("pattern=exact", "pattern=differ 0")
            .replace("zeros=no", "zeros=yes");
        let e = eval(&c, &p2p_report(false), "", 1, &zeros);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(
            e.run.outcome(),
            "p2p_bus_addr, verify mismatch, bytes wrong (differ 0: zeros)"
        );
        // A mismatch must not exit 0.
        let e = eval(&c, &p2p_report(false), "", 0, &zeros);
        assert!(
            e.problems.iter().any(|p| p.contains("exit status")),
            "{:?}",
            e.problems
        );
    }

    #[test]
    fn refusals_and_bounces_are_held_to_the_kernel() {
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:05:00.0\"\nno_bounce = true\nexpect_refused = true\n");
        let untouched = EXACT
            .replace("pattern=exact", "pattern=differ 0")
            .replace("unchanged=differ 0", "unchanged=exact");
        let err = "peerdma: error: cannot copy /dev/nvme0n1 (block device on 0000:03:00.0) -> /dev/nvme2n1 (block device on 0000:05:00.0) peer to peer: ...";
        let e = eval(&c, "", err, 2, &untouched);
        assert!(e.as_expected(), "{:?}", e.problems);
        assert_eq!(e.kernel, "no published P2P memory reachable by both");
        let e = eval(&c, "", "peerdma: error: no", 2, &untouched);
        assert!(
            e.problems.iter().any(|p| p.contains("does not name")),
            "{:?}",
            e.problems
        );
        // Bouncing where the kernel allows P2P is a disagreement.
        let c = case("src = \"0000:03:00.0\"\ndst = \"0000:04:00.0\"\nexpect_path = \"bounced\"\n");
        let json = r#"{"path": "bounced", "bytes": 8388608, "mode": "direct", "reason": "why not",
            "staging": {"kind": "host", "provider": null}, "verify": {"equal": true}}"#;
        let e = eval(&c, json, "", 0, EXACT);
        assert!(
            e.problems
                .iter()
                .any(|p| p.contains("lets both drives reach")),
            "{:?}",
            e.problems
        );
    }

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

    #[test]
    fn table_lines_up() {
        let rows = vec![(
            "only-failed".to_string(),
            Err("no kernel\nmore".to_string()),
        )];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("scenario     functions"), "{t}");
        assert!(lines[1].ends_with("FAILED: no kernel"), "{t}");
    }
}
