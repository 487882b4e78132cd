//! Every source produces the same model; bad input gets one clear line.

use peerdma_pci::raw::RawMachine;
use peerdma_pci::{presets, read_snapshot, sysfs, write_snapshot, Acs, PortType, Source, Topology};
use std::fs;
use std::path::Path;
use std::process::Command;

/// Everything the model says, as comparable text.
fn render(t: &Topology) -> String {
    let mut s = serde_json::to_string_pretty(t.functions()).unwrap();
    s.push_str(&serde_json::to_string_pretty(t.host_bridges()).unwrap());
    s.push_str(&serde_json::to_string(t.cpu()).unwrap());
    s
}

#[test]
fn snapshot_and_root_tree_replay_every_preset_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for p in presets::PRESETS {
        let original = Source::Preset(p.name.into()).load().unwrap();
        let snap = dir.path().join(format!("{}.json", p.name));
        write_snapshot(original.raw(), &snap).unwrap();
        let replayed = Source::Snapshot(snap.clone()).load().unwrap();
        assert_eq!(render(&original), render(&replayed), "{}: snapshot", p.name);

        let root = dir.path().join(p.name);
        sysfs::write_root(original.raw(), &root).unwrap();
        let from_tree = Source::Root(root.clone()).load().unwrap();
        assert_eq!(
            render(&original),
            render(&from_tree),
            "{}: --root tree",
            p.name
        );
        assert_eq!(from_tree.origin().cmdline, original.origin().cmdline);
    }
}

#[test]
fn live_sysfs_reads_this_machine() {
    if !Path::new("/sys/bus/pci/devices").is_dir() {
        eprintln!("no /sys/bus/pci on this machine");
        return;
    }
    let t = Source::Live.load().unwrap();
    let listed = fs::read_dir("/sys/bus/pci/devices").unwrap().count();
    assert_eq!(t.len(), listed);
    for f in t.functions() {
        assert!(t.host_bridges().iter().any(|h| h.id == f.host_bridge));
        assert_ne!(f.vendor, 0xffff, "{}", f.bdf);
    }
}

/// An unprivileged reader of sysfs sees 64 bytes of config space: the model
/// must still place every function and infer the port types correctly.
#[test]
fn header_only_captures_infer_port_types() {
    for p in presets::PRESETS {
        let full = Source::Preset(p.name.into()).load().unwrap();
        let mut raw: RawMachine = full.raw().clone();
        for d in &mut raw.devices {
            d.config.truncate(64);
        }
        let cut = Topology::from_raw(raw, "cut").unwrap();
        assert_eq!(cut.notes().len(), 1, "{:?}", cut.notes());
        assert!(cut.notes()[0].contains("needs root"), "{:?}", cut.notes());
        for (a, b) in full.functions().iter().zip(cut.functions()) {
            assert_eq!(a.bdf, b.bdf);
            assert_eq!(a.upstream, b.upstream);
            assert_eq!(b.acs, Acs::Unknown, "64 bytes never show ACS");
            let expect = match a.port_type {
                // Not distinguishable from the header alone.
                PortType::LegacyEndpoint => PortType::Endpoint,
                t => t,
            };
            assert_eq!(b.port_type, expect, "{} {}", p.name, a.bdf);
            assert!(b.port_type_inferred);
            assert_eq!(a.link, b.link, "links come from sysfs attributes");
            assert_eq!(a.bars.len(), b.bars.len());
        }
    }
}

fn load_err(src: Source) -> String {
    match src.load() {
        Ok(_) => panic!("{src:?} was accepted"),
        Err(e) => {
            let s = e.to_string();
            assert!(!s.contains('\n'), "one line: {s}");
            s
        }
    }
}

