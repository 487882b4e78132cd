//! The data path: chunks read from the source into a staging slot and
//! written from it to the destination, several slots in flight, with
//! io_uring (or plain pread/pwrite where io_uring is not available).
//!
//! With O_DIRECT on both ends the kernel DMAs straight between the devices
//! and the staging memory: when that memory is P2P memory, both DMAs are
//! peer to peer and the CPU never touches the data.
//!
//! The staging memory is handed to the kernel as a raw pointer, so Rust's
//! borrows cannot tell when the kernel is done with it. [`InFlight`] makes
//! that a property of its type instead: it owns the ring and the staging
//! memory together, and whichever way it goes away (a return, an error, a
//! panic in the progress callback), its `Drop` first reaps every completion
//! and only then frees the memory. If the ring cannot be drained, the memory
//! is leaked rather than freed: the kernel (or its io-wq workers, for
//! buffered I/O) may still write into it.

use super::buffer::Staging;
use super::endpoint::Endpoint;
use crate::{Error, Result};
use io_uring::{opcode, squeue, types, IoUring};
use serde::Serialize;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest chunk: an io_uring read or write carries a 32-bit length and
/// the kernel moves at most `MAX_RW_COUNT` (2 GiB - 4 KiB) per call; 1 GiB
/// stays clear of both.
pub const MAX_CHUNK: u64 = 1 << 30;

/// How often a transient `io_uring_enter` error (EINTR, EAGAIN, EBUSY) is
/// retried in a row before it counts as a failure.
const TRANSIENT_RETRIES: u32 = 10_000;

/// The aligned middle of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Body {
    pub src_off: u64,
    pub dst_off: u64,
    pub len: u64,
}

/// A failed system call of the data path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IoFailure {
    /// "read", "write", "io_uring_enter", ...
    pub op: &'static str,
    /// The file or device (empty for the ring itself).
    pub path: String,
    pub offset: u64,
    pub errno: i32,
}

impl IoFailure {
    pub fn is_eremoteio(&self) -> bool {
        self.errno == libc::EREMOTEIO
    }

    fn ring(op: &'static str, e: &io::Error) -> IoFailure {
        IoFailure {
            op,
            path: String::new(),
            offset: 0,
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl std::fmt::Display for IoFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = crate::errno_text(&io::Error::from_raw_os_error(self.errno));
        if self.path.is_empty() {
            write!(f, "{} failed: {e}", self.op)
        } else {
            write!(
                f,
                "{} of {} at offset {} failed: {e}",
                self.op, self.path, self.offset
            )
        }
    }
}

impl std::error::Error for IoFailure {}

/// What the pipeline did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Bytes from the start of the body known to be copied.
    pub done_prefix: u64,
    pub error: Option<IoFailure>,
    /// "io_uring" or "pread/pwrite".
    pub engine: &'static str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Idle,
    Reading,
    Writing,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    chunk: usize,
    phase: Phase,
    done: u64,
}

/// One run of the pipeline.
pub(crate) struct Job<'a> {
    pub src: &'a Endpoint,
    pub dst: &'a Endpoint,
    pub body: Body,
    pub chunk: u64,
    /// Slots of `chunk` bytes in flight (at most staging / chunk).
    pub depth: usize,
}

/// What the pipeline needs of the staging memory: where it is and how long.
pub(crate) trait StagingMem {
    /// Base address for the kernel (never dereferenced by Rust).
    fn base(&self) -> *mut u8;
    fn len(&self) -> usize;
}

impl StagingMem for Staging {
    fn base(&self) -> *mut u8 {
        self.raw()
    }
    fn len(&self) -> usize {
        Staging::len(self)
    }
}

