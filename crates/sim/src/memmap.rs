//! The simulated machine's physical memory map: host DRAM per NUMA node
//! and every memory BAR, each backed by a sparse [`Store`], none
//! overlapping; and the copy engine the mapping layer bounces with.
//!
//! DRAM layout: node 0 holds `[0, 2 GiB)` (the bounce pool and 32-bit
//! buffers live there) and `[4 GiB, 64 GiB)`; the n-th other node (in
//! ascending node number) holds 64 GiB at `n << 38`. Host buffers are
//! allocated from each node's high range.

use crate::error::{AccessError, BuildError};
use crate::memory::{self, Store};
use peerdma_dma::{CopyEngine, MemError};
use peerdma_mem::{AddrRange, PhysAddr, PhysVec, RangeAllocator, PAGE_SIZE};
use peerdma_pci::{FnId, Topology};
use std::collections::HashMap;

/// Host DRAM per NUMA node in the simulated machine.
pub const DRAM_PER_NODE: u64 = 64 << 30;
/// Node 0's memory below the 32-bit hole.
const LOW_DRAM: u64 = 0x8000_0000;
/// Where the n-th node after node 0 starts: `n << NODE_SHIFT`.
const NODE_SHIFT: u32 = 38;

/// Whose memory a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Dram { node: u32 },
    Bar { function: FnId, bar: u8 },
}

/// One region of the map.
#[derive(Debug)]
pub(crate) struct Region {
    pub(crate) range: AddrRange<PhysAddr>,
    pub(crate) owner: Owner,
    pub(crate) store: Store,
}

/// Index of a region in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RegionId(usize);

/// The physical memory map.
#[derive(Debug)]
pub(crate) struct MemoryMap {
    /// Sorted by start; no two overlap.
    regions: Vec<Region>,
}

/// Host memory as the allocator sees it: per node, the range buffers come
/// from.
pub(crate) type HostAllocators = HashMap<u32, RangeAllocator>;

fn describe(topo: &Topology, owner: Owner, range: AddrRange<PhysAddr>) -> String {
    match owner {
        Owner::Dram { node } => format!("DRAM of node {node} {range:?}"),
        Owner::Bar { function, bar } => {
            format!("BAR {bar} of {} {range:?}", topo.function(function).bdf)
        }
    }
}

impl MemoryMap {
    /// DRAM for each of `nodes` (sorted, node 0 first) and every memory BAR
    /// of `topo`; refuses overlapping memories.
    pub(crate) fn build(
        topo: &Topology,
        nodes: &[u32],
    ) -> Result<(MemoryMap, HostAllocators), BuildError> {
        let max = 1usize << (64 - NODE_SHIFT - 1);
        if nodes.len() > max {
            return Err(BuildError::TooManyNodes {
                nodes: nodes.len(),
                max,
            });
        }
        let range = |start: u64, len: u64| {
            AddrRange::new(PhysAddr::new(start), len).expect("the DRAM layout is in range")
        };
        let mut regions = Vec::new();
        let mut alloc = HostAllocators::new();
        for (i, &node) in nodes.iter().enumerate() {
            let ranges = if i == 0 {
                vec![range(0, LOW_DRAM), range(1 << 32, DRAM_PER_NODE - LOW_DRAM)]
            } else {
                vec![range((i as u64) << NODE_SHIFT, DRAM_PER_NODE)]
            };
            if let Some(high) = ranges.last() {
                let a = RangeAllocator::new(high.start().raw(), high.len(), PAGE_SIZE)
                    .expect("the DRAM layout is page aligned");
                alloc.insert(node, a);
            }
            for r in ranges {
                regions.push(Region {
                    range: r,
                    owner: Owner::Dram { node },
                    store: Store::new(r.len()),
                });
            }
        }
        for f in topo.functions() {
            for bar in f.bars.iter().filter(|b| !b.io) {
                regions.push(Region {
                    range: bar.phys,
                    owner: Owner::Bar {
                        function: f.id,
                        bar: bar.index,
                    },
                    store: Store::new(bar.phys.len()),
                });
            }
        }
        regions.sort_by_key(|r| r.range.start());
        for w in regions.windows(2) {
            if w[0].range.overlaps(&w[1].range) {
                return Err(BuildError::Overlap {
                    first: describe(topo, w[0].owner, w[0].range),
                    second: describe(topo, w[1].owner, w[1].range),
                });
            }
        }
        Ok((MemoryMap { regions }, alloc))
    }

    /// Whether node 0's memory below 2 GiB holds `[base, base + size)`.
    pub(crate) fn in_low_dram(base: PhysAddr, size: u64) -> bool {
        base.raw()
            .checked_add(size)
            .is_some_and(|end| end <= LOW_DRAM)
    }

    /// The region holding all of `[addr, addr + len)` (at least one byte),
    /// and the offset of `addr` in it.
    pub(crate) fn find(&self, addr: PhysAddr, len: u64) -> Option<(RegionId, u64)> {
        let i = self
            .regions
            .partition_point(|r| r.range.start() <= addr)
            .checked_sub(1)?;
        let r = &self.regions[i];
        let wanted = AddrRange::new(addr, len.max(1)).ok()?;
        r.range
            .contains_range(&wanted)
            .then(|| (RegionId(i), r.range.offset_of(addr).unwrap_or(0)))
    }

    /// [`MemoryMap::find`], or the error naming the range.
    pub(crate) fn find_or_err(
        &self,
        addr: PhysAddr,
        len: u64,
    ) -> Result<(RegionId, u64), AccessError> {
        self.find(addr, len)
            .ok_or(AccessError::NoMemory { addr, len })
    }

    pub(crate) fn region(&self, id: RegionId) -> &Region {
        &self.regions[id.0]
    }

    /// Every BAR region: its id, function and BAR number.
    pub(crate) fn bars(&self) -> impl Iterator<Item = (RegionId, FnId, u8)> + '_ {
        self.regions
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.owner {
                Owner::Bar { function, bar } => Some((RegionId(i), function, bar)),
                Owner::Dram { .. } => None,
            })
    }

    fn copy_err(e: AccessError) -> MemError {
        match e {
            AccessError::NoMemory { addr, len } => MemError {
                addr: addr.raw(),
                len,
                why: "no memory there".into(),
            },
            other => MemError {
                addr: 0,
                len: 0,
                why: other.to_string(),
            },
        }
    }

    fn copy_between(&self, src: PhysAddr, dst: PhysAddr, len: u64) -> Result<(), MemError> {
        let (s, soff) = self.find_or_err(src, len).map_err(Self::copy_err)?;
        let (d, doff) = self.find_or_err(dst, len).map_err(Self::copy_err)?;
        memory::copy(
            &self.region(s).store,
            soff,
            &self.region(d).store,
            doff,
            len,
        );
        Ok(())
    }
}

impl CopyEngine for MemoryMap {
    fn copy(&self, src: PhysVec, dst: PhysAddr) -> Result<(), MemError> {
        self.copy_between(src.addr(), dst, src.len())
    }
    fn copy_back(&self, src: PhysAddr, dst: PhysVec) -> Result<(), MemError> {
        self.copy_between(src, dst.addr(), dst.len())
    }
}
