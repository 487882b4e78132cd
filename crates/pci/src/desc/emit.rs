//! The placed tree written out as sysfs would show it: each device's
//! configuration space bytes, attribute files, `resource` lines and
//! `p2pmem/` directory, so that the one builder reads it like a capture.

use super::firmware::{BarAddr, Enumeration};
use super::schema::{acs_bits, size_of, AcsSpec, DescDevice, DescFile, Kind};
use super::tree::Tree;
use super::Ctx;
use crate::config::{self, ConfigBuilder, ConfigSpace};
use crate::error::Result;
use crate::model::{LinkSpeed, LinkState};
use crate::raw::{RawDevice, RawP2pMem};
use std::collections::{BTreeMap, HashMap};

/// Everything firmware decided, per device.
pub(super) struct Layout<'a> {
    pub tree: &'a Tree,
    pub enumeration: &'a Enumeration,
    pub links: &'a [Option<LinkState>],
    pub bars: &'a [Vec<BarAddr>],
}

/// The raw devices, depth first.
pub(super) fn devices(file: &DescFile, l: &Layout, ctx: &Ctx) -> Result<Vec<RawDevice>> {
    let (tree, e) = (l.tree, l.enumeration);
    let nodes = &tree.nodes;
    // Multi-function bit: a slot with more than one (non-virtual) function.
    let mut per_slot: HashMap<(usize, u8, u8), usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.physfn.is_none() {
            let p = e.place[i];
            *per_slot.entry((n.hb, p.bus, p.devfn >> 3)).or_default() += 1;
        }
    }
    let order = tree.dfs_order();
    let mut paths: Vec<String> = vec![String::new(); nodes.len()];
    let mut devices = Vec::with_capacity(nodes.len());
    for &i in &order {
        let n = &nodes[i];
        let d = file.devices[i].get_ref();
        let hb = file.host_bridges[n.hb].get_ref();
        let err = |msg: String| ctx.err(Some(n.line), format!("device '{}': {msg}", d.name));
        let (domain, root_bus) = e.host_bridges[n.hb];
        let bdf = e.bdf(tree, i);
        let base = match n.parent {
            Some(p) => paths[p].clone(),
            None => format!("pci{domain:04x}:{root_bus:02x}"),
        };
        paths[i] = format!("{base}/{bdf}");

        let class = match &d.class {
            None => n.kind.default_class(),
            Some(c) => c.class_code().map_err(err)?,
        };
        let p = e.place[i];
        let multifunction = per_slot
            .get(&(n.hb, p.bus, p.devfn >> 3))
            .copied()
            .unwrap_or(0)
            > 1;
        let down = n.kind.is_downstream_port() && tree.children[i].is_empty();
        let cs = config_space(d, n.kind, class, multifunction, l, i, down).map_err(err)?;
        let bus_offset = hb.bus_offset.unwrap_or(0);
        let mut resource_lines =
            vec!["0x0000000000000000 0x0000000000000000 0x0000000000000000".to_string(); 13];
        for b in &l.bars[i] {
            // resource shows CPU physical addresses: bus - bus_offset.
            let phys = if b.io {
                Some(b.addr)
            } else {
                u64::try_from(i128::from(b.addr) - i128::from(bus_offset)).ok()
            };
            let Some(phys) = phys.filter(|p| p.checked_add(b.size - 1).is_some()) else {
                let shb = &file.host_bridges[n.hb];
                let sign = if bus_offset < 0 { "-" } else { "" };
                return Err(ctx.err(
                    Some(ctx.line(shb.span().start)),
                    format!(
                        "host bridge '{}': bus_offset {sign}{:#x} puts BAR {} of device '{}' (bus address {:#x}, {} bytes) outside the 64-bit physical address space",
                        hb.name,
                        bus_offset.unsigned_abs(),
                        b.bar,
                        d.name,
                        b.addr,
                        b.size
                    ),
                ));
            };
            let flags: u64 = if b.io {
                0x101
            } else {
                0x200 | if b.prefetch { 0x2000 } else { 0 } | if b.is64 { 0x0010_0000 } else { 0 }
            };
            resource_lines[usize::from(b.bar)] =
                format!("0x{phys:016x} 0x{:016x} 0x{flags:016x}", phys + b.size - 1);
        }
        let numa = d.numa_node.or(hb.numa_node);
        let attrs = attributes(&cs, class, numa, n.kind, l.links[i], n.max_link, down);
        let p2pmem = match &d.p2pmem {
            None => None,
            Some(p) => {
                let bar = l.bars[i]
                    .iter()
                    .find(|b| b.bar == p.bar && !b.io)
                    .ok_or_else(|| {
                        err(format!(
                            "p2pmem names BAR {}, which is not a memory BAR of this device",
                            p.bar
                        ))
                    })?;
                let bad =
                    |e: String| ctx.err(Some(n.line), format!("device '{}' p2pmem: {e}", d.name));
                let offset = p
                    .offset
                    .as_ref()
                    .map(size_of)
                    .transpose()
                    .map_err(bad)?
                    .unwrap_or(0);
                let size = match &p.size {
                    Some(s) => size_of(s).map_err(bad)?,
                    None => bar.size.saturating_sub(offset),
                };
                if size == 0 || offset.checked_add(size).is_none_or(|e| e > bar.size) {
                    return Err(bad(format!(
                        "offset {offset} + size {size} does not fit BAR {} ({} bytes)",
                        p.bar, bar.size
                    )));
                }
                let available = p
                    .available
                    .as_ref()
                    .map(size_of)
                    .transpose()
                    .map_err(bad)?
                    .unwrap_or(size);
                Some(RawP2pMem {
                    size,
                    available,
                    published: p.published.unwrap_or(true),
                })
            }
        };
        devices.push(RawDevice {
            path: paths[i].clone(),
            config: cs.bytes().to_vec(),
            attrs,
            resource: Some(resource_lines.join("\n") + "\n"),
            driver: d.driver.clone(),
            iommu_group: d.iommu_group,
            physfn: n.physfn.map(|pf| e.bdf(tree, pf)),
            p2pmem,
            label: Some(d.name.clone()),
            ..Default::default()
        });
    }
    Ok(devices)
}

