//! Reading hwloc XML: the files `lstopo --of xml` and
//! `hwloc-gather-topology` write, which clusters keep of their nodes.
//!
//! The file becomes a [`RawMachine`] like every other source and goes
//! through the one builder: each PCI object becomes a function whose path
//! is its host bridge and bridges (`pci0000:00/0000:00:02.0/...`), whose
//! first 64 bytes of config space are made from what the XML records
//! (`pci_type`: class, vendor:device, subsystem, revision; a bridge's
//! `bridge_pci` bus range), and whose attributes are what sysfs would show
//! (`numa_node` from the enclosing object's nodeset, the link from
//! `pci_link_speed`). hwloc records no more config space than that, so ACS
//! is unknown and port types are inferred from the tree, as for an
//! unprivileged read of sysfs.
//!
//! Formats: hwloc 2.x (`<topology version="2.0">`, NUMA nodes as memory
//! children, I/O objects below a Package, Group or the Machine) and hwloc
//! 1.x (`<topology>` without a version, NUMA nodes enclosing the I/O
//! objects, PCI names in a `name` attribute, `Socket` for Package). Other
//! versions (hwloc 3 writes 3.0) are refused with the command that writes
//! 2.x.
//!
//! What the XML records and what peerdma makes of it:
//!
//! - host bridges: `Bridge` objects with `bridge_type="0-1"`; their
//!   `bridge_pci="DDDD:[SS-EE]"` gives the root bus `SS` (the host bridge
//!   `pciDDDD:SS`) and the buses below it;
//! - PCI bridges (`bridge_type="1-1"`) and devices (`PCIDev`):
//!   `pci_busid`, `pci_type="CCCC [VVVV:DDDD] [SVVV:SDDD] RR"` (class
//!   without programming interface, so an NVMe drive's class is 010800);
//!   every function must sit on a bus its parent bridge covers;
//! - `pci_link_speed`, the current link's data rate in GB/s (lanes x
//!   rate per lane after encoding): turned into generation and width where
//!   exactly one combination gives it (Gen1 x1 = 0.25), else kept as a
//!   rate (15.75 GB/s is Gen3 x16, Gen4 x8 or Gen5 x4). 0 means no PCIe
//!   link was seen: the function is taken for conventional PCI, unless the
//!   file gives no rate for any function (hwloc could not read them: an
//!   old kernel, read without root) or it is a bridge with nothing below
//!   (an empty slot), which are taken for PCI Express;
//! - names: the `PCIVendor` and `PCIDevice` infos (1.x: the object's
//!   `name`), else an OS device's `GPUModel`;
//! - OS devices (`nvme0n1`, `mlx5_0`, `eth0`, `nvml0`): kept as the
//!   function's names; the label is the first in the order InfiniBand/RDMA,
//!   block, network, GPU, co-processor, other;
//! - NUMA locality: the nodeset of the nearest enclosing object that is not
//!   an I/O object (a NUMANode in 1.x; a Package, Group or Machine in
//!   2.x): its node when it holds exactly one, else unknown;
//! - the CPU: the first Package's `CPUVendor`, `CPUFamilyNumber`,
//!   `CPUModelNumber` and `CPUModel` infos, and the number of PUs.
//!
//! hwloc's default I/O filter (what `lstopo` applies unless `--whole-io`)
//! keeps only storage, network, display, co-processor and accelerator
//! devices and the bridges above them: host bridge functions, ISA and SMBus
//! bridges, USB controllers and empty slots are left out. A file that
//! shows no such function is marked as possibly partial
//! ([`crate::raw::Origin::partial`]): a host bridge without a 00.0
//! function then cannot be checked against the kernel's whitelist.

use crate::error::{Error, Result};
use crate::file::read_input;
use crate::model::{LinkSpeed, LinkState};
use crate::raw::{Origin, RawCpu, RawDevice, RawMachine};
use peerdma_mem::Bdf;
use roxmltree::{Document, Node, ParsingOptions};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// hwloc XML of a large machine is a few MiB.
pub(crate) const HWLOC_CAP: u64 = 64 << 20;

const WHAT: &str = "hwloc XML (written by `lstopo --of xml`)";

/// Why a file's functions may be incomplete, for [`Origin::partial`].
pub const FILTERED: &str = "it shows none of the functions hwloc's default I/O filter leaves out (host bridge functions, ISA and SMBus bridges, USB, empty slots), so it was probably written without --whole-io";

