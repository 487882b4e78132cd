//! Benchmarks of the flow-level timing model (`peerdma_sim::timing`).
//!
//! The machine: 16 NVMe-like devices on Gen4 x4 links, four per switch, four
//! switches with Gen4 x16 uplinks, two switches per root complex, and one
//! host-memory channel shared by everything.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use peerdma_sim::timing::{Flow, Hop, LinkId, Network, SimTime};

/// PCIe Gen4 per-lane bandwidth in bytes/s (16 GT/s, 128b/130b).
const GEN4_LANE: f64 = 16e9 * 128.0 / 130.0 / 8.0;
const DEVICES: usize = 16;
const GIB: u64 = 1 << 30;

struct Machine {
    net: Network,
    dev: Vec<LinkId>,
    switch: Vec<LinkId>,
    root: Vec<LinkId>,
    dram: LinkId,
    /// Media rate of each device (bytes/s); varied so devices are not all alike.
    media: Vec<f64>,
}

#[derive(Clone, Copy)]
enum End {
    Host,
    Dev(usize),
}

impl Machine {
    fn new() -> Machine {
        let mut net = Network::new();
        let dram = net
            .add_link("dram", 100e9, SimTime::from_nanos(80))
            .unwrap();
        let root = (0..2)
            .map(|r| {
                net.add_link(format!("rc{r}"), 64e9, SimTime::from_nanos(100))
                    .unwrap()
            })
            .collect();
        let switch = (0..4)
            .map(|s| {
                net.add_link(format!("sw{s}"), 16.0 * GEN4_LANE, SimTime::from_nanos(150))
                    .unwrap()
            })
            .collect();
        let dev = (0..DEVICES)
            .map(|d| {
                net.add_link(
                    format!("nvme{d}"),
                    4.0 * GEN4_LANE,
                    SimTime::from_nanos(500),
                )
                .unwrap()
            })
            .collect();
        let media = (0..DEVICES).map(|d| 5.0e9 + 0.2e9 * d as f64).collect();
        Machine {
            net,
            dev,
            switch,
            root,
            dram,
            media,
        }
    }

    /// The hops from `from` to `to`: up from a device towards the host
    /// bridge and down again, turning at the lowest common switch or root
    /// complex for peer-to-peer; host memory is the `dram` link (`Down` =
    /// into memory).
    fn route(&self, from: End, to: End) -> Vec<Hop> {
        let up = |d: usize| {
            [
                Hop::up(self.dev[d]),
                Hop::up(self.switch[d / 4]),
                Hop::up(self.root[d / 8]),
            ]
        };
        let down = |d: usize| {
            [
                Hop::down(self.root[d / 8]),
                Hop::down(self.switch[d / 4]),
                Hop::down(self.dev[d]),
            ]
        };
        match (from, to) {
            (End::Dev(s), End::Host) => {
                let mut p = up(s).to_vec();
                p.push(Hop::down(self.dram));
                p
            }
            (End::Host, End::Dev(d)) => {
                let mut p = vec![Hop::up(self.dram)];
                p.extend(down(d));
                p
            }
            (End::Dev(s), End::Dev(d)) => {
                // Peer to peer: turn around at the lowest common point.
                let shared = if s / 4 == d / 4 {
                    1
                } else if s / 8 == d / 8 {
                    2
                } else {
                    3
                };
                let mut p = up(s)[..shared].to_vec();
                p.extend_from_slice(&down(d)[3 - shared..]);
                p
            }
            (End::Host, End::Host) => vec![Hop::up(self.dram), Hop::down(self.dram)],
        }
    }
}

/// 16 devices each read 64 GiB into host memory as 1 GiB requests at queue
/// depth 4: four `after` chains of 16 requests per device (1 TiB, 1024 flows).
fn tb_load(m: &Machine) -> Vec<Flow> {
    let mut flows = Vec::new();
    for d in 0..DEVICES {
        for q in 0..4u64 {
            let mut prev = None;
            for _ in 0..16 {
                flows.push(Flow {
                    path: m.route(End::Dev(d), End::Host),
                    bytes: GIB,
                    start: SimTime::from_micros(q),
                    after: prev,
                    also_after: Vec::new(),
                    rate_cap: Some(m.media[d]),
                });
                prev = Some(flows.len() - 1);
            }
        }
    }
    flows
}

/// 100 000 requests of 4 KiB..1 MiB in 256 queues (16 per device, so at
/// most 256 in flight): reads to host, writes from host, and peer copies.
fn flows_100k(m: &Machine) -> Vec<Flow> {
    const QUEUES: usize = 256;
    const TOTAL: usize = 100_000;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut last: Vec<Option<usize>> = vec![None; QUEUES];
    let mut flows = Vec::with_capacity(TOTAL);
    for i in 0..TOTAL {
        let q = i % QUEUES;
        let d = q % DEVICES;
        let (from, to) = match (q / DEVICES) % 4 {
            0 | 1 => (End::Dev(d), End::Host),
            2 => (End::Host, End::Dev(d)),
            _ => (End::Dev(d), End::Dev((d + 5) % DEVICES)),
        };
        let bytes = 4096 * (1 + next() % 256);
        flows.push(Flow {
            path: m.route(from, to),
            bytes,
            start: SimTime::ZERO,
            after: last[q],
            also_after: Vec::new(),
            rate_cap: Some(m.media[d]),
        });
        last[q] = Some(i);
    }
    flows
}

fn bench(c: &mut Criterion) {
    let m = Machine::new();
    let mut g = c.benchmark_group("timing");
    g.sample_size(10);
    let tb = tb_load(&m);
    g.bench_function("tb_load_16_devices", |b| {
        b.iter(|| m.net.simulate(black_box(&tb)).unwrap())
    });
    let many = flows_100k(&m);
    g.bench_function("flows_100k", |b| {
        b.iter(|| m.net.simulate(black_box(&many)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
