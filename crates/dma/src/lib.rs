//! DMA mapping: from physical vectors ([`PhysVec`](peerdma_mem::PhysVec)) to DMA-only
//! scatter-gather lists ([`DmaSgl`]) for one device and one direction.
//!
//! Per segment, the decision is the kernel's: host memory goes through the
//! device's IOMMU domain (or directly, when there is none or it passes
//! through); P2P memory reachable by bus address gets its bus address, with
//! no IOMMU and nothing to unmap; P2P memory reachable through the host
//! bridge is mapped like host memory; P2P memory the device cannot reach is
//! an error naming the pair — or, under the bounce policy, goes through a
//! swiotlb-like bounce pool in host memory, and the list says so.
//!
//! A [`DmaSgl`] has no way back to CPU memory: its entries are `(DmaAddr,
//! len)`. It records how each segment was mapped, so unmapping always
//! matches mapping, and it holds the provider's live reference while it
//! exists.
//!
//! Beside the one-shot [`Mapper::map`], the two-step API of recent kernels is
//! here too: [`Mapper::iova_try_alloc`] then [`IovaState::link`],
//! [`IovaState::sync`], [`IovaState::unlink`], [`IovaState::destroy`].
//!
//! The IOMMU is the mapper's: callers ask it questions
//! ([`Mapper::iommu_mode`], [`Mapper::iommu_translate`],
//! [`Mapper::iommu_faults`], [`Mapper::mapped_pages`]) rather than hold its
//! lock, and tests bring their own [`CopyEngine`]:
//!
//! ```compile_fail
//! fn faults(m: &peerdma_dma::Mapper) -> usize {
//!     m.iommu().faults().len()
//! }
//! ```
//!
//! ```compile_fail
//! let memory = peerdma_dma::TestMemory::new();
//! ```

mod error;
pub mod iommu;
mod map;
mod memory;
pub mod swiotlb;
mod twostep;

pub use error::MapError;
pub use iommu::{IommuFault, IommuMode};
pub use map::{
    BouncePolicy, DeviceDma, DmaEntry, DmaSgl, Mapper, MapperConfig, PathTaken, SegMapping,
};
pub use memory::{CopyEngine, MemError};
pub use swiotlb::{BounceError, BouncePool};
pub use twostep::IovaState;
