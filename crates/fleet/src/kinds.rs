//! Which functions peer-to-peer DMA is about, and what kind of device each
//! is (for labels that a scheduler matches).

use peerdma_p2p::{MapType, P2pIndex};
use peerdma_pci::{FnId, Function, Topology};
use serde::Serialize;

/// The kinds of device whose pairs labels describe.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// A GPU: a display controller (class 03), not a server's BMC graphics.
    Gpu,
    /// A processing accelerator (class 12) or co-processor (class 0b 40).
    Accel,
    /// A network or InfiniBand controller (class 02).
    Nic,
    /// An NVMe controller (class 01 08).
    Nvme,
}

/// Vendors whose display controllers are a server's BMC or console
/// graphics, not GPUs: ASPEED and Matrox.
const CONSOLE_GRAPHICS_VENDORS: &[u16] = &[0x1a03, 0x102b];

impl DeviceKind {
    pub const ALL: [DeviceKind; 4] = [
        DeviceKind::Gpu,
        DeviceKind::Accel,
        DeviceKind::Nic,
        DeviceKind::Nvme,
    ];

    /// The kind of a function, if it is one of these.
    pub fn of(f: &Function) -> Option<DeviceKind> {
        if !f.is_dma_endpoint() {
            return None;
        }
        match (f.class >> 16, (f.class >> 8) & 0xff) {
            (0x03, _) if !CONSOLE_GRAPHICS_VENDORS.contains(&f.vendor) => Some(DeviceKind::Gpu),
            (0x12, _) | (0x0b, 0x40) => Some(DeviceKind::Accel),
            (0x02, _) => Some(DeviceKind::Nic),
            (0x01, 0x08) => Some(DeviceKind::Nvme),
            _ => None,
        }
    }

    /// `gpu`, `accel`, `nic`, `nvme`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Gpu => "gpu",
            DeviceKind::Accel => "accel",
            DeviceKind::Nic => "nic",
            DeviceKind::Nvme => "nvme",
        }
    }
}

/// The functions that do DMA (not bridges, host bridges or system
/// peripherals), in BDF order: the rows of `peerdma topo`'s matrix.
pub fn peer_functions(topo: &Topology) -> Vec<FnId> {
    topo.functions()
        .iter()
        .filter(|f| f.is_dma_endpoint())
        .map(|f| f.id)
        .collect()
}

/// The devices peer-to-peer DMA is for: GPUs, accelerators, NICs, NVMe
/// drives (by class, [`DeviceKind`]) and any function that has P2P memory,
/// in BDF order. USB controllers, audio functions and the like are left
/// out: they do DMA, but not to a peer.
pub fn p2p_devices(topo: &Topology) -> Vec<FnId> {
    topo.functions()
        .iter()
        .filter(|f| DeviceKind::of(f).is_some() || f.p2pmem.is_some())
        .map(|f| f.id)
        .collect()
}

/// How good a map type is for P2P: lower is better.
pub(crate) fn rank(m: MapType) -> u8 {
    match m {
        MapType::BusAddr => 0,
        MapType::ThruHostBridge => 1,
        MapType::None => 2,
        MapType::NotSupported => 3,
    }
}

/// The verdicts between the devices of two kinds (or of one kind among
/// themselves), counted over unordered pairs; a pair counts by the better
/// of its two directions (the kernel's rule gives both the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KindPairs {
    pub kinds: [DeviceKind; 2],
    /// Pairs of distinct devices.
    pub pairs: usize,
    /// Pairs that can do P2P (by bus address or through the host bridge).
    pub p2p: usize,
    /// Pairs that can do P2P by bus address.
    pub bus_addr: usize,
    /// The best verdict among the pairs.
    pub best: MapType,
}

/// [`KindPairs`] for every two kinds the machine has devices of.
pub fn kind_pairs(idx: &P2pIndex<'_>) -> Vec<KindPairs> {
    let topo = idx.topology();
    let mut by_kind: Vec<(DeviceKind, Vec<FnId>)> =
        DeviceKind::ALL.iter().map(|&k| (k, Vec::new())).collect();
    for f in topo.functions() {
        if let Some(k) = DeviceKind::of(f) {
            if let Some(e) = by_kind.iter_mut().find(|(kk, _)| *kk == k) {
                e.1.push(f.id);
            }
        }
    }
    let mut out = Vec::new();
    for i in 0..by_kind.len() {
        for j in i..by_kind.len() {
            let (ka, fa) = &by_kind[i];
            let (kb, fb) = &by_kind[j];
            let mut kp = KindPairs {
                kinds: [*ka, *kb],
                pairs: 0,
                p2p: 0,
                bus_addr: 0,
                best: MapType::NotSupported,
            };
            for (x, &a) in fa.iter().enumerate() {
                // Among one kind, each unordered pair once.
                let others = if i == j { &fb[x + 1..] } else { &fb[..] };
                for &b in others {
                    let m = pair_map_type(idx, a, b);
                    kp.pairs += 1;
                    kp.p2p += usize::from(m.is_p2p());
                    kp.bus_addr += usize::from(m == MapType::BusAddr);
                    if rank(m) < rank(kp.best) {
                        kp.best = m;
                    }
                }
            }
            if kp.pairs > 0 {
                out.push(kp);
            }
        }
    }
    out
}

/// The better map type of the pair's two directions.
pub fn pair_map_type(idx: &P2pIndex<'_>, a: FnId, b: FnId) -> MapType {
    let (x, _) = idx.map_type_and_dist(a, b);
    let (y, _) = idx.map_type_and_dist(b, a);
    if rank(x) <= rank(y) {
        x
    } else {
        y
    }
}
