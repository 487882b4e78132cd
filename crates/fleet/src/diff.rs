//! What differs between two captures of a machine (or two machines):
//! devices added, removed or replaced, ACS settings, links, P2P memory,
//! host bridges and the CPU rule, and every pair of the devices P2P is for
//! ([`crate::kinds::p2p_devices`]) whose verdict changed, with the change
//! that made it. Functions are matched by BDF.

use crate::kinds::p2p_devices;
use peerdma_mem::Bdf;
use peerdma_p2p::{calc_map_type_and_dist, explain, MapType, P2pIndex, Whitelisting};
use peerdma_pci::config::acs_bits_string;
use peerdma_pci::ids::PciIds;
use peerdma_pci::render::{describe, short_name};
use peerdma_pci::{Acs, FnId, Function, Link, Topology};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// Where it was read from.
    pub source: String,
    pub hostname: Option<String>,
    pub functions: usize,
}

/// A function, for lists of what was added or removed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Device {
    pub bdf: Bdf,
    /// The description-file name, else the BDF.
    pub name: String,
    /// Class, vendor and device names and IDs.
    pub description: String,
}

/// The same BDF holding another device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Replaced {
    pub bdf: Bdf,
    pub before: Device,
    pub after: Device,
}

/// A function whose upstream bridge changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Moved {
    pub bdf: Bdf,
    pub name: String,
    pub before: Option<Bdf>,
    pub after: Option<Bdf>,
}

/// A function whose ACS control changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcsChange {
    pub bdf: Bdf,
    pub name: String,
    pub port_type: String,
    /// `SV|RR|CR|UF`, `none` (the capability, no bits set), `no ACS
    /// capability`, or `unknown`.
    pub before: String,
    pub after: String,
    /// Whether it redirects peer requests upstream; `None` when unknown.
    pub redirect_before: Option<bool>,
    pub redirect_after: Option<bool>,
}

/// A link whose speed or width changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinkChange {
    pub bdf: Bdf,
    pub name: String,
    /// `Gen4 x16`, with `(capable of ...)` when degraded.
    pub before: String,
    pub after: String,
    pub degraded_before: bool,
    pub degraded_after: bool,
}

/// A function whose P2P memory changed (its size or whether published).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct P2pMemChange {
    pub bdf: Bdf,
    pub name: String,
    pub before: String,
    pub after: String,
}

/// A host bridge whose whitelist answers changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostBridgeChange {
    pub name: String,
    pub before: String,
    pub after: String,
}

/// The CPU, when the kernel's AMD rule or the processor changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuChange {
    pub before: String,
    pub after: String,
    pub p2p_before: bool,
    pub p2p_after: bool,
}

/// A verdict: map type and, where P2P works, distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PairVerdict {
    pub map_type: MapType,
    pub distance: Option<u32>,
}

impl std::fmt::Display for PairVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.distance {
            Some(d) => write!(f, "{} {d}", self.map_type),
            None => write!(f, "{}", self.map_type),
        }
    }
}

/// A pair whose verdict changed, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PairChange {
    pub provider: Bdf,
    pub provider_name: String,
    pub client: Bdf,
    pub client_name: String,
    pub before: PairVerdict,
    pub after: PairVerdict,
    /// The differences on the pair's path that changed the verdict (ACS
    /// redirect set or cleared, a bridge that is no longer common, a host
    /// bridge or CPU rule), else the new verdict's own reason.
    pub reasons: Vec<String>,
}

/// Everything that differs between `a` and `b`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diff {
    pub a: Side,
    pub b: Side,
    pub cpu: Option<CpuChange>,
    pub removed: Vec<Device>,
    pub added: Vec<Device>,
    pub replaced: Vec<Replaced>,
    pub moved: Vec<Moved>,
    pub acs: Vec<AcsChange>,
    pub links: Vec<LinkChange>,
    pub p2pmem: Vec<P2pMemChange>,
    pub host_bridges: Vec<HostBridgeChange>,
    /// Ordered pairs of P2P devices present on both sides.
    pub pairs_compared: usize,
    pub pairs: Vec<PairChange>,
    /// Caveats: captures whose ACS state is unknown.
    pub notes: Vec<String>,
}

