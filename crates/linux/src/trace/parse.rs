//! The DMA mapping events as the kernel prints them in `trace_pipe`, read
//! back into records.
//!
//! A line of `trace_pipe` is a header the tracer adds (task, pid, CPU,
//! flags, timestamp), the event's name, and the text its `TP_printk`
//! formats. The events of `include/trace/events/dma.h` (6.12) print:
//!
//! ```text
//! dma_map_page / dma_map_resource:  DEV dir=DIR dma_addr=%llx size=%zu phys_addr=%llx attrs=FLAGS
//! dma_unmap_page / dma_unmap_resource:  DEV dir=DIR dma_addr=%llx size=%zu attrs=FLAGS
//! dma_map_sg:  DEV dir=DIR [nents=%d/%d ents=%d/%d[ [TRUNCATED]]] dma_addrs={..} sizes={..} phys_addrs={..} attrs=FLAGS
//! dma_map_sg_err:  DEV dir=DIR dma_addrs={..} err=%d attrs=FLAGS
//! dma_unmap_sg:  DEV dir=DIR phys_addrs={..} attrs=FLAGS
//! ```
//!
//! (later kernels rename the single-address events `dma_map_phys` and
//! `dma_unmap_phys`, with the same text). Arrays are `__print_array`:
//! `{0x1000,0x2000}`, every element in hex with `0x`; a scalar's base
//! comes from its conversion in the event's `print fmt` (`%llx` hex, `%zu`
//! decimal), which [`EventFormat::parse`] reads from the event's `format`
//! file. Two things the text does not say and the kernel's source does:
//! `dma_map_sg_err` labels its array `dma_addrs` but fills it with
//! physical addresses (nothing was mapped), and `dma_unmap_sg` carries
//! physical addresses only.
//!
//! The parser is strict about what it takes and says what it skipped: a
//! line cut short (the kernel's per-line buffer is a page, and a
//! 128-entry list fills it) keeps its complete entries and is marked
//! `cut`; a line that is not a DMA event, or whose header cannot be found,
//! is counted, never guessed at.

use peerdma_mem::{DmaAddr, PhysAddr};
use serde::Serialize;
use std::collections::BTreeMap;

/// The direction of a mapping (`enum dma_data_direction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DmaDir {
    Bidirectional,
    /// The device reads memory.
    ToDevice,
    /// The device writes memory.
    FromDevice,
    None,
}

impl DmaDir {
    fn parse(s: &str) -> Option<DmaDir> {
        Some(match s {
            "BIDIRECTIONAL" => DmaDir::Bidirectional,
            "TO_DEVICE" => DmaDir::ToDevice,
            "FROM_DEVICE" => DmaDir::FromDevice,
            "NONE" => DmaDir::None,
            _ => return Option::None,
        })
    }

    /// The kernel's name.
    pub fn as_str(self) -> &'static str {
        match self {
            DmaDir::Bidirectional => "BIDIRECTIONAL",
            DmaDir::ToDevice => "TO_DEVICE",
            DmaDir::FromDevice => "FROM_DEVICE",
            DmaDir::None => "NONE",
        }
    }

    /// Whether a mapping in this direction lets the device do `want`.
    pub fn covers(self, want: DmaDir) -> bool {
        self == want || self == DmaDir::Bidirectional
    }
}

/// What an event records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A mapping was made: physical and DMA addresses.
    Map,
    /// A mapping was refused: physical addresses and the error.
    MapErr,
    /// A mapping went away.
    Unmap,
}

/// The kind of a DMA event by its name, for the events the tracer reads.
pub fn event_kind(name: &str) -> Option<EventKind> {
    if !name.starts_with("dma_") {
        return None;
    }
    if name.starts_with("dma_map_") {
        if name.ends_with("_err") {
            return Some(EventKind::MapErr);
        }
        return Some(EventKind::Map);
    }
    if name.starts_with("dma_unmap_") {
        return Some(EventKind::Unmap);
    }
    None
}

/// One segment of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// The CPU physical address of the memory (absent where the line was
    /// cut before it, or for an unmap that carries none).
    pub phys: Option<PhysAddr>,
    /// The address the device was given (absent for refused mappings and
    /// for unmaps of a scatterlist).
    pub dma: Option<DmaAddr>,
    /// Bytes (absent where the kernel does not print them).
    pub len: Option<u64>,
}

