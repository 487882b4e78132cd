//! Bad workloads get one clear line naming the file, the line, the job and
//! what is wrong.

use peerdma_consumers::devmem::capacity;
use peerdma_pci::Source;
use peerdma_workload::format::{self, Capacities, Task};
use std::path::Path;

fn resolve(text: &str) -> Result<Vec<format::Job>, String> {
    let w = format::parse(text, "jobs.toml", Path::new("/w")).map_err(|e| e.to_string())?;
    let t = Source::Preset("dual-xeon".into()).load().unwrap();
    let cap = |f| capacity(&t, f);
    w.resolve(&[Capacities {
        topo: &t,
        media_size: 64 << 30,
        device_memory: &cap,
    }])
    .map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    let e = resolve(text).expect_err("must be refused");
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.starts_with("jobs.toml"), "names the file: {e}");
    e
}

const READ: &str =
    "[[job]]\nname = \"a\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"gpu0\"\nsize = \"1G\"\n";

#[test]
fn a_good_workload_resolves_names_and_sizes() {
    let jobs = resolve(&format!(
        "{READ}\n[[job]]\nname = \"b\"\nkind = \"write\"\nfrom = \"0000:1a:00.0\"\ndrive = \"nvme1\"\nsize = 4096\nafter = \"a\"\npolicy = \"p2p-only\"\n"
    ))
    .unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0].size, 1 << 30);
    assert!(matches!(jobs[0].task, Task::Read { offset: 0, .. }));
    assert_eq!(jobs[1].after, vec![0]);
    assert_eq!(jobs[1].line, 8);
}

#[test]
fn syntax_errors_say_where_and_what() {
    let e = err("[[job]]\nname =");
    assert!(e.starts_with("jobs.toml:2:"), "{e}");
    assert!(
        e.ends_with("`name` has no value"),
        "says what is wrong: {e}"
    );
    let e = err("[[job]]\nname = load\n");
    assert!(e.contains("text goes in quotes"), "{e}");
    let e = err(&format!("{READ}colour = \"red\"\n"));
    assert!(e.contains("unknown key `colour`"), "{e}");
    let e = err("[[job]]\nname = \"a\"\nkind = \"read\"\n");
    assert!(e.contains("missing key `size`"), "{e}");
    let e = err("[[job]]\nname = \"a\"\nkind = \"read\"\nsize = true\n");
    assert!(e.contains("a size such as"), "{e}");
    let e = err("[[job]]\nname = \"a\"\nkind = \"read\"\nsize = \"12Q\"\n");
    assert!(e.contains("12Q"), "{e}");
    let e = err("description = \"nothing\"\n");
    assert!(e.contains("no jobs"), "{e}");
}

#[test]
fn devices_must_exist_and_have_what_the_job_needs() {
    let e = err(&READ.replace("gpu0", "gpu9"));
    assert!(
        e.starts_with("jobs.toml:1: job 'a': `into` = \"gpu9\""),
        "{e}"
    );
    assert!(e.contains("no PCI function gpu9"), "{e}");
    let e = err(&READ.replace("into = \"gpu0\"", "into = \"nic0\""));
    assert!(e.contains("has no device memory"), "{e}");
    let e = err(&READ.replace("drive = \"nvme0\"", "drive = \"gpu1\""));
    assert!(e.contains("is not an NVMe drive"), "{e}");
    let e = err(&READ.replace("drive = \"nvme0\"\n", ""));
    assert!(e.contains("a read job needs `drive`"), "{e}");
    let e = err(&format!("{READ}members = [\"nvme0\"]\n"));
    assert!(e.contains("`members` does not apply to a read job"), "{e}");
}

#[test]
fn sizes_must_fit_the_memory_and_the_media() {
    let e = err(&READ.replace("1G", "32G"));
    assert!(e.contains("more than the 16 GiB"), "{e}");
    let e = err(&format!("{READ}offset = \"63.5G\"\n"));
    assert!(e.contains("runs past the end of the drive"), "{e}");
    let e = err(&READ.replace("\"1G\"", "1000"));
    assert!(e.contains("not a multiple of 512"), "{e}");
    let e = err(&READ.replace("\"1G\"", "0"));
    assert!(e.contains("size is 0"), "{e}");
}

#[test]
fn after_must_name_jobs_without_a_cycle() {
    let e = err(&format!("{READ}after = \"zz\"\n"));
    assert!(e.contains("`after` = \"zz\" names no job (jobs: a)"), "{e}");
    let e = err(&format!(
        "{READ}after = \"b\"\n\n[[job]]\nname = \"b\"\nkind = \"read\"\ndrive = \"nvme1\"\ninto = \"gpu1\"\nsize = \"1M\"\nafter = [\"a\"]\n"
    ));
    assert!(e.contains("makes a cycle: a -> b -> a"), "{e}");
    let e = err(&format!("{READ}after = \"a\"\n"));
    assert!(e.contains("names the job itself"), "{e}");
    let e = err(&format!("{READ}\n{READ}"));
    assert!(
        e.contains("jobs.toml:8: job 'a': the name is already used by the job on line 1"),
        "{e}"
    );
}

