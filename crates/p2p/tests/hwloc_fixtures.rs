//! peerdma's model from hwloc XML against its model from the same machine's
//! sysfs tree, on every kernel fixture, and its verdicts against the
//! kernel's.
//!
//! `cargo xtask hwloc-fixtures` had Debian's lstopo (hwloc 2.9) read each
//! fixture's `root/` tree and write `tests/fixtures/hwloc/kernel/`:
//! `<scenario>.xml` (lstopo's default I/O filter), `.whole-io.xml` (every
//! function) and `.v1.xml` (the default filter in hwloc 1.x format). For
//! every function the XML keeps, these must equal what the tree gives:
//! parent bridge, host bridge, IDs, subsystem, revision, port type, bus
//! range, NUMA node and the current link. What hwloc leaves out is listed
//! below, explicitly, and checked against hwloc's own rule.
//!
//! A missing XML file fails: no silent pass.

use peerdma_p2p::matrix;
use peerdma_p2p::oracle::parse_verdicts;
use peerdma_pci::{Acs, AcsAssumption, Function, Source, Topology};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// The functions hwloc's default I/O filter leaves out of each fixture,
/// and why. hwloc keeps PCI devices of the classes it calls important
/// (`hwloc_filter_check_pcidev_subtype_important`: storage, network,
/// display, unclassified, processor, accelerator, Fibre Channel,
/// InfiniBand, CXL memory, and bridge classes) and then drops every bridge
/// and bridge-class device that has nothing below it (`hwloc_filter_bridges`).
const COMMON: &[(&str, &str)] = &[
    (
        "0000:00:00.0",
        "host bridge function (class 0600), nothing below it",
    ),
    ("0000:00:1f.0", "ISA bridge (class 0601), nothing below it"),
    (
        "0000:00:1f.3",
        "SMBus controller (class 0c05), not an important class",
    ),
];
const PXB: &[(&str, &str)] = &[
    ("0000:00:10.0", "pxb-pcie host bridge function (class 0600) on bus 00: its root bus 20 is another host bridge"),
    ("0000:00:11.0", "pxb-pcie host bridge function (class 0600) on bus 00: its root bus 40 is another host bridge"),
];

fn left_out(scenario: &str) -> BTreeMap<String, &'static str> {
    let mut m: BTreeMap<String, &'static str> =
        COMMON.iter().map(|(b, w)| (b.to_string(), *w)).collect();
    if scenario == "pxb-nested" {
        m.extend(PXB.iter().map(|(b, w)| (b.to_string(), *w)));
    }
    m
}

/// hwloc's default filter as a rule over the model from sysfs.
fn kept_by_default_filter(t: &Topology, f: &Function) -> bool {
    let class = (f.class >> 8) as u16;
    if f.is_bridge() {
        return f
            .children
            .iter()
            .any(|&c| kept_by_default_filter(t, t.function(c)));
    }
    let important = matches!(class >> 8, 0x00 | 0x01 | 0x02 | 0x03 | 0x0b | 0x12)
        || matches!(class, 0x0c04 | 0x0c06 | 0x0502);
    important && class >> 8 != 0x06
}

fn scenarios() -> Vec<String> {
    let dir = workspace().join("tests/fixtures/kernel");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("root").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    assert!(v.len() >= 9, "kernel fixtures missing: {v:?}");
    v
}

