//! A run as a picture (`peerdma sim --svg`): the jobs on a timeline, each
//! bar from the job's start to its end in simulated time and coloured by
//! the paths its legs took (one band per path), and below it how busy the
//! busiest links were over the run. Made from the public [`Report`] alone.
//!
//! A chart, not a graph: its geometry is a time axis and rows, so it is
//! written here directly. Every string from the workload or the machine
//! (job names, device and link names) is escaped for XML and cut to fit.

use crate::report::link_name;
use crate::run::{JobReport, Report};
use peerdma_mem::format_size;
use peerdma_p2p::dot::palette;
use peerdma_pci::Topology;
use std::fmt::Write;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 200.0;
const CHART: f64 = 640.0;
const ROW: f64 = 24.0;
const BAR: f64 = 16.0;
const FONT: &str = "DejaVu Sans,Helvetica,Arial,sans-serif";

/// The paths a leg can take, in the order bands are drawn, with fill,
/// stroke and words for the legend.
const PATHS: [(&str, &str, &str, &str); 5] = [
    (
        "bus_addr",
        palette::BUS_ADDR.0,
        palette::BUS_ADDR.1,
        "P2P by PCI bus address",
    ),
    (
        "thru_host_bridge",
        palette::THRU_HOST_BRIDGE.0,
        palette::THRU_HOST_BRIDGE.1,
        "P2P through the host bridge",
    ),
    (
        "bounced",
        palette::NOT_SUPPORTED.0,
        palette::NOT_SUPPORTED.1,
        "bounced through host memory",
    ),
    ("host_memory", "#cfd8e3", "#4a5a70", "host memory"),
    ("wire", "#ddd0f2", "#5b3f8c", "on the wire"),
];

fn style_of(path: &str) -> (&'static str, &'static str, &'static str) {
    PATHS
        .iter()
        .find(|p| p.0 == path)
        .map_or(("#eeeeee", "#555555", "other"), |p| (p.1, p.2, p.3))
}

/// Text made safe for XML character data and attribute values: `& < > "
/// '` escaped, characters XML forbids dropped, cut to `max` characters.
pub fn escape(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text
        .chars()
        .filter(|&c| matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..))
        .enumerate()
    {
        if i == max {
            out.push('…');
            break;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// A duration for the axis and tooltips.
fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// A tick's label in the unit the whole axis uses: `0`, `10 ms`, `2.5 s`.
fn tick_label(t: f64, span: f64) -> String {
    if t == 0.0 {
        return "0".into();
    }
    let (scale, unit) = if span >= 1.0 {
        (1.0, "s")
    } else if span >= 1e-3 {
        (1e3, "ms")
    } else {
        (1e6, "µs")
    };
    let v = format!("{:.3}", t * scale);
    let v = v.trim_end_matches('0').trim_end_matches('.');
    format!("{v} {unit}")
}

/// A tick step of 1, 2 or 5 times a power of ten giving 4 to 10 ticks.
fn tick_step(span: f64) -> f64 {
    let raw = span / 8.0;
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * p)
}

/// The machine a name is on, for several machines (`a: ...`).
fn topo_for<'a>(machines: &[(&str, &'a Topology)], machine: Option<&str>) -> Option<&'a Topology> {
    machine
        .and_then(|m| machines.iter().find(|(n, _)| *n == m))
        .or(machines.first())
        .map(|(_, t)| *t)
}

fn link_label(machines: &[(&str, &Topology)], link: &str) -> String {
    if machines.len() > 1 {
        if let Some((m, rest)) = link.split_once(": ") {
            if let Some(t) = topo_for(machines, Some(m)) {
                return format!("{m}: {}", link_name(t, rest));
            }
        }
    }
    match topo_for(machines, None) {
        Some(t) => link_name(t, link),
        None => link.to_string(),
    }
}

