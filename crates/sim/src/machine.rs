//! The simulated machine: memories, the fabric that routes each DMA as
//! PCIe does, DMA engines on endpoints, timing, and faults on demand.

use crate::error::DmaError;
use crate::memory::{self, Region};
use crate::timing::{Dir, Flow, Hop, LinkId, Network, Schedule, SimTime, TimingError};
use peerdma_dma::{
    BouncePolicy, CopyEngine, DmaSgl, IommuMode, Mapper, MapperConfig, MemError, PathTaken,
};
use peerdma_mem::{Bdf, Direction, DmaAddr, MemKind, PhysAddr, PhysVec, RangeAllocator, PAGE_SIZE};
use peerdma_p2p::{host_bridge_whitelisted, Provider};
use peerdma_pci::{FnId, HostBridgeId, PortType, Topology};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Host DRAM per NUMA node in the simulated machine.
pub const DRAM_PER_NODE: u64 = 64 << 30;
/// Where the bounce pool lives (below 4 GiB, for 32-bit devices).
pub const BOUNCE_BASE: u64 = 0x400_0000;

/// Tunables of the simulated machine.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub iommu: IommuMode,
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
            link_latency: SimTime(150),
            rc_latency: SimTime(200),
            dram_latency: SimTime(90),
            socket_latency: SimTime(120),
            media_size: 64 << 30,
        }
    }
}

/// Where a piece of a DMA went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "via")]
pub enum Route {
    /// Routed peer to peer by a switch (or port) both sit below.
    Switch { at: Bdf },
    /// Up to the root complex and into host memory.
    HostMemory { host_bridge: u32, node: u32 },
    /// Up to the root complex and forwarded to a peer's BAR.
    RootComplexPeer {
        from_host_bridge: u32,
        to_host_bridge: u32,
    },
    /// Refused by the root complex (Unsupported Request): reads return
    /// all-ones, writes are dropped.
    Unsupported { host_bridge: u32 },
}

/// An Unsupported Request the fabric answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrEvent {
    pub initiator: Bdf,
    pub addr: u64,
    pub len: u64,
    pub write: bool,
    pub reason: String,
}

/// What a finished DMA did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transfer {
    pub bytes: u64,
    /// How the list was mapped.
    pub mapped: PathTaken,
    /// How the fabric carried it (distinct routes, in order of first use).
    pub routes: Vec<Route>,
    /// Bytes answered with Unsupported Request (all-ones or dropped).
    pub unsupported_bytes: u64,
    /// Time of this DMA alone on an idle machine.
    pub time: SimTime,
}

impl Transfer {
    /// Whether any byte went through the root complex.
    pub fn touched_root_complex(&self) -> bool {
        self.routes
            .iter()
            .any(|r| !matches!(r, Route::Switch { .. }))
    }
}

/// A fault to inject.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The link between `below` and its upstream port goes down once
    /// `after` bytes of the next DMA have moved.
    LinkDown { below: Bdf, after: u64 },
    /// `device` (and everything below it) disappears once `after` bytes
    /// have moved.
    Remove { device: Bdf, after: u64 },
    /// The IOMMU faults `device`'s next access after `after` bytes.
    IommuFault { device: Bdf, after: u64 },
    /// Revoke `provider` (on another thread) once `after` bytes have moved.
    Revoke { provider: Bdf, after: u64 },
}

#[derive(Default)]
struct FaultState {
    pending: Vec<Fault>,
    links_down: HashSet<FnId>,
    removed: HashSet<FnId>,
    iommu_fault: HashSet<Bdf>,
    revokes:
        Vec<std::thread::JoinHandle<Result<peerdma_p2p::RevokeReport, peerdma_p2p::RevokeError>>>,
}

/// One delivery of part of a DMA.
struct Piece {
    target: Option<(usize, u64)>, // region index, offset; None = UR
    len: u64,
    route: Route,
    hops: Vec<Hop>,
}

/// Where memory lives.
#[derive(Clone, Copy, Debug)]
enum Owner {
    Dram { node: u32 },
    Bar { function: FnId },
}

/// The simulated memories as the mapping layer's copy engine.
pub struct SimMemory {
    regions: Vec<(Region, Owner)>,
}

impl SimMemory {
    fn find(&self, addr: u64, len: u64) -> Option<usize> {
        let i = self.regions.partition_point(|(r, _)| r.base <= addr);
        let i = i.checked_sub(1)?;
        self.regions[i].0.contains(addr, len.max(1)).then_some(i)
    }