#[test]
fn kinds_policies_raid_and_faults_are_checked() {
    let e = err(&READ.replace("\"read\"", "\"move\""));
    assert!(e.contains("kind = \"move\" is not one of"), "{e}");
    let e = err(&format!("{READ}policy = \"maybe\"\n"));
    assert!(e.contains("not one of bounce, p2p-only, host"), "{e}");
    let raid = "[[job]]\nname = \"r\"\nkind = \"raid5-read\"\nmembers = [\"nvme0\", \"nvme1\", \"nvme2\"]\nmissing = \"nvme3\"\ninto = \"gpu0\"\nsize = \"1M\"\n";
    let e = err(raid);
    assert!(
        e.contains("`missing` = \"nvme3\" is not one of `members`"),
        "{e}"
    );
    let e = err(&raid.replace(", \"nvme2\"]", "]").replace("nvme3", "nvme1"));
    assert!(e.contains("at least 3 members"), "{e}");
    let e = err(&format!(
        "{READ}fault = {{ kind = \"revoke\", device = \"nvme2\", at = \"1M\" }}\n"
    ));
    assert!(e.contains("needs device memory to revoke"), "{e}");
    let e = err(&format!(
        "{READ}fault = {{ kind = \"link-down\", device = \"nvme0\", at = \"2G\" }}\n"
    ));
    assert!(e.contains("not inside the job"), "{e}");
    let e = err(
        "[[job]]\nname = \"c\"\nkind = \"copy\"\nfrom = \"nvme0\"\nto = \"nvme0\"\nsize = \"1M\"\n",
    );
    assert!(e.contains("same drive") && e.contains("overlap"), "{e}");
}

#[test]
fn a_missing_file_is_named() {
    let e = format::load(Path::new("/nonexistent/w.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/w.toml: cannot read the workload"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let e = format::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file"), "{e}");
}

const TWO: &str = "[machine.a]\npreset = \"dual-xeon\"\n\n[machine.b]\npreset = \"workstation\"\niommu = \"translated\"\n\n[wire]\na = \"a:nic0\"\nb = \"b:nic\"\ngbps = 100\nmtu = 9000\nlatency = \"2us\"\n\n";

fn two(jobs: &str) -> Result<(Vec<format::Job>, Option<peerdma_consumers::net::Wire>), String> {
    let w = format::parse(&format!("{TWO}{jobs}"), "two.toml", Path::new("/w"))
        .map_err(|e| e.to_string())?;
    assert_eq!(w.machines.len(), 2);
    assert_eq!(w.machines[1].name, "b");
    assert_eq!(w.machines[1].iommu, Some(format::IommuSetting::Translated));
    let a = Source::Preset("dual-xeon".into()).load().unwrap();
    let b = Source::Preset("workstation".into()).load().unwrap();
    let (ca, cb) = (|f| capacity(&a, f), |f| capacity(&b, f));
    let caps = [
        Capacities {
            topo: &a,
            media_size: 64 << 30,
            device_memory: &ca,
        },
        Capacities {
            topo: &b,
            media_size: 64 << 30,
            device_memory: &cb,
        },
    ];
    let wire = w.resolve_wire(&caps).map_err(|e| e.to_string())?;
    let jobs = w.resolve(&caps).map_err(|e| e.to_string())?;
    Ok((jobs, wire))
}

#[test]
fn two_machines_name_their_devices_and_a_wire_joins_two_nics() {
    let (jobs, wire) = two(
        "[[job]]\nname = \"x\"\nkind = \"read\"\ndrive = \"a:nvme0\"\ninto = \"a:gpu0\"\nsize = \"1M\"\n\n\
         [[job]]\nname = \"y\"\nkind = \"read\"\ndrive = \"b:nvme0\"\ninto = \"b:gpu\"\nsize = \"1M\"\n",
    )
    .unwrap();
    assert_eq!((jobs[0].machine, jobs[1].machine), (0, 1));
    let w = wire.unwrap();
    assert_eq!((w.a.machine, w.b.machine), (0, 1));
    assert_eq!(w.bytes_per_sec, 100e9 / 8.0);
    assert_eq!((w.mtu, w.latency_ns), (9000, 2000));

    let e = two("[[job]]\nname = \"x\"\nkind = \"read\"\ndrive = \"nvme0\"\ninto = \"a:gpu0\"\nsize = \"1M\"\n").unwrap_err();
    assert!(
        e.contains("\"nvme0\" does not say which machine: write a:DEVICE or b:DEVICE"),
        "{e}"
    );
    let e = two("[[job]]\nname = \"x\"\nkind = \"read\"\ndrive = \"a:nvme0\"\ninto = \"b:gpu\"\nsize = \"1M\"\n").unwrap_err();
    assert!(e.contains("a read job runs on one machine"), "{e}");
    let job = "[[job]]\nname = \"x\"\nkind = \"read\"\ndrive = \"a:nvme0\"\ninto = \"a:gpu0\"\nsize = \"1M\"\n";
    let w = format::parse(
        &format!("{}{job}", TWO.replace("b = \"b:nic\"", "b = \"b:gpu\"")),
        "two.toml",
        Path::new("/w"),
    )
    .unwrap();
    let a = Source::Preset("dual-xeon".into()).load().unwrap();
    let b = Source::Preset("workstation".into()).load().unwrap();
    let none = |_| None;
    let caps = [
        Capacities {
            topo: &a,
            media_size: 1 << 30,
            device_memory: &none,
        },
        Capacities {
            topo: &b,
            media_size: 1 << 30,
            device_memory: &none,
        },
    ];
    let e = w.resolve_wire(&caps).unwrap_err().to_string();
    assert!(
        e.contains("two.toml:8: [wire]: `b` = \"b:gpu\"") && e.contains("not a network controller"),
        "{e}"
    );
    let e = format::parse(
        &TWO.replace("latency = \"2us\"", "latency = \"soon\""),
        "two.toml",
        Path::new("/w"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[wire]: latency") && e.contains("two.toml:8"),
        "{e}"
    );
    let e = format::parse(
        &TWO.replace("gbps = 100", "gbps = -1"),
        "two.toml",
        Path::new("/w"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not a positive line rate"), "{e}");
}
