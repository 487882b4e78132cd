//! Byte-exact copies through host memory with the CPU: the unaligned head
//! and tail of a copy (read-modify-write of the destination's blocks), and
//! the whole copy when source and destination offsets differ modulo the
//! O_DIRECT alignment.

use super::buffer::HostBuf;
use super::endpoint::Endpoint;
use super::ring::IoFailure;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub(crate) fn errno_failure(
    op: &'static str,
    path: &Path,
    offset: u64,
    e: std::io::Error,
) -> IoFailure {
    IoFailure {
        op,
        path: path.display().to_string(),
        offset,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// pread into host memory until `buf` is full or EOF; returns bytes read.
pub(crate) fn pread_full(
    ep: &Endpoint,
    buf: &mut [u8],
    off: u64,
) -> std::result::Result<usize, IoFailure> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pread(&ep.fd, &mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(errno_failure("read", &ep.path, off + done as u64, e.into())),
        }
    }
    Ok(done)
}

fn pwrite_full(ep: &Endpoint, buf: &[u8], off: u64) -> std::result::Result<(), IoFailure> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::io::pwrite(&ep.fd, &buf[done..], off + done as u64) {
            Ok(0) => {
                return Err(errno_failure(
                    "write",
                    &ep.path,
                    off + done as u64,
                    std::io::Error::from_raw_os_error(libc::EIO),
                ))
            }
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(errno_failure(
                    "write",
                    &ep.path,
                    off + done as u64,
                    e.into(),
                ))
            }
        }
    }
    Ok(())
}

/// Copies any range through host memory with a CPU copy, writing DST in
/// whole aligned blocks (read-modify-write at the edges). Used for the
/// head and tail, and for everything when the offsets are not congruent.
pub(crate) struct Shifter<'a> {
    pub src: &'a Endpoint,
    pub dst: &'a Endpoint,
    pub align: u64,
    /// Bytes per step.
    pub piece: u64,
    pub read_buf: HostBuf,
    pub write_buf: HostBuf,
}

impl Shifter<'_> {
    /// Copy `len` bytes from `src_off` to `dst_off`: the bytes in place
    /// from the start (all of them unless stopped or failed), and the
    /// failure that ended the copy early, if any.
    pub fn copy(
        &mut self,
        src_off: u64,
        dst_off: u64,
        len: u64,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(u64),
    ) -> (u64, Option<IoFailure>) {
        let align = self.align;
        if len == 0 {
            return (0, None);
        }
        let end = (dst_off + len).div_ceil(align) * align;
        let mut p0 = dst_off / align * align;
        let mut done = 0u64;
        while p0 < end {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let p1 = (p0 + self.piece).min(end);
            match self.piece(p0, p1, src_off, dst_off, len) {
                Ok(n) => done += n,
                Err(e) => return (done, Some(e)),
            }
            progress(done);
            p0 = p1;
        }
        (done, None)
    }

    /// One piece: DST's aligned `[p0, p1)`, of which the copy's bytes are
    /// written and the rest kept. Returns the copy's bytes in it.
    fn piece(
        &mut self,
        p0: u64,
        p1: u64,
        src_off: u64,
        dst_off: u64,
        len: u64,
    ) -> std::result::Result<u64, IoFailure> {
        let (src, dst, align) = (self.src, self.dst, self.align);
        let o0 = p0.max(dst_off);
        let o1 = p1.min(dst_off + len);
        let wbuf = &mut self.write_buf.as_mut_slice()[..(p1 - p0) as usize];
        if o0 > p0 || o1 < p1 {
            // Partial block(s): keep DST's other bytes (zeros past its end).
            let got = pread_full(dst, wbuf, p0)?;
            wbuf[got..].fill(0);
        }
        let s0 = o0 - dst_off + src_off;
        let s1 = o1 - dst_off + src_off;
        let a0 = s0 / align * align;
        let a1 = s1.div_ceil(align) * align;
        let rbuf = &mut self.read_buf.as_mut_slice()[..(a1 - a0) as usize];
        let got = pread_full(src, rbuf, a0)? as u64;
        if got < s1 - a0 {
            return Err(errno_failure(
                "read",
                &src.path,
                a0 + got,
                std::io::Error::from_raw_os_error(libc::ENODATA),
            ));
        }
        wbuf[(o0 - p0) as usize..(o1 - p0) as usize]
            .copy_from_slice(&rbuf[(s0 - a0) as usize..(s1 - a0) as usize]);
        pwrite_full(dst, wbuf, p0)?;
        Ok(o1 - o0)
    }
}
