//! The timing model against hand-computed and generated instances.

use super::time::ROUND_SLACK_NS;
use super::*;
use proptest::prelude::*;

const GB: f64 = 1e9;

fn rel(a: f64, b: f64) -> f64 {
    ((a - b) / b).abs()
}

/// Gen4 x16: 16 GT/s × 16 lanes × 128/130 / 8 bits.
fn gen4_x16() -> f64 {
    16e9 * 16.0 * 128.0 / 130.0 / 8.0
}

fn flow(path: Vec<Hop>, bytes: u64) -> Flow {
    Flow::new(path, bytes)
}

/// Checks that `rates` is the max-min fair allocation for `flows`:
/// feasible on every channel and cap, and every flow has a bottleneck:
/// its own saturated cap, or a saturated channel on its path on which no
/// flow gets more than it does. Together these characterize max-min
/// fairness; the first part of the second is work conservation.
fn assert_max_min(net: &Network, flows: &[&Flow], rates: &[f64]) {
    let nch = net.links().len() * 2;
    let ch = |h: &Hop| h.link.index() as usize * 2 + h.dir.index() as usize;
    let capacity = |c: usize| net.links()[c / 2].bytes_per_sec;
    let mut load = vec![0.0; nch];
    let mut max_rate = vec![0.0f64; nch];
    for (f, &r) in flows.iter().zip(rates) {
        assert!(r > 0.0 && r.is_finite(), "rate {r}");
        if let Some(cap) = f.rate_cap {
            assert!(r <= cap * (1.0 + 1e-9), "rate {r} over cap {cap}");
        }
        for h in &f.path {
            load[ch(h)] += r;
            max_rate[ch(h)] = max_rate[ch(h)].max(r);
        }
    }
    for (c, &l) in load.iter().enumerate() {
        assert!(
            l <= capacity(c) * (1.0 + 1e-9),
            "channel {c} overloaded: {l} > {}",
            capacity(c)
        );
    }
    for (i, (f, &r)) in flows.iter().zip(rates).enumerate() {
        let capped = f.rate_cap.is_some_and(|cap| r >= cap * (1.0 - 1e-9));
        let bottleneck = f.path.iter().any(|h| {
            let c = ch(h);
            load[c] >= capacity(c) * (1.0 - 1e-9) && r >= max_rate[c] * (1.0 - 1e-9)
        });
        assert!(
            capped || bottleneck,
            "flow {i} (rate {r}) has no saturated bottleneck: not work-conserving/max-min"
        );
    }
}

fn two_links(l1: f64, l2: f64) -> (Network, LinkId, LinkId) {
    let mut net = Network::new();
    let a = net.add_link("l1", l1, SimTime::ZERO).unwrap();
    let b = net.add_link("l2", l2, SimTime::ZERO).unwrap();
    (net, a, b)
}

#[test]
fn one_flow_gets_full_bandwidth() {
    let mut net = Network::new();
    let l = net
        .add_link("l", 10.0 * GB, SimTime::from_micros(1))
        .unwrap();
    let s = net
        .simulate(&[flow(vec![Hop::up(l)], 1_000_000_000)])
        .unwrap();
    let r = &s.flows[0];
    assert_eq!(r.start, SimTime::ZERO);
    assert_eq!(r.end, SimTime::from_nanos(100_000_000 + 1_000));
    assert!(rel(r.mean_rate, 10.0 * GB) < 1e-12, "{}", r.mean_rate);
    assert_eq!(s.makespan, r.end);
    let up = s.channel(l, Dir::Up).unwrap();
    assert_eq!(
        (up.bytes, up.busy),
        (1_000_000_000, SimTime::from_millis(100))
    );
    let down = s.channel(l, Dir::Down).unwrap();
    assert_eq!((down.bytes, down.busy), (0, SimTime::ZERO));
}

