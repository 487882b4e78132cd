//! `cargo xtask vm`: boot the oracle kernel in QEMU on the scenarios'
//! topologies and bring back what the guest collected.
//!
//! The guest (xtask/guest/init.sh) prints `/out` as base64(tar.gz) between
//! two marker lines carrying a per-run nonce; we decode it into
//! `<out>/<scenario>/` next to the full console log. Then peerdma is held
//! against the kernel ([`crate::oracle`]): its verdicts from the guest's
//! snapshot and from the guest's sysfs copy, the P2P smoke tests that
//! `peerdma probe` ran in the guest, and the `peerdma copy` runs between
//! its drives (with the guest's own byte check of every destination),
//! against the scenario's expectations and the kernel's verdicts.

use crate::cpio::Cpio;
use crate::kernel;
use crate::oracle::{self, CopyEval, CopyFile, Evaluation, Smoke, SmokeFile};
use crate::scenario::{self, Scenario};
use crate::util::{self, show};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct VmArgs {
    /// Scenario to boot (repeatable); see xtask/scenarios/*.toml.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Boot every scenario.
    #[arg(long)]
    all: bool,
    /// The peerdma binary to install in the guest as /bin/peerdma (with its
    /// shared libraries) [default: build it with `cargo build -p peerdma`].
    #[arg(long, value_name = "PATH")]
    peerdma: Option<PathBuf>,
    /// Output directory; each scenario goes to DIR/<scenario>/ [default: target/vm].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Per-scenario timeout in seconds [default: 300 under TCG, 120 under KVM].
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Accelerator: try KVM and fall back to TCG (auto), or force one.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Boot this kernel image instead of the cached oracle kernel.
    #[arg(long, value_name = "BZIMAGE")]
    kernel: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

const GUEST_DIR: &str = "xtask/guest";
const CONSOLE_TAIL: usize = 30;

/// One scenario's run: where its results are and what they say.
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub dir: PathBuf,
    pub result: Result<Evaluation>,
}

