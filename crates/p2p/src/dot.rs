//! The machine as a picture, in Graphviz's DOT language: NUMA nodes and
//! host bridges as boxes, switches as boxes of their ports, endpoints
//! coloured by what they are, each PCIe link labelled with its generation
//! and width (red where it trained below what it can do), the
//! ACS-redirecting ports marked, and above the tree the kernel's verdict for
//! every pair of DMA endpoints as a coloured matrix (a matrix stays readable
//! at 16 devices and more, where 240 coloured edges would not). The drawing
//! is laid out by Graphviz (`dot -Tsvg`); this module only writes the graph.
//!
//! Every string that comes from the machine (labels, names, the CPU's model
//! name) is escaped for DOT's HTML-like labels and cut to a readable length;
//! node names are made here from indices and never from input.

use crate::index::Matrix;
use crate::path::link_class;
use crate::MapType;
use peerdma_pci::config::acs_bits_string;
use peerdma_pci::ids::PciIds;
use peerdma_pci::render::short_name;
use peerdma_pci::{Acs, FnId, Function, PortType, Topology};
use std::fmt::Write;

/// The colours of the three verdicts, shared by every picture of peerdma
/// (the machine, the HTML report, the simulator's timeline).
pub mod palette {
    /// P2P by PCI bus address: fill and ink.
    pub const BUS_ADDR: (&str, &str) = ("#b9e4c0", "#1b5e20");
    /// P2P through the host bridge.
    pub const THRU_HOST_BRIDGE: (&str, &str) = ("#fde3a7", "#8a5300");
    /// Not supported: bounced through host memory.
    pub const NOT_SUPPORTED: (&str, &str) = ("#f7c1c1", "#9b1c1c");
    /// The same function (the matrix's diagonal).
    pub const SAME: (&str, &str) = ("#e6e6e6", "#555555");
    /// ACS redirect: the border of a redirecting port.
    pub const ACS_REDIRECT: &str = "#d32f2f";
    /// A link running below what it can do.
    pub const DEGRADED: &str = "#d32f2f";

    /// Fill and ink for a verdict.
    pub fn verdict(map: crate::MapType) -> (&'static str, &'static str) {
        match map {
            crate::MapType::BusAddr => BUS_ADDR,
            crate::MapType::ThruHostBridge => THRU_HOST_BRIDGE,
            _ => NOT_SUPPORTED,
        }
    }
}

/// What to draw.
#[derive(Clone, Debug)]
pub struct DotOptions {
    /// Put every function (bridges and ports too) in the matrix, not only
    /// the DMA endpoints.
    pub all_in_matrix: bool,
    /// Above this many functions the matrix is left out (with a note in
    /// the picture): Graphviz lays a table of n² cells out slowly and no
    /// one reads it. The HTML report has the matrix of any size.
    pub max_matrix: usize,
    /// Longest label text, in characters, before it is cut with `…`.
    pub max_label: usize,
    /// Draw the matrix and its legend above the tree (the HTML report has
    /// its own matrix, and leaves it out of the picture).
    pub with_matrix: bool,
}

impl Default for DotOptions {
    fn default() -> DotOptions {
        DotOptions {
            all_in_matrix: false,
            max_matrix: 64,
            max_label: 48,
            with_matrix: true,
        }
    }
}

/// The functions a matrix shows: the DMA endpoints, or every function.
pub fn matrix_functions(topo: &Topology, all: bool) -> Vec<FnId> {
    topo.functions()
        .iter()
        .filter(|f| all || f.is_dma_endpoint())
        .map(|f| f.id)
        .collect()
}

/// Text made safe for a DOT HTML-like label (which is XML): `& < > " '`
/// escaped, control characters (not allowed in XML) dropped, and cut to
/// `max` characters with `…`.
pub fn escape_label(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    let mut n = 0;
    let mut chars = text.chars().filter(|c| !c.is_control()).peekable();
    while let Some(c) = chars.next() {
        if n == max && chars.peek().is_some() {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
        n += 1;
    }
    out
}

/// Text made safe for a DOT double-quoted string (tooltips): `"` and `\`
/// escaped, control characters dropped, cut to `max` characters.
fn escape_quoted(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().filter(|c| !c.is_control()).enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        }
    }
    out
}

fn node_id(id: FnId) -> String {
    format!("f{}", id.index())
}

/// Fill colour for an endpoint by its base class, as lstopo colours by kind.
fn class_fill(f: &Function) -> &'static str {
    match f.base_class() {
        0x01 => "#dbe8fb", // storage
        0x02 => "#eadcf5", // network
        0x03 => "#d9f0dc", // display: GPUs
        0x12 => "#fff3c4", // processing accelerators
        _ => "#ffffff",
    }
}

