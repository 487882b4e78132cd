//! A NIC on the simulated machine: a PCI network controller (class 02)
//! whose DMA engine moves frames between the wire and memory, and the
//! driver of its RX queues.
//!
//! An RX queue has three rings in host memory on the NIC's NUMA node,
//! mapped for the NIC like any driver's coherent rings:
//!
//! * descriptors (16 bytes: buffer DMA address, length, slot) that the
//!   driver writes as it posts buffers from the page pool and the NIC
//!   fetches by DMA;
//! * completions (32 bytes each) the NIC writes and the driver reads;
//! * header buffers, one 128-byte slot per completion: with header split
//!   (`ethtool -G … tcp-data-split on`) the NIC writes a frame's Ethernet,
//!   IP and TCP headers there and its payload into the posted buffers —
//!   `net_iov`s of device memory when a dma-buf is bound.
//!
//! Where the payload goes in the posted buffers is the driver's buffer
//! layout ([`BufferLayout`]). The default is [`BufferLayout::Packed`] with
//! a 2 KiB stride: gve's DQO layout (its RX buffers are 2 KiB page-pool
//! fragments of each page or `net_iov`, one packet per fragment, a
//! longer packet continuing into the next ones);
//! [`BufferLayout::OnePacket`] gives every packet buffers of its own.
//!
//! The NIC takes buffers in ring order. A frame for which the posted
//! buffers have no room is dropped and counted (`rx_missed`, what
//! `ethtool -S` shows as out-of-buffer drops): the driver refills the ring
//! only in its NAPI poll, after the burst, and only as far as the page
//! pool can give.

use super::devmem::Binding;
use super::page_pool::PagePool;
use super::NetError;
use peerdma_dma::{BouncePolicy, DmaSgl};
use peerdma_mem::{Address, Bdf, Direction, DmaAddr};
use peerdma_sim::{HostBuffer, Local, LocalMut, SimMachine, Transfer};

/// Bytes of a descriptor: buffer DMA address (8), length (4), slot (4).
pub const DESC_SIZE: u64 = 16;
/// Bytes of a completion.
pub const CQE_SIZE: u64 = 32;
/// Bytes of a header buffer slot (the longest header here is 66 bytes).
pub const HDR_SLOT: u64 = 128;
const _: () = assert!(super::frame::MAX_HEADER as u64 <= HDR_SLOT);

/// How the driver lays packets out in the buffers it posts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BufferLayout {
    /// Every packet starts a new buffer: its payload from byte 0, the rest
    /// of the buffer unused until the buffer comes back. A payload longer
    /// than a buffer continues in the next one(s).
    OnePacket,
    /// Consecutive payloads share a buffer, each starting at a multiple of
    /// `stride` bytes, a payload that does not fit continuing into the
    /// next buffer: page-pool fragments (gve: 2 KiB) or the strides of a
    /// multi-packet receive queue (mlx5's striding RQ: 64 bytes and up).
    Packed { stride: u32 },
}

impl Default for BufferLayout {
    fn default() -> Self {
        BufferLayout::Packed { stride: 2048 }
    }
}

impl std::fmt::Display for BufferLayout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BufferLayout::OnePacket => f.write_str("one packet per buffer"),
            BufferLayout::Packed { stride } => {
                write!(
                    f,
                    "packed, {} strides",
                    peerdma_mem::format_size(u64::from(*stride))
                )
            }
        }
    }
}

impl std::str::FromStr for BufferLayout {
    type Err = String;

    /// `one-packet`, `packed` (2 KiB strides) or `packed:STRIDE` (a power
    /// of two of at least 64 bytes: `packed:64`, `packed:4K`).
    fn from_str(s: &str) -> Result<BufferLayout, String> {
        let bad = || {
            format!(
                "\"{s}\" is not one of one-packet, packed (2K strides), packed:STRIDE (a power of two of at least 64 bytes)"
            )
        };
        match s {
            "one-packet" => Ok(BufferLayout::OnePacket),
            "packed" => Ok(BufferLayout::default()),
            _ => match s.strip_prefix("packed:").map(peerdma_mem::parse_size) {
                Some(Ok(st)) if st.is_power_of_two() && (64..=2 << 20).contains(&st) => {
                    Ok(BufferLayout::Packed { stride: st as u32 })
                }
                _ => Err(bad()),
            },
        }
    }
}

