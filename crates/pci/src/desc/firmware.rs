//! What firmware and link training would do to the described tree: number
//! the buses depth first, give each device its device/function number,
//! train the links, and assign BAR addresses from per-host-bridge windows.

use super::schema::{size_of, DescFile, Kind};
use super::tree::Tree;
use super::Ctx;
use crate::error::Result;
use crate::model::LinkState;
use peerdma_mem::Bdf;
use std::collections::{HashMap, HashSet};

/// Where enumeration put a device.
#[derive(Clone, Copy, Default)]
pub(super) struct Placement {
    pub bus: u8,
    pub devfn: u8,
    /// Secondary and subordinate bus of a bridge.
    pub secondary: u8,
    pub subordinate: u8,
}

/// The numbers enumeration gave the machine.
pub(super) struct Enumeration {
    /// Per device.
    pub place: Vec<Placement>,
    /// (domain, root bus) per host bridge.
    pub host_bridges: Vec<(u32, u8)>,
}

impl Enumeration {
    pub fn bdf(&self, tree: &Tree, i: usize) -> Bdf {
        let p = self.place[i];
        Bdf::from_devfn(self.host_bridges[tree.nodes[i].hb].0, p.bus, p.devfn)
    }
}

/// A memory or I/O BAR with the bus address firmware gave it.
#[derive(Clone, Copy)]
pub(super) struct BarAddr {
    pub bar: u8,
    /// Bus address (what the BAR register holds).
    pub addr: u64,
    pub size: u64,
    pub is64: bool,
    pub prefetch: bool,
    pub io: bool,
}

/// Number buses and devices, host bridge by host bridge.
pub(super) fn enumerate(file: &DescFile, tree: &Tree, ctx: &Ctx) -> Result<Enumeration> {
    let mut place = vec![Placement::default(); tree.nodes.len()];
    let mut used_buses: HashMap<u32, HashSet<u8>> = HashMap::new();
    let mut next_bus: HashMap<u32, u16> = HashMap::new();
    let mut hb_info: Vec<(u32, u8)> = Vec::new();
    for (h, shb) in file.host_bridges.iter().enumerate() {
        let hb = shb.get_ref();
        let line = ctx.line(shb.span().start);
        let domain = hb.domain.unwrap_or(0);
        let nb = next_bus.entry(domain).or_insert(0);
        let bus = match hb.bus {
            Some(b) => b,
            None => u8::try_from(*nb).map_err(|_| {
                ctx.err(
                    Some(line),
                    format!(
                        "host bridge '{}': no bus numbers left in domain {domain:04x}",
                        hb.name
                    ),
                )
            })?,
        };
        if !used_buses.entry(domain).or_default().insert(bus) {
            return Err(ctx.err(
                Some(line),
                format!(
                    "host bridge '{}': bus {bus:02x} of domain {domain:04x} is already in use",
                    hb.name
                ),
            ));
        }
        hb_info.push((domain, bus));
        let mut walk = BusWalk {
            file,
            tree,
            ctx,
            place: &mut place,
            domain,
            cur: u16::from(bus),
            used: &mut used_buses,
        };
        walk.assign(&tree.roots[h], bus)?;
        let cur = walk.cur;
        let nb = next_bus.entry(domain).or_insert(0);
        *nb = (*nb).max(cur + 1);
    }
    let e = Enumeration {
        place,
        host_bridges: hb_info,
    };

    // BDF uniqueness is guaranteed by slot assignment; check explicit clashes.
    let mut seen: HashMap<Bdf, usize> = HashMap::new();
    for (i, n) in tree.nodes.iter().enumerate() {
        let bdf = e.bdf(tree, i);
        if let Some(o) = seen.insert(bdf, i) {
            return Err(ctx.err(
                Some(n.line),
                format!(
                    "devices '{}' and '{}' are both at {bdf}",
                    file.devices[o].get_ref().name,
                    file.devices[i].get_ref().name
                ),
            ));
        }
    }
    Ok(e)
}

