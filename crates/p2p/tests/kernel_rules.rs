//! The kernel's documented cases for calc_map_type_and_dist, one rule per
//! test, on small hand-written machines.

use peerdma_p2p::{
    calc_map_type_and_dist, distance_many, find_many, link_class, matrix, LinkClass, MapType,
    P2pIndex,
};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{Source, Topology};

fn machine(cpu: &str, body: &str) -> Topology {
    let text = format!("[cpu]\n{cpu}\n{body}");
    let raw = parse_description(&text, "test.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    Topology::from_raw(raw, "test.toml").unwrap()
}

const INTEL: &str = "vendor = \"intel\"\nfamily = 6";

fn dev(name: &str, kind: &str, parent: &str, extra: &str) -> String {
    format!("[[device]]\nname = \"{name}\"\ntype = \"{kind}\"\nparent = \"{parent}\"\n{extra}\n")
}

fn hb(name: &str) -> String {
    format!("[[host_bridge]]\nname = \"{name}\"\n")
}

/// (map type, distance as pci_p2pdma_distance reports it, raw distance)
fn verdict(t: &Topology, a: &str, b: &str) -> (MapType, Option<u32>, u32) {
    let (pa, pb) = (t.lookup(a).unwrap(), t.lookup(b).unwrap());
    let v = calc_map_type_and_dist(t, pa, pb);
    // The fast index must agree with the port of the kernel's walk.
    let idx = P2pIndex::new(t);
    assert_eq!(
        idx.map_type_and_dist(pa, pb),
        (v.map_type, v.raw_distance),
        "{a} -> {b}"
    );
    (v.map_type, v.distance, v.raw_distance)
}

fn switch_machine(cpu: &str, host: &str, dp_acs: &str) -> Topology {
    let mut body = hb("hb0");
    if !host.is_empty() {
        body += &dev("host", "host", "hb0", &format!("slot = 0\n{host}"));
    }
    body += &dev("rp", "root_port", "hb0", "");
    body += &dev("up", "switch_upstream", "rp", "");
    body += &dev("dp0", "switch_downstream", "up", dp_acs);
    body += &dev("dp1", "switch_downstream", "up", "");
    body += &dev("dp2", "switch_downstream", "up", "acs = [\"rr\", \"cr\"]");
    body += &dev("a", "endpoint", "dp0", "class = \"gpu\"");
    body += &dev("b", "endpoint", "dp1", "class = \"nvme\"");
    body += &dev("c", "endpoint", "dp2", "class = \"nvme\"");
    machine(cpu, &body)
}

#[test]
fn same_function_is_distance_zero() {
    let t = switch_machine(INTEL, "", "");
    assert_eq!(verdict(&t, "a", "a"), (MapType::BusAddr, Some(0), 0));
}

#[test]
fn functions_of_one_device_are_distance_two() {
    let mut body = hb("hb0");
    body += &dev("rp", "root_port", "hb0", "");
    body += &dev("f0", "endpoint", "rp", "");
    body += &dev("f1", "endpoint", "rp", "");
    let t = machine(INTEL, &body);
    assert_eq!(verdict(&t, "f0", "f1"), (MapType::BusAddr, Some(2), 2));
    assert_eq!(
        link_class(&t, t.lookup("f0").unwrap(), t.lookup("f1").unwrap()),
        LinkClass::Internal
    );
}

#[test]
fn two_devices_under_one_switch_are_distance_four() {
    let t = switch_machine(INTEL, "", "");
    assert_eq!(verdict(&t, "a", "b"), (MapType::BusAddr, Some(4), 4));
    assert_eq!(verdict(&t, "b", "a"), (MapType::BusAddr, Some(4), 4));
    assert_eq!(
        link_class(&t, t.lookup("a").unwrap(), t.lookup("b").unwrap()),
        LinkClass::Pix
    );
    // A port on the path to the provider is itself a valid endpoint of the walk.
    assert_eq!(verdict(&t, "up", "a"), (MapType::BusAddr, Some(2), 2));
}

#[test]
fn acs_redirect_on_the_path_sends_traffic_through_the_host_bridge() {
    // Not whitelisted (QEMU's q35 host bridge): not supported.
    let t = switch_machine(INTEL, "vendor = 0x8086\ndevice = 0x29c0", "acs = [\"rr\"]");
    assert_eq!(verdict(&t, "a", "b"), (MapType::NotSupported, None, 4));
    // A redirecting port off the path does not matter...
    assert_eq!(verdict(&t, "b", "b"), (MapType::BusAddr, Some(0), 0));
    // ...one on the client's side does.
    assert_eq!(verdict(&t, "b", "c"), (MapType::NotSupported, None, 4));
    // Whitelisted host bridge (Skylake-E): through the host bridge.
    let t = switch_machine(INTEL, "vendor = 0x8086\ndevice = 0x2020", "acs = [\"cr\"]");
    assert_eq!(verdict(&t, "a", "b"), (MapType::ThruHostBridge, Some(4), 4));
    // P2P Egress Control counts as redirect too; SV/UF/TB do not.
    let t = switch_machine(INTEL, "vendor = 0x8086\ndevice = 0x2020", "acs = [\"ec\"]");
    assert_eq!(verdict(&t, "a", "b").0, MapType::ThruHostBridge);
    let t = switch_machine(
        INTEL,
        "vendor = 0x8086\ndevice = 0x2020",
        "acs = [\"sv\", \"uf\", \"tb\", \"dt\"]",
    );
    assert_eq!(verdict(&t, "a", "b").0, MapType::BusAddr);
}

#[test]
fn acs_list_is_in_the_kernels_order() {
    let t = switch_machine(INTEL, "vendor = 0x8086\ndevice = 0x2020", "acs = [\"rr\"]");
    let (a, c) = (t.lookup("a").unwrap(), t.lookup("c").unwrap());
    let v = calc_map_type_and_dist(&t, a, c);
    // The provider's side first (bottom up), then the client's.
    let names: Vec<&str> = v
        .acs_redirects
        .iter()
        .map(|&f| t.function(f).label.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["dp0", "dp2"]);
    let e = peerdma_p2p::explain(&t, a, c);
    assert_eq!(
        e.disable_acs_redir.as_deref(),
        Some("pci=disable_acs_redir=0000:02:00.0;0000:02:02.0")
    );
}

#[test]
fn the_common_upstream_bridge_and_the_provider_are_checked_too() {
    // A multi-function device below a root port with ACS redirect: the
    // kernel checks the root port (the meeting point) and counts it.
    let mut body = hb("hb0");
    body += &dev("host", "host", "hb0", "slot = 0");
    body += &dev("rp", "root_port", "hb0", "acs = [\"rr\", \"cr\"]");
    body += &dev("f0", "endpoint", "rp", "");
    body += &dev("f1", "endpoint", "rp", "");
    let t = machine(INTEL, &body);
    assert_eq!(verdict(&t, "f0", "f1"), (MapType::NotSupported, None, 2));
    let amd = machine("vendor = \"amd\"\nfamily = 0x17", &body);
    assert_eq!(
        verdict(&amd, "f0", "f1"),
        (MapType::ThruHostBridge, Some(2), 2)
    );
    // ACS redirect on the provider function itself.
    let mut body = hb("hb0");
    body += &dev("rp", "root_port", "hb0", "");
    body += &dev("f0", "endpoint", "rp", "acs = [\"rr\"]");
    body += &dev("f1", "endpoint", "rp", "");
    let t = machine(INTEL, &body);
    assert_eq!(verdict(&t, "f0", "f1").0, MapType::NotSupported);
    assert_eq!(
        verdict(&t, "f1", "f0").0,
        MapType::NotSupported,
        "and as client"
    );
}

fn two_root_ports(cpu: &str, first: &str) -> Topology {
    let mut body = hb("hb0");
    body += first;
    body += &dev("rp1", "root_port", "hb0", "slot = 1");
    body += &dev("rp2", "root_port", "hb0", "slot = 2");
    body += &dev("a", "endpoint", "rp1", "");
    body += &dev("b", "endpoint", "rp2", "");
    machine(cpu, &body)
}

#[test]
fn different_root_ports_consult_the_whitelist() {
    let t = two_root_ports(
        INTEL,
        &dev(
            "host",
            "host",
            "hb0",
            "slot = 0\nvendor = 0x8086\ndevice = 0x4660",
        ),
    );
    assert_eq!(verdict(&t, "a", "b"), (MapType::NotSupported, None, 4));
    let t = two_root_ports(
        INTEL,
        &dev(
            "host",
            "host",
            "hb0",
            "slot = 0\nvendor = 0x8086\ndevice = 0x09a2",
        ),
    );
    assert_eq!(verdict(&t, "a", "b"), (MapType::ThruHostBridge, Some(4), 4));
    assert_eq!(
        link_class(&t, t.lookup("a").unwrap(), t.lookup("b").unwrap()),
        LinkClass::Phb
    );
    // Same host bridge: an entry with REQ_SAME_HOST_BRIDGE is fine.
    let t = two_root_ports(
        INTEL,
        &dev(
            "host",
            "host",
            "hb0",
            "slot = 0\nvendor = 0x8086\ndevice = 0x3c00",
        ),
    );
    assert_eq!(verdict(&t, "a", "b").0, MapType::ThruHostBridge);
}

#[test]
fn the_host_bridge_device_is_00_0_or_a_first_root_port() {
    // No 00.0: the first function is a whitelisted root port -> used.
    let t = two_root_ports(INTEL, "");
    let t2 = {
        let mut body = hb("hb0");
        body += &dev(
            "rp1",
            "root_port",
            "hb0",
            "slot = 1\nvendor = 0x8086\ndevice = 0x2030",
        );
        body += &dev("rp2", "root_port", "hb0", "slot = 2");
        body += &dev("a", "endpoint", "rp1", "");
        body += &dev("b", "endpoint", "rp2", "");
        machine(INTEL, &body)
    };
    assert_eq!(verdict(&t, "a", "b").0, MapType::NotSupported);
    assert_eq!(verdict(&t2, "a", "b").0, MapType::ThruHostBridge);
    // The first function is an integrated endpoint at 00.1 (not 00.0, not a
    // root port): the kernel finds no device, so nothing is whitelisted even
    // though a whitelisted root port follows.
    let mut body = hb("hb0");
    body += &dev("rcep", "rc_endpoint", "hb0", "slot = 0\nfunction = 1");
    body += &dev(
        "rp1",
        "root_port",
        "hb0",
        "slot = 1\nvendor = 0x8086\ndevice = 0x2030",
    );
    body += &dev(
        "rp2",
        "root_port",
        "hb0",
        "slot = 2\nvendor = 0x8086\ndevice = 0x2030",
    );
    body += &dev("a", "endpoint", "rp1", "");
    body += &dev("b", "endpoint", "rp2", "");
    let t3 = machine(INTEL, &body);
    assert_eq!(verdict(&t3, "a", "b").0, MapType::NotSupported);
    let e = peerdma_p2p::explain(&t3, t3.lookup("a").unwrap(), t3.lookup("b").unwrap());
    assert!(
        e.reasons.iter().any(|r| r.contains("cannot identify it")),
        "{:?}",
        e.reasons
    );
}

fn two_host_bridges(id0: &str, id1: &str) -> Topology {
    let mut body = hb("hb0") + "numa_node = 0\n" + &hb("hb1") + "numa_node = 1\n";
    body += &dev("h0", "host", "hb0", &format!("slot = 0\n{id0}"));
    body += &dev("h1", "host", "hb1", &format!("slot = 0\n{id1}"));
    body += &dev("rp0", "root_port", "hb0", "");
    body += &dev("rp1", "root_port", "hb1", "");
    body += &dev("rp2", "root_port", "hb0", "");
    body += &dev("a", "endpoint", "rp0", "");
    body += &dev("b", "endpoint", "rp1", "");
    body += &dev("c", "endpoint", "rp2", "");
    machine(INTEL, &body)
}

#[test]
fn different_host_bridges_and_the_same_host_bridge_flag() {
    let skx = "vendor = 0x8086\ndevice = 0x2020";
    let hsw = "vendor = 0x8086\ndevice = 0x2f00";
    let none = "vendor = 0x8086\ndevice = 0x4660";
    let t = two_host_bridges(skx, skx);
    assert_eq!(verdict(&t, "a", "b"), (MapType::ThruHostBridge, Some(4), 4));
    assert_eq!(
        link_class(&t, t.lookup("a").unwrap(), t.lookup("b").unwrap()),
        LinkClass::Sys
    );
    let t = two_host_bridges(hsw, hsw);
    assert_eq!(
        verdict(&t, "a", "b").0,
        MapType::NotSupported,
        "REQ_SAME_HOST_BRIDGE across bridges"
    );
    assert_eq!(
        verdict(&t, "a", "c").0,
        MapType::ThruHostBridge,
        "REQ_SAME_HOST_BRIDGE within one"
    );
    let t = two_host_bridges(skx, none);
    assert_eq!(
        verdict(&t, "a", "b").0,
        MapType::NotSupported,
        "both must be whitelisted"
    );
    assert_eq!(verdict(&t, "b", "a").0, MapType::NotSupported);
}

#[test]
fn amd_zen_and_only_amd_zen_passes_without_whitelist() {
    let none = &dev(
        "host",
        "host",
        "hb0",
        "slot = 0\nvendor = 0x1022\ndevice = 0x1480",
    );
    for (cpu, want) in [
        ("vendor = \"amd\"\nfamily = 0x17", MapType::ThruHostBridge),
        ("vendor = \"amd\"\nfamily = 0x19", MapType::ThruHostBridge),
        ("vendor = \"amd\"\nfamily = 0x15", MapType::NotSupported),
        ("vendor = \"hygon\"\nfamily = 0x18", MapType::NotSupported),
        (INTEL, MapType::NotSupported),
    ] {
        let t = two_root_ports(cpu, none);
        assert_eq!(verdict(&t, "a", "b").0, want, "{cpu}");
    }
}

#[test]
fn distances_without_a_common_bridge_count_both_chains() {
    let mut body = hb("hb0");
    body += &dev(
        "host",
        "host",
        "hb0",
        "slot = 0\nvendor = 0x8086\ndevice = 0x2020",
    );
    body += &dev("i0", "rc_endpoint", "hb0", "");
    body += &dev("i1", "rc_endpoint", "hb0", "");
    body += &dev("rp", "root_port", "hb0", "");
    body += &dev("up", "switch_upstream", "rp", "");
    body += &dev("dp", "switch_downstream", "up", "");
    body += &dev("e", "endpoint", "dp", "");
    let t = machine(INTEL, &body);
    assert_eq!(
        verdict(&t, "i0", "i1"),
        (MapType::ThruHostBridge, Some(2), 2)
    );
    assert_eq!(
        verdict(&t, "i0", "e"),
        (MapType::ThruHostBridge, Some(5), 5)
    );
}

#[test]
fn a_virtual_function_walks_from_its_physical_functions_bus() {
    let mut body = hb("hb0");
    body += &dev("rp", "root_port", "hb0", "");
    body += &dev("up", "switch_upstream", "rp", "");
    body += &dev("dp0", "switch_downstream", "up", "");
    body += &dev("dp1", "switch_downstream", "up", "");
    body += &dev("pf", "endpoint", "dp0", "");
    body += "[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nphysfn = \"pf\"\n";
    body += &dev("b", "endpoint", "dp1", "");
    let t = machine(INTEL, &body);
    assert_eq!(verdict(&t, "vf", "b"), (MapType::BusAddr, Some(4), 4));
    assert_eq!(verdict(&t, "vf", "pf"), (MapType::BusAddr, Some(2), 2));
}

#[test]
fn distance_many_and_find_many_follow_the_kernel() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let id = |n: &str| t.lookup(n).unwrap();
    assert_eq!(
        distance_many(&t, id("nvme0"), &[id("gpu0"), id("nic0")]),
        Some(8)
    );
    assert_eq!(
        distance_many(&t, id("nvme0"), &[]),
        None,
        "no clients is -1"
    );
    let best = find_many(&t, &[id("gpu0"), id("nic0")]).unwrap();
    assert_eq!(
        (best.distance, best.providers.clone()),
        (8, vec![id("nvme0")])
    );
    let best = find_many(&t, &[id("gpu4")]).unwrap();
    assert_eq!(
        (best.distance, best.providers.clone()),
        (4, vec![id("nvme3")])
    );
    // Equally close providers come back together, in BDF order.
    let best = find_many(&t, &[id("gpu6")]).unwrap();
    assert_eq!(best.distance, 6);
    assert_eq!(best.providers, vec![id("nvme0"), id("nvme1"), id("nvme3")]);
    // On the workstation nothing can serve the GPU and the other drive.
    let w = Source::Preset("workstation".into()).load().unwrap();
    assert_eq!(
        find_many(&w, &[w.lookup("gpu").unwrap(), w.lookup("nvme0").unwrap()]),
        None
    );
}

#[test]
fn matrix_lists_every_ordered_pair_once() {
    let t = Source::Preset("epyc".into()).load().unwrap();
    let m: Vec<_> = matrix(&t).pairs().collect();
    assert_eq!(m.len(), t.len() * (t.len() - 1));
    let mut seen = std::collections::HashSet::new();
    for p in &m {
        assert_ne!(p.provider, p.client);
        assert!(seen.insert((p.provider, p.client)));
        assert_eq!(p.distance.is_none(), p.map_type == MapType::NotSupported);
    }
}
