//! Text views of a topology for people: a tree like `lspci -tv`, with the
//! facts that matter for P2P on each line.

use crate::ids::PciIds;
use crate::model::{FnId, Function, PortType, Topology};
use peerdma_mem::format_size;
use std::fmt::Write;

/// One function's description: class, name and IDs.
pub fn describe(ids: &PciIds, f: &Function) -> String {
    // The database's names, else the ones the capture gave (hwloc XML).
    let name = match (
        ids.device(f.vendor, f.device),
        &f.vendor_name,
        &f.device_name,
    ) {
        (None, Some(v), Some(d)) => format!("{v} {d}"),
        (None, None, Some(d)) => d.clone(),
        (None, Some(v), None) if ids.vendor(f.vendor).is_none() => {
            format!("{v} Device {:04x}", f.device)
        }
        _ => ids.name(f.vendor, f.device),
    };
    format!(
        "{}: {name} [{:04x}:{:04x}]",
        ids.class(f.class),
        f.vendor,
        f.device
    )
}

/// A short name for tables: the description-file name, else `bus:dev.fn`.
pub fn short_name(f: &Function) -> String {
    match &f.label {
        Some(l) => l.clone(),
        None if f.bdf.domain() == 0 => f.bdf.short(),
        None => f.bdf.to_string(),
    }
}

fn facts(topo: &Topology, f: &Function) -> String {
    let mut out = Vec::new();
    if let Some(pf) = f.physfn {
        out.push(format!(
            "virtual function of {}",
            topo.function(pf).bdf.short()
        ));
    }
    let vfs = topo
        .functions()
        .iter()
        .filter(|v| v.physfn == Some(f.id))
        .count();
    if vfs > 0 {
        out.push(format!("SR-IOV physical function, {vfs} VF(s) enabled"));
    }
    if f.is_bridge() || f.port_type == PortType::RcEndpoint {
        let mut t = f.port_type.name().to_string();
        if f.port_type_inferred {
            t.push('?');
        }
        out.push(t);
    }
    if let Some(l) = f.link {
        match (l.current, l.max) {
            (Some(c), Some(m)) if l.degraded() => out.push(format!("{c} (capable of {m})")),
            (Some(c), _) => out.push(c.to_string()),
            (None, Some(m)) if f.port_type.is_downstream_port() => {
                out.push(format!("link down (capable of {m})"))
            }
            _ => out.extend(l.describe_current()),
        }
    }
    match f.acs {
        crate::Acs::Present { ctrl, .. } if ctrl != 0 => {
            let redirect = if f.acs.redirects() == Some(true) {
                " redirect"
            } else {
                ""
            };
            out.push(format!(
                "ACS {}{redirect}",
                crate::config::acs_bits_string(ctrl)
            ))
        }
        crate::Acs::Assumed { ctrl } => out.push(format!(
            "ACS {} assumed",
            crate::config::acs_bits_string(ctrl)
        )),
        _ => {}
    }
    if let Some(p) = f.p2pmem {
        out.push(format!(
            "p2pmem {} ({} free{})",
            format_size(p.size),
            format_size(p.available),
            if p.published {
                ", published"
            } else {
                ", not published"
            }
        ));
    }
    if let Some(g) = f.iommu_group {
        out.push(format!("iommu group {g}"));
    }
    if let Some(d) = &f.driver {
        out.push(d.clone());
    }
    if let Some(l) = &f.label {
        out.push(format!("\"{l}\""));
    }
    out.join(", ")
}

