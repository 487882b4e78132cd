//! The reference/revoke core: a counter of live references that can be
//! killed (no new references from then on) and waited on until the last
//! reference is gone — the kernel's `percpu_ref` in atomic mode
//! (`tryget_live`, `put`, `kill`, wait for release).
//!
//! It is small on purpose: `tests/loom.rs` checks every interleaving of
//! gets, puts, kills and waits with loom (`RUSTFLAGS="--cfg loom" cargo
//! test -p peerdma-p2p --test loom --release`).

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    Condvar, Mutex,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Condvar, Mutex,
};

const DEAD: usize = 1 << (usize::BITS - 1);

/// A killable reference counter.
#[derive(Debug)]
pub struct RefCore {
    state: AtomicUsize,
    lock: Mutex<()>,
    drained: Condvar,
}

impl Default for RefCore {
    fn default() -> Self {
        Self::new()
    }
}

impl RefCore {
    pub fn new() -> RefCore {
        RefCore {
            state: AtomicUsize::new(0),
            lock: Mutex::new(()),
            drained: Condvar::new(),
        }
    }

    /// Take a reference unless the counter was killed.
    pub fn try_get(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            if cur & DEAD != 0 || cur & !DEAD == !DEAD {
                return false;
            }
            match self
                .state
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Drop a reference taken with [`RefCore::try_get`].
    pub fn put(&self) {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(prev & !DEAD != 0, "put without a reference");
        if prev & !DEAD == 1 && prev & DEAD != 0 {
            // The last reference of a killed counter: wake the waiter. Taking
            // the lock orders this after a waiter's check-then-wait.
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.drained.notify_all();
        }
    }

    /// Refuse new references from now on. Returns true for the first kill.
    pub fn kill(&self) -> bool {
        self.state.fetch_or(DEAD, Ordering::AcqRel) & DEAD == 0
    }

    pub fn is_dead(&self) -> bool {
        self.state.load(Ordering::Acquire) & DEAD != 0
    }

    /// References currently held.
    pub fn count(&self) -> usize {
        self.state.load(Ordering::Acquire) & !DEAD
    }

    /// After [`RefCore::kill`], wait until no reference is held. (Under
    /// loom, which models no clock, the wait has no timeout.)
    #[cfg(loom)]
    pub fn wait_drained(&self, _timeout: std::time::Duration) -> bool {
        let mut g = self.lock.lock().unwrap();
        while self.count() != 0 {
            g = self.drained.wait(g).unwrap();
        }
        true
    }

    /// After [`RefCore::kill`], wait until no reference is held or the
    /// timeout passes; true when drained.
    #[cfg(not(loom))]
    pub fn wait_drained(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.count() != 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.drained.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn kill_refuses_new_references_and_waits_for_old_ones() {
        let r = Arc::new(RefCore::new());
        assert!(r.try_get());
        assert!(r.try_get());
        assert!(r.kill());
        assert!(!r.kill(), "second kill is not the first");
        assert!(!r.try_get());
        assert_eq!(r.count(), 2);
        assert!(!r.wait_drained(Duration::from_millis(10)), "still held");
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            r2.put();
            r2.put();
        });
        assert!(r.wait_drained(Duration::from_secs(10)));
        assert_eq!(r.count(), 0);
        t.join().unwrap();
    }

    #[test]
    fn stress_many_threads() {
        let r = Arc::new(RefCore::new());
        let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let r = Arc::clone(&r);
                let taken = Arc::clone(&taken);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        if r.try_get() {
                            taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            r.put();
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(5));
        r.kill();
        assert!(r.wait_drained(Duration::from_secs(30)));
        // Once drained, nothing can come back.
        assert!(!r.try_get());
        assert_eq!(r.count(), 0);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(r.count(), 0);
    }
}
