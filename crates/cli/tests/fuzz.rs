//! A mutation fuzzer over every way a machine is read: description files,
//! snapshots and `--root` trees, seeded from the presets and the kernel
//! fixtures. Each case mutates a seed (bytes, truncation, lines and keys
//! deleted, duplicated or swapped, values swapped or replaced by extreme
//! ones, names of 70,000 characters; in trees, files replaced by FIFOs,
//! links to /dev/zero, directories or nothing), then reads it through the
//! library as `peerdma` does and, when it is accepted, renders what the
//! commands print. It holds that:
//!
//! - nothing panics (reading, building, validating, rendering, verdicts);
//! - nothing hangs: each case runs on a thread with a time budget;
//! - each refusal is one line that names the file (or tree) and says what
//!   is wrong.
//!
//! The generator is seeded, so every run is the same; a failure prints the
//! case and its mutations. `PEERDMA_FUZZ_CASES=N` sets the number of cases
//! of each kind (by default 2,500 descriptions, 2,500 snapshots and 1,500
//! trees: about 20 s in a debug build on two cores), and
//! `PEERDMA_FUZZ_SEED=N` draws other cases.

use peerdma_p2p::{calc_map_type_and_dist, explain, find_many, Matrix};
use peerdma_pci::gen::Rng;
use peerdma_pci::ids::PciIds;
use peerdma_pci::{presets, render, snapshot_json, sysfs, FnId, Source, Topology};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// The generator's seed; `PEERDMA_FUZZ_SEED=N` explores other cases.
fn seed() -> u64 {
    let base = 0x0070_6565_7264_6d61; // "peerdma"
    std::env::var("PEERDMA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(base, |s| base ^ s.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}
/// A case that takes longer than this is a hang (a debug build on a busy
/// two-core machine reads the largest seed in well under a second).
const BUDGET: Duration = Duration::from_secs(20);

fn cases(default: usize) -> usize {
    std::env::var("PEERDMA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kernel_fixtures() -> Vec<PathBuf> {
    let dir = workspace().join("tests/fixtures/kernel");
    let mut v: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("snapshot.json").is_file())
        .collect();
    v.sort();
    assert!(v.len() >= 5, "kernel fixtures under {}", dir.display());
    v
}

// ---- mutations of text ----

/// Values that break parsers and builders: huge, negative, empty, wrong
/// types, and very long strings.
fn extreme_value(rng: &mut Rng, json: bool) -> String {
    let long = || "x".repeat(70_000);
    let choices: Vec<String> = vec![
        "18446744073709551615".into(),
        "18446744073709551616".into(),
        "-1".into(),
        "4294967296".into(),
        "65536".into(),
        "256".into(),
        "0".into(),
        "1e308".into(),
        "true".into(),
        "[]".into(),
        "{}".into(),
        "\"\"".into(),
        "\"-1\"".into(),
        "\"0x\"".into(),
        "\"16E\"".into(),
        "\"99999999999999999999K\"".into(),
        "\"gen9x64\"".into(),
        "\"pci0000:00\"".into(),
        "\"0000:00:00.0\"".into(),
        "\"../../..\"".into(),
        "\"ffff:ff:1f.7\"".into(),
        "\"10000:00:00.0\"".into(),
        if json {
            "null".into()
        } else {
            "\"\\u0000\"".into()
        },
        format!("\"{}\"", long()),
        format!("\"{}\"", "ab".repeat(5000)),
    ];
    rng.pick(&choices).clone()
}

/// The byte range of the value on `line` (after `=` or `: `), if any.
fn value_span(line: &str, json: bool) -> Option<(usize, usize)> {
    let sep = if json { "\": " } else { " = " };
    let i = line.find(sep)? + sep.len();
    let end = if json {
        line.trim_end()
            .strip_suffix(',')
            .map_or(line.len(), |s| s.len())
    } else {
        line.len()
    };
    (i <= end).then_some((i, end))
}

/// Apply one random mutation to `text`; returns its description.
fn mutate_text(rng: &mut Rng, text: &mut String, json: bool) -> String {
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    let n = lines.len() as u64;
    let what = match rng.below(11) {
        0 => {
            // Bytes: overwrite a few with structural or odd characters.
            let mut b = std::mem::take(text).into_bytes();
            let k = 1 + rng.below(4);
            for _ in 0..k {
                if b.is_empty() {
                    break;
                }
                let at = rng.below(b.len() as u64) as usize;
                b[at] = *rng.pick(b"\"=[]{},:\n0-#\\ .x\x00\xff\x7f9");
            }
            *text = String::from_utf8_lossy(&b).into_owned();
            return format!("{k} bytes changed");
        }
        1 => {
            let at = rng.below(text.len() as u64 + 1) as usize;
            let at = (0..=at)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(at);
            return format!("truncated at {at}");
        }
        2 => {
            let i = rng.below(n) as usize;
            lines.remove(i);
            format!("line {} deleted", i + 1)
        }
        3 => {
            let i = rng.below(n) as usize;
            let l = lines[i].clone();
            lines.insert(i, l);
            format!("line {} duplicated", i + 1)
        }
        4 => {
            let (i, j) = (rng.below(n) as usize, rng.below(n) as usize);
            lines.swap(i, j);
            format!("lines {} and {} swapped", i + 1, j + 1)
        }
        5 | 6 => {
            // Swap the values of two keys.
            let with: Vec<usize> = (0..lines.len())
                .filter(|&i| value_span(&lines[i], json).is_some())
                .collect();
            if with.len() < 2 {
                return "nothing to swap".into();
            }
            let (i, j) = (*rng.pick(&with), *rng.pick(&with));
            let (a0, a1) = value_span(&lines[i], json).unwrap();
            let (b0, b1) = value_span(&lines[j], json).unwrap();
            let va = lines[i][a0..a1].to_string();
            let vb = lines[j][b0..b1].to_string();
            lines[i].replace_range(a0..a1, &vb);
            lines[j].replace_range(b0..b1, &va);
            format!("values of lines {} and {} swapped", i + 1, j + 1)
        }
        7..=9 => {
            // Replace a value with an extreme one.
            let with: Vec<usize> = (0..lines.len())
                .filter(|&i| value_span(&lines[i], json).is_some())
                .collect();
            if with.is_empty() {
                return "no value to replace".into();
            }
            let i = *rng.pick(&with);
            let (a, b) = value_span(&lines[i], json).unwrap();
            let v = extreme_value(rng, json);
            lines[i].replace_range(a..b, &v);
            format!(
                "line {} value -> {}",
                i + 1,
                v.chars().take(30).collect::<String>()
            )
        }
        _ => {
            // Delete a key of a table or object, or the table header.
            let i = rng.below(n) as usize;
            let l = lines[i].trim_start();
            if l.starts_with('[') || l.starts_with('"') || l.contains(" = ") {
                lines.remove(i);
                format!("key on line {} deleted", i + 1)
            } else {
                "no key there".into()
            }
        }
    };
    *text = lines.join("\n");
    text.push('\n');
    what
}

// ---- running a case ----

/// Read `src` as peerdma does and, if it is accepted, render everything
/// the commands print. `Err` is the refusal's message.
fn read_and_render(src: &Source) -> Result<(), String> {
    let t = src.load().map_err(|e| e.to_string())?;
    exercise(&t);
    Ok(())
}

fn exercise(t: &Topology) {
    let ids = PciIds::builtin();
    let _ = render::header(t);
    let _ = render::tree(t, &ids);
    let m = Matrix::compute(t);
    let fns: Vec<FnId> = t
        .functions()
        .iter()
        .filter(|f| f.is_dma_endpoint())
        .map(|f| f.id)
        .collect();
    let _ = peerdma_p2p::render::matrix_table(t, &m, &fns);
    let _ = serde_json::to_string(t.functions()).unwrap();
    let _ = m.pairs().count();
    let all: Vec<FnId> = t.ids().collect();
    // A few pairs: the kernel walk and the explanation (the matrix above
    // covered every pair's verdict).
    for k in 0..all.len().min(6) {
        let a = all[(k * 13) % all.len()];
        let b = all[(k * 7 + 1) % all.len()];
        let _ = calc_map_type_and_dist(t, a, b);
        let _ = explain(t, a, b).render();
    }
    let _ = find_many(t, &fns[..fns.len().min(3)]);
}

/// Run one case on a thread: no panic, no hang, and a refusal is one line
/// that contains `names` and says something after it.
fn run_case(case: &str, src: Source, names: &str) -> bool {
    let (tx, rx) = mpsc::channel();
    let src2 = src.clone();
    std::thread::spawn(move || {
        let r = catch_unwind(AssertUnwindSafe(|| read_and_render(&src2)));
        let _ = tx.send(r);
    });
    let outcome = match rx.recv_timeout(BUDGET) {
        Ok(r) => r,
        Err(_) => panic!("{case}: reading {src:?} did not finish within {BUDGET:?} (a hang)"),
    };
    match outcome {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{case}: panicked reading {src:?}: {msg}");
        }
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            assert!(!e.contains('\n'), "{case}: not one line: {e}");
            let at = e
                .find(names)
                .unwrap_or_else(|| panic!("{case}: does not name {names}: {e}"));
            // What follows the file (and line, or path below a tree).
            let after = &e[at + names.len()..];
            let said = after.split_once(": ").map_or("", |(_, m)| m);
            for internal in [
                "untagged enum",
                "expected struct",
                "expected u8",
                "expected u16",
                "expected u32",
                "expected u64",
                "expected i64",
            ] {
                assert!(!e.contains(internal), "{case}: internal words: {e}");
            }
            assert!(
                said.chars().filter(|c| c.is_alphabetic()).count() >= 8,
                "{case}: says too little: {e}"
            );
            false
        }
    }
}