#[test]
fn two_flows_split_a_gen4_x16_link() {
    let mut net = Network::new();
    let l = net
        .add_link("x16", gen4_x16(), SimTime::from_nanos(300))
        .unwrap();
    let flows = [
        flow(vec![Hop::up(l)], 1 << 30),
        flow(vec![Hop::up(l)], 1 << 30),
    ];
    let s = net.simulate(&flows).unwrap();
    for r in &s.flows {
        assert!(rel(r.mean_rate, gen4_x16() / 2.0) < 1e-6, "{}", r.mean_rate);
    }
    assert_eq!(s.flows[0].end, s.flows[1].end);
    let expect = (2.0 * (1u64 << 30) as f64 / gen4_x16() * 1e9).ceil() as u64 + 300;
    assert!(
        s.flows[0].end.as_nanos().abs_diff(expect) <= 1,
        "{:?} vs {expect}",
        s.flows[0].end
    );
    let rates = net.fair_rates(&flows).unwrap();
    assert!(rates.iter().all(|&r| rel(r, gen4_x16() / 2.0) < 1e-12));
}

#[test]
fn max_min_across_two_links() {
    let (net, l1, l2) = two_links(10.0 * GB, 4.0 * GB);
    let a = flow(vec![Hop::up(l1), Hop::up(l2)], 2_000_000_000);
    let b = flow(vec![Hop::up(l1)], 8_000_000_000);
    let c = flow(vec![Hop::up(l2)], 2_000_000_000);
    let flows = [a.clone(), b.clone(), c.clone()];
    let rates = net.fair_rates(&flows).unwrap();
    for (r, want) in rates.iter().zip([2.0 * GB, 8.0 * GB, 2.0 * GB]) {
        assert!(rel(*r, want) < 1e-12, "{rates:?}");
    }
    assert_max_min(&net, &[&a, &b, &c], &rates);
    // Sized so all three end together at 1 s.
    let s = net.simulate(&flows).unwrap();
    for r in &s.flows {
        assert_eq!(r.end, SimTime::from_secs(1));
    }
    assert_eq!(s.events, 2);
    // C smaller: after C ends at 0.5 s, A gets all of L2 (4) and B the
    // rest of L1 (6): A ends at 0.5 + 1/4 = 0.75 s; B has 4 + 1.5 GB at
    // 0.75 s and its last 2.5 GB at 10 GB/s end at 1.0 s.
    let flows = [a, b, flow(vec![Hop::up(l2)], 1_000_000_000)];
    let s = net.simulate(&flows).unwrap();
    assert_eq!(s.flows[2].end, SimTime::from_millis(500));
    assert_eq!(s.flows[0].end, SimTime::from_millis(750));
    assert_eq!(s.flows[1].end, SimTime::from_millis(1000));
}

#[test]
fn later_flow_takes_its_share_from_its_start() {
    let mut net = Network::new();
    let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
    let a = flow(vec![Hop::up(l)], 10_000_000_000);
    let b = Flow {
        start: SimTime::from_millis(500),
        ..flow(vec![Hop::up(l)], 2_000_000_000)
    };
    let s = net.simulate(&[a, b]).unwrap();
    // A alone for 0.5 s (5 GB), then 5 GB/s each: B's 2 GB take 0.4 s;
    // A then has 3 GB left at 10 GB/s: 0.3 s more.
    assert_eq!(s.flows[1].start, SimTime::from_millis(500));
    assert_eq!(s.flows[1].end, SimTime::from_millis(900));
    assert_eq!(s.flows[0].end, SimTime::from_millis(1200));
    assert!(rel(s.flows[1].mean_rate, 5.0 * GB) < 1e-9);
    assert!(rel(s.flows[0].mean_rate, 10e9 / 1.2) < 1e-9);
    assert_eq!(s.events, 4);
    assert_eq!(
        s.channel(l, Dir::Up).unwrap().busy,
        SimTime::from_millis(1200)
    );
}