    fn region_err(addr: u64, len: u64) -> MemError {
        MemError {
            addr,
            len,
            why: "no memory there".into(),
        }
    }
}

impl CopyEngine for SimMemory {
    fn copy(&self, src: PhysVec, dst: PhysAddr) -> Result<(), MemError> {
        let s = self
            .find(src.addr().raw(), src.len())
            .ok_or_else(|| Self::region_err(src.addr().raw(), src.len()))?;
        let d = self
            .find(dst.raw(), src.len())
            .ok_or_else(|| Self::region_err(dst.raw(), src.len()))?;
        let (sr, dr) = (&self.regions[s].0, &self.regions[d].0);
        memory::copy(
            sr,
            src.addr().raw() - sr.base,
            dr,
            dst.raw() - dr.base,
            src.len(),
        );
        Ok(())
    }
    fn copy_back(&self, src: PhysAddr, dst: PhysVec) -> Result<(), MemError> {
        let s = self
            .find(src.raw(), dst.len())
            .ok_or_else(|| Self::region_err(src.raw(), dst.len()))?;
        let d = self
            .find(dst.addr().raw(), dst.len())
            .ok_or_else(|| Self::region_err(dst.addr().raw(), dst.len()))?;
        let (sr, dr) = (&self.regions[s].0, &self.regions[d].0);
        memory::copy(
            sr,
            src.raw() - sr.base,
            dr,
            dst.addr().raw() - dr.base,
            dst.len(),
        );
        Ok(())
    }
}