/// The operations on an io_uring that the pipeline uses. A trait so that
/// the tests can fail them on purpose.
pub(crate) trait RingOps {
    /// Queue one entry; `false` when the submission queue is full.
    ///
    /// # Safety
    /// The memory the entry points to must stay valid until its completion
    /// has been reaped.
    unsafe fn push(&mut self, e: &squeue::Entry) -> bool;
    /// Hand the queued entries to the kernel.
    fn submit(&mut self) -> io::Result<usize>;
    /// Hand the queued entries to the kernel and wait for `want` completions.
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize>;
    /// Move the completions that are ready to `out` as (user data, result).
    fn reap(&mut self, out: &mut Vec<(u64, i32)>);
}

impl RingOps for IoUring {
    unsafe fn push(&mut self, e: &squeue::Entry) -> bool {
        // SAFETY: passed on to the caller (see the trait).
        unsafe { self.submission().push(e).is_ok() }
    }
    fn submit(&mut self) -> io::Result<usize> {
        IoUring::submit(self)
    }
    fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        IoUring::submit_and_wait(self, want)
    }
    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.extend(self.completion().map(|c| (c.user_data(), c.result())));
    }
}

fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
    )
}

/// A ring and the staging memory its I/O points into, owned together.
///
/// Every entry pushed is counted until its completion is reaped. Dropping
/// the guard reaps what is outstanding first; the staging memory is freed
/// after that, or leaked if the ring cannot be drained.
pub(crate) struct InFlight<R: RingOps, B: StagingMem> {
    ring: R,
    staging: ManuallyDrop<B>,
    /// Entries pushed whose completions have not been reaped.
    pending: usize,
}

impl<R: RingOps, B: StagingMem> InFlight<R, B> {
    pub(crate) fn new(ring: R, staging: B) -> Self {
        InFlight {
            ring,
            staging: ManuallyDrop::new(staging),
            pending: 0,
        }
    }

    fn staging(&self) -> &B {
        &self.staging
    }

    /// Queue an entry whose buffer lies in the staging memory. A full
    /// submission queue is flushed to the kernel and the push retried; an
    /// entry is never dropped silently.
    ///
    /// # Safety
    /// The entry's buffer must lie inside `self.staging()`.
    unsafe fn push(&mut self, e: &squeue::Entry) -> std::result::Result<(), IoFailure> {
        for attempt in 0..2 {
            // SAFETY: the buffer lies in the staging memory (the caller's
            // promise), which `self` owns and frees only after every
            // completion has been reaped (or never: see Drop).
            if unsafe { self.ring.push(e) } {
                self.pending += 1;
                return Ok(());
            }
            if attempt == 0 {
                self.flush()?;
            }
        }
        Err(IoFailure::ring(
            "io_uring submission (queue full after a flush)",
            &io::Error::from_raw_os_error(libc::EBUSY),
        ))
    }

    /// Hand what is queued to the kernel, retrying transient errors.
    fn flush(&mut self) -> std::result::Result<(), IoFailure> {
        let mut tries = 0;
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if transient(&e) && tries < TRANSIENT_RETRIES => {
                    tries += 1;
                    backoff(&e);
                }
                Err(e) => return Err(IoFailure::ring("io_uring_enter", &e)),
            }
        }
    }

    /// Wait for at least one completion (when anything is outstanding) and
    /// move every ready completion to `out`. Transient errors are retried.
    fn wait(&mut self, out: &mut Vec<(u64, i32)>) -> std::result::Result<(), IoFailure> {
        let mut tries = 0;
        while self.pending > 0 {
            let r = self.ring.submit_and_wait(1);
            let before = out.len();
            self.ring.reap(out);
            self.pending = self.pending.saturating_sub(out.len() - before);
            match r {
                Ok(_) => return Ok(()),
                // EBUSY: completions overflowed; reaping above makes room.
                _ if out.len() > before => return Ok(()),
                Err(e) if transient(&e) && tries < TRANSIENT_RETRIES => {
                    tries += 1;
                    backoff(&e);
                }
                Err(e) => return Err(IoFailure::ring("io_uring_enter", &e)),
            }
        }
        Ok(())
    }

    /// Reap every outstanding completion (their results are discarded).
    fn drain(&mut self) -> std::result::Result<(), IoFailure> {
        let mut sink = Vec::new();
        while self.pending > 0 {
            sink.clear();
            self.wait(&mut sink)?;
        }
        Ok(())
    }
}

