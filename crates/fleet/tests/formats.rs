//! Every format on the presets and on the kernel fixtures: labels and
//! metrics checked against their grammars (and golden files), diffs and
//! fleet summaries against what was changed.

mod common;

use common::Variant;
use peerdma_fleet::diff::diff;
use peerdma_fleet::fleet::{summarise, FleetOptions};
use peerdma_fleet::labels::{self, check_label, DEFAULT_PREFIX, NFD_FILE_LIMIT};
use peerdma_fleet::metrics::metrics;
use peerdma_fleet::Error;
use peerdma_pci::ids::PciIds;
use peerdma_pci::{presets, Source, Topology};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn preset(name: &str) -> Topology {
    Source::Preset(name.into()).load().unwrap()
}

fn fixtures() -> Vec<(String, Topology)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path().join("snapshot.json");
        if p.exists() {
            let name = p
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((name, Source::Snapshot(p).load().unwrap()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 9, "kernel fixtures: {}", out.len());
    out
}

fn every_machine() -> Vec<(String, Topology)> {
    let mut all: Vec<(String, Topology)> = presets::PRESETS
        .iter()
        .map(|p| (p.name.to_string(), preset(p.name)))
        .collect();
    all.extend(fixtures());
    all
}

fn from_variant(v: Variant) -> Topology {
    Topology::from_raw(common::machine(v, "node"), "variant").unwrap()
}

// ---- labels -------------------------------------------------------------

/// A feature file as node-feature-discovery reads it: `# ` comments (and
/// the expiry directive), then `namespace/name=value` lines.
fn parse_features_file(text: &str) -> Vec<(String, String)> {
    assert!(text.len() <= NFD_FILE_LIMIT, "over NFD's 64 KiB limit");
    assert!(text.ends_with('\n'));
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (name, value) = line.split_once('=').unwrap_or((line, "true"));
        check_label(name, value).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            name.contains('/'),
            "unprefixed names are deprecated: {line}"
        );
        assert!(names.insert(name.to_string()), "twice: {name}");
        out.push((name.to_string(), value.to_string()));
    }
    out
}

fn labels_text(t: &Topology) -> String {
    let l = labels::labels(t, DEFAULT_PREFIX).unwrap();
    labels::features_file(&l, &["peerdma labels".into()], None)
}

#[test]
fn labels_of_every_preset_and_fixture_are_valid_kubernetes_labels() {
    for (name, t) in every_machine() {
        let text = labels_text(&t);
        let parsed = parse_features_file(&text);
        let get = |k: &str| {
            parsed
                .iter()
                .find(|(n, _)| n == &format!("{DEFAULT_PREFIX}/{k}"))
                .map(|(_, v)| v.as_str())
        };
        assert!(get("peerdma-acs-redirect").is_some(), "{name}");
        // Counts add up: pairs >= p2p pairs >= bus address pairs.
        for (n, v) in &parsed {
            if let Some(base) = n.strip_suffix(".pairs") {
                let total: usize = v.parse().unwrap();
                let p2p: usize = get(&format!("{}.p2p-pairs", &base[DEFAULT_PREFIX.len() + 1..]))
                    .unwrap()
                    .parse()
                    .unwrap();
                let bus: usize = get(&format!(
                    "{}.bus-addr-pairs",
                    &base[DEFAULT_PREFIX.len() + 1..]
                ))
                .unwrap()
                .parse()
                .unwrap();
                assert!(total >= p2p && p2p >= bus, "{name}: {n}");
            }
        }
    }
}

