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
    if !sc.expect.is_empty() && oracle::check_expectations(v, &sc.expect).is_empty() {
        eprintln!(
            "vm: scenario {}: all {} kernel expectation(s) met",
            sc.name,
            sc.expect.len()
        );
    }
    Ok(e)
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
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert!(base64_decode("a$").is_err());
    }
}
