//! `peerdma copy` on this machine's disk, on tmpfs and on loop devices:
//! every flag and every refusal.

use peerdma_linux::copy::{copy, plan, CopyOptions, CopyPath, CopyReport, Refusal};
use peerdma_linux::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn run(o: &CopyOptions) -> Result<CopyReport, String> {
    let stop = AtomicBool::new(false);
    copy(o, false, &stop, &mut |_, _| {}).map_err(|e| e.to_string())
}

fn run_err(o: &CopyOptions) -> Error {
    let stop = AtomicBool::new(false);
    copy(o, false, &stop, &mut |_, _| {}).expect_err("the copy fails")
}

/// Whether `dst` holds `src[skip..skip+count]` at `seek` and `before`
/// everywhere else.
fn check(src: &[u8], before: &[u8], dst: &Path, skip: usize, seek: usize, count: usize) {
    let got = fs::read(dst).unwrap();
    let want_len = before.len().max(seek + count);
    assert_eq!(got.len(), want_len, "destination size");
    assert!(
        got[seek..seek + count] == src[skip..skip + count],
        "copied bytes"
    );
    for (i, b) in got.iter().enumerate() {
        if i < seek || i >= seek + count {
            let old = before.get(i).copied().unwrap_or(0);
            assert_eq!(*b, old, "byte {i} outside the range changed");
        }
    }
}

fn dirs() -> Vec<tempfile::TempDir> {
    let mut v = vec![tempfile::tempdir().unwrap()];
    if Path::new("/dev/shm").is_dir() {
        v.push(tempfile::tempdir_in("/dev/shm").unwrap());
    }
    v
}

#[test]
fn whole_files_on_disk_and_tmpfs_verified() {
    for d in dirs() {
        let src = d.path().join("src");
        let data = random((7 << 20) + 1234, 1);
        fs::write(&src, &data).unwrap();
        let mut o = CopyOptions::new(&src, d.path().join("dst"));
        o.verify = true;
        let r = run(&o).unwrap();
        assert_eq!(r.bytes, data.len() as u64);
        assert_eq!(r.path, CopyPath::Bounced, "no P2P provider here");
        assert!(r.reason.is_some());
        let v = r.verify.clone().unwrap();
        assert!(v.equal && v.first_difference.is_none());
        assert!(r.verified);
        assert!(r.render().contains("bytes: verified"), "{}", r.render());
        assert_eq!(fs::read(d.path().join("dst")).unwrap(), data);
        assert!(r.seconds > 0.0 && r.bytes_per_sec > 0.0);
    }
}

#[test]
fn offsets_and_counts_aligned_and_not() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let data = random(3 << 20, 2);
    fs::write(&src, &data).unwrap();
    for (i, &(skip, seek, count, chunk, depth)) in [
        (0usize, 0usize, 1 << 20, 4096u64, 1usize),
        (4096, 8192, (2 << 20) + 4096, 65536, 32),
        (100, 612, 1_000_000, 1 << 20, 4), // congruent modulo 512: head and tail by read-modify-write
        (1, 0, 777_777, 1 << 20, 8),       // not congruent: shifted
        (3, 1 << 20, 5, 4096, 1),          // inside one block
        (0, 5000, 3 << 20, 1 << 20, 3),    // the whole source
    ]
    .iter()
    .enumerate()
    {
        let dst = d.path().join(format!("dst{i}"));
        let before = random(1 << 21, 100 + i as u64);
        fs::write(&dst, &before).unwrap();
        let mut o = CopyOptions::new(&src, &dst);
        o.skip = skip as u64;
        o.seek = seek as u64;
        o.count = Some(count as u64);
        o.chunk = chunk;
        o.depth = depth;
        o.verify = true;
        let r = run(&o).unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert!(r.verify.as_ref().unwrap().equal, "case {i}");
        check(&data, &before, &dst, skip, seek, count);
        if (skip % 512) != (seek % 512) {
            assert_eq!(r.mode, "shifted", "case {i}");
        }
    }
}

