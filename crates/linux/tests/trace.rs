//! `--trace` leaves the system's tracing as it found it: after a copy that
//! succeeds, one that fails, one that is interrupted, and a tracer that
//! unwinds from a panic.
//!
//! These need root and a kernel with tracefs and the DMA mapping events
//! (6.12 or later): they are `#[ignore]`d with the reason, so that `cargo
//! test` reports them as ignored instead of passing them unrun; `cargo
//! test -- --ignored` runs them, and CI runs them as root with
//! PEERDMA_REQUIRE_PRIVILEGED_TESTS=1, which turns a missing precondition
//! into a failure (.ci/run). The copies run between files of this
//! machine's disk, so the devices traced are whatever holds it; the DMA
//! events themselves, with real P2P mappings, are exercised in the QEMU
//! scenarios (`cargo xtask vm`).

use peerdma_linux::copy::{self, CopyOptions};
use peerdma_linux::trace::tracefs::{Tracefs, TracingState, INSTANCE_PREFIX};
use peerdma_linux::trace::{self, Tracer};
use peerdma_linux::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

/// A precondition this machine does not meet: skipped, or a failure where
/// PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 says the run must run every test.
fn unmet(why: &str) {
    if std::env::var_os("PEERDMA_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
        panic!("{why}, and PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 requires this test to run");
    }
    eprintln!("skipped: {why}");
}

/// tracefs as root, with the DMA mapping events.
fn tracefs() -> Option<Tracefs> {
    match Tracefs::open() {
        Ok(t) if t.list("events/dma").is_ok() => Some(t),
        Ok(_) => {
            unmet(
                "this kernel has no DMA mapping events in tracefs (6.12 or later, CONFIG_TRACING)",
            );
            None
        }
        Err(e) => {
            unmet(&format!("tracefs is not usable here: {e}"));
            None
        }
    }
}

fn state(t: &Tracefs) -> TracingState {
    TracingState::read(t, None).unwrap()
}

fn ours(s: &TracingState) -> Vec<String> {
    s.instances
        .iter()
        .filter(|n| n.starts_with(&format!("{INSTANCE_PREFIX}{}-", std::process::id())))
        .cloned()
        .collect()
}

/// The tests change the top level and compare it: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Put the top level in a state no one leaves it in by default (tracing
/// off, a DMA event enabled with a filter), so that a session writing any
/// of it would show; put it back on drop. (The buffer size is compared,
/// not changed: an unused top-level buffer reads `7 (expanded: 1408)`,
/// a state no write can bring back.)
struct Unusual<'a> {
    t: &'a Tracefs,
    before: TracingState,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl<'a> Unusual<'a> {
    fn set(t: &'a Tracefs) -> Unusual<'a> {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let before = state(t);
        t.write("tracing_on", "0").unwrap();
        t.write(
            "events/dma/dma_map_sg/filter",
            "device == \"no-such-device\"",
        )
        .unwrap();
        t.write("events/dma/dma_map_sg/enable", "1").unwrap();
        Unusual {
            t,
            before,
            _serial: serial,
        }
    }
}

impl Drop for Unusual<'_> {
    fn drop(&mut self) {
        let t = self.t;
        let (enable, filter) = self
            .before
            .dma_events
            .get("dma_map_sg")
            .cloned()
            .unwrap_or_default();
        let _ = t.write("events/dma/dma_map_sg/enable", enable.trim());
        let filter = filter.trim();
        let _ = t.write(
            "events/dma/dma_map_sg/filter",
            if filter == "none" { "0" } else { filter },
        );
        let _ = t.write("tracing_on", self.before.tracing_on.trim());
    }
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 131) ^ (i >> 11)) as u8).collect()
}

fn files(dir: &Path, len: usize) -> (PathBuf, Vec<u8>) {
    let src = dir.join("src");
    let d = data(len);
    fs::write(&src, &d).unwrap();
    (src, d)
}

