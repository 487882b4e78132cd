//! The PCIe fabric: the links of the machine and how a request travels.
//!
//! A request from a device goes up towards its root port. A switch (or
//! port) both it and the target sit below routes it across when the
//! target BAR claims the address in the host bridge's bus address space
//! and no port the request enters on the way up redirects it (ACS, as
//! hardware applies it: at ingress, with the live register value).
//! Everything else reaches the root complex, where the IOMMU translates it
//! and it lands in host DRAM, or on a peer's BAR when the root complex
//! forwards peer traffic by the kernel's rule
//! ([`peerdma_p2p::host_bridge_forwarding`]); elsewhere it is an
//! Unsupported Request.

use crate::error::{BuildError, DmaError};
use crate::faults::Faults;
use crate::memmap::{MemoryMap, Owner, RegionId};
use crate::timing::{Dir, Hop, LinkId, Network};
use crate::SimConfig;
use peerdma_dma::{IommuFault, Mapper};
use peerdma_mem::{AddrRange, Address, Bdf, DmaAddr, PhysAddr};
use peerdma_p2p::{acs_ctrl_redirects, acs_redirects, host_bridge_forwarding};
use peerdma_pci::{FnId, HostBridgeId, Topology};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Where a piece of a DMA went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "via")]
pub enum Route {
    /// Routed peer to peer by a switch (or port) both sit below.
    Switch { at: Bdf },
    /// Up to the root complex and into host memory.
    HostMemory {
        host_bridge: HostBridgeId,
        node: u32,
    },
    /// Up to the root complex and forwarded to a peer's BAR.
    RootComplexPeer {
        from_host_bridge: HostBridgeId,
        to_host_bridge: HostBridgeId,
    },
    /// Refused by the root complex (Unsupported Request): reads return
    /// all-ones, writes are dropped.
    Unsupported { host_bridge: HostBridgeId },
}

impl Route {
    /// Whether the piece went through the root complex.
    pub fn through_root_complex(&self) -> bool {
        !matches!(self, Route::Switch { .. })
    }
}

/// What a piece reaches.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Target {
    /// Memory: a region of the map and the offset in it.
    Memory { region: RegionId, offset: u64 },
    /// An Unsupported Request at the root complex.
    Unsupported { addr: PhysAddr, reason: String },
}

/// One delivery of part of a request.
#[derive(Clone, Debug)]
pub(crate) struct Piece {
    pub(crate) target: Target,
    pub(crate) len: u64,
    pub(crate) route: Route,
    /// Links crossed, in the request's direction.
    pub(crate) hops: Vec<Hop>,
}

/// A request entering the fabric.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) initiator: FnId,
    pub(crate) addr: DmaAddr,
    /// At least one byte.
    pub(crate) len: u64,
    pub(crate) write: bool,
    /// Bytes of the DMA moved so far (for the errors of faults).
    pub(crate) done: u64,
}

/// What the fabric consults on the way: memories, the IOMMU, faults.
pub(crate) struct Parts<'a> {
    pub(crate) mem: &'a MemoryMap,
    pub(crate) mapper: &'a Mapper,
    pub(crate) faults: &'a Faults,
}

/// The bus addresses a BAR claims, as DMA addresses: what a device that
/// was given a bus address puts on the wire.
#[derive(Clone, Copy, Debug)]
struct Claim {
    range: AddrRange<DmaAddr>,
    function: FnId,
    region: RegionId,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fabric of one machine.
pub(crate) struct Fabric {
    topo: Arc<Topology>,
    /// Physical link above a function (shared by the functions of one device).
    up_link: Vec<Option<LinkId>>,
    rc_link: Vec<LinkId>,
    dram_link: HashMap<u32, LinkId>,
    socket_link: HashMap<(u32, u32), LinkId>,
    /// Per host bridge, the BARs below it by bus address (sorted, disjoint).
    claims: Vec<Vec<Claim>>,
    /// ACS control registers changed at run time (setpci), which the
    /// fabric obeys at once while mappings made earlier keep their path.
    acs_now: Mutex<HashMap<FnId, u16>>,
}

impl Fabric {
    /// The links of `topo` in `net` (PCIe links from their link states, a
    /// root complex per host bridge, DRAM per node, socket interconnects
    /// between nodes) and each host bridge's bus decode of the BARs in
    /// `mem`.
    pub(crate) fn build(
        topo: Arc<Topology>,
        cfg: &SimConfig,
        nodes: &[u32],
        mem: &MemoryMap,
        net: &mut Network,
    ) -> Result<Fabric, BuildError> {
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
        for &n in nodes {
            let id = net.add_link(
                format!("DRAM node {n}"),
                cfg.dram_bytes_per_sec,
                cfg.dram_latency,
            )?;
            dram_link.insert(n, id);
        }
        let mut socket_link = HashMap::new();
        for (i, &a) in nodes.iter().enumerate() {
            for &b in &nodes[i + 1..] {
                let id = net.add_link(
                    format!("socket link {a}<->{b}"),
                    cfg.socket_bytes_per_sec,
                    cfg.socket_latency,
                )?;
                socket_link.insert((a, b), id);
            }
        }
        let claims = Self::bus_decode(&topo, mem)?;
        Ok(Fabric {
            topo,
            up_link,
            rc_link,
            dram_link,
            socket_link,
            claims,
            acs_now: Mutex::new(HashMap::new()),
        })
    }

