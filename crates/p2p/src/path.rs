//! Beyond the kernel: the hop-by-hop path between two functions, the links
//! on it, the narrowest of them, and its link class as NVML defines them
//! (`nvmlGpuTopologyLevel_t`, the levels `nvidia-smi topo -m` prints).
//! None of this changes the verdict.
//!
//! # Link classes
//!
//! NVML's levels, nearest first, and peerdma's rule for each ([`LinkClass`]):
//!
//! | NVML level | nvidia-smi | peerdma's rule |
//! | --- | --- | --- |
//! | `NVML_TOPOLOGY_INTERNAL` | - | two functions of one PCI device (same bus and device number below the same bridge; an SR-IOV virtual function counts as its physical function) |
//! | `NVML_TOPOLOGY_SINGLE` | `PIX` | below a common bridge, crossing at most one switch: the ports between the two ends belong to one switch (or are one bridge) |
//! | `NVML_TOPOLOGY_MULTIPLE` | `PXB` | below a common bridge, crossing more than one switch |
//! | `NVML_TOPOLOGY_HOSTBRIDGE` | `PHB` | no common bridge, one host bridge (root complex) |
//! | `NVML_TOPOLOGY_NODE` | `NODE` | two host bridges of one NUMA node (or of unknown NUMA nodes) |
//! | `NVML_TOPOLOGY_SYSTEM` | `SYS` | host bridges of two different NUMA nodes |
//!
//! Switches are counted as the PCI hierarchy shows them. A switch is an
//! upstream port and its downstream ports; every other bridge on the path
//! (a root port below which the two ends meet, a PCIe-to-PCI bridge) is a
//! switch of its own. The two ends themselves do not count. So in a
//! PLX-style fabric of two levels (root port, first-level switch, then
//! second-level switches below its downstream ports):
//!
//! - two GPUs below downstream ports of the same second-level switch cross
//!   that one switch: `PIX` (`SINGLE`);
//! - a GPU below one second-level switch and a GPU (or NIC) below another
//!   second-level switch of the same first-level switch cross three
//!   switches (second, first, second level): `PXB` (`MULTIPLE`);
//! - a GPU below a second-level switch and a device directly below a
//!   downstream port of the first-level switch cross two: `PXB`.
//!
//! This holds also where both levels are one chip that presents itself as
//! two levels of virtual switches (some Broadcom/PLX parts): the hierarchy
//! does not show that, and NVML does not document how it treats them
//! (NCCL, which computes its own classes, merges such switches). NVML's
//! `INTERNAL` is documented for two GPUs on one dual-GPU board (Tesla
//! K80) below an on-board switch; the PCI hierarchy cannot tell an
//! on-board switch from a switch on the motherboard, so peerdma gives such
//! a pair `PIX` and keeps `INTERNAL` for functions of one device.

use peerdma_pci::{Bdf, FnId, HostBridgeId, LinkState, PortType, Topology};
use serde::Serialize;
use std::fmt;

/// How far apart two functions are, in NVML's levels (`nvidia-smi topo`'s
/// names in JSON); see the module documentation for the rule.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub enum LinkClass {
    /// The same function.
    #[serde(rename = "X")]
    Same,
    /// Two functions of one device (`NVML_TOPOLOGY_INTERNAL`).
    #[serde(rename = "INT")]
    Internal,
    /// Through at most one PCIe switch or bridge (`NVML_TOPOLOGY_SINGLE`).
    #[serde(rename = "PIX")]
    Pix,
    /// Through several PCIe switches, not through a host bridge
    /// (`NVML_TOPOLOGY_MULTIPLE`).
    #[serde(rename = "PXB")]
    Pxb,
    /// Through a PCIe host bridge, the CPU's root complex
    /// (`NVML_TOPOLOGY_HOSTBRIDGE`).
    #[serde(rename = "PHB")]
    Phb,
    /// Between host bridges within one NUMA node (`NVML_TOPOLOGY_NODE`).
    #[serde(rename = "NODE")]
    Node,
    /// Between NUMA nodes, over the SMP interconnect (QPI/UPI/xGMI)
    /// (`NVML_TOPOLOGY_SYSTEM`).
    #[serde(rename = "SYS")]
    Sys,
}

impl LinkClass {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkClass::Same => "X",
            LinkClass::Internal => "INT",
            LinkClass::Pix => "PIX",
            LinkClass::Pxb => "PXB",
            LinkClass::Phb => "PHB",
            LinkClass::Node => "NODE",
            LinkClass::Sys => "SYS",
        }
    }
    /// NVML's name for the level (`None` for the same function).
    pub fn nvml_name(self) -> Option<&'static str> {
        Some(match self {
            LinkClass::Same => return None,
            LinkClass::Internal => "NVML_TOPOLOGY_INTERNAL",
            LinkClass::Pix => "NVML_TOPOLOGY_SINGLE",
            LinkClass::Pxb => "NVML_TOPOLOGY_MULTIPLE",
            LinkClass::Phb => "NVML_TOPOLOGY_HOSTBRIDGE",
            LinkClass::Node => "NVML_TOPOLOGY_NODE",
            LinkClass::Sys => "NVML_TOPOLOGY_SYSTEM",
        })
    }
    pub fn describe(self) -> &'static str {
        match self {
            LinkClass::Same => "the same function",
            LinkClass::Internal => "two functions of one device",
            LinkClass::Pix => "through at most a single PCIe switch or bridge",
            LinkClass::Pxb => "through multiple PCIe switches, without the host bridge",
            LinkClass::Phb => "through a PCIe host bridge (the CPU's root complex)",
            LinkClass::Node => "between PCIe host bridges within a NUMA node",
            LinkClass::Sys => "across the interconnect between NUMA nodes",
        }
    }
}

