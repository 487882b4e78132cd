//! A dma-buf of device memory bound to a NIC's RX queue, as
//! `net/core/devmem.c` binds it.
//!
//! [`Binding::bind`] is `net_devmem_bind_dmabuf`: the dma-buf is attached
//! to the NIC and mapped for it (`dma_buf_map_attachment`, direction
//! `DMA_FROM_DEVICE`) by the mapping layer, which takes the kernel's
//! verdict for the pair (memory's provider, NIC): by PCI bus address,
//! through the host bridge (IOMMU-translated when a domain translates), or
//! not at all — and then the bind fails, naming the pair and why: devmem
//! TCP has no bounce path. Every entry of the mapping becomes a chunk of a
//! `gen_pool` whose owner carries the chunk's `net_iov`s, one per
//! `rx-buf-size` bytes (`NETDEV_A_DMABUF_RX_BUF_SIZE`: a power of two, at
//! least a page; 4 KiB when not given, as every kernel before that
//! attribute). The page pool takes `net_iov`s from the gen_pool one at a
//! time (`mp_dmabuf_devmem_alloc_netmems`) and gives them back when their
//! last reference is gone (`mp_dmabuf_devmem_release_page`).
//!
//! The binding holds a reference for its netlink socket and one for every
//! page pool using it; it is freed — the gen_pool destroyed, the mapping
//! undone (`dma_buf_unmap_attachment`), the dma-buf put — only when both
//! are gone: the user unbound it and every `net_iov` came back.

use super::NetError;
use crate::devmem::DeviceMemory;
use crate::io::LegPath;
use peerdma_dma::{BouncePolicy, DmaSgl, MapError, PathTaken};
use peerdma_mem::{Bdf, Direction, PhysAddr, PAGE_SIZE};
use peerdma_p2p::Allocation;
use peerdma_sim::SimMachine;

/// A dma-buf: device memory its exporter (a GPU driver, a CMB's
/// `p2pmem`) shares with importers. It keeps the memory allocated until
/// the last importer puts it.
#[derive(Debug)]
pub struct DmaBuf {
    alloc: Allocation,
}

/// How GPU drivers hand out VRAM: in 2 MiB pages (64 KiB for small
/// buffers).
const VRAM_PAGE: u64 = 2 << 20;

impl DmaBuf {
    /// `len` bytes of `dev`'s device memory exported as a dma-buf (the
    /// GPU driver's `dma_buf_export` of a VRAM allocation), aligned as the
    /// driver aligns VRAM.
    pub fn export(
        sim: &SimMachine,
        mem: &DeviceMemory,
        dev: Bdf,
        len: u64,
    ) -> Result<DmaBuf, NetError> {
        if len == 0 {
            return Err(NetError::Export {
                dev,
                why: "a dma-buf of 0 bytes".into(),
            });
        }
        let p = mem.provider(sim, dev).map_err(|e| NetError::Export {
            dev,
            why: e.to_string(),
        })?;
        let align = if len >= VRAM_PAGE {
            VRAM_PAGE
        } else {
            64 << 10
        };
        let alloc = p.alloc_aligned(len, align).map_err(|e| NetError::Export {
            dev,
            why: e.to_string(),
        })?;
        Ok(DmaBuf { alloc })
    }

    /// A dma-buf over memory already allocated from a provider.
    pub fn from_allocation(alloc: Allocation) -> DmaBuf {
        DmaBuf { alloc }
    }

    /// The device whose memory this is.
    pub fn exporter(&self) -> Bdf {
        self.alloc.provider().bdf()
    }

    pub fn len(&self) -> u64 {
        self.alloc.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Where byte 0 of the dma-buf lives.
    pub fn phys_addr(&self) -> PhysAddr {
        self.alloc.phys_addr()
    }

    /// The allocation behind it (for checks: references, the provider).
    pub fn allocation(&self) -> &Allocation {
        &self.alloc
    }
}

/// Where a `net_iov` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NiovState {
    /// In the gen_pool: free device memory of the binding.
    GenPool,
    /// In the page pool's cache or recycle ring, ready to post again.
    PoolCache,
    /// Out of the pools: posted to the NIC, in an skb, or held by the user.
    Out,
}

