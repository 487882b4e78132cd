//! The machine: built from a topology, it owns the memory map, the fabric,
//! the mapping layer, the P2P providers, host memory allocation, the media
//! and the fault state, and is the API the rest of the world uses.

use crate::engine::UrEvent;
use crate::error::{AccessError, BuildError, DmaError};
use crate::fabric::Fabric;
use crate::faults::{Fault, Faults, RevokeOutcome};
use crate::media::Media;
use crate::memmap::{HostAllocators, MemoryMap};
use crate::timing::{Flow, LinkId, Network, Schedule, SimTime, TimingError};
use peerdma_dma::{BouncePolicy, DmaSgl, IommuMode, Mapper, MapperConfig};
use peerdma_mem::{AddrRange, Bdf, Direction, MemKind, PhysAddr, PhysVec, PAGE_SIZE};
use peerdma_p2p::Provider;
use peerdma_pci::{FnId, PortType, Topology};
use std::sync::{Arc, Mutex, MutexGuard};

/// Where the bounce pool lives (node 0, below 2 GiB, for 32-bit devices).
pub const BOUNCE_BASE: PhysAddr = PhysAddr::new(0x400_0000);

/// Tunables of the simulated machine.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub iommu: IommuMode,
    /// Bytes of node 0's low memory (from [`BOUNCE_BASE`]) for the bounce
    /// pool.
    pub bounce_size: u64,
    /// Fraction of a link's raw rate left for data after TLP headers,
    /// DLLPs and flow control (256-byte payloads: about 0.91).
    pub tlp_efficiency: f64,
    /// Root complex internal bandwidth per host bridge (bytes/s).
    pub rc_bytes_per_sec: f64,
    /// Memory bandwidth per NUMA node (bytes/s).
    pub dram_bytes_per_sec: f64,
    /// Socket interconnect bandwidth (bytes/s).
    pub socket_bytes_per_sec: f64,
    /// Latency of a PCIe link plus the port it enters.
    pub link_latency: SimTime,
    pub rc_latency: SimTime,
    pub dram_latency: SimTime,
    pub socket_latency: SimTime,
    /// Media size of each endpoint's local storage (sparse).
    pub media_size: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            iommu: IommuMode::Off,
            bounce_size: 64 << 20,
            tlp_efficiency: 256.0 / (256.0 + 24.0),
            rc_bytes_per_sec: 256e9,
            dram_bytes_per_sec: 150e9,
            socket_bytes_per_sec: 62e9,
            link_latency: SimTime::from_nanos(150),
            rc_latency: SimTime::from_nanos(200),
            dram_latency: SimTime::from_nanos(90),
            socket_latency: SimTime::from_nanos(120),
            media_size: 64 << 30,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Host memory allocation, shared with the buffers (which give their
/// memory back on drop).
struct HostMemory(Mutex<HostAllocators>);

impl std::fmt::Debug for HostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostMemory")
    }
}

/// A host memory buffer in the simulated machine, freed on drop.
#[derive(Debug)]
pub struct HostBuffer {
    vec: PhysVec,
    node: u32,
    host: Arc<HostMemory>,
}

impl HostBuffer {
    pub fn phys(&self) -> PhysVec {
        self.vec
    }
    pub fn node(&self) -> u32 {
        self.node
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        if let Some(a) = lock(&self.host.0).get_mut(&self.node) {
            let _ = a.free(self.vec.addr().raw(), self.vec.len());
        }
    }
}

/// The machine.
pub struct SimMachine {
    pub(crate) topo: Arc<Topology>,
    cfg: SimConfig,
    pub(crate) mem: Arc<MemoryMap>,
    pub(crate) mapper: Mapper,
    pub(crate) net: Network,
    pub(crate) fabric: Fabric,
    pub(crate) media: Media,
    pub(crate) providers: std::sync::RwLock<Vec<Provider>>,
    pub(crate) faults: Faults,
    pub(crate) ur_log: Mutex<Vec<UrEvent>>,
    host: Arc<HostMemory>,
}

impl std::fmt::Debug for SimMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimMachine")
            .field("functions", &self.topo.len())
            .field("links", &self.net.links().len())
            .field("providers", &self.providers().len())
            .finish_non_exhaustive()
    }
}

