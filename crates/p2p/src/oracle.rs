//! The kernel as oracle: its own P2PDMA verdicts, read from the files the
//! oracle kernel writes, and held against peerdma's.
//!
//! The oracle kernel (kernel/README.md) prints, in
//! `/sys/kernel/debug/pci_p2pdma/verdicts`, what `calc_map_type_and_dist()`
//! returns for every ordered pair of PCI functions, and per function the
//! facts it decides on (ACS redirect, host bridge device, whitelist).
//! Reading `verdicts_verbose` makes it log its `pci=disable_acs_redir=`
//! advice; [`acs_warning_lines`] picks those lines out of the kernel log
//! (the fixtures keep them as `acs-warnings.txt`) and
//! [`parse_acs_warnings`] reads them back. [`compare`] holds a [`Topology`]
//! (read from a snapshot or a `--root` tree of the same machine) against
//! all of it.
//!
//! This is the one reader of these formats: the fixture tests, `cargo xtask`
//! and `peerdma probe` all use it, with one strictness. Every line is
//! understood or the file is refused: a malformed line, a repeated `dev` or
//! `pair` line, or half of a two-line ACS warning is a [`ParseError`] that
//! names the file and the line.

use crate::{calc_map_type_and_dist, explain, host_bridge_whitelisted, matrix, MapType};
use peerdma_mem::Bdf;
use peerdma_pci::Topology;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::acs_boot::{FixPrediction, ProposedFix};

/// Where the oracle kernel prints its verdicts, below the root of the
/// file system (`/` on a live machine).
pub const VERDICTS_PATH: &str = "sys/kernel/debug/pci_p2pdma/verdicts";

/// The first line of a verdicts file.
pub const HEADER: &str = "# peerdma-oracle v1";

/// A line of an oracle file that cannot be used, with where it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {kind}")]
pub struct ParseError {
    /// The file as the caller named it.
    pub file: String,
    /// 1-based.
    pub line: usize,
    pub kind: ParseErrorKind,
}

/// What is wrong with the line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The first line is not [`HEADER`].
    #[error("not a peerdma-oracle verdicts file: expected {HEADER:?}, found {found:?}")]
    Header { found: String },
    /// A line that does not have the form the kernel prints.
    #[error("malformed line {text:?}: {why}")]
    Malformed { text: String, why: String },
    /// A second line for the same function, pair or fact.
    #[error("{text:?} repeats what line {first} says")]
    Repeated { text: String, first: usize },
    /// The file ends without a `pair` line for some ordered pair of the
    /// functions its `dev` lines list (the kernel prints every one).
    #[error("the file ends without a `pair` line for {missing} ordered pair(s) of its functions, the first {provider} -> {client}")]
    Incomplete {
        missing: usize,
        provider: Bdf,
        client: Bdf,
    },
    /// One line of the kernel's two-line ACS warning without the other.
    #[error("orphan line {text:?}: {why}")]
    Orphan { text: String, why: String },
}

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
    /// Never [`MapType::None`]: the kernel prints only the other three.
    pub map_type: MapType,
    /// The distance the kernel stores, also when not supported.
    pub distance: u32,
}

/// The whole verdicts file.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelVerdicts {
    pub cpu_supports_p2pdma: Option<bool>,
    pub devices: Vec<KernelDev>,
    /// One per ordered pair of distinct functions, in the file's order.
    pub pairs: Vec<KernelPair>,
}

impl KernelVerdicts {
    /// The kernel's line for one ordered pair of distinct functions.
    pub fn pair(&self, provider: Bdf, client: Bdf) -> Option<&KernelPair> {
        self.pairs
            .iter()
            .find(|p| p.provider == provider && p.client == client)
    }

    /// The kernel's verdict (map type, distance) for a provider and a
    /// client. The file lists distinct pairs only; a function reaches its
    /// own memory by bus address at distance 0, as
    /// `calc_map_type_and_dist()` says.
    pub fn verdict(&self, provider: Bdf, client: Bdf) -> Option<(MapType, u32)> {
        if provider == client {
            return Some((MapType::BusAddr, 0));
        }
        self.pair(provider, client)
            .map(|p| (p.map_type, p.distance))
    }

    /// How many pairs have each map type, by name (`bus_addr`, ...).
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for p in &self.pairs {
            *counts.entry(p.map_type.as_str()).or_insert(0) += 1;
        }
        counts
    }
}

