//! The simulator's fabric decides by the kernel's rules, as p2p writes
//! them: for every pair of devices, a peer request goes through the root
//! complex and is forwarded there exactly when the host-bridge rule says
//! the root complex forwards; a pair the kernel reaches by bus address is
//! routed by a switch; and a port redirects exactly when the ACS rule says
//! its (live) control register does.

use peerdma_dma::IommuMode;
use peerdma_mem::{Address, DmaAddr};
use peerdma_p2p::{acs_ctrl_redirects, calc_map_type_and_dist, host_bridge_forwarding, MapType};
use peerdma_pci::config::ACS_BIT_NAMES;
use peerdma_pci::{gen, FnId, Source, Topology};
use peerdma_sim::{Route, SimConfig, SimMachine};
use proptest::prelude::*;

fn sim(topo: Topology) -> SimMachine {
    SimMachine::new(
        topo,
        SimConfig {
            iommu: IommuMode::Off,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

/// The first bus address of `f`'s first memory BAR, as a device given a
/// bus-address mapping would use it.
fn bar_bus_addr(t: &Topology, f: FnId) -> Option<DmaAddr> {
    let bar = t.function(f).bars.iter().find(|b| !b.io)?;
    Some(DmaAddr::from_bus(
        bar.bus_offset().to_bus(bar.phys.start())?,
    ))
}

/// Every (provider with a memory BAR, client endpoint) pair: the route the
/// simulator gives the client's write to the provider's BAR, held to p2p's
/// rules. Returns how many pairs went through the root complex.
fn hold_to_the_rules(m: &SimMachine, label: &str) -> Result<usize, TestCaseError> {
    let t = m.topology();
    let mut via_rc = 0;
    for p in t.ids() {
        let Some(addr) = bar_bus_addr(t, p) else {
            continue;
        };
        for c in t
            .ids()
            .filter(|&c| c != p && t.function(c).is_dma_endpoint())
        {
            let (pf, cf) = (t.function(p), t.function(c));
            let pair = format!("{label}: {} -> {}", cf.bdf, pf.bdf);
            let pieces = m
                .trace(cf.bdf, addr, 64, true)
                .map_err(|e| TestCaseError::fail(format!("{pair}: {e}")))?;
            prop_assert_eq!(pieces.len(), 1, "{}", pair);
            let route = pieces[0].route;
            let verdict = calc_map_type_and_dist(t, p, c);
            if verdict.map_type == MapType::BusAddr {
                prop_assert!(
                    matches!(route, Route::Switch { .. }),
                    "{}: {:?}",
                    pair,
                    route
                );
                continue;
            }
            if verdict.common_upstream.is_none() {
                prop_assert!(route.through_root_complex(), "{}: {:?}", pair, route);
            }
            if route.through_root_complex() {
                via_rc += 1;
                let forwards = host_bridge_forwarding(t, pf.host_bridge, cf.host_bridge).forwards();
                let forwarded = matches!(route, Route::RootComplexPeer { .. });
                prop_assert_eq!(forwarded, forwards, "{}: {:?}", pair, route);
                if verdict.common_upstream.is_none() {
                    prop_assert_eq!(
                        forwarded,
                        verdict.map_type == MapType::ThruHostBridge,
                        "{}: {:?}",
                        pair,
                        route
                    );
                }
            }
        }
    }
    Ok(via_rc)
}

#[test]
fn presets_route_by_the_p2p_rules() {
    for name in ["dual-xeon", "epyc", "workstation", "gpu-storage-16"] {
        let m = sim(Source::Preset(name.into()).load().unwrap());
        let via_rc = hold_to_the_rules(&m, name).unwrap();
        assert!(via_rc > 0, "{name}: no pair went through the root complex");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn generated_machines_route_by_the_p2p_rules(seed in any::<u64>(), n in 2usize..160) {
        let t = Topology::from_raw(gen::generate(seed, n).unwrap(), "generated").unwrap();
        let m = sim(t);
        hold_to_the_rules(&m, &format!("seed {seed} n {n}"))?;
    }
}

/// Each ACS bit alone on the switch port above the initiator: the request
/// is redirected to the root complex exactly when p2p's ACS rule says the
/// live control value redirects.
#[test]
fn live_acs_redirects_exactly_by_the_p2p_rule() {
    let m = sim(Source::Preset("dual-xeon".into()).load().unwrap());
    let t = m.topology().clone();
    let gpu = m.device("gpu0").unwrap();
    let nvme = t.lookup("nvme0").unwrap();
    let port = m.device("sw0-p8").unwrap();
    assert_eq!(t.function(t.find(gpu).unwrap()).upstream, t.find(port));
    let addr = bar_bus_addr(&t, nvme).unwrap();
    let mut seen = [false; 2];
    for (bit, name) in ACS_BIT_NAMES {
        m.set_acs_ctrl(port, bit).unwrap();
        let route = m.trace(gpu, addr, 64, true).unwrap()[0].route;
        let redirected = route.through_root_complex();
        assert_eq!(redirected, acs_ctrl_redirects(bit), "ACS {name}: {route:?}");
        seen[usize::from(redirected)] = true;
    }
    assert_eq!(seen, [true, true], "both outcomes were exercised");
    m.set_acs_ctrl(port, 0).unwrap();
    assert!(!m.trace(gpu, addr, 64, true).unwrap()[0]
        .route
        .through_root_complex());
    // The address is the BAR's bus address: one byte past it is not the BAR.
    let bar = t.function(nvme).bars.iter().find(|b| !b.io).unwrap();
    let past = addr.checked_add(bar.phys.len()).unwrap();
    assert!(!matches!(
        m.trace(gpu, past, 64, true).unwrap()[0].route,
        Route::Switch { .. }
    ));
}
