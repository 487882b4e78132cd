//! P2P memory providers: a BAR range published for peer-to-peer DMA (the
//! kernel's `pci_p2pdma_add_resource` + `pci_p2pmem_publish`), its pool, the
//! guards that keep it alive, and revocation as a protocol.
//!
//! Lifetime rules (DESIGN.md rule 5): an [`Allocation`] or a mapping holds a
//! live reference ([`ProviderRef`]); a DMA in flight holds a [`DmaTicket`].
//! [`Provider::revoke`] refuses new references, maps and DMAs, notifies every
//! importer ([`Importer::move_notify`]), waits for in-flight DMA to drain and
//! for references to be dropped, and only then frees the pool.

use crate::refcore::RefCore;
use peerdma_mem::{
    AddrRange, Address, Bdf, BusAddr, BusOffset, MemKind, PhysAddr, PhysVec, RangeAllocator,
    PAGE_SIZE,
};
use peerdma_pci::Function;
use serde::Serialize;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Errors of providers and their pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum P2pError {
    /// `pci_p2pdma_add_resource` refused the BAR range.
    BadResource { bdf: Bdf, bar: u8, why: String },
    /// The pool has no free range that large.
    OutOfMemory {
        bdf: Bdf,
        asked: u64,
        available: u64,
    },
    /// The provider is being (or was) revoked.
    Revoked { bdf: Bdf },
}

impl fmt::Display for P2pError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P2pError::BadResource { bdf, bar, why } => write!(f, "{bdf} BAR {bar} cannot provide P2P memory: {why}"),
            P2pError::OutOfMemory { bdf, asked, available } => write!(
                f,
                "P2P memory of {bdf}: no free range of {asked} bytes ({available} bytes free, maybe fragmented)"
            ),
            P2pError::Revoked { bdf } => write!(f, "P2P memory of {bdf} is revoked: no new allocations, maps or DMA"),
        }
    }
}

impl std::error::Error for P2pError {}

/// Why a revoke did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeError {
    /// DMA still in flight when the timeout passed.
    DmaInFlight { bdf: Bdf, in_flight: usize },
    /// Allocations or mappings still held when the timeout passed.
    StillReferenced {
        bdf: Bdf,
        references: usize,
        importers: Vec<String>,
    },
}

impl fmt::Display for RevokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevokeError::DmaInFlight { bdf, in_flight } => write!(
                f,
                "revoke of {bdf} timed out with {in_flight} DMA(s) in flight; nothing was freed, retry revoke to keep waiting"
            ),
            RevokeError::StillReferenced { bdf, references, importers } => {
                write!(f, "revoke of {bdf} timed out with {references} allocation(s)/mapping(s) still held")?;
                if !importers.is_empty() {
                    write!(f, " (importers notified: {})", importers.join(", "))?;
                }
                write!(f, "; nothing was freed, retry revoke to keep waiting")
            }
        }
    }
}

impl std::error::Error for RevokeError {}

/// Someone who maps or uses a provider's memory and must let go when it is
/// revoked (a dma-buf importer, an RDMA memory region, a block request).
pub trait Importer: Send + Sync {
    /// A name for messages.
    fn name(&self) -> String;
    /// The provider's memory is going away: stop new DMA, drop mappings and
    /// allocations as soon as in-flight DMA completes.
    fn move_notify(&self, provider: Bdf);
}

/// Where a provider is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderState {
    Live,
    Revoking,
    Revoked,
}

/// What a finished revoke did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RevokeReport {
    pub importers_notified: usize,
    pub waited: Duration,
}

struct Inner {
    bdf: Bdf,
    bar: u8,
    range: AddrRange<PhysAddr>,
    bus_offset: BusOffset,
    pool: Mutex<Option<RangeAllocator>>,
    published: Mutex<bool>,
    refs: RefCore,
    in_flight: RefCore,
    importers: Mutex<Vec<(u64, Weak<dyn Importer>)>>,
    next_importer: Mutex<u64>,
    state: Mutex<ProviderState>,
}

