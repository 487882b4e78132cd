//! The two-step mapping API of recent kernels: allocate IOVA space once
//! (`dma_iova_try_alloc`), link physical ranges into it (`dma_iova_link`),
//! make them visible (`dma_iova_sync`), and take them down
//! (`dma_iova_unlink`, `dma_iova_destroy`, `dma_iova_free`) — with the
//! rules the kernel documents:
//!
//! * it only exists for devices behind a translating IOMMU: otherwise
//!   `try_alloc` says no and the one-shot API is used;
//! * every link but the first starts on an IOMMU page boundary, and every
//!   link but the last has a page-multiple length;
//! * nothing linked is visible to the device until synced;
//! * everything must be unlinked before the space is freed.
//!
//! P2P memory reachable by bus address is not linked (it has a bus address
//! and no IOMMU involvement); memory the device cannot reach is refused.

use crate::error::MapError;
use crate::iommu::{IommuMode, IOMMU_PAGE};
use crate::map::{lock, Mapper};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, Iova, MemKind, PhysAddr, PhysVec};
use peerdma_p2p::{MapType, ProviderRef};
use std::collections::BTreeMap;

/// One IOVA transaction (`struct dma_iova_state`).
pub struct IovaState {
    mapper: Mapper,
    dev: Bdf,
    /// Start of the allocated IOVA space (page aligned).
    base: Iova,
    /// The IOVA of offset 0: `base` plus the first byte's offset in its page.
    start: Iova,
    /// Bytes of IOVA space allocated.
    span: u64,
    size: u64,
    /// offset -> (len, direction) of linked ranges.
    links: BTreeMap<u64, u64>,
    /// A link with an unaligned length was made: it must have been the last.
    closed: bool,
    refs: Vec<ProviderRef>,
    freed: bool,
}

impl std::fmt::Debug for IovaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IovaState({} at {:#x}, {} bytes, {} links)",
            self.dev,
            self.addr().raw(),
            self.size,
            self.links.len()
        )
    }
}

impl Mapper {
    /// `dma_iova_try_alloc`: IOVA space for `size` bytes whose first byte
    /// is `phys`; `None` when the device's domain does not translate (use
    /// [`Mapper::map`] then).
    pub fn iova_try_alloc(&self, dev: Bdf, phys: PhysAddr, size: u64) -> Option<IovaState> {
        if size == 0 {
            return None;
        }
        let mut iommu = lock(&self.0.iommu);
        if iommu.mode(dev) != IommuMode::Translated {
            return None;
        }
        let head = phys.raw() % IOMMU_PAGE;
        let span = head
            .checked_add(size)?
            .div_ceil(IOMMU_PAGE)
            .checked_mul(IOMMU_PAGE)?;
        let base = iommu.alloc_iova(dev, span)?;
        let Some(start) = base.checked_add(head) else {
            let _ = iommu.free_iova(dev, base, span);
            return None;
        };
        Some(IovaState {
            mapper: self.clone(),
            dev,
            base,
            start,
            span,
            size,
            links: BTreeMap::new(),
            closed: false,
            refs: Vec::new(),
            freed: false,
        })
    }
}

impl IovaState {
    /// The DMA address of offset 0 (`state->addr`).
    pub fn addr(&self) -> DmaAddr {
        DmaAddr::from_iova(self.start)
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Bytes currently linked.
    pub fn linked(&self) -> u64 {
        self.links.values().sum()
    }

    fn err(msg: impl Into<String>) -> MapError {
        MapError::TwoStep(msg.into())
    }

    /// The IOVA of `offset` (inside the allocation, which was placed
    /// without overflow, so this only fails on a bad offset).
    fn iova_at(&self, offset: u64) -> Result<Iova, MapError> {
        self.start.checked_add(offset).ok_or_else(|| {
            Self::err(format!(
                "offset {offset:#x} runs past the end of the IOVA space"
            ))
        })
    }

    /// `dma_iova_link`: map `phys` at `offset` in direction `dir`. Not
    /// visible to the device until [`IovaState::sync`].
    pub fn link(&mut self, phys: PhysVec, offset: u64, dir: Direction) -> Result<(), MapError> {
        let len = phys.len();
        if offset.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(Self::err(format!(
                "link of {len} bytes at offset {offset} runs past the {}-byte IOVA allocation",
                self.size
            )));
        }
        if self.closed {
            return Err(Self::err("a link with a length that is not a multiple of the IOMMU page was already made; only the last link may be unaligned"));
        }
        let iova = self.iova_at(offset)?;
        if !self.links.is_empty() && !iova.is_aligned(IOMMU_PAGE) {
            return Err(Self::err(format!(
                "link at offset {offset} does not start on an IOMMU page boundary; only the first link may"
            )));
        }
        if iova.raw() % IOMMU_PAGE != phys.addr().raw() % IOMMU_PAGE {
            return Err(Self::err(format!(
                "link at offset {offset}: IOVA {iova} and physical {} differ in their page offset",
                phys.addr()
            )));
        }
        let overlaps = self
            .links
            .range(..offset + len)
            .next_back()
            .is_some_and(|(o, l)| o + l > offset);
        if overlaps {
            return Err(Self::err(format!(
                "link at offset {offset} overlaps an existing link"
            )));
        }
        let r = match phys.kind() {
            MemKind::System => None,
            MemKind::DevicePrivate { owner } => {
                return Err(MapError::Private {
                    owner,
                    client: self.dev,
                })
            }
            MemKind::P2p { provider } => {
                let p = self.mapper.find_provider(&phys, provider)?;
                match self.mapper.verdict(provider, self.dev)? {
                    MapType::ThruHostBridge | MapType::None => Some(p.try_ref()?),
                    MapType::BusAddr => {
                        return Err(Self::err(format!(
                            "P2P memory of {provider} is reached by bus address from {}: it is not linked into IOVA space (use its bus address)",
                            self.dev
                        )))
                    }
                    MapType::NotSupported => {
                        return Err(MapError::NotSupported {
                            provider,
                            client: self.dev,
                            reason: "the two-step API does not bounce".into(),
                        })
                    }
                }
            }
        };
        lock(&self.mapper.0.iommu).map(self.dev, iova, phys.addr(), len, dir)?;
        self.links.insert(offset, len);
        if !iova
            .checked_add(len)
            .is_some_and(|e| e.is_aligned(IOMMU_PAGE))
        {
            self.closed = true;
        }
        self.refs.extend(r);
        Ok(())
    }

