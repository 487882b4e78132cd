//! An NVMe controller and its host driver on the simulated machine.
//!
//! The driver keeps one I/O queue pair in host memory (mapped for the
//! controller as `dma_alloc_coherent` would), writes 64-byte commands into
//! the submission queue with the CPU, and rings the doorbell. The
//! controller is a device on the fabric: it fetches each command by DMA,
//! walks its PRP list or SGL by DMA, moves the data between its media and
//! the command's DMA addresses through the fabric, and posts a 16-byte
//! completion by DMA, flipping the phase tag each time it wraps the queue.
//! Nothing is shortcut: a command's data pointer reaches the controller
//! only as bytes in host memory, exactly as the driver laid them out.
//!
//! What the controller can and cannot know follows PCIe: a read it issues
//! (the data of a write command, a PRP list) that completes with an error
//! ends the command with *Data Transfer Error*; a posted write (the data of
//! a read command) that the fabric drops cannot be seen, so the command
//! succeeds and only a check of the bytes finds the loss.

pub mod wire;

use crate::block::{Op, QueueLimits};
use peerdma_dma::{BouncePolicy, DmaSgl};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, PhysAddr};
use peerdma_sim::{DmaError, Fault, HostBuffer, Local, LocalMut, SimMachine, Transfer};
use wire::{Cqe, DataPtr, Opcode, Sqe, Status, CQE_SIZE, SGL_DESC_SIZE, SQE_SIZE};

/// What the controller supports, as Identify Controller reports it, and
/// how the driver uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NvmeConfig {
    /// Controller memory page size (CC.MPS).
    pub page_size: u64,
    /// Largest transfer of one command (MDTS), in bytes.
    pub max_transfer: u64,
    /// The controller takes SGLs for I/O commands (SGLS).
    pub sgl: bool,
    /// Entries in each of the I/O submission and completion queues.
    pub queue_entries: u16,
    /// Bytes per logical block of namespace 1.
    pub lba_size: u64,
    /// How the driver describes data: SGLs where it can, or PRPs always.
    pub use_sgl: bool,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        NvmeConfig {
            page_size: 4096,
            max_transfer: 1 << 20,
            sgl: true,
            queue_entries: 256,
            lba_size: 512,
            use_sgl: false,
        }
    }
}

/// Why the driver could not do an I/O.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NvmeError {
    #[error("{drive}: cannot set up the queues: {why}")]
    Setup { drive: Bdf, why: String },
    #[error("{drive}: command {cid} ({op} of {len} bytes at byte {offset}) failed: {status}{}", cause.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Command {
        drive: Bdf,
        cid: u16,
        op: Op,
        offset: u64,
        len: u64,
        status: Status,
        /// What the fabric did, when the controller saw a failed DMA.
        cause: Option<DmaError>,
    },
    #[error("{drive}: the data pointer cannot describe the request: {why}")]
    DataPointer { drive: Bdf, why: String },
    #[error("{drive}: the memory of {provider} is revoked: the command was not issued")]
    Revoked { drive: Bdf, provider: Bdf },
    #[error("{drive}: the controller stopped answering: {cause}")]
    Dead { drive: Bdf, cause: DmaError },
}

/// A page of host memory mapped for the controller, like
/// `dma_alloc_coherent`: the CPU writes it, the controller DMAs it.
struct Coherent {
    buf: HostBuffer,
    map: DmaSgl,
}

impl Coherent {
    fn new(sim: &SimMachine, dev: Bdf, len: u64, node: u32) -> Result<Coherent, String> {
        let buf = sim.alloc_host(len, node).map_err(|e| e.to_string())?;
        let map = sim
            .map(
                dev,
                &[buf.phys()],
                Direction::Bidirectional,
                BouncePolicy::Forbid,
            )
            .map_err(|e| e.to_string())?;
        if map.entries().len() != 1 {
            return Err("a coherent buffer mapped to more than one DMA range".into());
        }
        Ok(Coherent { buf, map })
    }
    fn dma(&self) -> DmaAddr {
        self.map.entries()[0].addr
    }
    fn phys(&self) -> PhysAddr {
        self.buf.phys().addr()
    }
}

/// What one command did.
#[derive(Debug)]
pub struct Completion {
    pub cid: u16,
    pub status: Status,
    /// DMAs that moved the command's data.
    pub data: Vec<Transfer>,
    /// DMAs of the queues and lists (command fetch, PRP list, completion).
    pub meta: Vec<Transfer>,
    /// The fabric error behind a Data Transfer Error.
    pub cause: Option<DmaError>,
}

