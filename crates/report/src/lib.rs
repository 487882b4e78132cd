//! peerdma's pictures and its report: the machine drawn by Graphviz
//! ([`graphviz`], over the DOT text of [`peerdma_p2p::dot`]) and one
//! self-contained HTML page for a support ticket ([`html`]).

pub mod graphviz;
pub mod html;
pub mod probe;

use peerdma_p2p::dot::{machine_dot, DotOptions};
use peerdma_pci::ids::PciIds;
use peerdma_pci::Topology;

/// The machine drawn as SVG: [`machine_dot`] laid out by Graphviz.
pub fn machine_svg(
    topo: &Topology,
    ids: &PciIds,
    opts: &DotOptions,
) -> Result<String, graphviz::GraphvizError> {
    graphviz::svg(&machine_dot(topo, ids, opts))
}

/// Who made a report and when: `peerdma 0.1.0, 2025-01-31T12:00:00Z`.
pub fn generated_by() -> String {
    format!(
        "peerdma {}, {}",
        env!("CARGO_PKG_VERSION"),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    )
}

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
