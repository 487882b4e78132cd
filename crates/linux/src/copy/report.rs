//! What a copy did, or for a dry run would do: the report for people and
//! for tools (`--json`; the QEMU oracle in xtask reads its fields).

use super::buffer::Pages;
use super::endpoint::{Endpoint, Kind};
use crate::trace::TraceReport;
use peerdma_mem::{format_size, Bdf};
use peerdma_p2p::MapType;
use serde::Serialize;

/// How the data travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyPath {
    /// Both DMAs peer to peer by PCI bus address.
    P2pBusAddr,
    /// Peer to peer, at least one leg through the host bridge.
    P2pThruHostBridge,
    /// Through a buffer in host memory (two DMAs, or the CPU for buffered I/O).
    Bounced,
}

impl CopyPath {
    pub fn describe(self) -> &'static str {
        match self {
            CopyPath::P2pBusAddr => "P2P by PCI bus address",
            CopyPath::P2pThruHostBridge => "P2P through the host bridge",
            CopyPath::Bounced => "bounced through host memory",
        }
    }
}

/// How the path in a report is known (DESIGN.md rule 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKnown {
    /// Chosen before the copy by the kernel's rule (its verdict for the
    /// provider and each device, or no P2P memory to use), and nothing
    /// during the copy contradicted it: the kernel accepted every DMA. The
    /// route itself is not observable from user space.
    Decided,
    /// Seen during the copy: the kernel refused peer-to-peer DMA
    /// (EREMOTEIO), or the provider's memory could not be had, and the
    /// rest of the data bounced through host memory.
    Observed,
}

/// One end in the report.
#[derive(Clone, Debug, Serialize)]
pub struct EndReport {
    pub path: String,
    pub kind: Kind,
    pub block_device: Option<String>,
    pub pci: Option<Bdf>,
    pub numa_node: Option<u32>,
    pub direct: bool,
    pub offset: u64,
    pub align: u64,
}

/// The staging memory in the report.
#[derive(Clone, Debug, Serialize)]
pub struct StagingReport {
    /// "p2p" or "host".
    pub kind: &'static str,
    pub provider: Option<Bdf>,
    pub bytes: u64,
    pub pages: Option<Pages>,
    pub numa_node: Option<u32>,
}

/// The result of `--verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Verify {
    pub src_blake3: String,
    pub dst_blake3: String,
    pub equal: bool,
    /// Offset (from the start of the copied range) of the first differing byte.
    pub first_difference: Option<u64>,
}

/// How far an interrupted copy got.
#[derive(Clone, Debug, Serialize)]
pub struct Interrupted {
    /// Bytes from the start of the range known to be copied.
    pub copied: u64,
    /// Arguments that copy the rest.
    pub resume: String,
}

/// What a copy did (or, for a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub src: EndReport,
    pub dst: EndReport,
    pub bytes: u64,
    pub path: CopyPath,
    /// The kernel's verdict for the provider and each end, when P2P.
    pub read_leg: Option<MapType>,
    pub write_leg: Option<MapType>,
    pub staging: StagingReport,
    /// Why the copy is not P2P, when it is not.
    pub reason: Option<String>,
    /// The kernel refused P2P during the copy and the rest bounced.
    pub fallback: Option<String>,
    /// Whether `path` was decided by the kernel's rule or observed.
    pub path_known: PathKnown,
    /// The bytes were checked (`--verify`) and both ends are equal. A
    /// path is called verified only then.
    pub verified: bool,
    /// "direct": the aligned middle moved by the pipeline; "shifted": SRC
    /// and DST offsets differ modulo the alignment, so every byte went
    /// through a CPU copy in host memory.
    pub mode: &'static str,
    /// Bytes at the head and tail done by read-modify-write of DST blocks.
    pub edge_bytes: u64,
    pub chunk: u64,
    pub depth: usize,
    pub engine: &'static str,
    pub dry_run: bool,
    pub seconds: f64,
    pub bytes_per_sec: f64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub verify: Option<Verify>,
    pub interrupted: Option<Interrupted>,
    /// `--trace`: the path each leg was observed to take in the kernel's
    /// DMA mapping events (`trace.legs[].observed`), or why it could not be.
    pub trace: Option<TraceReport>,
}

pub(crate) fn end_report(e: &Endpoint, offset: u64) -> EndReport {
    EndReport {
        path: e.path.display().to_string(),
        kind: e.kind,
        block_device: e.backing.as_ref().map(|b| b.block.name.clone()),
        pci: e.pci(),
        numa_node: e.numa_node(),
        direct: e.direct,
        offset,
        align: e.align,
    }
}

impl CopyReport {
    /// One line for a failed `--verify`: the path the data took and where
    /// the destination first differs.
    pub fn verify_failure(&self) -> String {
        let Some(v) = self.verify.as_ref().filter(|v| !v.equal) else {
            return "the copy verified".into();
        };
        let how = match (&self.trace, self.path_known) {
            (Some(t), _) if t.agrees().is_some() => {
                let st = t.statement();
                match st.strip_prefix("mapped ") {
                    Some(rest) => format!("the kernel mapped it {rest}"),
                    None if t.agrees() == Some(true) => format!("it went {st}"),
                    None => st,
                }
            }
            (_, PathKnown::Decided) => {
                "as the kernel's rule decided it and the kernel accepted every DMA".into()
            }
            (_, PathKnown::Observed) => "after the fallback the kernel's refusal caused".into(),
        };
        format!(
            "VERIFY FAILED: the copy took the path {}{}, {how}, and the data did not arrive as sent: {}; source blake3 {}, destination {}",
            self.path.describe(),
            self.legs(),
            match v.first_difference {
                Some(o) => format!(
                    "{} differs from {} first at byte {o} of the range ({} offset {}, {} offset {})",
                    self.dst.path,
                    self.src.path,
                    self.src.path,
                    self.src.offset + o,
                    self.dst.path,
                    self.dst.offset + o
                ),
                None => format!("{} differs from {}", self.dst.path, self.src.path),
            },
            v.src_blake3,
            v.dst_blake3
        )
    }

