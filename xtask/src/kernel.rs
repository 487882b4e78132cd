//! Build the P2PDMA oracle kernel from Debian's linux-source package.
//!
//! Source tree: `<cache>/kernel/src/<pkgversion>/` (extracted once, patches
//! swapped in and out with `patch`, so rebuilds are incremental).
//! Image: `<cache>/kernel/<pkgversion>-<hash>/bzImage`, where the hash covers
//! the config fragment, the patches and [`RECIPE_VERSION`].

use crate::deps::{self, KERNEL_SOURCE_PKG};
use crate::util::{self, run, show};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Bump when the build recipe below changes in a way that changes the image.
const RECIPE_VERSION: &str = "peerdma-kernel-recipe-1";

/// State kept inside the source tree.
const STATE_DIR: &str = ".peerdma";

struct Inputs {
    version: String,
    tarball: PathBuf,
    fragment: PathBuf,
    fragment_text: String,
    /// (file name, contents), sorted by name.
    patches: Vec<(String, Vec<u8>)>,
}

fn kernel_dir() -> PathBuf {
    util::workspace_root().join("kernel")
}

fn inputs() -> Result<Inputs> {
    let version =
        util::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", KERNEL_SOURCE_PKG]))?;
    if version.is_empty() || version.contains('/') {
        bail!("unexpected version {version:?} of {KERNEL_SOURCE_PKG}");
    }
    let tarball = PathBuf::from(format!("/usr/src/{KERNEL_SOURCE_PKG}.tar.xz"));
    if !tarball.is_file() {
        bail!(
            "{} is missing; reinstall {KERNEL_SOURCE_PKG}",
            tarball.display()
        );
    }
    let fragment = kernel_dir().join("peerdma.config");
    let fragment_text = util::read_string(&fragment)?;
    let patch_dir = kernel_dir().join("patches");
    let mut patches = Vec::new();
    let entries = std::fs::read_dir(&patch_dir)
        .with_context(|| format!("cannot list {}", patch_dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list {}", patch_dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "patch") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            patches.push((name, util::read(&path)?));
        }
    }
    patches.sort();
    Ok(Inputs {
        version,
        tarball,
        fragment,
        fragment_text,
        patches,
    })
}

/// Return the path of an up-to-date bzImage, building it if needed.
pub fn ensure(force: bool) -> Result<PathBuf> {
    deps::ensure()?;
    let inputs = inputs()?;
    let mut hash = util::Fnv::new();
    hash.item(RECIPE_VERSION.as_bytes());
    hash.item(inputs.fragment_text.as_bytes());
    for (name, data) in &inputs.patches {
        hash.item(name.as_bytes());
        hash.item(data);
    }
    let cache = util::cache_dir()?.join("kernel");
    let out_dir = cache.join(format!("{}-{}", inputs.version, hash.hex()));
    let image = out_dir.join("bzImage");
    if image.is_file() && !force {
        eprintln!("kernel: cached {}", image.display());
        return Ok(image);
    }

    let src = cache.join("src").join(&inputs.version);
    let started = Instant::now();
    prepare_source(&inputs, &src, force)?;
    sync_patches(&inputs, &src)?;
    configure(&inputs, &src)?;
    build(&src)?;
    let elapsed = started.elapsed();

    util::create_dir_all(&out_dir)?;
    for (from, to) in [("arch/x86/boot/bzImage", "bzImage"), (".config", "config")] {
        let (from, to) = (src.join(from), out_dir.join(to));
        let tmp = to.with_extension("tmp");
        std::fs::copy(&from, &tmp)
            .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, &to)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), to.display()))?;
    }
    eprintln!(
        "kernel: built {} in {}",
        image.display(),
        util::secs(elapsed)
    );
    Ok(image)
}

/// Extract the tarball into `src` unless a complete extraction is there.
fn prepare_source(inputs: &Inputs, src: &Path, force: bool) -> Result<()> {
    let stamp = src.join(STATE_DIR).join("extracted");
    if stamp.is_file() && !force {
        return Ok(());
    }
    util::remove_dir_all_if_exists(src)?;
    util::create_dir_all(&src.join(STATE_DIR))?;
    eprintln!(
        "kernel: extracting {} into {}",
        inputs.tarball.display(),
        src.display()
    );
    let started = Instant::now();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&inputs.tarball)
        .arg("--strip-components=1")
        .arg("-C")
        .arg(src))?;
    eprintln!("kernel: extracted in {}", util::secs(started.elapsed()));
    util::write(&stamp, &inputs.version)
}

fn patch_cmd(src: &Path, patch: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new("patch");
    cmd.args([
        "-p1",
        "--batch",
        "--forward",
        "-r",
        "-",
        "--no-backup-if-mismatch",
    ])
    .args(extra)
    .arg("-i")
    .arg(patch)
    .current_dir(src);
    cmd
}

