//! An RDMA NIC on a simulated machine (a network controller, PCI class 02,
//! whose DMA engine is the function's): its memory regions by key, and a
//! reliable-connected queue pair to a NIC of another machine across the
//! [`Wire`], moving RDMA WRITE and READ packet by packet.
//!
//! Each packet is real: the sending NIC DMA-reads its payload out of an MR
//! through the fabric, builds the RoCEv2 frame, the receiving NIC parses it,
//! checks the R_Key, access and bounds of the MR named in the RETH, and
//! DMA-writes the payload through its own fabric. A failure on the
//! responder is a NAK with its syndrome; on either side it moves the queue
//! pair to the error state, and every later work request completes with a
//! flush error, as a verbs consumer sees it.

use crate::io::{End, IoOutcome, Leg, LegPath, Mover};
use crate::net::{MachineId, Port, Wire};
use crate::rdma::dmabuf::{DmaBuf, Placement};
use crate::rdma::mr::{Access, AccessError, MemoryRegion, MrInner, MrKind, Reach};
use crate::rdma::packet::{self, Opcode, Packet, Reth, Syndrome};
use crate::rdma::{lock, RdmaError, WcStatus};
use peerdma_dma::PathTaken;
use peerdma_mem::{Bdf, PhysVec};
use peerdma_sim::{DmaError, Fault, Local, LocalMut, SimMachine, Transfer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// How long a dma-buf revoke waits for its importers.
const REVOKE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The MRs of one NIC, by key.
#[derive(Default)]
pub(crate) struct MrTable(Mutex<HashMap<u32, Weak<MrInner>>>);

impl MrTable {
    pub(crate) fn remove(&self, key: u32) {
        lock(&self.0).remove(&key);
    }
    fn get(&self, key: u32) -> Option<Arc<MrInner>> {
        lock(&self.0).get(&key).and_then(Weak::upgrade)
    }
    fn len(&self) -> usize {
        lock(&self.0)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// An RDMA NIC of one machine.
pub struct RdmaNic {
    machine: MachineId,
    bdf: Bdf,
    mapper: peerdma_dma::Mapper,
    table: Arc<MrTable>,
    next_key: AtomicU32,
}

impl std::fmt::Debug for RdmaNic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RdmaNic({} on machine {})", self.bdf, self.machine)
    }
}

impl RdmaNic {
    /// The NIC `bdf` of machine `machine` (`sim`): refused if it is not a
    /// network controller (class 02: Ethernet with RoCE, InfiniBand).
    pub fn new(sim: &SimMachine, machine: MachineId, bdf: Bdf) -> Result<RdmaNic, RdmaError> {
        let t = sim.topology();
        let f = t.find(bdf).ok_or(RdmaError::NoDevice { machine, bdf })?;
        let class = t.function(f).class;
        if t.function(f).base_class() != 0x02 {
            return Err(RdmaError::NotANic {
                machine,
                bdf,
                class,
            });
        }
        Ok(RdmaNic {
            machine,
            bdf,
            mapper: sim.mapper().clone(),
            table: Arc::new(MrTable::default()),
            // Keys start away from 0 so a zeroed RETH never names an MR.
            next_key: AtomicU32::new(0x100),
        })
    }

    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
    pub fn machine(&self) -> MachineId {
        self.machine
    }
    pub fn port(&self) -> Port {
        Port {
            machine: self.machine,
            nic: self.bdf,
        }
    }
    /// MRs registered and not yet deregistered.
    pub fn mr_count(&self) -> usize {
        self.table.len()
    }

    fn key(&self) -> u32 {
        self.next_key.fetch_add(1, Ordering::AcqRel)
    }

    fn install(&self, inner: Arc<MrInner>) -> MemoryRegion {
        lock(&self.table.0).insert(inner.key, Arc::downgrade(&inner));
        MemoryRegion {
            inner,
            table: Arc::downgrade(&self.table),
        }
    }

    /// Register host memory `phys` on NUMA node `node` (`ibv_reg_mr`): its
    /// pages are pinned and mapped for the NIC.
    pub fn reg_host_mr(
        &self,
        phys: PhysVec,
        node: u32,
        access: Access,
    ) -> Result<MemoryRegion, RdmaError> {
        let key = self.key();
        let inner = MemoryRegion::host(
            &self.mapper,
            self.bdf,
            key,
            phys.addr().raw(),
            phys,
            node,
            access,
        )
        .map_err(|source| RdmaError::HostMap {
            nic: self.bdf,
            source,
        })?;
        Ok(self.install(Arc::new(inner)))
    }

    /// Register `len` bytes at `offset` of a dma-buf (`ibv_reg_dmabuf_mr`),
    /// dynamic or pinned; the MR's address is `iova`. Refused, naming the
    /// pair and the reason, where the NIC cannot reach the memory.
    pub fn reg_dmabuf_mr(
        &self,
        buf: &DmaBuf,
        offset: u64,
        len: u64,
        iova: u64,
        access: Access,
        kind: MrKind,
    ) -> Result<MemoryRegion, RdmaError> {
        if len == 0 || offset.checked_add(len).is_none_or(|e| e > buf.size()) {
            return Err(RdmaError::Invalid(format!(
                "{len} bytes at offset {offset} are not inside the {}-byte dma-buf of {}",
                buf.size(),
                buf.exporter()
            )));
        }
        if iova.checked_add(len).is_none() {
            return Err(RdmaError::Invalid(format!(
                "an MR of {len} bytes at address {iova:#x} wraps the address space"
            )));
        }
        let key = self.key();
        let inner = MemoryRegion::dmabuf(self.bdf, key, iova, buf, offset, len, access, kind)
            .map_err(|source| RdmaError::Registration {
                nic: self.bdf,
                exporter: buf.exporter(),
                kind,
                source,
            })?;
        Ok(self.install(inner))
    }
}

/// One NIC of a connection, on its machine.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub sim: &'a SimMachine,
    pub nic: &'a RdmaNic,
}

