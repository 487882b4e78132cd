//! The block layer: an `O_DIRECT` I/O becomes bios of physical segments,
//! bios become requests within the queue's limits, and a request is mapped
//! for the device as `blk_rq_dma_map_iter_start` maps it.
//!
//! Segments are [`PhysVec`]s — host RAM or the P2P memory of one provider;
//! the [`MemKind`] decides, and nothing here ever holds a CPU pointer to
//! device memory. The rules carried over from the kernel:
//!
//! * A queue that does not advertise P2P support (`BLK_FEAT_PCI_P2PDMA`)
//!   refuses P2P memory when the user buffer is extracted, with `EREMOTEIO`,
//!   as `iov_iter_extract_pages` without `FOLL_PCI_P2PDMA` does.
//! * `O_DIRECT` needs the offset and every length to be multiples of the
//!   logical block size and the memory to meet the queue's DMA alignment.
//! * A request is homogeneous: host memory, or the memory of one provider
//!   (the block layer never merges bios whose pages have different
//!   `dev_pagemap`s), so a mixed buffer becomes several requests.
//! * A request respects the queue's `max_hw_sectors`, `max_segments`,
//!   `max_segment_size` and virt boundary (a PRP-only controller needs every
//!   segment but the first to start, and every one but the last to end, on
//!   a controller page).
//! * Mapping follows the first segment's P2P state: by bus address (no IOMMU,
//!   nothing to unmap), through the host bridge (as host memory: the IOMMU
//!   when one translates), or not supported — `EREMOTEIO`.

use peerdma_dma::{BouncePolicy, DmaSgl, MapError};
use peerdma_mem::{Bdf, Direction, MemKind, PhysVec};
use peerdma_sim::SimMachine;
use std::fmt;

/// Read or write, from the host's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    /// The DMA direction of the data, from the device's point of view.
    pub fn dma_direction(self) -> Direction {
        match self {
            Op::Read => Direction::FromDevice,
            Op::Write => Direction::ToDevice,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
        })
    }
}

/// A request queue's limits (`struct queue_limits`, the fields that matter
/// to mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    pub logical_block_size: u64,
    /// Largest request in bytes (`max_hw_sectors`, from the controller's MDTS).
    pub max_bytes: u64,
    pub max_segments: usize,
    pub max_segment_size: u64,
    /// `virt_boundary_mask + 1`, or 0 when segments may have gaps (SGLs).
    pub virt_boundary: u64,
    /// Memory alignment `O_DIRECT` needs (`dma_alignment + 1`).
    pub dma_alignment: u64,
    /// `BLK_FEAT_PCI_P2PDMA`: the driver can map P2P memory.
    pub pci_p2pdma: bool,
}

/// What the block layer refuses, with the errno a caller would see.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BlockError {
    #[error("EINVAL: {what} {value:#x} is not a multiple of the {align}-byte {rule}")]
    Misaligned {
        what: &'static str,
        value: u64,
        align: u64,
        rule: &'static str,
    },
    #[error("EREMOTEIO: the queue of {device} does not support P2P memory (no BLK_FEAT_PCI_P2PDMA), so {memory} cannot be used for I/O")]
    QueueNoP2p { device: Bdf, memory: MemKind },
    #[error("EREMOTEIO: {client} cannot DMA to the P2P memory of {provider}: {reason}")]
    NotSupported {
        provider: Bdf,
        client: Bdf,
        reason: String,
    },
    #[error("EINVAL: {0} is memory no other device may DMA to")]
    Private(MemKind),
    #[error("EINVAL: an empty I/O")]
    Empty,
    #[error("ENODEV: the P2P memory of {provider} is revoked: no new mappings or DMA")]
    Revoked { provider: Bdf },
    #[error("ENOMEM: mapping for {device} failed: {source}")]
    Map {
        device: Bdf,
        #[source]
        source: MapError,
    },
}

impl BlockError {
    /// The errno name a user would see.
    pub fn errno(&self) -> &'static str {
        match self {
            BlockError::QueueNoP2p { .. } | BlockError::NotSupported { .. } => "EREMOTEIO",
            BlockError::Map { .. } => "ENOMEM",
            BlockError::Revoked { .. } => "ENODEV",
            _ => "EINVAL",
        }
    }
}

/// One request: an operation on a contiguous device range, with a
/// homogeneous list of memory segments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Byte offset on the device.
    pub offset: u64,
    pub segments: Vec<PhysVec>,
}

impl Request {
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.len()).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }
    /// The memory kind of every segment.
    pub fn kind(&self) -> MemKind {
        self.segments.first().map_or(MemKind::System, |s| s.kind())
    }
}

