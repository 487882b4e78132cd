//! The network half: machines joined by a wire between two NICs.
//!
//! A workload of two machines numbers them (0 and 1); every leg of an I/O
//! says on which machine its DMA happened ([`crate::io::Leg::machine`]), and
//! frames on the wire are a leg of their own ([`crate::io::LegPath::Wire`]),
//! from the sending NIC to the receiving one, which the runner times on the
//! wire's link.

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
