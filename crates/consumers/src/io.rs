//! `read()` and `write()` with `O_DIRECT` between a file on an NVMe drive
//! and a buffer that may be device memory — "GPU people would really like
//! to do read() and have P2P transparently happen to on-GPU pages".
//!
//! The block layer builds the requests and maps each one; the NVMe driver
//! issues them. Where the drive cannot reach the buffer's memory the kernel
//! answers `EREMOTEIO`; under the bounce policy (DESIGN.md rule 3) the I/O
//! still succeeds as two DMAs through host memory on the drive's NUMA node,
//! and says so: the drive to host memory, then the memory's owner — its
//! copy engine if it has one (a GPU), else the CPU with uncached MMIO — from
//! host memory into the device memory (or the reverse for a write).
//!
//! Every DMA is recorded with the links it crossed, so a caller can time
//! the I/O among others in the flow model.

use crate::block::{self, BlockError, MappedPath, Op, Request};
use crate::nvme::{Command, NvmeDrive, NvmeError};
use peerdma_dma::{BouncePolicy, DmaSgl};
use peerdma_mem::{Address, Bdf, Direction, MemKind, PhysVec};
use peerdma_p2p::DmaTicket;
use peerdma_sim::{DmaError, Fault, HostBuffer, Local, LocalMut, PathBytes, SimMachine, Transfer};
use serde::Serialize;

/// One end of a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum End {
    /// A device: its media, or its memory.
    Device { bdf: Bdf },
    /// Host DRAM of a NUMA node (a bounce buffer).
    Host { node: u32 },
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Device { bdf } => write!(f, "{bdf}"),
            End::Host { node } => write!(f, "host memory (node {node})"),
        }
    }
}

/// How a leg's bytes travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LegPath {
    /// Peer to peer by PCI bus address.
    BusAddr,
    /// Peer to peer through the host bridge.
    ThruHostBridge,
    /// One of the two legs of a bounce through host memory.
    Bounced,
    /// Plain host memory I/O (the buffer is host memory).
    HostMemory,
    /// Frames on the wire between two machines' NICs.
    Wire,
}

impl LegPath {
    pub fn as_str(self) -> &'static str {
        match self {
            LegPath::BusAddr => "bus_addr",
            LegPath::ThruHostBridge => "thru_host_bridge",
            LegPath::Bounced => "bounced",
            LegPath::HostMemory => "host_memory",
            LegPath::Wire => "wire",
        }
    }
    pub fn describe(self) -> &'static str {
        match self {
            LegPath::BusAddr => "P2P by PCI bus address",
            LegPath::ThruHostBridge => "P2P through the host bridge",
            LegPath::Bounced => "bounced through host memory",
            LegPath::HostMemory => "host memory",
            LegPath::Wire => "on the wire",
        }
    }
}

/// Who moved a leg's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Mover {
    /// A device's DMA engine.
    Dma { engine: Bdf },
    /// The CPU, with loads and stores (uncached MMIO on the device side).
    Cpu,
}

/// One leg of an I/O: bytes from one end to the other by one path.
#[derive(Clone, Debug, Serialize)]
pub struct Leg {
    /// The machine whose DMA engine (or CPU) moved the leg; for a wire leg,
    /// the sending machine (0 on a workload of one machine).
    pub machine: crate::net::MachineId,
    /// For a wire leg, the receiving machine.
    pub peer_machine: Option<crate::net::MachineId>,
    pub from: End,
    pub to: End,
    pub path: LegPath,
    /// Whose P2P memory the leg used, if any.
    pub provider: Option<Bdf>,
    pub mover: Mover,
    pub bytes: u64,
    /// The links crossed, with bytes, for the flow model.
    #[serde(skip)]
    pub paths: Vec<PathBytes>,
    /// Routes the fabric took (observed), deduplicated.
    pub routes: Vec<peerdma_sim::Route>,
    /// Bytes answered with Unsupported Request (lost or all-ones).
    pub unsupported_bytes: u64,
}

impl Leg {
    pub fn new(from: End, to: End, path: LegPath, provider: Option<Bdf>, mover: Mover) -> Leg {
        Leg {
            machine: 0,
            peer_machine: None,
            from,
            to,
            path,
            provider,
            mover,
            bytes: 0,
            paths: Vec::new(),
            routes: Vec::new(),
            unsupported_bytes: 0,
        }
    }