#[test]
fn bad_snapshots_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("missing.json");
    let e = load_err(Source::Snapshot(p.clone()));
    assert!(
        e.contains("missing.json") && e.contains("no such file"),
        "{e}"
    );

    let good = Source::Preset("workstation".into()).capture().unwrap();
    let text = serde_json::to_string_pretty(&good).unwrap();

    let f = dir.path().join("malformed.json");
    let broken = text.replacen("\"devices\": [", "\"devices\": [,", 1);
    fs::write(&f, &broken).unwrap();
    let e = load_err(Source::Snapshot(f.clone()));
    let line = broken
        .lines()
        .position(|l| l.contains("\"devices\": [,"))
        .unwrap()
        + 1;
    assert!(e.starts_with(&format!("{}:{line}:", f.display())), "{e}");

    let f = dir.path().join("truncated.json");
    let cut = &text[..text.len() / 2];
    fs::write(&f, cut).unwrap();
    let e = load_err(Source::Snapshot(f.clone()));
    assert!(e.contains("truncated.json") && e.contains("EOF"), "{e}");

    let mut short = good.clone();
    short.devices[3].config.truncate(20);
    let bdf = short.devices[3].name().to_string();
    let f = dir.path().join("shortcfg.json");
    write_snapshot(&short, &f).unwrap();
    let e = load_err(Source::Snapshot(f.clone()));
    assert!(
        e.contains("shortcfg.json") && e.contains(&bdf) && e.contains("20 bytes"),
        "{e}"
    );

    // A version this build does not know is refused by name, whether or
    // not its fields happen to parse.
    assert!(
        text.contains("\"version\": 2"),
        "snapshots are written as version 2"
    );
    let f = dir.path().join("v3.json");
    fs::write(&f, text.replacen("\"version\": 2", "\"version\": 3", 1)).unwrap();
    let e = load_err(Source::Snapshot(f.clone()));
    assert!(
        e.contains("snapshot version 3 is not readable") && e.contains("versions 1 and 2"),
        "{e}"
    );
    // Version 1 (no iommu_units) still reads.
    let f = dir.path().join("v1.json");
    fs::write(&f, text.replacen("\"version\": 2", "\"version\": 1", 1)).unwrap();
    let t = Source::Snapshot(f.clone()).load().unwrap();
    assert_eq!(t.raw().version, 2, "kept as the version this build writes");

    let f = dir.path().join("other.json");
    fs::write(&f, "{\"pairs\": []}").unwrap();
    let e = load_err(Source::Snapshot(f.clone()));
    assert!(e.contains("not a peerdma snapshot"), "{e}");

    let mut orphan = good.clone();
    orphan.devices.retain(|d| !d.path.ends_with("0000:00:01.0"));
    let f = dir.path().join("orphan.json");
    write_snapshot(&orphan, &f).unwrap();
    let e = load_err(Source::Snapshot(f));
    assert!(
        e.contains("sits below 0000:00:01.0, which is not in the capture"),
        "{e}"
    );

    // Type errors say what was expected in a reader's terms.
    for (from, to, want) in [
        (
            "\"devices\": [",
            "\"devices\": [7, ",
            "expected a device: an object with path and config",
        ),
        (
            "\"processors\": ",
            "\"processors\": -",
            "expected a whole number from 0 to 4294967295",
        ),
    ] {
        let f = dir.path().join("types.json");
        assert!(text.contains(from), "{from}");
        fs::write(&f, text.replacen(from, to, 1)).unwrap();
        let e = load_err(Source::Snapshot(f));
        assert!(e.contains(want), "{e}");
        assert!(
            !e.contains("struct") && !e.contains("Raw") && !e.contains("u32"),
            "{e}"
        );
    }

    let _ = read_snapshot(&dir.path().join("nothing"));
}

#[test]
fn bad_roots_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_err(Source::Root(dir.path().join("nope")));
    assert!(e.contains("nope") && e.contains("no such file"), "{e}");
    let e = load_err(Source::Root(dir.path().to_path_buf()));
    assert!(e.contains("sys/bus/pci/devices"), "{e}");
    let raw = Source::Preset("workstation".into()).capture().unwrap();
    let root = dir.path().join("tree");
    sysfs::write_root(&raw, &root).unwrap();
    fs::remove_file(root.join("proc/cpuinfo")).unwrap();
    let e = load_err(Source::Root(root.clone()));
    assert!(e.contains("proc/cpuinfo"), "{e}");
    let e = load_err(Source::Description(dir.path().join("x.toml")));
    assert!(e.contains("x.toml"), "{e}");
}

#[test]
fn a_relative_root_with_dotdot_reads_like_an_absolute_one() {
    let dir = tempfile::tempdir().unwrap();
    let raw = Source::Preset("workstation".into()).capture().unwrap();
    let root = dir.path().join("a/tree");
    sysfs::write_root(&raw, &root).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let rel = dir.path().join("b/../a/tree");
    let t = Source::Root(rel).load().unwrap();
    assert_eq!(t.len(), Source::Root(root).load().unwrap().len());
    // Truly relative (to the current directory), with leading `..`.
    let cwd = std::env::current_dir().unwrap();
    let depth = cwd.components().count() - 1;
    let up = "../".repeat(depth);
    let rel2 = std::path::PathBuf::from(format!(
        "{up}{}",
        dir.path()
            .join("a/tree")
            .display()
            .to_string()
            .trim_start_matches('/')
    ));
    assert!(Source::Root(rel2).load().is_ok());
}

