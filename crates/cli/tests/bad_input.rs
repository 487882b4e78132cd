//! Bad input as a user meets it through `peerdma`: one line on stderr that
//! names the file and says what is wrong, exit status 2, no panic, no hang,
//! and nothing left behind.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Run peerdma, killing it if it runs longer than `secs`.
fn peerdma_within(args: &[&str], secs: u64) -> Output {
    use std::io::Read;
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerdma"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run peerdma");
    // Drain both pipes as the command writes, so it never waits on us.
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("peerdma {args:?} did not finish within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn ok(args: &[&str]) -> String {
    let o = peerdma_within(args, 60);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Exit status 2 and one line on stderr containing each of `want`.
fn fails(args: &[&str], want: &[&str]) -> String {
    let o = peerdma_within(args, 60);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: expected '{w}' in: {err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const BASE: &str = "[cpu]\nvendor = \"intel\"\nfamily = 6\n[[host_bridge]]\nname = \"hb0\"\n\
    [[device]]\nname = \"rp\"\ntype = \"root_port\"\nparent = \"hb0\"\n\
    [[device]]\nname = \"nic\"\ntype = \"endpoint\"\nparent = \"rp\"\nbars = [{ bar = 0, size = \"1M\" }]\n";

#[test]
fn descriptions_that_panicked_or_were_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        fs::write(&p, text).unwrap();
        p
    };
    // physfn naming no device (index out of bounds before).
    let p = write(
        "physfn.toml",
        &format!("{BASE}[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nparent = \"rp\"\nphysfn = \"nosuch\"\n"),
    );
    fails(
        &["topo", "--topology", s(&p)],
        &["physfn.toml:15:", "physfn 'nosuch' is not a device"],
    );
    // A name of 70,000 characters (a format width panicked before).
    let long = "n".repeat(70_000);
    let p = write(
        "long.toml",
        &format!("{BASE}[[device]]\nname = \"{long}\"\ntype = \"endpoint\"\nparent = \"rp\"\n"),
    );
    let out = ok(&["topo", "--topology", s(&p)]);
    assert!(out.contains(&long) && out.contains("P2P matrix"));
    ok(&["matrix", "--topology", s(&p)]);
    // Nonsense that exited 0.
    for (name, extra, want) in [
        (
            "own-physfn.toml",
            "[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nparent = \"rp\"\nphysfn = \"vf\"\n",
            "(vf): is its own physical function",
        ),
        (
            "physfn-port.toml",
            "[[device]]\nname = \"vf\"\ntype = \"endpoint\"\nparent = \"rp\"\nphysfn = \"rp\"\n",
            "(rp) as its physical function, which is a root port, not an endpoint",
        ),
        (
            "avail.toml",
            "",
            "(nic): p2pmem available (2097152) is larger than its size (1048576)",
        ),
    ] {
        let text = if extra.is_empty() {
            BASE.replace(
                "bars = [{ bar = 0, size = \"1M\" }]",
                "bars = [{ bar = 0, size = \"1M\" }]\np2pmem = { bar = 0, available = \"2M\" }",
            )
        } else {
            format!("{BASE}{extra}")
        };
        let p = write(name, &text);
        fails(&["topo", "--topology", s(&p)], &[s(&p), want]);
    }
    let p = write(
        "offset.toml",
        &BASE.replace(
            "name = \"hb0\"",
            "name = \"hb0\"\nbus_offset = 9223372036854775807",
        ),
    );
    fails(
        &["topo", "--topology", s(&p)],
        &[
            "offset.toml:4:",
            "outside the 64-bit physical address space",
        ],
    );
}

#[test]
fn messages_say_what_is_wrong_once_and_name_the_file_given() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("eof.toml");
    fs::write(&p, "[cpu]\nname =").unwrap();
    fails(
        &["topo", "--topology", s(&p)],
        &["eof.toml:2: 'name' has no value"],
    );
    let p = dir.path().join("class.toml");
    fs::write(
        &p,
        BASE.replace("parent = \"rp\"", "parent = \"rp\"\nclass = true"),
    )
    .unwrap();
    let e = fails(
        &["topo", "--topology", s(&p)],
        &["class.toml:14:", "expected a class"],
    );
    assert!(!e.contains("untagged") && !e.contains("NumOrName"), "{e}");

    // A cause is said once ("Not a directory (os error 20)" twice before).
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let e = fails(
        &["topo", "--topology", s(&file.join("x.toml"))],
        &["x.toml", "Not a directory"],
    );
    assert_eq!(e.matches("Not a directory").count(), 1, "{e}");

    // A snapshot's messages name the file given, with its recorded origin
    // as context.
    let snap = dir.path().join("box.json");
    ok(&["snapshot", "-o", s(&snap)]);
    let e = fails(&["check", "--snapshot", s(&snap), "99:00.0", "gpu0"], &[]);
    assert!(
        e.contains(&format!(
            "no PCI function 99:00.0 in {} (a snapshot of preset 'dual-xeon')",
            s(&snap)
        )),
        "{e}"
    );
    let head = ok(&["topo", "--snapshot", s(&snap)]);
    assert!(
        head.lines().next().unwrap().contains(&format!(
            "from snapshot {} (captured from built-in preset 'dual-xeon')",
            s(&snap)
        )),
        "{head}"
    );
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn snapshot_leaves_nothing_behind_on_error_and_touches_no_other_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // -o a directory: refused, and no DIR.json.tmp beside it.
    let out = d.join("out");
    fs::create_dir(&out).unwrap();
    fails(&["snapshot", "-o", s(&out)], &[s(&out), "is a directory"]);
    assert_eq!(listing(d), ["out"]);
    assert!(listing(&out).is_empty());

    // -o x.v1 must not overwrite an unrelated x.json.tmp.
    fs::write(d.join("x.json.tmp"), "mine").unwrap();
    ok(&["snapshot", "-o", s(&d.join("x.v1"))]);
    assert_eq!(fs::read_to_string(d.join("x.json.tmp")).unwrap(), "mine");
    assert!(fs::read_to_string(d.join("x.v1"))
        .unwrap()
        .contains("peerdma-snapshot"));
    assert_eq!(listing(d), ["out", "x.json.tmp", "x.v1"]);

    // An error after the snapshot is ready (the tree cannot be written)
    // leaves no new snapshot file, empty or not.
    let busy = d.join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep"), "x").unwrap();
    let snap = d.join("new.json");
    fails(
        &["snapshot", "-o", s(&snap), "--tree", s(&busy)],
        &[s(&busy), "not empty"],
    );
    assert!(!snap.exists());
    assert_eq!(listing(&busy), ["keep"]);
    assert_eq!(listing(d), ["busy", "out", "x.json.tmp", "x.v1"]);

    // A snapshot into a directory that does not exist: nothing made.
    fails(
        &["snapshot", "-o", s(&d.join("no/such/dir/s.json"))],
        &["no/such/dir"],
    );
    assert_eq!(listing(d), ["busy", "out", "x.json.tmp", "x.v1"]);

    // A tree into a new directory, and a snapshot replacing a file.
    let tree = d.join("tree");
    ok(&["snapshot", "-o", s(&d.join("x.v1")), "--tree", s(&tree)]);
    ok(&["topo", "--root", s(&tree)]);
    assert_eq!(listing(d), ["busy", "out", "tree", "x.json.tmp", "x.v1"]);
}

