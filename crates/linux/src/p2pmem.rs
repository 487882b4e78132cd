//! Peer-to-peer memory from a provider's BAR, allocated from user space.
//!
//! Since Linux 6.2 a provider that publishes its memory
//! (`pci_p2pmem_publish`) has `/sys/bus/pci/devices/<bdf>/p2pmem/allocate`:
//! `mmap` it `MAP_SHARED` at offset 0 and the kernel allocates that many
//! bytes from the provider's pool and maps them (the kernel refuses private
//! mappings and non-zero offsets with `EINVAL`). The memory goes back to
//! the pool when the mapping goes away. Such a mapping can be handed to
//! `O_DIRECT` I/O: the block layer pins the pages with `FOLL_PCI_P2PDMA`
//! and the drive DMAs straight into the BAR (or refuses with `EREMOTEIO`).
//!
//! The CPU touches it only through [`IoMem`] (DESIGN.md, rule 1): it is a
//! BAR, uncached, and not RAM.

use crate::{Error, Result};
use peerdma_mem::{format_size, Bdf, IoMem, PAGE_SIZE};
use rustix::mm::{MapFlags, ProtFlags};
use std::fs;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// What a provider's `p2pmem/` directory says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct P2pMemInfo {
    pub size: u64,
    pub available: u64,
    pub published: bool,
}

fn read_u64(path: &Path) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    text.trim().parse().map_err(|_| Error::Malformed {
        origin: path.display().to_string(),
        detail: format!("expected a number, found {:?}", text.trim()),
    })
}

/// `sys/bus/pci/devices/<bdf>/p2pmem` under `sys_root`.
pub fn p2pmem_dir(sys_root: &Path, bdf: Bdf) -> PathBuf {
    sys_root
        .join("sys/bus/pci/devices")
        .join(bdf.to_string())
        .join("p2pmem")
}

/// Read a provider's `p2pmem/{size,available,published}`.
pub fn info(sys_root: &Path, bdf: Bdf) -> Result<P2pMemInfo> {
    let dir = p2pmem_dir(sys_root, bdf);
    if !dir.is_dir() {
        return Err(Error::NoP2pMem {
            bdf,
            detail: format!(
                "{} does not exist (the driver registered no P2P memory: \
                 for NVMe, a controller memory buffer with WDS and RDS)",
                dir.display()
            ),
        });
    }
    Ok(P2pMemInfo {
        size: read_u64(&dir.join("size"))?,
        available: read_u64(&dir.join("available"))?,
        published: read_u64(&dir.join("published"))? != 0,
    })
}

/// A mapping of P2P memory. Unmapped (and given back to the provider's
/// pool) on drop.
#[derive(Debug)]
pub struct P2pMem {
    ptr: NonNull<u8>,
    len: usize,
    provider: Bdf,
    path: PathBuf,
}

// SAFETY: the mapping is owned by this value and only reached through
// IoMem's volatile accessors or handed to the kernel as a raw pointer;
// neither depends on the thread.
unsafe impl Send for P2pMem {}

impl P2pMem {
    /// Allocate `len` bytes of `provider`'s published P2P memory by mapping
    /// its `p2pmem/allocate` under `sys_root` (`/` on a live machine).
    pub fn allocate(sys_root: &Path, provider: Bdf, len: usize) -> Result<P2pMem> {
        let inf = info(sys_root, provider)?;
        if !inf.published {
            return Err(Error::NoP2pMem {
                bdf: provider,
                detail: format!(
                    "its P2P memory ({}) is not published (p2pmem/published is 0): \
                     the driver keeps it for itself",
                    format_size(inf.size)
                ),
            });
        }
        if len as u64 > inf.available {
            return Err(Error::NoP2pMem {
                bdf: provider,
                detail: format!(
                    "{} requested, {} of {} available",
                    format_size(len as u64),
                    format_size(inf.available),
                    format_size(inf.size)
                ),
            });
        }
        let path = p2pmem_dir(sys_root, provider).join("allocate");
        Self::map(&path, provider, len)
    }

