//! How the mapping layer moves bytes when it must bounce: a copy between a
//! physical range and a bounce slot in host memory. For host memory that is
//! a CPU copy; for P2P memory it is the second DMA of a bounced transfer
//! (done by an engine that can reach the BAR, or by volatile MMIO).

use peerdma_mem::{PhysAddr, PhysVec};
use std::fmt;

/// A copy that could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemError {
    pub addr: u64,
    pub len: u64,
    pub why: String,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at {:#x}: {}", self.len, self.addr, self.why)
    }
}

impl std::error::Error for MemError {}

/// Copies between memory ranges on behalf of the mapping layer.
pub trait CopyEngine: Send + Sync {
    /// Copy `src.len()` bytes from `src` to `dst` (host memory, bounce slot).
    fn copy(&self, src: PhysVec, dst: PhysAddr) -> Result<(), MemError>;
    /// Copy `len` bytes from host memory at `src` into `dst`.
    fn copy_back(&self, src: PhysAddr, dst: PhysVec) -> Result<(), MemError>;
}