/// Something that happens on one machine when a DMA of an operation
/// reaches byte `at` of its message.
#[derive(Clone, Debug)]
pub struct RdmaEvent {
    pub machine: MachineId,
    pub at: u64,
    pub what: Inject,
}

/// What happens.
#[derive(Clone, Debug)]
pub enum Inject {
    /// A simulator fault (link down, surprise removal, IOMMU fault, revoke
    /// of a provider), fired at the start of the packet's DMA.
    Fault(Fault),
    /// The exporter moves a dma-buf (its importers are told).
    Migrate { buf: DmaBuf, to: Placement },
    /// The exporter revokes a dma-buf (VFIO's revoke) and waits for its
    /// importers to let go.
    Revoke { buf: DmaBuf },
}

/// What one RDMA operation did.
#[derive(Clone, Debug, Default)]
pub struct RdmaOutcome {
    pub io: IoOutcome,
    /// Packets on the wire, both ways (data, requests, ACKs, NAKs).
    pub packets: u64,
    /// Line bytes on the wire, both ways (frames with FCS, preamble and
    /// inter-frame gap).
    pub wire_bytes: u64,
}

impl RdmaOutcome {
    pub fn absorb(&mut self, o: RdmaOutcome) {
        self.io.absorb(o.io);
        self.packets += o.packets;
        self.wire_bytes += o.wire_bytes;
    }
}

/// A reliable-connected queue pair between two NICs on the two ends of a
/// wire; the first is the requester.
pub struct Connection<'a> {
    req: Endpoint<'a>,
    resp: Endpoint<'a>,
    wire: Wire,
    pmtu: u32,
    req_qpn: u32,
    resp_qpn: u32,
    psn: u32,
    msn: u32,
    /// Set once the queue pair went to the error state.
    error: Option<String>,
}

fn leg_path(p: PathTaken) -> LegPath {
    match p {
        PathTaken::BusAddr => LegPath::BusAddr,
        PathTaken::ThruHostBridge => LegPath::ThruHostBridge,
        PathTaken::HostMemory => LegPath::HostMemory,
        PathTaken::Bounced => LegPath::Bounced,
    }
}

