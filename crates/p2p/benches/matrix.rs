//! The all-pairs matrix of a generated 2,000-function machine: peerdma's
//! index against a straight per-pair port of the kernel's walk, in one run.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use peerdma_p2p::{calc_map_type_and_dist, matrix};
use peerdma_pci::{gen, Topology};

fn all_pairs(c: &mut Criterion) {
    let topo = Topology::from_raw(gen::generate(2024, 2000).expect("generate"), "generated")
        .expect("build");
    let n = topo.len();
    let mut g = c.benchmark_group(format!("all_pairs_{n}_functions"));
    g.sample_size(10);
    g.bench_function("peerdma_index", |b| {
        b.iter(|| black_box(matrix(black_box(&topo))))
    });
    g.bench_function("kernel_walk_per_pair", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(n * (n - 1));
            for a in topo.ids() {
                for c in topo.ids() {
                    if a != c {
                        let v = calc_map_type_and_dist(&topo, a, c);
                        out.push((v.map_type, v.distance));
                    }
                }
            }
            black_box(out)
        })
    });
    g.finish();
}

criterion_group!(benches, all_pairs);
criterion_main!(benches);