/// A NIC's settings.
#[derive(Clone, Copy, Debug)]
pub struct NicConfig {
    /// RX queues (`ethtool -L`).
    pub rx_queues: u32,
    /// Descriptors per RX ring (`ethtool -G rx`).
    pub ring_size: u32,
    /// Header split (`ethtool -G tcp-data-split on`): devmem TCP needs it.
    pub header_split: bool,
    pub layout: BufferLayout,
}

impl Default for NicConfig {
    fn default() -> Self {
        NicConfig {
            rx_queues: 8,
            ring_size: 1024,
            header_split: true,
            layout: BufferLayout::default(),
        }
    }
}

/// A NIC function of a simulated machine.
#[derive(Clone, Debug)]
pub struct Nic {
    pub bdf: Bdf,
    pub numa_node: u32,
    pub cfg: NicConfig,
}

impl Nic {
    /// The NIC at `bdf`: refused unless it is a network controller.
    pub fn new(sim: &SimMachine, bdf: Bdf, cfg: NicConfig) -> Result<Nic, NetError> {
        let t = sim.topology();
        let f = t.find(bdf).ok_or(NetError::NoDevice(bdf))?;
        let func = t.function(f);
        if func.base_class() != 0x02 {
            return Err(NetError::NotANic {
                bdf,
                class: func.class,
            });
        }
        if cfg.ring_size == 0 || !cfg.ring_size.is_power_of_two() || cfg.ring_size > 65536 {
            return Err(NetError::Config(format!(
                "{bdf}: an RX ring of {} descriptors (a power of two up to 65536)",
                cfg.ring_size
            )));
        }
        if cfg.rx_queues == 0 {
            return Err(NetError::Config(format!("{bdf}: no RX queues")));
        }
        if let BufferLayout::Packed { stride } = cfg.layout {
            if stride == 0 || !stride.is_power_of_two() {
                return Err(NetError::Config(format!(
                    "{bdf}: a packing stride of {stride} bytes (a power of two)"
                )));
            }
        }
        Ok(Nic {
            bdf,
            numa_node: t.host_bridge(func.host_bridge).numa_node.unwrap_or(0),
            cfg,
        })
    }
}

/// A ring in host memory, mapped for the NIC.
#[derive(Debug)]
struct Ring {
    buf: HostBuffer,
    sgl: DmaSgl,
}

impl Ring {
    fn new(sim: &SimMachine, nic: &Nic, len: u64, dir: Direction) -> Result<Ring, NetError> {
        let buf = sim
            .alloc_host(len, nic.numa_node)
            .map_err(|e| NetError::Access {
                what: format!("the RX rings of {}", nic.bdf),
                source: e,
            })?;
        let sgl = sim
            .map(nic.bdf, &[buf.phys()], dir, BouncePolicy::Forbid)
            .map_err(|e| NetError::Dma {
                what: format!("mapping the RX rings of {}", nic.bdf),
                source: e,
            })?;
        Ok(Ring { buf, sgl })
    }

    /// The DMA address of byte `off`, and how many bytes from there are
    /// contiguous in DMA space.
    fn dma(&self, off: u64) -> Option<(DmaAddr, u64)> {
        let mut o = off;
        for e in self.sgl.entries() {
            if o < e.len {
                return Some((e.addr.checked_add(o)?, e.len - o));
            }
            o -= e.len;
        }
        None
    }

    /// Push DMA entries for `[off, off + len)` of the ring.
    fn entries(&self, off: u64, len: u64, out: &mut Vec<(DmaAddr, u64)>) -> Option<()> {
        let mut o = off;
        let mut left = len;
        while left > 0 {
            let (a, n) = self.dma(o)?;
            let n = n.min(left);
            out.push((a, n));
            o += n;
            left -= n;
        }
        Some(())
    }
}

