//! Why a pair gets its verdict, and what would change it. Every fix offered
//! is checked by applying it to a copy of the topology and deciding again:
//! only fixes that are true for this machine are shown.

use crate::acs_boot::{self, AcsOrigin, BootFacts};
use crate::calc::{calc_map_type_and_dist, Verdict};
use crate::path::{path_between, Hop, LinkClass};
use crate::whitelist::whitelist_entry;
use crate::MapType;
use peerdma_pci::config::{acs_bits_string, ACS_REDIR_MASK};
use peerdma_pci::{AcsAssumption, Bdf, FnId, HostBridgeId, PortType, Topology};
use serde::Serialize;
use std::fmt::Write;

/// A host bridge as the whitelist test sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostBridgeReport {
    pub name: String,
    /// The function standing for it (`pci_host_bridge_dev`), if any.
    pub device: Option<Bdf>,
    /// `vvvv:dddd` of that function.
    pub ids: Option<String>,
    /// The whitelist entry that matched, if any.
    pub whitelist_entry: Option<&'static str>,
    /// The entry's REQ_SAME_HOST_BRIDGE flag.
    pub same_host_bridge_only: bool,
    pub numa_node: Option<u32>,
}

/// What kind of change a fix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FixKind {
    /// A kernel command-line parameter (takes effect at the next boot).
    KernelParameter,
    /// A runtime register change with setpci.
    AcsChange,
    /// Plug a device into another slot.
    MoveDevice,
}

/// A change that would improve the verdict, with the verdict it gives.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Fix {
    pub kind: FixKind,
    pub summary: String,
    /// Commands or parameters to apply it.
    pub commands: Vec<String>,
    /// The verdict after the change (checked, not assumed).
    pub gives: MapType,
    pub distance: Option<u32>,
    /// Side effects worth knowing.
    pub notes: Vec<String>,
    /// For a kernel parameter: the whole command line after the change,
    /// when the capture recorded the current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
}

/// A function with the ACS bits that make it redirect.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcsReport {
    pub bdf: Bdf,
    pub port_type: PortType,
    /// ACS control bits, e.g. `SV|RR|CR|UF`.
    pub ctrl: String,
    /// Not read from the capture: assumed (`--assume-acs iommu`).
    pub assumed: bool,
    /// Who set the redirect bits, as far as the capture tells
    /// (`pci_enable_acs()` run backwards); absent for assumed ACS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<AcsOrigin>,
}

/// Where the capture does not show the ACS state of functions the
/// kernel's walk checks: what the verdict took them to be, and the verdict
/// under the other assumption.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AcsUnknown {
    /// The functions on the path whose ACS state is not in the capture.
    pub functions: Vec<Bdf>,
    /// Why it is not (no config space in hwloc XML, a read without root).
    pub why: &'static str,
    /// What the verdict assumed (`--assume-acs`).
    pub assumed: AcsAssumption,
    /// The other assumption and the verdict it gives.
    pub other: AcsAssumption,
    pub other_map_type: MapType,
    pub other_distance: Option<u32>,
}

/// The narrowest link on the path.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NarrowLink {
    pub port: Bdf,
    pub below: Bdf,
    pub link: String,
    pub gbytes_per_sec: f64,
}

/// Everything about one (provider, client) pair.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub provider: Bdf,
    pub client: Bdf,
    pub map_type: MapType,
    pub distance: Option<u32>,
    pub p2p: bool,
    pub link_class: LinkClass,
    pub path: Vec<String>,
    pub common_upstream: Option<Bdf>,
    pub narrowest_link: Option<NarrowLink>,
    pub acs_redirects: Vec<AcsReport>,
    /// The kernel parameter the kernel itself suggests for this path.
    pub disable_acs_redir: Option<String>,
    pub host_bridges: Vec<HostBridgeReport>,
    pub cpu_supports_p2pdma: bool,
    pub iommu_groups: [Option<u32>; 2],
    pub reasons: Vec<String>,
    pub fixes: Vec<Fix>,
    pub caveats: Vec<String>,
    /// Set where ACS on the path is not in the capture (hwloc XML, sysfs
    /// read without root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acs_unknown: Option<AcsUnknown>,
}

