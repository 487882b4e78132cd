use crate::iommu::IommuFault;
use crate::memory::MemError;
use crate::swiotlb::BounceError;
use peerdma_mem::{Bdf, MemKind};
use peerdma_p2p::P2pError;

/// Why a mapping, sync or unmap was refused.
///
/// Where another error caused it, the message says what failed and
/// [`std::error::Error::source`] gives the cause (print the chain, as
/// `anyhow`'s `{:#}` does, to see both).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    /// The client cannot reach the provider's memory and bouncing is not
    /// allowed (or not possible).
    #[error(
        "{client} cannot reach the P2P memory of {provider} ({reason}) and bouncing through host memory is not allowed"
    )]
    NotSupported {
        provider: Bdf,
        client: Bdf,
        reason: String,
    },
    /// A request mixes kinds of memory (or providers); split it first.
    #[error(
        "segment {index} is {other} but the request started with {first}; a DMA request maps one kind of memory (split it)"
    )]
    Mixed {
        index: usize,
        first: MemKind,
        other: MemKind,
    },
    /// Memory private to another device.
    #[error("{client} may not map memory private to {owner}")]
    Private { owner: Bdf, client: Bdf },
    /// The device is not known to the mapper.
    #[error("no DMA device {0} in this mapper")]
    NoDevice(Bdf),
    /// No P2P provider is registered for that memory.
    #[error("{0} has no P2P memory registered with this mapper")]
    NoProvider(Bdf),
    /// The segment lies outside the provider's BAR range.
    #[error("segment lies outside the P2P memory of {provider}")]
    OutsideProvider { provider: Bdf },
    /// The provider refused (it is revoked, or being revoked).
    #[error("the P2P provider refused the mapping")]
    P2p(#[source] P2pError),
    /// The IOVA space of the device's domain is full.
    #[error("IOVA space of {device}'s IOMMU domain has no room for {len} bytes")]
    IovaExhausted { device: Bdf, len: u64 },
    /// The bounce pool could not hold the segment (or could not be made).
    #[error("bounce buffering failed")]
    Bounce(#[source] BounceError),
    /// A bounce copy failed.
    #[error("bounce copy failed")]
    Memory(#[source] MemError),
    /// An IOMMU operation failed.
    #[error("the IOMMU refused the operation")]
    Iommu(#[source] IommuFault),
    /// The device cannot address the memory and no bounce is allowed.
    #[error(
        "{device} can address up to {mask:#x} but the memory is at {addr:#x} and bouncing is not allowed"
    )]
    BeyondMask { device: Bdf, mask: u64, addr: u64 },
    /// Empty request.
    #[error("nothing to map")]
    Empty,
    /// The segments of a request add up to more than 2^64 bytes.
    #[error("a request for {device} whose segments add up to more than 2^64 bytes")]
    TooLong { device: Bdf },
    /// A rule of the two-step API was broken.
    #[error("{0}")]
    TwoStep(String),
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn wrapped_causes_are_sources_not_repeated() {
        let fault = IommuFault {
            device: Bdf::from_devfn(0, 3, 0),
            addr: 0x1000,
            write: true,
            reason: "address not mapped",
        };
        let e = MapError::from(fault.clone());
        let src = e.source().expect("the IOMMU fault is the source");
        assert_eq!(src.to_string(), fault.to_string());
        assert!(!e.to_string().contains("address not mapped"), "{e}");

        let e = MapError::from(P2pError::Revoked {
            bdf: Bdf::from_devfn(0, 4, 0),
        });
        assert!(e
            .source()
            .is_some_and(|s| s.to_string().contains("revoked")));
        let e = MapError::from(MemError {
            addr: 0x10,
            len: 4,
            why: "no memory there".into(),
        });
        assert!(e.source().is_some());
        let e = MapError::from(BounceError::TooLarge { size: 1 << 30 });
        assert!(e.source().is_some());
        assert!(MapError::Empty.source().is_none());
    }
}