#[test]
fn after_chains_serialize() {
    let mut net = Network::new();
    let l = net.add_link("l", GB, SimTime::from_micros(10)).unwrap();
    let flows = [
        flow(vec![Hop::up(l)], 1_000_000),
        Flow {
            after: Some(0),
            ..flow(vec![Hop::up(l)], 1_000_000)
        },
        Flow {
            after: Some(1),
            start: SimTime::from_secs(5),
            ..flow(vec![Hop::up(l)], 1_000_000)
        },
    ];
    let s = net.simulate(&flows).unwrap();
    let t = |i: usize| (s.flows[i].start.as_nanos(), s.flows[i].end.as_nanos());
    assert_eq!(t(0), (0, 1_010_000));
    assert_eq!(t(1), (1_010_000, 2_020_000));
    assert_eq!(t(2), (5_000_000_000, 5_001_010_000));
    // Two interleaved queues on one link: each request gets half while
    // both queues are busy, and a queue's requests never overlap.
    let mut flows = Vec::new();
    for i in 0..8usize {
        flows.push(Flow {
            after: i.checked_sub(2),
            ..flow(vec![Hop::up(l)], 1_000_000)
        });
    }
    let s = net.simulate(&flows).unwrap();
    for i in 2..8 {
        assert_eq!(s.flows[i].start, s.flows[i - 2].end);
        assert!(rel(s.flows[i].mean_rate, GB / 2.0) < 1e-9);
    }
    assert_eq!(s.makespan, SimTime::from_nanos(4 * 2_010_000));
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let mut net = Network::new();
    let l = net.add_link("l", GB, SimTime::ZERO).unwrap();
    let f = flow(vec![Hop::up(l)], 10);
    let self_ref = Flow {
        after: Some(0),
        ..f.clone()
    };
    assert_eq!(
        net.simulate(&[self_ref]).unwrap_err(),
        TimingError::BadAfter { flow: 0, after: 0 }
    );
    let forward = Flow {
        after: Some(1),
        ..f.clone()
    };
    assert_eq!(
        net.simulate(&[forward, f.clone()]).unwrap_err(),
        TimingError::BadAfter { flow: 0, after: 1 }
    );
    let far = Flow {
        after: Some(usize::MAX),
        ..f.clone()
    };
    assert!(matches!(
        net.simulate(&[f.clone(), far]),
        Err(TimingError::BadAfter { flow: 1, .. })
    ));
    for bw in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-320] {
        assert!(matches!(
            net.add_link("bad", bw, SimTime::ZERO),
            Err(TimingError::BadBandwidth { .. })
        ));
    }
    let beyond = LinkId::new(net.id, 7);
    let unknown = flow(vec![Hop::up(l), Hop::down(beyond)], 1);
    assert_eq!(
        net.simulate(&[unknown]).unwrap_err(),
        TimingError::UnknownLink {
            flow: 0,
            hop: 1,
            link: beyond
        }
    );
    // A link of another network, even at an index this one has, is not
    // one of this network's links.
    let mut other = Network::new();
    let foreign = other.add_link("o", 1e9, SimTime::ZERO).unwrap();
    assert_eq!(foreign.index(), l.index());
    assert!(net.link(foreign).is_none());
    assert!(matches!(
        net.simulate(&[flow(vec![Hop::up(foreign)], 1)]),
        Err(TimingError::UnknownLink { hop: 0, .. })
    ));
    let s = net.simulate(&[flow(vec![Hop::up(l)], 1)]).unwrap();
    assert!(s.channel(l, Dir::Up).is_some());
    assert!(s.channel(foreign, Dir::Up).is_none());
    for cap in [0.0, -5.0, f64::NAN, f64::INFINITY] {
        let capped = Flow {
            rate_cap: Some(cap),
            ..f.clone()
        };
        assert!(matches!(
            net.simulate(&[capped]),
            Err(TimingError::BadRateCap { flow: 0, .. })
        ));
    }
    assert_eq!(
        net.simulate(&[flow(vec![], 1)]).unwrap_err(),
        TimingError::Unconstrained { flow: 0 }
    );
    // A far-future start is fine; a time past u64 ns is an error.
    let late = Flow {
        start: SimTime::from_nanos(u64::MAX - 5),
        ..f.clone()
    };
    assert_eq!(
        net.simulate(&[late]).unwrap_err(),
        TimingError::TimeOverflow { flow: 0 }
    );
    let msg = TimingError::BadAfter { flow: 3, after: 9 }.to_string();
    assert!(msg.contains("flow 3") && msg.contains('9'), "{msg}");
}

