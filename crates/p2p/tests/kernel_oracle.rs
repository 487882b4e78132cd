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

use peerdma_p2p::oracle::{
    self, compare, parse_acs_warnings, parse_verdicts, AcsWarning, KernelVerdicts, ParseErrorKind,
};
use peerdma_p2p::MapType;
use peerdma_pci::{Source, Topology};
use std::collections::BTreeSet;
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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A fixture's `verdicts`, through the one parser; its errors name the line.
fn kernel_verdicts(dir: &Path) -> KernelVerdicts {
    let path = dir.join("verdicts");
    parse_verdicts(&read(&path), &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

/// A fixture's `acs-warnings.txt`, through the one parser.
fn acs_warnings(dir: &Path) -> Vec<AcsWarning> {
    let path = dir.join("acs-warnings.txt");
    parse_acs_warnings(&read(&path), &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"))
}

fn load(label: &str, source: Source) -> Topology {
    source
        .load()
        .unwrap_or_else(|e| panic!("{label}: peerdma cannot read it: {e}"))
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
    let mut problems = String::new();
    let (mut total, mut agree) = (0, 0);
    for dir in fixture_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let k = kernel_verdicts(&dir);
        assert!(
            !k.pairs.is_empty() && !k.devices.is_empty(),
            "{}: no pairs or no devices",
            dir.join("verdicts").display()
        );
        let acs = acs_warnings(&dir);
        for (label, source) in [
            ("snapshot.json", Source::Snapshot(dir.join("snapshot.json"))),
            ("root/", Source::Root(dir.join("root"))),
        ] {
            let label = format!("{name}/{label}");
            let topo = load(&label, source);
            let c = compare(&topo, &k, Some(&acs), &label);
            say(&format!(
                "kernel oracle {}, {} dev lines{}",
                c.summary(),
                c.devices_compared,
                if c.ok() { "" } else { ": DISAGREES" }
            ));
            total += c.pairs_compared;
            agree += c.pairs_agreeing;
            problems.push_str(&c.render_problems());
        }
    }
    say(&format!(
        "kernel oracle: {agree}/{total} pair verdicts agree"
    ));
    assert!(
        problems.is_empty(),
        "peerdma disagrees with the kernel:\n{problems}"
    );
    assert_eq!(agree, total);
}

#[test]
fn every_fixture_parses_with_every_pair_and_paired_acs_lines() {
    for dir in fixture_dirs() {
        let k = kernel_verdicts(&dir);
        let n = k.devices.len();
        assert!(n > 1, "{}: {n} functions", dir.display());
        assert_eq!(k.pairs.len(), n * (n - 1), "{}", dir.display());
        assert!(k.cpu_supports_p2pdma.is_some(), "{}", dir.display());
        // Two lines per warning; repeats collapse.
        let lines = read(&dir.join("acs-warnings.txt")).lines().count();
        let acs = acs_warnings(&dir);
        assert!(2 * acs.len() <= lines && (lines == 0) == acs.is_empty());
        for w in &acs {
            assert!(k.pair(w.provider, w.client).is_some(), "{w:?}");
        }
    }
}

/// The first fixture with ACS advice, its verdicts and acs-warnings.txt.
fn fixture_with_acs_advice() -> (PathBuf, String, String) {
    fixture_dirs()
        .into_iter()
        .map(|d| {
            let v = read(&d.join("verdicts"));
            let a = read(&d.join("acs-warnings.txt"));
            (d, v, a)
        })
        .find(|(_, _, a)| !a.trim().is_empty())
        .expect("some fixture has ACS advice")
}

/// `text` with its line `n` (1-based) replaced by `f(line)`.
fn replace_line(text: &str, n: usize, f: impl Fn(&str) -> String) -> String {
    text.lines()
        .zip(1..)
        .map(|(l, i)| if i == n { f(l) } else { l.to_string() } + "\n")
        .collect()
}

#[test]
fn a_corrupted_fixture_is_refused_naming_the_line() {
    let (dir, verdicts, acs) = fixture_with_acs_advice();
    let vfile = dir.join("verdicts").display().to_string();
    let afile = dir.join("acs-warnings.txt").display().to_string();
    assert!(parse_verdicts(&verdicts, &vfile).is_ok());
    assert!(parse_acs_warnings(&acs, &afile).is_ok());

    // A pair line with a map type the kernel never prints.
    let n = verdicts
        .lines()
        .position(|l| l.starts_with("pair "))
        .unwrap()
        + 3;
    let bad = replace_line(&verdicts, n, |l| {
        l.replace("thru_host_bridge", "sideways")
            .replace("not_supported", "sideways")
            .replace("bus_addr", "sideways")
    });
    let e = parse_verdicts(&bad, &vfile).unwrap_err();
    assert_eq!(e.line, n);
    assert!(
        e.to_string()
            .starts_with(&format!("{vfile}:{n}: malformed line \"pair ")),
        "{e}"
    );
    assert!(e.to_string().contains("\"sideways\""), "{e}");

    // A dev line cut short.
    let bad = replace_line(&verdicts, 3, |l| l.split(" wl_same").next().unwrap().into());
    let e = parse_verdicts(&bad, &vfile).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{vfile}:3: malformed line \"dev ")),
        "{e}"
    );

    // A verdicts file cut off before its last pair.
    let cut: String = verdicts
        .lines()
        .map(|l| format!("{l}\n"))
        .take(verdicts.lines().count() - 1)
        .collect();
    let e = parse_verdicts(&cut, &vfile).unwrap_err();
    assert!(
        matches!(e.kind, ParseErrorKind::Incomplete { missing: 1, .. }),
        "{e}"
    );

    // The ACS advice without the line that names its provider: an orphan,
    // at the advice's line.
    let bad = replace_line(&acs, 1, |_| String::new());
    let e = parse_acs_warnings(&bad, &afile).unwrap_err();
    assert_eq!(e.line, 2, "{e}");
    assert!(matches!(e.kind, ParseErrorKind::Orphan { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("{afile}:2: orphan line")),
        "{e}"
    );
    // And the provider's line without its advice.
    let bad = replace_line(&acs, 2, |_| String::new());
    let e = parse_acs_warnings(&bad, &afile).unwrap_err();
    assert_eq!(e.line, 1, "{e}");
    assert!(matches!(e.kind, ParseErrorKind::Orphan { .. }), "{e}");
    // A line that is neither.
    let bad = replace_line(&acs, 2, |l| l.replace("pci=disable_acs_redir=", "pci=acs="));
    let e = parse_acs_warnings(&bad, &afile).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{afile}:2: malformed line")),
        "{e}"
    );
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
    let (dir, _, _) = fixture_with_acs_advice();
    let mut k = kernel_verdicts(&dir);
    let mut acs = acs_warnings(&dir);
    let topo = Source::Root(dir.join("root")).load().unwrap();
    assert!(compare(&topo, &k, Some(&acs), "real").ok());
    let (p, c, map) = (k.pairs[0].provider, k.pairs[0].client, k.pairs[0].map_type);
    k.pairs[0].map_type = if map == MapType::BusAddr {
        MapType::NotSupported
    } else {
        MapType::BusAddr
    };
    k.pairs[1].distance += 1;
    k.devices[0].wl_cross = !k.devices[0].wl_cross;
    acs.pop();
    let d = compare(&topo, &k, Some(&acs), "doctored");
    assert!(!d.ok());
    assert_eq!(d.pairs_agreeing, d.pairs_compared - 2);
    assert_eq!(d.disagreements.len(), 2);
    assert_eq!(d.device_mismatches.len(), 1, "{:?}", d.device_mismatches);
    assert_eq!(d.acs_mismatches.len(), 1, "{:?}", d.acs_mismatches);
    let text = d.render_problems();
    assert!(text.contains(&format!("DISAGREE {p} -> {c}")), "{text}");
    assert!(text.contains("path: "), "{text}");
    assert_eq!(
        oracle::VERDICTS_PATH,
        "sys/kernel/debug/pci_p2pdma/verdicts"
    );
}