impl SimMachine {
    /// Build the machine from any topology: DRAM per NUMA node, the BAR
    /// memory of every function, links from the PCIe link states, and a
    /// P2P provider for every function whose p2pmem is published.
    ///
    /// Refused, with the reason: memories that overlap in physical space,
    /// BARs that overlap in a host bridge's bus space or whose bus
    /// addresses leave the 64-bit space, a bounce pool that does not fit
    /// node 0's low memory, and bandwidths or latencies the timing model
    /// cannot use.
    pub fn new(topo: Topology, cfg: SimConfig) -> Result<SimMachine, BuildError> {
        let topo = Arc::new(topo);
        let mut nodes: Vec<u32> = topo
            .host_bridges()
            .iter()
            .map(|h| h.numa_node.unwrap_or(0))
            .collect();
        nodes.push(0);
        nodes.sort_unstable();
        nodes.dedup();
        let (mem, alloc) = MemoryMap::build(&topo, &nodes)?;
        if !MemoryMap::in_low_dram(BOUNCE_BASE, cfg.bounce_size) {
            return Err(BuildError::BouncePool {
                base: BOUNCE_BASE,
                size: cfg.bounce_size,
            });
        }
        let mem = Arc::new(mem);
        let mut net = Network::new();
        let fabric = Fabric::build(Arc::clone(&topo), &cfg, &nodes, &mem, &mut net)?;
        let mapper = Mapper::new(
            Arc::clone(&topo),
            MapperConfig {
                iommu_mode: cfg.iommu,
                bounce_base: BOUNCE_BASE,
                bounce_size: cfg.bounce_size,
            },
            mem.clone(),
        )
        .map_err(BuildError::Mapper)?;
        let providers = Self::providers_of(&topo, &mapper);
        Ok(SimMachine {
            media: Media::new(cfg.media_size),
            topo,
            cfg,
            mem,
            mapper,
            net,
            fabric,
            providers: std::sync::RwLock::new(providers),
            faults: Faults::default(),
            ur_log: Mutex::new(Vec::new()),
            host: Arc::new(HostMemory(Mutex::new(alloc))),
        })
    }

    /// A provider for every function whose p2pmem is published, registered
    /// with the mapper. The description names the BAR through its size:
    /// take the largest memory BAR that holds the published size.
    fn providers_of(topo: &Topology, mapper: &Mapper) -> Vec<Provider> {
        let mut providers = Vec::new();
        for f in topo.functions() {
            let Some(p2p) = f.p2pmem else { continue };
            let Some(bar) = f
                .bars
                .iter()
                .filter(|b| !b.io && b.phys.len() >= p2p.size)
                .max_by_key(|b| b.phys.len())
            else {
                continue;
            };
            if let Ok(p) = Provider::from_function(f, bar.index, p2p.size, 0) {
                p.publish(p2p.published);
                mapper.register_provider(&p);
                providers.push(p);
            }
        }
        providers
    }

    pub fn topology(&self) -> &Arc<Topology> {
        &self.topo
    }
    pub fn mapper(&self) -> &Mapper {
        &self.mapper
    }
    pub fn network(&self) -> &Network {
        &self.net
    }
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Look a function up by BDF or name.
    pub fn device(&self, what: &str) -> Result<Bdf, peerdma_pci::Error> {
        self.topo.lookup(what).map(|f| self.topo.function(f).bdf)
    }

    pub(crate) fn id(&self, bdf: Bdf) -> Result<FnId, AccessError> {
        self.topo.find(bdf).ok_or(AccessError::NoDevice(bdf))
    }

    /// The P2P provider of a function, if it publishes memory.
    pub fn provider(&self, bdf: Bdf) -> Option<Provider> {
        self.providers().into_iter().find(|p| p.bdf() == bdf)
    }

    /// Every P2P provider of the machine: those its topology publishes
    /// and those added with [`SimMachine::add_provider`].
    pub fn providers(&self) -> Vec<Provider> {
        self.providers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Make more device memory a P2P provider of this machine — what a
    /// driver does with `pci_p2pdma_add_resource` (a GPU exporting its
    /// VRAM aperture): mappable by the mapping layer, revocable by
    /// [`Fault::Revoke`](crate::Fault::Revoke). Its range must lie in one
    /// of its function's memory BARs, and a function has one provider.
    pub fn add_provider(&self, p: &Provider) -> Result<(), AccessError> {
        let f = self.id(p.bdf())?;
        let range = p.range();
        let inside = self
            .topo
            .function(f)
            .bars
            .iter()
            .any(|b| !b.io && b.phys.contains_range(&range));
        if !inside {
            return Err(AccessError::NoMemory {
                addr: range.start(),
                len: range.len(),
            });
        }
        let mut all = self.providers.write().unwrap_or_else(|e| e.into_inner());
        if all.iter().any(|q| q.bdf() == p.bdf()) {
            return Err(AccessError::ProviderExists(p.bdf()));
        }
        self.mapper.register_provider(p);
        all.push(p.clone());
        Ok(())
    }

    /// Allocate `len` bytes (rounded up to whole pages) of host memory on
    /// NUMA `node`.
    pub fn alloc_host(&self, len: u64, node: u32) -> Result<HostBuffer, AccessError> {
        let err = |why| AccessError::HostMemory { node, len, why };
        if len == 0 {
            return Err(err("an empty buffer"));
        }
        let mut a = lock(&self.host.0);
        let alloc = a
            .get_mut(&node)
            .ok_or(err("the machine has no such node"))?;
        let start = alloc
            .alloc(len, PAGE_SIZE)
            .ok_or(err("not enough free memory there"))?;
        let rounded = alloc.round(len).unwrap_or(len);
        let vec = match PhysVec::new(PhysAddr::new(start), rounded, MemKind::System) {
            Ok(v) => v,
            Err(_) => {
                let _ = alloc.free(start, rounded);
                return Err(err("the allocation is not a valid range"));
            }
        };
        Ok(HostBuffer {
            vec,
            node,
            host: Arc::clone(&self.host),
        })
    }

    /// The CPU reads memory: host DRAM directly; a BAR with volatile
    /// semantics (a removed device reads all-ones).
    pub fn cpu_read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), AccessError> {
        let (id, off) = self.mem.find_or_err(addr, buf.len() as u64)?;
        let r = self.mem.region(id);
        if let crate::memmap::Owner::Bar { function, .. } = r.owner {
            if self.faults.is_removed(&self.topo, function) {
                buf.fill(0xff);
                return Ok(());
            }
        }
        r.store.read(off, buf);
        Ok(())
    }

