//! The workload runner on every preset: paths held to the kernel's verdicts,
//! throughput held to the narrowest link, concurrency and `after`, faults,
//! and the JSON other tools read.

use peerdma_consumers::devmem::capacity;
use peerdma_p2p::{calc_map_type_and_dist, MapType};
use peerdma_pci::{FnId, Source, Topology};
use peerdma_sim::SimConfig;
use peerdma_workload::format::{self, is_nvme, IommuSetting};
use peerdma_workload::run::{Report, RunOptions};
use peerdma_workload::{demo, run_workload};
use std::path::Path;

const PRESETS: [&str; 4] = ["dual-xeon", "epyc", "gpu-storage-16", "workstation"];

fn topo(preset: &str) -> Topology {
    Source::Preset(preset.into()).load().unwrap()
}

fn run_on(preset: &str, iommu: IommuSetting, text: &str) -> Report {
    let w = format::parse(text, "test.toml", Path::new(".")).unwrap();
    let (r, _) = run_workload(
        &w,
        topo(preset),
        RunOptions {
            iommu,
            ..RunOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{preset}: {e}"));
    r
}

fn name(t: &Topology, f: FnId) -> String {
    t.function(f).bdf.to_string()
}

/// Every drive reads into every device memory of the machine, all at once.
fn all_pairs(t: &Topology, size: &str) -> (String, Vec<(FnId, FnId)>) {
    let drives: Vec<FnId> = t.ids().filter(|&f| is_nvme(t, f)).collect();
    let mems: Vec<FnId> = t.ids().filter(|&f| capacity(t, f).is_some()).collect();
    let mut s = String::new();
    let mut pairs = Vec::new();
    for &d in &drives {
        for &g in &mems {
            if d == g {
                continue;
            }
            s.push_str(&format!(
                "[[job]]\nname = \"{}-{}\"\nkind = \"read\"\ndrive = \"{}\"\ninto = \"{}\"\nsize = \"{size}\"\noffset = \"{}M\"\n\n",
                name(t, d),
                name(t, g),
                name(t, d),
                name(t, g),
                pairs.len() * 4
            ));
            pairs.push((d, g));
        }
    }
    (s, pairs)
}

#[test]
fn every_preset_reads_into_every_device_memory_by_the_kernels_verdict() {
    for preset in PRESETS {
        let t = topo(preset);
        let (text, pairs) = all_pairs(&t, "2M");
        assert!(!pairs.is_empty(), "{preset} has drives and device memory");
        for iommu in [
            IommuSetting::Off,
            IommuSetting::Passthrough,
            IommuSetting::Translated,
        ] {
            let r = run_on(preset, iommu, &text);
            let mut seen = std::collections::HashSet::new();
            for (j, &(d, g)) in r.jobs.iter().zip(&pairs) {
                assert!(
                    j.ok && j.verified,
                    "{preset} {iommu:?} {}: {:?}",
                    j.name,
                    j.error
                );
                let verdict = calc_map_type_and_dist(&t, g, d).map_type;
                seen.insert(verdict);
                let want: &[&str] = match verdict {
                    MapType::BusAddr => &["bus_addr"],
                    MapType::ThruHostBridge => &["thru_host_bridge"],
                    _ => &["bounced", "bounced"],
                };
                let got: Vec<&str> = j.legs.iter().map(|l| l.path).collect();
                assert_eq!(
                    got, want,
                    "{preset} {iommu:?} {}: verdict {verdict:?}",
                    j.name
                );
                if verdict == MapType::NotSupported {
                    assert_eq!(j.bounce_bytes, j.bytes);
                    assert!(j
                        .bounce_reason
                        .as_deref()
                        .unwrap_or("")
                        .contains("EREMOTEIO"));
                    assert_eq!(j.legs[0].to, "host");
                    assert_eq!(j.legs[1].from, "host");
                } else {
                    assert_eq!(j.legs[0].from, t.function(d).bdf.to_string());
                    assert_eq!(j.legs[0].to, t.function(g).bdf.to_string());
                }
            }
            if preset == "workstation" {
                assert!(seen.contains(&MapType::NotSupported));
            } else {
                assert!(
                    seen.contains(&MapType::BusAddr) && seen.contains(&MapType::ThruHostBridge)
                );
            }
        }
    }
}

/// The data rate of the links a transfer from `a` to `b` crosses, from the
/// topology's PCIe link states alone: every physical link (a device below
/// a root port or a switch's downstream port) up from `a` to the common
/// ancestor, or to the root when there is none, and down to `b`.
fn narrowest(t: &Topology, a: FnId, b: FnId) -> f64 {
    let chain = |x: FnId| {
        let mut c = vec![x];
        c.extend(t.ancestors(x));
        c
    };
    let (ca, cb) = (chain(a), chain(b));
    let common = ca.iter().find(|x| cb.contains(x)).copied();
    let eff = SimConfig::default().tlp_efficiency;
    let mut best = f64::INFINITY;
    for c in [&ca, &cb] {
        for &n in c.iter().take_while(|&&n| Some(n) != common) {
            let f = t.function(n);
            let Some(up) = f.upstream else { continue };
            let port = t.function(up);
            if !port.port_type.is_downstream_port() {
                continue;
            }
            let state = f
                .link
                .and_then(|l| l.current.or(l.max))
                .or_else(|| port.link.and_then(|l| l.current.or(l.max)));
            let rate = state.map_or(8e9, |s| s.bytes_per_sec()) * eff;
            best = best.min(rate);
        }
    }
    best
}

#[test]
fn a_job_alone_moves_at_its_narrowest_link() {
    for preset in PRESETS {
        let t = topo(preset);
        let (_, pairs) = all_pairs(&t, "64M");
        // Pairs from the whole matrix (every verdict and link mix the
        // preset has), not only its first row: about 12 per preset.
        let stride = (pairs.len() / 12).max(1);
        for &(d, g) in pairs.iter().step_by(stride) {
            let text = format!(
                "[[job]]\nname = \"alone\"\nkind = \"read\"\ndrive = \"{}\"\ninto = \"{}\"\nsize = \"16M\"\n",
                name(&t, d),
                name(&t, g)
            );
            let r = run_on(preset, IommuSetting::Off, &text);
            let j = &r.jobs[0];
            assert!(j.ok, "{:?}", j.error);
            let verdict = calc_map_type_and_dist(&t, g, d).map_type;
            let want = if verdict.is_p2p() {
                narrowest(&t, d, g)
            } else {
                // Two legs through host memory, each its own links,
                // running as a pipeline: the slower one sets the pace.
                let root = |x: FnId| t.ancestors(x).last().unwrap_or(x);
                let legs = narrowest(&t, d, root(d)).min(narrowest(&t, g, root(g)));
                // Memory without a copy engine of its own is filled by the
                // CPU, at the rate it stores to a BAR.
                if matches!(t.function(g).base_class(), 0x03 | 0x12) {
                    legs
                } else {
                    legs.min(peerdma_workload::run::CPU_MMIO_WRITE_RATE)
                }
            };
            let got = j.gbytes_per_sec * 1e9;
            assert!(
                (got - want).abs() / want < 0.005,
                "{preset} {}: {got:.0} B/s, narrowest link {want:.0} B/s",
                j.name
            );
            let b = j.bottleneck.as_ref().unwrap();
            assert!((b.gbytes_per_sec * 1e9 - want).abs() / want < 1e-9, "{b:?}");
        }
    }
}

#[test]
fn concurrent_jobs_share_a_link_and_after_orders_them() {
    let text = |after: &str| {
        format!(
            "[[job]]\nname = \"a\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"64M\"\n\n\
             [[job]]\nname = \"b\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu1\"\nsize = \"64M\"\noffset = \"1G\"\n{after}\n"
        )
    };
    let r = run_on("dual-xeon", IommuSetting::Off, &text(""));
    let (a, b) = (&r.jobs[0], &r.jobs[1]);
    assert_eq!(a.start_seconds, b.start_seconds);
    assert!((a.gbytes_per_sec - b.gbytes_per_sec).abs() < 0.01);
    let alone = a.bottleneck.as_ref().unwrap().gbytes_per_sec;
    assert!(
        (a.gbytes_per_sec - alone / 2.0).abs() / alone < 0.01,
        "half each: {a:?}"
    );
    assert_eq!(a.shared_with, vec!["b".to_string()]);

    let r = run_on("dual-xeon", IommuSetting::Off, &text("after = \"a\""));
    let (a, b) = (&r.jobs[0], &r.jobs[1]);
    assert!(
        (b.start_seconds - a.end_seconds).abs() < 1e-9,
        "b starts when a ends"
    );
    assert!((a.gbytes_per_sec - alone).abs() / alone < 0.01);
    assert!(a.shared_with.is_empty() && b.shared_with.is_empty());
    assert!((r.sim_seconds - b.end_seconds).abs() < 1e-9);
}

#[test]
fn a_job_waits_for_every_job_it_names() {
    let r = run_on(
        "dual-xeon",
        IommuSetting::Off,
        "[[job]]\nname = \"short\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"8M\"\n\n\
         [[job]]\nname = \"long\"\nkind = \"read\"\ndrive = \"nvme1\"\ninto = \"gpu2\"\nsize = \"64M\"\n\n\
         [[job]]\nname = \"last\"\nkind = \"write\"\nfrom = \"gpu0\"\ndrive = \"nvme2\"\nsize = \"8M\"\nafter = [\"short\", \"long\"]\n",
    );
    let (short, long, last) = (&r.jobs[0], &r.jobs[1], &r.jobs[2]);
    assert!(short.end_seconds < long.end_seconds);
    assert!((last.start_seconds - long.end_seconds).abs() < 1e-9);
}

#[test]
fn p2p_only_fails_with_eremoteio_where_the_kernel_would() {
    let r = run_on(
        "workstation",
        IommuSetting::Off,
        "[[job]]\nname = \"direct\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu\"\nsize = \"4M\"\npolicy = \"p2p-only\"\n",
    );
    let j = &r.jobs[0];
    assert!(!j.ok && !j.verified);
    let e = j.error.as_deref().unwrap();
    assert!(e.starts_with("EREMOTEIO"), "{e}");
    assert!(
        e.contains("0000:02:00.0") && e.contains("0000:01:00.0"),
        "names the pair: {e}"
    );
    assert!(!r.ok());
}

#[test]
fn faults_end_in_an_error_naming_them_never_in_wrong_bytes_reported_verified() {
    let job = |fault: &str, iommu| {
        run_on(
            "dual-xeon",
            iommu,
            &format!(
                "[[job]]\nname = \"hit\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"32M\"\nfault = {fault}\n"
            ),
        )
    };
    for (fault, iommu, words) in [
        (
            "{ kind = \"surprise-removal\", device = \"nvme0\", at = \"8M\" }",
            IommuSetting::Off,
            "removed",
        ),
        (
            "{ kind = \"link-down\", device = \"gpu0\", at = \"9M\" }",
            IommuSetting::Off,
            "down",
        ),
        (
            "{ kind = \"iommu-fault\", device = \"nvme0\", at = \"1M\" }",
            IommuSetting::Translated,
            "IOMMU",
        ),
    ] {
        let r = job(fault, iommu);
        let j = &r.jobs[0];
        assert!(!j.ok && !j.verified, "{fault}: {j:?}");
        let e = j.error.as_deref().unwrap();
        assert!(e.contains(words), "{fault}: {e}");
        assert!(
            j.notes.iter().any(|n| n.starts_with("fault injected")),
            "{:?}",
            j.notes
        );
    }
    // A revoke mid-transfer, with commands issued a few at a time: those in
    // flight complete, the next ones are refused; the job fails naming the
    // revoke, and the revoke finishes once the job let go of the memory.
    let w = format::parse(
        "[[job]]\nname = \"hit\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"32M\"\n\
         fault = { kind = \"revoke\", device = \"gpu0\", at = \"4M\" }\n",
        "test.toml",
        Path::new("."),
    )
    .unwrap();
    let (r, _) = run_workload(
        &w,
        topo("dual-xeon"),
        RunOptions {
            nvme: peerdma_consumers::nvme::NvmeConfig {
                queue_entries: 4,
                ..Default::default()
            },
            ..RunOptions::default()
        },
    )
    .unwrap();
    let j = &r.jobs[0];
    assert!(!j.ok && !j.verified, "{j:?}");
    assert!(
        j.error.as_deref().unwrap().contains("revoked"),
        "{:?}",
        j.error
    );
    assert!(
        j.notes
            .iter()
            .any(|n| n.contains("revoke of") && n.contains("finished")),
        "{:?}",
        j.notes
    );
    // Everything queued before the revoke started completes: a job whose
    // commands were all in flight is whole, and verified.
    let r = job(
        "{ kind = \"revoke\", device = \"gpu0\", at = \"4M\" }",
        IommuSetting::Off,
    );
    let j = &r.jobs[0];
    assert!(j.ok && j.verified, "{j:?}");
}

#[test]
fn the_json_has_the_fields_other_tools_read() {
    let r = run_on(
        "workstation",
        IommuSetting::Off,
        "[[job]]\nname = \"j\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu\"\nsize = \"4M\"\n",
    );
    let v: serde_json::Value =
        serde_json::from_str(&peerdma_workload::report::to_json(&r)).unwrap();
    assert_eq!(v["schema"], 1);
    let j = &v["jobs"][0];
    for k in [
        "name",
        "ok",
        "legs",
        "bytes",
        "verified",
        "sim_seconds",
        "gbytes_per_sec",
        "bottleneck",
        "error",
    ] {
        assert!(j.get(k).is_some(), "missing {k}: {j}");
    }
    assert_eq!(j["ok"], true);
    assert_eq!(j["error"], serde_json::Value::Null);
    assert!(j["bottleneck"]["link"].is_string() && j["bottleneck"]["gbytes_per_sec"].is_f64());
    let legs = j["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 2);
    for l in legs {
        assert_eq!(l["path"], "bounced");
        assert!(l["bytes"].as_u64().unwrap() == 4 << 20);
        assert!(l["from"].is_string() && l["to"].is_string());
    }
}

#[test]
fn the_demo_runs_on_every_preset_and_every_job_is_verified() {
    for preset in PRESETS {
        let t = topo(preset);
        let text = demo::workload_text_sized(&t, 16 << 20, 8 << 20);
        let r = run_on(preset, IommuSetting::Translated, &text);
        assert!(r.jobs.len() >= 4, "{preset}: {} jobs", r.jobs.len());
        for j in &r.jobs {
            assert!(j.ok && j.verified, "{preset} {}: {:?}", j.name, j.error);
        }
        let s = demo::summary(&t, &r);
        assert!(s.contains("verified byte for byte"), "{s}");
    }
}

#[test]
fn two_machines_run_side_by_side_without_sharing_links() {
    let text = "[machine.a]\npreset = \"dual-xeon\"\n[machine.b]\npreset = \"dual-xeon\"\n\
                [wire]\na = \"a:nic0\"\nb = \"b:nic0\"\ngbps = 100\n\n\
                [[job]]\nname = \"x\"\nkind = \"read\"\ndrive = \"a:nvme0\"\ninto = \"a:gpu0\"\nsize = \"32M\"\n\n\
                [[job]]\nname = \"y\"\nkind = \"read\"\ndrive = \"b:nvme0\"\ninto = \"b:gpu0\"\nsize = \"32M\"\n";
    let w = format::parse(text, "two.toml", Path::new(".")).unwrap();
    let (r, topos) = peerdma_workload::run_machines(
        &w,
        vec![
            (topo("dual-xeon"), IommuSetting::Off),
            (topo("dual-xeon"), IommuSetting::Translated),
        ],
        RunOptions::default(),
    )
    .unwrap();
    assert_eq!(topos.len(), 2);
    let (x, y) = (&r.jobs[0], &r.jobs[1]);
    assert!(x.ok && y.ok && x.verified && y.verified);
    assert_eq!(x.machine.as_deref(), Some("a"));
    assert_eq!(y.legs[0].machine.as_deref(), Some("b"));
    assert!(
        x.shared_with.is_empty() && y.shared_with.is_empty(),
        "separate machines share no link"
    );
    assert!((x.gbytes_per_sec - y.gbytes_per_sec).abs() < 0.01);
    assert_eq!(r.machines[1].iommu, IommuSetting::Translated);
    let wire = r.wire.as_ref().unwrap();
    assert_eq!(
        (wire.a.as_str(), wire.gbits_per_sec),
        ("a:0000:1d:00.0", 100.0)
    );
    let v: serde_json::Value =
        serde_json::from_str(&peerdma_workload::report::to_json(&r)).unwrap();
    assert_eq!(v["jobs"][1]["machine"], "b");
    assert!(v["jobs"][0]["bottleneck"]["link"]
        .as_str()
        .unwrap()
        .starts_with("a: "));
}
