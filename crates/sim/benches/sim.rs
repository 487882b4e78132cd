//! The simulated machine at work, each beside its reference in one run:
//! moving bytes through the simulated fabric against plain memcpy, and the
//! flow-level timing of a 1 TB load spread over the 16-device preset.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use peerdma_dma::BouncePolicy;
use peerdma_mem::{Direction, DmaAddr};
use peerdma_pci::Source;
use peerdma_sim::timing::Flow;
use peerdma_sim::{SimConfig, SimMachine};

const LEN: usize = 256 << 20;

fn data_movement(c: &mut Criterion) {
    let m = SimMachine::new(
        Source::Preset("gpu-storage-16".into())
            .load()
            .expect("preset"),
        SimConfig::default(),
    )
    .expect("machine");
    let nvme = m.device("nvme1").expect("nvme1");
    let gpu = m.device("gpu0").expect("gpu0");
    let pattern: Vec<u8> = (0..LEN).map(|i| (i * 7 + (i >> 20)) as u8).collect();
    m.media_write(nvme, 0, &pattern).expect("media");
    m.media_write(gpu, 0, &pattern).expect("media");
    let host = m.alloc_host(LEN as u64, 0).expect("host memory");
    let to_host = m
        .map(
            nvme,
            &[host.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .expect("map");
    let cmb = m
        .provider(m.device("nvme0").expect("nvme0"))
        .expect("p2pmem")
        .alloc(LEN as u64)
        .expect("alloc");
    let to_peer = m
        .map(
            gpu,
            &[cmb.phys()],
            Direction::FromDevice,
            BouncePolicy::Forbid,
        )
        .expect("map");
    // Touch every destination once so all variants copy into resident memory.
    m.media_to_memory(nvme, 0, &to_host).expect("warm");
    m.media_to_memory(gpu, 0, &to_peer).expect("warm");
    let src = pattern.clone();
    let mut dst = vec![1u8; LEN];

    let mut g = c.benchmark_group("move_256MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.bench_function("sim_drive_to_host_memory", |b| {
        b.iter(|| black_box(m.media_to_memory(nvme, 0, &to_host).expect("dma")))
    });
    g.bench_function("sim_gpu_to_peer_cmb_p2p", |b| {
        b.iter(|| black_box(m.media_to_memory(gpu, 0, &to_peer).expect("dma")))
    });
    g.finish();
}

fn tb_load(c: &mut Criterion) {
    let m = SimMachine::new(
        Source::Preset("gpu-storage-16".into())
            .load()
            .expect("preset"),
        SimConfig::default(),
    )
    .expect("machine");
    let devices: Vec<_> = m
        .topology()
        .functions()
        .iter()
        .filter(|f| f.is_dma_endpoint() && (f.class >> 8 == 0x0108 || f.class >> 8 == 0x0302))
        .map(|f| (f.bdf, f.numa_node.unwrap_or(0)))
        .collect();
    assert_eq!(devices.len(), 16);
    // Each device writes 64 GiB into host memory of its own node as
    // 1 GiB requests, four in flight: 1 TiB in 1024 flows.
    let bufs: Vec<_> = (0..2)
        .map(|n| m.alloc_host(1 << 20, n).expect("host"))
        .collect();
    let mut flows = Vec::new();
    for (dev, node) in &devices {
        let hops = m
            .path_hops(
                *dev,
                DmaAddr::direct(bufs[*node as usize].phys().addr()),
                4096,
                true,
            )
            .expect("route");
        let first = flows.len();
        for r in 0..64usize {
            flows.push(Flow {
                path: hops.clone(),
                bytes: 1 << 30,
                after: (r >= 4).then(|| first + r - 4),
                ..Flow::default()
            });
        }
    }
    let s = m.simulate(&flows).expect("simulate");
    eprintln!(
        "tb load: {} flows, {} TiB, simulated makespan {:.2} s, {:.1} GB/s aggregate",
        flows.len(),
        flows.iter().map(|f| f.bytes).sum::<u64>() >> 40,
        s.makespan.as_secs_f64(),
        (1u64 << 40) as f64 / s.makespan.as_secs_f64() / 1e9
    );
    let mut g = c.benchmark_group("flow_timing");
    g.sample_size(10);
    g.bench_function("tb_load_16_device_preset", |b| {
        b.iter(|| black_box(m.simulate(black_box(&flows)).expect("simulate")))
    });
    g.finish();
}

criterion_group!(benches, data_movement, tb_load);
criterion_main!(benches);