/// Builds the errors of one file.
struct At<'a> {
    file: &'a str,
}

impl At<'_> {
    fn err(&self, line: usize, kind: ParseErrorKind) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line,
            kind,
        }
    }

    fn malformed(&self, line: usize, text: &str, why: impl Into<String>) -> ParseError {
        self.err(
            line,
            ParseErrorKind::Malformed {
                text: text.to_string(),
                why: why.into(),
            },
        )
    }
}

fn bool01(s: &str) -> Result<bool, String> {
    match s {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("expected 0 or 1, found {s:?}")),
    }
}

fn bdf(s: &str) -> Result<Bdf, String> {
    s.parse::<Bdf>().map_err(|e| e.to_string())
}

const DEV_FORM: &str =
    "expected `dev BDF acs_redir 0|1 host_bridge BDF|- wl_same 0|1 wl_cross 0|1`";
const PAIR_FORM: &str =
    "expected `pair PROVIDER CLIENT not_supported|bus_addr|thru_host_bridge DISTANCE`";

/// Parse the verdicts file (format in kernel/README.md); `file` names it in
/// errors. Blank lines and `#` comments are allowed; every other line must
/// be a well-formed `dev` or `pair` line: each function once, then each
/// ordered pair of distinct functions once (a pair only of functions that
/// have a `dev` line, and every such pair: a truncated file is refused).
pub fn parse_verdicts(text: &str, file: &str) -> Result<KernelVerdicts, ParseError> {
    let at = At { file };
    let mut lines = text.lines().zip(1..);
    match lines.next() {
        Some((l, _)) if l.trim() == HEADER => {}
        other => {
            return Err(at.err(
                1,
                ParseErrorKind::Header {
                    found: other.map_or("", |l| l.0).to_string(),
                },
            ))
        }
    }
    let mut v = KernelVerdicts::default();
    let mut cpu_line = None;
    let mut dev_lines: BTreeMap<Bdf, usize> = BTreeMap::new();
    let mut pair_lines: BTreeMap<(Bdf, Bdf), usize> = BTreeMap::new();
    let mut last = 1;
    for (line, n) in lines {
        last = n;
        let bad = |why: String| at.malformed(n, line, why);
        let repeated = |first: usize| {
            at.err(
                n,
                ParseErrorKind::Repeated {
                    text: line.to_string(),
                    first,
                },
            )
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["#", "cpu_supports_p2pdma", b] => {
                if let Some(first) = cpu_line {
                    return Err(repeated(first));
                }
                v.cpu_supports_p2pdma = Some(bool01(b).map_err(bad)?);
                cpu_line = Some(n);
            }
            ["#", "cpu_supports_p2pdma", ..] => {
                return Err(bad("expected `# cpu_supports_p2pdma 0|1`".into()))
            }
            [c, ..] if c.starts_with('#') => {}
            ["dev", d, "acs_redir", a, "host_bridge", h, "wl_same", s, "wl_cross", c] => {
                let dev = KernelDev {
                    bdf: bdf(d).map_err(bad)?,
                    acs_redir: bool01(a).map_err(bad)?,
                    host_bridge: match *h {
                        "-" => None,
                        h => Some(bdf(h).map_err(bad)?),
                    },
                    wl_same: bool01(s).map_err(bad)?,
                    wl_cross: bool01(c).map_err(bad)?,
                };
                if let Some(&first) = dev_lines.get(&dev.bdf) {
                    return Err(repeated(first));
                }
                dev_lines.insert(dev.bdf, n);
                v.devices.push(dev);
            }
            ["dev", ..] => return Err(bad(DEV_FORM.into())),
            ["pair", p, c, m, d] => {
                let map_type = MapType::from_name(m)
                    .filter(|m| *m != MapType::None)
                    .ok_or_else(|| {
                        bad(format!(
                            "unknown map type {m:?} (expected not_supported, bus_addr or thru_host_bridge)"
                        ))
                    })?;
                let pair = KernelPair {
                    provider: bdf(p).map_err(bad)?,
                    client: bdf(c).map_err(bad)?,
                    map_type,
                    distance: d.parse().map_err(|_| bad(format!("bad distance {d:?}")))?,
                };
                if pair.provider == pair.client {
                    return Err(bad(
                        "a pair of a function with itself (the kernel lists distinct pairs)".into(),
                    ));
                }
                for b in [pair.provider, pair.client] {
                    if !dev_lines.contains_key(&b) {
                        return Err(bad(format!("{b} has no `dev` line before it")));
                    }
                }
                let key = (pair.provider, pair.client);
                if let Some(&first) = pair_lines.get(&key) {
                    return Err(repeated(first));
                }
                pair_lines.insert(key, n);
                v.pairs.push(pair);
            }
            ["pair", ..] => return Err(bad(PAIR_FORM.into())),
            _ => {
                return Err(bad(
                    "expected a `dev` or `pair` line, a `#` comment or a blank line".into(),
                ))
            }
        }
    }
    // Every pair line names two distinct functions with `dev` lines, once:
    // fewer lines than such pairs means some are missing.
    let total = dev_lines.len() * dev_lines.len().saturating_sub(1);
    let first_missing = (pair_lines.len() < total)
        .then(|| {
            dev_lines
                .keys()
                .flat_map(|&p| dev_lines.keys().map(move |&c| (p, c)))
                .find(|&(p, c)| p != c && !pair_lines.contains_key(&(p, c)))
        })
        .flatten();
    if let Some((provider, client)) = first_missing {
        return Err(at.err(
            last,
            ParseErrorKind::Incomplete {
                missing: total - pair_lines.len(),
                provider,
                client,
            },
        ));
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

/// The kernel log lines of the verbose pass that carry ACS advice (both
/// lines of each warning, timestamps removed): what the fixtures keep as
/// `acs-warnings.txt`, and what [`parse_acs_warnings`] reads.
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

/// One line of `acs-warnings.txt`.
enum AcsLine {
    /// `<driver> C: ACS redirect is set between the client and provider (P)`.
    Set { client: Bdf, provider: Bdf },
    /// `<driver> C: to disable ... pci=disable_acs_redir=LIST`.
    Advice { client: Bdf, list: String },
}

fn acs_line(line: &str) -> Result<AcsLine, String> {
    // The device is the word before the marker (`nvme 0000:01:00.0: ...`).
    let subject = |at: usize| -> Result<Bdf, String> {
        let word = line[..at].split_whitespace().last().unwrap_or("");
        bdf(word).map_err(|e| format!("the device: {e}"))
    };
    if let Some(at) = line.find(SET_BETWEEN) {
        let rest = line[at + SET_BETWEEN.len()..].trim_end();
        let provider = rest
            .strip_suffix(')')
            .ok_or("expected `(PROVIDER)` at the end")?;
        Ok(AcsLine::Set {
            client: subject(at)?,
            provider: bdf(provider).map_err(|e| format!("the provider: {e}"))?,
        })
    } else if let Some(at) = line.find(TO_DISABLE) {
        let list = line[at + TO_DISABLE.len()..].trim();
        if list.is_empty() {
            return Err("an empty pci=disable_acs_redir= list".into());
        }
        for entry in list.split(';') {
            bdf(entry).map_err(|e| format!("pci=disable_acs_redir= list: {e}"))?;
        }
        Ok(AcsLine::Advice {
            client: subject(at)?,
            list: list.to_string(),
        })
    } else {
        Err(
            "neither \"ACS redirect is set between the client and provider\" nor \
             \"to disable ACS redirect for this path\""
                .into(),
        )
    }
}

/// The kernel's ACS advice per pair, from `acs-warnings.txt` (the output of
/// [`acs_warning_lines`]): client C's "ACS redirect is set between the
/// client and provider (P)" line, then C's "pci=disable_acs_redir=LIST"
/// line. Either line without the other is an error, as is any other line;
/// a pair logged again with the same list collapses, with another list is
/// an error.
pub fn parse_acs_warnings(text: &str, file: &str) -> Result<Vec<AcsWarning>, ParseError> {
    let at = At { file };
    let orphan = |n: usize, line: &str, why: String| {
        at.err(
            n,
            ParseErrorKind::Orphan {
                text: line.to_string(),
                why,
            },
        )
    };
    let mut out: Vec<AcsWarning> = Vec::new();
    let mut seen: BTreeMap<(Bdf, Bdf), usize> = BTreeMap::new();
    // The "is set" line waiting for its advice: (line number, text, client, provider).
    let mut pending: Option<(usize, &str, Bdf, Bdf)> = None;
    for (line, n) in text.lines().zip(1..) {
        if line.trim().is_empty() {
            continue;
        }
        match acs_line(line).map_err(|why| at.malformed(n, line, why))? {
            AcsLine::Set { client, provider } => {
                if let Some((pn, ptext, pc, _)) = pending {
                    return Err(orphan(
                        pn,
                        ptext,
                        format!("no pci=disable_acs_redir= advice from {pc} follows it"),
                    ));
                }
                pending = Some((n, line, client, provider));
            }
            AcsLine::Advice { client, list } => {
                let provider = match pending.take() {
                    Some((_, _, c, p)) if c == client => p,
                    Some((pn, _, c, _)) => {
                        return Err(orphan(
                            n,
                            line,
                            format!(
                                "advice from {client}, but line {pn} says ACS redirect is set \
                                 for client {c}"
                            ),
                        ))
                    }
                    None => {
                        return Err(orphan(
                            n,
                            line,
                            format!(
                                "no \"ACS redirect is set between the client and provider\" \
                                 line from {client} before it"
                            ),
                        ))
                    }
                };
                let w = AcsWarning {
                    provider,
                    client,
                    list,
                };
                match seen.get(&(provider, client)) {
                    Some(&i) if out[i] == w => {}
                    Some(&i) => {
                        return Err(at.malformed(
                            n,
                            line,
                            format!(
                                "advice for provider {provider} client {client} differs from \
                                 the earlier pci=disable_acs_redir={}",
                                out[i].list
                            ),
                        ))
                    }
                    None => {
                        seen.insert((provider, client), out.len());
                        out.push(w);
                    }
                }
            }
        }
    }
    if let Some((pn, ptext, pc, _)) = pending {
        return Err(orphan(
            pn,
            ptext,
            format!("no pci=disable_acs_redir= advice from {pc} follows it"),
        ));
    }
    Ok(out)
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
    /// `dev` lines held against peerdma's model.
    pub devices_compared: usize,
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
/// `cpu_supports_p2pdma` line, and the `pci=disable_acs_redir=` lists both
/// ways (advice only one side gives is a mismatch).
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
        devices_compared: 0,
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
        c.devices_compared += 1;
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

// ---------------------------------------------------------------------------
// Fix runs: the scenario booted again with a fix peerdma proposed.

/// The `format` of a fix run's `fix.json`.
pub const FIX_RUN_FORMAT: &str = "peerdma-fix-run";

/// `fix.json`, written next to a fix run's `verdicts`, `cmdline` and
/// `snapshot.json`: the fix as peerdma proposed it from the first boot's
/// capture, and the scenario command line the second boot used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixRun {
    pub format: String,
    /// The scenario's own command line with the fix applied (the guest's
    /// `/proc/cmdline` has it among console and marker parameters).
    pub scenario_cmdline: String,
    pub fix: ProposedFix,
}

impl FixRun {
    pub fn new(fix: ProposedFix, scenario_cmdline: String) -> FixRun {
        FixRun {
            format: FIX_RUN_FORMAT.into(),
            scenario_cmdline,
            fix,
        }
    }

    /// Read a `fix.json`; errors name the file.
    pub fn parse(text: &str, file: &str) -> Result<FixRun, String> {
        let r: FixRun =
            serde_json::from_str(text).map_err(|e| format!("{file}: not a fix run: {e}"))?;
        if r.format != FIX_RUN_FORMAT {
            return Err(format!(
                "{file}: format is {:?}, expected {FIX_RUN_FORMAT:?}",
                r.format
            ));
        }
        Ok(r)
    }
}

/// One fix held against the kernel booted with it.
#[derive(Clone, Debug, Serialize)]
pub struct FixCheck {
    pub params: Vec<String>,
    pub pairs_compared: usize,
    pub pairs_confirmed: usize,
    /// Functions whose ACS control peerdma predicted, and how many the
    /// booted machine shows as predicted.
    pub acs_compared: usize,
    pub acs_confirmed: usize,
    /// Everything that differs, one line each.
    pub problems: Vec<String>,
}

impl FixCheck {
    /// The kernel confirmed every prediction.
    pub fn confirmed(&self) -> bool {
        self.problems.is_empty() && self.pairs_confirmed == self.pairs_compared
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {}/{} pairs as predicted, ACS control of {}/{} functions as predicted{}",
            self.params.join(" "),
            self.pairs_confirmed,
            self.pairs_compared,
            self.acs_confirmed,
            self.acs_compared,
            if self.problems.is_empty() {
                String::new()
            } else {
                format!(", {} problem(s)", self.problems.len())
            }
        )
    }
}

/// Hold `fix` against the kernel booted with it: its verdicts for the
/// pairs the fix names, the `dev` lines and, from the guest's capture of
/// that boot (`after`), the ACS control of every function the fix was
/// predicted to change. `guest_cmdline` (its `/proc/cmdline`) must carry
/// the fix's options as the kernel reads them.
pub fn hold_fix(
    fix: &ProposedFix,
    kernel: &KernelVerdicts,
    guest_cmdline: &str,
    after: Option<&Topology>,
) -> FixCheck {
    let mut c = FixCheck {
        params: fix.params.clone(),
        pairs_compared: 0,
        pairs_confirmed: 0,
        acs_compared: 0,
        acs_confirmed: 0,
        problems: Vec::new(),
    };
    let cmd = peerdma_pci::cmdline::KernelCmdline::parse(guest_cmdline);
    for (name, value) in &fix.options {
        let got = cmd.pci_option(name);
        if got.as_deref() != Some(value.as_str()) {
            c.problems.push(format!(
                "the guest's command line gives pci={name}= as {}, the fix sets `{value}`",
                got.map_or("(absent)".to_string(), |g| format!("`{g}`"))
            ));
        }
    }
    for p in &fix.pairs {
        c.pairs_compared += 1;
        match kernel.verdict(p.provider, p.client) {
            Some((m, d)) if verdict_text(m, d) == p.predicted => c.pairs_confirmed += 1,
            Some((m, d)) => c.problems.push(format!(
                "{} -> {}: predicted {} (now {}), the kernel says {}",
                p.provider,
                p.client,
                p.predicted,
                p.now,
                verdict_text(m, d)
            )),
            None => c.problems.push(format!(
                "{} -> {}: the kernel booted with the fix lists no such pair",
                p.provider, p.client
            )),
        }
    }
    for &(bdf, value, known) in &fix.acs {
        c.acs_compared += 1;
        let bits = crate::acs_boot::Bits { value, known };
        let mut ok = true;
        if let (Some(redir), Some(d)) = (
            bits.redirect(),
            kernel.devices.iter().find(|d| d.bdf == bdf),
        ) {
            if redir != d.acs_redir {
                ok = false;
                c.problems.push(format!(
                    "{bdf}: predicted ACS redirect {}, the kernel's dev line says {}",
                    u8::from(redir),
                    u8::from(d.acs_redir)
                ));
            }
        }
        if let Some(t) = after {
            match t.find(bdf).map(|f| t.function(f).acs.ctrl()) {
                Some(Some(ctrl)) if bits.admits(ctrl) => {}
                Some(Some(ctrl)) => {
                    ok = false;
                    c.problems.push(format!(
                        "{bdf}: predicted ACS control {} (of the bits {:#06x}), the booted machine has {}",
                        peerdma_pci::config::acs_bits_string(value & known),
                        known & 0x7f,
                        peerdma_pci::config::acs_bits_string(ctrl)
                    ));
                }
                _ => {
                    ok = false;
                    c.problems.push(format!(
                        "{bdf}: the booted machine's capture shows no ACS control for it"
                    ));
                }
            }
        }
        if ok {
            c.acs_confirmed += 1;
        }
    }
    c
}

/// What differs between the fixes peerdma proposes now and the fix runs
/// stored (each must have been booted, each stored run must still be
/// proposed, with the same predictions).
pub fn match_fix_runs(proposed: &[ProposedFix], stored: &[ProposedFix]) -> Vec<String> {
    let mut out = Vec::new();
    for p in proposed {
        match stored.iter().find(|s| s.options == p.options) {
            None => out.push(format!(
                "peerdma proposes {} but no fix run boots it",
                p.params.join(" ")
            )),
            Some(s) if s != p => out.push(format!(
                "the fix run of {} holds other predictions than peerdma makes now (pairs or ACS control changed)",
                p.params.join(" ")
            )),
            Some(_) => {}
        }
    }
    for s in stored {
        if !proposed.iter().any(|p| p.options == s.options) {
            out.push(format!(
                "a fix run boots {}, which peerdma no longer proposes",
                s.params.join(" ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERDICTS: &str = "# peerdma-oracle v1\n# cpu_supports_p2pdma 0\n\
        dev 0000:00:00.0 acs_redir 0 host_bridge 0000:00:00.0 wl_same 0 wl_cross 0\n\
        dev 0000:20:00.0 acs_redir 1 host_bridge - wl_same 1 wl_cross 0\n\
        pair 0000:00:00.0 0000:20:00.0 not_supported 3\n\
        pair 0000:20:00.0 0000:00:00.0 thru_host_bridge 3\n";

    fn b(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_verdicts_file() {
        let v = parse_verdicts(VERDICTS, "v").unwrap();
        assert_eq!(v.cpu_supports_p2pdma, Some(false));
        assert_eq!(v.devices.len(), 2);
        assert_eq!(v.devices[1].host_bridge, None);
        assert!(v.devices[1].acs_redir && v.devices[1].wl_same && !v.devices[1].wl_cross);
        let p = v.pair(b("0000:20:00.0"), b("0000:00:00.0")).unwrap();
        assert_eq!((p.map_type, p.distance), (MapType::ThruHostBridge, 3));
        assert_eq!(
            v.verdict(b("0000:00:00.0"), b("0000:20:00.0")),
            Some((MapType::NotSupported, 3))
        );
        // A function reaches its own memory by bus address at distance 0.
        assert_eq!(
            v.verdict(b("0000:20:00.0"), b("0000:20:00.0")),
            Some((MapType::BusAddr, 0))
        );
        assert_eq!(v.verdict(b("0000:20:00.0"), b("0000:30:00.0")), None);
        assert_eq!(v.counts().get("not_supported"), Some(&1));
        assert_eq!(v.counts().get("thru_host_bridge"), Some(&1));
    }

    /// The error for `VERDICTS` with line `n` (1-based) replaced by `line`.
    fn with_line(n: usize, line: &str) -> ParseError {
        let mut lines: Vec<&str> = VERDICTS.lines().collect();
        lines[n - 1] = line;
        parse_verdicts(&(lines.join("\n") + "\n"), "dir/verdicts").unwrap_err()
    }

    #[test]
    fn malformed_verdicts_lines_are_errors_naming_the_line() {
        let e = parse_verdicts("hello\n", "f").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(matches!(e.kind, ParseErrorKind::Header { .. }), "{e}");
        assert!(
            e.to_string().starts_with("f:1: not a peerdma-oracle"),
            "{e}"
        );
        assert_eq!(parse_verdicts("", "f").unwrap_err().line, 1);

        for (n, line, says) in [
            (
                5,
                "pair 0000:00:00.0 0000:20:00.0 maybe 2",
                "unknown map type \"maybe\"",
            ),
            (
                5,
                "pair 0000:00:00.0 0000:20:00.0 none 2",
                "unknown map type \"none\"",
            ),
            (
                5,
                "pair 0000:00:00.0 0000:20:00.0 bus_addr -1",
                "bad distance",
            ),
            (
                5,
                "pair 0000:00:00.0 0000:20:00.0 bus_addr",
                "expected `pair PROVIDER",
            ),
            (5, "pair 0000:00:00.0 banana bus_addr 2", "banana"),
            (
                3,
                "dev 0000:00:00.0 acs_redir 2 host_bridge - wl_same 0 wl_cross 0",
                "expected 0 or 1",
            ),
            (
                3,
                "dev 0000:00:00.0 acs_redir 0 host_bridge 0000:00:00.0",
                "expected `dev BDF",
            ),
            (
                3,
                "dev 0000:00:00.0 acs_redir 0 host_bridge x wl_same 0 wl_cross 0",
                "'x' is not a PCI address",
            ),
            (2, "# cpu_supports_p2pdma yes", "expected 0 or 1"),
            (
                2,
                "# cpu_supports_p2pdma",
                "expected `# cpu_supports_p2pdma 0|1`",
            ),
            (6, "hello world", "expected a `dev` or `pair` line"),
        ] {
            let e = with_line(n, line);
            assert_eq!(e.line, n, "{line}: {e}");
            assert!(matches!(e.kind, ParseErrorKind::Malformed { .. }), "{e}");
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("dir/verdicts:{n}: malformed line")),
                "{text}"
            );
            assert!(text.contains(line) && text.contains(says), "{line}: {text}");
        }
    }

    #[test]
    fn repeated_and_impossible_verdicts_lines_are_errors() {
        let e = parse_verdicts(
            &format!("{VERDICTS}pair 0000:00:00.0 0000:20:00.0 bus_addr 2\n"),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.line, 7);
        assert_eq!(
            e.kind,
            ParseErrorKind::Repeated {
                text: "pair 0000:00:00.0 0000:20:00.0 bus_addr 2".into(),
                first: 5
            }
        );
        let e = with_line(
            4,
            "dev 0000:00:00.0 acs_redir 1 host_bridge - wl_same 1 wl_cross 0",
        );
        assert_eq!(
            (e.line, &e.kind),
            (
                4,
                &ParseErrorKind::Repeated {
                    text: "dev 0000:00:00.0 acs_redir 1 host_bridge - wl_same 1 wl_cross 0".into(),
                    first: 3
                }
            )
        );
        let e = parse_verdicts(&format!("{VERDICTS}# cpu_supports_p2pdma 1\n"), "f").unwrap_err();
        assert!(
            matches!(e.kind, ParseErrorKind::Repeated { first: 2, .. }),
            "{e}"
        );
        // A truncated file: the last pair is missing.
        let cut = VERDICTS.lines().take(5).collect::<Vec<_>>().join("\n");
        let e = parse_verdicts(&cut, "f").unwrap_err();
        assert_eq!(e.line, 5);
        assert_eq!(
            e.kind,
            ParseErrorKind::Incomplete {
                missing: 1,
                provider: b("0000:20:00.0"),
                client: b("0000:00:00.0")
            }
        );
        assert!(e.to_string().contains("1 ordered pair(s)"), "{e}");
        let e = with_line(5, "pair 0000:00:00.0 0000:00:00.0 bus_addr 0");
        assert!(e.to_string().contains("itself"), "{e}");
        let e = with_line(5, "pair 0000:00:00.0 0000:30:00.0 bus_addr 2");
        assert!(
            e.to_string().contains("0000:30:00.0 has no `dev` line"),
            "{e}"
        );
    }

    const DMESG: &str = "[    1.0] pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:29c0\n\
        [    1.1] nvme 0000:01:00.0: ACS redirect is set between the client and provider (0000:01:00.1)\n\
        [    1.1] nvme 0000:01:00.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0\n\
        [    1.2] pcieport 0000:00:02.0: ACS redirect is set between the client and provider (0000:01:00.0)\n\
        [    1.2] pcieport 0000:00:02.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0;0000:01:00.0\n\
        [    1.3] nvme 0000:01:00.0: ACS redirect is set between the client and provider (0000:01:00.1)\n\
        [    1.3] nvme 0000:01:00.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=0000:00:02.0\n";

    #[test]
    fn acs_warnings_are_paired_with_their_provider() {
        let lines = acs_warning_lines(DMESG);
        assert_eq!(lines.lines().count(), 6);
        assert!(
            lines.starts_with("nvme 0000:01:00.0: ACS redirect"),
            "{lines}"
        );
        let w = parse_acs_warnings(&lines, "acs").unwrap();
        assert_eq!(w.len(), 2, "repeats collapse: {w:?}");
        assert_eq!(w[0].provider, b("0000:01:00.1"));
        assert_eq!(w[0].client, b("0000:01:00.0"));
        assert_eq!(w[0].list, "0000:00:02.0");
        assert_eq!(w[1].list, "0000:00:02.0;0000:01:00.0");
        assert!(parse_acs_warnings("", "acs").unwrap().is_empty());
    }

    #[test]
    fn orphan_acs_lines_are_errors_naming_the_line() {
        let lines: Vec<String> = acs_warning_lines(DMESG).lines().map(String::from).collect();
        let text = |ls: &[&String]| ls.iter().map(|l| format!("{l}\n")).collect::<String>();
        let parse = |ls: &[&String]| parse_acs_warnings(&text(ls), "w.txt").unwrap_err();
        let orphan = |e: &ParseError| matches!(e.kind, ParseErrorKind::Orphan { .. });

        // Advice with nothing before it.
        let e = parse(&[&lines[1], &lines[2], &lines[3]]);
        assert!(orphan(&e) && e.line == 1, "{e}");
        assert!(
            e.to_string()
                .starts_with("w.txt:1: orphan line \"nvme 0000:01:00.0: to disable"),
            "{e}"
        );
        // An "is set" line followed by another one, and one at the end.
        let e = parse(&[&lines[0], &lines[2], &lines[3]]);
        assert!(orphan(&e) && e.line == 1, "{e}");
        assert!(
            e.to_string()
                .contains("no pci=disable_acs_redir= advice from 0000:01:00.0"),
            "{e}"
        );
        let e = parse(&[&lines[0], &lines[1], &lines[2]]);
        assert!(orphan(&e) && e.line == 3, "{e}");
        // Advice from another device than the "is set" line's.
        let e = parse(&[&lines[2], &lines[1]]);
        assert!(orphan(&e) && e.line == 2, "{e}");
        assert!(
            e.to_string()
                .contains("line 1 says ACS redirect is set for client 0000:00:02.0"),
            "{e}"
        );
    }

    #[test]
    fn malformed_acs_lines_are_errors_naming_the_line() {
        let set =
            "nvme 0000:01:00.0: ACS redirect is set between the client and provider (0000:01:00.1)";
        let advice = "nvme 0000:01:00.0: to disable ACS redirect for this path, add the kernel parameter: pci=disable_acs_redir=";
        for (text, line, says) in [
            (format!("{set}\nhello\n"), 2, "neither"),
            (format!("nvme banana{}\n", &set[17..]), 1, "the device"),
            (
                set.replace("(0000:01:00.1)", "(0000:01:00.1"),
                1,
                "(PROVIDER)",
            ),
            (set.replace("0000:01:00.1", "nope"), 1, "the provider"),
            (format!("{set}\n{advice}\n"), 2, "empty"),
            (format!("{set}\n{advice}0000:00:02.0;x\n"), 2, "list"),
            (
                format!("{set}\n{advice}0000:00:02.0\n{set}\n{advice}0000:00:03.0\n"),
                4,
                "differs from the earlier pci=disable_acs_redir=0000:00:02.0",
            ),
        ] {
            let e = parse_acs_warnings(&text, "w.txt").unwrap_err();
            assert_eq!(e.line, line, "{text}: {e}");
            assert!(matches!(e.kind, ParseErrorKind::Malformed { .. }), "{e}");
            let m = e.to_string();
            assert!(
                m.starts_with(&format!("w.txt:{line}: malformed line")) && m.contains(says),
                "{m}"
            );
        }
    }

    #[test]
    fn compare_counts_and_reports_disagreements() {
        let topo = peerdma_pci::Source::Preset("dual-xeon".into())
            .load()
            .unwrap();
        // Build the kernel's file from peerdma's own answers, then break one pair.
        let mut text = format!(
            "{HEADER}\n# cpu_supports_p2pdma {}\n",
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
        // And the kernel's ACS advice from peerdma's, through the log format.
        let mut log = String::new();
        for &a in &ids {
            for &b in ids.iter().filter(|&&b| b != a) {
                if let Some(list) = explain(&topo, a, b).disable_acs_redir {
                    let (p, c) = (topo.function(a).bdf, topo.function(b).bdf);
                    log += &format!("[ 1.0] nvme {c}{SET_BETWEEN}{p})\n");
                    log += &format!(
                        "[ 1.0] nvme {c}{TO_DISABLE}{}\n",
                        list.strip_prefix("pci=disable_acs_redir=").unwrap()
                    );
                }
            }
        }
        let acs = parse_acs_warnings(&acs_warning_lines(&log), "log").unwrap();
        assert!(!acs.is_empty(), "the preset has ACS redirect somewhere");
        let c = compare(&topo, &k, Some(&acs), "preset");
        let n = ids.len() * (ids.len() - 1);
        assert!(c.ok(), "{}", c.render_problems());
        assert_eq!((c.pairs_compared, c.pairs_agreeing), (n, n));
        assert_eq!(c.devices_compared, ids.len());

        let mut broken = k.clone();
        broken.pairs[0].distance += 1;
        broken.devices[0].wl_same = !broken.devices[0].wl_same;
        broken.devices.pop();
        let mut acs = acs;
        acs[0].list.push_str(";0000:00:02.0");
        let c = compare(&topo, &broken, Some(&acs[..]), "preset");
        assert!(!c.ok());
        assert_eq!(c.pairs_agreeing, n - 1);
        assert_eq!(c.extra.len(), 1);
        assert_eq!(c.device_mismatches.len(), 1);
        assert_eq!(c.acs_mismatches.len(), 1, "{:?}", c.acs_mismatches);
        let text = c.render_problems();
        assert!(
            text.contains("DISAGREE") && text.contains("path: "),
            "{text}"
        );
        assert!(c.summary().contains(&format!("{}/{n} pairs agree", n - 1)));
    }
}