fn side(t: &Topology) -> Side {
    Side {
        source: t.origin_label(),
        // The kernel's hostname before one is set is "(none)": not a name.
        hostname: t
            .origin()
            .hostname
            .clone()
            .filter(|h| !h.trim().is_empty() && h != "(none)"),
        functions: t.len(),
    }
}

fn device(ids: &PciIds, f: &Function) -> Device {
    Device {
        bdf: f.bdf,
        name: short_name(f),
        description: describe(ids, f),
    }
}

/// The ACS state in words.
pub fn acs_state(acs: &Acs) -> String {
    match acs {
        Acs::Absent => "no ACS capability".into(),
        Acs::Present { ctrl: 0, .. } => "none".into(),
        Acs::Present { ctrl, .. } => acs_bits_string(*ctrl),
        Acs::Unknown => "unknown".into(),
        Acs::Assumed { ctrl } => format!("unknown, assumed {}", acs_bits_string(*ctrl)),
    }
}

/// A link in words: `Gen4 x16`, `Gen3 x16 (capable of Gen4 x16)`, `down`.
pub fn link_state(link: Option<Link>) -> String {
    match link {
        None => "none".into(),
        Some(l) => match (l.current, l.max) {
            (Some(c), Some(m)) if l.degraded() => format!("{c} (capable of {m})"),
            (Some(c), _) => c.to_string(),
            (None, Some(m)) => format!("down (capable of {m})"),
            (None, None) => "unknown".into(),
        },
    }
}

fn whitelist_words(w: Whitelisting) -> String {
    match (w.same_host_bridge, w.across_host_bridges) {
        (true, true) => "whitelisted".into(),
        (true, false) => "whitelisted for peers below it only".into(),
        (false, true) => "whitelisted across host bridges only".into(),
        (false, false) => "not whitelisted".into(),
    }
}

fn cpu_words(t: &Topology) -> String {
    let c = t.cpu();
    let name = if c.model_name.is_empty() {
        c.vendor_id.clone()
    } else {
        c.model_name.clone()
    };
    format!("{name} (family {:#x})", c.family)
}