/// Depth-first bus numbering of one host bridge's hierarchy.
struct BusWalk<'a> {
    file: &'a DescFile,
    tree: &'a Tree,
    ctx: &'a Ctx<'a>,
    place: &'a mut [Placement],
    domain: u32,
    /// The highest bus number given so far.
    cur: u16,
    used: &'a mut HashMap<u32, HashSet<u8>>,
}

impl BusWalk<'_> {
    /// Give `members` (the devices on `bus`) their device/function numbers,
    /// then number the buses below each bridge among them.
    fn assign(&mut self, members: &[usize], bus: u8) -> Result<()> {
        let (file, tree, ctx) = (self.file, self.tree, self.ctx);
        let err = |line: usize, msg: String| ctx.err(Some(line), msg);
        let nodes = &tree.nodes;
        // Explicit numbers first, then fill in the rest.
        let mut taken: HashSet<u8> = HashSet::new();
        let parent_kind = members
            .first()
            .and_then(|&m| nodes[m].parent)
            .map(|p| nodes[p].kind);
        let below_port = parent_kind.is_some_and(Kind::is_downstream_port);
        for &m in members {
            let d = file.devices[m].get_ref();
            if nodes[m].physfn.is_some() {
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
                self.place[m].devfn = devfn;
            } else if d.function.is_some() && !below_port {
                return Err(err(
                    nodes[m].line,
                    format!("device '{}': give a slot with the function", d.name),
                ));
            }
        }
        for &m in members {
            let d = file.devices[m].get_ref();
            if d.slot.is_some() || nodes[m].physfn.is_some() {
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
            self.place[m].devfn = devfn;
        }
        // Virtual functions: the next free routing IDs after their physical function.
        for &m in members {
            let Some(pf) = nodes[m].physfn else { continue };
            let pfi = if members.contains(&pf) { pf } else { m };
            let start = self.place[pfi].devfn;
            let devfn = (u16::from(start) + 1..=255)
                .map(|v| v as u8)
                .find(|v| !taken.contains(v))
                .ok_or_else(|| {
                    err(
                        nodes[m].line,
                        format!(
                            "device '{}': no routing ID left for the virtual function",
                            file.devices[m].get_ref().name
                        ),
                    )
                })?;
            taken.insert(devfn);
            self.place[m].devfn = devfn;
        }
        let mut sorted: Vec<usize> = members.to_vec();
        sorted.sort_by_key(|&m| self.place[m].devfn);
        for &m in &sorted {
            self.place[m].bus = bus;
        }
        for &m in &sorted {
            if !nodes[m].kind.is_bridge() {
                continue;
            }
            self.cur += 1;
            let line = nodes[m].line;
            let domain = self.domain;
            let sec = u8::try_from(self.cur).map_err(|_| {
                err(
                    line,
                    format!("domain {domain:04x} ran out of bus numbers (more than 256 buses)"),
                )
            })?;
            if !self.used.entry(domain).or_default().insert(sec) {
                return Err(err(
                    line,
                    format!(
                        "bus {sec:02x} of domain {domain:04x} is already used by another host bridge"
                    ),
                ));
            }
            self.place[m].secondary = sec;
            self.assign(&tree.children[m], sec)?;
            self.place[m].subordinate = self.cur as u8;
        }
        Ok(())
    }
}

