//! `peerdma sim` and `peerdma demo` as users run them.

use serde_json::Value;
use std::process::{Command, Output};

fn peerdma(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_peerdma"))
        .args(args)
        .output()
        .expect("run peerdma")
}

fn write(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.toml");
    std::fs::write(&p, text).unwrap();
    let s = p.display().to_string();
    (dir, s)
}

#[test]
fn demo_runs_on_every_preset_and_says_what_it_verified() {
    for preset in ["dual-xeon", "epyc", "gpu-storage-16", "workstation"] {
        let o = peerdma(&["demo", "--preset", preset, "--size", "8M"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{preset}: {}{out}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("moved and verified byte for byte"), "{out}");
        assert!(out.contains("narrowest link"), "{out}");
        assert!(!out.contains("FAILED"), "{out}");
    }
    let out = String::from_utf8(peerdma(&["demo", "--size", "8M"]).stdout).unwrap();
    for job in [
        "load-p2p",
        "load-via-host",
        "load-host-bridge",
        "checkpoint",
        "copy",
        "rebuild",
        "raid5-degraded",
        "fan-out-a",
    ] {
        assert!(out.contains(job), "the default machine shows {job}: {out}");
    }
    assert!(out.contains("P2P or not, the same read"), "{out}");
}

#[test]
fn the_demos_workload_is_a_workload_file() {
    let o = peerdma(&[
        "demo",
        "--preset",
        "workstation",
        "--print-workload",
        "--size",
        "8M",
    ]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("kind = \"read\""), "{text}");
    let (_d, path) = write(&text);
    let o = peerdma(&["sim", &path, "--preset", "workstation", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert!(jobs
        .iter()
        .all(|j| j["ok"] == true && j["verified"] == true));
    // On this machine nothing can do P2P: every leg is bounced.
    for j in jobs {
        for l in j["legs"].as_array().unwrap() {
            assert_eq!(l["path"], "bounced", "{j}");
        }
    }
}

#[test]
fn sim_uses_the_workloads_machine_unless_told_otherwise() {
    let (_d, path) = write(
        "[machine]\npreset = \"workstation\"\niommu = \"translated\"\n\n[[job]]\nname = \"l\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu\"\nsize = \"4M\"\n",
    );
    let o = peerdma(&["sim", &path]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("preset 'workstation', IOMMU translated"),
        "{out}"
    );
    assert!(out.contains("bounced through host memory"), "{out}");
    // A source on the command line wins; `gpu` is not a device there.
    let o = peerdma(&["sim", &path, "--preset", "dual-xeon", "--iommu", "off"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{path}:5: job 'l': `into` = \"gpu\"")),
        "{err}"
    );
}

#[test]
fn a_job_that_fails_is_exit_status_1_and_a_bad_workload_2() {
    let (_d, path) = write(
        "[[job]]\nname = \"strict\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu\"\nsize = \"4M\"\npolicy = \"p2p-only\"\n",
    );
    let o = peerdma(&["sim", &path, "--preset", "workstation"]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("FAILED: EREMOTEIO"), "{out}");

    let (_d2, bad) = write("[[job]]\nname = \"x\"\nkind = \"read\"\nsize = \"1G\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nafter = \"y\"\n");
    let o = peerdma(&["sim", &bad]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains(":1: job 'x': `after` = \"y\" names no job"),
        "{err}"
    );

    let o = peerdma(&["sim", "/nonexistent/w.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/w.toml"));
    let o = peerdma(&["demo", "--iommu", "sometimes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--iommu sometimes"));
}

#[test]
fn the_demo_has_a_network_part_on_two_copies_of_the_machine() {
    let o = peerdma(&["demo", "--size", "8M", "--part", "network"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{}{out}",
        String::from_utf8_lossy(&o.stderr)
    );
    for job in ["devmem-4k", "devmem-64k", "gpudirect", "nvmeof"] {
        assert!(out.contains(job), "{job}: {out}");
    }
    assert!(out.contains("4 moved and verified byte for byte"), "{out}");
    assert!(out.contains("buffer utilization"), "{out}");
    assert!(!out.contains("the storage consumers"), "{out}");
    // Its workload is a workload file of two machines that `sim` runs.
    let o = peerdma(&[
        "demo",
        "--size",
        "8M",
        "--part",
        "network",
        "--print-workload",
    ]);
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        text.contains("[machine.a]\npreset = \"dual-xeon\""),
        "{text}"
    );
    let (_d, path) = write(&text);
    let o = peerdma(&["sim", &path, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 4);
    let d = &jobs[1]["devmem"];
    assert_eq!(d["niov_size"], 65536);
    assert!(d["utilization"].as_f64().unwrap() < 0.05, "{d}");
    assert_eq!(d["binding_freed"], true);
    // Both parts in one JSON document; a machine without a NIC says why.
    let o = peerdma(&[
        "demo",
        "--size",
        "8M",
        "--preset",
        "gpu-storage-16",
        "--json",
    ]);
    assert!(o.status.success());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["jobs"].as_array().is_some_and(|j| !j.is_empty()));
    assert!(
        v["network"]["skipped"]
            .as_str()
            .unwrap()
            .contains("no network controller"),
        "{v}"
    );
    let o = peerdma(&["demo", "--preset", "workstation", "--part", "network"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no NIC reaches a GPU by P2P"));
}

#[test]
fn the_devmem_table_answers_the_64k_question_with_numbers() {
    let o = peerdma(&["devmem-table", "--size", "2M", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 27, "3 MTUs x 3 net_iov sizes x 3 layouts");
    let cell = |mtu: u64, niov: u64, stride: u64| {
        let layout = |r: &Value| match r["layout"]["kind"].as_str() {
            Some("one_packet") => 0,
            _ => r["layout"]["stride"].as_u64().unwrap(),
        };
        rows.iter()
            .find(|r| r["mtu"] == mtu && r["niov_size"] == niov && layout(r) == stride)
            .unwrap_or_else(|| panic!("{mtu} {niov} {stride}: {v}"))["utilization"]
            .as_f64()
            .unwrap()
    };
    // 1460-byte payloads alone in 64 KiB buffers waste 98% of them; packed
    // into 64-byte strides of 4 KiB buffers, almost nothing.
    // (stride 0: one packet per buffer)
    assert!(cell(1500, 65536, 0) < 0.03, "{v}");
    assert!(cell(1500, 4096, 64) > 0.9, "{v}");
    assert!(cell(1500, 4096, 0) < cell(1500, 4096, 2048));
    // A 9000-byte MTU fills 16 KiB buffers better than 1500 does.
    assert!(cell(9000, 16384, 0) > 4.0 * cell(1500, 16384, 0));
    assert_eq!(v["into"], "0000:1a:00.0");
    // The text names the devices and limits its cells as asked.
    let o = peerdma(&[
        "devmem-table",
        "--size",
        "1M",
        "--mtu",
        "9000",
        "--niov",
        "64K",
        "--layout",
        "one-packet",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("into gpu0's memory on b through nic0"),
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("9000"))
            .count(),
        1,
        "{out}"
    );
    for (args, want) in [
        (
            &["--niov", "3K"][..],
            "--niov 3 KiB: a net_iov is a power of two",
        ),
        (&["--mtu", "100"][..], "each MTU is 576 to 9216"),
        (
            &["--layout", "zigzag"][..],
            "--layout \"zigzag\" is not one of",
        ),
        (
            &["--preset", "gpu-storage-16"][..],
            "no devmem TCP table on preset 'gpu-storage-16': it has no network controller",
        ),
    ] {
        let mut a = vec!["devmem-table"];
        a.extend_from_slice(args);
        let o = peerdma(&a);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_workload_machine_can_be_hwloc_xml() {
    let xml = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hwloc/kernel/switch-nvme-cmb.whole-io.xml")
        .canonicalize()
        .unwrap();
    let (_d, path) = write(&format!(
        "[machine]\nhwloc = \"{}\"\n\n[[job]]\nname = \"c\"\nkind = \"copy\"\nfrom = \"0000:03:00.0\"\nto = \"0000:04:00.0\"\nsize = \"4M\"\n",
        xml.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
    ));
    let o = peerdma(&["sim", &path, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["machine"]
            .as_str()
            .unwrap()
            .ends_with("switch-nvme-cmb.whole-io.xml"),
        "{v}"
    );
    // hwloc XML shows no p2pmem: the copy went through host memory.
    assert_eq!(v["jobs"][0]["legs"][0]["path"], "bounced", "{v}");
    assert_eq!(v["jobs"][0]["verified"], true, "{v}");
    // Two sources in one [machine] are refused.
    let (_d2, both) = write("[machine]\nhwloc = \"a.xml\"\npreset = \"epyc\"\n\n[[job]]\nname = \"c\"\nkind = \"copy\"\nfrom = \"nvme0\"\nto = \"nvme1\"\nsize = \"4M\"\n");
    let o = peerdma(&["sim", &both]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("names more than one source (preset, snapshot, topology, root, hwloc, live)"));
}
