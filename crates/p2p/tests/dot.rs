//! The machine as a DOT graph (`peerdma topo --dot`): every function drawn
//! once, every PCIe link labelled, the ACS-redirecting ports marked, the
//! matrix's cells coloured by verdict, and every string from the machine
//! escaped. Graphviz's own reading of these graphs is tested where the
//! command draws them (crates/cli/tests/pictures.rs).

use peerdma_p2p::dot::{escape_label, machine_dot, matrix_functions, palette, DotOptions};
use peerdma_p2p::{matrix, MapType};
use peerdma_pci::ids::PciIds;
use peerdma_pci::{Source, Topology};
use std::path::PathBuf;

/// Names from a fixed database, so that the goldens do not follow the
/// pci.ids of the machine running the tests.
fn ids() -> PciIds {
    PciIds::parse(
        "10de  NVIDIA Corporation\n\t1db4  GV100GL [Tesla V100 PCIe 16GB]\n10b5  PLX Technology, Inc.\n\t8747  PEX 8747 48-Lane, 5-Port PCI Express Gen 3 (8.0 GT/s) Switch\n",
    )
}

fn fixtures() -> Vec<(String, Topology)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/kernel");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let snap = p.join("snapshot.json");
        if snap.is_file() {
            let t = Source::Snapshot(snap.clone()).load().unwrap();
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), t));
        }
    }
    assert!(out.len() >= 9, "the kernel fixtures are there: {dir:?}");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn machines() -> Vec<(String, Topology)> {
    let mut all: Vec<(String, Topology)> = peerdma_pci::presets::PRESETS
        .iter()
        .map(|p| {
            (
                p.name.to_string(),
                Source::Preset(p.name.into()).load().unwrap(),
            )
        })
        .collect();
    all.extend(fixtures());
    all
}

/// The node statement of function `i`, if it is drawn as a node.
fn node_line(dot: &str, i: usize) -> Option<&str> {
    let head = format!("    f{i} [");
    dot.lines()
        .find(|l| l.starts_with(&head) || l.starts_with(&format!("  {head}")))
}

#[test]
fn every_function_is_drawn_once_and_hangs_from_its_bridge() {
    for (name, t) in machines() {
        let dot = machine_dot(&t, &ids(), &DotOptions::default());
        for f in t.functions() {
            let i = f.id.index();
            let nodes = dot
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("f{i} [")))
                .count();
            let folded = t.host_bridge_device(f.host_bridge) == Some(f.id)
                && !f.is_bridge()
                && f.children.is_empty();
            if folded {
                // Drawn as its host bridge: named in the host bridge's box.
                assert_eq!(nodes, 0, "{name}: {}", f.bdf);
                let hb = format!("    hb{} [", f.host_bridge.index());
                let line = dot.lines().find(|l| l.starts_with(&hb)).unwrap();
                assert!(line.contains(&f.bdf.short()), "{name}: {line}");
                continue;
            }
            assert_eq!(nodes, 1, "{name}: {} drawn once\n{dot}", f.bdf);
            let from = match f.upstream {
                Some(u) => format!("f{}", u.index()),
                None => format!("hb{}", f.host_bridge.index()),
            };
            let edge = format!("  {from} -> f{i}");
            assert_eq!(
                dot.lines()
                    .filter(|l| *l == format!("{edge};") || l.starts_with(&format!("{edge} [")))
                    .count(),
                1,
                "{name}: {} hangs from {from}",
                f.bdf
            );
        }
    }
}

#[test]
fn acs_redirecting_ports_and_only_they_are_marked() {
    let mut seen = 0;
    for (name, t) in machines() {
        let dot = machine_dot(&t, &ids(), &DotOptions::default());
        for f in t.functions() {
            let Some(line) = node_line(&dot, f.id.index()) else {
                continue;
            };
            let marked = line.contains(&format!("color=\"{}\"", palette::ACS_REDIRECT))
                && line.contains("ACS redirect:");
            let redirects = f.acs.redirects() == Some(true);
            assert_eq!(marked, redirects, "{name}: {}: {line}", f.bdf);
            seen += usize::from(redirects);
        }
    }
    assert!(seen >= 3, "the presets and fixtures have redirecting ports");
}

#[test]
fn links_are_labelled_with_generation_and_width() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let dot = machine_dot(&t, &ids(), &DotOptions::default());
    let gpu0 = t.lookup("gpu0").unwrap().index();
    let port = t.lookup("sw0-p8").unwrap().index();
    assert!(
        dot.contains(&format!("  f{port} -> f{gpu0} [label=<Gen3 x16>")),
        "{dot}"
    );
    // Inside a switch there is no PCIe link to label.
    let up = t.lookup("sw0").unwrap().index();
    assert!(dot.contains(&format!("  f{up} -> f{port};")), "{dot}");
    // An empty slot says so.
    let empty = t.lookup("sw1-p12").unwrap().index();
    assert!(node_line(&dot, empty).unwrap().contains("empty slot"));
}

