//! The kernel judges peerdma's fixes: for each distinct kernel-parameter
//! fix that peerdma proposes from a scenario's first boot (its snapshot),
//! the scenario boots again with the fix applied to its command line and
//! `peerdma.fix=<k>` (the guest then takes its snapshot and skips the
//! probes and copies). What comes back goes to `<dir>/fixes/<k>/`: the fix
//! as proposed (`fix.json`), the kernel's verdicts, `/proc/cmdline` and the
//! guest's snapshot; [`crate::oracle::evaluate`] holds the predictions
//! against them.

use super::qemu::{boot, create_disks, Boot};
use super::{Accel, VmArgs};
use crate::scenario::{self, Scenario};
use crate::util;
use anyhow::{bail, Context, Result};
use peerdma_p2p::acs_boot::proposed_fixes;
use peerdma_p2p::oracle::FixRun;
use peerdma_pci::Source;
use std::path::Path;

/// Boot `sc` once per fix peerdma proposes for the machine of `dir`.
pub(super) fn run_fixes(
    sc: &Scenario,
    kernel: &Path,
    initramfs: &Path,
    dir: &Path,
    accel: Accel,
    args: &VmArgs,
) -> Result<usize> {
    let snap = dir.join("snapshot.json");
    let topo = Source::Snapshot(snap.clone())
        .load()
        .with_context(|| format!("peerdma cannot read {}", snap.display()))?;
    let fixes = proposed_fixes(&topo);
    let root = dir.join("fixes");
    util::remove_dir_all_if_exists(&root)?;
    for (i, fix) in fixes.iter().enumerate() {
        let k = i + 1;
        let fdir = root.join(k.to_string());
        util::create_dir_all(&fdir)?;
        let cmdline = fix.apply_to(&sc.cmdline);
        let run = FixRun::new(fix.clone(), cmdline.clone());
        util::write(
            &fdir.join("fix.json"),
            serde_json::to_string_pretty(&run)? + "\n",
        )?;
        let mut fsc = scenario::load(&sc.name)?;
        fsc.cmdline = format!("{cmdline} peerdma.fix={k}");
        create_disks(&fsc, &fdir)?;
        eprintln!(
            "vm: scenario {}: fix {k}/{}: booting ({}) with {} ({} pair(s))",
            sc.name,
            fixes.len(),
            accel.name(),
            fix.params.join(" "),
            fix.pairs.len()
        );
        match boot(&fsc, kernel, initramfs, &fdir, accel, args)? {
            Boot::Done { payload, elapsed } => {
                super::collect::unpack(&fsc, &fdir, &payload)?;
                if !fdir.join("verdicts").is_file() || !fdir.join("snapshot.json").is_file() {
                    bail!(
                        "scenario {}: the boot with {} brought back no verdicts or snapshot ({})",
                        sc.name,
                        fix.params.join(" "),
                        fdir.display()
                    );
                }
                eprintln!(
                    "vm: scenario {}: fix {k}: boot-to-poweroff {}",
                    sc.name,
                    util::secs(elapsed)
                );
            }
            Boot::KvmFailed(why) => bail!("scenario {}: fix {k}: KVM failed: {why}", sc.name),
        }
        util::remove_dir_all_if_exists(&fdir.join("disks"))?;
    }
    Ok(fixes.len())
}
