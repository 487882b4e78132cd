//! Providers, pools and the revoke protocol, including under threads.

use peerdma_mem::{AddrRange, Bdf, BusOffset, MemKind, PhysAddr, PAGE_SIZE};
use peerdma_p2p::{Importer, P2pError, Provider, ProviderState, RevokeError};
use peerdma_pci::Source;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn provider(size: u64) -> Provider {
    let bdf: Bdf = "0000:03:00.0".parse().unwrap();
    Provider::new(
        bdf,
        2,
        AddrRange::new(PhysAddr::new(0x40_0000_0000), size).unwrap(),
        BusOffset::new(-0x1000_0000),
    )
    .unwrap()
}

#[test]
fn pool_accounting_and_addresses() {
    let p = provider(16 * PAGE_SIZE);
    p.publish(true);
    assert!(p.published());
    assert_eq!((p.size(), p.available()), (16 * PAGE_SIZE, 16 * PAGE_SIZE));
    let a = p.alloc(1).unwrap();
    assert_eq!(a.len(), PAGE_SIZE, "page granular");
    let b = p.alloc_aligned(2 * PAGE_SIZE, 4 * PAGE_SIZE).unwrap();
    assert_eq!(b.phys_addr().raw() % (4 * PAGE_SIZE), 0);
    assert_eq!(p.available(), 13 * PAGE_SIZE);
    assert_eq!(a.phys().kind(), MemKind::P2p { provider: p.bdf() });
    assert_eq!(
        a.bus_addr().raw(),
        a.phys_addr().raw() - 0x1000_0000,
        "bus = phys + offset"
    );
    assert_eq!(p.references(), 2);
    let e = p.alloc(16 * PAGE_SIZE).unwrap_err();
    assert!(matches!(e, P2pError::OutOfMemory { .. }), "{e}");
    assert!(e.to_string().contains("0000:03:00.0"));
    drop(a);
    drop(b);
    assert_eq!(p.available(), 16 * PAGE_SIZE);
    assert_eq!(p.references(), 0);
}

#[test]
fn resources_are_checked_like_the_kernel() {
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let nvme = t.function(t.lookup("nvme0").unwrap());
    let p = Provider::from_function(nvme, 2, 0, 0).unwrap();
    assert_eq!(p.size(), 1 << 30);
    let half = Provider::from_function(nvme, 2, 1 << 29, 1 << 29).unwrap();
    assert_eq!(
        half.range().start().raw(),
        p.range().start().raw() + (1 << 29)
    );
    for (bar, size, off, why) in [
        (4, 0, 0, "no such BAR"),
        (2, 0, 1 << 30, "beyond"),
        (2, 1 << 30, 1, "do not fit"),
    ] {
        let e = Provider::from_function(nvme, bar, size, off)
            .unwrap_err()
            .to_string();
        assert!(e.contains(why), "{e}");
    }
}

struct DropOnNotify {
    held: Mutex<Vec<peerdma_p2p::Allocation>>,
    notified: AtomicUsize,
}

impl Importer for DropOnNotify {
    fn name(&self) -> String {
        "test importer".into()
    }
    fn move_notify(&self, _provider: Bdf) {
        self.notified.fetch_add(1, Ordering::SeqCst);
        self.held.lock().unwrap().clear();
    }
}

#[test]
fn revoke_notifies_importers_waits_and_frees() {
    let p = provider(8 * PAGE_SIZE);
    let imp = Arc::new(DropOnNotify {
        held: Mutex::new(vec![
            p.alloc(PAGE_SIZE).unwrap(),
            p.alloc(PAGE_SIZE).unwrap(),
        ]),
        notified: AtomicUsize::new(0),
    });
    let dyn_imp: Arc<dyn Importer> = imp.clone();
    let _h = p.register_importer(&dyn_imp);
    let report = p.revoke(Duration::from_secs(5)).unwrap();
    assert_eq!(report.importers_notified, 1);
    assert_eq!(imp.notified.load(Ordering::SeqCst), 1);
    assert_eq!(p.state(), ProviderState::Revoked);
    assert_eq!(p.size(), 0, "pool freed");
    assert!(matches!(p.alloc(PAGE_SIZE), Err(P2pError::Revoked { .. })));
    assert!(p.begin_dma().is_err());
    assert!(p.try_ref().is_err());
    assert!(
        p.revoke(Duration::ZERO).is_ok(),
        "revoking twice is harmless"
    );
}

