//! `cargo xtask bench copy`: `peerdma copy` against `dd`, `cp` and `fio` on
//! the same large file, side by side in one run.
//!
//! Every method copies the same source file (pseudo-random bytes, made once
//! and kept next to a stamp) to a fresh destination in the same directory,
//! a few times, in rotating order. Before each run the destination is
//! removed and, as root, the page cache is dropped (`sync; echo 3 >
//! /proc/sys/vm/drop_caches`), so every run reads from the device. A run's
//! time is the command's wall time plus an `fdatasync` of the destination
//! (issued here, after the command), so that a method that leaves dirty
//! pages behind (`cp`) is timed until its data is written like the
//! O_DIRECT ones. CPU time is the children's user + system time
//! (`/proc/self/stat` cutime/cstime, which include fio's job processes).
//!
//! fio cannot copy; its line is two jobs in one run, started together: a
//! sequential O_DIRECT read of the source and a sequential O_DIRECT write
//! of the same number of bytes to a fresh destination (io_uring, the block
//! size and depth of `peerdma copy`'s defaults, the destination
//! preallocated with fallocate as fio does by default), i.e. the device
//! reading and writing the copy's bytes at the same time without a data
//! dependency between them; the run ends when both jobs have. Its bytes
//! are fio's own pattern, not the source's, so that line is not compared.
//!
//! Benchmarks are not tests: nothing here runs in CI.

use crate::deps;
use crate::util::{self, show};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Large sequential file copies: peerdma copy vs dd, cp and fio.
    Copy(CopyArgs),
}

#[derive(clap::Args)]
pub struct CopyArgs {
    /// Bytes to copy (suffixes K, M, G).
    #[arg(long, default_value = "4G")]
    size: String,
    /// Directory for the source and destination files (on the disk to
    /// measure) [default: target/bench-copy].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Runs per method.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// The peerdma binary [default: `cargo build --release -p peerdma`].
    #[arg(long, value_name = "PATH")]
    peerdma: Option<PathBuf>,
    /// Extra `peerdma copy` variants to run, as flag strings
    /// (e.g. --variant "--chunk 4M --depth 16"); repeatable [default:
    /// "--chunk 4M --depth 8"; --variant none for none].
    #[arg(long = "variant", value_name = "FLAGS", allow_hyphen_values = true)]
    variants: Vec<String>,
    /// Skip the byte-for-byte comparison of each method's first copy.
    #[arg(long)]
    no_check: bool,
    /// Remove the source file at the end (it is kept for the next run by default).
    #[arg(long)]
    clean: bool,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    match &args.what {
        What::Copy(a) => copy(a),
    }
}

/// peerdma copy's defaults (the CLI's `--chunk` and `--depth`), which the
/// fio line mirrors.
const PEERDMA_BS: &str = "1M";
const PEERDMA_DEPTH: u32 = 8;

/// The tuned `peerdma copy` run next to the default one: 4 MiB I/Os, a
/// quarter of the requests and system calls of the default 1 MiB.
const DEFAULT_VARIANT: &str = "--chunk 4M --depth 8";

/// How one method is run.
struct Method {
    name: String,
    /// The command, with `{src}` and `{dst}` placeholders.
    argv: Vec<String>,
    kind: Kind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Peerdma { default: bool },
    Other,
}

#[derive(Debug, Serialize)]
struct RunResult {
    seconds: f64,
    cpu_user: f64,
    cpu_system: f64,
}

#[derive(Debug, Serialize)]
struct MethodResult {
    method: String,
    command: String,
    runs: Vec<RunResult>,
    median_mb_s: f64,
    min_mb_s: f64,
    max_mb_s: f64,
    median_cpu_s: f64,
    /// peerdma copy (default flags) MB/s divided by this method's.
    peerdma_ratio: f64,
    checked: Option<bool>,
    notes: Vec<String>,
}

