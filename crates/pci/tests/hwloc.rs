//! hwloc XML as a topology source: what each attribute becomes, both
//! formats (1.x and 2.x), and one clear line naming the file, line and
//! element for each kind of bad file.

use peerdma_pci::hwloc::parse_hwloc;
use peerdma_pci::{Acs, AcsAssumption, LinkSpeed, PortType, Topology};

/// A 2.x file: a Package of NUMA node 1 holding a host bridge with a root
/// port, a switch with two GPUs and a NIC; a Machine-level host bridge
/// with an NVMe drive.
const V2: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc2.dtd">
<topology version="2.0">
  <object type="Machine" os_index="0" cpuset="0x0000000f" nodeset="0x00000003">
    <info name="HostName" value="node17"/>
    <info name="OSRelease" value="6.1.0"/>
    <info name="hwlocVersion" value="2.9.0"/>
    <object type="Package" os_index="0" cpuset="0x00000003" nodeset="0x00000002">
      <info name="CPUVendor" value="AuthenticAMD"/>
      <info name="CPUFamilyNumber" value="25"/>
      <info name="CPUModelNumber" value="1"/>
      <info name="CPUModel" value="AMD EPYC 7713 64-Core Processor"/>
      <object type="NUMANode" os_index="1" cpuset="0x00000003" nodeset="0x00000002"/>
      <object type="Core" os_index="0" cpuset="0x00000003" nodeset="0x00000002">
        <object type="PU" os_index="0" cpuset="0x00000001" nodeset="0x00000002"/>
        <object type="PU" os_index="1" cpuset="0x00000002" nodeset="0x00000002"/>
      </object>
      <object type="Bridge" bridge_type="0-1" depth="0" bridge_pci="0000:[40-44]">
        <object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[41-44]" pci_busid="0000:40:01.1" pci_type="0604 [1022:1483] [0000:0000] 00" pci_link_speed="15.753846">
          <object type="Bridge" bridge_type="1-1" depth="2" bridge_pci="0000:[42-44]" pci_busid="0000:41:00.0" pci_type="0604 [10b5:8747] [0000:0000] ca" pci_link_speed="15.753846">
            <object type="Bridge" bridge_type="1-1" depth="3" bridge_pci="0000:[43-43]" pci_busid="0000:42:08.0" pci_type="0604 [10b5:8747] [0000:0000] ca" pci_link_speed="15.753846">
              <object type="PCIDev" pci_busid="0000:43:00.0" pci_type="0302 [10de:20b0] [10de:134f] a1" pci_link_speed="15.753846">
                <info name="PCIVendor" value="NVIDIA Corporation"/>
                <info name="PCIDevice" value="GA100 [A100 SXM4 40GB]"/>
                <object type="OSDev" name="card1" osdev_type="1"/>
                <object type="OSDev" name="nvml0" osdev_type="1"/>
                <object type="OSDev" name="cuda0" osdev_type="5"/>
              </object>
            </object>
            <object type="Bridge" bridge_type="1-1" depth="3" bridge_pci="0000:[44-44]" pci_busid="0000:42:10.0" pci_type="0604 [10b5:8747] [0000:0000] ca" pci_link_speed="1.969231">
              <object type="PCIDev" pci_busid="0000:44:00.0" pci_type="0207 [15b3:101b] [15b3:0007] 00" pci_link_speed="1.969231">
                <object type="OSDev" name="ib0" osdev_type="2"/>
                <object type="OSDev" name="mlx5_0" osdev_type="3"/>
              </object>
              <object type="PCIDev" pci_busid="0000:44:00.1" pci_type="0207 [15b3:101b] [15b3:0007] 00" pci_link_speed="1.969231"/>
            </object>
          </object>
        </object>
      </object>
    </object>
    <object type="Bridge" bridge_type="0-1" depth="0" bridge_pci="0000:[00-01]">
      <object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[01-01]" pci_busid="0000:00:03.1" pci_type="0604 [1022:1483] [0000:0000] 00" pci_link_speed="0.984615">
        <object type="PCIDev" pci_busid="0000:01:00.0" pci_type="0108 [144d:a808] [144d:a801] 00" pci_link_speed="0.984615">
          <object type="OSDev" name="nvme0n1" subtype="Disk" osdev_type="0"/>
        </object>
      </object>
    </object>
  </object>
