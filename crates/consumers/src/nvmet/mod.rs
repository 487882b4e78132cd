//! The NVMe-oF target over RDMA with P2P memory: the kernel's nvmet
//! `p2pmem` option, end to end between two machines.
//!
//! A remote host (machine A) sends command capsules to the target
//! (machine B) over RDMA; the target pulls a write's data from the host's
//! buffer with RDMA READ (or pushes a read's with RDMA WRITE), staging it
//! in memory its NIC and the drive can both reach, and the drive moves it
//! between that memory and its media. Which memory, as nvmet decides:
//!
//! * enabling the namespace with `p2pmem` set (`nvmet_p2pmem_ns_enable`):
//!   the drive's queue must support P2P; a named device must be reachable
//!   by the drive (`pci_p2pdma_distance`), and `auto` needs some published
//!   P2P memory the drive can reach (`pci_p2pmem_find`) — else the
//!   namespace cannot be enabled;
//! * when the host connects (`nvmet_p2pmem_ns_add_p2p`), the provider is
//!   the one closest to both the NIC and the drive, chosen as
//!   `pci_p2pmem_find_many` chooses (or the named device, if both reach
//!   it); if none fits, the namespace's I/O stages in host memory, and the
//!   report says why;
//! * per request (`nvmet_req_alloc_sgls`): the staging buffer comes from
//!   the provider's pool, or from host memory when the pool is exhausted.
//!
//! The report counts what was staged where, and the host-memory bytes the
//! P2P memory saved: every byte staged in a CMB is a byte the NIC did not
//! write into DRAM and the drive did not read back out of it.

use crate::block::Op;
use crate::io::{direct_io, Fallback, IoError, IoFault};
use crate::net::{MachineId, Wire};
use crate::nvme::wire::{Cqe, DataPtr, Opcode, SglDesc, SglType, Sqe, Status, CQE_SIZE, SQE_SIZE};
use crate::nvme::NvmeDrive;
use crate::rdma::job::{Host, JobFault, Memory};
use crate::rdma::{
    Access, Connection, DmaBuf, Endpoint, Inject, MemoryRegion, MrKind, RdmaError, RdmaEvent,
    RdmaNic, RdmaOutcome,
};
use peerdma_mem::{Address, Bdf, PhysVec};
use peerdma_p2p::{distance_many, find_many, providers, Allocation};
use peerdma_sim::{pattern, HostBuffer, SimMachine};

/// The namespace's `p2pmem` setting (configfs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum P2pMem {
    /// Stage in host memory (the default).
    Off,
    /// Any published P2P memory that fits (`p2pmem=1`).
    Auto,
    /// This device's P2P memory (`p2pmem=<pci device>`).
    Device(Bdf),
}

/// An NVMe-oF job: a remote host writes to (or reads from) a namespace
/// of the target.
#[derive(Clone, Debug)]
pub struct NvmetJob {
    pub op: Op,
    /// The host: its machine, its NIC, where its buffer is.
    pub host_machine: MachineId,
    pub host_nic: Bdf,
    pub host_memory: Memory,
    /// The target: its machine and NIC; the namespace is `drive`.
    pub target_machine: MachineId,
    pub target_nic: Bdf,
    pub drive: Bdf,
    /// Byte offset on the namespace.
    pub offset: u64,
    pub size: u64,
    /// Bytes per command (0: 128 KiB).
    pub io_size: u64,
    pub p2pmem: P2pMem,
    pub fault: Option<JobFault>,
    pub seed: u64,
}

/// What an NVMe-oF job did.
#[derive(Debug)]
pub struct NvmetReport {
    pub outcome: RdmaOutcome,
    pub check: Result<(), String>,
    pub teardown: Result<(), String>,
    pub commands: u64,
    /// The provider whose P2P memory staged the data, if one did.
    pub p2p_provider: Option<Bdf>,
    /// Why the namespace's I/O staged in host memory, if it did.
    pub host_reason: Option<String>,
    pub staged_p2p_bytes: u64,
    pub staged_host_bytes: u64,
    /// Requests that found the P2P pool full and used host memory.
    pub pool_fallbacks: u64,
    /// Bytes that did not go through the target's host memory because
    /// they were staged in P2P memory (the same job without p2pmem stages
    /// each of them in DRAM).
    pub host_memory_bytes_saved: u64,
    /// DRAM traffic saved: each staged byte is written and read once.
    pub dram_traffic_saved: u64,
}