/// Read an hwloc XML file.
pub fn read_hwloc(path: &Path) -> Result<RawMachine> {
    let origin = path.display().to_string();
    let bytes = read_input(path, HWLOC_CAP, WHAT)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        Error::parse(
            &origin,
            Some(line),
            format!("is not UTF-8 text; expected {WHAT}"),
        )
    })?;
    parse_hwloc(text, &origin)
}

/// The XML format a file is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    V1,
    V2,
}

/// A host bridge or PCI bridge as its children see it.
#[derive(Clone)]
struct Parent {
    /// `host bridge pciDDDD:BB` or `bridge BDF`, for messages.
    name: String,
    /// A host bridge: its children sit on its root bus.
    host: bool,
    line: usize,
    /// The path of the bridge below `sys/devices`.
    path: String,
    domain: u32,
    secondary: u8,
    subordinate: u8,
}

/// What a PCI object inherits from the objects around it.
#[derive(Clone, Default)]
struct Context {
    numa: Option<u32>,
    parent: Option<Parent>,
}

/// A PCI object as read, before it becomes a raw device.
struct Pci {
    bdf: Bdf,
    line: usize,
    path: String,
    bridge: Option<(u8, u8)>,
    class: u16,
    vendor: u16,
    device: u16,
    subsystem: (u16, u16),
    revision: u8,
    link: Option<String>,
    rate: f64,
    numa: Option<u32>,
    vendor_name: Option<String>,
    device_name: Option<String>,
    os_devices: Vec<(u32, String)>,
    has_children: bool,
}

struct Reader<'a> {
    origin: &'a str,
    doc: &'a Document<'a>,
}

impl Reader<'_> {
    fn line(&self, n: Node) -> usize {
        self.doc.text_pos_at(n.range().start).row as usize
    }

    /// An error about an element: `FILE:LINE: <object type="T" ...>: msg`.
    fn err(&self, n: Node, msg: impl std::fmt::Display) -> Error {
        let what = match (n.attribute("type"), n.attribute("pci_busid")) {
            (Some(t), Some(b)) => format!("<object type=\"{t}\" pci_busid=\"{b}\">"),
            (Some(t), None) => match n.attribute("bridge_pci") {
                Some(r) => format!("<object type=\"{t}\" bridge_pci=\"{r}\">"),
                None => format!("<object type=\"{t}\">"),
            },
            _ => format!("<{}>", n.tag_name().name()),
        };
        Error::parse(self.origin, Some(self.line(n)), format!("{what}: {msg}"))
    }

    fn attr<'n>(&self, n: Node<'n, '_>, name: &str) -> Result<&'n str> {
        n.attribute(name)
            .ok_or_else(|| self.err(n, format!("has no {name} attribute")))
    }
}

fn infos<'a>(n: Node<'a, '_>) -> impl Iterator<Item = (&'a str, &'a str)> {
    n.children()
        .filter(|c| c.has_tag_name("info"))
        .filter_map(|c| Some((c.attribute("name")?, c.attribute("value")?)))
}

fn info<'a>(n: Node<'a, '_>, name: &str) -> Option<&'a str> {
    infos(n).find(|(k, _)| *k == name).map(|(_, v)| v)
}

fn objects<'a, 'i>(n: Node<'a, 'i>) -> impl Iterator<Item = Node<'a, 'i>> {
    n.children().filter(|c| c.has_tag_name("object"))
}

/// `DDDD:[SS-EE]`.
fn parse_bus_range(s: &str) -> Option<(u32, u8, u8)> {
    let (d, r) = s.split_once(':')?;
    let r = r.strip_prefix('[')?.strip_suffix(']')?;
    let (a, b) = r.split_once('-')?;
    Some((
        u32::from_str_radix(d, 16).ok()?,
        u8::from_str_radix(a, 16).ok()?,
        u8::from_str_radix(b, 16).ok()?,
    ))
}

/// Class, vendor, device, subsystem and revision.
type PciType = (u16, u16, u16, (u16, u16), u8);

/// `CCCC [VVVV:DDDD] [SVVV:SDDD] RR`.
fn parse_pci_type(s: &str) -> Option<PciType> {
    let mut t = s.split_whitespace();
    let class = u16::from_str_radix(t.next()?, 16).ok()?;
    let pair = |x: &str| -> Option<(u16, u16)> {
        let (a, b) = x.strip_prefix('[')?.strip_suffix(']')?.split_once(':')?;
        Some((
            u16::from_str_radix(a, 16).ok()?,
            u16::from_str_radix(b, 16).ok()?,
        ))
    };
    let (vendor, device) = pair(t.next()?)?;
    let sub = pair(t.next()?)?;
    let revision = u8::from_str_radix(t.next()?, 16).ok()?;
    Some((class, vendor, device, sub, revision))
}

