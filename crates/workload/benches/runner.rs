//! The workload runner, each beside its reference in one run:
//!
//! * `read_8GiB`: an 8 GiB O_DIRECT read() from an NVMe drive into GPU
//!   memory on the simulated machine — block layer, NVMe commands, PRP
//!   lists, DMA through the fabric, and the check of every byte — against
//!   plain memcpy of the same 8 GiB on this machine (target: at least half
//!   of memcpy's bytes per second). Both write memory that is already
//!   resident: the simulated GPU's memory was touched by a first run, the
//!   memcpy destination by a first fill, so neither pays page faults (in a
//!   VM, first-touch faults cost more than the copy itself);
//! * `workload_100_jobs`: the wall time to simulate 100 jobs (reads,
//!   writes, copies, with `after` chains and sharing) on the 16-device
//!   preset, bytes moved and checked and the whole run timed (target:
//!   under a second).
//!
//! `cargo bench -p peerdma-workload --bench runner`

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use peerdma_pci::Source;
use peerdma_workload::format;
use peerdma_workload::format::Capacities;
use peerdma_workload::run::{RunOptions, Runner};
use peerdma_workload::run_workload;
use std::path::Path;
use std::time::Duration;

const BIG: u64 = 8 << 30;

fn read_8gib(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_8GiB");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(30));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Bytes(BIG));
    let text = format!(
        "[[job]]\nname = \"load\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = {BIG}\n"
    );
    let w = format::parse(&text, "bench", Path::new(".")).expect("workload");
    let topo = Source::Preset("dual-xeon".into()).load().expect("preset");
    {
        let mut runner = Runner::new(topo, RunOptions::default()).expect("machine");
        let t = runner.machine().topology().clone();
        let cap = |f| peerdma_consumers::devmem::capacity(&t, f);
        let jobs = w
            .resolve(&[Capacities {
                topo: &t,
                media_size: runner.media_size(),
                device_memory: &cap,
            }])
            .expect("jobs");
        // A first run makes the GPU's memory resident.
        let r = runner.run(&jobs).expect("run");
        assert!(r.ok() && r.jobs[0].verified, "{:?}", r.jobs[0].error);
        g.bench_function("runner: read() into GPU memory, every byte checked", |b| {
            b.iter(|| {
                let r = runner.run(&jobs).expect("run");
                assert!(r.ok() && r.jobs[0].verified, "{:?}", r.jobs[0].error);
                r
            })
        });
    }
    {
        let mut src = vec![0u8; BIG as usize];
        peerdma_sim::pattern::fill(1, 0, &mut src);
        let mut dst = vec![1u8; BIG as usize];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&dst);
            })
        });
    }
    g.finish();
}

/// 100 jobs on gpu-storage-16: each of the 8 drives feeds the GPUs in a
/// chain of reads, checkpoints go back, and drives copy to drives.
fn hundred_jobs_text() -> String {
    let mut s = String::new();
    for i in 0..100 {
        let d = i % 8;
        let g = (i * 3) % 8;
        let after = if i >= 8 {
            format!("after = \"j{}\"\n", i - 8)
        } else {
            String::new()
        };
        let body = match i % 4 {
            0 | 1 => format!(
                "kind = \"read\"\ndrive = \"nvme{d}\"\ninto = \"gpu{g}\"\noffset = \"{}M\"\n",
                (i / 8) * 16
            ),
            2 => format!(
                "kind = \"write\"\nfrom = \"gpu{g}\"\ndrive = \"nvme{d}\"\noffset = \"{}G\"\n",
                1 + i / 8
            ),
            _ => format!(
                "kind = \"copy\"\nfrom = \"nvme{d}\"\nto = \"nvme{}\"\noffset = \"{}M\"\nto_offset = \"{}G\"\n",
                (d + 4) % 8,
                (i / 8) * 16,
                20 + i / 8
            ),
        };
        s.push_str(&format!(
            "[[job]]\nname = \"j{i}\"\nsize = \"8M\"\n{body}{after}\n"
        ));
    }
    s
}

fn hundred_jobs(c: &mut Criterion) {
    let w = format::parse(&hundred_jobs_text(), "bench", Path::new(".")).expect("workload");
    let topo = Source::Preset("gpu-storage-16".into())
        .load()
        .expect("preset");
    let mut g = c.benchmark_group("workload_100_jobs");
    g.sample_size(10);
    g.bench_function("gpu-storage-16, 800 MiB moved and checked", |b| {
        b.iter(|| {
            let (r, _) = run_workload(&w, topo.clone(), RunOptions::default()).expect("run");
            assert!(r.ok(), "{:?}", r.jobs.iter().find(|j| !j.ok));
            r
        })
    });
    g.finish();
}

criterion_group!(benches, read_8gib, hundred_jobs);
criterion_main!(benches);
