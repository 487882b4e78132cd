//! The workload file: TOML, parsed in two steps. [`parse`] checks the
//! syntax and the types and keeps each job's line; [`Workload::resolve`]
//! holds the jobs against a machine (devices exist and have what the job
//! needs, sizes fit, `after` names jobs and makes no cycle). Every error is
//! one line that names the file, the line, the job and what is wrong.
//!
//! ```toml
//! [machine]                  # optional: the command line's source wins
//! preset = "dual-xeon"       # or snapshot / topology / root / hwloc = "PATH", or live = true
//! iommu = "off"              # off | passthrough | translated
//!
//! [[job]]
//! name = "weights"
//! kind = "read"              # O_DIRECT read from `drive` into the memory of `into`
//! drive = "nvme0"
//! into = "gpu0"
//! size = "1G"
//! policy = "bounce"          # bounce (default) | p2p-only | host (no P2P, to compare)
//!
//! [[job]]
//! name = "checkpoint"
//! kind = "write"             # from the memory of `from` to `drive`
//! from = "gpu0"
//! drive = "nvme1"
//! size = "512M"
//! after = "weights"          # or a list of names
//! ```
//!
//! Other kinds: `copy` (drive `from` to drive `to`), `raid1-rebuild`
//! (surviving mirror `from` to replacement `to`) and `raid5-read` (a
//! degraded read of `members`, one of them `missing`, into `into`).
//!
//! Across a `[wire]` between two machines (`[machine.a]`, `[machine.b]`,
//! devices named `a:gpu0`, host memory `a:host`): `rdma-write` /
//! `rdma-read` (`from`, `to`, `mr`, `message`, `migrate_at`),
//! `nvmeof-write` / `nvmeof-read` (`from` or `into`, `drive`, `p2pmem`,
//! `io_size`), and devmem TCP receive:
//!
//! ```toml
//! [[job]]
//! name = "shard"
//! kind = "devmem-rx"         # `from` sends, the NIC at the other end receives into `into`
//! from = "a:host"            # or a GPU: devmem TX of a dataset in its memory
//! into = "b:gpu0"            # a dma-buf of this memory, bound to an RX queue
//! size = "1G"
//! niov = "4K"                # net_iov size (rx-buf-size): 4K (default) .. 2M
//! mtu = 1500                 # default: the wire's
//! layout = "packed"          # packed (2K strides), packed:STRIDE, one-packet
//! return_tokens = "batched"  # batched (every `dontneed` frags), immediately, never
//! dontneed = 1024            # frags per SO_DEVMEM_DONTNEED (at most 1024)
//! dmabuf = "64M"             # default: a full ring, what the user holds, four bursts
//! ```

use peerdma_consumers::net::devmem::rx_buf_size_valid;
use peerdma_consumers::net::frame::{mtu_valid, MAX_MTU, MIN_MTU};
use peerdma_mem::{format_size, parse_size, Bdf};
use peerdma_pci::{FnId, Topology};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// An error in a workload, as one line: `FILE:LINE: job 'NAME': what`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}{}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), job.as_ref().map(|j| format!(": job '{j}'")).unwrap_or_default())]
pub struct WorkloadError {
    /// The file (or built-in workload) the error is in.
    pub origin: String,
    pub line: Option<usize>,
    pub job: Option<String>,
    pub message: String,
}

/// A byte count written as an integer or a string with a suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 4096, \"64K\", \"1.5G\" or \"0x1000\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v)
                    .map(Size)
                    .map_err(|e| E::custom(e.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One name or a list of names (`after = "a"` or `after = ["a", "b"]`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Names(pub Vec<String>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a job name or a list of job names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Names, E> {
                Ok(Names(vec![v.to_string()]))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Names(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    description: Option<String>,
    /// One machine (`[machine]` with its source), or several by name
    /// (`[machine.a]`, `[machine.b]`).
    #[serde(default)]
    machine: Option<toml::Table>,
    #[serde(default)]
    wire: Option<toml::Spanned<RawWire>>,
    #[serde(default, rename = "job")]
    jobs: Vec<toml::Spanned<RawJob>>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawWire {
    a: String,
    b: String,
    /// Line rate in Gbit/s, each direction.
    gbps: f64,
    #[serde(default)]
    mtu: Option<u32>,
    /// One-way latency: nanoseconds, or "2us", "500ns", "1ms".
    #[serde(default)]
    latency: Option<toml::Value>,
}

#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    preset: Option<String>,
    snapshot: Option<PathBuf>,
    topology: Option<PathBuf>,
    root: Option<PathBuf>,
    hwloc: Option<PathBuf>,
    live: Option<bool>,
    iommu: Option<String>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: String,
    kind: String,
    size: Size,
    #[serde(default)]
    after: Names,
    policy: Option<String>,
    drive: Option<String>,
    into: Option<String>,
    from: Option<String>,
    to: Option<String>,
    offset: Option<Size>,
    to_offset: Option<Size>,
    members: Option<Vec<String>>,
    missing: Option<String>,
    chunk: Option<Size>,
    via: Option<String>,
    data_pointer: Option<String>,
    fault: Option<RawFault>,
    /// RDMA: the kind of the dma-buf memory regions.
    mr: Option<String>,
    /// RDMA: bytes per work request.
    message: Option<Size>,
    /// RDMA: the responder's GPU driver moves the buffer at this byte.
    migrate_at: Option<Size>,
    /// NVMe-oF: the namespace's p2pmem setting.
    p2pmem: Option<String>,
    /// NVMe-oF: bytes per command.
    io_size: Option<Size>,
    /// devmem TCP: the `net_iov` size (the queue's rx-buf-size).
    niov: Option<Size>,
    /// devmem TCP: the interface MTU (default: the wire's).
    mtu: Option<u32>,
    /// devmem TCP: how the driver lays payloads into buffers.
    layout: Option<String>,
    /// devmem TCP: when the user gives tokens back.
    return_tokens: Option<String>,
    /// devmem TCP: frags given back per `SO_DEVMEM_DONTNEED`.
    dontneed: Option<u32>,
    /// devmem TCP: bytes of the bound dma-buf.
    dmabuf: Option<Size>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    device: Option<String>,
    at: Size,
}

/// Where the machine of a workload comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MachineSource {
    Preset(String),
    Snapshot(PathBuf),
    Topology(PathBuf),
    Root(PathBuf),
    /// hwloc XML (`lstopo --of xml`).
    Hwloc(PathBuf),
    Live,
}

/// The IOMMU of the simulated machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IommuSetting {
    #[default]
    Off,
    Passthrough,
    Translated,
}

impl IommuSetting {
    pub fn parse(s: &str) -> Option<IommuSetting> {
        Some(match s {
            "off" | "none" => IommuSetting::Off,
            "passthrough" | "pt" => IommuSetting::Passthrough,
            "translated" | "on" | "dma" => IommuSetting::Translated,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            IommuSetting::Off => "off",
            IommuSetting::Passthrough => "passthrough",
            IommuSetting::Translated => "translated",
        }
    }
}

/// What to do where P2P is not supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The I/O succeeds through host memory (two DMAs) and says so.
    #[default]
    Bounce,
    /// Fail with EREMOTEIO where the kernel would.
    P2pOnly,
    /// Always through host memory, even where P2P works: the path without
    /// P2P, to compare with.
    Host,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Bounce => "bounce",
            Policy::P2pOnly => "p2p-only",
            Policy::Host => "host",
        }
    }
}

/// How the NVMe driver describes data to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPointer {
    /// SGLs where the controller supports them, else PRPs.
    #[default]
    Auto,
    Prp,
    Sgl,
}

