//! Properties over generated machines: the fast index equals the port of the
//! kernel's walk for every pair, the walk's verdicts are symmetric, and
//! explanations only offer fixes that improve the verdict.

use peerdma_p2p::{calc_map_type_and_dist, explain, matrix, MapType, P2pIndex};
use peerdma_pci::{gen, Topology};
use proptest::prelude::*;

fn machine(seed: u64, n: usize) -> Topology {
    Topology::from_raw(gen::generate(seed, n).unwrap(), "generated").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn index_agrees_with_the_kernel_walk(seed in any::<u64>(), n in 2usize..60) {
        let t = machine(seed, n);
        let idx = P2pIndex::new(&t);
        let m = matrix(&t);
        for a in t.ids() {
            for b in t.ids() {
                let v = calc_map_type_and_dist(&t, a, b);
                prop_assert_eq!(idx.map_type_and_dist(a, b), (v.map_type, v.raw_distance),
                    "seed {} {} -> {}", seed, t.function(a).bdf, t.function(b).bdf);
                prop_assert_eq!(m.get(a, b), (v.map_type, v.raw_distance),
                    "matrix: seed {} {} -> {}", seed, t.function(a).bdf, t.function(b).bdf);
                prop_assert_eq!(v.distance.is_some(), v.map_type != MapType::NotSupported);
            }
        }
    }

    /// The kernel's walk is not symmetric by construction (it walks up
    /// from the provider, checks ACS on the provider's side as it goes and
    /// on the client's side afterwards, and asks the whitelist in
    /// provider, client order), but its verdict must be: swapping provider
    /// and client changes nothing the verdict decides on.
    #[test]
    fn the_kernel_walk_is_symmetric(seed in any::<u64>(), n in 2usize..60) {
        let t = machine(seed, n);
        let sorted = |mut v: Vec<_>| { v.sort(); v };
        for a in t.ids() {
            for b in t.ids() {
                let ab = calc_map_type_and_dist(&t, a, b);
                let ba = calc_map_type_and_dist(&t, b, a);
                let pair = format!("seed {seed}: {} <-> {}", t.function(a).bdf, t.function(b).bdf);
                prop_assert_eq!(ab.map_type, ba.map_type, "{}", pair);
                prop_assert_eq!(ab.distance, ba.distance, "{}", pair);
                prop_assert_eq!(ab.raw_distance, ba.raw_distance, "{}", pair);
                prop_assert_eq!(ab.common_upstream, ba.common_upstream, "{}", pair);
                prop_assert_eq!(sorted(ab.acs_redirects.clone()), sorted(ba.acs_redirects.clone()), "{}", pair);
                prop_assert_eq!(ab.host_bridge_whitelisted, ba.host_bridge_whitelisted, "{}", pair);
                if ab.common_upstream.is_some() {
                    // Below a common bridge the walk checks both sides.
                    prop_assert_eq!(sorted(ab.acs_unknown.clone()), sorted(ba.acs_unknown.clone()), "{}", pair);
                }
            }
        }
    }

    #[test]
    fn fixes_improve_and_bus_addr_needs_none(seed in any::<u64>(), n in 2usize..30) {
        let t = machine(seed, n);
        let m: Vec<_> = matrix(&t).pairs().collect();
        for p in m.iter().take(200) {
            let (a, b) = (t.find(p.provider).unwrap(), t.find(p.client).unwrap());
            let e = explain(&t, a, b);
            prop_assert_eq!(e.map_type, p.map_type);
            prop_assert_eq!(e.distance, p.distance);
            if p.map_type == MapType::BusAddr {
                prop_assert!(e.fixes.is_empty());
            }
            let rank = |m: MapType| match m { MapType::BusAddr => 0, MapType::ThruHostBridge => 1, _ => 2 };
            for f in &e.fixes {
                prop_assert!(rank(f.gives) <= rank(p.map_type), "{:?}", f);
                prop_assert!(rank(f.gives) < rank(p.map_type) || f.distance < p.distance, "{:?}", f);
            }
        }
    }
}