#[test]
fn labels_say_where_gpus_and_drives_reach_each_other() {
    let get = |t: &Topology, k: &str| -> String {
        labels::labels(t, "example.com")
            .unwrap()
            .into_iter()
            .find(|l| l.name == format!("example.com/{k}"))
            .map(|l| l.value)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let g = preset("gpu-storage-16");
    // Four switches, each with 2 GPUs and 2 drives: 8 x 8 pairs, 16 below a
    // switch; the rest through the host bridge (AMD Zen).
    assert_eq!(get(&g, "peerdma-gpu-nvme"), "bus_addr");
    assert_eq!(get(&g, "peerdma-gpu-nvme.pairs"), "64");
    assert_eq!(get(&g, "peerdma-gpu-nvme.p2p-pairs"), "64");
    assert_eq!(get(&g, "peerdma-gpu-nvme.bus-addr-pairs"), "16");
    assert_eq!(get(&g, "peerdma-acs-redirect"), "false");
    assert_eq!(get(&g, "peerdma-p2pmem-providers"), "4");
    // ACS redirect on one switch port: its GPU reaches the drives through the host bridge.
    let a = from_variant(Variant::AcsRedirect);
    assert_eq!(get(&a, "peerdma-gpu-nvme.bus-addr-pairs"), "14");
    assert_eq!(get(&a, "peerdma-acs-redirect"), "true");
    let d = from_variant(Variant::DegradedLink);
    assert_eq!(get(&d, "peerdma-links-degraded"), "1");
    let m = from_variant(Variant::MissingDrive);
    assert_eq!(get(&m, "peerdma-gpu-nvme.pairs"), "56");
    // Nothing can do P2P on the workstation.
    let w = preset("workstation");
    assert_eq!(get(&w, "peerdma-gpu-nvme"), "not_supported");
    assert_eq!(get(&w, "peerdma-gpu-nvme.p2p-pairs"), "0");
    // A capture without root: ACS unknown.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kernel/switch-nvme-cmb/snapshot.json");
    let mut raw = peerdma_pci::read_snapshot(&root).unwrap();
    for d in &mut raw.devices {
        d.config.truncate(64);
    }
    let t = Topology::from_raw(raw, "unprivileged").unwrap();
    assert_eq!(get(&t, "peerdma-acs-redirect"), "unknown");
}

#[test]
fn a_bad_prefix_is_refused() {
    let t = preset("workstation");
    for bad in ["", "Example.com", "a..b", "-a.com", &"x".repeat(254)] {
        match labels::labels(&t, bad) {
            Err(Error::Label(m)) => assert!(m.contains("label prefix"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn labels_golden() {
    for p in presets::PRESETS {
        insta::assert_snapshot!(format!("labels-{}", p.name), labels_text(&preset(p.name)));
    }
    for (name, t) in fixtures() {
        insta::assert_snapshot!(format!("labels-kernel-{name}"), labels_text(&t));
    }
}

// ---- metrics ------------------------------------------------------------

/// A sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A strict reading of the Prometheus text exposition format 0.0.4: every
/// line a HELP, a TYPE or a sample; names and label names by the format's
/// grammar; label values quoted with only `\\`, `\"` and `\n` escapes;
/// values that parse as numbers; one HELP and one TYPE per family, before
/// its samples; a family's samples together; no series twice. Returns the
/// samples as (name, labels, value).
fn parse_exposition(text: &str) -> Vec<Sample> {
    fn metric_name(s: &str) -> bool {
        let mut b = s.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
    }
    fn label_name(s: &str) -> bool {
        let mut b = s.bytes();
        !s.starts_with("__")
            && b.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    }
    assert!(text.ends_with('\n'), "the last line ends with a line feed");
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let ctx = format!("line {}: {line}", n + 1);
        assert!(!line.is_empty(), "{ctx}: empty line");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect(&ctx);
            assert!(metric_name(name), "{ctx}");
            assert!(!doc.is_empty() && !doc.contains('\n'), "{ctx}");
            assert!(help.insert(name.to_string()), "{ctx}: HELP twice");
            assert!(!done.contains(name), "{ctx}: family split");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect(&ctx);
            assert!(metric_name(name), "{ctx}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{ctx}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "{ctx}: TYPE twice"
            );
            assert!(!done.contains(name), "{ctx}: TYPE after samples");
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "{ctx}: only HELP and TYPE comments are written"
        );
        // name, optional {labels}, value.
        let name_end = line.find(['{', ' ']).expect(&ctx);
        let name = &line[..name_end];
        assert!(metric_name(name), "{ctx}: metric name");
        assert_eq!(
            types.get(name).map(String::as_str),
            Some("gauge"),
            "{ctx}: no TYPE before"
        );
        if current.as_deref() != Some(name) {
            if let Some(c) = current.take() {
                done.insert(c);
            }
            assert!(!done.contains(name), "{ctx}: samples of a family apart");
            current = Some(name.to_string());
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(r) = rest.strip_prefix('{') {
            let b = r.as_bytes();
            let mut i = 0;
            loop {
                if b[i] == b'}' {
                    i += 1;
                    break;
                }
                let eq = r[i..].find('=').expect(&ctx) + i;
                let lname = &r[i..eq];
                assert!(label_name(lname), "{ctx}: label name '{lname}'");
                assert_eq!(b[eq + 1], b'"', "{ctx}: quoted value");
                let mut j = eq + 2;
                let mut value = String::new();
                loop {
                    match b[j] {
                        b'\\' => {
                            value.push(match b[j + 1] {
                                b'\\' => '\\',
                                b'"' => '"',
                                b'n' => '\n',
                                c => panic!("{ctx}: escape \\{}", c as char),
                            });
                            j += 2;
                        }
                        b'"' => break,
                        b'\n' => panic!("{ctx}: line feed in a value"),
                        _ => {
                            let ch = r[j..].chars().next().unwrap();
                            value.push(ch);
                            j += ch.len_utf8();
                        }
                    }
                }
                assert!(
                    !labels.iter().any(|(k, _): &(String, String)| k == lname),
                    "{ctx}: label twice"
                );
                labels.push((lname.to_string(), value));
                i = j + 1;
                match b[i] {
                    b',' => i += 1,
                    b'}' => {}
                    _ => panic!("{ctx}: after a label value"),
                }
            }
            rest = &r[i..];
        }
        let value = rest.strip_prefix(' ').expect(&ctx);
        assert!(!value.contains(' '), "{ctx}: no timestamps in a textfile");
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            _ => value.parse().unwrap_or_else(|_| panic!("{ctx}: value")),
        };
        let mut key = labels.clone();
        key.sort();
        assert!(
            series.insert((name.to_string(), key)),
            "{ctx}: series twice"
        );
        out.push((name.to_string(), labels, v));
    }
    for h in &help {
        assert!(types.contains_key(h), "HELP without TYPE: {h}");
    }
    out
}

#[test]
fn metrics_of_every_preset_and_fixture_follow_the_text_format() {
    for (name, t) in every_machine() {
        let text = metrics(&t);
        let samples = parse_exposition(&text);
        for (n, _, _) in &samples {
            assert!(n.starts_with("peerdma_"), "{name}: {n}");
        }
        let peers = peerdma_fleet::kinds::p2p_devices(&t);
        let pairs = samples
            .iter()
            .filter(|s| s.0 == "peerdma_p2p_pair_supported")
            .count();
        assert_eq!(
            pairs,
            peers.len() * (peers.len().saturating_sub(1)),
            "{name}"
        );
        if let Some(ok) = promtool(&text) {
            assert!(ok.is_empty(), "{name}: promtool check metrics: {ok}");
        }
    }
}

/// `promtool check metrics` on the text, where Prometheus' promtool is
/// installed (Debian's `prometheus` package): its complaints, empty when
/// none. `None` where it is missing.
fn promtool(text: &str) -> Option<String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => {
            eprintln!(
                "skipped promtool check: promtool is not installed (apt-get install prometheus)"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Some(if o.status.success() {
        said.trim().to_string()
    } else {
        format!("exit {:?}: {said}", o.status.code())
    })
}

#[test]
fn metrics_say_what_the_machine_has() {
    let value = |text: &str, name: &str, want: &[(&str, &str)]| -> Vec<f64> {
        parse_exposition(text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.2)
            .collect()
    };
    let g = metrics(&preset("gpu-storage-16"));
    assert_eq!(
        value(
            &g,
            "peerdma_p2p_pair_supported",
            &[("provider_name", "gpu0"), ("client_name", "nvme0")]
        ),
        [1.0]
    );
    assert_eq!(
        value(
            &g,
            "peerdma_p2p_pair_supported",
            &[("map_type", "not_supported")]
        )
        .len(),
        0
    );
    assert_eq!(
        value(
            &g,
            "peerdma_p2p_pair_distance",
            &[("provider", "0000:03:00.0"), ("client", "0000:05:00.0")]
        ),
        [4.0]
    );
    assert_eq!(
        value(&g, "peerdma_p2pmem_size_bytes", &[("name", "nvme0")]),
        [1073741824.0]
    );
    assert_eq!(
        value(
            &g,
            "peerdma_pcie_link_current_speed_transfers_per_second",
            &[("name", "gpu0")]
        ),
        [32e9]
    );
    assert_eq!(
        value(&g, "peerdma_cpu_p2p_through_root_complex", &[]),
        [1.0]
    );
    let a = metrics(&from_variant(Variant::AcsRedirect));
    assert_eq!(
        value(&a, "peerdma_acs_redirect", &[("name", "rc1-sw-p0")]),
        [1.0]
    );
    assert_eq!(value(&a, "peerdma_acs_redirecting_functions", &[]), [1.0]);
    let d = metrics(&from_variant(Variant::DegradedLink));
    assert_eq!(
        value(&d, "peerdma_pcie_link_degraded", &[("name", "nvme2")]),
        [1.0]
    );
    assert_eq!(
        value(
            &d,
            "peerdma_pcie_link_current_speed_transfers_per_second",
            &[("name", "nvme2")]
        ),
        [16e9]
    );
    assert_eq!(
        value(
            &d,
            "peerdma_pcie_link_max_speed_transfers_per_second",
            &[("name", "nvme2")]
        ),
        [32e9]
    );
    assert_eq!(
        value(&d, "peerdma_pcie_link_degraded", &[("name", "nvme0")]),
        [0.0]
    );
    let w = metrics(&preset("workstation"));
    assert!(
        value(
            &w,
            "peerdma_p2p_pair_supported",
            &[("provider_name", "gpu"), ("client_name", "nvme0")]
        ) == [0.0]
    );
    assert_eq!(
        value(&w, "peerdma_cpu_p2p_through_root_complex", &[]),
        [0.0]
    );
}

#[test]
fn the_grammar_check_catches_what_it_should() {
    for bad in [
        "peerdma_x 1\n",                                                        // no TYPE
        "# TYPE peerdma_x gauge\npeerdma_x{a=\"b\"} one\n",                     // value
        "# TYPE peerdma_x gauge\npeerdma_x{a=\"b\\t\"} 1\n",                    // escape
        "# TYPE peerdma_x gauge\npeerdma_x{a=\"b\"} 1\npeerdma_x{a=\"b\"} 2\n", // twice
        "# TYPE 9x gauge\n",                                                    // name
        "# TYPE peerdma_x gauge\n# TYPE peerdma_y gauge\npeerdma_x 1\npeerdma_y 1\npeerdma_x 2\n", // split
    ] {
        assert!(
            std::panic::catch_unwind(|| parse_exposition(bad)).is_err(),
            "accepted: {bad}"
        );
    }
}

#[test]
fn metrics_golden() {
    for p in presets::PRESETS {
        insta::assert_snapshot!(format!("metrics-{}", p.name), metrics(&preset(p.name)));
    }
    for (name, t) in fixtures() {
        insta::assert_snapshot!(format!("metrics-kernel-{name}"), metrics(&t));
    }
}

// ---- diff ---------------------------------------------------------------

#[test]
fn a_machine_against_itself_differs_in_nothing() {
    for (name, t) in every_machine() {
        let d = diff(&t, &t, &PciIds::builtin());
        assert!(d.is_empty(), "{name}: {d:?}");
        assert!(d.render().contains("No differences"), "{name}");
    }
}

#[test]
fn diff_names_each_change_and_why_pairs_changed() {
    let ids = PciIds::embedded();
    let plain = from_variant(Variant::Plain);
    // ACS redirect on rc1-sw-p0 (gpu2's port): gpu2 and its switch's three
    // other devices, both ways, now through the host bridge.
    let d = diff(&plain, &from_variant(Variant::AcsRedirect), &ids);
    assert_eq!(d.acs.len(), 1);
    assert_eq!(d.acs[0].bdf.to_string(), "0000:42:00.0");
    assert_eq!(
        (d.acs[0].redirect_before, d.acs[0].redirect_after),
        (Some(false), Some(true))
    );
    assert_eq!(d.pairs.len(), 6);
    for p in &d.pairs {
        assert!(
            p.provider_name == "gpu2" || p.client_name == "gpu2",
            "{p:?}"
        );
        assert_eq!(p.before.map_type, peerdma_p2p::MapType::BusAddr);
        assert_eq!(p.after.map_type, peerdma_p2p::MapType::ThruHostBridge);
        assert_eq!(p.reasons.len(), 1, "{p:?}");
        assert!(
            p.reasons[0].contains("ACS redirect is set on 0000:42:00.0"),
            "{p:?}"
        );
    }
    assert!(d.removed.is_empty() && d.added.is_empty() && d.links.is_empty());
    // The other way round: cleared.
    let back = diff(&from_variant(Variant::AcsRedirect), &plain, &ids);
    assert!(back
        .pairs
        .iter()
        .all(|p| p.reasons[0].contains("no longer set")));
    // A drive missing: removed, its port's link down, no verdict between the rest changed.
    let d = diff(&plain, &from_variant(Variant::MissingDrive), &ids);
    assert_eq!(d.removed.len(), 1);
    assert_eq!(d.removed[0].name, "nvme7");
    assert!(
        d.removed[0]
            .description
            .contains("Non-Volatile memory controller"),
        "{:?}",
        d.removed[0]
    );
    assert!(d.pairs.is_empty());
    assert_eq!(d.pairs_compared, 15 * 14);
    // A degraded link.
    let d = diff(&plain, &from_variant(Variant::DegradedLink), &ids);
    assert!(
        d.links
            .iter()
            .any(|l| l.name == "nvme2" && l.degraded_after && !l.degraded_before),
        "{:?}",
        d.links
    );
    assert!(d.pairs.is_empty());
}

#[test]
fn diff_between_kernel_fixtures_gives_the_kernel_rules_as_reasons() {
    let f: HashMap<String, Topology> = fixtures().into_iter().collect();
    let ids = PciIds::builtin();
    // The same emulated topology, one AMD Zen and one Intel: the AMD rule.
    let d = diff(&f["root-ports-amd"], &f["root-ports-intel"], &ids);
    let c = d.cpu.as_ref().unwrap();
    assert!(c.p2p_before && !c.p2p_after);
    assert!(!d.pairs.is_empty());
    for p in &d.pairs {
        assert_eq!(
            p.after.map_type,
            peerdma_p2p::MapType::NotSupported,
            "{p:?}"
        );
        assert!(
            p.reasons.iter().any(|r| r.contains("no longer an AMD Zen")),
            "{p:?}"
        );
    }
    // ACS redirect on a multi-function device, AMD and Intel.
    let d = diff(
        &f["acs-redirect-mfd-amd"],
        &f["acs-redirect-mfd-intel"],
        &ids,
    );
    assert!(d
        .pairs
        .iter()
        .all(|p| p.after.map_type == peerdma_p2p::MapType::NotSupported));
    // Every pair of fixtures compares without panicking, and symmetric
    // counts of changed pairs.
    for (na, a) in &f {
        for (nb, b) in &f {
            let ab = diff(a, b, &ids);
            let ba = diff(b, a, &ids);
            assert_eq!(ab.pairs.len(), ba.pairs.len(), "{na} {nb}");
            assert_eq!(ab.removed.len(), ba.added.len(), "{na} {nb}");
        }
    }
}

#[test]
fn diff_golden() {
    let ids = PciIds::embedded();
    let plain = from_variant(Variant::Plain);
    for (name, v) in [
        ("acs", Variant::AcsRedirect),
        ("missing-drive", Variant::MissingDrive),
        ("degraded-link", Variant::DegradedLink),
    ] {
        insta::assert_snapshot!(
            format!("diff-{name}"),
            diff(&plain, &from_variant(v), &ids).render()
        );
    }
    let f: HashMap<String, Topology> = fixtures().into_iter().collect();
    let text = diff(&f["root-ports-amd"], &f["root-ports-intel"], &ids).render();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    insta::assert_snapshot!(
        "diff-kernel-root-ports-amd-intel",
        text.replace(&dir.display().to_string(), "tests/fixtures/kernel")
    );
}

// ---- fleet --------------------------------------------------------------

fn fleet_dir(n: usize) -> (tempfile::TempDir, [(Variant, usize); 4]) {
    let dir = tempfile::tempdir().unwrap();
    let counts = common::write_fleet(dir.path(), n);
    (dir, counts)
}

#[test]
fn fleet_groups_machines_by_matrix_and_says_what_differs() {
    let (dir, counts) = fleet_dir(200);
    let f = summarise(dir.path(), &PciIds::embedded(), &FleetOptions::default()).unwrap();
    assert_eq!(f.machines.len(), 200);
    assert!(f.unreadable.is_empty());
    // Plain and degraded-link machines share a matrix; ACS and the missing
    // drive each make their own.
    let sizes: Vec<usize> = f.groups.iter().map(|g| g.machines.len()).collect();
    assert_eq!(sizes, [counts[0].1 + counts[3].1, counts[1].1, counts[2].1]);
    let b = &f.groups[1];
    assert_eq!(b.name, "B");
    assert!(
        b.differences
            .iter()
            .any(|d| d.contains("ACS") && d.contains("0000:42:00.0")),
        "{:?}",
        b.differences
    );
    assert_eq!(b.pairs_differing, 6);
    let c = &f.groups[2];
    assert!(
        c.differences.iter().any(|d| d.contains("nvme7")),
        "{:?}",
        c.differences
    );
    // The fix: disable ACS redirect on that port, for group B's machines.
    let fix = f
        .fixes
        .iter()
        .find(|x| {
            x.commands
                .iter()
                .any(|c| c == "pci=disable_acs_redir=0000:42:00.0")
        })
        .expect("the kernel parameter fix");
    assert_eq!(fix.machines, counts[1].1);
    assert_eq!(fix.groups, ["B"]);
    assert_eq!(fix.gives, peerdma_p2p::MapType::BusAddr);
    // The degraded links, by machine.
    assert_eq!(f.degraded_links.len(), 1);
    assert_eq!(f.degraded_links[0].machines.len(), counts[3].1);
    assert_eq!(f.degraded_links[0].bdf.to_string(), "0000:45:00.0");
    // Machines are named by the hostname in their snapshot.
    assert_eq!(f.machines[0].name, "node00000");
    // The same answer whatever the threads.
    let one = summarise(
        dir.path(),
        &PciIds::embedded(),
        &FleetOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(one.render(), f.render());
    insta::assert_snapshot!(
        "fleet-200",
        f.render()
            .replace(&dir.path().display().to_string(), "FLEET")
    );
}

#[test]
fn fleet_of_the_kernel_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    for (name, _) in fixtures() {
        std::fs::copy(
            src.join(&name).join("snapshot.json"),
            dir.path().join(format!("{name}.json")),
        )
        .unwrap();
    }
    let f = summarise(dir.path(), &PciIds::embedded(), &FleetOptions::default()).unwrap();
    assert_eq!(f.machines.len(), fixtures().len());
    // The guests' hostname is the kernel's "(none)": machines are named by
    // their files instead. Every machine is in exactly one group.
    assert!(f.machines.iter().any(|m| m.name == "pxb-nested"));
    let total: usize = f.groups.iter().map(|g| g.machines.len()).sum();
    assert_eq!(total, f.machines.len());
    insta::assert_snapshot!(
        "fleet-kernel-fixtures",
        f.render()
            .replace(&dir.path().display().to_string(), "FLEET")
    );
}

#[test]
fn fleet_bad_input() {
    // No snapshots.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("readme.txt"), "not json").unwrap();
    let e = summarise(empty.path(), &PciIds::builtin(), &FleetOptions::default()).unwrap_err();
    assert!(matches!(e, Error::EmptyFleet(_)), "{e}");
    assert!(e.to_string().contains("holds no snapshots"), "{e}");
    // Not a directory.
    let file = empty.path().join("readme.txt");
    let e = summarise(&file, &PciIds::builtin(), &FleetOptions::default()).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
    // Missing.
    let e = summarise(
        &empty.path().join("nope"),
        &PciIds::builtin(),
        &FleetOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // Files that are not snapshots are listed, the rest summarised.
    let (dir, _) = fleet_dir(5);
    std::fs::write(
        dir.path().join("broken.json"),
        "{\"format\": \"peerdma-snapshot\", \"version\": 3}",
    )
    .unwrap();
    std::fs::write(dir.path().join("other.json"), "[1, 2]").unwrap();
    std::fs::write(dir.path().join(".tmp.json"), "half a fi").unwrap();
    let f = summarise(dir.path(), &PciIds::builtin(), &FleetOptions::default()).unwrap();
    assert_eq!(f.machines.len(), 5);
    let bad: Vec<&PathBuf> = f.unreadable.iter().map(|u| &u.file).collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        f.unreadable
            .iter()
            .any(|u| u.error.contains("snapshot version 3")),
        "{:?}",
        f.unreadable
    );
    assert!(f.render().contains("not snapshots (2)"));
    for u in &f.unreadable {
        assert_eq!(u.error.lines().count(), 1);
    }
}
