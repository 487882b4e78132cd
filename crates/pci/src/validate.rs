//! What a machine must be for its model to mean anything. Every source
//! (live sysfs, `--root` trees, snapshots, descriptions, presets) reaches
//! the model through the one builder, and the builder asks here once: a
//! capture that breaks one of these rules is refused with one line naming
//! the source and the device, whatever produced it.

use crate::error::{Error, Result};
use crate::model::{Function, HostBridge, PortType};
use peerdma_mem::format_size;

/// A function as messages name it: its BDF, and its name when it has one.
pub(crate) fn who(f: &Function) -> String {
    match &f.label {
        Some(l) => format!("{} ({l})", f.bdf),
        None => f.bdf.to_string(),
    }
}

/// Whether a function can be an endpoint of DMA: not a bridge, not of the
/// bridge class (host, ISA, PCI bridges), not an event collector.
fn is_endpoint(f: &Function) -> bool {
    !f.is_bridge()
        && f.base_class() != 0x06
        && f.port_type != PortType::RcEventCollector
        && f.config.header_layout().is_none_or(|l| l == 0)
}

/// What a function that is not an endpoint is, for messages.
fn non_endpoint(f: &Function) -> String {
    if f.is_bridge() || f.base_class() != 0x06 {
        format!("a {}", f.port_type)
    } else {
        format!("a bridge device (class {:06x})", f.class)
    }
}

/// The directory a function's path sits in (its bridge or host bridge).
fn parent_dir(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit_once('/')
        .map_or("", |(p, _)| p)
}

/// Check the rules below over the whole model. `bars_known[i]` says
/// whether function `i`'s `resource` file was captured.
pub(crate) fn check(
    origin: &str,
    functions: &[Function],
    host_bridges: &[HostBridge],
    bars_known: &[bool],
) -> Result<()> {
    for (i, f) in functions.iter().enumerate() {
        let err = |msg: String| Error::device(origin, who(f), msg);
        domain(f, &host_bridges[f.host_bridge.index()]).map_err(err)?;
        if let Some(pf) = f.physfn {
            physfn(f, &functions[pf.index()]).map_err(err)?;
        }
        if f.p2pmem.is_some() {
            p2pmem(f, bars_known[i]).map_err(err)?;
        }
        bars(f).map_err(err)?;
    }
    Ok(())
}

/// A function belongs to its host bridge's PCI domain, and one on the root
/// bus has the root bus's number.
fn domain(f: &Function, hb: &HostBridge) -> Result<(), String> {
    if f.bdf.domain() != hb.domain {
        return Err(format!(
            "is in domain {:04x}, but sits below host bridge {} of domain {:04x}",
            f.bdf.domain(),
            hb.name,
            hb.domain
        ));
    }
    if f.upstream.is_none() && f.physfn.is_none() && f.bdf.bus() != hb.bus {
        return Err(format!(
            "is on bus {:02x}, but sits on the root bus {:02x} of host bridge {}",
            f.bdf.bus(),
            hb.bus,
            hb.name
        ));
    }
    Ok(())
}

/// An SR-IOV virtual function: an endpoint whose physical function is
/// another endpoint, not itself a virtual function, beside it.
fn physfn(vf: &Function, pf: &Function) -> Result<(), String> {
    if pf.id == vf.id {
        return Err("is its own physical function".into());
    }
    if vf.is_bridge() {
        return Err(format!(
            "is a {} with a physical function; only endpoints are virtual functions",
            vf.port_type
        ));
    }
    if !is_endpoint(pf) {
        return Err(format!(
            "names {} as its physical function, which is {}, not an endpoint",
            who(pf),
            non_endpoint(pf)
        ));
    }
    if pf.physfn.is_some() {
        return Err(format!(
            "names {} as its physical function, which is itself a virtual function",
            who(pf)
        ));
    }
    if parent_dir(&vf.path) != parent_dir(&pf.path) {
        return Err(format!(
            "is a virtual function of {}, but sits elsewhere ({} and {}); a virtual function sits beside its physical function",
            who(pf),
            vf.path,
            pf.path
        ));
    }
    Ok(())
}

/// P2P memory is published by an endpoint, from its memory BARs, and no
/// more of it is free than there is.
fn p2pmem(f: &Function, bars_known: bool) -> Result<(), String> {
    let Some(p) = f.p2pmem else { return Ok(()) };
    if !is_endpoint(f) {
        return Err(format!(
            "publishes P2P memory (p2pmem), but it is {}; only endpoints provide P2P memory",
            non_endpoint(f)
        ));
    }
    if p.available > p.size {
        return Err(format!(
            "p2pmem available ({}) is larger than its size ({})",
            p.available, p.size
        ));
    }
    if bars_known {
        let bar_bytes = f
            .bars
            .iter()
            .filter(|b| !b.io)
            .fold(0u64, |a, b| a.saturating_add(b.phys.len()));
        if p.size > bar_bytes {
            return Err(format!(
                "p2pmem size ({}) is larger than its memory BARs ({})",
                format_size(p.size),
                format_size(bar_bytes)
            ));
        }
    }
    Ok(())
}

/// A memory BAR's bus range, like its physical range, lies within 64 bits,
/// so `bus = phys + offset` holds for every byte of it.
fn bars(f: &Function) -> Result<(), String> {
    for b in &f.bars {
        let Some(bus) = b.bus else { continue };
        let last = bus.raw().checked_add(b.phys.len() - 1);
        let apart = i128::from(bus.raw()) - i128::from(b.phys.start().raw());
        if last.is_none() || i64::try_from(apart).is_err() {
            return Err(format!(
                "BAR {}: bus address {bus} for physical range {} does not fit the 64-bit bus address space (a bus offset that wraps)",
                b.index, b.phys
            ));
        }
    }
    Ok(())
}