/// A host memory buffer in the simulated machine.
#[derive(Debug)]
pub struct HostBuffer {
    vec: PhysVec,
    node: u32,
    machine: Arc<Inner>,
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
        let mut a = lock(&self.machine.host_alloc);
        if let Some(alloc) = a.get_mut(self.node as usize) {
            let _ = alloc.free(self.vec.addr().raw(), self.vec.len());
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Inner {
    host_alloc: Mutex<Vec<RangeAllocator>>,
}

/// The machine.
pub struct SimMachine {
    topo: Arc<Topology>,
    cfg: SimConfig,
    mem: Arc<SimMemory>,
    mapper: Mapper,
    net: Network,
    /// Physical link above a function (shared by the functions of one device).
    up_link: Vec<Option<LinkId>>,
    rc_link: Vec<LinkId>,
    dram_link: HashMap<u32, LinkId>,
    socket_link: HashMap<(u32, u32), LinkId>,
    /// (bus start, bus end inclusive, function, region index)
    bus_index: Vec<(u64, u64, FnId, usize)>,
    media: Mutex<HashMap<FnId, Arc<Region>>>,
    providers: Vec<Provider>,
    faults: Mutex<FaultState>,
    ur_log: Mutex<Vec<UrEvent>>,
    /// ACS control registers changed at run time (setpci), which the
    /// fabric obeys at once while mappings made earlier keep their path.
    acs_now: Mutex<HashMap<FnId, u16>>,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimMachine")
    }
}

impl SimMachine {
    /// Build the machine from any topology: DRAM per NUMA node, the BAR
    /// memory of every function, links from the PCIe link states, and a
    /// P2P provider for every function whose p2pmem is published.
    pub fn new(topo: Topology, cfg: SimConfig) -> Result<SimMachine, TimingError> {
        let topo = Arc::new(topo);
        let mut nodes: Vec<u32> = topo
            .host_bridges()
            .iter()
            .map(|h| h.numa_node.unwrap_or(0))
            .collect();
        nodes.push(0);
        nodes.sort_unstable();
        nodes.dedup();
        // DRAM: node 0 below the 32-bit hole and above 4 GiB; node n at n << 38.
        let mut regions: Vec<(Region, Owner)> = Vec::new();
        let mut host_alloc = Vec::new();
        for &n in &nodes {
            let ranges: Vec<(u64, u64)> = if n == 0 {
                vec![(0, 0x8000_0000), (1 << 32, DRAM_PER_NODE - 0x8000_0000)]
            } else {
                vec![(u64::from(n) << 38, DRAM_PER_NODE)]
            };
            for (b, s) in &ranges {
                regions.push((Region::new(*b, *s), Owner::Dram { node: n }));
            }
            // Allocations come from the high range (node 0 keeps its low
            // range for the bounce pool and 32-bit buffers).
            let (b, s) = *ranges.last().unwrap_or(&(0, 0));
            while host_alloc.len() <= n as usize {
                host_alloc.push(RangeAllocator::new(0, 0, PAGE_SIZE).expect("empty allocator"));
            }
            host_alloc[n as usize] =
                RangeAllocator::new(b, s, PAGE_SIZE).expect("page-aligned DRAM");
        }
        let mut bus_index = Vec::new();
        for f in topo.functions() {
            for bar in f.bars.iter().filter(|b| !b.io) {
                let idx = regions.len();
                regions.push((
                    Region::new(bar.phys.start().raw(), bar.phys.len()),
                    Owner::Bar { function: f.id },
                ));
                let bus = bar.bus.map_or(bar.phys.start().raw(), |b| b.raw());
                bus_index.push((bus, bus + (bar.phys.len() - 1), f.id, idx));
            }
        }
        regions.sort_by_key(|(r, _)| r.base);
        // Region indices changed with the sort: rebuild the bus index.
        let mut bus_index2 = Vec::new();
        for (bs, be, f, _) in bus_index {
            let phys = topo.function(f).bars.iter().find(|b| {
                let bus = b.bus.map_or(b.phys.start().raw(), |x| x.raw());
                bus == bs
            });
            if let Some(b) = phys {
                let i = regions.partition_point(|(r, _)| r.base <= b.phys.start().raw()) - 1;
                bus_index2.push((bs, be, f, i));
            }
        }
        bus_index2.sort_by_key(|x| x.0);
        let mem = Arc::new(SimMemory { regions });

        // Links.
        let mut net = Network::new();
        let mut up_link = vec![None; topo.len()];
        let mut by_device: HashMap<(FnId, u8, u8), LinkId> = HashMap::new();
        for f in topo.functions() {
            let Some(up) = f.upstream else { continue };
            let port = topo.function(up);
            if !port.port_type.is_downstream_port() {
                continue;
            }
            let key = (up, f.bdf.bus(), f.bdf.device());
            let id = match by_device.get(&key) {
                Some(id) => *id,
                None => {
                    let state = f
                        .link
                        .and_then(|l| l.current.or(l.max))
                        .or_else(|| port.link.and_then(|l| l.current.or(l.max)));
                    let raw = state.map_or(8e9, |s| s.bytes_per_sec());
                    let id = net.add_link(
                        format!("{}<->{}", port.bdf, f.bdf),
                        raw * cfg.tlp_efficiency,
                        cfg.link_latency,
                    )?;
                    by_device.insert(key, id);
                    id
                }
            };
            up_link[f.id.index()] = Some(id);
        }
        let mut rc_link = Vec::new();
        for h in topo.host_bridges() {
            rc_link.push(net.add_link(
                format!("root complex {}", h.name),
                cfg.rc_bytes_per_sec,
                cfg.rc_latency,
            )?);
        }
        let mut dram_link = HashMap::new();
        for &n in &nodes {
            dram_link.insert(
                n,
                net.add_link(
                    format!("DRAM node {n}"),
                    cfg.dram_bytes_per_sec,
                    cfg.dram_latency,
                )?,
            );
        }
        let mut socket_link = HashMap::new();
        for (i, &a) in nodes.iter().enumerate() {
            for &b in &nodes[i + 1..] {
                socket_link.insert(
                    (a, b),
                    net.add_link(
                        format!("socket link {a}<->{b}"),
                        cfg.socket_bytes_per_sec,
                        cfg.socket_latency,
                    )?,
                );
            }
        }

        let mapper = Mapper::new(
            Arc::clone(&topo),
            MapperConfig {
                iommu_mode: cfg.iommu,
                bounce_base: PhysAddr::new(BOUNCE_BASE),
                bounce_size: cfg.bounce_size,
            },
            mem.clone(),
        );
        let mut providers = Vec::new();
        for f in topo.functions() {
            let Some(p2p) = f.p2pmem else { continue };
            // The description names the BAR through its size; take the
            // largest memory BAR that holds the published size.
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
        Ok(SimMachine {
            topo,
            cfg,
            mem,
            mapper,
            net,
            up_link,
            rc_link,
            dram_link,
            socket_link,
            bus_index: bus_index2,
            media: Mutex::new(HashMap::new()),
            providers,
            faults: Mutex::new(FaultState::default()),
            ur_log: Mutex::new(Vec::new()),
            acs_now: Mutex::new(HashMap::new()),
            inner: Arc::new(Inner {
                host_alloc: Mutex::new(host_alloc),
            }),
        })
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

    fn id(&self, bdf: Bdf) -> Result<FnId, DmaError> {
        self.topo
            .find(bdf)
            .ok_or_else(|| DmaError::Misuse(format!("no function {bdf} in this machine")))
    }

    /// The P2P provider of a function, if it publishes memory.
    pub fn provider(&self, bdf: Bdf) -> Option<&Provider> {
        self.providers.iter().find(|p| p.bdf() == bdf)
    }

    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// Allocate host memory on `node` (page granular).
    pub fn alloc_host(&self, len: u64, node: u32) -> Option<HostBuffer> {
        let mut a = lock(&self.inner.host_alloc);
        let start = a.get_mut(node as usize)?.alloc(len, PAGE_SIZE)?;
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        Some(HostBuffer {
            vec: PhysVec::new(PhysAddr::new(start), len, MemKind::System).ok()?,
            node,
            machine: Arc::clone(&self.inner),
        })
    }

    /// The CPU's view of memory: host DRAM directly; a BAR with volatile
    /// semantics (a removed device reads all-ones).
    pub fn cpu_read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), MemError> {
        let i = self
            .mem
            .find(addr.raw(), buf.len() as u64)
            .ok_or_else(|| SimMemory::region_err(addr.raw(), buf.len() as u64))?;
        let (r, owner) = &self.mem.regions[i];
        if let Owner::Bar { function } = owner {
            if self.is_removed(*function) {
                buf.fill(0xff);
                return Ok(());
            }
        }
        r.read(addr.raw() - r.base, buf);
        Ok(())
    }

    /// Write through the CPU's view (a removed device drops the write).
    pub fn cpu_write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), MemError> {
        let i = self
            .mem
            .find(addr.raw(), data.len() as u64)
            .ok_or_else(|| SimMemory::region_err(addr.raw(), data.len() as u64))?;
        let (r, owner) = &self.mem.regions[i];
        if let Owner::Bar { function } = owner {
            if self.is_removed(*function) {
                return Ok(());
            }
        }
        r.write(addr.raw() - r.base, data);
        Ok(())
    }

