//! Many machines' snapshots summarised: machines grouped by identical P2P
//! matrix, the groups that differ from the most common one and what makes
//! them differ, the fixes that apply across the fleet, links trained below
//! what they can do, and files that are not snapshots.
//!
//! Snapshots are read and decided in parallel, one thread per core; a
//! machine keeps only its group and a few facts, and one topology per
//! group is kept to compare and explain.

use crate::diff::{diff, link_state};
use crate::kinds::p2p_devices;
use crate::Error;
use peerdma_mem::Bdf;
use peerdma_p2p::{explain, FixKind, MapType, P2pIndex};
use peerdma_pci::ids::PciIds;
use peerdma_pci::render::short_name;
use peerdma_pci::{Acs, Source, Topology};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// How much work a summary does.
#[derive(Clone, Debug)]
pub struct FleetOptions {
    /// Threads reading snapshots; 0 for one per core.
    pub threads: usize,
    /// Groups compared with the most common one and explained for fixes
    /// (the largest first); the rest are counted only.
    pub max_compared_groups: usize,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            threads: 0,
            max_compared_groups: 100,
        }
    }
}

/// One machine of the fleet.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Machine {
    /// The hostname in its snapshot, else the file's name.
    pub name: String,
    pub file: PathBuf,
    /// Index into [`Fleet::groups`].
    pub group: usize,
    /// Links trained below what they can do: the function and its link.
    pub degraded_links: Vec<(Bdf, String)>,
    /// Functions whose ACS state the capture could not read.
    pub acs_unknown: usize,
}

/// A file that could not be read as a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unreadable {
    pub file: PathBuf,
    /// The error, one line naming the file.
    pub error: String,
}

/// Counts of ordered pairs of P2P devices by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerdictCounts {
    /// The devices P2P is for ([`crate::kinds::p2p_devices`]).
    pub devices: usize,
    pub bus_addr: usize,
    pub thru_host_bridge: usize,
    pub not_supported: usize,
}

/// Machines whose P2P matrices are identical: the same P2P devices (by BDF
/// and class, [`crate::kinds::p2p_devices`]) and the same verdict and
/// distance for every ordered pair.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// `A`, `B`, ... by size, the largest first.
    pub name: String,
    /// Indices into [`Fleet::machines`].
    pub machines: Vec<usize>,
    pub verdicts: VerdictCounts,
    /// What differs from the largest group's first machine (empty for the
    /// largest group, and for groups past [`FleetOptions::max_compared_groups`]).
    pub differences: Vec<String>,
    /// Pairs whose verdict differs from the largest group's.
    pub pairs_differing: usize,
    /// Pairs that are not supported or worse than on the largest group,
    /// that only a hardware change (a device in another slot, a common
    /// switch) would improve, on one machine of the group.
    pub pairs_needing_hardware: usize,
    /// Whether this group was compared with the largest.
    pub compared: bool,
    #[serde(skip)]
    representative: Option<Topology>,
}

/// A fix that improves pairs on many machines.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetFix {
    pub kind: FixKind,
    pub summary: String,
    pub commands: Vec<String>,
    /// The verdict the fixed pairs get.
    pub gives: MapType,
    /// Machines it applies to, and the groups they are in.
    pub machines: usize,
    pub groups: Vec<String>,
    /// Pairs it improves on one machine of each group, added up over the machines.
    pub pairs: usize,
}

/// A link that trained below what it can do, on one or more machines.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DegradedLink {
    pub bdf: Bdf,
    pub link: String,
    /// Names of the machines, in file order.
    pub machines: Vec<String>,
}

/// The summary of a fleet.
#[derive(Clone, Debug, Serialize)]
pub struct Fleet {
    pub dir: PathBuf,
    pub machines: Vec<Machine>,
    pub unreadable: Vec<Unreadable>,
    pub groups: Vec<Group>,
    pub fixes: Vec<FleetFix>,
    pub degraded_links: Vec<DegradedLink>,
    /// Machines captured without root (ACS unknown): their verdicts assume
    /// no redirect where ACS was not read.
    pub acs_unknown_machines: Vec<String>,
}

