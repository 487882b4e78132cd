//! The consumers P2P DMA exists for, on the simulated machine — first the
//! storage ones:
//!
//! * [`block`]: `O_DIRECT` I/O into requests, and each request mapped as
//!   `blk_rq_dma_map_iter` maps it;
//! * [`nvme`]: a controller and its driver — queues in host memory, PRP
//!   lists and SGLs, data moved between media and the fabric;
//! * [`io`]: `read()`/`write()` between a drive and device memory, bounced
//!   through host memory where P2P cannot work;
//! * [`copy`]: drive to drive through a CMB or host memory;
//! * [`raid`]: md-style RAID-1 rebuild and RAID-5 degraded read;
//! * [`devmem`]: the device memory a consumer can use (a CMB, a GPU's
//!   VRAM aperture);
//! * [`net`]: machines joined by a wire, and devmem TCP receive into
//!   device memory;
//! * [`rdma`]: dma-bufs of GPU memory, RDMA memory regions on them
//!   (dynamic and pinned), RDMA WRITE and READ between two machines over
//!   the wire, GPUDirect RDMA;
//! * [`nvmet`]: the NVMe-oF target staging in P2P memory (nvmet's
//!   `p2pmem`), or in host memory where none fits.
//!
//! They use the simulator's public API only (DESIGN.md: sim knows no
//! consumer).
//!
//! A 1 MiB `O_DIRECT` read from an NVMe drive straight into GPU memory on
//! the simulated dual-Xeon server, bytes checked:
//!
//! ```
//! use peerdma_consumers::block::Op;
//! use peerdma_consumers::devmem::DeviceMemory;
//! use peerdma_consumers::io::{direct_io, Fallback, LegPath};
//! use peerdma_consumers::nvme::{NvmeConfig, NvmeDrive};
//! use peerdma_pci::Source;
//! use peerdma_sim::{pattern, SimConfig, SimMachine};
//!
//! let m = SimMachine::new(Source::Preset("dual-xeon".into()).load()?, SimConfig::default())?;
//! let (drive, gpu) = (m.device("nvme0")?, m.device("gpu0")?);
//! m.fill_media_pattern(drive, 7)?;
//! let buf = DeviceMemory::new().provider(&m, gpu)?.alloc(1 << 20)?;
//! let mut nvme = NvmeDrive::new(&m, drive, NvmeConfig::default())?;
//! let out = direct_io(&m, &mut nvme, Op::Read, 0, &[buf.phys()], Fallback::Bounce, None)?;
//! assert_eq!(out.legs[0].path, LegPath::BusAddr, "below one switch: peer to peer");
//! let mut back = vec![0u8; 1 << 20];
//! m.cpu_read(buf.phys_addr(), &mut back)?;
//! assert_eq!(pattern::first_mismatch(7, 0, &back), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod block;
pub mod copy;
pub mod devmem;
pub mod io;
pub mod net;
pub mod nvme;
pub mod nvmet;
pub mod raid;
pub mod rdma;

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