/// The function that stands for a host bridge and is not itself a port:
/// it is drawn as the host bridge, not as a node of its own.
fn folded_into_host_bridge(topo: &Topology, f: &Function) -> bool {
    topo.host_bridge_device(f.host_bridge) == Some(f.id) && !f.is_bridge() && f.children.is_empty()
}

fn acs_line(f: &Function) -> Option<String> {
    match (f.acs, f.acs.redirects()) {
        (Acs::Present { ctrl, .. }, Some(true)) => Some(format!(
            "<FONT COLOR=\"{}\"><B>ACS redirect:</B>&#160;{}</FONT>",
            palette::ACS_REDIRECT,
            acs_bits_string(ctrl)
        )),
        (Acs::Unknown, _) if f.is_bridge() => {
            Some("<FONT COLOR=\"#777777\">ACS unknown (needs root)</FONT>".into())
        }
        _ => None,
    }
}

fn function_node(ids: &PciIds, f: &Function, o: &DotOptions) -> String {
    let name = escape_label(&short_name(f), o.max_label);
    let bdf = if f.bdf.domain() == 0 {
        f.bdf.short()
    } else {
        f.bdf.to_string()
    };
    let mut lines = Vec::new();
    let redirects = f.acs.redirects() == Some(true);
    let (shape, fill, style) = if f.is_bridge() {
        let kind = match f.port_type {
            PortType::RootPort => "root port",
            PortType::SwitchUpstream => "switch upstream port",
            PortType::SwitchDownstream => "downstream port",
            other => other.name(),
        };
        lines.push(format!("<B>{name}</B>"));
        if f.label.is_some() {
            lines.push(format!("{kind} {bdf}"));
        } else {
            lines.push(escape_label(kind, o.max_label));
        }
        if f.port_type.is_downstream_port() && f.children.is_empty() {
            lines.push("<I>empty slot</I>".into());
        }
        ("box", "#f4f4f4", "rounded,filled")
    } else if f.is_dma_endpoint() {
        lines.push(format!("<B>{name}</B>"));
        if f.label.is_some() {
            lines.push(bdf.clone());
        }
        lines.push(escape_label(&ids.name(f.vendor, f.device), o.max_label));
        lines.push(format!(
            "<FONT POINT-SIZE=\"8\">{}</FONT>",
            escape_label(&ids.class(f.class), o.max_label)
        ));
        if let Some(p) = f.p2pmem {
            lines.push(format!(
                "p2pmem {}{}",
                peerdma_mem::format_size(p.size),
                if p.published { "" } else { " (not published)" }
            ));
        }
        ("box", class_fill(f), "filled")
    } else {
        lines.push(format!("<B>{name}</B>"));
        lines.push(format!(
            "<FONT POINT-SIZE=\"8\">{}</FONT>",
            escape_label(&ids.class(f.class), o.max_label)
        ));
        ("box", "#fafafa", "rounded,filled,dashed")
    };
    if let Some(a) = acs_line(f) {
        lines.push(a);
    }
    if f.port_type_inferred && f.is_bridge() {
        lines.push("<FONT COLOR=\"#777777\">type inferred</FONT>".into());
    }
    let (pen, colour) = if redirects {
        ("2.5", palette::ACS_REDIRECT)
    } else {
        ("1", "#666666")
    };
    let tooltip = escape_quoted(
        &match &f.label {
            Some(l) => format!("{l}: {} {}", f.bdf, peerdma_pci::render::describe(ids, f)),
            None => format!("{} {}", f.bdf, peerdma_pci::render::describe(ids, f)),
        },
        200,
    );
    format!(
        "    {} [shape={shape}, style=\"{style}\", fillcolor=\"{fill}\", color=\"{colour}\", penwidth={pen}, tooltip=\"{tooltip}\", label=<{}>];\n",
        node_id(f.id),
        lines.join("<BR/>")
    )
}

/// The label of the physical link from the downstream-facing `port` to
/// `below` (the state as the function below reports it, else the port):
/// its generation and width, red where it runs below what it can do.
/// `None` for the links inside a switch or a root complex, which are not
/// PCIe links at all.
fn link_label(port: &Function, below: &Function) -> Option<(String, bool)> {
    if !port.port_type.is_downstream_port() {
        return None;
    }
    let l = below.link.filter(|l| l.current.is_some()).or(port.link)?;
    match (l.current, l.max) {
        (Some(c), Some(m)) if l.degraded() => Some((
            format!(
                "<FONT COLOR=\"{}\">{c}<BR/>(capable of {m})</FONT>",
                palette::DEGRADED
            ),
            true,
        )),
        (Some(c), _) => Some((c.to_string(), false)),
        _ => None,
    }
}

