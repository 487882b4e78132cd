//! `peerdma copy SRC DST`: move bytes between files and block devices by
//! the best path the machine allows.
//!
//! When both ends are PCI devices that can reach a published P2P memory
//! provider (chosen like the kernel's `pci_p2pmem_find_many`, or named with
//! `--via`), the staging buffer is that provider's memory and both DMAs are
//! peer to peer. Otherwise the buffer is host memory on the devices' NUMA
//! node and the data bounces through it (DESIGN.md rule 3) — unless
//! `--no-bounce` asks for an error naming the pair and the reason. Every
//! copy reports the path it took (rule 4), and `--verify` hashes both ends.
//!
//! If the kernel refuses a P2P DMA anyway (`EREMOTEIO`), the copy goes on
//! from the first incomplete chunk through host memory and says so
//! (`fallback`). peerdma's verdicts are the kernel's, so this only happens
//! when they are bypassed: [`CopyOptions::unchecked_via`] (or
//! `PEERDMA_COPY_UNCHECKED_VIA=1` in the environment) tries `--via`'s
//! memory without holding it to peerdma's verdict, which is how the QEMU
//! scenarios exercise the fallback against a real kernel.

pub mod buffer;
pub mod endpoint;
mod ring;

pub use ring::{IoFailure, MAX_CHUNK};

use crate::p2pmem::{self, P2pMem};
use crate::{Error, Result};
use buffer::{HostBuf, Pages, Staging};
use endpoint::{Endpoint, Kind};
use peerdma_mem::{format_size, Bdf, PAGE_SIZE};
use peerdma_p2p::{calc_map_type_and_dist, explain, find_many, MapType};
use peerdma_pci::{Source, Topology};
use ring::Body;
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub src: PathBuf,
    pub dst: PathBuf,
    /// Bytes to skip at the start of SRC.
    pub skip: u64,
    /// Bytes to skip at the start of DST.
    pub seek: u64,
    /// Bytes to copy (default: the rest of SRC).
    pub count: Option<u64>,
    pub chunk: u64,
    pub depth: usize,
    /// Use this provider's P2P memory.
    pub via: Option<String>,
    /// Fail instead of bouncing through host memory.
    pub no_bounce: bool,
    /// Allow writing to a block device.
    pub force_device: bool,
    /// Hash both ends afterwards.
    pub verify: bool,
    /// Flush DST to stable storage at the end (fdatasync).
    pub fsync: bool,
    /// Where sysfs is (`/` on a live machine).
    pub sys_root: PathBuf,
}

/// `PEERDMA_COPY_UNCHECKED_VIA=1` in the environment: stage through
/// `--via` even where peerdma's verdict says a drive cannot reach it, and
/// let the kernel decide: it refuses with EREMOTEIO and the copy falls back
/// to host memory (or fails, with `--no-bounce`). A test hook for the
/// fallback (the QEMU scenarios use it against a real kernel), kept out of
/// [`CopyOptions`] so that no program sets it by accident.
pub const UNCHECKED_VIA_ENV: &str = "PEERDMA_COPY_UNCHECKED_VIA";

fn unchecked_via() -> bool {
    std::env::var_os(UNCHECKED_VIA_ENV).is_some_and(|v| v == "1")
}

impl CopyOptions {
    pub fn new(src: impl Into<PathBuf>, dst: impl Into<PathBuf>) -> CopyOptions {
        CopyOptions {
            src: src.into(),
            dst: dst.into(),
            skip: 0,
            seek: 0,
            count: None,
            chunk: 1 << 20,
            depth: 8,
            via: None,
            no_bounce: false,
            force_device: false,
            verify: false,
            fsync: false,
            sys_root: PathBuf::from("/"),
        }
    }
}

/// How the data travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyPath {
    /// Both DMAs peer to peer by PCI bus address.
    P2pBusAddr,
    /// Peer to peer, at least one leg through the host bridge.
    P2pThruHostBridge,
    /// Through a buffer in host memory (two DMAs, or the CPU for buffered I/O).
    Bounced,
}

impl CopyPath {
    pub fn describe(self) -> &'static str {
        match self {
            CopyPath::P2pBusAddr => "P2P by PCI bus address",
            CopyPath::P2pThruHostBridge => "P2P through the host bridge",
            CopyPath::Bounced => "bounced through host memory",
        }
    }
}

