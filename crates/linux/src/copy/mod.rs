//! `peerdma copy SRC DST`: move bytes between files and block devices by
//! the best path the machine allows.
//!
//! When both ends are PCI devices that can reach a published P2P memory
//! provider (chosen like the kernel's `pci_p2pmem_find_many`, or named with
//! `--via`), the staging buffer is that provider's memory and both DMAs are
//! peer to peer. Otherwise the buffer is host memory on the devices' NUMA
//! node and the data bounces through it (DESIGN.md rule 3) — unless
//! `--no-bounce` asks for an error naming the pair and the reason. Every
//! copy reports the path it took (rule 4), and `--verify` hashes both ends.
//!
//! If the kernel refuses a P2P DMA anyway (`EREMOTEIO`), the copy goes on
//! from the first incomplete chunk through host memory and says so
//! (`fallback`). peerdma's verdicts are the kernel's, so this only happens
//! when they are bypassed: `PEERDMA_COPY_UNCHECKED_VIA=1` in the
//! environment ([`UNCHECKED_VIA_ENV`]) tries `--via`'s memory without
//! holding it to peerdma's verdict, which is how the QEMU scenarios
//! exercise the fallback against a real kernel.
//!
//! # What an interrupted, failed or killed copy leaves
//!
//! * Stopped (Ctrl-C, SIGTERM) or failed (an I/O error, ENOSPC): the first
//!   bytes of the range, as many as the report or the error says, are in
//!   place and a file destination ends where they end (or where it ended
//!   before, if that was further); the printed `--skip --seek --count`
//!   arguments copy the rest.
//! * A new destination file has no name until it holds data (see
//!   `newfile.rs`): killed (SIGKILL, a crash), the copy leaves nothing, and
//!   a failure before anything was written leaves nothing either. Run the
//!   copy again.
//! * An existing file or a block device is written in place: killed, the
//!   range holds new bytes up to some point and old ones (or, in a file
//!   extended for the copy, zeros up to the new end) after it, with no
//!   record of where. Run the same command again: a copy's result does not
//!   depend on what the destination held, and overlapping ranges are
//!   refused, so the source is unchanged.

mod buffer;
mod endpoint;
mod execute;
mod medium;
mod newfile;
mod plan;
mod report;
mod ring;
mod shift;
mod verify;

pub use buffer::Pages;
pub use endpoint::Kind;
pub use plan::{plan, Plan};
pub use report::{CopyPath, CopyReport, EndReport, Interrupted, PathKnown, StagingReport, Verify};
pub use ring::{IoFailure, MAX_CHUNK};

use crate::Error;
use peerdma_mem::format_size;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Bytes to skip at the start of SRC.
    pub skip: u64,
    /// Bytes to skip at the start of DST.
    pub seek: u64,
    /// Bytes to copy (default: the rest of SRC).
    pub count: Option<u64>,
    pub chunk: u64,
    pub depth: usize,
    /// Use this provider's P2P memory.
    pub via: Option<String>,
    /// Fail instead of bouncing through host memory.
    pub no_bounce: bool,
    /// Allow writing to a block device.
    pub force_device: bool,
    /// Hash both ends afterwards.
    pub verify: bool,
    /// Flush DST to stable storage at the end (fdatasync).
    pub fsync: bool,
    /// Watch the kernel's DMA mapping events while the data moves, and
    /// report the path each leg was observed to take (needs root and
    /// tracefs; the report says why where it cannot).
    pub trace: bool,
    /// Where sysfs is (`/` on a live machine).
    pub sys_root: PathBuf,
}

/// `PEERDMA_COPY_UNCHECKED_VIA=1` in the environment: stage through
/// `--via` even where peerdma's verdict says a drive cannot reach it, and
/// let the kernel decide: it refuses with EREMOTEIO and the copy falls back
/// to host memory (or fails, with `--no-bounce`). A test hook for the
/// fallback (the QEMU scenarios use it against a real kernel), kept out of
/// [`CopyOptions`] so that no program sets it by accident.
pub const UNCHECKED_VIA_ENV: &str = "PEERDMA_COPY_UNCHECKED_VIA";