fn from_tree(s: &str) -> Topology {
    Source::Root(
        workspace()
            .join("tests/fixtures/kernel")
            .join(s)
            .join("root"),
    )
    .load()
    .unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn from_xml(s: &str, kind: &str) -> Topology {
    let p = workspace().join(format!("tests/fixtures/hwloc/kernel/{s}{kind}.xml"));
    assert!(
        p.is_file(),
        "{} missing (run `cargo xtask hwloc-fixtures`)",
        p.display()
    );
    Source::Hwloc(p.clone())
        .load()
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every function the XML has must be the tree's function, fact by fact.
fn same_function(s: &str, kind: &str, tree: &Topology, x: &Topology, f: &Function) {
    let ctx = format!("{s}{kind} {}", f.bdf);
    let g = tree.function(
        tree.find(f.bdf)
            .unwrap_or_else(|| panic!("{ctx}: not in the tree")),
    );
    let up = |t: &Topology, f: &Function| f.upstream.map(|u| t.function(u).bdf);
    assert_eq!(up(x, f), up(tree, g), "{ctx}: parent");
    assert_eq!(
        x.host_bridge(f.host_bridge).name,
        tree.host_bridge(g.host_bridge).name,
        "{ctx}: host bridge"
    );
    assert_eq!(
        (f.vendor, f.device, f.subsystem, f.revision),
        (g.vendor, g.device, g.subsystem, g.revision),
        "{ctx}: IDs"
    );
    // Difference: hwloc records the class without its programming
    // interface (an NVMe drive is 0108, not 010802).
    assert_eq!(f.class, g.class & 0xffff00, "{ctx}: class");
    assert_eq!(
        f.port_type, g.port_type,
        "{ctx}: port type (inferred from the XML, read from the tree)"
    );
    assert!(f.port_type_inferred || !f.is_bridge(), "{ctx}");
    assert_eq!(f.bridge_buses, g.bridge_buses, "{ctx}: bus range");
    // Difference: a machine of one NUMA node. sysfs gives -1 (no node);
    // hwloc's Package holds node 0 and every device below it is there.
    let one_node = tree.functions().iter().all(|f| f.numa_node.is_none());
    match (f.numa_node, g.numa_node) {
        (Some(0), None) if one_node => {}
        (a, b) => assert_eq!(a, b, "{ctx}: NUMA node"),
    }
    // Links: the current link is the same; hwloc records no maximum
    // (difference), and a Gen1 x1 QEMU link's 0.25 GB/s is only Gen1 x1.
    assert_eq!(
        f.link.and_then(|l| l.current),
        g.link.and_then(|l| l.current),
        "{ctx}: current link"
    );
    assert_eq!(
        f.link.and_then(|l| l.max),
        None,
        "{ctx}: hwloc has no maximum link"
    );
    // Difference: ACS is in the tree's config space, not in the XML.
    assert_eq!(f.acs, Acs::Unknown, "{ctx}");
}

#[test]
fn the_model_from_hwloc_xml_is_the_model_from_the_same_tree() {
    for s in scenarios() {
        let tree = from_tree(&s);
        let out = left_out(&s);
        for kind in ["", ".whole-io", ".v1"] {
            let x = from_xml(&s, kind);
            let have: BTreeSet<String> = x.functions().iter().map(|f| f.bdf.to_string()).collect();
            let all: BTreeSet<String> =
                tree.functions().iter().map(|f| f.bdf.to_string()).collect();
            let missing: BTreeSet<String> = all.difference(&have).cloned().collect();
            if kind == ".whole-io" {
                assert!(
                    missing.is_empty(),
                    "{s}{kind}: --whole-io leaves out {missing:?}"
                );
                assert!(x.origin().partial.is_none(), "{s}{kind}");
            } else {
                let listed: BTreeSet<String> = out.keys().cloned().collect();
                assert_eq!(
                    missing, listed,
                    "{s}{kind}: what the default filter leaves out"
                );
                let by_rule: BTreeSet<String> = tree
                    .functions()
                    .iter()
                    .filter(|f| !kept_by_default_filter(&tree, f))
                    .map(|f| f.bdf.to_string())
                    .collect();
                assert_eq!(by_rule, listed, "{s}{kind}: hwloc's rule");
                assert!(
                    x.origin().partial.is_some(),
                    "{s}{kind}: marked as filtered"
                );
            }
            assert!(have.is_subset(&all), "{s}{kind}: functions the tree lacks");
            for f in x.functions() {
                same_function(&s, kind, &tree, &x, f);
            }
            let hbs = |t: &Topology| -> BTreeMap<String, Option<u32>> {
                t.host_bridges()
                    .iter()
                    .map(|h| (h.name.clone(), h.numa_node))
                    .collect()
            };
            let (hx, ht) = (hbs(&x), hbs(&tree));
            assert_eq!(
                hx.keys().collect::<Vec<_>>(),
                ht.keys().collect::<Vec<_>>(),
                "{s}{kind}: host bridges"
            );
            // The host bridge function: in the whole-io file as in the
            // tree; left out by the default filter, and said so.
            for h in x.host_bridges() {
                let th = tree
                    .host_bridges()
                    .iter()
                    .find(|t| t.name == h.name)
                    .unwrap();
                let dev = |t: &Topology, id| t.host_bridge_device(id).map(|d| t.function(d).bdf);
                let in_xml = dev(&tree, th.id).is_some_and(|b| x.find(b).is_some());
                if kind == ".whole-io" || in_xml {
                    assert_eq!(dev(&x, h.id), dev(&tree, th.id), "{s}{kind}: {}", h.name);
                } else {
                    assert!(h.device_not_captured, "{s}{kind}: {}", h.name);
                }
            }
            assert_eq!(x.cpu().vendor_id, tree.cpu().vendor_id, "{s}{kind}: CPU");
            assert_eq!(
                (x.cpu().family, x.cpu().model),
                (tree.cpu().family, tree.cpu().model),
                "{s}{kind}"
            );
        }
    }
}

/// The tree with every function's ACS replaced by what `a` assumes.
fn tree_assuming(tree: &Topology, a: AcsAssumption) -> Topology {
    let mut t = tree.clone();
    for id in tree.ids() {
        t.set_acs_ctrl(id, a.ctrl_for(tree.function(id).port_type));
    }
    t
}

/// peerdma's verdicts from the whole-io XML under each ACS assumption are
/// exactly its verdicts from the tree with ACS replaced by that
/// assumption: the XML loses nothing else a verdict needs. Against the
/// kernel, which saw the real ACS, `none` disagrees exactly where the
/// kernel saw ACS redirect (root ports with the IOMMU on or redirect
/// forced), and `iommu` where a root port or switch downstream port had
/// none (QEMU's XIO3130 switch ports have no ACS capability; root ports
/// without an IOMMU driver keep redirect off). The counts are what each
/// scenario shows.
#[test]
fn verdicts_from_hwloc_xml_against_the_tree_and_the_kernel() {
    // (scenario, pairs, agreeing with `none`, agreeing with `iommu`)
    let expected: &[(&str, usize, usize, usize)] = &[
        // The port redirects (config_acs), as `iommu` assumes.
        ("acs-config-over-disable", 42, 36, 42),
        ("acs-redirect-mfd-amd", 42, 36, 42),
        ("acs-redirect-mfd-intel", 42, 36, 42),
        // The IOMMU driver's redirect: what `iommu` assumes.
        ("iommu-mfd-intel", 42, 36, 42),
        ("iommu-root-ports-amd", 56, 52, 56),
        ("iommu-switch", 90, 80, 70),
        ("iommu-switch-nointremap", 90, 80, 70),
        ("pxb-nested", 506, 506, 406),
        ("root-ports-amd", 56, 56, 52),
        ("root-ports-intel", 56, 56, 52),
        // No IOMMU, no ACS: `none` is right; VFs sit below their PF's port.
        ("sriov-nvme", 132, 132, 76),
        ("switch-nvme-cmb", 90, 90, 60),
    ];
    let mut seen = Vec::new();
    for s in scenarios() {
        let path = workspace()
            .join("tests/fixtures/kernel")
            .join(&s)
            .join("verdicts");
        let text = std::fs::read_to_string(&path).unwrap();
        let k = parse_verdicts(&text, &path.display().to_string()).unwrap();
        let x = from_xml(&s, ".whole-io");
        let tree = from_tree(&s);
        let mut agree = [0usize; 2];
        let mut pairs = 0;
        for (i, a) in [AcsAssumption::None, AcsAssumption::Iommu]
            .into_iter()
            .enumerate()
        {
            let mx = matrix(&x.with_acs_assumption(a));
            let tt = tree_assuming(&tree, a);
            let mt = matrix(&tt);
            let from_tree: BTreeMap<_, _> = mt
                .pairs()
                .map(|p| ((p.provider, p.client), (p.map_type, p.distance)))
                .collect();
            pairs = 0;
            for p in mx.pairs() {
                assert_eq!(
                    Some(&(p.map_type, p.distance)),
                    from_tree.get(&(p.provider, p.client)),
                    "{s} assuming {a:?}: {} -> {}",
                    p.provider,
                    p.client
                );
                let Some((map, dist)) = k.verdict(p.provider, p.client) else {
                    continue;
                };
                pairs += 1;
                let mine = (p.map_type, p.distance.unwrap_or(dist));
                if mine == (map, dist) {
                    agree[i] += 1;
                }
            }
        }
        seen.push((s.clone(), pairs, agree[0], agree[1]));
    }
    let got: Vec<(&str, usize, usize, usize)> = seen
        .iter()
        .map(|(s, p, a, b)| (s.as_str(), *p, *a, *b))
        .collect();
    assert_eq!(got, expected);
}
