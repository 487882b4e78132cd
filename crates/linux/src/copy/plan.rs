//! The plan of a copy: the options checked, both ends opened and described,
//! the refusals that protect data, the staging memory chosen and the ranges
//! laid out. Nothing is written: `--dry-run` is the plan's report.

use super::buffer::Pages;
use super::endpoint::{self, Endpoint, Kind};
use super::medium;
use super::report::{end_report, CopyPath, CopyReport, PathKnown, StagingReport};
use super::ring::{Body, MAX_CHUNK};
use super::{unchecked_via, CopyOptions, Refusal, UNCHECKED_VIA_ENV};
use crate::p2pmem;
use crate::{Error, Result};
use peerdma_mem::{Bdf, PAGE_SIZE};
use peerdma_p2p::{choose_staging, MapType, Memory, NoStaging};
use peerdma_pci::{Source, Topology};

/// A copy, planned: what [`Plan::execute`] will do, and what a dry run
/// reports ([`Plan::report`]).
#[derive(Debug)]
pub struct Plan {
    pub(crate) opts: CopyOptions,
    pub(crate) src: Endpoint,
    /// A destination file that did not exist has no name until the copy
    /// has written to it (see `newfile.rs`): a plan dropped unexecuted, or
    /// a copy that fails before writing, leaves nothing.
    pub(crate) dst: Endpoint,
    pub(crate) count: u64,
    pub(crate) layout: Layout,
    pub(crate) choice: Choice,
    pub(crate) chunk: u64,
    pub(crate) depth: usize,
    /// The NUMA node of the devices, for host memory.
    pub(crate) node: Option<u32>,
    /// The destination file was extended to its final size (execute).
    pub(crate) presized: bool,
    /// The machine's address map, for `--trace` (read while the topology
    /// is at hand).
    pub(crate) address_map: Option<crate::trace::AddressMap>,
}

/// The decision about staging memory.
#[derive(Debug, Clone)]
pub(crate) struct Choice {
    pub provider: Option<Bdf>,
    pub read_leg: Option<MapType>,
    pub write_leg: Option<MapType>,
    /// Why the copy is not P2P (or why it is tried anyway).
    pub reason: Option<String>,
}

impl Choice {
    fn none(reason: String) -> Choice {
        Choice {
            provider: None,
            read_leg: None,
            write_leg: None,
            reason: Some(reason),
        }
    }

    pub fn path(&self) -> CopyPath {
        match (self.read_leg, self.write_leg) {
            (Some(MapType::BusAddr), Some(MapType::BusAddr)) => CopyPath::P2pBusAddr,
            (Some(_), Some(_)) => CopyPath::P2pThruHostBridge,
            _ => CopyPath::Bounced,
        }
    }
}

/// The ranges of a copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub align: u64,
    /// SRC and DST offsets agree modulo the alignment.
    pub congruent: bool,
    pub head: u64,
    pub body: Body,
    pub tail: u64,
}

pub(crate) fn layout(skip: u64, seek: u64, count: u64, align: u64) -> Layout {
    let congruent = skip % align == seek % align;
    if !congruent || count == 0 {
        return Layout {
            align,
            congruent,
            head: count,
            body: Body {
                src_off: skip + count,
                dst_off: seek + count,
                len: 0,
            },
            tail: 0,
        };
    }
    let head = ((align - seek % align) % align).min(count);
    let rest = count - head;
    let tail = rest % align;
    Layout {
        align,
        congruent,
        head,
        body: Body {
            src_off: skip + head,
            dst_off: seek + head,
            len: rest - tail,
        },
        tail,
    }
}

/// Options that are wrong whatever the files.
fn check_options(opts: &CopyOptions) -> Result<()> {
    if opts.chunk == 0 || opts.chunk % PAGE_SIZE != 0 || opts.chunk > MAX_CHUNK {
        return Err(Error::bad(format!(
            "--chunk {} is out of range: give a multiple of {PAGE_SIZE} from {PAGE_SIZE} up to {MAX_CHUNK} (1 GiB)",
            opts.chunk
        )));
    }
    if opts.depth == 0 || opts.depth > 256 {
        return Err(Error::bad(format!(
            "--depth {} is not between 1 and 256",
            opts.depth
        )));
    }
    Ok(())
}

