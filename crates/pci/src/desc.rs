//! Description files: topologies written by hand (TOML), for machines that
//! exist only on paper, and the built-in presets.
//!
//! ```toml
//! version = 1
//! name = "two GPUs and an NVMe drive under one switch"
//!
//! [cpu]
//! vendor = "intel"          # or "amd", or a /proc/cpuinfo vendor_id
//! family = 6
//! model_name = "Intel Xeon Gold 6248"
//!
//! [[host_bridge]]
//! name = "hb0"              # sysfs calls it pci0000:00
//! numa_node = 0
//!
//! [[device]]
//! name = "rp0"
//! type = "root_port"
//! parent = "hb0"
//! vendor = 0x8086
//! device = 0x2030
//! acs = ["sv", "rr", "cr", "uf"]   # ACS control bits set; false: no ACS capability
//!
//! [[device]]
//! name = "sw0-up"
//! type = "switch_upstream"
//! parent = "rp0"
//!
//! [[device]]
//! name = "nvme0"
//! type = "endpoint"
//! parent = "sw0-dp0"
//! class = "nvme"
//! bars = [{ bar = 0, size = "16K", bits = 64 }, { bar = 2, size = "256M" }]
//! p2pmem = { bar = 2 }      # publish BAR 2 as P2P memory
//! link = "gen4x4"
//! ```
//!
//! Bus numbers, device numbers, BAR addresses and the configuration space
//! bytes are generated, as firmware and hardware would have them; the result
//! goes through the same builder as a real machine's capture.

