//! Mapping decisions per segment, bounce semantics, the two-step API, and
//! lifetimes, on the presets.

use peerdma_dma::{
    BouncePolicy, CopyEngine, DeviceDma, IommuMode, MapError, Mapper, MapperConfig, MemError,
    PathTaken, SegMapping,
};
use peerdma_mem::{Bdf, Direction, DmaAddr, MemKind, PhysAddr, PhysVec};
use peerdma_p2p::Provider;
use peerdma_pci::{Source, Topology};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A sparse byte store keyed by physical address: every range reads back
/// what was written, unwritten bytes read as zero.
#[derive(Default, Debug)]
struct TestMemory {
    pages: Mutex<HashMap<u64, Box<[u8; 4096]>>>,
}

impl TestMemory {
    fn write(&self, addr: PhysAddr, data: &[u8]) {
        let mut pages = self.pages.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            let a = addr.raw() + i as u64;
            pages.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]))[(a & 0xfff) as usize] = *b;
        }
    }

    fn read(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let pages = self.pages.lock().unwrap();
        (0..len as u64)
            .map(|i| {
                let a = addr.raw() + i;
                pages.get(&(a >> 12)).map_or(0, |p| p[(a & 0xfff) as usize])
            })
            .collect()
    }
}

impl CopyEngine for TestMemory {
    fn copy(&self, src: PhysVec, dst: PhysAddr) -> Result<(), MemError> {
        let data = self.read(src.addr(), src.len() as usize);
        self.write(dst, &data);
        Ok(())
    }
    fn copy_back(&self, src: PhysAddr, dst: PhysVec) -> Result<(), MemError> {
        let data = self.read(src, dst.len() as usize);
        self.write(dst.addr(), &data);
        Ok(())
    }
}

struct Rig {
    topo: Arc<Topology>,
    mapper: Mapper,
    mem: Arc<TestMemory>,
}

fn rig(preset: &str, mode: IommuMode) -> Rig {
    let topo = Arc::new(Source::Preset(preset.into()).load().unwrap());
    let mem = Arc::new(TestMemory::default());
    let cfg = MapperConfig {
        iommu_mode: mode,
        bounce_base: PhysAddr::new(0x400_0000),
        bounce_size: 4 << 20,
    };
    let mapper = Mapper::new(Arc::clone(&topo), cfg, mem.clone()).unwrap();
    Rig { topo, mapper, mem }
}