    /// Per host bridge, its BARs' bus ranges: `phys + bus_offset`, the
    /// provider's translation (`pci_p2pdma_bus_addr_map`). Each host bridge
    /// has a bus address space of its own.
    fn bus_decode(topo: &Topology, mem: &MemoryMap) -> Result<Vec<Vec<Claim>>, BuildError> {
        let mut claims: Vec<Vec<Claim>> = vec![Vec::new(); topo.host_bridges().len()];
        for (region, function, index) in mem.bars() {
            let f = topo.function(function);
            let Some(bar) = f.bars.iter().find(|b| b.index == index && !b.io) else {
                continue;
            };
            let offset = bar.bus_offset();
            let bad = || BuildError::BusRange {
                device: f.bdf,
                bar: index,
                phys: bar.phys.start(),
            };
            let start = offset.to_bus(bar.phys.start()).ok_or_else(bad)?;
            offset.to_bus(bar.phys.last()).ok_or_else(bad)?;
            let range =
                AddrRange::new(DmaAddr::from_bus(start), bar.phys.len()).map_err(|_| bad())?;
            claims[f.host_bridge.index()].push(Claim {
                range,
                function,
                region,
            });
        }
        for (hb, list) in claims.iter_mut().enumerate() {
            list.sort_by_key(|c| c.range.start());
            for w in list.windows(2) {
                if w[0].range.overlaps(&w[1].range) {
                    let name = |c: &Claim| {
                        format!(
                            "bus range {:?} of {}",
                            c.range,
                            topo.function(c.function).bdf
                        )
                    };
                    return Err(BuildError::BusOverlap {
                        host_bridge: topo.host_bridges()[hb].name.clone(),
                        first: name(&w[0]),
                        second: name(&w[1]),
                    });
                }
            }
        }
        Ok(claims)
    }

    /// Change a function's ACS control register now.
    pub(crate) fn set_acs_ctrl(&self, f: FnId, ctrl: u16) {
        lock(&self.acs_now).insert(f, ctrl);
    }

    /// The physical link above a function, if any.
    pub(crate) fn link_above(&self, f: FnId) -> Option<LinkId> {
        self.up_link[f.index()]
    }

    /// The root complex link of a host bridge.
    pub(crate) fn root_complex_link(&self, hb: HostBridgeId) -> LinkId {
        self.rc_link[hb.index()]
    }

    /// The links between DRAM of `node` and `f`, in the direction data
    /// travels when the CPU copies into `f`'s BAR (`to_device`) or out of
    /// it: its loads and stores are MMIO through the root complex.
    pub(crate) fn cpu_path(&self, f: FnId, node: u32, to_device: bool) -> Vec<Hop> {
        let hb = self.topo.function(f).host_bridge;
        let mut hops: Vec<Hop> = Vec::new();
        if let Some(&l) = self.dram_link.get(&node) {
            hops.push(Hop::up(l));
        }
        hops.extend(self.socket_hop(node, self.node_of(hb)));
        hops.push(Hop::down(self.rc_link[hb.index()]));
        hops.extend(self.down_path(f, None));
        if !to_device {
            hops.reverse();
            for h in &mut hops {
                h.dir = h.dir.reverse();
            }
        }
        hops
    }

    /// Route `req`: the pieces it is delivered in, each with its hops in
    /// the request's direction and what it reaches.
    pub(crate) fn route(&self, parts: &Parts<'_>, req: &Request) -> Result<Vec<Piece>, DmaError> {
        let ichain = self.chain(req.initiator);
        parts.faults.check_path(&self.topo, &ichain, req.done)?;
        if let Some(piece) = self.across(parts, req, &ichain)? {
            return Ok(vec![piece]);
        }
        self.root_complex(parts, req)
    }

