//! A devmem TCP flow between two NICs joined by a [`Wire`]: the sender
//! (any machine; the same one as the receiver is fine, two ports cabled
//! together), the frames on the wire, and the receiver whose RX queue has a
//! dma-buf of device memory bound.
//!
//! The sender is a plain TCP sender with TSO: its application writes the
//! stream into the socket's send buffer — host memory, or device memory
//! for devmem TX — and the NIC reads each burst of segments from there by
//! DMA, cuts it into MSS-sized frames and puts headers in front. Frames
//! carry real bytes. The receiving NIC writes headers into host memory and
//! payloads into the posted `net_iov`s ([`super::nic`]), the driver hands
//! the packets to the socket ([`super::tcp`]), and the user reads frags
//! and gives tokens back.
//!
//! The flow runs in rounds ([`Flow::round`]): the sender puts up to a
//! burst of segments on the wire (retransmissions first, then new data
//! within the receiver's window and its send buffer), the receiver takes
//! them all, and its acknowledgement — cumulative, with the ranges it holds
//! out of order — comes back before the next round. There is no
//! congestion control: a flow is limited by the window, the burst and the
//! buffers.
//!
//! [`run_transfer`] is a user program on top: it reads everything each
//! round, checks every payload byte against the sender's data where it
//! landed in device memory, and gives tokens back by its policy
//! ([`TokenReturn`]).

use super::devmem::{Binding, BindingState, DmaBuf};
use super::frame::{self, FlowKey, TcpOptions};
use super::nic::{BufferLayout, Nic, NicConfig, RxBurst, RxQueue, RxScratch, WireFrame, HDR_SLOT};
use super::page_pool::PagePool;
use super::tcp::{DevmemCmsg, DevmemSocket, DmabufToken, Segment, TcpSender, DEFAULT_RCVBUF};
use super::tcp::{MAX_DONTNEED_FRAGS, MAX_DONTNEED_TOKENS};
use super::{MachineId, NetError, Port, Wire};
use crate::devmem::DeviceMemory;
use crate::io::{add_paths, End, IoOutcome, Leg, LegPath, Mover};
use peerdma_dma::{BouncePolicy, DmaSgl, MapError, PathTaken};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr, PhysAddr};
use peerdma_sim::{DmaError, HostBuffer, LocalMut, PathBytes, SimMachine};

/// Where the sender's send buffer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendFrom {
    /// Host memory of a NUMA node (plain TCP: the kernel's socket buffer).
    Host { node: u32 },
    /// Device memory of `dev` (devmem TX from a bound dma-buf), which the
    /// application fills as a ring.
    Device { dev: Bdf },
    /// Device memory of `dev` that already holds the whole stream — a
    /// dataset in GPU memory sent as it is (devmem TX): the memory BAR
    /// reads as the stream's pattern data (the simulator's
    /// `fill_bar_pattern`, which forgets what was written to that BAR),
    /// and the application writes nothing.
    DeviceDataset { dev: Bdf },
}

/// One machine of a flow: its simulator, its device memory, its number.
#[derive(Clone, Copy)]
pub struct Host<'m> {
    pub sim: &'m SimMachine,
    pub mem: &'m DeviceMemory,
    pub id: MachineId,
}

/// The send buffer's memory, owned by the sender while it lives.
#[derive(Debug)]
enum SendMem {
    Host(HostBuffer),
    Device(peerdma_p2p::Allocation),
}

impl SendMem {
    fn phys(&self) -> peerdma_mem::PhysVec {
        match self {
            SendMem::Host(b) => b.phys(),
            SendMem::Device(a) => a.phys(),
        }
    }
}

/// The sending side: the NIC, the send buffer (a ring the application
/// writes the stream into) mapped for it, and the data's seed.
#[derive(Debug)]
pub struct Sender<'m> {
    sim: &'m SimMachine,
    machine: MachineId,
    nic: Bdf,
    mem: SendMem,
    ring_phys: PhysAddr,
    ring_len: u64,
    sgl: DmaSgl,
    path: LegPath,
    from: End,
    provider: Option<Bdf>,
    seed: u64,
    /// The pattern offset of stream byte 0.
    pattern_base: u64,
    filled: u64,
    stream_len: u64,
}