pub fn run(args: &VmArgs) -> Result<()> {
    let runs = run_many(args, false)?;
    if !report(&runs) {
        let bad: Vec<&str> = runs
            .iter()
            .filter(|r| !r.result.as_ref().is_ok_and(Evaluation::ok))
            .map(|r| r.scenario.name.as_str())
            .collect();
        bail!(
            "{} scenario(s) failed, disagree with the kernel or missed a smoke test expectation: {}",
            bad.len(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// Boot the chosen scenarios (all of them if none is chosen and
/// `default_all`) and evaluate each.
pub fn run_many(args: &VmArgs, default_all: bool) -> Result<Vec<ScenarioRun>> {
    let mut names = if args.all || (default_all && args.scenarios.is_empty()) {
        scenario::all_names()?
    } else {
        Vec::new()
    };
    for n in &args.scenarios {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    if names.is_empty() {
        let known = scenario::all_names()?.join(", ");
        bail!("give --scenario NAME (repeatable) or --all; known scenarios: {known}");
    }
    let scenarios = names
        .iter()
        .map(|n| scenario::load(n))
        .collect::<Result<Vec<_>>>()?;

    let kernel = match &args.kernel {
        Some(k) if k.is_file() => k.clone(),
        Some(k) => bail!("kernel image {} does not exist", k.display()),
        None => kernel::ensure(false)?,
    };
    let out_root = match &args.out {
        Some(dir) => dir.clone(),
        None => target_dir().join("vm"),
    };
    util::create_dir_all(&out_root)?;
    let peerdma = match &args.peerdma {
        Some(p) => p.clone(),
        None => build_peerdma()?,
    };
    let guest_bin = out_root.join("peerdma-guest");
    strip_into(&peerdma, &guest_bin)?;
    let initramfs = out_root.join("initramfs.cpio");
    util::write(&initramfs, build_initramfs(&guest_bin, &scenarios)?)?;

    let mut accel = match args.accel {
        Accel::Auto if !kvm_usable() => {
            eprintln!("vm: /dev/kvm is not usable, using TCG");
            Accel::Tcg
        }
        a => a,
    };
    let mut runs = Vec::new();
    for sc in scenarios {
        let dir = out_root.join(&sc.name);
        let result = run_scenario(&sc, &kernel, &initramfs, &dir, &mut accel, args);
        if let Err(e) = &result {
            eprintln!("vm: scenario {}: FAILED: {e:#}", sc.name);
        }
        runs.push(ScenarioRun {
            scenario: sc,
            dir,
            result,
        });
    }
    Ok(runs)
}

/// Print every finding and the per-scenario table; true if all is well.
pub fn report(runs: &[ScenarioRun]) -> bool {
    let mut all_ok = true;
    eprintln!();
    for r in runs {
        match &r.result {
            Ok(e) => {
                let details = e.details();
                if !details.is_empty() {
                    eprintln!("{}:", r.scenario.name);
                    for d in details {
                        eprintln!("  {d}");
                    }
                }
                all_ok &= e.ok();
            }
            Err(_) => all_ok = false,
        }
    }
    let rows: Vec<(String, std::result::Result<&Evaluation, String>)> = runs
        .iter()
        .map(|r| {
            (
                r.scenario.name.clone(),
                r.result.as_ref().map_err(|e| format!("{e:#}")),
            )
        })
        .collect();
    eprintln!();
    eprint!("{}", oracle::table(&rows));
    all_ok
}

/// `$CARGO_TARGET_DIR` or the workspace's `target/`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| util::workspace_root().join("target"))
}

/// `cargo build -p peerdma` (the dev profile, which `cargo test` has
/// usually built already); the binary's path.
fn build_peerdma() -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "peerdma"])
        .current_dir(util::workspace_root());
    eprintln!("vm: {}", show(&cmd));
    util::run(&mut cmd)?;
    let bin = target_dir().join("debug/peerdma");
    if !bin.is_file() {
        bail!("`{}` did not produce {}", show(&cmd), bin.display());
    }
    Ok(bin)
}

/// Copy `bin` to `out` without debug information (a smaller initramfs).
fn strip_into(bin: &Path, out: &Path) -> Result<()> {
    if !bin.is_file() {
        bail!("peerdma binary {} does not exist", bin.display());
    }
    let mut cmd = Command::new("objcopy");
    cmd.arg("--strip-debug").arg(bin).arg(out);
    if util::output(&mut cmd).is_err() {
        // No binutils: the unstripped binary works too, only bigger.
        std::fs::copy(bin, out)
            .with_context(|| format!("cannot copy {} to {}", bin.display(), out.display()))?;
    }
    Ok(())
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// busybox, the guest scripts, peerdma with its libraries, and each
/// scenario's probe list (`etc/peerdma/probes/<scenario>`, one
/// `PROVIDER CLIENT TO SIZE` line per probe, `-` for a default).
fn build_initramfs(peerdma: &Path, scenarios: &[Scenario]) -> Result<Vec<u8>> {
    let mut c = Cpio::new();
    let mut dirs = BTreeSet::new();
    let mut mkdirs = |c: &mut Cpio, path: &str| {
        let mut prefix = String::new();
        for part in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if dirs.insert(prefix.clone()) {
                c.dir(&prefix);
            }
        }
    };
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "out",
        "etc/peerdma/probes",
        "etc/peerdma/copies",
        "root",
    ] {
        mkdirs(&mut c, d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.char_dev("dev/null", 0o666, 1, 3);

    let busybox = Path::new("/bin/busybox");
    if !shared_libs(busybox)?.is_empty() {
        bail!(
            "{} is dynamically linked; install busybox-static",
            busybox.display()
        );
    }
    c.file("bin/busybox", 0o755, &util::read(busybox)?);
    let list = util::stdout(Command::new(busybox).arg("--list-full"))?;
    for applet in list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
    {
        if let Some((parent, _)) = applet.rsplit_once('/') {
            mkdirs(&mut c, parent);
        }
        c.symlink(applet, "/bin/busybox");
    }

    let guest = util::workspace_root().join(GUEST_DIR);
    c.file("init", 0o755, &util::read(&guest.join("init.sh"))?);
    c.file(
        "etc/peerdma/peerdma.sh",
        0o755,
        &util::read(&guest.join("peerdma.sh"))?,
    );

    for sc in scenarios {
        let mut list = String::new();
        for p in &sc.probe {
            list.push_str(&format!(
                "{} {} {} {}\n",
                p.provider,
                p.client,
                p.to.as_deref().unwrap_or("-"),
                p.size.as_deref().unwrap_or("-")
            ));
        }
        c.file(
            &format!("etc/peerdma/probes/{}", sc.name),
            0o644,
            list.as_bytes(),
        );
        c.file(
            &format!("etc/peerdma/copies/{}", sc.name),
            0o644,
            copy_list(sc)?.as_bytes(),
        );
    }

    c.file("bin/peerdma", 0o755, &util::read(peerdma)?);
    for lib in shared_libs(peerdma)? {
        let name = lib.to_string_lossy().trim_start_matches('/').to_string();
        if let Some((parent, _)) = name.rsplit_once('/') {
            mkdirs(&mut c, parent);
        }
        c.file(&name, 0o755, &util::read(&lib)?);
    }
    Ok(c.finish())
}

/// A scenario's copy cases for xtask/guest/peerdma.sh, one line each:
/// `SRC DST SKIP SEEK COUNT VIA FLAGS` (bytes; `-` for no --via or no flags;
/// flags: a comma list of `no-bounce`, `unchecked-via`).
fn copy_list(sc: &Scenario) -> Result<String> {
    let mut list = String::new();
    for c in &sc.copy {
        let (skip, seek, count) = c.range()?;
        let mut flags = Vec::new();
        if c.no_bounce {
            flags.push("no-bounce");
        }
        if c.unchecked_via {
            flags.push("unchecked-via");
        }
        list.push_str(&format!(
            "{} {} {skip} {seek} {count} {} {}\n",
            c.src,
            c.dst,
            c.via.as_deref().unwrap_or("-"),
            if flags.is_empty() {
                "-".to_string()
            } else {
                flags.join(",")
            }
        ));
    }
    Ok(list)
}

/// Shared libraries of an executable, as `ldd` shows them (including the
/// dynamic loader); empty for a static executable.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("cannot run `ldd {}`", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("`ldd {}`: {}", bin.display(), line.trim()),
            _ => {}
        }
    }
    Ok(libs)
}

