//! A tracing session on tracefs that leaves the system's tracing as it
//! found it.
//!
//! The session never touches the top-level tracing state (enabled events,
//! filters, buffer size, `tracing_on`, the current tracer): it makes its
//! own trace *instance* (`instances/peerdma-PID-N`), which has its own
//! ring buffer, events, filters and `tracing_on`, enables the DMA
//! mapping events there, filtered to the transfer's devices, reads the
//! instance's `trace_pipe` in a thread while the transfer runs, and
//! removes the instance at the end: on [`Session::finish`], and from
//! `Drop` on every other way out (an error, a panic). `SIGINT` during a
//! copy ends the copy early and takes the same way out. Only `SIGKILL` can
//! leave an instance behind; the next session removes instances whose
//! process is gone.
//!
//! Nor does the session change the mount table: where tracefs is not
//! mounted, it mounts it *detached* (`fsopen`/`fsmount`, Linux 5.2): a
//! mount that no path reaches, reached through one file descriptor and
//! gone with it. Every file is opened relative to that descriptor.
//!
//! The state of the top level is read before and after ([`TracingState`]),
//! and the report says whether it is the same.

use super::parse::{event_kind, EventFormat, EventKind, Formats, Parsed};
use peerdma_mem::Bdf;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Why the path cannot be observed; the transfer goes on without it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn errno_of(e: &std::io::Error) -> String {
    crate::errno_text(e)
}

/// How the session reaches tracefs.
#[derive(Debug)]
enum Reach {
    /// An existing mount, at this path.
    Mounted(PathBuf),
    /// A detached mount of our own (no path; gone with the descriptor).
    Detached,
}

/// tracefs, opened.
#[derive(Debug)]
pub struct Tracefs {
    root: OwnedFd,
    reach: Reach,
}

/// `/proc/self/mountinfo` mount points of tracefs.
pub fn tracefs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "tracefs" {
                return None;
            }
            let mp = left.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_octal(mp)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Tracefs {
    /// Reach tracefs as root: an existing mount, or a detached one.
    pub fn open() -> Result<Tracefs, Unavailable> {
        if !rustix::process::geteuid().is_root() {
            return Err(Unavailable(
                "--trace needs root: the kernel's DMA mapping events are read through tracefs, which only root may use".into(),
            ));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mp in tracefs_mounts(&mountinfo) {
            if let Ok(fd) = rustix::fs::open(
                &mp,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            ) {
                return Ok(Tracefs {
                    root: fd,
                    reach: Reach::Mounted(mp),
                });
            }
        }
        use rustix::mount::{
            fsconfig_create, fsmount, fsopen, FsMountFlags, FsOpenFlags, MountAttrFlags,
        };
        let fs = fsopen("tracefs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(|e| {
            Unavailable(match e {
                rustix::io::Errno::NODEV => "this kernel has no tracefs (built without CONFIG_TRACING): the DMA mapping events cannot be read".into(),
                rustix::io::Errno::NOSYS => "this kernel has no fsopen() (older than 5.2) and tracefs is not mounted: mount it (mount -t tracefs nodev /sys/kernel/tracing)".into(),
                e => format!("cannot mount tracefs: fsopen: {}", errno_of(&e.into())),
            })
        })?;
        fsconfig_create(&fs).map_err(|e| {
            Unavailable(format!(
                "cannot mount tracefs: fsconfig: {}",
                errno_of(&e.into())
            ))
        })?;
        let root =
            fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty()).map_err(|e| {
                Unavailable(format!(
                    "cannot mount tracefs: fsmount: {}",
                    errno_of(&e.into())
                ))
            })?;
        Ok(Tracefs {
            root,
            reach: Reach::Detached,
        })
    }

    /// Where it was found, in words.
    pub fn describe(&self) -> String {
        match &self.reach {
            Reach::Mounted(p) => format!("tracefs at {}", p.display()),
            Reach::Detached => "tracefs mounted detached for this session".into(),
        }
    }

    fn open_file(&self, rel: &str, flags: OFlags) -> std::io::Result<File> {
        let fd = rustix::fs::openat(&self.root, rel, flags | OFlags::CLOEXEC, Mode::empty())?;
        Ok(File::from(fd))
    }

    /// Read a file of tracefs.
    pub fn read(&self, rel: &str) -> std::io::Result<String> {
        let mut s = String::new();
        self.open_file(rel, OFlags::RDONLY)?
            .read_to_string(&mut s)?;
        Ok(s)
    }

    /// Write a file of tracefs (one write, as `echo` does).
    pub fn write(&self, rel: &str, text: &str) -> std::io::Result<()> {
        let mut f = self.open_file(rel, OFlags::WRONLY | OFlags::TRUNC)?;
        f.write_all(text.as_bytes())
    }

    /// The names in a directory of tracefs.
    pub fn list(&self, rel: &str) -> std::io::Result<Vec<String>> {
        let fd = rustix::fs::openat(
            &self.root,
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&fd)? {
            let entry = entry?;
            let n = entry.file_name().to_string_lossy().into_owned();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        Ok(names)
    }

    fn mkdir(&self, rel: &str) -> std::io::Result<()> {
        Ok(rustix::fs::mkdirat(
            &self.root,
            rel,
            Mode::from_raw_mode(0o755),
        )?)
    }

    fn rmdir(&self, rel: &str) -> std::io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.root, rel, AtFlags::REMOVEDIR)?)
    }
}

