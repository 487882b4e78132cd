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
    let text = util::read_string(&path)?;
    let mut scenario: Scenario = toml::from_str(&text)
        .with_context(|| format!("invalid scenario file {}", path.display()))?;
    scenario.name = name.to_string();
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
