//! The report: one self-contained HTML file about a machine, the one an
//! engineer attaches to a support ticket. The machine and where it was
//! read, what stands out (ACS redirect, degraded links, unknowns), the
//! picture, the tree, the matrix of verdicts, every pair that cannot do
//! P2P with the kernel's reasons and the fixes that would change it, the
//! probe results, and the snapshot to replay it elsewhere.
//!
//! Self-contained: CSS inline, the picture inline SVG, no script, no font,
//! no image or link that needs a network. Every string from the machine is
//! escaped by the template engine (maud escapes whatever it interpolates);
//! the one piece of markup taken as it is, Graphviz's SVG, is made from a
//! graph whose labels [`peerdma_p2p::dot`] escaped.

use crate::probe::ProbeEntry;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use peerdma_mem::format_size;
use peerdma_p2p::dot::{matrix_functions, palette};
use peerdma_p2p::{explain, link_class, Explanation, FixKind, MapType, Matrix};
use peerdma_pci::ids::PciIds;
use peerdma_pci::render::short_name;
use peerdma_pci::{FnId, Topology};

/// The picture of the machine, or why there is none.
#[derive(Clone, Debug)]
pub enum Picture {
    /// An SVG document (Graphviz's output).
    Svg(String),
    /// Why it could not be drawn (Graphviz missing, say).
    Unavailable(String),
}

/// Everything the report shows, gathered by the caller.
pub struct Report<'a> {
    pub topo: &'a Topology,
    pub ids: &'a PciIds,
    pub picture: Picture,
    /// `None` when probes were not asked for.
    pub probes: Option<Vec<ProbeEntry>>,
    /// Who made the report and when, for the header (`peerdma 0.1.0, ...`).
    pub generated_by: String,
    /// Put every function in the matrix, not only the DMA endpoints.
    pub all_in_matrix: bool,
    /// At most this many pairs are explained in full (each explanation
    /// tries the machine's free slots); the rest are counted.
    pub max_explained: usize,
}