/// A provider of P2P memory. Cloning shares it.
#[derive(Clone)]
pub struct Provider(Arc<Inner>);

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Provider({} BAR {} {:?})",
            self.0.bdf, self.0.bar, self.0.range
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Provider {
    /// Publish `[offset, offset + size)` of BAR `bar` of `f` (size 0 means
    /// the rest of the BAR), with the checks of `pci_p2pdma_add_resource`.
    pub fn from_function(
        f: &Function,
        bar: u8,
        size: u64,
        offset: u64,
    ) -> Result<Provider, P2pError> {
        let bad = |why: String| P2pError::BadResource {
            bdf: f.bdf,
            bar,
            why,
        };
        let b = f
            .bars
            .iter()
            .find(|b| b.index == bar)
            .ok_or_else(|| bad("no such BAR".into()))?;
        if b.io {
            return Err(bad("an I/O BAR is not memory".into()));
        }
        let len = b.phys.len();
        if offset >= len {
            return Err(bad(format!(
                "offset {offset:#x} is beyond the {len:#x}-byte BAR"
            )));
        }
        let size = if size == 0 { len - offset } else { size };
        if size.checked_add(offset).is_none_or(|e| e > len) {
            return Err(bad(format!(
                "{size:#x} bytes at offset {offset:#x} do not fit the {len:#x}-byte BAR"
            )));
        }
        let range = b
            .phys
            .sub(offset, size)
            .ok_or_else(|| bad("empty range".into()))?;
        Provider::new(f.bdf, bar, range, b.bus_offset())
    }

    /// A provider over `range` (CPU physical) whose bus addresses are
    /// `phys + bus_offset`.
    pub fn new(
        bdf: Bdf,
        bar: u8,
        range: AddrRange<PhysAddr>,
        bus_offset: BusOffset,
    ) -> Result<Provider, P2pError> {
        // The pool hands out whole pages, as gen_pool with PAGE_SHIFT does;
        // a partial page at either end is not used.
        // A range ending at 2^64 loses its last page (its end is not a u64).
        let end = range
            .end()
            .map_or(!(PAGE_SIZE - 1), |e| e.raw() / PAGE_SIZE * PAGE_SIZE);
        let start = range.start().align_up(PAGE_SIZE).map_or(end, |s| s.raw());
        if end <= start {
            return Err(P2pError::BadResource {
                bdf,
                bar,
                why: "smaller than a page".into(),
            });
        }
        bus_offset
            .to_bus(range.start())
            .and(bus_offset.to_bus(range.last()))
            .ok_or_else(|| P2pError::BadResource {
                bdf,
                bar,
                why: format!("bus offset {bus_offset} moves the range out of the address space"),
            })?;
        let pool = RangeAllocator::new(start, end - start, PAGE_SIZE).map_err(|e| {
            P2pError::BadResource {
                bdf,
                bar,
                why: e.to_string(),
            }
        })?;
        Ok(Provider(Arc::new(Inner {
            bdf,
            bar,
            range,
            bus_offset,
            pool: Mutex::new(Some(pool)),
            published: Mutex::new(false),
            refs: RefCore::new(),
            in_flight: RefCore::new(),
            importers: Mutex::new(Vec::new()),
            next_importer: Mutex::new(0),
            state: Mutex::new(ProviderState::Live),
        })))
    }

    pub fn bdf(&self) -> Bdf {
        self.0.bdf
    }
    pub fn bar(&self) -> u8 {
        self.0.bar
    }
    pub fn range(&self) -> AddrRange<PhysAddr> {
        self.0.range
    }
    pub fn bus_offset(&self) -> BusOffset {
        self.0.bus_offset
    }
    /// The bus address of a physical address inside this provider.
    pub fn bus_addr(&self, phys: PhysAddr) -> Option<BusAddr> {
        self.0
            .range
            .contains(phys)
            .then(|| self.0.bus_offset.to_bus(phys))
            .flatten()
    }
    /// `pci_p2pmem_publish`.
    pub fn publish(&self, on: bool) {
        *lock(&self.0.published) = on;
    }
    /// `p2pmem/published`.
    pub fn published(&self) -> bool {
        *lock(&self.0.published)
    }
    /// `p2pmem/size`.
    pub fn size(&self) -> u64 {
        lock(&self.0.pool).as_ref().map_or(0, |p| p.size())
    }
    /// `p2pmem/available`.
    pub fn available(&self) -> u64 {
        lock(&self.0.pool).as_ref().map_or(0, |p| p.available())
    }
    pub fn state(&self) -> ProviderState {
        *lock(&self.0.state)
    }
    /// Live references (allocations and mappings).
    pub fn references(&self) -> usize {
        self.0.refs.count()
    }
    /// DMAs in flight.
    pub fn dma_in_flight(&self) -> usize {
        self.0.in_flight.count()
    }
    pub fn same(&self, other: &Provider) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A live reference, refused once revocation started.
    pub fn try_ref(&self) -> Result<ProviderRef, P2pError> {
        if self.0.refs.try_get() {
            Ok(ProviderRef(self.clone()))
        } else {
            Err(P2pError::Revoked { bdf: self.0.bdf })
        }
    }

    /// Allocate `len` bytes, page-granular (`pci_alloc_p2pmem`).
    pub fn alloc(&self, len: u64) -> Result<Allocation, P2pError> {
        self.alloc_aligned(len, PAGE_SIZE)
    }

    /// Allocate `len` bytes aligned to `align` (a power of two).
    pub fn alloc_aligned(&self, len: u64, align: u64) -> Result<Allocation, P2pError> {
        let r = self.try_ref()?;
        let mut pool = lock(&self.0.pool);
        let Some(p) = pool.as_mut() else {
            return Err(P2pError::Revoked { bdf: self.0.bdf });
        };
        let len = p.round(len.max(1)).unwrap_or(u64::MAX);
        let start = p.alloc(len, align).ok_or(P2pError::OutOfMemory {
            bdf: self.0.bdf,
            asked: len,
            available: p.available(),
        })?;
        drop(pool);
        Ok(Allocation {
            r,
            start: PhysAddr::new(start),
            len,
        })
    }

    /// Register someone to notify on revoke; unregistered when the handle
    /// is dropped or the importer itself is gone.
    pub fn register_importer(&self, imp: &Arc<dyn Importer>) -> ImporterHandle {
        let mut n = lock(&self.0.next_importer);
        *n += 1;
        let id = *n;
        lock(&self.0.importers).push((id, Arc::downgrade(imp)));
        ImporterHandle {
            provider: Arc::downgrade(&self.0),
            id,
        }
    }

    /// Start a DMA against this provider's memory; refused once revocation
    /// started. Drop the ticket when the DMA completes.
    pub fn begin_dma(&self) -> Result<DmaTicket, P2pError> {
        if self.0.in_flight.try_get() {
            Ok(DmaTicket(self.clone()))
        } else {
            Err(P2pError::Revoked { bdf: self.0.bdf })
        }
    }

    /// Revoke: refuse new references, maps and DMA; notify importers; wait
    /// up to `timeout` for DMA to drain and references to drop; then free.
    /// On timeout nothing is freed and the provider stays revoking; call
    /// again to keep waiting.
    pub fn revoke(&self, timeout: Duration) -> Result<RevokeReport, RevokeError> {
        let t0 = Instant::now();
        let first = {
            let mut st = lock(&self.0.state);
            if *st == ProviderState::Revoked {
                return Ok(RevokeReport {
                    importers_notified: 0,
                    waited: Duration::ZERO,
                });
            }
            let first = *st == ProviderState::Live;
            *st = ProviderState::Revoking;
            first
        };
        self.0.in_flight.kill();
        self.0.refs.kill();
        *lock(&self.0.published) = false;
        // Notify outside any lock: importers call back into the provider
        // (dropping allocations) from move_notify.
        let importers: Vec<Arc<dyn Importer>> = if first {
            lock(&self.0.importers)
                .iter()
                .filter_map(|(_, w)| w.upgrade())
                .collect()
        } else {
            Vec::new()
        };
        for imp in &importers {
            imp.move_notify(self.0.bdf);
        }
        let deadline = t0 + timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        if !self.0.in_flight.wait_drained(left()) {
            return Err(RevokeError::DmaInFlight {
                bdf: self.0.bdf,
                in_flight: self.0.in_flight.count(),
            });
        }
        if !self.0.refs.wait_drained(left()) {
            return Err(RevokeError::StillReferenced {
                bdf: self.0.bdf,
                references: self.0.refs.count(),
                importers: lock(&self.0.importers)
                    .iter()
                    .filter_map(|(_, w)| w.upgrade())
                    .map(|i| i.name())
                    .collect(),
            });
        }
        *lock(&self.0.pool) = None;
        *lock(&self.0.state) = ProviderState::Revoked;
        Ok(RevokeReport {
            importers_notified: importers.len(),
            waited: t0.elapsed(),
        })
    }
}