fn mem_end(r: &Reach) -> End {
    match r.provider {
        Some(bdf) => End::Device { bdf },
        None => End::Host {
            node: r.node.unwrap_or(0),
        },
    }
}

/// A failed DMA of one packet, with the reason.
enum PacketFail {
    Access(AccessError),
    Dma(DmaError),
}

impl std::fmt::Display for PacketFail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketFail::Access(e) => write!(f, "{e}"),
            PacketFail::Dma(e) => {
                write!(f, "{e}")?;
                let mut s = std::error::Error::source(e);
                while let Some(c) = s {
                    write!(f, ": {c}")?;
                    s = c.source();
                }
                Ok(())
            }
        }
    }
}

/// The side of an operation that moves bytes between an MR and the NIC.
struct Dma<'a, 'b> {
    ep: Endpoint<'a>,
    out: &'b mut IoOutcome,
}

impl Dma<'_, '_> {
    /// The NIC writes `data` into `mr` at `va`.
    fn write(
        &mut self,
        mr: &MrInner,
        va: u64,
        data: &[u8],
        remote: bool,
    ) -> Result<(), PacketFail> {
        let (sim, nic) = (self.ep.sim, self.ep.nic.bdf);
        let mut ts: Vec<Transfer> = Vec::new();
        let mut reach = None;
        let r = mr
            .access(va, data.len() as u64, true, remote, &mut |pieces, r| {
                reach = Some(r);
                let mut at = 0usize;
                for &(addr, n) in pieces {
                    let chunk = &data[at..at + n as usize];
                    ts.push(sim.dma_to(nic, addr, n, Local::Bytes(chunk))?);
                    at += n as usize;
                }
                Ok::<(), DmaError>(())
            })
            .map_err(PacketFail::Access)?;
        self.record(reach, &ts, false);
        r.map_err(PacketFail::Dma)
    }

    /// The NIC reads `out.len()` bytes of `mr` at `va`.
    fn read(
        &mut self,
        mr: &MrInner,
        va: u64,
        buf: &mut [u8],
        remote: bool,
    ) -> Result<(), PacketFail> {
        let (sim, nic) = (self.ep.sim, self.ep.nic.bdf);
        let mut ts: Vec<Transfer> = Vec::new();
        let mut reach = None;
        let len = buf.len() as u64;
        let r = mr
            .access(va, len, false, remote, &mut |pieces, r| {
                reach = Some(r);
                let mut at = 0usize;
                for &(addr, n) in pieces {
                    let chunk = &mut buf[at..at + n as usize];
                    ts.push(sim.dma_from(nic, addr, n, LocalMut::Bytes(chunk))?);
                    at += n as usize;
                }
                Ok::<(), DmaError>(())
            })
            .map_err(PacketFail::Access)?;
        self.record(reach, &ts, true);
        r.map_err(PacketFail::Dma)
    }

    fn record(&mut self, reach: Option<Reach>, ts: &[Transfer], from_mem: bool) {
        let Some(reach) = reach else { return };
        if ts.is_empty() {
            return;
        }
        let nic = End::Device {
            bdf: self.ep.nic.bdf,
        };
        let mem = mem_end(&reach);
        let (from, to) = if from_mem { (mem, nic) } else { (nic, mem) };
        let i = self.out.leg(
            Leg::new(
                from,
                to,
                leg_path(reach.path),
                reach.provider,
                Mover::Dma {
                    engine: self.ep.nic.bdf,
                },
            )
            .on(self.ep.nic.machine, None),
        );
        for t in ts {
            self.out.legs[i].add(t);
        }
    }
}

