//! The simulator's errors: building a machine, touching its memories, and
//! DMA. Each names what was wrong and where (device, address or offset,
//! size); where another error caused it, that error is the `source()`.

use crate::timing::TimingError;
use peerdma_dma::{IommuFault, MapError};
use peerdma_mem::{format_size, Bdf, Direction, DmaAddr, PhysAddr};

/// Why a simulated machine could not be built from a topology.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// A link could not be added (a bandwidth or latency of the
    /// configuration is out of range).
    #[error("the machine's links cannot be modelled")]
    Timing(#[source] TimingError),
    /// The mapping layer could not be set up (for example the bounce pool).
    #[error("the machine's DMA mapping layer cannot be set up")]
    Mapper(#[source] MapError),
    /// Two memories (host DRAM, BARs) claim the same physical addresses.
    #[error("{first} and {second} overlap in physical address space")]
    Overlap { first: String, second: String },
    /// Two BARs below one host bridge claim the same bus addresses.
    #[error("{first} and {second} overlap in the bus address space of host bridge {host_bridge}")]
    BusOverlap {
        host_bridge: String,
        first: String,
        second: String,
    },
    /// A BAR's bus range (`phys + bus_offset`) leaves the 64-bit space.
    #[error("BAR {bar} of {device}: its bus addresses (CPU address {phys} + bus offset) leave the 64-bit space")]
    BusRange {
        device: Bdf,
        bar: u8,
        phys: PhysAddr,
    },
    /// More NUMA nodes than the simulated memory map can place.
    #[error("{nodes} NUMA nodes: the simulated memory map places at most {max}")]
    TooManyNodes { nodes: usize, max: usize },
    /// The bounce pool does not fit node 0's memory below 2 GiB.
    #[error("the bounce pool ({size} bytes at {base}) does not fit node 0's memory below 2 GiB")]
    BouncePool { base: PhysAddr, size: u64 },
}

impl From<TimingError> for BuildError {
    fn from(e: TimingError) -> Self {
        BuildError::Timing(e)
    }
}

/// Why a memory access, an allocation or a request naming a device was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No function with that BDF in this machine.
    #[error("no function {0} in this machine")]
    NoDevice(Bdf),
    /// The function has no memory BAR of that number.
    #[error("{device} has no memory BAR {bar}")]
    NoBar { device: Bdf, bar: u8 },
    /// The function publishes no P2P memory.
    #[error("{0} publishes no P2P memory in this machine")]
    NoProvider(Bdf),
    /// The function already has a P2P provider.
    #[error("{0} already has a P2P provider in this machine")]
    ProviderExists(Bdf),
    /// No memory (host DRAM or BAR) holds the whole range.
    #[error("no memory holds {len} bytes at {addr} (host DRAM or a BAR)")]
    NoMemory { addr: PhysAddr, len: u64 },
    /// A range of a device's media that it does not have (or that wraps).
    #[error(
        "{device}'s media holds {} ({size} bytes): {len} bytes at offset {offset:#x} are not all inside",
        format_size(*size)
    )]
    Media {
        device: Bdf,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// Host memory could not be allocated.
    #[error("cannot allocate {len} bytes of host memory on NUMA node {node}: {why}")]
    HostMemory {
        node: u32,
        len: u64,
        why: &'static str,
    },
}

/// Why a simulated DMA did not complete (or did not start). `done` is how
/// many bytes had moved before it stopped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DmaError {
    /// A link on the path went down (completion timeout / surprise down).
    #[error("link above {below} is down (after {done} bytes)")]
    LinkDown { below: Bdf, done: u64 },
    /// A device on the path, or the initiator, is gone.
    #[error("{device} was removed (after {done} bytes)")]
    Removed { device: Bdf, done: u64 },
    /// The IOMMU refused an access.
    #[error("the IOMMU stopped the DMA after {done} bytes")]
    Iommu {
        #[source]
        fault: IommuFault,
        done: u64,
    },
    /// The provider's memory was revoked before the DMA could start.
    #[error("P2P memory of {provider} is revoked")]
    Revoked { provider: Bdf },
    /// The list was mapped for another device.
    #[error("the list was mapped for {mapped_for}, not {engine}")]
    WrongDevice { mapped_for: Bdf, engine: Bdf },
    /// The list's direction does not allow this DMA.
    #[error("the list is mapped {mapped}, which does not allow the device to {}", if *.device_writes { "write it" } else { "read it" })]
    WrongDirection {
        mapped: Direction,
        device_writes: bool,
    },
    /// The buffer and the list differ in length.
    #[error("{buffer} bytes for a {list}-byte list")]
    LengthMismatch { buffer: u64, list: u64 },
    /// A copy engine was pointed at memory that is not its own.
    #[error("{engine}'s copy engine can only use its own memory, and {len:#x} bytes at {addr} are not in one of its BARs")]
    NotOwnMemory {
        engine: Bdf,
        addr: PhysAddr,
        len: u64,
    },
    /// An empty request (nothing to route).
    #[error("a request of 0 bytes at {addr} from {engine}")]
    Empty { engine: Bdf, addr: DmaAddr },
    /// An address plus a length or offset runs past the end of the
    /// address space.
    #[error("DMA address {addr} + {len:#x} runs past the end of the address space")]
    AddressOverflow { addr: DmaAddr, len: u64 },
    /// A device, provider, media range or memory the request names is not
    /// there.
    #[error("the DMA cannot start")]
    Access(#[source] AccessError),
    /// Mapping failed.
    #[error("mapping for DMA failed")]
    Map(#[source] MapError),
}

impl From<MapError> for DmaError {
    fn from(e: MapError) -> Self {
        DmaError::Map(e)
    }
}

impl From<AccessError> for DmaError {
    fn from(e: AccessError) -> Self {
        DmaError::Access(e)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn causes_are_sources_not_repeated() {
        let fault = IommuFault {
            device: Bdf::from_devfn(0, 3, 0),
            addr: 0x1000,
            write: true,
            reason: "address not mapped",
        };
        let e = DmaError::Iommu {
            fault: fault.clone(),
            done: 4096,
        };
        assert_eq!(e.source().unwrap().to_string(), fault.to_string());
        assert!(e.to_string().contains("4096"), "{e}");
        assert!(!e.to_string().contains("not mapped"), "{e}");
        let e = DmaError::from(MapError::Empty);
        assert_eq!(e.source().unwrap().to_string(), "nothing to map");
        let e = DmaError::from(AccessError::NoDevice(Bdf::from_devfn(0, 9, 0)));
        assert!(e.source().unwrap().to_string().contains("0000:09:00.0"));
        let e = BuildError::from(TimingError::TooManyFlows { count: 1 });
        assert!(e.source().is_some());
    }
}
