use crate::Address;
use std::fmt;

/// A non-empty range `[start, start + len)` in one address space whose end
/// does not overflow.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct AddrRange<A> {
    start: A,
    /// `start + len - 1`, computed (checked) once at construction.
    #[cfg_attr(feature = "serde", serde(skip_serializing))]
    last: A,
    len: u64,
}

/// Why a range could not be formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    Empty,
    Overflow { start: u64, len: u64 },
}

impl fmt::Display for RangeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RangeError::Empty => write!(f, "empty range"),
            RangeError::Overflow { start, len } => {
                write!(
                    f,
                    "range {start:#x}+{len:#x} runs past the end of the address space"
                )
            }
        }
    }
}

impl std::error::Error for RangeError {}

impl<A: Address> AddrRange<A> {
    /// `[start, start + len)`; refuses empty ranges and ranges whose last byte
    /// would overflow 64 bits.
    pub fn new(start: A, len: u64) -> Result<Self, RangeError> {
        if len == 0 {
            return Err(RangeError::Empty);
        }
        let last = start.checked_add(len - 1).ok_or(RangeError::Overflow {
            start: start.raw(),
            len,
        })?;
        Ok(AddrRange { start, last, len })
    }

    pub fn start(&self) -> A {
        self.start
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Always false: ranges are non-empty by construction.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// The last address inside the range (the range may end at 2^64).
    pub fn last(&self) -> A {
        self.last
    }
    /// One past the end, `None` if the range ends exactly at 2^64.
    pub fn end(&self) -> Option<A> {
        self.start.checked_add(self.len)
    }
    pub fn contains(&self, a: A) -> bool {
        a >= self.start && a <= self.last()
    }
    /// Whether `[a, a+len)` lies entirely inside this range.
    pub fn contains_range(&self, other: &AddrRange<A>) -> bool {
        self.contains(other.start) && other.last() <= self.last()
    }
    pub fn overlaps(&self, other: &AddrRange<A>) -> bool {
        self.start <= other.last() && other.start <= self.last()
    }
    /// Offset of `a` from the start, if `a` is inside.
    pub fn offset_of(&self, a: A) -> Option<u64> {
        if self.contains(a) {
            a.offset_from(self.start)
        } else {
            None
        }
    }
    /// The sub-range `[start + off, start + off + len)`, if it fits inside.
    pub fn sub(&self, off: u64, len: u64) -> Option<AddrRange<A>> {
        if len == 0 || off >= self.len || len > self.len - off {
            return None;
        }
        AddrRange::new(self.start.checked_add(off)?, len).ok()
    }
}

impl<A: Address> fmt::Display for AddrRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}-{:#x}]", self.start, self.last().raw())
    }
}

impl<A: Address> fmt::Debug for AddrRange<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", A::SPACE, self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BusAddr, PhysAddr};
    use proptest::prelude::*;

    #[test]
    fn construction_rules() {
        assert_eq!(AddrRange::new(PhysAddr::new(0), 0), Err(RangeError::Empty));
        assert!(AddrRange::new(PhysAddr::new(u64::MAX), 1).is_ok());
        assert!(matches!(
            AddrRange::new(PhysAddr::new(u64::MAX), 2),
            Err(RangeError::Overflow { .. })
        ));
        let r = AddrRange::new(PhysAddr::new(u64::MAX - 9), 10).unwrap();
        assert_eq!(r.end(), None);
        assert_eq!(r.last(), PhysAddr::new(u64::MAX));
    }

    #[test]
    fn containment_and_overlap() {
        let r = AddrRange::new(BusAddr::from_config_space(0x1000), 0x1000).unwrap();
        assert!(r.contains(BusAddr::from_config_space(0x1fff)));
        assert!(!r.contains(BusAddr::from_config_space(0x2000)));
        assert_eq!(r.offset_of(BusAddr::from_config_space(0x1800)), Some(0x800));
        let s = r.sub(0x800, 0x800).unwrap();
        assert!(r.contains_range(&s));
        assert_eq!(r.sub(0x800, 0x801), None);
        assert_eq!(r.sub(0x1000, 1), None);
        let t = AddrRange::new(BusAddr::from_config_space(0x1fff), 2).unwrap();
        assert!(r.overlaps(&t) && t.overlaps(&r));
        let u = AddrRange::new(BusAddr::from_config_space(0x2000), 2).unwrap();
        assert!(!r.overlaps(&u));
        assert_eq!(format!("{r:?}"), "bus[0x1000-0x1fff]");
    }

    proptest! {
        #[test]
        fn overlap_is_symmetric_and_matches_bytes(a in 0u64..64, al in 1u64..16, b in 0u64..64, bl in 1u64..16) {
            let r = AddrRange::new(PhysAddr::new(a), al).unwrap();
            let s = AddrRange::new(PhysAddr::new(b), bl).unwrap();
            let bytes = (a..a + al).any(|x| (b..b + bl).contains(&x));
            prop_assert_eq!(r.overlaps(&s), bytes);
            prop_assert_eq!(s.overlaps(&r), bytes);
        }
    }
}
