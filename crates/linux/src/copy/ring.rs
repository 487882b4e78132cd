//! The data path: chunks read from the source into a staging slot and
//! written from it to the destination, several slots in flight, with
//! io_uring (or plain pread/pwrite where io_uring is not available).
//!
//! With O_DIRECT on both ends the kernel DMAs straight between the devices
//! and the staging memory: when that memory is P2P memory, both DMAs are
//! peer to peer and the CPU never touches the data.

use super::buffer::Staging;
use super::endpoint::Endpoint;
use io_uring::{opcode, types, IoUring};
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The aligned middle of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body {
    pub src_off: u64,
    pub dst_off: u64,
    pub len: u64,
}

/// A failed system call of the data path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IoFailure {
    pub op: &'static str,
    pub path: String,
    pub offset: u64,
    pub errno: i32,
}

impl IoFailure {
    pub fn is_eremoteio(&self) -> bool {
        self.errno == libc::EREMOTEIO
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} at offset {:#x} failed: {}",
            self.op,
            self.path,
            self.offset,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// What the pipeline did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes from the start of the body known to be copied.
    pub done_prefix: u64,
    /// Which chunks completed (for resuming after a fallback).
    pub completed: Vec<bool>,
    pub error: Option<IoFailure>,
    pub stopped: bool,
    /// "io_uring" or "pread/pwrite".
    pub engine: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Reading,
    Writing,
}

#[derive(Clone, Copy)]
struct Slot {
    chunk: usize,
    phase: Phase,
    done: u64,
}

struct Plan<'a> {
    src: &'a Endpoint,
    dst: &'a Endpoint,
    base: *mut u8,
    chunk: u64,
    body: Body,
    n: usize,
}

impl Plan<'_> {
    fn chunk_len(&self, i: usize) -> u64 {
        (self.body.len - i as u64 * self.chunk).min(self.chunk)
    }
    /// (fd, file offset, buffer pointer, bytes) of the next step of a slot.
    fn op(&self, slot: usize, s: &Slot) -> (i32, u64, *mut u8, u32) {
        let off = s.chunk as u64 * self.chunk + s.done;
        let (fd, file_off) = match s.phase {
            Phase::Reading => (self.src.fd.as_raw_fd(), self.body.src_off + off),
            _ => (self.dst.fd.as_raw_fd(), self.body.dst_off + off),
        };
        // SAFETY: slot * chunk + done < depth * chunk <= staging length,
        // checked by `run`; the pointer is only handed to the kernel.
        let ptr = unsafe { self.base.add(slot * self.chunk as usize + s.done as usize) };
        let len = (self.chunk_len(s.chunk) - s.done) as u32;
        (fd, file_off, ptr, len)
    }
    fn failure(&self, s: &Slot, errno: i32) -> IoFailure {
        let (path, base) = match s.phase {
            Phase::Reading => (&self.src.path, self.body.src_off),
            _ => (&self.dst.path, self.body.dst_off),
        };
        IoFailure {
            op: if s.phase == Phase::Reading {
                "read"
            } else {
                "write"
            },
            path: path.display().to_string(),
            offset: base + s.chunk as u64 * self.chunk + s.done,
            errno,
        }
    }
}

/// One run of the pipeline.
pub struct Job<'a> {
    pub src: &'a Endpoint,
    pub dst: &'a Endpoint,
    pub staging: &'a Staging,
    pub body: Body,
    pub chunk: u64,
    /// Slots of `chunk` bytes in flight (at most staging / chunk).
    pub depth: usize,
}

/// Copy `job.body` in chunks with `job.depth` slots of staging memory.
/// Stops early (after in-flight I/O completes) when `stop` is set or an
/// operation fails. `progress` gets the bytes completed so far.
pub fn run(job: &Job<'_>, stop: &AtomicBool, progress: &mut dyn FnMut(u64)) -> Outcome {
    let chunk = job.chunk.max(1);
    let n = job.body.len.div_ceil(chunk) as usize;
    let depth = job.depth.clamp(1, n.max(1));
    assert!(
        depth as u64 * chunk <= job.staging.len() as u64,
        "staging too small for depth x chunk"
    );
    let plan = Plan {
        src: job.src,
        dst: job.dst,
        base: job.staging.raw(),
        chunk,
        body: job.body,
        n,
    };
    match IoUring::new((depth as u32).next_power_of_two().max(2)) {
        Ok(ring) => run_ring(&plan, ring, depth, stop, progress),
        Err(_) => run_sync(&plan, stop, progress),
    }
}

fn prefix(completed: &[bool], plan: &Plan<'_>) -> u64 {
    let k = completed.iter().take_while(|c| **c).count();
    (k as u64 * plan.chunk).min(plan.body.len)
}