/// One DMA mapping event.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    pub name: String,
    pub kind: EventKind,
    /// `dev_name()` of the device: a PCI function's BDF.
    pub device: String,
    pub dir: Option<DmaDir>,
    pub segments: Vec<Segment>,
    /// A scatterlist mapping: how many input entries (`nents`) and mapped
    /// entries (`ents`) the list had, where the kernel prints it; the
    /// event carries at most 128 of each.
    pub nents: Option<u32>,
    pub ents: Option<u32>,
    /// Input entries the mapping merged (`ents < nents`, an IOMMU
    /// merging segments): physical and DMA entries do not pair up one to
    /// one.
    pub merged: bool,
    /// The kernel left entries out (`[TRUNCATED]`: more than 128).
    pub truncated: bool,
    /// The text line ended early: the complete entries before the cut are
    /// kept.
    pub cut: bool,
    /// `err=` of a refused mapping.
    pub err: Option<i32>,
    pub timestamp: Option<f64>,
    pub cpu: Option<u32>,
}

impl Event {
    /// Bytes of the segments that carry a length.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().filter_map(|s| s.len).sum()
    }
}

/// A line of `trace_pipe`, read.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Event(Event),
    /// `CPU:N [LOST M EVENTS]`: the per-CPU buffer overflowed.
    Lost {
        cpu: Option<u32>,
        events: u64,
    },
    /// An event of another name (not a DMA mapping event).
    Other(String),
    /// Nothing a tracer prints: why, for the count of unread lines.
    Unreadable(String),
}

/// How the values of an event's labels are printed, from its `format`
/// file: the base of each scalar (`%llx` or `%zu`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFormat {
    pub name: String,
    pub id: Option<u32>,
    /// Field names (`phys_addrs`, `dma_addr`, ...).
    pub fields: Vec<String>,
    /// Label → whether its conversion is hexadecimal.
    pub hex: BTreeMap<String, bool>,
    /// The labels the print format shows, in order.
    pub labels: Vec<String>,
}

impl EventFormat {
    /// Read an event's `format` file. `None` if it has no `name:` or no
    /// `print fmt:` line.
    pub fn parse(text: &str) -> Option<EventFormat> {
        let mut f = EventFormat::default();
        let mut fmt = None;
        for line in text.lines() {
            let l = line.trim();
            if let Some(n) = l.strip_prefix("name:") {
                f.name = n.trim().to_string();
            } else if let Some(n) = l.strip_prefix("ID:") {
                f.id = n.trim().parse().ok();
            } else if let Some(rest) = l.strip_prefix("field:") {
                // `field:__data_loc u64[] phys_addrs;	offset:...`
                let decl = rest.split(';').next().unwrap_or("");
                if let Some(name) = decl.split_whitespace().last() {
                    let name = name.split('[').next().unwrap_or(name);
                    f.fields.push(name.to_string());
                }
            } else if let Some(p) = l.strip_prefix("print fmt:") {
                fmt = Some(p.trim().to_string());
            }
        }
        let fmt = fmt?;
        if f.name.is_empty() {
            return None;
        }
        // The format string is the first quoted string.
        let s = fmt.strip_prefix('"')?;
        let mut lit = String::new();
        let mut esc = false;
        for c in s.chars() {
            if esc {
                lit.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                break;
            } else {
                lit.push(c);
            }
        }
        // Each `label=%<flags><length><conv>`.
        let b = lit.as_bytes();
        let mut i = 0;
        while let Some(eq) = lit[i..].find("=%").map(|x| x + i) {
            let start = lit[..eq]
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |x| x + 1);
            let label = &lit[start..eq];
            let mut j = eq + 2;
            while j < b.len() && b"-+ #0123456789.hlzjt".contains(&b[j]) {
                j += 1;
            }
            if !label.is_empty() && j < b.len() {
                let hex = matches!(b[j], b'x' | b'X' | b'p');
                f.hex.insert(label.to_string(), hex);
                f.labels.push(label.to_string());
            }
            i = j.max(eq + 2);
        }
        Some(f)
    }

    /// The 6.12 formats of `include/trace/events/dma.h`, for reading
    /// recorded lines without the kernel's `format` files.
    pub fn builtin(name: &str) -> Option<EventFormat> {
        let labels: &[(&str, bool)] = match event_kind(name)? {
            EventKind::Map if name == "dma_map_sg" => &[
                ("dir", false),
                ("nents", false),
                ("ents", false),
                ("dma_addrs", false),
                ("sizes", false),
                ("phys_addrs", false),
                ("attrs", false),
            ],
            EventKind::Map => &[
                ("dir", false),
                ("dma_addr", true),
                ("size", false),
                ("phys_addr", true),
                ("attrs", false),
            ],
            EventKind::MapErr => &[
                ("dir", false),
                ("dma_addrs", false),
                ("err", false),
                ("attrs", false),
            ],
            EventKind::Unmap if name == "dma_unmap_sg" => {
                &[("dir", false), ("phys_addrs", false), ("attrs", false)]
            }
            EventKind::Unmap => &[
                ("dir", false),
                ("dma_addr", true),
                ("size", false),
                ("attrs", false),
            ],
        };
        Some(EventFormat {
            name: name.to_string(),
            id: None,
            fields: Vec::new(),
            hex: labels.iter().map(|(l, h)| (l.to_string(), *h)).collect(),
            labels: labels.iter().map(|(l, _)| l.to_string()).collect(),
        })
    }

    /// What the tracer needs of this event's text, missing: the labels
    /// without which its mappings cannot be classified.
    pub fn missing_labels(&self) -> Vec<&'static str> {
        let need: &[&'static str] = match event_kind(&self.name) {
            Some(EventKind::Map) if self.name.ends_with("_sg") => {
                &["dir", "dma_addrs", "sizes", "phys_addrs"]
            }
            Some(EventKind::Map) => &["dir", "dma_addr", "size", "phys_addr"],
            Some(EventKind::MapErr) => &["dir"],
            Some(EventKind::Unmap) => &["dir"],
            None => &[],
        };
        need.iter()
            .copied()
            .filter(|l| !self.labels.iter().any(|x| x == l))
            .collect()
    }
}