/// Why an NVMe-oF job failed.
#[derive(Debug, thiserror::Error)]
pub enum NvmetError {
    #[error("nvmet: cannot enable the namespace on {drive} with p2pmem: {why}")]
    NsEnable { drive: Bdf, why: String },
    #[error("nvmet: {0}")]
    Rdma(#[from] RdmaError),
    #[error("nvmet: the namespace's I/O on {drive} failed: {source}")]
    Io {
        drive: Bdf,
        #[source]
        source: IoError,
    },
    #[error("nvmet: command {cid} ({op} of {len} bytes at byte {offset}) completed with {status}")]
    Status {
        cid: u16,
        op: Op,
        offset: u64,
        len: u64,
        status: Status,
    },
    #[error("nvmet: {0}")]
    Protocol(String),
    #[error("nvmet: ENOMEM: {0}")]
    Resource(String),
}

/// Where the namespace stages its data, as the target decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staging {
    P2p { provider: Bdf },
    Host { why: String },
}

fn bdf_id(sim: &SimMachine, b: Bdf) -> Result<peerdma_pci::FnId, NvmetError> {
    sim.topology()
        .find(b)
        .ok_or_else(|| NvmetError::Protocol(format!("no device {b} on the target")))
}

/// `nvmet_p2pmem_ns_enable`: may the namespace on `drive` use `p2pmem`?
pub fn ns_enable(sim: &SimMachine, drive: &NvmeDrive, p2pmem: P2pMem) -> Result<(), NvmetError> {
    let d = drive.bdf();
    let fail = |why: String| NvmetError::NsEnable { drive: d, why };
    if p2pmem == P2pMem::Off {
        return Ok(());
    }
    if !drive.limits().pci_p2pdma {
        return Err(fail(format!(
            "peer-to-peer DMA is not supported by the driver of {d}"
        )));
    }
    let t = sim.topology();
    let did = bdf_id(sim, d)?;
    match p2pmem {
        P2pMem::Off => Ok(()),
        P2pMem::Device(p) => {
            let pid = bdf_id(sim, p)?;
            if !providers(t).contains(&pid) {
                return Err(fail(format!("{p} publishes no P2P memory")));
            }
            if distance_many(t, pid, &[did]).is_none() {
                let why = peerdma_p2p::explain(t, pid, did).reasons.join("; ");
                return Err(fail(format!(
                    "p2pmem device {p} is not reachable from {d}: {why}"
                )));
            }
            Ok(())
        }
        P2pMem::Auto => match find_many(t, &[did]) {
            Some(_) => Ok(()),
            None => Err(fail(format!("no peer-to-peer memory is available for {d}"))),
        },
    }
}

/// `nvmet_p2pmem_ns_add_p2p`: the provider for the namespace's I/O
/// between `nic` and `drive`, or host memory and why.
pub fn choose(
    sim: &SimMachine,
    nic: Bdf,
    drive: Bdf,
    p2pmem: P2pMem,
) -> Result<Staging, NvmetError> {
    let t = sim.topology();
    let clients = [bdf_id(sim, nic)?, bdf_id(sim, drive)?];
    match p2pmem {
        P2pMem::Off => Ok(Staging::Host {
            why: "p2pmem is off for the namespace".into(),
        }),
        P2pMem::Device(p) => {
            let pid = bdf_id(sim, p)?;
            if distance_many(t, pid, &clients).is_some() {
                Ok(Staging::P2p { provider: p })
            } else {
                let bad = clients
                    .iter()
                    .find(|&&c| distance_many(t, pid, &[c]).is_none())
                    .copied()
                    .unwrap_or(clients[0]);
                Ok(Staging::Host {
                    why: format!(
                        "p2pmem device {p} cannot be used with {}: {}",
                        t.function(bad).bdf,
                        peerdma_p2p::explain(t, pid, bad).reasons.join("; ")
                    ),
                })
            }
        }
        P2pMem::Auto => match find_many(t, &clients) {
            Some(f) => Ok(Staging::P2p {
                provider: t.function(f.providers[0]).bdf,
            }),
            None => Ok(Staging::Host {
                why: format!(
                    "no peer-to-peer memory is available that's supported by {nic} and {drive}"
                ),
            }),
        },
    }
}