fn run_ring(
    plan: &Plan<'_>,
    mut ring: IoUring,
    depth: usize,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Outcome {
    let mut slots = vec![
        Slot {
            chunk: 0,
            phase: Phase::Idle,
            done: 0
        };
        depth
    ];
    let mut completed = vec![false; plan.n];
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut error: Option<IoFailure> = None;
    let mut bytes_done = 0u64;

    let submit = |ring: &mut IoUring, slot: usize, s: &Slot| -> bool {
        let (fd, off, ptr, len) = plan.op(slot, s);
        let e = match s.phase {
            Phase::Reading => opcode::Read::new(types::Fd(fd), ptr, len)
                .offset(off)
                .build(),
            _ => opcode::Write::new(types::Fd(fd), ptr, len)
                .offset(off)
                .build(),
        }
        .user_data(slot as u64);
        // SAFETY: the buffer stays valid until the completion is reaped
        // (the staging memory outlives this function) and no Rust
        // reference to it exists while the kernel uses it.
        unsafe { ring.submission().push(&e).is_ok() }
    };

    for (i, s) in slots.iter_mut().enumerate() {
        if next >= plan.n {
            break;
        }
        *s = Slot {
            chunk: next,
            phase: Phase::Reading,
            done: 0,
        };
        next += 1;
        if submit(&mut ring, i, s) {
            inflight += 1;
        }
    }
    while inflight > 0 {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The ring itself failed: finish what is known, report it.
            error.get_or_insert(IoFailure {
                op: "io_uring_enter",
                path: String::new(),
                offset: 0,
                errno: e.raw_os_error().unwrap_or(libc::EIO),
            });
            break;
        }
        let cqes: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            let i = ud as usize;
            let mut s = slots[i];
            inflight -= 1;
            if res < 0 {
                error.get_or_insert(plan.failure(&s, -res));
                slots[i].phase = Phase::Idle;
                continue;
            }
            if res == 0 && s.phase == Phase::Reading {
                error.get_or_insert(plan.failure(&s, libc::ENODATA));
                slots[i].phase = Phase::Idle;
                continue;
            }
            s.done += res as u64;
            let want = plan.chunk_len(s.chunk);
            if s.done < want {
                // A short read or write: go on from where it stopped.
                if submit(&mut ring, i, &s) {
                    inflight += 1;
                }
            } else if s.phase == Phase::Reading {
                s.phase = Phase::Writing;
                s.done = 0;
                if submit(&mut ring, i, &s) {
                    inflight += 1;
                }
            } else {
                completed[s.chunk] = true;
                bytes_done += want;
                progress(bytes_done);
                if error.is_none() && !stop.load(Ordering::Relaxed) && next < plan.n {
                    s = Slot {
                        chunk: next,
                        phase: Phase::Reading,
                        done: 0,
                    };
                    next += 1;
                    if submit(&mut ring, i, &s) {
                        inflight += 1;
                    }
                } else {
                    s.phase = Phase::Idle;
                }
            }
            slots[i] = s;
        }
    }
    Outcome {
        done_prefix: prefix(&completed, plan),
        stopped: stop.load(Ordering::Relaxed) && completed.iter().any(|c| !c),
        completed,
        error,
        engine: "io_uring",
    }
}

fn run_sync(plan: &Plan<'_>, stop: &AtomicBool, progress: &mut dyn FnMut(u64)) -> Outcome {
    let mut completed = vec![false; plan.n];
    let mut error = None;
    let mut bytes_done = 0u64;
    'chunks: for (c, complete) in completed.iter_mut().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        for phase in [Phase::Reading, Phase::Writing] {
            let mut s = Slot {
                chunk: c,
                phase,
                done: 0,
            };
            while s.done < plan.chunk_len(c) {
                let (fd, off, ptr, len) = plan.op(0, &s);
                // SAFETY: ptr..ptr+len lies in the staging memory (slot 0),
                // which outlives the call; the kernel reads or writes it.
                let r = unsafe {
                    match phase {
                        Phase::Reading => {
                            libc::pread(fd, ptr.cast(), len as usize, off as libc::off_t)
                        }
                        _ => libc::pwrite(fd, ptr.cast(), len as usize, off as libc::off_t),
                    }
                };
                if r < 0 {
                    let errno = std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    if errno == libc::EINTR {
                        continue;
                    }
                    error = Some(plan.failure(&s, errno));
                    break 'chunks;
                }
                if r == 0 {
                    error = Some(plan.failure(&s, libc::ENODATA));
                    break 'chunks;
                }
                s.done += r as u64;
            }
        }
        *complete = true;
        bytes_done += plan.chunk_len(c);
        progress(bytes_done);
    }
    Outcome {
        done_prefix: prefix(&completed, plan),
        stopped: stop.load(Ordering::Relaxed) && completed.iter().any(|c| !c),
        completed,
        error,
        engine: "pread/pwrite",
    }
}
