//! Every public entry of the simulator checks its input — devices, ranges,
//! sizes, overflow — and answers with an error that names it. Nothing here
//! may panic, hang or allocate in proportion to a number it was given.

use peerdma_dma::{BouncePolicy, IommuMode};
use peerdma_mem::{Bdf, Direction, DmaAddr, PhysAddr};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{Source, Topology};
use peerdma_sim::{AccessError, BuildError, DmaError, Fault, SimConfig, SimMachine};

fn machine() -> SimMachine {
    SimMachine::new(
        Source::Preset("dual-xeon".into()).load().unwrap(),
        SimConfig::default(),
    )
    .unwrap()
}

fn described(text: &str) -> Topology {
    Topology::from_raw(parse_description(text, "t").unwrap(), "t").unwrap()
}

#[test]
fn media_outside_its_size_is_an_error_naming_device_offset_and_size() {
    let m = machine();
    let nvme = m.device("nvme0").unwrap();
    let size = m.config().media_size;
    // The last byte is fine; one more is not.
    m.media_write(nvme, size - 1, &[1]).unwrap();
    for (offset, len) in [
        (size, 1usize),
        (size - 1, 2),
        (64 << 30, 4096),
        (u64::MAX, 2),
    ] {
        let e = m.media_write(nvme, offset, &vec![0; len]).unwrap_err();
        assert_eq!(
            e,
            AccessError::Media {
                device: nvme,
                offset,
                len: len as u64,
                size
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&nvme.to_string()) && msg.contains(&format!("{offset:#x}")),
            "{msg}"
        );
        let mut buf = vec![0; len];
        assert!(m.media_read(nvme, offset, &mut buf).is_err());
    }
    let ghost: Bdf = "0000:ee:00.0".parse().unwrap();
    assert_eq!(
        m.media_read(ghost, 0, &mut [0; 4]).unwrap_err(),
        AccessError::NoDevice(ghost)
    );
}

#[test]
fn dma_to_or_from_media_outside_its_size_is_refused_before_moving_data() {
    let m = machine();
    let nvme = m.device("nvme0").unwrap();
    let buf = m.alloc_host(8192, 0).unwrap();
    let sgl = m
        .map(
            nvme,
            &[buf.phys()],
            Direction::Bidirectional,
            BouncePolicy::Forbid,
        )
        .unwrap();
    let size = m.config().media_size;
    for offset in [size - 4096, u64::MAX - 100] {
        let e = m.media_to_memory(nvme, offset, &sgl).unwrap_err();
        assert!(
            matches!(e, DmaError::Access(AccessError::Media { .. })),
            "{e}"
        );
        let e = m.memory_to_media(nvme, &sgl, offset).unwrap_err();
        assert!(
            matches!(e, DmaError::Access(AccessError::Media { .. })),
            "{e}"
        );
    }
    // Wrong lengths and wrong engines are named, not panics.
    let e = m.dma_write(nvme, &sgl, &[0; 10]).unwrap_err();
    assert_eq!(
        e,
        DmaError::LengthMismatch {
            buffer: 10,
            list: 8192
        }
    );
    let gpu = m.device("gpu0").unwrap();
    let e = m.dma_read(gpu, &sgl, &mut [0; 8192]).unwrap_err();
    assert_eq!(
        e,
        DmaError::WrongDevice {
            mapped_for: nvme,
            engine: gpu
        }
    );
}

#[test]
fn cpu_access_where_there_is_no_memory_is_an_error() {
    let m = machine();
    let hole = PhysAddr::new(0x9000_0000); // between 2 and 4 GiB on node 0, no BAR
    let e = m.cpu_read(hole, &mut [0; 8]).unwrap_err();
    assert_eq!(e, AccessError::NoMemory { addr: hole, len: 8 });
    assert!(e.to_string().contains("0x90000000"), "{e}");
    let top = PhysAddr::new(u64::MAX - 3);
    assert!(
        m.cpu_write(top, &[0; 16]).is_err(),
        "wraps the address space"
    );
    // Straddling the end of DRAM into the hole.
    let end_of_low = PhysAddr::new(0x8000_0000 - 4);
    assert!(m.cpu_write(end_of_low, &[0; 8]).is_err());
}

