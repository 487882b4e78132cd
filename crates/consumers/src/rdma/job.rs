//! One call per workload job: an RDMA WRITE or READ between two machines,
//! into or out of GPU memory (a dma-buf MR) or host memory, set up,
//! moved, checked byte for byte, and torn down with every reference given
//! back — what the workload runner calls.

use crate::devmem::DeviceMemory;
use crate::net::{MachineId, Wire};
use crate::rdma::dmabuf::{DmaBuf, Placement};
use crate::rdma::mr::{Access, MemoryRegion, MrKind};
use crate::rdma::nic::{Connection, Endpoint, Inject, RdmaEvent, RdmaNic, RdmaOutcome};
use crate::rdma::RdmaError;
use peerdma_mem::{Address, Bdf, PhysVec};
use peerdma_sim::{pattern, Fault, HostBuffer, SimMachine};

/// One machine of the workload, with the device memory its GPUs export.
#[derive(Clone, Copy)]
pub struct Host<'a> {
    pub sim: &'a SimMachine,
    pub devmem: &'a DeviceMemory,
}

/// Where one side's buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory on the NIC's NUMA node.
    Host,
    /// The device memory of a GPU (or accelerator), exported as a dma-buf.
    Device(Bdf),
}

/// One side of an RDMA job: a NIC of a machine and its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Side {
    pub machine: MachineId,
    pub nic: Bdf,
    pub memory: Memory,
}

/// The operation, from the requester's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RdmaOp {
    /// The requester's buffer into the responder's MR.
    Write,
    /// The responder's MR into the requester's buffer.
    Read,
}

/// The responder's exporter moves its dma-buf when the job reaches byte
/// `at` (its dynamic MR is told, and re-maps at its next access).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    pub at: u64,
    pub to: Placement,
}

/// A fault of the simulator, on one machine, at a byte of the job.
#[derive(Clone, Debug)]
pub struct JobFault {
    pub machine: MachineId,
    pub at: u64,
    pub fault: Fault,
}

/// An RDMA job.
#[derive(Clone, Debug)]
pub struct RdmaJob {
    pub op: RdmaOp,
    pub requester: Side,
    pub responder: Side,
    pub size: u64,
    /// Bytes per work request (message); 0 means 1 MiB.
    pub message: u64,
    /// The kind of every dma-buf MR of the job.
    pub mr: MrKind,
    /// Whether the GPU driver lets importers pin its dma-bufs.
    pub pinnable: bool,
    pub fault: Option<JobFault>,
    pub migrate: Option<Migration>,
    /// Seed of the pattern the source is filled with.
    pub seed: u64,
}

impl RdmaJob {
    /// A job with the defaults: 1 MiB messages, dynamic MRs, pinning
    /// allowed, no fault, no move.
    pub fn new(op: RdmaOp, requester: Side, responder: Side, size: u64) -> RdmaJob {
        RdmaJob {
            op,
            requester,
            responder,
            size,
            message: 0,
            mr: MrKind::Dynamic,
            pinnable: true,
            fault: None,
            migrate: None,
            seed: 0x5eed,
        }
    }
}

/// What an RDMA job did.
#[derive(Debug)]
pub struct RdmaReport {
    /// The legs (each NIC's DMA on its machine, and the wire), bytes,
    /// packets and line bytes.
    pub outcome: RdmaOutcome,
    /// The destination against the source, byte for byte.
    pub check: Result<(), String>,
    /// References, mappings, attachments and MRs all given back at the end.
    pub teardown: Result<(), String>,
    pub path_mtu: u32,
    pub messages: u64,
    pub mr_kind: MrKind,
    /// Re-maps of dynamic MRs after an invalidation.
    pub remaps: u64,
    /// Invalidations the exporters sent.
    pub invalidations: u64,
    /// Moves the exporters made.
    pub moves: u64,
}

/// A side's buffer and its MR (the MR first, so it goes first).
struct Buffer {
    mr: MemoryRegion,
    mem: Mem,
}

enum Mem {
    Host(HostBuffer),
    Dev(DmaBuf),
}

impl Buffer {
    fn phys(&self) -> Option<PhysVec> {
        match &self.mem {
            Mem::Host(h) => Some(h.phys()),
            Mem::Dev(b) => b.phys(),
        }
    }
}

fn host<'a>(hosts: &[Host<'a>], m: MachineId) -> Result<Host<'a>, RdmaError> {
    hosts.get(m).copied().ok_or(RdmaError::NoMachine {
        machine: m,
        count: hosts.len(),
    })
}

/// The NUMA node of a device (its own, or its host bridge's; 0 when the
/// topology does not say).
pub fn node_of(sim: &SimMachine, dev: Bdf) -> u32 {
    let t = sim.topology();
    t.find(dev)
        .and_then(|f| {
            let func = t.function(f);
            func.numa_node.or(t.host_bridge(func.host_bridge).numa_node)
        })
        .unwrap_or(0)
}

