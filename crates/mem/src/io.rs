//! CPU access to device memory: volatile and bounds-checked.
//!
//! Memory behind a PCI BAR is not RAM: it is uncached, a read may have side
//! effects or return all-ones when the device is gone, and the compiler must
//! not merge, elide or reorder accesses to it. So peerdma never hands it out
//! as `&[u8]`; [`IoMem`] is the only way to touch it, and every access is a
//! volatile load or store inside the mapped length.
//!
//! Two kinds of access, with two contracts:
//!
//! * **memory** ([`IoMem::read`], [`IoMem::write`], [`IoMem::fill`]): bytes
//!   at any offset and length, moved with 8-byte volatile accesses where the
//!   address is 8-byte aligned and single bytes at the edges. Fine for P2P
//!   memory (a BAR's DRAM), wrong for registers.
//! * **registers** ([`IoMem::read_u32`], [`IoMem::write_u32`] and the 8-,
//!   16- and 64-bit forms): exactly one volatile access of that width, as
//!   Rust-for-Linux's `Io::read32`. The address must be naturally aligned;
//!   a misaligned offset is an [`AccessError::Misaligned`], never split into
//!   bytes (a device register written byte by byte is a different write).
//!   Values are little-endian, as PCI registers are.
//!
//! An `IoMem` is neither `Send` nor `Sync`: it is a view for the thread that
//! made it. Several views of one mapping may exist (windows, or several
//! `io()` calls on the owner), and volatile accesses are not atomic, so
//! letting two threads use them would be a data race on memory that may be
//! ordinary RAM ([`IoMem::from_slice`]). To use a mapping on another thread,
//! move its owner there and make the view there.
//!
//! ```compile_fail
//! use peerdma_mem::IoMem;
//! let mut backing = [0u8; 64];
//! let io = IoMem::from_slice(&mut backing);
//! // `&IoMem` cannot be shared with another thread: two threads writing
//! // the same bytes with volatile stores would race.
//! std::thread::scope(|s| {
//!     s.spawn(|| io.write(0, &[1; 8]).unwrap());
//!     io.write(0, &[2; 8]).unwrap();
//! });
//! ```
//!
//! ```compile_fail
//! use peerdma_mem::IoMem;
//! let mut backing = [0u8; 64];
//! let io = IoMem::from_slice(&mut backing);
//! let window = io.window(0, 8).unwrap();
//! // Nor can a view move to another thread while another view of the
//! // same bytes stays here.
//! std::thread::scope(|s| {
//!     s.spawn(move || window.write(0, &[1; 8]).unwrap());
//!     io.write(0, &[2; 8]).unwrap();
//! });
//! ```
//!
//! Moving the owner of the memory and making the view on the other thread
//! is how a mapping is used elsewhere:
//!
//! ```
//! use peerdma_mem::IoMem;
//! let mut backing = [0u8; 64];
//! std::thread::scope(|s| {
//!     let mine = &mut backing;
//!     s.spawn(move || IoMem::from_slice(mine).write(0, &[1; 8]).unwrap());
//! });
//! assert_eq!(backing[..8], [1; 8]);
//! ```

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

/// Why a register access was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessError {
    /// The register lies (partly) outside the mapping.
    OutOfBounds(OutOfBounds),
    /// The register's address is not a multiple of its width, so it cannot
    /// be reached with one access of that width.
    Misaligned { offset: usize, width: usize },
}

impl fmt::Display for AccessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccessError::OutOfBounds(_) => write!(f, "register access refused"),
            AccessError::Misaligned { offset, width } => write!(
                f,
                "{}-bit register access at offset {offset:#x} is not {width}-byte aligned \
                 (a register is read or written in one access of its width, never split)",
                width * 8
            ),
        }
    }
}

impl std::error::Error for AccessError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AccessError::OutOfBounds(e) => Some(e),
            AccessError::Misaligned { .. } => None,
        }
    }
}

impl From<OutOfBounds> for AccessError {
    fn from(e: OutOfBounds) -> Self {
        AccessError::OutOfBounds(e)
    }
}