/// Compare two machines. `ids` names the devices added and removed.
pub fn diff(a: &Topology, b: &Topology, ids: &PciIds) -> Diff {
    let by_bdf_a: BTreeMap<Bdf, FnId> = a.functions().iter().map(|f| (f.bdf, f.id)).collect();
    let by_bdf_b: BTreeMap<Bdf, FnId> = b.functions().iter().map(|f| (f.bdf, f.id)).collect();
    let mut d = Diff {
        a: side(a),
        b: side(b),
        cpu: None,
        removed: Vec::new(),
        added: Vec::new(),
        replaced: Vec::new(),
        moved: Vec::new(),
        acs: Vec::new(),
        links: Vec::new(),
        p2pmem: Vec::new(),
        host_bridges: Vec::new(),
        pairs_compared: 0,
        pairs: Vec::new(),
        notes: Vec::new(),
    };
    let (ca, cb) = (cpu_words(a), cpu_words(b));
    let (pa, pb) = (a.cpu().supports_p2pdma(), b.cpu().supports_p2pdma());
    if ca != cb || pa != pb {
        d.cpu = Some(CpuChange {
            before: ca,
            after: cb,
            p2p_before: pa,
            p2p_after: pb,
        });
    }
    for (bdf, &ia) in &by_bdf_a {
        let fa = a.function(ia);
        let Some(&ib) = by_bdf_b.get(bdf) else {
            d.removed.push(device(ids, fa));
            continue;
        };
        let fb = b.function(ib);
        if (fa.vendor, fa.device, fa.class) != (fb.vendor, fb.device, fb.class) {
            d.replaced.push(Replaced {
                bdf: *bdf,
                before: device(ids, fa),
                after: device(ids, fb),
            });
        }
        let up_a = fa.upstream.map(|u| a.function(u).bdf);
        let up_b = fb.upstream.map(|u| b.function(u).bdf);
        if up_a != up_b {
            d.moved.push(Moved {
                bdf: *bdf,
                name: short_name(fb),
                before: up_a,
                after: up_b,
            });
        }
        if fa.acs != fb.acs
            && (fa.acs.ctrl() != fb.acs.ctrl() || fa.acs.redirects() != fb.acs.redirects())
        {
            d.acs.push(AcsChange {
                bdf: *bdf,
                name: short_name(fb),
                port_type: fb.port_type.name().into(),
                before: acs_state(&fa.acs),
                after: acs_state(&fb.acs),
                redirect_before: fa.acs.redirects(),
                redirect_after: fb.acs.redirects(),
            });
        }
        let (la, lb) = (link_state(fa.link), link_state(fb.link));
        if la != lb {
            d.links.push(LinkChange {
                bdf: *bdf,
                name: short_name(fb),
                before: la,
                after: lb,
                degraded_before: fa.link.is_some_and(|l| l.degraded()),
                degraded_after: fb.link.is_some_and(|l| l.degraded()),
            });
        }
        let mem = |f: &Function| match f.p2pmem {
            None => "none".to_string(),
            Some(p) => format!(
                "{}{}",
                peerdma_mem::format_size(p.size),
                if p.published {
                    ", published"
                } else {
                    ", not published"
                }
            ),
        };
        let (ma, mb) = (mem(fa), mem(fb));
        if ma != mb {
            d.p2pmem.push(P2pMemChange {
                bdf: *bdf,
                name: short_name(fb),
                before: ma,
                after: mb,
            });
        }
    }
    for (bdf, &ib) in &by_bdf_b {
        if !by_bdf_a.contains_key(bdf) {
            d.added.push(device(ids, b.function(ib)));
        }
    }
    let hb_a: HashMap<&str, Whitelisting> = a
        .host_bridges()
        .iter()
        .map(|h| (h.name.as_str(), Whitelisting::of(a, h.id)))
        .collect();
    for h in b.host_bridges() {
        if let Some(&wa) = hb_a.get(h.name.as_str()) {
            let wb = Whitelisting::of(b, h.id);
            if wa != wb {
                d.host_bridges.push(HostBridgeChange {
                    name: h.name.clone(),
                    before: whitelist_words(wa),
                    after: whitelist_words(wb),
                });
            }
        }
    }
    pair_changes(a, b, &by_bdf_a, &by_bdf_b, &mut d);
    for (t, which) in [(a, &d.a.source), (b, &d.b.source)] {
        let unknown = t
            .functions()
            .iter()
            .filter(|f| f.acs == Acs::Unknown)
            .count();
        if unknown > 0 {
            d.notes.push(format!(
                "{which}: the ACS state of {unknown} functions is unknown (captured without root); verdicts assume no redirect there"
            ));
        }
    }
    d
}

fn pair_changes(
    a: &Topology,
    b: &Topology,
    by_bdf_a: &BTreeMap<Bdf, FnId>,
    by_bdf_b: &BTreeMap<Bdf, FnId>,
    d: &mut Diff,
) {
    let (ia, ib) = (P2pIndex::new(a), P2pIndex::new(b));
    let peers_b: BTreeSet<Bdf> = p2p_devices(b).iter().map(|&f| b.function(f).bdf).collect();
    // Peers on both sides, as (id in a, id in b).
    let both: Vec<(FnId, FnId)> = p2p_devices(a)
        .into_iter()
        .filter_map(|fa| {
            let bdf = a.function(fa).bdf;
            peers_b.contains(&bdf).then(|| (fa, by_bdf_b[&bdf]))
        })
        .collect();
    let _ = by_bdf_a;
    let verdict = |(m, dist): (MapType, u32)| PairVerdict {
        map_type: m,
        distance: (m != MapType::NotSupported).then_some(dist),
    };
    for &(pa, pb) in &both {
        for &(ca, cb) in &both {
            if pa == ca {
                continue;
            }
            d.pairs_compared += 1;
            let before = verdict(ia.map_type_and_dist(pa, ca));
            let after = verdict(ib.map_type_and_dist(pb, cb));
            if before == after {
                continue;
            }
            d.pairs.push(PairChange {
                provider: b.function(pb).bdf,
                provider_name: short_name(b.function(pb)),
                client: b.function(cb).bdf,
                client_name: short_name(b.function(cb)),
                before,
                after,
                reasons: reasons(a, b, (pa, ca), (pb, cb), d),
            });
        }
    }
}