/// What the link-class rule reads about functions, by index: the one rule
/// ([`classify`]) runs on the topology itself and on the facts a
/// [`crate::Matrix`] keeps.
pub(crate) trait ClassTree {
    fn up(&self, f: usize) -> Option<usize>;
    /// The switch a function belongs to as a bridge on a path: a switch
    /// downstream port's upstream port, else the function itself.
    fn unit(&self, f: usize) -> usize;
    /// Whether two functions are functions of one device.
    fn same_device(&self, a: usize, b: usize) -> bool;
    fn host_bridge(&self, f: usize) -> usize;
    /// The NUMA node of the host bridge above `f` (else of `f`).
    fn numa(&self, f: usize) -> Option<u32>;
}

/// The link class of `a` and `b` (see the module documentation).
pub(crate) fn classify<T: ClassTree + ?Sized>(t: &T, a: usize, b: usize) -> LinkClass {
    if a == b {
        return LinkClass::Same;
    }
    if t.same_device(a, b) {
        return LinkClass::Internal;
    }
    let chain = |f: usize| -> Vec<usize> { std::iter::successors(Some(f), |&x| t.up(x)).collect() };
    let (ca, cb) = (chain(a), chain(b));
    let Some((ia, ib)) = ca
        .iter()
        .enumerate()
        .find_map(|(i, x)| cb.iter().position(|y| y == x).map(|j| (i, j)))
    else {
        let (ha, hb) = (t.host_bridge(a), t.host_bridge(b));
        if ha == hb {
            return LinkClass::Phb;
        }
        return match (t.numa(a), t.numa(b)) {
            (Some(x), Some(y)) if x != y => LinkClass::Sys,
            _ => LinkClass::Node,
        };
    };
    // The bridges between the two ends: up from a to the common bridge,
    // and down from it to b; the ends themselves do not count.
    let mut units: Vec<usize> = Vec::new();
    for &x in ca[..=ia].iter().chain(cb[..ib].iter()) {
        if x == a || x == b {
            continue;
        }
        let u = t.unit(x);
        if !units.contains(&u) {
            units.push(u);
        }
    }
    if units.len() <= 1 {
        LinkClass::Pix
    } else {
        LinkClass::Pxb
    }
}

/// [`ClassTree`] read from the topology directly.
struct TopoTree<'t>(&'t Topology);

impl TopoTree<'_> {
    fn f(&self, i: usize) -> &peerdma_pci::Function {
        &self.0.functions()[i]
    }
    /// A virtual function stands for its physical function's device.
    fn device_root(&self, i: usize) -> usize {
        self.f(i).physfn.map_or(i, |p| p.index())
    }
}

impl ClassTree for TopoTree<'_> {
    fn up(&self, f: usize) -> Option<usize> {
        self.f(f).upstream.map(|u| u.index())
    }
    fn unit(&self, f: usize) -> usize {
        switch_unit(self.0, f)
    }
    fn same_device(&self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.device_root(a), self.device_root(b));
        ra == rb
            || (self.f(ra).upstream == self.f(rb).upstream
                && same_slot(self.f(ra).bdf, self.f(rb).bdf))
    }
    fn host_bridge(&self, f: usize) -> usize {
        self.f(f).host_bridge.index()
    }
    fn numa(&self, f: usize) -> Option<u32> {
        let func = self.f(f);
        self.0
            .host_bridge(func.host_bridge)
            .numa_node
            .or(func.numa_node)
    }
}

fn same_slot(a: Bdf, b: Bdf) -> bool {
    a.same_device(b)
}

/// The switch a bridge belongs to: a downstream port's upstream port.
fn switch_unit(topo: &Topology, f: usize) -> usize {
    let func = &topo.functions()[f];
    match (func.port_type, func.upstream) {
        (PortType::SwitchDownstream, Some(u))
            if topo.function(u).port_type == PortType::SwitchUpstream =>
        {
            u.index()
        }
        _ => f,
    }
}

/// The facts [`classify`] needs, precomputed for many pairs.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClassFacts {
    up: Vec<Option<u32>>,
    unit: Vec<u32>,
    root: Vec<u32>,
    bdf: Vec<Bdf>,
    hb: Vec<u32>,
    numa: Vec<Option<u32>>,
}

