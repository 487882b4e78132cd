//! The path each copy and probe was observed to take (`--trace` in the
//! guest), held against the kernel's verdict of each pair.
//!
//! Two views of the same transfer are checked:
//!
//! * peerdma's own report: every leg `observed` (the trace was read), and
//!   agreeing with what peerdma decided;
//! * the kernel's event lines themselves (`traces/{copy,probe}-N.trace`,
//!   written by the guest through `PEERDMA_TRACE_RAW`), read again here
//!   and classified against the BARs of the guest's snapshot: every
//!   mapping into a BAR must be what the *kernel's* verdict for that
//!   (provider, device) pair gives — by bus address on a `bus_addr` pair,
//!   an IOVA or the untranslated address on a `thru_host_bridge` pair —
//!   and a pair the kernel does not support must show no mapping of the
//!   BAR at all (the kernel refused it, or the copy bounced through host
//!   memory).

use peerdma_linux::trace::{
    bar_windows, classify::classify_event, AddressMap, Class, EventKind, Formats, Parsed,
    Translation,
};
use peerdma_mem::{format_size, Bdf};
use peerdma_p2p::oracle::KernelVerdicts;
use peerdma_p2p::MapType;
use peerdma_pci::Topology;
use serde_json::Value;
use std::collections::BTreeMap;

/// One run's (a copy's or a probe's) trace, held against the kernel.
#[derive(Debug, Default)]
pub struct Traced {
    /// `copy 1` or `probe 2`.
    pub label: String,
    /// Each leg of the report: (leg, decided, observed, agrees).
    pub legs: Vec<(String, String, String, Option<bool>)>,
    /// The kernel's lines, classified: (class, the kernel's verdict for the
    /// pair or `host`) -> (mappings, bytes).
    pub mappings: BTreeMap<(Class, String), (u64, u64)>,
    /// Why the path was not observed (the report's own reason).
    pub unavailable: Option<String>,
    /// Why there was nothing to trace (peerdma refused before any I/O).
    pub untraced: Option<String>,
    pub problems: Vec<String>,
}