/// A nodeset (`0x00000003`, or 32-bit words most significant first:
/// `0x00000001,0x00000000`): its only node, if it holds exactly one.
fn single_node(s: &str) -> Option<u32> {
    if s.contains("f...f") {
        return None;
    }
    let words: Vec<&str> = s.split(',').collect();
    let mut found = None;
    for (i, w) in words.iter().rev().enumerate() {
        let v = u32::from_str_radix(w.trim().trim_start_matches("0x"), 16).ok()?;
        if v == 0 {
            continue;
        }
        if found.is_some() || v.count_ones() != 1 {
            return None;
        }
        found = Some(i as u32 * 32 + v.trailing_zeros());
    }
    found
}

/// OS device types of hwloc 1.x and 2.x, in the order their names are
/// preferred as the function's label.
fn osdev_rank(t: u32) -> u32 {
    match t {
        3 => 0, // OpenFabrics (mlx5_0)
        0 => 1, // block (nvme0n1)
        2 => 2, // network (eth0, ib0)
        1 => 3, // GPU (nvml0, card0)
        5 => 4, // co-processor (cuda0)
        _ => 5,
    }
}

/// Parse hwloc XML text; `origin` names it in errors.
pub fn parse_hwloc(text: &str, origin: &str) -> Result<RawMachine> {
    if text.trim().is_empty() {
        return Err(Error::parse(
            origin,
            None,
            format!("is empty; expected {WHAT}"),
        ));
    }
    let opts = ParsingOptions {
        allow_dtd: true,
        nodes_limit: 20_000_000,
        ..Default::default()
    };
    let doc = Document::parse_with_options(text, opts).map_err(|e| {
        if matches!(
            e,
            roxmltree::Error::UnclosedRootNode | roxmltree::Error::UnexpectedEndOfStream
        ) {
            let last = text.lines().count().max(1);
            return Error::parse(
                origin,
                Some(last),
                "the file ends before its root element is closed (truncated?)",
            );
        }
        let pos = e.pos();
        let msg = e.to_string();
        let msg = match msg.rfind(" at ") {
            Some(i) if msg[i + 4..].contains(':') => msg[..i].to_string(),
            _ => msg,
        };
        Error::parse(
            origin,
            Some(pos.row as usize),
            format!("not well-formed XML (column {}): {msg}", pos.col),
        )
    })?;
    let r = Reader { origin, doc: &doc };
    let root = doc.root_element();
    if !root.has_tag_name("topology") {
        return Err(r.err(
            root,
            format!(
                "is XML but not hwloc's: the root element is <{}>, expected <topology>",
                root.tag_name().name()
            ),
        ));
    }
    let format = match root.attribute("version") {
        None => Format::V1,
        Some(v) if v.split('.').next() == Some("2") => Format::V2,
        Some(v) => {
            return Err(r.err(
                root,
                format!(
                    "hwloc XML version {v} is not one this peerdma reads (1.x, which has no version, and 2.x); hwloc 3 writes 2.x with `lstopo --export-xml-flags v2 --of xml`"
                ),
            ))
        }
    };
    let machine = objects(root)
        .next()
        .ok_or_else(|| r.err(root, "holds no object: not a topology lstopo wrote"))?;

    // Walk the objects depth first with an explicit stack (files are
    // input: no recursion on their depth).
    let mut pcis: Vec<Pci> = Vec::new();
    let mut seen: HashMap<Bdf, usize> = HashMap::new();
    let mut stack: Vec<(Node, Context, Option<usize>)> = vec![(machine, Context::default(), None)];
    let mut pus = 0u32;
    let mut package: Option<Node> = None;
    while let Some((n, ctx, pci_parent)) = stack.pop() {
        let ty = r.attr(n, "type")?;
        let mut ctx = ctx;
        let mut me: Option<usize> = None;
        match ty {
            "Bridge" => {
                let bt = r.attr(n, "bridge_type")?;
                let range = r.attr(n, "bridge_pci")?;
                let (domain, secondary, subordinate) = parse_bus_range(range).ok_or_else(|| {
                    r.err(n, format!("bridge_pci \"{range}\" is not DDDD:[SS-EE]"))
                })?;
                if secondary > subordinate {
                    return Err(r.err(
                        n,
                        format!(
                            "bus range [{secondary:02x}-{subordinate:02x}] ends before it starts"
                        ),
                    ));
                }
                match bt {
                    "0-1" => {
                        if let Some(p) = &ctx.parent {
                            return Err(r.err(
                                n,
                                format!("is a host bridge inside {} (line {})", p.name, p.line),
                            ));
                        }
                        let name = format!("pci{domain:04x}:{secondary:02x}");
                        ctx.parent = Some(Parent {
                            name: format!("host bridge {name}"),
                            host: true,
                            line: r.line(n),
                            path: name,
                            domain,
                            secondary,
                            subordinate,
                        });
                    }
                    "1-1" => {
                        let i = r.pci(n, &ctx, Some((secondary, subordinate)), &mut pcis, &mut seen)?;
                        if let Some(p) = pci_parent {
                            pcis[p].has_children = true;
                        }
                        let bdf = pcis[i].bdf;
                        if domain != bdf.domain() {
                            return Err(r.err(n, format!("its buses are in domain {domain:04x}, the bridge in {:04x}", bdf.domain())));
                        }
                        if secondary <= bdf.bus() {
                            return Err(r.err(
                                n,
                                format!("its secondary bus {secondary:02x} is not above its own bus {:02x}", bdf.bus()),
                            ));
                        }
                        if let Some(p) = &ctx.parent {
                            if secondary <= p.secondary || subordinate > p.subordinate {
                                return Err(r.err(
                                    n,
                                    format!(
                                        "its buses [{secondary:02x}-{subordinate:02x}] are outside the range [{:02x}-{:02x}] of {} (line {})",
                                        p.secondary, p.subordinate, p.name, p.line
                                    ),
                                ));
                            }
                        }
                        ctx.parent = Some(Parent {
                            name: format!("bridge {bdf}"),
                            host: false,
                            line: pcis[i].line,
                            path: pcis[i].path.clone(),
                            domain,
                            secondary,
                            subordinate,
                        });
                        me = Some(i);
                    }
                    other => {
                        return Err(r.err(
                            n,
                            format!("bridge_type \"{other}\" is neither a host bridge (0-1) nor a PCI bridge (1-1)"),
                        ))
                    }
                }
            }
            "PCIDev" => {
                let i = r.pci(n, &ctx, None, &mut pcis, &mut seen)?;
                if let Some(p) = pci_parent {
                    pcis[p].has_children = true;
                }
                me = Some(i);
            }
            "OSDev" => {
                if let (Some(p), Some(name)) = (pci_parent, n.attribute("name")) {
                    let t = n
                        .attribute("osdev_type")
                        .and_then(|t| t.parse::<u32>().ok())
                        .unwrap_or(u32::MAX);
                    pcis[p].os_devices.push((t, name.to_string()));
                    if pcis[p].device_name.is_none() {
                        pcis[p].device_name = info(n, "GPUModel").map(str::to_string);
                    }
                }
                continue;
            }
            _ => {
                if ty == "PU" {
                    pus += 1;
                }
                if matches!(ty, "Package" | "Socket") && package.is_none() {
                    package = Some(n);
                }
                if ctx.parent.is_some() {
                    return Err(r.err(n, "is not an I/O object, but sits inside a PCI hierarchy"));
                }
                // The locality of I/O objects below: this object's nodes.
                let nodeset = n.attribute("nodeset").or(n.attribute("complete_nodeset"));
                ctx.numa = match (nodeset, ty, n.attribute("os_index")) {
                    (Some(s), _, _) => single_node(s),
                    (None, "NUMANode", Some(i)) => i.parse().ok(),
                    (None, _, _) => ctx.numa,
                };
            }
        }
        let kids: Vec<Node> = objects(n).collect();
        for k in kids.into_iter().rev() {
            stack.push((k, ctx.clone(), me.or(pci_parent)));
        }
    }
    if pcis.is_empty() {
        return Err(r.err(
            machine,
            "the file holds no PCI device (written with I/O filtered out? `lstopo --of xml` keeps the important ones, `--whole-io` all)",
        ));
    }
    Ok(r.machine(format, machine, package, pus, pcis))
}