/// A copy refused before anything was written, to protect data.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The two ends share bytes.
    #[error("refusing to copy {src} -> {dst}: {detail}")]
    Overlap {
        src: String,
        dst: String,
        detail: String,
    },
    /// A block device destination without `--force-device`.
    #[error(
        "refusing to write block device {} without --force-device (it would overwrite {} at offset {offset})",
        device.display(), format_size(*bytes)
    )]
    NeedsForceDevice {
        device: PathBuf,
        bytes: u64,
        offset: u64,
    },
    /// Peer to peer is impossible and `--no-bounce` forbids host memory.
    #[error("cannot copy {src} -> {dst} peer to peer: {reason}; without --no-bounce the data would go through host memory")]
    NoBounce {
        src: String,
        dst: String,
        reason: String,
    },
}

/// An I/O that failed during a copy (or its verification), and how far the
/// copy had got: the first `copied` bytes of the range are in place.
#[derive(Debug, thiserror::Error)]
#[error("{failure}; {} of {} were copied{}", format_size(*copied), format_size(*total),
    resume.as_ref().map(|r| format!(" (resume with {r})")).unwrap_or_default())]
pub struct TransferError {
    #[source]
    pub failure: IoFailure,
    /// Bytes from the start of the range copied and kept.
    pub copied: u64,
    pub total: u64,
    /// The arguments that copy the rest.
    pub resume: Option<String>,
}

impl TransferError {
    /// The error of the right kind: EREMOTEIO, ENOSPC or another.
    pub(crate) fn into_error(self) -> Error {
        match self.failure.errno {
            libc::EREMOTEIO => Error::P2pRefused(Box::new(self)),
            libc::ENOSPC => Error::NoSpace(Box::new(self)),
            _ => Error::Transfer(Box::new(self)),
        }
    }

    fn verify(failure: IoFailure, total: u64) -> Error {
        TransferError {
            failure,
            copied: total,
            total,
            resume: None,
        }
        .into_error()
    }
}

/// One end in the report.
#[derive(Clone, Debug, Serialize)]
pub struct EndReport {
    pub path: String,
    pub kind: Kind,
    pub block_device: Option<String>,
    pub pci: Option<Bdf>,
    pub numa_node: Option<u32>,
    pub direct: bool,
    pub offset: u64,
    pub align: u64,
}

/// The staging memory in the report.
#[derive(Clone, Debug, Serialize)]
pub struct StagingReport {
    /// "p2p" or "host".
    pub kind: &'static str,
    pub provider: Option<Bdf>,
    pub bytes: u64,
    pub pages: Option<Pages>,
    pub numa_node: Option<u32>,
}

/// The result of `--verify`.
#[derive(Clone, Debug, Serialize)]
pub struct Verify {
    pub src_blake3: String,
    pub dst_blake3: String,
    pub equal: bool,
    /// Offset (from the start of the copied range) of the first differing byte.
    pub first_difference: Option<u64>,
}

/// How far an interrupted copy got.
#[derive(Clone, Debug, Serialize)]
pub struct Interrupted {
    /// Bytes from the start of the range known to be copied.
    pub copied: u64,
    /// Arguments that copy the rest.
    pub resume: String,
}

/// What a copy did (or, for a dry run, would do).
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    pub src: EndReport,
    pub dst: EndReport,
    pub bytes: u64,
    pub path: CopyPath,
    /// The kernel's verdict for the provider and each end, when P2P.
    pub read_leg: Option<MapType>,
    pub write_leg: Option<MapType>,
    pub staging: StagingReport,
    /// Why the copy is not P2P, when it is not.
    pub reason: Option<String>,
    /// The kernel refused P2P during the copy and the rest bounced.
    pub fallback: Option<String>,
    /// "direct": the aligned middle moved by the pipeline; "shifted": SRC
    /// and DST offsets differ modulo the alignment, so every byte went
    /// through a CPU copy in host memory.
    pub mode: &'static str,
    /// Bytes at the head and tail done by read-modify-write of DST blocks.
    pub edge_bytes: u64,
    pub chunk: u64,
    pub depth: usize,
    pub engine: &'static str,
    pub dry_run: bool,
    pub seconds: f64,
    pub bytes_per_sec: f64,
    pub cpu_user_seconds: f64,
    pub cpu_system_seconds: f64,
    pub verify: Option<Verify>,
    pub interrupted: Option<Interrupted>,
}

