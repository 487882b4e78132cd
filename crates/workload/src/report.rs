//! The report of a run: text for people, JSON for tools.
//!
//! The JSON (`schema` 1) is the [`Report`] as serialized: at least
//! `{"jobs": [{"name", "ok", "legs": [{"from", "to", "path", "bytes"}],
//! "bytes", "verified", "sim_seconds", "gbytes_per_sec", "bottleneck":
//! {"link", "gbytes_per_sec"}, "error"}]}`, where `path` is `bus_addr`,
//! `thru_host_bridge` or `bounced` (each of the two legs of a trip through
//! host memory is `bounced`), and `from`/`to` are BDFs or `host`.

use crate::run::{JobReport, Report};
use peerdma_mem::{format_size, Bdf};
use peerdma_pci::Topology;
use serde::Serialize;
use std::fmt::Write as _;

/// The version of the JSON layout.
pub const SCHEMA: u32 = 1;

#[derive(Serialize)]
struct Versioned<'a> {
    schema: u32,
    #[serde(flatten)]
    report: &'a Report,
}

/// The report as JSON.
pub fn to_json(r: &Report) -> String {
    serde_json::to_string_pretty(&Versioned {
        schema: SCHEMA,
        report: r,
    })
    .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize the report: {e}\"}}"))
}

/// `gpu0 (0000:1a:00.0)` when the topology names the function.
pub fn device_name(t: &Topology, s: &str) -> String {
    match s.parse::<Bdf>().ok().and_then(|b| t.find(b)) {
        Some(f) => match &t.function(f).label {
            Some(l) => format!("{l} ({})", t.function(f).bdf),
            None => t.function(f).bdf.to_string(),
        },
        None => s.to_string(),
    }
}

fn short(t: &Topology, s: &str) -> String {
    match s.parse::<Bdf>().ok().and_then(|b| t.find(b)) {
        Some(f) => t.function(f).label.clone().unwrap_or_else(|| s.to_string()),
        None => s.to_string(),
    }
}

