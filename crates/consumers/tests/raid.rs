//! Drive to drive and RAID on the simulated machine: bytes checked end to
//! end, staging held to the kernel's verdicts.

use peerdma_consumers::copy::{drive_to_drive, plan_copy, plan_rebuild, StagingPlan};
use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{Fallback, LegPath};
use peerdma_consumers::nvme::{NvmeConfig, NvmeDrive};
use peerdma_consumers::raid::{raid5_degraded_read, write_array, Raid5Layout};
use peerdma_dma::IommuMode;
use peerdma_mem::Bdf;
use peerdma_pci::Source;
use peerdma_sim::{pattern, SimConfig, SimMachine};

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

fn drive(m: &SimMachine, name: &str) -> NvmeDrive {
    NvmeDrive::new(m, m.device(name).unwrap(), NvmeConfig::default()).unwrap()
}

fn rebuild(
    preset: &str,
    iommu: IommuMode,
    from: &str,
    to: &str,
) -> (StagingPlan, peerdma_consumers::io::IoOutcome) {
    let m = machine(preset, iommu);
    let (a, b) = (m.device(from).unwrap(), m.device(to).unwrap());
    m.fill_media_pattern(a, 11).unwrap();
    let plan = plan_rebuild(&m, a, b, None).unwrap();
    let (mut da, mut db) = (drive(&m, from), drive(&m, to));
    let len = 10u64 << 20;
    let out = drive_to_drive(&m, &mut da, &mut db, 0, 0, len, &plan, None).unwrap();
    let mut back = vec![0u8; len as usize];
    m.media_read(b, 0, &mut back).unwrap();
    assert_eq!(
        pattern::first_mismatch(11, 0, &back),
        None,
        "{preset} {from} -> {to} {iommu:?}: the replacement differs"
    );
    assert_eq!(out.bytes, len);
    (plan, out)
}

#[test]
fn a_rebuild_goes_through_a_mirrors_cmb_when_the_verdicts_allow() {
    for iommu in [
        IommuMode::Off,
        IommuMode::Passthrough,
        IommuMode::Translated,
    ] {
        // dual-xeon: both drives have CMBs and reach each other through the
        // whitelisted host bridge.
        let (plan, out) = rebuild("dual-xeon", iommu, "nvme0", "nvme1");
        let StagingPlan::P2p { provider, .. } = plan else {
            panic!("{iommu:?}: {plan:?}")
        };
        assert_eq!(
            provider.to_string(),
            "0000:1c:00.0",
            "the survivor's own CMB first"
        );
        assert_eq!(out.bounce_bytes, 0);
        assert!(
            out.legs.iter().all(|l| l.path != LegPath::Bounced),
            "{:?}",
            out.legs
        );
        // workstation: separate root ports on an Intel desktop: host memory.
        let (plan, out) = rebuild("workstation", iommu, "nvme1", "nvme0");
        assert!(matches!(plan, StagingPlan::Host { .. }), "{plan:?}");
        assert!(out.legs.iter().all(|l| l.path == LegPath::Bounced));
        assert_eq!(out.bounce_bytes, 10 << 20);
    }
}

#[test]
fn a_copy_stages_where_find_many_says_and_a_bad_via_is_an_error() {
    let m = machine("dual-xeon", IommuMode::Off);
    let (a, b) = (m.device("nvme0").unwrap(), m.device("nvme1").unwrap());
    match plan_copy(&m, a, b, None).unwrap() {
        StagingPlan::P2p { .. } => {}
        other => panic!("{other:?}"),
    }
    let gpu = m.device("gpu0").unwrap();
    let e = plan_copy(&m, a, b, Some(gpu)).unwrap_err();
    assert!(e.to_string().contains("publishes no P2P memory"), "{e}");
}

fn degraded(iommu: IommuMode, into: &str, missing: usize) -> peerdma_consumers::io::IoOutcome {
    let m = machine("dual-xeon", iommu);
    let names = ["nvme0", "nvme1", "nvme2", "nvme3"];
    let members: Vec<Bdf> = names.iter().map(|n| m.device(n).unwrap()).collect();
    let layout = Raid5Layout {
        members: 4,
        chunk: 64 << 10,
    };
    let (offset, len) = (100 << 10, 1u64 << 20);
    write_array(&m, &members, layout, offset, len, 77).unwrap();
    let g = m.device(into).unwrap();
    let mem = DeviceMemory::new();
    let buf = mem.provider(&m, g).unwrap().alloc(len).unwrap();
    let mut drives: Vec<NvmeDrive> = names.iter().map(|n| drive(&m, n)).collect();
    let out = raid5_degraded_read(
        &m,
        &mut drives,
        layout,
        missing,
        offset,
        &[buf.phys()],
        Fallback::Bounce,
    )
    .unwrap();
    let mut back = vec![0u8; len as usize];
    m.cpu_read(buf.phys_addr(), &mut back).unwrap();
    assert_eq!(
        pattern::first_mismatch(77, offset, &back),
        None,
        "{iommu:?} missing {missing}: wrong bytes"
    );
    out
}

#[test]
fn a_degraded_raid5_read_rebuilds_through_host_memory_and_reads_the_rest_directly() {
    for iommu in [
        IommuMode::Off,
        IommuMode::Passthrough,
        IommuMode::Translated,
    ] {
        for missing in 0..4 {
            let out = degraded(iommu, "gpu0", missing);
            assert!(
                out.cpu_xor_bytes > 0,
                "every member holds data in some stripe"
            );
            assert!(
                out.bounce_bytes > 0 && out.bounce_bytes < out.bytes,
                "{}",
                out.bounce_bytes
            );
            // Reconstructed bytes reach the GPU by its copy engine, bounced.
            assert!(out.legs.iter().any(|l| l.path == LegPath::Bounced));
            // The rest went peer to peer.
            assert!(out
                .legs
                .iter()
                .any(|l| matches!(l.path, LegPath::BusAddr | LegPath::ThruHostBridge)));
            assert!(
                out.notes.iter().any(|n| n.contains("CPU XOR")),
                "{:?}",
                out.notes
            );
        }
    }
}

#[test]
fn reconstruction_xors_exactly_the_other_chunks() {
    // 4 members, 64 KiB chunks, 1 MiB from 100 KiB: stripes 0..=5 touched
    // (192 KiB of data each). Member 1 holds data in every stripe but the
    // one whose parity it holds (stripe 2, as 4 - 1 - 2 % 4 = 1).
    let out = degraded(IommuMode::Off, "gpu1", 1);
    let stripes_rebuilt = (0u64..6).filter(|s| 3 - s % 4 != 1).count() as u64;
    assert_eq!(out.cpu_xor_bytes, stripes_rebuilt * 3 * (64 << 10));
}
