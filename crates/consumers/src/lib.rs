//! Storage consumers of P2P DMA on the simulated machine.

pub mod block;
pub mod devmem;
pub mod io;
pub mod nvme;
