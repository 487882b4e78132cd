//! `peerdma copy --trace` interrupted by SIGINT, as a user's Ctrl-C does:
//! the copy reports how far it got, and the system's tracing state is as
//! it was before. That one needs root and tracefs with the DMA mapping
//! events: `#[ignore]`d with the reason; CI runs it as root with
//! PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 (.ci/run), which turns a missing
//! precondition into a failure.
//!
//! And `--trace` without root: the reason, and the report as before.

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

/// Without root, `--trace` says why the path is not observed, and the copy
/// and its report are what they are without it. Run as root (CI, here), the
/// test drops to `nobody` with setpriv.
#[test]
fn without_root_the_trace_says_why_and_the_copy_reports_as_before() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let src = dir.path().join("src");
    fs::write(&src, vec![0x3cu8; 3 << 20]).unwrap();
    fs::set_permissions(&src, fs::Permissions::from_mode(0o644)).unwrap();
    let run = |dst: &str, trace: bool| {
        let mut argv: Vec<String> = vec![env!("CARGO_BIN_EXE_peerdma").into()];
        argv.extend(["copy", "--json", "--verify"].map(String::from));
        if trace {
            argv.push("--trace".into());
        }
        argv.push(src.display().to_string());
        argv.push(dir.path().join(dst).display().to_string());
        let root = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|u| u.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap();
        let mut cmd = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            c.args(&argv);
            c
        } else {
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        };
        let out = cmd.output().expect("setpriv (util-linux) runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: Value = serde_json::from_slice(&out.stdout).unwrap();
        j
    };
    let plain = run("plain", false);
    let traced = run("traced", true);
    assert!(plain.get("trace").is_none_or(Value::is_null), "{plain}");
    assert_eq!(traced["trace"]["status"], "unavailable", "{traced}");
    let why = traced["trace"]["why"].as_str().unwrap();
    assert!(why.starts_with("--trace needs root"), "{why}");
    for k in [
        "path",
        "path_known",
        "bytes",
        "verified",
        "read_leg",
        "write_leg",
    ] {
        assert_eq!(plain[k], traced[k], "{k}");
    }
    assert_eq!(traced["verified"], true);
    assert_eq!(
        fs::read(dir.path().join("traced")).unwrap(),
        fs::read(&src).unwrap()
    );
}
