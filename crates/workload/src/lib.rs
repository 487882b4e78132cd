//! Workloads on the simulated machine: a TOML file of jobs ([`format`](mod@format)),
//! the runner that moves and checks their bytes and times them together
//! ([`run`]), the report for people and tools ([`report`]) and as a
//! picture ([`svg`]), and the built-in demo ([`demo`]).
//!
//! ```
//! use peerdma_workload::{format, run::RunOptions, run_workload};
//!
//! let w = format::parse(
//!     "[[job]]\nname = \"load\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"8M\"\n",
//!     "example.toml",
//!     std::path::Path::new("."),
//! )?;
//! let topo = peerdma_pci::Source::Preset("dual-xeon".into()).load()?;
//! let (report, _) = run_workload(&w, topo, RunOptions::default())?;
//! assert!(report.ok());
//! assert_eq!(report.jobs[0].legs[0].path, "bus_addr");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod demo;
pub mod devmem_table;
pub mod format;
pub mod report;
pub mod run;
pub mod svg;

use format::{Capacities, Workload, WorkloadError};
use peerdma_pci::Topology;
use run::{Report, RunError, RunOptions, Runner};

/// Why a workload could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Resolve `w` against `topo` and run it; the report, and the topology
/// the machine was built from (for names in the text report). For a
/// workload of one machine.
pub fn run_workload(
    w: &Workload,
    topo: Topology,
    opts: RunOptions,
) -> Result<(Report, std::sync::Arc<Topology>), Error> {
    let iommu = opts.iommu;
    let (r, topos) = run_machines(w, vec![(topo, iommu)], opts)?;
    Ok((r, topos[0].clone()))
}

/// Resolve `w` against its machines (one topology and IOMMU per machine
/// the workload names, in its order) and run it; the report and each
/// machine's topology.
pub fn run_machines(
    w: &Workload,
    machines: Vec<(Topology, format::IommuSetting)>,
    opts: RunOptions,
) -> Result<(Report, Vec<std::sync::Arc<Topology>>), Error> {
    let named: Vec<(String, Topology, format::IommuSetting)> = w
        .machines
        .iter()
        .zip(machines)
        .map(|(spec, (t, i))| (spec.name.clone(), t, i))
        .collect();
    let mut runner = Runner::with_machines(named, None, opts)?;
    let topos: Vec<std::sync::Arc<Topology>> = runner
        .machines()
        .iter()
        .map(|m| m.sim().topology().clone())
        .collect();
    let media = runner.media_size();
    let caps_fns: Vec<_> = topos
        .iter()
        .map(|t| {
            let t = t.clone();
            move |f| peerdma_consumers::devmem::capacity(&t, f)
        })
        .collect();
    let caps: Vec<Capacities<'_>> = topos
        .iter()
        .zip(&caps_fns)
        .map(|(t, f)| Capacities {
            topo: t,
            media_size: media,
            device_memory: f,
        })
        .collect();
    let wire = w.resolve_wire(&caps)?;
    runner.set_wire(wire);
    let jobs = w.resolve(&caps)?;
    let report = runner.run(&jobs)?;
    Ok((report, topos))
}

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
