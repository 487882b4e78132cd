//! Drive to drive: the data is read by one drive into staging memory and
//! written from there by the other — P2P memory both can reach (a CMB) when
//! the kernel's verdicts allow it, host memory otherwise. The same engine
//! does a plain copy (staging chosen like `pci_p2pmem_find_many`) and an
//! md-style RAID-1 rebuild (staging in the CMB of one of the two mirrors).

use crate::block::Op;
use crate::io::{direct_io, Fallback, IoError, IoOutcome};
use crate::nvme::NvmeDrive;
use peerdma_mem::{format_size, Bdf, PhysVec};
use peerdma_p2p::{choose_staging, MapType, Memory, NoStaging};
use peerdma_sim::SimMachine;

/// Bytes moved per step: read into staging, then written out.
pub const STEP: u64 = 4 << 20;

/// Where a drive-to-drive transfer stages its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StagingPlan {
    /// P2P memory of `provider`, with the kernel's verdict for each leg.
    P2p {
        provider: Bdf,
        read_leg: MapType,
        write_leg: MapType,
    },
    /// Host memory on the reading drive's NUMA node, and why not P2P.
    Host { why: String },
}

/// The memory state of a provider on the simulated machine.
fn memory_of(sim: &SimMachine, f: peerdma_pci::FnId) -> Result<Memory, String> {
    let bdf = sim.topology().function(f).bdf;
    match sim.provider(bdf) {
        Some(p) => Ok(Memory {
            published: p.published(),
            available: p.available(),
        }),
        None => Err("is not a provider on this machine".into()),
    }
}

/// Staging for a copy from `from` to `to`: `via` if given, else the
/// closest published P2P memory both reach (the kernel's
/// `pci_p2pmem_find_many`), else host memory with the reason.
pub fn plan_copy(
    sim: &SimMachine,
    from: Bdf,
    to: Bdf,
    via: Option<Bdf>,
) -> Result<StagingPlan, NoStaging> {
    let t = sim.topology();
    let (Some(r), Some(w)) = (t.find(from), t.find(to)) else {
        return Ok(StagingPlan::Host {
            why: "a drive is not on this machine".into(),
        });
    };
    let via_id = via.and_then(|v| t.find(v));
    match choose_staging(t, r, w, via_id, STEP.min(1 << 20), &|f| memory_of(sim, f)) {
        Ok(c) => Ok(StagingPlan::P2p {
            provider: t.function(c.provider).bdf,
            read_leg: c.read_leg,
            write_leg: c.write_leg,
        }),
        // A named `via` that cannot work is the user's error.
        Err(e) if via.is_some() => Err(e),
        Err(e) => Ok(StagingPlan::Host { why: e.to_string() }),
    }
}

/// Staging for an md-style RAID-1 rebuild: the CMB of the surviving mirror
/// or of the replacement when both drives reach it (`via` chooses one),
/// else host memory, as md's resync pages are.
pub fn plan_rebuild(
    sim: &SimMachine,
    from: Bdf,
    to: Bdf,
    via: Option<Bdf>,
) -> Result<StagingPlan, NoStaging> {
    if via.is_some() {
        return plan_copy(sim, from, to, via);
    }
    let t = sim.topology();
    let (Some(r), Some(w)) = (t.find(from), t.find(to)) else {
        return Ok(StagingPlan::Host {
            why: "a drive is not on this machine".into(),
        });
    };
    let mut why = Vec::new();
    for cand in [r, w] {
        match choose_staging(t, r, w, Some(cand), 1 << 20, &|f| memory_of(sim, f)) {
            Ok(c) => {
                return Ok(StagingPlan::P2p {
                    provider: t.function(c.provider).bdf,
                    read_leg: c.read_leg,
                    write_leg: c.write_leg,
                })
            }
            Err(e) => why.push(e.to_string()),
        }
    }
    Ok(StagingPlan::Host {
        why: why.join("; "),
    })
}

/// Move `len` bytes from `from` at `from_off` to `to` at `to_off` through
/// the staging `plan` chose, in steps of [`STEP`].
#[allow(clippy::too_many_arguments)]
pub fn drive_to_drive(
    sim: &SimMachine,
    from: &mut NvmeDrive,
    to: &mut NvmeDrive,
    from_off: u64,
    to_off: u64,
    len: u64,
    plan: &StagingPlan,
    fault: Option<crate::io::IoFault>,
) -> Result<IoOutcome, IoError> {
    let step = STEP.min(len).max(1);
    // The staging buffer, alive until every step's I/O completed.
    let (p2p, host);
    let staging: PhysVec = match plan {
        StagingPlan::P2p { provider, .. } => {
            let p = sim
                .provider(*provider)
                .ok_or_else(|| IoError::Resource(format!("{provider} publishes no P2P memory")))?;
            p2p = p
                .alloc(step)
                .map_err(|e| IoError::Resource(e.to_string()))?;
            p2p.phys()
        }
        StagingPlan::Host { .. } => {
            host = sim
                .alloc_host(step, from.numa_node())
                .map_err(|e| IoError::Resource(format!("staging buffer: {e}")))?;
            host.phys()
        }
    };
    let mut out = IoOutcome::default();
    let mut fault = fault;
    let mut done = 0u64;
    while done < len {
        let n = step.min(len - done);
        let buf = crate::io::slice_segments(&[staging], 0, n);
        // A fault at byte `at` of the job fires in whichever step holds it:
        // the read of that step.
        let f = match &fault {
            Some(f) if f.at >= done && f.at < done + n => {
                fault.take().map(|f| crate::io::IoFault {
                    at: f.at - done,
                    fault: f.fault,
                })
            }
            _ => None,
        };
        let r = direct_io(
            sim,
            from,
            Op::Read,
            from_off + done,
            &buf,
            Fallback::Fail,
            f,
        )?;
        let w = direct_io(
            sim,
            to,
            Op::Write,
            to_off + done,
            &buf,
            Fallback::Fail,
            None,
        )?;
        out.absorb(r);
        out.absorb(w);
        done += n;
    }
    // Each step counted its bytes twice (in and out); the job moved `len`.
    out.bytes = len;
    if let StagingPlan::Host { why } = plan {
        out.mark_bounced();
        out.bounce_bytes += len;
        out.bounce_reason = Some(why.clone());
    }
    out.notes.push(match plan {
        StagingPlan::P2p { provider, .. } => format!(
            "staged through a {} buffer in the P2P memory of {provider}",
            format_size(step)
        ),
        StagingPlan::Host { .. } => format!(
            "staged through a {} buffer in host memory on node {}",
            format_size(step),
            from.numa_node()
        ),
    });
    Ok(out)
}