/// Device `i`'s configuration space: header, BARs, bridge buses, the PCI
/// Express capability with its link, and ACS.
fn config_space(
    d: &DescDevice,
    kind: Kind,
    class: u32,
    multifunction: bool,
    l: &Layout,
    i: usize,
    link_down: bool,
) -> std::result::Result<ConfigSpace, String> {
    let (dv, dd) = kind.default_ids();
    let layout = u8::from(kind.is_bridge());
    let mut cb = ConfigBuilder::new(
        d.vendor.unwrap_or(dv),
        d.device.unwrap_or(dd),
        class,
        d.revision.unwrap_or(0),
        layout,
        kind.is_pcie(),
    )
    .multifunction(multifunction)
    .subsystem(
        d.subsystem_vendor.unwrap_or(0),
        d.subsystem_device.unwrap_or(0),
    );
    if layout == 1 {
        let p = l.enumeration.place[i];
        cb = cb.bridge_buses(p.bus, p.secondary, p.subordinate);
    }
    for b in &l.bars[i] {
        if b.io {
            cb = cb.io_bar(usize::from(b.bar), b.addr as u32);
        } else {
            cb = cb.memory_bar(usize::from(b.bar), b.addr, b.is64, b.prefetch);
        }
    }
    if kind.is_pcie() {
        let link = if kind.has_link() {
            let cur = l.links[i];
            let max = l.tree.nodes[i].max_link.or(cur);
            // A downstream port with nothing plugged in has its link down.
            match (cur, max) {
                (Some(c), Some(m)) => Some((
                    if link_down { 0 } else { c.speed.code() },
                    if link_down { 0 } else { c.width },
                    m.speed.code(),
                    m.width,
                )),
                _ => None,
            }
        } else {
            None
        };
        cb = cb.pcie(kind.port_type().pcie_code().unwrap_or(0), link);
    }
    let acs = match &d.acs {
        None => kind.is_downstream_port().then_some(0u16),
        Some(AcsSpec::Flag(false)) => None,
        Some(AcsSpec::Flag(true)) => Some(0),
        Some(AcsSpec::Bits(b)) => Some(acs_bits(b)?),
    };
    if let Some(ctrl) = acs {
        if !kind.is_pcie() {
            return Err(format!(
                "a {} has no extended config space for ACS",
                kind.name()
            ));
        }
        let cap = match &d.acs_cap {
            Some(b) => acs_bits(b)?,
            None => {
                config::ACS_SV
                    | config::ACS_TB
                    | config::ACS_RR
                    | config::ACS_CR
                    | config::ACS_UF
                    | ctrl
            }
        };
        cb = cb.acs(cap, ctrl);
    }
    Ok(cb.build())
}

/// The single-value attribute files sysfs would show.
fn attributes(
    cs: &ConfigSpace,
    class: u32,
    numa: Option<u32>,
    kind: Kind,
    link: Option<LinkState>,
    max_link: Option<LinkState>,
    link_down: bool,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        attrs.insert(k.to_string(), v);
    };
    set("vendor", format!("0x{:04x}", cs.vendor().unwrap_or(0)));
    set("device", format!("0x{:04x}", cs.device().unwrap_or(0)));
    set("class", format!("0x{class:06x}"));
    set("revision", format!("0x{:02x}", cs.revision().unwrap_or(0)));
    set(
        "numa_node",
        numa.map(|x| x.to_string()).unwrap_or_else(|| "-1".into()),
    );
    if kind.is_pcie() && !kind.has_link() {
        // sysfs shows the link attributes of every PCIe function; an
        // integrated endpoint has no link registers to report.
        for (k, v) in [
            ("current_link_speed", "Unknown"),
            ("current_link_width", "0"),
            ("max_link_speed", "Unknown"),
            ("max_link_width", "0"),
        ] {
            set(k, v.into());
        }
    }
    if let (true, Some(c)) = (kind.has_link(), link) {
        let m = max_link.unwrap_or(c);
        if link_down {
            set("current_link_speed", "Unknown".into());
            set("current_link_width", "0".into());
        } else {
            set(
                "current_link_speed",
                format!("{} GT/s PCIe", fmt_gts(c.speed)),
            );
            set("current_link_width", c.width.to_string());
        }
        set("max_link_speed", format!("{} GT/s PCIe", fmt_gts(m.speed)));
        set("max_link_width", m.width.to_string());
    }
    attrs
}

fn fmt_gts(s: LinkSpeed) -> String {
    let v = s.gts();
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}