/// Counters of one RX queue (`ethtool -S`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    pub packets: u64,
    /// Payload bytes written into posted buffers.
    pub payload_bytes: u64,
    /// Header bytes written into header buffers (host memory).
    pub header_bytes: u64,
    /// Frames dropped for want of a posted buffer.
    pub missed: u64,
    /// Buffers posted by the driver, and of those, the ones posted to
    /// replace buffers the NIC finished (the ring's first fill is not).
    pub posted: u64,
    pub reposted: u64,
    /// Times the driver could not fill the ring: the page pool was empty.
    pub refill_short: u64,
}

/// A received frame as the driver hands it up: where its header is (the
/// ring slot's bytes, copied out), and its payload's pieces.
#[derive(Clone, Copy, Debug)]
pub struct RxPacket {
    pub header: [u8; super::frame::MAX_HEADER],
    pub header_len: u32,
    pub payload_len: u32,
    pub nfrags: u8,
    /// (`net_iov`, offset in it, length), in order.
    pub frags: [(u32, u32, u32); MAX_FRAGS],
}

/// The most buffers one packet's payload can take: a 9176-byte payload
/// over 4 KiB buffers, starting anywhere in the first.
pub const MAX_FRAGS: usize = 4;

/// One frame as the NIC gets it off the wire.
#[derive(Clone, Copy, Debug)]
pub struct WireFrame {
    /// Where its payload is in the burst's payload bytes.
    pub payload_at: u32,
    pub payload_len: u32,
    pub header: [u8; super::frame::MAX_HEADER],
    pub header_len: u8,
}

/// What the NIC and its driver did with a burst.
#[derive(Debug, Default)]
pub struct RxBurst {
    pub received: u32,
    pub dropped: u32,
    /// The DMAs, for the legs: payload into the buffers, headers into host
    /// memory, and descriptors and completions.
    pub payload: Vec<Transfer>,
    pub headers: Vec<Transfer>,
    pub meta: Vec<Transfer>,
}

/// Buffers the burst's DMAs are built in, kept between bursts.
#[derive(Debug, Default)]
pub struct RxScratch {
    entries: Vec<(DmaAddr, u64)>,
    hdr_entries: Vec<(DmaAddr, u64)>,
    hdr_bytes: Vec<u8>,
    cqe_bytes: Vec<u8>,
    meta_entries: Vec<(DmaAddr, u64)>,
    read: Vec<u8>,
    hdr_read: Vec<u8>,
}

/// Where one piece of a payload goes: descriptor (ring position), offset
/// in its buffer, length.
type Piece = (u64, u32, u32);

/// An RX queue with its rings, the driver's posted buffers and the NIC's
/// view of them.
#[derive(Debug)]
pub struct RxQueue {
    pub index: u32,
    size: u64,
    layout: BufferLayout,
    desc: Ring,
    cq: Ring,
    hdr: Ring,
    /// The driver: `net_iov` posted in each slot.
    slots: Vec<u32>,
    /// Descriptors written (producer) and reclaimed (buffer done).
    posted: u64,
    reclaimed: u64,
    /// The NIC: descriptors fetched, their (address, length) per slot, the
    /// descriptor it fills and the next free byte in it.
    fetched: u64,
    nic_desc: Vec<(u64, u32)>,
    nic_pos: u64,
    nic_off: u32,
    /// Completions written by the NIC, and read by the driver.
    cq_prod: u64,
    cq_cons: u64,
    pub stats: RxStats,
}

const EMPTY: u32 = u32::MAX;

impl RxQueue {
    /// Start queue `index` of `nic` with fresh rings.
    pub(crate) fn new(sim: &SimMachine, nic: &Nic, index: u32) -> Result<RxQueue, NetError> {
        if index >= nic.cfg.rx_queues {
            return Err(NetError::NoQueue {
                nic: nic.bdf,
                queue: index,
                queues: nic.cfg.rx_queues,
            });
        }
        let size = u64::from(nic.cfg.ring_size);
        Ok(RxQueue {
            index,
            size,
            layout: nic.cfg.layout,
            desc: Ring::new(sim, nic, size * DESC_SIZE, Direction::ToDevice)?,
            cq: Ring::new(sim, nic, size * CQE_SIZE, Direction::FromDevice)?,
            hdr: Ring::new(sim, nic, size * HDR_SLOT, Direction::FromDevice)?,
            slots: vec![EMPTY; size as usize],
            posted: 0,
            reclaimed: 0,
            fetched: 0,
            nic_desc: vec![(0, 0); size as usize],
            nic_pos: 0,
            nic_off: 0,
            cq_prod: 0,
            cq_cons: 0,
            stats: RxStats::default(),
        })
    }