/// Formats by event name: the kernel's, or the built-in 6.12 ones.
#[derive(Clone, Debug, Default)]
pub struct Formats(BTreeMap<String, EventFormat>);

impl Formats {
    pub fn new() -> Formats {
        Formats(BTreeMap::new())
    }

    pub fn insert(&mut self, f: EventFormat) {
        self.0.insert(f.name.clone(), f);
    }

    /// Whether the event's text has `label=`.
    fn prints(&self, event: &str, label: &str) -> bool {
        match self.0.get(event) {
            Some(f) => f.labels.iter().any(|l| l == label),
            None => {
                EventFormat::builtin(event).is_some_and(|f| f.labels.iter().any(|l| l == label))
            }
        }
    }

    fn hex(&self, event: &str, label: &str) -> bool {
        match self.0.get(event) {
            Some(f) => f.hex.get(label).copied().unwrap_or(false),
            None => EventFormat::builtin(event)
                .and_then(|f| f.hex.get(label).copied())
                .unwrap_or(false),
        }
    }
}

/// Split a `trace_pipe` line into its header (CPU, timestamp), the event
/// name and the event's text. The header is `COMM-PID [CPU] FLAGS TS:`
/// where COMM may hold anything; the event name follows the first `: `
/// that comes after a timestamp (`digits.digits`).
fn split_header(line: &str) -> Option<(Option<u32>, Option<f64>, &str, &str)> {
    let mut from = 0;
    while let Some(p) = line[from..].find(": ").map(|x| x + from) {
        from = p + 2;
        let before = &line[..p];
        let ts_start = before
            .rfind(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map_or(0, |x| x + 1);
        let ts = &before[ts_start..];
        if !(ts.contains('.') && ts.split('.').all(|d| !d.is_empty())) {
            continue;
        }
        let rest = &line[p + 2..];
        let Some(colon) = rest
            .find(": ")
            .or_else(|| rest.strip_suffix(':').map(str::len))
        else {
            continue;
        };
        let name = &rest[..colon];
        if name.is_empty() || !name.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
            continue;
        }
        let body = rest.get(colon + 2..).unwrap_or("");
        let cpu = before
            .rfind('[')
            .and_then(|o| before[o + 1..].split(']').next())
            .and_then(|c| c.trim().parse().ok());
        return Some((cpu, ts.parse().ok(), name, body));
    }
    None
}

