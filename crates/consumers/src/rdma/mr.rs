//! RDMA memory regions: host memory (pinned pages, as `ib_umem_get`) or a
//! dma-buf of device memory (`ib_umem_dmabuf`).
//!
//! A dma-buf MR is one of two kinds, as the kernel's:
//!
//! * **dynamic** (`ib_umem_dmabuf_get` with a `move_notify`, what mlx5 does
//!   on NICs with on-demand paging): mapped at registration; when the
//!   exporter says the mapping is stale the MR drops it (the driver zaps
//!   the translation), and the NIC's next access faults and maps again
//!   (`ib_umem_dmabuf_map_pages`) — counted in [`MemoryRegion::remaps`].
//!   After a revoke the re-map fails, and so does the access.
//! * **pinned** (`ib_umem_dmabuf_get_pinned`, for NICs that cannot fault):
//!   pinned and mapped once; the exporter cannot move it, and a revoke
//!   ends it for good (the revocable pinned importer of recent kernels).
//!
//! The NIC reaches an MR's memory only through `MemoryRegion::access`,
//! which holds the MR's lock and the provider's DMA ticket for the length
//! of one DMA: an invalidation waits for that DMA and no DMA starts on a
//! stale mapping.

use crate::rdma::dmabuf::{Attachment, DmaBuf, DmaBufError, ImporterOps, Mapping};
use crate::rdma::lock;
use peerdma_dma::{BouncePolicy, DmaSgl, PathTaken};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, PhysVec};
use peerdma_p2p::Importer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Dynamic or pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MrKind {
    Dynamic,
    Pinned,
}

impl std::fmt::Display for MrKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MrKind::Dynamic => "dynamic",
            MrKind::Pinned => "pinned",
        })
    }
}

/// What the MR allows (`IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub local_write: bool,
    pub remote_write: bool,
    pub remote_read: bool,
}

impl Access {
    /// Everything: local write, remote write and remote read.
    pub const ALL: Access = Access {
        local_write: true,
        remote_write: true,
        remote_read: true,
    };
}

pub(crate) enum Source {
    DmaBuf {
        attach: Attachment,
        /// Offset of the MR in the buffer.
        offset: u64,
        kind: MrKind,
    },
    Host {
        node: u32,
    },
}

enum MrMap {
    DmaBuf(Mapping),
    Host(DmaSgl),
}

impl MrMap {
    fn sgl(&self) -> &DmaSgl {
        match self {
            MrMap::DmaBuf(m) => m.sgl(),
            MrMap::Host(s) => s,
        }
    }
}

struct MrState {
    map: Option<MrMap>,
    /// Why the MR can no longer be used, once it cannot.
    dead: Option<String>,
}

pub(crate) struct MrInner {
    pub(crate) nic: Bdf,
    pub(crate) key: u32,
    pub(crate) iova: u64,
    pub(crate) len: u64,
    pub(crate) access: Access,
    pub(crate) source: Source,
    state: Mutex<MrState>,
    remaps: AtomicU64,
    invalidations: AtomicU64,
    notifier: Mutex<Option<Arc<dyn Importer>>>,
}

impl MrInner {
    /// Run one DMA of `len` bytes at `va` of the MR: `dma` gets the DMA
    /// address pieces and moves the bytes, with the MR locked and the
    /// provider's in-flight ticket held. A dynamic MR whose mapping was
    /// invalidated maps again first.
    pub(crate) fn access<R, E>(
        &self,
        va: u64,
        len: u64,
        write: bool,
        remote: bool,
        dma: &mut DmaFn<'_, R, E>,
    ) -> Result<Result<R, E>, AccessError> {
        let m = self;
        let key = m.key;
        let off = va
            .checked_sub(m.iova)
            .filter(|o| o.checked_add(len).is_some_and(|e| e <= m.len))
            .ok_or(AccessError::Bounds {
                key,
                va,
                len,
                iova: m.iova,
                mr_len: m.len,
            })?;
        let allowed = match (remote, write) {
            (true, true) => m.access.remote_write,
            (true, false) => m.access.remote_read,
            (false, true) => m.access.local_write,
            (false, false) => true,
        };
        if !allowed {
            return Err(AccessError::Denied {
                key,
                what: match (remote, write) {
                    (true, true) => "remote write",
                    (true, false) => "remote read",
                    _ => "local write",
                },
            });
        }
        for _ in 0..2 {
            let st = lock(&m.state);
            if let Some(why) = &st.dead {
                return Err(AccessError::Dead {
                    key,
                    why: why.clone(),
                });
            }
            if let Some(map) = &st.map {
                let sgl = map.sgl();
                let base = match &m.source {
                    Source::DmaBuf { offset, .. } => *offset,
                    Source::Host { .. } => 0,
                };
                let pieces = translate(sgl, base + off, len);
                let reach = Reach {
                    path: sgl.path(),
                    provider: sgl.provider().map(|p| p.bdf()),
                    node: match (&m.source, map) {
                        (Source::Host { node, .. }, _) => Some(*node),
                        (_, MrMap::DmaBuf(mp)) => mp.node(),
                        _ => None,
                    },
                };
                let _ticket = match sgl.provider() {
                    Some(p) => Some(p.begin_dma().map_err(|e| AccessError::Dead {
                        key,
                        why: e.to_string(),
                    })?),
                    None => None,
                };
                return Ok(dma(&pieces, reach));
            }
            drop(st);
            // Invalidated: fault and map again (`ib_umem_dmabuf_map_pages`)
            // without holding the MR's lock, which the exporter's
            // invalidation takes while it holds the buffer's.
            let Source::DmaBuf { attach, .. } = &m.source else {
                return Err(AccessError::Dead {
                    key,
                    why: "its mapping is gone".into(),
                });
            };
            let new = attach
                .map(Direction::Bidirectional)
                .map_err(|source| AccessError::Remap { key, source })?;
            let mut st = lock(&m.state);
            if st.map.is_none() && st.dead.is_none() {
                st.map = Some(MrMap::DmaBuf(new));
                m.remaps.fetch_add(1, Ordering::AcqRel);
            }
        }
        Err(AccessError::Dead {
            key,
            why: "its mapping was invalidated again while it was being re-mapped".into(),
        })
    }

