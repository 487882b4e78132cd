//! The kernel as oracle: its own P2PDMA verdicts, and their comparison with
//! peerdma's.
//!
//! The oracle kernel (kernel/README.md) prints, in
//! `/sys/kernel/debug/pci_p2pdma/verdicts`, what `calc_map_type_and_dist()`
//! returns for every ordered pair of PCI functions, and per function the
//! facts it decides on (ACS redirect, host bridge device, whitelist).
//! Reading `verdicts_verbose` makes it log its `pci=disable_acs_redir=`
//! advice, which [`parse_acs_warnings`] picks out of the kernel log.
//! [`compare`] holds a [`Topology`] (read from a snapshot or a `--root`
//! tree of the same machine) against all of it.

use crate::{Error, Result};
use peerdma_mem::Bdf;
use peerdma_p2p::{calc_map_type_and_dist, explain, host_bridge_whitelisted, matrix, MapType};
use peerdma_pci::Topology;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Where the oracle kernel prints its verdicts.
pub const VERDICTS_PATH: &str = "sys/kernel/debug/pci_p2pdma/verdicts";

/// A `dev` line: the per-function facts the kernel decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KernelDev {
    pub bdf: Bdf,
    /// `pci_bridge_has_acs_redir()`: RR, CR or EC set in ACS control.
    pub acs_redir: bool,
    /// `pci_host_bridge_dev()` of its host bridge, if any.
    pub host_bridge: Option<Bdf>,
    /// `__host_bridge_whitelist(host, true)` and `(host, false)`.
    pub wl_same: bool,
    pub wl_cross: bool,
}

/// A `pair` line: `calc_map_type_and_dist(provider, client)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KernelPair {
    pub provider: Bdf,
    pub client: Bdf,
    pub map_type: MapType,
    /// The distance the kernel stores, also when not supported.
    pub distance: u32,
}

/// The whole verdicts file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelVerdicts {
    pub cpu_supports_p2pdma: Option<bool>,
    pub devices: Vec<KernelDev>,
    pub pairs: Vec<KernelPair>,
}

impl KernelVerdicts {
    /// The kernel's verdict for one ordered pair.
    pub fn pair(&self, provider: Bdf, client: Bdf) -> Option<&KernelPair> {
        self.pairs
            .iter()
            .find(|p| p.provider == provider && p.client == client)
    }
}