impl<'m> Sender<'m> {
    /// A sender on `host` through `nic`, with a send buffer of `sndbuf`
    /// bytes in `from`, for a stream of `stream_len` bytes of pattern data
    /// of `seed` (stream byte `s` is [`peerdma_sim::pattern`] byte `s`).
    pub fn new(
        host: Host<'m>,
        nic: Bdf,
        from: SendFrom,
        sndbuf: u64,
        stream_len: u64,
        seed: u64,
    ) -> Result<Sender<'m>, NetError> {
        let sim = host.sim;
        Nic::new(sim, nic, NicConfig::default())?;
        if sndbuf < 64 << 10 {
            return Err(NetError::Config(format!(
                "a send buffer of {sndbuf} bytes (at least 64 KiB)"
            )));
        }
        let mut pattern_base = 0;
        let mut filled = 0;
        let (mem, vec, end, provider) = match from {
            SendFrom::Host { node } => {
                let b = sim.alloc_host(sndbuf, node).map_err(|e| NetError::Access {
                    what: format!("the send buffer for {nic}"),
                    source: e,
                })?;
                let v = b.phys();
                (SendMem::Host(b), v, End::Host { node }, None)
            }
            SendFrom::Device { dev } => {
                let p = host.mem.provider(sim, dev).map_err(|e| NetError::Export {
                    dev,
                    why: e.to_string(),
                })?;
                let a = p
                    .alloc_aligned(sndbuf, 2 << 20)
                    .map_err(|e| NetError::Export {
                        dev,
                        why: e.to_string(),
                    })?;
                let v = a.phys();
                (SendMem::Device(a), v, End::Device { bdf: dev }, Some(dev))
            }
            SendFrom::DeviceDataset { dev } => {
                let p = host.mem.provider(sim, dev).map_err(|e| NetError::Export {
                    dev,
                    why: e.to_string(),
                })?;
                let bar_start = sim
                    .topology()
                    .find(dev)
                    .and_then(|f| {
                        sim.topology()
                            .function(f)
                            .bars
                            .iter()
                            .find(|b| b.index == p.bar())
                            .map(|b| b.phys.start())
                    })
                    .ok_or(NetError::NoDevice(dev))?;
                sim.fill_bar_pattern(dev, p.bar(), seed)
                    .map_err(|e| NetError::Access {
                        what: format!("the dataset in {dev}'s memory"),
                        source: e,
                    })?;
                let a = p
                    .alloc_aligned(stream_len.max(sndbuf), 2 << 20)
                    .map_err(|e| NetError::Export {
                        dev,
                        why: e.to_string(),
                    })?;
                pattern_base = a.phys_addr().raw() - bar_start.raw();
                filled = stream_len;
                let v = a.phys();
                (SendMem::Device(a), v, End::Device { bdf: dev }, Some(dev))
            }
        };
        let sgl = sim
            .map(nic, &[vec], Direction::ToDevice, BouncePolicy::Forbid)
            .map_err(|e| match (e, provider) {
                (DmaError::Map(MapError::NotSupported { reason, .. }), Some(memory)) => {
                    NetError::SendRefused {
                        nic,
                        memory,
                        reason,
                    }
                }
                (e, _) => NetError::Dma {
                    what: format!("mapping the send buffer for {nic}"),
                    source: e,
                },
            })?;
        let path = match sgl.path() {
            PathTaken::BusAddr => LegPath::BusAddr,
            PathTaken::ThruHostBridge => LegPath::ThruHostBridge,
            PathTaken::HostMemory => LegPath::HostMemory,
            PathTaken::Bounced => LegPath::Bounced,
        };
        Ok(Sender {
            sim,
            machine: host.id,
            nic,
            ring_phys: mem.phys().addr(),
            ring_len: mem.phys().len(),
            mem,
            sgl,
            path,
            from: end,
            provider,
            seed,
            pattern_base,
            filled,
            stream_len,
        })
    }

    /// The pattern offset of stream byte 0: stream byte `s` is the
    /// pattern data of the seed at `pattern_base() + s`.
    pub fn pattern_base(&self) -> u64 {
        self.pattern_base
    }

    pub fn nic(&self) -> Bdf {
        self.nic
    }

    /// The send buffer.
    pub fn send_buffer(&self) -> peerdma_mem::PhysVec {
        self.mem.phys()
    }

    /// How the NIC reads the send buffer.
    pub fn path(&self) -> LegPath {
        self.path
    }

    /// The application writes the stream up to `upto` into the send
    /// buffer (what it holds is the unacknowledged data and what follows).
    fn fill(&mut self, upto: u64) -> Result<(), NetError> {
        let upto = upto.min(self.stream_len);
        while self.filled < upto {
            let at = self.filled % self.ring_len;
            let n = (upto - self.filled).min(self.ring_len - at);
            let addr = self
                .ring_phys
                .checked_add(at)
                .ok_or_else(|| NetError::Config("send buffer address overflow".into()))?;
            self.sim
                .fill_memory_pattern(addr, n, self.seed, self.filled)
                .map_err(|e| NetError::Access {
                    what: "the application writing its send buffer".into(),
                    source: e,
                })?;
            self.filled += n;
        }
        Ok(())
    }

    /// DMA entries for stream bytes `[seq, seq + len)` in the send buffer.
    fn entries(&self, seq: u64, len: u32, out: &mut Vec<(DmaAddr, u64)>) -> Result<(), NetError> {
        let mut off = seq % self.ring_len;
        let mut left = u64::from(len);
        while left > 0 {
            let run = (self.ring_len - off).min(left);
            // Map the ring offset through the list.
            let mut o = off;
            let mut r = run;
            for e in self.sgl.entries() {
                if r == 0 {
                    break;
                }
                if o >= e.len {
                    o -= e.len;
                    continue;
                }
                let n = (e.len - o).min(r);
                let a = e
                    .addr
                    .checked_add(o)
                    .ok_or_else(|| NetError::Config("send buffer DMA address overflow".into()))?;
                match out.last_mut() {
                    Some(last) if last.0.checked_add(last.1) == Some(a) => last.1 += n,
                    _ => out.push((a, n)),
                }
                r -= n;
                o = 0;
            }
            off = (off + run) % self.ring_len;
            left -= run;
        }
        Ok(())
    }
}