/// A number as printed: `0x`-prefixed hex always; otherwise hex or
/// decimal as the format says.
fn number(s: &str, hex: bool) -> Option<u64> {
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    if hex {
        u64::from_str_radix(s, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// `{0x1,0x2}` → the elements; `complete` is false when the closing brace
/// is missing (the line was cut), and then the last element, which may be
/// cut itself, is dropped.
fn array(s: &str) -> Option<(Vec<u64>, bool)> {
    let inner = s.strip_prefix('{')?;
    let (inner, complete) = match inner.strip_suffix('}') {
        Some(i) => (i, true),
        None => (inner, false),
    };
    let mut items: Vec<&str> = inner.split(',').filter(|x| !x.is_empty()).collect();
    if !complete {
        items.pop();
    }
    let mut out = Vec::with_capacity(items.len());
    for it in items {
        out.push(number(it.trim(), true)?);
    }
    Some((out, complete))
}

/// Read one line of `trace_pipe`.
pub fn parse_line(line: &str, formats: &Formats) -> Line {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(rest) = line.trim_start().strip_prefix("CPU:") {
        if let Some((cpu, tail)) = rest.split_once(' ') {
            if let Some(n) = tail
                .strip_prefix("[LOST ")
                .and_then(|t| t.strip_suffix(" EVENTS]"))
            {
                if let Ok(events) = n.parse() {
                    return Line::Lost {
                        cpu: cpu.parse().ok(),
                        events,
                    };
                }
            }
        }
    }
    let Some((cpu, timestamp, name, body)) = split_header(line) else {
        return Line::Unreadable(if line.trim().is_empty() {
            "an empty line".into()
        } else {
            "no event header (task-pid [cpu] flags timestamp: event:)".into()
        });
    };
    let Some(kind) = event_kind(name) else {
        return Line::Other(name.to_string());
    };
    match parse_body(name, kind, body, formats) {
        Ok(mut e) => {
            e.cpu = cpu;
            e.timestamp = timestamp;
            Line::Event(e)
        }
        Err(why) => Line::Unreadable(format!("{name}: {why}")),
    }
}

/// A line's body split into its device and `label=value` fields, before
/// any value is read.
struct Fields<'a> {
    device: String,
    values: BTreeMap<&'a str, &'a str>,
    /// The kernel marked the line `[TRUNCATED]`.
    truncated: bool,
    /// The label printed last, whose value a cut line may have cut.
    last_label: Option<&'a str>,
    /// The line was cut short.
    cut: bool,
}

fn fields<'a>(name: &str, body: &'a str, formats: &Formats) -> Result<Fields<'a>, String> {
    let tokens: Vec<&str> = body.split(' ').filter(|t| !t.is_empty()).collect();
    let device = tokens
        .first()
        .filter(|d| !d.contains('='))
        .ok_or("no device name")?
        .to_string();
    let mut values: BTreeMap<&str, &str> = BTreeMap::new();
    let mut truncated = false;
    let mut last_label = None;
    // The line was cut if it lacks what every such event prints last
    // (`attrs=`), or a list lacks its closing brace.
    let mut cut = false;
    for (i, t) in tokens.iter().enumerate().skip(1) {
        if *t == "[TRUNCATED]" {
            truncated = true;
            continue;
        }
        match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                values.insert(k, v);
                last_label = Some(k);
            }
            // The last token of a cut line may be a label cut short.
            _ if i + 1 == tokens.len() => cut = true,
            // A flag of `attrs=` cannot hold a space; anything else is text
            // this parser does not know.
            _ => return Err(format!("unexpected text {t:?}")),
        }
    }
    cut |= formats.prints(name, "attrs") && !values.contains_key("attrs");
    if cut {
        // The value of the last label may itself be cut short: a scalar
        // is dropped, a list keeps its complete elements (below).
        if let Some(l) = last_label.filter(|l| !values[l].starts_with('{')) {
            values.remove(l);
        }
    }
    Ok(Fields {
        device,
        values,
        truncated,
        last_label,
        cut,
    })
}

