//! DMA to addresses a device was handed (a command's data pointer, a queue
//! entry), media that holds pattern data, and a copy engine working on its
//! own memory.

use peerdma_dma::{BouncePolicy, IommuMode};
use peerdma_mem::{Address, Direction, PhysAddr};
use peerdma_pci::Source;
use peerdma_sim::{pattern, DmaError, Local, LocalMut, Route, SimConfig, SimMachine};

fn machine(iommu: IommuMode) -> SimMachine {
    let topo = Source::Preset("dual-xeon".into()).load().unwrap();
    SimMachine::new(
        topo,
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

#[test]
fn pattern_media_reads_as_the_pattern_until_overwritten() {
    let m = machine(IommuMode::Off);
    let d = m.device("nvme0").unwrap();
    m.fill_media_pattern(d, 42).unwrap();
    let mut buf = vec![0u8; 3 << 20];
    m.media_read(d, (1 << 30) + 5, &mut buf).unwrap();
    assert_eq!(pattern::first_mismatch(42, (1 << 30) + 5, &buf), None);
    m.media_write(d, (1 << 30) + 100, &[0xaa; 10]).unwrap();
    m.media_read(d, 1 << 30, &mut buf).unwrap();
    assert_eq!(&buf[100..110], &[0xaa; 10]);
    assert_eq!(pattern::first_mismatch(42, 1 << 30, &buf[..100]), None);
    assert_eq!(
        pattern::first_mismatch(42, (1 << 30) + 110, &buf[110..]),
        None,
        "the rest of the written chunk keeps the pattern"
    );
    // Filling again forgets what was written.
    m.fill_media_pattern(d, 43).unwrap();
    m.media_read(d, 1 << 30, &mut buf).unwrap();
    assert_eq!(pattern::first_mismatch(43, 1 << 30, &buf), None);
}

#[test]
fn a_drive_moves_media_to_a_handed_address_through_the_fabric() {
    for iommu in [IommuMode::Off, IommuMode::Translated] {
        let m = machine(iommu);
        let (drive, cmb_owner) = (m.device("nvme0").unwrap(), m.device("nvme1").unwrap());
        m.fill_media_pattern(drive, 7).unwrap();
        let len = 2u64 << 20;
        let buf = m.provider(cmb_owner).unwrap().alloc(len).unwrap();
        let sgl = m
            .map(
                drive,
                &[buf.phys()],
                Direction::FromDevice,
                BouncePolicy::Forbid,
            )
            .unwrap();
        let mut moved = 0;
        for e in sgl.entries() {
            let t = m
                .dma_to(drive, e.addr, e.len, Local::Media(4096 + moved))
                .unwrap();
            assert_eq!(t.bytes, e.len);
            assert_eq!(t.mapped, None, "the device knows only the address");
            assert_eq!(t.paths.iter().map(|p| p.bytes).sum::<u64>(), e.len);
            assert!(
                t.routes
                    .iter()
                    .all(|r| matches!(r, Route::RootComplexPeer { .. })),
                "{iommu:?}: two switches below different host bridges: {:?}",
                t.routes
            );
            moved += e.len;
        }
        let mut back = vec![0u8; len as usize];
        m.cpu_read(buf.phys_addr(), &mut back).unwrap();
        assert_eq!(pattern::first_mismatch(7, 4096, &back), None, "{iommu:?}");
    }
}

#[test]
fn a_copy_engine_pulls_host_memory_into_its_own_bar() {
    let m = machine(IommuMode::Translated);
    let gpu = m.device("gpu0").unwrap();
    let host = m.alloc_host(1 << 20, 0).unwrap();
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    m.cpu_write(host.phys().addr(), &data).unwrap();
    let sgl = m
        .map(
            gpu,
            &[host.phys()],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    let gf = m.topology().find(gpu).unwrap();
    let bar = m
        .topology()
        .function(gf)
        .bars
        .iter()
        .find(|b| b.index == 1)
        .unwrap()
        .phys
        .start();
    let own = bar.checked_add(1 << 20).unwrap();
    let e = sgl.entries()[0];
    let t = m.dma_from(gpu, e.addr, e.len, LocalMut::Own(own)).unwrap();
    assert!(t
        .routes
        .iter()
        .all(|r| matches!(r, Route::HostMemory { .. })));
    let mut back = vec![0u8; data.len()];
    m.cpu_read(own, &mut back).unwrap();
    assert_eq!(back, data);
    // Pushing back out of its own memory to host memory, bytes intact.
    let out = m.alloc_host(1 << 20, 0).unwrap();
    let osgl = m
        .map(
            gpu,
            &[out.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    let oe = osgl.entries()[0];
    m.dma_to(gpu, oe.addr, oe.len, Local::Own(own)).unwrap();
    let mut back2 = vec![0u8; data.len()];
    m.cpu_read(out.phys().addr(), &mut back2).unwrap();
    assert_eq!(back2, data);
}

#[test]
fn handed_addresses_are_checked() {
    let m = machine(IommuMode::Translated);
    let gpu = m.device("gpu0").unwrap();
    let other = m.device("gpu1").unwrap();
    let ob = m
        .topology()
        .function(m.topology().find(other).unwrap())
        .bars[1]
        .phys
        .start();
    let host = m.alloc_host(4096, 0).unwrap();
    let sgl = m
        .map(
            gpu,
            &[host.phys()],
            Direction::ToDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    let e = sgl.entries()[0];
    let err = m
        .dma_from(gpu, e.addr, 4096, LocalMut::Own(ob))
        .unwrap_err();
    assert!(matches!(err, DmaError::NotOwnMemory { .. }), "{err}");
    assert!(err.to_string().contains("own memory"), "{err}");
    let err = m
        .dma_from(gpu, e.addr, 0, LocalMut::Bytes(&mut []))
        .unwrap_err();
    assert!(matches!(err, DmaError::Empty { .. }), "{err}");
    let err = m
        .dma_to(gpu, e.addr, 8, Local::Bytes(&[0u8; 4]))
        .unwrap_err();
    assert!(matches!(err, DmaError::LengthMismatch { .. }), "{err}");
    // An address the IOMMU does not map for this device faults.
    let err = m
        .dma_to(
            gpu,
            e.addr.checked_add(1 << 30).unwrap(),
            8,
            Local::Bytes(&[0u8; 8]),
        )
        .unwrap_err();
    assert!(matches!(err, DmaError::Iommu { .. }), "{err}");
    let _ = PhysAddr::new(0);
}
