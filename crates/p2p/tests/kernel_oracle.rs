//! peerdma against the real kernel, without QEMU.
//!
//! `cargo xtask capture` boots a P2PDMA kernel with the oracle patch
//! (kernel/README.md) on every scenario of xtask/scenarios/ and stores, under
//! tests/fixtures/kernel/<scenario>/, the kernel's own verdicts (`verdicts`),
//! its `pci=disable_acs_redir=` advice (`acs-warnings.txt`), and the guest's
//! machine twice: `snapshot.json` (written by peerdma in the guest) and
//! `root/` (the guest's shell copy of its sysfs, independent of peerdma's
//! writer). From both, for every ordered pair the kernel lists, peerdma's
//! map type and raw distance must equal the kernel's (through
//! `calc_map_type_and_dist` and through `matrix()`); so must the per-function
//! facts (ACS redirect, host bridge device, whitelist) and the advice lists.
//!
//! A missing or empty fixture directory fails: no silent pass.

use peerdma_p2p::{calc_map_type_and_dist, explain, host_bridge_whitelisted, matrix, MapType};
use peerdma_pci::{Bdf, Source, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    // Canonical: peerdma-pci resolves sysfs links lexically, so a --root
    // path with `..` in it does not read (a peerdma-pci bug, reported).
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

fn fixtures_dir() -> PathBuf {
    workspace().join("tests/fixtures/kernel")
}

/// Shown even when the test passes (libtest captures print!, not this).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

struct Dev {
    bdf: Bdf,
    acs_redir: bool,
    host_bridge: Option<Bdf>,
    wl_same: bool,
    wl_cross: bool,
}

struct Kernel {
    cpu_supports_p2pdma: Option<bool>,
    devs: Vec<Dev>,
    /// (provider, client) -> (map type, raw distance), in file order.
    pairs: Vec<((Bdf, Bdf), (MapType, u32))>,
}

fn parse_verdicts(path: &Path) -> Kernel {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut lines = text.lines().enumerate();
    assert_eq!(
        lines.next().map(|l| l.1),
        Some("# peerdma-oracle v1"),
        "{}:1: not an oracle verdicts file",
        path.display()
    );
    let mut k = Kernel {
        cpu_supports_p2pdma: None,
        devs: Vec::new(),
        pairs: Vec::new(),
    };
    for (i, line) in lines {
        let at = || format!("{}:{}: {line:?}", path.display(), i + 1);
        let bdf = |s: &str| s.parse::<Bdf>().unwrap_or_else(|e| panic!("{}: {e}", at()));
        let flag = |s: &str| match s {
            "0" => false,
            "1" => true,
            _ => panic!("{}: expected 0 or 1", at()),
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["#", "cpu_supports_p2pdma", b] => k.cpu_supports_p2pdma = Some(flag(b)),
            ["#", ..] => {}
            ["dev", d, "acs_redir", a, "host_bridge", h, "wl_same", s, "wl_cross", c] => {
                k.devs.push(Dev {
                    bdf: bdf(d),
                    acs_redir: flag(a),
                    host_bridge: (*h != "-").then(|| bdf(h)),
                    wl_same: flag(s),
                    wl_cross: flag(c),
                })
            }
            ["pair", p, c, m, d] => {
                let map = MapType::from_name(m)
                    .filter(|m| *m != MapType::None)
                    .unwrap_or_else(|| panic!("{}: unknown map type", at()));
                let dist = d
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad distance", at()));
                k.pairs.push(((bdf(p), bdf(c)), (map, dist)));
            }
            _ => panic!("{}: malformed line", at()),
        }
    }
    k
}

/// The kernel's advice per (provider, client): from client C,
/// "ACS redirect is set between the client and provider (P)" and then
/// "... pci=disable_acs_redir=LIST".
fn parse_acs_warnings(path: &Path) -> BTreeMap<(Bdf, Bdf), String> {
    const SET: &str = ": ACS redirect is set between the client and provider (";
    const LIST: &str =
        ": to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=";
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let subject = |line: &str, marker: &str| -> Option<(Bdf, String)> {
        let at = line.find(marker)?;
        let dev = line[..at].split_whitespace().last()?.parse().ok()?;
        Some((dev, line[at + marker.len()..].trim().to_string()))
    };
    let mut out = BTreeMap::new();
    let mut pending: Option<(Bdf, Bdf)> = None;
    for (i, line) in text.lines().enumerate() {
        if let Some((client, rest)) = subject(line, SET) {
            let provider = rest
                .trim_end_matches(')')
                .parse()
                .unwrap_or_else(|e| panic!("{}:{}: bad provider: {e}", path.display(), i + 1));
            pending = Some((provider, client));
        } else if let Some((client, list)) = subject(line, LIST) {
            match pending.take() {
                Some((p, c)) if c == client => {
                    out.insert((p, c), list);
                }
                _ => panic!(
                    "{}:{}: advice without its \"redirect is set\" line",
                    path.display(),
                    i + 1
                ),
            }
        }
    }
    out
}

struct Checked {
    functions: usize,
    pairs_compared: usize,
    pairs_agreeing: usize,
    devs_compared: usize,
    acs_compared: usize,
    problems: Vec<String>,
}

fn check(label: &str, topo: &Topology, k: &Kernel, acs: &BTreeMap<(Bdf, Bdf), String>) -> Checked {
    let mut problems = Vec::new();
    let ours: BTreeSet<Bdf> = topo.functions().iter().map(|f| f.bdf).collect();
    let theirs: BTreeSet<Bdf> = k.devs.iter().map(|d| d.bdf).collect();
    if ours != theirs {
        problems.push(format!(
            "{label}: function sets differ: only the kernel has {:?}, only peerdma has {:?}",
            theirs
                .difference(&ours)
                .map(Bdf::to_string)
                .collect::<Vec<_>>(),
            ours.difference(&theirs)
                .map(Bdf::to_string)
                .collect::<Vec<_>>()
        ));
    }
    if let Some(cpu) = k.cpu_supports_p2pdma {
        if cpu != topo.cpu().supports_p2pdma() {
            problems.push(format!(
                "{label}: cpu_supports_p2pdma: kernel {cpu}, peerdma {} ({} family {:#x})",
                topo.cpu().supports_p2pdma(),
                topo.cpu().vendor_id,
                topo.cpu().family
            ));
        }
    }

    for d in &k.devs {
        let Some(id) = topo.find(d.bdf) else { continue };
        let f = topo.function(id);
        let hb = topo
            .host_bridge_device(f.host_bridge)
            .map(|h| topo.function(h).bdf);
        let ours = (
            f.acs.redirects(),
            hb,
            host_bridge_whitelisted(topo, f.host_bridge, true),
            host_bridge_whitelisted(topo, f.host_bridge, false),
        );
        let theirs = (Some(d.acs_redir), d.host_bridge, d.wl_same, d.wl_cross);
        if ours != theirs {
            problems.push(format!(
                "{label}: dev {}: kernel (acs_redir, host_bridge, wl_same, wl_cross) = {theirs:?}, peerdma {ours:?}",
                d.bdf
            ));
        }
    }

    let m = matrix(topo);
    let mut agreeing = 0;
    for &((p, c), (map, dist)) in &k.pairs {
        let (Some(pi), Some(ci)) = (topo.find(p), topo.find(c)) else {
            problems.push(format!(
                "{label}: pair {p} -> {c}: kernel {} {dist}, peerdma has no such function",
                map.as_str()
            ));
            continue;
        };
        let v = calc_map_type_and_dist(topo, pi, ci);
        let mv = m.get(pi, ci);
        if (v.map_type, v.raw_distance) == (map, dist) && mv == (map, dist) {
            agreeing += 1;
        } else {
            let e = explain(topo, pi, ci);
            problems.push(format!(
                "{label}: DISAGREE provider {p} client {c}: kernel {} {dist}, peerdma {} {} (matrix {} {})\n  path: {}\n{}",
                map.as_str(),
                v.map_type.as_str(),
                v.raw_distance,
                mv.0.as_str(),
                mv.1,
                e.path.join(" -> "),
                e.render()
                    .lines()
                    .map(|l| format!("    {l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ));
        }
    }

    // The kernel's pci=disable_acs_redir= advice, pair by pair, both ways.
    let mut ours_acs = BTreeMap::new();
    for a in topo.ids() {
        for b in topo.ids().filter(|&b| b != a) {
            if let Some(s) = explain(topo, a, b).disable_acs_redir {
                let list = s.strip_prefix("pci=disable_acs_redir=").unwrap_or(&s);
                ours_acs.insert(
                    (topo.function(a).bdf, topo.function(b).bdf),
                    list.to_string(),
                );
            }
        }
    }
    let keys: BTreeSet<&(Bdf, Bdf)> = acs.keys().chain(ours_acs.keys()).collect();
    for key in &keys {
        let (kl, ol) = (acs.get(key), ours_acs.get(key));
        if kl != ol {
            problems.push(format!(
                "{label}: disable_acs_redir for provider {} client {}: kernel {:?}, peerdma explain() {:?}",
                key.0, key.1, kl, ol
            ));
        }
    }

    Checked {
        functions: topo.len(),
        pairs_compared: k.pairs.len(),
        pairs_agreeing: agreeing,
        devs_compared: k.devs.len(),
        acs_compared: keys.len(),
        problems,
    }
}

/// The fixture directories, sorted; fails when there are none.
fn fixture_dirs() -> Vec<PathBuf> {
    let dir = fixtures_dir();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "kernel oracle fixtures missing: cannot list {}: {e} (run `cargo xtask capture`)",
            dir.display()
        )
    });
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "kernel oracle fixtures missing: {} has no scenario directories (run `cargo xtask capture`)",
        dir.display()
    );
    dirs
}

#[test]
fn peerdma_agrees_with_the_kernel_on_every_pair() {
    let mut problems = Vec::new();
    let (mut total, mut agree) = (0, 0);
    for dir in fixture_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let k = parse_verdicts(&dir.join("verdicts"));
        assert!(
            !k.pairs.is_empty() && !k.devs.is_empty(),
            "{}: no pairs or no devices",
            dir.join("verdicts").display()
        );
        let acs = parse_acs_warnings(&dir.join("acs-warnings.txt"));
        for (label, source) in [
            ("snapshot.json", Source::Snapshot(dir.join("snapshot.json"))),
            ("root/", Source::Root(dir.join("root"))),
        ] {
            let label = format!("{name}/{label}");
            let topo = source
                .load()
                .unwrap_or_else(|e| panic!("{label}: peerdma cannot read it: {e}"));
            let c = check(&label, &topo, &k, &acs);
            say(&format!(
                "kernel oracle {label}: {} functions, {}/{} pairs agree, {} dev lines, {} disable_acs_redir lists, {} problem(s)",
                c.functions,
                c.pairs_agreeing,
                c.pairs_compared,
                c.devs_compared,
                c.acs_compared,
                c.problems.len()
            ));
            total += c.pairs_compared;
            agree += c.pairs_agreeing;
            problems.extend(c.problems);
        }
    }
    say(&format!(
        "kernel oracle: {agree}/{total} pair verdicts agree"
    ));
    assert!(
        problems.is_empty(),
        "peerdma disagrees with the kernel ({} problem(s)):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert_eq!(agree, total);
}

#[test]
fn every_scenario_has_a_complete_fixture() {
    let have: BTreeSet<String> = fixture_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for dir in fixture_dirs() {
        for f in [
            "verdicts",
            "acs-warnings.txt",
            "snapshot.json",
            "smoke.json",
            "scenario.toml",
            "root/proc/cpuinfo",
            "root/sys/bus/pci/devices",
        ] {
            assert!(
                dir.join(f).exists(),
                "{} is missing (run `cargo xtask capture --scenario {}`)",
                dir.join(f).display(),
                dir.file_name().unwrap().to_string_lossy()
            );
        }
    }
    let scenarios = workspace().join("xtask/scenarios");
    let mut missing = Vec::new();
    for e in std::fs::read_dir(&scenarios)
        .unwrap()
        .filter_map(|e| e.ok())
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            let n = p.file_stem().unwrap().to_string_lossy().into_owned();
            if !have.contains(&n) {
                missing.push(n);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "scenarios without a fixture: {missing:?} (run `cargo xtask capture --scenario NAME`)"
    );
}

#[test]
fn the_checks_catch_a_disagreement() {
    // Guard against a comparison that passes everything: a doctored copy of
    // a real fixture must fail.
    let dir = fixture_dirs().into_iter().next().unwrap();
    let mut k = parse_verdicts(&dir.join("verdicts"));
    let acs = parse_acs_warnings(&dir.join("acs-warnings.txt"));
    let topo = Source::Root(dir.join("root")).load().unwrap();
    let ((p, c), (map, dist)) = k.pairs[0];
    let other = if map == MapType::BusAddr {
        MapType::NotSupported
    } else {
        MapType::BusAddr
    };
    k.pairs[0].1 = (other, dist);
    k.pairs[1].1 .1 += 1;
    k.devs[0].wl_cross = !k.devs[0].wl_cross;
    let c2 = check("doctored", &topo, &k, &acs);
    assert_eq!(c2.pairs_agreeing, c2.pairs_compared - 2);
    assert_eq!(c2.problems.len(), 3, "{:#?}", c2.problems);
    assert!(c2.problems[1].contains(&format!("provider {p} client {c}")));
    assert!(c2.problems[1].contains("path: "), "{}", c2.problems[1]);
}