/// Make the applied patches equal to `kernel/patches/`: reverse the ones
/// applied before (recorded in `.peerdma/applied/`), apply the current ones.
fn sync_patches(inputs: &Inputs, src: &Path) -> Result<()> {
    let applied_dir = src.join(STATE_DIR).join("applied");
    util::create_dir_all(&applied_dir)?;
    let mut applied = Vec::new();
    for entry in std::fs::read_dir(&applied_dir)
        .with_context(|| format!("cannot list {}", applied_dir.display()))?
    {
        let path = entry
            .with_context(|| format!("cannot list {}", applied_dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        applied.push((name, util::read(&path)?));
    }
    applied.sort();
    if applied == inputs.patches {
        return Ok(());
    }
    for (name, _) in applied.iter().rev() {
        let path = applied_dir.join(name);
        let mut cmd = patch_cmd(src, &path, &["-R", "--silent"]);
        if run(cmd.stdout(Stdio::null())).is_err() {
            bail!(
                "cannot reverse the previously applied {name} in {}; rerun with --force to \
                 re-extract the source",
                src.display()
            );
        }
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    let patch_dir = kernel_dir().join("patches");
    for (name, data) in &inputs.patches {
        let path = patch_dir.join(name);
        let mut dry = patch_cmd(src, &path, &["--dry-run"]);
        let out = dry
            .output()
            .with_context(|| format!("cannot start `{}`", show(&dry)))?;
        if !out.status.success() {
            bail!(
                "patch {} does not apply to {KERNEL_SOURCE_PKG} {} ({}):\n{}{}",
                path.display(),
                inputs.version,
                src.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        run(&mut patch_cmd(src, &path, &["--silent"]))?;
        util::write(&applied_dir.join(name), data)?;
        eprintln!("kernel: applied {name}");
    }
    Ok(())
}

/// `make allnoconfig` with our fragment, then verify that every option of the
/// fragment stuck (allnoconfig silently drops options whose dependencies are off).
fn configure(inputs: &Inputs, src: &Path) -> Result<()> {
    let fragment = src.join(STATE_DIR).join("peerdma.config");
    util::write(&fragment, &inputs.fragment_text)?;
    let log = src.join(STATE_DIR).join("config.log");
    make(
        src,
        &["allnoconfig"],
        &[("KCONFIG_ALLCONFIG", fragment.as_os_str())],
        &log,
    )?;
    let config = util::read_string(&src.join(".config"))?;
    let problems = verify_config(&inputs.fragment_text, &config);
    if !problems.is_empty() {
        bail!(
            "{} option(s) of {} did not stick after `make allnoconfig` (missing dependencies?):\n  {}",
            problems.len(),
            inputs.fragment.display(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// Compare the fragment with the resulting .config; return one line per miss.
fn verify_config(fragment: &str, config: &str) -> Vec<String> {
    let value_of = |name: &str| -> Option<&str> {
        config
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
    };
    let mut problems = Vec::new();
    for (lineno, line) in fragment.lines().enumerate() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# CONFIG_") {
            let Some(name) = rest.strip_suffix(" is not set") else {
                continue;
            };
            let name = format!("CONFIG_{name}");
            if let Some(v) = value_of(&name).filter(|v| *v != "n") {
                problems.push(format!(
                    "{name} (line {}): wanted unset, got {v}",
                    lineno + 1
                ));
            }
        } else if let Some((name, want)) =
            line.split_once('=').filter(|_| line.starts_with("CONFIG_"))
        {
            match value_of(name) {
                Some(got) if got == want => {}
                Some(got) => problems.push(format!(
                    "{name} (line {}): wanted {want}, got {got}",
                    lineno + 1
                )),
                None => problems.push(format!(
                    "{name} (line {}): wanted {want}, got unset",
                    lineno + 1
                )),
            }
        }
    }
    problems
}

fn build(src: &Path) -> Result<()> {
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let log = src.join(STATE_DIR).join("build.log");
    eprintln!(
        "kernel: building bzImage with `nice make -j{jobs}` (log: {})",
        log.display()
    );
    let started = Instant::now();
    make(src, &[&format!("-j{jobs}"), "bzImage"], &[], &log)?;
    eprintln!(
        "kernel: make bzImage took {}",
        util::secs(started.elapsed())
    );
    Ok(())
}

/// Run `nice make ARGS` in `src` with output to `log`; on failure show its tail.
fn make(src: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)], log: &Path) -> Result<()> {
    let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let file2 = file
        .try_clone()
        .with_context(|| format!("cannot reopen {}", log.display()))?;
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10", "make"])
        .args(args)
        .current_dir(src)
        .stdout(file)
        .stderr(file2);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", show(&cmd)))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        bail!(
            "`{}` in {} failed ({status}); last lines of {}:\n{tail}",
            show(&cmd),
            src.display(),
            log.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::verify_config;

    #[test]
    fn verify_reports_dropped_and_wrong_options() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_N=20\n# CONFIG_C is not set\n# comment\n";
        let config = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=17\nCONFIG_C=y\n";
        let problems = verify_config(fragment, config);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("CONFIG_B (line 2)"));
        assert!(problems[1].contains("wanted 20, got 17"));
        assert!(problems[2].starts_with("CONFIG_C"));
    }
}