#[test]
fn rate_cap_limits_a_flow_and_leaves_the_rest() {
    let mut net = Network::new();
    let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
    let a = Flow {
        rate_cap: Some(3.0 * GB),
        ..flow(vec![Hop::up(l)], 3_000_000_000)
    };
    let b = flow(vec![Hop::up(l)], 7_000_000_000);
    let rates = net.fair_rates(&[a.clone(), b.clone()]).unwrap();
    assert!(rel(rates[0], 3.0 * GB) < 1e-12 && rel(rates[1], 7.0 * GB) < 1e-12);
    assert_max_min(&net, &[&a, &b], &rates);
    let s = net.simulate(&[a, b]).unwrap();
    assert_eq!(s.flows[0].end, SimTime::from_secs(1));
    assert_eq!(s.flows[1].end, SimTime::from_secs(1));
    // A purely local flow moves at its cap.
    let local = Flow {
        rate_cap: Some(2.0 * GB),
        ..flow(vec![], 1_000_000_000)
    };
    let s = net.simulate(&[local]).unwrap();
    assert_eq!(s.flows[0].end, SimTime::from_millis(500));
}

#[test]
fn opposite_directions_do_not_contend() {
    let mut net = Network::new();
    let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
    let s = net
        .simulate(&[
            flow(vec![Hop::up(l)], 1_000_000_000),
            flow(vec![Hop::down(l)], 1_000_000_000),
        ])
        .unwrap();
    assert_eq!(s.flows[0].end, SimTime::from_millis(100));
    assert_eq!(s.flows[1].end, SimTime::from_millis(100));
    let s = net
        .simulate(&[
            flow(vec![Hop::up(l)], 1_000_000_000),
            flow(vec![Hop::up(l)], 1_000_000_000),
        ])
        .unwrap();
    assert_eq!(s.flows[0].end, SimTime::from_millis(200));
    // Crossing one channel twice uses it twice.
    let rates = net
        .fair_rates(&[flow(vec![Hop::up(l), Hop::up(l)], 1)])
        .unwrap();
    assert!(rel(rates[0], 5.0 * GB) < 1e-12);
    let rates = net
        .fair_rates(&[flow(vec![Hop::up(l), Hop::down(l)], 1)])
        .unwrap();
    assert!(rel(rates[0], 10.0 * GB) < 1e-12);
}

#[test]
fn zero_byte_flows_cost_only_latency() {
    let mut net = Network::new();
    let l = net.add_link("l", GB, SimTime::from_micros(2)).unwrap();
    let flows = [
        Flow {
            start: SimTime::from_nanos(50),
            ..flow(vec![Hop::up(l), Hop::down(l)], 0)
        },
        Flow {
            after: Some(0),
            ..flow(vec![Hop::up(l)], 0)
        },
        Flow {
            after: Some(1),
            ..flow(vec![], 0)
        },
    ];
    let s = net.simulate(&flows).unwrap();
    assert_eq!(
        (s.flows[0].start.as_nanos(), s.flows[0].end.as_nanos()),
        (50, 4_050)
    );
    assert_eq!(
        (s.flows[1].start.as_nanos(), s.flows[1].end.as_nanos()),
        (4_050, 6_050)
    );
    assert_eq!(
        (s.flows[2].start.as_nanos(), s.flows[2].end.as_nanos()),
        (6_050, 6_050)
    );
    assert_eq!(s.flows[0].mean_rate, 0.0);
    assert_eq!(net.simulate(&[]).unwrap().makespan, SimTime::ZERO);
}

