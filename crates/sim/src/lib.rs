//! A simulated machine for peer-to-peer DMA, built from any topology
//! source: host DRAM per NUMA node and the BAR memory of every endpoint
//! backed by real (sparse) bytes; DMA engines that read and write by DMA
//! address; a fabric that routes each transaction as PCIe does — upstream
//! through the IOMMU at the root complex, peer to peer at the lowest common
//! switch unless ACS redirects it, and root complexes that forward peer
//! traffic only where the kernel's rules say they do (elsewhere a read
//! returns all-ones and a write is dropped, as real hardware answers an
//! Unsupported Request); flow-level timing with max-min fair sharing; and
//! faults on demand.
//!
//! The pieces, one module each:
//!
//! * the machine ([`SimMachine`]): built from a [`peerdma_pci::Topology`],
//!   it is the API — memories for the CPU, host buffers, mapping, media,
//!   DMA, faults, timing;
//! * the memory map: DRAM and BARs in physical address space;
//! * the fabric: links and the routing of every request ([`Route`]);
//! * the DMA engine: moves a list's bytes as the fabric routes them
//!   ([`Transfer`]), or many handed pieces in one DMA (a NIC scattering a
//!   burst into its buffers: [`SimMachine::dma_to_many`]), reusing a
//!   route for the addresses it covers while no fault is pending;
//! * media: each device's local storage;
//! * faults ([`Fault`]): link down, surprise removal, IOMMU fault, revoke;
//! * [`timing`]: the flow-level timing model.
//!
//! Every public entry checks its input (devices, ranges, overflow) and
//! returns an error that names it ([`AccessError`], [`DmaError`],
//! [`BuildError`]); none panics on input.
//!
//! ```
//! use peerdma_dma::BouncePolicy;
//! use peerdma_mem::Direction;
//! use peerdma_pci::Source;
//! use peerdma_sim::{Route, SimConfig, SimMachine};
//!
//! let m = SimMachine::new(Source::Preset("dual-xeon".into()).load()?, SimConfig::default())?;
//! let (gpu, nvme) = (m.device("gpu0")?, m.device("nvme0")?);
//! let buf = m.provider(nvme).expect("nvme0 publishes p2pmem").alloc(1 << 20)?;
//! let list = m.map(gpu, &[buf.phys()], Direction::FromDevice, BouncePolicy::Forbid)?;
//! let t = m.dma_write(gpu, &list, &vec![7u8; 1 << 20])?;
//! assert!(matches!(t.routes[0], Route::Switch { .. }), "below one switch");
//! let mut back = vec![0u8; 1 << 20];
//! m.cpu_read(buf.phys_addr(), &mut back)?;
//! assert!(back.iter().all(|&b| b == 7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The machine's stores are its own: memory is reached through
//! [`SimMachine::cpu_read`], media through [`SimMachine::media_read`].
//!
//! ```compile_fail
//! let store = peerdma_sim::memory::Region::new(0, 4096);
//! ```

mod engine;
mod error;
mod fabric;
mod faults;
mod machine;
mod media;
mod memmap;
mod memory;
pub mod pattern;
pub mod timing;

pub use engine::{Local, LocalMut, PathBytes, RoutedPiece, Transfer, UrEvent};
pub use error::{AccessError, BuildError, DmaError};
pub use fabric::Route;
pub use faults::{Fault, RevokeOutcome};
pub use machine::{HostBuffer, SimConfig, SimMachine, BOUNCE_BASE};
pub use memmap::DRAM_PER_NODE;

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