fn host<'a>(hosts: &[Host<'a>], m: MachineId) -> Result<Host<'a>, NvmetError> {
    hosts
        .get(m)
        .copied()
        .ok_or(NvmetError::Rdma(RdmaError::NoMachine {
            machine: m,
            count: hosts.len(),
        }))
}

/// A small host buffer registered for a NIC (capsules).
struct Small {
    mr: MemoryRegion,
    buf: HostBuffer,
}

fn small(sim: &SimMachine, nic: &RdmaNic, len: u64) -> Result<Small, NvmetError> {
    let buf = sim
        .alloc_host(len, 0)
        .map_err(|e| NvmetError::Resource(e.to_string()))?;
    let mr = nic.reg_host_mr(buf.phys(), 0, Access::ALL)?;
    Ok(Small { mr, buf })
}

fn cpu_write(sim: &SimMachine, v: PhysVec, b: &[u8]) -> Result<(), NvmetError> {
    sim.cpu_write(v.addr(), b)
        .map_err(|e| NvmetError::Resource(e.to_string()))
}

fn cpu_read(sim: &SimMachine, v: PhysVec, b: &mut [u8]) -> Result<(), NvmetError> {
    sim.cpu_read(v.addr(), b)
        .map_err(|e| NvmetError::Resource(e.to_string()))
}

/// The host's buffer: host memory or a dma-buf of its GPU.
enum HostMem {
    Host(HostBuffer),
    Dev(DmaBuf),
}

/// Staging of one request.
enum Stage {
    P2p(Allocation),
    Host(HostBuffer),
}

impl Stage {
    fn phys(&self, len: u64) -> PhysVec {
        let v = match self {
            Stage::P2p(a) => a.phys(),
            Stage::Host(h) => h.phys(),
        };
        v.split_at(len).map_or(v, |(a, _)| a)
    }
}

/// Encode an NVMe-oF command capsule: the SQE with a keyed SGL data block
/// descriptor (address, 3-byte length, 4-byte key, type 4 / subtype 0).
fn capsule(
    op: Opcode,
    cid: u16,
    slba: u64,
    blocks: u64,
    addr: u64,
    len: u64,
    key: u32,
) -> [u8; SQE_SIZE] {
    let sqe = Sqe {
        opcode: op,
        cid,
        nsid: 1,
        dptr: DataPtr::Sgl(SglDesc {
            addr,
            len: len as u32,
            kind: SglType::DataBlock,
        }),
        slba,
        nlb: (blocks - 1) as u16,
    };
    let mut b = sqe.encode();
    let d = &mut b[24..40];
    d[0..8].copy_from_slice(&addr.to_le_bytes());
    d[8..11].copy_from_slice(&(len as u32).to_le_bytes()[..3]);
    d[11..15].copy_from_slice(&key.to_le_bytes());
    d[15] = 0x40;
    // PSDT 10b would name a metadata segment; NVMe-oF uses 01b.
    b
}

/// The fields of a command capsule the target needs.
struct Cmd {
    op: Opcode,
    cid: u16,
    nsid: u32,
    slba: u64,
    blocks: u64,
    addr: u64,
    len: u64,
    key: u32,
}

fn parse(b: &[u8; SQE_SIZE]) -> Result<Cmd, String> {
    let le32 = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    let dw0 = le32(&b[0..4]);
    let op = Opcode::from_code(dw0 as u8).ok_or(format!("opcode {:#04x}", dw0 as u8))?;
    if (dw0 >> 14) & 3 != 1 {
        return Err("the data pointer is not an SGL".into());
    }
    let d = &b[24..40];
    if d[15] >> 4 != 4 {
        return Err(format!(
            "SGL descriptor type {} is not a keyed data block",
            d[15] >> 4
        ));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&d[0..8]);
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[40..48]);
    Ok(Cmd {
        op,
        cid: (dw0 >> 16) as u16,
        nsid: le32(&b[4..8]),
        slba: u64::from_le_bytes(s),
        blocks: u64::from(le32(&b[48..52]) & 0xffff) + 1,
        addr: u64::from_le_bytes(a),
        len: u64::from(u32::from_le_bytes([d[8], d[9], d[10], 0])),
        key: le32(&d[11..15]),
    })
}

