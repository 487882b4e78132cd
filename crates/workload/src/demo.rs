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
    s.push_str(&columns(head, &rows, &[3, 4]));
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

/// The NIC and the GPU it reaches best (by bus address before through the
/// host bridge, then by distance) with at least `size` bytes of GPU
/// memory; `Err` says why there is none.
pub fn best_nic_gpu(t: &Topology, size: u64) -> Result<(FnId, FnId), String> {
    let nics: Vec<FnId> = t
        .ids()
        .filter(|&f| t.function(f).class >> 16 == 0x02)
        .collect();
    if nics.is_empty() {
        return Err("it has no network controller".into());
    }
    let gpus: Vec<FnId> = t
        .ids()
        .filter(|&f| {
            matches!(
                peerdma_consumers::devmem::device_memory(t.function(f)),
                Some((
                    peerdma_consumers::devmem::DeviceMemoryKind::GpuAperture { .. },
                    n
                )) if n >= size
            )
        })
        .collect();
    // The (NIC, GPU) pair with the best verdict, then the shortest distance.
    let rank = |m: MapType| match m {
        MapType::BusAddr => 0,
        MapType::ThruHostBridge => 1,
        _ => 2,
    };
    let best = nics
        .iter()
        .flat_map(|&n| gpus.iter().map(move |&g| (n, g)))
        .map(|(n, g)| {
            let d = calc_map_type_and_dist(t, g, n);
            (rank(d.map_type), d.distance, n, g)
        })
        .filter(|&(r, ..)| r < 2)
        .min_by_key(|&(r, dist, ..)| (r, dist));
    let Some((_, _, nic, gpu)) = best else {
        return Err(if gpus.is_empty() {
            "it has no GPU memory for devmem TCP and GPUDirect RDMA".into()
        } else {
            "no NIC reaches a GPU by P2P (devmem TCP would be refused: it has no bounce path)"
                .into()
        });
    };
    Ok((nic, gpu))
}

/// The network part of the demo: two copies of `t` (machines `a` and
/// `b`) joined by a 100 Gbit/s wire between a NIC of each, the NIC that
/// reaches a GPU best. devmem TCP receive into GPU memory with the
/// kernel's 4 KiB `net_iov`s and with 64 KiB ones (the seed's question
/// about 1500-byte frames in 64K units), GPUDirect RDMA from GPU memory
/// to GPU memory, and an NVMe-oF write staged in a drive's CMB when one
/// is there. `Err` says why the machine has no network part (no NIC, no
/// GPU the NIC reaches by P2P).
pub fn network_workload_text(t: &Topology, size: u64) -> Result<String, String> {
    let (nic, gpu) = best_nic_gpu(t, size)?;
    let (n, g) = (name(t, nic), name(t, gpu));
    // Where the machine came from, so that `peerdma sim` runs the file on
    // the same machine (a preset); otherwise the command line gives it.
    let source = match (t.origin().kind.as_str(), t.snapshot()) {
        ("preset", None) => format!("preset = \"{}\"\n", t.origin().detail),
        (_, Some(p)) => format!(
            "snapshot = {}\n",
            toml::Value::String(
                std::fs::canonicalize(p)
                    .unwrap_or_else(|_| p.to_path_buf())
                    .display()
                    .to_string()
            )
        ),
        _ => String::new(),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# peerdma demo, network part, for {}: two copies of the machine (a and b)\n# joined by a wire between their {n}s. Each job waits for the one before.\ndescription = \"the network consumers of P2P DMA on two copies of {}\"\n\n[machine.a]\n{source}[machine.b]\n{source}\n[wire]\na = \"a:{n}\"\nb = \"b:{n}\"\ngbps = 100\nmtu = 1500\nlatency = \"2us\"\n",
        t.origin_label(),
        t.origin_label().replace('"', "'")
    );
    let size_s = gib(size);
    let _ = writeln!(
        s,
        "[[job]]\n# devmem TCP: 1500-byte frames from a's host memory into {g}'s memory on b,\n# headers split into host memory, 4 KiB net_iovs, tokens given back 1024 at a time\nname = \"devmem-4k\"\nkind = \"devmem-rx\"\nfrom = \"a:host\"\ninto = \"b:{g}\"\nsize = \"{size_s}\"\n"
    );
    let _ = writeln!(
        s,
        "[[job]]\n# the same into 64 KiB net_iovs, one packet per buffer: how much device memory\n# the frames hold\nname = \"devmem-64k\"\nkind = \"devmem-rx\"\nfrom = \"a:host\"\ninto = \"b:{g}\"\nsize = \"{size_s}\"\nniov = \"64K\"\nlayout = \"one-packet\"\nafter = \"devmem-4k\"\n"
    );
    let _ = writeln!(
        s,
        "[[job]]\n# GPUDirect RDMA: an RDMA WRITE from {g}'s memory on a into {g}'s memory on b,\n# memory regions on dma-bufs\nname = \"gpudirect\"\nkind = \"rdma-write\"\nfrom = \"a:{g}\"\nto = \"b:{g}\"\nsize = \"{size_s}\"\nafter = \"devmem-64k\"\n"
    );
    let cmb_drive = t
        .ids()
        .filter(|&f| is_nvme(t, f))
        .find(|&f| t.function(f).p2pmem.is_some_and(|p| p.published));
    if let Some(d) = cmb_drive {
        let _ = writeln!(
            s,
            "[[job]]\n# NVMe-oF: a remote host writes to b's {0}; b's target stages the data in\n# P2P memory (nvmet's p2pmem), not in its host memory\nname = \"nvmeof\"\nkind = \"nvmeof-write\"\nfrom = \"a:host\"\ndrive = \"b:{0}\"\nsize = \"{size_s}\"\np2pmem = \"auto\"\nafter = \"gpudirect\"\n",
            name(t, d)
        );
    }
    Ok(s)
}

