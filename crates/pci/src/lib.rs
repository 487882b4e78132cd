//! A model of a machine's PCI functions, complete enough to reproduce the
//! kernel's peer-to-peer DMA decisions and to show a person the machine.
//!
//! Sources, all producing the same [`Topology`] through one builder:
//! live sysfs and copied trees ([`sysfs::read_root`]), snapshots
//! ([`Source::Snapshot`]), description files ([`desc::parse_description`])
//! and built-in presets ([`presets`]).

mod build;
pub mod config;
pub mod desc;
mod error;
mod file;
pub mod gen;
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