/// The top-level tracing state a session must leave as it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TracingState {
    pub tracing_on: String,
    pub current_tracer: String,
    pub buffer_size_kb: String,
    /// `set_event`: every enabled event.
    pub set_event: String,
    /// `enable` and `filter` of each event of the `dma` system.
    pub dma_events: BTreeMap<String, (String, String)>,
    /// The instances, ours excluded.
    pub instances: Vec<String>,
    /// tracefs mount points.
    pub mounts: Vec<PathBuf>,
}

impl TracingState {
    pub fn read(t: &Tracefs, except: Option<&str>) -> std::io::Result<TracingState> {
        let mut dma_events = BTreeMap::new();
        if let Ok(names) = t.list("events/dma") {
            for n in names {
                let dir = format!("events/dma/{n}");
                if let (Ok(en), Ok(fi)) = (
                    t.read(&format!("{dir}/enable")),
                    t.read(&format!("{dir}/filter")),
                ) {
                    dma_events.insert(n, (en, fi));
                }
            }
        }
        Ok(TracingState {
            tracing_on: t.read("tracing_on")?,
            current_tracer: t.read("current_tracer")?,
            buffer_size_kb: t.read("buffer_size_kb")?,
            set_event: t.read("set_event")?,
            dma_events,
            instances: t
                .list("instances")?
                .into_iter()
                .filter(|n| Some(n.as_str()) != except)
                .collect(),
            mounts: tracefs_mounts(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            ),
        })
    }

    /// What differs from `other`, in words.
    pub fn differences(&self, other: &TracingState) -> Vec<String> {
        let mut d = Vec::new();
        let mut cmp = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            let (a, b) = (format!("{a:?}"), format!("{b:?}"));
            if a != b {
                d.push(format!("{what}: {a} -> {b}"));
            }
        };
        cmp("tracing_on", &self.tracing_on, &other.tracing_on);
        cmp(
            "current_tracer",
            &self.current_tracer,
            &other.current_tracer,
        );
        cmp(
            "buffer_size_kb",
            &self.buffer_size_kb,
            &other.buffer_size_kb,
        );
        cmp("set_event", &self.set_event, &other.set_event);
        cmp(
            "dma events (enable, filter)",
            &self.dma_events,
            &other.dma_events,
        );
        cmp("instances", &self.instances, &other.instances);
        cmp("tracefs mounts", &self.mounts, &other.mounts);
        d
    }
}

/// Our instances: `peerdma-PID-N`.
pub const INSTANCE_PREFIX: &str = "peerdma-";

/// The pid in an instance name of ours.
pub fn instance_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(INSTANCE_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

static SESSIONS: AtomicU32 = AtomicU32::new(0);

/// What a session read.
#[derive(Debug, Default)]
pub struct Collected {
    pub parsed: Parsed,
    /// Events enabled.
    pub events: Vec<String>,
    /// Bytes read from `trace_pipe`.
    pub bytes_read: u64,
    /// Remarks: stale instances removed, events lacking labels, a changed
    /// top-level state.
    pub notes: Vec<String>,
    /// The top level was the same after as before.
    pub state_unchanged: bool,
}

/// A running session: an instance with the DMA mapping events enabled
/// and a thread reading them. Dropped unfinished (an error, a panic), it
/// stops and removes the instance all the same.
pub struct Session {
    fs: Arc<Tracefs>,
    name: String,
    before: TracingState,
    events: Vec<String>,
    notes: Vec<String>,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<(Parsed, u64)>>,
    /// The instance is gone.
    removed: bool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("instance", &self.name)
            .finish()
    }
}