/// A job as written, before it is held against a machine.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub name: String,
    pub line: usize,
    raw: RawJob,
}

/// One machine of a workload, as written.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineSpec {
    /// The name jobs use for it (`a` in `a:gpu0`); empty for the one
    /// machine of a workload that names none.
    pub name: String,
    pub source: Option<MachineSource>,
    pub iommu: Option<IommuSetting>,
}

/// The wire of a workload, as written: two NICs named `machine:device`.
#[derive(Clone, Debug, PartialEq)]
pub struct WireSpec {
    pub a: String,
    pub b: String,
    pub bytes_per_sec: f64,
    pub mtu: u32,
    pub latency_ns: u64,
    pub line: usize,
}

/// A parsed workload.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The file it came from (for messages), or a built-in name.
    pub origin: String,
    pub description: Option<String>,
    /// At least one; several only when they are named.
    pub machines: Vec<MachineSpec>,
    pub wire: Option<WireSpec>,
    pub jobs: Vec<JobSpec>,
}

impl Workload {
    /// The source of a workload of one machine.
    pub fn machine(&self) -> Option<&MachineSource> {
        self.machines.first().and_then(|m| m.source.as_ref())
    }
    /// The IOMMU of a workload of one machine.
    pub fn iommu(&self) -> Option<IommuSetting> {
        self.machines.first().and_then(|m| m.iommu)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parse a workload's text. `origin` names it in errors; relative paths in
/// `[machine]` are taken relative to `base_dir`.
pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Workload, WorkloadError> {
    let err = |line: Option<usize>, job: Option<&str>, message: String| WorkloadError {
        origin: origin.to_string(),
        line,
        job: job.map(str::to_string),
        message,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(text.len(), |s| s.start).min(text.len());
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let before = text[line_start..at].trim_end();
        let after = text[at..line_end].trim();
        let message = e.message().trim();
        let msg = if before.ends_with('=') && (after.is_empty() || after.starts_with('#')) {
            let key = before.trim_end_matches('=').trim();
            format!("`{key}` has no value")
        } else if message.is_empty() {
            "this line is not TOML".to_string()
        } else if message.starts_with("invalid string") {
            "expected a value (text goes in quotes: name = \"load\")".to_string()
        } else {
            friendly(&message.replace('\n', " "))
        };
        err(Some(line_of(text, at)), None, msg)
    })?;
    let source_of = |name: &str, m: RawMachine| -> Result<MachineSpec, WorkloadError> {
        let label = if name.is_empty() {
            "[machine]".to_string()
        } else {
            format!("[machine.{name}]")
        };
        let mut sources = Vec::new();
        if let Some(p) = m.preset {
            sources.push(MachineSource::Preset(p));
        }
        if let Some(p) = m.snapshot {
            sources.push(MachineSource::Snapshot(base_dir.join(p)));
        }
        if let Some(p) = m.topology {
            sources.push(MachineSource::Topology(base_dir.join(p)));
        }
        if let Some(p) = m.root {
            sources.push(MachineSource::Root(base_dir.join(p)));
        }
        if let Some(p) = m.hwloc {
            sources.push(MachineSource::Hwloc(base_dir.join(p)));
        }
        if m.live == Some(true) {
            sources.push(MachineSource::Live);
        }
        if sources.len() > 1 {
            return Err(err(
                None,
                None,
                format!("{label} names more than one source (preset, snapshot, topology, root, hwloc, live): pick one"),
            ));
        }
        let iommu = match m.iommu {
            None => None,
            Some(s) => Some(IommuSetting::parse(&s).ok_or_else(|| {
                err(
                    None,
                    None,
                    format!("{label} iommu = \"{s}\" is not one of off, passthrough, translated"),
                )
            })?),
        };
        Ok(MachineSpec {
            name: name.to_string(),
            source: sources.pop(),
            iommu,
        })
    };
    const MACHINE_KEYS: [&str; 7] = [
        "preset", "snapshot", "topology", "root", "hwloc", "live", "iommu",
    ];
    let machines = match raw.machine {
        None => vec![MachineSpec {
            name: String::new(),
            source: None,
            iommu: None,
        }],
        Some(table) => {
            let line = text.find("[machine").map_or(1, |at| line_of(text, at));
            let one = table.is_empty() || table.keys().any(|k| MACHINE_KEYS.contains(&k.as_str()));
            let bad = |m: String| err(Some(line), None, m);
            if one {
                let m = RawMachine::deserialize(toml::Value::Table(table))
                    .map_err(|e| bad(format!("[machine]: {}", friendly(e.message().trim()))))?;
                vec![source_of("", m)?]
            } else {
                let mut out = Vec::new();
                for (name, v) in table {
                    if !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                    {
                        return Err(bad(format!(
                            "[machine.{name}]: a machine's name is letters, digits, '-' and '_'"
                        )));
                    }
                    let toml::Value::Table(t) = v else {
                        return Err(bad(format!(
                            "[machine] key `{name}` is not a source (preset, snapshot, topology, root, hwloc, live, iommu) or a machine table ([machine.{name}])"
                        )));
                    };
                    let m = RawMachine::deserialize(toml::Value::Table(t)).map_err(|e| {
                        bad(format!(
                            "[machine.{name}]: {}",
                            friendly(e.message().trim())
                        ))
                    })?;
                    out.push(source_of(&name, m)?);
                }
                out
            }
        }
    };
    let wire = match raw.wire {
        None => None,
        Some(w) => {
            let line = line_of(text, w.span().start);
            let w = w.into_inner();
            let bad = |m: String| err(Some(line), None, format!("[wire]: {m}"));
            if !(w.gbps.is_finite() && w.gbps > 0.0) {
                return Err(bad(format!(
                    "gbps = {} is not a positive line rate in Gbit/s",
                    w.gbps
                )));
            }
            let mtu = w.mtu.unwrap_or(1500);
            if !(576..=65535).contains(&mtu) {
                return Err(bad(format!("mtu = {mtu} is not between 576 and 65535")));
            }
            let latency_ns = match &w.latency {
                None => 1000,
                Some(v) => parse_latency(v).ok_or_else(|| {
                    bad(format!(
                        "latency = {v} is not a time such as 500, \"500ns\", \"2us\" or \"1ms\""
                    ))
                })?,
            };
            Some(WireSpec {
                a: w.a,
                b: w.b,
                bytes_per_sec: w.gbps * 1e9 / 8.0,
                mtu,
                latency_ns,
                line,
            })
        }
    };
    let mut jobs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for j in raw.jobs {
        let line = line_of(text, j.span().start);
        let raw = j.into_inner();
        if raw.name.trim().is_empty() {
            return Err(err(Some(line), None, "a job needs a non-empty name".into()));
        }
        if let Some(first) = seen.insert(raw.name.clone(), line) {
            return Err(err(
                Some(line),
                Some(&raw.name),
                format!("the name is already used by the job on line {first}"),
            ));
        }
        jobs.push(JobSpec {
            name: raw.name.clone(),
            line,
            raw,
        });
    }
    if jobs.is_empty() {
        return Err(err(
            None,
            None,
            "no jobs: add at least one [[job]] with name, kind, size and its devices".into(),
        ));
    }
    Ok(Workload {
        origin: origin.to_string(),
        description: raw.description,
        machines,
        wire,
        jobs,
    })
}

/// Read and parse a workload file.
pub fn load(path: &Path) -> Result<Workload, WorkloadError> {
    let origin = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|e| WorkloadError {
        origin: origin.clone(),
        line: None,
        job: None,
        message: format!("cannot read the workload: {}", io_text(&e)),
    })?;
    if !meta.is_file() {
        return Err(WorkloadError {
            origin,
            line: None,
            job: None,
            message: "not a regular file".into(),
        });
    }
    if meta.len() > 16 << 20 {
        return Err(WorkloadError {
            origin,
            line: None,
            job: None,
            message: format!(
                "{} is too large for a workload file",
                format_size(meta.len())
            ),
        });
    }
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError {
        origin: origin.clone(),
        line: None,
        job: None,
        message: format!("cannot read the workload: {}", io_text(&e)),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, &origin, base)
}

