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
    peerdma_mem::parse_size(&scenario.disk_size)
        .with_context(|| format!("{}: disk_size", path.display()))?;
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
            if !sc.probe.is_empty() {
                assert!(!sc.disks.is_empty(), "{n}: probes need disks");
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
}
