//! The one-shot mapping API and the DMA-only scatter-gather list.

use crate::error::MapError;
use crate::iommu::{Iommu, IommuFault, IommuMode, IOMMU_PAGE};
use crate::memory::CopyEngine;
use crate::swiotlb::{BouncePool, BounceSlot, MAX_MAPPING};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, Iova, MemKind, PhysAddr, PhysVec};
use peerdma_p2p::{calc_map_type_and_dist, explain, MapType, Provider, ProviderRef};
use peerdma_pci::Topology;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The IOVA space a segment of `len` bytes at `addr` occupies: whole
/// IOMMU pages, `None` if that does not fit in 64 bits.
fn iommu_span(addr: PhysAddr, len: u64) -> Option<u64> {
    let pages = (addr.raw() % IOMMU_PAGE)
        .checked_add(len)?
        .div_ceil(IOMMU_PAGE);
    pages.checked_mul(IOMMU_PAGE)
}

/// What to do when a device cannot reach P2P memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BouncePolicy {
    /// Go through host memory (two DMAs) and say so: the default for user
    /// I/O (DESIGN.md rule 3).
    #[default]
    Bounce,
    /// Fail with an error naming the pair.
    Forbid,
}

/// How the data of a mapping travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathTaken {
    /// Host memory, through the IOMMU or directly.
    HostMemory,
    /// Peer to peer by PCI bus address.
    BusAddr,
    /// Peer to peer through the host bridge.
    ThruHostBridge,
    /// Through a bounce buffer in host memory (two DMAs).
    Bounced,
}

/// One DMA segment: an address for the device and a length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DmaEntry {
    pub addr: DmaAddr,
    pub len: u64,
}

/// How one entry was mapped, so that unmapping matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum SegMapping {
    /// The physical address, no IOMMU translation.
    Direct,
    /// Bus address of P2P memory: nothing to unmap.
    BusAddr,
    /// Through the IOMMU: `len` bytes translated at `iova`.
    Iommu { iova: Iova, len: u64 },
    /// Through a bounce slot (and the IOMMU when `iova` is set).
    Bounce {
        slot: BounceSlot,
        orig: PhysVec,
        iova: Option<(Iova, u64)>,
    },
}

/// A device's DMA addressing limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceDma {
    pub bdf: Bdf,
    /// Highest address the device can put on the bus.
    pub dma_mask: u64,
    /// Address bits a bounce must preserve (`dma_set_min_align_mask`).
    pub min_align_mask: u64,
}

/// How to build a mapper.
#[derive(Clone, Debug)]
pub struct MapperConfig {
    pub iommu_mode: IommuMode,
    /// Host memory reserved for the bounce pool.
    pub bounce_base: PhysAddr,
    pub bounce_size: u64,
}

pub(crate) struct Shared {
    pub(crate) topo: Arc<Topology>,
    pub(crate) devices: Mutex<HashMap<Bdf, DeviceDma>>,
    pub(crate) providers: Mutex<Vec<Provider>>,
    verdicts: Mutex<HashMap<(Bdf, Bdf), MapType>>,
    pub(crate) iommu: Mutex<Iommu>,
    pool: Mutex<BouncePool>,
    copier: Arc<dyn CopyEngine>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Maps memory for DMA on one machine. Cloning shares it.
#[derive(Clone)]
pub struct Mapper(pub(crate) Arc<Shared>);

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper")
            .field("functions", &self.0.topo.len())
            .field("providers", &lock(&self.0.providers).len())
            .finish_non_exhaustive()
    }
}