#[test]
fn hand_instances_are_max_min_and_work_conserving() {
    // Parking lot: one long flow over three links, one short flow per link.
    let mut net = Network::new();
    let ls: Vec<_> = [4.0, 6.0, 9.0]
        .iter()
        .map(|&g| net.add_link("l", g * GB, SimTime::ZERO).unwrap())
        .collect();
    let mut flows = vec![flow(ls.iter().map(|&l| Hop::up(l)).collect(), 1)];
    flows.extend(ls.iter().map(|&l| flow(vec![Hop::up(l)], 1)));
    flows.push(Flow {
        rate_cap: Some(1.0 * GB),
        ..flow(vec![Hop::up(ls[2])], 1)
    });
    flows.push(flow(vec![Hop::down(ls[0]), Hop::down(ls[0])], 1));
    let rates = net.fair_rates(&flows).unwrap();
    let refs: Vec<&Flow> = flows.iter().collect();
    assert_max_min(&net, &refs, &rates);
    // Long flow: bottleneck l0 (4 GB/s shared with one short flow) = 2.
    assert!(rel(rates[0], 2.0 * GB) < 1e-12, "{rates:?}");
    assert!(rel(rates[2], 4.0 * GB) < 1e-12, "{rates:?}");
    assert!(rel(rates[3], 6.0 * GB) < 1e-12, "{rates:?}");
    assert!(rel(rates[4], 1.0 * GB) < 1e-12, "{rates:?}");

    // A checker that must reject an allocation that leaves capacity idle.
    let (net, l1, l2) = two_links(10.0 * GB, 4.0 * GB);
    let a = flow(vec![Hop::up(l1), Hop::up(l2)], 1);
    let b = flow(vec![Hop::up(l1)], 1);
    let bad = std::panic::catch_unwind(|| {
        assert_max_min(&net, &[&a, &b], &[2.0 * GB, 6.0 * GB]);
    });
    assert!(
        bad.is_err(),
        "checker accepted a non-work-conserving allocation"
    );
    let rates = net.fair_rates(&[a.clone(), b.clone()]).unwrap();
    assert_max_min(&net, &[&a, &b], &rates);
    assert!(rel(rates[1], 6.0 * GB) < 1e-12);
}

#[test]
fn many_identical_queues_finish_with_few_events() {
    // 8 devices × 4 queues × 8 requests into one shared host channel.
    let mut net = Network::new();
    let host = net
        .add_link("host", 20.0 * GB, SimTime::from_nanos(80))
        .unwrap();
    let mut flows = Vec::new();
    for d in 0..8 {
        let dev = net
            .add_link(format!("dev{d}"), 8.0 * GB, SimTime::from_nanos(500))
            .unwrap();
        for _q in 0..4 {
            for r in 0..8 {
                let after = (r > 0).then(|| flows.len() - 1);
                flows.push(Flow {
                    after,
                    rate_cap: Some(3.0 * GB),
                    ..flow(vec![Hop::up(dev), Hop::down(host)], 1 << 20)
                });
            }
        }
    }
    let s = net.simulate(&flows).unwrap();
    assert!(s.events <= 2 * flows.len());
    let host_down = s.channel(host, Dir::Down).unwrap();
    assert_eq!(host_down.bytes, 256 << 20);
    // The host channel (20 GB/s) is the bottleneck for 24 GB/s of drives.
    let data_time = (256u64 << 20) as f64 / (20.0 * GB);
    assert!(host_down.busy.as_secs_f64() >= data_time * (1.0 - 1e-9));
    for r in &s.flows {
        assert!(rel(r.mean_rate, 20.0 * GB / 32.0) < 1e-6, "{}", r.mean_rate);
    }
}

#[test]
fn rate_cache_is_used_and_changes_nothing() {
    // 4 devices behind one uplink, 16 queues of 40 requests of varied
    // size each, reading to and writing from a shared host channel.
    let mut net = Network::new();
    let host = net
        .add_link("host", 20.0 * GB, SimTime::from_nanos(80))
        .unwrap();
    let up = net
        .add_link("uplink", 16.0 * GB, SimTime::from_nanos(150))
        .unwrap();
    let devs: Vec<_> = (0..4)
        .map(|d| {
            net.add_link(format!("dev{d}"), 8.0 * GB, SimTime::from_nanos(500))
                .unwrap()
        })
        .collect();
    let mut flows = Vec::new();
    let mut last = [None; 16];
    let mut x: u64 = 12345;
    for i in 0..16 * 40 {
        let q = i % 16;
        let d = q % 4;
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let path = if q < 12 {
            vec![Hop::up(devs[d]), Hop::up(up), Hop::down(host)]
        } else {
            vec![Hop::up(host), Hop::down(up), Hop::down(devs[d])]
        };
        flows.push(Flow {
            after: last[q],
            rate_cap: Some((3 + d) as f64 * GB),
            ..flow(path, 4096 * (1 + (x >> 33) % 256))
        });
        last[q] = Some(i);
    }
    let (with, fills_with) = net.run(&flows, true, None).unwrap();
    let (without, fills_without) = net.run(&flows, false, None).unwrap();
    assert_eq!(with, without);
    assert!(
        fills_with < fills_without,
        "{fills_with} vs {fills_without}"
    );
    assert!(with.events <= 2 * flows.len());
}