/// A fixture's stored fix runs (`fixes/<k>/`): the fix as proposed, the
/// kernel's verdicts and `/proc/cmdline` of the boot with it, and the
/// guest's snapshot of that boot.
fn fix_runs(dir: &Path) -> Vec<(PathBuf, oracle::FixRun)> {
    let fixes = dir.join("fixes");
    let Ok(entries) = std::fs::read_dir(&fixes) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let f = d.join("fix.json");
            let run = oracle::FixRun::parse(&read(&f), &f.display().to_string())
                .unwrap_or_else(|e| panic!("{e}"));
            (d, run)
        })
        .collect()
}

#[test]
fn every_proposed_fix_was_booted_and_the_kernel_confirmed_it() {
    let mut problems = String::new();
    let (mut proposed_total, mut confirmed) = (0, 0);
    for dir in fixture_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let snap = load(&name, Source::Snapshot(dir.join("snapshot.json")));
        let root = load(&name, Source::Root(dir.join("root")));
        let proposed = peerdma_p2p::acs_boot::proposed_fixes(&snap);
        // The same fixes from the guest's own sysfs copy.
        let from_root: Vec<Vec<String>> = peerdma_p2p::acs_boot::proposed_fixes(&root)
            .into_iter()
            .map(|f| f.params)
            .collect();
        let from_snap: Vec<Vec<String>> = proposed.iter().map(|f| f.params.clone()).collect();
        if from_root != from_snap {
            problems.push_str(&format!(
                "{name}: fixes from root/ {from_root:?}, from snapshot.json {from_snap:?}\n"
            ));
        }
        let runs = fix_runs(&dir);
        let stored: Vec<_> = runs.iter().map(|(_, r)| r.fix.clone()).collect();
        for p in oracle::match_fix_runs(&proposed, &stored) {
            problems.push_str(&format!("{name}: {p}\n"));
        }
        proposed_total += proposed.len();
        for (d, run) in &runs {
            let k = kernel_verdicts(d);
            let after = load(
                &d.display().to_string(),
                Source::Snapshot(d.join("snapshot.json")),
            );
            let c = oracle::hold_fix(&run.fix, &k, &read(&d.join("cmdline")), Some(&after));
            say(&format!("kernel oracle fix run {name}: {}", c.summary()));
            if c.confirmed() {
                confirmed += 1;
            }
            for p in &c.problems {
                problems.push_str(&format!("{}: {p}\n", d.display()));
            }
            // The booted machine agrees with the kernel on every pair too.
            let acs = None;
            let cmp = compare(&after, &k, acs, &d.display().to_string());
            problems.push_str(&cmp.render_problems());
        }
    }
    say(&format!(
        "kernel oracle: {proposed_total} fixes proposed, {confirmed} confirmed by the kernel"
    ));
    assert!(problems.is_empty(), "{problems}");
    assert_eq!(proposed_total, confirmed);
}