/// One `net_iov`: `rx-buf-size` bytes of the dma-buf, with the page pool's
/// reference count and what data it holds now.
#[derive(Clone, Copy, Debug)]
pub struct NetIov {
    /// The DMA address the NIC writes to (`page_pool_get_dma_addr_netmem`).
    pub dma: u64,
    /// Offset in the dma-buf (`net_iov_virtual_addr`): what the user's
    /// `frag_offset` is relative to.
    pub virt: u64,
    /// `pp_ref_count`: the driver's reference while posted, one per skb
    /// frag and one per token the user holds.
    pub pp_ref: u32,
    pub state: NiovState,
    /// References that hold received data (skb frags and tokens).
    pub(crate) data_refs: u32,
    /// Payload bytes those references hold.
    pub(crate) data_bytes: u32,
}

/// A gen_pool chunk: one entry of the dma-buf's mapping, with its owner's
/// `net_iov`s (`dmabuf_genpool_chunk_owner`).
#[derive(Clone, Copy, Debug)]
struct Chunk {
    first: u32,
    count: u32,
    /// No free `net_iov` below this index (first-fit search starts here).
    hint: u32,
}

/// The binding's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingState {
    /// Bound to an RX queue.
    Bound,
    /// Unbound by the user; waiting for `net_iov`s still out.
    Unbound,
    /// Every `net_iov` came back: the gen_pool is gone, the mapping undone
    /// and the dma-buf put.
    Freed,
}

/// The largest `rx-buf-size` accepted (a sanity bound on the netlink
/// attribute: 2 MiB, a huge page).
pub const MAX_RX_BUF_SIZE: u32 = 2 << 20;

/// Whether the kernel takes `size` as a queue's `rx-buf-size` (a
/// `net_iov`'s size): a power of two from the page size to
/// [`MAX_RX_BUF_SIZE`]. The one check the bind, workload files and the
/// command line share.
pub fn rx_buf_size_valid(size: u64) -> bool {
    size.is_power_of_two() && (PAGE_SIZE..=u64::from(MAX_RX_BUF_SIZE)).contains(&size)
}

/// A dma-buf bound to a NIC RX queue.
#[derive(Debug)]
pub struct Binding {
    id: u32,
    nic: Bdf,
    queue: u32,
    dmabuf: Option<DmaBuf>,
    exporter: Bdf,
    dmabuf_len: u64,
    dmabuf_phys: PhysAddr,
    sgl: Option<DmaSgl>,
    path: LegPath,
    niov_shift: u32,
    chunks: Vec<Chunk>,
    pub(crate) niovs: Vec<NetIov>,
    /// Bit set: the `net_iov` is in the gen_pool.
    free: Vec<u64>,
    free_count: u32,
    refs: u32,
    state: BindingState,
    /// `net_iov`s holding received data, and the payload bytes they hold.
    pub(crate) held_niovs: u64,
    pub(crate) held_bytes: u64,
}