#[test]
fn sim_time_conversions() {
    assert_eq!(SimTime::from_secs_f64(1.5).as_nanos(), 1_500_000_000);
    assert_eq!(SimTime::from_secs_f64(-1.0), SimTime::ZERO);
    assert_eq!(SimTime::from_secs_f64(f64::NAN), SimTime::ZERO);
    assert_eq!(SimTime::from_secs_f64(1e30), SimTime::MAX);
    assert_eq!(SimTime::from_nanos(2_500_000).as_secs_f64(), 0.0025);
    assert_eq!(
        SimTime::from_nanos(5) + SimTime::from_nanos(7),
        SimTime::from_nanos(12)
    );
    assert_eq!(SimTime::MAX + SimTime::from_nanos(1), SimTime::MAX);
    assert_eq!(
        SimTime::from_nanos(5) - SimTime::from_nanos(7),
        SimTime::ZERO
    );
    assert_eq!(SimTime::from_micros(1_000_001).to_string(), "1.000001 s");
    assert_eq!(SimTime::from_nanos(850).to_string(), "850 ns");
}

/// The flows of an [`instance`] with their hops on `net`'s links.
fn relink(net: &Network, mut flows: Vec<Flow>) -> Vec<Flow> {
    for f in &mut flows {
        for h in &mut f.path {
            h.link = LinkId::new(net.id, h.link.index());
        }
    }
    flows
}