/// The number of bytes to copy, checked against the source.
fn source_range(opts: &CopyOptions, src: &Endpoint) -> Result<u64> {
    if opts.skip > src.size {
        return Err(Error::bad(format!(
            "--skip {} is beyond the end of {} ({} bytes)",
            opts.skip,
            opts.src.display(),
            src.size
        )));
    }
    match opts.count {
        Some(c) => {
            if opts.skip.checked_add(c).is_none_or(|e| e > src.size) {
                return Err(Error::bad(format!(
                    "--count {c} at --skip {} runs past the end of {} ({} bytes)",
                    opts.skip,
                    opts.src.display(),
                    src.size
                )));
            }
            Ok(c)
        }
        None => Ok(src.size - opts.skip),
    }
}

/// The largest file offset the kernel takes (`loff_t` is signed).
const MAX_OFFSET: u64 = i64::MAX as u64;

/// The destination range fits the kernel's file offsets.
fn destination_range(opts: &CopyOptions, count: u64) -> Result<()> {
    if opts.seek.checked_add(count).is_none_or(|e| e > MAX_OFFSET) {
        return Err(Error::bad(format!(
            "--seek {} with {count} bytes to copy ends past the largest file offset, {MAX_OFFSET} (2^63 - 1)",
            opts.seek
        )));
    }
    Ok(())
}

/// `--via` names a provider of this machine, whatever the ends are on.
fn check_via(via: &str, topo: &Topology) -> Result<()> {
    let bad =
        |message: String, source: Option<crate::Cause>| Error::BadArgument { message, source };
    let f = topo
        .lookup(via)
        .map_err(|e| bad(format!("--via {via}: {e}"), Some(Box::new(e))))?;
    if !peerdma_p2p::providers(topo).contains(&f) {
        let e = NoStaging::NotAProvider {
            provider: topo.function(f).bdf,
        };
        return Err(bad(format!("--via {via}: {e}"), Some(Box::new(e))));
    }
    Ok(())
}

/// Refusals that protect data, before anything is written.
fn refuse(opts: &CopyOptions, src: &Endpoint, dst: &Endpoint, count: u64) -> Result<()> {
    if dst.kind == Kind::BlockDevice && opts.seek.checked_add(count).is_none_or(|e| e > dst.size) {
        return Err(Error::bad(format!(
            "{} bytes at offset {} do not fit {} ({} bytes)",
            count,
            opts.seek,
            dst.path.display(),
            dst.size
        )));
    }
    let (a0, a1) = (opts.skip, opts.skip + count);
    let (b0, b1) = (opts.seek, opts.seek + count);
    let refused = |detail: String| -> Result<()> {
        Err(Refusal::Overlap {
            src: src.path.display().to_string(),
            dst: dst.path.display().to_string(),
            detail,
        }
        .into())
    };
    if src.identity == dst.identity {
        if a0 < a1 && a0 < b1 && b0 < a1 {
            return refused(format!(
                "they are the same {} and the ranges [{a0}, {a1}) and [{b0}, {b1}) overlap",
                if src.kind == Kind::File {
                    "file"
                } else {
                    "device"
                }
            ));
        }
        return Ok(());
    }
    // Different files or devices may still share a medium: a partition and
    // its disk, a loop device and its file, device mapper and what is below.
    let s = medium::extents(&opts.sys_root, src, a0, count, &medium::dmsetup_table);
    let d = medium::extents(&opts.sys_root, dst, b0, count, &medium::dmsetup_table);
    if count > 0 {
        if let Some((x, y)) = medium::overlap(&s, &d) {
            return refused(medium::describe((a0, a1), x, (b0, b1), y));
        }
    }
    Ok(())
}

