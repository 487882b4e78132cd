//! `peerdma demo`: a workload set built for the machine at hand, and a
//! short report — one line per job, then what the numbers say.
//!
//! The jobs are chosen from the topology, so the demo runs on any machine
//! (every preset, a snapshot, this one): a drive and a GPU (or other device
//! memory) for each kind of verdict the machine has — below one switch (by
//! bus address), through the host bridge, not supported (bounced) — the
//! same read through host memory beside the P2P one, a write back to a
//! drive, a drive-to-drive copy, a RAID-1 rebuild and a RAID-5 degraded
//! read when there are drives enough, and two reads sharing one drive. The
//! generated workload is a plain workload file
//! (`peerdma demo --print-workload`), to edit and run with `peerdma sim`.

use crate::format::{self, is_nvme, Workload, WorkloadError};
use crate::report::{device_name, link_name, render, with_names};
use crate::run::{JobReport, Report};
use peerdma_mem::format_size;
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::{FnId, Topology};
use std::fmt::Write as _;
use std::path::Path;

/// Bytes each read of the demo moves.
pub const READ: u64 = 1 << 30;
/// Bytes of the other jobs (a RAID-5 read: three quarters of it).
pub const OTHER: u64 = 512 << 20;

fn name(t: &Topology, f: FnId) -> String {
    let func = t.function(f);
    func.label.clone().unwrap_or_else(|| func.bdf.to_string())
}

fn gib(n: u64) -> String {
    format_size(n).replace(" GiB", "G").replace(" MiB", "M")
}

/// The demo's workload for `topo`, as a workload file's text.
pub fn workload_text(t: &Topology) -> String {
    workload_text_sized(t, READ, OTHER)
}