/// The snapshot files below `dir` (`*.json`, not dot files), in name order.
pub fn snapshot_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let meta = std::fs::metadata(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        action: "read",
        source: e,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::Io {
            path: d.clone(),
            action: "list",
            source: e,
        })?;
        for e in entries {
            let e = e.map_err(|e| Error::Io {
                path: d.clone(),
                action: "list",
                source: e,
            })?;
            let name = e.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = e.path();
            let kind = e.file_type().map_err(|e| Error::Io {
                path: path.clone(),
                action: "read",
                source: e,
            })?;
            if kind.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::EmptyFleet(dir.to_path_buf()));
    }
    Ok(out)
}

/// The grouping key: the DMA endpoints and every ordered pair's verdict.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    peers: Vec<(Bdf, u32)>,
    cells: Vec<u32>,
}

fn key_and_counts(t: &Topology) -> (Key, VerdictCounts) {
    let idx = P2pIndex::new(t);
    let peers = p2p_devices(t);
    let mut counts = VerdictCounts {
        devices: peers.len(),
        ..Default::default()
    };
    let mut cells = Vec::with_capacity(peers.len() * peers.len());
    for &p in &peers {
        for &c in &peers {
            if p == c {
                continue;
            }
            let (m, d) = idx.map_type_and_dist(p, c);
            let code = match m {
                MapType::BusAddr => {
                    counts.bus_addr += 1;
                    1
                }
                MapType::ThruHostBridge => {
                    counts.thru_host_bridge += 1;
                    2
                }
                _ => {
                    counts.not_supported += 1;
                    3
                }
            };
            cells.push(if code == 3 { code } else { d << 2 | code });
        }
    }
    let key = Key {
        peers: peers
            .iter()
            .map(|&f| (t.function(f).bdf, t.function(f).class))
            .collect(),
        cells,
    };
    (key, counts)
}

/// Summarise the snapshots below `dir`.
pub fn summarise(dir: &Path, ids: &PciIds, opts: &FleetOptions) -> Result<Fleet, Error> {
    let files = snapshot_files(dir)?;
    Ok(summarise_files(dir, &files, ids, opts))
}

struct Slot {
    group: usize,
    representative_of: usize,
}

/// A group while files are read: its first file's index and topology so
/// far, and its verdict counts.
type GroupSlot = (Option<(usize, Topology)>, VerdictCounts);

struct Shared {
    keys: HashMap<Key, Slot>,
    groups: Vec<GroupSlot>,
}

enum Read {
    Ok { machine: Machine },
    Bad(Unreadable),
}

/// Summarise the given snapshot files (`dir` names the fleet in reports).
pub fn summarise_files(dir: &Path, files: &[PathBuf], ids: &PciIds, opts: &FleetOptions) -> Fleet {
    let threads = match opts.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let shared = Mutex::new(Shared {
        keys: HashMap::new(),
        groups: Vec::new(),
    });
    let mut results: Vec<(usize, Read)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = files.get(i) else { break };
                        out.push((i, read_one(i, path, &shared)));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    let shared = shared.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut machines = Vec::new();
    let mut unreadable = Vec::new();
    for (_, r) in results {
        match r {
            Read::Ok { machine } => machines.push(machine),
            Read::Bad(u) => unreadable.push(u),
        }
    }
    // Groups by size, then by their first machine; renumber.
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); shared.groups.len()];
    for (m, machine) in machines.iter().enumerate() {
        members[machine.group].push(m);
    }
    let mut order: Vec<usize> = (0..shared.groups.len()).collect();
    order.sort_by_key(|&g| {
        (
            std::cmp::Reverse(members[g].len()),
            members[g].first().copied(),
        )
    });
    let mut renumber = vec![0; order.len()];
    for (new, &old) in order.iter().enumerate() {
        renumber[old] = new;
    }
    for m in &mut machines {
        m.group = renumber[m.group];
    }
    let mut old_groups: Vec<Option<GroupSlot>> = shared.groups.into_iter().map(Some).collect();
    let mut groups: Vec<Group> = order
        .iter()
        .enumerate()
        .map(|(new, &old)| {
            let (rep, verdicts) = old_groups[old]
                .take()
                .unwrap_or((None, VerdictCounts::default()));
            Group {
                name: group_name(new),
                machines: std::mem::take(&mut members[old]),
                verdicts,
                differences: Vec::new(),
                pairs_differing: 0,
                pairs_needing_hardware: 0,
                compared: new == 0,
                representative: rep.map(|(_, t)| t),
            }
        })
        .collect();

    let fixes = compare_and_fix(&mut groups, ids, opts.max_compared_groups);
    let degraded_links = degraded(&machines);
    let acs_unknown_machines = machines
        .iter()
        .filter(|m| m.acs_unknown > 0)
        .map(|m| m.name.clone())
        .collect();
    Fleet {
        dir: dir.to_path_buf(),
        machines,
        unreadable,
        groups,
        fixes,
        degraded_links,
        acs_unknown_machines,
    }
}