/// The staging memory: a provider both ends' devices reach (peerdma-p2p's
/// choice, with what the provider has free read from sysfs), or the
/// reason for host memory.
fn choose(
    opts: &CopyOptions,
    src: &Endpoint,
    dst: &Endpoint,
    topo: Option<&Topology>,
) -> Result<Choice> {
    let (Some(s), Some(d)) = (src.pci(), dst.pci()) else {
        let which = if src.pci().is_none() { src } else { dst };
        return Ok(Choice::none(format!(
            "{} is not on a PCI device, so there is no peer to DMA from or to",
            which.path.display()
        )));
    };
    if !src.direct || !dst.direct {
        let which = if !src.direct { src } else { dst };
        return Ok(Choice::none(format!(
            "{} does not support O_DIRECT, so the kernel cannot DMA into a P2P buffer",
            which.path.display()
        )));
    }
    let Some(topo) = topo else {
        return Ok(Choice::none(
            "the machine's PCI topology could not be read".into(),
        ));
    };
    let missing = |b: Bdf, e: &Endpoint| Error::Malformed {
        origin: opts
            .sys_root
            .join("sys/bus/pci/devices")
            .display()
            .to_string(),
        detail: format!(
            "{b} (behind {}) is not among the PCI functions",
            e.path.display()
        ),
    };
    let sf = topo.find(s).ok_or_else(|| missing(s, src))?;
    let df = topo.find(d).ok_or_else(|| missing(d, dst))?;
    let via = match &opts.via {
        Some(v) => Some(topo.lookup(v)?),
        None => None,
    };
    let memory = |p| -> std::result::Result<Memory, String> {
        p2pmem::info(&opts.sys_root, topo.function(p).bdf)
            .map(|i| Memory {
                published: i.published,
                available: i.available,
            })
            .map_err(|e| e.to_string())
    };
    match choose_staging(topo, sf, df, via, PAGE_SIZE, &memory) {
        Ok(c) => Ok(Choice {
            provider: Some(topo.function(c.provider).bdf),
            read_leg: Some(c.read_leg),
            write_leg: Some(c.write_leg),
            reason: None,
        }),
        // The fallback's test hook: try `--via` anyway, the kernel decides.
        Err(
            e @ NoStaging::Unreachable {
                provider,
                read_leg,
                write_leg,
                ..
            },
        ) if unchecked_via() => match topo.find(provider).map(memory) {
            Some(Ok(m)) if m.published && m.available >= PAGE_SIZE => Ok(Choice {
                provider: Some(provider),
                read_leg: Some(read_leg),
                write_leg: Some(write_leg),
                reason: Some(format!(
                    "{e}; tried anyway ({UNCHECKED_VIA_ENV}): the kernel decides"
                )),
            }),
            _ => Ok(Choice::none(e.to_string())),
        },
        Err(e) => Ok(Choice::none(e.to_string())),
    }
}

