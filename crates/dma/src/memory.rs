//! How the mapping layer moves bytes when it must bounce: a copy between a
//! physical range and a bounce slot in host memory. For host memory that is
//! a CPU copy; for P2P memory it is the second DMA of a bounced transfer
//! (done by an engine that can reach the BAR, or by volatile MMIO).

use peerdma_mem::{PhysAddr, PhysVec};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;

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

/// A sparse byte store keyed by physical address, for tests: every range
/// reads back what was written, unwritten bytes read as zero.
#[derive(Default, Debug)]
pub struct TestMemory {
    pages: Mutex<HashMap<u64, Box<[u8; 4096]>>>,
}

impl TestMemory {
    pub fn new() -> TestMemory {
        TestMemory::default()
    }

    pub fn write(&self, addr: PhysAddr, data: &[u8]) {
        let mut pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in data.iter().enumerate() {
            let a = addr.raw() + i as u64;
            pages.entry(a >> 12).or_insert_with(|| Box::new([0; 4096]))[(a & 0xfff) as usize] = *b;
        }
    }

    pub fn read(&self, addr: PhysAddr, len: usize) -> Vec<u8> {
        let pages = self.pages.lock().unwrap_or_else(|e| e.into_inner());
        (0..len as u64)
            .map(|i| {
                let a = addr.raw() + i;
                pages.get(&(a >> 12)).map_or(0, |p| p[(a & 0xfff) as usize])
            })
            .collect()
    }
}

impl CopyEngine for TestMemory {
    fn copy(&self, src: PhysVec, dst: PhysAddr) -> Result<(), MemError> {
        let data = self.read(src.addr(), src.len() as usize);
        self.write(dst, &data);
        Ok(())
    }
    fn copy_back(&self, src: PhysAddr, dst: PhysVec) -> Result<(), MemError> {
        let data = self.read(src, dst.len() as usize);
        self.write(dst.addr(), &data);
        Ok(())
    }
}