/// The machine as a tree, host bridge by host bridge.
pub fn tree(topo: &Topology, ids: &PciIds) -> String {
    let mut s = String::new();
    for hb in topo.host_bridges() {
        let numa = hb
            .numa_node
            .map(|n| format!(", NUMA node {n}"))
            .unwrap_or_default();
        let dev = match topo.host_bridge_device(hb.id) {
            Some(d) => {
                let f = topo.function(d);
                format!(
                    "represented by {} [{:04x}:{:04x}]",
                    f.bdf.short(),
                    f.vendor,
                    f.device
                )
            }
            None if hb.device_not_captured => {
                "its 00.0 function is not in the capture (the whitelist cannot be checked)".into()
            }
            None => "no function stands for it (not 00.0 and not a root port)".into(),
        };
        let _ = writeln!(
            s,
            "{} (domain {:04x}, root bus {:02x}{numa}) {dev}",
            hb.name, hb.domain, hb.bus
        );
        let roots = &hb.root_functions;
        for (i, &f) in roots.iter().enumerate() {
            walk(topo, ids, f, "", i + 1 == roots.len(), &mut s);
        }
    }
    s
}

fn walk(topo: &Topology, ids: &PciIds, id: FnId, prefix: &str, last: bool, s: &mut String) {
    let f = topo.function(id);
    let branch = if last { "└─ " } else { "├─ " };
    let bdf = if f.bdf.domain() == 0 {
        f.bdf.short()
    } else {
        f.bdf.to_string()
    };
    let facts = facts(topo, f);
    let sep = if facts.is_empty() { "" } else { "  " };
    let _ = writeln!(s, "{prefix}{branch}{bdf} {}{sep}{facts}", describe(ids, f));
    let child_prefix = format!("{prefix}{}", if last { "   " } else { "│  " });
    let kids = &f.children;
    for (i, &c) in kids.iter().enumerate() {
        walk(topo, ids, c, &child_prefix, i + 1 == kids.len(), s);
    }
}

/// Two lines about the machine and where it was read from.
pub fn header(topo: &Topology) -> String {
    let o = topo.origin();
    let from = match o.kind.as_str() {
        "preset" if o.detail == crate::presets::DEFAULT && topo.snapshot().is_none() => {
            format!(
                "built-in preset '{}' (the default; --live reads this machine)",
                o.detail
            )
        }
        "preset" => format!("built-in preset '{}'", o.detail),
        "sysfs" if o.detail == "/" => "this machine's sysfs".to_string(),
        "sysfs" => format!("sysfs tree under {}", o.detail),
        "description" => format!("description {}", o.detail),
        "hwloc" => format!("hwloc XML {}", o.detail),
        _ => o.detail.clone(),
    };
    let from = match topo.snapshot() {
        Some(p) => format!("snapshot {} (captured from {from})", p.display()),
        None => from,
    };
    let name = o
        .name
        .clone()
        .or_else(|| o.hostname.clone())
        .unwrap_or_else(|| "machine".into());
    let c = topo.cpu();
    let rule = if c.supports_p2pdma() {
        "AMD Zen: root complexes forward peer traffic"
    } else {
        "not AMD Zen: P2P across the host bridge needs a whitelisted host bridge"
    };
    let cpu = if c.model_name.is_empty() {
        c.vendor_id.clone()
    } else {
        c.model_name.clone()
    };
    format!(
        "{name}, from {from}\nCPU: {cpu} ({} family {:#x}), {rule}\n{} PCI functions below {} host bridge(s)\n",
        if c.vendor_id.is_empty() { "unknown vendor" } else { &c.vendor_id },
        c.family,
        topo.len(),
        topo.host_bridges().len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;

    #[test]
    fn tree_shows_every_function_once_with_its_facts() {
        let t = Source::Preset("dual-xeon".into()).load().unwrap();
        let out = tree(&t, &PciIds::builtin());
        for f in t.functions() {
            assert_eq!(
                out.matches(&format!("─ {} ", f.bdf.short())).count(),
                1,
                "{}\n{out}",
                f.bdf
            );
        }
        assert!(out.contains("pci0000:17 (domain 0000, root bus 17, NUMA node 0) represented by 17:00.0 [8086:2030]"), "{out}");
        assert!(out.contains("ACS SV|RR|CR|UF redirect"), "{out}");
        assert!(
            out.contains("p2pmem 1 GiB (1 GiB free, published)"),
            "{out}"
        );
        assert!(out.contains("└─ 1a:00.0 3D controller: Device 10de:1db4 [10de:1db4]  Gen3 x16, nvidia, \"gpu0\""), "{out}");
    }
}
