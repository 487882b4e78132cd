//! Real machines' hwloc XML from hwloc's own test suite
//! (tests/fixtures/hwloc/upstream/README.md): an NVIDIA DGX-2H, whose GPUs
//! sit below two levels of PLX switches (the link-class rule for
//! multi-level fabrics), and a 1.x file of a two-socket server.

use peerdma_p2p::{calc_map_type_and_dist, explain, link_class, pair_reports, LinkClass, MapType};
use peerdma_pci::{AcsAssumption, Source, Topology};
use std::path::Path;

fn load(file: &str) -> Topology {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hwloc/upstream")
        .join(file);
    Source::Hwloc(p).load().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn dgx2_link_classes_follow_the_switch_levels() {
    let t = load("nvidiaDGX2.xml");
    let c = |a: &str, b: &str| link_class(&t, t.lookup(a).unwrap(), t.lookup(b).unwrap());
    // nvml0 (34:00.0) and nvml1 (36:00.0): one second-level switch (32:00.0).
    assert_eq!(c("nvml0", "nvml1"), LinkClass::Pix);
    // nvml0 and nvml2 (39:00.0): second-level 32, first-level 2c,
    // second-level 37.
    assert_eq!(c("nvml0", "nvml2"), LinkClass::Pxb);
    // Other root ports of the same socket (NUMA node 0): NODE.
    assert_eq!(c("nvml0", "nvml4"), LinkClass::Node);
    // The other socket (NUMA node 1): SYS.
    assert_eq!(c("nvml0", "nvml8"), LinkClass::Sys);
    let gpus: Vec<String> = (0..16).map(|i| format!("nvml{i}")).collect();
    for g in &gpus {
        let f = t.function(t.lookup(g).unwrap());
        assert_eq!(
            f.device_name.as_deref(),
            Some("Tesla V100-SXM3-32GB-H"),
            "{g}: GPUModel"
        );
    }
}

#[test]
fn dgx2_verdicts_under_both_acs_assumptions() {
    let t = load("nvidiaDGX2.xml");
    let id = |n: &str| t.lookup(n).unwrap();
    // The Skylake-E root ports (8086:2030) stand for their host bridges
    // and are whitelisted across host bridges.
    let v = calc_map_type_and_dist(&t, id("nvml0"), id("nvml1"));
    assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(4)));
    let v = calc_map_type_and_dist(&t, id("nvml0"), id("nvml2"));
    assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(8)));
    let v = calc_map_type_and_dist(&t, id("nvml0"), id("nvml8"));
    assert_eq!(v.map_type, MapType::ThruHostBridge);
    let i = t.with_acs_assumption(AcsAssumption::Iommu);
    let v = calc_map_type_and_dist(&i, id("nvml0"), id("nvml1"));
    assert_eq!((v.map_type, v.distance), (MapType::ThruHostBridge, Some(4)));
    // Every explanation says ACS is unknown and what the other
    // assumption gives.
    let e = explain(&t, id("nvml0"), id("nvml1"));
    let u = e.acs_unknown.as_ref().unwrap();
    assert_eq!(
        (u.assumed, u.other),
        (AcsAssumption::None, AcsAssumption::Iommu)
    );
    assert_eq!(
        (u.other_map_type, u.other_distance),
        (MapType::ThruHostBridge, Some(4))
    );
    // Links known only as a rate still give the narrowest link.
    let n = e.narrowest_link.as_ref().unwrap();
    assert_eq!(
        (n.link.as_str(), n.gbytes_per_sec),
        ("Gen3 x16 or Gen4 x8 or Gen5 x4", 15.75)
    );
    assert!(e
        .caveats
        .iter()
        .any(|c| c.contains("hwloc XML records no config space")));
    // And so does every pair of the matrix.
    let reports = pair_reports(&t);
    assert_eq!(reports.len(), t.len() * (t.len() - 1));
    assert!(reports.iter().all(|r| r.acs_unknown.is_some()));
    let r = reports
        .iter()
        .find(|r| {
            r.verdict.provider == t.function(id("nvml0")).bdf
                && r.verdict.client == t.function(id("nvml1")).bdf
        })
        .unwrap();
    assert_eq!(r.verdict.link_class, LinkClass::Pix);
    assert_eq!(
        r.acs_unknown.unwrap().other_map_type,
        MapType::ThruHostBridge
    );
}

#[test]
fn a_1x_server_with_names_numa_and_os_devices() {
    let t = load("24em64t-2n6c2t-pci.v1.xml");
    let f = |n: &str| t.function(t.lookup(n).unwrap());
    assert_eq!(t.origin().name.as_deref(), Some("ProLiant SL390s G7"));
    assert_eq!(t.cpu().vendor_id, "", "this file has no CPU infos");
    assert!(t.notes().iter().any(|n| n.contains("names no CPU vendor")));
    assert_eq!(f("mlx4_0").bdf.to_string(), "0000:05:00.0");
    assert_eq!(f("ib0").bdf.to_string(), "0000:05:00.0");
    assert_eq!(f("eth1").bdf.to_string(), "0000:04:00.1");
    assert_eq!(f("sda").bdf.to_string(), "0000:00:1f.2");
    assert_eq!(
        f("mlx4_0").label.as_deref(),
        Some("mlx4_0"),
        "the RDMA name first"
    );
    assert_eq!(f("mlx4_0").numa_node, Some(0));
    assert_eq!(f("0000:14:00.0").numa_node, Some(1));
    let gpu = f("0000:14:00.0");
    assert_eq!(gpu.vendor_name.as_deref(), Some("nVidia Corporation"));
    assert_eq!(gpu.device_name, None, "only PCIVendor in this file");
    assert_eq!(
        (
            f("eth0").vendor_name.as_deref(),
            f("eth0").device_name.as_deref()
        ),
        (
            Some("Intel Corporation"),
            Some("82576 Gigabit Network Connection")
        )
    );
    assert_eq!(
        link_class(&t, t.lookup("eth0").unwrap(), t.lookup("eth1").unwrap()),
        LinkClass::Internal
    );
    assert_eq!(
        link_class(
            &t,
            t.lookup("0000:06:00.0").unwrap(),
            t.lookup("0000:14:00.0").unwrap()
        ),
        LinkClass::Sys
    );
}