    /// ` (read bus_addr, write bus_addr)`, or nothing without P2P legs.
    fn legs(&self) -> String {
        match (self.read_leg, self.write_leg) {
            (Some(r), Some(w)) => format!(" (read {r}, write {w})"),
            _ => String::new(),
        }
    }

    /// How the path is known, in words.
    fn known(&self) -> String {
        if let Some(t) = &self.trace {
            match t.agrees() {
                Some(true) => {
                    return "observed in the kernel's DMA mapping events (the trace below), as the kernel's rule decided".into()
                }
                Some(false) => {
                    return "the kernel's DMA mapping events DIFFER from what its rule decided (the trace below)".into()
                }
                None => {}
            }
        }
        match (self.path_known, self.path) {
            (PathKnown::Observed, _) => "observed during the copy (see the note)".into(),
            (PathKnown::Decided, CopyPath::Bounced) => {
                "decided before the copy: the data goes through host memory".into()
            }
            (PathKnown::Decided, _) => "decided by the kernel's rule (its verdict for the provider and each device); the kernel accepted every DMA, the route itself is not observable from user space".into(),
        }
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let end = |e: &EndReport| {
            let mut d = format!("{} ({:?}", e.path, e.kind).to_lowercase();
            if let Some(b) = &e.block_device {
                d.push_str(&format!(" on {b}"));
            }
            if let Some(p) = e.pci {
                d.push_str(&format!(", PCI {p}"));
            }
            if !e.direct {
                d.push_str(", buffered: no O_DIRECT");
            }
            d.push(')');
            if e.offset > 0 {
                d.push_str(&format!(" at offset {}", e.offset));
            }
            d
        };
        if self.dry_run {
            s.push_str("dry run: nothing was written\n");
        }
        s.push_str(&format!("from:  {}\n", end(&self.src)));
        s.push_str(&format!("to:    {}\n", end(&self.dst)));
        s.push_str(&format!("path:  {}{}\n", self.path.describe(), self.legs()));
        if !self.dry_run {
            s.push_str(&format!("known: {}\n", self.known()));
        }
        match (self.staging.kind, self.staging.provider) {
            ("p2p", Some(p)) => s.push_str(&format!(
                "via:   {} of P2P memory of {p}\n",
                format_size(self.staging.bytes)
            )),
            _ => s.push_str(&format!(
                "via:   {} of host memory{}{}\n",
                format_size(self.staging.bytes),
                self.staging
                    .numa_node
                    .map(|n| format!(" on NUMA node {n}"))
                    .unwrap_or_default(),
                match self.staging.pages {
                    Some(Pages::Hugetlb) => ", huge pages",
                    Some(Pages::TransparentHuge) => ", transparent huge pages",
                    _ => "",
                }
            )),
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!("why:   {r}\n"));
        }
        if let Some(f) = &self.fallback {
            s.push_str(&format!("note:  {f}\n"));
        }
        if let Some(t) = &self.trace {
            for l in t.render_lines() {
                s.push_str(&format!("trace: {l}\n"));
            }
        }
        s.push_str(&format!(
            "plan:  {} in {} chunks, {} in flight, {} ({}, {} edge bytes by read-modify-write)\n",
            format_size(self.bytes),
            format_size(self.chunk),
            self.depth,
            self.engine,
            self.mode,
            self.edge_bytes
        ));
        if !self.dry_run {
            s.push_str(&format!(
                "moved: {} in {:.3} s = {}/s, CPU {:.3} s user + {:.3} s system\n",
                format_size(self.interrupted.as_ref().map_or(self.bytes, |i| i.copied)),
                self.seconds,
                format_size(self.bytes_per_sec as u64),
                self.cpu_user_seconds,
                self.cpu_system_seconds
            ));
        }
        if let Some(i) = &self.interrupted {
            s.push_str(&format!(
                "INTERRUPTED after {}: continue with {}\n",
                format_size(i.copied),
                i.resume
            ));
        }
        match &self.verify {
            Some(v) if v.equal => s.push_str(&format!(
                "bytes: verified, both ends hash to blake3 {}\n",
                v.src_blake3
            )),
            Some(_) => {
                s.push_str(&self.verify_failure());
                s.push('\n');
            }
            None if !self.dry_run && self.interrupted.is_none() => {
                s.push_str("bytes: not verified (--verify checks them)\n")
            }
            None => {}
        }
        if let Some(t) = &self.trace {
            if !self.dry_run {
                let bytes = match &self.verify {
                    _ if self.interrupted.is_some() => "interrupted",
                    Some(v) if v.equal => "bytes verified",
                    Some(_) => "the bytes did NOT arrive as sent",
                    None => "bytes not checked (--verify checks them)",
                };
                s.push_str(&format!("so:    {}, {bytes}\n", t.statement()));
            }
        }
        s
    }
}
