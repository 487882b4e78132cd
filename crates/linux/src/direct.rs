//! `O_DIRECT` I/O on a block device, to and from host memory or P2P memory.
//!
//! With `O_DIRECT` the block layer hands the user buffer's pages to the
//! driver, so the drive DMAs straight into (or out of) that buffer. When the
//! buffer is P2P memory ([`P2pMem`]), that DMA is a peer-to-peer transfer:
//! the kernel maps it by bus address, through the host bridge, or refuses
//! with `EREMOTEIO` when the pair is not supported.

use crate::p2pmem::P2pMem;
use crate::{Error, Result};
use peerdma_mem::PAGE_SIZE;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Host memory aligned to a page, as `O_DIRECT` wants. Safe code only: a
/// `Vec` one page longer than needed, used from its first aligned byte.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes starting on a page boundary.
    pub fn zeroed(len: usize) -> AlignedBuf {
        let align = PAGE_SIZE as usize;
        let storage = vec![0u8; len + align];
        let addr = storage.as_ptr() as usize;
        let start = (align - addr % align) % align;
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// A block device opened `O_RDWR | O_DIRECT | O_EXCL`: the exclusive open
/// fails with `EBUSY` while anything (a mounted file system, device
/// mapper, md) holds the device.
pub struct DirectDev {
    fd: OwnedFd,
    path: PathBuf,
}

/// The outcome of one transfer's system call.
fn io_err(action: &'static str, path: &Path, e: io::Error) -> Error {
    Error::io(action, path, e)
}

impl DirectDev {
    pub fn open(path: &Path) -> Result<DirectDev> {
        let fd = rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::DIRECT | OFlags::EXCL | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err("open (O_RDWR|O_DIRECT|O_EXCL)", path, e.into()))?;
        Ok(DirectDev {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read `buf.len()` bytes at `offset` into host memory.
    pub fn read_into(&self, buf: &mut AlignedBuf, offset: u64) -> Result<()> {
        let s = buf.as_mut_slice();
        let mut done = 0;
        while done < s.len() {
            match rustix::io::pread(self.fd.as_fd(), &mut s[done..], offset + done as u64) {
                Ok(0) => return Err(self.short("pread", offset, done, s.len())),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_err("pread", &self.path, e.into())),
            }
        }
        Ok(())
    }

    /// Write `buf` at `offset` from host memory.
    pub fn write_from(&self, buf: &AlignedBuf, offset: u64) -> Result<()> {
        let s = buf.as_slice();
        let mut done = 0;
        while done < s.len() {
            match rustix::io::pwrite(self.fd.as_fd(), &s[done..], offset + done as u64) {
                Ok(0) => return Err(self.short("pwrite", offset, done, s.len())),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io_err("pwrite", &self.path, e.into())),
            }
        }
        Ok(())
    }

    /// Read `mem.len()` bytes at `offset` straight into P2P memory: the
    /// drive DMA-writes the provider's BAR.
    pub fn read_into_p2p(&self, mem: &P2pMem, offset: u64) -> Result<()> {
        self.raw_io(false, mem, offset)
    }

    /// Write `mem.len()` bytes of P2P memory at `offset`: the drive
    /// DMA-reads the provider's BAR.
    pub fn write_from_p2p(&self, mem: &P2pMem, offset: u64) -> Result<()> {
        self.raw_io(true, mem, offset)
    }

    fn raw_io(&self, write: bool, mem: &P2pMem, offset: u64) -> Result<()> {
        let base = mem.dma_ptr();
        let len = mem.len();
        let name = if write { "pwrite" } else { "pread" };
        let mut done = 0usize;
        while done < len {
            let off = libc::off_t::try_from(offset + done as u64)
                .map_err(|_| Error::bad(format!("offset {offset:#x} is too large")))?;
            // SAFETY: `base + done .. base + len` lies inside the live
            // mapping that `mem` owns and the borrow of `mem` keeps mapped
            // for the whole call. The kernel, not Rust, reads or writes the
            // bytes (by DMA for O_DIRECT); no Rust reference to them exists.
            let n = unsafe {
                let p = base.add(done).cast::<libc::c_void>();
                if write {
                    libc::pwrite(self.fd.as_raw_fd(), p, len - done, off)
                } else {
                    libc::pread(self.fd.as_raw_fd(), p, len - done, off)
                }
            };
            match n {
                0 => return Err(self.short(name, offset, done, len)),
                n if n > 0 => done += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(io_err(name, &self.path, e));
                    }
                }
            }
        }
        Ok(())
    }

    fn short(&self, what: &'static str, offset: u64, done: usize, len: usize) -> Error {
        Error::ShortIo {
            op: what,
            path: self.path.clone(),
            offset,
            done,
            len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_mem::Bdf;

    #[test]
    fn aligned_buffers_are_page_aligned() {
        for len in [0, 1, 4096, 10_000] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().as_ptr() as usize % 4096, 0);
            assert_eq!(b.len(), len);
            b.as_mut_slice().fill(7);
            assert!(b.as_slice().iter().all(|&x| x == 7));
        }
    }

    /// The raw-pointer path, with a mapped regular file standing in for P2P
    /// memory and a regular file for the drive (no O_DIRECT on tmpfs, so
    /// the DirectDev is built by hand).
    #[test]
    fn raw_io_moves_bytes_between_a_mapping_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let mem_path = dir.path().join("allocate");
        std::fs::File::create(&mem_path)
            .unwrap()
            .set_len(8192)
            .unwrap();
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        let mem = P2pMem::map(&mem_path, bdf, 8192).unwrap();
        let disk_path = dir.path().join("disk");
        let data: Vec<u8> = (0..3 * 8192).map(|i| (i % 251) as u8).collect();
        std::fs::write(&disk_path, &data).unwrap();
        let fd = rustix::fs::open(&disk_path, OFlags::RDWR, Mode::empty()).unwrap();
        let dev = DirectDev {
            fd,
            path: disk_path.clone(),
        };

        dev.read_into_p2p(&mem, 8192).unwrap();
        let mut got = vec![0u8; 8192];
        mem.io().read(0, &mut got).unwrap();
        assert_eq!(&got[..], &data[8192..16384]);

        mem.io().fill(0, 8192, 0x5a).unwrap();
        dev.write_from_p2p(&mem, 0).unwrap();
        let mut back = AlignedBuf::zeroed(8192);
        dev.read_into(&mut back, 0).unwrap();
        assert!(back.as_slice().iter().all(|&b| b == 0x5a));

        // Past the end: a clear error, not a hang or a partial success.
        let e = dev.read_into_p2p(&mem, 3 * 8192 - 4096).unwrap_err();
        assert!(
            e.to_string().contains("end of device after 4096 of 8192"),
            "{e}"
        );
        assert!(dev.write_from(&back, 0).is_ok());
    }

    #[test]
    fn open_errors_name_the_device() {
        let e = DirectDev::open(Path::new("/nonexistent/nvme0n1"))
            .err()
            .unwrap();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e
            .to_string()
            .starts_with("cannot open (O_RDWR|O_DIRECT|O_EXCL) /nonexistent/nvme0n1"));
    }
}