/// The machine in DOT: the tree on the left, the matrix of verdicts beside
/// it, a legend, and a title naming the machine and where it was read.
pub fn machine_dot(topo: &Topology, ids: &PciIds, o: &DotOptions) -> String {
    let mut s = String::new();
    let title = topo
        .origin()
        .name
        .clone()
        .or_else(|| topo.origin().hostname.clone())
        .unwrap_or_else(|| topo.origin_label());
    let cpu = topo.cpu();
    let cpu_name = if cpu.model_name.is_empty() {
        cpu.vendor_id.clone()
    } else {
        cpu.model_name.clone()
    };
    let rule = if cpu.supports_p2pdma() {
        "AMD Zen: root complexes forward peer traffic"
    } else {
        "P2P across a host bridge needs a whitelisted host bridge"
    };
    let _ = writeln!(s, "digraph peerdma {{");
    // The title, the matrix and the legend are the graph's label: a label
    // takes no part in the layout, so a wide matrix does not push the
    // tree's ranks apart.
    let _ = writeln!(
        s,
        "  graph [rankdir=LR, newrank=true, nodesep=0.12, ranksep=0.3, fontname=\"DejaVu Sans,Helvetica,Arial,sans-serif\", fontsize=10, labelloc=t, labeljust=l, bgcolor=\"#ffffff\", label=<<TABLE BORDER=\"0\" CELLSPACING=\"6\"><TR><TD ALIGN=\"LEFT\" COLSPAN=\"2\"><FONT POINT-SIZE=\"14\"><B>{}</B></FONT><BR ALIGN=\"LEFT\"/>CPU: {} · {}<BR ALIGN=\"LEFT\"/>{} PCI functions below {} host bridge(s), read from {}<BR ALIGN=\"LEFT\"/></TD></TR><TR><TD VALIGN=\"TOP\">{}</TD><TD VALIGN=\"TOP\">{}</TD></TR></TABLE>>];",
        escape_label(&title, 80),
        escape_label(&cpu_name, 60),
        rule,
        topo.len(),
        topo.host_bridges().len(),
        escape_label(&topo.origin_label(), 80),
        if o.with_matrix {
            matrix_table(topo, o)
        } else {
            String::new()
        },
        legend_table(o.with_matrix),
    );
    let _ = writeln!(
        s,
        "  node [fontname=\"DejaVu Sans,Helvetica,Arial,sans-serif\", fontsize=9, margin=\"0.08,0.03\"];"
    );
    let _ = writeln!(
        s,
        "  edge [arrowhead=none, color=\"#555555\", fontname=\"DejaVu Sans,Helvetica,Arial,sans-serif\", fontsize=8];"
    );

    // NUMA nodes hold host bridges, host bridges hold functions, a switch
    // holds its upstream port and its downstream ports. Laid out left to
    // right, Graphviz stacks what comes first at the bottom: NUMA nodes,
    // ports and links are written in reverse so that they read top-down in
    // order.
    let mut numa: Vec<Option<u32>> = topo.host_bridges().iter().map(|h| h.numa_node).collect();
    numa.sort();
    numa.dedup();
    let group_by_numa = numa.iter().any(|n| n.is_some());
    for node in numa.iter().rev() {
        if group_by_numa {
            let label = match node {
                Some(n) => format!("NUMA node {n}"),
                None => "NUMA node unknown".into(),
            };
            let _ = writeln!(
                s,
                "  subgraph cluster_numa{} {{\n    label=<<B>{label}</B>>; style=\"rounded,filled\"; fillcolor=\"#f3f6fa\"; color=\"#9aa9bd\";",
                node.map_or("x".into(), |n| n.to_string())
            );
        }
        for hb in topo.host_bridges().iter().filter(|h| h.numa_node == *node) {
            host_bridge_cluster(&mut s, topo, ids, hb, o);
        }
        if group_by_numa {
            let _ = writeln!(s, "  }}");
        }
    }

    // Links: each function hangs from its upstream bridge, or from its
    // host bridge when it sits on the root bus.
    for f in topo.functions().iter().rev() {
        if folded_into_host_bridge(topo, f) {
            continue;
        }
        let from = match f.upstream {
            Some(u) => node_id(u),
            None => format!("hb{}", f.host_bridge.index()),
        };
        let attrs = match f.upstream.and_then(|u| link_label(topo.function(u), f)) {
            Some((label, true)) => format!(
                " [label=<{label}>, color=\"{}\", penwidth=2]",
                palette::DEGRADED
            ),
            Some((label, false)) => format!(" [label=<{label}>, penwidth=1.5]"),
            None => String::new(),
        };
        let _ = writeln!(s, "  {from} -> {}{attrs};", node_id(f.id));
    }

    let _ = writeln!(s, "}}");
    s
}

