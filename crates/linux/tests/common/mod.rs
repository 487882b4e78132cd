//! A fake sysfs root for the P2P side of `peerdma copy`: two NVMe drives
//! under one switch, the second publishing P2P memory whose `allocate` file
//! is a regular file (mapping it works the same way), and this machine's
//! disk placed behind the first drive.

use peerdma_pci::desc::parse_description;
use peerdma_pci::{sysfs, Topology};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub const MACHINE: &str = r#"
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
pub fn fake_root(machine: &str, here: &Path) -> tempfile::TempDir {
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

pub fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 131) ^ (i >> 9)) as u8).collect()
}