/// The receiving side of one NIC: its bound RX queue, the binding and the
/// queue's page pool, and the devmem socket the flow is steered to.
#[derive(Debug)]
pub struct Receiver<'m> {
    sim: &'m SimMachine,
    machine: MachineId,
    nic: Nic,
    queue: Option<RxQueue>,
    binding: Option<Binding>,
    pool: Option<PagePool>,
    socket: DevmemSocket,
    next_id: u32,
}

impl<'m> Receiver<'m> {
    /// The receiving side on `host`'s NIC `nic`.
    pub fn new(host: Host<'m>, nic: Bdf, cfg: NicConfig) -> Result<Receiver<'m>, NetError> {
        Ok(Receiver {
            sim: host.sim,
            machine: host.id,
            nic: Nic::new(host.sim, nic, cfg)?,
            queue: None,
            binding: None,
            pool: None,
            socket: DevmemSocket::new(DEFAULT_RCVBUF),
            next_id: 1,
        })
    }

    pub fn nic(&self) -> &Nic {
        &self.nic
    }

    /// `NETDEV_CMD_BIND_RX`: bind `dmabuf` to RX queue `queue` with
    /// `net_iov`s of `rx_buf_size` bytes; the binding's id. The queue is
    /// restarted with a page pool over the binding and its ring filled.
    pub fn bind(&mut self, dmabuf: DmaBuf, queue: u32, rx_buf_size: u32) -> Result<u32, NetError> {
        let nic = self.nic.bdf;
        if queue >= self.nic.cfg.rx_queues {
            return Err(NetError::NoQueue {
                nic,
                queue,
                queues: self.nic.cfg.rx_queues,
            });
        }
        if let Some(b) = &self.binding {
            if b.state() != BindingState::Freed {
                return Err(NetError::QueueBusy {
                    nic,
                    queue: b.queue(),
                    binding: b.id(),
                });
            }
        }
        if !self.nic.cfg.header_split {
            return Err(NetError::HeaderSplitOff { nic });
        }
        let id = self.next_id;
        let mut b = Binding::bind(self.sim, nic, queue, dmabuf, rx_buf_size, id)?;
        let mut q = RxQueue::new(self.sim, &self.nic, queue)?;
        let mut pool = PagePool::new(&mut b, self.nic.cfg.ring_size as usize);
        q.refill(self.sim, &mut b, &mut pool, &mut RxScratch::default())?;
        self.next_id += 1;
        self.socket = DevmemSocket::new(self.socket.rcvbuf);
        self.socket.dmabuf_id = id;
        self.queue = Some(q);
        self.binding = Some(b);
        self.pool = Some(pool);
        Ok(id)
    }

    /// The user closes the netlink socket: the binding's reference goes,
    /// the queue stops (its posted buffers go back to the pool) and the
    /// pool is destroyed — it lives until the `net_iov`s still out come
    /// back, and the binding with it.
    pub fn unbind(&mut self) -> Result<(), NetError> {
        let (Some(b), Some(pool)) = (self.binding.as_mut(), self.pool.as_mut()) else {
            return Err(NetError::NotBound { nic: self.nic.bdf });
        };
        if b.state() != BindingState::Bound {
            return Ok(());
        }
        if let Some(mut q) = self.queue.take() {
            q.stop(b, pool)?;
        }
        b.unbind()?;
        pool.destroy(b)
    }

    /// `recvmsg(MSG_SOCK_DEVMEM)`: up to `max_bytes` as frags into `out`.
    pub fn recvmsg(&mut self, out: &mut Vec<DevmemCmsg>, max_bytes: u64) -> Result<u64, NetError> {
        let (Some(b), Some(pool)) = (self.binding.as_mut(), self.pool.as_mut()) else {
            return Err(NetError::NotBound { nic: self.nic.bdf });
        };
        self.socket.recvmsg(out, max_bytes, b, pool)
    }

    /// `setsockopt(SO_DEVMEM_DONTNEED)`: the frags freed.
    pub fn dontneed(&mut self, tokens: &[DmabufToken]) -> Result<u32, NetError> {
        let (Some(b), Some(pool)) = (self.binding.as_mut(), self.pool.as_mut()) else {
            return Err(NetError::NotBound { nic: self.nic.bdf });
        };
        self.socket.dontneed(tokens, b, pool)
    }

    /// Close the socket: what the user and the queues hold goes back.
    pub fn close(&mut self) -> Result<(), NetError> {
        let (Some(b), Some(pool)) = (self.binding.as_mut(), self.pool.as_mut()) else {
            return Ok(());
        };
        self.socket.close(b, pool)
    }

    pub fn binding(&self) -> Option<&Binding> {
        self.binding.as_ref()
    }
    pub fn pool(&self) -> Option<&PagePool> {
        self.pool.as_ref()
    }
    pub fn queue(&self) -> Option<&RxQueue> {
        self.queue.as_ref()
    }
    pub fn socket(&self) -> &DevmemSocket {
        &self.socket
    }
    /// Mutable socket settings (its receive buffer).
    pub fn socket_mut(&mut self) -> &mut DevmemSocket {
        &mut self.socket
    }
}

/// Settings of a flow.
#[derive(Clone, Copy, Debug)]
pub struct FlowConfig {
    pub tcp: TcpOptions,
    /// Segments the sender puts on the wire per round at most.
    pub burst: u32,
    pub key: FlowKey,
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            tcp: TcpOptions::default(),
            burst: 256,
            key: FlowKey::default(),
        }
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Frames the sender put on the wire (retransmissions included).
    pub sent: u32,
    /// Frames the NIC wrote into memory, and frames it dropped for want
    /// of a buffer.
    pub received: u32,
    pub dropped: u32,
    /// The window the receiver advertised at the end of the round.
    pub window: u64,
    /// Whether the sender has everything acknowledged.
    pub done: bool,
}