/// The controller's own state: its view of the queues.
struct Controller {
    sq_head: u16,
    cq_tail: u16,
    phase: bool,
}

/// One command the driver issues.
pub struct Command<'a> {
    pub op: Op,
    /// Byte offset on the namespace.
    pub offset: u64,
    /// The mapped data (its length is the command's length).
    pub sgl: &'a DmaSgl,
    /// Inject this fault into the machine when the controller starts
    /// moving this command's data (workload fault injection).
    pub fault: Option<Fault>,
}

/// A drive: the host driver's queue pair and the controller behind it.
pub struct NvmeDrive {
    bdf: Bdf,
    cfg: NvmeConfig,
    media_size: u64,
    sq: Coherent,
    cq: Coherent,
    /// PRP list / SGL segment pages, per queue slot.
    lists: Vec<Vec<Coherent>>,
    node: u32,
    sq_tail: u16,
    cq_head: u16,
    cq_phase: bool,
    ctrl: Controller,
    next_cid: u16,
}

impl NvmeDrive {
    /// Set up the I/O queue pair of `bdf` (an NVMe controller of `sim`) in
    /// host memory of its NUMA node.
    pub fn new(sim: &SimMachine, bdf: Bdf, cfg: NvmeConfig) -> Result<NvmeDrive, NvmeError> {
        let topo = sim.topology();
        let f = topo.find(bdf).ok_or_else(|| NvmeError::Setup {
            drive: bdf,
            why: "not on this machine".into(),
        })?;
        let func = topo.function(f);
        if func.class >> 8 != 0x0108 {
            return Err(NvmeError::Setup {
                drive: bdf,
                why: format!("not an NVMe controller (class {:06x})", func.class),
            });
        }
        let node = func
            .numa_node
            .or(topo.host_bridge(func.host_bridge).numa_node)
            .unwrap_or(0);
        let setup = |why: String| NvmeError::Setup { drive: bdf, why };
        let n = u64::from(cfg.queue_entries);
        let sq = Coherent::new(sim, bdf, n * SQE_SIZE as u64, node).map_err(setup)?;
        let cq = Coherent::new(sim, bdf, n * CQE_SIZE as u64, node).map_err(setup)?;
        Ok(NvmeDrive {
            bdf,
            cfg,
            media_size: sim.config().media_size,
            sq,
            cq,
            lists: (0..cfg.queue_entries).map(|_| Vec::new()).collect(),
            node,
            sq_tail: 0,
            cq_head: 0,
            cq_phase: true,
            ctrl: Controller {
                sq_head: 0,
                cq_tail: 0,
                phase: true,
            },
            next_cid: 0,
        })
    }

    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
    pub fn config(&self) -> &NvmeConfig {
        &self.cfg
    }
    /// Bytes of namespace 1.
    pub fn capacity(&self) -> u64 {
        self.media_size / self.cfg.lba_size * self.cfg.lba_size
    }
    pub fn numa_node(&self) -> u32 {
        self.node
    }

    /// The request queue's limits for this controller, as the kernel's
    /// NVMe driver sets them: MDTS, a virt boundary at the controller page
    /// unless SGLs are used, and P2P support.
    pub fn limits(&self) -> QueueLimits {
        let sgl = self.cfg.sgl && self.cfg.use_sgl;
        QueueLimits {
            logical_block_size: self.cfg.lba_size,
            max_bytes: self.cfg.max_transfer,
            max_segments: if sgl {
                (self.cfg.page_size as usize / SGL_DESC_SIZE).max(1)
            } else {
                (self.cfg.max_transfer / self.cfg.page_size) as usize + 1
            },
            max_segment_size: if sgl { u64::from(u32::MAX) } else { u64::MAX },
            virt_boundary: if sgl { 0 } else { self.cfg.page_size },
            dma_alignment: 4,
            pci_p2pdma: true,
        }
    }