fn backoff(e: &io::Error) {
    if e.raw_os_error() != Some(libc::EINTR) {
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

impl<R: RingOps, B: StagingMem> Drop for InFlight<R, B> {
    fn drop(&mut self) {
        if self.drain().is_ok() {
            // SAFETY: nothing is in flight any more, so no one but us
            // points into the staging memory; it is dropped exactly once,
            // here, and never touched again.
            unsafe { ManuallyDrop::drop(&mut self.staging) };
        }
        // Otherwise the staging memory is leaked on purpose: the kernel may
        // still write into it, so it must stay mapped for the life of the
        // process. The ring is closed below; the kernel cancels what it can.
    }
}

/// Check a job against its staging memory before any I/O.
fn check(job: &Job<'_>, staging_len: usize) -> Result<(usize, usize)> {
    if job.chunk == 0 || job.chunk > MAX_CHUNK {
        return Err(Error::Pipeline(format!(
            "chunk of {} bytes is outside 1..={MAX_CHUNK}",
            job.chunk
        )));
    }
    let n = usize::try_from(job.body.len.div_ceil(job.chunk))
        .map_err(|_| Error::Pipeline(format!("{} chunks do not fit in memory", job.body.len)))?;
    let depth = job.depth.clamp(1, n.max(1));
    if (depth as u64).saturating_mul(job.chunk) > staging_len as u64 {
        return Err(Error::Pipeline(format!(
            "staging memory of {staging_len} bytes is smaller than {depth} slots of {} bytes",
            job.chunk
        )));
    }
    Ok((n, depth))
}

/// Copy `job.body` in chunks with `job.depth` slots of `staging`, which the
/// run owns: it is freed when every I/O that points into it has completed.
/// Stops early (after in-flight I/O completes) when `stop` is set or an
/// operation fails. `progress` gets the bytes completed so far.
pub(crate) fn run(
    job: &Job<'_>,
    staging: Staging,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let (_, depth) = check(job, staging.len())?;
    match IoUring::new((depth as u32).next_power_of_two().max(2)) {
        Ok(ring) => run_ring(job, InFlight::new(ring, staging), stop, progress),
        Err(_) => Ok(run_sync(job, &staging, stop, progress)),
    }
}

/// The parts of a job the pipeline steps need.
struct Steps<'a> {
    job: &'a Job<'a>,
    base: *mut u8,
    n: usize,
}

impl Steps<'_> {
    fn chunk_len(&self, i: usize) -> u64 {
        (self.job.body.len - i as u64 * self.job.chunk).min(self.job.chunk)
    }
    /// (fd, file offset, buffer pointer, bytes) of the next step of a slot.
    fn op(&self, slot: usize, s: &Slot) -> (i32, u64, *mut u8, u32) {
        let j = self.job;
        let off = s.chunk as u64 * j.chunk + s.done;
        let (fd, file_off) = match s.phase {
            Phase::Reading => (j.src.fd.as_raw_fd(), j.body.src_off + off),
            _ => (j.dst.fd.as_raw_fd(), j.body.dst_off + off),
        };
        // SAFETY: slot < depth and done < chunk, so slot * chunk + done <
        // depth * chunk <= the staging length (`check`); the pointer stays
        // inside the staging memory and is only handed to the kernel.
        let ptr = unsafe { self.base.add(slot * j.chunk as usize + s.done as usize) };
        // chunk <= MAX_CHUNK < 2^32 (`check`): the length fits.
        let len = u32::try_from(self.chunk_len(s.chunk) - s.done).unwrap_or(u32::MAX);
        (fd, file_off, ptr, len)
    }
    fn failure(&self, s: &Slot, errno: i32) -> IoFailure {
        let j = self.job;
        let (path, base, op) = match s.phase {
            Phase::Reading => (&j.src.path, j.body.src_off, "read"),
            _ => (&j.dst.path, j.body.dst_off, "write"),
        };
        IoFailure {
            op,
            path: path.display().to_string(),
            offset: base + s.chunk as u64 * j.chunk + s.done,
            errno,
        }
    }
    fn prefix(&self, completed: &[bool]) -> u64 {
        let k = completed.iter().take_while(|c| **c).count();
        (k as u64 * self.job.chunk).min(self.job.body.len)
    }
}