/// Counters of a flow, beyond the sender's, the queue's and the socket's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub rounds: u64,
    pub frames: u64,
    /// Bytes the line carried (frames with preamble, FCS and gap).
    pub line_bytes: u64,
}

/// A devmem TCP flow.
#[derive(Debug)]
pub struct Flow<'m> {
    pub tx: Sender<'m>,
    pub rx: Receiver<'m>,
    wire: Wire,
    cfg: FlowConfig,
    mss: u32,
    pub tcp: TcpSender,
    segs: Vec<Segment>,
    frames: Vec<WireFrame>,
    payload: Vec<u8>,
    entries: Vec<(DmaAddr, u64)>,
    sacked: Vec<(u64, u64)>,
    scratch: RxScratch,
    burst: RxBurst,
    legs: [Leg; 4],
    meta: Vec<PathBytes>,
    ip_id: u16,
    pub stats: FlowStats,
}

const TX: usize = 0;
const WIRE: usize = 1;
const PAYLOAD: usize = 2;
const HEADERS: usize = 3;

impl<'m> Flow<'m> {
    /// A flow from `tx` over `wire` to `rx`, whose NIC must have a dma-buf
    /// bound. The wire must join the two NICs.
    pub fn new(
        tx: Sender<'m>,
        wire: Wire,
        rx: Receiver<'m>,
        cfg: FlowConfig,
    ) -> Result<Flow<'m>, NetError> {
        let from = Port {
            machine: tx.machine,
            nic: tx.nic,
        };
        let to = Port {
            machine: rx.machine,
            nic: rx.nic.bdf,
        };
        if wire.peer(from) != Some(to) {
            return Err(NetError::Wire(format!(
                "sender {} of machine {} and receiver {} of machine {} are not its two ends",
                from.nic, from.machine, to.nic, to.machine
            )));
        }
        if !(wire.bytes_per_sec.is_finite() && wire.bytes_per_sec > 0.0) {
            return Err(NetError::Wire(format!(
                "a line rate of {} bytes/s",
                wire.bytes_per_sec
            )));
        }
        let mss = cfg.tcp.mss(wire.mtu)?;
        if cfg.burst == 0 {
            return Err(NetError::Config("a burst of 0 segments".into()));
        }
        let Some(b) = rx.binding() else {
            return Err(NetError::NotBound { nic: rx.nic.bdf });
        };
        let gpu = b.exporter();
        let rnic = rx.nic.bdf;
        let legs = [
            Leg::new(
                tx.from,
                End::Device { bdf: tx.nic },
                tx.path,
                tx.provider,
                Mover::Dma { engine: tx.nic },
            )
            .on(tx.machine, None),
            Leg::new(
                End::Device { bdf: tx.nic },
                End::Device { bdf: rnic },
                LegPath::Wire,
                None,
                Mover::Dma { engine: tx.nic },
            )
            .on(tx.machine, Some(rx.machine)),
            Leg::new(
                End::Device { bdf: rnic },
                End::Device { bdf: gpu },
                b.path(),
                Some(gpu),
                Mover::Dma { engine: rnic },
            )
            .on(rx.machine, None),
            Leg::new(
                End::Device { bdf: rnic },
                End::Host {
                    node: rx.nic.numa_node,
                },
                LegPath::HostMemory,
                None,
                Mover::Dma { engine: rnic },
            )
            .on(rx.machine, None),
        ];
        let tcp = TcpSender::new(mss, tx.stream_len, rx.socket.window());
        Ok(Flow {
            tx,
            rx,
            wire,
            cfg,
            mss,
            tcp,
            segs: Vec::new(),
            frames: Vec::new(),
            payload: Vec::new(),
            entries: Vec::new(),
            sacked: Vec::new(),
            scratch: RxScratch::default(),
            burst: RxBurst::default(),
            legs,
            meta: Vec::new(),
            ip_id: 0,
            stats: FlowStats::default(),
        })
    }

    pub fn mss(&self) -> u32 {
        self.mss
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    /// One round: a burst on the wire, received, acknowledged.
    pub fn round(&mut self) -> Result<Round, NetError> {
        // The window the receiver advertises now (its update after the
        // application read).
        self.tcp.rwnd = self.rx.socket.window();
        let avail = self.tcp.snd_una.saturating_add(self.tx.ring_len);
        self.tcp
            .segments(self.cfg.burst as usize, avail, &mut self.segs);
        self.stats.rounds += 1;
        if self.segs.is_empty() {
            return Ok(Round {
                window: self.rx.socket.window(),
                done: self.tcp.done(),
                ..Round::default()
            });
        }
        self.tx.fill(avail)?;
        // The sender's NIC reads the burst out of the send buffer (TSO).
        self.entries.clear();
        let mut total = 0usize;
        for s in &self.segs {
            self.tx.entries(s.seq, s.len, &mut self.entries)?;
            total += s.len as usize;
        }
        // Every byte of it is overwritten: grow it, never clear it.
        if self.payload.len() < total {
            self.payload.resize(total, 0);
        }
        let t = self
            .tx
            .sim
            .dma_from_many(
                self.tx.nic,
                &self.entries,
                LocalMut::Bytes(&mut self.payload[..total]),
            )
            .map_err(|e| NetError::Dma {
                what: format!("{} reading the send buffer", self.tx.nic),
                source: e,
            })?;
        self.legs[TX].add(&t);
        // Frames: headers in front of each segment.
        self.frames.clear();
        let mut at = 0u32;
        let mut line = 0u64;
        for s in &self.segs {
            let mut f = WireFrame {
                payload_at: at,
                payload_len: s.len,
                header: [0; frame::MAX_HEADER],
                header_len: 0,
            };
            let ack = 0;
            f.header_len = frame::write_headers(
                &mut f.header,
                &self.cfg.key,
                self.cfg.tcp,
                s.seq as u32,
                ack,
                s.len,
                self.ip_id,
            ) as u8;
            self.ip_id = self.ip_id.wrapping_add(1);
            line += self.cfg.tcp.line_bytes(s.len);
            at += s.len;
            self.frames.push(f);
        }
        self.stats.frames += self.frames.len() as u64;
        self.stats.line_bytes += line;
        self.legs[WIRE].bytes += line;
        // The receiving NIC, its driver and the socket.
        let sent = self.frames.len() as u32;
        let (received, dropped) = self.receive()?;
        self.rx.socket.sacked(&mut self.sacked);
        let window = self.rx.socket.window();
        self.tcp
            .on_ack(self.rx.socket.rcv_nxt(), &self.sacked, window);
        Ok(Round {
            sent,
            received,
            dropped,
            window,
            done: self.tcp.done(),
        })
    }

    fn receive(&mut self) -> Result<(u32, u32), NetError> {
        let Receiver {
            sim,
            nic,
            queue,
            binding,
            pool,
            socket,
            ..
        } = &mut self.rx;
        let (Some(q), Some(b), Some(pool)) = (queue.as_mut(), binding.as_mut(), pool.as_mut())
        else {
            return Err(NetError::NotBound { nic: nic.bdf });
        };
        let port = self.cfg.key.dst_port;
        let layout = nic.cfg.layout;
        let niov = b.niov_size();
        let burst = &mut self.burst;
        burst.received = 0;
        burst.dropped = 0;
        burst.payload.clear();
        burst.headers.clear();
        burst.meta.clear();
        q.receive(
            sim,
            nic.bdf,
            &self.frames,
            &self.payload[..],
            b,
            pool,
            &mut self.scratch,
            burst,
            &mut |pkt, b, pool| {
                let parsed =
                    frame::parse(&pkt.header[..pkt.header_len as usize]).map_err(|why| {
                        NetError::Frame(format!("a header read back from host memory: {why}"))
                    })?;
                if parsed.dst_port != port {
                    return Err(NetError::Frame(format!(
                        "a frame for port {} on the queue steered for port {port}",
                        parsed.dst_port
                    )));
                }
                let mut truesize = HDR_SLOT as u32;
                for &(_, _, l) in &pkt.frags[..usize::from(pkt.nfrags)] {
                    truesize += match layout {
                        BufferLayout::OnePacket => niov,
                        BufferLayout::Packed { stride } => l.div_ceil(stride) * stride,
                    };
                }
                socket.on_packet(pkt, &parsed, truesize, b, pool)
            },
        )?;
        for t in &burst.payload {
            self.legs[PAYLOAD].add(t);
        }
        for t in &burst.headers {
            self.legs[HEADERS].add(t);
        }
        for t in &burst.meta {
            add_paths(&mut self.meta, &t.paths);
        }
        Ok((burst.received, burst.dropped))
    }

    /// What the flow moved so far, leg by leg: the sender's DMA out of its
    /// send buffer (its machine), the frames on the wire (bytes on the
    /// line, sender to receiver), the receiver's DMA of payloads into the
    /// dma-buf and of headers into host memory (its machine); descriptor
    /// and completion DMAs of the receiver in `meta_paths`.
    pub fn outcome(&self) -> IoOutcome {
        let mut out = IoOutcome {
            bytes: self.rx.socket.rcv_nxt(),
            meta_paths: self.meta.clone(),
            ..IoOutcome::default()
        };
        out.legs = self.legs.iter().filter(|l| l.bytes > 0).cloned().collect();
        out
    }
}

