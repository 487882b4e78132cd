//! A model of a machine's PCI functions, complete enough to reproduce the
//! kernel's peer-to-peer DMA decisions and to show a person the machine.
//!
//! Sources, all producing the same [`Topology`] through one builder:
//! live sysfs and copied trees ([`sysfs::read_root`]), snapshots
//! ([`Source::Snapshot`]), description files ([`desc::parse_description`])
//! built-in presets ([`presets`]) and hwloc XML ([`hwloc::read_hwloc`]).
//!
//! ```
//! use peerdma_pci::{ids::PciIds, render, PortType, Source};
//!
//! // The built-in dual-socket Xeon server (`--live` would read this machine).
//! let t = Source::Preset("dual-xeon".into()).load().unwrap();
//! let gpu = t.function(t.lookup("gpu0").unwrap());
//! assert_eq!(gpu.bdf.to_string(), "0000:1a:00.0");
//! // Up to the root: a switch downstream port, its upstream port, a root port.
//! let ports: Vec<PortType> = t.ancestors(gpu.id).map(|f| t.function(f).port_type).collect();
//! assert_eq!(ports, [PortType::SwitchDownstream, PortType::SwitchUpstream, PortType::RootPort]);
//! // The tree as `peerdma topo` prints it, with names from pci.ids.
//! let text = render::tree(&t, &PciIds::embedded());
//! assert!(text.contains("3D controller: NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]"));
//! ```

mod build;
pub mod cmdline;
pub mod config;
pub mod desc;
mod error;
mod file;
pub mod gen;
pub mod hwloc;
pub mod ids;
mod model;
pub mod raw;
pub mod render;
pub mod sysfs;
mod validate;

pub use error::{Error, Result};
pub use model::*;
pub use peerdma_mem::Bdf;
pub mod presets;
mod source;

pub use source::{
    read_description, read_snapshot, snapshot_json, write_file, write_snapshot, Source,
};

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
