//! `peerdma labels`, `metrics`, `diff` and `fleet` as users run them:
//! outputs, files written, exit statuses, and bad input as one line.

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

/// Exit status 2 and exactly one line on stderr, containing each of `want`.
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture(name: &str) -> String {
    format!(
        "{}/../../tests/fixtures/kernel/{name}/snapshot.json",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// gpu-storage-16 with ACS redirect on one switch port, as a description.
fn acs_variant() -> String {
    let text = peerdma_pci::presets::PRESETS
        .iter()
        .find(|p| p.name == "gpu-storage-16")
        .unwrap()
        .text;
    let at = text.find("name = \"rc1-sw-p0\"").unwrap();
    let end = at + text[at..].find("\n\n").unwrap();
    format!(
        "{}\nacs = [\"sv\", \"rr\", \"cr\", \"uf\"]{}",
        &text[..end],
        &text[end..]
    )
}

#[test]
fn labels_print_and_write_a_feature_file() {
    let out = ok(&["labels", "--preset", "gpu-storage-16"]);
    assert!(out.starts_with("# node-feature-discovery labels written by peerdma"));
    assert!(
        out.contains("\nfeature.node.kubernetes.io/peerdma-gpu-nvme=bus_addr\n"),
        "{out}"
    );
    let v: Value =
        serde_json::from_str(&ok(&["labels", "--preset", "workstation", "--json"])).unwrap();
    assert_eq!(v["schema"], 1);
    assert!(v["labels"].as_array().unwrap().iter().any(|l| l["name"]
        == "feature.node.kubernetes.io/peerdma-gpu-nvme"
        && l["value"] == "not_supported"));
    // Written whole into a features.d directory, nothing else left there.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peerdma");
    let said = ok(&[
        "labels",
        "--preset",
        "gpu-storage-16",
        "-o",
        s(&file),
        "--prefix",
        "example.com",
    ]);
    assert_eq!(said, "");
    let written = fs::read_to_string(&file).unwrap();
    assert!(
        written.contains("\nexample.com/peerdma-gpu-nvme=bus_addr\n"),
        "{written}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    // An expiry time, RFC 3339, in the future.
    let out = ok(&["labels", "--preset", "epyc", "--expires-in", "2h"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("# +expiry-time="))
        .expect(&out);
    let t = humantime::parse_rfc3339(&line["# +expiry-time=".len()..]).unwrap();
    assert!(t > std::time::SystemTime::now());
    fails(
        &["labels", "--preset", "epyc", "--expires-in", "soon"],
        &["--expires-in soon", "not a duration"],
    );
    fails(
        &["labels", "--preset", "epyc", "--prefix", "Not_A_Domain"],
        &["label prefix 'Not_A_Domain'"],
    );
    // Never the built-in demo machine by default: its labels on a real
    // node would mislead the scheduler.
    fails(&["labels"], &["give --live"]);
    fails(&["metrics", "-o", "x.prom"], &["give --live"]);
}

#[test]
fn metrics_print_and_write_the_text_format() {
    let out = ok(&["metrics", "--preset", "gpu-storage-16"]);
    assert!(out.starts_with("# HELP peerdma_p2p_pair_supported "));
    assert!(out.contains("peerdma_p2p_pair_supported{provider=\"0000:03:00.0\",provider_name=\"gpu0\",client=\"0000:05:00.0\",client_name=\"nvme0\",map_type=\"bus_addr\",link_class=\"PIX\"} 1\n"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peerdma.prom");
    ok(&[
        "metrics",
        "--snapshot",
        &fixture("pxb-nested"),
        "-o",
        s(&file),
    ]);
    let written = fs::read_to_string(&file).unwrap();
    assert!(written.contains("peerdma_pcie_link_degraded{"), "{written}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    fails(
        &["metrics", "--preset", "epyc", "--json"],
        &["Prometheus text format", "--json does not apply"],
    );
}

#[test]
fn diff_two_snapshots_and_a_snapshot_against_a_source() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("node16.json");
    let b = dir.path().join("node17.json");
    let desc = dir.path().join("node17.toml");
    fs::write(&desc, acs_variant()).unwrap();
    ok(&["snapshot", "--preset", "gpu-storage-16", "-o", s(&a)]);
    ok(&["snapshot", "--topology", s(&desc), "-o", s(&b)]);
    let out = ok(&["diff", s(&a), s(&b)]);
    assert!(
        out.contains("0000:42:00.0 (rc1-sw-p0, switch downstream port): none -> SV|RR|CR|UF"),
        "{out}"
    );
    assert!(out.contains("verdicts: 6 of 240 pairs changed"), "{out}");
    assert!(
        out.contains("because ACS redirect is set on 0000:42:00.0"),
        "{out}"
    );
    assert!(
        out.contains("gpu2 <-> nvme2  bus_addr 4 -> thru_host_bridge 4"),
        "{out}"
    );
    let v: Value = serde_json::from_str(&ok(&["diff", s(&a), s(&b), "--json"])).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["pairs"].as_array().unwrap().len(), 6);
    // Against a source option: the preset it was captured from.
    let out = ok(&["diff", s(&a), "--preset", "gpu-storage-16"]);
    assert!(out.contains("No differences"), "{out}");
    // The kernel fixtures: the AMD rule.
    let out = ok(&[
        "diff",
        &fixture("root-ports-amd"),
        &fixture("root-ports-intel"),
    ]);
    assert!(out.contains("the CPU is no longer an AMD Zen"), "{out}");
    // Two machines, never more or fewer.
    fails(&["diff", s(&a)], &["give a second snapshot, or --live"]);
    fails(&["diff", s(&a), s(&b), "--preset", "epyc"], &["not both"]);
}

#[test]
fn diff_bad_input_is_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    ok(&["snapshot", "--preset", "workstation", "-o", s(&a)]);
    // Not a snapshot at all.
    let text = dir.path().join("notes.json");
    fs::write(&text, "these are my notes\n").unwrap();
    fails(
        &["diff", s(&text), s(&a)],
        &["notes.json", "not a valid snapshot"],
    );
    let other = dir.path().join("other.json");
    fs::write(&other, "{\"hello\": 1}").unwrap();
    fails(
        &["diff", s(&a), s(&other)],
        &["other.json", "not a peerdma snapshot"],
    );
    // A snapshot of another format version.
    let v3 = dir.path().join("v3.json");
    let mut raw: Value = serde_json::from_str(&fs::read_to_string(&a).unwrap()).unwrap();
    raw["version"] = 3.into();
    fs::write(&v3, serde_json::to_string(&raw).unwrap()).unwrap();
    fails(
        &["diff", s(&a), s(&v3)],
        &["v3.json", "snapshot version 3", "reads versions 1 and 2"],
    );
    fails(
        &["diff", s(&dir.path().join("missing.json")), s(&a)],
        &["missing.json"],
    );
}

#[test]
fn fleet_summarises_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let desc = dir.path().join("variant.toml");
    fs::write(&desc, acs_variant()).unwrap();
    let fleet = dir.path().join("fleet");
    fs::create_dir_all(fleet.join("rack2")).unwrap();
    for i in 0..4 {
        ok(&[
            "snapshot",
            "--preset",
            "gpu-storage-16",
            "-o",
            s(&fleet.join(format!("node{i}.json"))),
        ]);
    }
    ok(&[
        "snapshot",
        "--topology",
        s(&desc),
        "-o",
        s(&fleet.join("rack2/node9.json")),
    ]);
    let out = ok(&["fleet", s(&fleet)]);
    assert!(out.contains(": 5 machines read"), "{out}");
    assert!(
        out.contains("A: 4 machines (80.0%): node0, node1, node2 and 1 more"),
        "{out}"
    );
    assert!(out.contains("B: 1 machine (20.0%): node9"), "{out}");
    assert!(out.contains("pci=disable_acs_redir=0000:42:00.0"), "{out}");
    let v: Value = serde_json::from_str(&ok(&["fleet", s(&fleet), "--json"])).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["groups"].as_array().unwrap().len(), 2);
    // A file that is not a snapshot: listed, and exit status 1.
    fs::write(fleet.join("junk.json"), "not json").unwrap();
    let o = peerdma(&["fleet", s(&fleet)]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("not snapshots (1):"), "{out}");
    assert!(out.contains("junk.json"), "{out}");
}

#[test]
fn fleet_bad_input_is_one_line() {
    let empty = tempfile::tempdir().unwrap();
    fails(&["fleet", s(empty.path())], &["holds no snapshots"]);
    fails(&["fleet", s(&empty.path().join("nope"))], &["nope"]);
    let file = empty.path().join("a.json");
    fs::write(&file, "{}").unwrap();
    fails(&["fleet", s(&file)], &["is not a directory"]);
    fails(&["fleet", s(empty.path()), "--live"], &["do not apply"]);
}
