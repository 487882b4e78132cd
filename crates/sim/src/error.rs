use crate::timing::TimingError;
use peerdma_dma::{IommuFault, MapError};
use peerdma_mem::{Bdf, DmaAddr};
use std::fmt;

/// Why a simulated DMA did not complete. `done` is how many bytes had
/// moved before it stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum DmaError {
    /// A link on the path went down (completion timeout / surprise down).
    LinkDown { below: Bdf, done: u64 },
    /// A device on the path, or the initiator, is gone.
    Removed { device: Bdf, done: u64 },
    /// The IOMMU refused an access.
    Iommu { fault: IommuFault, done: u64 },
    /// The provider's memory was revoked before the DMA could start.
    Revoked { provider: Bdf },
    /// The list is for another device, or the wrong direction.
    Misuse(String),
    /// Mapping failed.
    Map(MapError),
    /// A list entry's address plus an offset inside it runs past the end
    /// of the address space.
    AddressOverflow { addr: DmaAddr, offset: u64 },
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::LinkDown { below, done } => {
                write!(f, "link above {below} is down (after {done} bytes)")
            }
            DmaError::Removed { device, done } => {
                write!(f, "{device} was removed (after {done} bytes)")
            }
            DmaError::Iommu { fault, done } => write!(f, "{fault} (after {done} bytes)"),
            DmaError::Revoked { provider } => write!(f, "P2P memory of {provider} is revoked"),
            DmaError::Misuse(m) => write!(f, "{m}"),
            DmaError::Map(e) => write!(f, "{e}"),
            DmaError::AddressOverflow { addr, offset } => write!(
                f,
                "DMA address {addr} + {offset:#x} runs past the end of the address space"
            ),
        }
    }
}

impl std::error::Error for DmaError {}

impl From<MapError> for DmaError {
    fn from(e: MapError) -> Self {
        DmaError::Map(e)
    }
}

impl DmaError {
    /// Bytes moved before the error.
    pub fn done(&self) -> u64 {
        match self {
            DmaError::LinkDown { done, .. }
            | DmaError::Removed { done, .. }
            | DmaError::Iommu { done, .. } => *done,
            _ => 0,
        }
    }
}

/// Why a simulated machine could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// A link could not be added.
    #[error("the machine's links cannot be modelled")]
    Timing(#[source] TimingError),
    /// The mapping layer could not be set up.
    #[error("the machine's DMA mapping layer cannot be set up")]
    Mapper(#[source] MapError),
}

impl From<TimingError> for BuildError {
    fn from(e: TimingError) -> Self {
        BuildError::Timing(e)
    }
}
