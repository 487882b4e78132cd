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
//!   memory with real DMA and hold the result against the kernel's verdict;
//! * [`oracle`]: the kernel's own P2PDMA verdicts as the oracle kernel's
//!   debugfs file prints them (kernel/README.md), and their comparison with
//!   peerdma's.

pub mod blockdev;
pub mod copy;
pub mod direct;
pub mod oracle;
pub mod p2pmem;
pub mod pattern;
pub mod probe;

use peerdma_mem::Bdf;
use std::io;
use std::path::{Path, PathBuf};

/// What can go wrong on the live machine. Every message names the device or
/// file concerned (DESIGN.md, rule 6).
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
    /// The block device (or one of its partitions) is in use.
    #[error("refusing to write to {}: {detail}", device.display())]
    InUse { device: PathBuf, detail: String },
    /// The provider publishes no P2P memory.
    #[error("{bdf} has no P2P memory: {detail}")]
    NoP2pMem { bdf: Bdf, detail: String },
    /// A size, offset or region that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The copy pipeline was given a job it cannot run (a bug in the
    /// caller, reported rather than asserted).
    #[error("copy pipeline: {0}")]
    Pipeline(String),
    /// Reading the machine's topology failed.
    #[error(transparent)]
    Topology(#[from] peerdma_pci::Error),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno behind the error, when a system call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
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