    /// `dma_iova_sync`: make the links in `[offset, offset+size)` visible.
    pub fn sync(&mut self, offset: u64, size: u64) -> Result<(), MapError> {
        if offset.checked_add(size).is_none_or(|e| e > self.size) {
            return Err(Self::err("sync range runs past the IOVA allocation"));
        }
        let iova = self.iova_at(offset)?;
        lock(&self.mapper.0.iommu).sync(self.dev, iova, size);
        Ok(())
    }

    /// `dma_iova_unlink`: remove the link made at `offset` of `size` bytes.
    pub fn unlink(&mut self, offset: u64, size: u64) -> Result<(), MapError> {
        match self.links.get(&offset) {
            Some(&l) if l == size => {}
            _ => {
                return Err(Self::err(format!(
                    "no link of {size} bytes at offset {offset} to unlink"
                )))
            }
        }
        let iova = self.iova_at(offset)?;
        lock(&self.mapper.0.iommu).unmap(self.dev, iova, size)?;
        self.links.remove(&offset);
        if self.links.is_empty() {
            self.closed = false;
        }
        Ok(())
    }

    /// `dma_iova_free`: give the space back; everything must be unlinked.
    pub fn free(mut self) -> Result<(), MapError> {
        if !self.links.is_empty() {
            let n = self.links.len();
            // Keep the state alive (and its mappings) for the caller's fix:
            // refusing is better than freeing space the device still uses.
            self.freed = true;
            let (dev, base, span) = (self.dev, self.base, self.span);
            let links: Vec<(Iova, u64)> = self
                .links
                .iter()
                .filter_map(|(o, l)| Some((self.start.checked_add(*o)?, *l)))
                .collect();
            let mut iommu = lock(&self.mapper.0.iommu);
            for (iova, l) in links {
                let _ = iommu.unmap(dev, iova, l);
            }
            let _ = iommu.free_iova(dev, base, span);
            return Err(Self::err(format!(
                "dma_iova_free with {n} link(s) still in place: they were unlinked now, but the device may have been using them"
            )));
        }
        self.release()
    }

    /// `dma_iova_destroy`: unlink the first `mapped_len` bytes and free.
    pub fn destroy(mut self, mapped_len: u64) -> Result<(), MapError> {
        let beyond = self.links.iter().any(|(o, l)| o + l > mapped_len);
        let offsets: Vec<(u64, u64)> = self.links.iter().map(|(o, l)| (*o, *l)).collect();
        for (o, l) in offsets {
            if o + l <= mapped_len {
                self.unlink(o, l)?;
            }
        }
        if beyond {
            return self.free();
        }
        self.release()
    }

    fn release(&mut self) -> Result<(), MapError> {
        if self.freed {
            return Ok(());
        }
        self.freed = true;
        self.refs.clear();
        lock(&self.mapper.0.iommu)
            .free_iova(self.dev, self.base, self.span)
            .map_err(Into::into)
    }
}

impl Drop for IovaState {
    fn drop(&mut self) {
        if self.freed {
            return;
        }
        let links: Vec<(u64, u64)> = self.links.iter().map(|(o, l)| (*o, *l)).collect();
        for (o, l) in links {
            let _ = self.unlink(o, l);
        }
        let _ = self.release();
    }
}