impl ClassFacts {
    pub(crate) fn new(topo: &Topology) -> ClassFacts {
        let mut c = ClassFacts::default();
        let view = TopoTree(topo);
        for f in topo.functions() {
            let i = f.id.index();
            c.up.push(f.upstream.map(|u| u.index() as u32));
            c.unit.push(switch_unit(topo, i) as u32);
            c.root.push(view.device_root(i) as u32);
            c.bdf.push(f.bdf);
            c.hb.push(f.host_bridge.index() as u32);
            c.numa.push(view.numa(i));
        }
        c
    }
    pub(crate) fn class(&self, a: usize, b: usize) -> LinkClass {
        classify(self, a, b)
    }
}

impl ClassTree for ClassFacts {
    fn up(&self, f: usize) -> Option<usize> {
        self.up[f].map(|u| u as usize)
    }
    fn unit(&self, f: usize) -> usize {
        self.unit[f] as usize
    }
    fn same_device(&self, a: usize, b: usize) -> bool {
        let (ra, rb) = (self.root[a] as usize, self.root[b] as usize);
        ra == rb || (self.up[ra] == self.up[rb] && same_slot(self.bdf[ra], self.bdf[rb]))
    }
    fn host_bridge(&self, f: usize) -> usize {
        self.hb[f] as usize
    }
    fn numa(&self, f: usize) -> Option<u32> {
        self.numa[f]
    }
}

impl fmt::Display for LinkClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step of a path.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "id")]
pub enum Hop {
    Function(FnId),
    HostBridge(HostBridgeId),
}

/// A physical PCIe link on a path: between a downstream-facing port and
/// the function below it.
#[derive(Clone, Copy, PartialEq, Debug, Serialize)]
pub struct PathLink {
    pub port: FnId,
    pub below: FnId,
    /// As trained now (from the function below, else from the port).
    pub state: Option<LinkState>,
    /// Data rate after line encoding, bytes per second.
    pub bytes_per_sec: Option<f64>,
}

/// The route between two functions.
#[derive(Clone, PartialEq, Debug, Serialize)]
pub struct PathInfo {
    pub hops: Vec<Hop>,
    pub links: Vec<PathLink>,
    /// The slowest link on the path, if any link speed is known.
    pub narrowest: Option<PathLink>,
    pub class: LinkClass,
    pub common_upstream: Option<FnId>,
}

fn chain(topo: &Topology, f: FnId) -> Vec<FnId> {
    std::iter::once(f).chain(topo.ancestors(f)).collect()
}

fn link_of(topo: &Topology, below: FnId) -> Option<PathLink> {
    let port = topo.function(below).upstream?;
    if !topo.function(port).port_type.is_downstream_port() {
        return None;
    }
    let state = topo
        .function(below)
        .link
        .and_then(|l| l.current)
        .or_else(|| topo.function(port).link.and_then(|l| l.current));
    // Where only a rate is known (hwloc XML), the rate.
    let rate = || {
        topo.function(below)
            .link
            .and_then(|l| l.current_bytes_per_sec())
            .or_else(|| {
                topo.function(port)
                    .link
                    .and_then(|l| l.current_bytes_per_sec())
            })
    };
    Some(PathLink {
        port,
        below,
        state,
        bytes_per_sec: state.map(|s| s.bytes_per_sec()).or_else(rate),
    })
}

/// The link class alone.
pub fn link_class(topo: &Topology, a: FnId, b: FnId) -> LinkClass {
    classify(&TopoTree(topo), a.index(), b.index())
}

/// The path from `a` to `b`: up to the common bridge and down, or up to
/// the host bridge(s) and down.
pub fn path_between(topo: &Topology, a: FnId, b: FnId) -> PathInfo {
    let ca = chain(topo, a);
    let cb = chain(topo, b);
    let common = ca.iter().copied().find(|x| cb.contains(x));
    let mut hops = Vec::new();
    let mut links = Vec::new();
    match common {
        Some(c) => {
            let ia = ca.iter().position(|&x| x == c).unwrap_or(0);
            let ib = cb.iter().position(|&x| x == c).unwrap_or(0);
            for &x in &ca[..=ia] {
                hops.push(Hop::Function(x));
            }
            for &x in cb[..ib].iter().rev() {
                hops.push(Hop::Function(x));
            }
            for &x in ca[..ia].iter().chain(cb[..ib].iter()) {
                if let Some(l) = link_of(topo, x) {
                    links.push(l);
                }
            }
        }
        None => {
            for &x in &ca {
                hops.push(Hop::Function(x));
            }
            let ha = topo.function(a).host_bridge;
            let hb = topo.function(b).host_bridge;
            hops.push(Hop::HostBridge(ha));
            if ha != hb {
                hops.push(Hop::HostBridge(hb));
            }
            for &x in cb.iter().rev() {
                hops.push(Hop::Function(x));
            }
            for &x in ca.iter().chain(cb.iter()) {
                if let Some(l) = link_of(topo, x) {
                    links.push(l);
                }
            }
        }
    }
    let narrowest = links
        .iter()
        .filter(|l| l.bytes_per_sec.is_some())
        .min_by(|x, y| {
            x.bytes_per_sec
                .partial_cmp(&y.bytes_per_sec)
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .copied();
    PathInfo {
        hops,
        links,
        narrowest,
        class: link_class(topo, a, b),
        common_upstream: common,
    }
}