/// A latency: nanoseconds as a number, or a number with ns, us/µs or ms.
fn parse_latency(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok(),
        toml::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
            let (num, unit) = s.split_at(split);
            let n: f64 = num.parse().ok()?;
            let mul = match unit.trim() {
                "ns" => 1.0,
                "us" | "µs" => 1e3,
                "ms" => 1e6,
                _ => return None,
            };
            let ns = n * mul;
            (0.0..1e15).contains(&ns).then_some(ns.round() as u64)
        }
        _ => None,
    }
}

fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_lowercase()
}

/// serde's messages in the words of the format.
fn friendly(msg: &str) -> String {
    if msg.starts_with("missing field") {
        return msg.replacen("missing field", "missing key", 1);
    }
    if msg.starts_with("unknown field") {
        return msg
            .replacen("unknown field", "unknown key", 1)
            .replace("expected one of", "the keys are");
    }
    msg.to_string()
}

// ---------------------------------------------------------------------------
// Resolution against a machine
// ---------------------------------------------------------------------------

/// What a job does, with its devices resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Task {
    /// O_DIRECT read of `size` bytes at `offset` of `drive` into the
    /// device memory of `into`.
    Read { drive: Bdf, into: Bdf, offset: u64 },
    /// O_DIRECT write of the device memory of `from` to `drive` at `offset`.
    Write { from: Bdf, drive: Bdf, offset: u64 },
    /// Drive to drive.
    Copy {
        from: Bdf,
        to: Bdf,
        from_offset: u64,
        to_offset: u64,
        via: Option<Bdf>,
    },
    /// RAID-1 rebuild: the surviving mirror `from` onto the replacement `to`.
    Raid1Rebuild {
        from: Bdf,
        to: Bdf,
        via: Option<Bdf>,
    },
    /// RAID-5 read with one member missing, into the memory of `into`.
    Raid5Read {
        members: Vec<Bdf>,
        missing: usize,
        into: Bdf,
        chunk: u64,
        offset: u64,
    },
    /// An RDMA WRITE (`from` is the requester's buffer, `to` the
    /// responder's memory region) or READ (`from` the responder's region,
    /// `to` the requester's buffer), across the wire.
    Rdma {
        write: bool,
        from: MemRef,
        to: MemRef,
        pinned: bool,
        message: u64,
        migrate_at: Option<u64>,
    },
    /// NVMe-oF: a remote host writes its buffer `host` to (or reads it
    /// from) the namespace on `drive` of the target, across the wire.
    Nvmeof {
        write: bool,
        host: MemRef,
        drive: (usize, Bdf),
        offset: u64,
        io_size: u64,
        p2pmem: P2pMemSetting,
    },
    /// devmem TCP receive into device memory, across the wire.
    DevmemRx(DevmemRx),
}