/// When the user gives tokens back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenReturn {
    /// After checking each read, all of them.
    Immediately,
    /// Once it holds `frags` tokens, all of them (one
    /// `SO_DEVMEM_DONTNEED` holds at most 1024 frags).
    Batch { frags: u32 },
    /// Never: a consumer that is stuck.
    Never,
}

/// A devmem transfer to run.
#[derive(Clone, Debug)]
pub struct TransferSpec {
    /// Stream bytes.
    pub bytes: u64,
    pub seed: u64,
    pub from: SendFrom,
    pub sndbuf: u64,
    /// Whose device memory receives (a GPU's VRAM aperture).
    pub into: Bdf,
    pub dmabuf_len: u64,
    pub rx_queue: u32,
    pub rx_buf_size: u32,
    pub nic: NicConfig,
    pub flow: FlowConfig,
    pub rcvbuf: u64,
    pub tokens: TokenReturn,
}

impl TransferSpec {
    /// `bytes` into `into`'s memory from host memory of node 0, with the
    /// kernel's defaults: 4 KiB `net_iov`s, a 64 MiB dma-buf, the default
    /// buffer layout, tokens given back 1024 at a time. With larger
    /// `net_iov`s, size the dma-buf for a full ring and what the user
    /// holds, or the pool runs dry (and the report says so).
    pub fn new(bytes: u64, into: Bdf) -> TransferSpec {
        TransferSpec {
            bytes,
            seed: 0x5eed,
            from: SendFrom::Host { node: 0 },
            sndbuf: 4 << 20,
            into,
            dmabuf_len: 64 << 20,
            rx_queue: 1,
            rx_buf_size: 4096,
            nic: NicConfig::default(),
            flow: FlowConfig::default(),
            rcvbuf: DEFAULT_RCVBUF,
            tokens: TokenReturn::Batch {
                frags: MAX_DONTNEED_FRAGS,
            },
        }
    }
}