impl Mapper {
    /// A mapper for `topo`. IOMMU domains follow the topology's IOMMU
    /// groups (a function without a group gets a domain of its own). Fails
    /// when the bounce pool cannot be placed as configured.
    pub fn new(
        topo: Arc<Topology>,
        cfg: MapperConfig,
        copier: Arc<dyn CopyEngine>,
    ) -> Result<Mapper, MapError> {
        let pool = BouncePool::new(cfg.bounce_base, cfg.bounce_size)?;
        let groups: Vec<(Bdf, u64)> = topo
            .functions()
            .iter()
            .map(|f| {
                let key = match f.iommu_group {
                    Some(g) => u64::from(g),
                    None => (1 << 40) + f.id.index() as u64,
                };
                (f.bdf, key)
            })
            .collect();
        let devices = topo
            .functions()
            .iter()
            .map(|f| {
                (
                    f.bdf,
                    DeviceDma {
                        bdf: f.bdf,
                        dma_mask: u64::MAX,
                        min_align_mask: 0,
                    },
                )
            })
            .collect();
        Ok(Mapper(Arc::new(Shared {
            iommu: Mutex::new(Iommu::new(groups, cfg.iommu_mode)),
            pool: Mutex::new(pool),
            devices: Mutex::new(devices),
            providers: Mutex::new(Vec::new()),
            verdicts: Mutex::new(HashMap::new()),
            copier,
            topo,
        })))
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.0.topo
    }

    /// Set a device's addressing limits (`dma_set_mask`, `dma_set_min_align_mask`).
    pub fn set_device(&self, d: DeviceDma) {
        lock(&self.0.devices).insert(d.bdf, d);
    }

    /// Make a provider's memory mappable.
    pub fn register_provider(&self, p: &Provider) {
        lock(&self.0.providers).push(p.clone());
    }

    /// What the device's IOMMU domain does with its DMA addresses (`Off`
    /// for a device the mapper does not know).
    pub fn iommu_mode(&self, dev: Bdf) -> IommuMode {
        lock(&self.0.iommu).mode(dev)
    }

    /// Change the mode of the device's IOMMU domain (its whole group), as
    /// `iommu.passthrough=` or a sysfs domain type change would. Refused
    /// (false) while anything is mapped in it or for an unknown device.
    pub fn set_iommu_mode(&self, dev: Bdf, mode: IommuMode) -> bool {
        lock(&self.0.iommu).set_mode(dev, mode)
    }