/// devmem TCP receive: `from` sends over the wire, the NIC at the other
/// end receives into a dma-buf of `into`'s memory bound to an RX queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevmemRx {
    pub from: MemRef,
    /// Always device memory.
    pub into: MemRef,
    /// `net_iov` size in bytes.
    pub niov: u32,
    /// The interface MTU for this job, if not the wire's.
    pub mtu: Option<u32>,
    pub layout: peerdma_consumers::net::nic::BufferLayout,
    pub tokens: peerdma_consumers::net::flow::TokenReturn,
    /// Bytes of the dma-buf; `None`: a full ring, what the user holds and
    /// a burst, in 2 MiB units.
    pub dmabuf: Option<u64>,
}

/// Memory of a machine: host memory, or a device's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemRef {
    pub machine: usize,
    /// `None`: host memory (on the NIC's NUMA node).
    pub device: Option<Bdf>,
}

/// The NVMe-oF namespace's `p2pmem` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pMemSetting {
    Off,
    Auto,
    Device(Bdf),
}

impl Task {
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Read { .. } => "read",
            Task::Write { .. } => "write",
            Task::Copy { .. } => "copy",
            Task::Raid1Rebuild { .. } => "raid1-rebuild",
            Task::Raid5Read { .. } => "raid5-read",
            Task::Rdma { write: true, .. } => "rdma-write",
            Task::Rdma { write: false, .. } => "rdma-read",
            Task::Nvmeof { write: true, .. } => "nvmeof-write",
            Task::Nvmeof { write: false, .. } => "nvmeof-read",
            Task::DevmemRx(_) => "devmem-rx",
        }
    }
}

/// A fault a job injects into the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobFault {
    pub kind: FaultKind,
    /// The machine of the device.
    pub machine: usize,
    pub device: Bdf,
    /// Bytes into the job.
    pub at: u64,
}

/// The simulator's faults, by the names a workload uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    SurpriseRemoval,
    LinkDown,
    IommuFault,
    Revoke,
}

impl FaultKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::SurpriseRemoval => "surprise-removal",
            FaultKind::LinkDown => "link-down",
            FaultKind::IommuFault => "iommu-fault",
            FaultKind::Revoke => "revoke",
        }
    }
}

/// A job ready to run.
#[derive(Clone, Debug)]
pub struct Job {
    pub name: String,
    pub line: usize,
    /// The machine the job's devices are on.
    pub machine: usize,
    pub task: Task,
    pub size: u64,
    /// Indices of the jobs this one waits for.
    pub after: Vec<usize>,
    pub policy: Policy,
    pub data_pointer: DataPointer,
    pub fault: Option<JobFault>,
}

/// What resolution needs to know about the machine beyond its topology.
pub struct Capacities<'a> {
    pub topo: &'a Topology,
    /// Bytes of media behind each drive.
    pub media_size: u64,
    /// Bytes of device memory a device can give a job, and what it is.
    pub device_memory: &'a dyn Fn(FnId) -> Option<(u64, String)>,
}

/// Whether a function is an NVMe controller (class 01:08:xx).
pub fn is_nvme(topo: &Topology, f: FnId) -> bool {
    topo.function(f).class >> 8 == 0x0108
}

impl Workload {
    fn err(&self, j: Option<&JobSpec>, message: String) -> WorkloadError {
        WorkloadError {
            origin: self.origin.clone(),
            line: j.map(|j| j.line),
            job: j.map(|j| j.name.clone()),
            message,
        }
    }

