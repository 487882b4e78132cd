//! Staging memory for moving data from one device to another: the P2P
//! memory of a provider that both can reach, chosen as the kernel's
//! `pci_p2pmem_find_many` chooses (the published providers at the smallest
//! summed distance, in BDF order), or the one the caller names — or the
//! reason none fits.
//!
//! The device the data is read from DMA-writes the staging memory (the
//! *read leg*); the device it is written to DMA-reads it (the *write
//! leg*). Both verdicts are the kernel's ([`calc_map_type_and_dist`]).
//!
//! How much memory a provider has free is a fact of the running machine,
//! not of the topology: the caller passes it in (on Linux, from
//! `p2pmem/available`), so this module reads nothing itself.

use crate::{calc_map_type_and_dist, explain, find_many, providers, MapType};
use peerdma_pci::{Bdf, FnId, Topology};
use serde::Serialize;

/// What a provider's P2P memory offers right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Published for others to allocate (`p2pmem/published`).
    pub published: bool,
    /// Bytes free in its pool (`p2pmem/available`).
    pub available: u64,
}

/// The provider chosen, with the kernel's verdict for each leg.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StagingChoice {
    pub provider: FnId,
    /// The provider and the device the data is read from.
    pub read_leg: MapType,
    /// The provider and the device the data is written to.
    pub write_leg: MapType,
}

/// Why no provider's memory can stage the transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoStaging {
    /// The function named is not a provider: it publishes no P2P memory.
    #[error(
        "{provider} publishes no P2P memory (no p2pmem/published), so it cannot stage the copy"
    )]
    NotAProvider { provider: Bdf },
    /// No function of the machine publishes P2P memory.
    #[error("no device on this machine publishes P2P memory (p2pmem/published)")]
    NonePublished,
    /// Providers exist, but none is reachable by both devices.
    #[error(
        "no published P2P memory is reachable by both {reader} and {writer} ({})",
        why.iter().map(|(p, w)| format!("{p}: {w}")).collect::<Vec<_>>().join(" | ")
    )]
    NoneReachable {
        reader: Bdf,
        writer: Bdf,
        /// Each published provider and why it does not fit.
        why: Vec<(Bdf, String)>,
    },
    /// A device cannot reach the provider's memory (the kernel's verdict).
    #[error("{client} cannot reach the P2P memory of {provider}: {reasons}")]
    Unreachable {
        provider: Bdf,
        client: Bdf,
        reasons: String,
        read_leg: MapType,
        write_leg: MapType,
    },
    /// The provider's memory cannot be had: too little free, not
    /// published, or its state unreadable.
    #[error("{provider} {why}")]
    Unavailable { provider: Bdf, why: String },
}

/// The provider whose memory can stage data read from `reader` and written
/// to `writer`: `via` if given (held to the kernel's verdict for both legs),
/// else the closest published providers in the kernel's order, the first
/// with at least `min_bytes` free. `memory` tells what a provider has now,
/// or why that cannot be known.
pub fn choose_staging(
    topo: &Topology,
    reader: FnId,
    writer: FnId,
    via: Option<FnId>,
    min_bytes: u64,
    memory: &dyn Fn(FnId) -> Result<Memory, String>,
) -> Result<StagingChoice, NoStaging> {
    let bdf = |f: FnId| topo.function(f).bdf;
    let candidates = match via {
        Some(v) => {
            if !providers(topo).contains(&v) {
                return Err(NoStaging::NotAProvider { provider: bdf(v) });
            }
            vec![v]
        }
        None => match find_many(topo, &[reader, writer]) {
            Some(f) => f.providers,
            None => return Err(none_reachable(topo, reader, writer)),
        },
    };
    let mut last = None;
    for p in candidates {
        let r = calc_map_type_and_dist(topo, p, reader).map_type;
        let w = calc_map_type_and_dist(topo, p, writer).map_type;
        if !r.is_p2p() || !w.is_p2p() {
            let bad = if !r.is_p2p() { reader } else { writer };
            last = Some(NoStaging::Unreachable {
                provider: bdf(p),
                client: bdf(bad),
                reasons: explain(topo, p, bad).reasons.join("; "),
                read_leg: r,
                write_leg: w,
            });
            continue;
        }
        match fits(memory(p), min_bytes) {
            Ok(()) => {
                return Ok(StagingChoice {
                    provider: p,
                    read_leg: r,
                    write_leg: w,
                })
            }
            Err(why) => {
                last = Some(NoStaging::Unavailable {
                    provider: bdf(p),
                    why,
                })
            }
        }
    }
    // find_many returns at least one provider and `via` is one: `last` is
    // set whenever the loop ends without a choice.
    Err(last.unwrap_or(NoStaging::NonePublished))
}

