//! Two machines and a wire: RDMA into and out of GPU memory, GPUDirect
//! RDMA, and NVMe-oF with P2P memory, through the runner — bytes checked,
//! paths held to the kernel's verdicts, the wire timed like a link.

use peerdma_pci::Source;
use peerdma_workload::format::{self, IommuSetting};
use peerdma_workload::run::{Report, RunOptions};
use peerdma_workload::run_machines;
use std::path::Path;

fn run(a: &str, b: &str, wire: &str, jobs: &str) -> Report {
    let text = format!(
        "[machine.a]\npreset = \"{a}\"\n[machine.b]\npreset = \"{b}\"\n\n[wire]\n{wire}\n\n{jobs}"
    );
    let w = format::parse(&text, "net.toml", Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let topo = |p: &str| Source::Preset(p.into()).load().unwrap();
    let (r, _) = run_machines(
        &w,
        vec![
            (topo(a), IommuSetting::Off),
            (topo(b), IommuSetting::Translated),
        ],
        RunOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    r
}

const WIRE: &str = "a = \"a:nic0\"\nb = \"b:nic0\"\ngbps = 100\nmtu = 9000";

#[test]
fn gpudirect_rdma_moves_gpu_memory_to_gpu_memory_by_bus_address() {
    let r = run(
        "dual-xeon",
        "dual-xeon",
        WIRE,
        "[[job]]\nname = \"g\"\nkind = \"rdma-write\"\nfrom = \"a:gpu0\"\nto = \"b:gpu1\"\nsize = \"16M\"\n",
    );
    let j = &r.jobs[0];
    assert!(j.ok && j.verified, "{:?}", j.error);
    let paths: Vec<(&str, Option<&str>)> = j
        .legs
        .iter()
        .map(|l| (l.path, l.machine.as_deref()))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("bus_addr", Some("a")),
            ("wire", Some("a")),
            ("bus_addr", Some("b"))
        ],
        "{:?}",
        j.legs
    );
    assert_eq!(j.legs[1].peer_machine.as_deref(), Some("b"));
    assert!(j.packets.unwrap() > 0 && j.wire_bytes.unwrap() > 16 << 20);
    let rd = run(
        "dual-xeon",
        "dual-xeon",
        WIRE,
        "[[job]]\nname = \"r\"\nkind = \"rdma-read\"\nfrom = \"b:gpu4\"\nto = \"a:host\"\nsize = \"8M\"\nmr = \"pinned\"\n",
    );
    let j = &rd.jobs[0];
    assert!(j.ok && j.verified, "{:?}", j.error);
    // gpu4 is below a switch whose ports redirect: through the host bridge.
    assert_eq!(j.legs[0].path, "thru_host_bridge", "{:?}", j.legs);
    assert_eq!(j.machine.as_deref(), Some("a"), "the requester's machine");
}

#[test]
fn registration_is_refused_where_the_nic_cannot_reach_the_gpu() {
    let r = run(
        "dual-xeon",
        "workstation",
        "a = \"a:nic0\"\nb = \"b:nic\"\ngbps = 25",
        "[[job]]\nname = \"no\"\nkind = \"rdma-write\"\nfrom = \"a:gpu0\"\nto = \"b:gpu\"\nsize = \"4M\"\n",
    );
    let j = &r.jobs[0];
    assert!(!j.ok && !j.verified);
    let e = j.error.as_deref().unwrap();
    assert!(
        e.contains("0000:01:00.0") && e.contains("cannot reach"),
        "{e}"
    );
}

#[test]
fn a_slow_wire_is_the_bottleneck() {
    let r = run(
        "dual-xeon",
        "dual-xeon",
        "a = \"a:nic0\"\nb = \"b:nic0\"\ngbps = 10\nmtu = 9000",
        "[[job]]\nname = \"g\"\nkind = \"rdma-write\"\nfrom = \"a:gpu0\"\nto = \"b:gpu1\"\nsize = \"32M\"\n",
    );
    let j = &r.jobs[0];
    assert!(j.ok);
    let b = j.bottleneck.as_ref().unwrap();
    assert!(b.link.starts_with("wire "), "{b:?}");
    assert!((b.gbytes_per_sec - 1.25).abs() < 1e-9);
    // Payload below the line rate by the frames' headers, not above.
    assert!(
        j.gbytes_per_sec < 1.25 && j.gbytes_per_sec > 1.1,
        "{}",
        j.gbytes_per_sec
    );
}

#[test]
fn nvmeof_with_p2pmem_saves_the_targets_host_memory() {
    let jobs = "[[job]]\nname = \"p2p\"\nkind = \"nvmeof-write\"\nfrom = \"a:host\"\ndrive = \"b:nvme0\"\nsize = \"8M\"\np2pmem = \"auto\"\n\n\
                [[job]]\nname = \"host\"\nkind = \"nvmeof-write\"\nfrom = \"a:gpu0\"\ndrive = \"b:nvme0\"\noffset = \"1G\"\nsize = \"8M\"\nafter = \"p2p\"\n";
    let r = run("dual-xeon", "dual-xeon", WIRE, jobs);
    let (p, h) = (&r.jobs[0], &r.jobs[1]);
    assert!(
        p.ok && p.verified && h.ok && h.verified,
        "{:?} {:?}",
        p.error,
        h.error
    );
    assert_eq!(p.host_memory_bytes_saved, Some(8 << 20));
    assert_eq!(
        (p.staged_p2p_bytes, p.staged_host_bytes),
        (Some(8 << 20), Some(0))
    );
    assert_eq!(h.host_memory_bytes_saved, Some(0));
    assert_eq!(h.staged_host_bytes, Some(8 << 20));
    assert!(p.legs.iter().all(|l| l.path != "bounced"));
}

#[test]
fn network_jobs_must_cross_the_wire() {
    let text = |jobs: &str| {
        format!(
            "[machine.a]\npreset = \"dual-xeon\"\n[machine.b]\npreset = \"dual-xeon\"\n\n{jobs}"
        )
    };
    let e = format::parse(
        &text("[[job]]\nname = \"x\"\nkind = \"rdma-write\"\nfrom = \"a:gpu0\"\nto = \"b:gpu0\"\nsize = \"1M\"\n"),
        "n.toml",
        Path::new("."),
    )
    .unwrap();
    let topo = |p: &str| Source::Preset(p.into()).load().unwrap();
    let err = run_machines(
        &e,
        vec![
            (topo("dual-xeon"), IommuSetting::Off),
            (topo("dual-xeon"), IommuSetting::Off),
        ],
        RunOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("n.toml:6: job 'x': a rdma-write job crosses a wire: add [wire]"),
        "{err}"
    );
}