</topology>
"#;

fn load(text: &str) -> Topology {
    let raw = parse_hwloc(text, "test.xml").unwrap_or_else(|e| panic!("{e}"));
    Topology::from_raw(raw, "test.xml").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    match parse_hwloc(text, "bad.xml") {
        Ok(raw) => match Topology::from_raw(raw, "bad.xml") {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_2x_file_becomes_the_machine_it_describes() {
    let t = load(V2);
    let f = |s: &str| t.function(t.lookup(s).unwrap());
    assert_eq!(t.len(), 9);
    assert_eq!(t.origin().kind, "hwloc");
    assert_eq!(t.origin().hostname.as_deref(), Some("node17"));
    assert_eq!(t.origin().tool.as_deref(), Some("hwloc 2.9.0 (XML 2.x)"));
    assert!(
        t.cpu().supports_p2pdma(),
        "AMD family 25 from the Package infos"
    );
    let names: Vec<&str> = t.host_bridges().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["pci0000:00", "pci0000:40"]);
    // Port types inferred from the tree, ACS unknown.
    assert_eq!(f("0000:40:01.1").port_type, PortType::RootPort);
    assert_eq!(f("0000:41:00.0").port_type, PortType::SwitchUpstream);
    assert_eq!(f("0000:42:08.0").port_type, PortType::SwitchDownstream);
    assert_eq!(f("0000:43:00.0").port_type, PortType::Endpoint);
    assert!(f("0000:43:00.0").port_type_inferred);
    assert!(t.functions().iter().all(|x| x.acs == Acs::Unknown));
    // pci_type: class (no programming interface), IDs, subsystem, revision.
    let gpu = f("0000:43:00.0");
    assert_eq!(
        (gpu.class, gpu.vendor, gpu.device),
        (0x030200, 0x10de, 0x20b0)
    );
    assert_eq!(
        (gpu.subsystem, gpu.revision),
        (Some((0x10de, 0x134f)), 0xa1)
    );
    assert_eq!(f("0000:41:00.0").bridge_buses, Some((0x42, 0x44)));
    // Names and OS devices; the label prefers nvml over DRM names, the
    // RDMA device over the network one.
    assert_eq!(gpu.device_name.as_deref(), Some("GA100 [A100 SXM4 40GB]"));
    assert_eq!(gpu.label.as_deref(), Some("card1"));
    assert_eq!(gpu.os_devices, ["card1", "nvml0", "cuda0"]);
    assert_eq!(t.lookup("nvml0").unwrap(), gpu.id);
    assert_eq!(t.lookup("cuda0").unwrap(), gpu.id);
    assert_eq!(f("mlx5_0").bdf.to_string(), "0000:44:00.0");
    assert_eq!(f("0000:44:00.0").label.as_deref(), Some("mlx5_0"));
    assert_eq!(f("nvme0n1").bdf.to_string(), "0000:01:00.0");
    // Multi-function: 44:00.0 and 44:00.1.
    assert!(f("0000:44:00.1").multifunction);
    // NUMA: the Package's single node; the Machine holds two: unknown.
    assert_eq!(gpu.numa_node, Some(1));
    assert_eq!(t.host_bridges()[1].numa_node, Some(1));
    assert_eq!(f("nvme0n1").numa_node, None);
    // Links: 0.984615 GB/s is only Gen3 x1; 1.969231 is Gen3 x2 or Gen4
    // x1; 15.753846 is Gen3 x16, Gen4 x8 or Gen5 x4.
    let l = f("nvme0n1").link.unwrap();
    assert_eq!(
        l.current.map(|c| (c.speed, c.width)),
        Some((LinkSpeed::Gen3, 1))
    );
    let l = gpu.link.unwrap();
    assert_eq!(l.current, None);
    assert_eq!(l.current_rate, Some(15_753_846_000));
    assert_eq!(
        l.describe_current().unwrap(),
        "15.75 GB/s (Gen3 x16 or Gen4 x8 or Gen5 x4)"
    );
    assert_eq!(
        f("mlx5_0").link.unwrap().describe_current().unwrap(),
        "1.97 GB/s (Gen3 x2 or Gen4 x1)"
    );
    // Filtered (no host bridge function anywhere): the host bridges'
    // 00.0 functions are not in the file.
    assert!(t.origin().partial.is_some());
    assert!(t.host_bridges().iter().all(|h| h.device_not_captured));
    assert!(t.host_bridge_device(t.host_bridges()[1].id).is_none());
}

#[test]
fn assume_acs_iommu_redirects_root_and_downstream_ports_only() {
    let mut t = load(V2);
    t.assume_acs(AcsAssumption::Iommu);
    for f in t.functions() {
        let assumed = matches!(f.acs, Acs::Assumed { .. });
        let port = matches!(f.port_type, PortType::RootPort | PortType::SwitchDownstream);
        assert_eq!(assumed, port, "{} {}", f.bdf, f.port_type);
        assert_eq!(f.acs.redirects(), Some(port).filter(|&p| p), "{}", f.bdf);
        assert!(!f.acs.is_known());
    }
    t.assume_acs(AcsAssumption::None);
    assert!(t.functions().iter().all(|f| f.acs == Acs::Unknown));
}

/// The 1.x format: no version, NUMA nodes enclosing the I/O objects,
/// `Socket`, PCI names in `name`.
const V1: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE topology SYSTEM "hwloc.dtd">
<topology>
  <object type="Machine" os_index="0" cpuset="0x00000003" nodeset="0x00000003">
    <object type="NUMANode" os_index="0" cpuset="0x00000001" nodeset="0x00000001">
      <object type="Socket" os_index="0" cpuset="0x00000001" nodeset="0x00000001">
        <info name="CPUModel" value="Intel(R) Xeon(R) CPU X5650"/>
        <info name="CPUVendor" value="GenuineIntel"/>
        <info name="CPUFamilyNumber" value="6"/>
        <object type="PU" os_index="0" cpuset="0x00000001" nodeset="0x00000001"/>
      </object>
      <object type="Bridge" os_index="0" bridge_type="0-1" depth="0" bridge_pci="0000:[00-0f]">
        <object type="Bridge" os_index="16" name="Intel Corporation 5520/5500/X58 I/O Hub PCI Express Root Port 1" bridge_type="1-1" depth="1" bridge_pci="0000:[04-04]" pci_busid="0000:00:01.0" pci_type="0604 [8086:3408] [0000:0000] 13" pci_link_speed="0.400000">
          <object type="PCIDev" os_index="16384" name="Intel Corporation 82576 Gigabit Network Connection" pci_busid="0000:04:00.0" pci_type="0200 [8086:10c9] [003c:003f] 01" pci_link_speed="0.200000">
            <object type="OSDev" name="eth0" osdev_type="2"/>
          </object>
        </object>
      </object>
    </object>
    <object type="NUMANode" os_index="1" cpuset="0x00000002" nodeset="0x00000002">
      <object type="Socket" os_index="1" cpuset="0x00000002" nodeset="0x00000002">
        <object type="PU" os_index="1" cpuset="0x00000002" nodeset="0x00000002"/>
      </object>
      <object type="Bridge" os_index="0" bridge_type="0-1" depth="0" bridge_pci="0000:[80-8f]">
        <object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[84-84]" pci_busid="0000:80:03.0" pci_type="0604 [8086:340a] [0000:0000] 13" pci_link_speed="4.000000">
          <object type="PCIDev" pci_busid="0000:84:00.0" pci_type="0302 [10de:1091] [10de:0974] a1" pci_link_speed="4.000000">
            <info name="PCIVendor" value="NVIDIA Corporation"/>
            <info name="PCIDevice" value="GF110GL [Tesla M2090]"/>
          </object>
        </object>
      </object>
    </object>
  </object>
</topology>
"#;

#[test]
fn a_1x_file_with_numa_nodes_around_the_io() {
    let t = load(V1);
    let f = |s: &str| t.function(t.lookup(s).unwrap());
    assert_eq!(t.origin().tool.as_deref(), Some("hwloc (XML 1.x)"));
    assert_eq!(t.cpu().vendor_id, "GenuineIntel");
    assert_eq!(t.cpu().model_name, "Intel(R) Xeon(R) CPU X5650");
    assert_eq!(f("eth0").numa_node, Some(0));
    assert_eq!(f("0000:84:00.0").numa_node, Some(1));
    assert_eq!(
        f("eth0").device_name.as_deref(),
        Some("Intel Corporation 82576 Gigabit Network Connection"),
        "1.x names a PCI object in its name attribute"
    );
    assert_eq!(
        f("0000:84:00.0").device_name.as_deref(),
        Some("GF110GL [Tesla M2090]")
    );
    // 0.2 GB/s: Gen1 x1 is 0.25, so no generation gives it: a rate.
    let l = f("eth0").link.unwrap();
    assert_eq!((l.current, l.current_rate), (None, Some(200_000_000)));
    // 4.0 GB/s: Gen1 x16 or Gen2 x8.
    assert_eq!(
        f("0000:84:00.0").link.unwrap().describe_current().unwrap(),
        "4.00 GB/s (Gen1 x16 or Gen2 x8)"
    );
    assert_eq!(f("0000:80:03.0").port_type, PortType::RootPort);
    assert_eq!(
        t.host_bridges()
            .iter()
            .map(|h| h.numa_node)
            .collect::<Vec<_>>(),
        [Some(0), Some(1)]
    );
}

#[test]
fn a_file_with_a_host_bridge_function_lists_every_function() {
    let whole = V2.replace(
        r#"      <object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[01-01]""#,
        r#"      <object type="PCIDev" pci_busid="0000:00:00.0" pci_type="0600 [1022:1480] [1022:1480] 00" pci_link_speed="0.000000"/>
      <object type="Bridge" bridge_type="1-1" depth="1" bridge_pci="0000:[01-01]""#,
    );
    let t = load(&whole);
    assert!(t.origin().partial.is_none());
    let hb0 = t.host_bridges()[0].id;
    assert_eq!(
        t.host_bridge_device(hb0)
            .map(|d| t.function(d).bdf.to_string()),
        Some("0000:00:00.0".into())
    );
    // A device of a file without any link rate is a conventional PCI
    // device here, since other functions have rates.
    assert_eq!(
        t.function(t.lookup("0000:00:00.0").unwrap()).port_type,
        PortType::Conventional
    );
}

#[test]
fn bad_files_get_one_line_naming_the_file_line_and_element() {
    let cases: &[(&str, &[&str])] = &[
        ("", &["bad.xml: is empty"]),
        ("<html><body/></html>", &["bad.xml:1: <html>: is XML but not hwloc's", "expected <topology>"]),
        (&V2[..V2.len() / 2], &["bad.xml:22: the file ends before its root element is closed (truncated?)"]),
        (&V2.replace("<object type=\"NUMANode\" os_index=\"1\" cpuset=\"0x00000003\" nodeset=\"0x00000002\"/>", "<object type=\"NUMANode\">"), &["bad.xml:", "not well-formed XML"]),
        (
            &V2.replace("version=\"2.0\"", "version=\"3.0\""),
            &["bad.xml:3: <topology>: hwloc XML version 3.0 is not one this peerdma reads", "--export-xml-flags v2"],
        ),
        (
            &V2.replace("pci_busid=\"0000:43:00.0\"", "pci_busid=\"0000:45:00.0\""),
            &["bad.xml:22: <object type=\"PCIDev\" pci_busid=\"0000:45:00.0\">: is on bus 45, outside its bus range [43-43] of bridge 0000:42:08.0 (line 21)"],
        ),
        (
            &V2.replace("pci_busid=\"0000:01:00.0\"", "pci_busid=\"0000:02:00.0\""),
            &["bad.xml:43:", "is on bus 02, outside its bus range [01-01] of bridge 0000:00:03.1 (line 42)"],
        ),
        (
            &V2.replace("pci_busid=\"0000:00:03.1\"", "pci_busid=\"0000:05:03.1\""),
            &["bad.xml:42:", "is on bus 05, outside its root bus 00 of host bridge pci0000:00 (line 41)"],
        ),
        (
            &V2.replace("bridge_pci=\"0000:[43-43]\"", "bridge_pci=\"0000:[43-47]\""),
            &["bad.xml:21:", "its buses [43-47] are outside the range [42-44] of bridge 0000:41:00.0 (line 20)"],
        ),
        (
            &V2.replace("pci_busid=\"0000:44:00.1\"", "pci_busid=\"0000:44:00.0\""),
            &["bad.xml:35:", "0000:44:00.0 is listed twice (also at line 31)"],
        ),
        (
            &V2.replace("[10de:20b0] [10de:134f] a1", "[10de:20b0]"),
            &["bad.xml:22:", "pci_type \"0302 [10de:20b0]\" is not"],
        ),
        (
            &V2.replace("pci_link_speed=\"0.984615\">\n        <object type=\"PCIDev\"", "pci_link_speed=\"fast\">\n        <object type=\"PCIDev\""),
            &["bad.xml:42:", "pci_link_speed \"fast\" is not a rate in GB/s"],
        ),
        (
            &V2.replace("bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"0000:[00-01]\"", "bridge_type=\"0-1\" depth=\"0\" bridge_pci=\"zz\""),
            &["bad.xml:41:", "bridge_pci \"zz\" is not DDDD:[SS-EE]"],
        ),
        (
            "<topology version=\"2.0\"><object type=\"Machine\"><object type=\"PCIDev\" pci_busid=\"0000:01:00.0\" pci_type=\"0108 [1:2] [3:4] 00\"/></object></topology>",
            &["bad.xml:1: <object type=\"PCIDev\" pci_busid=\"0000:01:00.0\">: is not below a host bridge"],
        ),
        (
            "<topology version=\"2.0\"><object type=\"Machine\"/></topology>",
            &["bad.xml:1: <object type=\"Machine\">: the file holds no PCI device"],
        ),
    ];
    for (text, wants) in cases {
        let e = err(text);
        assert_eq!(e.lines().count(), 1, "{e}");
        for w in *wants {
            assert!(e.contains(w), "wanted {w:?} in:\n{e}");
        }
    }
}

#[test]
fn a_file_is_read_with_the_size_cap_and_file_checks_of_the_other_sources() {
    let dir = tempfile::tempdir().unwrap();
    let e = peerdma_pci::Source::Hwloc(dir.path().to_path_buf())
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("is a directory, not a file; expected hwloc XML"),
        "{e}"
    );
    let e = peerdma_pci::Source::Hwloc(dir.path().join("none.xml"))
        .load()
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.xml: no such file or directory"), "{e}");
    let p = dir.path().join("latin1.xml");
    std::fs::write(&p, b"<topology>\n\xe9</topology>").unwrap();
    let e = peerdma_pci::Source::Hwloc(p)
        .load()
        .unwrap_err()
        .to_string();
    assert!(e.contains("latin1.xml:2: is not UTF-8 text"), "{e}");
}

/// Every prefix of a file and every byte replaced by a quote or a
/// delimiter: read or refused with one line, never a panic.
#[test]
fn cut_and_damaged_files_never_panic() {
    let mut texts: Vec<String> = (0..V2.len())
        .filter(|&i| V2.is_char_boundary(i))
        .map(|i| V2[..i].to_string())
        .collect();
    for (i, _) in V2.char_indices().step_by(7) {
        for c in ['"', '<', '0', 'f', ']'] {
            let mut s = V2.to_string();
            s.replace_range(
                i..i + V2[i..].chars().next().unwrap().len_utf8(),
                &c.to_string(),
            );
            texts.push(s);
        }
    }
    for t in &texts {
        let r = std::panic::catch_unwind(|| {
            parse_hwloc(t, "cut.xml").and_then(|raw| Topology::from_raw(raw, "cut.xml"))
        });
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => assert_eq!(e.to_string().lines().count(), 1, "{e}"),
            Err(_) => panic!("panicked on:\n{t}"),
        }
    }
}
