//! A range allocator: first-fit, granule-sized, aligned, coalescing. It
//! backs both a provider's P2P pool (the kernel's `gen_pool` with
//! `PAGE_SHIFT` granules) and an IOMMU domain's IOVA space.

use std::collections::BTreeMap;
use std::fmt;

/// Why an allocator operation was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocError {
    /// The granule or alignment is not a power of two, or the range is not
    /// a whole number of granules.
    Geometry(String),
    /// A free of a range that is not (wholly) allocated: a double free or a
    /// stray range.
    NotAllocated { start: u64, len: u64 },
}

impl fmt::Display for AllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocError::Geometry(m) => write!(f, "{m}"),
            AllocError::NotAllocated { start, len } => {
                write!(
                    f,
                    "range {start:#x}+{len:#x} is not allocated (double free?)"
                )
            }
        }
    }
}

impl std::error::Error for AllocError {}

/// Allocates sub-ranges of `[base, base + size)`.
#[derive(Debug, Clone)]
pub struct RangeAllocator {
    base: u64,
    size: u64,
    granule: u64,
    /// Free extents: start -> length; never adjacent (always coalesced).
    free: BTreeMap<u64, u64>,
    available: u64,
}

impl RangeAllocator {
    /// An allocator over `[base, base + size)` handing out multiples of
    /// `granule` (a power of two); base and size must be granule multiples.
    pub fn new(base: u64, size: u64, granule: u64) -> Result<Self, AllocError> {
        if !granule.is_power_of_two() {
            return Err(AllocError::Geometry(format!(
                "granule {granule:#x} is not a power of two"
            )));
        }
        if base % granule != 0 || size % granule != 0 {
            return Err(AllocError::Geometry(format!(
                "range {base:#x}+{size:#x} is not a whole number of {granule:#x}-byte granules"
            )));
        }
        if base.checked_add(size).is_none() && size != 0 {
            return Err(AllocError::Geometry(format!(
                "range {base:#x}+{size:#x} overflows"
            )));
        }
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(base, size);
        }
        Ok(RangeAllocator {
            base,
            size,
            granule,
            free,
            available: size,
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }
    /// Total bytes managed (`gen_pool_size`).
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Bytes free (`gen_pool_avail`).
    pub fn available(&self) -> u64 {
        self.available
    }
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// `len` rounded up to whole granules.
    pub fn round(&self, len: u64) -> Option<u64> {
        len.checked_add(self.granule - 1)
            .map(|v| v & !(self.granule - 1))
    }

    /// Allocate `len` bytes (rounded up to granules) at the lowest address
    /// aligned to `align` (a power of two; at least the granule is used).
    /// Returns the start, or `None` when no free extent fits.
    pub fn alloc(&mut self, len: u64, align: u64) -> Option<u64> {
        if len == 0 || !align.is_power_of_two() {
            return None;
        }
        let len = self.round(len)?;
        let align = align.max(self.granule);
        let mut found = None;
        for (&start, &flen) in &self.free {
            let aligned = start.checked_add(align - 1)? & !(align - 1);
            let pad = aligned - start;
            if pad < flen && flen - pad >= len {
                found = Some((start, flen, aligned));
                break;
            }
        }
        let (start, flen, aligned) = found?;
        self.free.remove(&start);
        if aligned > start {
            self.free.insert(start, aligned - start);
        }
        let end = aligned + len;
        let fend = start + flen;
        if fend > end {
            self.free.insert(end, fend - end);
        }
        self.available -= len;
        Some(aligned)
    }

    /// Return `[start, start + len)` (len rounded up to granules). Refuses
    /// ranges that are not wholly allocated, so a double free is caught.
    pub fn free(&mut self, start: u64, len: u64) -> Result<(), AllocError> {
        let bad = AllocError::NotAllocated { start, len };
        let len = self.round(len).ok_or(bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        if len == 0 || start < self.base || end > self.base + self.size || start % self.granule != 0
        {
            return Err(bad);
        }
        // No free extent may overlap the range.
        if let Some((&s, &l)) = self.free.range(..end).next_back() {
            if s + l > start {
                return Err(bad);
            }
        }
        let mut new_start = start;
        let mut new_len = len;
        if let Some((&s, &l)) = self.free.range(..start).next_back() {
            if s + l == start {
                self.free.remove(&s);
                new_start = s;
                new_len += l;
            }
        }
        if let Some(&l) = self.free.get(&end) {
            self.free.remove(&end);
            new_len += l;
        }
        self.free.insert(new_start, new_len);
        self.available += len;
        Ok(())
    }

    /// Whether `[start, start+len)` lies wholly in allocated space.
    pub fn is_allocated(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if len == 0 || start < self.base || end > self.base + self.size {
            return false;
        }
        match self.free.range(..end).next_back() {
            Some((&s, &l)) => s + l <= start,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn first_fit_alignment_and_coalescing() {
        let mut a = RangeAllocator::new(0x10000, 0x10000, 0x1000).unwrap();
        assert_eq!(a.alloc(1, 1), Some(0x10000), "rounded to a granule");
        assert_eq!(a.available(), 0xf000);
        assert_eq!(a.alloc(0x1000, 0x4000), Some(0x14000), "aligned");
        assert_eq!(
            a.alloc(0x2000, 1),
            Some(0x11000),
            "first fit fills the hole"
        );
        assert_eq!(a.alloc(0x1000, 1), Some(0x13000));
        assert_eq!(a.alloc(0x10000, 1), None);
        a.free(0x11000, 0x2000).unwrap();
        a.free(0x10000, 0x1000).unwrap();
        a.free(0x13000, 0x1000).unwrap();
        a.free(0x14000, 0x1000).unwrap();
        assert_eq!(a.available(), 0x10000);
        assert_eq!(
            a.alloc(0x10000, 1),
            Some(0x10000),
            "coalesced back to one extent"
        );
    }

    #[test]
    fn double_and_stray_frees_are_refused() {
        let mut a = RangeAllocator::new(0, 0x8000, 0x1000).unwrap();
        let x = a.alloc(0x2000, 1).unwrap();
        a.free(x, 0x2000).unwrap();
        assert_eq!(
            a.free(x, 0x2000),
            Err(AllocError::NotAllocated {
                start: x,
                len: 0x2000
            })
        );
        let y = a.alloc(0x1000, 1).unwrap();
        assert!(a.free(y, 0x2000).is_err(), "partly free");
        assert!(a.free(0x8000, 0x1000).is_err(), "outside");
        assert!(a.free(0x800, 0x1000).is_err(), "misaligned");
        assert!(RangeAllocator::new(0, 0x1800, 0x1000).is_err());
        assert!(RangeAllocator::new(0, 0x1000, 0x1800).is_err());
    }

    proptest! {
        #[test]
        fn allocations_never_overlap_and_accounting_holds(ops in proptest::collection::vec((1u64..0x5000, 0u32..4, any::<bool>()), 1..80)) {
            let mut a = RangeAllocator::new(0x1000_0000, 0x40000, 0x1000).unwrap();
            let mut live: Vec<(u64, u64)> = Vec::new();
            for (len, align_shift, free_one) in ops {
                if free_one && !live.is_empty() {
                    let (s, l) = live.remove(0);
                    prop_assert!(a.free(s, l).is_ok());
                    prop_assert!(!a.is_allocated(s, l));
                } else if let Some(s) = a.alloc(len, 0x1000 << align_shift) {
                    let l = a.round(len).unwrap();
                    prop_assert_eq!(s % (0x1000 << align_shift), 0);
                    for &(t, m) in &live {
                        prop_assert!(s + l <= t || t + m <= s, "overlap");
                    }
                    prop_assert!(a.is_allocated(s, l));
                    live.push((s, l));
                }
                let used: u64 = live.iter().map(|x| x.1).sum();
                prop_assert_eq!(a.available() + used, a.size());
            }
        }
    }
}