/// Build the requests of a direct I/O of `buffer` at device byte `offset`,
/// as the block layer would: alignment and P2P checks first, then splits.
pub fn build_requests(
    device: Bdf,
    limits: &QueueLimits,
    op: Op,
    offset: u64,
    buffer: &[PhysVec],
) -> Result<Vec<Request>, BlockError> {
    if buffer.is_empty() {
        return Err(BlockError::Empty);
    }
    let lbs = limits.logical_block_size;
    if offset % lbs != 0 {
        return Err(BlockError::Misaligned {
            what: "file offset",
            value: offset,
            align: lbs,
            rule: "logical block size",
        });
    }
    for v in buffer {
        if v.len() % lbs != 0 {
            return Err(BlockError::Misaligned {
                what: "buffer segment length",
                value: v.len(),
                align: lbs,
                rule: "logical block size",
            });
        }
        if v.addr().raw() % limits.dma_alignment != 0 {
            return Err(BlockError::Misaligned {
                what: "buffer address",
                value: v.addr().raw(),
                align: limits.dma_alignment,
                rule: "DMA alignment",
            });
        }
        match v.kind() {
            MemKind::P2p { .. } if !limits.pci_p2pdma => {
                return Err(BlockError::QueueNoP2p {
                    device,
                    memory: v.kind(),
                })
            }
            MemKind::DevicePrivate { .. } => return Err(BlockError::Private(v.kind())),
            _ => {}
        }
    }
    // Cut segments to the segment size limit first.
    let mut pieces: Vec<PhysVec> = Vec::new();
    for v in buffer {
        let mut rest = *v;
        while rest.len() > limits.max_segment_size {
            match rest.split_at(limits.max_segment_size) {
                Some((h, t)) => {
                    pieces.push(h);
                    rest = t;
                }
                None => break,
            }
        }
        pieces.push(rest);
    }
    let mut out: Vec<Request> = Vec::new();
    let mut cur: Option<Request> = None;
    let mut pos = offset;
    let mut queue: std::collections::VecDeque<PhysVec> = pieces.into();
    while let Some(v) = queue.pop_front() {
        let start_new = match &cur {
            None => true,
            Some(r) => {
                let last = r.segments[r.segments.len() - 1];
                r.kind() != v.kind()
                    || r.segments.len() >= limits.max_segments
                    || r.len() >= limits.max_bytes
                    || gap(limits.virt_boundary, &last, &v)
            }
        };
        if start_new {
            if let Some(r) = cur.take() {
                pos += r.len();
                out.push(r);
            }
        }
        let r = cur.get_or_insert_with(|| Request {
            op,
            offset: pos,
            segments: Vec::new(),
        });
        let room = limits.max_bytes - r.len();
        if v.len() <= room {
            r.segments.push(v);
        } else {
            // Split the segment at the size limit, on a block boundary.
            let at = room / lbs * lbs;
            match v.split_at(at) {
                Some((h, t)) if at > 0 => {
                    r.segments.push(h);
                    queue.push_front(t);
                }
                _ => queue.push_front(v),
            }
            let full = cur.take().expect("a request is open");
            pos += full.len();
            out.push(full);
        }
    }
    if let Some(r) = cur {
        out.push(r);
    }
    Ok(out)
}

/// Whether `b` cannot follow `a` in one request under a virt boundary.
fn gap(boundary: u64, a: &PhysVec, b: &PhysVec) -> bool {
    if boundary == 0 {
        return false;
    }
    let a_end = a.addr().raw().saturating_add(a.len());
    a_end % boundary != 0 || b.addr().raw() % boundary != 0
}

/// How a mapped request reaches its memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MappedPath {
    /// Host memory (through the IOMMU or directly).
    Host,
    /// P2P memory by PCI bus address.
    BusAddr,
    /// P2P memory through the host bridge.
    ThruHostBridge,
}