pub(crate) fn run_ring<R: RingOps, B: StagingMem>(
    job: &Job<'_>,
    mut ring: InFlight<R, B>,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Outcome> {
    let (n, depth) = check(job, ring.staging().len())?;
    let steps = Steps {
        job,
        base: ring.staging().base(),
        n,
    };
    let mut slots = vec![
        Slot {
            chunk: 0,
            phase: Phase::Idle,
            done: 0
        };
        depth
    ];
    let mut completed = vec![false; steps.n];
    let mut next = 0usize;
    let mut error: Option<IoFailure> = None;
    let mut bytes_done = 0u64;

    // Queue the next step of slot `i`; a failure to queue stops the run
    // with that failure (the slot goes idle, its chunk stays incomplete).
    let submit =
        |ring: &mut InFlight<R, B>, error: &mut Option<IoFailure>, i: usize, s: &mut Slot| {
            let (fd, off, ptr, len) = steps.op(i, s);
            let e = match s.phase {
                Phase::Reading => opcode::Read::new(types::Fd(fd), ptr, len)
                    .offset(off)
                    .build(),
                _ => opcode::Write::new(types::Fd(fd), ptr, len)
                    .offset(off)
                    .build(),
            }
            .user_data(i as u64);
            // SAFETY: `ptr..ptr+len` lies in the ring's staging memory
            // (`Steps::op`), which the guard keeps alive until the completion
            // is reaped.
            if let Err(f) = unsafe { ring.push(&e) } {
                error.get_or_insert(f);
                s.phase = Phase::Idle;
            }
        };

    for (i, s) in slots.iter_mut().enumerate() {
        if next >= steps.n || stop.load(Ordering::Relaxed) {
            break;
        }
        *s = Slot {
            chunk: next,
            phase: Phase::Reading,
            done: 0,
        };
        next += 1;
        submit(&mut ring, &mut error, i, s);
    }
    let mut cqes = Vec::with_capacity(depth);
    while ring.pending > 0 {
        cqes.clear();
        if let Err(f) = ring.wait(&mut cqes) {
            // The ring itself failed: submit nothing more; the guard reaps
            // what is in flight before the staging memory goes.
            error.get_or_insert(f);
            break;
        }
        for &(ud, res) in &cqes {
            let i = ud as usize;
            let mut s = slots[i];
            #[cfg(test)]
            let res = inject::result(s.phase == Phase::Writing, res);
            if res < 0 {
                error.get_or_insert(steps.failure(&s, -res));
                slots[i].phase = Phase::Idle;
                continue;
            }
            if res == 0 {
                // End of the source, or a write that moved nothing.
                let errno = if s.phase == Phase::Reading {
                    libc::ENODATA
                } else {
                    libc::EIO
                };
                error.get_or_insert(steps.failure(&s, errno));
                slots[i].phase = Phase::Idle;
                continue;
            }
            s.done += res as u64;
            let want = steps.chunk_len(s.chunk);
            if s.done < want {
                // A short read or write: go on from where it stopped.
                submit(&mut ring, &mut error, i, &mut s);
            } else if s.phase == Phase::Reading {
                s.phase = Phase::Writing;
                s.done = 0;
                submit(&mut ring, &mut error, i, &mut s);
            } else {
                completed[s.chunk] = true;
                bytes_done += want;
                progress(bytes_done);
                if error.is_none() && !stop.load(Ordering::Relaxed) && next < steps.n {
                    s = Slot {
                        chunk: next,
                        phase: Phase::Reading,
                        done: 0,
                    };
                    next += 1;
                    submit(&mut ring, &mut error, i, &mut s);
                } else {
                    s.phase = Phase::Idle;
                }
            }
            slots[i] = s;
        }
    }
    // Everything still in flight is reaped here (or by the guard's Drop,
    // which then leaks the staging memory if it cannot).
    if let Err(f) = ring.drain() {
        error.get_or_insert(f);
    }
    Ok(Outcome {
        done_prefix: steps.prefix(&completed),
        error,
        engine: "io_uring",
    })
}

fn run_sync<B: StagingMem>(
    job: &Job<'_>,
    staging: &B,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Outcome {
    let n = job.body.len.div_ceil(job.chunk) as usize;
    let steps = Steps {
        job,
        base: staging.base(),
        n,
    };
    let mut completed = vec![false; steps.n];
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
            while s.done < steps.chunk_len(c) {
                let (fd, off, ptr, len) = steps.op(0, &s);
                // SAFETY: ptr..ptr+len lies in the staging memory (slot 0),
                // which the borrow keeps alive across this synchronous call;
                // the kernel reads or writes it, no Rust reference does.
                let r = unsafe {
                    match phase {
                        Phase::Reading => {
                            libc::pread(fd, ptr.cast(), len as usize, off as libc::off_t)
                        }
                        _ => libc::pwrite(fd, ptr.cast(), len as usize, off as libc::off_t),
                    }
                };
                if r < 0 {
                    let errno = io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    if errno == libc::EINTR {
                        continue;
                    }
                    error = Some(steps.failure(&s, errno));
                    break 'chunks;
                }
                if r == 0 {
                    let errno = if phase == Phase::Reading {
                        libc::ENODATA
                    } else {
                        libc::EIO
                    };
                    error = Some(steps.failure(&s, errno));
                    break 'chunks;
                }
                s.done += r as u64;
            }
        }
        *complete = true;
        bytes_done += steps.chunk_len(c);
        progress(bytes_done);
    }
    Outcome {
        done_prefix: steps.prefix(&completed),
        error,
        engine: "pread/pwrite",
    }
}