    /// The exporter says the mapping is stale: drop it (after the DMA in
    /// progress, whose lock we wait for). A pinned MR cannot come back.
    fn invalidate(&self, exporter: Bdf) {
        let mut st = lock(&self.state);
        st.map = None;
        self.invalidations.fetch_add(1, Ordering::AcqRel);
        if let Source::DmaBuf {
            kind: MrKind::Pinned,
            ..
        } = self.source
        {
            st.dead.get_or_insert_with(|| {
                format!("the pinned MR's dma-buf of {exporter} was revoked")
            });
        }
    }
}

/// What the NIC runs with an MR's DMA address pieces in hand.
pub(crate) type DmaFn<'f, R, E> = dyn FnMut(&[(DmaAddr, u64)], Reach) -> Result<R, E> + 'f;

/// Why the NIC could not reach an MR's memory.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AccessError {
    #[error("{len} bytes at {va:#x} are outside MR {key:#x} ({mr_len} bytes at {iova:#x})")]
    Bounds {
        key: u32,
        va: u64,
        len: u64,
        iova: u64,
        mr_len: u64,
    },
    #[error("MR {key:#x} does not allow {what}")]
    Denied { key: u32, what: &'static str },
    #[error("MR {key:#x} cannot be used: {why}")]
    Dead { key: u32, why: String },
    #[error("MR {key:#x}: re-mapping its dma-buf after an invalidation failed: {source}")]
    Remap {
        key: u32,
        #[source]
        source: DmaBufError,
    },
}

/// How a DMA reached an MR's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub path: PathTaken,
    /// Whose device memory, if any.
    pub provider: Option<Bdf>,
    /// The NUMA node, for host memory.
    pub node: Option<u32>,
}

/// A registered memory region. Dropping it deregisters it: the NIC forgets
/// its key, the mapping goes, the buffer is unpinned and detached.
pub struct MemoryRegion {
    pub(crate) inner: Arc<MrInner>,
    pub(crate) table: Weak<super::nic::MrTable>,
}

impl std::fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MemoryRegion({:#x} on {}, {} bytes at {:#x})",
            self.inner.key, self.inner.nic, self.inner.len, self.inner.iova
        )
    }
}

impl MemoryRegion {
    /// Register host memory `phys` (on NUMA node `node`) for `nic`.
    pub(crate) fn host(
        mapper: &peerdma_dma::Mapper,
        nic: Bdf,
        key: u32,
        iova: u64,
        phys: PhysVec,
        node: u32,
        access: Access,
    ) -> Result<MrInner, peerdma_dma::MapError> {
        let sgl = mapper.map(nic, &[phys], Direction::Bidirectional, BouncePolicy::Forbid)?;
        Ok(MrInner {
            nic,
            key,
            iova,
            len: phys.len(),
            access,
            source: Source::Host { node },
            state: Mutex::new(MrState {
                map: Some(MrMap::Host(sgl)),
                dead: None,
            }),
            remaps: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            notifier: Mutex::new(None),
        })
    }