#[test]
fn bad_ranges_and_options_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::write(&src, random(10_000, 3)).unwrap();
    let dst = d.path().join("dst");
    let mut o = CopyOptions::new(&src, &dst);
    o.count = Some(10_001);
    let e = run(&o).unwrap_err();
    assert!(
        e.contains("--count 10001") && e.contains("10000 bytes"),
        "{e}"
    );
    assert!(
        !dst.exists(),
        "a refused copy leaves no new destination behind"
    );
    let mut o = CopyOptions::new(&src, &dst);
    o.skip = 20_000;
    assert!(run(&o).unwrap_err().contains("--skip 20000 is beyond"));
    let mut o = CopyOptions::new(&src, &dst);
    o.chunk = 1000;
    assert!(run(&o).unwrap_err().contains("--chunk 1000"));
    let mut o = CopyOptions::new(&src, &dst);
    o.depth = 0;
    assert!(run(&o).unwrap_err().contains("--depth 0"));
    let o = CopyOptions::new(d.path().join("missing"), &dst);
    let e = run(&o).unwrap_err();
    assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    let o = CopyOptions::new("/dev/null", &dst);
    assert!(run(&o)
        .unwrap_err()
        .contains("not a regular file or a block device"));
    let mut o = CopyOptions::new(&src, &dst);
    o.via = Some("0000:99:00.0".into());
    assert!(run(&o).unwrap_err().contains("0000:99:00.0"));
}

#[test]
fn ranges_past_the_largest_offset_and_oversized_chunks_are_refused_up_front() {
    for d in dirs() {
        let src = d.path().join("src");
        fs::write(&src, random(100_000, 16)).unwrap();
        let dst = d.path().join("dst");
        let mut o = CopyOptions::new(&src, &dst);
        o.seek = 18446744073709551104;
        let e = run_err(&o);
        assert!(matches!(e, Error::BadArgument { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("--seek 18446744073709551104") && msg.contains("largest file offset"),
            "{msg}"
        );
        o.seek = i64::MAX as u64 - 50_000;
        assert!(run_err(&o).to_string().contains("largest file offset"));
        assert!(!dst.exists());
        let mut o = CopyOptions::new(&src, &dst);
        o.chunk = 0xfffffffffffff000;
        let msg = run_err(&o).to_string();
        assert!(
            msg.contains("--chunk 18446744073709547520") && msg.contains("up to 1073741824"),
            "{msg}"
        );
        o.chunk = 2 << 30;
        assert!(run_err(&o).to_string().contains("up to 1073741824"));
        assert!(!dst.exists());
    }
}

#[test]
fn a_bad_via_is_an_error_whatever_the_ends_are_on() {
    for d in dirs() {
        let src = d.path().join("src");
        fs::write(&src, random(100_000, 17)).unwrap();
        let dst = d.path().join("dst");
        let mut o = CopyOptions::new(&src, &dst);
        o.via = Some("0000:99:00.0".into());
        let e = run_err(&o);
        assert!(matches!(e, Error::BadArgument { .. }), "{e:?}");
        assert!(e.to_string().starts_with("--via 0000:99:00.0: "), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the cause is kept");
        o.via = Some("not-a-device".into());
        assert!(run_err(&o).to_string().contains("--via not-a-device"));
        // A function that exists but publishes no P2P memory.
        let first = fs::read_dir("/sys/bus/pci/devices")
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .find(|e| !e.path().join("p2pmem").exists());
        if let Some(f) = first {
            let bdf = f.file_name().to_string_lossy().into_owned();
            o.via = Some(bdf.clone());
            let msg = run_err(&o).to_string();
            assert!(
                msg.contains(&format!("--via {bdf}")) && msg.contains("publishes no P2P memory"),
                "{msg}"
            );
        }
        assert!(!dst.exists());
    }
}

#[test]
fn no_bounce_names_the_pair_and_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::write(&src, random(8192, 4)).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.no_bounce = true;
    let e = run(&o).unwrap_err();
    assert!(
        e.contains("cannot copy") && e.contains("peer to peer"),
        "{e}"
    );
    assert!(e.contains(&src.display().to_string()), "{e}");
    assert!(!d.path().join("dst").exists());
}

#[test]
fn the_same_file_copies_only_without_overlap() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("f");
    let data = random(1 << 20, 5);
    fs::write(&f, &data).unwrap();
    let mut o = CopyOptions::new(&f, &f);
    o.count = Some(4096);
    o.seek = 2048;
    let e = run(&o).unwrap_err();
    assert!(e.contains("same file") && e.contains("overlap"), "{e}");
    o.seek = 1 << 19;
    run(&o).unwrap();
    let got = fs::read(&f).unwrap();
    assert_eq!(&got[1 << 19..(1 << 19) + 4096], &data[..4096]);
    assert_eq!(&got[..1 << 19], &data[..1 << 19]);
}

#[test]
fn dry_run_plans_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::write(&src, random(100_000, 6)).unwrap();
    let dst = d.path().join("dst");
    let stop = AtomicBool::new(false);
    let r = copy(&CopyOptions::new(&src, &dst), true, &stop, &mut |_, _| {}).unwrap();
    assert!(r.dry_run);
    assert_eq!(r.bytes, 100_000);
    assert!(!dst.exists());
    assert!(r.render().contains("dry run: nothing was written"));
}