impl Binding {
    /// `net_devmem_bind_dmabuf`: map `dmabuf` for `nic`, carve it into
    /// `net_iov`s of `rx_buf_size` bytes and make the gen_pool. `id` is the
    /// binding's id (what `dmabuf_id` in every frag says), `queue` the RX
    /// queue it is for (for messages).
    pub fn bind(
        sim: &SimMachine,
        nic: Bdf,
        queue: u32,
        dmabuf: DmaBuf,
        rx_buf_size: u32,
        id: u32,
    ) -> Result<Binding, NetError> {
        if !rx_buf_size_valid(u64::from(rx_buf_size)) {
            return Err(NetError::RxBufSize { size: rx_buf_size });
        }
        let niov_shift = rx_buf_size.trailing_zeros();
        let niov_size = u64::from(rx_buf_size);
        let exporter = dmabuf.exporter();
        // dma_buf_map_attachment(DMA_FROM_DEVICE): the mapping layer, by the
        // kernel's verdict for (memory's provider, NIC); no bounce.
        let sgl = sim
            .map(
                nic,
                &[dmabuf.alloc.phys()],
                Direction::FromDevice,
                BouncePolicy::Forbid,
            )
            .map_err(|e| match e {
                peerdma_sim::DmaError::Map(MapError::NotSupported { reason, .. }) => {
                    NetError::BindRefused {
                        nic,
                        queue,
                        memory: exporter,
                        reason,
                    }
                }
                other => NetError::Dma {
                    what: format!(
                        "mapping the dma-buf of {exporter}'s memory for {nic} (dma_buf_map_attachment)"
                    ),
                    source: other,
                },
            })?;
        let path = match sgl.path() {
            PathTaken::BusAddr => LegPath::BusAddr,
            PathTaken::ThruHostBridge => LegPath::ThruHostBridge,
            PathTaken::HostMemory => LegPath::HostMemory,
            PathTaken::Bounced => LegPath::Bounced,
        };
        let mut chunks = Vec::new();
        let mut niovs = Vec::new();
        let mut virt = 0u64;
        for e in sgl.entries() {
            let addr = e.addr.raw();
            if addr % niov_size != 0 || e.len % niov_size != 0 {
                return Err(NetError::Unaligned {
                    addr,
                    len: e.len,
                    niov_size,
                });
            }
            let count = u32::try_from(e.len >> niov_shift).map_err(|_| NetError::TooLarge {
                len: dmabuf.len(),
                niov_size,
            })?;
            let first = u32::try_from(niovs.len()).map_err(|_| NetError::TooLarge {
                len: dmabuf.len(),
                niov_size,
            })?;
            first.checked_add(count).ok_or(NetError::TooLarge {
                len: dmabuf.len(),
                niov_size,
            })?;
            for i in 0..u64::from(count) {
                niovs.push(NetIov {
                    dma: addr + (i << niov_shift),
                    virt: virt + (i << niov_shift),
                    pp_ref: 0,
                    state: NiovState::GenPool,
                    data_refs: 0,
                    data_bytes: 0,
                });
            }
            chunks.push(Chunk {
                first,
                count,
                hint: first,
            });
            virt += e.len;
        }
        let n = niovs.len();
        let mut free = vec![u64::MAX; n.div_ceil(64)];
        if n % 64 != 0 {
            if let Some(last) = free.last_mut() {
                *last = (1u64 << (n % 64)) - 1;
            }
        }
        Ok(Binding {
            id,
            nic,
            queue,
            exporter,
            dmabuf_len: dmabuf.len(),
            dmabuf_phys: dmabuf.phys_addr(),
            dmabuf: Some(dmabuf),
            sgl: Some(sgl),
            path,
            niov_shift,
            chunks,
            niovs,
            free,
            free_count: n as u32,
            refs: 1,
            state: BindingState::Bound,
            held_niovs: 0,
            held_bytes: 0,
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn nic(&self) -> Bdf {
        self.nic
    }
    pub fn queue(&self) -> u32 {
        self.queue
    }
    /// Whose memory the dma-buf is.
    pub fn exporter(&self) -> Bdf {
        self.exporter
    }
    pub fn dmabuf_len(&self) -> u64 {
        self.dmabuf_len
    }
    /// Where byte 0 of the dma-buf lives (for checks of what landed there).
    pub fn dmabuf_phys(&self) -> PhysAddr {
        self.dmabuf_phys
    }
    /// How the NIC reaches the memory: by bus address or through the host
    /// bridge.
    pub fn path(&self) -> LegPath {
        self.path
    }
    /// `rx-buf-size`: bytes per `net_iov`.
    pub fn niov_size(&self) -> u32 {
        1 << self.niov_shift
    }
    pub fn niov_count(&self) -> u32 {
        self.niovs.len() as u32
    }
    pub fn niov(&self, i: u32) -> Option<&NetIov> {
        self.niovs.get(i as usize)
    }
    /// `gen_pool_avail`: bytes in the gen_pool.
    pub fn genpool_avail(&self) -> u64 {
        u64::from(self.free_count) << self.niov_shift
    }
    /// `gen_pool_size`.
    pub fn genpool_size(&self) -> u64 {
        (self.niovs.len() as u64) << self.niov_shift
    }
    /// The binding's references: its netlink socket's and its page pools'.
    pub fn refs(&self) -> u32 {
        self.refs
    }
    pub fn state(&self) -> BindingState {
        self.state
    }
    /// The sum of every `net_iov`'s `pp_ref_count`.
    pub fn pp_refs(&self) -> u64 {
        self.niovs.iter().map(|n| u64::from(n.pp_ref)).sum()
    }
    /// The mapping for the NIC, while the binding lives.
    pub fn mapping(&self) -> Option<&DmaSgl> {
        self.sgl.as_ref()
    }
    /// Payload bytes held in `net_iov`s now, and the bytes of the
    /// `net_iov`s holding them.
    pub fn held(&self) -> (u64, u64) {
        (self.held_bytes, self.held_niovs << self.niov_shift)
    }

    /// `gen_pool_alloc_owner(niov size)`: first fit, the chunk added last
    /// searched first (gen_pool keeps its chunks newest first).
    pub(crate) fn genpool_alloc(&mut self) -> Option<u32> {
        if self.free_count == 0 {
            return None;
        }
        for c in self.chunks.iter_mut().rev() {
            let end = c.first + c.count;
            let mut i = c.hint;
            while i < end {
                let w = self.free[(i / 64) as usize] >> (i % 64);
                if w == 0 {
                    i = (i / 64 + 1) * 64;
                    continue;
                }
                let found = i + w.trailing_zeros();
                if found >= end {
                    break;
                }
                self.free[(found / 64) as usize] &= !(1u64 << (found % 64));
                self.free_count -= 1;
                c.hint = found + 1;
                let n = &mut self.niovs[found as usize];
                n.state = NiovState::Out;
                n.pp_ref = 0;
                return Some(found);
            }
            c.hint = end;
        }
        None
    }

    /// `gen_pool_free`.
    pub(crate) fn genpool_free(&mut self, i: u32) {
        let Some(n) = self.niovs.get_mut(i as usize) else {
            return;
        };
        n.state = NiovState::GenPool;
        n.pp_ref = 0;
        let bit = 1u64 << (i % 64);
        let w = &mut self.free[(i / 64) as usize];
        if *w & bit == 0 {
            *w |= bit;
            self.free_count += 1;
        }
        if let Some(c) = self
            .chunks
            .iter_mut()
            .find(|c| i >= c.first && i < c.first + c.count)
        {
            c.hint = c.hint.min(i);
        }
    }

    /// A page pool takes a reference (`mp_dmabuf_devmem_init`).
    pub(crate) fn get(&mut self) {
        self.refs += 1;
    }

    /// Drop a reference; the last one frees the binding
    /// (`__net_devmem_dmabuf_binding_free`).
    pub(crate) fn put(&mut self) -> Result<(), NetError> {
        self.refs = self.refs.saturating_sub(1);
        if self.refs > 0 {
            return Ok(());
        }
        if self.genpool_avail() != self.genpool_size() {
            // The kernel WARNs and leaks the gen_pool: a net_iov is still out.
            return Err(NetError::Leak {
                binding: self.id,
                out: self.genpool_size() - self.genpool_avail(),
            });
        }
        self.chunks.clear();
        if let Some(sgl) = self.sgl.take() {
            sgl.unmap().map_err(|e| NetError::Dma {
                what: format!(
                    "unmapping the dma-buf of {} for {}",
                    self.exporter, self.nic
                ),
                source: peerdma_sim::DmaError::Map(e),
            })?;
        }
        self.dmabuf = None;
        self.state = BindingState::Freed;
        Ok(())
    }

    /// The user unbinds (closes the netlink socket): its reference goes.
    pub(crate) fn unbind(&mut self) -> Result<(), NetError> {
        if self.state == BindingState::Bound {
            self.state = BindingState::Unbound;
            self.put()?;
        }
        Ok(())
    }

    /// Account a reference that holds `bytes` of received data in `i`.
    #[inline]
    pub(crate) fn data_ref(&mut self, i: u32, bytes: u32) {
        let n = &mut self.niovs[i as usize];
        if n.data_refs == 0 {
            self.held_niovs += 1;
        }
        n.data_refs += 1;
        n.data_bytes += bytes;
        self.held_bytes += u64::from(bytes);
    }

    /// Drop a data reference holding `bytes` of `i`.
    #[inline]
    pub(crate) fn data_unref(&mut self, i: u32, bytes: u32) {
        let n = &mut self.niovs[i as usize];
        n.data_refs = n.data_refs.saturating_sub(1);
        n.data_bytes = n.data_bytes.saturating_sub(bytes);
        self.held_bytes = self.held_bytes.saturating_sub(u64::from(bytes));
        if n.data_refs == 0 {
            self.held_niovs = self.held_niovs.saturating_sub(1);
        }
    }

    /// Take `bytes` off a data reference of `i` without dropping it.
    #[inline]
    pub(crate) fn data_shrink(&mut self, i: u32, bytes: u32) {
        let n = &mut self.niovs[i as usize];
        n.data_bytes = n.data_bytes.saturating_sub(bytes);
        self.held_bytes = self.held_bytes.saturating_sub(u64::from(bytes));
    }
}