/// `PEERDMA_TRACE_RAW=FILE`: the session also appends every byte it reads
/// from `trace_pipe` to FILE. A test hook: the QEMU scenarios keep the
/// kernel's own lines as fixtures this way.
pub const RAW_ENV: &str = "PEERDMA_TRACE_RAW";

impl Session {
    /// Start tracing the DMA mapping events of `devices`.
    pub fn start(devices: &[Bdf]) -> Result<Session, Unavailable> {
        if devices.is_empty() {
            return Err(Unavailable(
                "no PCI device behind either end to trace".into(),
            ));
        }
        let fs = Arc::new(Tracefs::open()?);
        let before = TracingState::read(&fs, None).map_err(|e| {
            Unavailable(format!(
                "{} cannot be read: {}",
                fs.describe(),
                errno_of(&e)
            ))
        })?;
        let mut notes = Vec::new();
        // Instances of killed sessions.
        for n in &before.instances {
            if let Some(pid) = instance_pid(n) {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists()
                    && fs.rmdir(&format!("instances/{n}")).is_ok()
                {
                    notes.push(format!(
                        "removed the tracing instance {n} left by a peerdma that was killed"
                    ));
                }
            }
        }
        let before = TracingState::read(&fs, None).unwrap_or(before);
        let names = fs.list("events/dma").map_err(|_| {
            Unavailable("this kernel has no DMA mapping events (events/dma in tracefs: Linux 6.12 or later, with CONFIG_TRACING)".into())
        })?;
        let mut formats = Formats::new();
        let mut events = Vec::new();
        for n in names {
            if event_kind(&n).is_none() {
                continue;
            }
            if let Ok(text) = fs.read(&format!("events/dma/{n}/format")) {
                if let Some(f) = EventFormat::parse(&text) {
                    let missing = f.missing_labels();
                    if !missing.is_empty() && event_kind(&n) == Some(EventKind::Map) {
                        notes.push(format!(
                            "the kernel's {n} does not print {}: its mappings are not classified",
                            missing.join(", ")
                        ));
                    }
                    formats.insert(f);
                }
            }
            events.push(n);
        }
        if !events.iter().any(|e| event_kind(e) == Some(EventKind::Map)) {
            return Err(Unavailable(
                "this kernel has no dma_map_* events in tracefs".into(),
            ));
        }
        let name = format!(
            "{INSTANCE_PREFIX}{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        );
        fs.mkdir(&format!("instances/{name}")).map_err(|e| {
            Unavailable(format!(
                "cannot create the tracing instance {name} in {}: {}",
                fs.describe(),
                errno_of(&e)
            ))
        })?;
        let mut s = Session {
            fs: Arc::clone(&fs),
            name: name.clone(),
            before,
            events: Vec::new(),
            notes,
            stop: Arc::new(AtomicBool::new(false)),
            reader: None,
            removed: false,
        };
        // From here on, Drop removes the instance.
        let filter = devices
            .iter()
            .map(|d| format!("device == \"{d}\""))
            .collect::<Vec<_>>()
            .join(" || ");
        let inst = format!("instances/{name}");
        for e in &events {
            let dir = format!("{inst}/events/dma/{e}");
            fs.write(&format!("{dir}/filter"), &filter).map_err(|err| {
                Unavailable(format!(
                    "the kernel refused the event filter {filter:?} for {e}: {}",
                    errno_of(&err)
                ))
            })?;
            fs.write(&format!("{dir}/enable"), "1")
                .map_err(|err| Unavailable(format!("cannot enable {e}: {}", errno_of(&err))))?;
            s.events.push(e.clone());
        }
        let pipe = rustix::fs::openat(
            &fs.root,
            format!("{inst}/trace_pipe").as_str(),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            Unavailable(format!(
                "cannot open {inst}/trace_pipe: {}",
                errno_of(&e.into())
            ))
        })?;
        let raw = std::env::var_os(RAW_ENV).and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        let stop = Arc::clone(&s.stop);
        let reader = std::thread::Builder::new()
            .name("peerdma-trace".into())
            .spawn(move || read_pipe(pipe, stop, formats, raw))
            .map_err(|e| Unavailable(format!("cannot start the trace reader: {}", errno_of(&e))))?;
        s.reader = Some(reader);
        Ok(s)
    }