/// The MR address both sides name: where the buffer starts in the user's
/// address space (any value; it is translated by the MR).
const IOVA: u64 = 0x7f00_0000_0000;

fn buffer(
    h: Host<'_>,
    nic: &RdmaNic,
    side: &Side,
    size: u64,
    job: &RdmaJob,
) -> Result<Buffer, RdmaError> {
    match side.memory {
        Memory::Host => {
            let node = node_of(h.sim, side.nic);
            let hb = h
                .sim
                .alloc_host(size, node)
                .map_err(|e| RdmaError::Resource(e.to_string()))?;
            let phys = hb.phys().split_at(size).map_or(hb.phys(), |(a, _)| a);
            let mr = nic.reg_host_mr(phys, node, Access::ALL)?;
            Ok(Buffer {
                mr,
                mem: Mem::Host(hb),
            })
        }
        Memory::Device(gpu) => {
            let p = h.devmem.provider(h.sim, gpu)?;
            let buf = DmaBuf::export(h.sim.mapper(), &p, size, job.pinnable)?;
            let mr = nic.reg_dmabuf_mr(&buf, 0, size, IOVA, Access::ALL, job.mr)?;
            Ok(Buffer {
                mr,
                mem: Mem::Dev(buf),
            })
        }
    }
}

fn fill(sim: &SimMachine, v: PhysVec, len: u64, seed: u64) -> Result<(), RdmaError> {
    let mut b = vec![0u8; (1 << 20).min(len) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(b.len() as u64) as usize;
        pattern::fill(seed, done, &mut b[..n]);
        let at = v
            .addr()
            .checked_add(done)
            .ok_or_else(|| RdmaError::Resource("address overflow".into()))?;
        sim.cpu_write(at, &b[..n])
            .map_err(|e| RdmaError::Resource(e.to_string()))?;
        done += n as u64;
    }
    Ok(())
}

