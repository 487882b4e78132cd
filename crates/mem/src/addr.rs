use std::fmt;

mod sealed {
    /// Only the address types of this crate implement [`super::Address`].
    pub trait Sealed {}
}

/// What every address newtype can do: read its raw value and move within
/// its own space with checked arithmetic.
///
/// The trait is sealed (only this crate's four types implement it) and has
/// no constructor: generic code can derive an address from another address
/// of the same space, never make one from a number. Each type's own named
/// constructors say where its values come from:
///
/// * [`PhysAddr::new`]: the CPU's physical address map (firmware, a BAR's
///   `resource` line, a simulated machine's memory map);
/// * [`BusAddr`]: from a provider's [`PhysAddr`] through its [`BusOffset`],
///   or [`BusAddr::from_config_space`] for what a BAR register holds;
/// * [`Iova`]: [`Iova::from_domain`], by the IOMMU domain that allocated it;
/// * [`DmaAddr`]: only from a mapping: [`DmaAddr::from_bus`],
///   [`DmaAddr::from_iova`], [`DmaAddr::direct`].
///
/// ```compile_fail
/// use peerdma_mem::{Address, BusAddr};
/// // No generic constructor: an address cannot be forged from a number.
/// fn forge<A: Address>(raw: u64) -> A { A::new(raw) }
/// let _: BusAddr = forge(0x1000);
/// ```
///
/// ```compile_fail
/// use peerdma_mem::Address;
/// // Sealed: no other type can claim to be an address.
/// #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
/// struct Mine(u64);
/// impl std::fmt::Display for Mine {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}", self.0) }
/// }
/// impl Address for Mine {
///     const SPACE: &'static str = "mine";
///     fn raw(self) -> u64 { self.0 }
///     fn checked_add(self, off: u64) -> Option<Self> { self.0.checked_add(off).map(Mine) }
///     fn checked_sub(self, off: u64) -> Option<Self> { self.0.checked_sub(off).map(Mine) }
///     fn align_down(self, align: u64) -> Self { self }
///     fn align_up(self, align: u64) -> Option<Self> { Some(self) }
/// }
/// ```
pub trait Address:
    sealed::Sealed + Copy + Ord + fmt::Debug + fmt::Display + Sized + Send + Sync + 'static
{
    /// The space this address lives in, for messages ("phys", "bus", ...).
    const SPACE: &'static str;
    /// The raw value (to print it, or to hand it to hardware).
    fn raw(self) -> u64;
    /// `self + off`, or `None` on overflow.
    fn checked_add(self, off: u64) -> Option<Self>;
    /// `self - off`, or `None` on underflow.
    fn checked_sub(self, off: u64) -> Option<Self>;
    /// Round down to a multiple of `align`; `align` must be a power of two
    /// (any other value leaves the address unchanged).
    fn align_down(self, align: u64) -> Self;
    /// Round up to a multiple of `align` (a power of two), `None` on
    /// overflow or when `align` is not a power of two.
    fn align_up(self, align: u64) -> Option<Self>;

    /// The distance from `base` up to `self`, or `None` if `self < base`.
    fn offset_from(self, base: Self) -> Option<u64> {
        self.raw().checked_sub(base.raw())
    }
    /// Whether the address is a multiple of `align` (false unless `align`
    /// is a power of two).
    fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.raw() & (align - 1) == 0
    }
}

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident, $space:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "serde", derive(serde::Serialize))]
        #[cfg_attr(feature = "serde", serde(transparent))]
        pub struct $name(u64);

        impl $name {
            /// The raw value (to print it, or to hand it to hardware).
            pub const fn raw(self) -> u64 {
                self.0
            }
        }

        impl sealed::Sealed for $name {}

        impl Address for $name {
            const SPACE: &'static str = $space;
            fn raw(self) -> u64 {
                self.0
            }
            fn checked_add(self, off: u64) -> Option<Self> {
                self.0.checked_add(off).map(Self)
            }
            fn checked_sub(self, off: u64) -> Option<Self> {
                self.0.checked_sub(off).map(Self)
            }
            fn align_down(self, align: u64) -> Self {
                if align.is_power_of_two() {
                    Self(self.0 & !(align - 1))
                } else {
                    self
                }
            }
            fn align_up(self, align: u64) -> Option<Self> {
                if !align.is_power_of_two() {
                    return None;
                }
                self.0.checked_add(align - 1).map(|v| Self(v & !(align - 1)))
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
    ///
    /// It comes from a provider's [`PhysAddr`] through its [`BusOffset`]
    /// ([`BusOffset::to_bus`]); the one raw source is a BAR register read
    /// from config space ([`BusAddr::from_config_space`]).
    ///
    /// ```compile_fail
    /// // No conversion from a physical address or a number.
    /// let bus = peerdma_mem::BusAddr::new(0x1000);
    /// ```
    ///
    /// ```compile_fail
    /// let phys = peerdma_mem::PhysAddr::new(0x1000);
    /// let bus: peerdma_mem::BusAddr = phys.into();
    /// ```
    BusAddr,
    "bus"
);
address_type!(
    /// The address a device was handed for DMA: a bus address, an IOVA, or
    /// a physical address where nothing translates. Only a mapping makes
    /// one, and each constructor is named for the mapping it stands for.
    ///
    /// ```compile_fail
    /// let dma = peerdma_mem::DmaAddr::new(0x1000);
    /// ```
    ///
    /// ```compile_fail
    /// let phys = peerdma_mem::PhysAddr::new(0x1000);
    /// let dma: peerdma_mem::DmaAddr = phys.into();
    /// ```
    DmaAddr,
    "dma"
);
address_type!(
    /// An I/O virtual address in an IOMMU domain.
    ///
    /// ```compile_fail
    /// let iova = peerdma_mem::Iova::new(0x1_0000_0000);
    /// ```
    Iova,
    "iova"
);

impl PhysAddr {
    /// A CPU physical address, as the machine's memory map gives it
    /// (firmware, a BAR's `resource` line, `/proc/iomem`, a simulated
    /// machine's DRAM). Physical space is where addresses start; every
    /// other space is reached from it by a named conversion.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }
}

impl BusAddr {
    /// The bus address a BAR register holds, as read from config space
    /// (`pci_bus_address`). This is the one place a bus address is taken
    /// from a number: everything else derives it from a provider's
    /// physical address through [`BusOffset::to_bus`].
    pub const fn from_config_space(bar_register: u64) -> Self {
        Self(bar_register)
    }
}

impl Iova {
    /// An address an IOMMU domain's IOVA allocator handed out (or an
    /// offset into such an allocation): only the code that owns the
    /// domain calls this.
    pub const fn from_domain(raw: u64) -> Self {
        Self(raw)
    }
}

impl DmaAddr {
    /// A P2P segment routed by bus address: the device is given the bus
    /// address itself (`PCI_P2PDMA_MAP_BUS_ADDR`).
    pub const fn from_bus(bus: BusAddr) -> Self {
        Self(bus.0)
    }

    /// A segment mapped through the device's IOMMU domain: the device is
    /// given the IOVA.
    pub const fn from_iova(iova: Iova) -> Self {
        Self(iova.0)
    }

    /// A segment that nothing translates (no IOMMU or an identity domain,
    /// with identity DMA ranges): the device is given the physical address.
    pub const fn direct(phys: PhysAddr) -> Self {
        Self(phys.0)
    }

    /// An address a device read out of memory — from a queue entry, a PRP
    /// list, an SGL descriptor — as the driver wrote it there: on the
    /// device's side of a DMA, that is all it has.
    pub const fn from_descriptor(raw: u64) -> Self {
        Self(raw)
    }

    /// What the root complex sees when nothing translates (IOMMU off or
    /// passthrough, identity DMA ranges): the physical address.
    pub const fn untranslated(self) -> PhysAddr {
        PhysAddr(self.0)
    }
}

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
        u64::try_from(v).ok().map(BusAddr)
    }

    /// `bus - offset`, `None` if the result leaves the 64-bit space.
    pub fn to_phys(self, bus: BusAddr) -> Option<PhysAddr> {
        let v = i128::from(bus.raw()) - i128::from(self.0);
        u64::try_from(v).ok().map(PhysAddr)
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
        let a = DmaAddr(0x1234);
        assert!(!a.is_aligned(0x1000));
        assert_eq!(a.align_down(0x1000), DmaAddr(0x1000));
        assert_eq!(a.align_up(0x1000), Some(DmaAddr(0x2000)));
        assert_eq!(DmaAddr(u64::MAX).align_up(0x1000), None);
        assert!(DmaAddr(0x2000).is_aligned(0x1000));
    }

    #[test]
    fn display_is_hex_and_debug_names_the_space() {
        assert_eq!(BusAddr(0xfe00_0000).to_string(), "0xfe000000");
        assert_eq!(format!("{:?}", Iova(16)), "Iova(0x10)");
        assert_eq!(<BusAddr as Address>::SPACE, "bus");
    }

    #[test]
    fn bus_offset_round_trips_and_refuses_overflow() {
        let off = BusOffset::between(BusAddr(0x1000), PhysAddr::new(0x8000_1000)).unwrap();
        assert_eq!(off.get(), -0x8000_0000);
        assert_eq!(off.to_string(), "-0x80000000");
        let bus = off.to_bus(PhysAddr::new(0x8000_2000)).unwrap();
        assert_eq!(bus, BusAddr(0x2000));
        assert_eq!(off.to_phys(bus), Some(PhysAddr::new(0x8000_2000)));
        assert_eq!(off.to_bus(PhysAddr::new(0x10)), None);
        assert_eq!(
            BusOffset::new(1).to_bus(PhysAddr::new(u64::MAX)),
            None,
            "overflow past 2^64 is refused"
        );
        assert_eq!(
            BusOffset::between(BusAddr(u64::MAX), PhysAddr::new(0)),
            None
        );
    }

    #[test]
    fn each_space_is_reached_by_its_named_conversion() {
        let phys = PhysAddr::new(0x8000_2000);
        let off = BusOffset::new(-0x8000_0000);
        let bus = off.to_bus(phys).unwrap();
        assert_eq!(bus, BusAddr::from_config_space(0x2000));
        assert_eq!(DmaAddr::from_bus(bus).raw(), 0x2000);
        assert_eq!(DmaAddr::direct(phys).raw(), 0x8000_2000);
        assert_eq!(DmaAddr::direct(phys).untranslated(), phys);
        let iova = Iova::from_domain(0x1_0000_0000);
        assert_eq!(DmaAddr::from_iova(iova).raw(), 0x1_0000_0000);
    }

    #[test]
    fn alignment_with_a_bad_align_is_refused_not_wrong() {
        let a = PhysAddr::new(0x1234);
        assert!(!a.is_aligned(3));
        assert!(!a.is_aligned(0));
        assert_eq!(a.align_up(0), None);
        assert_eq!(a.align_up(6), None);
        assert_eq!(a.align_down(6), a);
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
