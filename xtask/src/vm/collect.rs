//! What the guest brought back: its payload unpacked next to the console
//! log, the probes' and copies' outputs gathered into `smoke.json` and
//! `copy.json`, the kernel's ACS advice kept as `acs-warnings.txt`, and the
//! whole evaluated and printed.

use super::{Accel, CONSOLE_TAIL};
use crate::oracle::{self, CopyEval, CopyFile, Evaluation, Smoke, SmokeFile};
use crate::scenario::Scenario;
use crate::util::{self, show};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Decode the guest's payload and unpack it into `dir`.
pub(super) fn unpack(sc: &Scenario, dir: &Path, payload: &str) -> Result<()> {
    let tgz =
        base64_decode(payload).with_context(|| format!("scenario {}: corrupt payload", sc.name))?;
    let mut tar = Command::new("tar");
    tar.args(["-xzf", "-", "-C"]).arg(dir).stdin(Stdio::piped());
    let mut child = tar
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(&tar)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&tgz)
            .with_context(|| format!("writing to `{}`", show(&tar)))?;
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", show(&tar)))?;
    if !status.success() {
        bail!("scenario {}: `{}` failed ({status})", sc.name, show(&tar));
    }

    Ok(())
}

/// Decode and unpack the guest's payload, gather the smoke tests and the
/// kernel's ACS advice, and evaluate.
pub(super) fn collect(
    sc: &Scenario,
    dir: &Path,
    payload: &str,
    accel: Accel,
    elapsed: Duration,
) -> Result<Evaluation> {
    unpack(sc, dir, payload)?;
    let path = dir.join("verdicts");
    if !path.is_file() {
        let why = std::fs::read_to_string(dir.join("error")).unwrap_or_default();
        bail!(
            "scenario {}: the guest brought back no verdicts file {}",
            sc.name,
            why.trim()
        );
    }
    let rc_path = dir.join("peerdma/hooks.rc");
    let rc = std::fs::read_to_string(&rc_path).unwrap_or_default();
    if rc.trim() != "0" {
        let log = dir.join("peerdma/hooks.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "scenario {}: the peerdma hooks (xtask/guest/peerdma.sh) exited with {:?}; \
             last lines of {}:\n{}",
            sc.name,
            rc.trim(),
            log.display(),
            lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n")
        );
    }

    let dmesg = util::read_string(&dir.join("dmesg.txt"))?;
    util::write(
        &dir.join("acs-warnings.txt"),
        peerdma_p2p::oracle::acs_warning_lines(&dmesg),
    )?;
    let mut probes = Vec::new();
    for (i, p) in sc.probe.iter().enumerate() {
        let base = dir.join("probes").join((i + 1).to_string());
        let read =
            |ext: &str| std::fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
        let rc = read("rc").trim().parse().ok();
        probes.push(oracle::smoke_from_report(
            p,
            &read("json"),
            &read("err"),
            rc,
        ));
    }
    let smoke = SmokeFile { probes };
    util::write(
        &dir.join("smoke.json"),
        serde_json::to_string_pretty(&smoke)? + "\n",
    )?;
    let mut copies = Vec::new();
    for (i, c) in sc.copy.iter().enumerate() {
        let base = dir.join("copies").join((i + 1).to_string());
        let read =
            |ext: &str| std::fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
        let rc = read("rc").trim().parse().ok();
        copies.push(oracle::copy_from_files(
            c,
            &read("json"),
            &read("err"),
            rc,
            &read("check"),
        )?);
    }
    util::write(
        &dir.join("copy.json"),
        serde_json::to_string_pretty(&CopyFile { copies })? + "\n",
    )?;

    // The kernel's DMA mapping event lines of each run (PEERDMA_TRACE_RAW),
    // kept as `traces/{probe,copy}-N.trace`.
    let traces = dir.join("traces");
    util::remove_dir_all_if_exists(&traces)?;
    util::create_dir_all(&traces)?;
    for (kind, sub, n) in [
        ("probe", "probes", sc.probe.len()),
        ("copy", "copies", sc.copy.len()),
    ] {
        for i in 1..=n {
            let from = dir.join(sub).join(format!("{i}.trace"));
            if from.is_file() {
                let to = traces.join(format!("{kind}-{i}.trace"));
                std::fs::copy(&from, &to).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), to.display())
                })?;
            }
        }
    }
    let e = oracle::evaluate(dir, sc)?;
    let v = &e.kernel;
    eprintln!(
        "vm: {}: accel {}, boot-to-poweroff {}, cpu_supports_p2pdma {}, {} functions, {} pairs ({}); \
         peerdma agrees on {}/{} (snapshot), {}/{} (root/); smoke: {}; copy: {} -> {}",
        sc.name,
        accel.name(),
        util::secs(elapsed),
        v.cpu_supports_p2pdma.map_or("?", |b| if b { "1" } else { "0" }),
        e.functions,
        e.kernel_pairs,
        e.counts,
        e.snapshot.pairs_agreeing,
        e.snapshot.pairs_compared,
        e.root.pairs_agreeing,
        e.root.pairs_compared,
        e.smoke_summary(),
        e.copy_summary(),
        dir.display()
    );
    print_smoke(sc, &smoke.probes);
    print_copies(sc, &e.copies);
    for t in &e.traced {
        eprintln!(
            "vm: {}: {}: observed {}; the kernel's lines: {}{}",
            sc.name,
            t.label,
            t.observed(),
            t.mapped(),
            if t.problems.is_empty() {
                String::new()
            } else {
                format!(" (PROBLEMS: {})", t.problems.join("; "))
            }
        );
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("trace-overhead.txt")) {
        eprintln!("vm: {}: {}", sc.name, trace_overhead(&text));
    }
    if !sc.expect.is_empty() && oracle::check_expectations(v, &sc.expect).is_empty() {
        eprintln!(
            "vm: scenario {}: all {} kernel expectation(s) met",
            sc.name,
            sc.expect.len()
        );
    }
    Ok(e)
}

