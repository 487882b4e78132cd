//! The IOMMU model: per IOMMU group a domain that is off, passes addresses
//! through, or translates them through page tables; an IOVA allocator per
//! translating domain; and a fault on any access to an address that is not
//! mapped (or not yet synced, or mapped without the needed permission).

use peerdma_mem::{Address, Bdf, Direction, DmaAddr, Iova, PhysAddr, RangeAllocator};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// The IOMMU page size.
pub const IOMMU_PAGE: u64 = 4096;
/// Where IOVA space starts and how large it is in each domain.
pub const IOVA_BASE: u64 = 0x1_0000_0000;
pub const IOVA_SIZE: u64 = 1 << 40;

/// What a device's IOMMU domain does with its DMA addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IommuMode {
    /// No IOMMU: DMA addresses are physical (bus) addresses.
    Off,
    /// An identity domain (`iommu=pt`).
    Passthrough,
    /// A DMA domain: DMA addresses are IOVAs translated by page tables.
    Translated,
}

/// An access the IOMMU refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IommuFault {
    pub device: Bdf,
    pub addr: u64,
    pub write: bool,
    pub reason: &'static str,
}

impl fmt::Display for IommuFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IOMMU fault: {} {} at {:#x}: {}",
            self.device,
            if self.write { "write" } else { "read" },
            self.addr,
            self.reason
        )
    }
}

impl std::error::Error for IommuFault {}

/// The IOMMU pages `[iova, iova + len)` touches (at least one; a range
/// that would run past the end of the address space stops there).
fn pages(iova: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    iova / IOMMU_PAGE..=iova.saturating_add(len.max(1) - 1) / IOMMU_PAGE
}

#[derive(Clone, Copy, Debug)]
struct Pte {
    phys_page: u64,
    read: bool,
    write: bool,
    synced: bool,
}

#[derive(Debug)]
struct Domain {
    mode: IommuMode,
    iova: RangeAllocator,
    ptes: BTreeMap<u64, Pte>,
}

/// All IOMMU domains of a machine. Owned by the [`crate::Mapper`], which
/// offers the queries and the root complex's translation.
#[derive(Debug)]
pub(crate) struct Iommu {
    domains: Vec<Domain>,
    domain_of: HashMap<Bdf, usize>,
    faults: Vec<IommuFault>,
}

impl Iommu {
    /// Domains per group: `groups` lists (device, group key) pairs; devices
    /// with the same key share a domain. Every domain starts in `mode`.
    pub fn new(groups: impl IntoIterator<Item = (Bdf, u64)>, mode: IommuMode) -> Iommu {
        let mut iommu = Iommu {
            domains: Vec::new(),
            domain_of: HashMap::new(),
            faults: Vec::new(),
        };
        let mut by_key: HashMap<u64, usize> = HashMap::new();
        for (dev, key) in groups {
            let d = *by_key.entry(key).or_insert_with(|| {
                iommu.domains.push(Domain {
                    mode,
                    iova: RangeAllocator::new(IOVA_BASE, IOVA_SIZE, IOMMU_PAGE)
                        .expect("constant geometry is valid"),
                    ptes: BTreeMap::new(),
                });
                iommu.domains.len() - 1
            });
            iommu.domain_of.insert(dev, d);
        }
        iommu
    }

    fn domain(&self, dev: Bdf) -> Option<&Domain> {
        self.domain_of.get(&dev).map(|&d| &self.domains[d])
    }

    fn domain_mut(&mut self, dev: Bdf) -> Option<&mut Domain> {
        let d = *self.domain_of.get(&dev)?;
        Some(&mut self.domains[d])
    }

    /// The mode of a device's domain (`Off` for unknown devices).
    pub fn mode(&self, dev: Bdf) -> IommuMode {
        self.domain(dev).map_or(IommuMode::Off, |d| d.mode)
    }

    /// Change the mode of the device's domain (all its group). Refused while
    /// anything is mapped in it.
    pub fn set_mode(&mut self, dev: Bdf, mode: IommuMode) -> bool {
        match self.domain_mut(dev) {
            Some(d) if d.ptes.is_empty() => {
                d.mode = mode;
                true
            }
            _ => false,
        }
    }

    /// Whether two devices share a domain (an IOMMU group).
    pub fn same_domain(&self, a: Bdf, b: Bdf) -> bool {
        matches!((self.domain_of.get(&a), self.domain_of.get(&b)), (Some(x), Some(y)) if x == y)
    }

    /// Reserve IOVA space.
    pub fn alloc_iova(&mut self, dev: Bdf, len: u64) -> Option<Iova> {
        let d = self.domain_mut(dev)?;
        if d.mode != IommuMode::Translated {
            return None;
        }
        d.iova.alloc(len, IOMMU_PAGE).map(Iova::from_domain)
    }

