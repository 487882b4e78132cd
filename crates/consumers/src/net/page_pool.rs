//! The page pool of one RX queue with the dma-buf memory provider, as
//! `net/core/page_pool.c` runs it for `net_iov`s.
//!
//! A driver allocates from the pool: the alloc cache first (128 entries,
//! `PP_ALLOC_CACHE_SIZE`), refilled from the recycle ring (64 at a time,
//! `PP_ALLOC_CACHE_REFILL`), then the memory provider, which takes one
//! `net_iov` from the binding's gen_pool. A `net_iov` comes back when its
//! `pp_ref_count` drops to zero: into the alloc cache when the put comes
//! from the queue's own NAPI context (direct recycling), else into the
//! recycle ring, and to the provider (the gen_pool) when the ring is full.
//! Pages in the cache and the ring are still the pool's: `hold - release`
//! counts every `net_iov` the pool took from the provider and has not given
//! back (`page_pool_inflight`).
//!
//! Destroying the pool (the queue is stopped when the user unbinds) gives
//! the cache and the ring back to the provider and waits for the
//! `net_iov`s still out — in skbs, or held by the user as tokens — each
//! going straight back to the provider as its last reference drops; when
//! none is left the pool drops its reference to the binding
//! (`page_pool_release_retry`, `mp_dmabuf_devmem_destroy`).

use super::devmem::{Binding, NiovState};
use super::NetError;
use std::collections::VecDeque;

/// `PP_ALLOC_CACHE_SIZE`.
pub const ALLOC_CACHE: usize = 128;
/// `PP_ALLOC_CACHE_REFILL`.
pub const CACHE_REFILL: usize = 64;

/// Counters of one pool (`page_pool_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Allocations served by the alloc cache.
    pub alloc_fast: u64,
    /// Allocations that went to the provider.
    pub alloc_slow: u64,
    /// Allocations refused: the provider (the gen_pool) was empty.
    pub alloc_empty: u64,
    /// Allocations served after refilling the cache from the ring.
    pub alloc_refill: u64,
    /// Puts recycled into the alloc cache.
    pub recycle_cached: u64,
    /// Puts recycled into the ring.
    pub recycle_ring: u64,
    /// Puts that found the ring full and went to the provider.
    pub recycle_ring_full: u64,
}

/// One queue's page pool.
#[derive(Debug)]
pub struct PagePool {
    cache: Vec<u32>,
    ring: VecDeque<u32>,
    ring_size: usize,
    /// `pages_state_hold_cnt` and `pages_state_release_cnt`.
    hold: u64,
    release: u64,
    destroying: bool,
    /// Whether the pool still holds its reference to the binding.
    holds_binding: bool,
    pub stats: PoolStats,
}

impl PagePool {
    /// `page_pool_create` with the dma-buf provider (`mp_dmabuf_devmem_init`
    /// takes a reference to the binding). `ring_size` is the recycle ring's
    /// size (the driver passes its RX ring size as `pool_size`).
    pub(crate) fn new(binding: &mut Binding, ring_size: usize) -> PagePool {
        binding.get();
        PagePool {
            cache: Vec::with_capacity(ALLOC_CACHE),
            ring: VecDeque::with_capacity(ring_size),
            ring_size: ring_size.max(1),
            hold: 0,
            release: 0,
            destroying: false,
            holds_binding: true,
            stats: PoolStats::default(),
        }
    }

    /// `net_iov`s taken from the provider and not given back: in the
    /// cache, the ring, posted, in skbs or held by the user.
    pub fn inflight(&self) -> u64 {
        self.hold - self.release
    }

    /// In the cache and the ring.
    pub fn cached(&self) -> usize {
        self.cache.len() + self.ring.len()
    }

    pub fn destroying(&self) -> bool {
        self.destroying
    }

    /// Whether the pool is gone: destroyed with nothing in flight.
    pub fn released(&self) -> bool {
        !self.holds_binding
    }

    /// `page_pool_alloc_netmems`: a `net_iov` with `pp_ref_count` 1, or
    /// none when the cache, the ring and the provider are all empty.
    pub(crate) fn alloc(&mut self, b: &mut Binding) -> Option<u32> {
        if self.destroying {
            return None;
        }
        let got = if let Some(i) = self.cache.pop() {
            self.stats.alloc_fast += 1;
            Some(i)
        } else if !self.ring.is_empty() {
            let n = self.ring.len().min(CACHE_REFILL);
            self.cache.extend(self.ring.drain(..n));
            self.stats.alloc_refill += 1;
            self.cache.pop()
        } else {
            match b.genpool_alloc() {
                Some(i) => {
                    self.hold += 1;
                    self.stats.alloc_slow += 1;
                    Some(i)
                }
                None => {
                    self.stats.alloc_empty += 1;
                    None
                }
            }
        };
        let i = got?;
        let n = &mut b.niovs[i as usize];
        n.state = NiovState::Out;
        n.pp_ref = 1;
        Some(i)
    }

    /// Another reference to `i` (an skb frag, a user token).
    #[inline]
    pub(crate) fn get(b: &mut Binding, i: u32) {
        b.niovs[i as usize].pp_ref += 1;
    }

