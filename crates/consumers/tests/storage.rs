//! O_DIRECT reads and writes between NVMe drives and device memory on the
//! simulated machine: every path (bus address, host bridge, bounce), every
//! IOMMU mode, PRPs and SGLs — bytes checked end to end, and the reported
//! path held to the kernel's verdict.

use peerdma_consumers::block::Op;
use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{direct_io, End, Fallback, LegPath, Mover};
use peerdma_consumers::nvme::{NvmeConfig, NvmeDrive};
use peerdma_dma::IommuMode;
use peerdma_mem::Bdf;
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::Source;
use peerdma_sim::{pattern, SimConfig, SimMachine};

const MODES: [IommuMode; 3] = [
    IommuMode::Off,
    IommuMode::Passthrough,
    IommuMode::Translated,
];

fn machine(preset: &str, iommu: IommuMode) -> SimMachine {
    SimMachine::new(
        Source::Preset(preset.into()).load().unwrap(),
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

fn verdict(m: &SimMachine, provider: Bdf, client: Bdf) -> MapType {
    let t = m.topology();
    calc_map_type_and_dist(t, t.find(provider).unwrap(), t.find(client).unwrap()).map_type
}

fn read_into(
    preset: &str,
    iommu: IommuMode,
    drive: &str,
    into: &str,
    sgl: bool,
) -> (
    SimMachine,
    peerdma_consumers::io::IoOutcome,
    MapType,
    Bdf,
    Bdf,
) {
    let m = machine(preset, iommu);
    let (d, g) = (m.device(drive).unwrap(), m.device(into).unwrap());
    m.fill_media_pattern(d, 99).unwrap();
    let mem = DeviceMemory::new();
    let len = (3 << 20) + 8192;
    let buf = mem.provider(&m, g).unwrap().alloc(len).unwrap();
    let mut nvme = NvmeDrive::new(
        &m,
        d,
        NvmeConfig {
            use_sgl: sgl,
            ..NvmeConfig::default()
        },
    )
    .unwrap();
    let out = direct_io(
        &m,
        &mut nvme,
        Op::Read,
        1 << 20,
        &[buf.phys()],
        Fallback::Bounce,
        None,
    )
    .unwrap_or_else(|e| panic!("{preset} {drive} -> {into} {iommu:?}: {e}"));
    let mut back = vec![0u8; len as usize];
    m.cpu_read(buf.phys_addr(), &mut back).unwrap();
    assert_eq!(
        pattern::first_mismatch(99, 1 << 20, &back),
        None,
        "{preset} {drive} -> {into} {iommu:?} sgl={sgl}: wrong bytes"
    );
    assert_eq!(out.bytes, len);
    let v = verdict(&m, g, d);
    (m, out, v, d, g)
}

#[test]
fn reads_into_gpu_memory_take_the_kernels_path_on_every_iommu_mode() {
    for iommu in MODES {
        for sgl in [false, true] {
            // Below one switch: by bus address.
            let (_, out, v, d, g) = read_into("dual-xeon", iommu, "nvme0", "gpu0", sgl);
            assert_eq!(v, MapType::BusAddr);
            assert_eq!(out.legs.len(), 1, "{:?}", out.legs);
            let l = &out.legs[0];
            assert_eq!(l.path, LegPath::BusAddr);
            assert_eq!(
                (l.from, l.to),
                (End::Device { bdf: d }, End::Device { bdf: g })
            );
            assert_eq!(l.provider, Some(g));
            assert!(l
                .routes
                .iter()
                .all(|r| matches!(r, peerdma_sim::Route::Switch { .. })));
            assert_eq!(out.bounce_bytes, 0);

            // Across host bridges the whitelist allows: through the host bridge.
            let (_, out, v, _, _) = read_into("dual-xeon", iommu, "nvme1", "gpu0", sgl);
            assert_eq!(v, MapType::ThruHostBridge);
            assert_eq!(out.legs.len(), 1);
            assert_eq!(out.legs[0].path, LegPath::ThruHostBridge);
            assert!(out.legs[0].routes.iter().all(|r| r.through_root_complex()));

            // Not supported (separate root ports, Intel desktop): bounced,
            // the GPU's copy engine doing the second DMA.
            let (_, out, v, d, g) = read_into("workstation", iommu, "nvme0", "gpu", sgl);
            assert_eq!(v, MapType::NotSupported);
            assert_eq!(out.legs.len(), 2, "{:?}", out.legs);
            assert!(out.legs.iter().all(|l| l.path == LegPath::Bounced));
            assert_eq!(out.legs[0].from, End::Device { bdf: d });
            assert!(matches!(out.legs[0].to, End::Host { .. }));
            assert_eq!(out.legs[1].to, End::Device { bdf: g });
            assert_eq!(out.legs[1].mover, Mover::Dma { engine: g });
            assert_eq!(out.bounce_bytes, out.bytes);
            assert_eq!(out.cpu_copy_bytes, 0);
            assert!(out.bounce_reason.as_deref().unwrap().contains("EREMOTEIO"));
        }
    }
}

#[test]
fn a_cmb_the_drive_cannot_reach_is_bounced_by_the_cpu() {
    // nvme1's CMB has no copy engine of its own: the CPU copies, with MMIO.
    let (_, out, v, _, g) = read_into(
        "workstation",
        IommuMode::Translated,
        "nvme0",
        "nvme1",
        false,
    );
    assert_eq!(v, MapType::NotSupported);
    assert_eq!(out.legs[1].mover, Mover::Cpu);
    assert_eq!(out.legs[1].to, End::Device { bdf: g });
    assert_eq!(out.cpu_copy_bytes, out.bytes);
}

#[test]
fn writes_from_gpu_memory_reach_the_media_on_every_path() {
    for (preset, drive, from) in [
        ("dual-xeon", "nvme0", "gpu1"),
        ("dual-xeon", "nvme3", "gpu4"),
        ("workstation", "nvme0", "gpu"),
    ] {
        for iommu in MODES {
            let m = machine(preset, iommu);
            let (d, g) = (m.device(drive).unwrap(), m.device(from).unwrap());
            let mem = DeviceMemory::new();
            let len = 5u64 << 20;
            let buf = mem.provider(&m, g).unwrap().alloc(len).unwrap();
            let mut data = vec![0u8; len as usize];
            pattern::fill(5, 0, &mut data);
            m.cpu_write(buf.phys_addr(), &data).unwrap();
            let mut nvme = NvmeDrive::new(&m, d, NvmeConfig::default()).unwrap();
            let out = direct_io(
                &m,
                &mut nvme,
                Op::Write,
                4096,
                &[buf.phys()],
                Fallback::Bounce,
                None,
            )
            .unwrap();
            let mut back = vec![0u8; len as usize];
            m.media_read(d, 4096, &mut back).unwrap();
            assert!(
                back == data,
                "{preset} {from} -> {drive} {iommu:?}: wrong bytes on media"
            );
            let want = match verdict(&m, g, d) {
                MapType::BusAddr => LegPath::BusAddr,
                MapType::ThruHostBridge => LegPath::ThruHostBridge,
                _ => LegPath::Bounced,
            };
            assert!(
                out.legs.iter().all(|l| l.path == want),
                "{preset} {iommu:?}: {:?}",
                out.legs
            );
        }
    }
}

#[test]
fn p2p_only_gets_eremoteio_naming_the_pair() {
    let m = machine("workstation", IommuMode::Off);
    let (d, g) = (m.device("nvme0").unwrap(), m.device("gpu").unwrap());
    let mem = DeviceMemory::new();
    let buf = mem.provider(&m, g).unwrap().alloc(1 << 20).unwrap();
    let mut nvme = NvmeDrive::new(&m, d, NvmeConfig::default()).unwrap();
    let e = direct_io(
        &m,
        &mut nvme,
        Op::Read,
        0,
        &[buf.phys()],
        Fallback::Fail,
        None,
    )
    .unwrap_err();
    assert_eq!(e.errno(), "EREMOTEIO");
    let s = e.to_string();
    assert!(
        s.contains(&d.to_string()) && s.contains(&g.to_string()),
        "{s}"
    );
}

#[test]
fn many_small_commands_wrap_the_queues_and_chained_prp_lists_are_walked() {
    let m = machine("dual-xeon", IommuMode::Translated);
    let (d, g) = (m.device("nvme0").unwrap(), m.device("gpu0").unwrap());
    m.fill_media_pattern(d, 3).unwrap();
    let mem = DeviceMemory::new();
    let p = mem.provider(&m, g).unwrap();
    // 1,000 commands of 4 KiB through a 16-entry queue: the phase tag flips
    // every 16 completions.
    let mut small = NvmeDrive::new(
        &m,
        d,
        NvmeConfig {
            max_transfer: 4096,
            queue_entries: 16,
            ..NvmeConfig::default()
        },
    )
    .unwrap();
    let buf = p.alloc(1000 * 4096).unwrap();
    let out = direct_io(
        &m,
        &mut small,
        Op::Read,
        0,
        &[buf.phys()],
        Fallback::Fail,
        None,
    )
    .unwrap();
    assert_eq!(out.commands, 1000);
    let mut back = vec![0u8; 1000 * 4096];
    m.cpu_read(buf.phys_addr(), &mut back).unwrap();
    assert_eq!(pattern::first_mismatch(3, 0, &back), None);

    // 8 MiB in one command: PRP1 and 2,047 list entries in five chained
    // list pages (511 + a chain pointer in each of the first four).
    let mut big = NvmeDrive::new(
        &m,
        d,
        NvmeConfig {
            max_transfer: 8 << 20,
            ..NvmeConfig::default()
        },
    )
    .unwrap();
    let buf = p.alloc(8 << 20).unwrap();
    let out = direct_io(
        &m,
        &mut big,
        Op::Read,
        1 << 30,
        &[buf.phys()],
        Fallback::Fail,
        None,
    )
    .unwrap();
    assert_eq!(out.commands, 1);
    let mut back = vec![0u8; 8 << 20];
    m.cpu_read(buf.phys_addr(), &mut back).unwrap();
    assert_eq!(pattern::first_mismatch(3, 1 << 30, &back), None);
    let meta: u64 = out.meta_paths.iter().map(|p| p.bytes).sum();
    assert_eq!(
        meta,
        64 + (4 * 4096 + 3 * 8) + 16,
        "SQE + the PRP list read + CQE"
    );
}

#[test]
fn a_read_past_the_namespace_fails_with_the_controllers_status() {
    let m = machine("dual-xeon", IommuMode::Off);
    let d = m.device("nvme0").unwrap();
    let host = m.alloc_host(1 << 20, 0).unwrap();
    let mut nvme = NvmeDrive::new(&m, d, NvmeConfig::default()).unwrap();
    let at = nvme.capacity() - 4096;
    let e = direct_io(
        &m,
        &mut nvme,
        Op::Read,
        at,
        &[host.phys()],
        Fallback::Fail,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("LBA Out of Range"), "{e}");
    // The queue still works afterwards.
    direct_io(
        &m,
        &mut nvme,
        Op::Read,
        0,
        &[host.phys()],
        Fallback::Fail,
        None,
    )
    .unwrap();
}

#[test]
fn a_fault_fires_at_its_byte_even_past_a_commands_first_range() {
    use peerdma_consumers::io::IoFault;
    use peerdma_sim::Fault;
    let m = machine("dual-xeon", IommuMode::Off);
    let d = m.device("nvme0").unwrap();
    // Two host buffers far apart: one command, two data ranges of 64 KiB.
    let a = m.alloc_host(64 << 10, 0).unwrap();
    let _gap = m.alloc_host(1 << 20, 0).unwrap();
    let b = m.alloc_host(64 << 10, 0).unwrap();
    let mut nvme = NvmeDrive::new(&m, d, NvmeConfig::default()).unwrap();
    let fault = IoFault {
        at: 100 << 10,
        fault: Fault::Remove {
            device: d,
            after: 0,
        },
    };
    let e = direct_io(
        &m,
        &mut nvme,
        Op::Read,
        0,
        &[a.phys(), b.phys()],
        Fallback::Fail,
        Some(fault),
    )
    .unwrap_err();
    assert!(e.to_string().contains("removed"), "{e}");
}
