use crate::{AddrRange, Bdf, PhysAddr, RangeError};
use std::fmt;

/// What a physical range is, and so who may touch it and how.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", tag = "kind"))]
pub enum MemKind {
    /// Host RAM: CPU-coherent, any device may DMA to it through the IOMMU.
    System,
    /// A PCI BAR published for peer-to-peer DMA by `provider`. Uncached; the
    /// CPU reaches it only through volatile MMIO accessors.
    P2p { provider: Bdf },
    /// Memory owned by one device; nobody else may DMA to it.
    DevicePrivate { owner: Bdf },
}

impl MemKind {
    /// The P2P provider, if this is P2P memory.
    pub fn provider(&self) -> Option<Bdf> {
        match self {
            MemKind::P2p { provider } => Some(*provider),
            _ => None,
        }
    }
    /// Whether plain CPU loads and stores are valid (only host RAM).
    pub fn cpu_coherent(&self) -> bool {
        matches!(self, MemKind::System)
    }
}

impl fmt::Display for MemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemKind::System => write!(f, "host memory"),
            MemKind::P2p { provider } => write!(f, "P2P memory of {provider}"),
            MemKind::DevicePrivate { owner } => write!(f, "private memory of {owner}"),
        }
    }
}

/// A physical range with its kind: what carries an address where the kernel
/// once needed a `struct page`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PhysVec {
    range: AddrRange<PhysAddr>,
    kind: MemKind,
}

/// Why a [`PhysVec`] could not be formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysVecError(pub RangeError);

impl fmt::Display for PhysVecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad physical vector: {}", self.0)
    }
}

impl std::error::Error for PhysVecError {}

impl PhysVec {
    pub fn new(addr: PhysAddr, len: u64, kind: MemKind) -> Result<Self, PhysVecError> {
        Ok(PhysVec {
            range: AddrRange::new(addr, len).map_err(PhysVecError)?,
            kind,
        })
    }
    pub fn addr(&self) -> PhysAddr {
        self.range.start()
    }
    pub fn len(&self) -> u64 {
        self.range.len()
    }
    /// Always false: a vector is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn range(&self) -> AddrRange<PhysAddr> {
        self.range
    }
    pub fn kind(&self) -> MemKind {
        self.kind
    }
    /// Split at `at` bytes from the start: both halves keep the kind.
    pub fn split_at(&self, at: u64) -> Option<(PhysVec, PhysVec)> {
        let head = self.range.sub(0, at)?;
        let tail = self.range.sub(at, self.len() - at)?;
        Some((
            PhysVec {
                range: head,
                kind: self.kind,
            },
            PhysVec {
                range: tail,
                kind: self.kind,
            },
        ))
    }
}

impl fmt::Display for PhysVec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.range, self.kind)
    }
}

/// The direction of a DMA, from the device's point of view.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Direction {
    /// The device reads the memory (a write to disk, a transmit).
    ToDevice,
    /// The device writes the memory (a read from disk, a receive).
    FromDevice,
    /// Both.
    Bidirectional,
}

impl Direction {
    pub fn device_reads(self) -> bool {
        matches!(self, Direction::ToDevice | Direction::Bidirectional)
    }
    pub fn device_writes(self) -> bool {
        matches!(self, Direction::FromDevice | Direction::Bidirectional)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::ToDevice => "to-device",
            Direction::FromDevice => "from-device",
            Direction::Bidirectional => "bidirectional",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physvec_rules() {
        let p: Bdf = "0000:03:00.0".parse().unwrap();
        assert!(PhysVec::new(PhysAddr::new(0), 0, MemKind::System).is_err());
        let v = PhysVec::new(PhysAddr::new(0x1000), 0x3000, MemKind::P2p { provider: p }).unwrap();
        assert_eq!(v.kind().provider(), Some(p));
        assert!(!v.kind().cpu_coherent());
        let (a, b) = v.split_at(0x1000).unwrap();
        assert_eq!((a.addr(), a.len()), (PhysAddr::new(0x1000), 0x1000));
        assert_eq!((b.addr(), b.len()), (PhysAddr::new(0x2000), 0x2000));
        assert_eq!(b.kind(), v.kind());
        assert!(v.split_at(0).is_none() && v.split_at(0x3000).is_none());
        assert!(v.to_string().contains("P2P memory of 0000:03:00.0"));
    }

    #[test]
    fn directions() {
        assert!(Direction::ToDevice.device_reads() && !Direction::ToDevice.device_writes());
        assert!(Direction::FromDevice.device_writes() && !Direction::FromDevice.device_reads());
        assert!(
            Direction::Bidirectional.device_reads() && Direction::Bidirectional.device_writes()
        );
    }
}
