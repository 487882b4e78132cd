//! The real Linux backend: what peerdma does on a live machine.
//!
//! * [`p2pmem`]: peer-to-peer memory allocated by `mmap`ping a provider's
//!   `/sys/bus/pci/devices/<bdf>/p2pmem/allocate`, touched by the CPU only
//!   through [`peerdma_mem::IoMem`] (DESIGN.md, rule 1);
//! * [`direct`]: `O_DIRECT` block I/O between a drive and host memory or
//!   P2P memory (the kernel DMAs straight into or out of the BAR);
//! * [`blockdev`]: from a PCI function to its block device through sysfs,
//!   and whether that device is in use;
//! * [`pattern`]: the byte patterns the probe writes and how it classifies
//!   wrong bytes;
//! * [`copy`]: `peerdma copy` — files and block devices, P2P memory or host
//!   bounce buffers, O_DIRECT with io_uring, the path taken reported;
//! * [`probe`]: the P2P smoke test — move known bytes through a provider's
//!   memory with real DMA and hold the result against the kernel's verdict
//!   (read with [`peerdma_p2p::oracle`] where the oracle kernel prints it);
//! * [`trace`]: the path a transfer really took, from the kernel's DMA
//!   mapping tracepoints (`--trace`).
//!
//! The probe's patterns and how wrong bytes are told apart, without
//! hardware:
//!
//! ```
//! use peerdma_linux::pattern::{compare, pattern, WrongKind};
//!
//! let expected = pattern(42, 8192);
//! let mut found = expected.clone();
//! found[4096..].fill(0xff); // what a read through an unsupported path returns
//! let m = compare(&expected, &found, None).expect("a mismatch");
//! assert_eq!(m.first_offset, 4096);
//! // (the pattern itself has a few 0xff bytes, which are not wrong)
//! assert!(m.bytes_wrong > 4000 && m.bytes_wrong <= 4096);
//! assert_eq!(m.kind, WrongKind::AllOnes);
//! assert_eq!(compare(&expected, &expected, None), None);
//! ```

pub mod blockdev;
pub mod copy;
pub mod direct;
pub mod p2pmem;
pub mod pattern;
pub mod probe;
pub mod trace;

use peerdma_mem::Bdf;
use std::io;
use std::path::{Path, PathBuf};