fn group_name(i: usize) -> String {
    // A..Z, then AA, AB, ...
    let mut n = i;
    let mut s = Vec::new();
    loop {
        s.push(b'A' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

fn read_one(i: usize, path: &Path, shared: &Mutex<Shared>) -> Read {
    let t = match Source::Snapshot(path.to_path_buf()).load() {
        Ok(t) => t,
        Err(e) => {
            return Read::Bad(Unreadable {
                file: path.to_path_buf(),
                error: e.to_string(),
            })
        }
    };
    let (key, counts) = key_and_counts(&t);
    // The kernel's hostname before one is set is "(none)": not a name.
    let hostname = t
        .origin()
        .hostname
        .clone()
        .filter(|h| !h.trim().is_empty() && h != "(none)");
    let name = hostname.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    let degraded_links = t
        .functions()
        .iter()
        .filter(|f| f.link.is_some_and(|l| l.degraded()))
        .map(|f| (f.bdf, link_state(f.link)))
        .collect();
    let acs_unknown = t
        .functions()
        .iter()
        .filter(|f| f.acs == Acs::Unknown)
        .count();
    let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
    let sh = &mut *sh;
    let group = match sh.keys.get_mut(&key) {
        Some(slot) => {
            // The representative is the group's first file, whatever order
            // the threads read them in.
            if i < slot.representative_of {
                slot.representative_of = i;
                sh.groups[slot.group].0 = Some((i, t));
            }
            slot.group
        }
        None => {
            let g = sh.groups.len();
            sh.groups.push((Some((i, t)), counts));
            sh.keys.insert(
                key,
                Slot {
                    group: g,
                    representative_of: i,
                },
            );
            g
        }
    };
    Read::Ok {
        machine: Machine {
            name,
            file: path.to_path_buf(),
            group,
            degraded_links,
            acs_unknown,
        },
    }
}

/// Compare each group with the largest, and gather the fixes for pairs
/// that are not supported or worse than on the largest group.
fn compare_and_fix(groups: &mut [Group], ids: &PciIds, max: usize) -> Vec<FleetFix> {
    let Some(first) = groups.first() else {
        return Vec::new();
    };
    let Some(common) = first.representative.clone() else {
        return Vec::new();
    };
    let common_verdicts: HashMap<(Bdf, Bdf), MapType> = {
        let idx = P2pIndex::new(&common);
        let peers = p2p_devices(&common);
        let mut m = HashMap::new();
        for &p in &peers {
            for &c in &peers {
                if p != c {
                    m.insert(
                        (common.function(p).bdf, common.function(c).bdf),
                        idx.map_type_and_dist(p, c).0,
                    );
                }
            }
        }
        m
    };
    let mut fixes: BTreeMap<(String, String), FleetFix> = BTreeMap::new();
    for g in groups.iter_mut().take(max.max(1)) {
        let Some(rep) = g.representative.as_ref() else {
            continue;
        };
        if g.name != "A" {
            let d = diff(&common, rep, ids);
            g.differences = d.summary();
            g.pairs_differing = d.pairs.len();
            g.compared = true;
        }
        let idx = P2pIndex::new(rep);
        let peers = p2p_devices(rep);
        let mut per_group: BTreeMap<(String, String), (FleetFix, usize)> = BTreeMap::new();
        let mut hardware = 0;
        for &p in &peers {
            for &c in &peers {
                if p == c {
                    continue;
                }
                let (m, _) = idx.map_type_and_dist(p, c);
                let bdfs = (rep.function(p).bdf, rep.function(c).bdf);
                let worse = common_verdicts
                    .get(&bdfs)
                    .is_some_and(|&cm| crate::kinds::rank(m) > crate::kinds::rank(cm));
                if m != MapType::NotSupported && !worse {
                    continue;
                }
                let fixes = explain(rep, p, c).fixes;
                if fixes.iter().all(|f| f.kind == FixKind::MoveDevice) {
                    // Only a hardware change helps: counted, not listed
                    // (each names its own pair and slot).
                    hardware += 1;
                    continue;
                }
                for f in fixes.into_iter().filter(|f| f.kind != FixKind::MoveDevice) {
                    let k = (
                        format!("{:?}", f.kind),
                        if f.commands.is_empty() {
                            f.summary.clone()
                        } else {
                            f.commands.join("\n")
                        },
                    );
                    let e = per_group.entry(k).or_insert_with(|| {
                        (
                            FleetFix {
                                kind: f.kind,
                                summary: f.summary.clone(),
                                commands: f.commands.clone(),
                                gives: f.gives,
                                machines: 0,
                                groups: Vec::new(),
                                pairs: 0,
                            },
                            0,
                        )
                    });
                    e.1 += 1;
                }
            }
        }
        g.pairs_needing_hardware = hardware;
        for (k, (fix, pairs)) in per_group {
            let e = fixes.entry(k).or_insert(fix);
            e.machines += g.machines.len();
            e.groups.push(g.name.clone());
            e.pairs += pairs * g.machines.len();
        }
    }
    let mut out: Vec<FleetFix> = fixes.into_values().collect();
    // Most machines first; of two alike, the kernel parameter (it lasts)
    // before the setpci commands (until reboot).
    let lasting = |f: &FleetFix| u8::from(f.kind != FixKind::KernelParameter);
    out.sort_by(|a, b| {
        b.machines
            .cmp(&a.machines)
            .then(b.pairs.cmp(&a.pairs))
            .then(lasting(a).cmp(&lasting(b)))
            .then(a.summary.cmp(&b.summary))
    });
    out
}

fn degraded(machines: &[Machine]) -> Vec<DegradedLink> {
    let mut by: BTreeMap<(Bdf, String), Vec<String>> = BTreeMap::new();
    for m in machines {
        for (bdf, link) in &m.degraded_links {
            by.entry((*bdf, link.clone()))
                .or_default()
                .push(m.name.clone());
        }
    }
    let mut out: Vec<DegradedLink> = by
        .into_iter()
        .map(|((bdf, link), machines)| DegradedLink {
            bdf,
            link,
            machines,
        })
        .collect();
    out.sort_by(|a, b| {
        b.machines
            .len()
            .cmp(&a.machines.len())
            .then(a.bdf.cmp(&b.bdf))
    });
    out
}

/// At most `n` names, then how many more.
fn some_names<'a>(names: impl Iterator<Item = &'a str>, total: usize, n: usize) -> String {
    let shown: Vec<&str> = names.take(n).collect();
    let more = total.saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl Fleet {
    /// The summary for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "peerdma fleet {}: {} read{}",
            self.dir.display(),
            plural(self.machines.len(), "machine", "machines"),
            if self.unreadable.is_empty() {
                String::new()
            } else {
                format!(", {} not", plural(self.unreadable.len(), "file", "files"))
            }
        );
        if !self.groups.is_empty() {
            let _ = writeln!(
                s,
                "\n{} (machines with the same P2P devices and the same verdicts between them):",
                plural(self.groups.len(), "P2P matrix", "P2P matrices")
            );
        }
        let total = self.machines.len().max(1);
        for g in &self.groups {
            let v = g.verdicts;
            let names = some_names(
                g.machines.iter().map(|&m| self.machines[m].name.as_str()),
                g.machines.len(),
                3,
            );
            let _ = writeln!(
                s,
                "\n  {}: {} ({:.1}%): {names}",
                g.name,
                plural(g.machines.len(), "machine", "machines"),
                100.0 * g.machines.len() as f64 / total as f64,
            );
            let _ = writeln!(
                s,
                "     {}; pairs by bus address {}, through the host bridge {}, not supported {}",
                plural(v.devices, "P2P device", "P2P devices"),
                v.bus_addr,
                v.thru_host_bridge,
                v.not_supported
            );
            if g.name == "A" {
                if self.groups.len() > 1 {
                    let _ = writeln!(
                        s,
                        "     the most common: the others are compared with its first machine"
                    );
                }
            } else if !g.compared {
                let _ = writeln!(
                    s,
                    "     not compared (only the {} largest groups are)",
                    self.groups.iter().filter(|g| g.compared).count()
                );
            } else {
                const SHOWN: usize = 10;
                for d in g.differences.iter().take(SHOWN) {
                    let _ = writeln!(s, "     differs: {d}");
                }
                if g.differences.len() > SHOWN {
                    let _ = writeln!(
                        s,
                        "     and {} more differences (--json lists them all)",
                        g.differences.len() - SHOWN
                    );
                }
            }
            if g.pairs_needing_hardware > 0 {
                let _ = writeln!(
                    s,
                    "     {} not supported or worse than on A that only a hardware change improves (`peerdma check` on one of its machines says which)",
                    plural(g.pairs_needing_hardware, "pair", "pairs")
                );
            }
        }
        if !self.fixes.is_empty() {
            let _ = writeln!(
                s,
                "\nfixes across the fleet, for pairs not supported or worse than on A (each checked on one machine of each group):"
            );
            for f in &self.fixes {
                let _ = writeln!(
                    s,
                    "  - {} -> {}: {} (group{} {}), {} improved",
                    f.summary,
                    f.gives,
                    plural(f.machines, "machine", "machines"),
                    if f.groups.len() == 1 { "" } else { "s" },
                    f.groups.join(", "),
                    plural(f.pairs, "pair", "pairs")
                );
                for c in &f.commands {
                    let _ = writeln!(s, "      {c}");
                }
            }
        }
        if !self.degraded_links.is_empty() {
            let _ = writeln!(s, "\nlinks below what they can do:");
            for l in self.degraded_links.iter().take(20) {
                let _ = writeln!(
                    s,
                    "  {} {}: {} ({})",
                    l.bdf,
                    l.link,
                    plural(l.machines.len(), "machine", "machines"),
                    some_names(l.machines.iter().map(|m| m.as_str()), l.machines.len(), 5)
                );
            }
            if self.degraded_links.len() > 20 {
                let _ = writeln!(
                    s,
                    "  and {} more (--json lists them all)",
                    self.degraded_links.len() - 20
                );
            }
        }
        if !self.acs_unknown_machines.is_empty() {
            let _ = writeln!(
                s,
                "\nnote: {} captured without root (ACS unknown; verdicts assume no redirect there): {}",
                plural(self.acs_unknown_machines.len(), "machine was", "machines were"),
                some_names(self.acs_unknown_machines.iter().map(|m| m.as_str()), self.acs_unknown_machines.len(), 5)
            );
        }
        if !self.unreadable.is_empty() {
            let _ = writeln!(s, "\nnot snapshots ({}):", self.unreadable.len());
            for u in self.unreadable.iter().take(20) {
                let _ = writeln!(s, "  {}", u.error);
            }
            if self.unreadable.len() > 20 {
                let _ = writeln!(
                    s,
                    "  and {} more (--json lists them all)",
                    self.unreadable.len() - 20
                );
            }
        }
        s
    }

    /// The first machine of a group, for further questions.
    pub fn representative(&self, group: usize) -> Option<&Topology> {
        self.groups.get(group)?.representative.as_ref()
    }
}

/// Helper for callers naming a function of a representative.
pub fn function_name(t: &Topology, bdf: Bdf) -> Option<String> {
    t.find(bdf).map(|f| short_name(t.function(f)))
}