    /// Where `what` (`DEVICE`, or `MACHINE:DEVICE` when the workload names
    /// several machines) is: the machine's index and the device's name.
    pub fn locate<'w>(&self, what: &'w str) -> Result<(usize, &'w str), String> {
        if self.machines.len() == 1 {
            return Ok((0, what));
        }
        if let Some((m, rest)) = what.split_once(':') {
            if let Some(i) = self.machines.iter().position(|x| x.name == m) {
                return Ok((i, rest));
            }
        }
        let names: Vec<String> = self
            .machines
            .iter()
            .map(|m| format!("{}:DEVICE", m.name))
            .collect();
        Err(format!(
            "\"{what}\" does not say which machine: write {}",
            names.join(" or ")
        ))
    }

    /// The wire between two machines' NICs, held against the machines.
    pub fn resolve_wire(
        &self,
        caps: &[Capacities<'_>],
    ) -> Result<Option<peerdma_consumers::net::Wire>, WorkloadError> {
        let Some(w) = &self.wire else { return Ok(None) };
        let err = |m: String| WorkloadError {
            origin: self.origin.clone(),
            line: Some(w.line),
            job: None,
            message: format!("[wire]: {m}"),
        };
        let port = |key: &str, what: &str| -> Result<peerdma_consumers::net::Port, WorkloadError> {
            let (m, name) = self
                .locate(what)
                .map_err(|x| err(format!("`{key}` = {x}")))?;
            let topo = caps
                .get(m)
                .ok_or_else(|| err(format!("`{key}` = \"{what}\": no such machine")))?
                .topo;
            let f = topo
                .lookup(name)
                .map_err(|e| err(format!("`{key}` = \"{what}\": {e}")))?;
            let func = topo.function(f);
            if func.base_class() != 0x02 {
                return Err(err(format!(
                    "`{key}` = \"{what}\" ({}) is not a network controller (class {:06x})",
                    func.bdf, func.class
                )));
            }
            Ok(peerdma_consumers::net::Port {
                machine: m,
                nic: func.bdf,
            })
        };
        let a = port("a", &w.a)?;
        let b = port("b", &w.b)?;
        if a == b {
            return Err(err("`a` and `b` are the same NIC".into()));
        }
        Ok(Some(peerdma_consumers::net::Wire {
            a,
            b,
            bytes_per_sec: w.bytes_per_sec,
            mtu: w.mtu,
            latency_ns: w.latency_ns,
        }))
    }

    /// Hold the jobs against the machines (`caps[i]` is machine `i`).
    pub fn resolve(&self, caps: &[Capacities<'_>]) -> Result<Vec<Job>, WorkloadError> {
        if caps.len() != self.machines.len() {
            return Err(self.err(
                None,
                format!(
                    "{} machine(s) given for a workload of {}",
                    caps.len(),
                    self.machines.len()
                ),
            ));
        }
        let index: HashMap<&str, usize> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.name.as_str(), i))
            .collect();
        let mut out = Vec::new();
        for j in &self.jobs {
            let r = &j.raw;
            let e = |m: String| self.err(Some(j), m);
            let need = |key: &str, v: &Option<String>| -> Result<String, WorkloadError> {
                v.clone()
                    .ok_or_else(|| e(format!("a {} job needs `{key}`", r.kind)))
            };
            // Every device of a storage job is on one machine.
            let on: std::cell::Cell<Option<usize>> = std::cell::Cell::new(None);
            let device = |key: &str, what: &str| -> Result<(FnId, Bdf), WorkloadError> {
                let (m, name) = self.locate(what).map_err(|x| e(format!("`{key}` = {x}")))?;
                match on.get() {
                    Some(prev) if prev != m => {
                        return Err(e(format!(
                            "`{key}` = \"{what}\" is on machine {} but the job's other devices are on {}: a {} job runs on one machine",
                            self.machines[m].name, self.machines[prev].name, r.kind
                        )))
                    }
                    _ => on.set(Some(m)),
                }
                let topo = caps[m].topo;
                topo.lookup(name)
                    .map(|f| (f, topo.function(f).bdf))
                    .map_err(|err| {
                        e(format!(
                            "`{key}` = \"{what}\": {}",
                            strip_origin(&err.to_string())
                        ))
                    })
            };
            let cap = |_: ()| &caps[on.get().unwrap_or(0)];
            let drive = |key: &str, what: &str| -> Result<Bdf, WorkloadError> {
                let (f, bdf) = device(key, what)?;
                let topo = cap(()).topo;
                if !is_nvme(topo, f) {
                    return Err(e(format!(
                        "`{key}` = \"{what}\" ({bdf}) is not an NVMe drive (class {:06x})",
                        topo.function(f).class
                    )));
                }
                Ok(bdf)
            };
            let memory = |key: &str, what: &str| -> Result<Bdf, WorkloadError> {
                let (f, bdf) = device(key, what)?;
                match (cap(()).device_memory)(f) {
                    None => Err(e(format!(
                        "`{key}` = \"{what}\" ({bdf}) has no device memory for the job: it publishes no P2P memory (p2pmem) and is not a GPU or accelerator"
                    ))),
                    Some((bytes, what_mem)) if bytes < r.size.0 => Err(e(format!(
                        "size {} is more than the {} of {what_mem} of `{key}` = \"{what}\" ({bdf})",
                        format_size(r.size.0),
                        format_size(bytes)
                    ))),
                    Some(_) => Ok(bdf),
                }
            };
            let media = |key: &str, off: u64| -> Result<u64, WorkloadError> {
                let size = cap(()).media_size;
                match off.checked_add(r.size.0) {
                    Some(end) if end <= size => Ok(off),
                    _ => Err(e(format!(
                        "{} at {key} {} runs past the end of the drive's {} of media",
                        format_size(r.size.0),
                        format_size(off),
                        format_size(size)
                    ))),
                }
            };
            if r.size.0 == 0 {
                return Err(e("size is 0: a job moves at least one block".into()));
            }
            if r.size.0 % 512 != 0 && r.kind != "devmem-rx" {
                return Err(e(format!(
                    "size {} is not a multiple of 512 bytes, the O_DIRECT block size",
                    r.size.0
                )));
            }
            let offset = r.offset.map_or(0, |s| s.0);
            if offset % 512 != 0 {
                return Err(e(format!(
                    "offset {offset} is not a multiple of 512 bytes, the O_DIRECT block size"
                )));
            }
            let via = match &r.via {
                Some(v) => Some(memory("via", v)?),
                None => None,
            };
            let allowed: &[&str] = match r.kind.as_str() {
                "read" => &["drive", "into", "offset"],
                "write" => &["from", "drive", "offset"],
                "copy" => &["from", "to", "offset", "to_offset", "via"],
                "raid1-rebuild" => &["from", "to", "via"],
                "raid5-read" => &["members", "missing", "into", "chunk", "offset"],
                "rdma-write" | "rdma-read" => &["from", "to", "mr", "message", "migrate_at"],
                "nvmeof-write" => &["from", "drive", "offset", "p2pmem", "io_size"],
                "nvmeof-read" => &["into", "drive", "offset", "p2pmem", "io_size"],
                "devmem-rx" => &[
                    "from",
                    "into",
                    "niov",
                    "mtu",
                    "layout",
                    "return_tokens",
                    "dontneed",
                    "dmabuf",
                ],
                other => {
                    return Err(e(format!(
                    "kind = \"{other}\" is not one of read, write, copy, raid1-rebuild, raid5-read, rdma-write, rdma-read, nvmeof-write, nvmeof-read, devmem-rx"
                )))
                }
            };
            for (key, set) in [
                ("drive", r.drive.is_some()),
                ("into", r.into.is_some()),
                ("from", r.from.is_some()),
                ("to", r.to.is_some()),
                ("offset", r.offset.is_some()),
                ("to_offset", r.to_offset.is_some()),
                ("members", r.members.is_some()),
                ("missing", r.missing.is_some()),
                ("chunk", r.chunk.is_some()),
                ("via", r.via.is_some()),
                ("mr", r.mr.is_some()),
                ("message", r.message.is_some()),
                ("migrate_at", r.migrate_at.is_some()),
                ("p2pmem", r.p2pmem.is_some()),
                ("io_size", r.io_size.is_some()),
                ("niov", r.niov.is_some()),
                ("mtu", r.mtu.is_some()),
                ("layout", r.layout.is_some()),
                ("return_tokens", r.return_tokens.is_some()),
                ("dontneed", r.dontneed.is_some()),
                ("dmabuf", r.dmabuf.is_some()),
            ] {
                if set && !allowed.contains(&key) {
                    return Err(e(format!(
                        "`{key}` does not apply to a {} job (it takes {})",
                        r.kind,
                        allowed.join(", ")
                    )));
                }
            }
            // Network jobs: their devices are on the two ends of the wire.
            let net_mem = |key: &str, what: &str| -> Result<MemRef, WorkloadError> {
                let (m, name) = self.locate(what).map_err(|x| e(format!("`{key}` = {x}")))?;
                if name == "host" {
                    return Ok(MemRef {
                        machine: m,
                        device: None,
                    });
                }
                let topo = caps[m].topo;
                let f = topo
                    .lookup(name)
                    .map_err(|err| e(format!("`{key}` = \"{what}\": {err}")))?;
                let bdf = topo.function(f).bdf;
                match (caps[m].device_memory)(f) {
                    None => Err(e(format!(
                        "`{key}` = \"{what}\" ({bdf}) has no device memory: it publishes no P2P memory (p2pmem) and is not a GPU or accelerator (\"host\" names host memory)"
                    ))),
                    Some((bytes, what_mem)) if bytes < r.size.0 => Err(e(format!(
                        "size {} is more than the {} of {what_mem} of `{key}` = \"{what}\" ({bdf})",
                        format_size(r.size.0),
                        format_size(bytes)
                    ))),
                    Some(_) => Ok(MemRef { machine: m, device: Some(bdf) }),
                }
            };
            let across = |a: &MemRef, b: &MemRef| -> Result<(), WorkloadError> {
                let Some(w) = &self.wire else {
                    return Err(e(format!(
                        "a {} job crosses a wire: add [wire] with the two NICs",
                        r.kind
                    )));
                };
                let ends = |m: usize| {
                    self.locate(&w.a).map(|x| x.0) == Ok(m)
                        || self.locate(&w.b).map(|x| x.0) == Ok(m)
                };
                if a.machine == b.machine || !ends(a.machine) || !ends(b.machine) {
                    return Err(e(format!(
                        "a {} job moves data between the machines at the two ends of the wire ({} and {})",
                        r.kind, w.a, w.b
                    )));
                }
                Ok(())
            };
            let task = match r.kind.as_str() {
                "rdma-write" | "rdma-read" => {
                    let from = net_mem("from", &need("from", &r.from)?)?;
                    let to = net_mem("to", &need("to", &r.to)?)?;
                    across(&from, &to)?;
                    let pinned = match r.mr.as_deref() {
                        None | Some("dynamic") => false,
                        Some("pinned") => true,
                        Some(x) => {
                            return Err(e(format!("mr = \"{x}\" is not one of dynamic, pinned")))
                        }
                    };
                    let message = r.message.map_or(1 << 20, |s| s.0);
                    if message == 0 || message > 1 << 31 {
                        return Err(e(format!(
                            "message = {message} is not between 1 byte and 2 GiB"
                        )));
                    }
                    let migrate_at = r.migrate_at.map(|s| s.0);
                    if migrate_at.is_some_and(|m| m >= r.size.0) {
                        return Err(e("migrate_at is not inside the job".into()));
                    }
                    Task::Rdma {
                        write: r.kind == "rdma-write",
                        from,
                        to,
                        pinned,
                        message,
                        migrate_at,
                    }
                }
                "nvmeof-write" | "nvmeof-read" => {
                    let write = r.kind == "nvmeof-write";
                    let host = if write {
                        net_mem("from", &need("from", &r.from)?)?
                    } else {
                        net_mem("into", &need("into", &r.into)?)?
                    };
                    let dname = need("drive", &r.drive)?;
                    let (dm, dn) = self
                        .locate(&dname)
                        .map_err(|x| e(format!("`drive` = {x}")))?;
                    let topo = caps[dm].topo;
                    let df = topo
                        .lookup(dn)
                        .map_err(|err| e(format!("`drive` = \"{dname}\": {err}")))?;
                    if !is_nvme(topo, df) {
                        return Err(e(format!(
                            "`drive` = \"{dname}\" ({}) is not an NVMe drive",
                            topo.function(df).bdf
                        )));
                    }
                    let drive = (dm, topo.function(df).bdf);
                    across(
                        &host,
                        &MemRef {
                            machine: dm,
                            device: None,
                        },
                    )?;
                    if offset
                        .checked_add(r.size.0)
                        .is_none_or(|x| x > caps[dm].media_size)
                    {
                        return Err(e(format!(
                            "{} at offset {} runs past the end of the drive's {} of media",
                            format_size(r.size.0),
                            format_size(offset),
                            format_size(caps[dm].media_size)
                        )));
                    }
                    let p2pmem = match r.p2pmem.as_deref() {
                        None | Some("off") => P2pMemSetting::Off,
                        Some("auto") => P2pMemSetting::Auto,
                        Some(x) => {
                            let (m, n) =
                                self.locate(x).map_err(|y| e(format!("`p2pmem` = {y}")))?;
                            if m != dm {
                                return Err(e(format!(
                                    "`p2pmem` = \"{x}\" is not on the target machine"
                                )));
                            }
                            let t = caps[m].topo;
                            let f = t.lookup(n).map_err(|err| {
                                e(format!(
                                    "`p2pmem` = \"{x}\" is not off, auto or a device: {err}"
                                ))
                            })?;
                            P2pMemSetting::Device(t.function(f).bdf)
                        }
                    };
                    let io_size = r.io_size.map_or(128 << 10, |s| s.0);
                    if io_size == 0 || io_size % 512 != 0 {
                        return Err(e(format!(
                            "io_size = {io_size} is not a whole number of 512-byte blocks"
                        )));
                    }
                    Task::Nvmeof {
                        write,
                        host,
                        drive,
                        offset,
                        io_size,
                        p2pmem,
                    }
                }
                "devmem-rx" => {
                    let from = net_mem("from", &need("from", &r.from)?)?;
                    let into_name = need("into", &r.into)?;
                    let (im, iname) = self
                        .locate(&into_name)
                        .map_err(|x| e(format!("`into` = {x}")))?;
                    let topo = caps[im].topo;
                    let f = topo
                        .lookup(iname)
                        .map_err(|err| e(format!("`into` = \"{into_name}\": {err}")))?;
                    let bdf = topo.function(f).bdf;
                    let Some(memory) = (caps[im].device_memory)(f) else {
                        return Err(e(format!(
                            "`into` = \"{into_name}\" ({bdf}) has no device memory to bind: devmem TCP receives into a dma-buf of a GPU's or accelerator's memory"
                        )));
                    };
                    let into = MemRef {
                        machine: im,
                        device: Some(bdf),
                    };
                    across(&from, &into)?;
                    Task::DevmemRx(devmem_rx(r, from, into, memory, &into_name).map_err(e)?)
                }
                "read" => Task::Read {
                    drive: drive("drive", &need("drive", &r.drive)?)?,
                    into: memory("into", &need("into", &r.into)?)?,
                    offset: media("offset", offset)?,
                },
                "write" => Task::Write {
                    from: memory("from", &need("from", &r.from)?)?,
                    drive: drive("drive", &need("drive", &r.drive)?)?,
                    offset: media("offset", offset)?,
                },
                "copy" | "raid1-rebuild" => {
                    let from = drive("from", &need("from", &r.from)?)?;
                    let to = drive("to", &need("to", &r.to)?)?;
                    let to_offset = r.to_offset.map_or(offset, |s| s.0);
                    if to_offset % 512 != 0 {
                        return Err(e(format!(
                            "to_offset {to_offset} is not a multiple of 512 bytes"
                        )));
                    }
                    if from == to {
                        let overlap =
                            offset < to_offset + r.size.0 && to_offset < offset + r.size.0;
                        if r.kind == "raid1-rebuild" || overlap {
                            return Err(e(format!(
                                "`from` and `to` are the same drive {from}{}",
                                if overlap {
                                    " and the ranges overlap"
                                } else {
                                    ""
                                }
                            )));
                        }
                    }
                    media("offset", offset)?;
                    media("to_offset", to_offset)?;
                    if r.kind == "copy" {
                        Task::Copy {
                            from,
                            to,
                            from_offset: offset,
                            to_offset,
                            via,
                        }
                    } else {
                        Task::Raid1Rebuild { from, to, via }
                    }
                }
                _ => {
                    let names = r
                        .members
                        .clone()
                        .ok_or_else(|| e("a raid5-read job needs `members`".into()))?;
                    if names.len() < 3 {
                        return Err(e(format!(
                            "RAID-5 needs at least 3 members, `members` has {}",
                            names.len()
                        )));
                    }
                    let mut members = Vec::new();
                    for m in &names {
                        let b = drive("members", m)?;
                        if members.contains(&b) {
                            return Err(e(format!("`members` lists {m} ({b}) twice")));
                        }
                        members.push(b);
                    }
                    let missing_name = need("missing", &r.missing)?;
                    let mb = drive("missing", &missing_name)?;
                    let missing = members.iter().position(|&b| b == mb).ok_or_else(|| {
                        e(format!(
                            "`missing` = \"{missing_name}\" is not one of `members`"
                        ))
                    })?;
                    let chunk = r.chunk.map_or(512 << 10, |s| s.0);
                    if chunk < 4096 || !chunk.is_power_of_two() {
                        return Err(e(format!(
                            "chunk {} is not a power of two of at least 4K",
                            format_size(chunk)
                        )));
                    }
                    let data_members = members.len() as u64 - 1;
                    // Media each member needs: whole stripes covering the range.
                    let stripe = chunk * data_members;
                    let first = offset / stripe;
                    let last = (offset + r.size.0).div_ceil(stripe);
                    let media_size = cap(()).media_size;
                    if last.checked_mul(chunk).is_none_or(|m| m > media_size) {
                        return Err(e(format!(
                            "{} at offset {} needs more than the {} of media per member",
                            format_size(r.size.0),
                            format_size(offset),
                            format_size(media_size)
                        )));
                    }
                    let _ = first;
                    Task::Raid5Read {
                        members,
                        missing,
                        into: memory("into", &need("into", &r.into)?)?,
                        chunk,
                        offset,
                    }
                }
            };
            let policy = policy_of(r).map_err(e)?;
            let data_pointer = data_pointer_of(r).map_err(e)?;
            let fault = match &r.fault {
                None => None,
                Some(f) => {
                    let kind = match f.kind.as_str() {
                        "surprise-removal" | "remove" => FaultKind::SurpriseRemoval,
                        "link-down" => FaultKind::LinkDown,
                        "iommu-fault" => FaultKind::IommuFault,
                        "revoke" => FaultKind::Revoke,
                        other => {
                            return Err(e(format!(
                                "fault kind = \"{other}\" is not one of surprise-removal, link-down, iommu-fault, revoke"
                            )))
                        }
                    };
                    let name = f
                        .device
                        .clone()
                        .ok_or_else(|| e("a fault needs `device`".into()))?;
                    let (fid, device) = device("fault.device", &name)?;
                    if kind == FaultKind::Revoke && (cap(()).device_memory)(fid).is_none() {
                        return Err(e(format!(
                            "a revoke fault needs device memory to revoke, and \"{name}\" ({device}) has none"
                        )));
                    }
                    if f.at.0 >= r.size.0 {
                        return Err(e(format!(
                            "fault at {} is not inside the job's {}",
                            format_size(f.at.0),
                            format_size(r.size.0)
                        )));
                    }
                    Some(JobFault {
                        kind,
                        machine: self.locate(&name).map_or(0, |x| x.0),
                        device,
                        at: f.at.0,
                    })
                }
            };
            let after = self.after_of(j, &index).map_err(e)?;
            let machine = match &task {
                Task::Rdma {
                    write: true, from, ..
                } => from.machine,
                Task::Rdma {
                    write: false, to, ..
                } => to.machine,
                Task::Nvmeof { host, .. } => host.machine,
                Task::DevmemRx(d) => d.into.machine,
                _ => on.get().unwrap_or(0),
            };
            out.push(Job {
                name: j.name.clone(),
                line: j.line,
                machine,
                task,
                size: r.size.0,
                after,
                policy,
                data_pointer,
                fault,
            });
        }
        if let Some(cycle) = find_cycle(&out) {
            let names: Vec<&str> = cycle.iter().map(|&i| out[i].name.as_str()).collect();
            let j = &self.jobs[cycle[0]];
            return Err(self.err(
                Some(j),
                format!("`after` makes a cycle: {}", names.join(" -> ")),
            ));
        }
        Ok(out)
    }
}