/// Seeds of one text kind: (name, text).
fn text_fuzz(kind: &str, seeds: &[(String, String)], n: usize, json: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut accepted = 0;
    for i in 0..n {
        let mut rng = Rng::new(seed() ^ (i as u64).wrapping_mul(0x9e37_79b9) ^ json as u64);
        let (name, seed) = rng.pick(seeds);
        let mut text = seed.clone();
        let mut did = Vec::new();
        for _ in 0..1 + rng.below(3) {
            did.push(mutate_text(&mut rng, &mut text, json));
        }
        let path = dir
            .path()
            .join(format!("case-{i}.{}", if json { "json" } else { "toml" }));
        fs::write(&path, &text).unwrap();
        let src = if json {
            Source::Snapshot(path.clone())
        } else {
            Source::Description(path.clone())
        };
        let case = format!("{kind} case {i} from {name} ({})", did.join("; "));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if run_case(&case, src, &file) {
            accepted += 1;
        }
        let _ = fs::remove_file(&path);
    }
    // The mutations are not all fatal: the fuzzer reaches the builder and
    // the renderers, not only the parser.
    assert!(accepted * 20 > n, "{kind}: only {accepted} of {n} accepted");
    eprintln!("{kind}: {n} cases, {accepted} accepted");
}

#[test]
fn mutated_descriptions() {
    let mut seeds: Vec<(String, String)> = presets::PRESETS
        .iter()
        .map(|p| (format!("preset {}", p.name), p.text.to_string()))
        .collect();
    seeds.push(("generated 1".into(), peerdma_pci::gen::description(1, 60)));
    text_fuzz("description", &seeds, cases(2500), false);
}