/// A random small instance: links, flows with random paths (repeats
/// allowed), sizes, starts, queues and caps.
fn instance() -> impl Strategy<Value = (Vec<(f64, u64)>, Vec<Flow>)> {
    let links = prop::collection::vec((1u32..=100, 0u64..2_000), 1..4);
    links.prop_flat_map(|links| {
        let nl = links.len() as u32;
        // Network 0 is no network: `relink` moves the hops to the real one.
        let hop = (0..nl, any::<bool>()).prop_map(|(l, up)| Hop {
            link: LinkId::new(0, l),
            dir: if up { Dir::Up } else { Dir::Down },
        });
        let fl = (
            prop::collection::vec(hop, 0..4),
            prop_oneof![Just(0u64), 1u64..1_000, 1_000u64..2_000_000_000],
            0u64..1_000_000,
            prop::option::of(any::<prop::sample::Index>()),
            prop::option::of(1u32..=200),
        );
        let flows = prop::collection::vec(fl, 1..9).prop_map(|fs| {
            fs.into_iter()
                .enumerate()
                .map(|(i, (path, bytes, start, after, cap))| {
                    let mut rate_cap = cap.map(|c| c as f64 * 0.5e9);
                    if path.is_empty() && rate_cap.is_none() {
                        rate_cap = Some(3e9);
                    }
                    Flow {
                        path,
                        bytes,
                        start: SimTime::from_nanos(start),
                        after: if i == 0 {
                            None
                        } else {
                            after.map(|a| a.index(i))
                        },
                        also_after: Vec::new(),
                        rate_cap,
                    }
                })
                .collect::<Vec<_>>()
        });
        (
            Just(
                links
                    .iter()
                    .map(|&(g, lat)| (g as f64 * 1e8, lat))
                    .collect::<Vec<_>>(),
            ),
            flows,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn conservation_and_fairness((links, flows) in instance()) {
        let mut net = Network::new();
        for (i, &(bw, lat)) in links.iter().enumerate() {
            net.add_link(format!("l{i}"), bw, SimTime::from_nanos(lat)).unwrap();
        }
        let flows = relink(&net, flows);
        let mut trace = Vec::new();
        let (s, _) = net.run(&flows, true, Some(&mut trace)).unwrap();
        // Restoring memoized rates changes nothing.
        prop_assert_eq!(&s, &net.run(&flows, false, None).unwrap().0);
        prop_assert_eq!(s.flows.len(), flows.len());
        prop_assert!(s.events <= 2 * flows.len());
        let mut makespan = SimTime::ZERO;
        for (f, r) in flows.iter().zip(&s.flows) {
            let lat = net.path_latency(&f.path);
            prop_assert!(r.end >= r.start + lat);
            // Queues: start exactly when allowed.
            let allowed = f.after.map_or(f.start, |a| f.start.max(s.flows[a].end));
            prop_assert_eq!(r.start, allowed);
            makespan = makespan.max(r.end);
            if f.bytes == 0 {
                prop_assert_eq!(r.end, r.start + lat);
                continue;
            }
            // No flow beats the slowest channel or cap on its path.
            let min_cap = f
                .path
                .iter()
                .map(|h| net.link(h.link).unwrap().bytes_per_sec)
                .chain(f.rate_cap)
                .fold(f64::INFINITY, f64::min);
            // Internal times are f64 ns: allow a few ulps of the latest
            // time as error in the flow's duration.
            let time_eps = 8.0 * f64::EPSILON * s.makespan.as_nanos() as f64;
            let slack = 1e-8 + time_eps * (min_cap / 1e9) / f.bytes as f64;
            prop_assert!(r.mean_rate <= min_cap * (1.0 + slack), "{} > {}", r.mean_rate, min_cap);
            // Same on reported (ns-rounded) times.
            let moving_ns = (r.end.as_nanos() - r.start.as_nanos() - lat.as_nanos()) as f64 + ROUND_SLACK_NS;
            prop_assert!(f.bytes as f64 <= min_cap / 1e9 * moving_ns * (1.0 + 1e-8));
        }
        prop_assert_eq!(s.makespan, makespan);
        for c in &s.channels {
            let cap = net.link(c.link).unwrap().bytes_per_sec / 1e9;
            let want: u64 = flows
                .iter()
                .map(|f| f.bytes * f.path.iter().filter(|h| h.link == c.link && h.dir == c.dir).count() as u64)
                .sum();
            prop_assert_eq!(c.bytes, want);
            prop_assert!(c.bytes as f64 <= cap * (c.busy.as_nanos() as f64 + ROUND_SLACK_NS) * (1.0 + 1e-8) + 1.0,
                "channel {:?}: {} bytes in {:?}", (c.link, c.dir), c.bytes, c.busy);
        }
        // Between any two events, rates are max-min fair: feasible and
        // work-conserving.
        let mut last = f64::NEG_INFINITY;
        for step in &trace {
            prop_assert!(step.time >= last, "time went backwards");
            last = step.time;
            let active: Vec<&Flow> = step.rates.iter().map(|&(f, _)| &flows[f]).collect();
            let rates: Vec<f64> = step.rates.iter().map(|&(_, r)| r).collect();
            assert_max_min(&net, &active, &rates);
        }
    }
}

#[test]
fn a_join_starts_when_every_predecessor_has_ended() {
    let mut net = Network::new();
    let a = net.add_link("a", 1e9, SimTime::ZERO).unwrap();
    let b = net.add_link("b", 1e9, SimTime::ZERO).unwrap();
    let flows = vec![
        flow(vec![Hop::up(a)], 1_000_000), // ends at 1 ms
        flow(vec![Hop::up(b)], 3_000_000), // alone it would end at 3 ms
        Flow {
            after: Some(0),
            also_after: vec![1, 1],
            ..flow(vec![Hop::up(a)], 1_000_000)
        },
        Flow {
            also_after: vec![0],
            ..flow(vec![Hop::up(b)], 1_000_000)
        },
    ];
    let s = net.simulate(&flows).unwrap();
    // Flow 3 waits for flow 0 only (1 ms), then shares link b with flow 1:
    // it ends at 3 ms, and flow 1, slowed by it, at 4 ms.
    assert_eq!(s.flows[3].start, SimTime::from_millis(1));
    assert_eq!(s.flows[3].end, SimTime::from_millis(3));
    assert_eq!(s.flows[1].end, SimTime::from_millis(4));
    assert_eq!(
        s.flows[2].start,
        SimTime::from_millis(4),
        "waits for the later one"
    );
    assert_eq!(s.flows[2].end, SimTime::from_millis(5));
    let bad = vec![
        flow(vec![Hop::up(a)], 1),
        Flow {
            also_after: vec![1],
            ..flow(vec![Hop::up(a)], 1)
        },
    ];
    assert_eq!(
        net.simulate(&bad).unwrap_err(),
        TimingError::BadAfter { flow: 1, after: 1 }
    );
}
