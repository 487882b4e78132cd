//! `--verify`: blake3 of both ends' ranges, and where they first differ.

use super::buffer::HostBuf;
use super::endpoint::Endpoint;
use super::ring::IoFailure;
use super::shift::{errno_failure, pread_full};

/// blake3 of `[off, off+len)` of an end, and the bytes for comparison.
pub(crate) fn hash_range(
    ep: &Endpoint,
    off: u64,
    len: u64,
    align: u64,
    buf: &mut HostBuf,
) -> std::result::Result<blake3::Hash, IoFailure> {
    let mut h = blake3::Hasher::new();
    let piece = (buf.len() as u64 / align * align).max(align);
    let mut pos = off;
    while pos < off + len {
        let want_end = (pos + piece - align).min(off + len);
        let a0 = pos / align * align;
        let a1 = want_end.div_ceil(align) * align;
        let b = &mut buf.as_mut_slice()[..(a1 - a0) as usize];
        let got = pread_full(ep, b, a0)? as u64;
        if got < want_end - a0 {
            return Err(errno_failure(
                "read",
                &ep.path,
                a0 + got,
                std::io::Error::from_raw_os_error(libc::ENODATA),
            ));
        }
        h.update(&b[(pos - a0) as usize..(want_end - a0) as usize]);
        pos = want_end;
    }
    Ok(h.finalize())
}

pub(crate) fn first_difference(
    src: &Endpoint,
    s_off: u64,
    dst: &Endpoint,
    d_off: u64,
    len: u64,
    align: u64,
) -> Option<u64> {
    let piece = 1u64 << 20;
    let mut a = HostBuf::new((piece + 2 * align) as usize, None).ok()?;
    let mut b = HostBuf::new((piece + 2 * align) as usize, None).ok()?;
    let mut pos = 0;
    while pos < len {
        let n = (len - pos).min(piece);
        let read = |ep: &Endpoint, off: u64, buf: &mut HostBuf| -> Option<Vec<u8>> {
            let a0 = off / align * align;
            let a1 = (off + n).div_ceil(align) * align;
            let s = &mut buf.as_mut_slice()[..(a1 - a0) as usize];
            let got = pread_full(ep, s, a0).ok()? as u64;
            (got >= off + n - a0).then(|| s[(off - a0) as usize..(off + n - a0) as usize].to_vec())
        };
        let x = read(src, s_off + pos, &mut a)?;
        let y = read(dst, d_off + pos, &mut b)?;
        if let Some(i) = x.iter().zip(&y).position(|(p, q)| p != q) {
            return Some(pos + i as u64);
        }
        pos += n;
    }
    None
}