/// Tests of the layers above make a write fail as the kernel would (the
/// n-th write completion of this thread's next runs gets `-errno`).
#[cfg(test)]
pub(crate) mod inject {
    use std::cell::Cell;

    thread_local! {
        static WRITE_FAILS: Cell<Option<(u32, i32)>> = const { Cell::new(None) };
    }

    /// Make the `nth` write completion from now on (from 1) fail with `errno`.
    pub fn fail_write(nth: u32, errno: i32) {
        WRITE_FAILS.with(|w| w.set(Some((nth, errno))));
    }

    pub(super) fn result(write: bool, res: i32) -> i32 {
        WRITE_FAILS.with(|w| match w.get() {
            Some((1, errno)) if write => {
                w.set(None);
                -errno
            }
            Some((n, errno)) if write => {
                w.set(Some((n - 1, errno)));
                res
            }
            _ => res,
        })
    }
}

#[cfg(test)]
mod tests {
    //! Fault injection: a real io_uring that records every entry pushed and
    //! every completion reaped, and fails on command; a staging buffer whose
    //! drop is recorded in the same log.
    use super::*;
    use crate::copy::buffer::HostBuf;
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::fs;
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::path::Path;
    use std::rc::Rc;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Event {
        Push,
        Reap,
        /// An enter failed on command.
        EnterFailed,
        /// The progress callback panicked.
        Panicked,
        StagingDropped,
    }

    type Log = Rc<RefCell<Vec<Event>>>;