#[test]
fn the_plan_is_what_a_dry_run_shows_and_what_the_copy_does() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::write(&src, random(300_000, 12)).unwrap();
    let mut o = CopyOptions::new(&src, d.path().join("dst"));
    o.seek = 4096;
    o.chunk = 64 << 10;
    let p = plan(&o).unwrap();
    let planned = p.report();
    assert!(planned.dry_run);
    let stop = AtomicBool::new(false);
    let dry = copy(&o, true, &stop, &mut |_, _| {}).unwrap();
    assert_eq!(
        serde_json::to_value(&dry).unwrap(),
        serde_json::to_value(&planned).unwrap()
    );
    let done = p.execute(&stop, &mut |_, _| {}).unwrap();
    assert!(!done.dry_run);
    assert_eq!(
        (done.path, done.bytes, done.mode, done.chunk),
        (planned.path, planned.bytes, planned.mode, planned.chunk)
    );
}

#[test]
fn a_new_file_appears_only_with_data_in_it() {
    for d in dirs() {
        let src = d.path().join("src");
        fs::write(&src, random(1 << 20, 13)).unwrap();
        let dst = d.path().join("dst");
        let o = CopyOptions::new(&src, &dst);
        // Stopped before anything was copied: nothing to keep, no file.
        let stop = AtomicBool::new(true);
        let r = copy(&o, false, &stop, &mut |_, _| {}).unwrap();
        assert_eq!(r.interrupted.unwrap().copied, 0);
        assert!(!dst.exists(), "an interrupted copy left an empty file");
        // Fails before writing (the source shrank after the plan): no file.
        let p = plan(&o).unwrap();
        fs::write(&src, b"").unwrap();
        let stop = AtomicBool::new(false);
        let e = p.execute(&stop, &mut |_, _| {}).unwrap_err();
        assert!(matches!(e, Error::Transfer(_)), "{e:?}");
        // The cause chain ends at the failed system call.
        let t = std::error::Error::source(&e).expect("the cause is kept");
        let io = t.source().expect("the failed I/O");
        let io = io
            .downcast_ref::<peerdma_linux::copy::IoFailure>()
            .expect("an IoFailure");
        assert_eq!((io.op, io.errno), ("read", 61), "ENODATA");
        assert!(
            e.to_string().contains("nothing of the 1 MiB was copied"),
            "{e}"
        );
        assert!(!dst.exists(), "a failed copy left an empty file");
        // An empty source makes an empty file, as cp does.
        copy(&o, false, &stop, &mut |_, _| {}).unwrap();
        assert_eq!(fs::metadata(&dst).unwrap().len(), 0);
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "nothing else is left in the directory");
    }
}