/// The guest's `trace-overhead.txt` (`plain|trace WALL BYTES_PER_SEC
/// rc=N` per run) as medians side by side.
fn trace_overhead(text: &str) -> String {
    let mut runs: [(Vec<f64>, Vec<f64>, usize); 2] = Default::default();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let i = match f.first() {
            Some(&"plain") => 0,
            Some(&"trace") => 1,
            _ => continue,
        };
        if f.get(3) != Some(&"rc=0") {
            runs[i].2 += 1;
            continue;
        }
        if let (Some(Ok(w)), Some(Ok(b))) =
            (f.get(1).map(|x| x.parse()), f.get(2).map(|x| x.parse()))
        {
            runs[i].0.push(w);
            runs[i].1.push(b);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let (pw, pb, tw, tb) = (
        median(&runs[0].0),
        median(&runs[0].1),
        median(&runs[1].0),
        median(&runs[1].1),
    );
    match (pw, pb, tw, tb) {
        (Some(pw), Some(pb), Some(tw), Some(tb)) => format!(
            "copy of 32 MiB without/with --trace, median of {}/{} run(s): wall {pw:.2} s / {tw:.2} s ({:+.1}%), {}/s / {}/s ({:+.1}% throughput){}",
            runs[0].0.len(),
            runs[1].0.len(),
            (tw / pw - 1.0) * 100.0,
            peerdma_mem::format_size(pb as u64),
            peerdma_mem::format_size(tb as u64),
            (tb / pb - 1.0) * 100.0,
            if runs[0].2 + runs[1].2 > 0 {
                format!(", {} run(s) failed", runs[0].2 + runs[1].2)
            } else {
                String::new()
            }
        ),
        _ => format!("the --trace overhead runs did not complete: {}", text.trim()),
    }
}

fn print_smoke(sc: &Scenario, smoke: &[Smoke]) {
    for s in smoke {
        eprintln!(
            "vm: {}: probe {}: {}{} [{}]",
            sc.name,
            s.label(),
            s.outcome,
            if s.as_expected() {
                String::new()
            } else {
                format!(" (EXPECTED {})", s.expect)
            },
            s.verdict
        );
    }
}

fn print_copies(sc: &Scenario, copies: &[CopyEval]) {
    for c in copies {
        let r = &c.run;
        eprintln!(
            "vm: {}: copy {} ({}{}): {}{} [kernel {}]{}",
            sc.name,
            r.label(),
            r.range(),
            if r.flags.is_empty() {
                String::new()
            } else {
                format!(", {}", r.flags)
            },
            r.outcome(),
            r.bytes_per_sec
                .map(|b| format!(", {}/s", peerdma_mem::format_size(b as u64)))
                .unwrap_or_default(),
            c.kernel,
            if c.as_expected() {
                String::new()
            } else {
                format!(" (EXPECTED {}: {})", r.expect, c.problems.join("; "))
            }
        );
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => bail!("invalid base64 character {:?} at offset {i}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_overhead_medians() {
        let t = "plain 1.00 1000000 rc=0\ntrace 1.10 900000 rc=0\nplain 2.00 500000 rc=0\ntrace 1.20 800000 rc=0\nplain 1.50 700000 rc=0\ntrace 9.00 1 rc=1\n";
        let s = super::trace_overhead(t);
        assert!(
            s.contains("median of 3/2 run(s): wall 1.50 s / 1.20 s (-20.0%)"),
            "{s}"
        );
        assert!(s.contains("1 run(s) failed"), "{s}");
        assert!(super::trace_overhead("garbage").contains("did not complete"));
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert!(base64_decode("a$").is_err());
    }
}