fn copy(a: &CopyArgs) -> Result<()> {
    let size = peerdma_mem::parse_size(&a.size).with_context(|| format!("--size {}", a.size))?;
    if size < (1 << 20) || size % (1 << 20) != 0 {
        bail!("--size {}: give a multiple of 1 MiB", a.size);
    }
    if a.reps == 0 {
        bail!("--reps 0: at least one run per method");
    }
    if !has("fio") {
        eprintln!("bench: fio is missing; installing the Debian package");
        deps::ensure_packages(deps::BENCH_PACKAGES)?;
    }
    for tool in ["dd", "cp", "fio", "sync"] {
        if !has(tool) {
            bail!("`{tool}` is not installed");
        }
    }
    let peerdma = match &a.peerdma {
        Some(p) if p.is_file() => p.clone(),
        Some(p) => bail!("{} does not exist", p.display()),
        None => build_release()?,
    };
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| crate::vm::target_dir().join("bench-copy"));
    util::create_dir_all(&dir)?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let src = dir.join("src");
    let dst = dir.join("dst");
    let root = util::is_root();
    let fs = filesystem_of(&dir);
    let keep_src = src_is_ready(&src, size);
    let need = if keep_src { size } else { 2 * size } + (256 << 20);
    if let Some(avail) = available_bytes(&dir) {
        if avail < need {
            bail!(
                "{} has {} free; the benchmark needs {} (source and destination)",
                dir.display(),
                peerdma_mem::format_size(avail),
                peerdma_mem::format_size(need)
            );
        }
    }
    eprintln!(
        "bench: {} in {} ({fs}); {} run(s) per method; {}",
        peerdma_mem::format_size(size),
        dir.display(),
        a.reps,
        if root {
            "page cache dropped before every run"
        } else {
            "NOT root: the page cache cannot be dropped between runs, reads may hit it"
        }
    );
    if keep_src {
        eprintln!("bench: reusing {}", src.display());
    } else {
        let t = Instant::now();
        make_source(&src, size)?;
        eprintln!(
            "bench: wrote {} of pseudo-random bytes to {} in {}",
            peerdma_mem::format_size(size),
            src.display(),
            util::secs(t.elapsed())
        );
    }

    let p = peerdma.display().to_string();
    let mut methods = vec![Method {
        name: "peerdma copy".into(),
        argv: vec![p.clone(), "copy".into(), "{src}".into(), "{dst}".into()],
        kind: Kind::Peerdma { default: true },
    }];
    let variants: Vec<String> = match a.variants.as_slice() {
        [] => vec![DEFAULT_VARIANT.to_string()],
        [none] if none == "none" => Vec::new(),
        v => v.to_vec(),
    };
    for v in &variants {
        let mut argv = vec![p.clone(), "copy".into(), "{src}".into(), "{dst}".into()];
        argv.extend(v.split_whitespace().map(String::from));
        methods.push(Method {
            name: format!("peerdma copy {v}"),
            argv,
            kind: Kind::Peerdma { default: false },
        });
    }
    methods.push(Method {
        name: "dd iflag=direct oflag=direct bs=1M".into(),
        argv: [
            "dd",
            "if={src}",
            "of={dst}",
            "iflag=direct",
            "oflag=direct",
            "bs=1M",
            "status=none",
        ]
        .map(String::from)
        .to_vec(),
        kind: Kind::Other,
    });
    methods.push(Method {
        name: "cp".into(),
        argv: ["cp", "{src}", "{dst}"].map(String::from).to_vec(),
        kind: Kind::Other,
    });
    methods.push(Method {
        name: format!(
            "fio read + write jobs (io_uring, direct, bs={PEERDMA_BS}, iodepth={PEERDMA_DEPTH})"
        ),
        argv: vec![
            "fio".into(),
            "--output-format=json".into(),
            "--ioengine=io_uring".into(),
            "--direct=1".into(),
            format!("--bs={PEERDMA_BS}"),
            format!("--iodepth={PEERDMA_DEPTH}"),
            format!("--size={size}"),
            "--name=read".into(),
            "--rw=read".into(),
            "--filename={src}".into(),
            "--name=write".into(),
            "--rw=write".into(),
            "--filename={dst}".into(),
        ],
        kind: Kind::Other,
    });

    let mut runs: Vec<Vec<RunResult>> = methods.iter().map(|_| Vec::new()).collect();
    let mut checked: Vec<Option<bool>> = vec![None; methods.len()];
    let mut notes: Vec<Vec<String>> = methods.iter().map(|_| Vec::new()).collect();
    for rep in 0..a.reps {
        // Rotate the order so that drift (host caches, thermal, neighbours)
        // does not always favour the same method.
        let n = methods.len();
        for k in 0..n {
            let i = (k + rep) % n;
            let m = &methods[i];
            let (r, out) = run_once(m, &src, &dst, root)?;
            let mbs = size as f64 / r.seconds / 1e6;
            eprintln!(
                "bench: run {}/{}: {:<60} {:>8.1} MB/s  {:>6.2} s  CPU {:.2} s",
                rep + 1,
                a.reps,
                m.name,
                mbs,
                r.seconds,
                r.cpu_user + r.cpu_system
            );
            let got = std::fs::metadata(&dst).map(|md| md.len()).unwrap_or(0);
            if got != size {
                bail!(
                    "{}: the destination has {got} bytes, not {size}",
                    show_argv(&m.argv, &src, &dst)
                );
            }
            if let Kind::Peerdma { .. } = m.kind {
                let note = peerdma_note(&out);
                if rep == 0 && !note.is_empty() {
                    notes[i].push(note);
                }
            }
            if m.argv[0] == "fio" && rep == 0 {
                if let Some(n) = fio_note(&out) {
                    notes[i].push(n);
                }
            }
            // fio writes its own bytes: there is nothing to compare.
            if rep == 0 && !a.no_check && m.argv[0] != "fio" {
                let same = files_equal(&src, &dst)?;
                if !same {
                    eprintln!("bench: {}: THE COPY DIFFERS FROM THE SOURCE", m.name);
                }
                checked[i] = Some(same);
            }
            runs[i].push(r);
        }
    }
    let _ = std::fs::remove_file(&dst);
    if a.clean {
        let _ = std::fs::remove_file(&src);
        let _ = std::fs::remove_file(stamp_path(&src));
    }

    let mut results: Vec<MethodResult> = Vec::new();
    for (i, m) in methods.iter().enumerate() {
        let mut mbs: Vec<f64> = runs[i]
            .iter()
            .map(|r| size as f64 / r.seconds / 1e6)
            .collect();
        mbs.sort_by(f64::total_cmp);
        let mut cpu: Vec<f64> = runs[i].iter().map(|r| r.cpu_user + r.cpu_system).collect();
        cpu.sort_by(f64::total_cmp);
        results.push(MethodResult {
            method: m.name.clone(),
            command: show_argv(&m.argv, Path::new("SRC"), Path::new("DST")),
            runs: std::mem::take(&mut runs[i]),
            median_mb_s: median(&mbs),
            min_mb_s: mbs[0],
            max_mb_s: mbs[mbs.len() - 1],
            median_cpu_s: median(&cpu),
            peerdma_ratio: 0.0,
            checked: checked[i],
            notes: std::mem::take(&mut notes[i]),
        });
    }
    let base = results[0].median_mb_s;
    for r in &mut results {
        r.peerdma_ratio = base / r.median_mb_s;
    }
    let best_other = results
        .iter()
        .zip(&methods)
        .filter(|(_, m)| m.kind == Kind::Other)
        .map(|(r, _)| r)
        .max_by(|x, y| x.median_mb_s.total_cmp(&y.median_mb_s))
        .context("no other method ran")?;
    let summary = format!(
        "peerdma copy (default flags) / best other ({}): {:.2}x",
        best_other.method,
        base / best_other.median_mb_s
    );
    let table = render(&results, size, a.reps, &fs, root);
    print!("{table}");
    println!("{summary}");
    let json = serde_json::json!({
        "bytes": size,
        "dir": dir,
        "filesystem": fs,
        "reps": a.reps,
        "caches_dropped": root,
        "methods": results,
        "summary": summary,
    });
    let out = dir.join("results.json");
    util::write(&out, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!("bench: results in {}", out.display());
    if results.iter().any(|r| r.checked == Some(false)) {
        bail!("a method produced a destination that differs from the source");
    }
    Ok(())
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

fn render(results: &[MethodResult], size: u64, reps: usize, fs: &str, root: bool) -> String {
    let mut rows = vec![[
        "method".to_string(),
        "MB/s (median)".into(),
        "min-max".into(),
        "CPU s".into(),
        "peerdma / this".into(),
        "bytes".into(),
    ]];
    for r in results {
        rows.push([
            r.method.clone(),
            format!("{:.0}", r.median_mb_s),
            format!("{:.0}-{:.0}", r.min_mb_s, r.max_mb_s),
            format!("{:.2}", r.median_cpu_s),
            format!("{:.2}x", r.peerdma_ratio),
            match r.checked {
                Some(true) => "identical".into(),
                Some(false) => "DIFFER".into(),
                None => "not compared".into(),
            },
        ]);
    }
    let w: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = format!(
        "\ncopy of {} ({size} bytes) on {fs}, median of {reps} run(s) each, {}; \
         MB/s = 10^6 bytes per second of wall time including fdatasync of the destination\n\n",
        peerdma_mem::format_size(size),
        if root {
            "page cache dropped before each run"
        } else {
            "page cache NOT dropped (not root)"
        }
    );
    for (k, r) in rows.iter().enumerate() {
        let mut line = format!("{:<w$}", r[0], w = w[0]);
        for i in 1..6 {
            line.push_str(&format!("  {:>w$}", r[i], w = w[i]));
        }
        s.push_str(line.trim_end());
        s.push('\n');
        if k == 0 {
            s.push_str(&"-".repeat(line.trim_end().len()));
            s.push('\n');
        }
    }
    for r in results {
        for n in &r.notes {
            s.push_str(&format!("  {}: {n}\n", r.method));
        }
    }
    s.push('\n');
    for r in results {
        s.push_str(&format!("  {}: {}\n", r.method, r.command));
    }
    s.push('\n');
    s
}

fn has(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn build_release() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "--release", "-p", "peerdma"])
        .current_dir(util::workspace_root());
    eprintln!("bench: {}", show(&cmd));
    util::run(&mut cmd)?;
    let bin = crate::vm::target_dir().join("release/peerdma");
    if !bin.is_file() {
        bail!("`{}` did not produce {}", show(&cmd), bin.display());
    }
    Ok(bin)
}