/// Why a pair's verdict changed: the differences on its path.
fn reasons(
    a: &Topology,
    b: &Topology,
    (pa, ca): (FnId, FnId),
    (pb, cb): (FnId, FnId),
    d: &Diff,
) -> Vec<String> {
    let va = calc_map_type_and_dist(a, pa, ca);
    let vb = calc_map_type_and_dist(b, pb, cb);
    let named = |t: &Topology, f: FnId| {
        let func = t.function(f);
        match &func.label {
            Some(l) => format!("{} ({l}, {})", func.bdf, func.port_type),
            None => format!("{} ({})", func.bdf, func.port_type),
        }
    };
    let mut out = Vec::new();
    let ra: BTreeMap<Bdf, FnId> = va
        .acs_redirects
        .iter()
        .map(|&f| (a.function(f).bdf, f))
        .collect();
    let rb: BTreeMap<Bdf, FnId> = vb
        .acs_redirects
        .iter()
        .map(|&f| (b.function(f).bdf, f))
        .collect();
    for (bdf, &f) in &rb {
        if !ra.contains_key(bdf) {
            out.push(format!(
                "ACS redirect is set on {} on their path",
                named(b, f)
            ));
        }
    }
    for (bdf, &f) in &ra {
        if !rb.contains_key(bdf) {
            out.push(format!(
                "ACS redirect is no longer set on {} on their path",
                named(a, f)
            ));
        }
    }
    match (va.common_upstream, vb.common_upstream) {
        (Some(x), Some(y)) if a.function(x).bdf != b.function(y).bdf => out.push(format!(
            "they now meet at {} (before: {})",
            named(b, y),
            named(a, x)
        )),
        (Some(x), None) => out.push(format!(
            "they no longer share an upstream bridge (before: {}), so the path crosses the host bridge",
            named(a, x)
        )),
        (None, Some(y)) => out.push(format!("they now share upstream bridge {}", named(b, y))),
        _ => {}
    }
    for m in &d.moved {
        if [pb, cb].iter().any(|&f| b.function(f).bdf == m.bdf) {
            let w = |u: Option<Bdf>| u.map_or("the root bus".to_string(), |u| u.to_string());
            out.push(format!(
                "{} moved below {} (before: {})",
                m.name,
                w(m.after),
                w(m.before)
            ));
        }
    }
    let through_host = |m: MapType| m != MapType::BusAddr;
    if through_host(va.map_type) || through_host(vb.map_type) {
        if va.cpu_supports_p2pdma != vb.cpu_supports_p2pdma {
            out.push(if vb.cpu_supports_p2pdma {
                "the CPU is now an AMD Zen, whose root complexes forward peer traffic".into()
            } else {
                "the CPU is no longer an AMD Zen, whose root complexes forward peer traffic".into()
            });
        }
        let hbs = [b.function(pb).host_bridge, b.function(cb).host_bridge];
        for h in &d.host_bridges {
            if hbs.iter().any(|&x| b.host_bridge(x).name == h.name) {
                out.push(format!(
                    "host bridge {}: {} (before: {})",
                    h.name, h.after, h.before
                ));
            }
        }
    }
    if out.is_empty() {
        if let Some(r) = explain(b, pb, cb).reasons.into_iter().next() {
            out.push(format!("now: {r}"));
        }
    }
    out
}

/// Reasons, and the pairs (names, change) they explain.
type PairGroup = (Vec<String>, Vec<(String, String)>);