#[test]
fn a_fix_held_against_a_boot_without_it_is_not_confirmed() {
    // The case, booted: the root port is in pci=disable_acs_redir=
    // and still redirects, because config_acs comes after it. Adding it to
    // disable_acs_redir again is what peerdma used to propose.
    let dir = fixtures_dir().join("acs-config-over-disable");
    let k = kernel_verdicts(&dir);
    let base = load(
        "acs-config-over-disable",
        Source::Snapshot(dir.join("snapshot.json")),
    );
    let cmdline = base.cmdline().unwrap();
    assert_eq!(
        cmdline.pci_option("disable_acs_redir").as_deref(),
        Some("0000:00:02.0")
    );
    let rp: peerdma_pci::Bdf = "0000:00:02.0".parse().unwrap();
    assert!(k.devices.iter().any(|d| d.bdf == rp && d.acs_redir));
    // The fix run held against the first boot (no fix applied) fails on
    // the command line, every pair and the port's ACS.
    let runs = fix_runs(&dir);
    assert_eq!(runs.len(), 1);
    let c = oracle::hold_fix(&runs[0].1.fix, &k, cmdline.as_str(), Some(&base));
    assert!(!c.confirmed());
    assert_eq!(c.pairs_confirmed, 0);
    assert_eq!(c.acs_confirmed, 0);
    assert!(
        c.problems[0].contains("pci=config_acs="),
        "{:?}",
        c.problems
    );
    // And against the boot with it, confirmed.
    let (d, run) = &runs[0];
    let after = load("fix", Source::Snapshot(d.join("snapshot.json")));
    let c = oracle::hold_fix(
        &run.fix,
        &kernel_verdicts(d),
        &read(&d.join("cmdline")),
        Some(&after),
    );
    assert!(c.confirmed(), "{:?}", c.problems);
    assert_eq!(c.pairs_compared, 6);
}
