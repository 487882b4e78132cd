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
//! * [`rdma`]: dma-bufs of GPU memory, RDMA memory regions on them
//!   (dynamic and pinned), RDMA WRITE and READ between two machines over
//!   the wire, GPUDirect RDMA;
//! * [`nvmet`]: the NVMe-oF target staging in P2P memory (nvmet's
//!   `p2pmem`), or in host memory where none fits.
//!
//! They use the simulator's public API only (DESIGN.md: sim knows no
//! consumer).

pub mod block;
pub mod copy;
pub mod devmem;
pub mod io;
pub mod net;
pub mod nvme;
pub mod nvmet;
pub mod raid;
pub mod rdma;