impl Diff {
    /// Whether nothing differs.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none()
            && self.removed.is_empty()
            && self.added.is_empty()
            && self.replaced.is_empty()
            && self.moved.is_empty()
            && self.acs.is_empty()
            && self.links.is_empty()
            && self.p2pmem.is_empty()
            && self.host_bridges.is_empty()
            && self.pairs.is_empty()
    }

    /// Whether a difference changes a verdict or the devices present (not
    /// only links or P2P memory).
    pub fn changes_verdicts_or_devices(&self) -> bool {
        !self.pairs.is_empty()
            || !self.removed.is_empty()
            || !self.added.is_empty()
            || !self.replaced.is_empty()
    }

    /// The differences in a few short phrases, most telling first (for a
    /// fleet's odd ones out).
    pub fn summary(&self) -> Vec<String> {
        let mut s = Vec::new();
        for r in &self.removed {
            s.push(format!("lacks {}: {}", dev_words(r), r.description));
        }
        for r in &self.added {
            s.push(format!("also has {}: {}", dev_words(r), r.description));
        }
        for r in &self.replaced {
            s.push(format!(
                "{}: {} instead of {}",
                r.bdf, r.after.description, r.before.description
            ));
        }
        for m in &self.moved {
            s.push(format!(
                "{} below {} instead of {}",
                named(&m.name, m.bdf),
                opt(m.after),
                opt(m.before)
            ));
        }
        for a in &self.acs {
            s.push(format!(
                "ACS on {}: {} instead of {}",
                named_as(&a.name, a.bdf, &a.port_type),
                a.after,
                a.before
            ));
        }
        for h in &self.host_bridges {
            s.push(format!(
                "host bridge {} {} instead of {}",
                h.name, h.after, h.before
            ));
        }
        if let Some(c) = &self.cpu {
            s.push(format!("CPU {} instead of {}", c.after, c.before));
        }
        for l in &self.links {
            s.push(format!(
                "link of {}: {} instead of {}",
                named(&l.name, l.bdf),
                l.after,
                l.before
            ));
        }
        for p in &self.p2pmem {
            s.push(format!(
                "P2P memory of {}: {} instead of {}",
                named(&p.name, p.bdf),
                p.after,
                p.before
            ));
        }
        if !self.pairs.is_empty() {
            s.push(format!(
                "{} of {} pairs' verdicts differ",
                self.pairs.len(),
                self.pairs_compared
            ));
        }
        s
    }

    /// The comparison for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let who = |x: &Side| match &x.hostname {
            Some(h) => format!("{} (host {h})", x.source),
            None => x.source.clone(),
        };
        let _ = writeln!(
            s,
            "peerdma diff\n  A: {}\n  B: {}",
            who(&self.a),
            who(&self.b)
        );
        if self.is_empty() {
            let _ = writeln!(
                s,
                "\nNo differences: the same devices, ACS settings, links, P2P memory and verdicts ({} pairs compared).",
                self.pairs_compared
            );
        }
        if let Some(c) = &self.cpu {
            let _ = writeln!(s, "\nCPU: {} -> {}", c.before, c.after);
            if c.p2p_before != c.p2p_after {
                let _ = writeln!(
                    s,
                    "  the kernel's AMD Zen rule (root complexes forward peer traffic) {}",
                    if c.p2p_after {
                        "now applies"
                    } else {
                        "no longer applies"
                    }
                );
            }
        }
        let section = |s: &mut String, title: &str, lines: Vec<String>| {
            if !lines.is_empty() {
                let _ = writeln!(s, "\n{title} ({}):", lines.len());
                for l in lines {
                    let _ = writeln!(s, "  {l}");
                }
            }
        };
        section(
            &mut s,
            "devices in A only",
            self.removed
                .iter()
                .map(|r| format!("- {} {}", named(&r.name, r.bdf), r.description))
                .collect(),
        );
        section(
            &mut s,
            "devices in B only",
            self.added
                .iter()
                .map(|r| format!("+ {} {}", named(&r.name, r.bdf), r.description))
                .collect(),
        );
        section(
            &mut s,
            "devices replaced",
            self.replaced
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} -> {}",
                        r.bdf, r.before.description, r.after.description
                    )
                })
                .collect(),
        );
        section(
            &mut s,
            "devices moved",
            self.moved
                .iter()
                .map(|m| {
                    format!(
                        "{}: below {} -> below {}",
                        named(&m.name, m.bdf),
                        opt(m.before),
                        opt(m.after)
                    )
                })
                .collect(),
        );
        section(
            &mut s,
            "ACS",
            self.acs
                .iter()
                .map(|a| {
                    let r = match (a.redirect_before, a.redirect_after) {
                        (Some(false) | None, Some(true)) => {
                            ": now redirects peer requests upstream"
                        }
                        (Some(true), Some(false) | None) => ": no longer redirects",
                        _ => "",
                    };
                    format!(
                        "{}: {} -> {}{r}",
                        named_as(&a.name, a.bdf, &a.port_type),
                        a.before,
                        a.after
                    )
                })
                .collect(),
        );
        section(
            &mut s,
            "links",
            self.links
                .iter()
                .map(|l| {
                    let note = match (l.degraded_before, l.degraded_after) {
                        (false, true) => ": now below what it can do",
                        (true, false) => ": no longer degraded",
                        _ => "",
                    };
                    format!(
                        "{}: {} -> {}{note}",
                        named(&l.name, l.bdf),
                        l.before,
                        l.after
                    )
                })
                .collect(),
        );
        section(
            &mut s,
            "P2P memory",
            self.p2pmem
                .iter()
                .map(|p| format!("{}: {} -> {}", named(&p.name, p.bdf), p.before, p.after))
                .collect(),
        );
        section(
            &mut s,
            "host bridges",
            self.host_bridges
                .iter()
                .map(|h| format!("{}: {} -> {}", h.name, h.before, h.after))
                .collect(),
        );
        if !self.pairs.is_empty() {
            let _ = writeln!(
                s,
                "\nverdicts: {} of {} pairs changed (provider -> client: A -> B)",
                self.pairs.len(),
                self.pairs_compared
            );
            for (reasons, lines) in self.pair_groups() {
                let _ = writeln!(s, "  because {}:", reasons.join("; "));
                let w = lines
                    .iter()
                    .map(|(n, _)| n.chars().count())
                    .max()
                    .unwrap_or(0);
                for (names, change) in lines {
                    let pad = w - names.chars().count();
                    let _ = writeln!(s, "    {names}{}  {change}", " ".repeat(pad));
                }
            }
        } else if !self.is_empty() {
            let _ = writeln!(
                s,
                "\nverdicts: none of {} pairs changed",
                self.pairs_compared
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// Changed pairs grouped by their reasons; a pair whose two directions
    /// changed alike is one line `a <-> b`.
    fn pair_groups(&self) -> Vec<PairGroup> {
        let mut groups: Vec<PairGroup> = Vec::new();
        let key = |p: &PairChange| (p.provider, p.client);
        let index: HashMap<(Bdf, Bdf), &PairChange> =
            self.pairs.iter().map(|p| (key(p), p)).collect();
        for p in &self.pairs {
            let reverse = index.get(&(p.client, p.provider));
            let same = reverse.is_some_and(|r| {
                r.before == p.before && r.after == p.after && r.reasons == p.reasons
            });
            if same && p.provider > p.client {
                continue;
            }
            let names = if same {
                format!("{} <-> {}", p.provider_name, p.client_name)
            } else {
                format!("{} -> {}", p.provider_name, p.client_name)
            };
            let line = (names, format!("{} -> {}", p.before, p.after));
            match groups.iter_mut().find(|(r, _)| *r == p.reasons) {
                Some(g) => g.1.push(line),
                None => groups.push((p.reasons.clone(), vec![line])),
            }
        }
        groups
    }
}

fn named(name: &str, bdf: Bdf) -> String {
    if name == bdf.to_string() || name == bdf.short() {
        bdf.to_string()
    } else {
        format!("{bdf} ({name})")
    }
}

/// `bdf (name, what)`, or `bdf (what)` when the name is the BDF.
fn named_as(name: &str, bdf: Bdf, what: &str) -> String {
    if name == bdf.to_string() || name == bdf.short() {
        format!("{bdf} ({what})")
    } else {
        format!("{bdf} ({name}, {what})")
    }
}

fn dev_words(d: &Device) -> String {
    named(&d.name, d.bdf)
}

fn opt(b: Option<Bdf>) -> String {
    b.map_or("the root bus".into(), |b| b.to_string())
}
