//! `cargo xtask hwloc-fixtures`: hwloc XML of every kernel fixture, made
//! by Debian's `lstopo` reading the fixture's `root/` tree, stored under
//! `tests/fixtures/hwloc/kernel/` so that `cargo test` holds peerdma's
//! model from the XML against its model from the same tree without hwloc.
//!
//! hwloc reads another machine's files with `lstopo -i DIR` (its
//! documentation: HWLOC_FSROOT=DIR with only the Linux backend, as
//! `hwloc-gather-topology` saves them). The fixtures' trees hold what
//! peerdma reads (the PCI functions under `sys/`, `proc/cpuinfo`), not
//! everything hwloc needs, so each tree is copied and completed first,
//! from the fixture's own data only:
//!
//! - `sys/devices/system/cpu/cpuN/topology/` (package and core sets, from
//!   `/proc/cpuinfo`'s `physical id` and `core id`): without it hwloc's
//!   Linux backend stops ("failed to find sysfs cpu topology directory");
//! - `sys/devices/system/node/nodeN/cpumap` and `cpulist`: a node per
//!   `numa_node` the PCI functions name, with the CPUs their
//!   `local_cpulist` gives (one node of every CPU when none names one);
//! - each function's `local_cpus` mask, from its `local_cpulist` (hwloc
//!   places PCI buses by `local_cpus`);
//! - `proc/hwloc-nofile-info` with `Architecture: x86_64` (what
//!   `hwloc-gather-topology` saves; without it hwloc does not know the
//!   architecture and reads only `model name` from `/proc/cpuinfo`, not
//!   the vendor and family the kernel's AMD rule needs).
//!
//! Three files per fixture: `<scenario>.xml` (`lstopo --of xml`, hwloc's
//! default I/O filter: what a cluster keeps), `<scenario>.whole-io.xml`
//! (`--whole-io`: every function) and `<scenario>.v1.xml` (the default
//! filter, written as hwloc 1.x XML with `--export-xml-flags v1`).

use crate::{capture, util};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn fixtures_dir() -> PathBuf {
    util::workspace_root().join("tests/fixtures/hwloc/kernel")
}

pub fn run() -> Result<()> {
    if Command::new("lstopo").arg("--version").output().is_err() {
        bail!("lstopo is not installed: install Debian's hwloc package (.ci/deps does)");
    }
    let version = util::stdout(Command::new("lstopo").arg("--version"))?;
    let kernel = capture::fixtures_dir();
    let out = fixtures_dir();
    util::create_dir_all(&out)?;
    let mut scenarios: Vec<PathBuf> = fs::read_dir(&kernel)
        .with_context(|| format!("listing {}", kernel.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("root").is_dir())
        .collect();
    scenarios.sort();
    for dir in scenarios {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = std::env::temp_dir().join(format!("peerdma-hwloc-{name}-{}", std::process::id()));
        util::remove_dir_all_if_exists(&tmp)?;
        util::run(Command::new("cp").arg("-a").arg(dir.join("root")).arg(&tmp))?;
        let done = complete_tree(&tmp)
            .with_context(|| format!("completing the tree of {name} for hwloc"))
            .and_then(|()| {
                for (file, extra) in [
                    (format!("{name}.xml"), &[][..]),
                    (format!("{name}.whole-io.xml"), &["--whole-io"][..]),
                    (format!("{name}.v1.xml"), &["--export-xml-flags", "v1"][..]),
                ] {
                    let path = out.join(&file);
                    let mut cmd = Command::new("lstopo");
                    cmd.arg("-i")
                        .arg(&tmp)
                        .args(extra)
                        .args(["--of", "xml", "-f"])
                        .arg(&path);
                    util::output(&mut cmd)?;
                    println!("{}: {}", name, path.display());
                }
                Ok(())
            });
        util::remove_dir_all_if_exists(&tmp)?;
        done?;
    }
    println!("written by {version}");
    Ok(())
}

/// CPUs listed as `0-3,8`.
fn parse_cpulist(s: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.trim().parse::<u32>()?..=b.trim().parse::<u32>()?),
            None => out.push(part.trim().parse()?),
        }
    }
    Ok(out)
}

/// A CPU mask as sysfs writes it (hex, 32-bit words separated by commas).
fn mask(cpus: &[u32]) -> Result<String> {
    let words = cpus.iter().map(|c| c / 32 + 1).max().unwrap_or(1) as usize;
    let mut w = vec![0u32; words];
    for &c in cpus {
        w[(c / 32) as usize] |= 1 << (c % 32);
    }
    Ok(w.iter()
        .rev()
        .map(|x| format!("{x:08x}"))
        .collect::<Vec<_>>()
        .join(","))
}