/// Load on a thread, so a source that blocks fails the test instead of
/// hanging it.
fn load_within(src: Source, secs: u64) -> Result<Topology, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let what = format!("{src:?}");
    std::thread::spawn(move || {
        let _ = tx.send(src.load().map_err(|e| e.to_string()));
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

#[cfg(unix)]
fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

/// A copied tree is input like any other: a `config` that is a FIFO, a
/// link to /dev/zero, a directory or an oversized file is refused with a
/// message naming it, without blocking or reading without end; the same
/// for attribute files and /proc/cpuinfo.
#[cfg(unix)]
#[test]
fn hostile_root_trees_are_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let raw = Source::Preset("workstation".into()).capture().unwrap();
    let dev = raw.devices[3].path.clone();
    let cases: &[(&str, &str, &str)] = &[
        (
            "config",
            "fifo",
            "is a FIFO; a PCI function's config space is a regular file",
        ),
        ("config", "zero", "is a character device"),
        ("config", "dir", "is a directory"),
        ("config", "big", "is larger than 4 KiB"),
        ("label", "fifo", "is a FIFO"),
        ("vendor", "zero", "is a character device"),
        ("resource", "big", "is larger than 64 KiB"),
        ("p2pmem", "zero-size", "is a character device"),
        ("/proc/cpuinfo", "fifo", "is a FIFO"),
        ("/proc/cmdline", "zero", "is a character device"),
    ];
    for (i, &(file, how, want)) in cases.iter().enumerate() {
        let root = dir.path().join(format!("t{i}"));
        sysfs::write_root(&raw, &root).unwrap();
        let target = match (file, how) {
            (f, _) if f.starts_with('/') => root.join(&f[1..]),
            ("p2pmem", _) => {
                let d = root.join("sys/devices").join(&dev).join("p2pmem");
                fs::create_dir_all(&d).unwrap();
                d.join("size")
            }
            (f, _) => root.join("sys/devices").join(&dev).join(f),
        };
        let _ = fs::remove_file(&target);
        match how {
            "fifo" => mkfifo(&target),
            "zero" | "zero-size" => std::os::unix::fs::symlink("/dev/zero", &target).unwrap(),
            "dir" => fs::create_dir(&target).unwrap(),
            "big" => fs::write(&target, vec![b'0'; 70_000]).unwrap(),
            _ => unreachable!(),
        }
        let e = load_within(Source::Root(root.clone()), 20)
            .err()
            .unwrap_or_else(|| panic!("{file} as {how} was accepted"));
        assert!(!e.contains('\n'), "one line: {e}");
        assert!(
            e.contains(&target.display().to_string()),
            "names the file: {e}"
        );
        assert!(e.contains(want), "{file} as {how}: {e}");
    }
}

/// A snapshot or description named by the user may be a pipe, read to its
/// end; a device or a directory is refused by name, not read.
#[cfg(unix)]
#[test]
fn input_files_that_are_not_files() {
    let dir = tempfile::tempdir().unwrap();
    let zero = dir.path().join("zero.json");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for src in [
        Source::Snapshot(zero.clone()),
        Source::Description(zero.clone()),
        Source::Snapshot(dir.path().to_path_buf()),
        Source::Description(dir.path().to_path_buf()),
    ] {
        let e = load_within(src.clone(), 20).err().unwrap();
        assert!(
            e.starts_with(&format!("{}: is a ", src.label())) && e.contains(", not a file"),
            "{e}"
        );
    }
    // A FIFO with a writer: the description arrives through it.
    let fifo = dir.path().join("desc.fifo");
    mkfifo(&fifo);
    let text = presets::PRESETS[0].text;
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::write(fifo, text).unwrap())
    };
    let t = load_within(Source::Description(fifo), 20).unwrap();
    writer.join().unwrap();
    assert_eq!(t.len(), Source::default().load().unwrap().len());
}