impl<'a> Report<'a> {
    /// A report with no probes, the DMA endpoints in the matrix, and up to
    /// 2,000 pairs explained.
    pub fn new(topo: &'a Topology, ids: &'a PciIds, picture: Picture) -> Report<'a> {
        Report {
            topo,
            ids,
            picture,
            probes: None,
            generated_by: format!("peerdma {}", env!("CARGO_PKG_VERSION")),
            all_in_matrix: false,
            max_explained: 2000,
        }
    }

    /// The page.
    pub fn render(&self) -> String {
        let t = self.topo;
        let fns = matrix_functions(t, self.all_in_matrix);
        let m = Matrix::compute(t);
        let mut counts = [0usize; 3];
        let mut not_supported = Vec::new();
        let mut via_host_bridge = Vec::new();
        for &a in &fns {
            for &b in &fns {
                if a == b {
                    continue;
                }
                match m.get(a, b).0 {
                    MapType::BusAddr => counts[0] += 1,
                    MapType::ThruHostBridge => {
                        counts[1] += 1;
                        via_host_bridge.push((a, b));
                    }
                    _ => {
                        counts[2] += 1;
                        not_supported.push((a, b));
                    }
                }
            }
        }
        let title = machine_name(t);
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { "peerdma report: " (title) }
                    style { (PreEscaped(CSS)) (PreEscaped(verdict_css())) }
                }
                body {
                    header {
                        h1 { "peerdma report: " (title) }
                        (self.machine_table())
                    }
                    nav {
                        a href="#summary" { "Summary" } " · "
                        a href="#picture" { "Picture" } " · "
                        a href="#tree" { "Tree" } " · "
                        a href="#matrix" { "Matrix" } " · "
                        a href="#not-supported" { "Not supported" } " · "
                        a href="#host-bridge" { "ACS redirect" } " · "
                        a href="#probes" { "Probes" } " · "
                        a href="#snapshot" { "Snapshot" }
                    }
                    (self.summary(&fns, counts))
                    section id="picture" {
                        h2 { "The machine" }
                        @match &self.picture {
                            Picture::Svg(svg) => div class="picture" { (PreEscaped(crate::graphviz::inline(svg))) },
                            Picture::Unavailable(why) => p class="note" { "No picture: " (why) ". The tree and the matrix below have the same facts." },
                        }
                    }
                    section id="tree" {
                        h2 { "PCI tree" }
                        pre class="tree" { (peerdma_pci::render::tree(t, self.ids)) }
                    }
                    (self.matrix(&m, &fns))
                    (self.explained("not-supported", "Pairs that cannot do P2P",
                        "Each pair below bounces through host memory (two DMAs) when they exchange data. The reasons are the kernel's rule applied to this machine; each fix was checked by applying it to a copy of the machine and deciding again.",
                        &not_supported, false))
                    (self.explained("host-bridge", "Pairs through the host bridge because of ACS redirect",
                        "These pairs sit below a common switch and can do P2P, but ACS redirect sends their requests up through the root complex (and the IOMMU, when one translates). Clearing it routes them across the switch by PCI bus address.",
                        &via_host_bridge, true))
                    (self.probes())
                    section id="snapshot" {
                        h2 { "Snapshot" }
                        p { "The capture this report was made from. Saved as a file, "
                            code { "peerdma topo --snapshot FILE" } " (or any peerdma command with "
                            code { "--snapshot FILE" } ") replays it on any machine." }
                        details {
                            summary { "snapshot.json (" (format_size(peerdma_pci::snapshot_json(t.raw()).len() as u64)) ")" }
                            pre class="snapshot" { (peerdma_pci::snapshot_json(t.raw())) }
                        }
                    }
                    footer { "Made by " (self.generated_by) ". Verdicts are the Linux kernel's own rule (drivers/pci/p2pdma.c, calc_map_type_and_dist), applied by peerdma." }
                }
            }
        };
        page.into_string()
    }

    fn machine_table(&self) -> Markup {
        let t = self.topo;
        let o = t.origin();
        let c = t.cpu();
        let cpu = if c.model_name.is_empty() {
            c.vendor_id.clone()
        } else {
            c.model_name.clone()
        };
        html! {
            table class="facts" {
                tr { th { "Read from" } td { (t.origin_label()) } }
                @if let Some(h) = &o.hostname { tr { th { "Host name" } td { (h) } } }
                @if let Some(k) = &o.kernel { tr { th { "Kernel" } td { (k) } } }
                tr { th { "CPU" } td { (cpu) " (" (if c.vendor_id.is_empty() { "unknown vendor" } else { &c.vendor_id }) ", family " (format!("{:#x}", c.family)) ")" } }
                tr { th { "Host bridge rule" } td {
                    @if c.supports_p2pdma() { "AMD Zen: the root complexes forward peer traffic" }
                    @else { "not an AMD Zen: P2P across a host bridge needs a host bridge in the kernel's whitelist" }
                } }
                tr { th { "PCI functions" } td { (t.len()) " below " (t.host_bridges().len()) " host bridge(s)" } }
                tr { th { "Device names" } td { (self.ids.describe_source()) } }
            }
        }
    }

    fn summary(&self, fns: &[FnId], counts: [usize; 3]) -> Markup {
        let t = self.topo;
        let redirecting: Vec<&peerdma_pci::Function> = t
            .functions()
            .iter()
            .filter(|f| f.acs.redirects() == Some(true))
            .collect();
        let degraded: Vec<&peerdma_pci::Function> = t
            .functions()
            .iter()
            .filter(|f| f.link.is_some_and(|l| l.degraded()))
            .collect();
        let pairs = counts.iter().sum::<usize>();
        html! {
            section id="summary" {
                h2 { "Summary" }
                p { (fns.len()) " " (if self.all_in_matrix { "functions" } else { "DMA endpoints" }) ", " (pairs) " ordered pairs:" }
                ul class="counts" {
                    li { span class="chip bus" { (counts[0]) } " P2P by PCI bus address (across a switch)" }
                    li { span class="chip hb" { (counts[1]) } " P2P through the host bridge" }
                    li { span class="chip ns" { (counts[2]) } " not supported: bounced through host memory" }
                }
                @if redirecting.is_empty() {
                    p { "No function has ACS redirect set." }
                } @else {
                    p { (redirecting.len()) " function(s) with ACS redirect (P2P Request/Completion Redirect or Egress Control): peer requests below them go up to the root complex." }
                    table class="list" {
                        tr { th { "function" } th { "type" } th { "ACS control" } }
                        @for f in &redirecting {
                            tr { td { (name(f)) } td { (f.port_type.name()) } td { code { (peerdma_pci::config::acs_bits_string(f.acs.ctrl().unwrap_or(0))) } } }
                        }
                    }
                }
                @if !degraded.is_empty() {
                    p { (degraded.len()) " link(s) trained below what they can do:" }
                    table class="list" {
                        tr { th { "function" } th { "now" } th { "capable of" } }
                        @for f in &degraded {
                            @if let Some(l) = f.link {
                                tr { td { (name(f)) } td class="bad" { (opt(l.current)) } td { (opt(l.max)) } }
                            }
                        }
                    }
                }
                @if !t.notes().is_empty() {
                    p { "About the capture:" }
                    ul class="notes" { @for n in t.notes() { li { (n) } } }
                }
            }
        }
    }

    fn matrix(&self, m: &Matrix, fns: &[FnId]) -> Markup {
        let t = self.topo;
        html! {
            section id="matrix" {
                h2 { "P2P matrix" }
                @if fns.len() < 2 {
                    p { "Fewer than two " (if self.all_in_matrix { "functions" } else { "DMA endpoints" }) ": no pair to decide." }
                } @else {
                    p { "Row: the provider, whose memory is accessed; column: the client, doing the DMA. "
                        "B" i { "n" } ": by PCI bus address; H" i { "n" } ": through the host bridge; --: not supported; "
                        i { "n" } " is the kernel's distance. PIX one switch or bridge, PXB several switches, PHB the host bridge, NODE between host bridges of one NUMA node, SYS between NUMA nodes." }
                    div class="scroll" {
                        table class="matrix" {
                            tr { th {} @for &b in fns { th class="col" { (short_name(t.function(b))) } } }
                            @for &a in fns {
                                tr {
                                    th class="row" { (short_name(t.function(a))) }
                                    @for &b in fns {
                                        (cell(t, m, a, b))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// A section of pairs, each with its explanation. With `acs_only`, only
    /// the pairs that an ACS change (a kernel parameter, or setpci) would
    /// move to bus address.
    fn explained(
        &self,
        id: &str,
        heading: &str,
        intro: &str,
        pairs: &[(FnId, FnId)],
        acs_only: bool,
    ) -> Markup {
        let t = self.topo;
        let mut shown: Vec<Explanation> = Vec::new();
        let mut left = 0usize;
        for &(a, b) in pairs {
            if shown.len() >= self.max_explained {
                left += 1;
                continue;
            }
            let e = explain(t, a, b);
            let acs_fix = |f: &peerdma_p2p::Fix| {
                matches!(f.kind, FixKind::KernelParameter | FixKind::AcsChange)
                    && f.gives == MapType::BusAddr
            };
            if !acs_only || e.fixes.iter().any(acs_fix) {
                shown.push(e);
            }
        }
        html! {
            section id=(id) {
                h2 { (heading) " (" (shown.len()) (if left > 0 { "+" } else { "" }) ")" }
                @if shown.is_empty() {
                    p { "None." }
                } @else {
                    p { (intro) }
                    @for (i, e) in shown.iter().enumerate() {
                        (explanation(t, e, i == 0))
                    }
                    @if left > 0 {
                        p class="note" { (left) " more pair(s) are not explained here; " code { "peerdma check PROVIDER CLIENT" } " explains any pair." }
                    }
                }
            }
        }
    }

    fn probes(&self) -> Markup {
        html! {
            section id="probes" {
                h2 { "Probes" }
                @match &self.probes {
                    None => p { "No probe was asked for. On the machine itself, as root, "
                        code { "peerdma report --live --probe PROVIDER,CLIENT" } " moves real bytes between a drive and a provider's P2P memory and checks them ("
                        code { "peerdma probe --help" } " says what it overwrites)." },
                    Some(list) => {
                        @for entry in list { (crate::probe::render(entry)) }
                    }
                }
            }
        }
    }
}

fn machine_name(t: &Topology) -> String {
    let o = t.origin();
    o.name
        .clone()
        .or_else(|| o.hostname.clone())
        .unwrap_or_else(|| t.origin_label())
}

fn name(f: &peerdma_pci::Function) -> String {
    match &f.label {
        Some(l) => format!("{} ({l})", f.bdf),
        None => f.bdf.to_string(),
    }
}

fn opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "unknown".into(), |v| v.to_string())
}

fn cell(t: &Topology, m: &Matrix, a: FnId, b: FnId) -> Markup {
    if a == b {
        return html! { td class="same" { "X" } };
    }
    let (map, dist) = m.get(a, b);
    let (class, text) = match map {
        MapType::BusAddr => ("bus", format!("B{dist}")),
        MapType::ThruHostBridge => ("hb", format!("H{dist}")),
        _ => ("ns", "--".to_string()),
    };
    let lc = link_class(t, a, b);
    let tip = format!(
        "{} -> {}: {} ({}), {lc}",
        short_name(t.function(a)),
        short_name(t.function(b)),
        map.as_str(),
        map.describe()
    );
    html! { td class=(class) title=(tip) { (text) " " small { (lc.as_str()) } } }
}

/// One pair, folded (the first of a section open, to show the way).
fn explanation(t: &Topology, e: &Explanation, open: bool) -> Markup {
    let fname = |bdf: peerdma_pci::Bdf| {
        t.find(bdf)
            .map(|f| name(t.function(f)))
            .unwrap_or_else(|| bdf.to_string())
    };
    let verdict = match e.distance {
        Some(d) => format!("{}, distance {d}", e.map_type.describe()),
        None => e.map_type.describe().to_string(),
    };
    let class = match e.map_type {
        MapType::BusAddr => "bus",
        MapType::ThruHostBridge => "hb",
        _ => "ns",
    };
    html! {
        details class="pair" open[open] {
            summary {
                span class={"chip " (class)} { (e.map_type.as_str()) } " "
                b { (fname(e.provider)) } " → " b { (fname(e.client)) }
                @if !e.fixes.is_empty() { " · " (e.fixes.len()) " fix(es)" }
            }
            p { (verdict) "; " (e.link_class.as_str()) ": " (e.link_class.describe()) }
            p { "Path: " (e.path.join(" → ")) }
            h4 { "Why" }
            ul { @for r in &e.reasons { li { (r) } } }
            @if !e.acs_redirects.is_empty() {
                h4 { "ACS redirect on the path" }
                ul { @for a in &e.acs_redirects { li { (fname(a.bdf)) " (" (a.port_type.name()) "): ACS control " code { (a.ctrl) } } } }
            }
            h4 { "Fixes" }
            @if e.fixes.is_empty() {
                p { "None that this machine allows." }
            } @else {
                ol {
                    @for f in &e.fixes {
                        li {
                            (f.summary) " → "
                            span class={"chip " (match f.gives { MapType::BusAddr => "bus", MapType::ThruHostBridge => "hb", _ => "ns" })} {
                                (f.gives.as_str()) @if let Some(d) = f.distance { ", distance " (d) }
                            }
                            @for c in &f.commands { pre class="cmd" { (c) } }
                            @if !f.notes.is_empty() { ul class="notes" { @for n in &f.notes { li { (n) } } } }
                        }
                    }
                }
            }
            @if !e.caveats.is_empty() {
                h4 { "Notes" }
                ul class="notes" { @for c in &e.caveats { li { (c) } } }
            }
        }
    }
}

const CSS: &str = concat!(
    "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;font-size:14px;color:#1d232b;margin:0 auto;padding:16px 24px;max-width:1600px;background:#fff}",
    "h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;border-bottom:1px solid #d5dbe3;padding-bottom:4px;margin-top:28px}h4{margin:10px 0 4px}",
    "nav{margin:10px 0;font-size:13px}nav a{color:#2a5d9f;text-decoration:none}",
    "table.facts th{text-align:left;padding:2px 14px 2px 0;color:#555;font-weight:normal;vertical-align:top}table.facts td{padding:2px 0}",
    "table.list{border-collapse:collapse;margin:4px 0 10px}table.list th,table.list td{border:1px solid #d5dbe3;padding:3px 8px;text-align:left}",
    "ul.counts{list-style:none;padding:0}ul.counts li{margin:4px 0}",
    ".chip{display:inline-block;min-width:2.2em;text-align:center;border-radius:4px;padding:1px 6px;font-weight:bold}",
    ".scroll{overflow:auto}",
    "table.matrix{border-collapse:separate;border-spacing:2px;font-size:12px}",
    "table.matrix td{padding:3px 5px;text-align:center;white-space:nowrap;border-radius:3px}",
    "table.matrix td small{font-size:10px;opacity:.8}",
    "table.matrix th{font-size:12px;white-space:nowrap;padding:2px 4px}table.matrix th.row{text-align:right}",
    ".same{background:#e6e6e6;color:#555}",
    ".bad{color:#d32f2f;font-weight:bold}",
    "pre{background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;padding:8px;overflow:auto;font-size:12px}",
    "pre.cmd{display:block;margin:4px 0;padding:4px 8px}pre.snapshot{max-height:480px}",
    "details.pair{border:1px solid #e1e4e8;border-radius:4px;margin:6px 0;padding:4px 10px}details.pair summary{cursor:pointer}",
    ".note{color:#8a5300;background:#fff8e6;border-left:3px solid #e0a800;padding:6px 10px}",
    "ul.notes{color:#555}",
    ".picture svg{max-width:100%;height:auto}",
    ".probe{border:1px solid #e1e4e8;border-radius:4px;padding:6px 12px;margin:8px 0}",
    "footer{margin-top:32px;color:#777;font-size:12px}",
);

/// The verdict colours as CSS, from the one palette every picture uses.
pub fn verdict_css() -> String {
    format!(
        ".bus{{background:{};color:{}}}.hb{{background:{};color:{}}}.ns{{background:{};color:{}}}",
        palette::BUS_ADDR.0,
        palette::BUS_ADDR.1,
        palette::THRU_HOST_BRIDGE.0,
        palette::THRU_HOST_BRIDGE.1,
        palette::NOT_SUPPORTED.0,
        palette::NOT_SUPPORTED.1
    )
}
