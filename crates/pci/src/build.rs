//! One builder from a raw capture to the model, shared by every source.

use crate::config::{self, ConfigSpace, Visibility};
use crate::error::{Error, Result};
use crate::model::*;
use crate::raw::{RawMachine, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, SNAPSHOT_VERSIONS_READ};
use peerdma_mem::{AddrRange, Bdf, BusAddr, PhysAddr};
use std::collections::HashMap;

const IORESOURCE_IO: u64 = 0x100;
const IORESOURCE_MEM: u64 = 0x200;
const IORESOURCE_PREFETCH: u64 = 0x2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;

/// Parse `pciDDDD:BB` (a host bridge directory name).
pub(crate) fn parse_host_bridge_name(s: &str) -> Option<(u32, u8)> {
    let rest = s.strip_prefix("pci")?;
    let (d, b) = rest.split_once(':')?;
    if d.len() < 4 || b.len() != 2 {
        return None;
    }
    Some((
        u32::from_str_radix(d, 16).ok()?,
        u8::from_str_radix(b, 16).ok()?,
    ))
}

fn parse_hex_attr(s: &str) -> Option<u64> {
    let t = s.trim();
    u64::from_str_radix(t.strip_prefix("0x").unwrap_or(t), 16).ok()
}

/// Where a device sits, from its path.
enum Parent {
    Bridge(Bdf),
    Root {
        key: String,
        name: String,
        domain: u32,
        bus: u8,
    },
}

fn parent_of(path: &str) -> Option<Parent> {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let (_, above) = comps.split_last()?;
    let parent = above.last()?;
    if let Ok(b) = parent.parse::<Bdf>() {
        return Some(Parent::Bridge(b));
    }
    let (domain, bus) = parse_host_bridge_name(parent)?;
    Some(Parent::Root {
        key: above.join("/"),
        name: parent.to_string(),
        domain,
        bus,
    })
}

fn parse_link(
    attrs: &std::collections::BTreeMap<String, String>,
    speed: &str,
    width: &str,
) -> Option<LinkState> {
    let s = LinkSpeed::parse(attrs.get(speed)?)?;
    let w: u8 = attrs.get(width)?.trim().parse().ok()?;
    (w > 0).then_some(LinkState { speed: s, width: w })
}

fn link_from_config(cs: &ConfigSpace, exp: usize) -> Link {
    let state = |speed: u8, width: u8| {
        let speed = LinkSpeed::from_code(speed)?;
        (width > 0).then_some(LinkState { speed, width })
    };
    let cap = cs.u32(exp + config::EXP_LNKCAP).unwrap_or(0);
    let sta = cs.u16(exp + config::EXP_LNKSTA).unwrap_or(0);
    Link {
        current: state((sta & 0xf) as u8, ((sta >> 4) & 0x3f) as u8),
        max: state((cap & 0xf) as u8, ((cap >> 4) & 0x3f) as u8),
        current_rate: None,
    }
}

fn parse_resource(
    origin: &str,
    bdf: &str,
    text: &str,
    max_bars: usize,
    cs: &ConfigSpace,
) -> Result<Vec<Bar>> {
    let mut bars = Vec::new();
    for (i, line) in text.lines().enumerate().take(max_bars) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [start, end, flags] = fields.as_slice() else {
            return Err(Error::device(
                origin,
                bdf,
                format!(
                    "resource line {} is '{line}', expected three hex numbers",
                    i + 1
                ),
            ));
        };
        let (Some(start), Some(end), Some(flags)) = (
            parse_hex_attr(start),
            parse_hex_attr(end),
            parse_hex_attr(flags),
        ) else {
            return Err(Error::device(
                origin,
                bdf,
                format!(
                    "resource line {} is '{line}', expected three hex numbers",
                    i + 1
                ),
            ));
        };
        if flags & (IORESOURCE_IO | IORESOURCE_MEM) == 0 || end < start || (start == 0 && end == 0)
        {
            continue;
        }
        let io = flags & IORESOURCE_IO != 0;
        let Some(len) = (end - start).checked_add(1) else {
            return Err(Error::device(
                origin,
                bdf,
                format!(
                    "resource line {} spans the whole 64-bit address space",
                    i + 1
                ),
            ));
        };
        let phys = AddrRange::new(PhysAddr::new(start), len)
            .map_err(|e| Error::device(origin, bdf, format!("resource line {}: {e}", i + 1)))?;
        let bus = if io {
            None
        } else {
            cs.bar_bus_address(i)
                .filter(|&a| a != 0)
                .map(BusAddr::from_config_space)
        };
        bars.push(Bar {
            index: i as u8,
            phys,
            bus,
            io,
            prefetchable: flags & IORESOURCE_PREFETCH != 0,
            is64: flags & IORESOURCE_MEM_64 != 0,
        });
    }
    Ok(bars)
}