fn name(topo: &Topology, f: FnId) -> String {
    let func = topo.function(f);
    match &func.label {
        Some(l) => format!("{} ({l})", func.bdf),
        None => func.bdf.to_string(),
    }
}

fn hb_report(topo: &Topology, hb: HostBridgeId) -> HostBridgeReport {
    let h = topo.host_bridge(hb);
    let dev = topo.host_bridge_device(hb);
    let entry = dev.and_then(|d| {
        let f = topo.function(d);
        whitelist_entry(f.vendor, f.device)
    });
    HostBridgeReport {
        name: h.name.clone(),
        device: dev.map(|d| topo.function(d).bdf),
        ids: dev.map(|d| {
            let f = topo.function(d);
            format!("{:04x}:{:04x}", f.vendor, f.device)
        }),
        whitelist_entry: entry.map(|e| e.name),
        same_host_bridge_only: entry.is_some_and(|e| e.same_host_bridge_only),
        numa_node: h.numa_node,
    }
}

pub(crate) fn rank(v: &Verdict) -> (u8, u32) {
    let m = match v.map_type {
        MapType::BusAddr => 0,
        MapType::ThruHostBridge => 1,
        _ => 2,
    };
    (m, v.distance.unwrap_or(u32::MAX))
}

/// The functions of the device `f` belongs to that sit below the same bridge.
fn device_functions(topo: &Topology, f: FnId) -> Vec<FnId> {
    let me = topo.function(f);
    topo.functions()
        .iter()
        .filter(|g| g.bdf.same_device(me.bdf) && g.upstream == me.upstream && g.physfn.is_none())
        .map(|g| g.id)
        .collect()
}

/// Try plugging the device of `mover` into each empty downstream port.
fn move_fixes(
    topo: &Topology,
    provider: FnId,
    client: FnId,
    mover: FnId,
    current: &Verdict,
) -> Option<Fix> {
    let fns = device_functions(topo, mover);
    if fns.iter().any(|&f| !topo.function(f).children.is_empty())
        || !topo.function(mover).is_dma_endpoint()
    {
        return None;
    }
    let other = if mover == provider { client } else { provider };
    let mut best: Option<(Verdict, FnId)> = None;
    let empty_ports = topo
        .functions()
        .iter()
        .filter(|p| p.port_type.is_downstream_port() && p.children.is_empty())
        .take(256);
    for port in empty_ports {
        let mut t = topo.clone();
        if !fns.iter().all(|&f| t.move_leaf(f, port.id)) {
            continue;
        }
        let v = calc_map_type_and_dist(&t, provider, client);
        if rank(&v) < rank(current) && best.as_ref().is_none_or(|(b, _)| rank(&v) < rank(b)) {
            best = Some((v, port.id));
        }
    }
    let (v, port) = best?;
    let p = topo.function(port);
    let place = match (p.port_type, p.upstream) {
        (PortType::SwitchDownstream, Some(up)) => format!(
            "the empty slot below switch port {} (switch {})",
            p.bdf,
            topo.function(up).bdf
        ),
        _ => format!("the empty slot below {} {}", p.port_type, p.bdf),
    };
    Some(Fix {
        kind: FixKind::MoveDevice,
        summary: format!(
            "move {} to {place}, where it shares a path with {} (checked: the verdict re-decided with the device there)",
            name(topo, mover),
            name(topo, other)
        ),
        commands: Vec::new(),
        gives: v.map_type,
        distance: v.distance,
        notes: vec!["a hardware change: power off, move the card, check that the slot's link width suits it".into()],
        cmdline: None,
    })
}