fn parse_body(name: &str, kind: EventKind, body: &str, formats: &Formats) -> Result<Event, String> {
    let Fields {
        device,
        values,
        mut truncated,
        last_label,
        mut cut,
    } = fields(name, body, formats)?;
    let hex = |label: &str| formats.hex(name, label);
    let scalar = |label: &str| -> Result<Option<u64>, String> {
        match values.get(label) {
            None => Ok(None),
            Some(v) => number(v, hex(label))
                .map(Some)
                .ok_or_else(|| format!("{label}={v} is not a number")),
        }
    };
    let mut list = |label: &str| -> Result<Option<Vec<u64>>, String> {
        match values.get(label) {
            None => Ok(None),
            Some(v) => match array(v) {
                Some((items, complete)) => {
                    if !complete {
                        cut = true;
                    }
                    Ok(Some(items))
                }
                None if Some(label) == last_label => {
                    cut = true;
                    Ok(Some(Vec::new()))
                }
                None => Err(format!("{label}={v} is not a list")),
            },
        }
    };
    let dir = match values.get("dir") {
        Some(d) => Some(DmaDir::parse(d).ok_or_else(|| format!("dir={d} is not a direction"))?),
        None => None,
    };
    let counts = |label: &str| -> Option<(u32, u32)> {
        let (a, b) = values.get(label)?.split_once('/')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    };
    let (nents, ents) = (counts("nents"), counts("ents"));
    let mut segments = Vec::new();
    let mut merged = false;
    let mut err = None;
    match kind {
        EventKind::Map if values.contains_key("dma_addrs") || values.contains_key("phys_addrs") => {
            let dma = list("dma_addrs")?.unwrap_or_default();
            let sizes = list("sizes")?.unwrap_or_default();
            let phys = list("phys_addrs")?.unwrap_or_default();
            if let (Some((tn, fnents)), Some((te, fents))) = (nents, ents) {
                truncated |= tn < fnents || te < fents;
                merged = fents != fnents;
            } else {
                merged = !phys.is_empty() && phys.len() != dma.len();
            }
            if merged {
                // The DMA entries with their lengths, the physical ones
                // without: the classifier holds each DMA address against
                // all of them.
                for (i, d) in dma.iter().enumerate() {
                    segments.push(Segment {
                        phys: None,
                        dma: Some(DmaAddr::from_descriptor(*d)),
                        len: sizes.get(i).copied(),
                    });
                }
                for p in &phys {
                    segments.push(Segment {
                        phys: Some(PhysAddr::new(*p)),
                        dma: None,
                        len: None,
                    });
                }
            } else {
                let n = dma.len().max(phys.len());
                for i in 0..n {
                    segments.push(Segment {
                        phys: phys.get(i).map(|p| PhysAddr::new(*p)),
                        dma: dma.get(i).map(|d| DmaAddr::from_descriptor(*d)),
                        len: sizes.get(i).copied(),
                    });
                }
            }
        }
        EventKind::Map => {
            let phys = scalar("phys_addr")?;
            let dma = scalar("dma_addr")?;
            let len = scalar("size")?;
            if dma.is_none() && phys.is_none() {
                cut = true;
            } else {
                segments.push(Segment {
                    phys: phys.map(PhysAddr::new),
                    dma: dma.map(DmaAddr::from_descriptor),
                    len,
                });
            }
        }
        EventKind::MapErr => {
            // dma.h labels the list `dma_addrs` and fills it with sg_phys():
            // a refused mapping has no DMA address.
            let phys = match list("phys_addrs")? {
                Some(p) => p,
                None => list("dma_addrs")?.unwrap_or_default(),
            };
            for p in phys {
                segments.push(Segment {
                    phys: Some(PhysAddr::new(p)),
                    dma: None,
                    len: None,
                });
            }
            if let Some(v) = values.get("err") {
                err = Some(v.parse().map_err(|_| format!("err={v} is not a number"))?);
            }
        }
        EventKind::Unmap if name.ends_with("_sg") => {
            // dma_unmap_sg prints sg_phys() of each entry.
            for p in list("phys_addrs")?.unwrap_or_default() {
                segments.push(Segment {
                    phys: Some(PhysAddr::new(p)),
                    dma: None,
                    len: None,
                });
            }
        }
        EventKind::Unmap => {
            let dma = scalar("dma_addr")?;
            let len = scalar("size")?;
            if dma.is_some() {
                segments.push(Segment {
                    phys: None,
                    dma: dma.map(DmaAddr::from_descriptor),
                    len,
                });
            }
        }
    }
    Ok(Event {
        name: name.to_string(),
        kind,
        device,
        dir,
        segments,
        nents: nents.map(|n| n.1),
        ents: ents.map(|n| n.1),
        merged,
        truncated,
        cut,
        err,
        timestamp: None,
        cpu: None,
    })
}

/// Lines read from a trace, with what could not be used counted.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub events: Vec<Event>,
    /// Events the buffers dropped (`[LOST N EVENTS]`).
    pub lost: u64,
    /// Lines of other events (none when the tracer enabled only DMA ones).
    pub other: u64,
    /// Lines that could not be read, with the first few reasons.
    pub unreadable: u64,
    pub unreadable_examples: Vec<String>,
}

impl Parsed {
    /// Add one line.
    pub fn push_line(&mut self, line: &str, formats: &Formats) {
        match parse_line(line, formats) {
            Line::Event(e) => self.events.push(e),
            Line::Lost { events, .. } => self.lost += events,
            Line::Other(_) => self.other += 1,
            Line::Unreadable(why) => {
                if line.trim().is_empty() {
                    return;
                }
                self.unreadable += 1;
                if self.unreadable_examples.len() < 3 {
                    let shown: String = line.chars().take(120).collect();
                    self.unreadable_examples.push(format!("{why}: {shown:?}"));
                }
            }
        }
    }