#[test]
fn an_interrupted_copy_says_how_far_it_got_and_that_prefix_is_right() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let data = random(16 << 20, 7);
    fs::write(&src, &data).unwrap();
    let dst = d.path().join("dst");
    let mut o = CopyOptions::new(&src, &dst);
    o.chunk = 1 << 20;
    o.depth = 2;
    let stop = AtomicBool::new(false);
    let r = copy(&o, false, &stop, &mut |done, _| {
        if done >= 4 << 20 {
            stop.store(true, Ordering::Relaxed);
        }
    })
    .unwrap();
    let i = r.interrupted.clone().expect("interrupted");
    assert!(i.copied >= 4 << 20 && i.copied < 16 << 20, "{}", i.copied);
    assert_eq!(
        i.resume,
        format!(
            "--skip {0} --seek {0} --count {1}",
            i.copied,
            (16 << 20) - i.copied
        )
    );
    let got = fs::read(&dst).unwrap();
    // The destination was sized up front for the copy; an interrupted
    // copy sets it back to what was written.
    assert_eq!(got.len() as u64, i.copied);
    assert!(got[..i.copied as usize] == data[..i.copied as usize]);
    assert!(r.render().contains("INTERRUPTED"));
    // Resuming finishes it.
    let mut o2 = o.clone();
    o2.skip = i.copied;
    o2.seek = i.copied;
    o2.verify = true;
    run(&o2).unwrap();
    assert_eq!(fs::read(&dst).unwrap(), data);
}

// Tests that need root and system tools are `#[ignore]`d with the reason,
// so that `cargo test` reports them as ignored instead of passing them
// unrun; `cargo test -- --ignored` runs them. CI runs them as root with
// PEERDMA_REQUIRE_PRIVILEGED_TESTS=1, which turns a missing precondition
// into a failure (.ci/run).

