//! Link classes as NVML defines them (`nvmlGpuTopologyLevel_t`), with the
//! rule for multi-level switch fabrics written in `path.rs`: one test per
//! level and per case of the rule, on hand-written machines and on the
//! kernel fixtures, and the matrix's per-pair classes against the rule.

use peerdma_p2p::{link_class, matrix, LinkClass};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{gen, Source, Topology};
use std::path::Path;

fn machine(body: &str) -> Topology {
    let text = format!("[cpu]\nvendor = \"intel\"\nfamily = 6\n{body}");
    let raw = parse_description(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    Topology::from_raw(raw, "test.toml").unwrap()
}

fn dev(name: &str, kind: &str, parent: &str, extra: &str) -> String {
    format!("[[device]]\nname = \"{name}\"\ntype = \"{kind}\"\nparent = \"{parent}\"\n{extra}\n")
}

fn class(t: &Topology, a: &str, b: &str) -> LinkClass {
    let (x, y) = (t.lookup(a).unwrap(), t.lookup(b).unwrap());
    let c = link_class(t, x, y);
    assert_eq!(link_class(t, y, x), c, "{a} <-> {b} is symmetric");
    c
}

/// A PLX-style fabric of two levels below one root port: the first-level
/// switch `l1` has three downstream ports: two lead to second-level
/// switches `l2a` and `l2b` with two GPUs each, the third holds a NIC.
fn two_level_fabric() -> Topology {
    let mut b = String::from("[[host_bridge]]\nname = \"hb0\"\n");
    b += &dev("rp", "root_port", "hb0", "");
    b += &dev("l1", "switch_upstream", "rp", "");
    for (i, d) in ["l1a", "l1b", "l1c"].iter().enumerate() {
        b += &dev(d, "switch_downstream", "l1", &format!("slot = {i}"));
    }
    for (up, dp, gpus) in [
        ("l2a", "l1a", ["gpu0", "gpu1"]),
        ("l2b", "l1b", ["gpu2", "gpu3"]),
    ] {
        b += &dev(up, "switch_upstream", dp, "");
        for (i, g) in gpus.iter().enumerate() {
            let port = format!("{up}-{i}");
            b += &dev(&port, "switch_downstream", up, &format!("slot = {i}"));
            b += &dev(g, "endpoint", &port, "class = \"gpu\"");
        }
    }
    b += &dev("nic", "endpoint", "l1c", "class = \"ethernet\"");
    machine(&b)
}

#[test]
fn below_one_second_level_switch_is_single() {
    let t = two_level_fabric();
    assert_eq!(class(&t, "gpu0", "gpu1"), LinkClass::Pix);
    assert_eq!(class(&t, "gpu2", "gpu3"), LinkClass::Pix);
}

#[test]
fn across_second_level_switches_is_multiple() {
    let t = two_level_fabric();
    // second level, first level, second level: three switches.
    assert_eq!(class(&t, "gpu0", "gpu2"), LinkClass::Pxb);
    assert_eq!(class(&t, "gpu1", "gpu3"), LinkClass::Pxb);
    // second level and first level: two switches.
    assert_eq!(class(&t, "gpu0", "nic"), LinkClass::Pxb);
    // A port of the first-level switch and the NIC below another of its
    // ports: one switch.
    assert_eq!(class(&t, "l1a", "nic"), LinkClass::Pix);
}

#[test]
fn functions_of_one_device_and_virtual_functions_are_internal() {
    let mut b = String::from("[[host_bridge]]\nname = \"hb0\"\n");
    b += &dev("rp", "root_port", "hb0", "");
    b += &dev("up", "switch_upstream", "rp", "");
    b += &dev("dp0", "switch_downstream", "up", "slot = 0");
    b += &dev("dp1", "switch_downstream", "up", "slot = 1");
    b += &dev("nic", "endpoint", "dp0", "class = \"ethernet\"");
    b += &dev(
        "nic-f1",
        "endpoint",
        "dp0",
        "class = \"ethernet\"\nfunction = 1",
    );
    b += &dev(
        "vf",
        "endpoint",
        "dp0",
        "class = \"ethernet\"\nphysfn = \"nic\"",
    );
    b += &dev("gpu", "endpoint", "dp1", "class = \"gpu\"");
    let t = machine(&b);
    assert_eq!(class(&t, "nic", "nic-f1"), LinkClass::Internal);
    assert_eq!(class(&t, "nic", "vf"), LinkClass::Internal);
    assert_eq!(class(&t, "nic-f1", "vf"), LinkClass::Internal);
    assert_eq!(class(&t, "vf", "gpu"), LinkClass::Pix);
    assert_eq!(class(&t, "nic", "nic"), LinkClass::Same);
}

fn fixture(name: &str) -> Topology {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/kernel")
        .join(name);
    Source::Root(dir.join("root")).load().unwrap()
}

#[test]
fn nested_switches_host_bridges_and_numa_nodes_of_a_kernel_fixture() {
    let t = fixture("pxb-nested");
    let c = |a: &str, b: &str| class(&t, a, b);
    assert_eq!(
        c("0000:05:00.0", "0000:06:00.0"),
        LinkClass::Pix,
        "one nested switch"
    );
    assert_eq!(
        c("0000:05:00.0", "0000:07:00.0"),
        LinkClass::Pxb,
        "nested and outer switch"
    );
    assert_eq!(
        c("0000:08:00.0", "0000:08:00.1"),
        LinkClass::Internal,
        "one device"
    );
    assert_eq!(
        c("0000:05:00.0", "0000:08:00.0"),
        LinkClass::Phb,
        "two root ports"
    );
    assert_eq!(
        c("0000:21:00.0", "0000:41:00.0"),
        LinkClass::Sys,
        "pxb host bridges of NUMA nodes 1 and 0"
    );
    assert_eq!(
        c("0000:05:00.0", "0000:21:00.0"),
        LinkClass::Node,
        "a host bridge without a NUMA node"
    );
}

#[test]
fn the_matrix_gives_every_pair_the_rules_class() {
    let mut machines: Vec<Topology> = ["dual-xeon", "epyc", "workstation", "gpu-storage-16"]
        .iter()
        .map(|p| Source::Preset((*p).into()).load().unwrap())
        .collect();
    machines.push(fixture("pxb-nested"));
    machines.push(two_level_fabric());
    for seed in 0..8 {
        machines.push(Topology::from_raw(gen::generate(seed, 40).unwrap(), "generated").unwrap());
    }
    for t in &machines {
        let m = matrix(t);
        let mut pairs = m.pairs();
        for a in t.ids() {
            for b in t.ids().filter(|&b| b != a) {
                let p = pairs.next().unwrap();
                assert_eq!(
                    (p.provider, p.client),
                    (t.function(a).bdf, t.function(b).bdf)
                );
                assert_eq!(
                    p.link_class,
                    link_class(t, a, b),
                    "{} -> {}",
                    p.provider,
                    p.client
                );
                assert_eq!(m.link_class(a, b), p.link_class);
            }
        }
    }
}