/// Explain the verdict for `provider` → `client`.
pub fn explain(topo: &Topology, provider: FnId, client: FnId) -> Explanation {
    let v = calc_map_type_and_dist(topo, provider, client);
    let path = path_between(topo, provider, client);
    let pf = topo.function(provider);
    let cf = topo.function(client);
    let hbs: Vec<HostBridgeId> = if pf.host_bridge == cf.host_bridge {
        vec![pf.host_bridge]
    } else {
        vec![pf.host_bridge, cf.host_bridge]
    };
    let host_bridges: Vec<HostBridgeReport> = hbs.iter().map(|&h| hb_report(topo, h)).collect();
    let facts = BootFacts::of(topo);
    let acs_redirects: Vec<AcsReport> = v
        .acs_redirects
        .iter()
        .map(|&f| {
            let func = topo.function(f);
            AcsReport {
                bdf: func.bdf,
                port_type: func.port_type,
                ctrl: acs_bits_string(func.acs.ctrl().unwrap_or(0)),
                assumed: !func.acs.is_known(),
                origin: AcsOrigin::of(topo, f, &facts),
            }
        })
        .collect();
    let disable_acs_redir = (!v.acs_redirects.is_empty()).then(|| {
        format!(
            "pci=disable_acs_redir={}",
            v.acs_redirects
                .iter()
                .map(|&f| topo.function(f).bdf.to_string())
                .collect::<Vec<_>>()
                .join(";")
        )
    });
    let any_groups = topo.functions().iter().any(|f| f.iommu_group.is_some());

    // Reasons.
    let mut reasons = Vec::new();
    let cpu = topo.cpu();
    match (v.map_type, v.common_upstream) {
        (MapType::BusAddr, Some(c)) if provider == client => {
            let _ = c;
            reasons.push("a function reaches its own BARs directly".into());
        }
        (MapType::BusAddr, Some(c)) => reasons.push(format!(
            "both sit below {} ({}) and no function on the path has ACS redirect set, so the fabric routes peer requests by PCI bus address without involving the host bridge or the IOMMU",
            name(topo, c),
            topo.function(c).port_type
        )),
        (_, Some(c)) => reasons.push(format!(
            "both sit below {} ({}), but ACS redirect (P2P Request/Completion Redirect or Egress Control) is {} on {}: peer requests are sent up to the root complex instead of across",
            name(topo, c),
            topo.function(c).port_type,
            if v.acs_redirects.iter().all(|&f| topo.function(f).acs.is_known()) {
                "set".to_string()
            } else {
                format!("assumed (--assume-acs {})", topo.acs_assumption().as_str())
            },
            v.acs_redirects.iter().map(|&f| name(topo, f)).collect::<Vec<_>>().join(", ")
        )),
        (_, None) => reasons.push(format!(
            "they share no upstream bridge ({}), so peer traffic must cross the host bridge",
            if pf.host_bridge == cf.host_bridge {
                format!("both are below host bridge {} but on different root ports or directly on the root bus", topo.host_bridge(pf.host_bridge).name)
            } else {
                format!(
                    "{} is below host bridge {}, {} below {}",
                    pf.bdf,
                    topo.host_bridge(pf.host_bridge).name,
                    cf.bdf,
                    topo.host_bridge(cf.host_bridge).name
                )
            }
        )),
    }
    if v.map_type != MapType::BusAddr {
        if v.cpu_supports_p2pdma {
            reasons.push(format!(
                "the CPU is AMD family {:#x} (Zen or newer), whose root complexes forward peer traffic: the kernel allows it through the host bridge",
                cpu.family
            ));
        } else {
            for h in &host_bridges {
                let unseen = topo
                    .host_bridges()
                    .iter()
                    .any(|x| x.name == h.name && x.device_not_captured);
                let what = match (&h.device, &h.ids) {
                    (Some(d), Some(ids)) => format!("host bridge {} (represented by {d}, {ids})", h.name),
                    _ if unseen => format!(
                        "host bridge {}: the capture leaves out its 00.0 function (hwloc drops it unless lstopo --whole-io), so whether the kernel's whitelist allows it is unknown;",
                        h.name
                    ),
                    _ => format!(
                        "host bridge {} has no function at 00.0 and its first function is not a root port, so the kernel cannot identify it;",
                        h.name
                    ),
                };
                let s = match (h.whitelist_entry, h.same_host_bridge_only, hbs.len()) {
                    (Some(e), true, 2) => format!(
                        "{what} is whitelisted ({e}) only for peers below that same host bridge"
                    ),
                    (Some(e), _, _) => format!("{what} is in the kernel's P2PDMA whitelist ({e})"),
                    (None, _, _) if unseen => {
                        format!("{what} peerdma takes it as not whitelisted")
                    }
                    (None, _, _) if h.device.is_none() => {
                        format!("{what} it counts as not whitelisted")
                    }
                    (None, _, _) => format!("{what} is not in the kernel's P2PDMA whitelist"),
                };
                reasons.push(s);
            }
            if v.map_type == MapType::NotSupported {
                reasons.push(format!(
                    "the CPU ({}, family {:#x}) is not an AMD Zen, so the AMD rule does not apply",
                    if cpu.vendor_id.is_empty() {
                        "unknown vendor"
                    } else {
                        &cpu.vendor_id
                    },
                    cpu.family
                ));
            }
        }
    }

    // Fixes, each checked on a modified copy.
    let mut fixes = Vec::new();
    let mut caveats = Vec::new();
    if !v.acs_redirects.is_empty() {
        match acs_boot::pair_fix(topo, &v) {
            Some(Ok(pf)) => {
                let mut notes = pf.fix.edits.clone();
                notes.extend(pf.fix.assumptions.iter().cloned());
                for (b, bits) in &pf.fix.lost {
                    notes.push(format!(
                        "{b} loses {} unless the firmware set them: 6.12 applies these parameters to the firmware's value, not on top of what the IOMMU driver enabled",
                        acs_bits_string(*bits)
                    ));
                }
                if any_groups {
                    notes.push("with an IOMMU, devices below these ports may then share an IOMMU group (VFIO assigns whole groups) and peer traffic bypasses IOMMU translation".into());
                }
                fixes.push(Fix {
                    kind: FixKind::KernelParameter,
                    summary: format!(
                        "boot with ACS redirect off on the {} redirecting function(s) of this path (the edited command line run through the kernel's pci_enable_acs())",
                        v.acs_redirects.len()
                    ),
                    commands: pf.fix.params.clone(),
                    gives: pf.after.map_type,
                    distance: pf.after.distance,
                    notes,
                    cmdline: pf.fix.cmdline_after.clone(),
                });
            }
            Some(Err(why)) => {
                for w in why {
                    caveats.push(format!("no kernel parameter is proposed: {w}"));
                }
            }
            None => {}
        }
        let mut t = topo.clone();
        for &f in &v.acs_redirects {
            let ctrl = t.function(f).acs.ctrl().unwrap_or(0);
            t.set_acs_ctrl(f, ctrl & !ACS_REDIR_MASK);
        }
        let after = calc_map_type_and_dist(&t, provider, client);
        if rank(&after) < rank(&v) {
            fixes.push(Fix {
                kind: FixKind::AcsChange,
                summary: "clear the redirect bits now, without a reboot".into(),
                commands: v
                    .acs_redirects
                    .iter()
                    .map(|&f| format!("setpci -s {} ECAP_ACS+0x6.w=0000:{:04x}", topo.function(f).bdf, ACS_REDIR_MASK))
                    .collect(),
                gives: after.map_type,
                distance: after.distance,
                notes: vec![
                    "the kernel caches each provider's verdict per client once it is first used; pairs already used keep the old path until reboot".into(),
                    "lost at reboot: the kernel's pci_enable_acs() sets the control again".into(),
                ],
                cmdline: None,
            });
        }
    }
    if v.map_type != MapType::BusAddr && provider != client {
        for mover in [client, provider] {
            if let Some(f) = move_fixes(topo, provider, client, mover, &v) {
                if fixes.iter().all(|x: &Fix| x.kind != FixKind::MoveDevice) {
                    fixes.push(f);
                }
            }
        }
        // No free slot helps: a switch holding both would, by the kernel's
        // rule, unless one of the two functions redirects itself.
        let leaf =
            |f: FnId| topo.function(f).children.is_empty() && topo.function(f).is_dma_endpoint();
        let self_redirect = [provider, client]
            .iter()
            .any(|&f| crate::acs_redirects(&topo.function(f).acs) == Some(true));
        if fixes.is_empty()
            && v.common_upstream.is_none()
            && leaf(provider)
            && leaf(client)
            && !self_redirect
        {
            fixes.push(Fix {
                kind: FixKind::MoveDevice,
                summary: format!(
                    "put {} and {} below one PCIe switch whose downstream ports have no ACS redirect (no free slot of this machine does it)",
                    name(topo, provider),
                    name(topo, client)
                ),
                commands: Vec::new(),
                gives: MapType::BusAddr,
                distance: Some(4),
                notes: vec!["a hardware change: the kernel then routes the pair by bus address, distance 4".into()],
                cmdline: None,
            });
        }
    }

    // Caveats.
    let acs_unknown = (!v.acs_unknown.is_empty()).then(|| {
        let assumed = topo.acs_assumption();
        let other = assumed.other();
        let alt = calc_map_type_and_dist(&topo.with_acs_assumption(other), provider, client);
        let u = AcsUnknown {
            functions: v.acs_unknown.iter().map(|&f| topo.function(f).bdf).collect(),
            why: topo.acs_unknown_reason(),
            assumed,
            other,
            other_map_type: alt.map_type,
            other_distance: alt.distance,
        };
        caveats.push(format!(
            "the ACS state of {} is unknown ({}); the verdict assumes {} (--assume-acs {}); with {} (--assume-acs {}) it would be {}{}",
            u.functions.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(", "),
            u.why,
            assumed.describe(),
            assumed.as_str(),
            other.describe(),
            other.as_str(),
            alt.map_type,
            alt.distance.map(|d| format!(", distance {d}")).unwrap_or_default(),
        ));
        u
    });
    match pf.p2pmem {
        None if topo.origin().kind == "hwloc" => caveats.push(format!(
            "hwloc XML does not record whether {} publishes P2P memory (p2pmem/ in sysfs): the verdict says whether its BARs could be reached, for a driver that exposes them",
            pf.bdf
        )),
        None => caveats.push(format!(
            "{} publishes no P2P memory (no p2pmem/ in sysfs): the verdict says whether its BARs could be reached, for a driver that exposes them",
            pf.bdf
        )),
        Some(p) if !p.published => caveats.push(format!(
            "{} has P2P memory but has not published it: only its own driver allocates from it",
            pf.bdf
        )),
        _ => {}
    }
    if v.map_type == MapType::NotSupported {
        caveats.push("I/O between these devices still works by bouncing through host memory (two DMAs); peerdma copy does this and says so".into());
    }
    if v.map_type == MapType::ThruHostBridge && any_groups {
        caveats.push("through the host bridge the client's DMA is translated by the IOMMU like a host-memory access".into());
    }
    let hop_names: Vec<String> = path
        .hops
        .iter()
        .map(|h| match h {
            Hop::Function(f) => name(topo, *f),
            Hop::HostBridge(h) => format!("host bridge {}", topo.host_bridge(*h).name),
        })
        .collect();

    Explanation {
        provider: pf.bdf,
        client: cf.bdf,
        map_type: v.map_type,
        distance: v.distance,
        p2p: v.map_type.is_p2p(),
        link_class: path.class,
        path: hop_names,
        common_upstream: v.common_upstream.map(|c| topo.function(c).bdf),
        narrowest_link: path.narrowest.and_then(|l| {
            let rate = l.bytes_per_sec?;
            Some(NarrowLink {
                port: topo.function(l.port).bdf,
                below: topo.function(l.below).bdf,
                link: match l.state {
                    Some(s) => s.to_string(),
                    None => {
                        let c: Vec<String> = peerdma_pci::LinkState::candidates(rate)
                            .iter()
                            .map(|s| s.to_string())
                            .collect();
                        if c.is_empty() {
                            "a link".to_string()
                        } else {
                            c.join(" or ")
                        }
                    }
                },
                gbytes_per_sec: (rate / 1e7).round() / 100.0,
            })
        }),
        acs_redirects,
        disable_acs_redir,
        host_bridges,
        cpu_supports_p2pdma: v.cpu_supports_p2pdma,
        iommu_groups: [pf.iommu_group, cf.iommu_group],
        reasons,
        fixes,
        caveats,
        acs_unknown,
    }
}

