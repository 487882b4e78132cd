//! A dma-buf exporter over a GPU's device memory, and its importers.
//!
//! The semantics are the kernel's (`drivers/dma-buf/dma-buf.c`,
//! `dma-buf-mapping.c`, and VFIO's dma-buf exporter), carried over:
//!
//! * An importer attaches its device ([`DmaBuf::attach`]). The exporter
//!   hands out device memory only, so an importer that does not allow
//!   peer-to-peer (`allow_peer2peer`) is refused (`EOPNOTSUPP`), and so is
//!   one without an invalidation callback: device memory can always be
//!   revoked (an FLR, a driver unbind, a surprise removal), and an importer
//!   that cannot be told would keep DMAing into it (the kernel's
//!   `dma_buf_attach_revocable`). A revoked buffer refuses attachments
//!   (`ENODEV`).
//! * Mapping an attachment ([`Attachment::map`]) asks the kernel's verdict
//!   for the pair (exporter's provider, importer's device), as
//!   `dma_buf_phys_vec_to_sgt` does: by bus address (no IOVA), through the
//!   host bridge (mapped by the mapping layer, through the IOMMU when one
//!   translates), or not supported — an error naming the pair and why
//!   (`EINVAL` there; there is no bounce on this path).
//! * A dynamic importer can be told at any time that its mapping is stale
//!   (`move_notify`, now `invalidate_mappings`): it must stop using it and
//!   map again before its next access. The exporter tells it when it moves
//!   the buffer ([`DmaBuf::migrate`]: to other device memory, or evicted
//!   to host memory).
//! * An importer can pin the buffer ([`Attachment::pin`], `dma_buf_pin`):
//!   a pinned buffer is not moved. The exporter may refuse to pin (VFIO's
//!   does, `EOPNOTSUPP`).
//! * Revocation ([`DmaBuf::revoke`], and the provider's own revoke, which
//!   reaches the buffer as an importer of the provider): new attachments
//!   and maps fail from then on, every importer — pinned ones too — is
//!   told to stop, and the buffer's memory is let go only once every
//!   mapping was unmapped (VFIO waits for that too).
//!
//! The importer callback is [`peerdma_p2p::Importer`], the same protocol a
//! provider uses to tell its own importers.

use crate::rdma::lock;
use peerdma_dma::{BouncePolicy, DmaSgl, MapError, Mapper, PathTaken};
use peerdma_mem::{Address, Bdf, Direction, PhysVec};
use peerdma_p2p::refcore::RefCore;
use peerdma_p2p::{Allocation, Importer, ImporterHandle, Provider};
use peerdma_sim::{HostBuffer, SimMachine};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why a dma-buf operation was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DmaBufError {
    #[error("EOPNOTSUPP: {importer} did not allow peer-to-peer, and the dma-buf of {exporter} is device memory only")]
    NoPeer2Peer { exporter: Bdf, importer: Bdf },
    #[error("EOPNOTSUPP: {importer} has no invalidation callback, and the dma-buf of {exporter} can be revoked at any time (device memory)")]
    NotRevocable { exporter: Bdf, importer: Bdf },
    #[error("ENODEV: the dma-buf of {exporter} is revoked: {what} refused")]
    Revoked { exporter: Bdf, what: &'static str },
    #[error(
        "EINVAL: {importer} cannot reach the memory of {exporter} by peer-to-peer DMA: {reason}"
    )]
    NotSupported {
        exporter: Bdf,
        importer: Bdf,
        reason: String,
    },
    #[error("EOPNOTSUPP: the exporter of {exporter}'s dma-buf does not allow pinning")]
    PinRefused { exporter: Bdf },
    #[error("EBUSY: the dma-buf of {exporter} is pinned by {pins} importer(s) and cannot move")]
    Pinned { exporter: Bdf, pins: usize },
    #[error("ENOMEM: mapping the dma-buf of {exporter} for {importer} failed: {source}")]
    Map {
        exporter: Bdf,
        importer: Bdf,
        #[source]
        source: MapError,
    },
    #[error("ENOMEM: {0}")]
    Memory(String),
    #[error("the revoke of {exporter}'s dma-buf timed out with {mappings} mapping(s) still held; nothing was freed")]
    RevokeTimeout { exporter: Bdf, mappings: usize },
}