impl<'a> Connection<'a> {
    /// Connect `req`'s NIC to `resp`'s across `wire`, which must join them.
    /// The path MTU is RoCE's for the wire's MTU.
    pub fn connect(
        req: Endpoint<'a>,
        resp: Endpoint<'a>,
        wire: &Wire,
    ) -> Result<Connection<'a>, RdmaError> {
        let (a, b) = (req.nic.port(), resp.nic.port());
        if wire.peer(a) != Some(b) {
            return Err(RdmaError::NotWired {
                from: a,
                to: b,
                wire_a: wire.a,
                wire_b: wire.b,
            });
        }
        let pmtu = packet::path_mtu(wire.mtu).ok_or(RdmaError::Mtu { mtu: wire.mtu })?;
        Ok(Connection {
            req,
            resp,
            wire: *wire,
            pmtu,
            req_qpn: 0x11,
            resp_qpn: 0x22,
            psn: 0,
            msn: 0,
            error: None,
        })
    }

    /// The RoCE path MTU in use.
    pub fn path_mtu(&self) -> u32 {
        self.pmtu
    }
    /// Why the queue pair is in the error state, if it is.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Send one packet across the wire, from the requester (`forward`) or
    /// the responder; returns the packet as the other NIC parsed it.
    fn send_packet(
        &self,
        p: &Packet,
        forward: bool,
        out: &mut RdmaOutcome,
    ) -> Result<Packet, RdmaError> {
        let (from, to) = if forward {
            (self.req.nic, self.resp.nic)
        } else {
            (self.resp.nic, self.req.nic)
        };
        if p.ip_len() > self.wire.mtu as usize {
            return Err(RdmaError::Invalid(format!(
                "a {}-byte packet does not fit the wire's {}-byte MTU",
                p.ip_len(),
                self.wire.mtu
            )));
        }
        let frame = p.encode(from.machine as u8, to.machine as u8);
        out.packets += 1;
        out.wire_bytes += p.wire_len() as u64;
        if !p.payload.is_empty() {
            let i = out.io.leg(
                Leg::new(
                    End::Device { bdf: from.bdf },
                    End::Device { bdf: to.bdf },
                    LegPath::Wire,
                    None,
                    Mover::Dma { engine: from.bdf },
                )
                .on(from.machine, Some(to.machine)),
            );
            out.io.legs[i].bytes += p.payload.len() as u64;
        }
        Packet::decode(&frame).map_err(|e| RdmaError::Invalid(format!("frame on the wire: {e}")))
    }

    fn fail(
        &mut self,
        op: &'static str,
        len: u64,
        at: u64,
        status: WcStatus,
        cause: String,
    ) -> RdmaError {
        self.error = Some(format!("{status}: {cause}"));
        RdmaError::Completion {
            op,
            requester: self.req.nic.port(),
            responder: self.resp.nic.port(),
            len,
            at,
            status,
            cause,
        }
    }

    fn check_state(&self, op: &'static str, len: u64) -> Result<(), RdmaError> {
        match &self.error {
            Some(why) => Err(RdmaError::Completion {
                op,
                requester: self.req.nic.port(),
                responder: self.resp.nic.port(),
                len,
                at: 0,
                status: WcStatus::WrFlushErr,
                cause: format!("the queue pair is in the error state ({why})"),
            }),
            None => Ok(()),
        }
    }

    /// Fire the events due before the DMA of `[pos, pos + n)` on `machine`.
    fn fire(
        &self,
        events: &mut Vec<RdmaEvent>,
        machine: MachineId,
        pos: u64,
        n: u64,
    ) -> Result<(), RdmaError> {
        let mut i = 0;
        while i < events.len() {
            if events[i].machine != machine || events[i].at >= pos + n {
                i += 1;
                continue;
            }
            let e = events.remove(i);
            let sim = if self.req.nic.machine == machine {
                self.req.sim
            } else {
                self.resp.sim
            };
            match e.what {
                Inject::Fault(f) => {
                    // At the start of the packet's DMA: the engine fires it
                    // at once.
                    let f = match f {
                        Fault::LinkDown { below, .. } => Fault::LinkDown { below, after: 0 },
                        Fault::Remove { device, .. } => Fault::Remove { device, after: 0 },
                        Fault::IommuFault { device, .. } => Fault::IommuFault { device, after: 0 },
                        Fault::Revoke { provider, .. } => Fault::Revoke { provider, after: 0 },
                    };
                    sim.inject(f)
                        .map_err(|e| RdmaError::Invalid(format!("cannot inject the fault: {e}")))?;
                }
                Inject::Migrate { buf, to } => buf.migrate(sim, to)?,
                Inject::Revoke { buf } => {
                    buf.revoke(REVOKE_WAIT)?;
                }
            }
        }
        Ok(())
    }

    /// RDMA WRITE of `len` bytes from the local MR at `local_va` to the
    /// responder's MR `rkey` at `remote_va`.
    pub fn write(
        &mut self,
        local: &MemoryRegion,
        local_va: u64,
        remote_va: u64,
        rkey: u32,
        len: u64,
        events: &mut Vec<RdmaEvent>,
    ) -> Result<RdmaOutcome, RdmaError> {
        const OP: &str = "RDMA WRITE";
        self.check_state(OP, len)?;
        check_rdma_len(OP, len)?;
        let mut out = RdmaOutcome::default();
        let pm = u64::from(self.pmtu);
        let n_pkts = len.div_ceil(pm);
        let (rm, sm) = (self.req.nic.machine, self.resp.nic.machine);
        let mut target: Option<Arc<MrInner>> = None;
        let mut payload = Vec::with_capacity(self.pmtu as usize);
        for i in 0..n_pkts {
            let pos = i * pm;
            let n = pm.min(len - pos);
            payload.resize(n as usize, 0);
            // Requester: the payload out of the local MR.
            self.fire(events, rm, pos, n)?;
            let r = Dma {
                ep: self.req,
                out: &mut out.io,
            }
            .read(&local.inner, local_va + pos, &mut payload, false);
            if let Err(e) = r {
                let status = match e {
                    PacketFail::Access(_) => WcStatus::LocProtErr,
                    PacketFail::Dma(_) => WcStatus::LocQpOpErr,
                };
                return Err(self.fail(OP, len, pos, status, e.to_string()));
            }
            let op = Opcode::write_part(i, n_pkts);
            let pkt = Packet {
                opcode: op,
                dest_qp: self.resp_qpn,
                psn: self.psn,
                ack_req: i + 1 == n_pkts,
                reth: matches!(op, Opcode::WriteFirst | Opcode::WriteOnly).then_some(Reth {
                    va: remote_va,
                    rkey,
                    len: len as u32,
                }),
                aeth: None,
                payload: std::mem::take(&mut payload),
            };
            self.psn = (self.psn + 1) & 0xff_ffff;
            let got = self.send_packet(&pkt, true, &mut out)?;
            payload = pkt.payload;
            // Responder: check the MR, place the payload.
            self.fire(events, sm, pos, n)?;
            let nak = match self.responder_place(&got, &mut target, pos, remote_va, &mut out) {
                Ok(()) => None,
                Err((syn, why)) => Some((syn, why)),
            };
            if let Some((syn, why)) = nak {
                self.ack(syn, &mut out)?;
                let status = match syn {
                    Syndrome::RemoteAccess => WcStatus::RemAccessErr,
                    Syndrome::InvalidRequest => WcStatus::RemInvReqErr,
                    _ => WcStatus::RemOpErr,
                };
                return Err(self.fail(OP, len, pos, status, why));
            }
        }
        self.ack(Syndrome::Ack, &mut out)?;
        out.io.bytes = len;
        Ok(out)
    }

    /// The responder's side of one WRITE packet.
    fn responder_place(
        &self,
        p: &Packet,
        target: &mut Option<Arc<MrInner>>,
        pos: u64,
        remote_va: u64,
        out: &mut RdmaOutcome,
    ) -> Result<(), (Syndrome, String)> {
        if let Some(r) = p.reth {
            let mr = self.resp.nic.table.get(r.rkey).ok_or((
                Syndrome::RemoteAccess,
                format!("no MR with R_Key {:#x} on {}", r.rkey, self.resp.nic.bdf),
            ))?;
            *target = Some(mr);
        }
        let mr = target.as_ref().ok_or((
            Syndrome::InvalidRequest,
            "a middle packet without a first".to_string(),
        ))?;
        Dma {
            ep: self.resp,
            out: &mut out.io,
        }
        .write(mr, remote_va + pos, &p.payload, true)
        .map_err(|e| match e {
            PacketFail::Access(a) => (Syndrome::RemoteAccess, a.to_string()),
            d @ PacketFail::Dma(_) => (Syndrome::RemoteOperational, d.to_string()),
        })
    }

    /// The responder acknowledges (or NAKs) the message.
    fn ack(&mut self, s: Syndrome, out: &mut RdmaOutcome) -> Result<(), RdmaError> {
        self.msn = (self.msn + 1) & 0xff_ffff;
        let p = Packet {
            opcode: Opcode::Acknowledge,
            dest_qp: self.req_qpn,
            psn: self.psn.wrapping_sub(1) & 0xff_ffff,
            ack_req: false,
            reth: None,
            aeth: Some((s, self.msn)),
            payload: Vec::new(),
        };
        self.send_packet(&p, false, out).map(|_| ())
    }

    /// SEND of `len` bytes (one packet at most) from the local MR at
    /// `local_va` into the receive buffer the responder posted: `recv` at
    /// `recv_va` (an NVMe-oF command or response capsule).
    pub fn send(
        &mut self,
        local: &MemoryRegion,
        local_va: u64,
        len: u64,
        recv: &MemoryRegion,
        recv_va: u64,
    ) -> Result<RdmaOutcome, RdmaError> {
        const OP: &str = "SEND";
        self.check_state(OP, len)?;
        if len == 0 || len > u64::from(self.pmtu) {
            return Err(RdmaError::Invalid(format!(
                "a SEND of {len} bytes (1 byte to the path MTU of {})",
                self.pmtu
            )));
        }
        if recv.nic() != self.resp.nic.bdf {
            return Err(RdmaError::Invalid(format!(
                "the receive buffer is registered on {}, not on the responder {}",
                recv.nic(),
                self.resp.nic.bdf
            )));
        }
        let mut out = RdmaOutcome::default();
        let mut payload = vec![0u8; len as usize];
        if let Err(e) = (Dma {
            ep: self.req,
            out: &mut out.io,
        })
        .read(&local.inner, local_va, &mut payload, false)
        {
            let status = match e {
                PacketFail::Access(_) => WcStatus::LocProtErr,
                PacketFail::Dma(_) => WcStatus::LocQpOpErr,
            };
            return Err(self.fail(OP, len, 0, status, e.to_string()));
        }
        let pkt = Packet {
            opcode: Opcode::SendOnly,
            dest_qp: self.resp_qpn,
            psn: self.psn,
            ack_req: true,
            reth: None,
            aeth: None,
            payload,
        };
        self.psn = (self.psn + 1) & 0xff_ffff;
        let got = self.send_packet(&pkt, true, &mut out)?;
        if let Err(e) = (Dma {
            ep: self.resp,
            out: &mut out.io,
        })
        .write(&recv.inner, recv_va, &got.payload, false)
        {
            // The receiver could not place it: a receive error is a NAK.
            self.ack(Syndrome::RemoteOperational, &mut out)?;
            return Err(self.fail(OP, len, 0, WcStatus::RemOpErr, e.to_string()));
        }
        self.ack(Syndrome::Ack, &mut out)?;
        out.io.bytes = len;
        Ok(out)
    }

    /// RDMA READ of `len` bytes of the responder's MR `rkey` at `remote_va`
    /// into the local MR at `local_va`.
    pub fn read(
        &mut self,
        local: &MemoryRegion,
        local_va: u64,
        remote_va: u64,
        rkey: u32,
        len: u64,
        events: &mut Vec<RdmaEvent>,
    ) -> Result<RdmaOutcome, RdmaError> {
        const OP: &str = "RDMA READ";
        self.check_state(OP, len)?;
        check_rdma_len(OP, len)?;
        let mut out = RdmaOutcome::default();
        let req = Packet {
            opcode: Opcode::ReadRequest,
            dest_qp: self.resp_qpn,
            psn: self.psn,
            ack_req: true,
            reth: Some(Reth {
                va: remote_va,
                rkey,
                len: len as u32,
            }),
            aeth: None,
            payload: Vec::new(),
        };
        let got = self.send_packet(&req, true, &mut out)?;
        let pm = u64::from(self.pmtu);
        let n_pkts = len.div_ceil(pm);
        self.psn = (self.psn + n_pkts as u32) & 0xff_ffff;
        let (rm, sm) = (self.req.nic.machine, self.resp.nic.machine);
        let Some(reth) = got.reth else {
            return Err(self.fail(
                OP,
                len,
                0,
                WcStatus::RemInvReqErr,
                "a read request without its RETH".into(),
            ));
        };
        let Some(mr) = self.resp.nic.table.get(reth.rkey) else {
            self.ack(Syndrome::RemoteAccess, &mut out)?;
            let why = format!("no MR with R_Key {:#x} on {}", reth.rkey, self.resp.nic.bdf);
            return Err(self.fail(OP, len, 0, WcStatus::RemAccessErr, why));
        };
        let mut payload = Vec::with_capacity(self.pmtu as usize);
        for i in 0..n_pkts {
            let pos = i * pm;
            let n = pm.min(len - pos);
            payload.resize(n as usize, 0);
            // Responder: read the MR.
            self.fire(events, sm, pos, n)?;
            let r = Dma {
                ep: self.resp,
                out: &mut out.io,
            }
            .read(&mr, reth.va + pos, &mut payload, true);
            if let Err(e) = r {
                let (syn, status) = match e {
                    PacketFail::Access(_) => (Syndrome::RemoteAccess, WcStatus::RemAccessErr),
                    PacketFail::Dma(_) => (Syndrome::RemoteOperational, WcStatus::RemOpErr),
                };
                self.ack(syn, &mut out)?;
                return Err(self.fail(OP, len, pos, status, e.to_string()));
            }
            let op = Opcode::read_response_part(i, n_pkts);
            let pkt = Packet {
                opcode: op,
                dest_qp: self.req_qpn,
                psn: (req.psn + i as u32) & 0xff_ffff,
                ack_req: false,
                reth: None,
                aeth: matches!(
                    op,
                    Opcode::ReadResponseFirst | Opcode::ReadResponseLast | Opcode::ReadResponseOnly
                )
                .then_some((Syndrome::Ack, self.msn)),
                payload: std::mem::take(&mut payload),
            };
            let got = self.send_packet(&pkt, false, &mut out)?;
            payload = pkt.payload;
            // Requester: place the response in the local MR.
            self.fire(events, rm, pos, n)?;
            let w = Dma {
                ep: self.req,
                out: &mut out.io,
            }
            .write(&local.inner, local_va + pos, &got.payload, false);
            if let Err(e) = w {
                let status = match e {
                    PacketFail::Access(_) => WcStatus::LocProtErr,
                    PacketFail::Dma(_) => WcStatus::LocQpOpErr,
                };
                return Err(self.fail(OP, len, pos, status, e.to_string()));
            }
        }
        self.msn = (self.msn + 1) & 0xff_ffff;
        out.io.bytes = len;
        Ok(out)
    }
}

/// An RDMA WRITE or READ moves 1 byte to 4 GiB - 1 (the length field of
/// its RETH is 32 bits).
fn check_rdma_len(op: &str, len: u64) -> Result<(), RdmaError> {
    if len == 0 || len > u64::from(u32::MAX) {
        return Err(RdmaError::Invalid(format!(
            "an {op} of {len} bytes (1 byte to 4 GiB - 1)"
        )));
    }
    Ok(())
}
