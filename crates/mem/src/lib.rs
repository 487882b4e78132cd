//! Address and memory vocabulary for peer-to-peer DMA.
//!
//! Four address spaces meet in a P2P transfer and must never be confused:
//!
//! * [`PhysAddr`]: a CPU physical address (what `/proc/iomem` and a BAR's
//!   `resource` line show);
//! * [`BusAddr`]: a PCI bus address, what a peer device puts on the wire.
//!   It comes from a physical address only through its provider's
//!   [`BusOffset`] (`bus = phys + offset`, as the kernel's
//!   `pci_p2pdma_bus_addr_map`);
//! * [`DmaAddr`]: the address a device was told to use (a bus address, an
//!   IOVA, or a physical address when no IOMMU translates);
//! * [`Iova`]: an address in an IOMMU domain.
//!
//! Each is its own type: adding a `PhysAddr` to a `BusAddr` does not compile.
//! Arithmetic is checked: an overflow is an error, never a wrap.
//!
//! Beside addresses: [`Bdf`] names a PCI function, [`MemKind`] says what kind
//! of memory a range is, [`PhysVec`] carries a physical range with its kind
//! (what the kernel once needed a `struct page` for), and [`Direction`] is
//! the DMA direction.
//!
//! ```
//! use peerdma_mem::{format_size, parse_size, Bdf, BusOffset, MemKind, PhysAddr, PhysVec};
//!
//! // A BAR at CPU physical 0x3800_0000_0000 that the host bridge shows to
//! // the bus 0x1000 lower: a peer uses the bus address.
//! let offset = BusOffset::new(-0x1000);
//! let bus = offset.to_bus(PhysAddr::new(0x3800_0000_0000)).unwrap();
//! assert_eq!(bus.raw(), 0x37ff_ffff_f000);
//! // A range of that BAR, kind and all.
//! let gpu: Bdf = "0000:1a:00.0".parse().unwrap();
//! let v = PhysVec::new(PhysAddr::new(0x3800_0000_0000), parse_size("2M").unwrap(), MemKind::P2p { provider: gpu }).unwrap();
//! assert_eq!(v.kind().provider(), Some(gpu));
//! assert!(!v.kind().cpu_coherent());
//! assert_eq!(format_size(v.len()), "2 MiB");
//! assert_eq!(gpu.short(), "1a:00.0");
//! ```

mod addr;
pub mod alloc;
mod bdf;
pub mod io;
mod kind;
mod range;
mod size;

pub use addr::{Address, BusAddr, BusOffset, DmaAddr, Iova, PhysAddr};
pub use alloc::{AllocError, RangeAllocator};
pub use bdf::{Bdf, BdfError};
pub use io::{AccessError, IoMem, OutOfBounds};
pub use kind::{Direction, MemKind, PhysVec, PhysVecError};
pub use range::{AddrRange, RangeError};
pub use size::{format_size, parse_size, SizeError};

/// The page size the kernel's P2P pools allocate in (`PAGE_SHIFT` = 12 on x86-64).
pub const PAGE_SIZE: u64 = 4096;

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
