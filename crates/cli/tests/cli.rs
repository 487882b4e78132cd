//! The `peerdma` command as users run it: outputs, exit statuses, errors.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

fn peerdma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerdma"))
        .args(args)
        .output()
        .expect("run peerdma")
}

fn ok(args: &[&str]) -> String {
    let o = peerdma(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Exit status 2 and exactly one line on stderr, which contains `want`.
fn fails(args: &[&str], want: &[&str]) -> String {
    let o = peerdma(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected '{w}' in: {err}");
    }
    err
}

#[test]
fn topo_on_every_preset_shows_every_function_and_the_matrix() {
    let list = ok(&["presets", "--json"]);
    let presets: Value = serde_json::from_str(&list).unwrap();
    for p in presets["presets"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let out = ok(&["topo", "--preset", name]);
        let json: Value = serde_json::from_str(&ok(&["topo", "--preset", name, "--json"])).unwrap();
        for f in json["functions"].as_array().unwrap() {
            let bdf = f["bdf"].as_str().unwrap();
            assert!(
                out.contains(&format!("─ {} ", &bdf[5..])),
                "{name}: {bdf} missing\n{out}"
            );
        }
        assert!(out.contains("P2P matrix of"), "{name}");
        assert!(out.contains("Legend"), "{name}");
    }
    // The default machine is the first preset.
    assert_eq!(ok(&["topo"]), ok(&["topo", "--preset", "dual-xeon"]));
}

#[test]
fn topo_reads_this_machine() {
    if !Path::new("/sys/bus/pci/devices").is_dir() {
        unmet("no /sys/bus/pci/devices on this machine");
        return;
    }
    let out = ok(&["topo", "--live"]);
    assert!(out.contains("this machine's sysfs"), "{out}");
}

/// A precondition this machine does not meet: skipped, or a failure where
/// PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 says the run must run every test
/// (CI runs the ignored tests as root with it; .ci/run).
fn unmet(why: &str) {
    if std::env::var_os("PEERDMA_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
        panic!("{why}, and PEERDMA_REQUIRE_PRIVILEGED_TESTS=1 requires this test to run");
    }
    eprintln!("skipped: {why}");
}

#[test]
#[ignore = "needs root and setpriv (runs peerdma as nobody): run with --ignored"]
fn topo_as_an_unprivileged_user_says_acs_needs_root() {
    if unsafe_geteuid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
        unmet("needs root and /usr/bin/setpriv");
        return;
    }
    if !Path::new("/sys/bus/pci/devices").is_dir() {
        unmet("no /sys/bus/pci/devices on this machine");
        return;
    }
    // An unprivileged user sees 64 bytes of config space.
    {
        let o = Command::new("/usr/bin/setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_peerdma"))
            .args(["topo", "--live"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let functions = fs::read_dir("/sys/bus/pci/devices").unwrap().count();
        if functions > 0 {
            assert!(stdout.contains("needs root"), "{stdout}");
        }
    }
}

fn unsafe_geteuid() -> u32 {
    // The owner of /proc/self is the effective user.
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

#[test]
fn check_exit_status_says_whether_p2p_works() {
    let o = peerdma(&["check", "gpu0", "nvme0"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("bus_addr"));
    let o = peerdma(&["check", "--preset", "workstation", "gpu", "nvme0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("not_supported"));
    let j: Value =
        serde_json::from_slice(&peerdma(&["check", "gpu4", "nvme3", "--json"]).stdout).unwrap();
    assert_eq!(j["map_type"], "thru_host_bridge");
    assert_eq!(j["distance"], 4);
    assert_eq!(
        j["disable_acs_redir"],
        "pci=disable_acs_redir=0000:87:08.0;0000:87:11.0"
    );
    assert_eq!(j["fixes"][0]["gives"], "bus_addr");
    // BDFs work as well as names, in short form too.
    let by_bdf: Value =
        serde_json::from_slice(&peerdma(&["check", "88:00.0", "0000:8a:00.0", "--json"]).stdout)
            .unwrap();
    assert_eq!(by_bdf, j);
    fails(
        &["check", "0000:99:00.0", "gpu0"],
        &["no PCI function 0000:99:00.0", "preset 'dual-xeon'"],
    );
    fails(&["check", "gpu0", "zz:00.0"], &["no PCI function zz:00.0"]);
}

#[test]
fn matrix_json_has_every_ordered_pair() {
    for preset in ["dual-xeon", "epyc", "workstation"] {
        let j: Value =
            serde_json::from_str(&ok(&["matrix", "--json", "--preset", preset])).unwrap();
        let topo: Value =
            serde_json::from_str(&ok(&["topo", "--json", "--preset", preset])).unwrap();
        let n = topo["functions"].as_array().unwrap().len();
        let pairs = j["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), n * (n - 1), "{preset}");
        for p in pairs {
            let map = p["map_type"].as_str().unwrap();
            assert!(
                ["bus_addr", "thru_host_bridge", "not_supported"].contains(&map),
                "{p}"
            );
            assert_eq!(p["distance"].is_null(), map == "not_supported", "{p}");
            assert_ne!(p["provider"], p["client"]);
            assert_eq!(p["provider"].as_str().unwrap().len(), 12);
            let class = p["link_class"].as_str().unwrap();
            assert!(
                ["INT", "PIX", "PXB", "PHB", "NODE", "SYS"].contains(&class),
                "{p}"
            );
        }
    }
    // The classes are the rule's: on the workstation the GPU and its audio
    // function are one device, the drives sit on other root ports.
    let j: Value =
        serde_json::from_str(&ok(&["matrix", "--json", "--preset", "workstation"])).unwrap();
    let class = |a: &str, b: &str| {
        j["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == a && p["client"] == b)
            .map(|p| p["link_class"].as_str().unwrap().to_string())
    };
    let topo: Value =
        serde_json::from_str(&ok(&["topo", "--json", "--preset", "workstation"])).unwrap();
    let bdf = |label: &str| {
        topo["functions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["label"] == label)
            .map(|f| f["bdf"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(
        class(&bdf("gpu"), &bdf("gpu-audio")).as_deref(),
        Some("INT")
    );
    assert_eq!(class(&bdf("gpu"), &bdf("nvme0")).as_deref(), Some("PHB"));
}

#[test]
fn snapshot_and_tree_replay_give_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("m.json");
    let tree = dir.path().join("root");
    let s = snap.to_str().unwrap();
    let t = tree.to_str().unwrap();
    ok(&["snapshot", "--preset", "epyc", "-o", s, "--tree", t]);
    let want = ok(&["matrix", "--json", "--preset", "epyc"]);
    let strip = |x: String| -> Value {
        let mut v: Value = serde_json::from_str(&x).unwrap();
        v.as_object_mut().unwrap().remove("source");
        v
    };
    assert_eq!(
        strip(ok(&["matrix", "--json", "--snapshot", s])),
        strip(want.clone())
    );
    assert_eq!(strip(ok(&["matrix", "--json", "--root", t])), strip(want));
    let text = ok(&["topo", "--snapshot", s]);
    assert!(text.contains("rc1-gpp1"), "labels survive a snapshot");
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    fails(
        &["topo", "--snapshot", &p("none.json")],
        &["none.json", "no such file"],
    );
    fs::write(
        p("bad.json"),
        "{\"format\": \"peerdma-snapshot\",\n \"version\": 1,\n \"origin\": 7}",
    )
    .unwrap();
    fails(
        &["topo", "--snapshot", &p("bad.json")],
        &["bad.json:3:", "invalid type"],
    );
    ok(&["snapshot", "--preset", "workstation", "-o", &p("ok.json")]);
    let mut v: Value = serde_json::from_str(&fs::read_to_string(p("ok.json")).unwrap()).unwrap();
    v["devices"][2]["config"] = Value::String("8086".into());
    let path = v["devices"][2]["path"].as_str().unwrap().to_string();
    let bdf = path.rsplit('/').next().unwrap();
    fs::write(p("short.json"), v.to_string()).unwrap();
    fails(
        &["topo", "--snapshot", &p("short.json")],
        &[
            "short.json",
            &format!("device {bdf}"),
            "config space is 2 bytes",
        ],
    );
    let cyc = "[cpu]\nvendor = \"intel\"\nfamily = 6\n[[host_bridge]]\nname = \"hb\"\n[[device]]\nname = \"a\"\ntype = \"switch_upstream\"\nparent = \"b\"\n[[device]]\nname = \"b\"\ntype = \"switch_downstream\"\nparent = \"a\"\n";
    fs::write(p("cycle.toml"), cyc).unwrap();
    fails(
        &["topo", "--topology", &p("cycle.toml")],
        &["cycle.toml:", "cycle"],
    );
    fs::write(
        p("dangling.toml"),
        cyc.replace("parent = \"b\"", "parent = \"rp9\""),
    )
    .unwrap();
    fails(
        &["topo", "--topology", &p("dangling.toml")],
        &["dangling.toml:6:", "'a' names parent 'rp9'"],
    );
    fails(&["topo", "--root", &p("nothing")], &["nothing"]);
    fails(
        &["topo", "--preset", "nope"],
        &["preset 'nope'", "dual-xeon"],
    );
    fails(
        &["topo", "--preset", "epyc", "--live"],
        &["choose one machine"],
    );
    fails(&["topo", "--pci-ids", &p("no.ids")], &["no.ids"]);
}

#[test]
fn copy_reports_its_path_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&src, &data).unwrap();
    let dst = dir.path().join("dst");
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    let j: Value = serde_json::from_str(&ok(&[
        "copy", s, d, "--verify", "--json", "--chunk", "256K", "--depth", "4",
    ]))
    .unwrap();
    assert_eq!(j["path"], "bounced");
    assert_eq!(j["bytes"], 3_000_000);
    assert_eq!(j["verify"]["equal"], true);
    assert_eq!(j["path_known"], "decided");
    assert_eq!(j["verified"], true);
    assert!(j["reason"].as_str().unwrap().len() > 10);
    assert_eq!(fs::read(&dst).unwrap(), data);
    let text = ok(&["copy", s, d, "--skip", "1K", "--seek", "3", "--count", "1M"]);
    assert!(
        text.contains("path:  bounced through host memory"),
        "{text}"
    );
    assert!(text.contains("moved: 1 MiB"), "{text}");
    assert!(text.contains("known: decided before the copy"), "{text}");
    assert!(
        text.contains("bytes: not verified (--verify checks them)"),
        "{text}"
    );
    let plan = ok(&[
        "copy",
        s,
        dir.path().join("new").to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        plan.contains("dry run") && !dir.path().join("new").exists(),
        "{plan}"
    );
    fails(
        &["copy", s, d, "--no-bounce"],
        &["cannot copy", "peer to peer"],
    );
    fails(
        &["copy", s, d, "--count", "4M"],
        &["--count 4194304", "runs past the end"],
    );
    fails(&["copy", s, d, "--chunk", "1000"], &["--chunk 1000"]);
    fails(
        &["copy", s, d, "--chunk", "0xfffffffffffff000"],
        &["--chunk 18446744073709547520", "up to 1073741824 (1 GiB)"],
    );
    fails(
        &["copy", s, d, "--seek", "18446744073709551104"],
        &["--seek 18446744073709551104", "largest file offset"],
    );
    // Argument syntax is clap's: the first line names the flag and the value.
    let o = peerdma(&["copy", s, d, "--count", "12Q"]);
    assert_eq!(o.status.code(), Some(2));
    let first = String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        first.contains("--count") && first.contains("'12Q' is not a size"),
        "{first}"
    );
    fails(&["copy", s, s, "--seek", "10"], &["same file", "overlap"]);
    // A cause is said once: "ENOENT (No such file or directory)", not that
    // and "No such file or directory (os error 2)" again.
    let missing = dir.path().join("missing");
    let err = fails(
        &["copy", missing.to_str().unwrap(), d],
        &[
            "cannot open",
            "missing",
            "ENOENT (No such file or directory)",
        ],
    );
    assert!(!err.contains("os error"), "{err}");
    fails(&["copy", "--preset", "epyc", s, d], &["real I/O"]);
}

/// Directories on disk (the target directory) and, where there is one, on
/// tmpfs.
fn disk_and_tmpfs() -> Vec<tempfile::TempDir> {
    let mut v = vec![tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()];
    if Path::new("/dev/shm").is_dir() {
        v.push(tempfile::tempdir_in("/dev/shm").unwrap());
    }
    v
}

/// `mib` MiB of bytes, each MiB different.
fn write_big(path: &Path, mib: usize) -> Vec<u8> {
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect();
    let mut data = Vec::with_capacity(mib << 20);
    for m in 0..mib {
        data.extend_from_slice(&block);
        let at = data.len() - (1 << 20);
        data[at..at + 8].copy_from_slice(&(m as u64 + 1).to_le_bytes());
    }
    fs::write(path, &data).unwrap();
    data
}

/// How many bytes at the start of `a` and `b` agree.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i < n {
        let j = (i + 4096).min(n);
        if a[i..j] != b[i..j] {
            return i + a[i..j]
                .iter()
                .zip(&b[i..j])
                .take_while(|(x, y)| x == y)
                .count();
        }
        i = j;
    }
    n
}

/// Whether process `pid` has a file under `dir` open.
fn has_open_under(pid: u32, dir: &Path) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .any(|t| t.starts_with(dir) && !t.ends_with("src"))
}

#[test]
fn a_killed_copy_leaves_no_destination_that_claims_more_than_was_copied() {
    for d in disk_and_tmpfs() {
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        let data = write_big(&src, 512);
        // Small I/Os, two in flight: slow enough to be killed mid-way.
        let mut child = Command::new(env!("CARGO_BIN_EXE_peerdma"))
            .args(["copy", "--chunk", "64K", "--depth", "2"])
            .arg(&src)
            .arg(&dst)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        while !has_open_under(child.id(), d.path()) && t0.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy finished before it could be killed"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let left: Vec<String> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "src")
            .collect();
        if dst.exists() {
            let got = fs::read(&dst).unwrap();
            let right = common_prefix(&got, &data);
            assert!(
                got.len() <= right,
                "{}: the destination is {} bytes, of which only the first {right} are the source's",
                d.path().display(),
                got.len()
            );
        }
        assert!(
            left.iter().all(|n| n == "dst"),
            "a killed copy left {left:?} in {}",
            d.path().display()
        );
    }
}

#[test]
fn a_copy_that_fails_or_stops_before_writing_leaves_no_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    fs::write(&src, vec![1u8; 1 << 20]).unwrap();
    let dst = dir.path().join("dst");
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());
    // Errors after the destination is opened.
    fails(
        &["copy", s, d, "--via", "0000:99:00.0"],
        &["--via 0000:99:00.0: no PCI function 0000:99:00.0"],
    );
    assert!(!dst.exists(), "an empty destination was left behind");
    fails(&["copy", s, d, "--no-bounce"], &["cannot copy"]);
    assert!(!dst.exists(), "an empty destination was left behind");
}

fn hwloc_fixtures() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hwloc/kernel");
    let mut v: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .collect();
    v.sort();
    assert_eq!(
        v.len(),
        36,
        "three files for each of the twelve kernel fixtures"
    );
    v
}

#[test]
fn topo_and_matrix_json_on_hwloc_xml_of_every_kernel_fixture() {
    for p in hwloc_fixtures() {
        let f = p.to_str().unwrap();
        let out = ok(&["topo", "--hwloc", f]);
        assert!(out.contains(&format!("from hwloc XML {f}")), "{out}");
        assert!(
            out.contains("note: hwloc XML records no config space"),
            "{out}"
        );
        for assume in ["none", "iommu"] {
            let j: Value = serde_json::from_str(&ok(&[
                "matrix",
                "--json",
                "--hwloc",
                f,
                "--assume-acs",
                assume,
            ]))
            .unwrap();
            let pairs = j["pairs"].as_array().unwrap();
            assert!(!pairs.is_empty(), "{f}");
            for p in pairs {
                assert!(p["link_class"].is_string(), "{p}");
                // Every pair's walk meets functions whose ACS is unknown.
                let u = &p["acs_unknown"];
                assert_eq!(u["assumed"], assume, "{f}: {p}");
                assert_ne!(u["other"], assume, "{f}: {p}");
                assert!(u["other_map_type"].is_string(), "{p}");
            }
        }
    }
}

#[test]
fn bad_hwloc_xml_is_one_line_naming_the_file_and_element() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.xml");
    let f = p.to_str().unwrap();
    let good = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/hwloc/kernel/switch-nvme-cmb.xml"),
    )
    .unwrap();
    for (text, want) in [
        (
            "{\"format\": \"peerdma-snapshot\"}".to_string(),
            "not well-formed XML",
        ),
        (good[..good.len() / 2].to_string(), "truncated"),
        (
            good.replace("version=\"2.0\"", "version=\"3.0\""),
            "hwloc XML version 3.0",
        ),
        (
            good.replace("pci_busid=\"0000:03:00.0\"", "pci_busid=\"0000:09:00.0\""),
            "pci_busid=\"0000:09:00.0\">: is on bus 09, outside its bus range",
        ),
    ] {
        fs::write(&p, text).unwrap();
        let err = fails(&["topo", "--hwloc", f], &[want, f]);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn topo_names_devices_without_a_system_pci_ids() {
    // The system's database is looked for where there is none: the names
    // come from the copy built into peerdma.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-pci.ids");
    for (preset, names) in [
        (
            "dual-xeon",
            &[
                "NVIDIA Corporation GV100GL [Tesla V100 PCIe 16GB]",
                "Intel Corporation",
            ][..],
        ),
        (
            "gpu-storage-16",
            &[
                "NVIDIA Corporation GH100[H100 SXM5 80GB]",
                "Samsung Electronics Co Ltd",
            ][..],
        ),
        ("epyc", &["Advanced Micro Devices, Inc. [AMD]"][..]),
        ("workstation", &["NVIDIA Corporation"][..]),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_peerdma"))
            .args(["topo", "--preset", preset])
            .env("PEERDMA_SYSTEM_PCI_IDS", &missing)
            .output()
            .unwrap();
        assert!(o.status.success());
        let out = String::from_utf8(o.stdout).unwrap();
        for n in names {
            assert!(out.contains(n), "{preset}: no '{n}' in\n{out}");
        }
        assert!(
            !out.contains(": Device "),
            "{preset}: a device without a vendor name\n{out}"
        );
    }
}