    /// Map `len` bytes of the file at `path` shared, at offset 0, read and
    /// write. (A regular file works too: that is how the tests exercise
    /// this code without a P2P provider.)
    pub fn map(path: &Path, provider: Bdf, len: usize) -> Result<P2pMem> {
        if len == 0 || len as u64 % PAGE_SIZE != 0 {
            return Err(Error::bad(format!(
                "P2P memory is allocated in pages: {len} bytes is not a non-zero multiple of {PAGE_SIZE}"
            )));
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        // SAFETY: a fresh mapping (no address hint, so nothing existing is
        // replaced) of an open file; the kernel validates length, offset and
        // flags and returns an error rather than a bad pointer.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &file,
                0,
            )
        }
        .map_err(|e| Error::io("mmap", path, e.into()))?;
        // The mapping outlives the descriptor.
        drop(file);
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| Error::io("mmap", path, std::io::Error::other("mmap returned NULL")))?;
        Ok(P2pMem {
            ptr,
            len,
            provider,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn provider(&self) -> Bdf {
        self.provider
    }

    /// The file that was mapped.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CPU access: volatile and bounds-checked.
    pub fn io(&self) -> IoMem<'_> {
        // SAFETY: `ptr` is a live mapping of `len` bytes until `self` is
        // dropped, which the returned borrow prevents; this type never
        // creates a Rust reference to the bytes.
        unsafe { IoMem::from_raw(self.ptr, self.len) }
    }

    /// The mapping's address, for handing to the kernel as an I/O buffer
    /// (`pread`/`pwrite` on an `O_DIRECT` file). Never dereferenced here.
    pub(crate) fn dma_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for P2pMem {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // IoMem borrowed from `self` can outlive this call.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bdf() -> Bdf {
        "0000:03:00.0".parse().unwrap()
    }

    /// A fake provider whose `allocate` is a regular file of `file_len` bytes.
    fn provider(size: u64, available: u64, published: u8, file_len: u64) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let dir = p2pmem_dir(t.path(), bdf());
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("size"), format!("{size}\n")).unwrap();
        fs::write(dir.join("available"), format!("{available}\n")).unwrap();
        fs::write(dir.join("published"), format!("{published}\n")).unwrap();
        let f = fs::File::create(dir.join("allocate")).unwrap();
        f.set_len(file_len).unwrap();
        t
    }

    #[test]
    fn maps_and_accesses_through_iomem_only() {
        let t = provider(1 << 20, 1 << 20, 1, 16384);
        let m = P2pMem::allocate(t.path(), bdf(), 16384).unwrap();
        assert_eq!((m.len(), m.provider()), (16384, bdf()));
        let io = m.io();
        io.write(8, b"peerdma").unwrap();
        assert!(io.write(16380, b"too long").is_err(), "bounds-checked");
        let mut back = [0u8; 7];
        io.read(8, &mut back).unwrap();
        assert_eq!(&back, b"peerdma");
        drop(m);
        // MAP_SHARED: the bytes reached the file.
        let data = fs::read(p2pmem_dir(t.path(), bdf()).join("allocate")).unwrap();
        assert_eq!(&data[8..15], b"peerdma");
    }

    #[test]
    fn refuses_bad_sizes_before_mapping() {
        let t = provider(1 << 20, 8192, 1, 16384);
        let e = P2pMem::allocate(t.path(), bdf(), 100).unwrap_err();
        assert!(
            e.to_string().contains("not a non-zero multiple of 4096"),
            "{e}"
        );
        let e = P2pMem::allocate(t.path(), bdf(), 0).unwrap_err();
        assert!(e.to_string().contains("not a non-zero multiple"), "{e}");
        let e = P2pMem::allocate(t.path(), bdf(), 16384).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0000:03:00.0 has no P2P memory: 16 KiB requested, 8 KiB of 1 MiB available"
        );
    }

    #[test]
    fn unpublished_or_missing_p2pmem_is_named() {
        let t = provider(1 << 20, 1 << 20, 0, 4096);
        let e = P2pMem::allocate(t.path(), bdf(), 4096).unwrap_err();
        assert!(e.to_string().contains("is not published"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = P2pMem::allocate(empty.path(), bdf(), 4096).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("0000:03:00.0 has no P2P memory: ")
                && e.to_string().contains("p2pmem does not exist"),
            "{e}"
        );
    }

    #[test]
    fn mmap_errors_carry_errno_and_path() {
        // /dev/null cannot be mapped: ENODEV.
        let e = P2pMem::map(Path::new("/dev/null"), bdf(), 4096).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
        assert!(
            e.to_string().starts_with("cannot mmap /dev/null: ENODEV"),
            "{e}"
        );
        let e = P2pMem::map(Path::new("/nonexistent/allocate"), bdf(), 4096).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        // A directory cannot even be opened for writing.
        let d = tempfile::tempdir().unwrap();
        let e = P2pMem::map(d.path(), bdf(), 4096).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EISDIR), "{e}");
    }
}
