use peerdma_dma::{IommuFault, MapError};
use peerdma_mem::Bdf;
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
