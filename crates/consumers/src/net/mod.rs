//! The network half: machines joined by a wire between two NICs.
//!
//! A workload of two machines numbers them (0 and 1); every leg of an I/O
//! says on which machine its DMA happened ([`crate::io::Leg::machine`]), and
//! frames on the wire are a leg of their own ([`crate::io::LegPath::Wire`]),
//! from the sending NIC to the receiving one, which the runner times on the
//! wire's link.
//!
//! devmem TCP receive, modelled on `net/core/devmem.c` and the page pool's
//! memory provider:
//!
//! * [`nic`]: a NIC on the simulated machine — RX rings in host memory,
//!   header split, the driver's buffer layout, drops for want of buffers;
//! * [`devmem`]: a dma-buf of device memory bound to an RX queue, mapped
//!   for the NIC by the kernel's verdict (refused where P2P cannot work),
//!   carved into `net_iov`s in a gen_pool;
//! * [`page_pool`]: the queue's page pool over the binding, with
//!   `pp_ref_count` and recycling;
//! * [`tcp`]: the socket — frags as `(dma-buf offset, size, token)`,
//!   `SO_DEVMEM_DONTNEED` — and the sender's TCP;
//! * [`frame`]: Ethernet, IPv4 and TCP headers as bytes, MSS, line bytes;
//! * [`flow`]: a flow between two NICs in rounds, a user program
//!   ([`flow::run_transfer`]) and its report, with the legs for timing;
//! * [`utilization`]: buffer utilization and throughput for MTU × `net_iov`
//!   size × layout, as a table.

use peerdma_mem::Bdf;

/// One of the machines of a workload: 0 when there is one.
pub type MachineId = usize;

/// One end of the wire: a NIC function of a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    pub machine: MachineId,
    pub nic: Bdf,
}

/// A cable between two NICs, with its line rate, MTU and latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Wire {
    pub a: Port,
    pub b: Port,
    /// Bytes per second of the line, each direction.
    pub bytes_per_sec: f64,
    /// Largest IP packet a frame carries (the interface MTU).
    pub mtu: u32,
    /// One-way latency, nanoseconds.
    pub latency_ns: u64,
}

impl Wire {
    /// The other end of the wire from `p`, if `p` is one of its ends.
    pub fn peer(&self, p: Port) -> Option<Port> {
        if p == self.a {
            Some(self.b)
        } else if p == self.b {
            Some(self.a)
        } else {
            None
        }
    }
}

pub mod devmem;
pub mod flow;
pub mod frame;
pub mod nic;
pub mod page_pool;
pub mod tcp;
pub mod utilization;

use peerdma_sim::{AccessError, DmaError};

/// Why a network operation failed. Each message names the device, queue
/// or binding, and the errno a user of the kernel's API would see leads
/// it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("ENODEV: {0} is not on this machine")]
    NoDevice(Bdf),
    #[error(
        "ENODEV: {bdf} is not a network controller (class {class:06x}); devmem TCP binds to a NIC"
    )]
    NotANic { bdf: Bdf, class: u32 },
    #[error("EINVAL: {nic} has {queues} RX queues; there is no queue {queue}")]
    NoQueue { nic: Bdf, queue: u32, queues: u32 },
    #[error("EEXIST: RX queue {queue} of {nic} is already bound to dma-buf binding {binding} (unbind it first)")]
    QueueBusy { nic: Bdf, queue: u32, binding: u32 },
    #[error("EINVAL: header split is off on {nic} (ethtool -G tcp-data-split on): devmem TCP needs headers in host memory and payloads in the dma-buf")]
    HeaderSplitOff { nic: Bdf },
    #[error("EINVAL: rx-buf-size {size} must be a power of 2 >= page size (4096), at most 2 MiB")]
    RxBufSize { size: u32 },
    #[error("EREMOTEIO: cannot bind the dma-buf of {memory}'s memory to {nic} RX queue {queue}: {nic} cannot reach it by P2P ({reason}); devmem TCP has no bounce path")]
    BindRefused {
        nic: Bdf,
        queue: u32,
        memory: Bdf,
        reason: String,
    },
    #[error("EREMOTEIO: {nic} cannot read the send buffer in {memory}'s memory by P2P ({reason}); devmem TX has no bounce path")]
    SendRefused {
        nic: Bdf,
        memory: Bdf,
        reason: String,
    },
    #[error("EINVAL: dma-buf sg entry (addr={addr:#x}, len={len}) not aligned to net_iov size {niov_size}")]
    Unaligned { addr: u64, len: u64, niov_size: u64 },
    #[error("EINVAL: a dma-buf of {len} bytes has too many net_iovs of {niov_size} bytes")]
    TooLarge { len: u64, niov_size: u64 },
    #[error("cannot export {dev}'s memory as a dma-buf: {why}")]
    Export { dev: Bdf, why: String },
    #[error("EINVAL: SO_DEVMEM_DONTNEED takes at most 128 token ranges, not {given}")]
    TooManyTokens { given: usize },
    #[error("EINVAL: MTU {mtu} is outside 576..=9216")]
    Mtu { mtu: u32 },
    #[error("EINVAL: {0}")]
    Config(String),
    #[error("ENODEV: {nic} has no dma-buf bound to an RX queue")]
    NotBound { nic: Bdf },
    #[error("the wire does not join these NICs: {0}")]
    Wire(String),
    #[error(
        "EIO: binding {binding}: {out} bytes of net_iovs are still out of the gen_pool at free"
    )]
    Leak { binding: u32, out: u64 },
    #[error("EIO: {0}")]
    Frame(String),
    #[error("EIO: {what}: {source}")]
    Dma {
        what: String,
        #[source]
        source: DmaError,
    },
    #[error("{what}: {source}")]
    Access {
        what: String,
        #[source]
        source: AccessError,
    },
    #[error("EIO: byte {stream_offset} of the stream (dma-buf offset {dmabuf_offset:#x}, in {memory}'s memory) is not what the sender sent")]
    Corrupt {
        stream_offset: u64,
        dmabuf_offset: u64,
        memory: Bdf,
    },
}

impl NetError {
    /// The errno name.
    pub fn errno(&self) -> &'static str {
        match self {
            NetError::NoDevice(_) | NetError::NotANic { .. } | NetError::NotBound { .. } => {
                "ENODEV"
            }
            NetError::QueueBusy { .. } => "EEXIST",
            NetError::BindRefused { .. } | NetError::SendRefused { .. } => "EREMOTEIO",
            NetError::Export { .. } => "ENOMEM",
            NetError::Leak { .. }
            | NetError::Frame(_)
            | NetError::Dma { .. }
            | NetError::Access { .. }
            | NetError::Corrupt { .. }
            | NetError::Wire(_) => "EIO",
            _ => "EINVAL",
        }
    }
}
