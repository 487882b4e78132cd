//! Nonsense is refused the same way from every source: the one builder
//! checks the model, and the error names the source and the device.

use peerdma_pci::raw::{RawMachine, RawP2pMem};
use peerdma_pci::{sysfs, write_snapshot, Bdf, Source, Topology};
use std::path::Path;

fn workstation() -> RawMachine {
    Source::Preset("workstation".into()).capture().unwrap()
}

fn index_of(raw: &RawMachine, label: &str) -> usize {
    raw.devices
        .iter()
        .position(|d| d.label.as_deref() == Some(label))
        .unwrap()
}

fn bdf_of(raw: &RawMachine, label: &str) -> Bdf {
    raw.devices[index_of(raw, label)].name().parse().unwrap()
}

/// The error each source gives for `raw`: as a snapshot file and as a
/// `--root` tree, each of which must name itself and `device`.
fn refused_everywhere(dir: &Path, case: &str, raw: &RawMachine, device: &str) -> String {
    let snap = dir.join(format!("{case}.json"));
    write_snapshot(raw, &snap).unwrap();
    let root = dir.join(case);
    sysfs::write_root(raw, &root).unwrap();
    let mut first = None;
    for src in [Source::Snapshot(snap), Source::Root(root)] {
        let e = match src.load() {
            Ok(_) => panic!("{case}: {src:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.contains(&src.label())
                || e.contains(
                    &std::fs::canonicalize(src.label())
                        .unwrap()
                        .display()
                        .to_string()
                ),
            "{case}: names the source: {e}"
        );
        assert!(e.contains(device), "{case}: names {device}: {e}");
        first.get_or_insert(e);
    }
    first.unwrap()
}

#[test]
fn nonsense_in_a_capture_is_refused_from_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A function that is its own physical function.
    let mut raw = workstation();
    let nic = index_of(&raw, "nic");
    raw.devices[nic].physfn = Some(bdf_of(&raw, "nic"));
    let e = refused_everywhere(d, "own-physfn", &raw, "04:00.0 (nic)");
    assert!(e.contains("is its own physical function"), "{e}");

    // A physical function that is the host bridge's function, or a port.
    for pf in ["host", "pch-lan"] {
        let mut raw = workstation();
        raw.devices[nic].physfn = Some(bdf_of(&raw, pf));
        let e = refused_everywhere(d, &format!("physfn-{pf}"), &raw, "(nic)");
        assert!(
            e.contains(&format!("({pf})")) && e.contains("not an endpoint"),
            "{e}"
        );
    }

    // p2pmem with more free than there is.
    let mut raw = workstation();
    let nvme1 = index_of(&raw, "nvme1");
    raw.devices[nvme1].p2pmem = Some(RawP2pMem {
        size: 1 << 20,
        available: 2 << 20,
        published: true,
    });
    let e = refused_everywhere(d, "available", &raw, "(nvme1)");
    assert!(
        e.contains("available (2097152) is larger than its size (1048576)"),
        "{e}"
    );

    // p2pmem larger than the device's memory BARs.
    raw.devices[nvme1].p2pmem = Some(RawP2pMem {
        size: 1 << 40,
        available: 0,
        published: true,
    });
    let e = refused_everywhere(d, "p2p-size", &raw, "(nvme1)");
    assert!(e.contains("larger than its memory BARs"), "{e}");

    // p2pmem published by a root port (a switch port likewise).
    let mut raw = workstation();
    let port = index_of(&raw, "pch-m2");
    raw.devices[port].p2pmem = Some(RawP2pMem {
        size: 0,
        available: 0,
        published: true,
    });
    let e = refused_everywhere(d, "p2p-port", &raw, "00:1c.0 (pch-m2)");
    assert!(e.contains("only endpoints provide P2P memory"), "{e}");

    // A function of domain 10000 below host bridge pci0000:00.
    let mut raw = workstation();
    let p = raw.devices[nic].path.clone();
    raw.devices[nic].path = p.replace("/0000:04:00.0", "/10000:04:00.0");
    assert_ne!(raw.devices[nic].path, p);
    let e = refused_everywhere(d, "domain", &raw, "10000:04:00.0");
    assert!(
        e.contains("domain 10000") && e.contains("pci0000:00"),
        "{e}"
    );

    // A root-bus function on another bus than its host bridge's.
    let mut raw = workstation();
    let xhci = index_of(&raw, "xhci");
    let p = raw.devices[xhci].path.clone();
    raw.devices[xhci].path = p.replace("0000:00:14.0", "0000:07:14.0");
    let e = refused_everywhere(d, "root-bus", &raw, "0000:07:14.0");
    assert!(e.contains("root bus 00"), "{e}");

    // A BAR whose bus range runs past 64 bits: bus = phys + offset wraps.
    let mut raw = workstation();
    let gpu = index_of(&raw, "gpu");
    // BAR 1 is the 64-bit 32 GiB BAR; its upper dword is at 0x18.
    raw.devices[gpu].config[0x18..0x1c].copy_from_slice(&[0xff; 4]);
    let e = refused_everywhere(d, "wrap", &raw, "01:00.0 (gpu)");
    assert!(
        e.contains("BAR 1") && e.contains("bus offset that wraps"),
        "{e}"
    );

    // Config space longer than any function's.
    let mut raw = workstation();
    raw.devices[nic].config.resize(4097, 0);
    let snap = d.join("long-config.json");
    write_snapshot(&raw, &snap).unwrap();
    let e = Source::Snapshot(snap).load().unwrap_err().to_string();
    assert!(e.contains("4097 bytes") && e.contains("(nic)"), "{e}");

    // And the untouched capture is fine from both.
    refused_nowhere(d, &workstation());
}