    /// The root complex's translation of a device access of `len` bytes at
    /// `addr`: the physical ranges it reaches, page by page (identity
    /// unless the device's domain translates). A refused access is
    /// recorded (see [`Mapper::iommu_faults`]) and returned.
    pub fn iommu_translate(
        &self,
        dev: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<(PhysAddr, u64)>, IommuFault> {
        lock(&self.0.iommu).translate(dev, addr, len, write)
    }

    /// The accesses the IOMMU refused so far, oldest first.
    pub fn iommu_faults(&self) -> Vec<IommuFault> {
        lock(&self.0.iommu).faults().to_vec()
    }

    /// IOMMU pages mapped in the device's domain.
    pub fn mapped_pages(&self, dev: Bdf) -> usize {
        lock(&self.0.iommu).mapped_pages(dev)
    }

    /// IOVA bytes allocated in the device's domain.
    pub fn iova_in_use(&self, dev: Bdf) -> u64 {
        lock(&self.0.iommu).iova_in_use(dev)
    }

    /// Whether two devices share an IOMMU domain (an IOMMU group).
    pub fn same_iommu_domain(&self, a: Bdf, b: Bdf) -> bool {
        lock(&self.0.iommu).same_domain(a, b)
    }

    /// Free 2 KiB bounce slots.
    pub fn bounce_free_slots(&self) -> usize {
        lock(&self.0.pool).free_slots()
    }

    /// The kernel's verdict for a provider and a client, cached per pair
    /// as the kernel caches it in the provider's `map_types`.
    pub fn verdict(&self, provider: Bdf, client: Bdf) -> Result<MapType, MapError> {
        if let Some(m) = lock(&self.0.verdicts).get(&(provider, client)) {
            return Ok(*m);
        }
        let t = &self.0.topo;
        let p = t.find(provider).ok_or(MapError::NoDevice(provider))?;
        let c = t.find(client).ok_or(MapError::NoDevice(client))?;
        let m = calc_map_type_and_dist(t, p, c).map_type;
        lock(&self.0.verdicts).insert((provider, client), m);
        Ok(m)
    }

    fn reason(&self, provider: Bdf, client: Bdf) -> String {
        let t = &self.0.topo;
        match (t.find(provider), t.find(client)) {
            (Some(p), Some(c)) => explain(t, p, c).reasons.join("; "),
            _ => "unknown device".into(),
        }
    }

    pub(crate) fn find_provider(&self, v: &PhysVec, bdf: Bdf) -> Result<Provider, MapError> {
        let providers = lock(&self.0.providers);
        let mut any = false;
        for p in providers.iter().filter(|p| p.bdf() == bdf) {
            any = true;
            if p.range().contains_range(&v.range()) {
                return Ok(p.clone());
            }
        }
        Err(if any {
            MapError::OutsideProvider { provider: bdf }
        } else {
            MapError::NoProvider(bdf)
        })
    }

    fn device(&self, dev: Bdf) -> Result<DeviceDma, MapError> {
        lock(&self.0.devices)
            .get(&dev)
            .copied()
            .ok_or(MapError::NoDevice(dev))
    }

    /// Split a request into runs of one kind of memory (one provider), as
    /// the block layer splits a bio that mixes them.
    pub fn split_homogeneous(vecs: &[PhysVec]) -> Vec<Vec<PhysVec>> {
        let mut out: Vec<Vec<PhysVec>> = Vec::new();
        for v in vecs {
            match out.last_mut() {
                Some(run) if run[0].kind() == v.kind() => run.push(*v),
                _ => out.push(vec![*v]),
            }
        }
        out
    }

    /// Map a request that may mix kinds of memory: one list per run.
    pub fn map_request(
        &self,
        dev: Bdf,
        vecs: &[PhysVec],
        dir: Direction,
        policy: BouncePolicy,
    ) -> Result<Vec<DmaSgl>, MapError> {
        Mapper::split_homogeneous(vecs)
            .iter()
            .map(|run| self.map(dev, run, dir, policy))
            .collect()
    }

    /// Map one homogeneous request (all host memory, or all P2P memory of
    /// one provider) for `dev` in direction `dir`.
    pub fn map(
        &self,
        dev: Bdf,
        vecs: &[PhysVec],
        dir: Direction,
        policy: BouncePolicy,
    ) -> Result<DmaSgl, MapError> {
        let first = vecs.first().ok_or(MapError::Empty)?.kind();
        if vecs
            .iter()
            .try_fold(0u64, |t, v| t.checked_add(v.len()))
            .is_none()
        {
            return Err(MapError::TooLong { device: dev });
        }
        if let Some((index, v)) = vecs.iter().enumerate().find(|(_, v)| v.kind() != first) {
            return Err(MapError::Mixed {
                index,
                first,
                other: v.kind(),
            });
        }
        let d = self.device(dev)?;
        let mut sgl = DmaSgl {
            mapper: self.clone(),
            dev,
            dir,
            entries: Vec::new(),
            how: Vec::new(),
            path: PathTaken::HostMemory,
            provider: None,
            iova_alloc: None,
            unmapped: false,
        };
        let result = match first {
            MemKind::System => {
                self.map_host(&d, vecs, dir, policy, &mut sgl, PathTaken::HostMemory)
            }
            MemKind::DevicePrivate { owner } => {
                if owner != dev {
                    return Err(MapError::Private { owner, client: dev });
                }
                sgl.path = PathTaken::BusAddr;
                for v in vecs {
                    sgl.push(DmaAddr::direct(v.addr()), v.len(), SegMapping::Direct);
                }
                Ok(())
            }
            MemKind::P2p { provider } => {
                let mut p: Option<Provider> = None;
                for v in vecs {
                    let found = self.find_provider(v, provider)?;
                    if p.as_ref().is_some_and(|q| !q.same(&found)) {
                        return Err(MapError::OutsideProvider { provider });
                    }
                    p = Some(found);
                }
                let p = p.ok_or(MapError::Empty)?;
                sgl.provider = Some(p.try_ref()?);
                match self.verdict(provider, dev)? {
                    MapType::BusAddr => {
                        sgl.path = PathTaken::BusAddr;
                        for v in vecs {
                            let bus = p
                                .bus_addr(v.addr())
                                .ok_or(MapError::OutsideProvider { provider })?;
                            sgl.push(DmaAddr::from_bus(bus), v.len(), SegMapping::BusAddr);
                        }
                        Ok(())
                    }
                    MapType::ThruHostBridge | MapType::None => self.map_host(
                        &d,
                        vecs,
                        dir,
                        BouncePolicy::Forbid,
                        &mut sgl,
                        PathTaken::ThruHostBridge,
                    ),
                    MapType::NotSupported => match policy {
                        BouncePolicy::Forbid => Err(MapError::NotSupported {
                            provider,
                            client: dev,
                            reason: self.reason(provider, dev),
                        }),
                        BouncePolicy::Bounce => {
                            sgl.path = PathTaken::Bounced;
                            vecs.iter()
                                .try_for_each(|v| self.bounce(&d, *v, dir, &mut sgl))
                        }
                    },
                }
            }
        };
        match result {
            Ok(()) => Ok(sgl),
            // The partial mapping is undone by the list's drop.
            Err(e) => Err(e),
        }
    }

    /// Host memory (or P2P memory through the host bridge): through the
    /// IOMMU when the domain translates, else direct, bouncing what the
    /// device cannot address.
    fn map_host(
        &self,
        d: &DeviceDma,
        vecs: &[PhysVec],
        dir: Direction,
        policy: BouncePolicy,
        sgl: &mut DmaSgl,
        path: PathTaken,
    ) -> Result<(), MapError> {
        sgl.path = path;
        let mode = lock(&self.0.iommu).mode(d.bdf);
        if mode == IommuMode::Translated {
            // One IOVA range for the whole request; segments are placed at
            // page-aligned offsets and merged when they meet (like
            // iommu_dma_map_sg).
            let exhausted = |len| MapError::IovaExhausted { device: d.bdf, len };
            let total = vecs
                .iter()
                .try_fold(0u64, |t, v| t.checked_add(iommu_span(v.addr(), v.len())?))
                .ok_or(exhausted(u64::MAX))?;
            let mut iommu = lock(&self.0.iommu);
            let base = iommu.alloc_iova(d.bdf, total).ok_or(exhausted(total))?;
            let mut off = 0u64;
            let mut pieces: Vec<(Iova, u64)> = Vec::new();
            for v in vecs {
                let page_off = v.addr().raw() % IOMMU_PAGE;
                // Both fit: their sum over all segments is `total`.
                let span = iommu_span(v.addr(), v.len()).unwrap_or(total);
                let placed = base.checked_add(off + page_off).ok_or(IommuFault {
                    device: d.bdf,
                    addr: base.raw(),
                    write: dir.device_writes(),
                    reason: "IOVA allocation wraps the address space",
                });
                let mapped = placed.and_then(|iova| {
                    iommu.map(d.bdf, iova, v.addr(), v.len(), dir)?;
                    Ok(iova)
                });
                let iova = match mapped {
                    Ok(iova) => iova,
                    Err(e) => {
                        // Undo what was mapped so far, then give the space back.
                        for (i, l) in &pieces {
                            let _ = iommu.unmap(d.bdf, *i, *l);
                        }
                        let _ = iommu.free_iova(d.bdf, base, total);
                        return Err(e.into());
                    }
                };
                iommu.sync(d.bdf, iova, v.len());
                pieces.push((iova, v.len()));
                off += span;
            }
            drop(iommu);
            sgl.iova_alloc = Some((base, total));
            for (iova, len) in pieces {
                let addr = DmaAddr::from_iova(iova);
                let merge = sgl
                    .entries
                    .last()
                    .is_some_and(|e| e.addr.checked_add(e.len) == Some(addr));
                sgl.how.push(SegMapping::Iommu { iova, len });
                if merge {
                    if let Some(e) = sgl.entries.last_mut() {
                        e.len += len;
                    }
                } else {
                    sgl.entries.push(DmaEntry { addr, len });
                }
            }
            return Ok(());
        }
        for v in vecs {
            if v.range().last().raw() > d.dma_mask {
                match policy {
                    BouncePolicy::Bounce => {
                        sgl.path = PathTaken::Bounced;
                        self.bounce(d, *v, dir, sgl)?;
                    }
                    BouncePolicy::Forbid => {
                        return Err(MapError::BeyondMask {
                            device: d.bdf,
                            mask: d.dma_mask,
                            addr: v.addr().raw(),
                        })
                    }
                }
            } else {
                sgl.push(DmaAddr::direct(v.addr()), v.len(), SegMapping::Direct);
            }
        }
        Ok(())
    }

    /// Bounce a segment through host memory, in pieces of at most one
    /// swiotlb mapping. The original is copied in at map time for every
    /// direction, so bytes the device does not write are not clobbered.
    fn bounce(
        &self,
        d: &DeviceDma,
        v: PhysVec,
        dir: Direction,
        sgl: &mut DmaSgl,
    ) -> Result<(), MapError> {
        let mut off = 0;
        while off < v.len() {
            // off < len, so addr + off is inside the vector: no overflow.
            let at = v.addr().raw() + off;
            let n = (v.len() - off).min(MAX_MAPPING - at % crate::swiotlb::IO_TLB_SIZE);
            let piece = v.split_at(off).map(|(_, t)| t).unwrap_or(v);
            let piece = piece.split_at(n).map(|(h, _)| h).unwrap_or(piece);
            let slot = lock(&self.0.pool).map(piece.addr(), n, d.min_align_mask, 0)?;
            if let Err(e) = self.0.copier.copy(piece, slot.tlb_addr) {
                let _ = lock(&self.0.pool).release(&slot);
                return Err(e.into());
            }
            let mode = lock(&self.0.iommu).mode(d.bdf);
            let (addr, iova) = if mode == IommuMode::Translated {
                let page_off = slot.tlb_addr.raw() % IOMMU_PAGE;
                // n <= MAX_MAPPING: no overflow.
                let span = (page_off + n).div_ceil(IOMMU_PAGE) * IOMMU_PAGE;
                let mut iommu = lock(&self.0.iommu);
                let Some(base) = iommu.alloc_iova(d.bdf, span) else {
                    drop(iommu);
                    let _ = lock(&self.0.pool).release(&slot);
                    return Err(MapError::IovaExhausted {
                        device: d.bdf,
                        len: span,
                    });
                };
                let mapped = base
                    .checked_add(page_off)
                    .ok_or(IommuFault {
                        device: d.bdf,
                        addr: base.raw(),
                        write: dir.device_writes(),
                        reason: "IOVA allocation wraps the address space",
                    })
                    .and_then(|iova| {
                        iommu.map(d.bdf, iova, slot.tlb_addr, n, dir)?;
                        Ok(iova)
                    });
                let iova = match mapped {
                    Ok(iova) => iova,
                    Err(e) => {
                        let _ = iommu.free_iova(d.bdf, base, span);
                        drop(iommu);
                        let _ = lock(&self.0.pool).release(&slot);
                        return Err(e.into());
                    }
                };
                iommu.sync(d.bdf, iova, n);
                (DmaAddr::from_iova(iova), Some((iova, span)))
            } else {
                (DmaAddr::direct(slot.tlb_addr), None)
            };
            sgl.push(
                addr,
                n,
                SegMapping::Bounce {
                    slot,
                    orig: piece,
                    iova,
                },
            );
            off += n;
        }
        Ok(())
    }
}

/// A DMA-only scatter-gather list for one device and one direction. It
/// gives no way to reach the memory from the CPU, records how each segment
/// was mapped, keeps the P2P provider alive, and unmaps exactly what it
/// mapped (on [`DmaSgl::unmap`] or when dropped).
pub struct DmaSgl {
    mapper: Mapper,
    dev: Bdf,
    dir: Direction,
    entries: Vec<DmaEntry>,
    how: Vec<SegMapping>,
    path: PathTaken,
    provider: Option<ProviderRef>,
    /// The IOVA range a translated request allocated.
    iova_alloc: Option<(Iova, u64)>,
    unmapped: bool,
}

impl std::fmt::Debug for DmaSgl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSgl")
            .field("device", &self.dev)
            .field("dir", &self.dir)
            .field("path", &self.path)
            .field("entries", &self.entries)
            .finish()
    }
}

