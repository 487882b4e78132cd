//! Bytes through every path of the simulated machine, checked exactly.

use peerdma_dma::{BouncePolicy, IommuMode, PathTaken};
use peerdma_mem::{Bdf, Direction};
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{Source, Topology};
use peerdma_sim::{DmaError, Route, SimConfig, SimMachine};

fn machine(preset: &str, iommu: IommuMode) -> SimMachine {
    let topo = Source::Preset(preset.into()).load().unwrap();
    SimMachine::new(
        topo,
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A drive-like `client` reads `len` bytes from its media into P2P memory
/// of `provider`, then writes them back from there to another media
/// offset; both copies and the CPU's view of the BAR must be exact.
fn round_trip(m: &SimMachine, provider: &str, client: &str, len: usize) -> (PathTaken, Vec<Route>) {
    let p = m.device(provider).unwrap();
    let c = m.device(client).unwrap();
    let prov = m
        .provider(p)
        .unwrap_or_else(|| panic!("{provider} publishes no p2pmem"))
        .clone();
    let data = pattern(len, u64::from(c.bus()) << 8 | u64::from(p.bus()));
    m.media_write(c, 0, &data).unwrap();
    let a = prov.alloc(len as u64).unwrap();
    let sgl = m
        .map(c, &[a.phys()], Direction::FromDevice, BouncePolicy::Bounce)
        .unwrap();
    let t = m.media_to_memory(c, 0, &sgl).unwrap();
    assert_eq!(t.bytes, len as u64);
    assert_eq!(t.unsupported_bytes, 0);
    sgl.unmap().unwrap();
    let mut cpu = vec![0u8; len];
    m.cpu_read(a.phys_addr(), &mut cpu).unwrap();
    assert!(
        cpu == data,
        "{provider} <- {client}: CPU view of the BAR differs"
    );
    let sgl = m
        .map(c, &[a.phys()], Direction::ToDevice, BouncePolicy::Bounce)
        .unwrap();
    let back = m.memory_to_media(c, &sgl, 1 << 30).unwrap();
    assert_eq!(back.mapped, t.mapped);
    drop(sgl);
    let mut out = vec![0u8; len];
    m.media_read(c, 1 << 30, &mut out).unwrap();
    assert!(
        out == data,
        "{provider} -> {client}: bytes differ after the round trip"
    );
    (t.mapped.expect("a list DMA records its mapping"), t.routes)
}

#[test]
fn every_path_under_every_iommu_mode_is_byte_exact() {
    for mode in [
        IommuMode::Off,
        IommuMode::Passthrough,
        IommuMode::Translated,
    ] {
        let m = machine("dual-xeon", mode);
        // Bus address below one switch: never through the root complex.
        let (path, routes) = round_trip(&m, "nvme0", "gpu0", 3 << 20);
        assert_eq!(path, PathTaken::BusAddr, "{mode:?}");
        assert!(
            routes.iter().all(|r| matches!(r, Route::Switch { .. })),
            "{mode:?} {routes:?}"
        );
        // ACS redirect below one switch: through the (whitelisted) host bridge.
        let (path, routes) = round_trip(&m, "nvme3", "gpu4", 1 << 20);
        assert_eq!(path, PathTaken::ThruHostBridge, "{mode:?}");
        assert!(
            routes
                .iter()
                .all(|r| matches!(r, Route::RootComplexPeer { .. })),
            "{mode:?} {routes:?}"
        );
        // Across sockets through the host bridges.
        let (path, _) = round_trip(&m, "nvme1", "gpu6", 1 << 20);
        assert_eq!(path, PathTaken::ThruHostBridge);

        let w = machine("workstation", mode);
        // Not supported: bounced through host memory, still exact.
        let (path, routes) = round_trip(&w, "nvme1", "gpu", (2 << 20) + 4096);
        assert_eq!(path, PathTaken::Bounced, "{mode:?}");
        assert!(
            routes.iter().all(|r| matches!(r, Route::HostMemory { .. })),
            "{mode:?} {routes:?}"
        );
        assert!(w.unsupported_requests().is_empty());

        let e = machine("epyc", mode);
        let (path, _) = round_trip(&e, "nvme1", "gpu0", 1 << 20);
        assert_eq!(path, PathTaken::ThruHostBridge, "AMD Zen forwards");
    }
}

#[test]
fn host_memory_paths_are_byte_exact() {
    for mode in [
        IommuMode::Off,
        IommuMode::Passthrough,
        IommuMode::Translated,
    ] {
        let m = machine("dual-xeon", mode);
        let nic = m.device("nic1").unwrap(); // socket 1
        let buf = m.alloc_host(5 << 20, 0).unwrap(); // memory of socket 0
        let data = pattern(5 << 20, 7);
        let sgl = m
            .map(
                nic,
                &[buf.phys()],
                Direction::FromDevice,
                BouncePolicy::Forbid,
            )
            .unwrap();
        let t = m.dma_write(nic, &sgl, &data).unwrap();
        let topo = m.topology();
        let hb = topo.function(topo.find(nic).unwrap()).host_bridge;
        assert_eq!(topo.host_bridge(hb).numa_node, Some(1));
        assert_eq!(
            t.routes,
            vec![Route::HostMemory {
                host_bridge: hb,
                node: 0
            }]
        );
        drop(sgl);
        let mut cpu = vec![0u8; data.len()];
        m.cpu_read(buf.phys().addr(), &mut cpu).unwrap();
        assert!(cpu == data);
        let sgl = m
            .map(
                nic,
                &[buf.phys()],
                Direction::ToDevice,
                BouncePolicy::Forbid,
            )
            .unwrap();
        let mut out = vec![0u8; data.len()];
        m.dma_read(nic, &sgl, &mut out).unwrap();
        assert!(out == data);
        // The list only allows the direction it was mapped for.
        assert!(m.dma_write(nic, &sgl, &data).is_err());
        assert!(
            m.dma_read(m.device("gpu0").unwrap(), &sgl, &mut out)
                .is_err(),
            "another device's list"
        );
    }
}

const SWITCH_ON_UNLISTED_HOST: &str = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb"
[[device]]
name = "host"
type = "host"
parent = "hb"
slot = 0
vendor = 0x8086
device = 0x4660
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
[[device]]
name = "gpu"
type = "endpoint"
parent = "dp0"
class = "gpu"
bars = [{ bar = 0, size = "16M" }]
[[device]]
name = "nvme"
type = "endpoint"
parent = "dp1"
class = "nvme"
bars = [{ bar = 0, size = "16K" }, { bar = 2, size = "64M" }]
p2pmem = { bar = 2 }
"#;

/// The silent failure users hit: a bus-address mapping made while the path
/// was clear, then ACS redirect switched on (setpci); the fabric now sends
/// the writes to a root complex that does not forward peer traffic, which
/// drops them — success reported, wrong bytes. Verification catches it.
#[test]
fn a_stale_mapping_shows_up_as_wrong_bytes() {
    let topo = Topology::from_raw(
        parse_description(SWITCH_ON_UNLISTED_HOST, "t").unwrap(),
        "t",
    )
    .unwrap();
    let m = SimMachine::new(topo, SimConfig::default()).unwrap();
    let gpu = m.device("gpu").unwrap();
    let nvme: Bdf = m.device("nvme").unwrap();
    let a = m.provider(nvme).unwrap().alloc(1 << 20).unwrap();
    m.cpu_write(a.phys_addr(), &vec![0x5a; 1 << 20]).unwrap();
    let sgl = m
        .map(
            gpu,
            &[a.phys()],
            Direction::Bidirectional,
            BouncePolicy::Forbid,
        )
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::BusAddr);
    m.set_acs_ctrl(m.device("dp0").unwrap(), 0x1d).unwrap();
    let data = pattern(1 << 20, 3);
    let t = m.dma_write(gpu, &sgl, &data).unwrap();
    assert_eq!(
        t.unsupported_bytes,
        1 << 20,
        "the root complex refused every write"
    );
    let mut cpu = vec![0u8; 1 << 20];
    m.cpu_read(a.phys_addr(), &mut cpu).unwrap();
    assert!(
        cpu.iter().all(|&b| b == 0x5a),
        "writes were dropped: the target kept its old bytes"
    );
    let mut read = vec![0u8; 1 << 20];
    m.dma_read(gpu, &sgl, &mut read).unwrap();
    assert!(
        read.iter().all(|&b| b == 0xff),
        "reads complete with all-ones"
    );
    let ur = m.unsupported_requests();
    assert!(
        ur[0].reason.contains("does not forward peer traffic"),
        "{:?}",
        ur[0]
    );
    // The kernel's rule on the changed machine says the pair cannot do P2P
    // at all (redirected to a root complex that does not forward)...
    let topo = m.topology();
    let (pid, cid) = (topo.find(nvme).unwrap(), topo.find(gpu).unwrap());
    assert_eq!(
        calc_map_type_and_dist(topo, pid, cid).map_type,
        MapType::BusAddr
    );
    let mut changed = (**topo).clone();
    changed.set_acs_ctrl(topo.find(m.device("dp0").unwrap()).unwrap(), 0x1d);
    assert_eq!(
        calc_map_type_and_dist(&changed, pid, cid).map_type,
        MapType::NotSupported
    );
    // ...but the verdict is cached, as the kernel caches it per client: a
    // new mapping is by bus address again and loses its writes the same
    // way. Nothing fails; only checking the bytes shows it.
    let again = m
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    assert_eq!(again.path(), PathTaken::BusAddr);
    let t = m.dma_write(gpu, &again, &data).unwrap();
    assert_eq!(t.unsupported_bytes, 1 << 20);
    m.cpu_read(a.phys_addr(), &mut cpu).unwrap();
    assert!(cpu.iter().all(|&b| b == 0x5a), "dropped again");
}

/// A host bridge that translates: BARs below it sit at CPU physical
/// address `bus - bus_offset`, and a peer reaches them by bus address.
const TRANSLATING_HOST_BRIDGE: &str = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb"
bus_offset = -549755813888 # -0x80_0000_0000
[[device]]
name = "host"
type = "host"
parent = "hb"
slot = 0
vendor = 0x8086
device = 0x2020
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
[[device]]
name = "gpu"
type = "endpoint"
parent = "dp0"
class = "gpu"
bars = [{ bar = 0, size = "16M" }]
[[device]]
name = "nvme"
type = "endpoint"
parent = "dp1"
class = "nvme"
bars = [{ bar = 0, size = "16K" }, { bar = 2, size = "64M" }]
p2pmem = { bar = 2 }
"#;

#[test]
fn a_host_bridge_that_translates_is_honoured() {
    let topo = Topology::from_raw(
        parse_description(TRANSLATING_HOST_BRIDGE, "t").unwrap(),
        "t",
    )
    .unwrap();
    for mode in [IommuMode::Off, IommuMode::Translated] {
        let m = SimMachine::new(
            topo.clone(),
            SimConfig {
                iommu: mode,
                ..SimConfig::default()
            },
        )
        .unwrap();
        let gpu = m.device("gpu").unwrap();
        let nvme = m.device("nvme").unwrap();
        let prov = m.provider(nvme).unwrap();
        assert_eq!(prov.bus_offset().get(), -0x80_0000_0000);
        let a = prov.alloc(1 << 20).unwrap();
        assert_ne!(a.bus_addr().raw(), a.phys_addr().raw());
        let data = pattern(1 << 20, 11);
        // By bus address below the switch.
        let sgl = m
            .map(
                gpu,
                &[a.phys()],
                Direction::FromDevice,
                BouncePolicy::Forbid,
            )
            .unwrap();
        assert_eq!(sgl.path(), PathTaken::BusAddr);
        assert_eq!(sgl.entries()[0].addr.raw(), a.bus_addr().raw());
        let t = m.dma_write(gpu, &sgl, &data).unwrap();
        assert!(
            t.routes.iter().all(|r| matches!(r, Route::Switch { .. })),
            "{mode:?}: {:?}",
            t.routes
        );
        assert_eq!(t.unsupported_bytes, 0);
        drop(sgl);
        let mut cpu = vec![0u8; data.len()];
        m.cpu_read(a.phys_addr(), &mut cpu).unwrap();
        assert!(cpu == data, "{mode:?}: the bytes are in the BAR");
        // Through the (whitelisted) host bridge once ACS redirects: the
        // root complex reaches the BAR at its physical address.
        m.set_acs_ctrl(m.device("dp0").unwrap(), 0x1d).unwrap();
        let back = m
            .map(gpu, &[a.phys()], Direction::ToDevice, BouncePolicy::Forbid)
            .unwrap();
        let mut out = vec![0u8; data.len()];
        // The list was decided before the change: by bus address, which now
        // goes up to the root complex, where it is not this BAR's address.
        match m.dma_read(gpu, &back, &mut out) {
            Ok(t) => {
                assert_eq!(mode, IommuMode::Off);
                assert!(t.touched_root_complex(), "{:?}", t.routes);
                assert!(out != data, "a bus address is not a physical one");
            }
            Err(e) => {
                assert_eq!(mode, IommuMode::Translated, "{e}");
                assert!(matches!(e, DmaError::Iommu { .. }), "{e}");
            }
        }
        m.set_acs_ctrl(m.device("dp0").unwrap(), 0).unwrap();
    }
}

/// Two host bridges, each with a switch, a GPU and an NVMe drive.
const TWO_HOST_BRIDGES: &str = r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb0"
[[host_bridge]]
name = "hb1"
[[device]]
name = "host0"
type = "host"
parent = "hb0"
slot = 0
vendor = 0x8086
device = 0x4660
[[device]]
name = "host1"
type = "host"
parent = "hb1"
slot = 0
vendor = 0x8086
device = 0x4660
[[device]]
name = "rp0"
type = "root_port"
parent = "hb0"
[[device]]
name = "rp1"
type = "root_port"
parent = "hb1"
[[device]]
name = "up0"
type = "switch_upstream"
parent = "rp0"
[[device]]
name = "up1"
type = "switch_upstream"
parent = "rp1"
[[device]]
name = "dp00"
type = "switch_downstream"
parent = "up0"
[[device]]
name = "dp01"
type = "switch_downstream"
parent = "up0"
[[device]]
name = "dp10"
type = "switch_downstream"
parent = "up1"
[[device]]
name = "dp11"
type = "switch_downstream"
parent = "up1"
[[device]]
name = "gpu0"
type = "endpoint"
parent = "dp00"
class = "gpu"
bars = [{ bar = 0, size = "16M" }]
[[device]]
name = "nvme0"
type = "endpoint"
parent = "dp01"
class = "nvme"
bars = [{ bar = 2, size = "64M" }]
p2pmem = { bar = 2 }
[[device]]
name = "gpu1"
type = "endpoint"
parent = "dp10"
class = "gpu"
bars = [{ bar = 0, size = "16M" }]
[[device]]
name = "nvme1"
type = "endpoint"
parent = "dp11"
class = "nvme"
bars = [{ bar = 2, size = "64M" }]
p2pmem = { bar = 2 }
"#;

/// Each host bridge has a bus address space of its own: two BARs below
/// different host bridges may share bus addresses (their bridges translate
/// to different CPU addresses), and a switch decodes only its own.
#[test]
fn bus_addresses_are_decoded_per_host_bridge() {
    let mut raw = parse_description(TWO_HOST_BRIDGES, "t").unwrap();
    let plain = Topology::from_raw(raw.clone(), "t").unwrap();
    let bdf = |name: &str| plain.function(plain.lookup(name).unwrap()).bdf.to_string();
    let (n0, n1) = (bdf("nvme0"), bdf("nvme1"));
    let cfg = |raw: &peerdma_pci::raw::RawMachine, b: &str| {
        raw.devices
            .iter()
            .position(|d| d.path.ends_with(b))
            .unwrap()
    };
    // nvme1's BAR 2 register gets nvme0's bus address; its resource (the
    // CPU address) stays: hb1 now translates by a non-zero offset.
    let (i0, i1) = (cfg(&raw, &n0), cfg(&raw, &n1));
    let bar2: Vec<u8> = raw.devices[i0].config[0x18..0x20].to_vec();
    raw.devices[i1].config[0x18..0x20].copy_from_slice(&bar2);
    let topo = Topology::from_raw(raw, "t").unwrap();
    let m = SimMachine::new(topo, SimConfig::default()).unwrap();
    let p0 = m.provider(m.device("nvme0").unwrap()).unwrap().clone();
    let p1 = m.provider(m.device("nvme1").unwrap()).unwrap().clone();
    assert_eq!(p0.bus_offset().get(), 0);
    assert_ne!(p1.bus_offset().get(), 0);
    let (a0, a1) = (p0.alloc(1 << 20).unwrap(), p1.alloc(1 << 20).unwrap());
    assert_eq!(a0.bus_addr(), a1.bus_addr(), "one bus address, two BARs");
    for (gpu, a, seed) in [("gpu0", &a0, 5), ("gpu1", &a1, 6)] {
        let gpu = m.device(gpu).unwrap();
        let data = pattern(1 << 20, seed);
        let sgl = m
            .map(
                gpu,
                &[a.phys()],
                Direction::FromDevice,
                BouncePolicy::Forbid,
            )
            .unwrap();
        assert_eq!(sgl.path(), PathTaken::BusAddr);
        let t = m.dma_write(gpu, &sgl, &data).unwrap();
        assert!(
            t.routes.iter().all(|r| matches!(r, Route::Switch { .. })),
            "{gpu}: {:?}",
            t.routes
        );
        drop(sgl);
        let mut cpu = vec![0u8; data.len()];
        m.cpu_read(a.phys_addr(), &mut cpu).unwrap();
        assert!(cpu == data, "{gpu}: the bytes are in its peer's BAR");
    }
}
