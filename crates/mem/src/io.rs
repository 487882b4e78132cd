//! CPU access to device memory: volatile and bounds-checked.
//!
//! Memory behind a PCI BAR is not RAM: it is uncached, a read may have side
//! effects or return all-ones when the device is gone, and the compiler must
//! not merge, elide or reorder accesses to it. So peerdma never hands it out
//! as `&[u8]`; [`IoMem`] is the only way to touch it, and every access is a
//! volatile load or store inside the mapped length.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// An access outside the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds {
    pub offset: usize,
    pub len: usize,
    pub size: usize,
}

impl fmt::Display for OutOfBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "access of {} bytes at offset {:#x} is outside the {}-byte device memory mapping",
            self.len, self.offset, self.size
        )
    }
}

impl std::error::Error for OutOfBounds {}

/// A window of device memory mapped into this process (or simulated).
///
/// It borrows the mapping for `'a`, so it cannot outlive it.
pub struct IoMem<'a> {
    ptr: NonNull<u8>,
    len: usize,
    _mapping: PhantomData<&'a mut [u8]>,
}

// SAFETY: IoMem only performs volatile accesses through a raw pointer that
// the creator promised is valid for `len` bytes for `'a`; moving it to
// another thread does not change that. Concurrent volatile accesses to
// device memory are what hardware sees anyway (there is no Rust reference
// to the bytes, so no aliasing rule is involved).
unsafe impl Send for IoMem<'_> {}
// SAFETY: as above; `&IoMem` only allows volatile reads and writes.
unsafe impl Sync for IoMem<'_> {}

impl fmt::Debug for IoMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoMem({:p}, {} bytes)", self.ptr, self.len)
    }
}

impl<'a> IoMem<'a> {
    /// Wrap a mapping of device memory.
    ///
    /// # Safety
    /// `ptr` must be valid for volatile reads and writes of `len` bytes for
    /// all of `'a` (for example an `mmap` of `p2pmem/allocate` that is not
    /// unmapped before `'a` ends), and nothing may hold a Rust reference
    /// (`&[u8]`/`&mut [u8]`) to those bytes while this exists.
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> IoMem<'a> {
        IoMem {
            ptr,
            len,
            _mapping: PhantomData,
        }
    }

    /// Treat ordinary memory as device memory (simulated BARs, tests):
    /// exclusive borrow, so no `&[u8]` can coexist with it.
    pub fn from_slice(mem: &'a mut [u8]) -> IoMem<'a> {
        let len = mem.len();
        // SAFETY: the exclusive borrow is valid for 'a and held by the
        // PhantomData, so no other reference exists while IoMem lives.
        unsafe {
            IoMem::from_raw(
                NonNull::new(mem.as_mut_ptr()).unwrap_or(NonNull::dangling()),
                len,
            )
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), OutOfBounds> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// A sub-window `[offset, offset + len)`.
    pub fn window(&self, offset: usize, len: usize) -> Result<IoMem<'_>, OutOfBounds> {
        self.check(offset, len)?;
        // SAFETY: the sub-range lies inside the checked mapping and the
        // borrow of `self` keeps it alive.
        Ok(unsafe { IoMem::from_raw(NonNull::new_unchecked(self.ptr.as_ptr().add(offset)), len) })
    }

    /// Copy device memory at `offset` into `dst` with volatile loads:
    /// 8-byte loads where aligned, single bytes at the edges.
    pub fn read(&self, offset: usize, dst: &mut [u8]) -> Result<(), OutOfBounds> {
        self.check(offset, dst.len())?;
        let base = self.ptr.as_ptr();
        let mut i = 0;
        while i < dst.len() {
            // SAFETY: offset + i < offset + dst.len() <= self.len (checked).
            let p = unsafe { base.add(offset + i) };
            if (p as usize) % 8 == 0 && dst.len() - i >= 8 {
                // SAFETY: p is 8-byte aligned and 8 bytes remain in bounds.
                let v = unsafe { std::ptr::read_volatile(p as *const u64) };
                dst[i..i + 8].copy_from_slice(&v.to_ne_bytes());
                i += 8;
            } else {
                // SAFETY: p is in bounds.
                dst[i] = unsafe { std::ptr::read_volatile(p) };
                i += 1;
            }
        }
        Ok(())
    }

    /// Copy `src` into device memory at `offset` with volatile stores.
    pub fn write(&self, offset: usize, src: &[u8]) -> Result<(), OutOfBounds> {
        self.check(offset, src.len())?;
        let base = self.ptr.as_ptr();
        let mut i = 0;
        while i < src.len() {
            // SAFETY: in bounds, as in `read`.
            let p = unsafe { base.add(offset + i) };
            if (p as usize) % 8 == 0 && src.len() - i >= 8 {
                let mut w = [0u8; 8];
                w.copy_from_slice(&src[i..i + 8]);
                // SAFETY: p is 8-byte aligned and 8 bytes remain in bounds.
                unsafe { std::ptr::write_volatile(p as *mut u64, u64::from_ne_bytes(w)) };
                i += 8;
            } else {
                // SAFETY: p is in bounds.
                unsafe { std::ptr::write_volatile(p, src[i]) };
                i += 1;
            }
        }
        Ok(())
    }

    /// Fill `[offset, offset + len)` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<(), OutOfBounds> {
        self.check(offset, len)?;
        let chunk = [byte; 256];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len());
            self.write(offset + done, &chunk[..n])?;
            done += n;
        }
        Ok(())
    }

    pub fn read_u32(&self, offset: usize) -> Result<u32, OutOfBounds> {
        let mut b = [0u8; 4];
        self.read(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    pub fn write_u32(&self, offset: usize, v: u32) -> Result<(), OutOfBounds> {
        self.write(offset, &v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_every_alignment() {
        let mut backing = vec![0u8; 64];
        let io = IoMem::from_slice(&mut backing);
        for off in 0..9 {
            for len in 0..40 {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + off) as u8).collect();
                io.write(off, &data).unwrap();
                let mut back = vec![0u8; len];
                io.read(off, &mut back).unwrap();
                assert_eq!(back, data, "off {off} len {len}");
            }
        }
        io.write_u32(4, 0xdead_beef).unwrap();
        assert_eq!(io.read_u32(4).unwrap(), 0xdead_beef);
        io.fill(0, 64, 0xff).unwrap();
        assert_eq!(io.read_u32(60).unwrap(), u32::MAX);
        assert!(backing.iter().all(|&b| b == 0xff));
    }

    #[test]
    fn out_of_bounds_is_an_error_not_a_write() {
        let mut backing = vec![0u8; 16];
        let io = IoMem::from_slice(&mut backing);
        let e = io.write(10, &[1; 7]).unwrap_err();
        assert_eq!(
            e,
            OutOfBounds {
                offset: 10,
                len: 7,
                size: 16
            }
        );
        assert!(e.to_string().contains("outside the 16-byte"));
        assert!(
            io.read(usize::MAX, &mut [0; 2]).is_err(),
            "overflow is caught"
        );
        assert!(io.window(8, 9).is_err());
        {
            let w = io.window(8, 8).unwrap();
            w.write(0, &[9; 8]).unwrap();
            assert!(w.write(1, &[9; 8]).is_err());
        }
        assert_eq!(&backing[..8], &[0; 8]);
        assert_eq!(&backing[8..], &[9; 8]);
    }
}