/// A window of device memory mapped into this process (or simulated).
///
/// It borrows the mapping for `'a`, so it cannot outlive it, and it stays
/// on the thread that made it (see the [module documentation](self)).
pub struct IoMem<'a> {
    ptr: NonNull<u8>,
    len: usize,
    // `*mut u8` makes the type neither Send nor Sync: views of one mapping
    // may alias, and volatile accesses from two threads would race.
    _mapping: PhantomData<(&'a mut [u8], *mut u8)>,
}

impl fmt::Debug for IoMem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoMem({:p}, {} bytes)", self.ptr, self.len)
    }
}

macro_rules! register_access {
    ($(#[$rdoc:meta])* $read:ident, $(#[$wdoc:meta])* $write:ident, $t:ty) => {
        $(#[$rdoc])*
        pub fn $read(&self, offset: usize) -> Result<$t, AccessError> {
            let p = self.register::<$t>(offset)?;
            // SAFETY: `register` checked that the whole value lies inside
            // the mapping and that `p` is aligned for `$t`; the mapping is
            // valid for volatile reads for 'a (from_raw's contract).
            Ok(<$t>::from_le(unsafe { std::ptr::read_volatile(p) }))
        }

        $(#[$wdoc])*
        pub fn $write(&self, offset: usize, value: $t) -> Result<(), AccessError> {
            let p = self.register::<$t>(offset)?;
            // SAFETY: as in the read: in bounds, aligned, valid for writes.
            unsafe { std::ptr::write_volatile(p, value.to_le()) };
            Ok(())
        }
    };
}

impl<'a> IoMem<'a> {
    /// Wrap a mapping of device memory.
    ///
    /// # Safety
    /// `ptr` must be valid for volatile reads and writes of `len` bytes for
    /// all of `'a` (for example an `mmap` of `p2pmem/allocate` that is not
    /// unmapped before `'a` ends); nothing may hold a Rust reference
    /// (`&[u8]`/`&mut [u8]`) to those bytes while this exists; and no other
    /// thread may access those bytes through this process while it exists
    /// (a device or the kernel writing them by DMA is outside this rule).
    pub unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> IoMem<'a> {
        IoMem {
            ptr,
            len,
            _mapping: PhantomData,
        }
    }

    /// Treat ordinary memory as device memory (simulated BARs, tests):
    /// exclusive borrow, so no `&[u8]` can coexist with it, and the view
    /// stays on this thread.
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

    /// The address of a naturally aligned register of type `T` at
    /// `offset`, checked to lie inside the mapping.
    fn register<T>(&self, offset: usize) -> Result<*mut T, AccessError> {
        let width = std::mem::size_of::<T>();
        self.check(offset, width)?;
        // SAFETY: offset + width <= len (checked), so the pointer stays
        // inside the mapping.
        let p = unsafe { self.ptr.as_ptr().add(offset) };
        if (p as usize) % width != 0 {
            return Err(AccessError::Misaligned { offset, width });
        }
        Ok(p.cast::<T>())
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
    /// 8-byte loads where aligned, single bytes at the edges (memory, not
    /// registers: use the register accessors for those).
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

    /// Copy `src` into device memory at `offset` with volatile stores:
    /// 8-byte stores where aligned, single bytes at the edges.
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

    register_access!(
        /// Read the 8-bit register at `offset`: one volatile load.
        read_u8,
        /// Write the 8-bit register at `offset`: one volatile store.
        write_u8,
        u8
    );
    register_access!(
        /// Read the little-endian 16-bit register at `offset` (2-byte
        /// aligned): one volatile load of 16 bits.
        read_u16,
        /// Write the little-endian 16-bit register at `offset` (2-byte
        /// aligned): one volatile store of 16 bits.
        write_u16,
        u16
    );
    register_access!(
        /// Read the little-endian 32-bit register at `offset` (4-byte
        /// aligned): one volatile load of 32 bits, as `readl`.
        read_u32,
        /// Write the little-endian 32-bit register at `offset` (4-byte
        /// aligned): one volatile store of 32 bits, as `writel`.
        write_u32,
        u32
    );
    register_access!(
        /// Read the little-endian 64-bit register at `offset` (8-byte
        /// aligned): one volatile load of 64 bits, as `readq`.
        read_u64,
        /// Write the little-endian 64-bit register at `offset` (8-byte
        /// aligned): one volatile store of 64 bits, as `writeq`.
        write_u64,
        u64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backing memory aligned for every register width.
    #[repr(C, align(8))]
    struct Aligned<const N: usize>([u8; N]);

    #[test]
    fn round_trip_at_every_alignment() {
        let mut backing = Aligned([0u8; 64]);
        let io = IoMem::from_slice(&mut backing.0);
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
        assert!(backing.0.iter().all(|&b| b == 0xff));
    }

    #[test]
    fn registers_are_little_endian_and_one_width() {
        let mut backing = Aligned([0u8; 32]);
        {
            let io = IoMem::from_slice(&mut backing.0);
            io.write_u8(1, 0xab).unwrap();
            io.write_u16(2, 0x1234).unwrap();
            io.write_u32(4, 0x0102_0304).unwrap();
            io.write_u64(8, 0x1122_3344_5566_7788).unwrap();
            assert_eq!(io.read_u8(1).unwrap(), 0xab);
            assert_eq!(io.read_u16(2).unwrap(), 0x1234);
            assert_eq!(io.read_u32(4).unwrap(), 0x0102_0304);
            assert_eq!(io.read_u64(8).unwrap(), 0x1122_3344_5566_7788);
        }
        assert_eq!(backing.0[1..4], [0xab, 0x34, 0x12]);
        assert_eq!(backing.0[4..8], [4, 3, 2, 1]);
        assert_eq!(backing.0[8], 0x88);
    }

    #[test]
    fn misaligned_registers_are_refused_not_split() {
        let mut backing = Aligned([0u8; 32]);
        {
            let io = IoMem::from_slice(&mut backing.0);
            for off in [1, 2, 3, 5, 6, 7] {
                assert_eq!(
                    io.write_u32(off, u32::MAX),
                    Err(AccessError::Misaligned {
                        offset: off,
                        width: 4
                    }),
                    "offset {off}"
                );
                assert!(io.read_u32(off).is_err(), "offset {off}");
            }
            assert!(matches!(
                io.write_u64(4, 1),
                Err(AccessError::Misaligned { width: 8, .. })
            ));
            assert!(matches!(
                io.read_u16(3),
                Err(AccessError::Misaligned { width: 2, .. })
            ));
            // Alignment is of the address, not of the offset in a window.
            let w = io.window(2, 16).unwrap();
            assert!(w.write_u32(2, 7).is_ok());
            assert!(w.write_u32(0, 7).is_err());
            let e = io.write_u32(6, 1).unwrap_err();
            assert!(e.to_string().contains("not 4-byte aligned"), "{e}");
        }
        assert_eq!(backing.0[..4], [0; 4], "nothing was written byte by byte");
        assert_eq!(backing.0[4..8], [7, 0, 0, 0]);
    }

    #[test]
    fn out_of_bounds_is_an_error_not_a_write() {
        let mut backing = Aligned([0u8; 16]);
        {
            let io = IoMem::from_slice(&mut backing.0);
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
            assert!(matches!(io.read_u32(16), Err(AccessError::OutOfBounds(_))));
            assert!(matches!(
                io.write_u64(usize::MAX - 3, 0),
                Err(AccessError::OutOfBounds(_))
            ));
            assert!(io.window(8, 9).is_err());
            {
                let w = io.window(8, 8).unwrap();
                w.write(0, &[9; 8]).unwrap();
                assert!(w.write(1, &[9; 8]).is_err());
            }
        }
        assert_eq!(&backing.0[..8], &[0; 8]);
        assert_eq!(&backing.0[8..], &[9; 8]);
    }
}
