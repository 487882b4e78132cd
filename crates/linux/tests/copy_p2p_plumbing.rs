//! The P2P side of `peerdma copy` without P2P hardware: a fake sysfs root
//! describes two NVMe drives under one switch, the second publishing P2P
//! memory whose `allocate` file is a regular file (mapping it works the
//! same way), and places this machine's disk behind the first drive. The
//! copy must choose the provider like the kernel, stage through it, report
//! the path, and still move the right bytes. Real P2P DMA is checked in
//! QEMU (cargo xtask vm).

use peerdma_linux::copy::{copy, CopyOptions, CopyPath};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{sysfs, Topology};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

const MACHINE: &str = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb"
[[device]]
name = "rp"
type = "root_port"
parent = "hb"
[[device]]
name = "up"
type = "switch_upstream"
parent = "rp"
[[device]]
name = "dp0"
type = "switch_downstream"
parent = "up"
[[device]]
name = "dp1"
type = "switch_downstream"
parent = "up"
ACS_DP1
[[device]]
name = "drive"
type = "endpoint"
parent = "dp0"
class = "nvme"
bars = [{ bar = 0, size = "16K" }]
[[device]]
name = "cmb"
type = "endpoint"
parent = "dp1"
class = "nvme"
bars = [{ bar = 0, size = "16K" }, { bar = 2, size = "64M" }]
p2pmem = { bar = 2 }
"#;

/// A fake root for `machine`, with the block device that holds `here`
/// placed below the function named `drive`.
fn fake_root(machine: &str, here: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let raw = parse_description(machine, "fake").unwrap();
    let topo = Topology::from_raw(raw.clone(), "fake").unwrap();
    sysfs::write_root(&raw, root.path()).unwrap();
    let drive = topo.function(topo.lookup("drive").unwrap());
    let cmb = topo.function(topo.lookup("cmb").unwrap());
    let alloc = root
        .path()
        .join("sys/devices")
        .join(&cmb.path)
        .join("p2pmem/allocate");
    let f = fs::File::create(&alloc).unwrap();
    f.set_len(64 << 20).unwrap();
    let st = fs::metadata(here).unwrap();
    let (ma, mi) = (rustix::fs::major(st.dev()), rustix::fs::minor(st.dev()));
    let blk = root
        .path()
        .join("sys/devices")
        .join(&drive.path)
        .join("nvme/nvme0/nvme0n1");
    fs::create_dir_all(blk.join("queue")).unwrap();
    fs::write(blk.join("dev"), format!("{ma}:{mi}\n")).unwrap();
    fs::write(blk.join("size"), "1000000000\n").unwrap();
    fs::write(blk.join("queue/logical_block_size"), "512\n").unwrap();
    fs::create_dir_all(root.path().join("sys/dev/block")).unwrap();
    std::os::unix::fs::symlink(&blk, root.path().join(format!("sys/dev/block/{ma}:{mi}"))).unwrap();
    fs::create_dir_all(root.path().join("proc/self")).unwrap();
    fs::write(root.path().join("proc/self/mountinfo"), "").unwrap();
    root
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 131) ^ (i >> 9)) as u8).collect()
}

#[test]
fn staging_through_the_chosen_provider_reports_p2p() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_root(&MACHINE.replace("ACS_DP1", ""), d.path());
    let src = d.path().join("src");
    let bytes = data(9 << 20);
    fs::write(&src, &bytes).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.sys_root = root.path().to_path_buf();
    o.verify = true;
    o.depth = 4;
    let stop = AtomicBool::new(false);
    let r = copy(&o, false, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::P2pBusAddr, "{}", r.render());
    assert_eq!(r.staging.kind, "p2p");
    assert_eq!(r.staging.provider.unwrap().to_string(), "0000:04:00.0");
    assert!(r.verify.as_ref().unwrap().equal);
    assert_eq!(fs::read(d.path().join("dst")).unwrap(), bytes);
    assert!(r.render().contains("P2P memory of 0000:04:00.0"));
}

#[test]
fn an_acs_redirect_on_a_whitelistless_host_means_bounce_or_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let root = fake_root(
        &MACHINE.replace("ACS_DP1", "acs = [\"rr\", \"cr\"]"),
        d.path(),
    );
    let src = d.path().join("src");
    fs::write(&src, data(1 << 20)).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.sys_root = root.path().to_path_buf();
    let stop = AtomicBool::new(false);
    let r = copy(&o, false, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::Bounced);
    let why = r.reason.clone().unwrap();
    assert!(why.contains("ACS redirect"), "{why}");
    o.no_bounce = true;
    o.dst = d.path().join("dst2");
    let e = copy(&o, false, &stop, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot copy") && e.contains("ACS redirect"),
        "{e}"
    );
    // --via names the provider; it is still held to the kernel's verdict.
    o.no_bounce = false;
    o.via = Some("0000:04:00.0".into());
    let r = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.path, CopyPath::Bounced);
    assert!(r
        .reason
        .unwrap()
        .contains("cannot reach the P2P memory of 0000:04:00.0"));
    // Unchecked (the fallback's test hook): the provider is tried and the
    // kernel would decide; the report keeps peerdma's verdict and says so.
    o.unchecked_via = true;
    let r = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(r.staging.provider.unwrap().to_string(), "0000:04:00.0");
    let ns = Some(peerdma_p2p::MapType::NotSupported);
    assert_eq!((r.read_leg, r.write_leg), (ns, ns));
    let why = r.reason.unwrap();
    assert!(
        why.contains("cannot reach") && why.contains("PEERDMA_COPY_UNCHECKED_VIA"),
        "{why}"
    );
}