    /// The CPU writes memory (a removed device drops the write).
    pub fn cpu_write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), AccessError> {
        let (id, off) = self.mem.find_or_err(addr, data.len() as u64)?;
        let r = self.mem.region(id);
        if let crate::memmap::Owner::Bar { function, .. } = r.owner {
            if self.faults.is_removed(&self.topo, function) {
                return Ok(());
            }
        }
        r.store.write(off, data);
        Ok(())
    }

    /// Change a function's ACS control register now, as `setpci` would: the
    /// fabric routes by it at once; mappings made before keep the path
    /// they were given (the kernel caches verdicts), which is how a stale
    /// bus-address mapping turns into wrong bytes.
    pub fn set_acs_ctrl(&self, dev: Bdf, ctrl: u16) -> Result<(), AccessError> {
        self.fabric.set_acs_ctrl(self.id(dev)?, ctrl);
        Ok(())
    }

    /// Queue a fault; it fires during the next DMA that moves enough bytes.
    pub fn inject(&self, fault: Fault) -> Result<(), AccessError> {
        let dev = fault.device();
        self.id(dev)?;
        if matches!(fault, Fault::Revoke { .. }) && self.provider(dev).is_none() {
            return Err(AccessError::NoProvider(dev));
        }
        self.faults.queue(fault);
        Ok(())
    }

    /// Bring links and devices back and drop queued faults.
    pub fn heal(&self) {
        self.faults.heal();
    }

    /// Wait for the revokes started by [`Fault::Revoke`]; their outcomes.
    pub fn join_revokes(&self) -> Vec<RevokeOutcome> {
        self.faults.join_revokes()
    }

    /// Unsupported Requests answered so far.
    pub fn unsupported_requests(&self) -> Vec<UrEvent> {
        lock(&self.ur_log).clone()
    }

    /// Map memory for a device (the mapping layer over this machine).
    pub fn map(
        &self,
        dev: Bdf,
        vecs: &[PhysVec],
        dir: Direction,
        policy: BouncePolicy,
    ) -> Result<DmaSgl, DmaError> {
        Ok(self.mapper.map(dev, vecs, dir, policy)?)
    }

    /// Simulate concurrent flows on this machine's links.
    pub fn simulate(&self, flows: &[Flow]) -> Result<Schedule, TimingError> {
        self.net.simulate(flows)
    }

    /// The link above a function (between it and its port), if physical.
    pub fn link_above(&self, dev: Bdf) -> Option<LinkId> {
        self.topo.find(dev).and_then(|f| self.fabric.link_above(f))
    }

    /// The root complex link of a function's host bridge.
    pub fn root_complex_link(&self, dev: Bdf) -> Option<LinkId> {
        self.topo.find(dev).map(|f| {
            self.fabric
                .root_complex_link(self.topo.function(f).host_bridge)
        })
    }

    /// Make `dev`'s memory BAR `bar` hold data: every byte reads as
    /// [`crate::pattern`] data of `seed` at its offset in the BAR — device
    /// memory full of a dataset (a GPU's VRAM) that costs nothing until it
    /// is written, as [`SimMachine::fill_media_pattern`] does for media.
    /// What was written to the BAR before is forgotten.
    pub fn fill_bar_pattern(&self, dev: Bdf, bar: u8, seed: u64) -> Result<(), AccessError> {
        let f = self.id(dev)?;
        let (region, _, _) = self
            .mem
            .bars()
            .find(|&(_, function, index)| function == f && index == bar)
            .ok_or(AccessError::NoBar { device: dev, bar })?;
        self.mem
            .region(region)
            .store
            .reset(crate::memory::Unwritten::Pattern(seed));
        Ok(())
    }

    /// Write `len` bytes of [`crate::pattern`] data of `seed`, from
    /// `pattern_offset` on, into memory at `addr` (host DRAM or a BAR) —
    /// data produced where it lives, outside any DMA: an application
    /// filling its buffer, a GPU kernel writing its memory. What
    /// [`SimMachine::memory_pattern_mismatch`] checks against.
    pub fn fill_memory_pattern(
        &self,
        addr: PhysAddr,
        len: u64,
        seed: u64,
        pattern_offset: u64,
    ) -> Result<(), AccessError> {
        if len == 0 {
            return Ok(());
        }
        let (region, off) = self.mem.find_or_err(addr, len)?;
        self.mem
            .region(region)
            .store
            .fill_pattern(off, len, seed, pattern_offset);
        Ok(())
    }

    /// Check `len` bytes of memory at `addr` (host DRAM or a BAR) against
    /// [`crate::pattern`] data of `seed` from `pattern_offset` on, in place:
    /// the offset of the first byte that differs, or `None`.
    pub fn memory_pattern_mismatch(
        &self,
        addr: PhysAddr,
        len: u64,
        seed: u64,
        pattern_offset: u64,
    ) -> Result<Option<u64>, AccessError> {
        if len == 0 {
            return Ok(None);
        }
        let (region, off) = self.mem.find_or_err(addr, len)?;
        Ok(self
            .mem
            .region(region)
            .store
            .pattern_mismatch(off, len, seed, pattern_offset))
    }

    /// [`SimMachine::memory_pattern_mismatch`] for many ranges `(addr, len,
    /// pattern_offset)` of one seed, in order — every frag of a receive
    /// checked in one call: the index of the first range with a byte that
    /// differs and that byte's offset in it, or `None`.
    pub fn memory_patterns_mismatch(
        &self,
        ranges: &[(PhysAddr, u64, u64)],
        seed: u64,
    ) -> Result<Option<(usize, u64)>, AccessError> {
        let mut run: Vec<(u64, u64, u64)> = Vec::new();
        let mut i = 0;
        while i < ranges.len() {
            let (addr, len, _) = ranges[i];
            let (region, _) = self.mem.find_or_err(addr, len.max(1))?;
            let r = self.mem.region(region);
            // The ranges from here on that lie in the same memory.
            run.clear();
            let mut j = i;
            while j < ranges.len() {
                let (a, l, po) = ranges[j];
                let inside = AddrRange::new(a, l.max(1)).is_ok_and(|w| r.range.contains_range(&w));
                if !inside {
                    break;
                }
                run.push((r.range.offset_of(a).unwrap_or(0), l, po));
                j += 1;
            }
            if let Some((k, at)) = r.store.patterns_mismatch(&run, seed) {
                return Ok(Some((i + k, at)));
            }
            i = j;
        }
        Ok(None)
    }

    /// [`SimMachine::memory_pattern_mismatch`] for `len` bytes of `dev`'s
    /// media at `offset`.
    pub fn media_pattern_mismatch(
        &self,
        dev: Bdf,
        offset: u64,
        len: u64,
        seed: u64,
        pattern_offset: u64,
    ) -> Result<Option<u64>, AccessError> {
        if len == 0 {
            return Ok(None);
        }
        let store = self.media_range(dev, offset, len)?;
        Ok(store.pattern_mismatch(offset, len, seed, pattern_offset))
    }

    /// The NUMA node whose DRAM holds `addr`, if it is host memory.
    pub fn host_node(&self, addr: PhysAddr) -> Option<u32> {
        let (region, _) = self.mem.find(addr, 1)?;
        match self.mem.region(region).owner {
            crate::memmap::Owner::Dram { node } => Some(node),
            crate::memmap::Owner::Bar { .. } => None,
        }
    }

    /// The links a CPU copy between host memory of NUMA node `node` and
    /// `dev`'s BAR crosses, in the data's direction (`to_device`: the CPU
    /// stores into the BAR), for timing such a copy among DMAs.
    pub fn cpu_copy_path(
        &self,
        dev: Bdf,
        node: u32,
        to_device: bool,
    ) -> Result<Vec<crate::timing::Hop>, AccessError> {
        Ok(self.fabric.cpu_path(self.id(dev)?, node, to_device))
    }

    /// The port type of a function (tests and reports).
    pub fn port_type(&self, dev: Bdf) -> Option<PortType> {
        self.topo.find(dev).map(|f| self.topo.function(f).port_type)
    }
}