    /// Read a whole recorded trace.
    pub fn from_text(text: &str, formats: &Formats) -> Parsed {
        let mut p = Parsed::default();
        for l in text.lines() {
            p.push_line(l, formats);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SG: &str = "            peerdma-97      [001] .....    21.884213: dma_map_sg: 0000:05:00.0 dir=FROM_DEVICE nents=1/1 ents=1/1 dma_addrs={0xfc020000} sizes={0x80000} phys_addrs={0xfc020000} attrs=";

    fn one(line: &str) -> Event {
        match parse_line(line, &Formats::new()) {
            Line::Event(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_issues_line() {
        let e = one(SG);
        assert_eq!(e.name, "dma_map_sg");
        assert_eq!(e.kind, EventKind::Map);
        assert_eq!(e.device, "0000:05:00.0");
        assert_eq!(e.dir, Some(DmaDir::FromDevice));
        assert_eq!(e.cpu, Some(1));
        assert_eq!(e.timestamp, Some(21.884213));
        assert_eq!(
            e.segments,
            vec![Segment {
                phys: Some(PhysAddr::new(0xfc02_0000)),
                dma: Some(DmaAddr::from_descriptor(0xfc02_0000)),
                len: Some(0x80000)
            }]
        );
        assert!(!e.cut && !e.truncated && !e.merged);
        assert_eq!(e.bytes(), 0x80000);
    }

    #[test]
    fn a_comm_with_colons_and_brackets_does_not_confuse_the_header() {
        let line = SG.replace("peerdma-97     ", "a: b [7] 1.5-97");
        let e = one(&line);
        assert_eq!(e.device, "0000:05:00.0");
        assert_eq!(e.cpu, Some(1));
    }

    #[test]
    fn scalars_take_their_base_from_the_format() {
        let line = "  kworker/0:1H-53  [000] ..... 3.5: dma_map_page: 0000:03:00.0 dir=TO_DEVICE dma_addr=1f4c0000 size=4096 phys_addr=1f4c0000 attrs=";
        let e = one(line);
        assert_eq!(e.segments[0].len, Some(4096));
        assert_eq!(e.segments[0].phys, Some(PhysAddr::new(0x1f4c_0000)));
        // A kernel whose format printed size in hex would say so in its
        // format file.
        let mut f = Formats::new();
        let mut fmt = EventFormat::builtin("dma_map_page").unwrap();
        fmt.hex.insert("size".into(), true);
        f.insert(fmt);
        match parse_line(line, &f) {
            Line::Event(e) => assert_eq!(e.segments[0].len, Some(0x4096)),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn lost_events_other_events_and_garbage_are_counted() {
        let mut p = Parsed::default();
        let f = Formats::new();
        p.push_line("CPU:1 [LOST 17 EVENTS]", &f);
        p.push_line("  bash-1 [000] ..... 1.0: sched_switch: prev_comm=bash", &f);
        p.push_line("random text", &f);
        p.push_line("", &f);
        p.push_line(SG, &f);
        assert_eq!((p.lost, p.other, p.unreadable), (17, 1, 1));
        assert_eq!(p.events.len(), 1);
        assert!(p.unreadable_examples[0].contains("no event header"));
    }

    #[test]
    fn the_format_file_gives_labels_and_bases() {
        let text = r#"name: dma_map_page
ID: 432
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:__data_loc char[] device;	offset:8;	size:4;	signed:0;
	field:u64 phys_addr;	offset:16;	size:8;	signed:0;
	field:u64 dma_addr;	offset:24;	size:8;	signed:0;
	field:size_t size;	offset:32;	size:8;	signed:0;

print fmt: "%s dir=%s dma_addr=%llx size=%zu phys_addr=%llx attrs=%s", __get_str(device), __print_symbolic(REC->dir, { 0, "BIDIRECTIONAL" }), REC->dma_addr, REC->size, REC->phys_addr, __print_flags(REC->attrs, "|", { (1UL << 1), "WEAK_ORDERING" })
"#;
        let f = EventFormat::parse(text).unwrap();
        assert_eq!(f.name, "dma_map_page");
        assert_eq!(f.id, Some(432));
        assert!(f.fields.contains(&"phys_addr".to_string()));
        assert_eq!(f.labels, ["dir", "dma_addr", "size", "phys_addr", "attrs"]);
        assert!(f.hex["dma_addr"]);
        assert!(!f.hex["size"]);
        assert!(f.missing_labels().is_empty());
        let mut g = f.clone();
        g.labels.retain(|l| l != "phys_addr");
        assert_eq!(g.missing_labels(), ["phys_addr"]);
        assert!(EventFormat::parse("ID: 1\n").is_none());
    }

    /// Lines in the text 6.12's `include/trace/events/dma.h` prints (the
    /// issue's line recorded in a guest, extended): a 3-entry list, both
    /// directions, a refusal, unmaps, and another device's mappings in
    /// between. The oracle scenarios' own recorded lines are read again
    /// by `cargo test -p xtask` (tests/fixtures/kernel/*/traces/).
    const RECORDED: &str = "\
# tracer: nop
#
            peerdma-212     [000] .....    40.101000: dma_map_sg: 0000:03:00.0 dir=FROM_DEVICE nents=3/3 ents=3/3 dma_addrs={0xfe000000,0xfe010000,0xfe030000} sizes={0x10000,0x20000,0x1000} phys_addrs={0xfe000000,0xfe010000,0xfe030000} attrs=
          kworker/0:1H-60   [000] .....    40.101100: dma_map_page: 0000:00:1f.2 dir=TO_DEVICE dma_addr=3a4c1000 size=512 phys_addr=3a4c1000 attrs=
            peerdma-212     [001] .....    40.102000: dma_map_sg: 0000:04:00.0 dir=TO_DEVICE nents=1/1 ents=1/1 dma_addrs={0xfe000000} sizes={0x31000} phys_addrs={0xfe000000} attrs=
          <idle>-0          [000] ..s1.    40.102500: dma_unmap_sg: 0000:03:00.0 dir=FROM_DEVICE phys_addrs={0xfe000000,0xfe010000,0xfe030000} attrs=
          <idle>-0          [001] d.h1.    40.103000: dma_unmap_page: 0000:00:1f.2 dir=TO_DEVICE dma_addr=3a4c1000 size=512 attrs=
            peerdma-212     [001] .....    40.104000: dma_map_sg_err: 0000:04:00.0 dir=BIDIRECTIONAL dma_addrs={0xfe200000,0xfe201000} err=-22 attrs=SKIP_CPU_SYNC
";

    #[test]
    fn a_recorded_trace_multi_entry_lists_both_directions_unmaps_and_a_refusal() {
        let p = Parsed::from_text(RECORDED, &Formats::new());
        assert_eq!(
            (p.lost, p.other, p.unreadable),
            (0, 0, 2),
            "{:?}",
            p.unreadable_examples
        );
        // The two `#` header lines are not events and are counted as such.
        assert!(
            p.unreadable_examples[0].contains("# tracer: nop"),
            "{:?}",
            p.unreadable_examples
        );
        let e = &p.events;
        assert_eq!(e.len(), 6);
        // Three entries, paired one to one, lengths summed.
        assert_eq!(e[0].device, "0000:03:00.0");
        assert_eq!(e[0].dir, Some(DmaDir::FromDevice));
        assert_eq!(
            (e[0].nents, e[0].ents, e[0].merged),
            (Some(3), Some(3), false)
        );
        assert_eq!(e[0].segments.len(), 3);
        assert_eq!(
            e[0].segments[1],
            Segment {
                phys: Some(PhysAddr::new(0xfe01_0000)),
                dma: Some(DmaAddr::from_descriptor(0xfe01_0000)),
                len: Some(0x20000)
            }
        );
        assert_eq!(e[0].bytes(), 0x31000);
        // Another device, the single-address form, size in decimal.
        assert_eq!(
            (e[1].device.as_str(), e[1].dir),
            ("0000:00:1f.2", Some(DmaDir::ToDevice))
        );
        assert_eq!(e[1].bytes(), 512);
        assert_eq!(
            e[1].segments[0].dma,
            Some(DmaAddr::from_descriptor(0x3a4c_1000))
        );
        assert_eq!(e[2].dir, Some(DmaDir::ToDevice));
        // Unmaps: physical addresses only for a list; the DMA address for
        // a page.
        assert_eq!(e[3].kind, EventKind::Unmap);
        assert_eq!(e[3].segments.len(), 3);
        assert!(e[3]
            .segments
            .iter()
            .all(|s| s.dma.is_none() && s.phys.is_some()));
        assert_eq!(e[4].kind, EventKind::Unmap);
        assert_eq!(
            e[4].segments[0].dma,
            Some(DmaAddr::from_descriptor(0x3a4c_1000))
        );
        // A refusal: `dma_addrs` holds physical addresses; the error kept.
        assert_eq!(e[5].kind, EventKind::MapErr);
        assert_eq!(e[5].dir, Some(DmaDir::Bidirectional));
        assert_eq!(e[5].err, Some(-22));
        assert_eq!(
            e[5].segments.iter().map(|s| s.phys).collect::<Vec<_>>(),
            [
                Some(PhysAddr::new(0xfe20_0000)),
                Some(PhysAddr::new(0xfe20_1000))
            ]
        );
        assert!(e[5].segments.iter().all(|s| s.dma.is_none()));
        assert!(e.iter().all(|e| !e.cut && !e.truncated));
    }

    #[test]
    fn a_list_the_kernel_truncated_and_an_iommu_merge() {
        // 200 entries: the kernel traces 128 and says so.
        let dma: Vec<String> = (0..128)
            .map(|i| format!("{:#x}", 0xfe00_0000u64 + i * 0x1000))
            .collect();
        let sizes = vec!["0x1000"; 128];
        let line = format!(
            "  peerdma-9 [000] ..... 5.000001: dma_map_sg: 0000:03:00.0 dir=TO_DEVICE nents=128/200 ents=128/200 [TRUNCATED] dma_addrs={{{}}} sizes={{{}}} phys_addrs={{{}}} attrs=",
            dma.join(","),
            sizes.join(","),
            dma.join(",")
        );
        let e = one(&line);
        assert!(e.truncated && !e.cut && !e.merged);
        assert_eq!((e.nents, e.ents), (Some(200), Some(200)));
        assert_eq!(e.segments.len(), 128);
        assert_eq!(e.bytes(), 128 * 0x1000);
        // Through an IOMMU, 3 pages merged into one IOVA range.
        let merged = one("  peerdma-9 [000] ..... 5.1: dma_map_sg: 0000:03:00.0 dir=FROM_DEVICE nents=3/3 ents=1/1 dma_addrs={0xfffff000} sizes={0x3000} phys_addrs={0x1000,0x2000,0x3000} attrs=");
        assert!(merged.merged);
        assert_eq!(merged.bytes(), 0x3000);
        assert_eq!(
            merged.segments.iter().filter(|s| s.dma.is_some()).count(),
            1
        );
        assert_eq!(
            merged.segments.iter().filter(|s| s.phys.is_some()).count(),
            3
        );
    }

    #[test]
    fn lines_cut_short_keep_their_complete_entries() {
        let full = "  peerdma-9 [000] ..... 5.000001: dma_map_sg: 0000:03:00.0 dir=TO_DEVICE nents=3/3 ents=3/3 dma_addrs={0xfe000000,0xfe010000,0xfe030000} sizes={0x10000,0x20000,0x1000} phys_addrs={0xfe000000,0xfe010000,0xfe030000} attrs=";
        // Cut inside the physical list: two complete physical entries
        // (the third, `0xfe03`, may itself be cut and is dropped).
        let at = full.find("0xfe030000} attrs").unwrap() + 6;
        let e = one(&full[..at]);
        assert!(e.cut && !e.truncated);
        assert_eq!(e.segments.len(), 3);
        assert_eq!(e.segments[0].phys, Some(PhysAddr::new(0xfe00_0000)));
        assert_eq!(e.segments[2].phys, None, "a cut element is not guessed");
        assert_eq!(
            e.segments[2].dma,
            Some(DmaAddr::from_descriptor(0xfe03_0000))
        );
        // Cut inside `sizes`: the DMA list stands, lengths only where whole.
        let at = full.find("0x20000").unwrap() + 3;
        let e = one(&full[..at]);
        assert!(e.cut);
        assert_eq!(e.segments.iter().filter(|s| s.len.is_some()).count(), 1);
        assert_eq!(e.segments.iter().filter(|s| s.dma.is_some()).count(), 3);
        assert!(e.segments.iter().all(|s| s.phys.is_none()));
        // Cut inside a scalar: the scalar is dropped, never read short.
        let page = "  k-1 [000] ..... 5.2: dma_map_page: 0000:03:00.0 dir=TO_DEVICE dma_addr=fe000000 size=4096 phys_addr=fe000000 attrs=";
        let e = one(&page[..page.find("phys_addr=fe").unwrap() + 12]);
        assert!(e.cut);
        assert_eq!(e.segments[0].phys, None);
        assert_eq!(e.segments[0].len, Some(4096));
        // Cut before any address: counted as an event with nothing usable.
        let e = one(&page[..page.find("dma_addr").unwrap()]);
        assert!(e.cut && e.segments.is_empty());
        // Cut inside the header: not an event.
        let mut p = Parsed::default();
        p.push_line(&page[..12], &Formats::new());
        assert_eq!((p.events.len(), p.unreadable), (0, 1));
    }

    #[test]
    fn text_the_parser_does_not_know_is_refused_not_guessed() {
        for (line, why) in [
            ("  k-1 [000] ..... 5.2: dma_map_page: 0000:03:00.0 dir=SIDEWAYS dma_addr=1 size=1 phys_addr=1 attrs=", "dir=SIDEWAYS"),
            ("  k-1 [000] ..... 5.2: dma_map_page: 0000:03:00.0 dir=TO_DEVICE dma_addr=xyz size=1 phys_addr=1 attrs=", "dma_addr=xyz"),
            ("  k-1 [000] ..... 5.2: dma_map_sg: 0000:03:00.0 dir=TO_DEVICE nents=1/1 ents=1/1 dma_addrs=0x1 sizes={0x1} phys_addrs={0x1} attrs=", "dma_addrs=0x1"),
            ("  k-1 [000] ..... 5.2: dma_map_page: dir=TO_DEVICE dma_addr=1 size=1 phys_addr=1 attrs=", "no device"),
            ("  k-1 [000] ..... 5.2: dma_map_sg_err: 0000:03:00.0 dir=TO_DEVICE dma_addrs={0x1} err=E attrs=", "err=E"),
        ] {
            match parse_line(line, &Formats::new()) {
                Line::Unreadable(w) => assert!(w.contains(why), "{w} / {why}"),
                o => panic!("{line}: {o:?}"),
            }
        }
    }
}
