//! Choosing among providers, with the kernel's semantics.

use crate::index::P2pIndex;
use crate::MapType;
use peerdma_pci::{FnId, Topology};
use serde::Serialize;

/// `pci_p2pdma_distance_many`: the summed distance from `provider` to every
/// client, or `None` (-1) if there are no clients or any client cannot reach
/// it.
pub fn distance_many(topo: &Topology, provider: FnId, clients: &[FnId]) -> Option<u32> {
    distance_many_with(&P2pIndex::new(topo), provider, clients)
}

fn distance_many_with(idx: &P2pIndex<'_>, provider: FnId, clients: &[FnId]) -> Option<u32> {
    if clients.is_empty() {
        return None;
    }
    let mut total = 0u32;
    for &c in clients {
        let (map, dist) = idx.map_type_and_dist(provider, c);
        if map == MapType::NotSupported {
            return None;
        }
        total += dist;
    }
    Some(total)
}

/// Functions that publish P2P memory (`pci_has_p2pmem`), in BDF order.
pub fn providers(topo: &Topology) -> Vec<FnId> {
    topo.functions()
        .iter()
        .filter(|f| f.p2pmem.is_some_and(|p| p.published))
        .map(|f| f.id)
        .collect()
}

/// The outcome of [`find_many`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FindMany {
    /// The summed distance of the closest providers.
    pub distance: u32,
    /// Every provider at that distance, in BDF order. The kernel picks one
    /// of them at random; the first is peerdma's stable choice.
    pub providers: Vec<FnId>,
}

/// `pci_p2pmem_find_many`: the published providers closest to all clients,
/// or `None` if none can serve every client.
pub fn find_many(topo: &Topology, clients: &[FnId]) -> Option<FindMany> {
    let idx = P2pIndex::new(topo);
    let mut best: Option<FindMany> = None;
    for p in providers(topo) {
        let Some(d) = distance_many_with(&idx, p, clients) else {
            continue;
        };
        match &mut best {
            Some(b) if d > b.distance => {}
            Some(b) if d == b.distance => b.providers.push(p),
            _ => {
                best = Some(FindMany {
                    distance: d,
                    providers: vec![p],
                })
            }
        }
    }
    best
}
