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
//! ```
//! use peerdma_dma::{BouncePolicy, CopyEngine, IommuMode, Mapper, MapperConfig, MemError, PathTaken};
//! use peerdma_mem::{Direction, DmaAddr, MemKind, PhysAddr, PhysVec};
//! use peerdma_p2p::Provider;
//! use peerdma_pci::Source;
//! use std::sync::Arc;
//!
//! /// Bytes are never bounced here, so there is nothing to copy.
//! struct NoCopies;
//! impl CopyEngine for NoCopies {
//!     fn copy(&self, _: PhysVec, _: PhysAddr) -> Result<(), MemError> { Ok(()) }
//!     fn copy_back(&self, _: PhysAddr, _: PhysVec) -> Result<(), MemError> { Ok(()) }
//! }
//!
//! let t = Arc::new(Source::Preset("dual-xeon".into()).load().unwrap());
//! let cfg = MapperConfig { iommu_mode: IommuMode::Off, bounce_base: PhysAddr::new(0x400_0000), bounce_size: 4 << 20 };
//! let mapper = Mapper::new(Arc::clone(&t), cfg, Arc::new(NoCopies)).unwrap();
//! let (gpu, nvme) = (t.function(t.lookup("gpu0").unwrap()), t.function(t.lookup("nvme0").unwrap()));
//!
//! // Host memory for the GPU: its physical address, no IOMMU.
//! let host = PhysVec::new(PhysAddr::new(0x10_0000), 8192, MemKind::System).unwrap();
//! let sgl = mapper.map(gpu.bdf, &[host], Direction::ToDevice, BouncePolicy::Forbid).unwrap();
//! assert_eq!(sgl.path(), PathTaken::HostMemory);
//! assert_eq!(sgl.entries()[0].addr, DmaAddr::direct(PhysAddr::new(0x10_0000)));
//!
//! // The NVMe drive's CMB for the GPU below the same switch: by bus address.
//! let bar = nvme.largest_memory_bar().unwrap();
//! let cmb = Provider::from_function(nvme, bar.index, 0, 0).unwrap();
//! mapper.register_provider(&cmb);
//! let p2p = PhysVec::new(bar.phys.start(), 4096, MemKind::P2p { provider: nvme.bdf }).unwrap();
//! let sgl = mapper.map(gpu.bdf, &[p2p], Direction::FromDevice, BouncePolicy::Forbid).unwrap();
//! assert_eq!(sgl.path(), PathTaken::BusAddr);
//! ```
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

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