#[test]
fn probes_of_the_fabric_check_their_request() {
    let m = machine();
    let gpu = m.device("gpu0").unwrap();
    let addr = DmaAddr::direct(PhysAddr::new(0x1_0000_0000));
    assert_eq!(
        m.trace(gpu, addr, 0, true).unwrap_err(),
        DmaError::Empty { engine: gpu, addr }
    );
    let end = DmaAddr::direct(PhysAddr::new(u64::MAX - 10));
    assert!(matches!(
        m.path_hops(gpu, end, 100, false).unwrap_err(),
        DmaError::AddressOverflow { .. }
    ));
    let ghost: Bdf = "0000:ee:00.0".parse().unwrap();
    assert!(matches!(
        m.trace(ghost, addr, 4, true).unwrap_err(),
        DmaError::Access(AccessError::NoDevice(_))
    ));
}

#[test]
fn allocation_faults_and_acs_name_what_is_missing() {
    let m = machine();
    let ghost: Bdf = "0000:ee:00.0".parse().unwrap();
    assert!(matches!(
        m.alloc_host(4096, 7).unwrap_err(),
        AccessError::HostMemory { node: 7, .. }
    ));
    assert!(matches!(
        m.alloc_host(u64::MAX, 0).unwrap_err(),
        AccessError::HostMemory { node: 0, .. }
    ));
    assert!(m.alloc_host(0, 0).is_err());
    assert_eq!(
        m.set_acs_ctrl(ghost, 0).unwrap_err(),
        AccessError::NoDevice(ghost)
    );
    assert_eq!(
        m.inject(Fault::LinkDown {
            below: ghost,
            after: 0
        })
        .unwrap_err(),
        AccessError::NoDevice(ghost)
    );
    let gpu = m.device("gpu0").unwrap();
    assert_eq!(
        m.inject(Fault::Revoke {
            provider: gpu,
            after: 0
        })
        .unwrap_err(),
        AccessError::NoProvider(gpu),
        "gpu0 publishes no P2P memory"
    );
}

/// A description can claim any size or node number: building refuses what
/// it cannot place and never allocates in proportion to what was claimed.
#[test]
fn machines_that_cannot_be_built_are_refused_not_allocated() {
    let base = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb"
numa_node = NODE
[[device]]
name = "rp"
type = "root_port"
parent = "hb"
[[device]]
name = "big"
type = "endpoint"
parent = "rp"
class = "gpu"
bars = [{ bar = 0, size = "SIZE" }]
"#;
    // A huge BAR and a huge node number: built, sparse, nothing allocated.
    let t = described(&base.replace("NODE", "4000000000").replace("SIZE", "1T"));
    let m = SimMachine::new(t, SimConfig::default()).unwrap();
    let big = m.device("big").unwrap();
    let bar = m.topology().function(m.topology().find(big).unwrap()).bars[0].phys;
    m.cpu_write(bar.last(), &[9]).unwrap();
    let buf = m.alloc_host(4096, 4_000_000_000).unwrap();
    assert_eq!(buf.node(), 4_000_000_000);

    // A host bridge whose translation puts a BAR on top of DRAM (bus
    // 4 TiB, CPU address 4 GiB).
    let t = described(
        &base
            .replace("NODE", "0")
            .replace("SIZE", "1M")
            .replace("numa_node = 0", "numa_node = 0\nbus_offset = 4393751543808"),
    );
    let e = SimMachine::new(t, SimConfig::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, BuildError::Overlap { .. }), "{msg}");
    assert!(
        msg.contains("DRAM of node 0") && msg.contains("BAR 0 of"),
        "{msg}"
    );

    // A bounce pool larger than the low memory it lives in.
    let t = described(&base.replace("NODE", "0").replace("SIZE", "1M"));
    let e = SimMachine::new(
        t.clone(),
        SimConfig {
            bounce_size: 4 << 30,
            ..SimConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, BuildError::BouncePool { .. }), "{e}");
    // A bandwidth the timing model cannot use.
    let e = SimMachine::new(
        t,
        SimConfig {
            rc_bytes_per_sec: f64::NAN,
            iommu: IommuMode::Off,
            ..SimConfig::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, BuildError::Timing(_)), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}
