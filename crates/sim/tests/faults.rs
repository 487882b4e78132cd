//! Every injected fault ends in an error or in correct data, never in
//! corrupt data, and never frees memory a device may still write.

use peerdma_dma::{BouncePolicy, IommuMode};
use peerdma_mem::Direction;
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
        m.inject(f);
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
    });
    let e = m.dma_write(gpu, &sgl, &d).unwrap_err();
    assert!(matches!(e, DmaError::Iommu { .. }), "{e}");
    let mut got = vec![0u8; LEN];
    m.cpu_read(buf.phys().addr(), &mut got).unwrap();
    no_corruption(e.done(), &d, &got);
    // An access outside the mapping is refused by the IOMMU, not served.
    drop(sgl);
    assert!(
        m.mapper().iommu_faults().is_empty(),
        "injected faults are not IOMMU page faults"
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
    });
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
    results[0].as_ref().unwrap();
    assert_eq!(p.state(), ProviderState::Revoked);
    assert_eq!(p.size(), 0);
}