    pub fn add(&mut self, t: &Transfer) {
        self.bytes += t.bytes;
        self.unsupported_bytes += t.unsupported_bytes;
        for r in &t.routes {
            if !self.routes.contains(r) {
                self.routes.push(*r);
            }
        }
        add_paths(&mut self.paths, &t.paths);
    }

    /// The same leg on machine `m` (and, for a wire leg, to `peer`).
    pub fn on(mut self, m: crate::net::MachineId, peer: Option<crate::net::MachineId>) -> Leg {
        self.machine = m;
        self.peer_machine = peer;
        self
    }

    fn same_kind(&self, other: &Leg) -> bool {
        self.machine == other.machine
            && self.peer_machine == other.peer_machine
            && self.from == other.from
            && self.to == other.to
            && self.path == other.path
            && self.provider == other.provider
            && self.mover == other.mover
    }
}

pub fn add_paths(into: &mut Vec<PathBytes>, from: &[PathBytes]) {
    for p in from {
        match into.iter_mut().find(|q| q.hops == p.hops) {
            Some(q) => q.bytes += p.bytes,
            None => into.push(p.clone()),
        }
    }
}

/// What an I/O did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IoOutcome {
    /// Bytes the user asked for and got.
    pub bytes: u64,
    pub legs: Vec<Leg>,
    pub commands: u64,
    /// Bytes staged in host memory because P2P was not possible.
    pub bounce_bytes: u64,
    /// Bytes the CPU copied.
    pub cpu_copy_bytes: u64,
    /// DMAs of queues and descriptors (command fetch, PRP lists, completions).
    #[serde(skip)]
    pub meta_paths: Vec<PathBytes>,
    /// Why bouncing was needed, when it was.
    pub bounce_reason: Option<String>,
    /// Bytes the CPU read to compute parity (a RAID-5 reconstruction).
    pub cpu_xor_bytes: u64,
    /// What a reader should know about how the bytes went.
    pub notes: Vec<String>,
}

impl IoOutcome {
    /// Add what another I/O of the same job did.
    pub fn absorb(&mut self, other: IoOutcome) {
        self.bytes += other.bytes;
        self.commands += other.commands;
        self.bounce_bytes += other.bounce_bytes;
        self.cpu_copy_bytes += other.cpu_copy_bytes;
        self.cpu_xor_bytes += other.cpu_xor_bytes;
        add_paths(&mut self.meta_paths, &other.meta_paths);
        if self.bounce_reason.is_none() {
            self.bounce_reason = other.bounce_reason;
        }
        for n in other.notes {
            if !self.notes.contains(&n) {
                self.notes.push(n);
            }
        }
        for l in other.legs {
            let i = self.leg(Leg {
                bytes: 0,
                paths: Vec::new(),
                routes: Vec::new(),
                unsupported_bytes: 0,
                ..l.clone()
            });
            let t = &mut self.legs[i];
            t.bytes += l.bytes;
            t.unsupported_bytes += l.unsupported_bytes;
            for r in l.routes {
                if !t.routes.contains(&r) {
                    t.routes.push(r);
                }
            }
            add_paths(&mut t.paths, &l.paths);
        }
    }

    /// Mark every leg as a leg of a bounce through host memory.
    pub fn mark_bounced(&mut self) {
        let legs = std::mem::take(&mut self.legs);
        for mut l in legs {
            l.path = LegPath::Bounced;
            let mut one = IoOutcome::default();
            one.legs.push(l);
            self.absorb(one);
        }
    }

    /// The index of the leg like `leg` in `legs`, added if new.
    pub fn leg(&mut self, leg: Leg) -> usize {
        match self.legs.iter().position(|l| l.same_kind(&leg)) {
            Some(i) => i,
            None => {
                self.legs.push(leg);
                self.legs.len() - 1
            }
        }
    }
}

/// Why an I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Block(#[from] BlockError),
    #[error(transparent)]
    Nvme(#[from] NvmeError),
    #[error("{what}: {source}")]
    Dma {
        what: String,
        #[source]
        source: DmaError,
    },
    #[error("{0}")]
    Resource(String),
    #[error("the memory of {provider} is revoked: {what} was not started")]
    Revoked { provider: Bdf, what: String },
}