impl TransferSpec {
    /// A dma-buf that holds a full RX ring, the frags a user holds before
    /// one `SO_DEVMEM_DONTNEED` and four bursts in flight, of this spec's
    /// `net_iov`s, rounded up to 2 MiB (the unit GPU drivers export in):
    /// enough that the pool never runs dry while the user gives tokens
    /// back.
    pub fn ring_dmabuf_len(&self) -> u64 {
        let buffers = u64::from(self.nic.ring_size)
            + u64::from(MAX_DONTNEED_FRAGS)
            + 4 * u64::from(self.flow.burst);
        (buffers * u64::from(self.rx_buf_size)).next_multiple_of(2 << 20)
    }
}

/// How full the `net_iov`s holding data were.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Utilization {
    /// Payload bytes over bytes of the `net_iov`s holding them, summed over
    /// every round (each sampled after the user's read, when it holds
    /// the most).
    pub average: f64,
    /// The most device memory held by data at once, and the payload in it.
    pub peak_held_bytes: u64,
    pub peak_payload_bytes: u64,
    pub samples: u64,
}

impl Utilization {
    /// Payload over held bytes at the peak.
    pub fn at_peak(&self) -> f64 {
        if self.peak_held_bytes == 0 {
            0.0
        } else {
            self.peak_payload_bytes as f64 / self.peak_held_bytes as f64
        }
    }
}

/// What a devmem transfer did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DevmemReport {
    /// Stream bytes asked for.
    pub bytes: u64,
    /// Stream bytes the user read, every one checked where it landed.
    pub verified_bytes: u64,
    pub complete: bool,
    /// Why the transfer stopped short, if it did.
    pub stalled: Option<String>,
    pub mtu: u32,
    pub mss: u32,
    pub niov_size: u32,
    pub layout: BufferLayout,
    /// How the receiving NIC reaches the dma-buf.
    pub path: LegPath,
    /// Segments the socket queued in order (each once).
    pub packets: u64,
    pub frames_sent: u64,
    /// Frames the NIC dropped for want of a posted buffer.
    pub drops: u64,
    /// Segments the socket dropped: its receive buffer was full of
    /// truesize.
    pub socket_drops: u64,
    pub duplicates: u64,
    pub retransmitted_bytes: u64,
    pub fast_recoveries: u64,
    pub timeouts: u64,
    /// Header bytes the NIC wrote into host memory.
    pub header_bytes: u64,
    /// Payload bytes the NIC wrote into device memory (retransmissions
    /// included).
    pub payload_bytes: u64,
    /// Bytes the line carried.
    pub line_bytes: u64,
    /// Frags (tokens) the user got and gave back, and its
    /// `SO_DEVMEM_DONTNEED` calls.
    pub frags: u64,
    pub tokens_returned: u64,
    pub dontneed_calls: u64,
    /// Buffers the driver posted to replace the ones the NIC finished.
    pub buffers_posted: u64,
    pub utilization: Utilization,
    /// Whether the binding was freed after the user unbound and closed
    /// the socket: every `net_iov` back, references at zero.
    pub binding_freed: bool,
    pub outcome: IoOutcome,
}