/// The same with reads of `read` bytes and other jobs of `other` bytes
/// (multiples of 2 MiB), for quick runs.
pub fn workload_text_sized(t: &Topology, read_size: u64, other_size: u64) -> String {
    let drives: Vec<FnId> = t.ids().filter(|&f| is_nvme(t, f)).collect();
    let mems: Vec<(FnId, u64)> = t
        .ids()
        .filter_map(|f| {
            peerdma_consumers::devmem::device_memory(t.function(f))
                .map(|(k, n)| (f, n, k))
                .filter(|(_, _, k)| {
                    matches!(
                        k,
                        peerdma_consumers::devmem::DeviceMemoryKind::GpuAperture { .. }
                    )
                })
                .map(|(f, n, _)| (f, n))
        })
        .collect();
    // Device memory to read into: GPUs, else any device memory (CMBs).
    let targets: Vec<(FnId, u64)> = if mems.is_empty() {
        t.ids()
            .filter_map(|f| peerdma_consumers::devmem::capacity(t, f).map(|(n, _)| (f, n)))
            .collect()
    } else {
        mems
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# peerdma demo for {}: chosen from its topology.\n# Each job waits for the one before it, so its numbers are its own; the\n# last two share a drive.\ndescription = \"the storage consumers of P2P DMA on {}\"\n",
        t.origin_label(),
        t.origin_label().replace('"', "'")
    );
    let mut last: Option<String> = None;
    let mut job = |s: &mut String, name: &str, comment: &str, body: String, chain: bool| {
        let _ = writeln!(s, "[[job]]\n# {comment}\nname = \"{name}\"\n{body}");
        if chain {
            if let Some(l) = &last {
                let _ = writeln!(s, "after = \"{l}\"");
            }
            last = Some(name.to_string());
        }
        s.push('\n');
    };
    let pair = |m: MapType| -> Option<(FnId, FnId)> {
        drives.iter().find_map(|&d| {
            targets
                .iter()
                .find(|&&(g, cap)| {
                    g != d && cap >= read_size && calc_map_type_and_dist(t, g, d).map_type == m
                })
                .map(|&(g, _)| (d, g))
        })
    };
    let read = |d: FnId, g: FnId, extra: &str| {
        format!(
            "kind = \"read\"\ndrive = \"{}\"\ninto = \"{}\"\nsize = \"{}\"\n{extra}",
            name(t, d),
            name(t, g),
            gib(read_size)
        )
        .trim_end()
        .to_string()
    };
    let mut first_pair = None;
    for (m, slug, comment) in [
        (
            MapType::BusAddr,
            "p2p",
            "read() with O_DIRECT into GPU memory below the same switch: P2P by bus address",
        ),
        (
            MapType::ThruHostBridge,
            "host-bridge",
            "the same through the host bridge (a whitelisted root complex, or AMD Zen)",
        ),
        (
            MapType::NotSupported,
            "bounced",
            "a pair that cannot do P2P: the read still succeeds, bounced through host memory",
        ),
    ] {
        if let Some((d, g)) = pair(m) {
            job(
                &mut s,
                &format!("load-{slug}"),
                comment,
                read(d, g, ""),
                true,
            );
            if first_pair.is_none() && m != MapType::NotSupported {
                first_pair = Some((d, g));
                job(
                    &mut s,
                    "load-via-host",
                    "the same read without P2P, for comparison: into host memory, then on",
                    read(d, g, "policy = \"host\""),
                    true,
                );
            }
        }
    }
    // A write from device memory to a drive: the second drive if there is one.
    if let Some(&(g, cap)) = targets.iter().find(|(_, c)| *c >= other_size) {
        let d = drives.get(1).or(drives.first()).copied();
        if let Some(d) = d.filter(|&d| d != g) {
            let _ = cap;
            job(
                &mut s,
                "checkpoint",
                "a checkpoint: device memory to a drive",
                format!(
                    "kind = \"write\"\nfrom = \"{}\"\ndrive = \"{}\"\nsize = \"{}\"",
                    name(t, g),
                    name(t, d),
                    gib(other_size)
                ),
                true,
            );
        }
    }
    if drives.len() >= 2 {
        let (a, b) = (drives[0], drives[drives.len() - 1]);
        job(
            &mut s,
            "copy",
            "drive to drive, staged in the closest controller memory buffer both reach (else host memory)",
            format!(
                "kind = \"copy\"\nfrom = \"{}\"\nto = \"{}\"\nsize = \"{}\"\noffset = \"{}\"",
                name(t, a),
                name(t, b),
                gib(other_size),
                gib(2 * read_size)
            ),
            true,
        );
        // RAID-1: prefer a pair where one of the mirrors has a CMB.
        let with_cmb = |f: FnId| t.function(f).p2pmem.is_some_and(|p| p.published);
        let (x, y) = drives
            .iter()
            .flat_map(|&x| drives.iter().map(move |&y| (x, y)))
            .find(|&(x, y)| x != y && (with_cmb(x) || with_cmb(y)))
            .unwrap_or((drives[0], drives[1]));
        job(
            &mut s,
            "rebuild",
            "md RAID-1: the surviving mirror onto its replacement, through a CMB when both reach it",
            format!(
                "kind = \"raid1-rebuild\"\nfrom = \"{}\"\nto = \"{}\"\nsize = \"{}\"",
                name(t, x),
                name(t, y),
                gib(other_size)
            ),
            true,
        );
    }
    if drives.len() >= 3 {
        if let Some(&(g, _)) = targets.first() {
            let members: Vec<String> = drives
                .iter()
                .take(4)
                .map(|&d| format!("\"{}\"", name(t, d)))
                .collect();
            let missing = drives[drives.len().min(4) / 2];
            job(
                &mut s,
                "raid5-degraded",
                "md RAID-5 with a member missing: the parity needs a CPU XOR in host memory",
                format!(
                    "kind = \"raid5-read\"\nmembers = [{}]\nmissing = \"{}\"\ninto = \"{}\"\nchunk = \"512K\"\nsize = \"{}\"",
                    members.join(", "),
                    name(t, missing),
                    name(t, g),
                    gib(other_size / 4 * 3)
                ),
                true,
            );
        }
    }
    // Two reads of one drive at once, into two memories.
    if let (Some((d, g)), true) = (first_pair, targets.len() >= 2) {
        let other = targets.iter().map(|&(f, _)| f).find(|&f| f != g && f != d);
        if let Some(h) = other {
            let after = last.clone();
            let tail = |s: &mut String, n: &str, into: FnId, off: &str| {
                let _ = writeln!(
                    s,
                    "[[job]]\n# two reads of one drive at once share its link\nname = \"{n}\"\nkind = \"read\"\ndrive = \"{}\"\ninto = \"{}\"\nsize = \"{}\"\noffset = \"{off}\"{}\n",
                    name(t, d),
                    name(t, into),
                    gib(other_size),
                    after.as_ref().map(|a| format!("\nafter = \"{a}\"")).unwrap_or_default()
                );
            };
            tail(&mut s, "fan-out-a", g, "0");
            let off = gib(4 * read_size);
            tail(&mut s, "fan-out-b", h, &off);
        }
    }
    s
}

/// The demo's workload for `topo`, parsed.
pub fn workload(t: &Topology) -> Result<Workload, WorkloadError> {
    format::parse(&workload_text(t), "the demo workload", Path::new("."))
}

