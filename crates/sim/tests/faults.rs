//! Every injected fault ends in an error or in correct data, never in
//! corrupt data, and never frees memory a device may still write.

use peerdma_dma::{BouncePolicy, IommuMode};
use peerdma_mem::{Address, Direction};
use peerdma_p2p::ProviderState;
use peerdma_pci::Source;
use peerdma_sim::{DmaError, Fault, SimConfig, SimMachine};

fn machine(iommu: IommuMode) -> SimMachine {
    SimMachine::new(
        Source::Preset("dual-xeon".into()).load().unwrap(),
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(0x9e37_79b9) as u8 ^ (i >> 12) as u8)
        .collect()
}

const LEN: usize = 8 << 20;

/// Run a P2P transfer gpu0 -> nvme0's memory; return the result and what
/// the memory holds afterwards.
fn transfer(m: &SimMachine, fault: Option<Fault>) -> (Result<u64, DmaError>, Vec<u8>, Vec<u8>) {
    let gpu = m.device("gpu0").unwrap();
    let nvme = m.device("nvme0").unwrap();
    let a = m.provider(nvme).unwrap().alloc(LEN as u64).unwrap();
    m.cpu_write(a.phys_addr(), &vec![0u8; LEN]).unwrap();
    let d = data(LEN);
    let sgl = m
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    if let Some(f) = fault {
        m.inject(f).unwrap();
    }
    let r = m.dma_write(gpu, &sgl, &d).map(|t| t.bytes);
    drop(sgl);
    let mut after = vec![0u8; LEN];
    m.cpu_read(a.phys_addr(), &mut after).unwrap();
    (r, d, after)
}

/// Whatever arrived is a prefix of the right bytes; the rest untouched.
fn no_corruption(done: u64, want: &[u8], got: &[u8]) {
    let done = done as usize;
    assert!(
        got[..done] == want[..done],
        "bytes before the fault are right"
    );
    assert!(
        got[done..].iter().all(|&b| b == 0),
        "nothing after the fault was written"
    );
}

#[test]
fn link_down_mid_transfer_is_an_error_with_a_clean_prefix() {
    let m = machine(IommuMode::Off);
    let below = m.device("nvme0").unwrap();
    let (r, want, got) = transfer(
        &m,
        Some(Fault::LinkDown {
            below,
            after: 3 << 20,
        }),
    );
    let e = r.unwrap_err();
    assert!(matches!(e, DmaError::LinkDown { .. }), "{e}");
    assert_eq!(e.done(), 3 << 20);
    no_corruption(e.done(), &want, &got);
    m.heal();
    let (r, want, got) = transfer(&m, None);
    assert_eq!(r.unwrap(), LEN as u64);
    assert!(got == want);
}

#[test]
fn surprise_removal_mid_transfer_is_an_error() {
    let m = machine(IommuMode::Translated);
    // The switch port above the target disappears: the device below with it.
    let port = m.device("sw0-p11").unwrap();
    let (r, _want, got) = transfer(
        &m,
        Some(Fault::Remove {
            device: port,
            after: 5 << 20,
        }),
    );
    let e = r.unwrap_err();
    assert!(matches!(e, DmaError::Removed { .. }), "{e}");
    assert_eq!(e.done(), 5 << 20);
    assert!(
        got.iter().all(|&b| b == 0xff),
        "a removed device's BAR reads all-ones"
    );
    // The initiator itself going away also ends in an error.
    m.heal();
    let gpu = m.device("gpu0").unwrap();
    let (r, want, got) = transfer(
        &m,
        Some(Fault::Remove {
            device: gpu,
            after: 1 << 20,
        }),
    );
    let e = r.unwrap_err();
    no_corruption(e.done(), &want, &got);
}

