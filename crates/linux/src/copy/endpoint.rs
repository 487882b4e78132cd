//! One end of a copy: a regular file or a block device, opened for O_DIRECT
//! where the file system allows it, with the device behind it.

use super::newfile::NewFile;
use crate::blockdev::BlockDevice;
use crate::{Error, Result};
use peerdma_mem::Bdf;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, StatxFlags};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

/// What an end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    File,
    BlockDevice,
}

/// The device holding an end's data.
#[derive(Clone, Debug, Serialize)]
pub struct Backing {
    /// The block device (for a file: the one its file system lives on).
    pub block: BlockDevice,
    /// The PCI function that does the DMA, if there is one.
    pub pci: Option<Bdf>,
    /// Its NUMA node, when sysfs says.
    pub numa_node: Option<u32>,
}

/// An opened end.
#[derive(Debug)]
pub struct Endpoint {
    pub path: PathBuf,
    pub kind: Kind,
    pub(crate) fd: OwnedFd,
    /// Opened with O_DIRECT (the kernel DMAs straight into our buffers).
    pub direct: bool,
    /// Bytes in the file or on the device.
    pub size: u64,
    /// O_DIRECT offset and length alignment.
    pub align: u64,
    /// (device, inode) for files, (rdev, 0) for block devices: two ends
    /// with the same identity share their bytes.
    pub identity: (u64, u64),
    /// A block device's number (major, minor).
    pub rdev: Option<(u32, u32)>,
    pub backing: Option<Backing>,
    /// A destination file that did not exist: it has no name until
    /// [`Endpoint::name_new_file`].
    pub(crate) new_file: Option<NewFile>,
}

pub(crate) fn dev_id(major: u32, minor: u32) -> u64 {
    (u64::from(major) << 32) | u64::from(minor)
}

/// The block device with number `major:minor` as sysfs under `sys_root`
/// shows it, its PCI function and NUMA node (a device-mapper device with a
/// single slave resolves to that slave's function).
pub fn backing_of(sys_root: &Path, major: u32, minor: u32) -> Option<Backing> {
    let link = sys_root.join(format!("sys/dev/block/{major}:{minor}"));
    let dir = fs::canonicalize(&link).ok()?;
    let name = dir.file_name()?.to_string_lossy().into_owned();
    let pci = pci_function_of(&dir).or_else(|| {
        // One level of stacking: dm-N / mdN over a single device.
        let slaves: Vec<_> = fs::read_dir(dir.join("slaves"))
            .ok()?
            .filter_map(|e| e.ok())
            .collect();
        match slaves.as_slice() {
            [one] => fs::canonicalize(one.path())
                .ok()
                .and_then(|d| pci_function_of(&d)),
            _ => None,
        }
    });
    let block = BlockDevice::from_class_dir(&dir, Path::new("/dev"), &name, pci).ok()?;
    let numa_node = pci.and_then(|b| {
        fs::read_to_string(
            sys_root
                .join("sys/bus/pci/devices")
                .join(b.to_string())
                .join("numa_node"),
        )
        .ok()?
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
    });
    Some(Backing {
        block,
        pci,
        numa_node,
    })
}

/// The last PCI function on a sysfs device path.
fn pci_function_of(dir: &Path) -> Option<Bdf> {
    dir.components()
        .rev()
        .find_map(|c| c.as_os_str().to_str()?.parse::<Bdf>().ok())
}

fn open(path: &Path, flags: OFlags) -> Result<(OwnedFd, bool)> {
    let mode = Mode::from_raw_mode(0o644);
    match rustix::fs::open(path, flags | OFlags::DIRECT | OFlags::CLOEXEC, mode) {
        Ok(fd) => Ok((fd, true)),
        // A file system without O_DIRECT: buffered I/O still copies right.
        Err(rustix::io::Errno::INVAL) => rustix::fs::open(path, flags | OFlags::CLOEXEC, mode)
            .map(|fd| (fd, false))
            .map_err(|e| Error::io("open", path, e.into())),
        Err(e) => Err(Error::io("open", path, e.into())),
    }
}