impl DmaBufError {
    /// The errno a caller in the kernel would see.
    pub fn errno(&self) -> &'static str {
        match self {
            DmaBufError::NoPeer2Peer { .. }
            | DmaBufError::NotRevocable { .. }
            | DmaBufError::PinRefused { .. } => "EOPNOTSUPP",
            DmaBufError::Revoked { .. } => "ENODEV",
            DmaBufError::NotSupported { .. } => "EINVAL",
            DmaBufError::Pinned { .. } => "EBUSY",
            DmaBufError::Map { .. } | DmaBufError::Memory(_) => "ENOMEM",
            DmaBufError::RevokeTimeout { .. } => "ETIMEDOUT",
        }
    }
}

/// Where a dma-buf's bytes live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The exporting device's memory.
    Device,
    /// Host memory of a NUMA node (the exporter evicted the buffer).
    Host { node: u32 },
}

enum Backing {
    Device(Allocation),
    Host(HostBuffer),
}

impl Backing {
    fn phys(&self) -> PhysVec {
        match self {
            Backing::Device(a) => a.phys(),
            Backing::Host(h) => h.phys(),
        }
    }
}

/// How an importer attaches.
#[derive(Clone)]
pub enum ImporterOps {
    /// A dynamic importer: told (`move_notify`) when its mapping is stale;
    /// it maps again before its next access.
    Dynamic(Arc<dyn Importer>),
    /// An importer that will pin the buffer; told only when the buffer is
    /// revoked, and then it must stop for good.
    Pinned(Arc<dyn Importer>),
    /// No invalidation callback (`dma_buf_attach` without importer ops).
    Static,
}

struct AttachInfo {
    id: u64,
    ops: Option<Weak<dyn Importer>>,
    dynamic: bool,
    pinned: bool,
}

/// The exporter's state, under one lock: the kernel's reservation lock
/// (`dma_resv`) of the buffer.
struct State {
    backing: Option<Backing>,
    revoked: bool,
    pins: usize,
    attachments: Vec<AttachInfo>,
    next_id: u64,
}

struct Inner {
    exporter: Bdf,
    provider: Provider,
    mapper: Mapper,
    size: u64,
    /// Where the buffer was exported (device memory), for checks after
    /// the fact.
    exported: PhysVec,
    pinnable: bool,
    state: Mutex<State>,
    /// Live mappings, over every attachment: a revoke waits for them.
    mappings: RefCore,
    attachments: AtomicUsize,
    moves: AtomicU64,
    hook: Mutex<Option<(Arc<dyn Importer>, ImporterHandle)>>,
}

/// A dma-buf of device memory. Cloning shares it (another file reference).
#[derive(Clone)]
pub struct DmaBuf(Arc<Inner>);

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DmaBuf({} {} bytes)", self.0.exporter, self.0.size)
    }
}

/// The buffer as an importer of its provider: a revoke of the whole
/// device memory revokes the buffer.
struct ProviderHook(Weak<Inner>);

impl Importer for ProviderHook {
    fn name(&self) -> String {
        match self.0.upgrade() {
            Some(i) => format!("dma-buf of {} ({} bytes)", i.exporter, i.size),
            None => "a released dma-buf".into(),
        }
    }
    fn move_notify(&self, _provider: Bdf) {
        if let Some(i) = self.0.upgrade() {
            // The provider waits for the mappings itself (they hold its
            // references), so here the buffer only stops and tells.
            DmaBuf(i).invalidate_for_revoke();
        }
    }
}

/// What a finished revoke did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmaBufRevoke {
    pub importers_notified: usize,
    pub waited: Duration,
}

