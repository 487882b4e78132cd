//! Workloads on the simulated machine: a TOML file of jobs ([`format`]),
//! the runner that moves and checks their bytes and times them together
//! ([`run`]), the report for people and tools ([`report`]), and the
//! built-in demo ([`demo`]).
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
pub mod format;
pub mod report;
pub mod run;

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
/// the machine was built from (for names in the text report).
pub fn run_workload(
    w: &Workload,
    topo: Topology,
    opts: RunOptions,
) -> Result<(Report, std::sync::Arc<Topology>), Error> {
    let mut runner = Runner::new(topo, opts)?;
    let t = runner.machine().topology().clone();
    let cap = |f| peerdma_consumers::devmem::capacity(&t, f);
    let jobs = w.resolve(&Capacities {
        topo: &t,
        media_size: runner.media_size(),
        device_memory: &cap,
    })?;
    let report = runner.run(&jobs)?;
    Ok((report, t))
}