/// Plan a copy: check the options, open both ends (a missing destination
/// file is created without a name),
/// refuse what would lose data, choose the staging memory and lay out the
/// ranges.
pub fn plan(opts: &CopyOptions) -> Result<Plan> {
    check_options(opts)?;
    let src = Endpoint::open_src(&opts.src, &opts.sys_root)?;
    let count = source_range(opts, &src)?;
    destination_range(opts, count)?;
    let topo = match (Source::Root(opts.sys_root.clone()).load(), &opts.via) {
        (Ok(t), Some(v)) => {
            check_via(v, &t)?;
            Some(t)
        }
        (Err(e), Some(v)) => {
            return Err(Error::BadArgument {
                message: format!(
                    "--via {v}: the machine's PCI topology cannot be read to check it: {e}"
                ),
                source: Some(Box::new(e)),
            })
        }
        (t, None) => t.ok(),
    };
    // A block device is checked before it is opened: the exclusive open
    // itself fails on a mounted device, with a less helpful message.
    endpoint::check_block_dst(
        &opts.dst,
        &opts.sys_root,
        opts.force_device,
        count,
        opts.seek,
    )?;
    let dst = Endpoint::open_dst(&opts.dst, &opts.sys_root)?;
    refuse(opts, &src, &dst, count)?;
    let mut choice = choose(opts, &src, &dst, topo.as_ref())?;
    if opts.no_bounce && choice.provider.is_none() {
        return Err(Refusal::NoBounce {
            src: src.describe_end(),
            dst: dst.describe_end(),
            reason: choice.reason.clone().unwrap_or_default(),
        }
        .into());
    }
    let align = src.align.max(dst.align).max(512);
    let lay = layout(opts.skip, opts.seek, count, align);
    if !lay.congruent && choice.provider.is_some() {
        choice = Choice::none(format!(
            "--skip {} and --seek {} differ modulo the {align}-byte O_DIRECT alignment, so the data must be shifted by the CPU in host memory",
            opts.skip, opts.seek
        ));
        if opts.no_bounce {
            return Err(Refusal::NoBounce {
                src: src.describe_end(),
                dst: dst.describe_end(),
                reason: choice.reason.clone().unwrap_or_default(),
            }
            .into());
        }
    }
    let chunk = opts.chunk;
    let depth = opts.depth.min(lay.body.len.div_ceil(chunk).max(1) as usize);
    let node = src.numa_node().or(dst.numa_node());
    let address_map = match (&topo, opts.trace) {
        (Some(t), true) => {
            let devices: Vec<Bdf> = [src.pci(), dst.pci()].into_iter().flatten().collect();
            Some(crate::trace::address_map(t, &opts.sys_root, &devices))
        }
        _ => None,
    };
    Ok(Plan {
        opts: opts.clone(),
        src,
        dst,
        count,
        layout: lay,
        choice,
        chunk,
        depth,
        node,
        presized: false,
        address_map,
    })
}

impl Plan {
    /// The plan as a report: what the copy will do (`dry_run` set).
    pub fn report(&self) -> CopyReport {
        let lay = &self.layout;
        CopyReport {
            src: end_report(&self.src, self.opts.skip),
            dst: end_report(&self.dst, self.opts.seek),
            bytes: self.count,
            path: self.choice.path(),
            read_leg: self.choice.read_leg,
            write_leg: self.choice.write_leg,
            staging: StagingReport {
                kind: if self.choice.provider.is_some() {
                    "p2p"
                } else {
                    "host"
                },
                provider: self.choice.provider,
                bytes: self.depth as u64 * self.chunk,
                pages: None::<Pages>,
                numa_node: self.node,
            },
            reason: self.choice.reason.clone(),
            fallback: None,
            path_known: PathKnown::Decided,
            verified: false,
            mode: if lay.congruent { "direct" } else { "shifted" },
            edge_bytes: lay.head + lay.tail,
            chunk: self.chunk,
            depth: self.depth,
            engine: "io_uring",
            dry_run: true,
            seconds: 0.0,
            bytes_per_sec: 0.0,
            cpu_user_seconds: 0.0,
            cpu_system_seconds: 0.0,
            verify: None,
            interrupted: None,
            trace: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_split_head_body_tail() {
        assert_eq!(
            layout(4096, 8192, 3 * 4096, 4096),
            Layout {
                align: 4096,
                congruent: true,
                head: 0,
                body: Body {
                    src_off: 4096,
                    dst_off: 8192,
                    len: 3 * 4096
                },
                tail: 0
            }
        );
        let l = layout(100, 612, 10_000, 512);
        assert!(l.congruent);
        assert_eq!(l.head, 412);
        assert_eq!(
            l.body,
            Body {
                src_off: 512,
                dst_off: 1024,
                len: 9216
            }
        );
        assert_eq!(l.tail, 10_000 - 412 - 9216);
        let l = layout(1, 0, 1000, 512);
        assert!(!l.congruent);
        assert_eq!((l.head, l.body.len, l.tail), (1000, 0, 0));
        let l = layout(10, 10, 5, 4096);
        assert_eq!(
            (l.head, l.body.len, l.tail),
            (5, 0, 0),
            "a copy inside one block"
        );
    }
}
