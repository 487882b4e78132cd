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

mod error;
mod machine;
pub mod memory;
pub mod timing;

pub use error::{BuildError, DmaError};
pub use machine::{
    Fault, HostBuffer, Route, SimConfig, SimMachine, SimMemory, Transfer, UrEvent, BOUNCE_BASE,
    DRAM_PER_NODE,
};