fn end_report(e: &Endpoint, offset: u64) -> EndReport {
    EndReport {
        path: e.path.display().to_string(),
        kind: e.kind,
        block_device: e.backing.as_ref().map(|b| b.block.name.clone()),
        pci: e.pci(),
        numa_node: e.numa_node(),
        direct: e.direct,
        offset,
        align: e.align,
    }
}

/// The decision about staging memory.
#[derive(Debug)]
struct Choice {
    provider: Option<Bdf>,
    read_leg: Option<MapType>,
    write_leg: Option<MapType>,
    reason: Option<String>,
}

fn choose(
    opts: &CopyOptions,
    src: &Endpoint,
    dst: &Endpoint,
    topo: Option<&Topology>,
) -> Result<Choice> {
    let none = |reason: String| Choice {
        provider: None,
        read_leg: None,
        write_leg: None,
        reason: Some(reason),
    };
    let (Some(s), Some(d)) = (src.pci(), dst.pci()) else {
        let which = if src.pci().is_none() { src } else { dst };
        return Ok(none(format!(
            "{} is not on a PCI device, so there is no peer to DMA from or to",
            which.describe_end()
        )));
    };
    if !src.direct || !dst.direct {
        let which = if !src.direct { src } else { dst };
        return Ok(none(format!(
            "{} does not support O_DIRECT, so the kernel cannot DMA into a P2P buffer",
            which.path.display()
        )));
    }
    let Some(topo) = topo else {
        return Ok(none("the machine's PCI topology could not be read".into()));
    };
    let missing = |b: Bdf, e: &Endpoint| Error::Malformed {
        origin: opts
            .sys_root
            .join("sys/bus/pci/devices")
            .display()
            .to_string(),
        detail: format!(
            "{b} (behind {}) is not among the PCI functions",
            e.path.display()
        ),
    };
    let sf = topo.find(s).ok_or_else(|| missing(s, src))?;
    let df = topo.find(d).ok_or_else(|| missing(d, dst))?;
    let candidates: Vec<_> = match &opts.via {
        Some(v) => vec![topo.lookup(v)?],
        None => match find_many(topo, &[sf, df]) {
            Some(f) => f.providers,
            None => {
                let published = peerdma_p2p::providers(topo);
                let why = if published.is_empty() {
                    "no device on this machine publishes P2P memory (p2pmem/published)".to_string()
                } else {
                    let list: Vec<String> = published
                        .iter()
                        .map(|&p| {
                            let e = explain(
                                topo,
                                p,
                                if calc_map_type_and_dist(topo, p, sf).map_type.is_p2p() {
                                    df
                                } else {
                                    sf
                                },
                            );
                            format!("{}: {}", topo.function(p).bdf, e.reasons.join("; "))
                        })
                        .collect();
                    format!(
                        "no published P2P memory is reachable by both {s} and {d} ({})",
                        list.join(" | ")
                    )
                };
                return Ok(none(why));
            }
        },
    };
    let unchecked = opts.via.is_some() && unchecked_via();
    let mut last_reason = String::new();
    let mut override_reason = None;
    for p in candidates {
        let pb = topo.function(p).bdf;
        let r = calc_map_type_and_dist(topo, p, sf);
        let w = calc_map_type_and_dist(topo, p, df);
        if !r.map_type.is_p2p() || !w.map_type.is_p2p() {
            let bad = if !r.map_type.is_p2p() { sf } else { df };
            last_reason = format!(
                "{} cannot reach the P2P memory of {pb}: {}",
                topo.function(bad).bdf,
                explain(topo, p, bad).reasons.join("; ")
            );
            if !unchecked {
                continue;
            }
            override_reason = Some(format!(
                "{last_reason}; tried anyway ({UNCHECKED_VIA_ENV}): the kernel decides"
            ));
        }
        match p2pmem::info(&opts.sys_root, pb) {
            Ok(i) if i.published && i.available >= PAGE_SIZE => {
                return Ok(Choice {
                    provider: Some(pb),
                    read_leg: Some(r.map_type),
                    write_leg: Some(w.map_type),
                    reason: override_reason,
                })
            }
            Ok(i) => {
                last_reason = format!(
                    "{pb} has {} of P2P memory available{}",
                    format_size(i.available),
                    if i.published {
                        ""
                    } else {
                        " and has not published it"
                    }
                )
            }
            Err(e) => last_reason = e.to_string(),
        }
    }
    Ok(none(last_reason))
}

