//! What the guest brought back, as records: a [`Smoke`] per `peerdma
//! probe` run (`smoke.json`) and a [`CopyRun`] per `peerdma copy` run with
//! the guest's own byte check of its destination (`copy.json`), built from
//! the files the guest scripts write (xtask/guest/peerdma.sh).

use crate::scenario::{CopyCase, Probe};
use anyhow::Result;
use serde::{Deserialize, Serialize};

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
    pub(super) fn check_first_difference(&self) -> Option<u64> {
        self.pattern.strip_prefix("differ ")?.parse().ok()
    }
}

/// Build a [`Smoke`] from a probe's JSON output.
pub fn smoke_from_report(p: &Probe, stdout: &str, stderr: &str, rc: Option<i32>) -> Smoke {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