impl Rig {
    fn bdf(&self, name: &str) -> Bdf {
        self.topo.function(self.topo.lookup(name).unwrap()).bdf
    }
    fn provider(&self, name: &str) -> Provider {
        let f = self.topo.function(self.topo.lookup(name).unwrap());
        let bar = f.largest_memory_bar().unwrap().index;
        let p = Provider::from_function(f, bar, 0, 0).unwrap();
        self.mapper.register_provider(&p);
        p
    }
    /// What a device access at `addr` reaches, as the root complex would
    /// resolve it (identity unless translated).
    fn resolve(
        &self,
        dev: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<(PhysAddr, u64)>, peerdma_dma::IommuFault> {
        self.mapper.iommu_translate(dev, addr, len, write)
    }
}

fn host(addr: u64, len: u64) -> PhysVec {
    PhysVec::new(PhysAddr::new(addr), len, MemKind::System).unwrap()
}

#[test]
fn host_memory_direct_and_translated() {
    let r = rig("dual-xeon", IommuMode::Off);
    let gpu = r.bdf("gpu0");
    let sgl = r
        .mapper
        .map(
            gpu,
            &[host(0x10_0000, 8192)],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::HostMemory);
    assert_eq!(
        sgl.entries()[0].addr,
        DmaAddr::direct(PhysAddr::new(0x10_0000))
    );
    drop(sgl);

    let r = rig("dual-xeon", IommuMode::Translated);
    let segs = [
        host(0x20_0000, 4096),
        host(0x90_0000, 4096),
        host(0x55_0100, 100),
    ];
    let sgl = r
        .mapper
        .map(gpu, &segs, Direction::FromDevice, BouncePolicy::Forbid)
        .unwrap();
    // Page-aligned pieces meet in IOVA space and merge; the last does not.
    assert_eq!(sgl.entries().len(), 2);
    assert_eq!(sgl.entries()[0].len, 8192);
    assert_eq!(sgl.len(), 8292);
    let e = sgl.entries()[0];
    assert!(
        e.addr.raw() >= 0x1_0000_0000,
        "an IOVA, not the physical address"
    );
    assert_eq!(
        r.resolve(gpu, e.addr, 8192, true).unwrap(),
        vec![
            (PhysAddr::new(0x20_0000), 4096),
            (PhysAddr::new(0x90_0000), 4096)
        ]
    );
    assert!(
        r.resolve(gpu, e.addr, 16, false).is_err(),
        "FromDevice mappings are write-only for the device"
    );
    let last = sgl.entries()[1];
    assert_eq!(last.addr.raw() % 4096, 0x100, "page offset kept");
    assert!(r.mapper.mapped_pages(gpu) > 0);
    sgl.unmap().unwrap();
    assert_eq!(r.mapper.mapped_pages(gpu), 0);
    assert_eq!(r.mapper.iova_in_use(gpu), 0);
    assert!(
        r.resolve(gpu, e.addr, 16, true).is_err(),
        "unmapped IOVA faults"
    );
}

#[test]
fn p2p_by_bus_address_bypasses_the_iommu() {
    let r = rig("dual-xeon", IommuMode::Translated);
    let nvme = r.provider("nvme0");
    let gpu = r.bdf("gpu0");
    let a = nvme.alloc(1 << 20).unwrap();
    let sgl = r
        .mapper
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::BusAddr);
    assert_eq!(sgl.entries()[0].addr.raw(), a.bus_addr().raw());
    assert_eq!(sgl.mappings(), &[SegMapping::BusAddr]);
    assert_eq!(r.mapper.mapped_pages(gpu), 0, "nothing in the IOMMU");
    assert_eq!(nvme.references(), 2, "the mapping holds a live reference");
    drop(sgl);
    assert_eq!(nvme.references(), 1);
}

#[test]
fn p2p_through_the_host_bridge_is_translated() {
    let r = rig("dual-xeon", IommuMode::Translated);
    let nvme = r.provider("nvme3");
    let gpu = r.bdf("gpu4"); // same switch, ACS redirect on its ports
    let a = nvme.alloc(8192).unwrap();
    let sgl = r
        .mapper
        .map(gpu, &[a.phys()], Direction::ToDevice, BouncePolicy::Forbid)
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::ThruHostBridge);
    let e = sgl.entries()[0];
    assert_eq!(
        r.resolve(gpu, e.addr, 8192, false).unwrap(),
        vec![(a.phys_addr(), 8192)]
    );
    // Without an IOMMU it is the physical address.
    let r2 = rig("dual-xeon", IommuMode::Passthrough);
    let nvme2 = r2.provider("nvme3");
    let b = nvme2.alloc(4096).unwrap();
    let sgl2 = r2
        .mapper
        .map(
            r2.bdf("gpu4"),
            &[b.phys()],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    assert_eq!(sgl2.entries()[0].addr.raw(), b.phys_addr().raw());
}