    /// Issue `cmds` and wait for all of them: up to a queue's worth at a
    /// time, each batch one doorbell write. Returns one completion per
    /// command, in order; the data pointer of a command that cannot be
    /// built is an error before anything is issued.
    pub fn execute(
        &mut self,
        sim: &SimMachine,
        cmds: &mut [Command<'_>],
    ) -> Result<Vec<Completion>, NvmeError> {
        let batch = usize::from(self.cfg.queue_entries - 1);
        let mut out = Vec::with_capacity(cmds.len());
        for group in cmds.chunks_mut(batch) {
            let mut cids = Vec::with_capacity(group.len());
            let mut faults = Vec::with_capacity(group.len());
            for c in group.iter_mut() {
                let slot = self.sq_tail;
                let sqe = self.build(sim, slot, c)?;
                sim.cpu_write(
                    self.sq
                        .phys()
                        .checked_add(u64::from(slot) * SQE_SIZE as u64)
                        .ok_or_else(|| NvmeError::Setup {
                            drive: self.bdf,
                            why: "queue address overflow".into(),
                        })?,
                    &sqe.encode(),
                )
                .map_err(|e| NvmeError::Setup {
                    drive: self.bdf,
                    why: e.to_string(),
                })?;
                self.sq_tail = (self.sq_tail + 1) % self.cfg.queue_entries;
                cids.push(sqe.cid);
                faults.push((sqe.cid, c.fault.take()));
            }
            // The doorbell: the controller works until it reaches the tail.
            let mut done = self.controller_run(sim, &faults)?;
            // The driver reaps completions by phase tag.
            for &cid in &cids {
                let cqe = self.reap(sim)?;
                if cqe.cid != cid {
                    return Err(NvmeError::Setup {
                        drive: self.bdf,
                        why: format!(
                            "completion for command {} where {cid} was expected",
                            cqe.cid
                        ),
                    });
                }
                let pos = done
                    .iter()
                    .position(|c| c.cid == cid)
                    .ok_or(NvmeError::Setup {
                        drive: self.bdf,
                        why: format!("no record of command {cid}"),
                    })?;
                let mut c = done.swap_remove(pos);
                c.status = cqe.status;
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Read the next completion the controller posted (CPU read of the
    /// completion queue in host memory).
    fn reap(&mut self, sim: &SimMachine) -> Result<Cqe, NvmeError> {
        let mut b = [0u8; CQE_SIZE];
        let at = self
            .cq
            .phys()
            .checked_add(u64::from(self.cq_head) * CQE_SIZE as u64)
            .ok_or_else(|| NvmeError::Setup {
                drive: self.bdf,
                why: "queue address overflow".into(),
            })?;
        sim.cpu_read(at, &mut b).map_err(|e| NvmeError::Setup {
            drive: self.bdf,
            why: e.to_string(),
        })?;
        let cqe = Cqe::decode(&b);
        if cqe.phase != self.cq_phase {
            return Err(NvmeError::Setup {
                drive: self.bdf,
                why: format!(
                    "no completion at queue slot {} (phase tag not flipped): the controller lost a command",
                    self.cq_head
                ),
            });
        }
        self.cq_head += 1;
        if self.cq_head == self.cfg.queue_entries {
            self.cq_head = 0;
            self.cq_phase = !self.cq_phase;
        }
        Ok(cqe)
    }

    /// The driver's side of a command: a command id, and a data pointer
    /// laid out in host memory where it needs more than the entry holds.
    fn build(&mut self, sim: &SimMachine, slot: u16, c: &Command<'_>) -> Result<Sqe, NvmeError> {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        let len = c.sgl.len();
        let lba = self.cfg.lba_size;
        let bdf = self.bdf;
        let dp_err = |why: String| NvmeError::DataPointer { drive: bdf, why };
        if len == 0 || len % lba != 0 || c.offset % lba != 0 {
            return Err(dp_err(format!(
                "{len} bytes at {} are not whole {lba}-byte blocks",
                c.offset
            )));
        }
        if len > self.cfg.max_transfer {
            return Err(dp_err(format!(
                "{len} bytes exceed the controller's maximum transfer of {}",
                self.cfg.max_transfer
            )));
        }
        let blocks = len / lba;
        let nlb = u16::try_from(blocks - 1)
            .map_err(|_| dp_err(format!("{blocks} blocks in one command")))?;
        let segs: Vec<(u64, u64)> = c
            .sgl
            .entries()
            .iter()
            .map(|e| (e.addr.raw(), e.len))
            .collect();
        let page = self.cfg.page_size;
        let want_sgl = self.cfg.sgl && self.cfg.use_sgl;
        let prp = if want_sgl {
            None
        } else {
            match wire::prp_entries(&segs, page) {
                Ok(e) => Some(e),
                Err(e) if !self.cfg.sgl => return Err(dp_err(e.to_string())),
                Err(_) => None,
            }
        };
        let dptr = match prp {
            Some(entries) => {
                let pages = wire::prp_list_pages(entries.len(), page);
                self.ensure_lists(sim, slot, pages)?;
                let list = &self.lists[usize::from(slot)];
                let lay = wire::prp_layout(&entries, page, |i| list[i].dma().raw())
                    .map_err(|e| dp_err(e.to_string()))?;
                for (i, p) in lay.list_pages.iter().enumerate() {
                    sim.cpu_write(list[i].phys(), &wire::encode_u64s(p))
                        .map_err(|e| dp_err(e.to_string()))?;
                }
                DataPtr::Prp {
                    prp1: lay.prp1,
                    prp2: lay.prp2,
                }
            }
            None => {
                let bytes = segs.len() as u64 * SGL_DESC_SIZE as u64;
                if bytes > page {
                    return Err(dp_err(format!(
                        "{} segments do not fit one SGL segment page",
                        segs.len()
                    )));
                }
                self.ensure_lists(sim, slot, usize::from(segs.len() > 1))?;
                let seg_addr = self.lists[usize::from(slot)]
                    .first()
                    .map_or(0, |p| p.dma().raw());
                let (sgl1, descs) = wire::sgl_layout(&segs, seg_addr)
                    .ok_or_else(|| dp_err("a segment longer than 4 GiB".into()))?;
                if !descs.is_empty() {
                    let b: Vec<u8> = descs.iter().flat_map(|d| d.encode()).collect();
                    sim.cpu_write(self.lists[usize::from(slot)][0].phys(), &b)
                        .map_err(|e| dp_err(e.to_string()))?;
                }
                DataPtr::Sgl(sgl1)
            }
        };
        Ok(Sqe {
            opcode: match c.op {
                Op::Read => Opcode::Read,
                Op::Write => Opcode::Write,
            },
            cid,
            nsid: 1,
            dptr,
            slba: c.offset / lba,
            nlb,
        })
    }

    fn ensure_lists(&mut self, sim: &SimMachine, slot: u16, pages: usize) -> Result<(), NvmeError> {
        let (bdf, node, page) = (self.bdf, self.node, self.cfg.page_size);
        let l = &mut self.lists[usize::from(slot)];
        while l.len() < pages {
            l.push(
                Coherent::new(sim, bdf, page, node)
                    .map_err(|why| NvmeError::Setup { drive: bdf, why })?,
            );
        }
        Ok(())
    }

    /// The controller after a doorbell write: fetch, execute and complete
    /// every command up to the tail.
    fn controller_run(
        &mut self,
        sim: &SimMachine,
        faults: &[(u16, Option<Fault>)],
    ) -> Result<Vec<Completion>, NvmeError> {
        let mut out = Vec::new();
        while self.ctrl.sq_head != self.sq_tail {
            let mut meta = Vec::new();
            let head = self.ctrl.sq_head;
            let at = self.sq.dma().raw() + u64::from(head) * SQE_SIZE as u64;
            let mut b = [0u8; SQE_SIZE];
            let t = sim
                .dma_from(
                    self.bdf,
                    DmaAddr::from_descriptor(at),
                    SQE_SIZE as u64,
                    LocalMut::Bytes(&mut b),
                )
                .map_err(|cause| NvmeError::Dead {
                    drive: self.bdf,
                    cause,
                })?;
            meta.push(t);
            self.ctrl.sq_head = (head + 1) % self.cfg.queue_entries;
            let (cid, status, data, cause) = match Sqe::decode(&b) {
                Err((cid, status)) => (cid, status, Vec::new(), None),
                Ok(sqe) => {
                    let fault = faults
                        .iter()
                        .find(|(c, _)| *c == sqe.cid)
                        .and_then(|(_, f)| f.clone());
                    let (status, data, cause) = self.execute_one(sim, &sqe, fault, &mut meta);
                    (sqe.cid, status, data, cause)
                }
            };
            let cqe = Cqe {
                result: 0,
                sq_head: self.ctrl.sq_head,
                sq_id: 1,
                cid,
                phase: self.ctrl.phase,
                status,
            };
            let at = self.cq.dma().raw() + u64::from(self.ctrl.cq_tail) * CQE_SIZE as u64;
            let t = sim
                .dma_to(
                    self.bdf,
                    DmaAddr::from_descriptor(at),
                    CQE_SIZE as u64,
                    Local::Bytes(&cqe.encode()),
                )
                .map_err(|cause| NvmeError::Dead {
                    drive: self.bdf,
                    cause,
                })?;
            meta.push(t);
            self.ctrl.cq_tail += 1;
            if self.ctrl.cq_tail == self.cfg.queue_entries {
                self.ctrl.cq_tail = 0;
                self.ctrl.phase = !self.ctrl.phase;
            }
            out.push(Completion {
                cid,
                status,
                data,
                meta,
                cause,
            });
        }
        Ok(out)
    }

    fn execute_one(
        &self,
        sim: &SimMachine,
        sqe: &Sqe,
        fault: Option<Fault>,
        meta: &mut Vec<Transfer>,
    ) -> (Status, Vec<Transfer>, Option<DmaError>) {
        let lba = self.cfg.lba_size;
        if sqe.nsid != 1 {
            return (Status::INVALID_NAMESPACE, Vec::new(), None);
        }
        let len = sqe.blocks() * lba;
        let Some(start) = sqe.slba.checked_mul(lba) else {
            return (Status::LBA_OUT_OF_RANGE, Vec::new(), None);
        };
        if start.checked_add(len).is_none_or(|e| e > self.capacity()) {
            return (Status::LBA_OUT_OF_RANGE, Vec::new(), None);
        }
        if sqe.opcode == Opcode::Flush {
            return (Status::SUCCESS, Vec::new(), None);
        }
        if len > self.cfg.max_transfer {
            return (Status::INVALID_FIELD, Vec::new(), None);
        }
        let mut cause: Option<DmaError> = None;
        let page = self.cfg.page_size;
        let ranges = {
            let mut fetch = |addr: u64, n: usize, unit: usize| -> Result<Vec<u8>, Status> {
                let mut buf = vec![0u8; n * unit];
                match sim.dma_from(
                    self.bdf,
                    DmaAddr::from_descriptor(addr),
                    buf.len() as u64,
                    LocalMut::Bytes(&mut buf),
                ) {
                    Ok(t) if t.unsupported_bytes > 0 => {
                        meta.push(t);
                        Err(Status::DATA_TRANSFER_ERROR)
                    }
                    Ok(t) => {
                        meta.push(t);
                        Ok(buf)
                    }
                    Err(e) => {
                        cause = Some(e);
                        Err(Status::DATA_TRANSFER_ERROR)
                    }
                }
            };
            match sqe.dptr {
                DataPtr::Prp { prp1, prp2 } => {
                    wire::prp_walk(prp1, prp2, len, page, &mut |a, n| {
                        fetch(a, n, 8).map(|b| wire::decode_u64s(&b))
                    })
                }
                DataPtr::Sgl(d) => {
                    if !self.cfg.sgl {
                        Err(Status::INVALID_FIELD)
                    } else {
                        wire::sgl_walk(d, len, &mut |a, n| {
                            let b = fetch(a, n, SGL_DESC_SIZE)?;
                            b.chunks_exact(SGL_DESC_SIZE)
                                .map(|c| {
                                    let mut d = [0u8; SGL_DESC_SIZE];
                                    d.copy_from_slice(c);
                                    wire::SglDesc::decode(&d)
                                })
                                .collect()
                        })
                    }
                }
            }
        };
        let ranges = match ranges {
            Ok(r) => r,
            Err(s) => return (s, Vec::new(), cause),
        };
        // The fault fires `after` bytes into the command's data: in the DMA
        // of the range that holds that byte, that many bytes into it.
        let mut fault = fault;
        let mut pos = 0u64;
        let mut data = Vec::new();
        let mut media = start;
        for (addr, n) in ranges {
            if let Some(f) = fault.take() {
                let at = f.after();
                if at < pos + n {
                    if let Err(e) = sim.inject(with_after(f, at - pos)) {
                        return (Status::INTERNAL_ERROR, data, Some(DmaError::Access(e)));
                    }
                } else {
                    fault = Some(f);
                }
            }
            pos += n;
            let r = match sqe.opcode {
                // The drive's read: media to memory, posted writes.
                Opcode::Read => sim.dma_to(
                    self.bdf,
                    DmaAddr::from_descriptor(addr),
                    n,
                    Local::Media(media),
                ),
                // The drive's write: memory to media, non-posted reads.
                _ => sim.dma_from(
                    self.bdf,
                    DmaAddr::from_descriptor(addr),
                    n,
                    LocalMut::Media(media),
                ),
            };
            match r {
                Ok(t) => {
                    let lost = t.unsupported_bytes > 0 && sqe.opcode == Opcode::Write;
                    data.push(t);
                    if lost {
                        // A read completed with Unsupported Request: the
                        // controller knows, and fails the command.
                        return (Status::DATA_TRANSFER_ERROR, data, None);
                    }
                }
                Err(e) => return (Status::DATA_TRANSFER_ERROR, data, Some(e)),
            }
            media += n;
        }
        (Status::SUCCESS, data, None)
    }
}

/// `f` firing `after` bytes into the next DMA.
fn with_after(f: Fault, after: u64) -> Fault {
    match f {
        Fault::LinkDown { below, .. } => Fault::LinkDown { below, after },
        Fault::Remove { device, .. } => Fault::Remove { device, after },
        Fault::IommuFault { device, .. } => Fault::IommuFault { device, after },
        Fault::Revoke { provider, .. } => Fault::Revoke { provider, after },
    }
}