/// `a:0000:1a:00.0` as `a:gpu0`.
fn net_name(t: &Topology, s: &str) -> String {
    match s.split_once(':') {
        Some((m, rest)) if !m.is_empty() && m.len() < 4 => {
            let d = device_name(t, rest);
            format!("{m}:{}", d.split(' ').next().unwrap_or(&d))
        }
        _ => s.to_string(),
    }
}

/// One line per job of the network part, then what its numbers say.
pub fn network_summary(t: &Topology, r: &Report) -> String {
    let mut s = String::new();
    let ok = r.jobs.iter().filter(|j| j.ok && j.verified).count();
    if let Some(w) = &r.wire {
        let _ = writeln!(
            s,
            "{} jobs on two copies of the machine, a wire of {} Gbit/s (MTU {}) between {} and {}: {ok} moved and verified byte for byte; {:.3} s simulated in {:.2} s\n",
            r.jobs.len(),
            w.gbits_per_sec,
            w.mtu,
            net_name(t, &w.a),
            net_name(t, &w.b),
            r.sim_seconds,
            r.wall_seconds
        );
    }
    let head = ["job", "what", "path of each leg", "rate", "narrowest link"];
    let rows: Vec<[String; 5]> = r
        .jobs
        .iter()
        .map(|j| {
            let legs: Vec<String> = j
                .legs
                .iter()
                .map(|l| {
                    let p = match l.path {
                        "bus_addr" => "P2P bus address",
                        "thru_host_bridge" => "P2P host bridge",
                        "wire" => "wire",
                        "bounced" => "bounced",
                        _ => "host memory",
                    };
                    format!("{}:{p}", l.machine.as_deref().unwrap_or(""))
                })
                .collect();
            [
                j.name.clone(),
                format!(
                    "{} {} {} -> {}",
                    j.kind,
                    format_size(j.bytes),
                    j.source
                        .iter()
                        .map(|x| net_name(t, x))
                        .collect::<Vec<_>>()
                        .join(", "),
                    net_name(t, &j.destination)
                ),
                if j.ok {
                    legs.join(", ")
                } else {
                    "FAILED".into()
                },
                format!("{:.2} GB/s", j.gbytes_per_sec),
                j.bottleneck
                    .as_ref()
                    .map(|b| {
                        let (m, l) = b.link.split_once(": ").unwrap_or(("", &b.link));
                        let l = link_name(t, l);
                        if m.is_empty() {
                            format!("{l} {:.2} GB/s", b.gbytes_per_sec)
                        } else {
                            format!("{m}: {l} {:.2} GB/s", b.gbytes_per_sec)
                        }
                    })
                    .unwrap_or_default(),
            ]
        })
        .collect();
    s.push_str(&columns(head, &rows, &[3]));
    s.push('\n');
    for j in &r.jobs {
        if let Some(d) = &j.devmem {
            let _ = writeln!(
                s,
                "{}: {} net_iovs, {}: buffer utilization {:.1}%, at most {} of GPU memory held for {} of payload; {} frags, {} tokens back in {} SO_DEVMEM_DONTNEED calls; {} of headers in host memory.",
                j.name,
                format_size(u64::from(d.niov_size)),
                d.layout,
                100.0 * d.utilization,
                format_size(d.peak_held_bytes),
                format_size(d.peak_payload_bytes),
                d.frags,
                d.tokens_returned,
                d.dontneed_calls,
                format_size(d.header_bytes)
            );
        }
        if let Some(saved) = j.host_memory_bytes_saved {
            let _ = writeln!(
                s,
                "{}: staged {} in P2P memory, {} in host memory: {} of the target's host memory bandwidth saved.",
                j.name,
                format_size(j.staged_p2p_bytes.unwrap_or(0)),
                format_size(j.staged_host_bytes.unwrap_or(0)),
                format_size(saved)
            );
        }
        if let Some(e) = &j.error {
            let _ = writeln!(s, "{}: {}", j.name, with_names(t, e));
        }
    }
    s
}

/// A table: each column padded to its widest cell (in characters), two
/// spaces apart, the columns in `right` aligned right, the last one as it
/// is; the head first.
fn columns<const N: usize>(head: [&str; N], rows: &[[String; N]], right: &[usize]) -> String {
    let mut w = head.map(|h| h.chars().count());
    for row in rows {
        for (k, c) in row.iter().enumerate() {
            w[k] = w[k].max(c.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: [&str; N]| {
        for (k, c) in cells.iter().enumerate() {
            if k + 1 == N {
                s.push_str(c);
            } else if right.contains(&k) {
                let _ = write!(s, "{c:>w$}  ", w = w[k]);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = w[k]);
            }
        }
        s.push('\n');
    };
    line(head);
    for row in rows {
        line(row.each_ref().map(String::as_str));
    }
    s
}