#[test]
fn revoke_with_dma_in_flight_waits_or_fails_cleanly() {
    let p = provider(8 * PAGE_SIZE);
    let a = p.alloc(PAGE_SIZE).unwrap();
    let ticket = p.begin_dma().unwrap();
    // Times out: nothing is freed, the allocation is still usable.
    let e = p.revoke(Duration::from_millis(20)).unwrap_err();
    assert_eq!(
        e,
        RevokeError::DmaInFlight {
            bdf: p.bdf(),
            in_flight: 1
        }
    );
    assert!(e.to_string().contains("nothing was freed"));
    assert_eq!(p.state(), ProviderState::Revoking);
    assert_eq!(p.size(), 8 * PAGE_SIZE);
    assert!(
        p.alloc(PAGE_SIZE).is_err(),
        "no new allocations while revoking"
    );
    assert!(p.begin_dma().is_err(), "no new DMA while revoking");
    // The DMA completes on another thread; the next revoke waits for it,
    // then for the allocation.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        drop(ticket);
        std::thread::sleep(Duration::from_millis(30));
        drop(a);
    });
    let r = p.revoke(Duration::from_secs(10)).unwrap();
    assert!(r.waited >= Duration::from_millis(30));
    t.join().unwrap();
    assert_eq!(p.state(), ProviderState::Revoked);
    // An allocation held past the timeout is reported, not freed.
    let q = provider(4 * PAGE_SIZE);
    let held = q.alloc(PAGE_SIZE).unwrap();
    let e = q.revoke(Duration::from_millis(10)).unwrap_err();
    assert!(
        matches!(e, RevokeError::StillReferenced { references: 1, .. }),
        "{e}"
    );
    assert_eq!(q.available(), 3 * PAGE_SIZE);
    drop(held);
    q.revoke(Duration::from_secs(1)).unwrap();
}

#[test]
fn stress_allocate_dma_and_revoke_concurrently() {
    for round in 0..20 {
        let p = provider(64 * PAGE_SIZE);
        let ok_dmas = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let p = p.clone();
                let ok_dmas = Arc::clone(&ok_dmas);
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let Ok(a) = p.alloc(PAGE_SIZE * (1 + (i + w) % 3)) else {
                            if p.state() != ProviderState::Live {
                                return;
                            }
                            continue;
                        };
                        if let Ok(t) = a.provider().begin_dma() {
                            // Memory must stay allocated while DMA is in flight.
                            assert_ne!(a.provider().size(), 0);
                            ok_dmas.fetch_add(1, Ordering::Relaxed);
                            drop(t);
                        }
                        drop(a);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_micros(200 * round));
        p.revoke(Duration::from_secs(30)).unwrap();
        assert_eq!(p.references(), 0);
        assert_eq!(p.dma_in_flight(), 0);
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(p.size(), 0);
    }
}

/// A BAR at the very top of the address space, or a bus offset that moves
/// its end past 2^64: an error or a working provider, never a panic.
#[test]
fn ranges_at_the_end_of_the_address_space() {
    let bdf: Bdf = "0000:03:00.0".parse().unwrap();
    let top = AddrRange::new(PhysAddr::new(u64::MAX - 16 * PAGE_SIZE + 1), 16 * PAGE_SIZE).unwrap();
    let p = Provider::new(bdf, 0, top, BusOffset::IDENTITY).unwrap();
    let a = p.alloc(PAGE_SIZE).unwrap();
    assert_eq!(a.bus_addr().raw(), a.phys_addr().raw());
    // The first byte has a bus address, the last would not.
    let e = Provider::new(
        bdf,
        0,
        AddrRange::new(PhysAddr::new(u64::MAX - 16 * PAGE_SIZE + 1), 16 * PAGE_SIZE).unwrap(),
        BusOffset::new(8 * PAGE_SIZE as i64),
    )
    .unwrap_err();
    assert!(matches!(e, P2pError::BadResource { .. }), "{e}");
}