    /// A real io_uring with failures on command.
    struct Faulty {
        inner: IoUring,
        log: Log,
        /// What the next enters (submit or submit_and_wait) do, in order:
        /// `None` works, `Some(errno)` fails without entering the kernel.
        schedule: VecDeque<Option<i32>>,
        /// Every enter from this one on (counting from 1) fails with EIO.
        fail_all_from: usize,
        enters: usize,
        /// Refuse this many pushes as if the queue were full.
        full: usize,
        /// Hand completions to the loop one per reap, the others kept
        /// back (still in flight for the loop), so that I/O is in flight
        /// at any point of a run whatever the kernel's speed.
        trickle: bool,
        held: VecDeque<(u64, i32)>,
    }

    impl Faulty {
        fn new(log: &Log) -> Faulty {
            Faulty {
                inner: IoUring::new(8).unwrap(),
                log: log.clone(),
                schedule: VecDeque::new(),
                fail_all_from: usize::MAX,
                enters: 0,
                full: 0,
                trickle: false,
                held: VecDeque::new(),
            }
        }
        fn trickle(mut self) -> Faulty {
            self.trickle = true;
            self
        }
        /// The `nth` enter (from 1) fails with `errno`, once.
        fn fail_nth(mut self, nth: usize, errno: i32) -> Faulty {
            self.schedule = (1..nth).map(|_| None).collect();
            self.schedule.push_back(Some(errno));
            self
        }
        fn injected(&mut self) -> Option<io::Error> {
            self.enters += 1;
            let errno = if self.enters >= self.fail_all_from {
                Some(libc::EIO)
            } else {
                self.schedule.pop_front().flatten()
            };
            if errno.is_some() {
                self.log.borrow_mut().push(Event::EnterFailed);
            }
            errno.map(io::Error::from_raw_os_error)
        }
    }