impl Reader<'_> {
    /// Read one PCI object (bridge or device) below `ctx`'s parent.
    fn pci(
        &self,
        n: Node,
        ctx: &Context,
        bridge: Option<(u8, u8)>,
        pcis: &mut Vec<Pci>,
        seen: &mut HashMap<Bdf, usize>,
    ) -> Result<usize> {
        let busid = self.attr(n, "pci_busid")?;
        let bdf: Bdf = busid
            .parse()
            .map_err(|e| self.err(n, format!("pci_busid: {e}")))?;
        let Some(parent) = &ctx.parent else {
            return Err(self.err(
                n,
                "is not below a host bridge: the file was written without PCI bridges (hwloc's bridge filter), and peerdma needs them to place devices",
            ));
        };
        if bdf.domain() != parent.domain {
            return Err(self.err(
                n,
                format!(
                    "is in domain {:04x}, but sits below {} (line {}) of domain {:04x}",
                    bdf.domain(),
                    parent.name,
                    parent.line,
                    parent.domain
                ),
            ));
        }
        let on_root_bus = parent.host;
        let fits = if on_root_bus {
            bdf.bus() == parent.secondary
        } else {
            (parent.secondary..=parent.subordinate).contains(&bdf.bus())
        };
        if !fits {
            let range = if on_root_bus {
                format!("its root bus {:02x}", parent.secondary)
            } else {
                format!(
                    "its bus range [{:02x}-{:02x}]",
                    parent.secondary, parent.subordinate
                )
            };
            return Err(self.err(
                n,
                format!(
                    "is on bus {:02x}, outside {range} of {} (line {})",
                    bdf.bus(),
                    parent.name,
                    parent.line
                ),
            ));
        }
        let line = self.line(n);
        if let Some(first) = seen.insert(bdf, line) {
            return Err(self.err(n, format!("{bdf} is listed twice (also at line {first})")));
        }
        let ty = self.attr(n, "pci_type")?;
        let (class, vendor, device, subsystem, revision) = parse_pci_type(ty).ok_or_else(|| {
            self.err(
                n,
                format!("pci_type \"{ty}\" is not \"CCCC [VVVV:DDDD] [VVVV:DDDD] RR\""),
            )
        })?;
        let (link, rate) = match n.attribute("pci_link_speed") {
            None => (None, 0.0),
            Some(s) => match s.trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => (Some(s.trim().to_string()), v),
                _ => {
                    return Err(self.err(n, format!("pci_link_speed \"{s}\" is not a rate in GB/s")))
                }
            },
        };
        // Names: 2.x infos, else 1.x's "Vendor Device" name.
        let vendor_name = info(n, "PCIVendor").map(str::to_string);
        let device_name = info(n, "PCIDevice").map(str::to_string).or_else(|| {
            match (&vendor_name, n.attribute("name")) {
                (None, Some(name)) if !name.is_empty() => Some(name.to_string()),
                _ => None,
            }
        });
        pcis.push(Pci {
            bdf,
            line,
            path: format!("{}/{bdf}", parent.path),
            bridge,
            class,
            vendor,
            device,
            subsystem,
            revision,
            link,
            rate,
            numa: ctx.numa,
            vendor_name,
            device_name,
            os_devices: Vec::new(),
            has_children: false,
        });
        Ok(pcis.len() - 1)
    }

    fn machine(
        &self,
        format: Format,
        machine: Node,
        package: Option<Node>,
        pus: u32,
        pcis: Vec<Pci>,
    ) -> RawMachine {
        let any_rate = pcis.iter().any(|p| p.rate > 0.0);
        // hwloc's default filter drops every function of these kinds.
        let whole = pcis.iter().any(|p| {
            let important = matches!(p.class >> 8, 0x00 | 0x01 | 0x02 | 0x03 | 0x0b | 0x12)
                || matches!(p.class, 0x0c04 | 0x0c06 | 0x0502);
            (p.bridge.is_some() && !p.has_children)
                || (p.bridge.is_none() && p.class >> 8 == 0x06 && p.class != 0x0680)
                || (p.bridge.is_none() && !important && p.class >> 8 != 0x06)
        });
        let mut per_slot: HashMap<(u32, u8, u8), usize> = HashMap::new();
        for p in &pcis {
            *per_slot
                .entry((p.bdf.domain(), p.bdf.bus(), p.bdf.device()))
                .or_default() += 1;
        }
        let devices = pcis
            .into_iter()
            .map(|p| {
                let multi = per_slot[&(p.bdf.domain(), p.bdf.bus(), p.bdf.device())] > 1;
                raw_device(p, multi, any_rate)
            })
            .collect();
        let cpu_from = package.unwrap_or(machine);
        let get = |k: &str| info(cpu_from, k).or_else(|| info(machine, k));
        let cpu = RawCpu {
            vendor_id: get("CPUVendor").unwrap_or_default().to_string(),
            family: get("CPUFamilyNumber")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            model: get("CPUModelNumber")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            model_name: get("CPUModel").unwrap_or_default().to_string(),
            processors: pus,
        };
        let version = match format {
            Format::V1 => "1.x",
            Format::V2 => "2.x",
        };
        let origin = Origin {
            kind: "hwloc".into(),
            detail: self.origin.to_string(),
            name: info(machine, "DMIProductName")
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string),
            hostname: info(machine, "HostName").map(str::to_string),
            kernel: info(machine, "OSRelease").map(str::to_string),
            cmdline: None,
            tool: Some(match info(machine, "hwlocVersion") {
                Some(v) => format!("hwloc {v} (XML {version})"),
                None => format!("hwloc (XML {version})"),
            }),
            partial: (!whole).then(|| FILTERED.to_string()),
        };
        RawMachine::new(origin, cpu, devices)
    }
}