    /// The DMA addresses around a request that `route` routed to memory
    /// in one piece for which every request of the same initiator and
    /// direction routes the same way, to the same region at the same
    /// offset from the window's start — or `None` where that cannot be
    /// said. Valid while the fault state, the live ACS registers and the
    /// device's IOMMU mappings do not change: a DMA engine may reuse the
    /// route for the rest of one DMA while no fault is queued or in effect.
    ///
    /// A switch route holds for the target BAR's whole bus range (the
    /// decision depends only on the claim). A root-complex route holds
    /// where no claim of the initiator's host bridge starts or ends (the
    /// peer-to-peer check gives the same answer), inside one IOMMU page
    /// when the domain translates (else everywhere: the address is
    /// physical) and inside the target region (the root complex's
    /// decision depends only on the region's owner).
    pub(crate) fn window(
        &self,
        parts: &Parts<'_>,
        req: &Request,
        piece: &Piece,
    ) -> Option<(u64, u64, RegionId, u64)> {
        let Target::Memory { region, offset } = piece.target else {
            return None;
        };
        if piece.len != req.len {
            return None;
        }
        let addr = req.addr.raw();
        let end = addr.checked_add(req.len)?;
        let hb = self.topo.function(req.initiator).host_bridge;
        let claims = &self.claims[hb.index()];
        let i = claims.partition_point(|c| c.range.start().raw() <= addr);
        let prev = i.checked_sub(1).map(|j| &claims[j]);
        let claim_end = |c: &Claim| c.range.start().raw().saturating_add(c.range.len());
        let (mut lo, mut hi) = match prev {
            // Inside a claim: the same answer for all of it.
            Some(c) if claim_end(c) > addr => (c.range.start().raw(), claim_end(c)),
            // Between claims: none of them is asked.
            _ => (
                prev.map_or(0, claim_end),
                claims.get(i).map_or(u64::MAX, |c| c.range.start().raw()),
            ),
        };
        if !matches!(piece.route, Route::Switch { .. }) {
            let r = parts.mem.region(region).range;
            let phys = r.start().raw().checked_add(offset)?;
            if parts
                .mapper
                .iommu_mode(self.topo.function(req.initiator).bdf)
                == peerdma_dma::IommuMode::Translated
            {
                let page = peerdma_dma::iommu::IOMMU_PAGE;
                lo = lo.max(addr - addr % page);
                hi = hi.min((addr - addr % page).saturating_add(page));
            }
            // The region, seen from the DMA address side.
            let below = phys.checked_sub(r.start().raw())?;
            let above = r.start().raw().saturating_add(r.len()) - phys;
            lo = lo.max(addr.saturating_sub(below));
            hi = hi.min(addr.saturating_add(above));
        }
        if lo > addr || hi < end {
            return None;
        }
        Some((lo, hi, region, offset - (addr - lo)))
    }

    /// The function and its bridges up to the root bus.
    fn chain(&self, f: FnId) -> Vec<FnId> {
        std::iter::once(f).chain(self.topo.ancestors(f)).collect()
    }

    /// The BAR below host bridge `hb` whose bus range holds the request.
    fn claim(&self, hb: HostBridgeId, addr: DmaAddr, len: u64) -> Option<Claim> {
        let list = &self.claims[hb.index()];
        let i = list
            .partition_point(|c| c.range.start() <= addr)
            .checked_sub(1)?;
        let want = AddrRange::new(addr, len).ok()?;
        list[i].range.contains_range(&want).then_some(list[i])
    }

    /// Whether `f` redirects peer requests now: its live ACS control
    /// register if changed at run time, else the captured one.
    fn redirects_now(&self, f: FnId) -> bool {
        match lock(&self.acs_now).get(&f) {
            Some(&ctrl) => acs_ctrl_redirects(ctrl),
            None => acs_redirects(&self.topo.function(f).acs) == Some(true),
        }
    }

    /// Peer to peer below a common bridge, if the target claims the address
    /// and no port the request enters on its way up to the meeting point
    /// (the meeting port included) redirects it: the initiator itself, or
    /// a downstream port.
    fn across(
        &self,
        parts: &Parts<'_>,
        req: &Request,
        ichain: &[FnId],
    ) -> Result<Option<Piece>, DmaError> {
        let hb = self.topo.function(req.initiator).host_bridge;
        let Some(claim) = self.claim(hb, req.addr, req.len) else {
            return Ok(None);
        };
        let tchain = self.chain(claim.function);
        let Some(meet) = ichain.iter().position(|x| tchain.contains(x)) else {
            return Ok(None);
        };
        let redirected = ichain[..=meet].iter().any(|&x| {
            (x == req.initiator || self.topo.function(x).port_type.is_downstream_port())
                && self.redirects_now(x)
        });
        if redirected {
            return Ok(None);
        }
        parts.faults.check_path(&self.topo, &tchain, req.done)?;
        let at = ichain[meet];
        let mut hops = self.up_path(req.initiator, Some(at));
        hops.extend(self.down_path(claim.function, Some(at)));
        Ok(Some(Piece {
            target: Target::Memory {
                region: claim.region,
                offset: req.addr.offset_from(claim.range.start()).unwrap_or(0),
            },
            len: req.len,
            route: Route::Switch {
                at: self.topo.function(at).bdf,
            },
            hops,
        }))
    }

