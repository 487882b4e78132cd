//! Device memory a consumer can do I/O against: the P2P memory a device
//! publishes (an NVMe CMB's `p2pmem`), or a GPU's VRAM aperture as its
//! driver exports it for peer-to-peer DMA (the part of a GPU driver that
//! calls `pci_p2pdma_add_resource` or exports a dma-buf). Either way it is
//! a [`Provider`]: page-granular allocations that keep it alive, bus
//! addresses through its bus offset, revocation as a protocol.

use peerdma_p2p::Provider;
use peerdma_pci::{FnId, Function, Topology};
use peerdma_sim::SimMachine;
use std::collections::HashMap;
use std::sync::Mutex;

/// What memory a device has for I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceMemoryKind {
    /// Published `p2pmem` (a CMB, a P2P-capable BAR).
    P2pMem,
    /// A GPU's prefetchable VRAM aperture (`bar`).
    GpuAperture { bar: u8 },
}

/// The device memory a function can give a job, if any: its published
/// p2pmem, or for a GPU — a display or 3D controller (class 03) or a
/// processing accelerator (class 12) — its largest prefetchable memory BAR.
pub fn device_memory(f: &Function) -> Option<(DeviceMemoryKind, u64)> {
    if let Some(p) = f.p2pmem {
        if p.published && p.size > 0 {
            return Some((DeviceMemoryKind::P2pMem, p.available.min(p.size)));
        }
    }
    if matches!(f.base_class(), 0x03 | 0x12) {
        let bar = f
            .bars
            .iter()
            .filter(|b| !b.io && b.prefetchable)
            .max_by_key(|b| b.phys.len())?;
        return Some((
            DeviceMemoryKind::GpuAperture { bar: bar.index },
            bar.phys.len(),
        ));
    }
    None
}

/// A phrase for messages: "the published P2P memory" / "the VRAM aperture (BAR 1)".
pub fn describe(kind: &DeviceMemoryKind) -> String {
    match kind {
        DeviceMemoryKind::P2pMem => "the published P2P memory".into(),
        DeviceMemoryKind::GpuAperture { bar } => format!("the VRAM aperture (BAR {bar})"),
    }
}

/// Bytes of device memory of `f` in `topo`, and what it is (for workload
/// validation).
pub fn capacity(topo: &Topology, f: FnId) -> Option<(u64, String)> {
    device_memory(topo.function(f)).map(|(k, n)| (n, describe(&k)))
}

/// Why device memory could not be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DevMemError {
    #[error("{0} is not on this machine")]
    NoDevice(peerdma_mem::Bdf),
    #[error("{0} has no device memory: it publishes no P2P memory (p2pmem) and is not a GPU or accelerator")]
    None(peerdma_mem::Bdf),
    #[error("cannot export the memory of {bdf}: {why}")]
    Export { bdf: peerdma_mem::Bdf, why: String },
}

/// The providers of device memory on one simulated machine: the ones the
/// machine published itself, and GPU apertures exported on first use.
#[derive(Default)]
pub struct DeviceMemory {
    exported: Mutex<HashMap<peerdma_mem::Bdf, Provider>>,
}

impl DeviceMemory {
    pub fn new() -> DeviceMemory {
        DeviceMemory::default()
    }

    /// The provider of `bdf`'s device memory, exporting a GPU's aperture
    /// (and registering it with the machine's mapper) the first time.
    pub fn provider(
        &self,
        sim: &SimMachine,
        bdf: peerdma_mem::Bdf,
    ) -> Result<Provider, DevMemError> {
        if let Some(p) = sim.provider(bdf) {
            return Ok(p);
        }
        let mut ex = self.exported.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = ex.get(&bdf) {
            return Ok(p.clone());
        }
        let topo = sim.topology();
        let f = topo.find(bdf).ok_or(DevMemError::NoDevice(bdf))?;
        let func = topo.function(f);
        match device_memory(func) {
            Some((DeviceMemoryKind::GpuAperture { bar }, _)) => {
                let p =
                    Provider::from_function(func, bar, 0, 0).map_err(|e| DevMemError::Export {
                        bdf,
                        why: e.to_string(),
                    })?;
                p.publish(true);
                sim.add_provider(&p).map_err(|e| DevMemError::Export {
                    bdf,
                    why: e.to_string(),
                })?;
                ex.insert(bdf, p.clone());
                Ok(p)
            }
            Some((DeviceMemoryKind::P2pMem, _)) => Err(DevMemError::Export {
                bdf,
                why: "its p2pmem is not registered with the simulated machine".into(),
            }),
            None => Err(DevMemError::None(bdf)),
        }
    }
}