fn refused_nowhere(dir: &Path, raw: &RawMachine) {
    let snap = dir.join("good.json");
    write_snapshot(raw, &snap).unwrap();
    let root = dir.join("good");
    sysfs::write_root(raw, &root).unwrap();
    Source::Snapshot(snap).load().unwrap();
    Source::Root(root).load().unwrap();
    Topology::from_raw(raw.clone(), "good").unwrap();
}

const BASE: &str = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb0"
[[device]]
name = "rp"
type = "root_port"
parent = "hb0"
[[device]]
name = "up"
type = "switch_upstream"
parent = "rp"
bars = [{ bar = 0, size = "1M" }]
[[device]]
name = "dp"
type = "switch_downstream"
parent = "up"
[[device]]
name = "nic"
type = "endpoint"
parent = "dp"
bars = [{ bar = 0, size = "1M" }]
"#;

fn toml_err(extra: &str) -> String {
    let text = format!("{BASE}{extra}");
    match peerdma_pci::desc::parse_description(&text, "bad.toml")
        .and_then(|r| Topology::from_raw(r, "bad.toml"))
    {
        Ok(_) => panic!("accepted:\n{extra}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with("bad.toml:"), "{e}");
            assert!(!e.contains('\n'), "{e}");
            e
        }
    }
}

#[test]
fn nonsense_in_a_description_is_refused() {
    let vf = |physfn: &str| {
        format!("[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nparent = \"dp\"\nphysfn = \"{physfn}\"\n")
    };
    let e = toml_err(&vf("hb0"));
    assert!(e.contains("physfn 'hb0' is a host bridge"), "{e}");
    let e = toml_err(&vf("vf"));
    assert!(e.contains("(vf): is its own physical function"), "{e}");
    let e = toml_err(&vf("up"));
    assert!(
        e.contains(
            "(up) as its physical function, which is a switch upstream port, not an endpoint"
        ),
        "{e}"
    );
    let e = toml_err("[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nphysfn = \"vf\"\n");
    assert!(e.contains("'vf' is its own physfn"), "{e}");

    let with_p2p = |dev: &str, p2p: &str| {
        let text = BASE.replacen(
            &format!("name = \"{dev}\"\n"),
            &format!("name = \"{dev}\"\np2pmem = {p2p}\n"),
            1,
        );
        assert_ne!(text, BASE);
        match peerdma_pci::desc::parse_description(&text, "bad.toml")
            .and_then(|r| Topology::from_raw(r, "bad.toml"))
        {
            Ok(_) => panic!("accepted p2pmem {p2p} on {dev}"),
            Err(e) => e.to_string(),
        }
    };
    let e = with_p2p("nic", "{ bar = 0, size = \"64K\", available = \"1M\" }");
    assert!(
        e.contains("(nic): p2pmem available (1048576) is larger than its size (65536)"),
        "{e}"
    );
    let e = with_p2p("up", "{ bar = 0 }");
    assert!(e.contains("(up): publishes P2P memory"), "{e}");

    // A bus_offset that moves a BAR outside the physical address space.
    for off in ["9223372036854775807", "4398046511105"] {
        let text = BASE.replacen(
            "name = \"hb0\"\n",
            &format!("name = \"hb0\"\nbus_offset = {off}\n"),
            1,
        );
        let e = match peerdma_pci::desc::parse_description(&text, "bad.toml")
            .and_then(|r| Topology::from_raw(r, "bad.toml"))
        {
            Ok(_) => panic!("bus_offset {off} accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.starts_with("bad.toml:5: host bridge 'hb0': bus_offset"),
            "{e}"
        );
        assert!(
            e.contains("outside the 64-bit physical address space"),
            "{e}"
        );
    }
}