/// Each device's trained link: as written, else its port's, else the
/// file's default; a downstream port copies the link of the device below it.
pub(super) fn train_links(
    file: &DescFile,
    tree: &Tree,
    default_link: LinkState,
) -> Vec<Option<LinkState>> {
    let nodes = &tree.nodes;
    let mut links: Vec<Option<LinkState>> = nodes.iter().map(|n| n.link).collect();
    for i in 0..nodes.len() {
        if !nodes[i].kind.has_link() || links[i].is_some() {
            continue;
        }
        let from_parent = nodes[i]
            .parent
            .filter(|&p| nodes[p].kind.is_downstream_port())
            .and_then(|p| links[p]);
        links[i] = Some(from_parent.unwrap_or(default_link));
    }
    for i in 0..nodes.len() {
        if nodes[i].kind.is_downstream_port() && file.devices[i].get_ref().link.is_none() {
            if let Some(&c) = tree.children[i]
                .iter()
                .find(|&&c| nodes[c].physfn.is_none())
            {
                links[i] = links[c];
            }
        }
    }
    links
}

/// BAR addresses: 64-bit BARs from a window per host bridge, 32-bit and I/O
/// BARs below 4 GiB, each naturally aligned, in depth-first order.
pub(super) fn assign_bars(file: &DescFile, tree: &Tree, ctx: &Ctx) -> Result<Vec<Vec<BarAddr>>> {
    let nodes = &tree.nodes;
    let mut out: Vec<Vec<BarAddr>> = vec![Vec::new(); nodes.len()];
    let mut next32: u64 = 0x8000_0000;
    let mut next_io: u64 = 0x1000;
    let mut next64: Vec<u64> = (0..file.host_bridges.len())
        .map(|h| (h as u64 + 1) << 42)
        .collect();
    for i in tree.dfs_order() {
        let d = file.devices[i].get_ref();
        let err = |msg: String| ctx.err(Some(nodes[i].line), msg);
        let max_bars = if nodes[i].kind.is_bridge() { 2 } else { 6 };
        let mut taken = [false; 6];
        for b in &d.bars {
            let size = size_of(&b.size)
                .map_err(|e| err(format!("device '{}' BAR {}: {e}", d.name, b.bar)))?;
            let bits = b.bits.unwrap_or(if b.io { 32 } else { 64 });
            let is64 = match bits {
                32 => false,
                64 if !b.io => true,
                _ => {
                    return Err(err(format!(
                        "device '{}' BAR {}: bits must be 32 or 64 (I/O BARs are 32)",
                        d.name, b.bar
                    )))
                }
            };
            let slots = if is64 { 2 } else { 1 };
            let bi = usize::from(b.bar);
            if bi + slots > max_bars {
                return Err(err(format!(
                    "device '{}' BAR {}: a {} has BARs 0-{} (a 64-bit BAR takes two)",
                    d.name,
                    b.bar,
                    nodes[i].kind.name(),
                    max_bars - 1
                )));
            }
            if taken[bi] || (is64 && taken[bi + 1]) {
                return Err(err(format!(
                    "device '{}' BAR {} overlaps another BAR's registers",
                    d.name, b.bar
                )));
            }
            taken[bi] = true;
            if is64 {
                taken[bi + 1] = true;
            }
            let min = if b.io { 4 } else { 16 };
            if !size.is_power_of_two() || size < min {
                return Err(err(format!(
                    "device '{}' BAR {}: size {size} is not a power of two of at least {min} bytes",
                    d.name, b.bar
                )));
            }
            let (cursor, limit, space) = if b.io {
                (&mut next_io, 0x1_0000, "I/O")
            } else if is64 {
                (&mut next64[nodes[i].hb], u64::MAX, "64-bit")
            } else {
                (&mut next32, 0xfec0_0000, "32-bit")
            };
            let addr = cursor.div_ceil(size).checked_mul(size);
            let Some(addr) = addr.filter(|a| a.checked_add(size).is_some_and(|e| e <= limit))
            else {
                return Err(err(format!(
                    "device '{}' BAR {}: no room left in the {space} address space",
                    d.name, b.bar,
                )));
            };
            *cursor = addr + size;
            out[i].push(BarAddr {
                bar: b.bar,
                addr,
                size,
                is64,
                prefetch: b.prefetch.unwrap_or(is64),
                io: b.io,
            });
        }
    }
    Ok(out)
}