    /// Give IOVA space back (it must be unmapped).
    pub fn free_iova(&mut self, dev: Bdf, iova: Iova, len: u64) -> Result<(), IommuFault> {
        let fault = |reason| IommuFault {
            device: dev,
            addr: iova.raw(),
            write: false,
            reason,
        };
        let d = self.domain_mut(dev).ok_or(fault("no IOMMU domain"))?;
        let (first, last) = pages(iova.raw(), len).into_inner();
        if d.ptes.range(first..=last).next().is_some() {
            return Err(fault("freeing IOVA space that is still mapped"));
        }
        d.iova
            .free(
                iova.raw() / IOMMU_PAGE * IOMMU_PAGE,
                (last - first + 1) * IOMMU_PAGE,
            )
            .map_err(|_| fault("freeing IOVA space that was not allocated"))
    }

    /// Map `[iova, iova+len)` to `[phys, phys+len)` (page offsets equal) with
    /// the permissions of `dir`. Not visible to the device until synced.
    pub fn map(
        &mut self,
        dev: Bdf,
        iova: Iova,
        phys: PhysAddr,
        len: u64,
        dir: Direction,
    ) -> Result<(), IommuFault> {
        let fault = |reason| IommuFault {
            device: dev,
            addr: iova.raw(),
            write: dir.device_writes(),
            reason,
        };
        if iova.raw() % IOMMU_PAGE != phys.raw() % IOMMU_PAGE {
            return Err(fault("IOVA and physical page offsets differ"));
        }
        let d = self.domain_mut(dev).ok_or(fault("no IOMMU domain"))?;
        if d.mode != IommuMode::Translated {
            return Err(fault("domain does not translate"));
        }
        if len == 0 {
            return Err(fault("empty mapping"));
        }
        let Some(last_byte) = iova.checked_add(len - 1) else {
            return Err(fault("mapping wraps the address space"));
        };
        let first = iova.raw() / IOMMU_PAGE;
        let last = last_byte.raw() / IOMMU_PAGE;
        if !d
            .iova
            .is_allocated(first * IOMMU_PAGE, (last - first + 1) * IOMMU_PAGE)
        {
            return Err(fault("mapping IOVA space that was not allocated"));
        }
        if d.ptes.range(first..=last).next().is_some() {
            return Err(fault("IOVA already mapped"));
        }
        if phys.checked_add(len - 1).is_none() {
            return Err(fault("physical range wraps the address space"));
        }
        let p0 = phys.raw() / IOMMU_PAGE;
        for (i, page) in (first..=last).enumerate() {
            d.ptes.insert(
                page,
                Pte {
                    phys_page: p0 + i as u64,
                    read: dir.device_reads(),
                    write: dir.device_writes(),
                    synced: false,
                },
            );
        }
        Ok(())
    }

    /// Make mapped pages visible to the device (IOTLB/page-table sync).
    pub fn sync(&mut self, dev: Bdf, iova: Iova, len: u64) {
        if let Some(d) = self.domain_mut(dev) {
            for (_, p) in d.ptes.range_mut(pages(iova.raw(), len)) {
                p.synced = true;
            }
        }
    }

    /// Remove the translations of `[iova, iova+len)`.
    pub fn unmap(&mut self, dev: Bdf, iova: Iova, len: u64) -> Result<(), IommuFault> {
        let fault = |reason| IommuFault {
            device: dev,
            addr: iova.raw(),
            write: false,
            reason,
        };
        let d = self.domain_mut(dev).ok_or(fault("no IOMMU domain"))?;
        let (first, last) = pages(iova.raw(), len).into_inner();
        if (first..=last).any(|p| !d.ptes.contains_key(&p)) {
            return Err(fault("unmapping IOVA that is not mapped"));
        }
        for p in first..=last {
            d.ptes.remove(&p);
        }
        Ok(())
    }