impl DmaSgl {
    fn push(&mut self, addr: DmaAddr, len: u64, how: SegMapping) {
        self.entries.push(DmaEntry { addr, len });
        self.how.push(how);
    }

    /// The `(DmaAddr, len)` pairs to hand the device.
    pub fn entries(&self) -> &[DmaEntry] {
        &self.entries
    }
    /// How each mapped piece was mapped (one per piece; merged entries
    /// cover several).
    pub fn mappings(&self) -> &[SegMapping] {
        &self.how
    }
    pub fn device(&self) -> Bdf {
        self.dev
    }
    pub fn direction(&self) -> Direction {
        self.dir
    }
    /// How the data travels.
    pub fn path(&self) -> PathTaken {
        self.path
    }
    /// The P2P provider whose memory this maps, if any.
    pub fn provider(&self) -> Option<&Provider> {
        self.provider.as_ref().map(|r| r.provider())
    }
    pub fn len(&self) -> u64 {
        self.entries.iter().map(|e| e.len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn copier(&self) -> Arc<dyn CopyEngine> {
        Arc::clone(&self.mapper.0.copier)
    }

    /// Hand the memory to the device after the CPU wrote it: bounce buffers
    /// are refreshed for ToDevice and Bidirectional mappings.
    pub fn sync_for_device(&self) -> Result<(), MapError> {
        if !self.dir.device_reads() {
            return Ok(());
        }
        let c = self.copier();
        for h in &self.how {
            if let SegMapping::Bounce { slot, orig, .. } = h {
                c.copy(*orig, slot.tlb_addr)?;
            }
        }
        Ok(())
    }

    /// Hand the memory back to the CPU after the device wrote it: bounced
    /// data is copied back for FromDevice and Bidirectional mappings.
    pub fn sync_for_cpu(&self) -> Result<(), MapError> {
        if !self.dir.device_writes() {
            return Ok(());
        }
        let c = self.copier();
        for h in &self.how {
            if let SegMapping::Bounce { slot, orig, .. } = h {
                c.copy_back(slot.tlb_addr, *orig)?;
            }
        }
        Ok(())
    }

    /// Unmap: copy bounced data back (FromDevice/Bidirectional), release
    /// bounce slots and IOVA, drop the provider reference.
    pub fn unmap(mut self) -> Result<(), MapError> {
        self.do_unmap()
    }

    fn do_unmap(&mut self) -> Result<(), MapError> {
        if self.unmapped {
            return Ok(());
        }
        self.unmapped = true;
        let mut first_err = None;
        let mut note = |r: Result<(), MapError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };
        if self.dir.device_writes() {
            let c = self.copier();
            for h in &self.how {
                if let SegMapping::Bounce { slot, orig, .. } = h {
                    note(c.copy_back(slot.tlb_addr, *orig).map_err(Into::into));
                }
            }
        }
        let shared = &self.mapper.0;
        let mut iommu = lock(&shared.iommu);
        for h in &self.how {
            match h {
                SegMapping::Iommu { iova, len } => {
                    note(iommu.unmap(self.dev, *iova, *len).map_err(Into::into))
                }
                SegMapping::Bounce {
                    iova: Some((iova, span)),
                    slot,
                    ..
                } => {
                    note(iommu.unmap(self.dev, *iova, slot.size).map_err(Into::into));
                    let base = iova.align_down(IOMMU_PAGE);
                    note(iommu.free_iova(self.dev, base, *span).map_err(Into::into));
                }
                _ => {}
            }
        }
        if let Some((base, total)) = self.iova_alloc.take() {
            note(iommu.free_iova(self.dev, base, total).map_err(Into::into));
        }
        drop(iommu);
        let mut pool = lock(&shared.pool);
        for h in &self.how {
            if let SegMapping::Bounce { slot, .. } = h {
                note(pool.release(slot).map_err(Into::into));
            }
        }
        drop(pool);
        self.provider = None;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for DmaSgl {
    fn drop(&mut self) {
        let _ = self.do_unmap();
    }
}
