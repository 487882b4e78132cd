//! The kernel's walk, ported step for step. This is the specification that
//! [`crate::P2pIndex`] must agree with, and the source of the details an
//! explanation needs (which bridges redirect, in the kernel's order).

use crate::rules::{acs_redirects, host_bridge_forwarding};
use crate::MapType;
use peerdma_pci::{FnId, Topology};
use serde::Serialize;

/// The kernel's verdict for one (provider, client) pair, with the facts it
/// was decided on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub provider: FnId,
    pub client: FnId,
    pub map_type: MapType,
    /// `pci_p2pdma_distance`: the distance, or `None` where the kernel
    /// returns -1 (not supported).
    pub distance: Option<u32>,
    /// What `calc_map_type_and_dist` stores in `*dist`, also when the pair
    /// is not supported.
    pub raw_distance: u32,
    /// The bridge both sit below (the walk's meeting point), if any.
    pub common_upstream: Option<FnId>,
    /// Functions with ACS redirect (RR, CR or EC) on the path below the
    /// common upstream bridge, in the order the kernel lists them for
    /// `pci=disable_acs_redir=`. Empty when there is no common bridge.
    pub acs_redirects: Vec<FnId>,
    /// Functions the walk checked whose ACS state the capture does not show
    /// (unknown, or only assumed with `--assume-acs`).
    pub acs_unknown: Vec<FnId>,
    /// Whether the host bridge(s) passed the whitelist test (only consulted
    /// when the path goes through the host bridge).
    pub host_bridge_whitelisted: Option<bool>,
    /// Whether the AMD Zen rule (`cpu_supports_p2pdma`) applied.
    pub cpu_supports_p2pdma: bool,
}

/// `calc_map_type_and_dist(provider, client)` from drivers/pci/p2pdma.c.
pub fn calc_map_type_and_dist(topo: &Topology, provider: FnId, client: FnId) -> Verdict {
    let up = |f: FnId| topo.function(f).upstream;
    let mut acs_list = Vec::new();
    let mut acs_unknown = Vec::new();
    let mut check = |f: FnId, list: &mut Vec<FnId>| {
        let acs = &topo.function(f).acs;
        if acs_redirects(acs) == Some(true) {
            list.push(f);
        }
        // Unknown, or only assumed (--assume-acs).
        if !acs.is_known() {
            acs_unknown.push(f);
        }
    };

    let mut a = Some(provider);
    let mut dist_a = 0u32;
    let mut dist_b = 0u32;
    let mut common = None;
    'outer: while let Some(av) = a {
        dist_b = 0;
        check(av, &mut acs_list);
        let mut bb = Some(client);
        while let Some(bv) = bb {
            if av == bv {
                common = Some(av);
                break 'outer;
            }
            bb = up(bv);
            dist_b += 1;
        }
        a = up(av);
        dist_a += 1;
    }

    let cpu_ok = topo.cpu().supports_p2pdma();
    let dist = dist_a + dist_b;
    let mut verdict = Verdict {
        provider,
        client,
        map_type: MapType::ThruHostBridge,
        distance: None,
        raw_distance: dist,
        common_upstream: common,
        acs_redirects: Vec::new(),
        acs_unknown: Vec::new(),
        host_bridge_whitelisted: None,
        cpu_supports_p2pdma: cpu_ok,
    };

    if let Some(c) = common {
        // check_b_path_acs
        let mut bb = Some(client);
        while let Some(bv) = bb {
            if bv == c {
                break;
            }
            check(bv, &mut acs_list);
            bb = up(bv);
        }
        verdict.acs_unknown = acs_unknown;
        if acs_list.is_empty() {
            verdict.map_type = MapType::BusAddr;
            verdict.distance = Some(dist);
            return verdict;
        }
        verdict.acs_redirects = acs_list;
    } else {
        verdict.acs_unknown = acs_unknown;
    }

    // map_through_host_bridge
    let rule = host_bridge_forwarding(
        topo,
        topo.function(provider).host_bridge,
        topo.function(client).host_bridge,
    );
    verdict.host_bridge_whitelisted = Some(rule.whitelisted);
    if !rule.forwards() {
        verdict.map_type = MapType::NotSupported;
    } else {
        verdict.distance = Some(dist);
    }
    verdict
}
