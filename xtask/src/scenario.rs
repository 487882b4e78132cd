//! Emulated topologies: one TOML file per scenario in `xtask/scenarios/`.

use crate::util;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    /// `-machine` value.
    #[serde(default = "default_machine")]
    pub machine: String,
    /// `-cpu` model.
    pub cpu: String,
    /// `-m` value.
    #[serde(default = "default_memory")]
    pub memory: String,
    #[serde(default = "default_smp")]
    pub smp: u32,
    /// Extra kernel command line.
    #[serde(default)]
    pub cmdline: String,
    /// Extra QEMU arguments (devices, NUMA nodes, ...).
    #[serde(default)]
    pub qemu: Vec<String>,
    /// Free-form notes on what to expect and why (for humans; the scenario
    /// file is copied next to the results).
    #[serde(default)]
    #[allow(dead_code)]
    pub notes: String,
    /// Verdicts the kernel is expected to give; checked after the run.
    #[serde(default)]
    pub expect: Vec<Expect>,
    /// Raw disk images to create in the scenario's output directory and
    /// attach as `-blockdev` nodes of these names (`-device nvme,drive=NAME`),
    /// so that the probe has real bytes to move.
    #[serde(default)]
    pub disks: Vec<String>,
    /// Size of each disk image [default: 64M].
    #[serde(default = "default_disk_size")]
    pub disk_size: String,
    /// P2P smoke tests (`peerdma probe`) to run in the guest, with the
    /// outcome each must have.
    #[serde(default)]
    pub probe: Vec<Probe>,
    /// `peerdma copy` runs between drives in the guest, with the path and
    /// outcome each must have.
    #[serde(default)]
    pub copy: Vec<CopyCase>,
}

/// Where copies must stay clear of the end of a disk: the probes' scratch
/// regions (the last 2 x 1 MiB) and the 4 KiB checked after the range.
pub const COPY_END_RESERVE: u64 = (2 << 20) + 4096;

/// A `peerdma copy --json --force-device --verify` between the first
/// namespaces of two NVMe functions in the guest, after a fresh random
/// pattern was written to the source range (xtask/guest/peerdma.sh).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyCase {
    /// The function whose drive is read.
    pub src: String,
    /// The function whose drive is written.
    pub dst: String,
    /// `--skip` (bytes, suffixes allowed) [default: 0].
    #[serde(default = "zero")]
    pub skip: String,
    /// `--seek` [default: 0].
    #[serde(default = "zero")]
    pub seek: String,
    /// `--count` [default: 8M].
    #[serde(default = "default_copy_count")]
    pub count: String,
    /// `--via`: the provider to stage through.
    pub via: Option<String>,
    /// `--no-bounce`.
    #[serde(default)]
    pub no_bounce: bool,
    /// Run with PEERDMA_COPY_UNCHECKED_VIA=1: `--via` is not held to
    /// peerdma's verdict, the kernel decides (and may refuse: EREMOTEIO,
    /// then the copy falls back to host memory).
    #[serde(default)]
    pub unchecked_via: bool,
    /// `p2p_bus_addr`, `p2p_thru_host_bridge` or `bounced`: the path the
    /// report must give; absent when the copy must be refused.
    pub expect_path: Option<String>,
    /// The copy must fail with exit status 2, an error naming both
    /// functions, and the destination untouched (`--no-bounce` on a pair
    /// with no P2P path).
    #[serde(default)]
    pub expect_refused: bool,
    /// The report must (or must not) say the kernel refused P2P mid-copy
    /// and the rest bounced.
    #[serde(default)]
    pub expect_fallback: bool,
    /// `equal` or `mismatch`: what `--verify` (and the independent byte
    /// check) must find. `mismatch` is how a scenario records that the
    /// emulation moves wrong bytes: the copy must not pass silently.
    #[serde(default = "default_verify")]
    pub expect_verify: String,
    #[serde(default)]
    pub why: String,
}

fn zero() -> String {
    "0".into()
}
fn default_copy_count() -> String {
    "8M".into()
}
fn default_verify() -> String {
    "equal".into()
}

/// The paths a copy report can give.
pub const COPY_PATHS: &[&str] = &["p2p_bus_addr", "p2p_thru_host_bridge", "bounced"];

impl CopyCase {
    /// (skip, seek, count) in bytes.
    pub fn range(&self) -> Result<(u64, u64, u64)> {
        let p = |what: &str, v: &str| {
            peerdma_mem::parse_size(v)
                .with_context(|| format!("copy {}: {what} {v:?}", self.label()))
        };
        Ok((
            p("skip", &self.skip)?,
            p("seek", &self.seek)?,
            p("count", &self.count)?,
        ))
    }

    /// `SRC -> DST` for messages.
    pub fn label(&self) -> String {
        format!("{} -> {}", self.src, self.dst)
    }