#[test]
fn not_supported_fails_naming_the_pair_or_bounces() {
    let r = rig("workstation", IommuMode::Off);
    let nvme = r.provider("nvme1");
    let gpu = r.bdf("gpu");
    let a = nvme.alloc(3 * 4096).unwrap();
    let e = r
        .mapper
        .map(gpu, &[a.phys()], Direction::ToDevice, BouncePolicy::Forbid)
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, MapError::NotSupported { .. }));
    assert!(
        msg.contains(&gpu.to_string()) && msg.contains(&nvme.bdf().to_string()),
        "{msg}"
    );
    assert!(
        msg.contains("not in the kernel's P2PDMA whitelist"),
        "{msg}"
    );

    // ToDevice: the original is in the bounce buffer at map time.
    let pattern: Vec<u8> = (0..3 * 4096).map(|i| (i * 31 % 251) as u8).collect();
    r.mem.write(a.phys_addr(), &pattern);
    let sgl = r
        .mapper
        .map(gpu, &[a.phys()], Direction::ToDevice, BouncePolicy::Bounce)
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::Bounced);
    let mut seen = Vec::new();
    for e in sgl.entries() {
        assert!(
            (0x400_0000..0x440_0000).contains(&e.addr.raw()),
            "in the bounce pool"
        );
        seen.extend(r.mem.read(e.addr.untranslated(), e.len as usize));
    }
    assert_eq!(seen, pattern);
    // The CPU changes the original; sync_for_device refreshes the bounce.
    r.mem.write(a.phys_addr(), &[0xee; 16]);
    sgl.sync_for_device().unwrap();
    assert_eq!(
        r.mem.read(sgl.entries()[0].addr.untranslated(), 16),
        vec![0xee; 16]
    );
    drop(sgl);
    assert_eq!(r.mapper.bounce_free_slots(), 2048, "slots released");
}

#[test]
fn bounced_device_writes_come_back_without_clobbering() {
    let r = rig("workstation", IommuMode::Translated);
    let nvme = r.provider("nvme1");
    let gpu = r.bdf("gpu");
    let a = nvme.alloc(4096).unwrap();
    r.mem.write(a.phys_addr(), &[0x11; 4096]);
    let sgl = r
        .mapper
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Bounce,
        )
        .unwrap();
    let e = sgl.entries()[0];
    // The device writes the first 100 bytes through its IOMMU mapping.
    let target = r.resolve(gpu, e.addr, 100, true).unwrap();
    r.mem.write(target[0].0, &[0x22; 100]);
    sgl.sync_for_cpu().unwrap();
    assert_eq!(r.mem.read(a.phys_addr(), 100), vec![0x22; 100]);
    sgl.unmap().unwrap();
    let back = r.mem.read(a.phys_addr(), 4096);
    assert_eq!(&back[..100], &[0x22; 100]);
    assert!(
        back[100..].iter().all(|&b| b == 0x11),
        "bytes the device did not write are intact"
    );
    assert_eq!(r.mapper.mapped_pages(gpu), 0);
}

#[test]
fn large_bounces_are_split_into_swiotlb_sized_pieces() {
    let r = rig("workstation", IommuMode::Off);
    let nvme = r.provider("nvme1");
    let a = nvme.alloc(1 << 20).unwrap();
    let sgl = r
        .mapper
        .map(
            r.bdf("gpu"),
            &[a.phys()],
            Direction::Bidirectional,
            BouncePolicy::Bounce,
        )
        .unwrap();
    assert_eq!(sgl.entries().len(), 4);
    assert!(sgl.entries().iter().all(|e| e.len == 256 << 10));
    assert_eq!(sgl.len(), 1 << 20);
}

#[test]
fn masks_and_alignment() {
    let r = rig("dual-xeon", IommuMode::Off);
    let nic = r.bdf("nic0");
    r.mapper.set_device(DeviceDma {
        bdf: nic,
        dma_mask: u32::MAX as u64,
        min_align_mask: 0xfff,
    });
    let high = host(0x1_2345_6a40, 512);
    let e = r
        .mapper
        .map(nic, &[high], Direction::ToDevice, BouncePolicy::Forbid)
        .unwrap_err();
    assert!(matches!(e, MapError::BeyondMask { .. }), "{e}");
    let sgl = r
        .mapper
        .map(nic, &[high], Direction::ToDevice, BouncePolicy::Bounce)
        .unwrap();
    assert_eq!(sgl.path(), PathTaken::Bounced);
    let a = sgl.entries()[0].addr.raw();
    assert!(a < 1 << 32);
    assert_eq!(a & 0xfff, 0xa40, "min_align_mask bits preserved");
}