    /// Drop a reference to `i`; the last one recycles it: into the cache
    /// when `direct` (the queue's NAPI context) and there is room, else
    /// into the ring, else back to the provider. A dying pool gives it
    /// straight back to the provider, and releases the binding when the
    /// last `net_iov` is home.
    #[inline]
    pub(crate) fn put(&mut self, b: &mut Binding, i: u32, direct: bool) -> Result<(), NetError> {
        let n = &mut b.niovs[i as usize];
        n.pp_ref = n.pp_ref.saturating_sub(1);
        if n.pp_ref > 0 {
            return Ok(());
        }
        if self.destroying {
            return self.give_back(b, i);
        }
        n.state = NiovState::PoolCache;
        if direct && self.cache.len() < ALLOC_CACHE {
            self.cache.push(i);
            self.stats.recycle_cached += 1;
        } else if self.ring.len() < self.ring_size {
            self.ring.push_back(i);
            self.stats.recycle_ring += 1;
        } else {
            self.stats.recycle_ring_full += 1;
            self.give_back(b, i)?;
        }
        Ok(())
    }

    /// `mp_dmabuf_devmem_release_page`: back to the gen_pool.
    fn give_back(&mut self, b: &mut Binding, i: u32) -> Result<(), NetError> {
        b.genpool_free(i);
        self.release += 1;
        self.maybe_release_binding(b)
    }

    fn maybe_release_binding(&mut self, b: &mut Binding) -> Result<(), NetError> {
        if self.destroying && self.holds_binding && self.inflight() == 0 {
            self.holds_binding = false;
            b.put()?;
        }
        Ok(())
    }

    /// `page_pool_destroy` (after the driver gave back what it had
    /// posted): the cache and the ring go back to the provider; the pool
    /// lives on until the `net_iov`s still out come back.
    pub(crate) fn destroy(&mut self, b: &mut Binding) -> Result<(), NetError> {
        self.destroying = true;
        let mut cached = std::mem::take(&mut self.cache);
        cached.extend(self.ring.drain(..));
        for i in cached {
            b.genpool_free(i);
            self.release += 1;
        }
        self.maybe_release_binding(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devmem::DeviceMemory;
    use crate::net::devmem::{BindingState, DmaBuf};
    use peerdma_pci::Source;
    use peerdma_sim::{SimConfig, SimMachine};

    fn setup(niovs: u64) -> (SimMachine, Binding) {
        let m = SimMachine::new(
            Source::Preset("dual-xeon".into()).load().unwrap(),
            SimConfig::default(),
        )
        .unwrap();
        let mem = DeviceMemory::new();
        let gpu = m.device("gpu0").unwrap();
        let nic = m.device("nic0").unwrap();
        let d = DmaBuf::export(&m, &mem, gpu, niovs * 4096).unwrap();
        let b = Binding::bind(&m, nic, 0, d, 4096, 1).unwrap();
        (m, b)
    }

    #[test]
    fn a_net_iov_comes_back_only_with_its_last_reference() {
        let (_m, mut b) = setup(8);
        let mut pool = PagePool::new(&mut b, 4);
        assert_eq!(b.refs(), 2, "the bind's and the pool's");
        let a = pool.alloc(&mut b).unwrap();
        assert_eq!(b.niov(a).unwrap().pp_ref, 1);
        PagePool::get(&mut b, a); // an skb frag
        PagePool::get(&mut b, a); // a user token
        pool.put(&mut b, a, true).unwrap(); // the driver is done with it
        pool.put(&mut b, a, false).unwrap(); // the skb is freed
        assert_eq!(
            b.niov(a).unwrap().state,
            NiovState::Out,
            "the token holds it"
        );
        assert_eq!(pool.cached(), 0);
        pool.put(&mut b, a, false).unwrap(); // SO_DEVMEM_DONTNEED
        assert_eq!(b.niov(a).unwrap().state, NiovState::PoolCache);
        assert_eq!(
            pool.cached(),
            1,
            "recycled into the ring (not NAPI context)"
        );
        // It is handed out again before the gen_pool is touched.
        assert_eq!(pool.alloc(&mut b), Some(a));
        assert_eq!(pool.stats.alloc_refill, 1);
    }

    #[test]
    fn exhaustion_then_destroy_waits_for_what_is_out() {
        let (_m, mut b) = setup(8);
        let mut pool = PagePool::new(&mut b, 2);
        let got: Vec<u32> = std::iter::from_fn(|| pool.alloc(&mut b)).collect();
        assert_eq!(
            got,
            (0..8).collect::<Vec<_>>(),
            "first fit, in address order"
        );
        assert_eq!(pool.stats.alloc_empty, 1);
        assert_eq!(b.genpool_avail(), 0);
        // Five come back: the ring takes two, the rest go to the gen_pool.
        for &i in &got[..5] {
            pool.put(&mut b, i, false).unwrap();
        }
        assert_eq!(pool.cached(), 2);
        assert_eq!(b.genpool_avail(), 3 * 4096);
        assert_eq!(pool.stats.recycle_ring_full, 3);
        b.unbind().unwrap();
        pool.destroy(&mut b).unwrap();
        assert_eq!(b.genpool_avail(), 5 * 4096, "the ring went back");
        assert_eq!(b.state(), BindingState::Unbound, "three are still out");
        assert!(b.mapping().is_some());
        for &i in &got[5..] {
            pool.put(&mut b, i, false).unwrap();
        }
        assert!(pool.released());
        assert_eq!(b.state(), BindingState::Freed);
        assert_eq!(b.genpool_avail(), b.genpool_size());
        assert_eq!(b.refs(), 0);
        assert!(b.mapping().is_none(), "dma_buf_unmap_attachment");
        assert_eq!(b.pp_refs(), 0);
    }
}
