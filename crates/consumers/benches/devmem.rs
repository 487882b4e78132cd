//! devmem TCP receive against memcpy, side by side in one run:
//!
//! * `devmem_8GiB/devmem TCP receive`: 8 GiB over a 100 Gb/s wire at MTU
//!   1500 from gpu1's memory on one simulated dual-xeon (a dataset sent as
//!   it lies, devmem TX) into gpu0's memory on another, through nic0 of
//!   each: the sending NIC reads each burst out of GPU memory by DMA
//!   (TSO), real frames with real headers cross the wire, the receiving
//!   NIC splits headers into host memory and payloads into 4 KiB
//!   `net_iov`s of a 16 MiB dma-buf (a ring reused as tokens come back),
//!   the driver and the socket hand out frags, every byte is checked where
//!   it landed, tokens go back 1024 at a time, and the binding is freed at
//!   the end;
//! * `devmem_8GiB/memcpy`: plain memcpy of the same 8 GiB on this machine.
//!
//! Both are reported in bytes per second; after the group, a line gives
//! the simulated packets per wall-clock second and the ratio to memcpy.
//! Targets: at least 25% of memcpy's bytes per second, at least 2 million
//! simulated packets per second.
//!
//! `cargo bench -p peerdma-consumers --bench devmem`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use peerdma_consumers::devmem::DeviceMemory;
use peerdma_consumers::net::flow::{run_transfer, Host, SendFrom, TransferSpec};
use peerdma_consumers::net::{Port, Wire};
use peerdma_pci::Source;
use peerdma_sim::{SimConfig, SimMachine};
use std::time::{Duration, Instant};

const BIG: u64 = 8 << 30;

fn machine() -> SimMachine {
    SimMachine::new(
        Source::Preset("dual-xeon".into()).load().expect("preset"),
        SimConfig::default(),
    )
    .expect("machine")
}

fn devmem_8gib(c: &mut Criterion) {
    let mut g = c.benchmark_group("devmem_8GiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(BIG));
    let mut devmem_times: Vec<Duration> = Vec::new();
    let mut packets = 0u64;
    {
        let (m0, m1) = (machine(), machine());
        let (d0, d1) = (DeviceMemory::new(), DeviceMemory::new());
        let wire = Wire {
            a: Port {
                machine: 0,
                nic: m0.device("nic0").expect("nic0"),
            },
            b: Port {
                machine: 1,
                nic: m1.device("nic0").expect("nic0"),
            },
            bytes_per_sec: 12.5e9,
            mtu: 1500,
            latency_ns: 1000,
        };
        let mut spec = TransferSpec::new(BIG, m1.device("gpu0").expect("gpu0"));
        spec.from = SendFrom::DeviceDataset {
            dev: m0.device("gpu1").expect("gpu1"),
        };
        spec.dmabuf_len = 16 << 20;
        let run = |spec: &TransferSpec| {
            let r = run_transfer(
                Host {
                    sim: &m0,
                    mem: &d0,
                    id: 0,
                },
                Host {
                    sim: &m1,
                    mem: &d1,
                    id: 1,
                },
                &wire,
                wire.a,
                spec,
            )
            .expect("transfer");
            assert!(
                r.complete && r.verified_bytes == spec.bytes,
                "{:?}",
                r.stalled
            );
            assert!(r.binding_freed);
            r
        };
        // A first, short run makes the memories resident.
        let mut warm = spec.clone();
        warm.bytes = 64 << 20;
        run(&warm);
        g.bench_function(
            "devmem TCP receive, MTU 1500, 4 KiB net_iovs, every byte checked",
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let t = Instant::now();
                        let r = run(&spec);
                        let e = t.elapsed();
                        packets = r.packets;
                        devmem_times.push(e);
                        total += e;
                    }
                    total
                })
            },
        );
    }
    let mut memcpy_times: Vec<Duration> = Vec::new();
    {
        let mut src = vec![0u8; BIG as usize];
        peerdma_sim::pattern::fill(1, 0, &mut src);
        let mut dst = vec![1u8; BIG as usize];
        g.bench_function("memcpy", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    dst.copy_from_slice(black_box(&src));
                    black_box(&dst);
                    let e = t.elapsed();
                    memcpy_times.push(e);
                    total += e;
                }
                total
            })
        });
    }
    g.finish();
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or(Duration::MAX)
    };
    let (d, m) = (median(&mut devmem_times), median(&mut memcpy_times));
    let gbs = |t: Duration| BIG as f64 / t.as_secs_f64() / 1e9;
    println!(
        "devmem TCP: {packets} simulated packets in {:.2} s (median): {:.2} million packets/s, {:.2} GB/s; memcpy {:.2} GB/s; devmem at {:.0}% of memcpy",
        d.as_secs_f64(),
        packets as f64 / d.as_secs_f64() / 1e6,
        gbs(d),
        gbs(m),
        100.0 * gbs(d) / gbs(m)
    );
}

criterion_group!(benches, devmem_8gib);
criterion_main!(benches);