/// Run an NVMe-oF job: the host on `job.host_machine` writes to (or reads
/// from) the namespace on `drive` of the target on `job.target_machine`.
pub fn run_nvmet(
    hosts: &[Host<'_>],
    wire: &Wire,
    drive: &mut NvmeDrive,
    job: &NvmetJob,
) -> Result<NvmetReport, NvmetError> {
    let (hh, th) = (
        host(hosts, job.host_machine)?,
        host(hosts, job.target_machine)?,
    );
    let (hs, ts) = (hh.sim, th.sim);
    if drive.bdf() != job.drive {
        return Err(NvmetError::Protocol(format!(
            "the drive given is {}, the job names {}",
            drive.bdf(),
            job.drive
        )));
    }
    let lba = drive.config().lba_size;
    if job.size == 0 || job.size % lba != 0 || job.offset % lba != 0 {
        return Err(NvmetError::Protocol(format!(
            "EINVAL: {} bytes at byte {} are not whole {lba}-byte blocks",
            job.size, job.offset
        )));
    }
    ns_enable(ts, drive, job.p2pmem)?;
    let hnic = RdmaNic::new(hs, job.host_machine, job.host_nic)?;
    let tnic = RdmaNic::new(ts, job.target_machine, job.target_nic)?;
    let staging = choose(ts, job.target_nic, job.drive, job.p2pmem)?;
    let provider = match &staging {
        Staging::P2p { provider } => Some(ts.provider(*provider).ok_or_else(|| {
            NvmetError::Protocol(format!("{provider} is not a provider on the target"))
        })?),
        Staging::Host { .. } => None,
    };
    let refs_before = provider.as_ref().map(|p| p.references());
    let io = if job.io_size == 0 {
        128 << 10
    } else {
        job.io_size
    };
    let io = io.min(job.size).max(lba) / lba * lba;

    let mut out = RdmaOutcome::default();
    let mut ctl = RdmaOutcome::default();
    let (mut p2p_bytes, mut host_bytes, mut pool_fb, mut commands) = (0u64, 0u64, 0u64, 0u64);
    let check;
    {
        // The host's data buffer and its MR.
        let (hmem, hmr) = match job.host_memory {
            Memory::Host => {
                let b = hs
                    .alloc_host(job.size, 0)
                    .map_err(|e| NvmetError::Resource(e.to_string()))?;
                let v = b.phys().split_at(job.size).map_or(b.phys(), |(a, _)| a);
                let mr = hnic.reg_host_mr(v, 0, Access::ALL)?;
                (HostMem::Host(b), mr)
            }
            Memory::Device(g) => {
                let p = hh.devmem.provider(hs, g).map_err(RdmaError::from)?;
                let b = DmaBuf::export(hs.mapper(), &p, job.size, true).map_err(RdmaError::from)?;
                let mr = hnic.reg_dmabuf_mr(
                    &b,
                    0,
                    job.size,
                    0x7f00_0000_0000,
                    Access::ALL,
                    MrKind::Dynamic,
                )?;
                (HostMem::Dev(b), mr)
            }
        };
        let hphys = match &hmem {
            HostMem::Host(b) => b.phys(),
            HostMem::Dev(b) => b
                .phys()
                .ok_or_else(|| NvmetError::Resource("revoked".into()))?,
        };
        if job.op == Op::Write {
            let mut b = vec![0u8; (1 << 20).min(job.size) as usize];
            let mut done = 0;
            while done < job.size {
                let n = (job.size - done).min(b.len() as u64) as usize;
                pattern::fill(job.seed, done, &mut b[..n]);
                let at = hphys
                    .addr()
                    .checked_add(done)
                    .ok_or_else(|| NvmetError::Resource("overflow".into()))?;
                hs.cpu_write(at, &b[..n])
                    .map_err(|e| NvmetError::Resource(e.to_string()))?;
                done += n as u64;
            }
        }
        // Capsule buffers: the host's command and response, the target's
        // receive buffer and response.
        let hcmd = small(hs, &hnic, SQE_SIZE as u64)?;
        let hrsp = small(hs, &hnic, CQE_SIZE as u64)?;
        let trecv = small(ts, &tnic, SQE_SIZE as u64)?;
        let trsp = small(ts, &tnic, CQE_SIZE as u64)?;
        let hep = Endpoint {
            sim: hs,
            nic: &hnic,
        };
        let tep = Endpoint {
            sim: ts,
            nic: &tnic,
        };
        let mut to_target = Connection::connect(hep, tep, wire)?;
        let mut to_host = Connection::connect(tep, hep, wire)?;
        let mut fault = job.fault.clone();
        let mut pos = 0u64;
        let mut cid: u16 = 0;
        while pos < job.size {
            let n = io.min(job.size - pos);
            cid = cid.wrapping_add(1);
            // Host: the command capsule, sent to the target's receive buffer.
            let opcode = if job.op == Op::Write {
                Opcode::Write
            } else {
                Opcode::Read
            };
            let cap = capsule(
                opcode,
                cid,
                (job.offset + pos) / lba,
                n / lba,
                hmr.iova() + pos,
                n,
                hmr.key(),
            );
            cpu_write(hs, hcmd.buf.phys(), &cap)?;
            ctl.absorb(to_target.send(
                &hcmd.mr,
                hcmd.mr.iova(),
                SQE_SIZE as u64,
                &trecv.mr,
                trecv.mr.iova(),
            )?);
            // Target: parse the capsule it received.
            let mut got = [0u8; SQE_SIZE];
            cpu_read(ts, trecv.buf.phys(), &mut got)?;
            let c =
                parse(&got).map_err(|e| NvmetError::Protocol(format!("command capsule: {e}")))?;
            if c.nsid != 1 || c.len != c.blocks * lba || c.cid != cid {
                return Err(NvmetError::Protocol(format!(
                    "command {} names namespace {} and {} bytes for {} blocks",
                    c.cid, c.nsid, c.len, c.blocks
                )));
            }
            // Staging (`nvmet_req_alloc_sgls`): P2P memory, else host memory.
            let stage = match provider.as_ref().map(|p| p.alloc(c.len)) {
                Some(Ok(a)) => Stage::P2p(a),
                other => {
                    if matches!(other, Some(Err(_))) {
                        pool_fb += 1;
                    }
                    Stage::Host(
                        ts.alloc_host(c.len, drive.numa_node())
                            .map_err(|e| NvmetError::Resource(e.to_string()))?,
                    )
                }
            };
            let sv = stage.phys(c.len);
            let smr = tnic.reg_host_mr(sv, drive.numa_node(), Access::ALL)?;
            // The fault of this command, by the device it names.
            let mut events = Vec::new();
            let mut drive_fault = None;
            if let Some(f) = fault.take_if(|f| f.at >= pos && f.at < pos + n) {
                // The drive's own faults hit its DMA; a revoke (of the
                // staging memory) and the NICs' faults hit the transfer.
                let drive_own = f.fault.device() == job.drive
                    && !matches!(f.fault, peerdma_sim::Fault::Revoke { .. });
                if f.machine == job.target_machine && drive_own {
                    // At the start of the command's data: the controller
                    // moves a command in DMAs of a page or so, and a fault
                    // is counted in bytes of one DMA.
                    drive_fault = Some(IoFault {
                        at: 0,
                        fault: f.fault,
                    });
                } else {
                    events.push(RdmaEvent {
                        machine: f.machine,
                        at: f.at - pos,
                        what: Inject::Fault(f.fault),
                    });
                }
            }
            let slba_off = c.slba * lba;
            let disk = |d: &mut NvmeDrive, op: Op, fault: Option<IoFault>| {
                direct_io(ts, d, op, slba_off, &[sv], Fallback::Fail, fault).map_err(|source| {
                    NvmetError::Io {
                        drive: job.drive,
                        source,
                    }
                })
            };
            let mut dio = match c.op {
                Opcode::Write => {
                    out.absorb(to_host.read(
                        &smr,
                        smr.iova(),
                        c.addr,
                        c.key,
                        c.len,
                        &mut events,
                    )?);
                    disk(drive, Op::Write, drive_fault)?
                }
                Opcode::Read => {
                    let d = disk(drive, Op::Read, drive_fault)?;
                    out.absorb(to_host.write(
                        &smr,
                        smr.iova(),
                        c.addr,
                        c.key,
                        c.len,
                        &mut events,
                    )?);
                    d
                }
                Opcode::Flush => {
                    return Err(NvmetError::Protocol("a flush carries no data".into()));
                }
            };
            for l in &mut dio.legs {
                l.machine = job.target_machine;
            }
            let mut dio_out = RdmaOutcome {
                io: dio,
                ..RdmaOutcome::default()
            };
            dio_out.io.bytes = 0;
            out.absorb(dio_out);
            match stage {
                Stage::P2p(_) => p2p_bytes += c.len,
                Stage::Host(_) => host_bytes += c.len,
            }
            drop(smr);
            drop(stage);
            // Target: the response capsule.
            let cqe = Cqe {
                result: 0,
                sq_head: 0,
                sq_id: 1,
                cid,
                phase: false,
                status: Status::SUCCESS,
            };
            cpu_write(ts, trsp.buf.phys(), &cqe.encode())?;
            ctl.absorb(to_host.send(
                &trsp.mr,
                trsp.mr.iova(),
                CQE_SIZE as u64,
                &hrsp.mr,
                hrsp.mr.iova(),
            )?);
            let mut r = [0u8; CQE_SIZE];
            cpu_read(hs, hrsp.buf.phys(), &mut r)?;
            let r = Cqe::decode(&r);
            if r.cid != cid || !r.status.is_success() {
                return Err(NvmetError::Status {
                    cid: r.cid,
                    op: job.op,
                    offset: job.offset + pos,
                    len: n,
                    status: r.status,
                });
            }
            commands += 1;
            pos += n;
        }
        // The bytes, end to end.
        check = match job.op {
            Op::Write => match ts.media_pattern_mismatch(job.drive, job.offset, job.size, job.seed, 0) {
                Ok(None) => Ok(()),
                Ok(Some(at)) => Err(format!("verification failed: the namespace differs from the host's data at byte {at} of the job")),
                Err(e) => Err(format!("verification could not read: {e}")),
            },
            Op::Read => compare_media(ts, job.drive, job.offset, hs, hphys, job.size),
        };
        drop((to_target, to_host, hcmd, hrsp, trecv, trsp, hmr, hmem));
    }
    out.packets += ctl.packets;
    out.wire_bytes += ctl.wire_bytes;
    out.io.bytes = job.size;
    out.io.commands = commands;
    let mut teardown = Vec::new();
    for (n, w) in [(&hnic, "host"), (&tnic, "target")] {
        if n.mr_count() != 0 {
            teardown.push(format!("{} MR(s) left on the {w}'s NIC", n.mr_count()));
        }
    }
    if let (Some(p), Some(b)) = (&provider, refs_before) {
        if p.references() > b {
            teardown.push(format!(
                "the P2P memory of {} holds {} reference(s), {b} before",
                p.bdf(),
                p.references()
            ));
        }
    }
    let host_reason = match &staging {
        Staging::Host { why } => Some(why.clone()),
        Staging::P2p { .. } if pool_fb > 0 => {
            Some(format!("{pool_fb} request(s) found the P2P pool full"))
        }
        Staging::P2p { .. } => None,
    };
    out.io.notes.push(match &staging {
        Staging::P2p { provider } => format!(
            "nvmet p2pmem: {} staged in the P2P memory of {provider}, {} in host memory; {} command and {} response capsules",
            peerdma_mem::format_size(p2p_bytes),
            peerdma_mem::format_size(host_bytes),
            commands,
            commands
        ),
        Staging::Host { why } => format!("nvmet staged in host memory: {why}"),
    });
    Ok(NvmetReport {
        outcome: out,
        check,
        teardown: if teardown.is_empty() {
            Ok(())
        } else {
            Err(teardown.join("; "))
        },
        commands,
        p2p_provider: match staging {
            Staging::P2p { provider } => Some(provider),
            Staging::Host { .. } => None,
        },
        host_reason,
        staged_p2p_bytes: p2p_bytes,
        staged_host_bytes: host_bytes,
        pool_fallbacks: pool_fb,
        host_memory_bytes_saved: p2p_bytes,
        dram_traffic_saved: 2 * p2p_bytes,
    })
}

/// The media of `drive` against `len` bytes of memory of another machine.
fn compare_media(
    ts: &SimMachine,
    drive: Bdf,
    off: u64,
    hs: &SimMachine,
    mem: PhysVec,
    len: u64,
) -> Result<(), String> {
    let mut a = vec![0u8; (1 << 20).min(len) as usize];
    let mut b = a.clone();
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(a.len() as u64) as usize;
        ts.media_read(drive, off + done, &mut a[..n])
            .map_err(|e| format!("verification could not read: {e}"))?;
        let at = mem.addr().checked_add(done).ok_or("address overflow")?;
        hs.cpu_read(at, &mut b[..n])
            .map_err(|e| format!("verification could not read: {e}"))?;
        if let Some(i) = a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y) {
            return Err(format!(
                "verification failed: the host's buffer differs from the namespace at byte {} of the job",
                done + i as u64
            ));
        }
        done += n as u64;
    }
    Ok(())
}