fn host_bridge_cluster(
    s: &mut String,
    topo: &Topology,
    ids: &PciIds,
    hb: &peerdma_pci::HostBridge,
    o: &DotOptions,
) {
    let i = hb.id.index();
    let dev = topo.host_bridge_device(hb.id).map(|d| topo.function(d));
    let forwarding = if topo.cpu().supports_p2pdma() {
        "forwards peer traffic (AMD Zen)".to_string()
    } else {
        match dev.and_then(|d| crate::whitelist_entry(d.vendor, d.device)) {
            Some(e) if e.same_host_bridge_only => {
                format!("whitelisted ({}) below itself only", e.name)
            }
            Some(e) => format!("whitelisted ({})", e.name),
            None => "not whitelisted: no P2P through it".into(),
        }
    };
    let mut label = vec![format!("<B>Host bridge {}</B>", escape_label(&hb.name, 40))];
    if let Some(d) = dev {
        label.push(format!(
            "{} [{:04x}:{:04x}]",
            d.bdf.short(),
            d.vendor,
            d.device
        ));
        if folded_into_host_bridge(topo, d) {
            label.push(escape_label(&ids.name(d.vendor, d.device), o.max_label));
        }
    }
    label.push(format!("<I>{}</I>", escape_label(&forwarding, 80)));
    let _ = writeln!(
        s,
        "  subgraph cluster_hb{i} {{\n    label=\"\"; style=\"rounded,filled\"; fillcolor=\"#ffffff\"; color=\"#5b6b82\"; penwidth=1.5;"
    );
    let _ = writeln!(
        s,
        "    hb{i} [shape=box, style=\"filled\", fillcolor=\"#dfe6f0\", color=\"#5b6b82\", label=<{}>];",
        label.join("<BR/>")
    );
    // Every function of this host bridge, switches grouped.
    let mine: Vec<&Function> = topo
        .functions()
        .iter()
        .filter(|f| f.host_bridge == hb.id && !folded_into_host_bridge(topo, f))
        .collect();
    let in_switch = |f: &Function| -> Option<FnId> {
        match f.port_type {
            PortType::SwitchUpstream => Some(f.id),
            PortType::SwitchDownstream => f
                .upstream
                .filter(|&u| topo.function(u).port_type == PortType::SwitchUpstream),
            _ => None,
        }
    };
    for f in mine.iter().rev() {
        if f.port_type == PortType::SwitchUpstream {
            let ports: Vec<&&Function> =
                mine.iter().filter(|g| in_switch(g) == Some(f.id)).collect();
            let model = escape_label(&ids.name(f.vendor, f.device), o.max_label);
            let _ = writeln!(
                s,
                "    subgraph cluster_sw{} {{\n      label=<<FONT POINT-SIZE=\"8\">switch: {model}</FONT>>; style=\"rounded,filled\"; fillcolor=\"#fbf8ef\"; color=\"#b8a978\";",
                f.id.index()
            );
            for p in ports.into_iter().rev() {
                s.push_str("  ");
                s.push_str(&function_node(ids, p, o));
            }
            let _ = writeln!(s, "    }}");
        }
    }
    for f in mine.iter().rev() {
        if in_switch(f).is_none() {
            s.push_str(&function_node(ids, f, o));
        }
    }
    let _ = writeln!(s, "  }}");
}