    /// The flags beyond the range, for tables.
    pub fn describe_flags(&self) -> String {
        let mut f = Vec::new();
        if let Some(v) = &self.via {
            f.push(format!("--via {v}"));
        }
        if self.no_bounce {
            f.push("--no-bounce".into());
        }
        if self.unchecked_via {
            f.push("unchecked".into());
        }
        f.join(" ")
    }

    /// What the scenario expects, in words for tables.
    pub fn describe_expect(&self) -> String {
        if self.expect_refused {
            return "refused".into();
        }
        let mut s = self.expect_path.clone().unwrap_or_default();
        if self.expect_fallback {
            s.push_str(" after fallback");
        }
        s.push_str(&format!(", verify {}", self.expect_verify));
        s
    }
}

/// A `peerdma probe PROVIDER CLIENT [--to TO] [--size SIZE]` run in the guest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub provider: String,
    pub client: String,
    pub to: Option<String>,
    pub size: Option<String>,
    /// `ok`, `eremoteio`, `wrong_bytes` or `error`: what this probe must
    /// report. Not always what the verdict predicts: where the emulation
    /// moves wrong bytes, the scenario says so.
    pub expect: String,
    #[serde(default)]
    pub why: String,
}

impl Probe {
    /// `provider -> client [-> to]` for messages.
    pub fn label(&self) -> String {
        match &self.to {
            Some(t) => format!("{} -> {} -> {t}", self.provider, self.client),
            None => format!("{} <- {}", self.provider, self.client),
        }
    }
}

/// An expected verdict for a pair, checked in both directions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub pair: [String; 2],
    pub map: String,
    pub dist: Option<i64>,
    #[serde(default)]
    pub why: String,
}

fn default_machine() -> String {
    "q35".into()
}
fn default_memory() -> String {
    "512M".into()
}
fn default_smp() -> u32 {
    1
}
fn default_disk_size() -> String {
    "64M".into()
}

pub fn dir() -> PathBuf {
    util::workspace_root().join("xtask/scenarios")
}

/// All scenario names, sorted.
pub fn all_names() -> Result<Vec<String>> {
    let dir = dir();
    let mut names = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("cannot list {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Some(stem) = path.file_stem() {
                names.push(stem.to_string_lossy().into_owned());
            }
        }
    }
    names.sort();
    Ok(names)
}

pub fn load(name: &str) -> Result<Scenario> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("invalid scenario name {name:?} (letters, digits, '-' and '_' only)");
    }
    let path = dir().join(format!("{name}.toml"));
    if !path.is_file() {
        let known = all_names().unwrap_or_default().join(", ");
        bail!(
            "no scenario {name:?} ({} does not exist); known: {known}",
            path.display()
        );
    }
    load_file(&path, name)
}

