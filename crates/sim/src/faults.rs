//! Faults on demand: queued with a byte threshold, fired by the DMA engine
//! as it moves data, and checked by the fabric on every piece it routes.

use crate::error::DmaError;
use peerdma_mem::Bdf;
use peerdma_p2p::{Provider, RevokeError, RevokeReport};
use peerdma_pci::{FnId, Topology};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// A fault to inject with [`crate::SimMachine::inject`].
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The link between `below` and its upstream port goes down once
    /// `after` bytes of the next DMA have moved.
    LinkDown { below: Bdf, after: u64 },
    /// `device` (and everything below it) disappears once `after` bytes
    /// have moved.
    Remove { device: Bdf, after: u64 },
    /// The IOMMU faults `device`'s next access after `after` bytes.
    IommuFault { device: Bdf, after: u64 },
    /// Revoke `provider` (on another thread) once `after` bytes have moved.
    Revoke { provider: Bdf, after: u64 },
}

impl Fault {
    /// The device the fault is about.
    pub fn device(&self) -> Bdf {
        match self {
            Fault::LinkDown { below: d, .. }
            | Fault::Remove { device: d, .. }
            | Fault::IommuFault { device: d, .. }
            | Fault::Revoke { provider: d, .. } => *d,
        }
    }

    /// Bytes of a DMA after which it fires.
    pub fn after(&self) -> u64 {
        match self {
            Fault::LinkDown { after, .. }
            | Fault::Remove { after, .. }
            | Fault::IommuFault { after, .. }
            | Fault::Revoke { after, .. } => *after,
        }
    }
}

/// How a revoke started by [`Fault::Revoke`] ended.
#[derive(Debug)]
pub struct RevokeOutcome {
    pub provider: Bdf,
    pub result: Result<RevokeReport, RevokeError>,
}

/// How long a fault-started revoke waits for DMA and references to drain.
const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    pending: Vec<Fault>,
    links_down: HashSet<FnId>,
    removed: HashSet<FnId>,
    iommu_fault: HashSet<Bdf>,
    revokes: Vec<(Bdf, JoinHandle<Result<RevokeReport, RevokeError>>)>,
}

impl State {
    /// Nothing queued and nothing in effect.
    fn quiet(&self) -> bool {
        self.pending.is_empty()
            && self.links_down.is_empty()
            && self.removed.is_empty()
            && self.iommu_fault.is_empty()
    }
}

/// The machine's fault state.
pub(crate) struct Faults {
    state: Mutex<State>,
    /// [`State::quiet`], kept up to date under the lock and read without
    /// it: while it holds, routes do not change with faults, and the DMA
    /// engine may reuse them.
    quiet: AtomicBool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            state: Mutex::new(State::default()),
            quiet: AtomicBool::new(true),
        }
    }
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether no fault is queued or in effect.
    pub(crate) fn quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    fn update_quiet(&self, s: &State) {
        self.quiet.store(s.quiet(), Ordering::Release);
    }

    /// Queue a fault (its device was checked by the caller).
    pub(crate) fn queue(&self, fault: Fault) {
        let mut s = self.lock();
        s.pending.push(fault);
        self.update_quiet(&s);
    }

    /// Clear every fault and everything queued.
    pub(crate) fn heal(&self) {
        let mut s = self.lock();
        s.links_down.clear();
        s.removed.clear();
        s.iommu_fault.clear();
        s.pending.clear();
        self.update_quiet(&s);
    }

    /// The nearest byte, past `done`, at which a queued fault fires.
    pub(crate) fn next_threshold(&self, done: u64) -> Option<u64> {
        self.lock()
            .pending
            .iter()
            .map(Fault::after)
            .filter(|&a| a > done)
            .min()
    }

    /// Fire the queued faults whose threshold `done` has reached.
    pub(crate) fn fire(
        &self,
        topo: &Topology,
        lookup: &dyn Fn(Bdf) -> Option<Provider>,
        done: u64,
    ) {
        let mut s = self.lock();
        if s.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut s.pending);
        for f in pending {
            if done < f.after() {
                s.pending.push(f);
                continue;
            }
            match f {
                Fault::LinkDown { below, .. } => {
                    if let Some(id) = topo.find(below) {
                        s.links_down.insert(id);
                    }
                }
                Fault::Remove { device, .. } => {
                    if let Some(id) = topo.find(device) {
                        s.removed.insert(id);
                    }
                }
                Fault::IommuFault { device, .. } => {
                    s.iommu_fault.insert(device);
                }
                Fault::Revoke { provider, .. } => {
                    if let Some(p) = lookup(provider) {
                        let q = p.clone();
                        let h = std::thread::spawn(move || q.revoke(REVOKE_TIMEOUT));
                        // Revocation starts at this byte, as a driver's
                        // revoke would: wait until the provider refuses new
                        // references and DMA (it then waits on its own
                        // thread for what is in flight to drain).
                        let t0 = std::time::Instant::now();
                        while (p.state() == peerdma_p2p::ProviderState::Live || p.published())
                            && !h.is_finished()
                            && t0.elapsed() < std::time::Duration::from_secs(1)
                        {
                            std::thread::yield_now();
                        }
                        s.revokes.push((provider, h));
                    }
                }
            }
        }
        self.update_quiet(&s);
    }

    /// Whether `f` or a bridge above it was removed.
    pub(crate) fn is_removed(&self, topo: &Topology, f: FnId) -> bool {
        let s = self.lock();
        std::iter::once(f)
            .chain(topo.ancestors(f))
            .any(|x| s.removed.contains(&x))
    }

    /// An error if a function on `path` was removed or the link above it
    /// is down.
    pub(crate) fn check_path(
        &self,
        topo: &Topology,
        path: &[FnId],
        done: u64,
    ) -> Result<(), DmaError> {
        let s = self.lock();
        for &n in path {
            if s.removed.contains(&n) {
                return Err(DmaError::Removed {
                    device: topo.function(n).bdf,
                    done,
                });
            }
            if s.links_down.contains(&n) {
                return Err(DmaError::LinkDown {
                    below: topo.function(n).bdf,
                    done,
                });
            }
        }
        Ok(())
    }

    /// Whether an IOMMU fault was injected for `device`.
    pub(crate) fn iommu_fault(&self, device: Bdf) -> bool {
        self.lock().iommu_fault.contains(&device)
    }

    /// Wait for the revokes started so far.
    pub(crate) fn join_revokes(&self) -> Vec<RevokeOutcome> {
        let handles = std::mem::take(&mut self.lock().revokes);
        handles
            .into_iter()
            .map(|(provider, h)| RevokeOutcome {
                provider,
                // A panic in the revoke protocol is a bug there: pass it on.
                result: h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            })
            .collect()
    }
}