    /// Buffers posted and not yet done.
    pub fn outstanding(&self) -> u64 {
        self.posted - self.reclaimed
    }

    /// The driver posts buffers from the pool until the ring is full or
    /// the pool is empty, and writes their descriptors into the ring.
    pub(crate) fn refill(
        &mut self,
        sim: &SimMachine,
        b: &mut Binding,
        pool: &mut PagePool,
        scratch: &mut RxScratch,
    ) -> Result<(), NetError> {
        let start = self.posted;
        scratch.read.clear();
        while self.posted - self.reclaimed < self.size {
            let Some(i) = pool.alloc(b) else {
                self.stats.refill_short += 1;
                break;
            };
            let slot = self.posted % self.size;
            self.slots[slot as usize] = i;
            let n = b.niovs[i as usize];
            scratch.read.extend_from_slice(&n.dma.to_le_bytes());
            scratch.read.extend_from_slice(&b.niov_size().to_le_bytes());
            scratch.read.extend_from_slice(&(slot as u32).to_le_bytes());
            self.posted += 1;
        }
        self.stats.posted += self.posted - start;
        // The descriptors, into the ring (two writes where it wraps).
        let mut pos = start;
        let mut done = 0usize;
        while pos < self.posted {
            let slot = pos % self.size;
            let n = (self.posted - pos).min(self.size - slot);
            let bytes = &scratch.read[done..done + (n * DESC_SIZE) as usize];
            let at = self
                .desc
                .buf
                .phys()
                .addr()
                .checked_add(slot * DESC_SIZE)
                .ok_or_else(|| NetError::Config("descriptor ring address overflow".into()))?;
            sim.cpu_write(at, bytes).map_err(|e| NetError::Access {
                what: "writing RX descriptors".into(),
                source: e,
            })?;
            pos += n;
            done += bytes.len();
        }
        Ok(())
    }