/// A live reference to a provider: while it exists the memory is not freed.
#[derive(Debug)]
pub struct ProviderRef(Provider);

impl ProviderRef {
    pub fn provider(&self) -> &Provider {
        &self.0
    }
    /// Another reference (refused once revocation started).
    pub fn try_clone(&self) -> Result<ProviderRef, P2pError> {
        self.0.try_ref()
    }
}

impl Drop for ProviderRef {
    fn drop(&mut self) {
        self.0 .0.refs.put();
    }
}

/// A DMA in flight against a provider's memory.
#[derive(Debug)]
pub struct DmaTicket(Provider);

impl Drop for DmaTicket {
    fn drop(&mut self) {
        self.0 .0.in_flight.put();
    }
}

/// A range of P2P memory. It keeps the provider alive and returns the range
/// to the pool when dropped.
#[derive(Debug)]
pub struct Allocation {
    r: ProviderRef,
    start: PhysAddr,
    len: u64,
}

impl Allocation {
    pub fn provider(&self) -> &Provider {
        self.r.provider()
    }
    /// The range as a physical vector of P2P kind (what mapping takes).
    pub fn phys(&self) -> PhysVec {
        PhysVec::new(
            self.start,
            self.len,
            MemKind::P2p {
                provider: self.provider().bdf(),
            },
        )
        .expect("an allocation is a non-empty range inside its BAR")
    }
    pub fn phys_addr(&self) -> PhysAddr {
        self.start
    }
    /// The bus address a peer uses (`pci_p2pmem_virt_to_bus`).
    pub fn bus_addr(&self) -> BusAddr {
        self.provider()
            .bus_addr(self.start)
            .expect("the provider checked its bus offset at creation")
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Offset of this allocation inside its BAR.
    pub fn bar_offset(&self) -> u64 {
        self.start.raw() - self.provider().range().start().raw()
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        if let Some(p) = lock(&self.r.0 .0.pool).as_mut() {
            // Cannot fail: the range came from this pool and is freed once.
            let _ = p.free(self.start.raw(), self.len);
        }
    }
}

/// Registration of an importer; dropping it unregisters.
#[derive(Debug)]
pub struct ImporterHandle {
    provider: Weak<Inner>,
    id: u64,
}

impl Drop for ImporterHandle {
    fn drop(&mut self) {
        if let Some(p) = self.provider.upgrade() {
            lock(&p.importers).retain(|(i, w)| *i != self.id && w.strong_count() > 0);
        }
    }
}