impl Explanation {
    /// The explanation as text for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let verdict = match self.distance {
            Some(d) => format!(
                "{} ({}), distance {d}",
                self.map_type,
                self.map_type.describe()
            ),
            None => format!("{} ({})", self.map_type, self.map_type.describe()),
        };
        let _ = writeln!(s, "{} -> {}: {verdict}", self.provider, self.client);
        let _ = writeln!(
            s,
            "  link class: {} ({})",
            self.link_class,
            self.link_class.describe()
        );
        let _ = writeln!(s, "  path: {}", self.path.join(" -> "));
        if let Some(n) = &self.narrowest_link {
            let _ = writeln!(
                s,
                "  narrowest link: {} between {} and {} ({:.2} GB/s)",
                n.link, n.port, n.below, n.gbytes_per_sec
            );
        }
        let _ = writeln!(s, "  why:");
        for r in &self.reasons {
            let _ = writeln!(s, "    - {r}");
        }
        if !self.acs_redirects.is_empty() {
            let _ = writeln!(s, "  ACS redirect on the path:");
            for a in &self.acs_redirects {
                let _ = writeln!(
                    s,
                    "    - {} ({}): ACS control {}{}",
                    a.bdf,
                    a.port_type,
                    a.ctrl,
                    if a.assumed { " (assumed)" } else { "" }
                );
                if let Some(o) = &a.origin {
                    let _ = writeln!(s, "      set by: {}", o.describe());
                }
            }
        }
        if self.iommu_groups.iter().any(|g| g.is_some()) {
            let g = |x: Option<u32>| x.map(|v| v.to_string()).unwrap_or_else(|| "none".into());
            let _ = writeln!(
                s,
                "  IOMMU groups: {} in {}, {} in {}",
                self.provider,
                g(self.iommu_groups[0]),
                self.client,
                g(self.iommu_groups[1])
            );
        }
        if self.fixes.is_empty() {
            if !self.p2p || self.map_type != MapType::BusAddr {
                let _ = writeln!(s, "  fix: none found that this topology allows");
            }
        } else {
            let _ = writeln!(s, "  fixes:");
            for f in &self.fixes {
                let after = match f.distance {
                    Some(d) => format!("{}, distance {d}", f.gives),
                    None => f.gives.to_string(),
                };
                let _ = writeln!(s, "    - {} -> {after}", f.summary);
                for c in &f.commands {
                    let _ = writeln!(s, "        {c}");
                }
                if let Some(c) = &f.cmdline {
                    let _ = writeln!(s, "        command line then: {c}");
                }
                for n in &f.notes {
                    let _ = writeln!(s, "        note: {n}");
                }
            }
        }
        for c in &self.caveats {
            let _ = writeln!(s, "  note: {c}");
        }
        s
    }
}