/// Load a scenario file from anywhere (a fixture's copy), naming it `name`.
pub fn load_file(path: &std::path::Path, name: &str) -> Result<Scenario> {
    let text = util::read_string(path)?;
    let mut scenario: Scenario = toml::from_str(&text)
        .with_context(|| format!("invalid scenario file {}", path.display()))?;
    scenario.name = name.to_string();
    for p in &scenario.probe {
        if peerdma_linux::probe::Outcome::from_name(&p.expect).is_none() {
            bail!(
                "{}: probe {}: unknown expect {:?} (ok, eremoteio, wrong_bytes or error)",
                path.display(),
                p.label(),
                p.expect
            );
        }
        for w in [&p.provider, &p.client].into_iter().chain(p.to.as_ref()) {
            if w.is_empty() || w.contains(char::is_whitespace) {
                bail!(
                    "{}: probe {}: bad function {w:?}",
                    path.display(),
                    p.label()
                );
            }
        }
    }
    let disk_size = peerdma_mem::parse_size(&scenario.disk_size)
        .with_context(|| format!("{}: disk_size", path.display()))?;
    for c in &scenario.copy {
        let at = || format!("{}: copy {}", path.display(), c.label());
        for w in [&c.src, &c.dst].into_iter().chain(c.via.as_ref()) {
            if w.parse::<peerdma_mem::Bdf>().is_err() {
                bail!("{}: {w:?} is not a PCI function (DDDD:BB:DD.F)", at());
            }
        }
        if c.src == c.dst {
            bail!("{}: source and destination are the same drive", at());
        }
        let (skip, seek, count) = c.range().with_context(at)?;
        if count == 0 {
            bail!("{}: count 0", at());
        }
        for (what, off) in [("skip", skip), ("seek", seek)] {
            if off + count + COPY_END_RESERVE > disk_size {
                bail!(
                    "{}: {what} {off} + count {count} runs into the last {} bytes of the {disk_size}-byte disk (probe scratch space)",
                    at(),
                    COPY_END_RESERVE
                );
            }
        }
        match (&c.expect_path, c.expect_refused) {
            (None, true) if !c.no_bounce => {
                bail!(
                    "{}: only a --no-bounce copy can be expected to be refused",
                    at()
                )
            }
            (None, true) => {}
            (Some(p), false) if COPY_PATHS.contains(&p.as_str()) => {}
            (Some(p), false) => bail!(
                "{}: unknown expect_path {p:?} ({})",
                at(),
                COPY_PATHS.join(", ")
            ),
            (Some(_), true) => bail!(
                "{}: expect_path and expect_refused exclude each other",
                at()
            ),
            (None, false) => bail!("{}: give expect_path (or expect_refused = true)", at()),
        }
        if !["equal", "mismatch"].contains(&c.expect_verify.as_str()) {
            bail!(
                "{}: unknown expect_verify {:?} (equal or mismatch)",
                at(),
                c.expect_verify
            );
        }
        if c.unchecked_via && c.via.is_none() {
            bail!("{}: unchecked_via needs via", at());
        }
        if c.expect_fallback && c.expect_path.as_deref() != Some("bounced") {
            bail!(
                "{}: a copy that falls back ends bounced (expect_path = \"bounced\")",
                at()
            );
        }
    }
    for d in &scenario.disks {
        if d.is_empty()
            || !d
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!(
                "{}: disk name {d:?}: letters, digits, '-' and '_' only",
                path.display()
            );
        }
    }
    for e in &scenario.expect {
        if !["not_supported", "bus_addr", "thru_host_bridge"].contains(&e.map.as_str()) {
            bail!(
                "{}: unknown map type {:?} in expectation for {:?}",
                path.display(),
                e.map,
                e.pair
            );
        }
    }
    Ok(scenario)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_loads_and_its_probes_have_drives() {
        let names = all_names().unwrap();
        assert!(names.len() >= 8, "{names:?}");
        for n in names {
            let sc = load(&n).unwrap_or_else(|e| panic!("{e:#}"));
            if !sc.probe.is_empty() || !sc.copy.is_empty() {
                assert!(!sc.disks.is_empty(), "{n}: probes and copies need disks");
            }
            // Every scenario with two or more drives copies between them.
            let drives = sc.qemu.iter().filter(|a| a.starts_with("nvme,")).count();
            if drives >= 2 {
                assert!(!sc.copy.is_empty(), "{n}: {drives} drives and no [[copy]]");
            }
            for d in &sc.disks {
                let used = sc.qemu.iter().any(|a| a.contains(&format!("drive={d},")));
                assert!(used, "{n}: disk {d} is attached to no device");
            }
        }
    }

    #[test]
    fn bad_probe_expectations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        let text = "description = \"x\"\ncpu = \"max\"\n\n[[probe]]\nprovider = \"0000:01:00.0\"\nclient = \"0000:02:00.0\"\nexpect = \"fine\"\n";
        std::fs::write(&path, text).unwrap();
        let e = load_file(&path, "x").unwrap_err().to_string();
        assert!(e.contains("unknown expect \"fine\""), "{e}");
        std::fs::write(&path, text.replace("fine", "wrong_bytes")).unwrap();
        let sc = load_file(&path, "x").unwrap();
        assert_eq!(sc.probe[0].label(), "0000:01:00.0 <- 0000:02:00.0");
        assert_eq!(sc.disk_size, "64M");
    }

    #[test]
    fn bad_copy_expectations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        let head = "description = \"x\"\ncpu = \"max\"\n\n[[copy]]\nsrc = \"0000:01:00.0\"\ndst = \"0000:02:00.0\"\n";
        let load = |body: &str| {
            std::fs::write(&path, format!("{head}{body}")).unwrap();
            load_file(&path, "x").map_err(|e| format!("{e:#}"))
        };
        let sc = load("expect_path = \"p2p_bus_addr\"\n").unwrap();
        assert_eq!(sc.copy[0].range().unwrap(), (0, 0, 8 << 20));
        assert_eq!(sc.copy[0].describe_expect(), "p2p_bus_addr, verify equal");
        let e = load("expect_path = \"p2p\"\n").unwrap_err();
        assert!(e.contains("unknown expect_path \"p2p\""), "{e}");
        let e = load("expect_refused = true\n").unwrap_err();
        assert!(e.contains("only a --no-bounce copy"), "{e}");
        load("no_bounce = true\nexpect_refused = true\n").unwrap();
        let e = load("expect_path = \"bounced\"\nseek = \"62M\"\n").unwrap_err();
        assert!(e.contains("probe scratch space"), "{e}");
        let e = load("expect_path = \"bounced\"\nexpect_verify = \"same\"\n").unwrap_err();
        assert!(e.contains("expect_verify"), "{e}");
        let e = load("expect_path = \"p2p_bus_addr\"\nexpect_fallback = true\n").unwrap_err();
        assert!(e.contains("falls back"), "{e}");
    }
}
