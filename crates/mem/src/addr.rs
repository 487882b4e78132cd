use std::fmt;

/// What every address newtype can do. Implemented only by the types of this
/// crate; there is deliberately no conversion between them.
pub trait Address: Copy + Ord + fmt::Debug + fmt::Display + Sized {
    /// The space this address lives in, for messages ("phys", "bus", ...).
    const SPACE: &'static str;
    /// Wrap a raw value.
    fn new(raw: u64) -> Self;
    /// The raw value.
    fn raw(self) -> u64;

    /// `self + off`, or `None` on overflow.
    fn checked_add(self, off: u64) -> Option<Self> {
        self.raw().checked_add(off).map(Self::new)
    }
    /// `self - off`, or `None` on underflow.
    fn checked_sub(self, off: u64) -> Option<Self> {
        self.raw().checked_sub(off).map(Self::new)
    }
    /// The distance from `base` up to `self`, or `None` if `self < base`.
    fn offset_from(self, base: Self) -> Option<u64> {
        self.raw().checked_sub(base.raw())
    }
    /// Whether the address is a multiple of `align` (a power of two).
    fn is_aligned(self, align: u64) -> bool {
        debug_assert!(align.is_power_of_two());
        self.raw() & (align - 1) == 0
    }
    /// Round down to a multiple of `align` (a power of two).
    fn align_down(self, align: u64) -> Self {
        debug_assert!(align.is_power_of_two());
        Self::new(self.raw() & !(align - 1))
    }
    /// Round up to a multiple of `align` (a power of two), `None` on overflow.
    fn align_up(self, align: u64) -> Option<Self> {
        debug_assert!(align.is_power_of_two());
        self.raw()
            .checked_add(align - 1)
            .map(|v| Self::new(v & !(align - 1)))
    }
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $space:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(u64);

        impl $name {
            /// Wrap a raw value.
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }
            /// The raw value.
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl Address for $name {
            const SPACE: &'static str = $space;
            fn new(raw: u64) -> Self {
                Self(raw)
            }
            fn raw(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A CPU physical address.
    PhysAddr,
    "phys"
);
address_type!(
    /// A PCI bus address: what a peer puts on the wire to reach a BAR.
    BusAddr,
    "bus"
);
address_type!(
    /// The address a device was handed for DMA (bus address, IOVA or
    /// physical address, depending on how the segment was mapped).
    DmaAddr,
    "dma"
);
address_type!(
    /// An I/O virtual address in an IOMMU domain.
    Iova,
    "iova"
);

/// The difference between a provider's bus and CPU physical addresses
/// (`pci_bus_address(bar) - pci_resource_start(bar)` in the kernel). Zero on
/// x86; non-zero behind some host bridges that translate.
///
/// This is the only way from a [`PhysAddr`] to a [`BusAddr`] and back.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(transparent))]
pub struct BusOffset(i64);

impl BusOffset {
    /// No translation: bus address equals physical address.
    pub const IDENTITY: BusOffset = BusOffset(0);

    pub const fn new(offset: i64) -> Self {
        Self(offset)
    }

    /// The offset between a BAR's bus address (as programmed in config
    /// space) and its CPU physical address (as in `resource`).
    pub fn between(bus: BusAddr, phys: PhysAddr) -> Option<Self> {
        let d = i128::from(bus.raw()) - i128::from(phys.raw());
        i64::try_from(d).ok().map(Self)
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    /// `phys + offset`, `None` if the result leaves the 64-bit space.
    pub fn to_bus(self, phys: PhysAddr) -> Option<BusAddr> {
        let v = i128::from(phys.raw()) + i128::from(self.0);
        u64::try_from(v).ok().map(BusAddr::new)
    }

    /// `bus - offset`, `None` if the result leaves the 64-bit space.
    pub fn to_phys(self, bus: BusAddr) -> Option<PhysAddr> {
        let v = i128::from(bus.raw()) - i128::from(self.0);
        u64::try_from(v).ok().map(PhysAddr::new)
    }
}

impl fmt::Display for BusOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "-{:#x}", self.0.unsigned_abs())
        } else {
            write!(f, "+{:#x}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn checked_arithmetic_refuses_overflow() {
        let top = PhysAddr::new(u64::MAX - 1);
        assert_eq!(top.checked_add(1), Some(PhysAddr::new(u64::MAX)));
        assert_eq!(top.checked_add(2), None);
        assert_eq!(PhysAddr::new(3).checked_sub(4), None);
        assert_eq!(PhysAddr::new(10).offset_from(PhysAddr::new(4)), Some(6));
        assert_eq!(PhysAddr::new(4).offset_from(PhysAddr::new(10)), None);
    }

    #[test]
    fn alignment() {
        let a = DmaAddr::new(0x1234);
        assert!(!a.is_aligned(0x1000));
        assert_eq!(a.align_down(0x1000), DmaAddr::new(0x1000));
        assert_eq!(a.align_up(0x1000), Some(DmaAddr::new(0x2000)));
        assert_eq!(DmaAddr::new(u64::MAX).align_up(0x1000), None);
        assert!(DmaAddr::new(0x2000).is_aligned(0x1000));
    }

    #[test]
    fn display_is_hex_and_debug_names_the_space() {
        assert_eq!(BusAddr::new(0xfe00_0000).to_string(), "0xfe000000");
        assert_eq!(format!("{:?}", Iova::new(16)), "Iova(0x10)");
        assert_eq!(<BusAddr as Address>::SPACE, "bus");
    }

    #[test]
    fn bus_offset_round_trips_and_refuses_overflow() {
        let off = BusOffset::between(BusAddr::new(0x1000), PhysAddr::new(0x8000_1000)).unwrap();
        assert_eq!(off.get(), -0x8000_0000);
        assert_eq!(off.to_string(), "-0x80000000");
        let bus = off.to_bus(PhysAddr::new(0x8000_2000)).unwrap();
        assert_eq!(bus, BusAddr::new(0x2000));
        assert_eq!(off.to_phys(bus), Some(PhysAddr::new(0x8000_2000)));
        assert_eq!(off.to_bus(PhysAddr::new(0x10)), None);
        assert_eq!(
            BusOffset::new(1).to_bus(PhysAddr::new(u64::MAX)),
            None,
            "overflow past 2^64 is refused"
        );
        assert_eq!(
            BusOffset::between(BusAddr::new(u64::MAX), PhysAddr::new(0)),
            None
        );
    }

    proptest! {
        #[test]
        fn bus_offset_inverse(phys in any::<u64>(), off in any::<i64>()) {
            let o = BusOffset::new(off);
            if let Some(bus) = o.to_bus(PhysAddr::new(phys)) {
                prop_assert_eq!(o.to_phys(bus), Some(PhysAddr::new(phys)));
                prop_assert_eq!(BusOffset::between(bus, PhysAddr::new(phys)), Some(o));
            }
        }

        #[test]
        fn align_down_up_bracket(raw in any::<u64>(), shift in 0u32..40) {
            let align = 1u64 << shift;
            let a = PhysAddr::new(raw);
            let d = a.align_down(align);
            prop_assert!(d <= a && d.is_aligned(align) && a.raw() - d.raw() < align);
            if let Some(u) = a.align_up(align) {
                prop_assert!(u >= a && u.is_aligned(align) && u.raw() - a.raw() < align);
            }
        }
    }
}