    /// Register `len` bytes at `offset` of `buf` for `nic`, dynamic or
    /// pinned. A pair the kernel's verdict says cannot do P2P is refused
    /// here: both kinds map at registration.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dmabuf(
        nic: Bdf,
        key: u32,
        iova: u64,
        buf: &DmaBuf,
        offset: u64,
        len: u64,
        access: Access,
        kind: MrKind,
    ) -> Result<Arc<MrInner>, DmaBufError> {
        // The notifier must exist before the attachment, and the MR after
        // it: the notifier finds the MR through a slot filled in below.
        let slot: Arc<Mutex<Option<Weak<MrInner>>>> = Arc::new(Mutex::new(None));
        let notifier: Arc<dyn Importer> = Arc::new(LateNotifier(slot.clone()));
        let ops = match kind {
            MrKind::Dynamic => ImporterOps::Dynamic(notifier.clone()),
            MrKind::Pinned => ImporterOps::Pinned(notifier.clone()),
        };
        let attach = buf.attach(nic, true, ops)?;
        if kind == MrKind::Pinned {
            attach.pin()?;
        }
        let map = attach.map(Direction::Bidirectional)?;
        let mr = Arc::new(MrInner {
            nic,
            key,
            iova,
            len,
            access,
            source: Source::DmaBuf {
                attach,
                offset,
                kind,
            },
            state: Mutex::new(MrState {
                map: Some(MrMap::DmaBuf(map)),
                dead: None,
            }),
            remaps: AtomicU64::new(0),
            invalidations: AtomicU64::new(0),
            notifier: Mutex::new(Some(notifier)),
        });
        *lock(&slot) = Some(Arc::downgrade(&mr));
        Ok(mr)
    }

    pub fn key(&self) -> u32 {
        self.inner.key
    }
    /// The MR's start address (the virtual address a peer names).
    pub fn iova(&self) -> u64 {
        self.inner.iova
    }
    pub fn len(&self) -> u64 {
        self.inner.len
    }
    pub fn is_empty(&self) -> bool {
        self.inner.len == 0
    }
    pub fn nic(&self) -> Bdf {
        self.inner.nic
    }
    /// Dynamic or pinned, for a dma-buf MR.
    pub fn kind(&self) -> Option<MrKind> {
        match &self.inner.source {
            Source::DmaBuf { kind, .. } => Some(*kind),
            Source::Host { .. } => None,
        }
    }
    /// Times the MR mapped its dma-buf again after an invalidation.
    pub fn remaps(&self) -> u64 {
        self.inner.remaps.load(Ordering::Acquire)
    }
    /// Invalidations the exporter sent.
    pub fn invalidations(&self) -> u64 {
        self.inner.invalidations.load(Ordering::Acquire)
    }
    /// Whether a mapping is in place now.
    pub fn is_mapped(&self) -> bool {
        lock(&self.inner.state).map.is_some()
    }
    /// Why the MR cannot be used any more, if so.
    pub fn dead(&self) -> Option<String> {
        lock(&self.inner.state).dead.clone()
    }
    /// The dma-buf behind the MR, if any.
    pub fn buffer(&self) -> Option<&DmaBuf> {
        match &self.inner.source {
            Source::DmaBuf { attach, .. } => Some(attach.dmabuf()),
            Source::Host { .. } => None,
        }
    }

    /// Drop the mapping, unpin and detach now (what dropping does).
    pub fn deregister(self) {
        drop(self)
    }
}

/// The MR as the dma-buf's importer (built before the MR, see
/// [`MemoryRegion::dmabuf`]).
struct LateNotifier(Arc<Mutex<Option<Weak<MrInner>>>>);

impl Importer for LateNotifier {
    fn name(&self) -> String {
        match lock(&self.0).as_ref().and_then(Weak::upgrade) {
            Some(m) => format!("MR {:#x} of {}", m.key, m.nic),
            None => "an MR being registered".into(),
        }
    }
    fn move_notify(&self, exporter: Bdf) {
        let m = lock(&self.0).as_ref().and_then(Weak::upgrade);
        if let Some(m) = m {
            m.invalidate(exporter);
        }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        if let Some(t) = self.table.upgrade() {
            t.remove(self.inner.key);
        }
        let mut st = lock(&self.inner.state);
        st.map = None;
        st.dead.get_or_insert_with(|| "deregistered".into());
        drop(st);
        if let Source::DmaBuf { attach, .. } = &self.inner.source {
            attach.unpin();
        }
        lock(&self.inner.notifier).take();
    }
}

/// The DMA address pieces of `[off, off + len)` of a list.
fn translate(sgl: &DmaSgl, off: u64, len: u64) -> Vec<(DmaAddr, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let end = off + len;
    for e in sgl.entries() {
        let (s, t) = (pos, pos + e.len);
        pos = t;
        if t <= off || s >= end {
            continue;
        }
        let a = off.max(s) - s;
        let b = end.min(t) - s;
        if let Some(addr) = e.addr.checked_add(a) {
            out.push((addr, b - a));
        }
    }
    out
}
