//! Prometheus metrics in the text exposition format (version 0.0.4), for
//! node_exporter's textfile collector: a `*.prom` file in its
//! `--collector.textfile.directory`, replaced by a rename.
//!
//! Every metric is a gauge of the machine's state as captured; names
//! follow Prometheus' conventions (a `peerdma_` prefix, base units in the
//! name: `_bytes`, `_transfers_per_second`; 0/1 for yes and no). Series:
//!
//! | metric | labels | value |
//! | --- | --- | --- |
//! | `peerdma_p2p_pair_supported` | `provider`, `provider_name`, `client`, `client_name`, `map_type`, `link_class` | 1 when the client's DMA reaches the provider's memory (the kernel's verdict), else 0 |
//! | `peerdma_p2p_pair_distance` | `provider`, `client` | the kernel's distance, for pairs that can do P2P |
//! | `peerdma_acs_redirect` | `device`, `name`, `port_type` | 1 when the function's ACS redirects peer requests upstream (RR, CR or EC), 0 when it has ACS and does not |
//! | `peerdma_acs_redirecting_functions` | | how many functions redirect |
//! | `peerdma_acs_unknown_functions` | | functions whose ACS the capture could not read (not root) |
//! | `peerdma_pcie_link_degraded` | `device`, `name` | 1 when the link trained below its speed or width, else 0 |
//! | `peerdma_pcie_link_current_speed_transfers_per_second`, `..._max_...` | `device`, `name` | the link's speed now and at most |
//! | `peerdma_pcie_link_current_width_lanes`, `..._max_...` | `device`, `name` | the link's width now and at most |
//! | `peerdma_p2pmem_size_bytes`, `peerdma_p2pmem_available_bytes` | `device`, `name` | the `p2pmem/` pool |
//! | `peerdma_p2pmem_published` | `device`, `name` | 1 when published for other drivers |
//! | `peerdma_cpu_p2p_through_root_complex` | | 1 when the CPU is an AMD Zen (the kernel's rule) |
//! | `peerdma_pci_functions` | | PCI functions in the capture |
//!
//! Pairs are the ordered pairs of the devices P2P is for
//! ([`crate::kinds::p2p_devices`]: GPUs, accelerators, NICs, NVMe drives and
//! functions with P2P memory), `provider` being the one whose memory is
//! accessed.

use crate::kinds::p2p_devices;
use peerdma_p2p::{link_class, MapType, P2pIndex};
use peerdma_pci::render::short_name;
use peerdma_pci::{Acs, Function, Topology};
use std::fmt::Write;

/// One metric family: its samples share name, help and type.
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, u64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }
    fn add(&mut self, labels: Vec<(&'static str, String)>, value: u64) {
        self.samples.push((labels, value));
    }
}

fn device_labels(f: &Function) -> Vec<(&'static str, String)> {
    vec![("device", f.bdf.to_string()), ("name", short_name(f))]
}