#[test]
fn mixed_requests_are_refused_or_split() {
    let r = rig("dual-xeon", IommuMode::Off);
    let nvme = r.provider("nvme0");
    let a = nvme.alloc(4096).unwrap();
    let gpu = r.bdf("gpu0");
    let req = [host(0x1000, 4096), a.phys(), host(0x9000, 4096)];
    let e = r
        .mapper
        .map(gpu, &req, Direction::ToDevice, BouncePolicy::Bounce)
        .unwrap_err();
    assert!(matches!(e, MapError::Mixed { index: 1, .. }), "{e}");
    let parts = r
        .mapper
        .map_request(gpu, &req, Direction::ToDevice, BouncePolicy::Bounce)
        .unwrap();
    let paths: Vec<PathTaken> = parts.iter().map(|s| s.path()).collect();
    assert_eq!(
        paths,
        [
            PathTaken::HostMemory,
            PathTaken::BusAddr,
            PathTaken::HostMemory
        ]
    );
    let private = PhysVec::new(
        PhysAddr::new(0x5000),
        16,
        MemKind::DevicePrivate {
            owner: r.bdf("gpu1"),
        },
    )
    .unwrap();
    assert!(matches!(
        r.mapper
            .map(gpu, &[private], Direction::ToDevice, BouncePolicy::Bounce),
        Err(MapError::Private { .. })
    ));
}

#[test]
fn mappings_keep_the_provider_alive_through_revoke() {
    let r = rig("dual-xeon", IommuMode::Off);
    let nvme = r.provider("nvme0");
    let a = nvme.alloc(4096).unwrap();
    let sgl = r
        .mapper
        .map(
            r.bdf("gpu0"),
            &[a.phys()],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    drop(a);
    let e = nvme.revoke(Duration::from_millis(10)).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 allocation(s)/mapping(s) still held"),
        "{e}"
    );
    assert!(
        r.mapper
            .map(
                r.bdf("gpu1"),
                &[sgl_phys(&nvme)],
                Direction::ToDevice,
                BouncePolicy::Forbid
            )
            .is_err(),
        "no new maps"
    );
    drop(sgl);
    nvme.revoke(Duration::from_secs(1)).unwrap();
}

fn sgl_phys(p: &Provider) -> PhysVec {
    PhysVec::new(p.range().start(), 4096, MemKind::P2p { provider: p.bdf() }).unwrap()
}

#[test]
fn two_step_api_rules() {
    let off = rig("dual-xeon", IommuMode::Passthrough);
    assert!(
        off.mapper
            .iova_try_alloc(off.bdf("gpu0"), PhysAddr::new(0), 4096)
            .is_none(),
        "not behind a translating IOMMU"
    );

    let r = rig("dual-xeon", IommuMode::Translated);
    let gpu = r.bdf("gpu0");
    let mut st = r
        .mapper
        .iova_try_alloc(gpu, PhysAddr::new(0x10_0200), 3 * 4096)
        .unwrap();
    assert_eq!(st.addr().raw() % 4096, 0x200);
    st.link(host(0x10_0200, 4096 - 0x200), 0, Direction::ToDevice)
        .unwrap();
    // Linked but not synced: the device faults.
    assert!(r
        .resolve(gpu, st.addr(), 16, false)
        .unwrap_err()
        .reason
        .contains("not synced"));
    st.sync(0, 4096 - 0x200).unwrap();
    assert_eq!(
        r.resolve(gpu, st.addr(), 16, false).unwrap(),
        vec![(PhysAddr::new(0x10_0200), 16)]
    );
    // Every link but the first starts on a page; every link but the last is page-sized.
    let e = st
        .link(
            host(0x30_0010, 100),
            4096 - 0x200 + 0x10,
            Direction::ToDevice,
        )
        .unwrap_err();
    assert!(e.to_string().contains("page boundary"), "{e}");
    st.link(host(0x30_0000, 100), 4096 - 0x200, Direction::ToDevice)
        .unwrap();
    let e = st
        .link(host(0x40_0000, 4096), 2 * 4096 - 0x200, Direction::ToDevice)
        .unwrap_err();
    assert!(e.to_string().contains("only the last link"), "{e}");
    // Bus-address P2P memory is not linked.
    let nvme = r.provider("nvme0");
    let a = nvme.alloc(4096).unwrap();
    let mut st2 = r.mapper.iova_try_alloc(gpu, a.phys_addr(), 4096).unwrap();
    assert!(st2
        .link(a.phys(), 0, Direction::ToDevice)
        .unwrap_err()
        .to_string()
        .contains("bus address"));
    st2.free().unwrap();
    assert!(
        st.unlink(4096 - 0x200, 99).is_err(),
        "unlink must match a link"
    );
    st.destroy(4096 - 0x200 + 100).unwrap();
    assert_eq!(r.mapper.mapped_pages(gpu), 0);
    assert_eq!(r.mapper.iova_in_use(gpu), 0);
    // Freeing with links left is refused (and cleaned up).
    let mut st3 = r
        .mapper
        .iova_try_alloc(gpu, PhysAddr::new(0), 4096)
        .unwrap();
    st3.link(host(0, 4096), 0, Direction::ToDevice).unwrap();
    assert!(st3.free().is_err());
    assert_eq!(r.mapper.mapped_pages(gpu), 0);
}

