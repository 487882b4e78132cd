//! Beyond the kernel: the hop-by-hop path between two functions, the links
//! on it, the narrowest of them, and a link class like `nvidia-smi topo -m`.
//! None of this changes the verdict.

use peerdma_pci::{FnId, HostBridgeId, LinkState, PortType, Topology};
use serde::Serialize;
use std::fmt;

/// How far apart two functions are, in nvidia-smi's terms.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
pub enum LinkClass {
    /// The same function.
    #[serde(rename = "X")]
    Same,
    /// Through at most one PCIe bridge (one switch, or one port).
    #[serde(rename = "PIX")]
    Pix,
    /// Through several PCIe switches, not through a host bridge.
    #[serde(rename = "PXB")]
    Pxb,
    /// Through a PCIe host bridge (the CPU's root complex).
    #[serde(rename = "PHB")]
    Phb,
    /// Between host bridges within one NUMA node.
    #[serde(rename = "NODE")]
    Node,
    /// Between NUMA nodes, over the SMP interconnect (QPI/UPI/xGMI).
    #[serde(rename = "SYS")]
    Sys,
}

impl LinkClass {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkClass::Same => "X",
            LinkClass::Pix => "PIX",
            LinkClass::Pxb => "PXB",
            LinkClass::Phb => "PHB",
            LinkClass::Node => "NODE",
            LinkClass::Sys => "SYS",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            LinkClass::Same => "the same function",
            LinkClass::Pix => "through at most a single PCIe bridge",
            LinkClass::Pxb => "through multiple PCIe switches, without the host bridge",
            LinkClass::Phb => "through a PCIe host bridge (the CPU's root complex)",
            LinkClass::Node => "between PCIe host bridges within a NUMA node",
            LinkClass::Sys => "across the interconnect between NUMA nodes",
        }
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
    Some(PathLink {
        port,
        below,
        state,
        bytes_per_sec: state.map(|s| s.bytes_per_sec()),
    })
}

/// The link class alone.
pub fn link_class(topo: &Topology, a: FnId, b: FnId) -> LinkClass {
    path_between(topo, a, b).class
}

/// The path from `a` to `b`: up to the common bridge and down, or up to
/// the host bridge(s) and down.
pub fn path_between(topo: &Topology, a: FnId, b: FnId) -> PathInfo {
    let ca = chain(topo, a);
    let cb = chain(topo, b);
    let common = ca.iter().copied().find(|x| cb.contains(x));
    let mut hops = Vec::new();
    let mut links = Vec::new();
    let class = match common {
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
            if a == b {
                LinkClass::Same
            } else {
                // Count switches (an upstream port with its downstream ports)
                // and other bridges between the two ends.
                let mut units: Vec<FnId> = Vec::new();
                let inner = ca[..=ia]
                    .iter()
                    .chain(cb[..ib].iter())
                    .copied()
                    .filter(|&x| x != a && x != b);
                for x in inner {
                    let f = topo.function(x);
                    let unit = match f.port_type {
                        PortType::SwitchDownstream => f.upstream.unwrap_or(x),
                        _ => x,
                    };
                    if !units.contains(&unit) {
                        units.push(unit);
                    }
                }
                if units.len() <= 1 {
                    LinkClass::Pix
                } else {
                    LinkClass::Pxb
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
            if ha == hb {
                LinkClass::Phb
            } else {
                let na = topo
                    .host_bridge(ha)
                    .numa_node
                    .or(topo.function(a).numa_node);
                let nb = topo
                    .host_bridge(hb)
                    .numa_node
                    .or(topo.function(b).numa_node);
                match (na, nb) {
                    (Some(x), Some(y)) if x != y => LinkClass::Sys,
                    _ => LinkClass::Node,
                }
            }
        }
    };
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
        class,
        common_upstream: common,
    }
}