fn cpu_from_raw(raw: &crate::raw::RawCpu) -> Cpu {
    let vendor = match raw.vendor_id.as_str() {
        "GenuineIntel" => CpuVendor::Intel,
        "AuthenticAMD" => CpuVendor::Amd,
        "HygonGenuine" => CpuVendor::Hygon,
        _ => CpuVendor::Other,
    };
    Cpu {
        vendor,
        vendor_id: raw.vendor_id.clone(),
        family: raw.family,
        model: raw.model,
        model_name: raw.model_name.clone(),
    }
}

struct Pending {
    bdf: Bdf,
    parent: Parent,
    pcie_cap: Option<usize>,
    is_pcie: bool,
}

impl Topology {
    /// Build the model from a capture. `origin` names the capture in errors
    /// (a file path or preset name).
    pub fn from_raw(raw: RawMachine, origin: &str) -> Result<Topology> {
        if raw.format != SNAPSHOT_FORMAT {
            return Err(Error::parse(
                origin,
                None,
                format!("format is '{}', expected '{SNAPSHOT_FORMAT}'", raw.format),
            ));
        }
        if !SNAPSHOT_VERSIONS_READ.contains(&raw.version) {
            return Err(Error::parse(
                origin,
                None,
                format!(
                    "snapshot version {} is not readable by this peerdma (it reads versions {})",
                    raw.version,
                    SNAPSHOT_VERSIONS_READ
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            ));
        }
        // An older version is a subset of this one: the model keeps (and
        // `snapshot` writes) the capture as this version.
        let mut raw = raw;
        raw.version = SNAPSHOT_VERSION;

        // Order functions by BDF: FnId order is BDF order.
        let mut order: Vec<(Bdf, usize)> = Vec::with_capacity(raw.devices.len());
        for (i, d) in raw.devices.iter().enumerate() {
            let bdf: Bdf = d.name().parse().map_err(|e| {
                Error::parse(origin, None, format!("device path '{}': {e}", d.path))
            })?;
            order.push((bdf, i));
        }
        order.sort();
        for w in order.windows(2) {
            if w[0].0 == w[1].0 {
                return Err(Error::device(origin, w[0].0, "listed twice"));
            }
        }
        let by_bdf: HashMap<Bdf, FnId> = order
            .iter()
            .enumerate()
            .map(|(i, (b, _))| (*b, FnId::new(i)))
            .collect();

        let mut functions = Vec::with_capacity(order.len());
        let mut pending = Vec::with_capacity(order.len());
        let mut host_bridges: Vec<HostBridge> = Vec::new();
        let mut hb_by_key: HashMap<String, HostBridgeId> = HashMap::new();
        let mut header_only = 0usize;
        let mut no_ext = 0usize;

        for (idx, &(bdf, ri)) in order.iter().enumerate() {
            let d = &raw.devices[ri];
            let name = match &d.label {
                Some(l) => format!("{bdf} ({l})"),
                None => bdf.to_string(),
            };
            if d.config.len() > 4096 {
                return Err(Error::device(
                    origin,
                    &name,
                    format!(
                        "config space is {} bytes, more than the 4096 a PCI function has",
                        d.config.len()
                    ),
                ));
            }
            let cs = ConfigSpace::new(d.config.clone());
            if cs.len() < 64 {
                return Err(Error::device(
                    origin,
                    &name,
                    format!(
                        "config space is {} bytes, at least the 64-byte header is needed (truncated capture?)",
                        cs.len()
                    ),
                ));
            }
            let parent = parent_of(&d.path).ok_or_else(|| {
                Error::device(
                    origin,
                    &name,
                    format!("path '{}' has neither a PCI bridge nor a host bridge (pciDDDD:BB) above the device", d.path),
                )
            })?;
            if let Parent::Bridge(p) = &parent {
                if !by_bdf.contains_key(p) {
                    return Err(Error::device(
                        origin,
                        &name,
                        format!("sits below {p}, which is not in the capture"),
                    ));
                }
            }
            let is_pcie_by_attrs = d.attrs.contains_key("current_link_speed")
                || d.attrs.contains_key("max_link_speed");
            let (pcie_cap, visibility) = match cs.find_cap(config::CAP_ID_EXP) {
                Ok(Some(pos)) => (Some(pos), cs.visibility(true)),
                Ok(None) => (None, cs.visibility(is_pcie_by_attrs)),
                Err(_) => (None, Visibility::HeaderOnly),
            };
            let visibility = if cs.len() < 256 {
                Visibility::HeaderOnly
            } else {
                visibility
            };
            match visibility {
                Visibility::HeaderOnly => header_only += 1,
                Visibility::NoExtended => no_ext += 1,
                Visibility::Full => {}
            }
            let is_pcie = pcie_cap.is_some() || is_pcie_by_attrs;
            let layout = cs.header_layout().unwrap_or(0);
            let port_type = match (pcie_cap, visibility) {
                (Some(pos), _) => PortType::from_pcie_code(
                    ((cs.u16(pos + config::EXP_FLAGS).unwrap_or(0) >> 4) & 0xf) as u8,
                ),
                (None, Visibility::HeaderOnly) => PortType::Unknown,
                (None, _) if layout == 1 => PortType::ConventionalBridge,
                (None, _) => PortType::Conventional,
            };
            let acs = match (visibility, is_pcie) {
                (Visibility::Full, true) => match cs.find_ext_cap(config::EXT_CAP_ID_ACS) {
                    Ok(Some(pos)) => Acs::Present {
                        offset: pos as u16,
                        cap: cs.u16(pos + config::ACS_CAP).unwrap_or(0),
                        ctrl: cs.u16(pos + config::ACS_CTRL).unwrap_or(0),
                    },
                    Ok(None) => Acs::Absent,
                    Err(e) => {
                        return Err(Error::device(origin, &name, format!("ACS capability: {e}")))
                    }
                },
                (Visibility::Full, false) => Acs::Absent,
                _ => Acs::Unknown,
            };
            let max_bars = match layout {
                0 => 6,
                1 => 2,
                _ => 0,
            };
            let bars = match &d.resource {
                Some(text) => parse_resource(origin, &name, text, max_bars, &cs)?,
                None => Vec::new(),
            };
            let link = if is_pcie
                && port_type != PortType::RcEndpoint
                && port_type != PortType::RcEventCollector
            {
                let from_attrs = Link {
                    current: parse_link(&d.attrs, "current_link_speed", "current_link_width"),
                    max: parse_link(&d.attrs, "max_link_speed", "max_link_width"),
                    current_rate: None,
                };
                let from_cfg = pcie_cap
                    .map(|p| link_from_config(&cs, p))
                    .unwrap_or_default();
                let current = from_attrs.current.or(from_cfg.current);
                // hwloc's rate (GB/s), where the generation and width are
                // not known.
                let current_rate = d
                    .attrs
                    .get("pci_link_speed")
                    .and_then(|r| r.trim().parse::<f64>().ok())
                    .filter(|r| current.is_none() && r.is_finite() && *r > 0.0 && *r < 1e6)
                    .map(|r| (r * 1e9).round() as u64);
                let l = Link {
                    current,
                    max: from_attrs.max.or(from_cfg.max),
                    current_rate,
                };
                (l.current.is_some() || l.max.is_some() || l.current_rate.is_some()).then_some(l)
            } else {
                None
            };
            let numa_node = d
                .attrs
                .get("numa_node")
                .and_then(|s| s.trim().parse::<i64>().ok())
                .and_then(|n| u32::try_from(n).ok());
            let physfn = match d.physfn {
                Some(pf) => Some(*by_bdf.get(&pf).ok_or_else(|| {
                    Error::device(
                        origin,
                        &name,
                        format!("its physical function {pf} is not in the capture"),
                    )
                })?),
                None => None,
            };
            let host_bridge = match &parent {
                Parent::Root {
                    key,
                    name: hb_name,
                    domain,
                    bus,
                } => {
                    let next = HostBridgeId::new(host_bridges.len());
                    let id = *hb_by_key.entry(key.clone()).or_insert(next);
                    if id == next {
                        host_bridges.push(HostBridge {
                            id,
                            name: hb_name.clone(),
                            path: key.clone(),
                            domain: *domain,
                            bus: *bus,
                            root_functions: Vec::new(),
                            numa_node: None,
                            device_not_captured: false,
                        });
                    }
                    Some(id)
                }
                Parent::Bridge(_) => None,
            };
            functions.push(Function {
                id: FnId::new(idx),
                bdf,
                path: d.path.clone(),
                vendor: cs.vendor().unwrap_or(0xffff),
                device: cs.device().unwrap_or(0xffff),
                subsystem: match (
                    cs.header_layout(),
                    cs.u16(config::SUBSYSTEM_VENDOR_ID),
                    cs.u16(config::SUBSYSTEM_ID),
                ) {
                    (Some(0), Ok(v), Ok(s)) if v != 0 && v != 0xffff => Some((v, s)),
                    _ => None,
                },
                class: cs.class().unwrap_or(0),
                revision: cs.revision().unwrap_or(0),
                multifunction: cs.multifunction().unwrap_or(false),
                port_type,
                port_type_inferred: false,
                upstream: None,
                children: Vec::new(),
                physfn,
                host_bridge: host_bridge.unwrap_or(HostBridgeId::UNKNOWN),
                acs,
                bridge_buses: cs.bridge_buses().map(|(_, s, u)| (s, u)),
                bars,
                link,
                numa_node,
                iommu_group: d.iommu_group,
                driver: d.driver.clone(),
                p2pmem: d.p2pmem.map(|p| P2pMem {
                    size: p.size,
                    available: p.available,
                    published: p.published,
                }),
                label: d.label.clone(),
                vendor_name: d.vendor_name.clone(),
                device_name: d.device_name.clone(),
                os_devices: d.os_devices.clone(),
                config: cs,
            });
            pending.push(Pending {
                bdf,
                parent,
                pcie_cap,
                is_pcie,
            });
        }

        // A virtual function's Vendor and Device ID registers read 0xffff
        // (the SR-IOV specification says so): the kernel takes the vendor
        // from the physical function and the device from the VF Device ID
        // of its SR-IOV capability, and sysfs shows those.
        for i in 0..functions.len() {
            let Some(pf) = functions[i].physfn else {
                continue;
            };
            let d = &raw.devices[order[i].1];
            let attr = |k: &str| {
                d.attrs
                    .get(k)
                    .and_then(|v| u16::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
            };
            let pf_vendor = functions[pf.index()].vendor;
            let pf_vf_device = functions[pf.index()]
                .config
                .find_ext_cap(config::EXT_CAP_ID_SRIOV)
                .ok()
                .flatten()
                .and_then(|pos| {
                    functions[pf.index()]
                        .config
                        .u16(pos + config::SRIOV_VF_DID)
                        .ok()
                });
            let f = &mut functions[i];
            if let Some(v) = attr("vendor") {
                f.vendor = v;
            } else if f.vendor == 0xffff {
                f.vendor = pf_vendor;
            }
            if let Some(v) = attr("device") {
                f.device = v;
            } else if f.device == 0xffff {
                if let Some(v) = pf_vf_device {
                    f.device = v;
                }
            }
        }

        // Upstream bridges (pci_upstream_bridge: a virtual function uses its
        // physical function's bus).
        for i in 0..functions.len() {
            let up = match &pending[i].parent {
                Parent::Bridge(p) => Some(by_bdf[p]),
                Parent::Root { .. } => None,
            };
            let up = match functions[i].physfn {
                Some(pf) => match &pending[pf.index()].parent {
                    Parent::Bridge(p) => Some(by_bdf[p]),
                    Parent::Root { .. } => None,
                },
                None => up,
            };
            functions[i].upstream = up;
        }
        // Depth-first from the roots: resolves host bridges, catches cycles.
        let mut state = vec![0u8; functions.len()]; // 0 new, 1 on stack, 2 done
        for i in 0..functions.len() {
            let mut chain = Vec::new();
            let mut cur = i;
            loop {
                match state[cur] {
                    2 => break,
                    1 => {
                        return Err(Error::device(
                            origin,
                            functions[cur].bdf,
                            "its upstream bridges form a cycle",
                        ))
                    }
                    _ => {}
                }
                state[cur] = 1;
                chain.push(cur);
                match functions[cur].upstream {
                    Some(u) => cur = u.index(),
                    None => break,
                }
            }
            // Assign host bridges top-down along the chain.
            for &c in chain.iter().rev() {
                if let Some(u) = functions[c].upstream {
                    functions[c].host_bridge = functions[u.index()].host_bridge;
                } else if functions[c].host_bridge == HostBridgeId::UNKNOWN {
                    // A root-bus virtual function: its physical function's host bridge.
                    if let Some(pf) = functions[c].physfn {
                        let hb = match &pending[pf.index()].parent {
                            Parent::Root { key, .. } => hb_by_key.get(key).copied(),
                            _ => None,
                        };
                        if let Some(hb) = hb {
                            functions[c].host_bridge = hb;
                        }
                    }
                }
                state[c] = 2;
            }
        }
        for i in 0..functions.len() {
            if functions[i].host_bridge == HostBridgeId::UNKNOWN {
                return Err(Error::device(
                    origin,
                    pending[i].bdf,
                    "no host bridge above it",
                ));
            }
            if let Some(u) = functions[i].upstream {
                if !functions[u.index()].is_bridge()
                    && functions[u.index()].port_type != PortType::Unknown
                {
                    return Err(Error::device(
                        origin,
                        pending[i].bdf,
                        format!(
                            "sits below {}, which is not a bridge",
                            functions[u.index()].bdf
                        ),
                    ));
                }
                functions[u.index()].children.push(FnId::new(i));
            } else {
                let hb = functions[i].host_bridge;
                host_bridges[hb.index()].root_functions.push(FnId::new(i));
            }
        }
        for hb in &mut host_bridges {
            hb.root_functions
                .sort_by_key(|&f| functions[f.index()].bdf.devfn());
            hb.numa_node = hb
                .root_functions
                .iter()
                .find_map(|&f| functions[f.index()].numa_node);
            hb.device_not_captured = raw.origin.partial.is_some()
                && !hb
                    .root_functions
                    .iter()
                    .any(|&f| functions[f.index()].bdf.devfn() == 0);
        }

        // Infer the port types an unprivileged read cannot see, top-down.
        let mut inferred = 0usize;
        let mut by_depth: Vec<(usize, usize)> = (0..functions.len())
            .map(|i| {
                let mut d = 0;
                let mut c = functions[i].upstream;
                while let Some(u) = c {
                    d += 1;
                    c = functions[u.index()].upstream;
                }
                (d, i)
            })
            .collect();
        by_depth.sort();
        for &(_, i) in &by_depth {
            if functions[i].port_type != PortType::Unknown || pending[i].pcie_cap.is_some() {
                continue;
            }
            let layout = functions[i].config.header_layout().unwrap_or(0);
            let up = functions[i]
                .upstream
                .map(|u| functions[u.index()].port_type);
            let t = match (layout, up, pending[i].is_pcie) {
                (1, None, true) => PortType::RootPort,
                (1, Some(PortType::RootPort | PortType::SwitchDownstream), true) => {
                    PortType::SwitchUpstream
                }
                (1, Some(PortType::SwitchUpstream), true) => PortType::SwitchDownstream,
                (1, _, false) => PortType::ConventionalBridge,
                (0, None, true) => PortType::RcEndpoint,
                (0, _, true) => PortType::Endpoint,
                (0, _, false) => PortType::Conventional,
                _ => PortType::Unknown,
            };
            functions[i].port_type = t;
            functions[i].port_type_inferred = true;
            inferred += 1;
        }

        let bars_known: Vec<bool> = order
            .iter()
            .map(|&(_, ri)| raw.devices[ri].resource.is_some())
            .collect();
        crate::validate::check(origin, &functions, &host_bridges, &bars_known)?;

        let mut notes = Vec::new();
        let hwloc = raw.origin.kind == "hwloc";
        if header_only > 0 && hwloc {
            notes.push(format!(
                "hwloc XML records no config space: the ACS state of the {} functions is unknown and port types are inferred from the tree ({inferred}); verdicts assume no ACS redirect unless --assume-acs iommu",
                functions.len()
            ));
        } else if header_only > 0 {
            notes.push(format!(
                "{header_only} of {} functions show only 64 bytes of config space (reading it whole needs root): their ACS state is unknown and port types are inferred ({inferred}); verdicts assume no ACS redirect there unless --assume-acs iommu",
                functions.len()
            ));
        }
        if hwloc && raw.cpu.vendor_id.is_empty() {
            notes.push("the XML names no CPU vendor (no CPUVendor info): the kernel's AMD rule is taken not to apply".into());
        }
        if let Some(why) = &raw.origin.partial {
            let unseen: Vec<&str> = host_bridges
                .iter()
                .filter(|h| h.device_not_captured)
                .map(|h| h.name.as_str())
                .collect();
            let mut n = format!("the capture may leave out functions: {why}");
            if !unseen.is_empty() {
                n.push_str(&format!(
                    "; the function standing for host bridge(s) {} (00.0) is not in it, so the kernel's whitelist cannot be checked there and verdicts through them take it as not whitelisted",
                    unseen.join(", ")
                ));
            }
            notes.push(n);
        }
        if no_ext > 0 {
            notes.push(format!(
                "{no_ext} functions were captured without extended config space: their ACS state is unknown"
            ));
        }
        Ok(Topology {
            cpu: cpu_from_raw(&raw.cpu),
            origin: raw.origin.clone(),
            functions,
            by_bdf,
            host_bridges,
            notes,
            raw,
            snapshot: None,
            acs_assumption: AcsAssumption::None,
        })
    }
}