fn list(cpus: &[u32]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn complete_tree(root: &Path) -> Result<()> {
    // Processors from /proc/cpuinfo: (processor, package, core).
    let cpuinfo = util::read_string(&root.join("proc/cpuinfo"))?;
    let mut procs: Vec<(u32, u32, u32)> = Vec::new();
    for block in cpuinfo.split("\n\n").filter(|b| b.contains("processor")) {
        let field = |k: &str| {
            block.lines().find_map(|l| {
                let (a, b) = l.split_once(':')?;
                (a.trim() == k)
                    .then(|| b.trim().parse::<u32>().ok())
                    .flatten()
            })
        };
        let p = field("processor").context("a processor without a number")?;
        procs.push((
            p,
            field("physical id").unwrap_or(0),
            field("core id").unwrap_or(p),
        ));
    }
    if procs.is_empty() {
        bail!("proc/cpuinfo lists no processor");
    }
    let all: Vec<u32> = procs.iter().map(|p| p.0).collect();
    let cpu_dir = root.join("sys/devices/system/cpu");
    util::create_dir_all(&cpu_dir)?;
    util::write(&cpu_dir.join("online"), format!("{}\n", list(&all)))?;
    util::write(&cpu_dir.join("possible"), format!("{}\n", list(&all)))?;
    for &(p, pkg, core) in &procs {
        let t = cpu_dir.join(format!("cpu{p}/topology"));
        util::create_dir_all(&t)?;
        let package: Vec<u32> = procs.iter().filter(|x| x.1 == pkg).map(|x| x.0).collect();
        let siblings: Vec<u32> = procs
            .iter()
            .filter(|x| x.1 == pkg && x.2 == core)
            .map(|x| x.0)
            .collect();
        for (f, v) in [
            ("physical_package_id", pkg.to_string()),
            ("core_id", core.to_string()),
            ("package_cpus", mask(&package)?),
            ("package_cpus_list", list(&package)),
            ("core_cpus", mask(&siblings)?),
            ("core_cpus_list", list(&siblings)),
        ] {
            util::write(&t.join(f), format!("{v}\n"))?;
        }
    }
    // NUMA nodes from the PCI functions' numa_node and local_cpulist, and
    // each function's local_cpus.
    let mut nodes: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let devices = root.join("sys/bus/pci/devices");
    for e in fs::read_dir(&devices).with_context(|| format!("listing {}", devices.display()))? {
        let dir = e?.path();
        let local = match fs::read_to_string(dir.join("local_cpulist")) {
            Ok(s) => parse_cpulist(&s)?,
            Err(_) => all.clone(),
        };
        util::write(&dir.join("local_cpus"), format!("{}\n", mask(&local)?))?;
        let node = fs::read_to_string(dir.join("numa_node"))
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .and_then(|n| u32::try_from(n).ok());
        if let Some(n) = node {
            let set = nodes.entry(n).or_insert_with(|| local.clone());
            set.retain(|c| local.contains(c));
        }
    }
    if nodes.is_empty() {
        nodes.insert(0, all.clone());
    }
    let mut covered: Vec<u32> = nodes.values().flatten().copied().collect();
    covered.sort();
    if covered != all {
        bail!("the functions' NUMA nodes {nodes:?} do not divide the CPUs {all:?} between them");
    }
    let node_dir = root.join("sys/devices/system/node");
    let ids: Vec<u32> = nodes.keys().copied().collect();
    util::create_dir_all(&node_dir)?;
    util::write(&node_dir.join("online"), format!("{}\n", list(&ids)))?;
    util::write(&node_dir.join("possible"), format!("{}\n", list(&ids)))?;
    for (n, cpus) in &nodes {
        let d = node_dir.join(format!("node{n}"));
        util::create_dir_all(&d)?;
        util::write(&d.join("cpumap"), format!("{}\n", mask(cpus)?))?;
        util::write(&d.join("cpulist"), format!("{}\n", list(cpus)))?;
    }
    let mut info = String::from("OSName: Linux\nArchitecture: x86_64\n");
    for (k, f) in [
        ("HostName", "proc/sys/kernel/hostname"),
        ("OSRelease", "proc/sys/kernel/osrelease"),
    ] {
        if let Ok(v) = fs::read_to_string(root.join(f)) {
            info.push_str(&format!("{k}: {}\n", v.trim()));
        }
    }
    util::write(&root.join("proc/hwloc-nofile-info"), info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_and_masks() {
        assert_eq!(parse_cpulist("0-2,5").unwrap(), [0, 1, 2, 5]);
        assert_eq!(mask(&[0, 1]).unwrap(), "00000003");
        assert_eq!(mask(&[33]).unwrap(), "00000002,00000000");
    }
}