/// The matrix of verdicts as an HTML-like table, or a line saying why it
/// is left out.
fn matrix_table(topo: &Topology, o: &DotOptions) -> String {
    let fns = matrix_functions(topo, o.all_in_matrix);
    if fns.len() < 2 {
        return format!(
            "<TABLE BORDER=\"0\"><TR><TD>{} DMA endpoint(s): no pair to decide</TD></TR></TABLE>",
            fns.len()
        );
    }
    if fns.len() > o.max_matrix {
        return format!(
            "<TABLE BORDER=\"0\"><TR><TD>The matrix of {} functions is left out of the picture: `peerdma matrix` and `peerdma report` have it.</TD></TR></TABLE>",
            fns.len()
        );
    }
    let m = Matrix::compute(topo);
    let names: Vec<String> = fns
        .iter()
        .map(|&f| escape_label(&short_name(topo.function(f)), 14))
        .collect();
    let mut rows = String::new();
    let _ = write!(
        rows,
        "<TR><TD BORDER=\"0\" ALIGN=\"LEFT\" COLSPAN=\"{}\"><B>P2P verdicts, the kernel's, for every pair of {}</B><BR ALIGN=\"LEFT\"/>row: the provider (whose memory), column: the client (doing the DMA)<BR ALIGN=\"LEFT\"/></TD></TR>",
        fns.len() + 1,
        if o.all_in_matrix {
            "functions"
        } else {
            "DMA endpoints"
        }
    );
    rows.push_str("<TR><TD BORDER=\"0\"></TD>");
    for n in &names {
        let _ = write!(rows, "<TD BORDER=\"0\"><B>{n}</B></TD>");
    }
    rows.push_str("</TR>");
    for (i, &a) in fns.iter().enumerate() {
        let _ = write!(
            rows,
            "<TR><TD BORDER=\"0\" ALIGN=\"RIGHT\"><B>{}</B></TD>",
            names[i]
        );
        for &b in &fns {
            let (fill, ink, text) = if a == b {
                (palette::SAME.0, palette::SAME.1, "X".to_string())
            } else {
                let (map, dist) = m.get(a, b);
                let (fill, ink) = palette::verdict(map);
                let text = match map {
                    MapType::BusAddr => format!("B{dist}"),
                    MapType::ThruHostBridge => format!("H{dist}"),
                    _ => "--".into(),
                };
                (fill, ink, format!("{text} {}", link_class(topo, a, b)))
            };
            let _ = write!(
                rows,
                "<TD BGCOLOR=\"{fill}\"><FONT COLOR=\"{ink}\" POINT-SIZE=\"8\">{text}</FONT></TD>"
            );
        }
        rows.push_str("</TR>");
    }
    format!(
        "<TABLE BORDER=\"0\" CELLBORDER=\"0\" CELLSPACING=\"1\" CELLPADDING=\"3\">{rows}</TABLE>"
    )
}

/// What the colours and marks mean.
fn legend_table(verdicts: bool) -> String {
    let marks = format!(
        "<TR><TD BORDER=\"2\" COLOR=\"{}\">port</TD><TD ALIGN=\"LEFT\">ACS redirect: peer requests are sent up to the root complex</TD></TR>\
<TR><TD><FONT COLOR=\"{}\">Gen3 x8</FONT></TD><TD ALIGN=\"LEFT\">a link trained below what it can do</TD></TR>",
        palette::ACS_REDIRECT,
        palette::DEGRADED,
    );
    if !verdicts {
        return format!("<TABLE BORDER=\"0\" CELLBORDER=\"0\" CELLSPACING=\"2\" CELLPADDING=\"3\">{marks}</TABLE>");
    }
    format!(
        "<TABLE BORDER=\"0\" CELLBORDER=\"0\" CELLSPACING=\"2\" CELLPADDING=\"3\">\
<TR><TD BORDER=\"0\" COLSPAN=\"2\" ALIGN=\"LEFT\"><B>Legend</B></TD></TR>\
<TR><TD BGCOLOR=\"{}\">Bn</TD><TD ALIGN=\"LEFT\">P2P by PCI bus address, through switches only (n: the kernel's distance)</TD></TR>\
<TR><TD BGCOLOR=\"{}\">Hn</TD><TD ALIGN=\"LEFT\">P2P through the host bridge (root complex)</TD></TR>\
<TR><TD BGCOLOR=\"{}\">--</TD><TD ALIGN=\"LEFT\">not supported: I/O bounces through host memory</TD></TR>\
{marks}\
<TR><TD>INT</TD><TD ALIGN=\"LEFT\">two functions of one device</TD></TR>\
<TR><TD>PIX PXB</TD><TD ALIGN=\"LEFT\">through one switch or bridge, through several</TD></TR>\
<TR><TD>PHB</TD><TD ALIGN=\"LEFT\">through the host bridge</TD></TR>\
<TR><TD>NODE SYS</TD><TD ALIGN=\"LEFT\">between host bridges of one NUMA node, between NUMA nodes</TD></TR>\
</TABLE>",
        palette::BUS_ADDR.0,
        palette::THRU_HOST_BRIDGE.0,
        palette::NOT_SUPPORTED.0,
    )
}