/// Whether this test can run here: root and the tools named. Where it
/// cannot, it says why and is skipped, or fails if the run requires it.
fn privileged(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    if !rustix::process::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for t in tools {
        let ok = Command::new(t)
            .arg(if *t == "mkfs.ext4" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            missing.push(t.to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    unmet(&format!("needs {}", missing.join(", ")));
    false
}

/// A precondition this machine does not meet: skipped, or a failure where
/// PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 says the run must run every test.
fn unmet(why: &str) {
    if std::env::var_os("PEERDMA_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
        panic!("{why}, and PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 requires this test to run");
    }
    eprintln!("skipped: {why}");
}

/// A loop device, detached on drop.
struct Loop(PathBuf);

impl Loop {
    /// Attach `file` (scanning its partitions with `partscan`).
    fn new(file: &Path, partscan: bool) -> Option<Loop> {
        let mut cmd = Command::new("losetup");
        cmd.args(["--find", "--show"]);
        if partscan {
            cmd.arg("--partscan");
        }
        let out = cmd.arg(file).output().ok()?;
        if !out.status.success() {
            unmet(&format!(
                "no loop device: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Some(Loop(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        )))
    }

    /// Partition `n`, which the image's MBR puts at sector `start` for
    /// `sectors`: the kernel's own scan finds it, or, where the kernel has
    /// no MBR parser (CONFIG_MSDOS_PARTITION), it is declared with the same
    /// numbers through BLKPG (`addpart`).
    fn partition(&self, n: u32, start: u32, sectors: u32) -> Option<PathBuf> {
        let part = PathBuf::from(format!("{}p{n}", self.0.display()));
        let name = self.0.file_name().unwrap().to_string_lossy().into_owned();
        let sys = PathBuf::from(format!("/sys/block/{name}/{name}p{n}"));
        let appeared = || {
            for _ in 0..20 {
                if part.exists() && sys.exists() {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            false
        };
        if appeared() {
            return Some(part);
        }
        let added = Command::new("addpart")
            .arg(&self.0)
            .args([n.to_string(), start.to_string(), sectors.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if added && appeared() {
            return Some(part);
        }
        unmet("no partition on the loop device: the kernel found none and addpart (BLKPG) failed");
        None
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], at: &Path) -> Mount {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount").args(args).arg(at).status().unwrap();
        assert!(st.success(), "mount {args:?} {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An MBR with Linux partitions at (first sector, sectors).
fn mbr(parts: &[(u32, u32)]) -> [u8; 512] {
    let mut m = [0u8; 512];
    for (i, &(start, len)) in parts.iter().enumerate() {
        let e = &mut m[0x1be + 16 * i..0x1be + 16 * (i + 1)];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&start.to_le_bytes());
        e[12..16].copy_from_slice(&len.to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xaa;
    m
}

/// A disk image of `bytes` (random after the MBR) with these partitions.
fn image(path: &Path, bytes: usize, parts: &[(u32, u32)], seed: u64) -> Vec<u8> {
    let mut b = random(bytes, seed);
    b[..512].copy_from_slice(&mbr(parts));
    fs::write(path, &b).unwrap();
    b
}

#[test]
#[ignore = "needs root, losetup, mkfs.ext4 and mount: run with --ignored"]
fn block_devices_need_force_and_must_not_be_mounted() {
    if !privileged(&["losetup", "mkfs.ext4", "mount"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    fs::write(&img, vec![0u8; 32 << 20]).unwrap();
    let Some(lo) = Loop::new(&img, false) else {
        return;
    };
    let src = d.path().join("src");
    let data = random(4 << 20, 8);
    fs::write(&src, &data).unwrap();
    let mut o = CopyOptions::new(&src, &lo.0);
    let e = run_err(&o);
    assert!(
        matches!(e, Error::Refused(Refusal::NeedsForceDevice { .. })),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.contains("without --force-device") && e.contains(&lo.0.display().to_string()),
        "{e}"
    );
    o.force_device = true;
    o.seek = 1 << 20;
    o.verify = true;
    o.fsync = true;
    let r = run(&o).unwrap();
    assert!(r.verify.unwrap().equal);
    // Back from the device into a file.
    let back = d.path().join("back");
    let mut b = CopyOptions::new(&lo.0, &back);
    b.skip = 1 << 20;
    b.count = Some(4 << 20);
    run(&b).unwrap();
    assert_eq!(fs::read(&back).unwrap(), data);
    // Too much for the device.
    let mut big = o.clone();
    big.seek = 30 << 20;
    assert!(run(&big).unwrap_err().contains("do not fit"));
    // Mounted: refused, naming the mount point.
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&lo.0)
        .status()
        .unwrap()
        .success());
    let mnt = Mount::new(&[lo.0.to_str().unwrap()], &d.path().join("mnt"));
    let e = run_err(&o);
    assert!(matches!(e, Error::InUse { .. }) && e.is_refusal(), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("is mounted on") && e.contains(&mnt.0.display().to_string()),
        "{e}"
    );
}

#[test]
#[ignore = "needs root, losetup, addpart, mkfs.ext4 and mount: run with --ignored"]
fn a_disk_holding_a_mounted_partition_is_refused() {
    if !privileged(&["losetup", "addpart", "mkfs.ext4", "mount"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    image(&img, 32 << 20, &[(2048, (32 << 11) - 2048)], 9);
    let Some(lo) = Loop::new(&img, true) else {
        return;
    };
    let Some(part) = lo.partition(1, 2048, (32 << 11) - 2048) else {
        return;
    };
    assert!(Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&part)
        .status()
        .unwrap()
        .success());
    let _mnt = Mount::new(&[part.to_str().unwrap()], &d.path().join("mnt"));
    let src = d.path().join("src");
    fs::write(&src, random(4096, 9)).unwrap();
    let mut o = CopyOptions::new(&src, &lo.0);
    o.force_device = true;
    let e = run(&o).unwrap_err();
    assert!(e.contains("p1 is mounted on"), "{e}");
}

#[test]
#[ignore = "needs root, losetup and addpart: run with --ignored"]
fn devices_sharing_a_medium_are_judged_on_its_bytes() {
    if !privileged(&["losetup", "addpart"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.img");
    // Partition 1 at 1 MiB (8 MiB long), partition 2 at 9 MiB to the end.
    let before = image(&img, 32 << 20, &[(2048, 16384), (18432, 47104)], 14);
    let Some(lo) = Loop::new(&img, true) else {
        return;
    };
    let (Some(p1), Some(p2)) = (lo.partition(1, 2048, 16384), lo.partition(2, 18432, 47104)) else {
        return;
    };
    let read_disk = || {
        let mut o = CopyOptions::new(&lo.0, d.path().join("snapshot"));
        o.verify = true;
        let _ = fs::remove_file(d.path().join("snapshot"));
        run(&o).unwrap();
        fs::read(d.path().join("snapshot")).unwrap()
    };
    assert_eq!(read_disk(), before);
    // The case: 4 MiB of partition 1 onto its own disk at 1.5 MiB,
    // where partition 1's bytes are. Refused, naming both ends and ranges.
    let mut o = CopyOptions::new(&p1, &lo.0);
    o.force_device = true;
    o.count = Some(4 << 20);
    o.seek = 1536 << 10;
    let e = run_err(&o);
    assert!(
        matches!(e, Error::Refused(Refusal::Overlap { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    for want in [
        p1.display().to_string(),
        lo.0.display().to_string(),
        "[1048576, 5242880)".into(),
        "[1572864, 5767168)".into(),
        "starts at byte 1048576".into(),
    ] {
        assert!(msg.contains(&want), "{want:?} missing: {msg}");
    }
    assert_eq!(read_disk(), before, "a refused copy wrote nothing");
    // The other way round too: the disk onto its own partition.
    let mut o = CopyOptions::new(&lo.0, &p1);
    o.force_device = true;
    o.count = Some(1 << 20);
    o.skip = 2 << 20;
    o.seek = 512 << 10;
    assert!(matches!(
        run_err(&o),
        Error::Refused(Refusal::Overlap { .. })
    ));
    // Where the bytes do not meet on the disk, the copy runs: partition 1
    // to the disk at 12 MiB (inside partition 2), and partition 1 to
    // partition 2.
    let mut o = CopyOptions::new(&p1, &lo.0);
    o.force_device = true;
    o.count = Some(4 << 20);
    o.seek = 12 << 20;
    o.verify = true;
    assert!(run(&o).unwrap().verify.unwrap().equal);
    let mut o = CopyOptions::new(&p1, &p2);
    o.force_device = true;
    o.count = Some(2 << 20);
    o.verify = true;
    assert!(run(&o).unwrap().verify.unwrap().equal);
    let after = read_disk();
    assert_eq!(&after[12 << 20..16 << 20], &before[1 << 20..5 << 20]);
    assert_eq!(&after[9 << 20..11 << 20], &before[1 << 20..3 << 20]);
    assert_eq!(&after[..9 << 20], &before[..9 << 20]);
    // A loop device over a file that is the other end: the file's bytes.
    drop(lo);
    let plain = Loop::new(&img, false).unwrap();
    let mut o = CopyOptions::new(&img, &plain.0);
    o.force_device = true;
    o.count = Some(1 << 20);
    o.seek = 512 << 10;
    let e = run_err(&o);
    assert!(
        matches!(e, Error::Refused(Refusal::Overlap { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains(&img.display().to_string()), "{e}");
}

#[test]
#[ignore = "needs root and mount (a 16 MiB tmpfs): run with --ignored"]
fn a_full_destination_reports_the_bytes_copied_and_kept() {
    if !privileged(&["mount"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let data = random(32 << 20, 15);
    fs::write(&src, &data).unwrap();
    let mnt = Mount::new(
        &["-t", "tmpfs", "-o", "size=16M", "tmpfs"],
        &d.path().join("small"),
    );
    // Aligned (the pipeline) and shifted by one byte (the CPU copy).
    for skip in [0usize, 1] {
        let dst = mnt.0.join(format!("dst{skip}"));
        let mut o = CopyOptions::new(&src, &dst);
        o.skip = skip as u64;
        let e = run_err(&o);
        let Error::NoSpace(t) = &e else {
            panic!("skip {skip}: {e:?}");
        };
        let kept = fs::read(&dst).unwrap();
        // The CPU copy writes in order, so nearly all the space is used;
        // the pipeline's writes in flight past the first failure are cut
        // off with the file.
        assert!(
            t.copied > if skip == 1 { 8 << 20 } else { 0 },
            "skip {skip}: {e}"
        );
        assert_eq!(kept.len() as u64, t.copied, "skip {skip}");
        assert!(
            kept[..] == data[skip..skip + kept.len()],
            "skip {skip}: the bytes kept are the source's"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("ENOSPC")
                && msg.contains(&format!("the first {} bytes", t.copied))
                && msg.contains(&format!("kept in {}", dst.display()))
                && msg.contains(&format!("--skip {}", skip as u64 + t.copied)),
            "{msg}"
        );
        fs::remove_file(&dst).unwrap();
    }
}

#[test]
fn errors_are_typed_and_keep_their_cause() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let data = random(100_000, 10);
    fs::write(&src, &data).unwrap();
    let dst = d.path().join("dst");
    let mut o = CopyOptions::new(&src, &dst);
    o.count = Some(200_000);
    let e = run_err(&o);
    assert!(matches!(e, Error::BadArgument { .. }), "{e:?}");
    assert!(!e.is_refusal());
    let mut o = CopyOptions::new(&src, &src);
    o.seek = 10;
    let e = run_err(&o);
    assert!(
        matches!(e, Error::Refused(Refusal::Overlap { .. })),
        "{e:?}"
    );
    assert!(e.is_refusal());
    let mut o = CopyOptions::new(&src, &dst);
    o.no_bounce = true;
    let e = run_err(&o);
    assert!(
        matches!(e, Error::Refused(Refusal::NoBounce { .. })),
        "{e:?}"
    );
    let e = run_err(&CopyOptions::new(d.path().join("missing"), &dst));
    assert_eq!(e.errno(), Some(libc_enoent()));
    let cause = std::error::Error::source(&e).expect("the cause is kept");
    assert!(
        cause.downcast_ref::<std::io::Error>().is_some(),
        "{cause:?}"
    );
    let e = run_err(&CopyOptions::new("/dev/null", &dst));
    assert!(matches!(e, Error::WrongFileType { .. }), "{e:?}");
}

fn libc_enoent() -> i32 {
    std::io::Error::from(std::io::ErrorKind::NotFound)
        .raw_os_error()
        .unwrap_or(2)
}

#[test]
fn a_failed_verify_is_an_error_with_the_report_and_the_first_difference() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let data = random(3 << 20, 11);
    fs::write(&src, &data).unwrap();
    let dst = d.path().join("dst");
    let mut o = CopyOptions::new(&src, &dst);
    o.verify = true;
    let stop = AtomicBool::new(false);
    // Once every byte is copied, the source changes under the copy: the
    // destination no longer holds what the source does.
    let e = copy(&o, false, &stop, &mut |done, total| {
        if done == total {
            use std::os::unix::fs::FileExt;
            let f = fs::OpenOptions::new().write(true).open(&src).unwrap();
            f.write_all_at(b"changed", 1_234_567).unwrap();
        }
    })
    .expect_err("verify fails");
    let Error::VerifyFailed(report) = &e else {
        panic!("{e:?}");
    };
    let v = report.verify.as_ref().unwrap();
    assert!(!v.equal);
    assert_eq!(v.first_difference, Some(1_234_567));
    let line = e.to_string();
    assert!(
        line.contains("VERIFY FAILED: the copy took the path bounced through host memory")
            && line.contains("and the data did not arrive as sent")
            && line.contains(&format!(
                "{} differs from {} first at byte 1234567",
                dst.display(),
                src.display()
            )),
        "{line}"
    );
    assert_eq!(report.path, CopyPath::Bounced);
    assert!(
        !report.verified,
        "a path is verified only when the bytes are"
    );
    assert!(report.render().contains("VERIFY FAILED"));
}
