//! Holding peerdma against the kernel for one scenario's results: the
//! kernel's verdicts against peerdma's model read from the guest's snapshot
//! and from the guest's own copy of its sysfs, and the P2P smoke tests
//! against what the scenario expects.
//!
//! Works on a result directory (`target/vm/<scenario>/`) and on a fixture
//! directory (`tests/fixtures/kernel/<scenario>/`) alike: both hold
//! `verdicts`, `snapshot.json`, `root/`, `acs-warnings.txt` and `smoke.json`.

use crate::scenario::Scenario;
use crate::util;
use crate::verdicts;
use anyhow::{bail, Context, Result};
use peerdma_linux::oracle::{self, Comparison};
use peerdma_pci::Source;
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
    pub functions: usize,
    pub kernel_pairs: usize,
    pub counts: String,
    pub snapshot: Comparison,
    pub root: Comparison,
    pub smoke: Vec<Smoke>,
    /// Expectations not met (kernel verdicts, smoke tests, missing files).
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

    /// Lines worth printing: disagreements, unmet expectations, and smoke
    /// tests that moved wrong bytes even where expected (a finding).
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
    let acs = oracle::parse_acs_warnings(&util::read_string(&acs_path)?);
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
    Ok(Evaluation {
        description: sc.description.clone(),
        functions: kernel.devices.len(),
        kernel_pairs: kernel.pairs.len(),
        counts: verdicts::counts(&kernel)
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        snapshot,
        root,
        smoke,
        problems,
    })
}

/// The per-scenario table.
pub fn table(rows: &[(String, Result<&Evaluation, String>)]) -> String {
    let mut lines: Vec<[String; 7]> = vec![[
        "scenario",
        "functions",
        "pairs",
        "agree (snapshot)",
        "agree (root/)",
        "acs lists",
        "smoke test",
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
                ];
                l[6] = format!("FAILED: {}", why.lines().next().unwrap_or(""));
                l
            }
        });
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for l in &lines {
        let mut line = format!("{:<w$}", l[0], w = widths[0]);
        for i in 1..6 {
            line.push_str(&format!("  {:>w$}", l[i], w = widths[i]));
        }
        line.push_str("  ");
        line.push_str(&l[6]);
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