/// A boxed cause, kept for [`std::error::Error::source`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong on the live machine. Every message names the device or
/// file concerned (DESIGN.md, rule 6), and every error that has a cause
/// keeps it ([`std::error::Error::source`]).
///
/// The variants tell apart what a caller may act on: a refusal that
/// protected data ([`Error::Refused`], [`Error::InUse`]), a bad argument
/// ([`Error::BadArgument`]), the kernel refusing peer-to-peer DMA
/// ([`Error::P2pRefused`], EREMOTEIO), a full destination
/// ([`Error::NoSpace`], ENOSPC), another I/O error during a copy
/// ([`Error::Transfer`]) and a copy whose bytes did not verify
/// ([`Error::VerifyFailed`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call on a file failed.
    #[error("cannot {action} {}: {}", path.display(), errno_text(source))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The PCI function has no block device below it.
    #[error("{bdf} has no block device: {detail}")]
    NoBlockDevice { bdf: Bdf, detail: String },
    /// Refused: the block device (or one of its partitions) is in use.
    #[error("refusing to write to {}: {detail}", device.display())]
    InUse { device: PathBuf, detail: String },
    /// The provider publishes no P2P memory.
    #[error("{bdf} has no P2P memory: {detail}")]
    NoP2pMem { bdf: Bdf, detail: String },
    /// The oracle kernel's verdicts file is there but cannot be used.
    #[error(transparent)]
    OracleFile(#[from] peerdma_p2p::oracle::ParseError),
    /// Reading the machine's topology failed.
    #[error(transparent)]
    Topology(#[from] peerdma_pci::Error),
    /// An option or argument that cannot be used: the message names it and
    /// says why.
    #[error("{message}")]
    BadArgument {
        message: String,
        #[source]
        source: Option<Cause>,
    },
    /// A path that is not the kind of file asked for.
    #[error("{} is a {found}, not {expected}", path.display())]
    WrongFileType {
        path: PathBuf,
        found: String,
        expected: &'static str,
    },
    /// A device node whose number is not the one sysfs gives (stale /dev).
    #[error(
        "{} is block device {}:{}, but sysfs says {}:{}",
        path.display(), found.0, found.1, expected.0, expected.1
    )]
    StaleNode {
        path: PathBuf,
        found: (u32, u32),
        expected: (u32, u32),
    },
    /// A copy refused to protect data.
    #[error(transparent)]
    Refused(#[from] copy::Refusal),
    /// The kernel refused peer-to-peer DMA (EREMOTEIO) where bouncing
    /// through host memory was not allowed.
    #[error("{0}")]
    P2pRefused(#[source] Box<copy::TransferError>),
    /// The destination is full (ENOSPC); what was copied is kept.
    #[error("{0}")]
    NoSpace(#[source] Box<copy::TransferError>),
    /// Another I/O of a copy failed; what was copied is kept.
    #[error("{0}")]
    Transfer(#[source] Box<copy::TransferError>),
    /// `--verify` found the destination different from the source: the
    /// report says which path the data took and where it first differs.
    #[error("{}", .0.verify_failure())]
    VerifyFailed(Box<copy::CopyReport>),
    /// A kernel file (sysfs, a verdicts file) that does not hold what it
    /// should.
    #[error("{origin}: {detail}")]
    Malformed { origin: String, detail: String },
    /// Host memory could not be allocated.
    #[error("cannot allocate {bytes} bytes for {what}: {}", errno_text(source))]
    Alloc {
        what: &'static str,
        bytes: u64,
        #[source]
        source: io::Error,
    },
    /// The CPU's access to P2P memory failed.
    #[error("P2P memory of {provider}: {source}")]
    P2pAccess {
        provider: Bdf,
        #[source]
        source: Cause,
    },
    /// Something does not read back what was written to it.
    #[error("{what}: {detail}")]
    Unreliable { what: String, detail: String },
    /// A read or write that ended early at the end of a device.
    #[error("{op} on {} at {offset:#x}: end of device after {done} of {len} bytes", path.display())]
    ShortIo {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        done: usize,
        len: usize,
    },
    /// The copy pipeline was given a job it cannot run (a bug in the
    /// caller, reported rather than asserted).
    #[error("copy pipeline: {0}")]
    Pipeline(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn bad(message: impl Into<String>) -> Error {
        Error::BadArgument {
            message: message.into(),
            source: None,
        }
    }

    /// The errno behind the error, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } | Error::Alloc { source, .. } => source.raw_os_error(),
            Error::P2pRefused(t) | Error::NoSpace(t) | Error::Transfer(t) => Some(t.failure.errno),
            _ => None,
        }
    }

    /// A refusal that protected data: overlapping ends, a block device
    /// without `--force-device`, a device in use, `--no-bounce`.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Error::Refused(_) | Error::InUse { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The symbolic name of an errno value (`EREMOTEIO`), for reports.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTBLK => "ENOTBLK",
        libc::EREMOTEIO => "EREMOTEIO",
        libc::ENOLINK => "ENOLINK",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EILSEQ => "EILSEQ",
        libc::ENODATA => "ENODATA",
        libc::ECANCELED => "ECANCELED",
        libc::EBADE => "EBADE",
        _ => "E?",
    }
}

/// `EREMOTEIO (Remote I/O error)`, or the plain message without an errno.
pub(crate) fn errno_text(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let msg = io::Error::from_raw_os_error(n).to_string();
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
            format!("{} ({msg})", errno_name(n))
        }
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_and_texts() {
        assert_eq!(errno_name(libc::EREMOTEIO), "EREMOTEIO");
        let t = errno_text(&io::Error::from_raw_os_error(libc::EREMOTEIO));
        assert_eq!(t, "EREMOTEIO (Remote I/O error)");
        let e = Error::io(
            "open",
            Path::new("/dev/x"),
            io::Error::from_raw_os_error(libc::EBUSY),
        );
        assert_eq!(e.errno(), Some(libc::EBUSY));
        assert_eq!(
            e.to_string(),
            "cannot open /dev/x: EBUSY (Device or resource busy)"
        );
    }
}

/// The README's example, run as a doctest so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
