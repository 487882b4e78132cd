//! What users expect of a command-line tool: completions and man pages
//! from the command's definitions, a schema version in every --json, and
//! colour only where wanted (NO_COLOR, --color, not into files and pipes).

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn peerdma_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peerdma"));
    c.args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run peerdma")
}

fn ok(args: &[&str]) -> String {
    let o = peerdma_env(args, &[]);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

const SUBCOMMANDS: &[&str] = &[
    "topo",
    "check",
    "matrix",
    "snapshot",
    "presets",
    "sim",
    "demo",
    "devmem-table",
    "report",
    "labels",
    "metrics",
    "diff",
    "fleet",
    "completions",
    "man",
    "copy",
    "probe",
];

#[test]
fn completions_for_each_shell_know_every_subcommand() {
    let bash = ok(&["completions", "bash"]);
    for s in SUBCOMMANDS {
        assert!(bash.contains(s), "bash: {s}");
    }
    // bash accepts the script and registers it for peerdma.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("peerdma.bash");
    std::fs::write(&file, &bash).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source '{}' && complete -p peerdma",
            file.display()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("_peerdma"),
        "{o:?}"
    );
    assert!(ok(&["completions", "zsh"]).starts_with("#compdef peerdma"));
    let fish = ok(&["completions", "fish"]);
    assert!(
        fish.contains("complete -c peerdma") && fish.contains("fleet"),
        "{fish}"
    );
    let o = peerdma_env(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn man_pages_from_the_definitions() {
    let page = ok(&["man"]);
    assert!(page.contains(".TH peerdma 1"), "{page}");
    assert!(
        page.contains("peerdma\\-fleet(1)") && page.contains("peerdma\\-labels(1)"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let said = ok(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert!(
        said.contains(&format!("wrote {} man pages", SUBCOMMANDS.len() + 1)),
        "{said}"
    );
    for s in SUBCOMMANDS {
        let p = dir.path().join(format!("peerdma-{s}.1"));
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(text.contains(&format!(".TH peerdma-{s} 1")), "{s}: {text}");
    }
    // man itself renders them, where it is installed.
    if Path::new("/usr/bin/man").exists() {
        let o = Command::new("man")
            .arg("-l")
            .arg(dir.path().join("peerdma-diff.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("Compare two machines"), "{text}");
    } else {
        eprintln!("skipped rendering: no /usr/bin/man");
    }
}

#[test]
fn every_json_output_has_a_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("a.json");
    ok(&[
        "snapshot",
        "--preset",
        "workstation",
        "-o",
        snap.to_str().unwrap(),
    ]);
    let src = dir.path().join("src");
    std::fs::write(&src, "hello").unwrap();
    let dst = dir.path().join("dst");
    let fleet = dir.path().join("fleet");
    std::fs::create_dir(&fleet).unwrap();
    std::fs::copy(&snap, fleet.join("a.json")).unwrap();
    let snap = snap.to_str().unwrap();
    let b = dir.path().join("b.json");
    let runs: Vec<Vec<&str>> = vec![
        vec!["presets"],
        vec!["topo"],
        vec!["check", "gpu0", "nvme0"],
        vec!["matrix"],
        vec!["snapshot", "--preset", "epyc", "-o", b.to_str().unwrap()],
        vec!["labels", "--preset", "epyc"],
        vec!["diff", snap, "--preset", "workstation"],
        vec!["fleet", fleet.to_str().unwrap()],
        vec![
            "copy",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--dry-run",
        ],
    ];
    for mut args in runs {
        args.push("--json");
        let out = ok(&args);
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
        assert_eq!(v["schema"], 1, "{args:?}: {out}");
    }
}

/// Run under a pseudo-terminal (util-linux `script`), as a person would.
fn on_a_terminal(args: &str, env: &[(&str, &str)]) -> Option<String> {
    if !Path::new("/usr/bin/script").exists() {
        eprintln!("skipped the terminal part: no /usr/bin/script (util-linux)");
        return None;
    }
    let mut c = Command::new("/usr/bin/script");
    c.args([
        "-qec",
        &format!("{} {args}", env!("CARGO_BIN_EXE_peerdma")),
        "/dev/null",
    ])
    .env_remove("NO_COLOR")
    .env("TERM", "xterm");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8_lossy(&o.stdout).replace("\r\n", "\n"))
}

#[test]
fn colour_only_where_wanted() {
    const ESC: char = '\u{1b}';
    let green_b4 = "\u{1b}[32mB4 PIX";
    // Into a pipe: plain text.
    let plain = ok(&["topo", "--preset", "gpu-storage-16"]);
    assert!(!plain.contains(ESC));
    // --color always: coloured, and the same text once the colour is taken out.
    let forced = ok(&["topo", "--preset", "gpu-storage-16", "--color", "always"]);
    assert!(forced.contains(green_b4), "{forced}");
    assert_eq!(strip(&forced), plain);
    // The verdict of check: not supported in red.
    let o = peerdma_env(
        &[
            "check",
            "--preset",
            "workstation",
            "gpu",
            "nvme0",
            "--color",
            "always",
        ],
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("\u{1b}[1m\u{1b}[31mnot_supported"), "{out}");
    // --color always wins over NO_COLOR; --color never over a terminal.
    let o = peerdma_env(&["matrix", "--color", "always"], &[("NO_COLOR", "1")]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(ESC));
    // JSON never has colour.
    assert!(!ok(&["matrix", "--json", "--color", "always"]).contains(ESC));
    // On a terminal: colour, unless NO_COLOR or --color never.
    if let Some(tty) = on_a_terminal("topo --preset gpu-storage-16", &[]) {
        assert!(tty.contains(green_b4), "{tty}");
        let no = on_a_terminal("topo --preset gpu-storage-16", &[("NO_COLOR", "1")]).unwrap();
        assert!(!no.contains(ESC), "NO_COLOR: {no}");
        let never = on_a_terminal("topo --preset gpu-storage-16 --color never", &[]).unwrap();
        assert!(!never.contains(ESC), "--color never: {never}");
        assert_eq!(strip(&tty), no);
    }
}

/// Text without its ANSI colour sequences.
fn strip(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