impl Endpoint {
    /// Open the source for reading.
    pub fn open_src(path: &Path, sys_root: &Path) -> Result<Endpoint> {
        let (fd, direct) = open(path, OFlags::RDONLY)?;
        Endpoint::describe(path, fd, direct, sys_root)
    }

    /// Open the destination for reading and writing (edges are read,
    /// patched and written back). A missing file is created without a name
    /// (see [`NewFile`]); block devices are claimed exclusively, which
    /// fails while anything holds them.
    pub fn open_dst(path: &Path, sys_root: &Path) -> Result<Endpoint> {
        if fs::symlink_metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound) {
            let (fd, direct, new_file) = NewFile::create(path)?;
            let mut e = Endpoint::describe(path, fd, direct, sys_root)?;
            e.new_file = Some(new_file);
            return Ok(e);
        }
        let is_block = fs::metadata(path).map(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_block_device()
        });
        let flags = match is_block {
            Ok(true) => OFlags::RDWR | OFlags::EXCL,
            _ => OFlags::RDWR,
        };
        let (fd, direct) = open(path, flags).map_err(|e| match e {
            Error::Io { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                Error::InUse {
                    device: path.to_path_buf(),
                    detail: "another user holds it (the exclusive open failed: device busy)".into(),
                }
            }
            other => other,
        })?;
        Endpoint::describe(path, fd, direct, sys_root)
    }

    fn describe(path: &Path, fd: OwnedFd, direct: bool, sys_root: &Path) -> Result<Endpoint> {
        let st = rustix::fs::statx(
            fd.as_fd(),
            "",
            AtFlags::EMPTY_PATH,
            StatxFlags::BASIC_STATS | StatxFlags::DIOALIGN,
        )
        .map_err(|e| Error::io("stat", path, e.into()))?;
        let ty = FileType::from_raw_mode(u32::from(st.stx_mode));
        let (kind, backing, identity) = match ty {
            FileType::BlockDevice => (
                Kind::BlockDevice,
                backing_of(sys_root, st.stx_rdev_major, st.stx_rdev_minor),
                (dev_id(st.stx_rdev_major, st.stx_rdev_minor), 0),
            ),
            FileType::RegularFile => (
                Kind::File,
                backing_of(sys_root, st.stx_dev_major, st.stx_dev_minor),
                (dev_id(st.stx_dev_major, st.stx_dev_minor), st.stx_ino),
            ),
            other => {
                return Err(Error::WrongFileType {
                    path: path.to_path_buf(),
                    found: format!("{other:?}"),
                    expected: "a regular file or a block device",
                })
            }
        };
        let size = match (&kind, &backing) {
            (Kind::BlockDevice, Some(b)) => b.block.size,
            (Kind::BlockDevice, None) => {
                block_size_ioctl(&fd).map_err(|e| Error::io("get the size of", path, e))?
            }
            (Kind::File, _) => st.stx_size,
        };
        let dio = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::DIOALIGN)
            && st.stx_dio_offset_align > 0;
        let align = if dio {
            u64::from(st.stx_dio_offset_align.max(st.stx_dio_mem_align))
        } else {
            backing.as_ref().map_or(512, |b| b.block.logical_block_size)
        }
        .max(512)
        .next_power_of_two();
        Ok(Endpoint {
            path: path.to_path_buf(),
            kind,
            fd,
            direct,
            size,
            align,
            identity,
            rdev: (kind == Kind::BlockDevice).then_some((st.stx_rdev_major, st.stx_rdev_minor)),
            backing,
            new_file: None,
        })
    }

    /// Give a new destination file its name (nothing for an existing one).
    pub(crate) fn name_new_file(&mut self) -> Result<()> {
        match &mut self.new_file {
            Some(n) => n.name(&self.fd),
            None => Ok(()),
        }
    }

    /// Whether this end is a file the copy is creating.
    #[cfg(test)]
    pub(crate) fn is_new(&self) -> bool {
        self.new_file.is_some()
    }

    /// The PCI function behind this end.
    pub fn pci(&self) -> Option<Bdf> {
        self.backing.as_ref().and_then(|b| b.pci)
    }

    pub fn numa_node(&self) -> Option<u32> {
        self.backing.as_ref().and_then(|b| b.numa_node)
    }

    /// A short description: `/dev/nvme1n1 (block device on 0000:03:00.0)`.
    pub fn describe_end(&self) -> String {
        let what = match self.kind {
            Kind::File => "file",
            Kind::BlockDevice => "block device",
        };
        let on = match &self.backing {
            Some(b) => match b.pci {
                Some(p) if self.kind == Kind::File => format!(" on {} ({p})", b.block.name),
                Some(p) => format!(" on {p}"),
                None => format!(" on {}", b.block.name),
            },
            None if self.kind == Kind::File => {
                " on a file system without a block device, e.g. tmpfs".into()
            }
            None => String::new(),
        };
        format!("{} ({what}{on})", self.path.display())
    }
}