fn what(t: &Topology, j: &JobReport) -> String {
    let n = |s: &str| {
        let d = device_name(t, s);
        d.split(' ').next().unwrap_or(&d).to_string()
    };
    let from = match j.source.as_slice() {
        [one] => n(one),
        many => format!("{} drives", many.len()),
    };
    format!(
        "{} {} {from} -> {}",
        j.kind,
        format_size(j.bytes),
        n(&j.destination)
    )
}

fn paths(j: &JobReport) -> String {
    let mut p: Vec<&str> = Vec::new();
    for l in &j.legs {
        let w = match l.path {
            "bus_addr" => "P2P bus address",
            "thru_host_bridge" => "P2P host bridge",
            _ => "via host memory",
        };
        if !p.contains(&w) {
            p.push(w);
        }
    }
    p.join(" + ")
}

/// One line per job, then the comparisons worth reading.
pub fn summary(t: &Topology, r: &Report) -> String {
    let mut s = String::new();
    let ok = r.jobs.iter().filter(|j| j.ok && j.verified).count();
    let _ = writeln!(
        s,
        "{} jobs on {}, IOMMU {}: {ok} moved and verified byte for byte; {:.3} s simulated in {:.2} s\n",
        r.jobs.len(),
        r.machine,
        r.iommu.as_str(),
        r.sim_seconds,
        r.wall_seconds
    );
    let rows: Vec<[String; 6]> = r
        .jobs
        .iter()
        .map(|j| {
            [
                j.name.clone(),
                what(t, j),
                if j.ok { paths(j) } else { "FAILED".into() },
                format!("{:.1} ms", j.sim_seconds * 1e3),
                format!("{:.2} GB/s", j.gbytes_per_sec),
                j.bottleneck
                    .as_ref()
                    .map(|b| format!("{} {:.2} GB/s", link_name(t, &b.link), b.gbytes_per_sec))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let head = ["job", "what", "path", "time", "rate", "narrowest link"];
    let mut w = head.map(str::len);
    for row in &rows {
        for (k, c) in row.iter().enumerate() {
            w[k] = w[k].max(c.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}  {:>w4$}  {}\n",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3],
            w4 = w[4]
        )
    };
    s.push_str(&line(head));
    for row in &rows {
        s.push_str(&line([
            &row[0], &row[1], &row[2], &row[3], &row[4], &row[5],
        ]));
    }
    s.push('\n');
    let find = |n: &str| r.jobs.iter().find(|j| j.name == n);
    let p2p = find("load-p2p").or(find("load-host-bridge"));
    if let (Some(p), Some(h)) = (p2p, find("load-via-host")) {
        let _ = writeln!(
            s,
            "P2P or not, the same read: {:.1} ms straight into device memory, {:.1} ms through host memory. {}",
            p.sim_seconds * 1e3,
            h.sim_seconds * 1e3,
            if h.sim_seconds > p.sim_seconds * 1.02 {
                format!(
                    "Through host memory it also staged {} in DRAM and crossed the root complex twice.",
                    format_size(h.bounce_bytes)
                )
            } else {
                format!(
                    "Alone, one stream is limited by the drive's link either way; through host memory it also staged {} in DRAM and crossed the root complex twice: host bandwidth P2P leaves to other work.",
                    format_size(h.bounce_bytes)
                )
            }
        );
    }
    for j in &r.jobs {
        if let Some(why) = j
            .bounce_reason
            .as_ref()
            .filter(|_| j.name == "load-bounced")
        {
            let _ = writeln!(s, "{}: {}.", j.name, with_names(t, why));
        }
        for n in &j.notes {
            if n.contains("CPU XOR") || n.starts_with("staged") {
                let _ = writeln!(s, "{}: {}.", j.name, with_names(t, n));
            }
        }
        if let Some(e) = &j.error {
            let _ = writeln!(s, "{}: {}", j.name, with_names(t, e));
        }
    }
    if let (Some(a), Some(b)) = (find("fan-out-a"), find("fan-out-b")) {
        if a.shared_with.contains(&b.name) {
            let _ = writeln!(
                s,
                "fan-out: two reads of one drive at once share its link, {:.2} and {:.2} GB/s.",
                a.gbytes_per_sec, b.gbytes_per_sec
            );
        }
    }
    s
}

/// The full report of the demo (for `--verbose`).
pub fn full(t: &Topology, r: &Report) -> String {
    render(&crate::report::Names::one(t), r, "peerdma demo")
}
