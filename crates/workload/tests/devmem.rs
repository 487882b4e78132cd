//! devmem TCP receive as a workload job (`kind = "devmem-rx"`): the bytes
//! land in GPU memory and are checked, the bind is refused where the NIC
//! cannot reach the memory, a user that keeps its tokens runs the pool
//! dry without a byte overwritten, and the job's keys are checked.

use peerdma_pci::Source;
use peerdma_workload::format::{self, IommuSetting};
use peerdma_workload::run::{Report, RunOptions};
use peerdma_workload::run_machines;
use std::path::Path;

const WIRE: &str = "a = \"a:nic0\"\nb = \"b:nic0\"\ngbps = 100\nmtu = 1500";

fn text(b: &str, wire: &str, jobs: &str) -> String {
    format!(
        "[machine.a]\npreset = \"dual-xeon\"\n[machine.b]\npreset = \"{b}\"\n\n[wire]\n{wire}\n\n{jobs}"
    )
}

fn run(b: &str, wire: &str, jobs: &str) -> Result<Report, String> {
    let w = format::parse(&text(b, wire, jobs), "rx.toml", Path::new("."))
        .map_err(|e| e.to_string())?;
    let topo = |p: &str| Source::Preset(p.into()).load().unwrap();
    run_machines(
        &w,
        vec![
            (topo("dual-xeon"), IommuSetting::Off),
            (topo(b), IommuSetting::Off),
        ],
        RunOptions::default(),
    )
    .map(|(r, _)| r)
    .map_err(|e| e.to_string())
}

fn job(extra: &str) -> String {
    format!("[[job]]\nname = \"rx\"\nkind = \"devmem-rx\"\nfrom = \"a:host\"\ninto = \"b:gpu0\"\nsize = \"8M\"\n{extra}")
}

#[test]
fn received_bytes_land_in_gpu_memory_by_bus_address_and_are_verified() {
    let r = run("dual-xeon", WIRE, &job("")).unwrap();
    let j = &r.jobs[0];
    assert!(j.ok && j.verified, "{:?}", j.error);
    assert_eq!(j.kind, "devmem-rx");
    assert_eq!(j.bytes, 8 << 20);
    let legs: Vec<(&str, &str, &str)> = j
        .legs
        .iter()
        .map(|l| (l.path, l.from.as_str(), l.to.as_str()))
        .collect();
    // The sender's NIC reads host memory, frames cross the wire, the
    // receiving NIC puts payloads in the GPU by bus address and headers
    // in host memory.
    assert!(legs.iter().any(|l| l.0 == "wire"), "{legs:?}");
    let payload = j
        .legs
        .iter()
        .find(|l| l.to == "0000:1a:00.0" || l.path == "bus_addr")
        .expect("a leg into the GPU");
    assert_eq!(payload.path, "bus_addr", "{legs:?}");
    assert_eq!(payload.bytes, 8 << 20);
    assert_eq!(payload.machine.as_deref(), Some("b"));
    let d = j.devmem.as_ref().unwrap();
    assert_eq!((d.mtu, d.mss, d.niov_size), (1500, 1460, 4096));
    assert!(d.binding_freed && d.stalled.is_none());
    assert_eq!(d.drops, 0);
    assert_eq!(d.tokens_returned, d.frags);
    // 1024 frags a call at most.
    assert!(d.dontneed_calls >= d.frags.div_ceil(1024), "{d:?}");
    assert!(d.utilization > 0.5 && d.utilization <= 1.0, "{d:?}");
    assert!(d.header_bytes > 0);
    // Packets (both ways) and line bytes above the payload.
    assert!(j.packets.unwrap() >= (8 << 20) / 1460);
    assert!(j.wire_bytes.unwrap() > 8 << 20);
}

#[test]
fn larger_net_iovs_hold_more_device_memory_for_the_same_frames() {
    let small = run("dual-xeon", WIRE, &job("layout = \"one-packet\"\n")).unwrap();
    let big = run(
        "dual-xeon",
        WIRE,
        &job("layout = \"one-packet\"\nniov = \"64K\"\n"),
    )
    .unwrap();
    let (s, b) = (
        small.jobs[0].devmem.as_ref().unwrap(),
        big.jobs[0].devmem.as_ref().unwrap(),
    );
    assert!(small.jobs[0].ok && big.jobs[0].ok);
    assert_eq!(b.niov_size, 65536);
    // One 1460-byte payload per buffer: about a third of 4K, 2% of 64K.
    assert!(s.utilization > 0.3 && s.utilization < 0.4, "{s:?}");
    assert!(b.utilization < 0.03, "{b:?}");
}