#[test]
fn iommu_fault_mid_transfer_is_an_error() {
    let m = machine(IommuMode::Translated);
    let gpu = m.device("gpu0").unwrap();
    let buf = m.alloc_host(LEN as u64, 0).unwrap();
    let d = data(LEN);
    let sgl = m
        .map(
            gpu,
            &[buf.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    m.inject(Fault::IommuFault {
        device: gpu,
        after: 2 << 20,
    })
    .unwrap();
    let e = m.dma_write(gpu, &sgl, &d).unwrap_err();
    assert!(matches!(e, DmaError::Iommu { .. }), "{e}");
    let mut got = vec![0u8; LEN];
    m.cpu_read(buf.phys().addr(), &mut got).unwrap();
    no_corruption(e.done(), &d, &got);
    assert!(
        m.mapper().iommu_faults().is_empty(),
        "injected faults are not IOMMU page faults"
    );
}

/// An access outside the mapping — past the end of a live one, or to an
/// address whose mapping is gone — is refused by the IOMMU, logged as a
/// page fault, and reaches no memory.
#[test]
fn access_outside_the_mapping_is_refused_by_the_iommu() {
    let m = machine(IommuMode::Translated);
    let gpu = m.device("gpu0").unwrap();
    let buf = m.alloc_host(2 * 4096, 0).unwrap();
    let (inside, beyond) = buf.phys().split_at(4096).unwrap();
    m.cpu_write(beyond.addr(), &[0x11; 4096]).unwrap();
    let sgl = m
        .map(gpu, &[inside], Direction::FromDevice, BouncePolicy::Forbid)
        .unwrap();
    let start = sgl.entries()[0].addr;
    let past_end = start.checked_add(4096).unwrap();
    // Inside: served, into host memory.
    let t = m.trace(gpu, start, 4096, true).unwrap();
    assert!(
        matches!(
            t[..],
            [peerdma_sim::RoutedPiece {
                route: peerdma_sim::Route::HostMemory { .. },
                ..
            }]
        ),
        "{t:?}"
    );
    // Just past the end of the live mapping.
    let e = m.trace(gpu, past_end, 16, true).unwrap_err();
    let DmaError::Iommu { fault, .. } = &e else {
        panic!("not an IOMMU refusal: {e}");
    };
    assert_eq!(fault.addr, past_end.raw());
    assert!(fault.reason.contains("not mapped"), "{fault}");
    // After unmapping, the address the device was given is dead too, for a
    // DMA as much as for a probe.
    drop(sgl);
    let e = m.trace(gpu, start, 16, true).unwrap_err();
    assert!(matches!(e, DmaError::Iommu { .. }), "{e}");
    let log = m.mapper().iommu_faults();
    assert_eq!(log.len(), 2, "{log:?}");
    assert!(log.iter().all(|f| f.device == gpu && f.write));
    let mut after = vec![0u8; 4096];
    m.cpu_read(beyond.addr(), &mut after).unwrap();
    assert!(
        after.iter().all(|&b| b == 0x11),
        "nothing was written beyond"
    );
}

#[test]
fn revoke_mid_transfer_waits_for_the_dma_then_frees() {
    let m = machine(IommuMode::Off);
    let gpu = m.device("gpu0").unwrap();
    let nvme = m.device("nvme0").unwrap();
    let p = m.provider(nvme).unwrap().clone();
    let a = p.alloc(LEN as u64).unwrap();
    let d = data(LEN);
    let sgl = m
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .unwrap();
    m.inject(Fault::Revoke {
        provider: nvme,
        after: 4 << 20,
    })
    .unwrap();
    let t = m.dma_write(gpu, &sgl, &d).unwrap();
    assert_eq!(t.bytes, LEN as u64, "a DMA already in flight completes");
    let mut got = vec![0u8; LEN];
    m.cpu_read(a.phys_addr(), &mut got).unwrap();
    assert!(got == d, "and its data is right");
    // Revoking: no new maps or DMA, the memory is still there.
    assert_eq!(p.state(), ProviderState::Revoking);
    assert!(m
        .map(
            gpu,
            &[a.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid
        )
        .is_err());
    assert!(matches!(
        m.dma_write(gpu, &sgl, &d),
        Err(DmaError::Revoked { .. })
    ));
    assert!(p.size() > 0, "not freed while mappings exist");
    drop(sgl);
    drop(a);
    let results = m.join_revokes();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].provider, nvme);
    results[0].result.as_ref().unwrap();
    assert_eq!(p.state(), ProviderState::Revoked);
    assert_eq!(p.size(), 0);
}