/// Sizes and addresses at the edge of the 64-bit space are refused with an
/// error; nothing wraps and nothing panics.
#[test]
fn requests_at_the_end_of_the_address_space_are_errors() {
    let r = rig("dual-xeon", IommuMode::Translated);
    let gpu = r.bdf("gpu0");
    // A segment whose IOMMU span does not fit in 64 bits.
    let huge = PhysVec::new(PhysAddr::new(0xfff), u64::MAX - 0xfff, MemKind::System).unwrap();
    let e = r
        .mapper
        .map(gpu, &[huge], Direction::ToDevice, BouncePolicy::Forbid)
        .unwrap_err();
    assert!(matches!(e, MapError::IovaExhausted { .. }), "{e}");
    // Two segments whose IOMMU spans overflow when added (their lengths
    // do not).
    let a = PhysVec::new(PhysAddr::new(0xfff), (1 << 63) - 1, MemKind::System).unwrap();
    let b = PhysVec::new(PhysAddr::new(0xfff), (1 << 63) - 4096, MemKind::System).unwrap();
    let e = r
        .mapper
        .map(gpu, &[a, b], Direction::ToDevice, BouncePolicy::Forbid)
        .unwrap_err();
    assert!(matches!(e, MapError::IovaExhausted { .. }), "{e}");
    let half = PhysVec::new(PhysAddr::new(0), 1 << 63, MemKind::System).unwrap();
    assert_eq!(r.mapper.iova_in_use(gpu), 0);
    // Segments whose lengths add up past 2^64 (a list's length would wrap).
    let off = rig("dual-xeon", IommuMode::Off);
    let e = off
        .mapper
        .map(
            gpu,
            &[half, half],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap_err();
    assert_eq!(e, MapError::TooLong { device: gpu });
    // The two-step API: no IOVA space for a size that overflows.
    assert!(r
        .mapper
        .iova_try_alloc(gpu, PhysAddr::new(0x10), u64::MAX)
        .is_none());
    // A bounce pool that cannot be placed is an error, not a panic.
    let topo = Arc::new(Source::Preset("dual-xeon".into()).load().unwrap());
    let cfg = MapperConfig {
        iommu_mode: IommuMode::Off,
        bounce_base: PhysAddr::new(0x400_0123),
        bounce_size: 4 << 20,
    };
    let e = Mapper::new(topo, cfg, Arc::new(TestMemory::default())).unwrap_err();
    assert!(e.to_string().contains("bounce"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some_and(|s| s.to_string().contains("page aligned")),
        "{e}"
    );
}