impl DmaBuf {
    /// Export `len` bytes of device memory of `provider` (a GPU's VRAM
    /// aperture) as a dma-buf that importers on `mapper`'s machine can map.
    /// `pinnable`: whether the exporter lets importers pin it.
    pub fn export(
        mapper: &Mapper,
        provider: &Provider,
        len: u64,
        pinnable: bool,
    ) -> Result<DmaBuf, DmaBufError> {
        let alloc = provider
            .alloc(len)
            .map_err(|e| DmaBufError::Memory(e.to_string()))?;
        let exported = alloc.phys();
        let inner = Arc::new(Inner {
            exporter: provider.bdf(),
            provider: provider.clone(),
            mapper: mapper.clone(),
            size: len,
            exported,
            pinnable,
            state: Mutex::new(State {
                backing: Some(Backing::Device(alloc)),
                revoked: false,
                pins: 0,
                attachments: Vec::new(),
                next_id: 0,
            }),
            mappings: RefCore::new(),
            attachments: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            hook: Mutex::new(None),
        });
        let hook: Arc<dyn Importer> = Arc::new(ProviderHook(Arc::downgrade(&inner)));
        let handle = provider.register_importer(&hook);
        *lock(&inner.hook) = Some((hook, handle));
        Ok(DmaBuf(inner))
    }

    /// The exporting device.
    pub fn exporter(&self) -> Bdf {
        self.0.exporter
    }
    pub fn provider(&self) -> &Provider {
        &self.0.provider
    }
    /// Bytes of the buffer (the importer sees `len` bytes; the memory
    /// behind it is page-granular).
    pub fn size(&self) -> u64 {
        self.0.size
    }
    /// Where the buffer's bytes are now, or `None` once revoked.
    pub fn placement(&self) -> Option<Placement> {
        lock(&self.0.state).backing.as_ref().map(|b| match b {
            Backing::Device(_) => Placement::Device,
            Backing::Host(h) => Placement::Host { node: h.node() },
        })
    }
    /// The physical range the bytes are in now, or `None` once revoked.
    pub fn phys(&self) -> Option<PhysVec> {
        lock(&self.0.state).backing.as_ref().map(Backing::phys)
    }
    /// The device memory the buffer was exported from (still readable by
    /// the simulated CPU after a revoke, to check what was left there).
    pub fn exported_phys(&self) -> PhysVec {
        self.0.exported
    }
    pub fn is_revoked(&self) -> bool {
        lock(&self.0.state).revoked
    }
    /// Attachments not yet detached.
    pub fn attachments(&self) -> usize {
        self.0.attachments.load(Ordering::Acquire)
    }
    /// Mappings not yet unmapped.
    pub fn mappings(&self) -> usize {
        self.0.mappings.count()
    }
    /// Pins held.
    pub fn pins(&self) -> usize {
        lock(&self.0.state).pins
    }
    /// Times the exporter moved the buffer.
    pub fn moves(&self) -> u64 {
        self.0.moves.load(Ordering::Acquire)
    }

    /// Attach `dev` as an importer (`dma_buf_dynamic_attach`).
    pub fn attach(
        &self,
        dev: Bdf,
        peer2peer: bool,
        ops: ImporterOps,
    ) -> Result<Attachment, DmaBufError> {
        let exporter = self.0.exporter;
        if !peer2peer {
            return Err(DmaBufError::NoPeer2Peer {
                exporter,
                importer: dev,
            });
        }
        let (cb, dynamic) = match &ops {
            ImporterOps::Dynamic(i) => (Arc::downgrade(i), true),
            ImporterOps::Pinned(i) => (Arc::downgrade(i), false),
            ImporterOps::Static => {
                return Err(DmaBufError::NotRevocable {
                    exporter,
                    importer: dev,
                })
            }
        };
        let mut st = lock(&self.0.state);
        if st.revoked {
            return Err(DmaBufError::Revoked {
                exporter,
                what: "attach",
            });
        }
        st.next_id += 1;
        let id = st.next_id;
        st.attachments.push(AttachInfo {
            id,
            ops: Some(cb),
            dynamic,
            pinned: false,
        });
        self.0.attachments.fetch_add(1, Ordering::AcqRel);
        Ok(Attachment {
            buf: self.clone(),
            id,
            dev,
        })
    }