/// `-o` naming a pipe writes into it (a tool reading `peerdma snapshot -o
/// /dev/stdout`), rather than replacing the pipe by a file.
#[cfg(unix)]
#[test]
fn snapshot_into_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let fifo = fifo.clone();
        std::thread::spawn(move || tx.send(fs::read_to_string(fifo).unwrap()));
    }
    ok(&["snapshot", "--preset", "workstation", "-o", s(&fifo)]);
    use std::os::unix::fs::FileTypeExt;
    assert!(
        fs::metadata(&fifo).unwrap().file_type().is_fifo(),
        "the pipe was replaced by a file"
    );
    let text = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the snapshot came through the pipe");
    assert!(text.contains("\"peerdma-snapshot\""), "{text}");
    assert_eq!(listing(dir.path()), ["pipe"]);
    // `-o -` is standard output: the snapshot alone, the summary on stderr.
    let o = peerdma_within(&["snapshot", "--preset", "workstation", "-o", "-"], 60);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["format"], "peerdma-snapshot");
    assert!(String::from_utf8_lossy(&o.stderr).contains("to standard output"));
}

/// A `--root` tree whose `config` is a FIFO or a link to /dev/zero.
#[cfg(unix)]
#[test]
fn root_trees_that_hung_or_ran_out_of_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    ok(&["snapshot", "--preset", "workstation", "--tree", s(&tree)]);
    let config = tree.join("sys/devices/pci0000:00/0000:00:1c.0/config");
    fs::remove_file(&config).unwrap();
    assert!(Command::new("mkfifo")
        .arg(&config)
        .status()
        .unwrap()
        .success());
    fails(
        &["topo", "--root", s(&tree)],
        &["0000:00:1c.0/config: is a FIFO"],
    );
    fs::remove_file(&config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
    fails(
        &["topo", "--root", s(&tree)],
        &["0000:00:1c.0/config: is a character device"],
    );
}