    /// The events the session enabled.
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// Stop, read what is left, remove the instance, and check that the
    /// top level is as it was.
    pub fn finish(mut self) -> Collected {
        let (parsed, bytes_read) = self.stop_reader();
        let mut notes = std::mem::take(&mut self.notes);
        if let Err(e) = self.remove() {
            notes.push(e);
        }
        let state_unchanged = match TracingState::read(&self.fs, None) {
            Ok(after) => {
                let d = self.before.differences(&after);
                if !d.is_empty() {
                    notes.push(format!(
                        "the system's tracing state changed during the transfer (not by peerdma, which used only its own instance): {}",
                        d.join("; ")
                    ));
                }
                d.is_empty()
            }
            Err(e) => {
                notes.push(format!(
                    "cannot read the tracing state back: {}",
                    errno_of(&e)
                ));
                false
            }
        };
        Collected {
            parsed,
            events: std::mem::take(&mut self.events),
            bytes_read,
            notes,
            state_unchanged,
        }
    }

    fn stop_reader(&mut self) -> (Parsed, u64) {
        // No more events into the instance, then read out what is there.
        let _ = self
            .fs
            .write(&format!("instances/{}/tracing_on", self.name), "0");
        self.stop.store(true, Ordering::SeqCst);
        match self.reader.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => (Parsed::default(), 0),
        }
    }

    fn remove(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        let rel = format!("instances/{}", self.name);
        let mut last = None;
        // The instance is busy until the kernel has let go of the pipe.
        for _ in 0..50 {
            match self.fs.rmdir(&rel) {
                Ok(()) => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    self.removed = true;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!(
            "cannot remove the tracing instance {} from {}: {}",
            self.name,
            self.fs.describe(),
            last.map(|e| errno_of(&e)).unwrap_or_default()
        ))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let _ = self.stop_reader();
        if let Err(e) = self.remove() {
            // Nothing to return it to: say it where the user sees it.
            eprintln!("peerdma: {e}");
        }
    }
}

/// The reader: non-blocking reads of `trace_pipe` until told to stop and
/// the pipe is empty.
fn read_pipe(
    pipe: OwnedFd,
    stop: Arc<AtomicBool>,
    formats: Formats,
    mut raw: Option<std::fs::File>,
) -> (Parsed, u64) {
    let mut parsed = Parsed::default();
    let mut buf = vec![0u8; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    let mut total = 0u64;
    let mut draining = false;
    loop {
        match rustix::io::read(pipe.as_fd(), &mut buf) {
            Ok(n) if n > 0 => {
                total += n as u64;
                if let Some(f) = raw.as_mut() {
                    let _ = f.write_all(&buf[..n]);
                }
                pending.extend_from_slice(&buf[..n]);
                if let Some(last) = pending.iter().rposition(|&b| b == b'\n') {
                    let text = String::from_utf8_lossy(&pending[..=last]).into_owned();
                    for l in text.lines() {
                        parsed.push_line(l, &formats);
                    }
                    pending.drain(..=last);
                }
            }
            // Empty (EAGAIN), or EOF once tracing is off in the instance.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => {
                if draining {
                    break;
                }
                if stop.load(Ordering::SeqCst) {
                    draining = true;
                    continue;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                parsed.unreadable += 1;
                parsed.unreadable_examples.push(format!(
                    "reading trace_pipe failed: {}",
                    errno_of(&e.into())
                ));
                break;
            }
        }
    }
    if !pending.is_empty() {
        parsed.push_line(&String::from_utf8_lossy(&pending), &formats);
    }
    (parsed, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_and_instance_names() {
        let mi = "22 27 0:20 / /sys rw,nosuid - sysfs sysfs rw\n\
                  40 22 0:12 / /sys/kernel/tracing rw,relatime - tracefs nodev rw\n\
                  41 22 0:12 / /mnt/my\\040trace rw - tracefs tracefs rw\n";
        assert_eq!(
            tracefs_mounts(mi),
            [
                PathBuf::from("/sys/kernel/tracing"),
                PathBuf::from("/mnt/my trace")
            ]
        );
        assert_eq!(instance_pid("peerdma-1234-0"), Some(1234));
        assert_eq!(instance_pid("peerdma-1234"), None);
        assert_eq!(instance_pid("other-1-2"), None);
    }
}