fn bool01(s: &str) -> Option<bool> {
    match s {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

/// Parse the verdicts file (format in kernel/README.md); `origin` names it
/// in errors.
pub fn parse_verdicts(text: &str, origin: &str) -> Result<KernelVerdicts> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l.trim() == "# peerdma-oracle v1" => {}
        other => {
            return Err(Error::Malformed {
                origin: format!("{origin}:1"),
                detail: format!(
                    "expected \"# peerdma-oracle v1\", found {:?}",
                    other.map(|l| l.1).unwrap_or("")
                ),
            })
        }
    }
    let mut v = KernelVerdicts::default();
    for (i, line) in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || Error::Malformed {
            origin: format!("{origin}:{}", i + 1),
            detail: format!("malformed line {line:?}"),
        };
        let bdf = |s: &str| s.parse::<Bdf>().map_err(|_| bad());
        match f.as_slice() {
            [] => {}
            ["#", "cpu_supports_p2pdma", b] => {
                v.cpu_supports_p2pdma = Some(bool01(b).ok_or_else(bad)?)
            }
            ["#", ..] => {}
            ["dev", d, "acs_redir", a, "host_bridge", h, "wl_same", s, "wl_cross", c] => {
                v.devices.push(KernelDev {
                    bdf: bdf(d)?,
                    acs_redir: bool01(a).ok_or_else(bad)?,
                    host_bridge: if *h == "-" { None } else { Some(bdf(h)?) },
                    wl_same: bool01(s).ok_or_else(bad)?,
                    wl_cross: bool01(c).ok_or_else(bad)?,
                })
            }
            ["pair", p, c, m, d] => {
                let map_type = MapType::from_name(m)
                    .filter(|m| *m != MapType::None)
                    .ok_or_else(bad)?;
                v.pairs.push(KernelPair {
                    provider: bdf(p)?,
                    client: bdf(c)?,
                    map_type,
                    distance: d.parse().map_err(|_| bad())?,
                })
            }
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

/// One `pci=disable_acs_redir=` advice the kernel logged for a pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AcsWarning {
    pub provider: Bdf,
    pub client: Bdf,
    /// The list after `pci=disable_acs_redir=` (`0000:00:02.0;0000:01:00.0`).
    pub list: String,
}

const SET_BETWEEN: &str = ": ACS redirect is set between the client and provider (";
const TO_DISABLE: &str =
    ": to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=";

/// The device a kernel log line is about: the word before `marker`
/// (`nvme 0000:01:00.0: ...` -> `0000:01:00.0`).
fn subject(line: &str, marker: &str) -> Option<(Bdf, String)> {
    let at = line.find(marker)?;
    let dev = line[..at].split_whitespace().last()?.parse().ok()?;
    Some((dev, line[at + marker.len()..].trim().to_string()))
}

/// The kernel log lines of the verbose pass that carry ACS advice (both
/// lines of each warning, timestamps removed): what the fixtures keep as
/// `acs-warnings.txt`.
pub fn acs_warning_lines(dmesg: &str) -> String {
    let mut out = String::new();
    for line in dmesg.lines() {
        if line.contains(SET_BETWEEN) || line.contains(TO_DISABLE) {
            let l = match line.trim_start().strip_prefix('[') {
                Some(rest) => rest.split_once(']').map_or(line, |(_, r)| r).trim(),
                None => line.trim(),
            };
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The kernel's ACS advice per pair, from kernel log text: a
/// "redirect is set between the client and provider (P)" line from client
/// C followed by C's "pci=disable_acs_redir=LIST" line. Repeats collapse.
pub fn parse_acs_warnings(text: &str) -> Vec<AcsWarning> {
    let mut out: Vec<AcsWarning> = Vec::new();
    let mut pending: Option<(Bdf, Bdf)> = None;
    for line in text.lines() {
        if let Some((client, rest)) = subject(line, SET_BETWEEN) {
            let provider = rest.trim_end_matches(')').parse().ok();
            pending = provider.map(|p| (p, client));
        } else if let Some((client, list)) = subject(line, TO_DISABLE) {
            if let Some((provider, c)) = pending.take().filter(|(_, c)| *c == client) {
                let w = AcsWarning {
                    provider,
                    client: c,
                    list,
                };
                if !out.contains(&w) {
                    out.push(w);
                }
            }
        }
    }
    out
}

/// A pair on which peerdma and the kernel differ.
#[derive(Clone, Debug, Serialize)]
pub struct PairDisagreement {
    pub provider: Bdf,
    pub client: Bdf,
    /// `map_type distance` as the kernel printed it.
    pub kernel: String,
    /// `calc_map_type_and_dist` and `matrix()`, same form (`-` when a
    /// function is missing from peerdma's model).
    pub peerdma: String,
    pub peerdma_matrix: String,
    /// The path and reasons as `peerdma check` shows them.
    pub explanation: String,
}

/// The result of holding one capture against the kernel.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// What peerdma read (`snapshot.json`, `root/`).
    pub origin: String,
    pub functions: usize,
    /// Functions the kernel lists but peerdma does not, and the reverse.
    pub missing: Vec<Bdf>,
    pub extra: Vec<Bdf>,
    pub pairs_compared: usize,
    pub pairs_agreeing: usize,
    pub disagreements: Vec<PairDisagreement>,
    /// `dev` lines (ACS redirect, host bridge device, whitelist) that differ.
    pub device_mismatches: Vec<String>,
    /// `pci=disable_acs_redir=` advice that differs (only when the kernel
    /// log was given).
    pub acs_mismatches: Vec<String>,
    pub acs_compared: Option<usize>,
    pub cpu_mismatch: Option<String>,
}

impl Comparison {
    /// Everything agrees.
    pub fn ok(&self) -> bool {
        self.missing.is_empty()
            && self.extra.is_empty()
            && self.pairs_agreeing == self.pairs_compared
            && self.disagreements.is_empty()
            && self.device_mismatches.is_empty()
            && self.acs_mismatches.is_empty()
            && self.cpu_mismatch.is_none()
    }

    /// One line: `root/: 10 functions, 90/90 pairs agree, ...`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} functions, {}/{} pairs agree",
            self.origin, self.functions, self.pairs_agreeing, self.pairs_compared
        );
        if let Some(n) = self.acs_compared {
            s.push_str(&format!(
                ", {}/{n} disable_acs_redir lists agree",
                n - self.acs_mismatches.len().min(n)
            ));
        }
        for (what, n) in [
            ("missing functions", self.missing.len()),
            ("extra functions", self.extra.len()),
            ("dev line mismatches", self.device_mismatches.len()),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        if self.cpu_mismatch.is_some() {
            s.push_str(", cpu_supports_p2pdma differs");
        }
        s
    }

    /// Every problem, one paragraph each.
    pub fn render_problems(&self) -> String {
        let mut s = String::new();
        if !self.missing.is_empty() {
            s.push_str(&format!(
                "{}: functions the kernel has but peerdma does not: {}\n",
                self.origin,
                join(&self.missing)
            ));
        }
        if !self.extra.is_empty() {
            s.push_str(&format!(
                "{}: functions peerdma has but the kernel does not: {}\n",
                self.origin,
                join(&self.extra)
            ));
        }
        if let Some(m) = &self.cpu_mismatch {
            s.push_str(&format!("{}: {m}\n", self.origin));
        }
        for m in &self.device_mismatches {
            s.push_str(&format!("{}: {m}\n", self.origin));
        }
        for d in &self.disagreements {
            s.push_str(&format!(
                "{}: DISAGREE {} -> {}: kernel {}, peerdma {} (matrix {})\n",
                self.origin, d.provider, d.client, d.kernel, d.peerdma, d.peerdma_matrix
            ));
            for l in d.explanation.lines() {
                s.push_str(&format!("    {l}\n"));
            }
        }
        for m in &self.acs_mismatches {
            s.push_str(&format!("{}: {m}\n", self.origin));
        }
        s
    }
}

fn join(v: &[Bdf]) -> String {
    v.iter().map(Bdf::to_string).collect::<Vec<_>>().join(", ")
}

fn verdict_text(map: MapType, dist: u32) -> String {
    format!("{} {dist}", map.as_str())
}

/// Hold `topo` against the kernel's verdicts (and, when given, the ACS
/// advice from its log): function set, every pair (through
/// `calc_map_type_and_dist` and `matrix()`), every `dev` line, the
/// `cpu_supports_p2pdma` line, and the `pci=disable_acs_redir=` lists.
pub fn compare(
    topo: &Topology,
    kernel: &KernelVerdicts,
    acs: Option<&[AcsWarning]>,
    origin: &str,
) -> Comparison {
    let ours: BTreeSet<Bdf> = topo.functions().iter().map(|f| f.bdf).collect();
    let theirs: BTreeSet<Bdf> = kernel.devices.iter().map(|d| d.bdf).collect();
    let mut c = Comparison {
        origin: origin.to_string(),
        functions: topo.len(),
        missing: theirs.difference(&ours).copied().collect(),
        extra: ours.difference(&theirs).copied().collect(),
        pairs_compared: 0,
        pairs_agreeing: 0,
        disagreements: Vec::new(),
        device_mismatches: Vec::new(),
        acs_mismatches: Vec::new(),
        acs_compared: None,
        cpu_mismatch: None,
    };
    if let Some(k) = kernel.cpu_supports_p2pdma {
        let p = topo.cpu().supports_p2pdma();
        if k != p {
            c.cpu_mismatch = Some(format!(
                "cpu_supports_p2pdma: kernel {}, peerdma {} (cpu {} family {:#x})",
                u8::from(k),
                u8::from(p),
                topo.cpu().vendor_id,
                topo.cpu().family
            ));
        }
    }

    for d in &kernel.devices {
        let Some(id) = topo.find(d.bdf) else { continue };
        let f = topo.function(id);
        let hb_dev = topo
            .host_bridge_device(f.host_bridge)
            .map(|h| topo.function(h).bdf);
        let acs = f.acs.redirects();
        let wl_same = host_bridge_whitelisted(topo, f.host_bridge, true);
        let wl_cross = host_bridge_whitelisted(topo, f.host_bridge, false);
        let mut diffs = Vec::new();
        if acs != Some(d.acs_redir) {
            diffs.push(format!(
                "acs_redir kernel {} peerdma {}",
                u8::from(d.acs_redir),
                acs.map_or("unknown".into(), |b| u8::from(b).to_string())
            ));
        }
        if hb_dev != d.host_bridge {
            let show = |b: Option<Bdf>| b.map_or("-".into(), |b| b.to_string());
            diffs.push(format!(
                "host_bridge kernel {} peerdma {}",
                show(d.host_bridge),
                show(hb_dev)
            ));
        }
        if wl_same != d.wl_same {
            diffs.push(format!(
                "wl_same kernel {} peerdma {}",
                u8::from(d.wl_same),
                u8::from(wl_same)
            ));
        }
        if wl_cross != d.wl_cross {
            diffs.push(format!(
                "wl_cross kernel {} peerdma {}",
                u8::from(d.wl_cross),
                u8::from(wl_cross)
            ));
        }
        if !diffs.is_empty() {
            c.device_mismatches
                .push(format!("dev {}: {}", d.bdf, diffs.join(", ")));
        }
    }

    let m = matrix(topo);
    for k in &kernel.pairs {
        c.pairs_compared += 1;
        let (Some(p), Some(cl)) = (topo.find(k.provider), topo.find(k.client)) else {
            c.disagreements.push(PairDisagreement {
                provider: k.provider,
                client: k.client,
                kernel: verdict_text(k.map_type, k.distance),
                peerdma: "-".into(),
                peerdma_matrix: "-".into(),
                explanation: "a function of this pair is missing from peerdma's model".into(),
            });
            continue;
        };
        let v = calc_map_type_and_dist(topo, p, cl);
        let (mm, md) = m.get(p, cl);
        if (v.map_type, v.raw_distance) == (k.map_type, k.distance)
            && (mm, md) == (k.map_type, k.distance)
        {
            c.pairs_agreeing += 1;
        } else {
            c.disagreements.push(PairDisagreement {
                provider: k.provider,
                client: k.client,
                kernel: verdict_text(k.map_type, k.distance),
                peerdma: verdict_text(v.map_type, v.raw_distance),
                peerdma_matrix: verdict_text(mm, md),
                explanation: explain(topo, p, cl).render(),
            });
        }
    }

    if let Some(warnings) = acs {
        let kernel_acs: BTreeMap<(Bdf, Bdf), &str> = warnings
            .iter()
            .map(|w| ((w.provider, w.client), w.list.as_str()))
            .collect();
        let mut ours_acs: BTreeMap<(Bdf, Bdf), String> = BTreeMap::new();
        for a in topo.ids() {
            for b in topo.ids().filter(|&b| b != a) {
                if let Some(s) = explain(topo, a, b).disable_acs_redir {
                    let list = s
                        .strip_prefix("pci=disable_acs_redir=")
                        .unwrap_or(&s)
                        .to_string();
                    ours_acs.insert((topo.function(a).bdf, topo.function(b).bdf), list);
                }
            }
        }
        let keys: BTreeSet<(Bdf, Bdf)> = kernel_acs
            .keys()
            .copied()
            .chain(ours_acs.keys().copied())
            .collect();
        c.acs_compared = Some(keys.len());
        for (p, cl) in keys {
            let k = kernel_acs.get(&(p, cl)).copied();
            let o = ours_acs.get(&(p, cl)).map(String::as_str);
            if k != o {
                c.acs_mismatches.push(format!(
                    "disable_acs_redir {p} -> {cl}: kernel {}, peerdma {}",
                    k.unwrap_or("(none)"),
                    o.unwrap_or("(none)")
                ));
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERDICTS: &str = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
        dev 0000:00:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
        dev 0000:20:00.0 acs_redir 1 host_bridge - wl_same 1 wl_cross 0\n\
        pair 0000:00:00.0 0000:20:00.0 not_supported 3\n\
        pair 0000:20:00.0 0000:00:00.0 thru_host_bridge 3\n";

    #[test]
    fn parses_the_verdicts_file() {
        let v = parse_verdicts(VERDICTS, "v").unwrap();
        assert_eq!(v.cpu_supports_p2pdma, Some(false));
        assert_eq!(v.devices.len(), 2);
        assert_eq!(v.devices[1].host_bridge, None);
        assert!(v.devices[1].acs_redir && v.devices[1].wl_same && !v.devices[1].wl_cross);
        let b = |s: &str| s.parse::<Bdf>().unwrap();
        let p = v.pair(b("0000:20:00.0"), b("0000:00:00.0")).unwrap();
        assert_eq!((p.map_type, p.distance), (MapType::ThruHostBridge, 3));
    }

    #[test]
    fn malformed_verdicts_name_the_line() {
        let e = parse_verdicts("hello\n", "f").unwrap_err();
        assert!(e.to_string().starts_with("f:1: expected"), "{e}");
        let text = "# peerdma-oracle v1\npair 0000:00:00.0 0000:00:01.0 maybe 2\n";
        let e = parse_verdicts(text, "f").unwrap_err();
        assert!(e.to_string().starts_with("f:2: malformed line"), "{e}");
        let text = "# peerdma-oracle v1\ndev 0000:00:00.0 acs_redir 2 host_bridge - wl_same 0 wl_cross 0\n";
        assert!(parse_verdicts(text, "f").is_err());
    }

    #[test]
    fn acs_warnings_are_paired_with_their_provider() {
        let dmesg = "[    1.0] pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0\n\
            [    1.1] nvme 0000:01:00.0: ACS redirect is set between the client and provider (0000:01:00.1)\n\
            [    1.1] nvme 0000:01:00.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0\n\
            [    1.2] pcieport 0000:00:02.0: ACS redirect is set between the client and provider (0000:01:00.0)\n\
            [    1.2] pcieport 0000:00:02.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0;0000:01:00.0\n\
            [    1.3] nvme 0000:01:00.0: ACS redirect is set between the client and provider (0000:01:00.1)\n\
            [    1.3] nvme 0000:01:00.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0\n";
        let lines = acs_warning_lines(dmesg);
        assert_eq!(lines.lines().count(), 6);
        assert!(
            lines.starts_with("nvme 0000:01:00.0: ACS redirect"),
            "{lines}"
        );
        let w = parse_acs_warnings(&lines);
        assert_eq!(w, parse_acs_warnings(dmesg));
        assert_eq!(w.len(), 2, "repeats collapse: {w:?}");
        assert_eq!(w[0].provider.to_string(), "0000:01:00.1");
        assert_eq!(w[0].client.to_string(), "0000:01:00.0");
        assert_eq!(w[1].list, "0000:00:02.0;0000:01:00.0");
    }

    #[test]
    fn compare_counts_and_reports_disagreements() {
        let topo = peerdma_pci::Source::Preset("dual-xeon".into())
            .load()
            .unwrap();
        // Build the kernel's file from peerdma's own answers, then break one pair.
        let mut text = format!(
            "# peerdma-oracle v1\n# cpu_supports_p2pdma {}\n",
            u8::from(topo.cpu().supports_p2pdma())
        );
        for f in topo.functions() {
            let hb = topo
                .host_bridge_device(f.host_bridge)
                .map_or("-".to_string(), |h| topo.function(h).bdf.to_string());
            text += &format!(
                "dev {} acs_redir {} host_bridge {hb} wl_same {} wl_cross {}\n",
                f.bdf,
                u8::from(f.acs.redirects().unwrap_or(false)),
                u8::from(host_bridge_whitelisted(&topo, f.host_bridge, true)),
                u8::from(host_bridge_whitelisted(&topo, f.host_bridge, false)),
            );
        }
        let ids: Vec<_> = topo.ids().collect();
        for &a in &ids {
            for &b in ids.iter().filter(|&&b| b != a) {
                let v = calc_map_type_and_dist(&topo, a, b);
                text += &format!(
                    "pair {} {} {} {}\n",
                    topo.function(a).bdf,
                    topo.function(b).bdf,
                    v.map_type.as_str(),
                    v.raw_distance
                );
            }
        }
        let k = parse_verdicts(&text, "gen").unwrap();
        let c = compare(&topo, &k, None, "preset");
        let n = ids.len() * (ids.len() - 1);
        assert!(c.ok(), "{}", c.render_problems());
        assert_eq!((c.pairs_compared, c.pairs_agreeing), (n, n));

        let mut broken = k.clone();
        broken.pairs[0].distance += 1;
        broken.devices[0].wl_same = !broken.devices[0].wl_same;
        broken.devices.pop();
        let c = compare(&topo, &broken, None, "preset");
        assert!(!c.ok());
        assert_eq!(c.pairs_agreeing, n - 1);
        assert_eq!(c.extra.len(), 1);
        assert_eq!(c.device_mismatches.len(), 1);
        let text = c.render_problems();
        assert!(text.contains("DISAGREE"), "{text}");
        assert!(c.summary().contains(&format!("{}/{n} pairs agree", n - 1)));
    }
}