fn show_argv(argv: &[String], src: &Path, dst: &Path) -> String {
    argv.iter()
        .map(|a| subst(a, src, dst))
        .collect::<Vec<_>>()
        .join(" ")
}

fn subst(arg: &str, src: &Path, dst: &Path) -> String {
    // fio separates file names with ':'; escape it.
    let esc = |p: &Path, fio: bool| {
        let s = p.display().to_string();
        if fio {
            s.replace(':', "\\:")
        } else {
            s
        }
    };
    let fio = arg.starts_with("--filename=");
    arg.replace("{src}", &esc(src, fio))
        .replace("{dst}", &esc(dst, fio))
}

/// Children's CPU time so far (user, system) in seconds.
fn children_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after "(comm)": state is field 3; cutime and cstime are 16 and 17.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / tick;
    (get(13), get(14))
}

fn drop_caches() -> Result<()> {
    util::run(&mut Command::new("sync"))?;
    util::write(Path::new("/proc/sys/vm/drop_caches"), "3\n")
}

/// One run: fresh destination, cold cache, the command, fdatasync.
fn run_once(m: &Method, src: &Path, dst: &Path, root: bool) -> Result<(RunResult, String)> {
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("cannot remove {}", dst.display()))
        }
        _ => {}
    }
    if root {
        drop_caches()?;
    } else {
        util::run(&mut Command::new("sync"))?;
    }
    let argv: Vec<String> = m.argv.iter().map(|a| subst(a, src, dst)).collect();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null());
    let (u0, s0) = children_cpu();
    let t = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", argv.join(" ")))?;
    let file = std::fs::File::open(dst);
    let synced = file.and_then(|f| f.sync_data());
    let seconds = t.elapsed().as_secs_f64();
    let (u1, s1) = children_cpu();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    synced.with_context(|| format!("fdatasync {}", dst.display()))?;
    Ok((
        RunResult {
            seconds,
            cpu_user: u1 - u0,
            cpu_system: s1 - s0,
        },
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// What peerdma's report says about the run (path, engine, staging).
fn peerdma_note(stdout: &str) -> String {
    let path = stdout
        .lines()
        .filter(|l| l.starts_with("path:") || l.starts_with("via:") || l.starts_with("plan:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>();
    path.join("; ")
}

/// fio's own per-job bandwidth (it times each job without process start-up).
fn fio_note(stdout: &str) -> Option<String> {
    let start = stdout.find('{')?;
    let v: serde_json::Value = serde_json::from_str(&stdout[start..]).ok()?;
    let jobs = v["jobs"].as_array()?;
    let parts: Vec<String> = jobs
        .iter()
        .map(|j| {
            let bw = j["read"]["bw_bytes"].as_f64().unwrap_or(0.0)
                + j["write"]["bw_bytes"].as_f64().unwrap_or(0.0);
            format!(
                "{} job {:.0} MB/s over {:.2} s",
                j["jobname"].as_str().unwrap_or("?"),
                bw / 1e6,
                j["job_runtime"].as_f64().unwrap_or(0.0) / 1000.0
            )
        })
        .collect();
    Some(format!("fio's own numbers: {}", parts.join(", ")))
}

fn stamp_path(src: &Path) -> PathBuf {
    src.with_extension("stamp")
}

const STAMP: &str = "peerdma bench source v1";

fn src_is_ready(src: &Path, size: u64) -> bool {
    let stamp = std::fs::read_to_string(stamp_path(src)).unwrap_or_default();
    stamp.trim() == format!("{STAMP} {size}")
        && std::fs::metadata(src).is_ok_and(|m| m.len() == size)
}

/// `size` bytes that neither compress nor deduplicate: xorshift64* words.
fn make_source(src: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(stamp_path(src));
    let mut f =
        std::fs::File::create(src).with_context(|| format!("cannot create {}", src.display()))?;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 8 << 20];
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            w.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", src.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("cannot flush {}", src.display()))?;
    util::write(&stamp_path(src), format!("{STAMP} {size}\n"))
}

/// `cmp -s`: byte-for-byte.
fn files_equal(a: &Path, b: &Path) -> Result<bool> {
    let status = Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .context("cannot run cmp")?;
    match status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => bail!("`cmp -s {} {}` failed ({status})", a.display(), b.display()),
    }
}

/// "ext4 on /dev/vda" for the table.
fn filesystem_of(dir: &Path) -> String {
    Command::new("df")
        .args(["--output=fstype,source"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().nth(1)?.to_string();
            let mut it = line.split_whitespace();
            Some(format!("{} on {}", it.next()?, it.next()?))
        })
        .unwrap_or_else(|| "unknown file system".into())
}

fn available_bytes(dir: &Path) -> Option<u64> {
    let o = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_fio_escapes() {
        let (s, d) = (Path::new("/a:b/src"), Path::new("/a:b/dst"));
        assert_eq!(subst("if={src}", s, d), "if=/a:b/src");
        assert_eq!(subst("--filename={dst}", s, d), "--filename=/a\\:b/dst");
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
    }

    #[test]
    fn children_cpu_reads_proc() {
        let (u, s) = children_cpu();
        assert!(u >= 0.0 && s >= 0.0);
    }
}