/// Run an RDMA job between `hosts` joined by `wire`.
pub fn run_rdma(hosts: &[Host<'_>], wire: &Wire, job: &RdmaJob) -> Result<RdmaReport, RdmaError> {
    if job.size == 0 {
        return Err(RdmaError::Invalid("an RDMA job of 0 bytes".into()));
    }
    let (rh, sh) = (
        host(hosts, job.requester.machine)?,
        host(hosts, job.responder.machine)?,
    );
    let rnic = RdmaNic::new(rh.sim, job.requester.machine, job.requester.nic)?;
    let snic = RdmaNic::new(sh.sim, job.responder.machine, job.responder.nic)?;
    // What the providers held before, to check they get it all back.
    let providers: Vec<(MachineId, Bdf, usize)> = [(rh, &job.requester), (sh, &job.responder)]
        .iter()
        .filter_map(|(h, s)| match s.memory {
            Memory::Device(g) => h
                .devmem
                .provider(h.sim, g)
                .ok()
                .map(|p| (s.machine, g, p.references())),
            Memory::Host => None,
        })
        .collect();
    let (mut report, bufs) = {
        let local = buffer(rh, &rnic, &job.requester, job.size, job)?;
        let remote = buffer(sh, &snic, &job.responder, job.size, job)?;
        let (src, dst, src_sim, dst_sim) = match job.op {
            RdmaOp::Write => (&local, &remote, rh.sim, sh.sim),
            RdmaOp::Read => (&remote, &local, sh.sim, rh.sim),
        };
        let gone = || RdmaError::Resource("the buffer was revoked before the job".into());
        fill(src_sim, src.phys().ok_or_else(gone)?, job.size, job.seed)?;
        // The destination starts with other bytes, so a lost write shows.
        fill(dst_sim, dst.phys().ok_or_else(gone)?, job.size, !job.seed)?;
        let mut conn = Connection::connect(
            Endpoint {
                sim: rh.sim,
                nic: &rnic,
            },
            Endpoint {
                sim: sh.sim,
                nic: &snic,
            },
            wire,
        )?;
        let msg = if job.message == 0 {
            1 << 20
        } else {
            job.message
        }
        .min(job.size);
        let mut out = RdmaOutcome::default();
        let mut events: Vec<(u64, RdmaEvent)> = Vec::new();
        if let Some(f) = &job.fault {
            events.push((
                f.at,
                RdmaEvent {
                    machine: f.machine,
                    at: 0,
                    what: Inject::Fault(f.fault.clone()),
                },
            ));
        }
        if let (Some(m), Mem::Dev(buf)) = (&job.migrate, &remote.mem) {
            events.push((
                m.at,
                RdmaEvent {
                    machine: job.responder.machine,
                    at: 0,
                    what: Inject::Migrate {
                        buf: buf.clone(),
                        to: m.to,
                    },
                },
            ));
        }
        let mut messages = 0u64;
        let mut pos = 0u64;
        while pos < job.size {
            let n = msg.min(job.size - pos);
            let mut due: Vec<RdmaEvent> = Vec::new();
            events.retain(|(at, e)| {
                if *at >= pos && *at < pos + n {
                    due.push(RdmaEvent {
                        at: at - pos,
                        ..e.clone()
                    });
                    false
                } else {
                    true
                }
            });
            let (lva, rva) = (local.mr.iova() + pos, remote.mr.iova() + pos);
            let rkey = remote.mr.key();
            let o = match job.op {
                RdmaOp::Write => conn.write(&local.mr, lva, rva, rkey, n, &mut due)?,
                RdmaOp::Read => conn.read(&local.mr, lva, rva, rkey, n, &mut due)?,
            };
            out.absorb(o);
            messages += 1;
            pos += n;
        }
        out.io.bytes = job.size;
        let check = match dst.phys() {
            None => Err("the destination buffer was revoked".to_string()),
            Some(v) => match dst_sim.memory_pattern_mismatch(v.addr(), job.size, job.seed, 0) {
                Ok(None) => Ok(()),
                Ok(Some(at)) => Err(format!(
                    "verification failed: the data moved but is wrong, first wrong byte at offset {at} of the job"
                )),
                Err(e) => Err(format!("verification could not read: {e}")),
            },
        };
        let (mut remaps, mut inval, mut moves) = (0, 0, 0);
        for b in [&local, &remote] {
            remaps += b.mr.remaps();
            inval += b.mr.invalidations();
            if let Mem::Dev(d) = &b.mem {
                moves += d.moves();
            }
        }
        out.io.notes.push(format!(
            "RoCE path MTU {} bytes on a wire of MTU {}: {} packets, {} line bytes",
            conn.path_mtu(),
            wire.mtu,
            out.packets,
            out.wire_bytes
        ));
        if remaps > 0 {
            out.io.notes.push(format!(
                "the exporter moved the buffer {moves} time(s); the dynamic MR re-mapped {remaps} time(s)"
            ));
        }
        let report = RdmaReport {
            path_mtu: conn.path_mtu(),
            outcome: out,
            check,
            teardown: Ok(()),
            messages,
            mr_kind: job.mr,
            remaps,
            invalidations: inval,
            moves,
        };
        drop(conn);
        let watch: Vec<DmaBuf> = [&local, &remote]
            .iter()
            .filter_map(|b| match &b.mem {
                Mem::Dev(d) => Some(d.clone()),
                Mem::Host(_) => None,
            })
            .collect();
        drop(local);
        drop(remote);
        (report, watch)
    };
    // Everything of the job is gone now: check nothing is still held.
    let mut leaks = Vec::new();
    for (nic, name) in [(&rnic, "requester"), (&snic, "responder")] {
        if nic.mr_count() != 0 {
            leaks.push(format!(
                "{} MR(s) still registered on the {name}'s NIC {}",
                nic.mr_count(),
                nic.bdf()
            ));
        }
    }
    for b in &bufs {
        if b.attachments() != 0 || b.mappings() != 0 || b.pins() != 0 {
            leaks.push(format!(
                "the dma-buf of {} still has {} attachment(s), {} mapping(s), {} pin(s)",
                b.exporter(),
                b.attachments(),
                b.mappings(),
                b.pins()
            ));
        }
    }
    drop(bufs);
    for (m, g, before) in providers {
        if let Ok(p) = hosts[m].devmem.provider(hosts[m].sim, g) {
            let now = p.references();
            if now > before && p.state() == peerdma_p2p::ProviderState::Live {
                leaks.push(format!(
                    "the memory of {g} on machine {m} holds {now} reference(s), {before} before the job"
                ));
            }
        }
    }
    if !leaks.is_empty() {
        report.teardown = Err(leaks.join("; "));
    }
    Ok(report)
}

/// GPUDirect RDMA end to end: `size` bytes of GPU memory on one machine
/// written into GPU memory on the other, through both NICs and the wire.
pub fn gpudirect(
    hosts: &[Host<'_>],
    wire: &Wire,
    from: Side,
    to: Side,
    size: u64,
    mr: MrKind,
) -> Result<RdmaReport, RdmaError> {
    for s in [&from, &to] {
        if !matches!(s.memory, Memory::Device(_)) {
            return Err(RdmaError::Invalid(format!(
                "GPUDirect RDMA moves GPU memory to GPU memory; the side on machine {} names host memory",
                s.machine
            )));
        }
    }
    let mut job = RdmaJob::new(RdmaOp::Write, from, to, size);
    job.mr = mr;
    run_rdma(hosts, wire, &job)
}