enum Event {
    Out(String),
    Err(String),
    Closed,
}

fn spawn_reader(stream: impl Read + Send + 'static, tx: mpsc::Sender<Event>, is_err: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    let ev = if is_err {
                        Event::Err(line)
                    } else {
                        Event::Out(line)
                    };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

enum Boot {
    Done { payload: String, elapsed: Duration },
    KvmFailed(String),
}

fn run_scenario(
    sc: &Scenario,
    kernel: &Path,
    initramfs: &Path,
    dir: &Path,
    accel: &mut Accel,
    args: &VmArgs,
) -> Result<Evaluation> {
    util::remove_dir_all_if_exists(dir)?;
    util::create_dir_all(dir)?;
    let source = scenario::dir().join(format!("{}.toml", sc.name));
    std::fs::copy(&source, dir.join("scenario.toml"))
        .with_context(|| format!("cannot copy {} to {}", source.display(), dir.display()))?;
    create_disks(sc, dir)?;
    loop {
        let used = if *accel == Accel::Auto {
            Accel::Kvm
        } else {
            *accel
        };
        eprintln!(
            "vm: scenario {}: booting ({}) - {}",
            sc.name,
            used.name(),
            sc.description
        );
        match boot(sc, kernel, initramfs, dir, used, args)? {
            Boot::KvmFailed(why) if *accel == Accel::Auto => {
                eprintln!("vm: KVM failed ({why}); using TCG for the rest of this run");
                *accel = Accel::Tcg;
                let (from, to) = (dir.join("console.log"), dir.join("console-kvm.log"));
                std::fs::rename(&from, &to).with_context(|| {
                    format!("cannot rename {} to {}", from.display(), to.display())
                })?;
            }
            Boot::KvmFailed(why) => bail!("scenario {}: KVM failed: {why}", sc.name),
            Boot::Done { payload, elapsed } => {
                if *accel == Accel::Auto {
                    *accel = Accel::Kvm;
                }
                return collect(sc, dir, &payload, used, elapsed);
            }
        }
    }
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}{:x}", t.as_nanos() as u64, std::process::id())
}

/// `<dir>/disks/<name>.img`.
fn disk_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("disks").join(format!("{name}.img"))
}

