//! `peerdma copy --trace` interrupted by SIGINT, as a user's Ctrl-C does:
//! the copy reports how far it got, and the system's tracing state is as
//! it was before.
//!
//! Needs root and tracefs with the DMA mapping events: `#[ignore]`d with
//! the reason; CI runs it as root with PEERDMA_REQUIRE_PRIVILEGED_TESTS=1
//! (.ci/run), which turns a missing precondition into a failure.

use peerdma_linux::trace::tracefs::{Tracefs, TracingState, INSTANCE_PREFIX};
use serde_json::Value;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn unmet(why: &str) {
    if std::env::var_os("PEERDMA_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
        panic!("{why}, and PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 requires this test to run");
    }
    eprintln!("skipped: {why}");
}

#[test]
#[ignore = "needs root and tracefs with the DMA events: run with --ignored"]
fn sigint_during_a_traced_copy_leaves_the_tracing_state_as_it_was() {
    let t = match Tracefs::open() {
        Ok(t) if t.list("events/dma").is_ok() => t,
        Ok(_) => return unmet("this kernel has no DMA mapping events in tracefs"),
        Err(e) => return unmet(&format!("tracefs is not usable here: {e}")),
    };
    let before = TracingState::read(&t, None).unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = dir.path().join("src");
    fs::write(&src, vec![0x5au8; 64 << 20]).unwrap();
    let dst = dir.path().join("dst");
    // Small I/Os one at a time: slow enough to be interrupted mid-copy.
    let child = Command::new(env!("CARGO_BIN_EXE_peerdma"))
        .args(["copy", "--json", "--trace", "--chunk", "4K", "--depth", "1"])
        .arg(&src)
        .arg(&dst)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Once it is copying (it has written to the disk: a new destination
    // has no name until the end), Ctrl-C.
    let written = || {
        fs::read_to_string(format!("/proc/{pid}/io"))
            .ok()
            .and_then(|io| {
                io.lines()
                    .find_map(|l| l.strip_prefix("write_bytes: ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let t0 = Instant::now();
    while written() == 0 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "interrupted: exit 1\n{stdout}\n{stderr}"
    );
    let j: Value = serde_json::from_str(&stdout).unwrap();
    let copied = j["interrupted"]["copied"]
        .as_u64()
        .expect("the report says how far it got");
    assert!(copied < 64 << 20, "{j}");
    assert!(j["trace"].is_object(), "{j}");
    let after = TracingState::read(&t, None).unwrap();
    assert_eq!(before.differences(&after), Vec::<String>::new());
    let left: Vec<&String> = after
        .instances
        .iter()
        .filter(|n| n.starts_with(&format!("{INSTANCE_PREFIX}{pid}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