/// Map a request for `device` (`blk_rq_dma_map_iter_start`): never bounces;
/// a pair that cannot do P2P is `EREMOTEIO` naming the pair and why.
pub fn map_request(
    sim: &SimMachine,
    device: Bdf,
    rq: &Request,
) -> Result<(DmaSgl, MappedPath), BlockError> {
    let sgl = sim
        .mapper()
        .map(
            device,
            &rq.segments,
            rq.op.dma_direction(),
            BouncePolicy::Forbid,
        )
        .map_err(|e| match e {
            MapError::NotSupported {
                provider,
                client,
                reason,
            } => BlockError::NotSupported {
                provider,
                client,
                reason,
            },
            MapError::P2p(peerdma_p2p::P2pError::Revoked { bdf }) => {
                BlockError::Revoked { provider: bdf }
            }
            other => BlockError::Map {
                device,
                source: other,
            },
        })?;
    let path = match sgl.path() {
        peerdma_dma::PathTaken::BusAddr => MappedPath::BusAddr,
        peerdma_dma::PathTaken::ThruHostBridge => MappedPath::ThruHostBridge,
        _ => MappedPath::Host,
    };
    Ok((sgl, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_mem::PhysAddr;

    const NVME: QueueLimits = QueueLimits {
        logical_block_size: 512,
        max_bytes: 128 << 10,
        max_segments: 127,
        max_segment_size: 1 << 30,
        virt_boundary: 4096,
        dma_alignment: 4,
        pci_p2pdma: true,
    };

    fn dev() -> Bdf {
        "0000:01:00.0".parse().unwrap()
    }
    fn gpu() -> Bdf {
        "0000:02:00.0".parse().unwrap()
    }
    fn host(a: u64, l: u64) -> PhysVec {
        PhysVec::new(PhysAddr::new(a), l, MemKind::System).unwrap()
    }
    fn p2p(a: u64, l: u64) -> PhysVec {
        PhysVec::new(PhysAddr::new(a), l, MemKind::P2p { provider: gpu() }).unwrap()
    }

    #[test]
    fn large_buffers_split_at_the_request_size() {
        let rqs =
            build_requests(dev(), &NVME, Op::Read, 4096, &[p2p(0xf000_0000, 1 << 20)]).unwrap();
        assert_eq!(rqs.len(), 8);
        for (i, r) in rqs.iter().enumerate() {
            assert_eq!(r.len(), 128 << 10);
            assert_eq!(r.offset, 4096 + i as u64 * (128 << 10));
            assert_eq!(r.kind(), MemKind::P2p { provider: gpu() });
        }
        let total: u64 = rqs.iter().map(Request::len).sum();
        assert_eq!(total, 1 << 20);
    }

    #[test]
    fn mixed_memory_never_shares_a_request() {
        let rqs = build_requests(
            dev(),
            &NVME,
            Op::Write,
            0,
            &[
                host(0x10_0000, 8192),
                p2p(0xf000_0000, 8192),
                host(0x20_0000, 4096),
            ],
        )
        .unwrap();
        let kinds: Vec<_> = rqs.iter().map(|r| (r.kind(), r.offset, r.len())).collect();
        assert_eq!(
            kinds,
            vec![
                (MemKind::System, 0, 8192),
                (MemKind::P2p { provider: gpu() }, 8192, 8192),
                (MemKind::System, 16384, 4096)
            ]
        );
    }

    #[test]
    fn the_virt_boundary_splits_at_gaps() {
        // The first segment ends inside a page: the next cannot join it.
        let rqs = build_requests(
            dev(),
            &NVME,
            Op::Read,
            0,
            &[host(0x10_0000, 512), host(0x30_0000, 4096)],
        )
        .unwrap();
        assert_eq!(rqs.len(), 2);
        let mut sgl = NVME;
        sgl.virt_boundary = 0;
        let rqs = build_requests(
            dev(),
            &sgl,
            Op::Read,
            0,
            &[host(0x10_0000, 512), host(0x30_0000, 4096)],
        )
        .unwrap();
        assert_eq!(rqs.len(), 1, "an SGL controller takes gaps");
    }

    #[test]
    fn refusals_name_the_rule() {
        let mut no_p2p = NVME;
        no_p2p.pci_p2pdma = false;
        let e = build_requests(dev(), &no_p2p, Op::Read, 0, &[p2p(0xf000_0000, 4096)]).unwrap_err();
        assert_eq!(e.errno(), "EREMOTEIO");
        assert!(e.to_string().contains("BLK_FEAT_PCI_P2PDMA"), "{e}");
        let e = build_requests(dev(), &NVME, Op::Read, 100, &[host(0x1000, 4096)]).unwrap_err();
        assert!(e.to_string().contains("file offset 0x64"), "{e}");
        let e = build_requests(dev(), &NVME, Op::Read, 0, &[host(0x1000, 100)]).unwrap_err();
        assert_eq!(e.errno(), "EINVAL");
        assert_eq!(
            build_requests(dev(), &NVME, Op::Read, 0, &[]).unwrap_err(),
            BlockError::Empty
        );
    }

    #[test]
    fn segment_limits_are_kept() {
        let mut l = NVME;
        l.max_segments = 2;
        l.virt_boundary = 0;
        let bufs: Vec<PhysVec> = (0..5).map(|i| host(0x10_0000 * (i + 1), 4096)).collect();
        let rqs = build_requests(dev(), &l, Op::Read, 0, &bufs).unwrap();
        assert_eq!(
            rqs.iter().map(|r| r.segments.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
        l.max_segment_size = 4096;
        let rqs = build_requests(dev(), &l, Op::Read, 0, &[host(0x10_0000, 16384)]).unwrap();
        assert!(rqs
            .iter()
            .all(|r| r.segments.iter().all(|s| s.len() <= 4096)));
        assert_eq!(rqs.iter().map(Request::len).sum::<u64>(), 16384);
    }
}
