//! `peerdma fleet` on 10,000 snapshots of gpu-storage-16 (the target: a
//! summary in under 10 s on a 2-core machine). The snapshots (~390 KB
//! each, ~3.9 GB) are written to a temporary directory once and removed
//! at the end; PEERDMA_FLEET_BENCH_N changes how many.
//!
//! cargo bench -p peerdma-fleet --bench fleet

use criterion::{criterion_group, criterion_main, Criterion};
use peerdma_fleet::fleet::{summarise, FleetOptions};
use peerdma_pci::ids::PciIds;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

fn fleet(c: &mut Criterion) {
    let n: usize = std::env::var("PEERDMA_FLEET_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::Builder::new()
        .prefix("peerdma-fleet-bench")
        .tempdir()
        .expect("a temporary directory");
    let t = Instant::now();
    let counts = common::write_fleet(dir.path(), n);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!(
        "wrote {n} snapshots ({:.2} GB) in {:.1} s: {counts:?}",
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );
    let ids = PciIds::embedded();
    let opts = FleetOptions::default();
    // Once, to check what is measured is a full summary.
    let f = summarise(dir.path(), &ids, &opts).unwrap();
    assert_eq!(f.machines.len(), n);
    assert!(f.unreadable.is_empty());
    eprintln!(
        "{} groups: {:?}",
        f.groups.len(),
        f.groups
            .iter()
            .map(|g| g.machines.len())
            .collect::<Vec<_>>()
    );
    let mut g = c.benchmark_group("fleet");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(60));
    g.bench_function(format!("summarise {n} snapshots of gpu-storage-16"), |b| {
        b.iter(|| summarise(dir.path(), &ids, &opts).unwrap())
    });
    g.finish();
}

criterion_group!(benches, fleet);
criterion_main!(benches);