    /// The exporter moves the buffer (`to`: other device memory, or host
    /// memory when it evicts it): the bytes are copied, every dynamic
    /// importer is told its mapping is stale before the old memory is let
    /// go. Refused while pinned or once revoked.
    pub fn migrate(&self, sim: &SimMachine, to: Placement) -> Result<(), DmaBufError> {
        let exporter = self.0.exporter;
        let mut st = lock(&self.0.state);
        if st.revoked {
            return Err(DmaBufError::Revoked {
                exporter,
                what: "a move",
            });
        }
        if st.pins > 0 {
            return Err(DmaBufError::Pinned {
                exporter,
                pins: st.pins,
            });
        }
        let new = match to {
            Placement::Device => Backing::Device(
                self.0
                    .provider
                    .alloc(self.0.size)
                    .map_err(|e| DmaBufError::Memory(e.to_string()))?,
            ),
            Placement::Host { node } => Backing::Host(
                sim.alloc_host(self.0.size, node)
                    .map_err(|e| DmaBufError::Memory(e.to_string()))?,
            ),
        };
        let old = st.backing.take().ok_or(DmaBufError::Revoked {
            exporter,
            what: "a move",
        })?;
        if let Err(e) = copy(sim, old.phys(), new.phys(), self.0.size) {
            st.backing = Some(old);
            return Err(DmaBufError::Memory(format!("moving the buffer: {e}")));
        }
        st.backing = Some(new);
        // Tell the importers with the lock held, as `dma_buf_move_notify`
        // runs under the reservation lock; they drop their mappings of the
        // old memory, which is let go after.
        let cbs: Vec<Arc<dyn Importer>> = st
            .attachments
            .iter()
            .filter(|a| a.dynamic)
            .filter_map(|a| a.ops.as_ref().and_then(Weak::upgrade))
            .collect();
        for cb in &cbs {
            cb.move_notify(exporter);
        }
        drop(st);
        drop(old);
        self.0.moves.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Stop: refuse attachments, maps and pins, tell every importer, and
    /// let go of the memory. Returns how many importers were told.
    fn invalidate_for_revoke(&self) -> usize {
        let mut st = lock(&self.0.state);
        if st.revoked {
            return 0;
        }
        st.revoked = true;
        self.0.mappings.kill();
        let cbs: Vec<Arc<dyn Importer>> = st
            .attachments
            .iter()
            .filter_map(|a| a.ops.as_ref().and_then(Weak::upgrade))
            .collect();
        for cb in &cbs {
            cb.move_notify(self.0.exporter);
        }
        // The mappings hold the provider's references, so the memory
        // cannot be reused while an importer still holds one.
        st.backing = None;
        cbs.len()
    }

    /// Revoke the buffer, as VFIO's dma-buf revoke: new attachments, maps
    /// and pins fail from now on; every importer is told; then wait up to
    /// `timeout` for every mapping to be unmapped.
    pub fn revoke(&self, timeout: Duration) -> Result<DmaBufRevoke, DmaBufError> {
        let t0 = Instant::now();
        let n = self.invalidate_for_revoke();
        if !self.0.mappings.wait_drained(timeout) {
            return Err(DmaBufError::RevokeTimeout {
                exporter: self.0.exporter,
                mappings: self.0.mappings.count(),
            });
        }
        Ok(DmaBufRevoke {
            importers_notified: n,
            waited: t0.elapsed(),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Unregister from the provider before the memory goes back.
        if let Ok(mut h) = self.hook.lock() {
            h.take();
        }
    }
}

/// Copy `len` bytes between two physical ranges with the CPU, in pieces.
fn copy(sim: &SimMachine, from: PhysVec, to: PhysVec, len: u64) -> Result<(), String> {
    let mut tmp = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(tmp.len() as u64);
        let b = &mut tmp[..n as usize];
        let at = |v: PhysVec| v.addr().checked_add(done).ok_or("address overflow");
        sim.cpu_read(at(from)?, b).map_err(|e| e.to_string())?;
        sim.cpu_write(at(to)?, b).map_err(|e| e.to_string())?;
        done += n;
    }
    Ok(())
}

/// An importer's attachment. Dropping it detaches (its mappings must be
/// gone first: a [`Mapping`] keeps its attachment's buffer alive).
pub struct Attachment {
    buf: DmaBuf,
    id: u64,
    dev: Bdf,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Attachment({} -> {:?})", self.dev, self.buf)
    }
}

impl Attachment {
    pub fn device(&self) -> Bdf {
        self.dev
    }
    pub fn dmabuf(&self) -> &DmaBuf {
        &self.buf
    }