/// The raw device a PCI object stands for: the 64-byte header as far as
/// the XML gives it, and the attributes sysfs would show.
fn raw_device(p: Pci, multifunction: bool, any_rate: bool) -> RawDevice {
    let mut c = vec![0u8; 64];
    c[0..2].copy_from_slice(&p.vendor.to_le_bytes());
    c[2..4].copy_from_slice(&p.device.to_le_bytes());
    c[8] = p.revision;
    c[10] = (p.class & 0xff) as u8;
    c[11] = (p.class >> 8) as u8;
    let layout = u8::from(p.bridge.is_some());
    c[0x0e] = layout | if multifunction { 0x80 } else { 0 };
    match p.bridge {
        Some((sec, sub)) => {
            c[0x18] = p.bdf.bus();
            c[0x19] = sec;
            c[0x1a] = sub;
        }
        None => {
            c[0x2c..0x2e].copy_from_slice(&p.subsystem.0.to_le_bytes());
            c[0x2e..0x30].copy_from_slice(&p.subsystem.1.to_le_bytes());
        }
    }
    let mut attrs = BTreeMap::new();
    attrs.insert(
        "numa_node".to_string(),
        p.numa.map_or("-1".to_string(), |n| n.to_string()),
    );
    let pcie = p.rate > 0.0 || !any_rate || (p.bridge.is_some() && !p.has_children);
    if pcie {
        // As sysfs shows a PCIe function: the link when its generation and
        // width are known, else "Unknown".
        match LinkState::candidates(p.rate * 1e9).as_slice() {
            [one] => {
                attrs.insert("current_link_speed".into(), speed_text(one.speed));
                attrs.insert("current_link_width".into(), one.width.to_string());
            }
            _ => {
                attrs.insert("current_link_speed".into(), "Unknown".into());
            }
        }
    }
    if let Some(l) = p.link.filter(|_| p.rate > 0.0) {
        attrs.insert("pci_link_speed".into(), l);
    }
    let mut os = p.os_devices;
    os.sort_by_key(|(t, _)| osdev_rank(*t));
    let os_devices: Vec<String> = os.into_iter().map(|(_, n)| n).collect();
    RawDevice {
        path: p.path,
        config: c,
        attrs,
        label: os_devices.first().cloned(),
        vendor_name: p.vendor_name,
        device_name: p.device_name,
        os_devices,
        ..Default::default()
    }
}

/// A link speed as sysfs writes it (`8.0 GT/s PCIe`).
fn speed_text(s: LinkSpeed) -> String {
    format!("{:.1} GT/s PCIe", s.gts())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodesets_with_one_node() {
        assert_eq!(single_node("0x00000001"), Some(0));
        assert_eq!(single_node("0x00000004"), Some(2));
        assert_eq!(single_node("0x00000003"), None);
        assert_eq!(single_node("0x00000001,0x00000000"), Some(32));
        assert_eq!(single_node("0x0"), None);
        assert_eq!(single_node("0xf...f"), None);
        assert_eq!(single_node("zz"), None);
    }

    #[test]
    fn pci_types_and_bus_ranges() {
        assert_eq!(
            parse_pci_type("0108 [1b36:0010] [1af4:1100] 02"),
            Some((0x0108, 0x1b36, 0x0010, (0x1af4, 0x1100), 2))
        );
        assert_eq!(parse_pci_type("0108 [1b36:0010]"), None);
        assert_eq!(parse_bus_range("0000:[00-08]"), Some((0, 0, 8)));
        assert_eq!(parse_bus_range("0000:00-08"), None);
    }
}
