//! Model check of the reference/revoke core with loom: every interleaving
//! of readers taking and dropping references against a revoker that kills
//! and waits. Run with:
//! `RUSTFLAGS="--cfg loom" cargo test -p peerdma-p2p --test loom --release`
#![cfg(loom)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use peerdma_p2p::refcore::RefCore;

/// Every interleaving with up to three preemptions (loom's recommended
/// bound; the bugs this core could have need at most two).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(f);
}

#[test]
fn no_reference_survives_or_appears_after_drain() {
    model(|| {
        let core = Arc::new(RefCore::new());
        // Set by a reader while it holds a reference; the revoker asserts
        // that no reader is inside once the wait returns.
        let inside = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let core = Arc::clone(&core);
                let inside = Arc::clone(&inside);
                thread::spawn(move || {
                    if core.try_get() {
                        inside.store(true, Ordering::SeqCst);
                        inside.store(false, Ordering::SeqCst);
                        core.put();
                    }
                })
            })
            .collect();
        core.kill();
        assert!(core.wait_drained(std::time::Duration::MAX));
        assert_eq!(core.count(), 0);
        assert!(!inside.load(Ordering::SeqCst));
        assert!(!core.try_get(), "no new reference after the kill");
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(core.count(), 0);
    });
}

#[test]
fn the_last_put_wakes_the_waiter() {
    model(|| {
        let core = Arc::new(RefCore::new());
        assert!(core.try_get());
        let c2 = Arc::clone(&core);
        let t = thread::spawn(move || c2.put());
        core.kill();
        // Would deadlock (loom reports it) if the wake-up could be lost.
        assert!(core.wait_drained(std::time::Duration::MAX));
        t.join().unwrap();
    });
}