/// A link's name with the functions' names where the topology has them:
/// `sw0-p11<->nvme0` for `0000:19:11.0<->0000:1c:00.0`.
pub fn link_name(t: &Topology, name: &str) -> String {
    name.split("<->")
        .map(
            |part| match part.parse::<Bdf>().ok().and_then(|b| t.find(b)) {
                Some(f) => t
                    .function(f)
                    .label
                    .clone()
                    .unwrap_or_else(|| part.to_string()),
                None => part.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("<->")
}

/// BDFs in a sentence replaced by the names the topology gives them.
pub fn with_names(t: &Topology, text: &str) -> String {
    text.split(' ')
        .map(|w| {
            let core = w.trim_end_matches([',', ';', ':', ')', '.']);
            match core
                .parse::<peerdma_mem::Bdf>()
                .ok()
                .and_then(|b| t.find(b))
            {
                Some(f) => match &t.function(f).label {
                    Some(l) => w.replacen(core, l, 1),
                    None => w.to_string(),
                },
                None => w.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The topologies of a run's machines, to show names instead of BDFs.
pub struct Names<'a> {
    machines: Vec<(String, &'a Topology)>,
}

impl<'a> Names<'a> {
    /// The one machine of most workloads.
    pub fn one(t: &'a Topology) -> Names<'a> {
        Names {
            machines: vec![(String::new(), t)],
        }
    }

    /// Several machines, by name, in the run's order.
    pub fn new(machines: Vec<(String, &'a Topology)>) -> Names<'a> {
        Names { machines }
    }

    fn multi(&self) -> bool {
        self.machines.len() > 1
    }

    fn topo(&self, machine: Option<&str>) -> &'a Topology {
        machine
            .and_then(|m| self.machines.iter().find(|(n, _)| n == m))
            .or(self.machines.first())
            .map(|(_, t)| *t)
            .expect("a run has a machine")
    }

    /// A device's short name (`gpu0`, or `a:gpu0` on a run of several).
    fn device(&self, machine: Option<&str>, s: &str) -> String {
        let n = short(self.topo(machine), s);
        match machine {
            Some(m) if self.multi() => format!("{m}:{n}"),
            _ => n,
        }
    }

    /// A link's name with device names (`a: sw0-p11<->nvme0`).
    fn link(&self, name: &str) -> String {
        if self.multi() {
            if let Some((m, rest)) = name.split_once(": ") {
                return format!("{m}: {}", link_name(self.topo(Some(m)), rest));
            }
        }
        link_name(self.topo(None), name)
    }

    fn text(&self, machine: Option<&str>, text: &str) -> String {
        with_names(self.topo(machine), text)
    }
}

fn path_words(p: &str) -> &'static str {
    match p {
        "bus_addr" => "P2P by PCI bus address",
        "thru_host_bridge" => "P2P through the host bridge",
        "bounced" => "bounced through host memory",
        "wire" => "frames on the wire",
        _ => "host memory",
    }
}

fn rate(bytes_per_sec: f64) -> String {
    format!("{:.2} GB/s", bytes_per_sec / 1e9)
}

fn secs(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// One job as people read it.
pub fn render_job(names: &Names<'_>, j: &JobReport) -> String {
    let mut s = String::new();
    let jm = j.machine.as_deref();
    let status = match (&j.error, j.ok) {
        (None, true) => "OK, every byte verified".to_string(),
        (Some(e), _) => format!("FAILED: {}", names.text(jm, e)),
        (None, false) => "FAILED".to_string(),
    };
    let _ = writeln!(
        s,
        "{}  {} {}  {status}",
        j.name,
        j.kind,
        format_size(j.bytes)
    );
    for l in &j.legs {
        let m = l.machine.as_deref().or(jm);
        let peer = l.peer_machine.as_deref().or(m);
        let by = if l.by == "cpu" {
            "the CPU".to_string()
        } else {
            format!("{}'s DMA", names.device(m, &l.by))
        };
        let host = |mm: Option<&str>| match mm {
            Some(x) if names.multi() => {
                format!("{x}:host memory (node {})", l.numa_node.unwrap_or(0))
            }
            _ => format!("host memory (node {})", l.numa_node.unwrap_or(0)),
        };
        let from = if l.from == "host" {
            host(m)
        } else {
            names.device(m, &l.from)
        };
        let to = if l.to == "host" {
            host(peer)
        } else {
            names.device(peer, &l.to)
        };
        let by = if l.path == "wire" {
            "the NICs".to_string()
        } else {
            by
        };
        let _ = writeln!(
            s,
            "  leg   {from} -> {to}: {}, {} by {by}{}",
            path_words(l.path),
            format_size(l.bytes),
            l.provider
                .as_ref()
                .map(|p| format!(", in the P2P memory of {}", names.device(m, p)))
                .unwrap_or_default()
        );
        if !l.routes.is_empty() {
            let _ = writeln!(s, "        fabric (observed): {}", l.routes.join("; "));
        }
        if l.unsupported_bytes > 0 {
            let _ = writeln!(
                s,
                "        {} answered with Unsupported Request (reads all-ones, writes dropped)",
                format_size(l.unsupported_bytes)
            );
        }
    }
    if j.sim_seconds > 0.0 {
        let _ = write!(
            s,
            "  time  {} from {} to {}",
            secs(j.sim_seconds),
            secs(j.start_seconds),
            secs(j.end_seconds)
        );
        if j.ok {
            let _ = write!(s, ", {}", rate(j.gbytes_per_sec * 1e9));
        }
        if let Some(b) = &j.bottleneck {
            let _ = write!(
                s,
                "; narrowest: {} at {}",
                names.link(&b.link),
                rate(b.gbytes_per_sec * 1e9)
            );
        }
        let _ = writeln!(s);
    }
    if !j.shared_with.is_empty() {
        let _ = writeln!(s, "        shared links with {}", j.shared_with.join(", "));
    }
    let mut extra = Vec::new();
    if j.commands > 0 {
        extra.push(format!("{} NVMe commands", j.commands));
    }
    if j.bounce_bytes > 0 {
        extra.push(format!(
            "{} through host memory",
            format_size(j.bounce_bytes)
        ));
    }
    if j.cpu_copy_bytes > 0 {
        extra.push(format!(
            "{} copied by the CPU",
            format_size(j.cpu_copy_bytes)
        ));
    }
    if j.cpu_xor_bytes > 0 {
        extra.push(format!("{} XORed by the CPU", format_size(j.cpu_xor_bytes)));
    }
    if !extra.is_empty() {
        let _ = writeln!(s, "  work  {}", extra.join(", "));
    }
    if let Some(w) = &j.bounce_reason {
        let _ = writeln!(s, "  why   {}", names.text(jm, w));
    }
    for n in &j.notes {
        let _ = writeln!(s, "  note  {}", names.text(jm, n));
    }
    s
}

/// The whole run as people read it.
pub fn render(names: &Names<'_>, r: &Report, origin: &str) -> String {
    let mut s = String::new();
    let ok = r.jobs.iter().filter(|j| j.ok).count();
    if r.machines.len() > 1 {
        let list: Vec<String> = r
            .machines
            .iter()
            .map(|m| format!("{} = {} (IOMMU {})", m.name, m.origin, m.iommu.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "{origin}: {} job(s) on {}",
            r.jobs.len(),
            list.join(", ")
        );
    } else {
        let _ = writeln!(
            s,
            "{origin}: {} job(s) on {}, IOMMU {}",
            r.jobs.len(),
            r.machine,
            r.iommu.as_str()
        );
    }
    if let Some(w) = &r.wire {
        let _ = writeln!(
            s,
            "wire {} <-> {}: {} Gbit/s, MTU {}, {} ns",
            w.a, w.b, w.gbits_per_sec, w.mtu, w.latency_ns
        );
    }
    let _ = writeln!(
        s,
        "{ok} of {} ok; {} simulated in {} of wall time\n",
        r.jobs.len(),
        secs(r.sim_seconds),
        secs(r.wall_seconds)
    );
    for j in &r.jobs {
        s.push_str(&render_job(names, j));
        s.push('\n');
    }
    if !r.busiest_links.is_empty() {
        let _ = writeln!(s, "busiest links:");
        for l in &r.busiest_links {
            let _ = writeln!(
                s,
                "  {:<40} {:<4} {:>10} busy {:>5.1}% of the run (capacity {})",
                names.link(&l.link),
                l.direction,
                format_size(l.bytes),
                l.busy * 100.0,
                rate(l.gbytes_per_sec * 1e9)
            );
        }
    }
    s
}