/// The distinct paths of a job's legs, in legend order, with their bytes.
fn job_paths(j: &JobReport) -> Vec<(&'static str, u64)> {
    let mut out: Vec<(&'static str, u64)> = Vec::new();
    for (p, ..) in PATHS {
        let bytes: u64 = j.legs.iter().filter(|l| l.path == p).map(|l| l.bytes).sum();
        if j.legs.iter().any(|l| l.path == p) {
            out.push((p, bytes));
        }
    }
    for l in &j.legs {
        if !PATHS.iter().any(|p| p.0 == l.path) && !out.iter().any(|(p, _)| *p == l.path) {
            out.push((l.path, l.bytes));
        }
    }
    out
}

/// The run as an SVG document. `machines` names each machine of the run
/// with its topology (for device and link names); `title` heads the
/// picture (`peerdma sim w.toml`).
pub fn timeline(r: &Report, machines: &[(&str, &Topology)], title: &str) -> String {
    let end = r
        .jobs
        .iter()
        .map(|j| j.end_seconds)
        .fold(r.sim_seconds, f64::max);
    let span = if end.is_finite() && end > 0.0 {
        end
    } else {
        1e-6
    };
    let x = |t: f64| LEFT + (t.clamp(0.0, span) / span) * CHART;
    let top = 86.0;
    let rows_h = r.jobs.len() as f64 * ROW;
    let links_top = top + rows_h + 64.0;
    let links_h = r.busiest_links.len() as f64 * ROW;
    let height = links_top + links_h + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"{FONT}\" font-size=\"12\">"
    );
    let _ = writeln!(
        s,
        "<rect x=\"0\" y=\"0\" width=\"{WIDTH}\" height=\"{height}\" fill=\"#ffffff\"/>"
    );
    let ok = r.jobs.iter().filter(|j| j.ok).count();
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>",
        escape(title, 100)
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"44\">{} job(s) on {}, IOMMU {}: {ok} ok; {} simulated</text>",
        r.jobs.len(),
        escape(&r.machine, 90),
        r.iommu.as_str(),
        secs(r.sim_seconds)
    );
    // Legend.
    let mut lx = 16.0;
    for (p, fill, stroke, words) in PATHS {
        if p == "wire" && r.wire.is_none() {
            continue;
        }
        let _ = writeln!(
            s,
            "<rect x=\"{lx}\" y=\"54\" width=\"14\" height=\"12\" fill=\"{fill}\" stroke=\"{stroke}\"/><text x=\"{}\" y=\"65\">{words}</text>",
            lx + 19.0
        );
        lx += 34.0 + words.len() as f64 * 6.6;
    }
    // Axis and grid.
    let step = tick_step(span);
    let mut t = 0.0;
    while t <= span * 1.0001 {
        let tx = x(t);
        let _ = writeln!(
            s,
            "<line x1=\"{tx:.1}\" y1=\"{:.1}\" x2=\"{tx:.1}\" y2=\"{:.1}\" stroke=\"#e3e7ec\"/><text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">{}</text>",
            top - 6.0,
            top + rows_h,
            top + rows_h + 14.0,
            tick_label(t, span)
        );
        t += step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">simulated time</text>",
        LEFT + CHART / 2.0,
        top + rows_h + 28.0
    );
    // One row per job.
    for (i, j) in r.jobs.iter().enumerate() {
        let y = top + i as f64 * ROW;
        let (x0, x1) = (x(j.start_seconds), x(j.end_seconds));
        let w = (x1 - x0).max(2.0);
        let paths = job_paths(j);
        let tip = format!(
            "{}: {} {} from {} to {}, {} to {} ({}), {:.2} GB/s; {}{}",
            j.name,
            j.kind,
            format_size(j.bytes),
            j.source.join(", "),
            j.destination,
            secs(j.start_seconds),
            secs(j.end_seconds),
            secs(j.sim_seconds),
            j.gbytes_per_sec,
            paths
                .iter()
                .map(|(p, b)| format!("{} {}", style_of(p).2, format_size(*b)))
                .collect::<Vec<_>>()
                .join(" + "),
            j.error
                .as_ref()
                .map(|e| format!("; FAILED: {e}"))
                .unwrap_or_default()
        );
        let _ = writeln!(s, "<g><title>{}</title>", escape(&tip, 600));
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            y + BAR - 3.0,
            escape(&j.name, 28)
        );
        let band = BAR / paths.len().max(1) as f64;
        for (k, (p, _)) in paths.iter().enumerate() {
            let (fill, _, _) = style_of(p);
            let _ = writeln!(
                s,
                "<rect x=\"{x0:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{band:.1}\" fill=\"{fill}\"/>",
                y + k as f64 * band
            );
        }
        let (stroke, dash) = if j.ok {
            (paths.first().map_or("#555555", |(p, _)| style_of(p).1), "")
        } else {
            (palette::NOT_SUPPORTED.1, " stroke-dasharray=\"4 2\"")
        };
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{BAR}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{}\"{dash}/>",
            if j.ok { 1 } else { 2 }
        );
        let note = if j.ok {
            format!("{}, {:.2} GB/s", format_size(j.bytes), j.gbytes_per_sec)
        } else {
            "FAILED".to_string()
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{}\">{note}</text></g>",
            x1.max(x0 + 2.0) + 6.0,
            y + BAR - 4.0,
            if j.ok {
                "#333"
            } else {
                palette::NOT_SUPPORTED.1
            }
        );
    }
    // The busiest links.
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{:.1}\" font-size=\"14\" font-weight=\"bold\">Busiest links (share of the run they moved data)</text>",
        links_top - 12.0
    );
    if r.busiest_links.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"16\" y=\"{:.1}\">no link moved data</text>",
            links_top + 12.0
        );
    }
    for (i, l) in r.busiest_links.iter().enumerate() {
        let y = links_top + i as f64 * ROW;
        let name = format!("{} ({})", link_label(machines, &l.link), l.direction);
        let busy = if l.busy.is_finite() {
            l.busy.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let _ = writeln!(
            s,
            "<g><title>{}</title>",
            escape(
                &format!(
                    "{name}: busy {:.1}% of the run, {} moved, capacity {:.2} GB/s",
                    busy * 100.0,
                    format_size(l.bytes),
                    l.gbytes_per_sec
                ),
                400
            )
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT - 8.0,
            y + BAR - 3.0,
            escape(&name, 30)
        );
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{CHART}\" height=\"{BAR}\" fill=\"#f1f3f6\" stroke=\"#c9d1db\"/>\
             <rect x=\"{LEFT}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BAR}\" fill=\"#7b97c0\"/>",
            busy * CHART
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#333\">{:.1}% busy, {}, capacity {:.2} GB/s</text></g>",
            LEFT + CHART + 6.0,
            y + BAR - 4.0,
            busy * 100.0,
            format_size(l.bytes),
            l.gbytes_per_sec
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_xml_well_formed() {
        assert_eq!(
            escape("a<b>&\"'\u{1}\u{FFFE}c", 100),
            "a&lt;b&gt;&amp;&quot;&apos;c"
        );
        assert_eq!(escape("abcdef", 4), "abcd…");
    }

    #[test]
    fn tick_labels_share_a_unit() {
        assert_eq!(tick_label(0.0, 0.05), "0");
        assert_eq!(tick_label(0.01, 0.05), "10 ms");
        assert_eq!(tick_label(0.0025, 0.05), "2.5 ms");
        assert_eq!(tick_label(2e-6, 1e-5), "2 µs");
        assert_eq!(tick_label(1.5, 3.0), "1.5 s");
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(0.05), 0.01);
        assert_eq!(tick_step(1.0), 0.2);
        assert!((tick_step(0.0425) - 0.01).abs() < 1e-12);
    }
}
