//! A bounce pool with the semantics of the kernel's swiotlb: 2 KiB slots in
//! segments of 128 (so one mapping is at most 256 KiB), the device's minimum
//! alignment mask preserved between original and bounce address, page
//! alignment for page-sized mappings, and the copy rules — original to
//! bounce at map time for every direction (so bytes the device does not
//! write are not clobbered at unmap), to the device on `sync_for_device`
//! for ToDevice/Bidirectional, back on `sync_for_cpu` and at unmap for
//! FromDevice/Bidirectional.

use peerdma_mem::{Address, PhysAddr, PAGE_SIZE};
use serde::Serialize;
use std::fmt;

pub const IO_TLB_SHIFT: u32 = 11;
pub const IO_TLB_SIZE: u64 = 1 << IO_TLB_SHIFT;
pub const IO_TLB_SEGSIZE: usize = 128;
/// The largest mapping one bounce can hold.
pub const MAX_MAPPING: u64 = IO_TLB_SIZE * IO_TLB_SEGSIZE as u64;
/// The largest bounce pool (8 Mi slots).
pub const MAX_POOL: u64 = 16 << 30;

/// Why a bounce slot could not be had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BounceError {
    TooLarge {
        size: u64,
    },
    Full {
        size: u64,
        free_slots: usize,
        total_slots: usize,
    },
    NotMapped {
        addr: u64,
    },
    /// The pool's memory cannot be used as given.
    BadPool {
        start: PhysAddr,
        size: u64,
        why: &'static str,
    },
}

impl fmt::Display for BounceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BounceError::TooLarge { size } => write!(f, "bounce of {size} bytes is larger than one swiotlb mapping ({MAX_MAPPING})"),
            BounceError::Full { size, free_slots, total_slots } => write!(
                f,
                "bounce pool is full: no room for {size} bytes ({free_slots} of {total_slots} 2 KiB slots free, maybe fragmented)"
            ),
            BounceError::NotMapped { addr } => write!(f, "{addr:#x} is not a mapped bounce slot"),
            BounceError::BadPool { start, size, why } => {
                write!(f, "bounce pool of {size} bytes at {start}: {why}")
            }
        }
    }
}

impl std::error::Error for BounceError {}

/// One bounced mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BounceSlot {
    /// The bounce address (host memory) the device uses.
    pub tlb_addr: PhysAddr,
    /// The original address.
    pub orig: PhysAddr,
    /// Bytes mapped.
    pub size: u64,
    first: usize,
    nslots: usize,
}

/// The pool.
#[derive(Debug)]
pub struct BouncePool {
    start: PhysAddr,
    used: Vec<bool>,
    free: usize,
}

impl BouncePool {
    /// A pool over `[start, start+size)` of host memory; `size` is rounded
    /// down to whole segments (at least one, at most [`MAX_POOL`] bytes),
    /// `start` must be page aligned.
    pub fn new(start: PhysAddr, size: u64) -> Result<BouncePool, BounceError> {
        let bad = |why| BounceError::BadPool { start, size, why };
        if !start.is_aligned(PAGE_SIZE) {
            return Err(bad("the start must be page aligned"));
        }
        if size < MAX_MAPPING {
            return Err(bad("smaller than one swiotlb segment (256 KiB)"));
        }
        if size > MAX_POOL {
            return Err(bad("larger than the 16 GiB a bounce pool may have"));
        }
        if start.checked_add(size - 1).is_none() {
            return Err(bad("runs past the end of the physical address space"));
        }
        let n = (size / MAX_MAPPING) as usize * IO_TLB_SEGSIZE;
        Ok(BouncePool {
            start,
            used: vec![false; n],
            free: n,
        })
    }

    pub fn start(&self) -> PhysAddr {
        self.start
    }
    /// Bytes of host memory the pool occupies.
    pub fn size(&self) -> u64 {
        self.used.len() as u64 * IO_TLB_SIZE
    }
    pub fn free_slots(&self) -> usize {
        self.free
    }
    pub fn total_slots(&self) -> usize {
        self.used.len()
    }
    pub fn contains(&self, a: PhysAddr) -> bool {
        a.offset_from(self.start)
            .is_some_and(|off| off < self.size())
    }