/// Whether a provider's memory state admits `min_bytes`, or why not.
fn fits(m: Result<Memory, String>, min_bytes: u64) -> Result<(), String> {
    let m = m?;
    if m.published && m.available >= min_bytes {
        return Ok(());
    }
    Err(format!(
        "has {} of P2P memory available{}",
        peerdma_mem::format_size(m.available),
        if m.published {
            format!(" (at least {} needed)", peerdma_mem::format_size(min_bytes))
        } else {
            " and has not published it".into()
        }
    ))
}

fn none_reachable(topo: &Topology, reader: FnId, writer: FnId) -> NoStaging {
    let published = providers(topo);
    if published.is_empty() {
        return NoStaging::NonePublished;
    }
    let why = published
        .iter()
        .map(|&p| {
            // Explain the leg that fails (the read leg when both do).
            let bad = if calc_map_type_and_dist(topo, p, reader).map_type.is_p2p() {
                writer
            } else {
                reader
            };
            (
                topo.function(p).bdf,
                explain(topo, p, bad).reasons.join("; "),
            )
        })
        .collect();
    NoStaging::NoneReachable {
        reader: topo.function(reader).bdf,
        writer: topo.function(writer).bdf,
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_pci::desc::parse_description;

    /// Two switches below one root port: drives a0, a1 and provider pa on
    /// the first, drive b0 and provider pb on the second (ACS redirect on
    /// its downstream port when `acs`), provider pc on a second Intel host
    /// bridge that is not whitelisted.
    fn machine(acs: bool) -> Topology {
        let acs = if acs { "acs = [\"rr\", \"cr\"]" } else { "" };
        let text = format!(
            r#"
[cpu]
vendor = "intel"
family = 6
[[host_bridge]]
name = "hb0"
[[host_bridge]]
name = "hb1"
[[device]]
name = "rp0"
type = "root_port"
parent = "hb0"
[[device]]
name = "up"
type = "switch_upstream"
parent = "rp0"
{}
[[device]]
name = "rp1"
type = "root_port"
parent = "hb1"
[[device]]
name = "pc"
type = "endpoint"
parent = "rp1"
class = "nvme"
bars = [{{ bar = 0, size = "16K" }}, {{ bar = 2, size = "64M" }}]
p2pmem = {{ bar = 2 }}
"#,
            ["a0", "a1", "pa", "b0", "pb"]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let p2p = if n.starts_with('p') {
                        "bars = [{ bar = 0, size = \"16K\" }, { bar = 2, size = \"64M\" }]\np2pmem = { bar = 2 }"
                    } else {
                        "bars = [{ bar = 0, size = \"16K\" }]"
                    };
                    let dp_acs = if *n == "pb" || *n == "b0" { acs } else { "" };
                    format!(
                        "[[device]]\nname = \"dp{i}\"\ntype = \"switch_downstream\"\nparent = \"up\"\n{dp_acs}\n\
                         [[device]]\nname = \"{n}\"\ntype = \"endpoint\"\nparent = \"dp{i}\"\nclass = \"nvme\"\n{p2p}\n"
                    )
                })
                .collect::<String>()
        );
        let raw = parse_description(&text, "staging-test").unwrap();
        Topology::from_raw(raw, "staging-test").unwrap()
    }

    fn id(t: &Topology, name: &str) -> FnId {
        t.lookup(name).unwrap()
    }

    fn plenty(_: FnId) -> Result<Memory, String> {
        Ok(Memory {
            published: true,
            available: 64 << 20,
        })
    }

    #[test]
    fn the_closest_provider_is_chosen_like_find_many() {
        let t = machine(false);
        let c = choose_staging(&t, id(&t, "a0"), id(&t, "a1"), None, 4096, &plenty).unwrap();
        // pa and pb are at the same distance below the switch; pc is far.
        let fm = find_many(&t, &[id(&t, "a0"), id(&t, "a1")]).unwrap();
        assert_eq!(c.provider, fm.providers[0]);
        assert_ne!(c.provider, id(&t, "pc"));
        assert_eq!(
            (c.read_leg, c.write_leg),
            (MapType::BusAddr, MapType::BusAddr)
        );
    }

    #[test]
    fn a_provider_without_enough_memory_passes_to_the_next() {
        let t = machine(false);
        let first = find_many(&t, &[id(&t, "a0"), id(&t, "a1")])
            .unwrap()
            .providers;
        assert!(first.len() >= 2, "{first:?}");
        let full = first[0];
        let mem = move |p: FnId| -> Result<Memory, String> {
            Ok(Memory {
                published: true,
                available: if p == full { 0 } else { 1 << 20 },
            })
        };
        let c = choose_staging(&t, id(&t, "a0"), id(&t, "a1"), None, 4096, &mem).unwrap();
        assert_eq!(c.provider, first[1]);
        // All full: the reason names the last one tried and the numbers.
        let none = |_: FnId| -> Result<Memory, String> {
            Ok(Memory {
                published: true,
                available: 0,
            })
        };
        let e = choose_staging(&t, id(&t, "a0"), id(&t, "a1"), None, 4096, &none).unwrap_err();
        assert!(matches!(e, NoStaging::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("0 B of P2P memory available"), "{e}");
        // The caller cannot tell: its reason is passed on.
        let unknown = |_: FnId| -> Result<Memory, String> { Err("cannot read it".into()) };
        let e = choose_staging(&t, id(&t, "a0"), id(&t, "a1"), None, 4096, &unknown).unwrap_err();
        assert!(e.to_string().ends_with("cannot read it"), "{e}");
    }

    #[test]
    fn via_is_held_to_the_kernel_verdict() {
        let t = machine(true);
        // b0 sits behind ACS redirect: it cannot reach pa by bus address,
        // and the Intel host bridge here is not whitelisted.
        let e = choose_staging(
            &t,
            id(&t, "a0"),
            id(&t, "b0"),
            Some(id(&t, "pa")),
            4096,
            &plenty,
        )
        .unwrap_err();
        let NoStaging::Unreachable {
            client,
            read_leg,
            write_leg,
            ..
        } = &e
        else {
            panic!("{e:?}");
        };
        assert_eq!(*client, t.function(id(&t, "b0")).bdf);
        assert_eq!(
            (*read_leg, *write_leg),
            (MapType::BusAddr, MapType::NotSupported)
        );
        assert!(e.to_string().contains("ACS redirect"), "{e}");
        // Without via: nothing reaches both, and every provider says why.
        let e = choose_staging(&t, id(&t, "a0"), id(&t, "b0"), None, 4096, &plenty).unwrap_err();
        let NoStaging::NoneReachable { why, .. } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(why.len(), 3);
    }

    #[test]
    fn via_must_be_a_provider() {
        let t = machine(false);
        let e = choose_staging(
            &t,
            id(&t, "a0"),
            id(&t, "a1"),
            Some(id(&t, "b0")),
            4096,
            &plenty,
        )
        .unwrap_err();
        assert!(matches!(e, NoStaging::NotAProvider { .. }), "{e:?}");
        assert!(e.to_string().contains("publishes no P2P memory"), "{e}");
    }

    #[test]
    fn a_machine_without_providers_says_so() {
        let raw = parse_description(
            "[cpu]\nvendor = \"intel\"\nfamily = 6\n[[host_bridge]]\nname = \"hb\"\n\
             [[device]]\nname = \"a\"\ntype = \"rc_endpoint\"\nparent = \"hb\"\nclass = \"nvme\"\n\
             [[device]]\nname = \"b\"\ntype = \"rc_endpoint\"\nparent = \"hb\"\nclass = \"nvme\"\n",
            "none",
        )
        .unwrap();
        let t = Topology::from_raw(raw, "none").unwrap();
        let e = choose_staging(&t, id(&t, "a"), id(&t, "b"), None, 4096, &plenty).unwrap_err();
        assert_eq!(e, NoStaging::NonePublished);
    }
}