/// A root port with an SR-IOV physical function and two virtual functions
/// whose ID registers read 0xffff, as the SR-IOV specification has them.
fn sriov_machine(vf_attrs: bool) -> RawMachine {
    use peerdma_pci::config::ConfigBuilder;
    use peerdma_pci::raw::{Origin, RawCpu, RawDevice};
    let dev = |path: &str, config: Vec<u8>, physfn: Option<&str>| RawDevice {
        path: path.into(),
        config,
        physfn: physfn.map(|p| p.parse().unwrap()),
        ..Default::default()
    };
    let host = ConfigBuilder::new(0x8086, 0x29c0, 0x060000, 0, 0, true).build();
    let rp = ConfigBuilder::new(0x1b36, 0x000c, 0x060400, 0, 1, true)
        .bridge_buses(0, 1, 1)
        .pcie(4, Some((1, 1, 1, 1)))
        .acs(0x5f, 0)
        .build();
    let pf = ConfigBuilder::new(0x1b36, 0x0010, 0x010802, 2, 0, true)
        .pcie(0, Some((1, 1, 1, 1)))
        .sriov(0x0011, 2)
        .build();
    let vf = ConfigBuilder::new(0xffff, 0xffff, 0x010802, 2, 0, true)
        .pcie(0, None)
        .build();
    let mut devices = vec![
        dev("pci0000:00/0000:00:00.0", host.bytes().to_vec(), None),
        dev("pci0000:00/0000:00:02.0", rp.bytes().to_vec(), None),
        dev(
            "pci0000:00/0000:00:02.0/0000:01:00.0",
            pf.bytes().to_vec(),
            None,
        ),
    ];
    for f in ["0000:01:00.1", "0000:01:00.2"] {
        let mut d = dev(
            &format!("pci0000:00/0000:00:02.0/{f}"),
            vf.bytes().to_vec(),
            Some("0000:01:00.0"),
        );
        if vf_attrs {
            d.attrs.insert("vendor".into(), "0x1b36".into());
            d.attrs.insert("device".into(), "0x0012".into());
        }
        devices.push(d);
    }
    RawMachine::new(
        Origin {
            kind: "sysfs".into(),
            detail: "test".into(),
            ..Default::default()
        },
        RawCpu::default(),
        devices,
    )
}

#[test]
fn virtual_functions_have_the_ids_the_kernel_gives_them() {
    // Without sysfs's vendor and device: the physical function's vendor and
    // the VF Device ID of its SR-IOV capability, as the kernel takes them.
    let t = Topology::from_raw(sriov_machine(false), "test").unwrap();
    let pf = t.lookup("0000:01:00.0").unwrap();
    for v in ["0000:01:00.1", "0000:01:00.2"] {
        let f = t.function(t.lookup(v).unwrap());
        assert_eq!((f.vendor, f.device), (0x1b36, 0x0011), "{v}");
        assert_eq!(f.physfn, Some(pf));
        assert_eq!(f.upstream, t.function(pf).upstream);
    }
    // sysfs's attributes, where the capture has them, win.
    let t = Topology::from_raw(sriov_machine(true), "test").unwrap();
    let f = t.function(t.lookup("0000:01:00.2").unwrap());
    assert_eq!((f.vendor, f.device), (0x1b36, 0x0012));

    // The tree shows them as virtual functions of their physical function,
    // never as "Device ffff:ffff", also replayed from a snapshot.
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("sriov.json");
    write_snapshot(&sriov_machine(false), &snap).unwrap();
    let t = Source::Snapshot(snap).load().unwrap();
    let text = peerdma_pci::render::tree(&t, &peerdma_pci::ids::PciIds::builtin());
    assert!(!text.contains("ffff"), "{text}");
    let vf_line = text.lines().find(|l| l.contains("01:00.1 ")).unwrap();
    assert!(
        vf_line.contains("[1b36:0011]") && vf_line.contains("virtual function of 01:00.0"),
        "{text}"
    );
    let pf_line = text.lines().find(|l| l.contains("01:00.0 ")).unwrap();
    assert!(pf_line.contains("2 VF(s) enabled"), "{text}");
}

#[test]
fn iommu_units_and_the_command_line_travel_through_snapshots_and_trees() {
    let dir = tempfile::tempdir().unwrap();
    for (i, units) in [Some(vec!["dmar0".to_string()]), Some(vec![]), None]
        .into_iter()
        .enumerate()
    {
        let mut raw = sriov_machine(false);
        raw.iommu_units = units.clone();
        raw.origin.cmdline = Some("ro pci=config_acs=1@0000:00:02.0".into());
        let snap = dir.path().join(format!("{i}.json"));
        write_snapshot(&raw, &snap).unwrap();
        let tree = dir.path().join(format!("tree{i}"));
        sysfs::write_root(&raw, &tree).unwrap();
        for src in [Source::Snapshot(snap), Source::Root(tree)] {
            let t = src.load().unwrap();
            assert_eq!(t.iommu_units().map(<[String]>::to_vec), units, "{src:?}");
            // No IOMMU groups here: without the units a sysfs capture says no IOMMU.
            assert_eq!(
                t.iommu_on(),
                Some(units.as_ref().is_some_and(|u| !u.is_empty())),
                "{src:?}"
            );
            let c = t.cmdline().unwrap();
            assert_eq!(
                c.pci_option("config_acs").as_deref(),
                Some("1@0000:00:02.0")
            );
        }
    }
    // A description has no sysfs behind it: the IOMMU state is unknown.
    let t = Source::Preset("workstation".into()).load().unwrap();
    if t.functions().iter().all(|f| f.iommu_group.is_none()) {
        assert_eq!(t.iommu_on(), None);
    }
}
