//! One boot of a scenario in QEMU: fresh disk images, the command line,
//! and the console read line by line (logged in full) until the guest's
//! output markers, a panic, a timeout or a KVM failure.

use super::{Accel, VmArgs, CONSOLE_TAIL};
use crate::scenario::Scenario;
use crate::util::{self, show};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub(super) fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
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

pub(super) enum Boot {
    Done { payload: String, elapsed: Duration },
    KvmFailed(String),
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
pub(super) fn create_disks(sc: &Scenario, dir: &Path) -> Result<()> {
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

pub(super) fn boot(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_attached_by_node_name_with_commas_escaped() {
        let mut sc = crate::scenario::load("switch-nvme-cmb").unwrap();
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
}