/// Sparse raw images for the scenario's disks, fresh for every run.
fn create_disks(sc: &Scenario, dir: &Path) -> Result<()> {
    if sc.disks.is_empty() {
        return Ok(());
    }
    let size = peerdma_mem::parse_size(&sc.disk_size)
        .with_context(|| format!("scenario {}: disk_size", sc.name))?;
    util::create_dir_all(&dir.join("disks"))?;
    for d in &sc.disks {
        let path = disk_path(dir, d);
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        f.set_len(size)
            .with_context(|| format!("cannot size {} to {size} bytes", path.display()))?;
    }
    Ok(())
}

/// `-blockdev` options attaching each disk image under its node name.
fn disk_args(sc: &Scenario, dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for d in &sc.disks {
        // QEMU option values escape ',' as ',,'.
        let file = disk_path(dir, d).display().to_string().replace(',', ",,");
        args.push("-blockdev".to_string());
        args.push(format!(
            "driver=raw,node-name={d},file.driver=file,file.filename={file}"
        ));
    }
    args
}

fn qemu_command(
    sc: &Scenario,
    dir: &Path,
    kernel: &Path,
    initramfs: &Path,
    accel: Accel,
    nonce: &str,
) -> Command {
    let mut append = String::from("console=ttyS0 panic=-1 quiet");
    if !sc.cmdline.trim().is_empty() {
        append.push(' ');
        append.push_str(sc.cmdline.trim());
    }
    append.push_str(&format!(
        " peerdma.scenario={} peerdma.nonce={nonce}",
        sc.name
    ));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        &sc.machine,
        "-accel",
        accel.name(),
        "-cpu",
        &sc.cpu,
    ])
    .args(["-m", &sc.memory, "-smp", &sc.smp.to_string()])
    .args([
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
        "-no-reboot",
    ])
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initramfs)
    .args(["-append", &append])
    .args(disk_args(sc, dir))
    .args(&sc.qemu)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// QEMU messages that mean KVM cannot run this guest.
const KVM_ERRORS: &[&str] = &[
    "KVM internal error",
    "emulation failure",
    "failed to initialize kvm",
    "Could not access KVM",
];

/// What init.sh prints first. Under KVM a healthy guest gets there within a
/// few seconds; on some nested hosts KVM hangs silently right after the BIOS.
const GUEST_HELLO: &str = "peerdma-guest: scenario";
const KVM_SIGN_OF_LIFE: Duration = Duration::from_secs(20);