#[test]
#[ignore = "needs root and tracefs with the DMA events: run with --ignored"]
fn a_traced_copy_leaves_the_tracing_state_as_it_was() {
    let Some(t) = tracefs() else { return };
    let _unusual = Unusual::set(&t);
    let before = state(&t);
    // A temporary directory on the disk, not tmpfs: the ends are on a PCI
    // device where this machine has one.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (src, d) = files(dir.path(), 8 << 20);
    let mut o = CopyOptions::new(&src, dir.path().join("dst"));
    o.trace = true;
    o.verify = true;
    let stop = AtomicBool::new(false);
    let r = copy::copy(&o, false, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(fs::read(dir.path().join("dst")).unwrap(), d);
    let tr = r.trace.as_ref().expect("a trace report");
    let json = serde_json::to_value(tr).unwrap();
    if r.src.pci.is_some() {
        assert_eq!(json["status"], "observed", "{json}");
        assert_eq!(tr.state_unchanged, Some(true), "{json}");
        assert_eq!(json["legs"][0]["leg"], "read");
        assert!(json["legs"][0].get("observed").is_some(), "{json}");
        let text = r.render();
        assert!(text.contains("trace: read leg:"), "{text}");
        assert!(
            text.contains("the system's tracing state is as it was"),
            "{text}"
        );
    } else {
        assert_eq!(json["status"], "unavailable", "{json}");
    }
    let after = state(&t);
    assert_eq!(before.differences(&after), Vec::<String>::new());
    assert!(ours(&after).is_empty(), "{after:?}");
}

#[test]
#[ignore = "needs root, mount (a 16 MiB tmpfs) and tracefs with the DMA events: run with --ignored"]
fn a_failed_traced_copy_leaves_the_tracing_state_as_it_was() {
    let Some(t) = tracefs() else { return };
    let _unusual = Unusual::set(&t);
    let before = state(&t);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (src, _) = files(dir.path(), 32 << 20);
    let small = dir.path().join("small");
    fs::create_dir_all(&small).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16M", "tmpfs"])
        .arg(&small)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        unmet("cannot mount a tmpfs");
        return;
    }
    let mut o = CopyOptions::new(&src, small.join("dst"));
    o.trace = true;
    let stop = AtomicBool::new(false);
    let e = copy::copy(&o, false, &stop, &mut |_, _| {}).unwrap_err();
    let _ = Command::new("umount").arg(&small).status();
    assert!(matches!(e, Error::NoSpace(_)), "{e:?}");
    let after = state(&t);
    assert_eq!(before.differences(&after), Vec::<String>::new());
    assert!(ours(&after).is_empty(), "{after:?}");
}

#[test]
#[ignore = "needs root and tracefs with the DMA events: run with --ignored"]
fn an_interrupted_traced_copy_leaves_the_tracing_state_as_it_was() {
    let Some(t) = tracefs() else { return };
    let _unusual = Unusual::set(&t);
    let before = state(&t);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (src, d) = files(dir.path(), 16 << 20);
    let mut o = CopyOptions::new(&src, dir.path().join("dst"));
    o.trace = true;
    o.chunk = 1 << 16;
    o.depth = 1;
    // What SIGINT does in the command: the flag is set mid-copy (here
    // after the first progress report; crates/cli/tests/trace.rs sends the
    // signal itself).
    let stop = AtomicBool::new(false);
    let mut seen = false;
    let r = copy::copy(&o, false, &stop, &mut |done, _| {
        if done > 0 && !seen {
            seen = true;
            stop.store(true, Ordering::SeqCst);
        }
    })
    .unwrap();
    let i = r.interrupted.as_ref().expect("interrupted");
    assert!(i.copied < d.len() as u64);
    assert!(r.trace.is_some());
    let after = state(&t);
    assert_eq!(before.differences(&after), Vec::<String>::new());
    assert!(ours(&after).is_empty(), "{after:?}");
}

#[test]
#[ignore = "needs root and tracefs with the DMA events: run with --ignored"]
fn a_tracer_that_unwinds_from_a_panic_leaves_the_tracing_state_as_it_was() {
    let Some(t) = tracefs() else { return };
    let _unusual = Unusual::set(&t);
    let before = state(&t);
    let any_bdf = "0000:00:00.0".parse().unwrap();
    let r = std::panic::catch_unwind(|| {
        let tracer = Tracer::start(&[any_bdf], trace::AddressMap::default()).unwrap();
        // The instance exists while the tracer lives...
        let during = state(&Tracefs::open().unwrap());
        assert_eq!(ours(&during).len(), 1, "{during:?}");
        let _keep = &tracer;
        panic!("a panic while tracing");
    });
    assert!(r.is_err());
    // ... and is gone after the unwind.
    let after = state(&t);
    assert_eq!(before.differences(&after), Vec::<String>::new());
    assert!(ours(&after).is_empty(), "{after:?}");
}