    /// Pin the buffer where it is (`dma_buf_pin`).
    pub fn pin(&self) -> Result<(), DmaBufError> {
        let b = &self.buf.0;
        if !b.pinnable {
            return Err(DmaBufError::PinRefused {
                exporter: b.exporter,
            });
        }
        let mut st = lock(&b.state);
        if st.revoked {
            return Err(DmaBufError::Revoked {
                exporter: b.exporter,
                what: "pin",
            });
        }
        if let Some(a) = st.attachments.iter_mut().find(|a| a.id == self.id) {
            if !a.pinned {
                a.pinned = true;
                st.pins += 1;
            }
        }
        Ok(())
    }

    /// Undo [`Attachment::pin`].
    pub fn unpin(&self) {
        let mut st = lock(&self.buf.0.state);
        if let Some(a) = st.attachments.iter_mut().find(|a| a.id == self.id) {
            if a.pinned {
                a.pinned = false;
                st.pins -= 1;
            }
        }
    }

    /// Map the buffer for the importer's device (`dma_buf_map_attachment`).
    pub fn map(&self, dir: Direction) -> Result<Mapping, DmaBufError> {
        let b = &self.buf.0;
        let st = lock(&b.state);
        let revoked = DmaBufError::Revoked {
            exporter: b.exporter,
            what: "map",
        };
        if st.revoked {
            return Err(revoked);
        }
        let backing = st.backing.as_ref().ok_or(revoked.clone())?;
        let phys = backing.phys();
        let node = match backing {
            Backing::Host(h) => Some(h.node()),
            Backing::Device(_) => None,
        };
        let vec = phys.split_at(b.size).map_or(phys, |(head, _)| head);
        let sgl = b
            .mapper
            .map(self.dev, &[vec], dir, BouncePolicy::Forbid)
            .map_err(|e| match e {
                MapError::NotSupported { reason, .. } => DmaBufError::NotSupported {
                    exporter: b.exporter,
                    importer: self.dev,
                    reason,
                },
                MapError::P2p(_) => revoked.clone(),
                other => DmaBufError::Map {
                    exporter: b.exporter,
                    importer: self.dev,
                    source: other,
                },
            })?;
        if !b.mappings.try_get() {
            return Err(revoked);
        }
        drop(st);
        Ok(Mapping {
            sgl: Some(sgl),
            buf: self.buf.clone(),
            node,
        })
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        let b = &self.buf.0;
        let mut st = lock(&b.state);
        if let Some(i) = st.attachments.iter().position(|a| a.id == self.id) {
            let a = st.attachments.remove(i);
            if a.pinned {
                st.pins -= 1;
            }
            b.attachments.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// A mapping of a dma-buf for one device: DMA addresses only. Dropping it
/// unmaps (`dma_buf_unmap_attachment`).
pub struct Mapping {
    sgl: Option<DmaSgl>,
    buf: DmaBuf,
    node: Option<u32>,
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mapping({:?}, {:?})", self.buf, self.sgl)
    }
}

impl Mapping {
    pub fn sgl(&self) -> &DmaSgl {
        // Set from creation until drop.
        self.sgl
            .as_ref()
            .expect("a mapping holds its list until dropped")
    }
    pub fn path(&self) -> PathTaken {
        self.sgl().path()
    }
    /// The NUMA node of the memory mapped, when the exporter had moved the
    /// buffer to host memory.
    pub fn node(&self) -> Option<u32> {
        self.node
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // Unmap first, then let a waiting revoke go on.
        drop(self.sgl.take());
        self.buf.0.mappings.put();
    }
}