fn boot(
    sc: &Scenario,
    kernel: &Path,
    initramfs: &Path,
    dir: &Path,
    accel: Accel,
    args: &VmArgs,
) -> Result<Boot> {
    let nonce = nonce();
    let (begin, end) = (
        format!("@@peerdma-out-begin {nonce}"),
        format!("@@peerdma-out-end {nonce}"),
    );
    let mut cmd = qemu_command(sc, dir, kernel, initramfs, accel, &nonce);
    util::write(&dir.join("qemu-command.txt"), format!("{}\n", show(&cmd)))?;
    let log_path = dir.join("console.log");
    let mut log =
        File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let timeout =
        Duration::from_secs(
            args.timeout
                .unwrap_or(if accel == Accel::Kvm { 120 } else { 300 }),
        );

    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(&cmd)))?;
    let (tx, rx) = mpsc::channel();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill(&mut child);
        bail!("qemu started without piped output");
    };
    spawn_reader(stdout, tx.clone(), false);
    spawn_reader(stderr, tx, true);

    let mut tail: VecDeque<String> = VecDeque::new();
    let mut payload: Option<String> = None;
    let mut complete = false;
    let mut panicked = false;
    let mut open_streams = 2;
    let fail = |what: String, tail: &VecDeque<String>| {
        let lines: Vec<&str> = tail.iter().map(String::as_str).collect();
        anyhow!(
            "scenario {}: {what}; console log: {}\nlast {} console lines:\n{}",
            sc.name,
            log_path.display(),
            lines.len(),
            lines.join("\n")
        )
    };
    let mut alive = false;
    while open_streams > 0 {
        let mut left = timeout.saturating_sub(started.elapsed());
        let probing = accel == Accel::Kvm && !alive;
        if probing {
            left = left.min(KVM_SIGN_OF_LIFE.saturating_sub(started.elapsed()));
        }
        let ev = match rx.recv_timeout(left) {
            Ok(ev) => ev,
            Err(_) if probing && started.elapsed() >= KVM_SIGN_OF_LIFE => {
                let why = format!(
                    "the guest's init did not start within {}",
                    util::secs(KVM_SIGN_OF_LIFE)
                );
                let _ = writeln!(log, "xtask: {why}");
                kill(&mut child);
                return Ok(Boot::KvmFailed(why));
            }
            Err(_) => {
                kill(&mut child);
                return Err(fail(
                    format!("timed out after {} ({})", util::secs(timeout), accel.name()),
                    &tail,
                ));
            }
        };
        let line = match ev {
            Event::Closed => {
                open_streams -= 1;
                continue;
            }
            Event::Err(l) => {
                if accel == Accel::Kvm && KVM_ERRORS.iter().any(|e| l.contains(e)) {
                    let _ = writeln!(log, "qemu: {l}");
                    kill(&mut child);
                    return Ok(Boot::KvmFailed(l));
                }
                format!("qemu: {l}")
            }
            Event::Out(l) => {
                alive |= l.contains(GUEST_HELLO);
                if l.contains("Kernel panic - not syncing") {
                    panicked = true;
                }
                if l.trim() == begin {
                    payload = Some(String::new());
                } else if l.trim() == end {
                    complete = payload.is_some();
                } else if let (Some(p), false) = (payload.as_mut(), complete) {
                    p.push_str(l.trim());
                }
                l
            }
        };
        writeln!(log, "{line}").with_context(|| format!("cannot write {}", log_path.display()))?;
        let noise = line.contains("requested feature");
        if (payload.is_none() || complete) && !noise {
            tail.push_back(line);
            if tail.len() > CONSOLE_TAIL {
                tail.pop_front();
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let elapsed = started.elapsed();
    if panicked {
        return Err(fail("kernel panic".into(), &tail));
    }
    if !status.success() {
        return Err(fail(format!("qemu exited with {status}"), &tail));
    }
    match (payload, complete) {
        (Some(payload), true) => Ok(Boot::Done { payload, elapsed }),
        (Some(_), false) => Err(fail("output ended before the end marker".into(), &tail)),
        (None, _) => Err(fail(
            "guest powered off without printing its output marker".into(),
            &tail,
        )),
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Decode and unpack the guest's payload, gather the smoke tests and the
/// kernel's ACS advice, and evaluate.
fn collect(
    sc: &Scenario,
    dir: &Path,
    payload: &str,
    accel: Accel,
    elapsed: Duration,
) -> Result<Evaluation> {
    let tgz =
        base64_decode(payload).with_context(|| format!("scenario {}: corrupt payload", sc.name))?;
    let mut tar = Command::new("tar");
    tar.args(["-xzf", "-", "-C"]).arg(dir).stdin(Stdio::piped());
    let mut child = tar
        .spawn()
        .with_context(|| format!("cannot start `{}`", show(&tar)))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&tgz)
            .with_context(|| format!("writing to `{}`", show(&tar)))?;
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{}`", show(&tar)))?;
    if !status.success() {
        bail!("scenario {}: `{}` failed ({status})", sc.name, show(&tar));
    }

    let path = dir.join("verdicts");
    if !path.is_file() {
        let why = std::fs::read_to_string(dir.join("error")).unwrap_or_default();
        bail!(
            "scenario {}: the guest brought back no verdicts file {}",
            sc.name,
            why.trim()
        );
    }
    let rc_path = dir.join("peerdma/hooks.rc");
    let rc = std::fs::read_to_string(&rc_path).unwrap_or_default();
    if rc.trim() != "0" {
        let log = dir.join("peerdma/hooks.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "scenario {}: the peerdma hooks (xtask/guest/peerdma.sh) exited with {:?}; \
             last lines of {}:\n{}",
            sc.name,
            rc.trim(),
            log.display(),
            lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n")
        );
    }

    let dmesg = util::read_string(&dir.join("dmesg.txt"))?;
    util::write(
        &dir.join("acs-warnings.txt"),
        peerdma_p2p::oracle::acs_warning_lines(&dmesg),
    )?;
    let mut probes = Vec::new();
    for (i, p) in sc.probe.iter().enumerate() {
        let base = dir.join("probes").join((i + 1).to_string());
        let read =
            |ext: &str| std::fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
        let rc = read("rc").trim().parse().ok();
        probes.push(oracle::smoke_from_report(
            p,
            &read("json"),
            &read("err"),
            rc,
        ));
    }
    let smoke = SmokeFile { probes };
    util::write(
        &dir.join("smoke.json"),
        serde_json::to_string_pretty(&smoke)? + "\n",
    )?;
    let mut copies = Vec::new();
    for (i, c) in sc.copy.iter().enumerate() {
        let base = dir.join("copies").join((i + 1).to_string());
        let read =
            |ext: &str| std::fs::read_to_string(base.with_extension(ext)).unwrap_or_default();
        let rc = read("rc").trim().parse().ok();
        copies.push(oracle::copy_from_files(
            c,
            &read("json"),
            &read("err"),
            rc,
            &read("check"),
        )?);
    }
    util::write(
        &dir.join("copy.json"),
        serde_json::to_string_pretty(&CopyFile { copies })? + "\n",
    )?;

    let e = oracle::evaluate(dir, sc)?;
    let v = &e.kernel;
    eprintln!(
        "vm: {}: accel {}, boot-to-poweroff {}, cpu_supports_p2pdma {}, {} functions, {} pairs ({}); \
         peerdma agrees on {}/{} (snapshot), {}/{} (root/); smoke: {}; copy: {} -> {}",
        sc.name,
        accel.name(),
        util::secs(elapsed),
        v.cpu_supports_p2pdma.map_or("?", |b| if b { "1" } else { "0" }),
        e.functions,
        e.kernel_pairs,
        e.counts,
        e.snapshot.pairs_agreeing,
        e.snapshot.pairs_compared,
        e.root.pairs_agreeing,
        e.root.pairs_compared,
        e.smoke_summary(),
        e.copy_summary(),
        dir.display()
    );
    print_smoke(sc, &smoke.probes);
    print_copies(sc, &e.copies);
    if !sc.expect.is_empty() && oracle::check_expectations(v, &sc.expect).is_empty() {
        eprintln!(
            "vm: scenario {}: all {} kernel expectation(s) met",
            sc.name,
            sc.expect.len()
        );
    }
    Ok(e)
}

fn print_smoke(sc: &Scenario, smoke: &[Smoke]) {
    for s in smoke {
        eprintln!(
            "vm: {}: probe {}: {}{} [{}]",
            sc.name,
            s.label(),
            s.outcome,
            if s.as_expected() {
                String::new()
            } else {
                format!(" (EXPECTED {})", s.expect)
            },
            s.verdict
        );
    }
}

fn print_copies(sc: &Scenario, copies: &[CopyEval]) {
    for c in copies {
        let r = &c.run;
        eprintln!(
            "vm: {}: copy {} ({}{}): {}{} [kernel {}]{}",
            sc.name,
            r.label(),
            r.range(),
            if r.flags.is_empty() {
                String::new()
            } else {
                format!(", {}", r.flags)
            },
            r.outcome(),
            r.bytes_per_sec
                .map(|b| format!(", {}/s", peerdma_mem::format_size(b as u64)))
                .unwrap_or_default(),
            c.kernel,
            if c.as_expected() {
                String::new()
            } else {
                format!(" (EXPECTED {}: {})", r.expect, c.problems.join("; "))
            }
        );
    }
}

fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\t' | b'\r' | b'\n' => continue,
            _ => bail!("invalid base64 character {:?} at offset {i}", c as char),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_attached_by_node_name_with_commas_escaped() {
        let mut sc = scenario::load("switch-nvme-cmb").unwrap();
        sc.disks = vec!["nvm1".into()];
        let args = disk_args(&sc, Path::new("/tmp/a,b"));
        assert_eq!(
            args,
            [
                "-blockdev",
                "driver=raw,node-name=nvm1,file.driver=file,file.filename=/tmp/a,,b/disks/nvm1.img"
            ]
        );
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVs\nbG8h").unwrap(), b"hello!");
        assert!(base64_decode("a$").is_err());
    }
}