impl Traced {
    /// `read untranslated, write untranslated` from the report's legs.
    pub fn observed(&self) -> String {
        if let Some(why) = &self.unavailable {
            return format!("not observed ({why})");
        }
        if let Some(why) = &self.untraced {
            return format!("nothing to trace ({why})");
        }
        if self.legs.is_empty() {
            return "no leg".into();
        }
        self.legs
            .iter()
            .map(|(leg, _, o, _)| format!("{leg} {o}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The kernel's lines in a few words: `untranslated 16 MiB on
    /// bus_addr pairs, host 8 KiB`.
    pub fn mapped(&self) -> String {
        if self.mappings.is_empty() {
            return "no mapping traced".into();
        }
        self.mappings
            .iter()
            .map(|((c, v), (n, b))| {
                if v == "host" {
                    format!("{} {} in {n}", c.as_str(), format_size(*b))
                } else {
                    format!("{} {} in {n} on {v} pairs", c.as_str(), format_size(*b))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The report's trace objects: a copy's `trace`, a probe's per transfer.
fn report_traces(report: &Value) -> Vec<&Value> {
    if report["trace"].is_object() {
        return vec![&report["trace"]];
    }
    report["transfers"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| &t["trace"])
                .filter(|t| t.is_object())
                .collect()
        })
        .unwrap_or_default()
}

/// Hold one run against the kernel. `report` is peerdma's JSON (null when
/// it printed none, as for a refused copy); `raw` the kernel's lines;
/// `devices` the run's PCI functions; `snapshot` the guest's topology.
pub fn check(
    label: &str,
    report: &Value,
    raw: Option<&str>,
    devices: &[Bdf],
    snapshot: &Topology,
    kernel: &KernelVerdicts,
) -> Traced {
    let mut t = Traced {
        label: label.to_string(),
        ..Traced::default()
    };
    let mut translation: BTreeMap<String, Translation> = BTreeMap::new();
    let traces = report_traces(report);
    if !report.is_null() && traces.is_empty() {
        t.problems
            .push("the report has no trace (was it run with --trace?)".into());
    }
    for tr in &traces {
        if tr["status"] != "observed" {
            let why = tr["why"].as_str().unwrap_or("no reason given").to_string();
            t.problems.push(format!("the path was not observed: {why}"));
            t.unavailable = Some(why);
            continue;
        }
        if let Ok(m) =
            serde_json::from_value::<BTreeMap<String, Translation>>(tr["translation"].clone())
        {
            translation.extend(m);
        }
        if tr["state_unchanged"] != true {
            t.problems.push(format!(
                "the system's tracing state was not the same after the run: {}",
                tr["notes"]
            ));
        }
        for l in tr["legs"].as_array().into_iter().flatten() {
            let s = |k: &str| l[k].as_str().unwrap_or("?").to_string();
            let agrees = l["agrees"].as_bool();
            match agrees {
                Some(true) => {}
                Some(false) => t.problems.push(format!(
                    "the {} leg of {} was decided {} and observed {}: {}",
                    s("leg"),
                    s("device"),
                    s("decided"),
                    s("observed"),
                    s("text")
                )),
                None => t.problems.push(format!(
                    "the {} leg of {} (decided {}) was not observed: {}",
                    s("leg"),
                    s("device"),
                    s("decided"),
                    s("text")
                )),
            }
            t.legs.push((s("leg"), s("decided"), s("observed"), agrees));
        }
    }
    let Some(raw) = raw else {
        if report.is_null() {
            // Refused before any I/O (a --no-bounce copy no path serves):
            // no tracing session started, and there was nothing to trace.
            t.untraced = Some("refused before any DMA".into());
        } else {
            t.problems
                .push("no trace lines were kept (traces/*.trace)".into());
        }
        return t;
    };
    let parsed = Parsed::from_text(raw, &Formats::new());
    if parsed.unreadable > 0 {
        t.problems.push(format!(
            "{} trace line(s) could not be read: {}",
            parsed.unreadable,
            parsed.unreadable_examples.join("; ")
        ));
    }
    if parsed.lost > 0 {
        t.problems
            .push(format!("the trace lost {} event(s)", parsed.lost));
    }
    let map = AddressMap {
        bars: bar_windows(snapshot),
        ram: None,
        translation,
    };
    let names: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    for e in &parsed.events {
        if e.kind == EventKind::Unmap {
            continue;
        }
        if !names.contains(&e.device) {
            t.problems.push(format!(
                "a mapping of {} was traced, which is not a device of the run (the filter let it through)",
                e.device
            ));
            continue;
        }
        let Ok(dev) = e.device.parse::<Bdf>() else {
            continue;
        };
        // One event is one mapping: it counts once per class and verdict.
        let mut seen: Vec<(Class, String)> = Vec::new();
        for c in classify_event(&map, e) {
            let verdict = match c.target {
                None if c.class == Class::Refused => "refused".to_string(),
                None => "host".to_string(),
                Some(p) => match kernel.verdict(p, dev) {
                    Some((m, _)) => {
                        if !c.class.fits(m) || c.class == Class::Unknown {
                            t.problems.push(format!(
                                "{} mapped the BAR of {p} {} ({} at {}), but the kernel's verdict for the pair is {m}",
                                e.device,
                                c.class.describe(),
                                c.class.as_str(),
                                e.segments
                                    .first()
                                    .and_then(|s| s.dma)
                                    .map_or("?".to_string(), |d| format!("{:#x}", d.raw()))
                            ));
                        }
                        if m == MapType::NotSupported && c.class.is_p2p() {
                            t.problems.push(format!(
                                "{} mapped P2P memory of {p} although the kernel does not support the pair",
                                e.device
                            ));
                        }
                        m.to_string()
                    }
                    None => {
                        t.problems.push(format!(
                            "{} mapped the BAR of {p}, a pair the kernel gave no verdict for",
                            e.device
                        ));
                        "no verdict".to_string()
                    }
                },
            };
            let key = (c.class, verdict);
            let slot = t.mappings.entry(key.clone()).or_default();
            if !seen.contains(&key) {
                slot.0 += 1;
                seen.push(key);
            }
            slot.1 += c.bytes.unwrap_or(0);
        }
    }
    t
}

/// The `observed` column: the report's leg classes over a scenario's runs,
/// and how many legs agree.
pub fn summary(runs: &[&Traced]) -> String {
    if runs.is_empty() {
        return "-".into();
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    let (mut legs, mut good) = (0, 0);
    for r in runs {
        if r.unavailable.is_some() || r.untraced.is_some() {
            let k = if r.untraced.is_some() {
                "no DMA".to_string()
            } else {
                "not observed".to_string()
            };
            match counts.iter_mut().find(|(n, _)| *n == k) {
                Some((_, n)) => *n += 1,
                None => counts.push((k, 1)),
            }
            continue;
        }
        for (_, _, o, a) in &r.legs {
            legs += 1;
            if *a == Some(true) {
                good += 1;
            }
            match counts.iter_mut().find(|(n, _)| n == o) {
                Some((_, n)) => *n += 1,
                None => counts.push((o.clone(), 1)),
            }
        }
    }
    let clean = runs.iter().filter(|r| r.problems.is_empty()).count();
    format!(
        "{} ({good}/{legs} legs as decided, {clean}/{} runs as the kernel decides)",
        if counts.is_empty() {
            "no leg".to_string()
        } else {
            counts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        runs.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerdma_p2p::oracle::parse_verdicts;
    use peerdma_pci::Source;
    use serde_json::json;

    /// switch-nvme-cmb: 03:00.0 and 04:00.0 below one switch (bus_addr),
    /// the CMB of 03:00.0 at 0xfd000000, no IOMMU; 00:1f.2 (SATA) cannot
    /// reach it (not_supported).
    fn fixture() -> (Topology, KernelVerdicts) {
        let dir = crate::capture::fixtures_dir().join("switch-nvme-cmb");
        let topo = Source::Snapshot(dir.join("snapshot.json")).load().unwrap();
        let v = parse_verdicts(
            &std::fs::read_to_string(dir.join("verdicts")).unwrap(),
            "verdicts",
        )
        .unwrap();
        (topo, v)
    }

    fn bdfs(s: &[&str]) -> Vec<Bdf> {
        s.iter().map(|b| b.parse().unwrap()).collect()
    }

    fn report(translation: &str, agrees: bool) -> Value {
        json!({"trace": {
            "status": "observed",
            "state_unchanged": true,
            "translation": {"0000:03:00.0": translation, "0000:04:00.0": translation},
            "legs": [
                {"leg": "read", "device": "0000:03:00.0", "decided": "bus_addr", "observed": "untranslated", "agrees": true, "text": "t"},
                {"leg": "write", "device": "0000:04:00.0", "decided": "bus_addr", "observed": "untranslated", "agrees": agrees, "text": "t"},
            ],
        }})
    }

    const GOOD: &str = "\
  peerdma-7 [000] ..... 9.1: dma_map_sg: 0000:03:00.0 dir=FROM_DEVICE nents=2/2 ents=2/2 dma_addrs={0xfd000000,0xfd100000} sizes={0x100000,0x100000} phys_addrs={0xfd000000,0xfd100000} attrs=
  peerdma-7 [000] ..... 9.2: dma_map_page: 0000:03:00.0 dir=FROM_DEVICE dma_addr=3a000000 size=4096 phys_addr=3a000000 attrs=
  peerdma-7 [001] ..... 9.3: dma_map_sg: 0000:04:00.0 dir=TO_DEVICE nents=1/1 ents=1/1 dma_addrs={0xfd000000} sizes={0x200000} phys_addrs={0xfd000000} attrs=
  peerdma-7 [001] ..... 9.4: dma_unmap_sg: 0000:04:00.0 dir=TO_DEVICE phys_addrs={0xfd000000} attrs=
";

    #[test]
    fn a_bus_addr_pair_mapped_at_the_bus_address_agrees() {
        let (topo, k) = fixture();
        let t = check(
            "copy 1",
            &report("no_iommu", true),
            Some(GOOD),
            &bdfs(&["0000:03:00.0", "0000:04:00.0"]),
            &topo,
            &k,
        );
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.observed(), "read untranslated, write untranslated");
        assert_eq!(
            t.mapped(),
            "untranslated 4 MiB in 2 on bus_addr pairs, host 4 KiB in 1"
        );
        assert_eq!(
            summary(&[&t]),
            "untranslated 2 (2/2 legs as decided, 1/1 runs as the kernel decides)"
        );
    }

    #[test]
    fn what_the_kernel_would_not_do_is_a_problem() {
        let (topo, k) = fixture();
        let devs = bdfs(&["0000:03:00.0", "0000:04:00.0"]);
        // Another DMA address for the BAR where nothing translates.
        let iova = GOOD.replace(
            "dma_addrs={0xfd000000} sizes={0x200000}",
            "dma_addrs={0xfff00000} sizes={0x200000}",
        );
        let t = check(
            "copy 1",
            &report("no_iommu", true),
            Some(&iova),
            &devs,
            &topo,
            &k,
        );
        assert!(
            t.problems.iter().any(
                |p| p.contains("0000:04:00.0 mapped the BAR of 0000:03:00.0")
                    && p.contains("bus_addr")
            ),
            "{:?}",
            t.problems
        );
        // Through an IOMMU, an IOVA is the host bridge's way: not bus_addr.
        let t = check(
            "copy 1",
            &report("translated", true),
            Some(&iova),
            &devs,
            &topo,
            &k,
        );
        assert!(
            t.problems.iter().any(|p| p.contains("by IOVA")),
            "{:?}",
            t.problems
        );
        // A device the kernel does not let reach the BAR maps it anyway.
        let sata = format!("{GOOD}  k-1 [000] ..... 9.5: dma_map_page: 0000:00:1f.2 dir=TO_DEVICE dma_addr=fd300000 size=4096 phys_addr=fd300000 attrs=\n");
        let t = check(
            "probe 1",
            &report("no_iommu", true),
            Some(&sata),
            &bdfs(&["0000:03:00.0", "0000:04:00.0", "0000:00:1f.2"]),
            &topo,
            &k,
        );
        assert!(
            t.problems
                .iter()
                .any(|p| p.contains("does not support the pair")),
            "{:?}",
            t.problems
        );
        // ... or is not a device of the run at all.
        let t = check(
            "copy 1",
            &report("no_iommu", true),
            Some(&sata),
            &devs,
            &topo,
            &k,
        );
        assert!(
            t.problems
                .iter()
                .any(|p| p.contains("not a device of the run")),
            "{:?}",
            t.problems
        );
        // peerdma's own report disagreeing, or not observing.
        let t = check(
            "copy 1",
            &report("no_iommu", false),
            Some(GOOD),
            &devs,
            &topo,
            &k,
        );
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(t.problems[0].contains("the write leg of 0000:04:00.0 was decided bus_addr"));
        let none = json!({"trace": {"status": "unavailable", "why": "no tracefs"}});
        let t = check("copy 1", &none, Some(""), &devs, &topo, &k);
        assert_eq!(t.observed(), "not observed (no tracefs)");
        assert!(t.problems[0].contains("not observed: no tracefs"));
        // Lines missing, or unreadable.
        let t = check("copy 1", &report("no_iommu", true), None, &devs, &topo, &k);
        assert!(t.problems[0].contains("no trace lines"), "{:?}", t.problems);
        let t = check(
            "copy 1",
            &report("no_iommu", true),
            Some("  k-1 [000] ..... 9.5: dma_map_page: 0000:03:00.0 dir=UP dma_addr=1 size=1 phys_addr=1 attrs=\n"),
            &devs,
            &topo,
            &k,
        );
        assert!(
            t.problems[0].contains("could not be read"),
            "{:?}",
            t.problems
        );
        // Refused before any I/O: no report, no session, nothing to trace.
        let t = check("copy 3", &Value::Null, None, &devs, &topo, &k);
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.observed(), "nothing to trace (refused before any DMA)");
        assert_eq!(
            summary(&[&t]),
            "no DMA 1 (0/0 legs as decided, 1/1 runs as the kernel decides)"
        );
        // ... but where the lines exist they are held all the same.
        let t = check("copy 3", &Value::Null, Some(&iova), &devs, &topo, &k);
        assert!(!t.problems.is_empty());
        // A report without a trace (not run with --trace).
        let t = check(
            "copy 1",
            &json!({"path": "p2p_bus_addr"}),
            Some(GOOD),
            &devs,
            &topo,
            &k,
        );
        assert!(t.problems[0].contains("has no trace"), "{:?}", t.problems);
    }
}