/// Before a block device is opened as a destination: it must be asked for
/// (`--force-device`) and not in use (mounted, or holding a mounted
/// partition, or held by device mapper or md).
pub fn check_block_dst(
    path: &Path,
    sys_root: &Path,
    force: bool,
    count: u64,
    seek: u64,
) -> Result<()> {
    let Ok(st) = rustix::fs::stat(path) else {
        return Ok(());
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::BlockDevice {
        return Ok(());
    }
    if !force {
        return Err(super::Refusal::NeedsForceDevice {
            device: path.to_path_buf(),
            bytes: count,
            offset: seek,
        }
        .into());
    }
    let (major, minor) = (rustix::fs::major(st.st_rdev), rustix::fs::minor(st.st_rdev));
    if let Some(b) = backing_of(sys_root, major, minor) {
        let mountinfo = fs::read_to_string(sys_root.join("proc/self/mountinfo"))
            .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
            .unwrap_or_default();
        if let Some(why) = b.block.in_use(&mountinfo) {
            return Err(Error::InUse {
                device: path.to_path_buf(),
                detail: why,
            });
        }
    }
    Ok(())
}

/// BLKGETSIZE64 for block devices sysfs cannot describe.
fn block_size_ioctl(fd: &OwnedFd) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points
    // at a live local; the descriptor is open for the call's duration.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x8008_1272, &mut size as *mut u64) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_described_with_their_device() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, vec![7u8; 10_000]).unwrap();
        let e = Endpoint::open_src(&p, Path::new("/")).unwrap();
        assert_eq!(e.kind, Kind::File);
        assert_eq!(e.size, 10_000);
        assert!(e.align.is_power_of_two() && e.align >= 512);
        let d = Endpoint::open_dst(&dir.path().join("new"), Path::new("/")).unwrap();
        assert_eq!(d.size, 0, "created");
        assert!(
            d.is_new() && !dir.path().join("new").exists(),
            "not named yet"
        );
        assert_ne!(e.identity, d.identity);
        let again = Endpoint::open_src(&p, Path::new("/")).unwrap();
        assert_eq!(again.identity, e.identity);
        assert!(e.describe_end().contains("file"));
    }

    #[test]
    fn other_file_types_are_refused_with_the_path() {
        let e = Endpoint::open_src(Path::new("/dev/null"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/null") && e.contains("not a regular file"),
            "{e}"
        );
        let e = Endpoint::open_src(Path::new("/nonexistent/x"), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x"), "{e}");
    }

    #[test]
    fn pci_functions_are_found_on_sysfs_paths() {
        let p = Path::new(
            "/sys/devices/pci0000:00/0000:00:02.0/0000:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p1",
        );
        assert_eq!(pci_function_of(p), Some("0000:01:00.0".parse().unwrap()));
        assert_eq!(
            pci_function_of(Path::new("/sys/devices/virtual/block/loop0")),
            None
        );
    }
}