fn unchecked_via() -> bool {
    std::env::var_os(UNCHECKED_VIA_ENV).is_some_and(|v| v == "1")
}

impl CopyOptions {
    pub fn new(src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> CopyOptions {
        CopyOptions {
            src: src.into(),
            dst: dst.into(),
            skip: 0,
            seek: 0,
            count: None,
            chunk: 1 << 20,
            depth: 8,
            via: None,
            no_bounce: false,
            force_device: false,
            verify: false,
            fsync: false,
            trace: false,
            sys_root: PathBuf::from("/"),
        }
    }
}

/// A copy refused before anything was written, to protect data.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The two ends share bytes.
    #[error("refusing to copy {src} -> {dst}: {detail}")]
    Overlap {
        src: String,
        dst: String,
        detail: String,
    },
    /// A block device destination without `--force-device`.
    #[error(
        "refusing to write block device {} without --force-device (it would overwrite {} at offset {offset})",
        device.display(), format_size(*bytes)
    )]
    NeedsForceDevice {
        device: PathBuf,
        bytes: u64,
        offset: u64,
    },
    /// Peer to peer is impossible and `--no-bounce` forbids host memory.
    #[error("cannot copy {src} -> {dst} peer to peer: {reason}; without --no-bounce the data would go through host memory")]
    NoBounce {
        src: String,
        dst: String,
        reason: String,
    },
}

/// An I/O that failed during a copy (or its verification), and how far the
/// copy had got: the first `copied` bytes of the range are in place.
#[derive(Debug, thiserror::Error)]
#[error("{failure}; {}", self.progress())]
pub struct TransferError {
    #[source]
    pub failure: IoFailure,
    /// Bytes from the start of the range copied and kept.
    pub copied: u64,
    pub total: u64,
    /// The destination, for a failure of the copy itself (not `--verify`).
    pub dst: Option<String>,
    /// The arguments that copy the rest.
    pub resume: Option<String>,
}

impl TransferError {
    /// The error of the right kind: EREMOTEIO, ENOSPC or another.
    pub(crate) fn into_error(self) -> Error {
        match self.failure.errno {
            libc::EREMOTEIO => Error::P2pRefused(Box::new(self)),
            libc::ENOSPC => Error::NoSpace(Box::new(self)),
            _ => Error::Transfer(Box::new(self)),
        }
    }

    /// A read of `--verify` failed (the copy itself was complete).
    pub(crate) fn verify(failure: IoFailure, total: u64) -> Error {
        TransferError {
            failure,
            copied: total,
            total,
            dst: None,
            resume: None,
        }
        .into_error()
    }

    /// How far the copy got, in words.
    fn progress(&self) -> String {
        let resume = self
            .resume
            .as_ref()
            .map(|r| format!(" (resume with {r})"))
            .unwrap_or_default();
        match &self.dst {
            None => format!("the copy of {} had completed", format_size(self.total)),
            Some(_) if self.copied == 0 => format!(
                "nothing of the {} was copied{resume}",
                format_size(self.total)
            ),
            Some(d) => format!(
                "the first {} bytes ({}) of {} were copied and are kept in {d}{resume}",
                self.copied,
                format_size(self.copied),
                format_size(self.total)
            ),
        }
    }
}

/// Plan and (unless `dry_run`) run a copy: [`plan`], then
/// [`Plan::execute`]. `progress` gets (bytes done, bytes total); `stop`
/// ends it early (the report then says how far it got).
pub fn copy(
    opts: &CopyOptions,
    dry_run: bool,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64, u64),
) -> crate::Result<CopyReport> {
    let plan = plan(opts)?;
    if dry_run {
        return Ok(plan.report());
    }
    plan.execute(stop, progress)
}
