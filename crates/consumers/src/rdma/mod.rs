//! RDMA on device memory, between two simulated machines joined by a wire:
//! "the most complete in-tree user" of P2P DMA.
//!
//! * [`dmabuf`]: a dma-buf exporter over a GPU's device memory, with
//!   dynamic and pinned importers, moves and revocation;
//! * [`mr`]: memory regions on host memory or on a dma-buf, dynamic
//!   (`move_notify` invalidates, the next access re-maps) or pinned;
//! * [`nic`]: the RDMA NIC of a machine and a reliable-connected queue
//!   pair to the other machine's NIC, moving RDMA WRITE and READ as real
//!   RoCEv2 packets ([`packet`]);
//! * [`job`]: one call per workload job — RDMA WRITE or READ into and out
//!   of GPU memory, GPUDirect RDMA from GPU to GPU — with its legs, the
//!   bytes checked, and every reference given back at the end.

pub mod dmabuf;
pub mod job;
pub mod mr;
pub mod nic;
pub mod packet;

pub use dmabuf::{Attachment, DmaBuf, DmaBufError, ImporterOps, Mapping, Placement};
pub use job::{gpudirect, run_rdma, Host, Memory, Migration, RdmaJob, RdmaOp, RdmaReport, Side};
pub use mr::{Access, AccessError, MemoryRegion, MrKind};
pub use nic::{Connection, Endpoint, Inject, RdmaEvent, RdmaNic, RdmaOutcome};

use crate::net::{MachineId, Port};
use peerdma_mem::Bdf;
use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A work completion's status, as verbs reports it (`enum ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum WcStatus {
    /// The local MR refused the access (key, bounds, rights, revoked).
    LocProtErr,
    /// The local NIC could not do its DMA.
    LocQpOpErr,
    /// The responder's MR refused the access.
    RemAccessErr,
    /// The responder could not do its DMA.
    RemOpErr,
    /// The responder did not understand the request.
    RemInvReqErr,
    /// The queue pair was already in the error state.
    WrFlushErr,
}

impl std::fmt::Display for WcStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WcStatus::LocProtErr => "IBV_WC_LOC_PROT_ERR",
            WcStatus::LocQpOpErr => "IBV_WC_LOC_QP_OP_ERR",
            WcStatus::RemAccessErr => "IBV_WC_REM_ACCESS_ERR",
            WcStatus::RemOpErr => "IBV_WC_REM_OP_ERR",
            WcStatus::RemInvReqErr => "IBV_WC_REM_INV_REQ_ERR",
            WcStatus::WrFlushErr => "IBV_WC_WR_FLUSH_ERR",
        })
    }
}

fn port(p: &Port) -> String {
    format!("{} on machine {}", p.nic, p.machine)
}

/// Why an RDMA setup or operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RdmaError {
    #[error("no device {bdf} on machine {machine}")]
    NoDevice { machine: MachineId, bdf: Bdf },
    #[error("{bdf} on machine {machine} is not an RDMA NIC: its class is {class:06x}, not a network controller (02)")]
    NotANic {
        machine: MachineId,
        bdf: Bdf,
        class: u32,
    },
    #[error("no machine {machine} in this workload ({count} machine(s))")]
    NoMachine { machine: MachineId, count: usize },
    #[error("the wire joins {} and {}, not {} and {}", port(.wire_a), port(.wire_b), port(.from), port(.to))]
    NotWired {
        from: Port,
        to: Port,
        wire_a: Port,
        wire_b: Port,
    },
    #[error("the wire's MTU of {mtu} bytes leaves no room for a RoCE path MTU (256 bytes and its headers)")]
    Mtu { mtu: u32 },
    #[error("registering a {kind} MR of the dma-buf of {exporter} for {nic} failed: {source}")]
    Registration {
        nic: Bdf,
        exporter: Bdf,
        kind: MrKind,
        #[source]
        source: DmaBufError,
    },
    #[error("registering host memory for {nic} failed: {source}")]
    HostMap {
        nic: Bdf,
        #[source]
        source: peerdma_dma::MapError,
    },
    #[error("EINVAL: {0}")]
    Invalid(String),
    #[error("{op} of {len} bytes from {} to {} failed at byte {at}: {status}: {cause}", port(.requester), port(.responder))]
    Completion {
        op: &'static str,
        requester: Port,
        responder: Port,
        len: u64,
        at: u64,
        status: WcStatus,
        cause: String,
    },
    #[error("{0}")]
    DevMem(#[from] crate::devmem::DevMemError),
    #[error("the dma-buf: {0}")]
    DmaBuf(#[from] DmaBufError),
    #[error("ENOMEM: {0}")]
    Resource(String),
}

impl RdmaError {
    /// The errno (or work completion status) a user would see.
    pub fn errno(&self) -> String {
        match self {
            RdmaError::Registration { source, .. } | RdmaError::DmaBuf(source) => {
                source.errno().into()
            }
            RdmaError::Completion { status, .. } => status.to_string(),
            RdmaError::Resource(_) => "ENOMEM".into(),
            RdmaError::NoDevice { .. } | RdmaError::NoMachine { .. } => "ENODEV".into(),
            _ => "EINVAL".into(),
        }
    }
}
