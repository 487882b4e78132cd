//! RDMA between two simulated machines: memory regions on dma-bufs of GPU
//! memory (dynamic and pinned), WRITE and READ across the wire, GPUDirect
//! RDMA from GPU to GPU, and every fault path.

use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::io::{End, LegPath};
use peerdma_consumers::net::{Port, Wire};
use peerdma_consumers::rdma::job::JobFault;
use peerdma_consumers::rdma::{
    gpudirect, run_rdma, Access, Connection, DmaBuf, DmaBufError, Endpoint, Host, Inject, Memory,
    Migration, MrKind, Placement, RdmaError, RdmaEvent, RdmaJob, RdmaNic, RdmaOp, Side, WcStatus,
};
use peerdma_dma::IommuMode;
use peerdma_mem::{Address, Bdf};
use peerdma_p2p::ProviderState;
use peerdma_pci::Source;
use peerdma_sim::{pattern, Fault, SimConfig, SimMachine};

fn machine(preset: &str, iommu: IommuMode) -> SimMachine {
    SimMachine::new(
        Source::Preset(preset.into()).load().unwrap(),
        SimConfig {
            iommu,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

struct Pair {
    sims: [SimMachine; 2],
    dm: [DeviceMemory; 2],
}

impl Pair {
    fn new(preset: &str, iommu: IommuMode) -> Pair {
        Pair {
            sims: [machine(preset, iommu), machine(preset, iommu)],
            dm: [DeviceMemory::new(), DeviceMemory::new()],
        }
    }
    fn hosts(&self) -> Vec<Host<'_>> {
        (0..2)
            .map(|i| Host {
                sim: &self.sims[i],
                devmem: &self.dm[i],
            })
            .collect()
    }
    fn dev(&self, m: usize, name: &str) -> Bdf {
        self.sims[m].device(name).unwrap()
    }
    fn wire(&self, nic: &str, mtu: u32) -> Wire {
        Wire {
            a: Port {
                machine: 0,
                nic: self.dev(0, nic),
            },
            b: Port {
                machine: 1,
                nic: self.dev(1, nic),
            },
            bytes_per_sec: 12.5e9,
            mtu,
            latency_ns: 1000,
        }
    }
    fn side(&self, m: usize, nic: &str, mem: Option<&str>) -> Side {
        Side {
            machine: m,
            nic: self.dev(m, nic),
            memory: match mem {
                Some(g) => Memory::Device(self.dev(m, g)),
                None => Memory::Host,
            },
        }
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn a_remote_write_lands_in_gpu_memory_by_bus_address() {
    let p = Pair::new("dual-xeon", IommuMode::Off);
    let job = RdmaJob::new(
        RdmaOp::Write,
        p.side(0, "nic0", None),
        p.side(1, "nic0", Some("gpu0")),
        3 * MIB + 4096,
    );
    let r = run_rdma(&p.hosts(), &p.wire("nic0", 1500), &job).unwrap();
    r.check.as_ref().unwrap();
    r.teardown.as_ref().unwrap();
    assert_eq!(r.path_mtu, 1024);
    assert_eq!(r.messages, 4);
    let legs = &r.outcome.io.legs;
    // Machine 0: the NIC reads host memory; the wire; machine 1: the NIC
    // writes the GPU's memory below their common switch.
    let gpu = p.dev(1, "gpu0");
    let nic1 = p.dev(1, "nic0");
    let l0 = legs.iter().find(|l| l.machine == 0).unwrap();
    assert_eq!(l0.path, LegPath::HostMemory);
    let w = legs.iter().find(|l| l.path == LegPath::Wire).unwrap();
    assert_eq!((w.machine, w.peer_machine), (0, Some(1)));
    assert_eq!(w.bytes, job.size);
    let l1 = legs.iter().find(|l| l.machine == 1).unwrap();
    assert_eq!(l1.path, LegPath::BusAddr);
    assert_eq!(l1.to, End::Device { bdf: gpu });
    assert_eq!(l1.from, End::Device { bdf: nic1 });
    assert_eq!(l1.provider, Some(gpu));
    assert_eq!(l1.bytes, job.size);
    assert!(!l1.paths.is_empty());
    // Every data packet carries at most the path MTU.
    assert!(r.outcome.packets >= job.size.div_ceil(1024));
    assert!(r.outcome.wire_bytes > job.size);
}