#[test]
fn the_bind_is_refused_where_the_nic_cannot_reach_the_gpu() {
    let r = run(
        "workstation",
        "a = \"a:nic0\"\nb = \"b:nic\"\ngbps = 25",
        "[[job]]\nname = \"no\"\nkind = \"devmem-rx\"\nfrom = \"a:host\"\ninto = \"b:gpu\"\nsize = \"4M\"\n",
    )
    .unwrap();
    let j = &r.jobs[0];
    assert!(!j.ok && !j.verified);
    let e = j.error.as_deref().unwrap();
    assert!(
        e.starts_with("EREMOTEIO") && e.contains("0000:01:00.0") && e.contains("no bounce path"),
        "{e}"
    );
    assert!(j.legs.iter().all(|l| l.path != "bounced"), "{:?}", j.legs);
}

#[test]
fn a_user_that_keeps_its_tokens_runs_the_pool_dry_and_nothing_is_overwritten() {
    let r = run(
        "dual-xeon",
        WIRE,
        &job("return_tokens = \"never\"\nniov = \"64K\"\ndmabuf = \"4M\"\n"),
    )
    .unwrap();
    let j = &r.jobs[0];
    assert!(!j.ok);
    let d = j.devmem.as_ref().unwrap();
    assert!(d.drops > 0, "{d:?}");
    assert_eq!(d.tokens_returned, 0);
    assert!(d.stalled.as_deref().unwrap().contains("page pool is empty"));
    // What arrived before the pool ran dry was verified where it landed,
    // and the binding still came free when the socket closed.
    assert!(j.bytes > 0 && j.bytes < 8 << 20);
    assert!(d.binding_freed);
    let e = j.error.as_deref().unwrap();
    assert!(
        e.contains("none overwritten") && e.contains(&j.bytes.to_string()),
        "{e}"
    );
}

#[test]
fn a_jobs_mtu_replaces_the_wires() {
    let r = run("dual-xeon", WIRE, &job("mtu = 9000\n")).unwrap();
    let d = r.jobs[0].devmem.as_ref().unwrap();
    assert!(r.jobs[0].ok);
    assert_eq!((d.mtu, d.mss), (9000, 8960));
}

#[test]
fn bad_keys_are_one_line_naming_the_job() {
    for (extra, want) in [
        ("niov = \"3K\"\n", "niov = 3 KiB is not a power of two"),
        ("niov = \"4M\"\n", "is not a power of two from 4K to 2M"),
        ("mtu = 100\n", "mtu = 100 is outside 576..=9216"),
        ("layout = \"zigzag\"\n", "layout = \"zigzag\" is not one of"),
        (
            "layout = \"packed:32\"\n",
            "layout = \"packed:32\" is not one of",
        ),
        (
            "return_tokens = \"later\"\n",
            "return_tokens = \"later\" is not one of",
        ),
        (
            "dontneed = 2000\n",
            "dontneed = 2000: one SO_DEVMEM_DONTNEED gives back 1 to 1024 frags",
        ),
        (
            "return_tokens = \"never\"\ndontneed = 8\n",
            "`dontneed` applies only with return_tokens = \"batched\"",
        ),
        (
            "dmabuf = \"6000\"\n",
            "is not a whole number of 4 KiB net_iovs",
        ),
        ("dmabuf = \"1T\"\n", "is more than the"),
        ("policy = \"bounce\"\n", "devmem TCP has no bounce path"),
        (
            "drive = \"b:nvme0\"\n",
            "`drive` does not apply to a devmem-rx job",
        ),
    ] {
        let e = run("dual-xeon", WIRE, &job(extra)).unwrap_err();
        assert!(
            e.contains("rx.toml:") && e.contains("job 'rx'") && e.contains(want),
            "{extra}: {e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    let e = run(
        "dual-xeon",
        WIRE,
        "[[job]]\nname = \"rx\"\nkind = \"devmem-rx\"\nfrom = \"a:host\"\ninto = \"b:nic0\"\nsize = \"8M\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("`into` = \"b:nic0\" (0000:1d:00.0) has no device memory to bind"),
        "{e}"
    );
    let e = run(
        "dual-xeon",
        WIRE,
        "[[job]]\nname = \"rx\"\nkind = \"devmem-rx\"\nfrom = \"b:host\"\ninto = \"b:gpu0\"\nsize = \"8M\"\n",
    )
    .unwrap_err();
    assert!(
        e.contains("between the machines at the two ends of the wire"),
        "{e}"
    );
}