/// Group `tokens` into `SO_DEVMEM_DONTNEED` calls: consecutive tokens in
/// one range, at most 128 ranges and 1024 frags a call.
pub fn dontneed_calls(tokens: &mut [u32]) -> Vec<Vec<DmabufToken>> {
    tokens.sort_unstable();
    let mut calls: Vec<Vec<DmabufToken>> = Vec::new();
    let mut cur: Vec<DmabufToken> = Vec::new();
    let mut frags = 0u32;
    for &t in tokens.iter() {
        let extend = cur
            .last()
            .is_some_and(|r| r.token_start.checked_add(r.token_count) == Some(t));
        if frags == MAX_DONTNEED_FRAGS || (!extend && cur.len() == MAX_DONTNEED_TOKENS) {
            calls.push(std::mem::take(&mut cur));
            frags = 0;
        }
        match cur.last_mut() {
            Some(r) if r.token_start.checked_add(r.token_count) == Some(t) => r.token_count += 1,
            _ => cur.push(DmabufToken {
                token_start: t,
                token_count: 1,
            }),
        }
        frags += 1;
    }
    if !cur.is_empty() {
        calls.push(cur);
    }
    calls
}

/// Where frags land and what they must hold: the dma-buf's first byte, its
/// memory's owner, and the sender's data (pattern data of `seed`, stream
/// byte `s` at pattern offset `pattern_base + s`).
#[derive(Clone, Copy, Debug)]
pub struct FragCheck {
    pub dmabuf: PhysAddr,
    pub memory: Bdf,
    pub seed: u64,
    pub pattern_base: u64,
}

/// Check received frags, in stream order from stream byte `read`, where
/// they landed in device memory against what the sender sent; the stream
/// offset after them, or the first byte that differs as
/// [`NetError::Corrupt`]. `ranges` is scratch space.
pub fn check_frags(
    sim: &SimMachine,
    at: &FragCheck,
    frags: &[DevmemCmsg],
    ranges: &mut Vec<(PhysAddr, u64, u64)>,
    read: u64,
) -> Result<u64, NetError> {
    ranges.clear();
    let mut pos = read;
    for c in frags {
        let addr = at
            .dmabuf
            .checked_add(c.frag_offset)
            .ok_or_else(|| NetError::Config("dma-buf address overflow".into()))?;
        ranges.push((addr, u64::from(c.frag_size), at.pattern_base + pos));
        pos += u64::from(c.frag_size);
    }
    let bad = sim
        .memory_patterns_mismatch(ranges, at.seed)
        .map_err(|e| NetError::Access {
            what: "checking received bytes".into(),
            source: e,
        })?;
    if let Some((k, i)) = bad {
        return Err(NetError::Corrupt {
            stream_offset: ranges[k].2 - at.pattern_base + i,
            dmabuf_offset: frags[k].frag_offset + i,
            memory: at.memory,
        });
    }
    Ok(pos)
}