    fn media(&self, f: FnId) -> Arc<Region> {
        let mut m = lock(&self.media);
        Arc::clone(
            m.entry(f)
                .or_insert_with(|| Arc::new(Region::new(0, self.cfg.media_size))),
        )
    }

    /// Write to a device's local storage (its media), outside any DMA.
    pub fn media_write(&self, dev: Bdf, off: u64, data: &[u8]) -> Result<(), DmaError> {
        let f = self.id(dev)?;
        self.media(f).write(off, data);
        Ok(())
    }

    /// Read a device's local storage.
    pub fn media_read(&self, dev: Bdf, off: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let f = self.id(dev)?;
        self.media(f).read(off, buf);
        Ok(())
    }

    /// Change a function's ACS control register now, as `setpci` would: the
    /// fabric routes by it at once; mappings made before keep the path
    /// they were given (the kernel caches verdicts), which is how a stale
    /// bus-address mapping turns into wrong bytes.
    pub fn set_acs_ctrl(&self, dev: Bdf, ctrl: u16) -> Result<(), DmaError> {
        let f = self.id(dev)?;
        lock(&self.acs_now).insert(f, ctrl);
        Ok(())
    }

    /// Queue a fault; it fires during the next DMA that moves enough bytes.
    pub fn inject(&self, fault: Fault) {
        lock(&self.faults).pending.push(fault);
    }

    /// Bring a link back up / a device back (for tests).
    pub fn heal(&self) {
        let mut f = lock(&self.faults);
        f.links_down.clear();
        f.removed.clear();
        f.iommu_fault.clear();
        f.pending.clear();
    }