use crate::config::{self, ConfigBuilder};
use crate::error::{Error, Result};
use crate::model::{LinkSpeed, LinkState, PortType};
use crate::raw::{Origin, RawCpu, RawDevice, RawMachine, RawP2pMem};
use peerdma_mem::{parse_size, Bdf};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescFile {
    version: Option<u32>,
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    cmdline: Option<String>,
    default_link: Option<String>,
    cpu: DescCpu,
    #[serde(rename = "host_bridge", default)]
    host_bridges: Vec<toml::Spanned<DescHostBridge>>,
    #[serde(rename = "device", default)]
    devices: Vec<toml::Spanned<DescDevice>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescCpu {
    vendor: String,
    family: u32,
    #[serde(default)]
    model: u32,
    model_name: Option<String>,
    processors: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescHostBridge {
    name: String,
    domain: Option<u32>,
    bus: Option<u8>,
    numa_node: Option<u32>,
    /// bus address - CPU physical address of BARs below this bridge.
    bus_offset: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumOrName {
    Num(u32),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeSpec {
    Num(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AcsSpec {
    Flag(bool),
    Bits(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescBar {
    bar: u8,
    size: SizeSpec,
    bits: Option<u8>,
    prefetch: Option<bool>,
    #[serde(default)]
    io: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescP2p {
    bar: u8,
    size: Option<SizeSpec>,
    offset: Option<SizeSpec>,
    available: Option<SizeSpec>,
    published: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescDevice {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    parent: Option<String>,
    physfn: Option<String>,
    slot: Option<u8>,
    function: Option<u8>,
    vendor: Option<u16>,
    device: Option<u16>,
    subsystem_vendor: Option<u16>,
    subsystem_device: Option<u16>,
    class: Option<NumOrName>,
    revision: Option<u8>,
    acs: Option<AcsSpec>,
    acs_cap: Option<Vec<String>>,
    #[serde(default)]
    bars: Vec<DescBar>,
    link: Option<String>,
    max_link: Option<String>,
    numa_node: Option<u32>,
    iommu_group: Option<u32>,
    driver: Option<String>,
    p2pmem: Option<DescP2p>,
}

/// Class codes by name.
const CLASS_NAMES: &[(&str, u32)] = &[
    ("nvme", 0x010802),
    ("sata", 0x010601),
    ("raid", 0x010400),
    ("ethernet", 0x020000),
    ("infiniband", 0x020700),
    ("network", 0x028000),
    ("vga", 0x030000),
    ("3d", 0x030200),
    ("gpu", 0x030200),
    ("display", 0x038000),
    ("audio", 0x040300),
    ("host_bridge", 0x060000),
    ("isa_bridge", 0x060100),
    ("pci_bridge", 0x060400),
    ("system", 0x088000),
    ("iommu", 0x080600),
    ("usb", 0x0c0330),
    ("smbus", 0x0c0500),
    ("accelerator", 0x120000),
    ("fpga", 0x120000),
    ("coprocessor", 0x0b4000),
    ("unclassified", 0xff0000),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    RootPort,
    SwitchUpstream,
    SwitchDownstream,
    Endpoint,
    LegacyEndpoint,
    RcEndpoint,
    Host,
    PcieToPciBridge,
    PciBridge,
    PciDevice,
}

const KIND_NAMES: &[(&str, Kind)] = &[
    ("root_port", Kind::RootPort),
    ("switch_upstream", Kind::SwitchUpstream),
    ("switch_downstream", Kind::SwitchDownstream),
    ("endpoint", Kind::Endpoint),
    ("legacy_endpoint", Kind::LegacyEndpoint),
    ("rc_endpoint", Kind::RcEndpoint),
    ("host", Kind::Host),
    ("pcie_to_pci_bridge", Kind::PcieToPciBridge),
    ("pci_bridge", Kind::PciBridge),
    ("pci_device", Kind::PciDevice),
];

impl Kind {
    fn port_type(self) -> PortType {
        match self {
            Kind::RootPort => PortType::RootPort,
            Kind::SwitchUpstream => PortType::SwitchUpstream,
            Kind::SwitchDownstream => PortType::SwitchDownstream,
            Kind::Endpoint => PortType::Endpoint,
            Kind::LegacyEndpoint => PortType::LegacyEndpoint,
            Kind::RcEndpoint => PortType::RcEndpoint,
            Kind::Host | Kind::PciDevice => PortType::Conventional,
            Kind::PcieToPciBridge => PortType::PcieToPciBridge,
            Kind::PciBridge => PortType::ConventionalBridge,
        }
    }
    fn is_bridge(self) -> bool {
        self.port_type().is_bridge()
    }
    fn is_pcie(self) -> bool {
        !matches!(self, Kind::Host | Kind::PciDevice | Kind::PciBridge)
    }
    fn has_link(self) -> bool {
        self.is_pcie() && self != Kind::RcEndpoint
    }
    fn name(self) -> &'static str {
        KIND_NAMES
            .iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }
    /// Which parents this kind may sit below (None = a host bridge).
    fn allowed_parents(self) -> &'static [Option<Kind>] {
        match self {
            Kind::RootPort | Kind::RcEndpoint | Kind::Host => &[None],
            Kind::SwitchUpstream
            | Kind::Endpoint
            | Kind::LegacyEndpoint
            | Kind::PcieToPciBridge => &[Some(Kind::RootPort), Some(Kind::SwitchDownstream)],
            Kind::SwitchDownstream => &[Some(Kind::SwitchUpstream)],
            Kind::PciBridge | Kind::PciDevice => {
                &[None, Some(Kind::PciBridge), Some(Kind::PcieToPciBridge)]
            }
        }
    }
    fn default_class(self) -> u32 {
        match self {
            Kind::Host => 0x060000,
            k if k.is_bridge() => 0x060400,
            _ => 0xff0000,
        }
    }
    fn default_ids(self) -> (u16, u16) {
        match self {
            // QEMU's generic ports, so a description without IDs still reads
            // as something real.
            Kind::RootPort => (0x1b36, 0x000c),
            Kind::SwitchUpstream => (0x104c, 0x8232),
            Kind::SwitchDownstream => (0x104c, 0x8233),
            Kind::Host => (0x8086, 0x29c0),
            Kind::PcieToPciBridge | Kind::PciBridge => (0x1b36, 0x000e),
            _ => (0x1b36, 0x0010),
        }
    }
}

fn parse_link_spec(s: &str) -> Option<LinkState> {
    // gen4x16, Gen4 x16, 16GT/s x16, x8 gen3
    let t = s.trim().to_ascii_lowercase().replace(' ', "");
    let xi = t.rfind('x')?;
    let (a, b) = t.split_at(xi);
    let width: u8 = b[1..].parse().ok()?;
    let speed = if a.is_empty() {
        return None;
    } else {
        LinkSpeed::parse(a)?
    };
    if !matches!(width, 1 | 2 | 4 | 8 | 12 | 16 | 32) {
        return None;
    }
    Some(LinkState { speed, width })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// Line numbers for byte offsets, without rescanning the text each time.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Lines {
        Lines(
            text.bytes()
                .enumerate()
                .filter(|&(_, b)| b == b'\n')
                .map(|(i, _)| i)
                .collect(),
        )
    }
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|&nl| nl < offset) + 1
    }
}

fn size_of(spec: &SizeSpec) -> std::result::Result<u64, String> {
    match spec {
        SizeSpec::Num(n) => Ok(*n),
        SizeSpec::Text(t) => parse_size(t).map_err(|e| e.to_string()),
    }
}

fn acs_bits(names: &[String]) -> std::result::Result<u16, String> {
    let mut bits = 0;
    for n in names {
        let lower = n.to_ascii_lowercase();
        match config::ACS_BIT_NAMES
            .iter()
            .find(|(_, name)| *name == lower)
        {
            Some((b, _)) => bits |= b,
            None => {
                return Err(format!(
                    "unknown ACS bit '{n}' (known: sv, tb, rr, cr, uf, ec, dt)"
                ))
            }
        }
    }
    Ok(bits)
}

/// A device being laid out.
struct Node {
    idx: usize,
    line: usize,
    kind: Kind,
    parent: Option<usize>, // device index, None = host bridge
    hb: usize,
    bus: u8,
    devfn: u8,
    secondary: u8,
    subordinate: u8,
    link: Option<LinkState>,
    max_link: Option<LinkState>,
    bar_addrs: Vec<(u8, u64, u64, bool, bool, bool)>, // (index, bus addr, size, is64, prefetch, io)
}

/// Read a description (TOML text). `origin` names it in errors.
pub fn parse_description(text: &str, origin: &str) -> Result<RawMachine> {
    let file: DescFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        Error::parse(origin, line, e.message().trim().replace('\n', " "))
    })?;
    build(text, origin, file, "description")
}

/// A built-in preset's description text is parsed like a file.
pub(crate) fn parse_preset(text: &str, name: &str) -> Result<RawMachine> {
    let origin = format!("preset '{name}'");
    let file: DescFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        Error::parse(&origin, line, e.message().trim().replace('\n', " "))
    })?;
    let mut raw = build(text, &origin, file, "preset")?;
    raw.origin.detail = name.to_string();
    Ok(raw)
}

fn build(text: &str, origin: &str, file: DescFile, kind: &str) -> Result<RawMachine> {
    let err = |line: Option<usize>, msg: String| Error::parse(origin, line, msg);
    let lines = Lines::new(text);
    let line_of = |_: &str, offset: usize| lines.line(offset);
    if let Some(v) = file.version {
        if v != 1 {
            return Err(err(
                None,
                format!("version {v} is not understood (this peerdma reads version 1)"),
            ));
        }
    }
    if file.host_bridges.is_empty() {
        return Err(err(
            None,
            "no [[host_bridge]]: a machine needs at least one root bus".into(),
        ));
    }
    let cpu = {
        let c = &file.cpu;
        let vendor_id = match c.vendor.to_ascii_lowercase().as_str() {
            "intel" | "genuineintel" => "GenuineIntel".to_string(),
            "amd" | "authenticamd" => "AuthenticAMD".to_string(),
            "hygon" | "hygongenuine" => "HygonGenuine".to_string(),
            _ => c.vendor.clone(),
        };
        RawCpu {
            vendor_id,
            family: c.family,
            model: c.model,
            model_name: c.model_name.clone().unwrap_or_default(),
            processors: c.processors.unwrap_or(2),
        }
    };
    let default_link = match &file.default_link {
        Some(s) => Some(parse_link_spec(s).ok_or_else(|| {
            err(
                None,
                format!("default_link '{s}' is not a link like gen4x16"),
            )
        })?),
        None => None,
    }
    .unwrap_or(LinkState {
        speed: LinkSpeed::Gen4,
        width: 16,
    });

    // Names: host bridges and devices share one namespace.
    let mut names: HashMap<&str, (bool, usize, usize)> = HashMap::new(); // name -> (is_hb, index, line)
    for (i, hb) in file.host_bridges.iter().enumerate() {
        let line = line_of(text, hb.span().start);
        if let Some((_, _, l)) = names.insert(&hb.get_ref().name, (true, i, line)) {
            return Err(err(
                Some(line),
                format!("name '{}' is already used on line {l}", hb.get_ref().name),
            ));
        }
    }
    for (i, d) in file.devices.iter().enumerate() {
        let line = line_of(text, d.span().start);
        if let Some((_, _, l)) = names.insert(&d.get_ref().name, (false, i, line)) {
            return Err(err(
                Some(line),
                format!("name '{}' is already used on line {l}", d.get_ref().name),
            ));
        }
    }

    let mut nodes: Vec<Node> = Vec::with_capacity(file.devices.len());
    for (i, sd) in file.devices.iter().enumerate() {
        let d = sd.get_ref();
        let line = line_of(text, sd.span().start);
        let kind = KIND_NAMES
            .iter()
            .find(|(n, _)| *n == d.kind)
            .map(|(_, k)| *k)
            .ok_or_else(|| {
                err(
                    Some(line),
                    format!(
                        "device '{}': unknown type '{}' (known: {})",
                        d.name,
                        d.kind,
                        KIND_NAMES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
        let parent_name = match (&d.parent, &d.physfn) {
            (Some(p), _) => p.clone(),
            (None, Some(pf)) => {
                let pfd = names
                    .get(pf.as_str())
                    .filter(|(is_hb, _, _)| !is_hb)
                    .ok_or_else(|| {
                        err(
                            Some(line),
                            format!("device '{}': physfn '{pf}' is not a device", d.name),
                        )
                    })?;
                match &file.devices[pfd.1].get_ref().parent {
                    Some(p) => p.clone(),
                    None => {
                        return Err(err(
                            Some(line),
                            format!("device '{}': physfn '{pf}' has no parent", d.name),
                        ))
                    }
                }
            }
            (None, None) => {
                return Err(err(
                    Some(line),
                    format!("device '{}' has no parent", d.name),
                ))
            }
        };
        let parent = match names.get(parent_name.as_str()) {
            Some((true, hb, _)) => (None, *hb),
            Some((false, p, _)) => (Some(*p), usize::MAX),
            None => {
                return Err(err(
                    Some(line),
                    format!(
                        "device '{}' names parent '{parent_name}', which is not defined (a dangling port)",
                        d.name
                    ),
                ))
            }
        };
        let link = match &d.link {
            Some(s) => Some(parse_link_spec(s).ok_or_else(|| {
                err(
                    Some(line),
                    format!("device '{}': link '{s}' is not a link like gen4x16", d.name),
                )
            })?),
            None => None,
        };
        let max_link = match &d.max_link {
            Some(s) => Some(parse_link_spec(s).ok_or_else(|| {
                err(
                    Some(line),
                    format!(
                        "device '{}': max_link '{s}' is not a link like gen4x16",
                        d.name
                    ),
                )
            })?),
            None => None,
        };
        nodes.push(Node {
            idx: i,
            line,
            kind,
            parent: parent.0,
            hb: parent.1,
            bus: 0,
            devfn: 0,
            secondary: 0,
            subordinate: 0,
            link,
            max_link,
            bar_addrs: Vec::new(),
        });
    }

    // Cycles, then parent kinds.
    for n in &nodes {
        let mut seen = vec![n.idx];
        let mut cur = n.parent;
        while let Some(p) = cur {
            if seen.contains(&p) {
                let pos = seen.iter().position(|&s| s == p).unwrap_or(0);
                let mut cyc: Vec<&str> = seen[pos..]
                    .iter()
                    .map(|&s| file.devices[s].get_ref().name.as_str())
                    .collect();
                cyc.push(&file.devices[p].get_ref().name);
                return Err(err(
                    Some(nodes[p].line),
                    format!(
                        "devices form a cycle through their parents: {}",
                        cyc.join(" -> ")
                    ),
                ));
            }
            seen.push(p);
            cur = nodes[p].parent;
        }
    }
    for n in &nodes {
        let d = file.devices[n.idx].get_ref();
        let pk = n.parent.map(|p| nodes[p].kind);
        if !n.kind.allowed_parents().contains(&pk) {
            let pdesc = match pk {
                None => "a host bridge".to_string(),
                Some(k) => format!("a {}", k.name()),
            };
            let want: Vec<String> = n
                .kind
                .allowed_parents()
                .iter()
                .map(|k| {
                    k.map(|k| k.name().to_string())
                        .unwrap_or_else(|| "a host bridge".into())
                })
                .collect();
            let hint = if n.kind == Kind::Endpoint && pk.is_none() {
                " (a device directly on a root bus is an rc_endpoint)"
            } else {
                ""
            };
            return Err(err(
                Some(n.line),
                format!(
                    "device '{}' ({}) cannot sit below {pdesc} '{}'; it needs {}{hint}",
                    d.name,
                    n.kind.name(),
                    d.parent.as_deref().unwrap_or("?"),
                    want.join(" or ")
                ),
            ));
        }
        if let Some(pf) = &d.physfn {
            let pfi = names.get(pf.as_str()).map(|x| x.1).unwrap_or(usize::MAX);
            if pfi == n.idx || !matches!(nodes[pfi].kind, Kind::Endpoint | Kind::RcEndpoint) {
                return Err(err(
                    Some(n.line),
                    format!(
                        "device '{}': physfn '{pf}' must be another endpoint",
                        d.name
                    ),
                ));
            }
            if nodes[pfi].parent != n.parent || (n.parent.is_none() && nodes[pfi].hb != n.hb) {
                return Err(err(
                    Some(n.line),
                    format!(
                        "device '{}': a virtual function sits beside its physfn '{pf}'",
                        d.name
                    ),
                ));
            }
        }
    }
    // Host bridge of every device.
    for i in 0..nodes.len() {
        let mut cur = i;
        while let Some(p) = nodes[cur].parent {
            cur = p;
        }
        nodes[i].hb = nodes[cur].hb;
    }

    // Children lists in declaration order.
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut roots: Vec<Vec<usize>> = vec![Vec::new(); file.host_bridges.len()];
    for n in &nodes {
        match n.parent {
            Some(p) => children[p].push(n.idx),
            None => roots[n.hb].push(n.idx),
        }
    }

    // Bus numbers depth-first, device/function numbers per bus.
    let mut used_buses: HashMap<u32, HashSet<u8>> = HashMap::new();
    let mut next_bus: HashMap<u32, u16> = HashMap::new();
    let mut hb_info: Vec<(u32, u8)> = Vec::new();
    for (h, shb) in file.host_bridges.iter().enumerate() {
        let hb = shb.get_ref();
        let line = line_of(text, shb.span().start);
        let domain = hb.domain.unwrap_or(0);
        let nb = next_bus.entry(domain).or_insert(0);
        let bus = match hb.bus {
            Some(b) => b,
            None => u8::try_from(*nb).map_err(|_| {
                err(
                    Some(line),
                    format!(
                        "host bridge '{}': no bus numbers left in domain {domain:04x}",
                        hb.name
                    ),
                )
            })?,
        };
        if !used_buses.entry(domain).or_default().insert(bus) {
            return Err(err(
                Some(line),
                format!(
                    "host bridge '{}': bus {bus:02x} of domain {domain:04x} is already in use",
                    hb.name
                ),
            ));
        }
        hb_info.push((domain, bus));
        let mut cur = u16::from(bus);
        assign_bus(
            &mut nodes,
            &children,
            &roots[h],
            bus,
            &mut cur,
            &file,
            text,
            origin,
            domain,
            &mut used_buses,
        )?;
        let nb = next_bus.entry(domain).or_insert(0);
        *nb = (*nb).max(cur + 1);
    }

    // BDF uniqueness is guaranteed by slot assignment; check explicit clashes.
    let mut seen: HashMap<Bdf, usize> = HashMap::new();
    for n in &nodes {
        let bdf = Bdf::from_devfn(hb_info[n.hb].0, n.bus, n.devfn);
        if let Some(o) = seen.insert(bdf, n.idx) {
            return Err(err(
                Some(n.line),
                format!(
                    "devices '{}' and '{}' are both at {bdf}",
                    file.devices[o].get_ref().name,
                    file.devices[n.idx].get_ref().name
                ),
            ));
        }
    }

    // Links: the port above copies its child's link and vice versa.
    for i in 0..nodes.len() {
        if !nodes[i].kind.has_link() {
            continue;
        }
        if nodes[i].link.is_none() {
            let from_parent = nodes[i]
                .parent
                .filter(|&p| matches!(nodes[p].kind, Kind::RootPort | Kind::SwitchDownstream))
                .and_then(|p| nodes[p].link);
            nodes[i].link = Some(from_parent.unwrap_or(default_link));
        }
    }
    for i in 0..nodes.len() {
        if matches!(nodes[i].kind, Kind::RootPort | Kind::SwitchDownstream) {
            if let Some(&c) = children[i]
                .iter()
                .find(|&&c| file.devices[c].get_ref().physfn.is_none())
            {
                if file.devices[i].get_ref().link.is_none() {
                    nodes[i].link = nodes[c].link;
                }
            }
        }
    }

    // BARs: 64-bit from a window per host bridge, 32-bit and I/O below 4G.
    let mut next32: u64 = 0x8000_0000;
    let mut next_io: u64 = 0x1000;
    let mut next64: Vec<u64> = (0..file.host_bridges.len())
        .map(|h| (h as u64 + 1) << 42)
        .collect();
    let order = dfs_order(&roots, &children);
    for &i in &order {
        let d = file.devices[i].get_ref();
        let line = nodes[i].line;
        let max_bars = if nodes[i].kind.is_bridge() { 2 } else { 6 };
        let mut taken = [false; 6];
        for b in &d.bars {
            let size = size_of(&b.size).map_err(|e| {
                err(
                    Some(line),
                    format!("device '{}' BAR {}: {e}", d.name, b.bar),
                )
            })?;
            let bits = b.bits.unwrap_or(if b.io { 32 } else { 64 });
            let is64 = match bits {
                32 => false,
                64 if !b.io => true,
                _ => {
                    return Err(err(
                        Some(line),
                        format!(
                            "device '{}' BAR {}: bits must be 32 or 64 (I/O BARs are 32)",
                            d.name, b.bar
                        ),
                    ))
                }
            };
            let slots = if is64 { 2 } else { 1 };
            let bi = usize::from(b.bar);
            if bi + slots > max_bars {
                return Err(err(
                    Some(line),
                    format!(
                        "device '{}' BAR {}: a {} has BARs 0-{} (a 64-bit BAR takes two)",
                        d.name,
                        b.bar,
                        nodes[i].kind.name(),
                        max_bars - 1
                    ),
                ));
            }
            if taken[bi] || (is64 && taken[bi + 1]) {
                return Err(err(
                    Some(line),
                    format!(
                        "device '{}' BAR {} overlaps another BAR's registers",
                        d.name, b.bar
                    ),
                ));
            }
            taken[bi] = true;
            if is64 {
                taken[bi + 1] = true;
            }
            let min = if b.io { 4 } else { 16 };
            if !size.is_power_of_two() || size < min {
                return Err(err(Some(line), format!("device '{}' BAR {}: size {size} is not a power of two of at least {min} bytes", d.name, b.bar)));
            }
            let cursor = if b.io {
                &mut next_io
            } else if is64 {
                &mut next64[nodes[i].hb]
            } else {
                &mut next32
            };
            let addr = cursor.div_ceil(size) * size;
            let limit = if b.io {
                0x1_0000
            } else if is64 {
                u64::MAX
            } else {
                0xfec0_0000
            };
            if addr.checked_add(size).is_none_or(|e| e > limit) {
                return Err(err(
                    Some(line),
                    format!(
                        "device '{}' BAR {}: no room left in the {} address space",
                        d.name,
                        b.bar,
                        if b.io {
                            "I/O"
                        } else if is64 {
                            "64-bit"
                        } else {
                            "32-bit"
                        }
                    ),
                ));
            }
            *cursor = addr + size;
            let prefetch = b.prefetch.unwrap_or(is64);
            nodes[i]
                .bar_addrs
                .push((b.bar, addr, size, is64, prefetch, b.io));
        }
    }

    // Multi-function bit: a slot with more than one (non-virtual) function.
    let mut per_slot: HashMap<(usize, u8, u8), usize> = HashMap::new();
    for n in &nodes {
        if file.devices[n.idx].get_ref().physfn.is_none() {
            *per_slot.entry((n.hb, n.bus, n.devfn >> 3)).or_default() += 1;
        }
    }

    // Paths and the raw devices.
    let mut paths: Vec<String> = vec![String::new(); nodes.len()];
    for &i in &order {
        let (domain, root_bus) = hb_info[nodes[i].hb];
        let bdf = Bdf::from_devfn(domain, nodes[i].bus, nodes[i].devfn);
        let base = match (nodes[i].parent, &file.devices[i].get_ref().physfn) {
            (Some(p), _) => paths[p].clone(),
            (None, _) => format!("pci{domain:04x}:{root_bus:02x}"),
        };
        paths[i] = format!("{base}/{bdf}");
    }
    let mut devices = Vec::with_capacity(nodes.len());
    for &i in &order {
        let n = &nodes[i];
        let d = file.devices[i].get_ref();
        let hb = file.host_bridges[n.hb].get_ref();
        let line = n.line;
        let (domain, _) = hb_info[n.hb];
        let bdf = Bdf::from_devfn(domain, n.bus, n.devfn);
        let (dv, dd) = n.kind.default_ids();
        let class = match &d.class {
            None => n.kind.default_class(),
            Some(NumOrName::Num(c)) if *c <= 0xff_ffff => *c,
            Some(NumOrName::Num(c)) => return Err(err(Some(line), format!("device '{}': class {c:#x} is wider than 24 bits", d.name))),
            Some(NumOrName::Name(s)) => CLASS_NAMES
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(s))
                .map(|(_, c)| *c)
                .ok_or_else(|| {
                    err(
                        Some(line),
                        format!(
                            "device '{}': unknown class '{s}' (known: {}; or give a number like 0x010802)",
                            d.name,
                            CLASS_NAMES.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
                        ),
                    )
                })?,
        };
        let layout = u8::from(n.kind.is_bridge());
        let mf = per_slot
            .get(&(n.hb, n.bus, n.devfn >> 3))
            .copied()
            .unwrap_or(0)
            > 1;
        let mut cb = ConfigBuilder::new(
            d.vendor.unwrap_or(dv),
            d.device.unwrap_or(dd),
            class,
            d.revision.unwrap_or(0),
            layout,
            n.kind.is_pcie(),
        )
        .multifunction(mf)
        .subsystem(
            d.subsystem_vendor.unwrap_or(0),
            d.subsystem_device.unwrap_or(0),
        );
        if layout == 1 {
            cb = cb.bridge_buses(n.bus, n.secondary, n.subordinate);
        }
        let bus_offset = hb.bus_offset.unwrap_or(0);
        let mut resource_lines =
            vec!["0x0000000000000000 0x0000000000000000 0x0000000000000000".to_string(); 13];
        for &(bar, addr, size, is64, prefetch, io) in &n.bar_addrs {
            if io {
                cb = cb.io_bar(usize::from(bar), addr as u32);
            } else {
                cb = cb.memory_bar(usize::from(bar), addr, is64, prefetch);
            }
            let phys = if io {
                addr
            } else {
                (i128::from(addr) - i128::from(bus_offset)) as u64
            };
            let flags: u64 = if io {
                0x101
            } else {
                0x200 | if prefetch { 0x2000 } else { 0 } | if is64 { 0x0010_0000 } else { 0 }
            };
            resource_lines[usize::from(bar)] =
                format!("0x{phys:016x} 0x{:016x} 0x{flags:016x}", phys + size - 1);
        }
        if n.kind.is_pcie() {
            let link = if n.kind.has_link() {
                let cur = n.link;
                let max = n.max_link.or(cur);
                // A downstream port with nothing plugged in has its link down.
                let down = matches!(n.kind, Kind::RootPort | Kind::SwitchDownstream)
                    && children[i].is_empty();
                match (cur, max) {
                    (Some(c), Some(m)) => Some((
                        if down { 0 } else { c.speed.code() },
                        if down { 0 } else { c.width },
                        m.speed.code(),
                        m.width,
                    )),
                    _ => None,
                }
            } else {
                None
            };
            cb = cb.pcie(n.kind.port_type().pcie_code().unwrap_or(0), link);
        }
        let default_acs = matches!(n.kind, Kind::RootPort | Kind::SwitchDownstream);
        let acs = match &d.acs {
            None => default_acs.then_some(0u16),
            Some(AcsSpec::Flag(false)) => None,
            Some(AcsSpec::Flag(true)) => Some(0),
            Some(AcsSpec::Bits(b)) => Some(
                acs_bits(b).map_err(|e| err(Some(line), format!("device '{}': {e}", d.name)))?,
            ),
        };
        if let Some(ctrl) = acs {
            if !n.kind.is_pcie() {
                return Err(err(
                    Some(line),
                    format!(
                        "device '{}': a {} has no extended config space for ACS",
                        d.name,
                        n.kind.name()
                    ),
                ));
            }
            let cap = match &d.acs_cap {
                Some(b) => {
                    acs_bits(b).map_err(|e| err(Some(line), format!("device '{}': {e}", d.name)))?
                }
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
        let cs = cb.build();
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "vendor".into(),
            format!("0x{:04x}", cs.vendor().unwrap_or(0)),
        );
        attrs.insert(
            "device".into(),
            format!("0x{:04x}", cs.device().unwrap_or(0)),
        );
        attrs.insert("class".into(), format!("0x{class:06x}"));
        attrs.insert(
            "revision".into(),
            format!("0x{:02x}", cs.revision().unwrap_or(0)),
        );
        let numa = d.numa_node.or(hb.numa_node);
        attrs.insert(
            "numa_node".into(),
            numa.map(|x| x.to_string()).unwrap_or_else(|| "-1".into()),
        );
        if n.kind.is_pcie() && !n.kind.has_link() {
            // sysfs shows the link attributes of every PCIe function; an
            // integrated endpoint has no link registers to report.
            for (k, v) in [
                ("current_link_speed", "Unknown"),
                ("current_link_width", "0"),
                ("max_link_speed", "Unknown"),
                ("max_link_width", "0"),
            ] {
                attrs.insert(k.into(), v.into());
            }
        }
        if n.kind.has_link() {
            let down =
                matches!(n.kind, Kind::RootPort | Kind::SwitchDownstream) && children[i].is_empty();
            if let Some(c) = n.link {
                let m = n.max_link.unwrap_or(c);
                attrs.insert(
                    "current_link_speed".into(),
                    if down {
                        "Unknown".into()
                    } else {
                        format!("{} GT/s PCIe", fmt_gts(c.speed))
                    },
                );
                attrs.insert(
                    "current_link_width".into(),
                    if down {
                        "0".into()
                    } else {
                        c.width.to_string()
                    },
                );
                attrs.insert(
                    "max_link_speed".into(),
                    format!("{} GT/s PCIe", fmt_gts(m.speed)),
                );
                attrs.insert("max_link_width".into(), m.width.to_string());
            }
        }
        let p2pmem = match &d.p2pmem {
            None => None,
            Some(p) => {
                let bar = n.bar_addrs.iter().find(|b| b.0 == p.bar && !b.5).ok_or_else(|| {
                    err(Some(line), format!("device '{}': p2pmem names BAR {}, which is not a memory BAR of this device", d.name, p.bar))
                })?;
                let bad = |e: String| err(Some(line), format!("device '{}' p2pmem: {e}", d.name));
                let offset = p
                    .offset
                    .as_ref()
                    .map(size_of)
                    .transpose()
                    .map_err(bad)?
                    .unwrap_or(0);
                let size = match &p.size {
                    Some(s) => size_of(s).map_err(bad)?,
                    None => bar.2.saturating_sub(offset),
                };
                if size == 0 || offset.checked_add(size).is_none_or(|e| e > bar.2) {
                    return Err(err(Some(line), format!("device '{}' p2pmem: offset {offset} + size {size} does not fit BAR {} ({} bytes)", d.name, p.bar, bar.2)));
                }
                let available = p
                    .available
                    .as_ref()
                    .map(size_of)
                    .transpose()
                    .map_err(bad)?
                    .unwrap_or(size);
                if available > size {
                    return Err(err(
                        Some(line),
                        format!("device '{}' p2pmem: available exceeds size", d.name),
                    ));
                }
                Some(RawP2pMem {
                    size,
                    available,
                    published: p.published.unwrap_or(true),
                })
            }
        };
        let physfn = d.physfn.as_ref().map(|pf| {
            let pi = names[pf.as_str()].1;
            Bdf::from_devfn(hb_info[nodes[pi].hb].0, nodes[pi].bus, nodes[pi].devfn)
        });
        devices.push(RawDevice {
            path: paths[i].clone(),
            config: cs.bytes().to_vec(),
            attrs,
            resource: Some(resource_lines.join("\n") + "\n"),
            driver: d.driver.clone(),
            iommu_group: d.iommu_group,
            physfn,
            p2pmem,
            label: Some(d.name.clone()),
        });
        let _ = bdf;
    }
    let origin = Origin {
        kind: kind.to_string(),
        detail: origin.to_string(),
        name: file.name.clone(),
        hostname: None,
        kernel: None,
        cmdline: file.cmdline.clone(),
        tool: Some(format!("peerdma {}", env!("CARGO_PKG_VERSION"))),
    };
    Ok(RawMachine::new(origin, cpu, devices))
}

fn fmt_gts(s: LinkSpeed) -> String {
    let v = s.gts();
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn dfs_order(roots: &[Vec<usize>], children: &[Vec<usize>]) -> Vec<usize> {
    let mut out = Vec::new();
    fn walk(i: usize, children: &[Vec<usize>], out: &mut Vec<usize>) {
        out.push(i);
        for &c in &children[i] {
            walk(c, children, out);
        }
    }
    for r in roots {
        for &i in r {
            walk(i, children, &mut out);
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn assign_bus(
    nodes: &mut [Node],
    children: &[Vec<usize>],
    members: &[usize],
    bus: u8,
    cur: &mut u16,
    file: &DescFile,
    text: &str,
    origin: &str,
    domain: u32,
    used: &mut HashMap<u32, HashSet<u8>>,
) -> Result<()> {
    let err = |line: usize, msg: String| Error::parse(origin, Some(line), msg);
    let _ = text;
    // Explicit numbers first, then fill in the rest.
    let mut taken: HashSet<u8> = HashSet::new();
    let parent_kind = members
        .first()
        .and_then(|&m| nodes[m].parent)
        .map(|p| nodes[p].kind);
    let below_port = matches!(parent_kind, Some(Kind::RootPort | Kind::SwitchDownstream));
    for &m in members {
        let d = file.devices[m].get_ref();
        if d.physfn.is_some() {
            continue;
        }
        if let Some(slot) = d.slot {
            if slot > 31 {
                return Err(err(
                    nodes[m].line,
                    format!("device '{}': slot {slot} is above 31", d.name),
                ));
            }
            let f = d.function.unwrap_or(0);
            if f > 7 {
                return Err(err(
                    nodes[m].line,
                    format!("device '{}': function {f} is above 7", d.name),
                ));
            }
            let devfn = slot << 3 | f;
            if !taken.insert(devfn) {
                return Err(err(
                    nodes[m].line,
                    format!(
                        "device '{}': slot {slot:02x}.{f} is already taken on bus {bus:02x}",
                        d.name
                    ),
                ));
            }
            nodes[m].devfn = devfn;
        } else if d.function.is_some() && !below_port {
            return Err(err(
                nodes[m].line,
                format!("device '{}': give a slot with the function", d.name),
            ));
        }
    }
    for &m in members {
        let d = file.devices[m].get_ref();
        if d.slot.is_some() || d.physfn.is_some() {
            continue;
        }
        let devfn = if below_port {
            // A PCIe link carries device 0; more devices become functions.
            match d.function {
                Some(f) if f <= 7 => {
                    if !taken.insert(f) {
                        return Err(err(
                            nodes[m].line,
                            format!(
                                "device '{}': function {f} is already taken below its port",
                                d.name
                            ),
                        ));
                    }
                    f
                }
                Some(f) => {
                    return Err(err(
                        nodes[m].line,
                        format!("device '{}': function {f} is above 7", d.name),
                    ))
                }
                None => {
                    let f = (0u8..=255).find(|f| !taken.contains(f)).ok_or_else(|| {
                        err(
                            nodes[m].line,
                            format!("device '{}': bus {bus:02x} is full", d.name),
                        )
                    })?;
                    taken.insert(f);
                    f
                }
            }
        } else {
            let s = (0u8..32)
                .find(|s| !taken.contains(&(s << 3)))
                .ok_or_else(|| {
                    err(
                        nodes[m].line,
                        format!("device '{}': bus {bus:02x} has no free slot", d.name),
                    )
                })?;
            taken.insert(s << 3);
            s << 3
        };
        nodes[m].devfn = devfn;
    }
    // Virtual functions: the next free routing IDs after their physical function.
    for &m in members {
        let d = file.devices[m].get_ref();
        let Some(pf) = &d.physfn else { continue };
        let pfi = members
            .iter()
            .copied()
            .find(|&x| file.devices[x].get_ref().name == *pf)
            .unwrap_or(m);
        let start = nodes[pfi].devfn;
        let devfn = (u16::from(start) + 1..=255)
            .map(|v| v as u8)
            .find(|v| !taken.contains(v))
            .ok_or_else(|| {
                err(
                    nodes[m].line,
                    format!(
                        "device '{}': no routing ID left for the virtual function",
                        d.name
                    ),
                )
            })?;
        taken.insert(devfn);
        nodes[m].devfn = devfn;
    }
    let mut sorted: Vec<usize> = members.to_vec();
    sorted.sort_by_key(|&m| nodes[m].devfn);
    for &m in &sorted {
        nodes[m].bus = bus;
    }
    for &m in &sorted {
        if !nodes[m].kind.is_bridge() {
            continue;
        }
        *cur += 1;
        let line = nodes[m].line;
        let sec = u8::try_from(*cur).map_err(|_| {
            err(
                line,
                format!("domain {domain:04x} ran out of bus numbers (more than 256 buses)"),
            )
        })?;
        if !used.entry(domain).or_default().insert(sec) {
            return Err(err(
                line,
                format!(
                    "bus {sec:02x} of domain {domain:04x} is already used by another host bridge"
                ),
            ));
        }
        nodes[m].secondary = sec;
        assign_bus(
            nodes,
            children,
            &children[m].clone(),
            sec,
            cur,
            file,
            text,
            origin,
            domain,
            used,
        )?;
        nodes[m].subordinate = *cur as u8;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Topology;

    const SMALL: &str = r#"
version = 1
name = "small"
[cpu]
vendor = "intel"
family = 6

[[host_bridge]]
name = "hb0"
numa_node = 0

[[device]]
name = "rp0"
type = "root_port"
parent = "hb0"

[[device]]
name = "up"
type = "switch_upstream"
parent = "rp0"

[[device]]
name = "dp0"
type = "switch_downstream"
parent = "up"
acs = ["rr", "cr"]

[[device]]
name = "dp1"
type = "switch_downstream"
parent = "up"

[[device]]
name = "nvme0"
type = "endpoint"
parent = "dp0"
class = "nvme"
vendor = 0x1de5
device = 0x1000
bars = [{ bar = 0, size = "16K" }, { bar = 2, size = "1G" }]
p2pmem = { bar = 2, size = "512M" }
link = "gen4x8"

[[device]]
name = "gpu0"
type = "endpoint"
parent = "dp1"
class = "gpu"
bars = [{ bar = 0, size = "16M", bits = 32 }]
"#;

    fn topo(text: &str) -> Topology {
        Topology::from_raw(parse_description(text, "t.toml").unwrap(), "t.toml").unwrap()
    }

    #[test]
    fn lays_out_buses_and_types() {
        let t = topo(SMALL);
        let names: Vec<String> = t
            .functions()
            .iter()
            .map(|f| format!("{} {}", f.bdf, f.label.as_deref().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                "0000:00:00.0 rp0",
                "0000:01:00.0 up",
                "0000:02:00.0 dp0",
                "0000:02:01.0 dp1",
                "0000:03:00.0 nvme0",
                "0000:04:00.0 gpu0"
            ]
        );
        let nvme = t.function(t.lookup("nvme0").unwrap());
        assert_eq!(nvme.port_type, PortType::Endpoint);
        assert_eq!(nvme.class, 0x010802);
        assert_eq!(nvme.vendor, 0x1de5);
        let dp0 = t.function(nvme.upstream.unwrap());
        assert_eq!(dp0.port_type, PortType::SwitchDownstream);
        assert_eq!(dp0.acs.redirects(), Some(true));
        assert_eq!(
            dp0.link.unwrap().current.unwrap().to_string(),
            "Gen4 x8",
            "the port copies its child's link"
        );
        let up = t.function(dp0.upstream.unwrap());
        assert_eq!(up.port_type, PortType::SwitchUpstream);
        assert_eq!(up.acs, crate::Acs::Absent);
        let rp = t.function(up.upstream.unwrap());
        assert_eq!(rp.port_type, PortType::RootPort);
        assert_eq!(rp.bridge_buses, Some((1, 4)));
        assert_eq!(rp.upstream, None);
        let p2p = nvme.p2pmem.unwrap();
        assert_eq!((p2p.size, p2p.published), (512 << 20, true));
        let bar2 = nvme.bars.iter().find(|b| b.index == 2).unwrap();
        assert_eq!(bar2.phys.len(), 1 << 30);
        assert!(
            bar2.phys.start().raw() % (1 << 30) == 0,
            "naturally aligned"
        );
        assert_eq!(bar2.bus.map(|b| b.raw()), Some(bar2.phys.start().raw()));
        let gpu = t.function(t.lookup("gpu0").unwrap());
        assert!(gpu.bars[0].phys.start().raw() < 1 << 32);
        assert_eq!(t.host_bridges()[0].name, "pci0000:00");
        assert_eq!(t.host_bridge_device(t.host_bridges()[0].id), Some(rp.id));
    }

    fn parse_err(text: &str) -> String {
        match parse_description(text, "bad.toml").and_then(|r| Topology::from_raw(r, "bad.toml")) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn dangling_parent_is_named_with_its_line() {
        let bad = SMALL.replace("parent = \"dp1\"", "parent = \"dp9\"");
        let e = parse_err(&bad);
        assert!(e.starts_with("bad.toml:"), "{e}");
        assert!(e.contains("'gpu0' names parent 'dp9'"), "{e}");
        let line: usize = e.split(':').nth(1).unwrap().parse().unwrap();
        assert_eq!(bad.lines().nth(line - 1).unwrap(), "[[device]]", "{e}");
    }

    #[test]
    fn cycle_is_named() {
        let bad = SMALL.replace("parent = \"rp0\"", "parent = \"dp1\"");
        let e = parse_err(&bad);
        assert!(e.contains("cycle"), "{e}");
        assert!(
            e.contains("up -> dp1 -> up") || e.contains("dp1 -> up -> dp1"),
            "{e}"
        );
    }

    #[test]
    fn wrong_parent_kinds_and_bad_values() {
        for (from, to, want) in [
            ("parent = \"dp0\"", "parent = \"hb0\"", "rc_endpoint"),
            (
                "type = \"switch_downstream\"\nparent = \"up\"\nacs",
                "type = \"switch_downstream\"\nparent = \"rp0\"\nacs",
                "needs switch_upstream",
            ),
            ("link = \"gen4x8\"", "link = \"fast\"", "link 'fast'"),
            (
                "acs = [\"rr\", \"cr\"]",
                "acs = [\"rr\", \"zz\"]",
                "unknown ACS bit 'zz'",
            ),
            ("size = \"1G\"", "size = \"3M\"", "power of two"),
            (
                "class = \"nvme\"",
                "class = \"nvmee\"",
                "unknown class 'nvmee'",
            ),
            (
                "p2pmem = { bar = 2, size = \"512M\" }",
                "p2pmem = { bar = 4 }",
                "not a memory BAR",
            ),
            (
                "vendor = 0x1de5",
                "vendor = 0x1de5\nvendr = 1",
                "unknown field `vendr`",
            ),
            (
                "name = \"gpu0\"",
                "name = \"nvme0\"",
                "already used on line",
            ),
            ("family = 6", "family = \"six\"", "invalid type"),
        ] {
            assert!(SMALL.contains(from), "{from}");
            let e = parse_err(&SMALL.replacen(from, to, 1));
            assert!(e.contains(want), "{to}: {e}");
            assert!(e.starts_with("bad.toml:"), "{e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn multi_function_and_virtual_functions() {
        let text = r#"
[cpu]
vendor = "amd"
family = 0x19
[[host_bridge]]
name = "hb"
[[device]]
name = "rp"
type = "root_port"
parent = "hb"
[[device]]
name = "nic0"
type = "endpoint"
parent = "rp"
class = "ethernet"
[[device]]
name = "nic1"
type = "endpoint"
parent = "rp"
class = "ethernet"
[[device]]
name = "vf0"
type = "endpoint"
physfn = "nic0"
class = "ethernet"
"#;
        let t = topo(text);
        let n0 = t.function(t.lookup("nic0").unwrap());
        let n1 = t.function(t.lookup("nic1").unwrap());
        let vf = t.function(t.lookup("vf0").unwrap());
        assert_eq!(n0.bdf.to_string(), "0000:01:00.0");
        assert_eq!(n1.bdf.to_string(), "0000:01:00.1");
        assert!(n0.multifunction && n1.multifunction);
        assert_eq!(vf.bdf.to_string(), "0000:01:00.2");
        assert_eq!(vf.physfn, Some(n0.id));
        assert_eq!(vf.upstream, n0.upstream);
        assert!(t.cpu().supports_p2pdma());
    }
}