#[test]
fn mutated_snapshots() {
    let mut seeds: Vec<(String, String)> = presets::PRESETS
        .iter()
        .map(|p| {
            let raw = presets::load(p.name).unwrap();
            (format!("preset {}", p.name), snapshot_json(&raw))
        })
        .collect();
    for f in kernel_fixtures() {
        let text = fs::read_to_string(f.join("snapshot.json")).unwrap();
        seeds.push((f.file_name().unwrap().to_string_lossy().into_owned(), text));
    }
    text_fuzz("snapshot", &seeds, cases(2500), true);
}

// ---- mutations of --root trees ----

/// Copy a tree, keeping its links as links.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Every file and link below `dir`.
fn entries(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() && !ft.is_symlink() {
            entries(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// What was at a path before a mutation, to put back.
enum Saved {
    File(Vec<u8>),
    Link(PathBuf),
}

fn save(p: &Path) -> Saved {
    match fs::read_link(p) {
        Ok(t) => Saved::Link(t),
        Err(_) => Saved::File(fs::read(p).unwrap()),
    }
}

fn clear(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).unwrap(),
        Ok(_) => fs::remove_file(p).unwrap(),
        Err(_) => {}
    }
}

fn restore(p: &Path, s: &Saved) {
    clear(p);
    match s {
        Saved::File(b) => fs::write(p, b).unwrap(),
        Saved::Link(t) => std::os::unix::fs::symlink(t, p).unwrap(),
    }
}

/// `mkfifo(1)`, on every Unix.
fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mkfifo {}", p.display());
}