    /// Find slots for `size` bytes bounced from `orig` for a device with
    /// `min_align_mask` (bits of the address the device needs preserved)
    /// and an optional allocation alignment mask.
    pub fn map(
        &mut self,
        orig: PhysAddr,
        size: u64,
        min_align_mask: u64,
        alloc_align_mask: u64,
    ) -> Result<BounceSlot, BounceError> {
        // swiotlb_align_offset: the part of the original's offset the device
        // needs to see in the bounce address.
        let offset = orig.raw() & min_align_mask & (alloc_align_mask | (IO_TLB_SIZE - 1));
        let too_large = BounceError::TooLarge { size };
        if size == 0 || size > MAX_MAPPING || alloc_align_mask >= MAX_MAPPING {
            return Err(too_large);
        }
        // size, offset and the alignment are below MAX_MAPPING: no overflow.
        let total = (size + offset).div_ceil(alloc_align_mask + 1) * (alloc_align_mask + 1);
        if total > MAX_MAPPING {
            return Err(too_large);
        }
        let nslots = total.div_ceil(IO_TLB_SIZE) as usize;
        let mut align = alloc_align_mask;
        if align == 0 && min_align_mask == 0 && total >= PAGE_SIZE {
            align = PAGE_SIZE - 1;
        }
        align |= IO_TLB_SIZE - 1;
        let iotlb_align_mask = min_align_mask & !align;
        let mut i = 0;
        while i + nslots <= self.used.len() {
            // Inside the pool, whose end was checked at creation.
            let addr = self.start.raw() + i as u64 * IO_TLB_SIZE;
            let seg_end = (i / IO_TLB_SEGSIZE + 1) * IO_TLB_SEGSIZE;
            let ok_align =
                addr & align == 0 && (addr & iotlb_align_mask) == (orig.raw() & iotlb_align_mask);
            if ok_align && i + nslots <= seg_end && self.used[i..i + nslots].iter().all(|u| !u) {
                for u in &mut self.used[i..i + nslots] {
                    *u = true;
                }
                self.free -= nslots;
                return Ok(BounceSlot {
                    tlb_addr: PhysAddr::new(addr + (offset & (IO_TLB_SIZE - 1))),
                    orig,
                    size,
                    first: i,
                    nslots,
                });
            }
            i += 1;
        }
        Err(BounceError::Full {
            size,
            free_slots: self.free,
            total_slots: self.used.len(),
        })
    }

    /// Give the slots back.
    pub fn release(&mut self, slot: &BounceSlot) -> Result<(), BounceError> {
        let range = slot.first..slot.first + slot.nslots;
        if range.end > self.used.len() || self.used[range.clone()].iter().any(|u| !u) {
            return Err(BounceError::NotMapped {
                addr: slot.tlb_addr.raw(),
            });
        }
        for u in &mut self.used[range] {
            *u = false;
        }
        self.free += slot.nslots;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_alignment_and_limits() {
        let mut p = BouncePool::new(PhysAddr::new(0x100_0000), 4 * MAX_MAPPING).unwrap();
        assert_eq!(p.total_slots(), 512);
        // Page-sized mappings are page aligned when nothing else is asked.
        let a = p.map(PhysAddr::new(0x7_0000_0123), 8192, 0, 0).unwrap();
        assert_eq!(a.tlb_addr.raw() % PAGE_SIZE, 0);
        // The device's min_align_mask is preserved in the bounce address.
        let b = p.map(PhysAddr::new(0x7_0000_0a40), 100, 0xfff, 0).unwrap();
        assert_eq!(b.tlb_addr.raw() & 0xfff, 0xa40);
        // One mapping never spans segments; 256 KiB is the limit.
        assert!(matches!(
            p.map(PhysAddr::new(0), MAX_MAPPING + 1, 0, 0),
            Err(BounceError::TooLarge { .. })
        ));
        let big = p.map(PhysAddr::new(0), MAX_MAPPING, 0, 0).unwrap();
        assert_eq!(big.tlb_addr.raw() % MAX_MAPPING, 0x100_0000 % MAX_MAPPING);
        p.release(&a).unwrap();
        p.release(&b).unwrap();
        assert!(p.release(&b).is_err(), "double release is caught");
        p.release(&big).unwrap();
        assert_eq!(p.free_slots(), 512);
    }

    #[test]
    fn full_pool_says_so() {
        let mut p = BouncePool::new(PhysAddr::new(0), MAX_MAPPING).unwrap();
        let _x = p.map(PhysAddr::new(0x1000), MAX_MAPPING, 0, 0).unwrap();
        let e = p.map(PhysAddr::new(0x1000), 10, 0, 0).unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
    }

    #[test]
    fn a_pool_that_cannot_be_is_an_error() {
        for (start, size) in [
            (0x1001, MAX_MAPPING),
            (0, MAX_MAPPING - 1),
            (0, MAX_POOL + 1),
            (u64::MAX - 0xfff, MAX_MAPPING),
        ] {
            let e = BouncePool::new(PhysAddr::new(start), size).unwrap_err();
            assert!(matches!(e, BounceError::BadPool { .. }), "{e}");
        }
        let mut p = BouncePool::new(PhysAddr::new(0), MAX_MAPPING).unwrap();
        assert!(matches!(
            p.map(PhysAddr::new(0), 1, 0, u64::MAX),
            Err(BounceError::TooLarge { .. })
        ));
        assert!(matches!(
            p.map(PhysAddr::new(0), u64::MAX, 0, 0),
            Err(BounceError::TooLarge { .. })
        ));
    }
}