/// The metrics of a machine, as a textfile collector file.
pub fn metrics(topo: &Topology) -> String {
    let idx = P2pIndex::new(topo);
    let peers = p2p_devices(topo);

    let mut supported = Family::new(
        "peerdma_p2p_pair_supported",
        "Whether the client's DMA can reach the provider's memory peer to peer (the Linux kernel's P2PDMA verdict): 1 yes (map_type bus_addr or thru_host_bridge), 0 no (not_supported).",
    );
    let mut distance = Family::new(
        "peerdma_p2p_pair_distance",
        "The Linux kernel's P2PDMA distance between provider and client, for pairs that can do P2P.",
    );
    for &p in &peers {
        for &c in &peers {
            if p == c {
                continue;
            }
            let (map, dist) = idx.map_type_and_dist(p, c);
            let (pf, cf) = (topo.function(p), topo.function(c));
            supported.add(
                vec![
                    ("provider", pf.bdf.to_string()),
                    ("provider_name", short_name(pf)),
                    ("client", cf.bdf.to_string()),
                    ("client_name", short_name(cf)),
                    ("map_type", map.as_str().to_string()),
                    ("link_class", link_class(topo, p, c).to_string()),
                ],
                u64::from(map.is_p2p()),
            );
            if map != MapType::NotSupported {
                distance.add(
                    vec![
                        ("provider", pf.bdf.to_string()),
                        ("client", cf.bdf.to_string()),
                    ],
                    u64::from(dist),
                );
            }
        }
    }

    let mut acs = Family::new(
        "peerdma_acs_redirect",
        "Whether the function's ACS control redirects peer requests upstream (P2P Request or Completion Redirect, or Egress Control): 1 yes, 0 no; functions with an ACS capability.",
    );
    let mut acs_count = Family::new(
        "peerdma_acs_redirecting_functions",
        "How many PCI functions have ACS redirect set.",
    );
    let mut acs_unknown = Family::new(
        "peerdma_acs_unknown_functions",
        "How many PCI functions' ACS state the capture could not read (config space beyond 64 bytes needs root).",
    );
    let (mut redirecting, mut unknown) = (0u64, 0u64);
    for f in topo.functions() {
        match f.acs {
            Acs::Present { .. } => {
                let r = f.acs.redirects() == Some(true);
                redirecting += u64::from(r);
                let mut l = device_labels(f);
                l.push(("port_type", port_type_label(f)));
                acs.add(l, u64::from(r));
            }
            // An assumption (--assume-acs) is not a reading.
            Acs::Unknown | Acs::Assumed { .. } => unknown += 1,
            Acs::Absent => {}
        }
    }
    acs_count.add(Vec::new(), redirecting);
    acs_unknown.add(Vec::new(), unknown);

    let mut degraded = Family::new(
        "peerdma_pcie_link_degraded",
        "Whether the PCIe link trained below the speed or width it is capable of: 1 yes, 0 no.",
    );
    let mut cur_speed = Family::new(
        "peerdma_pcie_link_current_speed_transfers_per_second",
        "The PCIe link's current speed per lane.",
    );
    let mut max_speed = Family::new(
        "peerdma_pcie_link_max_speed_transfers_per_second",
        "The PCIe link's maximum speed per lane.",
    );
    let mut cur_width = Family::new(
        "peerdma_pcie_link_current_width_lanes",
        "The PCIe link's current width.",
    );
    let mut max_width = Family::new(
        "peerdma_pcie_link_max_width_lanes",
        "The PCIe link's maximum width.",
    );
    for f in topo.functions() {
        let Some(link) = f.link else { continue };
        if let Some(c) = link.current {
            cur_speed.add(device_labels(f), transfers_per_second(c.speed));
            cur_width.add(device_labels(f), u64::from(c.width));
        }
        if let Some(m) = link.max {
            max_speed.add(device_labels(f), transfers_per_second(m.speed));
            max_width.add(device_labels(f), u64::from(m.width));
        }
        if link.current.is_some() && link.max.is_some() {
            degraded.add(device_labels(f), u64::from(link.degraded()));
        }
    }

    let mut p2p_size = Family::new(
        "peerdma_p2pmem_size_bytes",
        "Size of the function's P2P memory pool (p2pmem/size).",
    );
    let mut p2p_avail = Family::new(
        "peerdma_p2pmem_available_bytes",
        "P2P memory not yet allocated (p2pmem/available).",
    );
    let mut p2p_pub = Family::new(
        "peerdma_p2pmem_published",
        "Whether the function's P2P memory is published for other drivers to allocate (p2pmem/published): 1 yes, 0 no.",
    );
    for f in topo.functions() {
        if let Some(p) = f.p2pmem {
            p2p_size.add(device_labels(f), p.size);
            p2p_avail.add(device_labels(f), p.available);
            p2p_pub.add(device_labels(f), u64::from(p.published));
        }
    }

    let mut cpu = Family::new(
        "peerdma_cpu_p2p_through_root_complex",
        "Whether the CPU's root complexes forward peer traffic by the kernel's AMD Zen rule: 1 yes, 0 no (then only whitelisted host bridges do).",
    );
    cpu.add(Vec::new(), u64::from(topo.cpu().supports_p2pdma()));
    let mut count = Family::new("peerdma_pci_functions", "PCI functions in the capture.");
    count.add(Vec::new(), topo.len() as u64);

    render(&[
        supported,
        distance,
        acs,
        acs_count,
        acs_unknown,
        degraded,
        cur_speed,
        max_speed,
        cur_width,
        max_width,
        p2p_size,
        p2p_avail,
        p2p_pub,
        cpu,
        count,
    ])
}

fn port_type_label(f: &Function) -> String {
    use peerdma_pci::PortType::*;
    // The names JSON uses.
    match f.port_type {
        Endpoint => "endpoint",
        LegacyEndpoint => "legacy_endpoint",
        RootPort => "root_port",
        SwitchUpstream => "switch_upstream",
        SwitchDownstream => "switch_downstream",
        PcieToPciBridge => "pcie_to_pci_bridge",
        PciToPcieBridge => "pci_to_pcie_bridge",
        RcEndpoint => "rc_endpoint",
        RcEventCollector => "rc_event_collector",
        Conventional => "conventional",
        ConventionalBridge => "conventional_bridge",
        Unknown => "unknown",
    }
    .to_string()
}

/// Transfers per second per lane (2.5 GT/s is 2,500,000,000).
fn transfers_per_second(s: peerdma_pci::LinkSpeed) -> u64 {
    (s.gts() * 10.0).round() as u64 * 100_000_000
}

/// A label value as the format quotes it: backslash, double quote and line
/// feed escaped.
fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Families with no samples are left out (a HELP and TYPE without samples
/// is allowed, but says nothing).
fn render(families: &[Family]) -> String {
    let mut s = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(s, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(s, "# TYPE {} gauge", f.name);
        for (labels, value) in &f.samples {
            s.push_str(f.name);
            if !labels.is_empty() {
                s.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    let _ = write!(s, "{k}=\"{}\"", escape_label_value(v));
                }
                s.push('}');
            }
            let _ = writeln!(s, " {value}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn speeds_in_transfers_per_second() {
        use peerdma_pci::LinkSpeed::*;
        assert_eq!(transfers_per_second(Gen1), 2_500_000_000);
        assert_eq!(transfers_per_second(Gen5), 32_000_000_000);
    }

    #[test]
    fn port_types_in_snake_case() {
        let t = peerdma_pci::Source::Preset("dual-xeon".into())
            .load()
            .unwrap();
        let rp = t
            .functions()
            .iter()
            .find(|f| f.port_type == peerdma_pci::PortType::SwitchDownstream)
            .unwrap();
        assert_eq!(port_type_label(rp), "switch_downstream");
    }
}
