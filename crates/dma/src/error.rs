use crate::iommu::IommuFault;
use crate::memory::MemError;
use crate::swiotlb::BounceError;
use peerdma_mem::{Bdf, MemKind};
use peerdma_p2p::P2pError;
use std::fmt;

/// Why a mapping, sync or unmap was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum MapError {
    /// The client cannot reach the provider's memory and bouncing is not
    /// allowed (or not possible).
    NotSupported {
        provider: Bdf,
        client: Bdf,
        reason: String,
    },
    /// A request mixes kinds of memory (or providers); split it first.
    Mixed {
        index: usize,
        first: MemKind,
        other: MemKind,
    },
    /// Memory private to another device.
    Private { owner: Bdf, client: Bdf },
    /// The device is not known to the mapper.
    NoDevice(Bdf),
    /// No P2P provider is registered for that memory.
    NoProvider(Bdf),
    /// The segment lies outside the provider's BAR range.
    OutsideProvider { provider: Bdf },
    /// The provider was revoked.
    P2p(P2pError),
    /// The IOVA space of the device's domain is full.
    IovaExhausted { device: Bdf, len: u64 },
    /// The bounce pool could not hold the segment.
    Bounce(BounceError),
    /// A bounce copy failed.
    Memory(MemError),
    /// An IOMMU operation failed.
    Iommu(IommuFault),
    /// The device cannot address the memory and no bounce is allowed.
    BeyondMask { device: Bdf, mask: u64, addr: u64 },
    /// Empty request.
    Empty,
    /// A rule of the two-step API was broken.
    TwoStep(String),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapError::NotSupported { provider, client, reason } => write!(
                f,
                "{client} cannot reach the P2P memory of {provider} ({reason}) and bouncing through host memory is not allowed"
            ),
            MapError::Mixed { index, first, other } => write!(
                f,
                "segment {index} is {other} but the request started with {first}; a DMA request maps one kind of memory (split it)"
            ),
            MapError::Private { owner, client } => {
                write!(f, "{client} may not map memory private to {owner}")
            }
            MapError::NoDevice(b) => write!(f, "no DMA device {b} in this mapper"),
            MapError::NoProvider(b) => write!(f, "{b} has no P2P memory registered with this mapper"),
            MapError::OutsideProvider { provider } => {
                write!(f, "segment lies outside the P2P memory of {provider}")
            }
            MapError::P2p(e) => write!(f, "{e}"),
            MapError::IovaExhausted { device, len } => {
                write!(f, "IOVA space of {device}'s IOMMU domain has no room for {len} bytes")
            }
            MapError::Bounce(e) => write!(f, "{e}"),
            MapError::Memory(e) => write!(f, "bounce copy failed: {e}"),
            MapError::Iommu(e) => write!(f, "{e}"),
            MapError::BeyondMask { device, mask, addr } => write!(
                f,
                "{device} can address up to {mask:#x} but the memory is at {addr:#x} and bouncing is not allowed"
            ),
            MapError::Empty => write!(f, "nothing to map"),
            MapError::TwoStep(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for MapError {}

impl From<P2pError> for MapError {
    fn from(e: P2pError) -> Self {
        MapError::P2p(e)
    }
}

impl From<BounceError> for MapError {
    fn from(e: BounceError) -> Self {
        MapError::Bounce(e)
    }
}

impl From<MemError> for MapError {
    fn from(e: MemError) -> Self {
        MapError::Memory(e)
    }
}

impl From<IommuFault> for MapError {
    fn from(e: IommuFault) -> Self {
        MapError::Iommu(e)
    }
}