    /// Wait for revokes started by [`Fault::Revoke`]; their outcomes.
    pub fn join_revokes(&self) -> Vec<Result<peerdma_p2p::RevokeReport, peerdma_p2p::RevokeError>> {
        let handles: Vec<_> = lock(&self.faults).revokes.drain(..).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or(Err(peerdma_p2p::RevokeError::DmaInFlight {
                        bdf: Bdf::from_devfn(0, 0, 0),
                        in_flight: 0,
                    }))
            })
            .collect()
    }

    /// Unsupported Requests answered so far.
    pub fn unsupported_requests(&self) -> Vec<UrEvent> {
        lock(&self.ur_log).clone()
    }

    fn is_removed(&self, f: FnId) -> bool {
        let faults = lock(&self.faults);
        std::iter::once(f)
            .chain(self.topo.ancestors(f))
            .any(|x| faults.removed.contains(&x))
    }

    /// Fire the pending faults whose threshold `done` has reached.
    fn fire_faults(&self, done: u64) {
        let mut fs = lock(&self.faults);
        let pending = std::mem::take(&mut fs.pending);
        for f in pending {
            let after = match &f {
                Fault::LinkDown { after, .. }
                | Fault::Remove { after, .. }
                | Fault::IommuFault { after, .. }
                | Fault::Revoke { after, .. } => *after,
            };
            if done < after {
                fs.pending.push(f);
                continue;
            }
            match f {
                Fault::LinkDown { below, .. } => {
                    if let Some(id) = self.topo.find(below) {
                        fs.links_down.insert(id);
                    }
                }
                Fault::Remove { device, .. } => {
                    if let Some(id) = self.topo.find(device) {
                        fs.removed.insert(id);
                    }
                }
                Fault::IommuFault { device, .. } => {
                    fs.iommu_fault.insert(device);
                }
                Fault::Revoke { provider, .. } => {
                    if let Some(p) = self.provider(provider).cloned() {
                        fs.revokes.push(std::thread::spawn(move || {
                            p.revoke(std::time::Duration::from_secs(30))
                        }));
                    }
                }
            }
        }
    }

    /// Links crossed going up from `f` to (not including) `stop`.
    fn up_hops(&self, f: FnId, stop: Option<FnId>) -> Vec<(FnId, Hop)> {
        let mut out = Vec::new();
        let mut cur = Some(f);
        while let Some(c) = cur {
            if Some(c) == stop {
                break;
            }
            if let Some(l) = self.up_link[c.index()] {
                if out.last().is_none_or(|(_, h): &(FnId, Hop)| h.link != l) {
                    out.push((
                        c,
                        Hop {
                            link: l,
                            dir: Dir::Up,
                        },
                    ));
                }
            }
            cur = self.topo.function(c).upstream;
        }
        out
    }

    /// Links crossed going up from `f` to `stop` (just the hops).
    fn up_path(&self, f: FnId, stop: Option<FnId>) -> Vec<Hop> {
        self.up_hops(f, stop).into_iter().map(|(_, h)| h).collect()
    }

    /// Links crossed going down from `stop` to `f`, in travel order.
    fn down_path(&self, f: FnId, stop: Option<FnId>) -> Vec<Hop> {
        let mut down: Vec<Hop> = self
            .up_hops(f, stop)
            .into_iter()
            .map(|(_, h)| Hop {
                link: h.link,
                dir: Dir::Down,
            })
            .collect();
        down.reverse();
        down
    }

    fn check_path(&self, nodes: &[FnId], done: u64) -> Result<(), DmaError> {
        let fs = lock(&self.faults);
        for &n in nodes {
            if fs.removed.contains(&n) {
                return Err(DmaError::Removed {
                    device: self.topo.function(n).bdf,
                    done,
                });
            }
            if fs.links_down.contains(&n) {
                return Err(DmaError::LinkDown {
                    below: self.topo.function(n).bdf,
                    done,
                });
            }
        }
        Ok(())
    }

    fn chain(&self, f: FnId) -> Vec<FnId> {
        std::iter::once(f).chain(self.topo.ancestors(f)).collect()
    }

    fn hb_node(&self, hb: HostBridgeId) -> u32 {
        self.topo.host_bridge(hb).numa_node.unwrap_or(0)
    }

    fn socket_hop(&self, a: u32, b: u32) -> Option<Hop> {
        if a == b {
            return None;
        }
        let key = (a.min(b), a.max(b));
        self.socket_link.get(&key).map(|&l| Hop {
            link: l,
            dir: if a < b { Dir::Down } else { Dir::Up },
        })
    }

    /// Route a request of `len` bytes at `addr` from `initiator`: hops in
    /// the request's direction, and what it reaches.
    fn route(
        &self,
        initiator: FnId,
        addr: DmaAddr,
        len: u64,
        write: bool,
        done: u64,
    ) -> Result<Vec<Piece>, DmaError> {
        let ichain = self.chain(initiator);
        self.check_path(&ichain, done)?;
        // Peer-to-peer decode by bus address.
        let i = self.bus_index.partition_point(|x| x.0 <= addr.raw());
        let target = i
            .checked_sub(1)
            .map(|i| self.bus_index[i])
            .filter(|x| addr.raw() <= x.1 && addr.raw() + (len - 1) <= x.1);
        if let Some((bus_start, _, t, region)) = target {
            let tchain = self.chain(t);
            if let Some(&lca) = ichain.iter().find(|x| tchain.contains(x)) {
                // Ingress ACS: a redirecting function on the initiator's way
                // up (the meeting port included) sends the request upstream.
                let acs_now = lock(&self.acs_now);
                let redirects = |x: FnId| match acs_now.get(&x) {
                    Some(ctrl) => ctrl & peerdma_pci::config::ACS_REDIR_MASK != 0,
                    None => self.topo.function(x).acs.redirects() == Some(true),
                };
                let redirected = ichain
                    .iter()
                    .take_while(|&&x| x != lca)
                    .chain(std::iter::once(&lca))
                    .any(|&x| {
                        redirects(x)
                            && (x == initiator
                                || self.topo.function(x).port_type.is_downstream_port())
                    });
                drop(acs_now);
                if !redirected {
                    self.check_path(&tchain, done)?;
                    let mut hops = self.up_path(initiator, Some(lca));
                    hops.extend(self.down_path(t, Some(lca)));
                    let r = &self.mem.regions[region].0;
                    let phys_start = self
                        .topo
                        .function(t)
                        .bars
                        .iter()
                        .find(|b| b.bus.map_or(b.phys.start().raw(), |x| x.raw()) == bus_start)
                        .map_or(r.base, |b| b.phys.start().raw());
                    return Ok(vec![Piece {
                        target: Some((region, phys_start - r.base + (addr.raw() - bus_start))),
                        len,
                        route: Route::Switch {
                            at: self.topo.function(lca).bdf,
                        },
                        hops,
                    }]);
                }
            }
        }
        // Up to the root complex.
        let ifn = self.topo.function(initiator);
        let hb = ifn.host_bridge;
        let mut up = self.up_path(initiator, None);
        up.push(Hop {
            link: self.rc_link[hb.index()],
            dir: Dir::Up,
        });
        let inject_fault = lock(&self.faults).iommu_fault.contains(&ifn.bdf);
        if inject_fault {
            let fault = peerdma_dma::IommuFault {
                device: ifn.bdf,
                addr: addr.raw(),
                write,
                reason: "injected fault",
            };
            return Err(DmaError::Iommu { fault, done });
        }
        let pieces = self
            .mapper
            .iommu()
            .translate(ifn.bdf, addr, len, write)
            .map_err(|fault| DmaError::Iommu { fault, done })?;
        let mut out = Vec::new();
        for (phys, n) in pieces {
            let Some(ri) = self.mem.find(phys.raw(), n) else {
                out.push(self.unsupported(
                    ifn.bdf,
                    hb,
                    phys.raw(),
                    n,
                    write,
                    "no memory or BAR at that address".into(),
                    up.clone(),
                ));
                continue;
            };
            let (r, owner) = &self.mem.regions[ri];
            match owner {
                Owner::Dram { node } => {
                    let mut hops = up.clone();
                    hops.extend(self.socket_hop(self.hb_node(hb), *node));
                    hops.push(Hop {
                        link: self.dram_link[node],
                        dir: Dir::Down,
                    });
                    out.push(Piece {
                        target: Some((ri, phys.raw() - r.base)),
                        len: n,
                        route: Route::HostMemory {
                            host_bridge: hb.index() as u32,
                            node: *node,
                        },
                        hops,
                    });
                }
                Owner::Bar { function } => {
                    let tf = self.topo.function(*function);
                    let thb = tf.host_bridge;
                    let allowed = self.topo.cpu().supports_p2pdma()
                        || if thb == hb {
                            host_bridge_whitelisted(&self.topo, hb, true)
                        } else {
                            host_bridge_whitelisted(&self.topo, hb, false)
                                && host_bridge_whitelisted(&self.topo, thb, false)
                        };
                    if !allowed {
                        let reason = format!(
                            "root complex does not forward peer traffic from {} to {}",
                            ifn.bdf, tf.bdf
                        );
                        out.push(self.unsupported(
                            ifn.bdf,
                            hb,
                            phys.raw(),
                            n,
                            write,
                            reason,
                            up.clone(),
                        ));
                        continue;
                    }
                    self.check_path(&self.chain(*function), done)?;
                    let mut hops = up.clone();
                    if thb != hb {
                        hops.extend(self.socket_hop(self.hb_node(hb), self.hb_node(thb)));
                        hops.push(Hop {
                            link: self.rc_link[thb.index()],
                            dir: Dir::Down,
                        });
                    }
                    hops.extend(self.down_path(*function, None));
                    out.push(Piece {
                        target: Some((ri, phys.raw() - r.base)),
                        len: n,
                        route: Route::RootComplexPeer {
                            from_host_bridge: hb.index() as u32,
                            to_host_bridge: thb.index() as u32,
                        },
                        hops,
                    });
                }
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn unsupported(
        &self,
        initiator: Bdf,
        hb: HostBridgeId,
        addr: u64,
        len: u64,
        write: bool,
        reason: String,
        hops: Vec<Hop>,
    ) -> Piece {
        lock(&self.ur_log).push(UrEvent {
            initiator,
            addr,
            len,
            write,
            reason,
        });
        Piece {
            target: None,
            len,
            route: Route::Unsupported {
                host_bridge: hb.index() as u32,
            },
            hops,
        }
    }

    fn start(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        need: Direction,
    ) -> Result<(FnId, Option<peerdma_p2p::DmaTicket>), DmaError> {
        if sgl.device() != engine {
            return Err(DmaError::Misuse(format!(
                "the list was mapped for {}, not {engine}",
                sgl.device()
            )));
        }
        let ok = match need {
            Direction::FromDevice => sgl.direction().device_writes(),
            Direction::ToDevice => sgl.direction().device_reads(),
            Direction::Bidirectional => true,
        };
        if !ok {
            return Err(DmaError::Misuse(format!(
                "the list is mapped {}, which does not allow this DMA",
                sgl.direction()
            )));
        }
        let f = self.id(engine)?;
        let ticket = match sgl.provider() {
            Some(p) => Some(
                p.begin_dma()
                    .map_err(|_| DmaError::Revoked { provider: p.bdf() })?,
            ),
            None => None,
        };
        Ok((f, ticket))
    }

    /// Move bytes between the engine's local side and the list, piece by
    /// piece. `local` reads or writes the device's side at an offset.
    fn run(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        write: bool,
        local: &mut dyn FnMut(&Region, u64, u64, u64),
    ) -> Result<Transfer, DmaError> {
        let (f, ticket) = self.start(
            engine,
            sgl,
            if write {
                Direction::FromDevice
            } else {
                Direction::ToDevice
            },
        )?;
        const STEP: u64 = 1 << 20;
        let mut done = 0u64;
        let mut routes: Vec<Route> = Vec::new();
        let mut ur = 0u64;
        let mut flows: Vec<(Vec<Hop>, u64)> = Vec::new();
        for e in sgl.entries() {
            let mut off = 0;
            while off < e.len {
                self.fire_faults(done);
                let n = (e.len - off).min(STEP - (done % STEP));
                let pieces = self.route(f, DmaAddr::new(e.addr.raw() + off), n, write, done)?;
                let mut local_off = done;
                for p in pieces {
                    if !routes.contains(&p.route) {
                        routes.push(p.route);
                    }
                    match p.target {
                        Some((ri, roff)) => {
                            let r = &self.mem.regions[ri].0;
                            local(r, roff, local_off, p.len);
                        }
                        None => {
                            ur += p.len;
                            if !write {
                                // An Unsupported Request read completes with all-ones.
                                local(&ALL_ONES, 0, local_off, p.len);
                            }
                        }
                    }
                    let mut hops = p.hops;
                    if !write {
                        hops.reverse();
                        for h in &mut hops {
                            h.dir = h.dir.reverse();
                        }
                    }
                    match flows.iter_mut().find(|(h, _)| *h == hops) {
                        Some((_, b)) => *b += p.len,
                        None => flows.push((hops, p.len)),
                    }
                    local_off += p.len;
                }
                off += n;
                done += n;
            }
        }
        drop(ticket);
        // The time of this DMA alone: its pieces one after another.
        let mut chain: Vec<Flow> = Vec::new();
        for (i, (hops, bytes)) in flows.into_iter().enumerate() {
            chain.push(Flow {
                path: hops,
                bytes,
                after: i.checked_sub(1),
                ..Flow::default()
            });
        }
        let time = self
            .net
            .simulate(&chain)
            .map(|s| s.makespan)
            .unwrap_or_default();
        Ok(Transfer {
            bytes: done,
            mapped: sgl.path(),
            routes,
            unsupported_bytes: ur,
            time,
        })
    }

    /// The device writes `data` into the memory of the list (a receive, a
    /// read from a drive).
    pub fn dma_write(&self, engine: Bdf, sgl: &DmaSgl, data: &[u8]) -> Result<Transfer, DmaError> {
        if data.len() as u64 != sgl.len() {
            return Err(DmaError::Misuse(format!(
                "{} bytes for a {}-byte list",
                data.len(),
                sgl.len()
            )));
        }
        self.run(engine, sgl, true, &mut |r, roff, loff, n| {
            r.write(roff, &data[loff as usize..(loff + n) as usize])
        })
    }

    /// The device reads the memory of the list into `out`.
    pub fn dma_read(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        out: &mut [u8],
    ) -> Result<Transfer, DmaError> {
        if out.len() as u64 != sgl.len() {
            return Err(DmaError::Misuse(format!(
                "{} bytes for a {}-byte list",
                out.len(),
                sgl.len()
            )));
        }
        self.run(engine, sgl, false, &mut |r, roff, loff, n| {
            r.read(roff, &mut out[loff as usize..(loff + n) as usize])
        })
    }

    /// The device's media, checked to hold `[off, off + len)`.
    fn media_range(&self, engine: Bdf, off: u64, len: u64) -> Result<Arc<Region>, DmaError> {
        let media = self.media(self.id(engine)?);
        if off.checked_add(len).is_none_or(|e| e > media.size) {
            return Err(DmaError::Misuse(format!(
                "media range {off:#x}+{len:#x} of {engine} is beyond its {} bytes",
                media.size
            )));
        }
        Ok(media)
    }

    /// The device moves `sgl.len()` bytes from its media at `media_off`
    /// into the list's memory (a drive's read).
    pub fn media_to_memory(
        &self,
        engine: Bdf,
        media_off: u64,
        sgl: &DmaSgl,
    ) -> Result<Transfer, DmaError> {
        let media = self.media_range(engine, media_off, sgl.len())?;
        self.run(engine, sgl, true, &mut |r, roff, loff, n| {
            memory::copy(&media, media_off + loff, r, roff, n)
        })
    }

    /// The device moves the list's memory to its media at `media_off` (a
    /// drive's write).
    pub fn memory_to_media(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        media_off: u64,
    ) -> Result<Transfer, DmaError> {
        let media = self.media_range(engine, media_off, sgl.len())?;
        self.run(engine, sgl, false, &mut |r, roff, loff, n| {
            memory::copy(r, roff, &media, media_off + loff, n)
        })
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

    /// The links a DMA of `engine` to `addr` would cross, in the data's
    /// direction, without moving data (for timing studies).
    pub fn path_hops(
        &self,
        engine: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<Hop>, DmaError> {
        let f = self.id(engine)?;
        let mut hops: Vec<Hop> = Vec::new();
        for p in self.route(f, addr, len, write, 0)? {
            let mut h = p.hops;
            if !write {
                h.reverse();
                for x in &mut h {
                    x.dir = x.dir.reverse();
                }
            }
            hops.extend(h);
        }
        Ok(hops)
    }

    /// Simulate concurrent flows on this machine's links.
    pub fn simulate(&self, flows: &[Flow]) -> Result<Schedule, TimingError> {
        self.net.simulate(flows)
    }

    /// The link above a function (between it and its port), if physical.
    pub fn link_above(&self, dev: Bdf) -> Option<LinkId> {
        self.topo.find(dev).and_then(|f| self.up_link[f.index()])
    }

    /// The root complex link of a function's host bridge.
    pub fn root_complex_link(&self, dev: Bdf) -> Option<LinkId> {
        self.topo
            .find(dev)
            .map(|f| self.rc_link[self.topo.function(f).host_bridge.index()])
    }

    /// The port type of a function (tests and reports).
    pub fn port_type(&self, dev: Bdf) -> Option<PortType> {
        self.topo.find(dev).map(|f| self.topo.function(f).port_type)
    }
}

/// An endless source of all-ones, for Unsupported Request reads.
static ALL_ONES: std::sync::LazyLock<Region> = std::sync::LazyLock::new(|| {
    let r = Region::new(0, memory::CHUNK);
    r.fill(0, memory::CHUNK, 0xff);
    r
});