    /// The NIC fetches the descriptors posted since it last looked.
    fn fetch(
        &mut self,
        sim: &SimMachine,
        nic: Bdf,
        scratch: &mut RxScratch,
        out: &mut RxBurst,
    ) -> Result<(), NetError> {
        if self.fetched == self.posted {
            return Ok(());
        }
        let n = self.posted - self.fetched;
        scratch.meta_entries.clear();
        let mut pos = self.fetched;
        while pos < self.posted {
            let slot = pos % self.size;
            let k = (self.posted - pos).min(self.size - slot);
            self.desc
                .entries(slot * DESC_SIZE, k * DESC_SIZE, &mut scratch.meta_entries)
                .ok_or_else(|| NetError::Config("descriptor ring outside its mapping".into()))?;
            pos += k;
        }
        let need = (n * DESC_SIZE) as usize;
        if scratch.read.len() < need {
            scratch.read.resize(need, 0);
        }
        let t = sim
            .dma_from_many(
                nic,
                &scratch.meta_entries,
                LocalMut::Bytes(&mut scratch.read[..need]),
            )
            .map_err(|e| NetError::Dma {
                what: format!("{nic} fetching RX descriptors"),
                source: e,
            })?;
        out.meta.push(t);
        for d in scratch.read[..need].chunks_exact(DESC_SIZE as usize) {
            let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or([0; 8]));
            let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or([0; 4]));
            let slot = u32::from_le_bytes(d[12..16].try_into().unwrap_or([0; 4]));
            if let Some(e) = self.nic_desc.get_mut(slot as usize) {
                *e = (addr, len);
            }
        }
        self.fetched = self.posted;
        Ok(())
    }

    /// Where a payload of `len` bytes would go from the NIC's current
    /// position, and the position after it; `None` when the fetched
    /// buffers have no room.
    fn place(&self, len: u32, pieces: &mut [Piece; MAX_FRAGS]) -> Option<(usize, u64, u32)> {
        let mut pos = self.nic_pos;
        let mut off = self.nic_off;
        let mut need = len;
        let mut n = 0usize;
        while need > 0 {
            if pos >= self.fetched || n == MAX_FRAGS {
                return None;
            }
            let blen = self.nic_desc[(pos % self.size) as usize].1;
            if off >= blen {
                pos += 1;
                off = 0;
                continue;
            }
            let take = need.min(blen - off);
            pieces[n] = (pos, off, take);
            n += 1;
            need -= take;
            off += take;
            if off == blen {
                pos += 1;
                off = 0;
            }
        }
        match self.layout {
            BufferLayout::OnePacket => {
                if off > 0 {
                    pos += 1;
                    off = 0;
                }
            }
            BufferLayout::Packed { stride } => {
                off = off.div_ceil(stride).saturating_mul(stride);
                if pos < self.fetched && off >= self.nic_desc[(pos % self.size) as usize].1 {
                    pos += 1;
                    off = 0;
                }
            }
        }
        Some((n, pos, off))
    }

    /// The NIC receives a burst — payloads into the posted buffers,
    /// headers into header slots, a completion each — and the driver's
    /// NAPI poll reads the completions and headers back, hands the packets
    /// to `deliver` (which takes its own references to the `net_iov`s),
    /// drops its references to the buffers the NIC finished, and refills
    /// the ring.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn receive(
        &mut self,
        sim: &SimMachine,
        nic: Bdf,
        frames: &[WireFrame],
        payload: &[u8],
        b: &mut Binding,
        pool: &mut PagePool,
        scratch: &mut RxScratch,
        out: &mut RxBurst,
        deliver: &mut dyn FnMut(&RxPacket, &mut Binding, &mut PagePool) -> Result<(), NetError>,
    ) -> Result<(), NetError> {
        // The frames come from the caller: each must fit what it claims.
        for (k, f) in frames.iter().enumerate() {
            let end = u64::from(f.payload_at) + u64::from(f.payload_len);
            if end > payload.len() as u64
                || f.payload_len == 0
                || usize::from(f.header_len) > super::frame::MAX_HEADER
            {
                return Err(NetError::Frame(format!(
                    "frame {k}: {} payload bytes at {} of {} and a {}-byte header",
                    f.payload_len,
                    f.payload_at,
                    payload.len(),
                    f.header_len
                )));
            }
        }
        self.fetch(sim, nic, scratch, out)?;
        scratch.entries.clear();
        scratch.hdr_entries.clear();
        scratch.hdr_bytes.clear();
        scratch.cqe_bytes.clear();
        let cq_start = self.cq_prod;
        // A run of accepted frames whose payloads are contiguous in
        // `payload`: one DMA for it.
        let mut run: Option<(usize, usize)> = None;
        let mut pieces: [Piece; MAX_FRAGS] = [(0, 0, 0); MAX_FRAGS];
        for f in frames {
            let at = f.payload_at as usize;
            let len = f.payload_len;
            let cq_full = self.cq_prod - self.cq_cons >= self.size;
            let placed = if cq_full {
                None
            } else {
                self.place(len, &mut pieces)
            };
            let Some((n, pos, off)) = placed else {
                self.stats.missed += 1;
                out.dropped += 1;
                if let Some((s, e)) = run.take() {
                    self.write_payload(sim, nic, &payload[s..e], scratch, out)?;
                }
                continue;
            };
            for &(p, o, l) in &pieces[..n] {
                let (addr, _) = self.nic_desc[(p % self.size) as usize];
                let a = DmaAddr::from_descriptor(addr)
                    .checked_add(u64::from(o))
                    .ok_or_else(|| {
                        NetError::Config(format!("{nic}: a descriptor's address overflows"))
                    })?;
                scratch.entries.push((a, u64::from(l)));
            }
            run = match run {
                Some((s, e)) if e == at => Some((s, at + len as usize)),
                Some((s, e)) => {
                    // Not contiguous with the run: write what we have.
                    let _ = (s, e);
                    let last: Vec<(DmaAddr, u64)> =
                        scratch.entries.drain(scratch.entries.len() - n..).collect();
                    self.write_payload(sim, nic, &payload[s..e], scratch, out)?;
                    scratch.entries.extend(last);
                    Some((at, at + len as usize))
                }
                None => Some((at, at + len as usize)),
            };
            // The header into its slot, and the completion.
            let idx = self.cq_prod % self.size;
            let hl = u64::from(f.header_len);
            let (ha, _) = self
                .hdr
                .dma(idx * HDR_SLOT)
                .ok_or_else(|| NetError::Config("header ring outside its mapping".into()))?;
            scratch.hdr_entries.push((ha, hl));
            scratch
                .hdr_bytes
                .extend_from_slice(&f.header[..hl as usize]);
            let first = pieces[0];
            let done = (pos - self.nic_pos) as u16;
            let mut cqe = [0u8; CQE_SIZE as usize];
            cqe[0..4].copy_from_slice(&((first.0 % self.size) as u32).to_le_bytes());
            cqe[4..8].copy_from_slice(&first.1.to_le_bytes());
            cqe[8..12].copy_from_slice(&len.to_le_bytes());
            cqe[12..14].copy_from_slice(&u16::from(f.header_len).to_le_bytes());
            cqe[14..16].copy_from_slice(&(n as u16).to_le_bytes());
            cqe[16..18].copy_from_slice(&done.to_le_bytes());
            cqe[18] = 1; // valid
            scratch.cqe_bytes.extend_from_slice(&cqe);
            self.nic_pos = pos;
            self.nic_off = off;
            self.cq_prod += 1;
            self.stats.packets += 1;
            self.stats.payload_bytes += u64::from(len);
            self.stats.header_bytes += hl;
            out.received += 1;
        }
        if let Some((s, e)) = run.take() {
            self.write_payload(sim, nic, &payload[s..e], scratch, out)?;
        }
        if !scratch.hdr_entries.is_empty() {
            let t = sim
                .dma_to_many(nic, &scratch.hdr_entries, Local::Bytes(&scratch.hdr_bytes))
                .map_err(|e| NetError::Dma {
                    what: format!("{nic} writing headers into host memory"),
                    source: e,
                })?;
            out.headers.push(t);
            scratch.meta_entries.clear();
            let mut pos = cq_start;
            while pos < self.cq_prod {
                let slot = pos % self.size;
                let k = (self.cq_prod - pos).min(self.size - slot);
                self.cq
                    .entries(slot * CQE_SIZE, k * CQE_SIZE, &mut scratch.meta_entries)
                    .ok_or_else(|| {
                        NetError::Config("completion ring outside its mapping".into())
                    })?;
                pos += k;
            }
            let t = sim
                .dma_to_many(nic, &scratch.meta_entries, Local::Bytes(&scratch.cqe_bytes))
                .map_err(|e| NetError::Dma {
                    what: format!("{nic} writing completions"),
                    source: e,
                })?;
            out.meta.push(t);
        }
        self.poll(sim, b, pool, scratch, deliver)?;
        let before = self.posted;
        self.refill(sim, b, pool, scratch)?;
        self.stats.reposted += self.posted - before;
        Ok(())
    }

    fn write_payload(
        &self,
        sim: &SimMachine,
        nic: Bdf,
        bytes: &[u8],
        scratch: &mut RxScratch,
        out: &mut RxBurst,
    ) -> Result<(), NetError> {
        if scratch.entries.is_empty() {
            return Ok(());
        }
        let t = sim
            .dma_to_many(nic, &scratch.entries, Local::Bytes(bytes))
            .map_err(|e| NetError::Dma {
                what: format!("{nic} writing payloads into the bound dma-buf"),
                source: e,
            })?;
        out.payload.push(t);
        scratch.entries.clear();
        Ok(())
    }

    /// The driver's NAPI poll: completions and headers read back from host
    /// memory, packets handed up, finished buffers released.
    fn poll(
        &mut self,
        sim: &SimMachine,
        b: &mut Binding,
        pool: &mut PagePool,
        scratch: &mut RxScratch,
        deliver: &mut dyn FnMut(&RxPacket, &mut Binding, &mut PagePool) -> Result<(), NetError>,
    ) -> Result<(), NetError> {
        let n = self.cq_prod - self.cq_cons;
        if n == 0 {
            return Ok(());
        }
        let entries = self.size;
        let read = |sim: &SimMachine,
                    ring: &Ring,
                    first: u64,
                    count: u64,
                    unit: u64,
                    buf: &mut Vec<u8>|
         -> Result<(), NetError> {
            // Every byte is read into: grow the buffer, never clear it.
            if buf.len() < (count * unit) as usize {
                buf.resize((count * unit) as usize, 0);
            }
            let mut pos = first;
            let mut done = 0usize;
            while pos < first + count {
                let slot = pos % entries;
                let k = (first + count - pos).min(entries - slot);
                let at = ring
                    .buf
                    .phys()
                    .addr()
                    .checked_add(slot * unit)
                    .ok_or_else(|| NetError::Config("ring address overflow".into()))?;
                let len = (k * unit) as usize;
                sim.cpu_read(at, &mut buf[done..done + len])
                    .map_err(|e| NetError::Access {
                        what: "reading the RX rings".into(),
                        source: e,
                    })?;
                done += len;
                pos += k;
            }
            Ok(())
        };
        read(sim, &self.cq, self.cq_cons, n, CQE_SIZE, &mut scratch.read)?;
        read(
            sim,
            &self.hdr,
            self.cq_cons,
            n,
            HDR_SLOT,
            &mut scratch.hdr_read,
        )?;
        let niov_size = b.niov_size();
        for k in 0..n as usize {
            let c = &scratch.read[k * CQE_SIZE as usize..(k + 1) * CQE_SIZE as usize];
            let le32 = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
            let le16 = |i: usize| u16::from_le_bytes([c[i], c[i + 1]]);
            if c[18] != 1 {
                return Err(NetError::Frame(format!(
                    "completion {} of RX queue {} is not valid",
                    self.cq_cons + k as u64,
                    self.index
                )));
            }
            let (first_slot, first_off, len) = (le32(0), le32(4), le32(8));
            let (hl, nbufs, done) = (le16(12), le16(14) as usize, le16(16) as usize);
            if nbufs > MAX_FRAGS || done > nbufs || hl as usize > super::frame::MAX_HEADER {
                return Err(NetError::Frame(format!(
                    "completion {} of RX queue {}: {nbufs} buffers, {done} done, {hl}-byte header",
                    self.cq_cons + k as u64,
                    self.index
                )));
            }
            let mut pkt = RxPacket {
                header: [0; super::frame::MAX_HEADER],
                header_len: u32::from(hl),
                payload_len: len,
                nfrags: nbufs as u8,
                frags: [(0, 0, 0); MAX_FRAGS],
            };
            let h = &scratch.hdr_read[k * HDR_SLOT as usize..];
            pkt.header[..hl as usize].copy_from_slice(&h[..hl as usize]);
            let mut left = len;
            for j in 0..nbufs {
                let slot = (u64::from(first_slot) + j as u64) % self.size;
                let niov = self.slots[slot as usize];
                if niov == EMPTY {
                    return Err(NetError::Frame(format!(
                        "completion names RX slot {slot} of queue {}, which holds no buffer",
                        self.index
                    )));
                }
                let off = if j == 0 { first_off } else { 0 };
                let l = left.min(niov_size.saturating_sub(off));
                pkt.frags[j] = (niov, off, l);
                left -= l;
            }
            deliver(&pkt, b, pool)?;
            // The buffers the NIC finished: the driver's references go.
            for _ in 0..done {
                let slot = (self.reclaimed % self.size) as usize;
                let niov = std::mem::replace(&mut self.slots[slot], EMPTY);
                if niov != EMPTY {
                    pool.put(b, niov, true)?;
                }
                self.reclaimed += 1;
            }
        }
        self.cq_cons = self.cq_prod;
        Ok(())
    }

    /// Stop the queue: the driver drops its references to every buffer
    /// still posted (the NIC will not write them any more).
    pub(crate) fn stop(&mut self, b: &mut Binding, pool: &mut PagePool) -> Result<(), NetError> {
        while self.reclaimed < self.posted {
            let slot = (self.reclaimed % self.size) as usize;
            let niov = std::mem::replace(&mut self.slots[slot], EMPTY);
            if niov != EMPTY {
                pool.put(b, niov, true)?;
            }
            self.reclaimed += 1;
        }
        self.fetched = self.posted;
        self.nic_pos = self.posted;
        self.nic_off = 0;
        Ok(())
    }
}
