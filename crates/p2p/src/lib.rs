//! The P2PDMA core: for every (provider, client) pair of PCI functions, the
//! kernel's verdict — map type and distance, exactly as
//! `calc_map_type_and_dist` in Linux's `drivers/pci/p2pdma.c` computes them —
//! plus what peerdma adds beside it without changing it: a link class like
//! `nvidia-smi topo`'s, the hop-by-hop path, the narrowest link, and an
//! explanation with the fixes that would change the verdict.
//!
//! [`oracle`] reads the kernel's own verdicts (the oracle kernel's debugfs
//! file and its ACS advice) and holds peerdma's against them.
//!
//! ```
//! use peerdma_p2p::{calc_map_type_and_dist, explain, FixKind, MapType};
//! use peerdma_pci::Source;
//!
//! let t = Source::Preset("dual-xeon".into()).load().unwrap();
//! let (gpu, nvme) = (t.lookup("gpu0").unwrap(), t.lookup("nvme0").unwrap());
//! // Below one switch with no ACS redirect: by bus address, distance 4.
//! let v = calc_map_type_and_dist(&t, nvme, gpu);
//! assert_eq!((v.map_type, v.distance), (MapType::BusAddr, Some(4)));
//! // Across the sockets of this Intel machine: through the host bridge,
//! // whose whitelist entry allows it; the explanation says why.
//! let far = t.lookup("nvme3").unwrap();
//! let e = explain(&t, far, gpu);
//! assert_eq!((e.map_type, e.distance), (MapType::ThruHostBridge, Some(8)));
//! assert_eq!(e.link_class.to_string(), "SYS");
//! assert!(e.reasons.iter().any(|r| r.contains("whitelist")));
//! // Every fix offered was checked by deciding again on a changed copy.
//! assert!(e.fixes.iter().all(|f| f.kind == FixKind::MoveDevice || f.gives == MapType::BusAddr));
//! ```

pub mod acs_boot;
mod calc;
pub mod dot;
mod explain;
mod index;
mod many;
pub mod oracle;
mod path;
mod provider;
pub mod refcore;
pub mod render;
mod rules;
mod staging;
mod whitelist;

pub use calc::{calc_map_type_and_dist, Verdict};
pub use explain::{explain, AcsUnknown, Explanation, Fix, FixKind, HostBridgeReport};
pub use index::{matrix, pair_reports, Matrix, P2pIndex, PairAcsUnknown, PairReport, PairVerdict};
pub use many::{distance_many, find_many, providers, FindMany};
pub use path::{link_class, path_between, Hop, LinkClass, PathInfo, PathLink};
pub use provider::{
    Allocation, DmaTicket, Importer, ImporterHandle, P2pError, Provider, ProviderRef,
    ProviderState, RevokeError, RevokeReport,
};
pub use rules::{
    acs_ctrl_redirects, acs_redirects, host_bridge_forwarding, HostBridgeForwarding, Whitelisting,
};
pub use staging::{choose_staging, Memory, NoStaging, StagingChoice};
pub use whitelist::{host_bridge_whitelisted, whitelist_entry, WhitelistEntry, WHITELIST};

use serde::Serialize;
use std::fmt;

/// How a DMA from a client reaches a provider's memory: the kernel's
/// `enum pci_p2pdma_map_type`, same meanings.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapType {
    /// Not a P2P transfer at all (host memory).
    None,
    /// The client cannot reach the provider's BAR.
    NotSupported,
    /// Peer to peer by PCI bus address, routed by a common switch; no IOMMU
    /// translation and nothing to unmap.
    BusAddr,
    /// Through the host bridge (root complex), which forwards peer traffic;
    /// mapped like host memory, through the IOMMU.
    ThruHostBridge,
}

impl MapType {
    /// Whether a peer-to-peer DMA can happen at all.
    pub fn is_p2p(self) -> bool {
        matches!(self, MapType::BusAddr | MapType::ThruHostBridge)
    }
    /// The kernel's name.
    pub fn kernel_name(self) -> &'static str {
        match self {
            MapType::None => "PCI_P2PDMA_MAP_NONE",
            MapType::NotSupported => "PCI_P2PDMA_MAP_NOT_SUPPORTED",
            MapType::BusAddr => "PCI_P2PDMA_MAP_BUS_ADDR",
            MapType::ThruHostBridge => "PCI_P2PDMA_MAP_THRU_HOST_BRIDGE",
        }
    }
    /// The snake_case name used in JSON (`bus_addr`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MapType::None => "none",
            MapType::NotSupported => "not_supported",
            MapType::BusAddr => "bus_addr",
            MapType::ThruHostBridge => "thru_host_bridge",
        }
    }
    /// Parse the snake_case name.
    pub fn from_name(s: &str) -> Option<MapType> {
        Some(match s {
            "none" => MapType::None,
            "not_supported" => MapType::NotSupported,
            "bus_addr" => MapType::BusAddr,
            "thru_host_bridge" => MapType::ThruHostBridge,
            _ => return None,
        })
    }
    /// A phrase for people.
    pub fn describe(self) -> &'static str {
        match self {
            MapType::None => "not a peer-to-peer transfer",
            MapType::NotSupported => "peer-to-peer DMA not supported",
            MapType::BusAddr => "peer-to-peer by PCI bus address",
            MapType::ThruHostBridge => "peer-to-peer through the host bridge",
        }
    }
}

impl fmt::Display for MapType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