/// A job's `policy` (default `bounce`).
fn policy_of(r: &RawJob) -> Result<Policy, String> {
    match r.policy.as_deref() {
        None | Some("bounce") => Ok(Policy::Bounce),
        Some("p2p-only") => Ok(Policy::P2pOnly),
        Some("host") => Ok(Policy::Host),
        Some(p) => Err(format!(
            "policy = \"{p}\" is not one of bounce, p2p-only, host"
        )),
    }
}

/// A job's `data_pointer` (default `auto`).
fn data_pointer_of(r: &RawJob) -> Result<DataPointer, String> {
    match r.data_pointer.as_deref() {
        None | Some("auto") => Ok(DataPointer::Auto),
        Some("prp") => Ok(DataPointer::Prp),
        Some("sgl") => Ok(DataPointer::Sgl),
        Some(p) => Err(format!(
            "data_pointer = \"{p}\" is not one of auto, prp, sgl"
        )),
    }
}

impl Workload {
    /// The indices of the jobs `j` waits for (`index`: job name to index).
    fn after_of(&self, j: &JobSpec, index: &HashMap<&str, usize>) -> Result<Vec<usize>, String> {
        let mut after = Vec::new();
        for a in &j.raw.after.0 {
            match index.get(a.as_str()) {
                Some(&i) if self.jobs[i].name == j.name => {
                    return Err("`after` names the job itself".into())
                }
                Some(&i) => after.push(i),
                None => {
                    return Err(format!(
                        "`after` = \"{a}\" names no job (jobs: {})",
                        self.jobs
                            .iter()
                            .map(|j| j.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }
            }
        }
        Ok(after)
    }
}

/// The devmem-rx job's own keys, once its memories are found: `into`'s
/// device memory (`capacity` bytes of `what_mem`) receives what `from`
/// sends. The error is the message, without the file and job.
fn devmem_rx(
    r: &RawJob,
    from: MemRef,
    into: MemRef,
    (capacity, what_mem): (u64, String),
    into_name: &str,
) -> Result<DevmemRx, String> {
    use peerdma_consumers::net::flow::{TokenReturn, TransferSpec};
    use peerdma_consumers::net::nic::BufferLayout;
    use peerdma_consumers::net::tcp::MAX_DONTNEED_FRAGS;
    if r.policy.is_some() {
        return Err("`policy` does not apply to a devmem-rx job: devmem TCP has no bounce path (the bind fails where the NIC cannot reach the memory by P2P)".into());
    }
    if r.fault.is_some() {
        return Err("`fault` does not apply to a devmem-rx job (the consumer's tests cover its fault paths); leave tokens unreturned with return_tokens = \"never\" to see the pool run dry".into());
    }
    let bdf = into
        .device
        .ok_or("devmem TCP receives into device memory")?;
    let niov = match r.niov {
        None => 4096,
        Some(Size(n)) if rx_buf_size_valid(n) => n as u32,
        Some(Size(n)) => {
            return Err(format!(
                "niov = {} is not a power of two from 4K to 2M (the kernel's rx-buf-size)",
                format_size(n)
            ))
        }
    };
    if let Some(mtu) = r.mtu {
        if !mtu_valid(mtu) {
            return Err(format!("mtu = {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
        }
    }
    let layout: BufferLayout = match r.layout.as_deref() {
        None => BufferLayout::default(),
        Some(x) => x.parse().map_err(|m| format!("layout = {m}"))?,
    };
    if let BufferLayout::Packed { stride } = layout {
        if stride > niov {
            return Err(format!(
                "layout = \"{}\": strides of {} do not fit a {} net_iov",
                r.layout.as_deref().unwrap_or("packed"),
                format_size(u64::from(stride)),
                format_size(u64::from(niov))
            ));
        }
    }
    let dontneed = r.dontneed.unwrap_or(MAX_DONTNEED_FRAGS);
    if dontneed == 0 || dontneed > MAX_DONTNEED_FRAGS {
        return Err(format!(
            "dontneed = {dontneed}: one SO_DEVMEM_DONTNEED gives back 1 to {MAX_DONTNEED_FRAGS} frags"
        ));
    }
    let tokens = match r.return_tokens.as_deref() {
        None | Some("batched") => TokenReturn::Batch { frags: dontneed },
        Some("immediately") => TokenReturn::Immediately,
        Some("never") => TokenReturn::Never,
        Some(x) => {
            return Err(format!(
                "return_tokens = \"{x}\" is not one of batched (every `dontneed` frags), immediately, never"
            ))
        }
    };
    if r.dontneed.is_some() && !matches!(tokens, TokenReturn::Batch { .. }) {
        return Err("`dontneed` applies only with return_tokens = \"batched\"".into());
    }
    let dmabuf = r.dmabuf.map(|s| s.0);
    let mut spec = TransferSpec::new(r.size.0, bdf);
    spec.rx_buf_size = niov;
    let len = dmabuf.unwrap_or_else(|| spec.ring_dmabuf_len());
    if len == 0 || len % u64::from(niov) != 0 {
        return Err(format!(
            "dmabuf = {} is not a whole number of {} net_iovs",
            format_size(len),
            format_size(u64::from(niov))
        ));
    }
    if len > capacity {
        return Err(format!(
            "a dma-buf of {} is more than the {} of {what_mem} of `into` = \"{into_name}\" ({bdf})",
            format_size(len),
            format_size(capacity)
        ));
    }
    Ok(DevmemRx {
        from,
        into,
        niov,
        mtu: r.mtu,
        layout,
        tokens,
        dmabuf,
    })
}

/// `peerdma_pci` names the machine's origin in its lookup errors; the
/// workload error already names the file.
fn strip_origin(s: &str) -> String {
    s.to_string()
}

/// A cycle in the `after` graph, as job indices ending where it started.
pub fn find_cycle(jobs: &[Job]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut mark = vec![Mark::New; jobs.len()];
    let mut stack: Vec<usize> = Vec::new();
    fn visit(
        i: usize,
        jobs: &[Job],
        mark: &mut [Mark],
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        mark[i] = Mark::Open;
        stack.push(i);
        for &a in &jobs[i].after {
            match mark[a] {
                Mark::Open => {
                    let at = stack.iter().position(|&s| s == a).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(a);
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(a, jobs, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark[i] = Mark::Done;
        None
    }
    for i in 0..jobs.len() {
        if mark[i] == Mark::New {
            if let Some(c) = visit(i, jobs, &mut mark, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

/// Jobs in an order where every job comes after the jobs it waits for
/// (stable: file order where `after` allows).
pub fn run_order(jobs: &[Job]) -> Vec<usize> {
    let mut done = vec![false; jobs.len()];
    let mut out = Vec::new();
    while out.len() < jobs.len() {
        let before = out.len();
        for (i, j) in jobs.iter().enumerate() {
            if !done[i] && j.after.iter().all(|&a| done[a]) {
                done[i] = true;
                out.push(i);
            }
        }
        if out.len() == before {
            // A cycle: resolution refuses these, so this is not reached.
            break;
        }
    }
    out
}