impl IoError {
    /// The errno name a user of `read()`/`write()` would see.
    pub fn errno(&self) -> &'static str {
        match self {
            IoError::Block(b) => b.errno(),
            IoError::Nvme(_) | IoError::Dma { .. } => "EIO",
            IoError::Resource(_) => "ENOMEM",
            IoError::Revoked { .. } => "ENODEV",
        }
    }
}

/// What to do where the drive cannot reach the buffer by P2P.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Two DMAs through host memory (DESIGN.md rule 3).
    Bounce,
    /// `EREMOTEIO`, as the kernel.
    Fail,
    /// Always through host memory, even where P2P works (the path without
    /// P2P, for comparison).
    AlwaysHost,
}

/// Whether a device moves its own memory with a copy engine (GPUs and
/// processing accelerators do; an NVMe controller's CMB is filled by
/// others).
pub fn has_copy_engine(sim: &SimMachine, dev: Bdf) -> bool {
    let t = sim.topology();
    t.find(dev)
        .is_some_and(|f| matches!(t.function(f).base_class(), 0x03 | 0x12))
}

/// A fault to inject at a byte offset of the I/O.
#[derive(Clone, Debug)]
pub struct IoFault {
    pub at: u64,
    pub fault: Fault,
}

/// `read()` (`op` = Read: the drive's media at `offset` into `buf`) or
/// `write()` (`buf` onto the media at `offset`) with `O_DIRECT`.
pub fn direct_io(
    sim: &SimMachine,
    drive: &mut NvmeDrive,
    op: Op,
    offset: u64,
    buf: &[PhysVec],
    fallback: Fallback,
    mut fault: Option<IoFault>,
) -> Result<IoOutcome, IoError> {
    let limits = drive.limits();
    let requests = block::build_requests(drive.bdf(), &limits, op, offset, buf)?;
    let mut out = IoOutcome::default();
    let mut pending: Vec<(Request, DmaSgl, MappedPath, Option<DmaTicket>)> = Vec::new();
    let mut done = 0u64;
    for rq in requests {
        let len = rq.len();
        let mapped = if fallback == Fallback::AlwaysHost && rq.kind() != MemKind::System {
            None
        } else {
            match block::map_request(sim, drive.bdf(), &rq) {
                Ok(m) => Some(m),
                Err(e @ BlockError::NotSupported { .. }) => {
                    if fallback == Fallback::Fail {
                        flush(sim, drive, &mut pending, &mut out, &mut fault, done, false)?;
                        return Err(e.into());
                    }
                    out.bounce_reason.get_or_insert_with(|| e.to_string());
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        match mapped {
            Some((sgl, path)) => {
                let ticket = match sgl.provider() {
                    Some(p) => Some(p.begin_dma().map_err(|_| IoError::Revoked {
                        provider: p.bdf(),
                        what: format!("the {op} at byte {}", rq.offset),
                    })?),
                    None => None,
                };
                pending.push((rq, sgl, path, ticket));
                if pending.len() >= usize::from(drive.config().queue_entries - 1) {
                    done += flush(sim, drive, &mut pending, &mut out, &mut fault, done, false)?;
                }
            }
            None => {
                done += flush(sim, drive, &mut pending, &mut out, &mut fault, done, false)?;
                if fallback == Fallback::AlwaysHost && out.bounce_reason.is_none() {
                    out.bounce_reason = Some("asked to go through host memory".into());
                }
                bounce(sim, drive, &rq, &mut out, &mut fault, done)?;
                done += len;
            }
        }
    }
    flush(sim, drive, &mut pending, &mut out, &mut fault, done, false)?;
    out.bytes = buf.iter().map(|v| v.len()).sum();
    Ok(out)
}

/// Issue the mapped requests waiting in `pending`; bytes done.
fn flush(
    sim: &SimMachine,
    drive: &mut NvmeDrive,
    pending: &mut Vec<(Request, DmaSgl, MappedPath, Option<DmaTicket>)>,
    out: &mut IoOutcome,
    fault: &mut Option<IoFault>,
    done: u64,
    bounced: bool,
) -> Result<u64, IoError> {
    if pending.is_empty() {
        return Ok(0);
    }
    let batch = std::mem::take(pending);
    let mut cmds: Vec<Command<'_>> = Vec::with_capacity(batch.len());
    let mut pos = done;
    for (rq, sgl, _, _) in &batch {
        let len = rq.len();
        let f = match fault {
            Some(f) if f.at >= pos && f.at < pos + len => {
                fault.take().map(|f| with_after(f.fault, f.at - pos))
            }
            _ => None,
        };
        cmds.push(Command {
            op: rq.op,
            offset: rq.offset,
            sgl,
            fault: f,
        });
        pos += len;
    }
    let done_cmds = drive.execute(sim, &mut cmds)?;
    let mut moved = 0u64;
    for ((rq, sgl, path, _ticket), c) in batch.iter().zip(done_cmds) {
        out.commands += 1;
        add_paths(
            &mut out.meta_paths,
            &c.meta
                .iter()
                .flat_map(|t| t.paths.clone())
                .collect::<Vec<_>>(),
        );
        let mem_end = match rq.kind().provider() {
            Some(p) => End::Device { bdf: p },
            None => End::Host {
                node: rq
                    .segments
                    .first()
                    .and_then(|v| sim.host_node(v.addr()))
                    .unwrap_or(drive.numa_node()),
            },
        };
        let dev_end = End::Device { bdf: drive.bdf() };
        let (from, to) = match rq.op {
            Op::Read => (dev_end, mem_end),
            Op::Write => (mem_end, dev_end),
        };
        let lp = match path {
            _ if bounced => LegPath::Bounced,
            MappedPath::BusAddr => LegPath::BusAddr,
            MappedPath::ThruHostBridge => LegPath::ThruHostBridge,
            MappedPath::Host => LegPath::HostMemory,
        };
        let i = out.leg(Leg::new(
            from,
            to,
            lp,
            sgl.provider().map(|p| p.bdf()),
            Mover::Dma {
                engine: drive.bdf(),
            },
        ));
        for t in &c.data {
            out.legs[i].add(t);
        }
        if !c.status.is_success() {
            return Err(NvmeError::Command {
                drive: drive.bdf(),
                cid: c.cid,
                op: rq.op,
                offset: rq.offset,
                len: rq.len(),
                status: c.status,
                cause: c.cause,
            }
            .into());
        }
        moved += rq.len();
    }
    // Mappings and tickets end here, after every completion was reaped.
    drop(batch);
    Ok(moved)
}

fn with_after(f: Fault, after: u64) -> Fault {
    match f {
        Fault::LinkDown { below, .. } => Fault::LinkDown { below, after },
        Fault::Remove { device, .. } => Fault::Remove { device, after },
        Fault::IommuFault { device, .. } => Fault::IommuFault { device, after },
        Fault::Revoke { provider, .. } => Fault::Revoke { provider, after },
    }
}

/// One request that the drive cannot do against its memory directly: two
/// DMAs through a host buffer on the drive's node.
fn bounce(
    sim: &SimMachine,
    drive: &mut NvmeDrive,
    rq: &Request,
    out: &mut IoOutcome,
    fault: &mut Option<IoFault>,
    done: u64,
) -> Result<(), IoError> {
    let len = rq.len();
    let node = drive.numa_node();
    let host: HostBuffer = sim
        .alloc_host(len, node)
        .map_err(|e| IoError::Resource(format!("bounce buffer: {e}")))?;
    let host_rq = Request {
        op: rq.op,
        offset: rq.offset,
        segments: vec![host.phys()],
    };
    let owner = rq.kind().provider();
    let device_leg = |out: &mut IoOutcome| -> Result<(), IoError> {
        match owner {
            Some(owner) => device_copy(
                sim,
                out,
                owner,
                node,
                host.phys(),
                &rq.segments,
                rq.op == Op::Read,
                &format!("the {} at byte {}", rq.op, rq.offset),
            ),
            None => Ok(()),
        }
    };
    if rq.op == Op::Write {
        device_leg(out)?;
    }
    // The drive's leg, host memory on its side.
    let (sgl, _) = block::map_request(sim, drive.bdf(), &host_rq)?;
    let mut one = vec![(host_rq.clone(), sgl, MappedPath::Host, None)];
    flush(sim, drive, &mut one, out, fault, done, true)?;
    if rq.op == Op::Read {
        device_leg(out)?;
    }
    out.bounce_bytes += len;
    Ok(())
}

/// Move bytes between host memory (`host`, on `node`) and device memory of
/// `owner` (`segments`, in order, as long as `host` together), into the
/// device (`to_device`) or out of it: by the owner's copy engine when it
/// has one, else by the CPU with uncached MMIO. One bounce leg in `out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn device_copy(
    sim: &SimMachine,
    out: &mut IoOutcome,
    owner: Bdf,
    node: u32,
    host: PhysVec,
    segments: &[PhysVec],
    to_device: bool,
    what: &str,
) -> Result<(), IoError> {
    let len: u64 = segments.iter().map(|s| s.len()).sum();
    let overflow = || IoError::Resource("address overflow".into());
    let host_end = End::Host { node };
    let dev_end = End::Device { bdf: owner };
    let (from, to) = if to_device {
        (host_end, dev_end)
    } else {
        (dev_end, host_end)
    };
    if has_copy_engine(sim, owner) {
        let dir = if to_device {
            Direction::ToDevice
        } else {
            Direction::FromDevice
        };
        let map = sim
            .map(owner, &[host], dir, BouncePolicy::Forbid)
            .map_err(|source| IoError::Dma {
                what: format!("mapping host memory for {owner}"),
                source,
            })?;
        let i = out.leg(Leg::new(
            from,
            to,
            LegPath::Bounced,
            Some(owner),
            Mover::Dma { engine: owner },
        ));
        let mut segs = segments.iter();
        let mut seg = segs.next().copied();
        let mut seg_off = 0u64;
        for e in map.entries() {
            let mut eoff = 0;
            while eoff < e.len {
                let Some(s) = seg else { break };
                let n = (e.len - eoff).min(s.len() - seg_off);
                let addr = e.addr.checked_add(eoff).ok_or_else(overflow)?;
                let own = s.addr().checked_add(seg_off).ok_or_else(overflow)?;
                let t = if to_device {
                    sim.dma_from(owner, addr, n, LocalMut::Own(own))
                } else {
                    sim.dma_to(owner, addr, n, Local::Own(own))
                }
                .map_err(|source| IoError::Dma {
                    what: format!("{owner}'s copy engine, for {what}"),
                    source,
                })?;
                out.legs[i].add(&t);
                eoff += n;
                seg_off += n;
                if seg_off == s.len() {
                    seg = segs.next().copied();
                    seg_off = 0;
                }
            }
        }
    } else {
        // The CPU: loads from one side, stores to the other, in pieces.
        let i = out.leg(Leg::new(
            from,
            to,
            LegPath::Bounced,
            Some(owner),
            Mover::Cpu,
        ));
        let mut tmp = vec![0u8; 1 << 20];
        let mut hoff = 0u64;
        let cpu =
            |e: peerdma_sim::AccessError| IoError::Resource(format!("CPU copy for {what}: {e}"));
        for s in segments {
            let mut so = 0u64;
            while so < s.len() {
                let n = (s.len() - so).min(tmp.len() as u64);
                let b = &mut tmp[..n as usize];
                let dev_at = s.addr().checked_add(so).ok_or_else(overflow)?;
                let host_at = host.addr().checked_add(hoff).ok_or_else(overflow)?;
                if to_device {
                    sim.cpu_read(host_at, b).map_err(cpu)?;
                    sim.cpu_write(dev_at, b).map_err(cpu)?;
                } else {
                    sim.cpu_read(dev_at, b).map_err(cpu)?;
                    sim.cpu_write(host_at, b).map_err(cpu)?;
                }
                so += n;
                hoff += n;
            }
        }
        let hops = sim
            .cpu_copy_path(owner, node, to_device)
            .map_err(|e| IoError::Resource(e.to_string()))?;
        let leg = &mut out.legs[i];
        leg.bytes += len;
        add_paths(&mut leg.paths, &[PathBytes { hops, bytes: len }]);
        out.cpu_copy_bytes += len;
    }
    Ok(())
}

/// The part `[off, off + len)` of a list of segments.
pub fn slice_segments(segments: &[PhysVec], off: u64, len: u64) -> Vec<PhysVec> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    let end = off.saturating_add(len);
    for s in segments {
        let (s0, s1) = (pos, pos + s.len());
        pos = s1;
        if s1 <= off || s0 >= end {
            continue;
        }
        let a = off.max(s0) - s0;
        let b = end.min(s1) - s0;
        let piece = if a == 0 {
            *s
        } else {
            s.split_at(a).map_or(*s, |(_, t)| t)
        };
        let piece = if b - a == piece.len() {
            piece
        } else {
            piece.split_at(b - a).map_or(piece, |(h, _)| h)
        };
        out.push(piece);
    }
    out
}