    /// Translate a device access of `len` bytes at `addr` (as the root
    /// complex sees it), page by page. Identity unless the domain
    /// translates. A fault is recorded and returned.
    pub fn translate(
        &mut self,
        dev: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<(PhysAddr, u64)>, IommuFault> {
        let mode = self.mode(dev);
        if mode != IommuMode::Translated || len == 0 {
            return Ok(vec![(addr.untranslated(), len)]);
        }
        let Some(d) = self.domain(dev) else {
            return Err(self.record(IommuFault {
                device: dev,
                addr: addr.raw(),
                write,
                reason: "no IOMMU domain",
            }));
        };
        let mut out: Vec<(PhysAddr, u64)> = Vec::new();
        let mut a = addr.raw();
        let end = match addr.raw().checked_add(len) {
            Some(e) => e,
            None => {
                return Err(self.record(IommuFault {
                    device: dev,
                    addr: addr.raw(),
                    write,
                    reason: "access wraps the address space",
                }))
            }
        };
        while a < end {
            let page = a / IOMMU_PAGE;
            let n = (IOMMU_PAGE - a % IOMMU_PAGE).min(end - a);
            let pte = match d.ptes.get(&page) {
                Some(p) if !p.synced => Err("mapped but not synced (dma_iova_sync missing)"),
                Some(p) if write && !p.write => Err("write to a page mapped read-only"),
                Some(p) if !write && !p.read => Err("read of a page mapped write-only"),
                Some(p) => Ok(*p),
                None => Err("address not mapped"),
            };
            let pte = match pte {
                Ok(p) => p,
                Err(reason) => {
                    return Err(self.record(IommuFault {
                        device: dev,
                        addr: a,
                        write,
                        reason,
                    }))
                }
            };
            // The page table holds physical page numbers.
            let phys = PhysAddr::new(pte.phys_page * IOMMU_PAGE + a % IOMMU_PAGE);
            match out.last_mut() {
                Some((p, l)) if p.checked_add(*l) == Some(phys) => *l += n,
                _ => out.push((phys, n)),
            }
            a += n;
        }
        Ok(out)
    }

    fn record(&mut self, f: IommuFault) -> IommuFault {
        self.faults.push(f.clone());
        f
    }

    /// Faults recorded so far.
    pub fn faults(&self) -> &[IommuFault] {
        &self.faults
    }

    /// Pages mapped in the device's domain (leak checks in tests).
    pub fn mapped_pages(&self, dev: Bdf) -> usize {
        self.domain(dev).map_or(0, |d| d.ptes.len())
    }

    /// IOVA bytes allocated in the device's domain.
    pub fn iova_in_use(&self, dev: Bdf) -> u64 {
        self.domain(dev)
            .map_or(0, |d| d.iova.size() - d.iova.available())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn translated_domain_maps_syncs_and_faults() {
        let a = dev("0000:01:00.0");
        let mut m = Iommu::new([(a, 1), (dev("0000:02:00.0"), 2)], IommuMode::Translated);
        let iova = m.alloc_iova(a, 0x2000).unwrap();
        m.map(a, iova, PhysAddr::new(0x5000), 0x2000, Direction::ToDevice)
            .unwrap();
        let e = m
            .translate(a, DmaAddr::from_iova(iova), 16, false)
            .unwrap_err();
        assert!(e.reason.contains("not synced"), "{e}");
        m.sync(a, iova, 0x2000);
        assert_eq!(
            m.translate(
                a,
                DmaAddr::from_iova(iova.checked_add(0x10).unwrap()),
                0x1ff0,
                false
            )
            .unwrap(),
            vec![(PhysAddr::new(0x5010), 0x1ff0)]
        );
        let e = m
            .translate(a, DmaAddr::from_iova(iova), 16, true)
            .unwrap_err();
        assert!(e.reason.contains("read-only"), "{e}");
        let e = m
            .translate(
                a,
                DmaAddr::from_iova(iova.checked_add(0x2000).unwrap()),
                1,
                false,
            )
            .unwrap_err();
        assert!(e.reason.contains("not mapped"));
        assert_eq!(m.faults().len(), 3);
        // Another domain does not see this mapping.
        let b = dev("0000:02:00.0");
        assert!(m.translate(b, DmaAddr::from_iova(iova), 1, false).is_err());
        assert!(m.free_iova(a, iova, 0x2000).is_err(), "still mapped");
        m.unmap(a, iova, 0x2000).unwrap();
        assert!(m.unmap(a, iova, 0x1000).is_err(), "double unmap");
        m.free_iova(a, iova, 0x2000).unwrap();
        assert_eq!(m.iova_in_use(a), 0);
    }

    #[test]
    fn passthrough_and_off_are_identity() {
        let a = dev("0000:01:00.0");
        let mut m = Iommu::new([(a, 1)], IommuMode::Passthrough);
        assert_eq!(
            m.translate(a, DmaAddr::direct(PhysAddr::new(0x1234)), 8, true)
                .unwrap(),
            vec![(PhysAddr::new(0x1234), 8)]
        );
        assert!(m.alloc_iova(a, 4096).is_none());
        assert!(m.set_mode(a, IommuMode::Translated));
        assert!(m
            .translate(a, DmaAddr::direct(PhysAddr::new(0x1234)), 8, true)
            .is_err());
        let unknown = dev("0000:09:00.0");
        assert_eq!(m.mode(unknown), IommuMode::Off);
    }
}