/// The user program: receive `spec.bytes` from `sender`'s port `from`
/// over `wire` into device memory of `receiver`, check every byte where it
/// landed, give tokens back by the spec's policy; then unbind, close, and
/// check that the binding was freed.
pub fn run_transfer(
    sender: Host<'_>,
    receiver: Host<'_>,
    wire: &Wire,
    from: Port,
    spec: &TransferSpec,
) -> Result<DevmemReport, NetError> {
    if from.machine != sender.id {
        return Err(NetError::Wire(format!(
            "the sending port is on machine {} but the sender is machine {}",
            from.machine, sender.id
        )));
    }
    let to = wire.peer(from).ok_or_else(|| {
        NetError::Wire(format!(
            "{} of machine {} is not an end of it",
            from.nic, from.machine
        ))
    })?;
    if to.machine != receiver.id {
        return Err(NetError::Wire(format!(
            "its other end is on machine {} but the receiver is machine {}",
            to.machine, receiver.id
        )));
    }
    let tx = Sender::new(
        sender,
        from.nic,
        spec.from,
        spec.sndbuf,
        spec.bytes,
        spec.seed,
    )?;
    let mut rx = Receiver::new(receiver, to.nic, spec.nic)?;
    rx.socket_mut().rcvbuf = spec.rcvbuf;
    let dmabuf = DmaBuf::export(receiver.sim, receiver.mem, spec.into, spec.dmabuf_len)?;
    rx.bind(dmabuf, spec.rx_queue, spec.rx_buf_size)?;
    let mut flow = Flow::new(tx, *wire, rx, spec.flow)?;
    let (phys, memory) = {
        let b = flow
            .rx
            .binding()
            .ok_or(NetError::NotBound { nic: to.nic })?;
        (b.dmabuf_phys(), b.exporter())
    };
    let frags_at = FragCheck {
        dmabuf: phys,
        memory,
        seed: spec.seed,
        pattern_base: flow.tx.pattern_base(),
    };
    let mut cmsgs: Vec<DevmemCmsg> = Vec::new();
    let mut ranges: Vec<(PhysAddr, u64, u64)> = Vec::new();
    let mut held: Vec<u32> = Vec::new();
    let mut read = 0u64;
    let mut util = Utilization::default();
    let (mut sum_payload, mut sum_held) = (0u128, 0u128);
    let mut idle = 0u32;
    let mut stalled = None;
    while read < spec.bytes {
        let r = flow.round()?;
        cmsgs.clear();
        let n = flow.rx.recvmsg(&mut cmsgs, u64::MAX)?;
        held.extend(cmsgs.iter().map(|c| c.frag_token));
        read = check_frags(receiver.sim, &frags_at, &cmsgs, &mut ranges, read)?;
        if let Some(b) = flow.rx.binding() {
            let (payload, bytes) = b.held();
            sum_payload += u128::from(payload);
            sum_held += u128::from(bytes);
            util.samples += 1;
            if bytes > util.peak_held_bytes {
                util.peak_held_bytes = bytes;
                util.peak_payload_bytes = payload;
            }
        }
        let give_back = match spec.tokens {
            TokenReturn::Immediately => true,
            TokenReturn::Batch { frags } => held.len() as u64 >= u64::from(frags.max(1)),
            TokenReturn::Never => false,
        };
        if give_back {
            for call in dontneed_calls(&mut held) {
                flow.rx.dontneed(&call)?;
            }
            held.clear();
        }
        // No progress: nothing read and nothing the user will free.
        if n == 0 && r.received == 0 {
            idle += 1;
            if idle >= 3 {
                stalled = Some(if r.dropped > 0 {
                    format!(
                        "the page pool is empty: the user holds {} tokens and gives none back; the NIC drops every frame",
                        flow.rx.socket().held_tokens()
                    )
                } else if r.sent == 0 {
                    "the sender has nothing it may send (window closed)".to_string()
                } else {
                    "no progress".to_string()
                });
                break;
            }
        } else {
            idle = 0;
        }
    }
    if spec.tokens != TokenReturn::Never {
        for call in dontneed_calls(&mut held) {
            flow.rx.dontneed(&call)?;
        }
        held.clear();
    }
    util.average = if sum_held == 0 {
        0.0
    } else {
        sum_payload as f64 / sum_held as f64
    };
    let mut outcome = flow.outcome();
    outcome.bytes = read;
    let qstats = flow.rx.queue().map(|q| q.stats).unwrap_or_default();
    let sstats = flow.rx.socket().stats;
    if qstats.missed > 0 {
        outcome.notes.push(format!(
            "{} dropped {} frames for want of RX buffers: the page pool ran dry while the user held tokens",
            to.nic, qstats.missed
        ));
    }
    if sstats.rcvbuf_drops > 0 {
        outcome.notes.push(format!(
            "the socket dropped {} segments: its receive buffer ({} bytes) was full of buffers that hold little payload each",
            sstats.rcvbuf_drops,
            flow.rx.socket().rcvbuf
        ));
    }
    if flow.tcp.stats.timeouts > 0 {
        outcome.notes.push(format!(
            "{} retransmission timeouts (at least 200 ms each, not in the flow model's time)",
            flow.tcp.stats.timeouts
        ));
    }
    if let Some(why) = &stalled {
        outcome.notes.push(format!(
            "stopped after {read} of {} bytes: {why}",
            spec.bytes
        ));
    }
    // Unbind, close the socket: the binding must come free.
    flow.rx.unbind()?;
    flow.rx.close()?;
    let b = flow
        .rx
        .binding()
        .ok_or(NetError::NotBound { nic: to.nic })?;
    let sock = flow.rx.socket().stats;
    Ok(DevmemReport {
        bytes: spec.bytes,
        verified_bytes: read,
        complete: read == spec.bytes,
        stalled,
        mtu: wire.mtu,
        mss: flow.mss,
        niov_size: b.niov_size(),
        layout: spec.nic.layout,
        path: b.path(),
        packets: sock.segments,
        frames_sent: flow.stats.frames,
        drops: qstats.missed,
        socket_drops: sock.rcvbuf_drops,
        duplicates: sock.duplicates,
        retransmitted_bytes: flow.tcp.stats.retransmitted_bytes,
        fast_recoveries: flow.tcp.stats.fast_recoveries,
        timeouts: flow.tcp.stats.timeouts,
        header_bytes: qstats.header_bytes,
        payload_bytes: qstats.payload_bytes,
        line_bytes: flow.stats.line_bytes,
        frags: sock.frags,
        tokens_returned: sock.tokens_returned,
        dontneed_calls: sock.dontneed_calls,
        buffers_posted: qstats.reposted,
        utilization: util,
        binding_freed: b.state() == BindingState::Freed,
        outcome,
    })
}
