//! Known results of the timing model on the simulated machine.

use peerdma_dma::{BouncePolicy, IommuMode};
use peerdma_mem::{Address, Direction, DmaAddr};
use peerdma_pci::desc::parse_description;
use peerdma_pci::{Source, Topology};
use peerdma_sim::timing::{Dir, Flow, SimTime};
use peerdma_sim::{SimConfig, SimMachine};

const TWO_GPUS_ONE_SWITCH: &str = r#"
[cpu]
vendor = "amd"
family = 0x19
[[host_bridge]]
name = "hb"
[[device]]
name = "rp"
type = "root_port"
parent = "hb"
link = "gen4x16"
[[device]]
name = "up"
type = "switch_upstream"
parent = "rp"
link = "gen4x16"
[[device]]
name = "dp0"
type = "switch_downstream"
parent = "up"
[[device]]
name = "dp1"
type = "switch_downstream"
parent = "up"
[[device]]
name = "gpu0"
type = "endpoint"
parent = "dp0"
class = "gpu"
link = "gen4x16"
bars = [{ bar = 0, size = "1G" }]
p2pmem = { bar = 0 }
[[device]]
name = "gpu1"
type = "endpoint"
parent = "dp1"
class = "gpu"
link = "gen4x16"
bars = [{ bar = 0, size = "1G" }]
p2pmem = { bar = 0 }
"#;

fn machine() -> SimMachine {
    let topo =
        Topology::from_raw(parse_description(TWO_GPUS_ONE_SWITCH, "t").unwrap(), "t").unwrap();
    SimMachine::new(
        topo,
        SimConfig {
            iommu: IommuMode::Off,
            ..SimConfig::default()
        },
    )
    .unwrap()
}

/// Gen4 x16 after 128b/130b encoding and TLP overhead.
fn gen4_x16(m: &SimMachine) -> f64 {
    16e9 * 16.0 * 128.0 / 130.0 / 8.0 * m.config().tlp_efficiency
}

#[test]
fn two_flows_sharing_a_gen4_x16_link_each_get_half() {
    let m = machine();
    let buf = m.alloc_host(1 << 30, 0).unwrap();
    let flows: Vec<Flow> = ["gpu0", "gpu1"]
        .iter()
        .map(|g| {
            let hops = m
                .path_hops(
                    m.device(g).unwrap(),
                    DmaAddr::direct(buf.phys().addr()),
                    4096,
                    true,
                )
                .unwrap();
            Flow::new(hops, 8 << 30)
        })
        .collect();
    let s = m.simulate(&flows).unwrap();
    let half = gen4_x16(&m) / 2.0;
    for f in &s.flows {
        assert!(
            (f.mean_rate - half).abs() / half < 1e-6,
            "{} vs {half}",
            f.mean_rate
        );
    }
    let uplink = m.link_above(m.device("up").unwrap()).unwrap();
    assert_eq!(
        s.channel(uplink, Dir::Up).unwrap().bytes,
        16 << 30,
        "both flows crossed the switch uplink"
    );
}

#[test]
fn a_p2p_flow_under_one_switch_does_not_touch_the_root_complex() {
    let m = machine();
    let g0 = m.device("gpu0").unwrap();
    let g1 = m.device("gpu1").unwrap();
    let a = m.provider(g1).unwrap().alloc(64 << 20).unwrap();
    let sgl = m
        .map(g0, &[a.phys()], Direction::FromDevice, BouncePolicy::Forbid)
        .unwrap();
    let hops = m.path_hops(g0, sgl.entries()[0].addr, 4096, true).unwrap();
    let s = m.simulate(&[Flow::new(hops, 8 << 30)]).unwrap();
    let uplink = m.link_above(m.device("up").unwrap()).unwrap();
    let rc = m.root_complex_link(g0).unwrap();
    for l in [uplink, rc] {
        for d in [Dir::Up, Dir::Down] {
            assert_eq!(
                s.channel(l, d).unwrap().bytes,
                0,
                "{}",
                m.network().link(l).unwrap().name
            );
        }
    }
    let rate = s.flows[0].mean_rate;
    assert!(
        (rate - gen4_x16(&m)).abs() / rate < 1e-6,
        "full link rate peer to peer: {rate}"
    );
    // And the data-moving DMA agrees.
    let t = m.dma_write(g0, &sgl, &vec![7u8; 64 << 20]).unwrap();
    assert!(!t.touched_root_complex());
    assert!(t.time.as_secs_f64() > 0.0);
    // Its time alone is the flow model's for its pieces one after another
    // (to the nanosecond each piece is rounded to).
    let model = chained(&m, &t.paths);
    assert!(
        t.time.as_nanos().abs_diff(model.as_nanos()) <= t.paths.len() as u64,
        "{} vs the chain's makespan {}",
        t.time,
        model
    );
}

/// The flow model's makespan for `paths` one after another on an idle
/// machine.
fn chained(m: &SimMachine, paths: &[peerdma_sim::PathBytes]) -> SimTime {
    let chain: Vec<Flow> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| Flow {
            path: p.hops.clone(),
            bytes: p.bytes,
            after: i.checked_sub(1),
            ..Flow::default()
        })
        .collect();
    m.simulate(&chain).unwrap().makespan
}

#[test]
fn a_dma_of_many_pieces_takes_what_its_pieces_take_one_after_another() {
    let m = SimMachine::new(
        Source::Preset("dual-xeon".into()).load().unwrap(),
        SimConfig::default(),
    )
    .unwrap();
    let nic = m.device("nic0").unwrap();
    let host = m.alloc_host(8 << 20, 0).unwrap();
    let cmb = m
        .provider(m.device("nvme1").unwrap())
        .unwrap()
        .alloc(8 << 20)
        .unwrap();
    let mut entries = Vec::new();
    let mut lists = Vec::new();
    for (i, v) in [host.phys(), cmb.phys()].iter().enumerate() {
        let sgl = m
            .map(nic, &[*v], Direction::FromDevice, BouncePolicy::Forbid)
            .unwrap();
        let base = sgl.entries()[0].addr;
        for k in 0..100u64 {
            entries.push((
                base.checked_add(k * 4096 + i as u64).unwrap(),
                1000 + k * 37,
            ));
        }
        lists.push(sgl);
    }
    let total: u64 = entries.iter().map(|e| e.1).sum();
    let t = m
        .dma_to_many(
            nic,
            &entries,
            peerdma_sim::Local::Bytes(&vec![1u8; total as usize]),
        )
        .unwrap();
    assert_eq!(
        t.paths.len(),
        2,
        "host memory and the CMB across the root complex"
    );
    let model = chained(&m, &t.paths);
    let diff = t.time.as_nanos().abs_diff(model.as_nanos());
    assert!(diff <= 2, "{} vs {}", t.time, model);
}