/// Refusals that protect data, before anything is written.
fn refuse(opts: &CopyOptions, src: &Endpoint, dst: &Endpoint, count: u64) -> Result<()> {
    if dst.kind == Kind::BlockDevice && opts.seek.checked_add(count).is_none_or(|e| e > dst.size) {
        return Err(Error::bad(format!(
            "{} bytes at offset {} do not fit {} ({} bytes)",
            count,
            opts.seek,
            dst.path.display(),
            dst.size
        )));
    }
    if src.identity == dst.identity {
        let (a0, a1) = (opts.skip, opts.skip + count);
        let (b0, b1) = (opts.seek, opts.seek + count);
        if a0 < b1 && b0 < a1 {
            return Err(Refusal::Overlap {
                src: src.path.display().to_string(),
                dst: dst.path.display().to_string(),
                detail: format!(
                    "they are the same {} and the ranges [{a0}, {a1}) and [{b0}, {b1}) overlap",
                    if src.kind == Kind::File {
                        "file"
                    } else {
                        "device"
                    }
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// The ranges of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    align: u64,
    /// SRC and DST offsets agree modulo the alignment.
    congruent: bool,
    head: u64,
    body: Body,
    tail: u64,
}

fn layout(skip: u64, seek: u64, count: u64, align: u64) -> Layout {
    let congruent = skip % align == seek % align;
    if !congruent || count == 0 {
        return Layout {
            align,
            congruent,
            head: count,
            body: Body {
                src_off: skip + count,
                dst_off: seek + count,
                len: 0,
            },
            tail: 0,
        };
    }
    let head = ((align - seek % align) % align).min(count);
    let rest = count - head;
    let tail = rest % align;
    Layout {
        align,
        congruent,
        head,
        body: Body {
            src_off: skip + head,
            dst_off: seek + head,
            len: rest - tail,
        },
        tail,
    }
}

fn errno_failure(op: &'static str, path: &Path, offset: u64, e: std::io::Error) -> IoFailure {
    IoFailure {
        op,
        path: path.display().to_string(),
        offset,
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// pread into host memory until `buf` is full or EOF; returns bytes read.
fn pread_full(ep: &Endpoint, buf: &mut [u8], off: u64) -> std::result::Result<usize, IoFailure> {
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
struct Shifter<'a> {
    src: &'a Endpoint,
    dst: &'a Endpoint,
    align: u64,
    /// Bytes per step.
    piece: u64,
    read_buf: HostBuf,
    write_buf: HostBuf,
}

impl Shifter<'_> {
    fn copy(
        &mut self,
        src_off: u64,
        dst_off: u64,
        len: u64,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<u64, IoFailure> {
        let (src, dst, align) = (self.src, self.dst, self.align);
        if len == 0 {
            return Ok(0);
        }
        let end = (dst_off + len).div_ceil(align) * align;
        let mut p0 = dst_off / align * align;
        let mut done = 0u64;
        while p0 < end {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let p1 = (p0 + self.piece).min(end);
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
            done += o1 - o0;
            progress(done);
            p0 = p1;
        }
        Ok(done)
    }
}

/// blake3 of `[off, off+len)` of an end, and the bytes for comparison.
fn hash_range(
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

fn first_difference(
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

/// A destination file extended to its final size before the copy: set
/// back to `size` if the copy returns early with an error (a finished or
/// interrupted copy disarms it and sets the size itself).
struct Presized<'a> {
    fd: &'a rustix::fd::OwnedFd,
    size: u64,
    armed: bool,
}

impl Drop for Presized<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = rustix::fs::ftruncate(self.fd, self.size);
        }
    }
}

fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

/// Plan and (unless `dry_run`) run a copy. `progress` gets (bytes done,
/// bytes total); `stop` ends it early (the report then says how far it got).
pub fn copy(
    opts: &CopyOptions,
    dry_run: bool,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<CopyReport> {
    if opts.chunk == 0 || opts.chunk % PAGE_SIZE != 0 || opts.chunk > MAX_CHUNK {
        return Err(Error::bad(format!(
            "--chunk {} is not a non-zero multiple of {PAGE_SIZE} of at most {MAX_CHUNK} (1 GiB)",
            opts.chunk
        )));
    }
    if opts.depth == 0 || opts.depth > 256 {
        return Err(Error::bad(format!(
            "--depth {} is not between 1 and 256",
            opts.depth
        )));
    }
    let src = Endpoint::open_src(&opts.src, &opts.sys_root)?;
    if opts.skip > src.size {
        return Err(Error::bad(format!(
            "--skip {} is beyond the end of {} ({} bytes)",
            opts.skip,
            opts.src.display(),
            src.size
        )));
    }
    let count = match opts.count {
        Some(c) => {
            if opts.skip.checked_add(c).is_none_or(|e| e > src.size) {
                return Err(Error::bad(format!(
                    "--count {c} at --skip {} runs past the end of {} ({} bytes)",
                    opts.skip,
                    opts.src.display(),
                    src.size
                )));
            }
            c
        }
        None => src.size - opts.skip,
    };
    let dst_existed = opts.dst.exists();
    // A block device is checked before it is opened: the exclusive open
    // itself fails on a mounted device, with a less helpful message.
    endpoint::check_block_dst(
        &opts.dst,
        &opts.sys_root,
        opts.force_device,
        count,
        opts.seek,
    )?;
    let dst = Endpoint::open_dst(&opts.dst, &opts.sys_root)?;
    let cleanup_new_dst = |dry: bool| {
        if dry && !dst_existed {
            let _ = fs::remove_file(&opts.dst);
        }
    };
    if let Err(e) = refuse(opts, &src, &dst, count) {
        cleanup_new_dst(true);
        return Err(e);
    }
    let topo = Source::Root(opts.sys_root.clone()).load().ok();
    let choice = choose(opts, &src, &dst, topo.as_ref())?;
    if opts.no_bounce && choice.provider.is_none() {
        cleanup_new_dst(true);
        return Err(Refusal::NoBounce {
            src: src.describe_end(),
            dst: dst.describe_end(),
            reason: choice.reason.clone().unwrap_or_default(),
        }
        .into());
    }
    let align = src.align.max(dst.align).max(512);
    let lay = layout(opts.skip, opts.seek, count, align);
    let chunk = opts.chunk;
    let depth = opts.depth.min(lay.body.len.div_ceil(chunk).max(1) as usize);
    let node = src.numa_node().or(dst.numa_node());

    let mut report = CopyReport {
        src: end_report(&src, opts.skip),
        dst: end_report(&dst, opts.seek),
        bytes: count,
        path: match (choice.read_leg, choice.write_leg) {
            (Some(MapType::BusAddr), Some(MapType::BusAddr)) => CopyPath::P2pBusAddr,
            (Some(_), Some(_)) => CopyPath::P2pThruHostBridge,
            _ => CopyPath::Bounced,
        },
        read_leg: choice.read_leg,
        write_leg: choice.write_leg,
        staging: StagingReport {
            kind: if choice.provider.is_some() {
                "p2p"
            } else {
                "host"
            },
            provider: choice.provider,
            bytes: depth as u64 * chunk,
            pages: None,
            numa_node: node,
        },
        reason: choice.reason.clone(),
        fallback: None,
        mode: if lay.congruent { "direct" } else { "shifted" },
        edge_bytes: lay.head + lay.tail,
        chunk,
        depth,
        engine: "io_uring",
        dry_run,
        seconds: 0.0,
        bytes_per_sec: 0.0,
        cpu_user_seconds: 0.0,
        cpu_system_seconds: 0.0,
        verify: None,
        interrupted: None,
    };
    if !lay.congruent && choice.provider.is_some() {
        report.path = CopyPath::Bounced;
        report.staging.kind = "host";
        report.staging.provider = None;
        report.reason = Some(format!(
            "--skip {} and --seek {} differ modulo the {align}-byte O_DIRECT alignment, so the data must be shifted by the CPU in host memory",
            opts.skip, opts.seek
        ));
        if opts.no_bounce {
            cleanup_new_dst(true);
            return Err(Refusal::NoBounce {
                src: src.describe_end(),
                dst: dst.describe_end(),
                reason: report.reason.clone().unwrap_or_default(),
            }
            .into());
        }
    }
    if dry_run {
        cleanup_new_dst(true);
        return Ok(report);
    }

    let t0 = Instant::now();
    let (u0, s0) = cpu_times();
    let piece = chunk.max(align);
    let mut shifter = Shifter {
        src: &src,
        dst: &dst,
        align,
        piece,
        read_buf: HostBuf::new((piece + 2 * align) as usize, node)?,
        write_buf: HostBuf::new((piece + 2 * align) as usize, node)?,
    };
    let total = count;
    let mut done_edges = 0u64;
    let mut prefix_done: u64;
    let mut failure: Option<IoFailure> = None;
    let mut presized: Option<Presized<'_>> = None;

    if !lay.congruent {
        let r = shifter.copy(opts.skip, opts.seek, count, stop, &mut |d| {
            progress(d, total)
        });
        match r {
            Ok(d) => prefix_done = d,
            Err(e) => {
                prefix_done = 0;
                failure = Some(e);
            }
        }
        report.engine = "pread/pwrite";
    } else {
        // A file DST gets its final size first. O_DIRECT writes past the
        // end of a file extend it, and file systems serialize those (ext4
        // takes the inode lock exclusively and waits for each one; with
        // io_uring every such write is punted to a worker thread): writes
        // inside the file run concurrently. On error or interruption the
        // size is set back below; only a crash leaves the full size.
        if dst.kind == Kind::File && dst.direct && lay.body.len > 0 && opts.seek + count > dst.size
        {
            rustix::fs::ftruncate(&dst.fd, opts.seek + count)
                .map_err(|e| Error::io("extend", &dst.path, e.into()))?;
            presized = Some(Presized {
                fd: &dst.fd,
                size: dst.size,
                armed: true,
            });
        }
        // Head first (so an interruption leaves a clean prefix), then the
        // body through the pipeline, then the tail.
        match shifter.copy(opts.skip, opts.seek, lay.head, stop, &mut |_| {}) {
            Ok(d) => done_edges += d,
            Err(e) => failure = Some(e),
        }
        prefix_done = done_edges;
        if failure.is_none() && lay.body.len > 0 {
            let host_staging = |depth: usize| -> Result<Staging> {
                Ok(Staging::Host(HostBuf::new(depth * chunk as usize, node)?))
            };
            let mut staging = match choice.provider {
                Some(p) if lay.congruent => {
                    // P2P memory is allocated in pages; fit depth x chunk
                    // into what the provider has.
                    let avail = p2pmem::info(&opts.sys_root, p)
                        .map(|i| i.available)
                        .unwrap_or(0);
                    let d = depth.min((avail / chunk) as usize).max(1);
                    match P2pMem::allocate(&opts.sys_root, p, d * chunk as usize) {
                        Ok(m) => {
                            report.depth = d;
                            report.staging.bytes = (d as u64) * chunk;
                            Staging::P2p(m)
                        }
                        Err(e) if !opts.no_bounce => {
                            report.fallback = Some(format!("could not allocate P2P memory of {p} ({e}); bounced through host memory"));
                            report.path = CopyPath::Bounced;
                            host_staging(depth)?
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => host_staging(depth)?,
            };
            if let Staging::Host(h) = &staging {
                report.staging.kind = "host";
                report.staging.pages = Some(h.pages);
                report.staging.numa_node = h.node;
            }
            let mut body = lay.body;
            let base_done = done_edges;
            loop {
                let d = report.depth.min(staging.len() / chunk as usize).max(1);
                // The run owns the staging memory: it frees it only when no
                // I/O points into it any more.
                let out = ring::run(
                    &ring::Job {
                        src: &src,
                        dst: &dst,
                        body,
                        chunk,
                        depth: d,
                    },
                    staging,
                    stop,
                    &mut |b| progress(base_done + b, total),
                )?;
                report.engine = out.engine;
                let copied = out.done_prefix;
                match out.error {
                    Some(e)
                        if e.is_eremoteio() && report.staging.kind == "p2p" && !opts.no_bounce =>
                    {
                        // The kernel refused peer-to-peer DMA: redo from the
                        // first incomplete chunk through host memory.
                        report.fallback = Some(format!(
                            "the kernel refused P2P DMA through the memory of {} ({e}); the remaining {} bounced through host memory",
                            choice.provider.map_or("the provider".into(), |p| p.to_string()),
                            format_size(body.len - copied)
                        ));
                        report.path = CopyPath::Bounced;
                        staging = host_staging(depth)?;
                        // Host memory is not limited by the provider's size.
                        report.depth = depth;
                        report.staging.bytes = depth as u64 * chunk;
                        if let Staging::Host(h) = &staging {
                            report.staging.kind = "host";
                            report.staging.pages = Some(h.pages);
                            report.staging.numa_node = h.node;
                            report.staging.provider = None;
                        }
                        prefix_done += copied;
                        body = Body {
                            src_off: body.src_off + copied,
                            dst_off: body.dst_off + copied,
                            len: body.len - copied,
                        };
                        continue;
                    }
                    Some(e) => {
                        prefix_done += copied;
                        failure = Some(e);
                    }
                    None => prefix_done += copied,
                }
                break;
            }
        }
        if failure.is_none() && prefix_done == lay.head + lay.body.len && lay.tail > 0 {
            let t_src = lay.body.src_off + lay.body.len;
            let t_dst = lay.body.dst_off + lay.body.len;
            match shifter.copy(t_src, t_dst, lay.tail, stop, &mut |_| {}) {
                Ok(d) => prefix_done += d,
                Err(e) => failure = Some(e),
            }
        }
        progress(prefix_done, total);
    }

    // A file DST ends at the end of what was written (or where it was).
    let was_presized = presized
        .as_mut()
        .is_some_and(|g| std::mem::take(&mut g.armed));
    if dst.kind == Kind::File && (prefix_done > 0 || was_presized) {
        let want = if prefix_done == 0 {
            dst.size
        } else {
            (opts.seek + prefix_done).max(dst.size)
        };
        let now = rustix::fs::fstat(&dst.fd)
            .map(|s| s.st_size as u64)
            .unwrap_or(want);
        if now != want {
            rustix::fs::ftruncate(&dst.fd, want)
                .map_err(|e| Error::io("truncate", &dst.path, e.into()))?;
        }
    }
    if let Some(e) = failure {
        return Err(TransferError::into_error(TransferError {
            failure: e,
            copied: prefix_done,
            total: count,
            resume: Some(format!(
                "--skip {} --seek {} --count {}",
                opts.skip + prefix_done,
                opts.seek + prefix_done,
                count - prefix_done
            )),
        }));
    }
    if opts.fsync {
        rustix::fs::fdatasync(&dst.fd)
            .map_err(|e| Error::io("flush (fdatasync)", &dst.path, e.into()))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    report.seconds = secs;
    report.bytes_per_sec = if secs > 0.0 {
        prefix_done as f64 / secs
    } else {
        0.0
    };
    report.cpu_user_seconds = u1 - u0;
    report.cpu_system_seconds = s1 - s0;
    if prefix_done < count {
        report.interrupted = Some(Interrupted {
            copied: prefix_done,
            resume: format!(
                "--skip {} --seek {} --count {}",
                opts.skip + prefix_done,
                opts.seek + prefix_done,
                count - prefix_done
            ),
        });
        return Ok(report);
    }
    if opts.verify {
        let mut hb = HostBuf::new((4 << 20) + 2 * align as usize, node)?;
        let hs = hash_range(&src, opts.skip, count, align, &mut hb)
            .map_err(|e| TransferError::verify(e, count))?;
        let hd = hash_range(&dst, opts.seek, count, align, &mut hb)
            .map_err(|e| TransferError::verify(e, count))?;
        let equal = hs == hd;
        report.verify = Some(Verify {
            src_blake3: hs.to_hex().to_string(),
            dst_blake3: hd.to_hex().to_string(),
            equal,
            first_difference: if equal {
                None
            } else {
                first_difference(&src, opts.skip, &dst, opts.seek, count, align)
            },
        });
        if !equal {
            return Err(Error::VerifyFailed(Box::new(report)));
        }
    }
    Ok(report)
}

impl CopyReport {
    /// One line for a failed `--verify`: the path the data took and where
    /// the destination first differs.
    pub fn verify_failure(&self) -> String {
        let Some(v) = self.verify.as_ref().filter(|v| !v.equal) else {
            return "the copy verified".into();
        };
        format!(
            "VERIFY FAILED: the copy took the path {}{} and the destination's data is wrong: {}source blake3 {}, destination {}",
            self.path.describe(),
            match (self.read_leg, self.write_leg) {
                (Some(r), Some(w)) => format!(" (read {r}, write {w})"),
                _ => String::new(),
            },
            v.first_difference
                .map(|o| format!(
                    "first difference at byte {o} of the range ({} offset {}, {} offset {}); ",
                    self.src.path,
                    self.src.offset + o,
                    self.dst.path,
                    self.dst.offset + o
                ))
                .unwrap_or_default(),
            v.src_blake3,
            v.dst_blake3
        )
    }

    /// The report for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let end = |e: &EndReport| {
            let mut d = format!("{} ({:?}", e.path, e.kind).to_lowercase();
            if let Some(b) = &e.block_device {
                d.push_str(&format!(" on {b}"));
            }
            if let Some(p) = e.pci {
                d.push_str(&format!(", PCI {p}"));
            }
            if !e.direct {
                d.push_str(", buffered: no O_DIRECT");
            }
            d.push(')');
            if e.offset > 0 {
                d.push_str(&format!(" at offset {}", e.offset));
            }
            d
        };
        if self.dry_run {
            s.push_str("dry run: nothing was written\n");
        }
        s.push_str(&format!("from:  {}\n", end(&self.src)));
        s.push_str(&format!("to:    {}\n", end(&self.dst)));
        let legs = match (self.read_leg, self.write_leg) {
            (Some(r), Some(w)) => format!(" (read {r}, write {w})"),
            _ => String::new(),
        };
        s.push_str(&format!("path:  {}{legs}\n", self.path.describe()));
        match (self.staging.kind, self.staging.provider) {
            ("p2p", Some(p)) => s.push_str(&format!(
                "via:   {} of P2P memory of {p}\n",
                format_size(self.staging.bytes)
            )),
            _ => s.push_str(&format!(
                "via:   {} of host memory{}{}\n",
                format_size(self.staging.bytes),
                self.staging
                    .numa_node
                    .map(|n| format!(" on NUMA node {n}"))
                    .unwrap_or_default(),
                match self.staging.pages {
                    Some(Pages::Hugetlb) => ", huge pages",
                    Some(Pages::TransparentHuge) => ", transparent huge pages",
                    _ => "",
                }
            )),
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!("why:   {r}\n"));
        }
        if let Some(f) = &self.fallback {
            s.push_str(&format!("note:  {f}\n"));
        }
        s.push_str(&format!(
            "plan:  {} in {} chunks, {} in flight, {} ({}, {} edge bytes by read-modify-write)\n",
            format_size(self.bytes),
            format_size(self.chunk),
            self.depth,
            self.engine,
            self.mode,
            self.edge_bytes
        ));
        if !self.dry_run {
            s.push_str(&format!(
                "moved: {} in {:.3} s = {}/s, CPU {:.3} s user + {:.3} s system\n",
                format_size(self.interrupted.as_ref().map_or(self.bytes, |i| i.copied)),
                self.seconds,
                format_size(self.bytes_per_sec as u64),
                self.cpu_user_seconds,
                self.cpu_system_seconds
            ));
        }
        if let Some(i) = &self.interrupted {
            s.push_str(&format!(
                "INTERRUPTED after {}: continue with {}\n",
                format_size(i.copied),
                i.resume
            ));
        }
        if let Some(v) = &self.verify {
            if v.equal {
                s.push_str(&format!(
                    "verify: both ends hash to blake3 {}\n",
                    v.src_blake3
                ));
            } else {
                s.push_str(&format!(
                    "VERIFY FAILED: source blake3 {} but destination {}{}\n",
                    v.src_blake3,
                    v.dst_blake3,
                    v.first_difference
                        .map(|o| format!(", first difference at byte {o}"))
                        .unwrap_or_default()
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_split_head_body_tail() {
        assert_eq!(
            layout(4096, 8192, 3 * 4096, 4096),
            Layout {
                align: 4096,
                congruent: true,
                head: 0,
                body: Body {
                    src_off: 4096,
                    dst_off: 8192,
                    len: 3 * 4096
                },
                tail: 0
            }
        );
        let l = layout(100, 612, 10_000, 512);
        assert!(l.congruent);
        assert_eq!(l.head, 412);
        assert_eq!(
            l.body,
            Body {
                src_off: 512,
                dst_off: 1024,
                len: 9216
            }
        );
        assert_eq!(l.tail, 10_000 - 412 - 9216);
        let l = layout(1, 0, 1000, 512);
        assert!(!l.congruent);
        assert_eq!((l.head, l.body.len, l.tail), (1000, 0, 0));
        let l = layout(10, 10, 5, 4096);
        assert_eq!(
            (l.head, l.body.len, l.tail),
            (5, 0, 0),
            "a copy inside one block"
        );
    }
}