fn mutate_entry(rng: &mut Rng, p: &Path, all: &[PathBuf]) -> String {
    let saved = save(p);
    match rng.below(10) {
        0 => {
            clear(p);
            mkfifo(p);
            "replaced by a FIFO".into()
        }
        1 => {
            clear(p);
            std::os::unix::fs::symlink("/dev/zero", p).unwrap();
            "linked to /dev/zero".into()
        }
        2 => {
            clear(p);
            fs::create_dir(p).unwrap();
            "replaced by a directory".into()
        }
        3 => {
            clear(p);
            "deleted".into()
        }
        4 => {
            clear(p);
            let target = rng.pick(all).clone();
            let how = if rng.chance(50) {
                std::os::unix::fs::symlink(&target, p).unwrap();
                "another entry"
            } else {
                std::os::unix::fs::symlink(p.file_name().unwrap(), p).unwrap();
                "itself"
            };
            format!("linked to {how}")
        }
        5 => {
            clear(p);
            fs::write(p, vec![b'7'; 70_000 + rng.below(10) as usize]).unwrap();
            "70,000 bytes".into()
        }
        _ => match saved {
            Saved::File(mut b) => {
                let mut text = String::from_utf8_lossy(&b).into_owned();
                let what = if b.iter().all(|c| c.is_ascii()) {
                    mutate_text(rng, &mut text, false)
                } else {
                    // Config space: bytes changed or cut.
                    if rng.chance(50) && !b.is_empty() {
                        let at = rng.below(b.len() as u64) as usize;
                        b.truncate(at);
                    } else {
                        for _ in 0..1 + rng.below(8) {
                            if b.is_empty() {
                                break;
                            }
                            let at = rng.below(b.len() as u64) as usize;
                            b[at] = rng.next_u64() as u8;
                        }
                    }
                    text.clear();
                    fs::write(p, &b).unwrap();
                    return "binary bytes changed or cut".into();
                };
                fs::write(p, text).unwrap();
                what
            }
            Saved::Link(_) => {
                clear(p);
                std::os::unix::fs::symlink("../../nowhere/0000:ff:1f.7", p).unwrap();
                "link dangling".into()
            }
        },
    }
}

#[cfg(unix)]
#[test]
fn mutated_root_trees() {
    let dir = tempfile::tempdir().unwrap();
    let mut trees: Vec<(String, PathBuf)> = Vec::new();
    for f in kernel_fixtures() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let to = dir.path().join(format!("tree-{name}"));
        copy_tree(&f.join("root"), &to);
        trees.push((name, to));
    }
    for p in ["workstation", "epyc"] {
        let to = dir.path().join(format!("tree-{p}"));
        sysfs::write_root(&presets::load(p).unwrap(), &to).unwrap();
        trees.push((format!("preset {p}"), to));
    }
    let listed: Vec<Vec<PathBuf>> = trees
        .iter()
        .map(|(_, t)| {
            let mut v = Vec::new();
            entries(t, &mut v);
            v
        })
        .collect();
    let n = cases(1500);
    let mut accepted = 0;
    for i in 0..n {
        let mut rng = Rng::new(seed() ^ 0x7ee ^ (i as u64).wrapping_mul(0x9e37_79b9));
        let t = rng.below(trees.len() as u64) as usize;
        let (name, root) = &trees[t];
        let all = &listed[t];
        // Mostly one file, sometimes two.
        let mut touched = Vec::new();
        let mut did = Vec::new();
        for _ in 0..1 + u64::from(rng.chance(20)) {
            let p = rng.pick(all).clone();
            if touched.iter().any(|(q, _)| q == &p) {
                continue;
            }
            let saved = save(&p);
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            did.push(format!("{rel} {}", mutate_entry(&mut rng, &p, all)));
            touched.push((p, saved));
        }
        let case = format!("--root case {i} in {name} ({})", did.join("; "));
        let root_name = root.file_name().unwrap().to_string_lossy().into_owned();
        if run_case(&case, Source::Root(root.clone()), &root_name) {
            accepted += 1;
        }
        for (p, s) in touched.iter().rev() {
            restore(p, s);
        }
    }
    assert!(accepted * 20 > n, "--root: only {accepted} of {n} accepted");
    eprintln!("--root: {n} cases, {accepted} accepted");
    // The trees are whole again.
    for (name, root) in &trees {
        Source::Root(root.clone())
            .load()
            .unwrap_or_else(|e| panic!("{name} after the fuzz: {e}"));
    }
}
