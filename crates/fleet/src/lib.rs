//! peerdma for fleets of machines, through the tools that already run
//! them:
//!
//! - [`labels`]: Kubernetes node-feature-discovery labels (a `features.d`
//!   file), so a scheduler places jobs where a GPU and a drive can do P2P;
//! - [`metrics`]: Prometheus metrics for node_exporter's textfile
//!   collector (verdict per pair, ACS, degraded links, P2P memory);
//! - [`diff`]: what differs between two captures, and why each pair whose
//!   verdict changed did;
//! - [`fleet`]: many snapshots summarised: machines grouped by identical
//!   P2P matrix, the odd ones out and what makes them differ, fixes that
//!   apply across the fleet.
//!
//! All of them read a [`peerdma_pci::Topology`] from any source and decide
//! with [`peerdma_p2p`]'s kernel rules; the `peerdma` command prints them.
//!
//! ```
//! use peerdma_pci::{ids::PciIds, Source};
//!
//! let a = Source::Preset("gpu-storage-16".into()).load().unwrap();
//! // Labels for node-feature-discovery:
//! let labels = peerdma_fleet::labels::labels(&a, peerdma_fleet::labels::DEFAULT_PREFIX).unwrap();
//! assert!(labels.iter().any(|l| l.name.ends_with("/peerdma-gpu-nvme") && l.value == "bus_addr"));
//! // Prometheus metrics:
//! let text = peerdma_fleet::metrics::metrics(&a);
//! assert!(text.contains("# TYPE peerdma_p2p_pair_supported gauge"));
//! // A machine compared with itself:
//! let d = peerdma_fleet::diff::diff(&a, &a, &PciIds::builtin());
//! assert!(d.is_empty());
//! ```

pub mod diff;
mod error;
pub mod fleet;
pub mod kinds;
pub mod labels;
pub mod metrics;

pub use error::Error;

/// The version of the JSON that `peerdma labels`, `metrics`, `diff` and
/// `fleet` print with `--json` (its `schema` field).
pub const JSON_SCHEMA: u32 = 1;

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