    /// Up to the root complex: through the IOMMU, then into DRAM or on to
    /// a peer's BAR.
    fn root_complex(&self, parts: &Parts<'_>, req: &Request) -> Result<Vec<Piece>, DmaError> {
        let ifn = self.topo.function(req.initiator);
        let mut up = self.up_path(req.initiator, None);
        up.push(Hop::up(self.rc_link[ifn.host_bridge.index()]));
        if parts.faults.iommu_fault(ifn.bdf) {
            let fault = IommuFault {
                device: ifn.bdf,
                addr: req.addr.raw(),
                write: req.write,
                reason: "injected fault",
            };
            return Err(DmaError::Iommu {
                fault,
                done: req.done,
            });
        }
        let translated = parts
            .mapper
            .iommu_translate(ifn.bdf, req.addr, req.len, req.write)
            .map_err(|fault| DmaError::Iommu {
                fault,
                done: req.done,
            })?;
        translated
            .into_iter()
            .map(|(phys, n)| self.deliver(parts, req, &up, phys, n))
            .collect()
    }

    /// Deliver `n` bytes at physical address `phys` from the root complex
    /// of the initiator, which the request reached over `up`.
    fn deliver(
        &self,
        parts: &Parts<'_>,
        req: &Request,
        up: &[Hop],
        phys: PhysAddr,
        n: u64,
    ) -> Result<Piece, DmaError> {
        let ifn = self.topo.function(req.initiator);
        let hb = ifn.host_bridge;
        let unsupported = |reason: String| Piece {
            target: Target::Unsupported { addr: phys, reason },
            len: n,
            route: Route::Unsupported { host_bridge: hb },
            hops: up.to_vec(),
        };
        let Some((region, offset)) = parts.mem.find(phys, n) else {
            return Ok(unsupported("no memory or BAR at that address".into()));
        };
        let target = Target::Memory { region, offset };
        let mut hops = up.to_vec();
        match parts.mem.region(region).owner {
            Owner::Dram { node } => {
                hops.extend(self.socket_hop(self.node_of(hb), node));
                if let Some(&l) = self.dram_link.get(&node) {
                    hops.push(Hop::down(l));
                }
                Ok(Piece {
                    target,
                    len: n,
                    route: Route::HostMemory {
                        host_bridge: hb,
                        node,
                    },
                    hops,
                })
            }
            Owner::Bar { function, .. } => {
                let tf = self.topo.function(function);
                let thb = tf.host_bridge;
                // The kernel's rule, provider (the BAR) first.
                if !host_bridge_forwarding(&self.topo, thb, hb).forwards() {
                    return Ok(unsupported(format!(
                        "root complex does not forward peer traffic from {} to {}",
                        ifn.bdf, tf.bdf
                    )));
                }
                parts
                    .faults
                    .check_path(&self.topo, &self.chain(function), req.done)?;
                if thb != hb {
                    hops.extend(self.socket_hop(self.node_of(hb), self.node_of(thb)));
                    hops.push(Hop::down(self.rc_link[thb.index()]));
                }
                hops.extend(self.down_path(function, None));
                Ok(Piece {
                    target,
                    len: n,
                    route: Route::RootComplexPeer {
                        from_host_bridge: hb,
                        to_host_bridge: thb,
                    },
                    hops,
                })
            }
        }
    }

    fn node_of(&self, hb: HostBridgeId) -> u32 {
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

    /// Links crossed going up from `f` to (not including) `stop`.
    fn up_path(&self, f: FnId, stop: Option<FnId>) -> Vec<Hop> {
        let mut out: Vec<Hop> = Vec::new();
        let mut cur = Some(f);
        while let Some(c) = cur {
            if Some(c) == stop {
                break;
            }
            if let Some(l) = self.up_link[c.index()] {
                if out.last().is_none_or(|h| h.link != l) {
                    out.push(Hop::up(l));
                }
            }
            cur = self.topo.function(c).upstream;
        }
        out
    }

    /// Links crossed going down from `stop` to `f`, in travel order.
    fn down_path(&self, f: FnId, stop: Option<FnId>) -> Vec<Hop> {
        let mut down: Vec<Hop> = self
            .up_path(f, stop)
            .into_iter()
            .map(|h| Hop::down(h.link))
            .collect();
        down.reverse();
        down
    }
}
