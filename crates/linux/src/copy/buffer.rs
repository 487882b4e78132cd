//! Copy buffers: host memory (page aligned, huge pages when the kernel has
//! them, placed on the devices' NUMA node) or P2P memory of a provider.

use crate::p2pmem::P2pMem;
use crate::{Error, Result};
use rustix::mm::{Advice, MapFlags, ProtFlags};
use serde::Serialize;
use std::ptr::NonNull;

const HUGE: usize = 2 << 20;

/// How the host buffer's pages are backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pages {
    /// Reserved huge pages (MAP_HUGETLB).
    Hugetlb,
    /// Transparent huge pages requested (madvise).
    TransparentHuge,
    /// Base pages.
    Base,
}

/// Anonymous host memory owned by the copy.
#[derive(Debug)]
pub struct HostBuf {
    ptr: NonNull<u8>,
    len: usize,
    pub pages: Pages,
    /// The NUMA node the pages were bound to, if binding worked.
    pub node: Option<u32>,
}

// SAFETY: the mapping is owned exclusively by this value; moving it across
// threads does not change its validity.
unsafe impl Send for HostBuf {}

fn map_anon(len: usize, extra: MapFlags) -> rustix::io::Result<*mut core::ffi::c_void> {
    // SAFETY: a fresh anonymous mapping with no address hint replaces
    // nothing; the kernel checks the length and flags.
    unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE | extra,
        )
    }
}

impl HostBuf {
    /// `len` bytes (rounded up to whole pages), preferably on `node`.
    pub fn new(len: usize, node: Option<u32>) -> Result<HostBuf> {
        let page = peerdma_mem::PAGE_SIZE as usize;
        let len = len.max(page).div_ceil(page) * page;
        let huge_len = len.div_ceil(HUGE) * HUGE;
        let (ptr, len, pages) = match map_anon(huge_len, MapFlags::HUGETLB) {
            Ok(p) if len >= HUGE => (p, huge_len, Pages::Hugetlb),
            other => {
                if let Ok(p) = other {
                    // SAFETY: unmapping exactly what was mapped just above.
                    let _ = unsafe { rustix::mm::munmap(p, huge_len) };
                }
                let p = map_anon(len, MapFlags::empty()).map_err(|e| Error::Alloc {
                    what: "a copy buffer",
                    bytes: len as u64,
                    source: e.into(),
                })?;
                // SAFETY: advice on our own fresh mapping.
                let thp = unsafe { rustix::mm::madvise(p, len, Advice::LinuxHugepage) }.is_ok();
                (
                    p,
                    len,
                    if thp {
                        Pages::TransparentHuge
                    } else {
                        Pages::Base
                    },
                )
            }
        };
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::Alloc {
            what: "a copy buffer",
            bytes: len as u64,
            source: std::io::Error::other("mmap returned NULL"),
        })?;
        let bound = node.filter(|&n| bind_preferred(ptr.as_ptr(), len, n));
        Ok(HostBuf {
            ptr,
            len,
            pages,
            node: bound,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The bytes (host memory: the CPU may read and write them).
    #[cfg(test)]
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: a live private mapping of `len` bytes owned by `self`;
        // the borrow of `self` prevents concurrent mutation through us, and
        // the copy engine only hands the pointer to the kernel while no
        // slice is borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn raw(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`; no slice outlives self.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Prefer `node` for the pages of `[ptr, ptr+len)` (mbind MPOL_PREFERRED).
/// False when the kernel has no NUMA support or refuses.
fn bind_preferred(ptr: *mut u8, len: usize, node: u32) -> bool {
    if node >= 64 {
        return false;
    }
    const MPOL_PREFERRED: libc::c_long = 1;
    let mask: libc::c_ulong = 1 << node;
    // SAFETY: mbind reads one unsigned long of node mask through the
    // pointer (maxnode 64 + 1 bits), and only changes the placement policy
    // of our own mapping.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            ptr as libc::c_ulong,
            len as libc::c_ulong,
            MPOL_PREFERRED,
            &mask as *const libc::c_ulong,
            65 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    r == 0
}

/// The memory the copy moves data through.
#[derive(Debug)]
pub enum Staging {
    Host(HostBuf),
    P2p(P2pMem),
}

impl Staging {
    pub fn len(&self) -> usize {
        match self {
            Staging::Host(h) => h.len(),
            Staging::P2p(p) => p.len(),
        }
    }

    /// Base address for the kernel (never dereferenced by Rust for P2P).
    pub(crate) fn raw(&self) -> *mut u8 {
        match self {
            Staging::Host(h) => h.raw(),
            Staging::P2p(p) => p.dma_ptr(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_buffers_are_aligned_and_usable() {
        let mut b = HostBuf::new(3 << 20, Some(0)).unwrap();
        assert_eq!(b.raw() as usize % 4096, 0);
        assert!(b.len() >= 3 << 20);
        b.as_mut_slice()[..4].copy_from_slice(b"peer");
        assert_eq!(&b.as_slice()[..4], b"peer");
        let small = HostBuf::new(1, None).unwrap();
        assert_eq!(small.len(), 4096);
        assert_ne!(
            small.pages,
            Pages::Hugetlb,
            "a page is not worth a huge page"
        );
    }
}
