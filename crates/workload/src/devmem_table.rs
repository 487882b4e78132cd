//! The devmem TCP utilization table on a machine: two copies of it joined
//! by a wire between the NIC that reaches a GPU best, one transfer per
//! (MTU, `net_iov` size, layout). `peerdma devmem-table` prints it.

use peerdma_consumers::devmem::DeviceMemory;
pub use peerdma_consumers::net::devmem::rx_buf_size_valid;
use peerdma_consumers::net::flow::Host;
pub use peerdma_consumers::net::frame::{mtu_valid, MAX_MTU, MIN_MTU};
pub use peerdma_consumers::net::nic::BufferLayout;
pub use peerdma_consumers::net::utilization::{render_table, TableRow};
use peerdma_consumers::net::utilization::{utilization_table, TableSpec};
use peerdma_consumers::net::{Port, Wire};
use peerdma_mem::Bdf;
use peerdma_pci::Topology;
use peerdma_sim::{SimConfig, SimMachine};

/// What to tabulate.
#[derive(Clone, Debug)]
pub struct TableRequest {
    pub mtus: Vec<u32>,
    pub niov_sizes: Vec<u32>,
    pub layouts: Vec<BufferLayout>,
    /// Payload bytes per cell.
    pub bytes: u64,
    /// Line rate of the wire, bytes per second.
    pub wire_bytes_per_sec: f64,
}

/// The table and the devices it ran on.
#[derive(Clone, Debug)]
pub struct Table {
    pub nic: Bdf,
    pub gpu: Bdf,
    pub rows: Vec<TableRow>,
}

/// Run the table on two copies of `topo`. Errors are one line: why the
/// machine has no NIC and GPU for it, or which cell failed.
pub fn devmem_table(topo: &Topology, req: &TableRequest) -> Result<Table, String> {
    let (nic, gpu) = crate::demo::best_nic_gpu(topo, 64 << 20)?;
    let machine = || {
        SimMachine::new(topo.clone(), SimConfig::default())
            .map_err(|e| format!("cannot simulate {}: {e}", topo.origin_label()))
    };
    let (m0, m1) = (machine()?, machine()?);
    let (d0, d1) = (DeviceMemory::new(), DeviceMemory::new());
    let nic = topo.function(nic).bdf;
    let gpu = topo.function(gpu).bdf;
    let wire = Wire {
        a: Port { machine: 0, nic },
        b: Port { machine: 1, nic },
        bytes_per_sec: req.wire_bytes_per_sec,
        mtu: 1500,
        latency_ns: 2000,
    };
    let spec = TableSpec {
        bytes: req.bytes,
        mtus: req.mtus.clone(),
        niov_sizes: req.niov_sizes.clone(),
        layouts: req.layouts.clone(),
        into: gpu,
    };
    let rows = utilization_table(
        Host {
            sim: &m0,
            mem: &d0,
            id: 0,
        },
        Host {
            sim: &m1,
            mem: &d1,
            id: 1,
        },
        &wire,
        wire.a,
        &spec,
    )
    .map_err(|e| e.to_string())?;
    Ok(Table { nic, gpu, rows })
}