#[test]
fn a_degraded_link_is_red_and_says_what_it_could_do() {
    let text = "[cpu]\nvendor = \"amd\"\nfamily = 0x19\n[[host_bridge]]\nname = \"hb\"\n\
        [[device]]\nname = \"rp\"\ntype = \"root_port\"\nparent = \"hb\"\nlink = \"gen4x16\"\n\
        [[device]]\nname = \"gpu\"\ntype = \"endpoint\"\nparent = \"rp\"\nclass = 0x030200\nlink = \"gen4x8\"\nmax_link = \"gen4x16\"\n";
    let raw = match peerdma_pci::desc::parse_description(text, "slow.toml") {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let t = Topology::from_raw(raw, "slow.toml").unwrap();
    let dot = machine_dot(&t, &ids(), &DotOptions::default());
    let gpu = t.lookup("gpu").unwrap();
    assert!(t.function(gpu).link.unwrap().degraded());
    let line = dot
        .lines()
        .find(|l| l.contains(&format!("-> f{} [", gpu.index())))
        .unwrap();
    assert!(line.contains("Gen4 x8<BR/>(capable of Gen4 x16)"), "{line}");
    assert!(
        line.contains(&format!("color=\"{}\"", palette::DEGRADED)),
        "{line}"
    );
}

#[test]
fn matrix_cells_are_coloured_by_the_kernels_verdict() {
    for (name, t) in machines() {
        let dot = machine_dot(&t, &ids(), &DotOptions::default());
        let fns = matrix_functions(&t, false);
        if fns.len() < 2 {
            continue;
        }
        let m = matrix(&t);
        let mut want = [0usize; 3];
        for &a in &fns {
            for &b in &fns {
                if a != b {
                    want[match m.get(a, b).0 {
                        MapType::BusAddr => 0,
                        MapType::ThruHostBridge => 1,
                        _ => 2,
                    }] += 1;
                }
            }
        }
        let cells = |fill: &str| {
            dot.matches(&format!("<TD BGCOLOR=\"{fill}\"><FONT"))
                .count()
        };
        assert_eq!(cells(palette::BUS_ADDR.0), want[0], "{name}");
        assert_eq!(cells(palette::THRU_HOST_BRIDGE.0), want[1], "{name}");
        assert_eq!(cells(palette::NOT_SUPPORTED.0), want[2], "{name}");
        assert_eq!(cells(palette::SAME.0), fns.len(), "{name}");
    }
}

#[test]
fn a_machine_too_large_for_a_readable_matrix_says_where_the_matrix_is() {
    let t = Source::Preset("gpu-storage-16".into()).load().unwrap();
    let o = DotOptions {
        max_matrix: 8,
        ..Default::default()
    };
    let dot = machine_dot(&t, &ids(), &o);
    assert!(
        dot.contains("The matrix of 16 functions is left out"),
        "{dot}"
    );
    assert!(!dot.contains(palette::BUS_ADDR.0) || dot.contains("Legend"));
}

#[test]
fn strings_from_the_machine_are_escaped() {
    assert_eq!(
        escape_label("a<b>&\"c'\u{7}", 100),
        "a&lt;b&gt;&amp;&quot;c&#39;"
    );
    assert_eq!(escape_label("abcdef", 3), "abc…");
    assert_eq!(escape_label("abc", 3), "abc");
    let hostile = "<B>x</B>&amp;\\\"}; evil";
    let text = format!(
        "name = \"{}\"\n[cpu]\nvendor = \"amd\"\nfamily = 0x19\nmodel_name = \"{}\"\n[[host_bridge]]\nname = \"hb\"\n\
         [[device]]\nname = \"rp\"\ntype = \"root_port\"\nparent = \"hb\"\n\
         [[device]]\nname = \"{}\"\ntype = \"endpoint\"\nparent = \"rp\"\n\
         [[device]]\nname = \"b\"\ntype = \"endpoint\"\nparent = \"rp\"\nfunction = 1\n",
        hostile.replace('\\', "\\\\").replace('"', "\\\""),
        hostile.replace('\\', "\\\\").replace('"', "\\\""),
        hostile.replace('\\', "\\\\").replace('"', "\\\""),
    );
    let raw = match peerdma_pci::desc::parse_description(&text, "hostile.toml") {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{text}"),
    };
    let t = Topology::from_raw(raw, "hostile.toml").unwrap();
    let dot = machine_dot(&t, &ids(), &DotOptions::default());
    // Raw, the string is only in tooltips (quoted strings, which Graphviz
    // escapes itself when it writes SVG); in labels (markup) it is escaped.
    let labels: String = dot
        .lines()
        .map(|l| match (l.find("tooltip=\""), l.find("\", label=<")) {
            (Some(a), Some(b)) if a < b => format!("{}{}", &l[..a], &l[b..]),
            _ => l.to_string(),
        })
        .collect();
    assert!(!labels.contains("<B>x</B>&amp;"), "{labels}");
    assert!(
        dot.contains("&lt;B&gt;x&lt;/B&gt;&amp;amp;\\&quot;}; evil"),
        "{dot}"
    );
    // The tooltip (a quoted string) escapes quotes and backslashes.
    assert!(dot.contains("\\\\\\\"}; evil"), "{dot}");
}

#[test]
fn the_graphs_of_the_presets_are_stable() {
    for p in peerdma_pci::presets::PRESETS {
        let t = Source::Preset(p.name.into()).load().unwrap();
        insta::assert_snapshot!(
            format!("dot_{}", p.name),
            machine_dot(&t, &ids(), &DotOptions::default())
        );
    }
}