    impl RingOps for Faulty {
        unsafe fn push(&mut self, e: &squeue::Entry) -> bool {
            if self.full > 0 {
                self.full -= 1;
                return false;
            }
            // SAFETY: passed on from our caller.
            let ok = unsafe { RingOps::push(&mut self.inner, e) };
            if ok {
                self.log.borrow_mut().push(Event::Push);
            }
            ok
        }
        fn submit(&mut self) -> io::Result<usize> {
            match self.injected() {
                Some(e) => Err(e),
                None => RingOps::submit(&mut self.inner),
            }
        }
        fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
            match self.injected() {
                Some(e) => Err(e),
                // Completions held back are there already: don't wait for
                // the kernel to produce more.
                None if !self.held.is_empty() => RingOps::submit(&mut self.inner),
                None => RingOps::submit_and_wait(&mut self.inner, want),
            }
        }
        fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
            let mut fresh = Vec::new();
            self.inner.reap(&mut fresh);
            self.held.extend(fresh);
            let n = if self.trickle { 1 } else { self.held.len() };
            for _ in 0..n.min(self.held.len()) {
                if let Some(c) = self.held.pop_front() {
                    out.push(c);
                    self.log.borrow_mut().push(Event::Reap);
                }
            }
        }
    }

    /// Host memory whose drop is logged.
    struct Logged {
        buf: HostBuf,
        log: Log,
    }

    impl StagingMem for Logged {
        fn base(&self) -> *mut u8 {
            self.buf.raw()
        }
        fn len(&self) -> usize {
            self.buf.len()
        }
    }

    impl Drop for Logged {
        fn drop(&mut self) {
            self.log.borrow_mut().push(Event::StagingDropped);
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        src: Endpoint,
        dst: Endpoint,
        data: Vec<u8>,
        dst_path: std::path::PathBuf,
    }

    const CHUNK: u64 = 64 << 10;
    const DEPTH: usize = 4;

    fn setup(len: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
        fs::write(&src_path, &data).unwrap();
        let dst_path = dir.path().join("dst");
        fs::write(&dst_path, vec![0u8; len]).unwrap();
        let src = Endpoint::open_src(&src_path, Path::new("/")).unwrap();
        let dst = Endpoint::open_dst(&dst_path, Path::new("/")).unwrap();
        Setup {
            _dir: dir,
            src,
            dst,
            data,
            dst_path,
        }
    }

    fn job(s: &Setup) -> Job<'_> {
        Job {
            src: &s.src,
            dst: &s.dst,
            body: Body {
                src_off: 0,
                dst_off: 0,
                len: s.data.len() as u64,
            },
            chunk: CHUNK,
            depth: DEPTH,
        }
    }

    fn staging(log: &Log) -> Logged {
        Logged {
            buf: HostBuf::new(DEPTH * CHUNK as usize, None).unwrap(),
            log: log.clone(),
        }
    }

    fn count(log: &[Event], what: Event) -> usize {
        log.iter().filter(|e| **e == what).count()
    }

    /// Entries pushed and not yet reaped when `what` first happened.
    fn in_flight_at(log: &Log, what: Event) -> usize {
        let log = log.borrow();
        let at = log.iter().position(|e| *e == what).expect("it happened");
        count(&log[..at], Event::Push) - count(&log[..at], Event::Reap)
    }

    /// Every entry pushed was reaped, all of it before the staging memory
    /// was dropped, which happened exactly once and last.
    fn assert_reaped_before_drop(log: &Log) {
        let log = log.borrow();
        let drop_at = log
            .iter()
            .position(|e| *e == Event::StagingDropped)
            .expect("the staging memory was dropped");
        let before = &log[..drop_at];
        assert!(count(before, Event::Push) > 0);
        assert_eq!(
            count(before, Event::Push),
            count(before, Event::Reap),
            "entries pushed vs completions reaped before the staging memory was freed"
        );
        assert_eq!(log.len(), drop_at + 1, "nothing happens after the drop");
    }

    fn go(s: &Setup, ring: Faulty, log: &Log, progress: &mut dyn FnMut(u64)) -> Result<Outcome> {
        let stop = AtomicBool::new(false);
        run_ring(&job(s), InFlight::new(ring, staging(log)), &stop, progress)
    }

    fn assert_prefix_right(s: &Setup, out: &Outcome) {
        let got = fs::read(&s.dst_path).unwrap();
        let k = out.done_prefix as usize;
        assert_eq!(&got[..k], &s.data[..k], "the prefix reported is right");
    }

    #[test]
    fn a_clean_run_copies_and_reaps_everything() {
        let s = setup(1 << 20);
        let log = Log::default();
        let out = go(&s, Faulty::new(&log), &log, &mut |_| {}).unwrap();
        assert_eq!(out.error, None);
        assert_eq!(out.done_prefix, s.data.len() as u64);
        assert_eq!(fs::read(&s.dst_path).unwrap(), s.data);
        assert_reaped_before_drop(&log);
    }

    #[test]
    fn transient_enter_errors_are_retried() {
        for errno in [libc::EAGAIN, libc::EBUSY, libc::EINTR] {
            for nth in [1, 5] {
                let s = setup(1 << 20);
                let log = Log::default();
                let ring = Faulty::new(&log).fail_nth(nth, errno);
                let out = go(&s, ring, &log, &mut |_| {}).unwrap();
                assert_eq!(
                    out.error,
                    None,
                    "{} at enter {nth}",
                    crate::errno_name(errno)
                );
                assert_eq!(out.done_prefix, s.data.len() as u64);
                assert_eq!(fs::read(&s.dst_path).unwrap(), s.data);
                assert_reaped_before_drop(&log);
            }
        }
    }

    #[test]
    fn a_failing_enter_stops_the_run_after_reaping_what_is_in_flight() {
        let s = setup(2 << 20);
        let log = Log::default();
        // The 6th enter fails with EIO, once; the ones after it (the drain)
        // work.
        let ring = Faulty::new(&log).fail_nth(6, libc::EIO);
        let out = go(&s, ring, &log, &mut |_| {}).unwrap();
        let e = out.error.clone().expect("the failure is reported");
        assert_eq!((e.op, e.errno), ("io_uring_enter", libc::EIO));
        assert!(e.to_string().contains("EIO"), "{e}");
        assert!(out.done_prefix < s.data.len() as u64);
        assert_prefix_right(&s, &out);
        let n = in_flight_at(&log, Event::EnterFailed);
        assert!(n > 0, "I/O was in flight when the enter failed");
        assert_reaped_before_drop(&log);
    }

    #[test]
    fn a_panicking_progress_callback_unwinds_only_after_the_io_is_reaped() {
        let s = setup(2 << 20);
        let log = Log::default();
        let ring = Faulty::new(&log).trickle();
        let r = catch_unwind(AssertUnwindSafe(|| {
            go(&s, ring, &log, &mut |done| {
                if done >= 3 * CHUNK {
                    log.borrow_mut().push(Event::Panicked);
                    panic!("progress callback fails");
                }
            })
        }));
        assert!(r.is_err(), "the panic reaches the caller");
        let n = in_flight_at(&log, Event::Panicked);
        assert!(n > 0, "I/O was in flight when the callback panicked");
        assert_reaped_before_drop(&log);
    }

    #[test]
    fn staging_memory_is_leaked_when_the_ring_cannot_be_drained() {
        let s = setup(2 << 20);
        let log = Log::default();
        let mut ring = Faulty::new(&log);
        ring.fail_all_from = 4;
        let out = go(&s, ring, &log, &mut |_| {}).unwrap();
        let e = out.error.expect("reported");
        assert_eq!(e.errno, libc::EIO);
        let log = log.borrow();
        assert!(
            !log.contains(&Event::StagingDropped),
            "the staging memory was freed with I/O possibly in flight"
        );
        assert!(count(&log, Event::Push) > count(&log, Event::Reap));
    }

    #[test]
    fn a_full_submission_queue_is_flushed_and_the_push_retried() {
        let s = setup(1 << 20);
        let log = Log::default();
        let mut ring = Faulty::new(&log);
        ring.full = 1;
        let out = go(&s, ring, &log, &mut |_| {}).unwrap();
        assert_eq!(out.error, None);
        assert_eq!(fs::read(&s.dst_path).unwrap(), s.data);
        assert_reaped_before_drop(&log);
        // A queue that stays full is an error, not a silent drop.
        let s = setup(1 << 20);
        let log = Log::default();
        let mut ring = Faulty::new(&log);
        ring.full = usize::MAX;
        let out = go(&s, ring, &log, &mut |_| {}).unwrap();
        let e = out.error.expect("reported");
        assert!(e.op.contains("queue full"), "{e}");
        assert_eq!(out.done_prefix, 0);
    }

    #[test]
    fn bad_jobs_are_errors_not_panics() {
        let s = setup(1 << 20);
        let log = Log::default();
        let stop = AtomicBool::new(false);
        let mut j = job(&s);
        j.depth = 64;
        let e = run_ring(
            &j,
            InFlight::new(Faulty::new(&log), staging(&log)),
            &stop,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("smaller than"), "{e}");
        let mut j = job(&s);
        j.chunk = 1 << 32;
        let e = run_ring(
            &j,
            InFlight::new(Faulty::new(&log), staging(&log)),
            &stop,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("4294967296"), "{e}");
        // Nothing was pushed, and the staging memory went (twice: two runs).
        assert_eq!(count(&log.borrow(), Event::Push), 0);
        assert_eq!(count(&log.borrow(), Event::StagingDropped), 2);
    }

    #[test]
    fn the_pread_pwrite_engine_copies_too() {
        let s = setup((1 << 20) + 4096);
        let log = Log::default();
        let stop = AtomicBool::new(false);
        let mut seen = Vec::new();
        let out = run_sync(&job(&s), &staging(&log), &stop, &mut |d| seen.push(d));
        assert_eq!(out.error, None);
        assert_eq!(out.engine, "pread/pwrite");
        assert_eq!(out.done_prefix, s.data.len() as u64);
        assert_eq!(fs::read(&s.dst_path).unwrap(), s.data);
        assert_eq!(seen.last().copied(), Some(s.data.len() as u64));
    }
}
