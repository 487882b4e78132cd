//! Running a plan: the unaligned head, the aligned body through the
//! pipeline (falling back to host memory if the kernel refuses P2P DMA),
//! the tail; then the destination's size, `--fsync`, the timing and
//! `--verify`.

use super::buffer::{HostBuf, Staging};
use super::plan::Plan;
use super::report::{CopyPath, CopyReport, Interrupted, PathKnown, Verify};
use super::ring::{self, Body, IoFailure};
use super::shift::Shifter;
use super::verify::{first_difference, hash_range};
use super::{endpoint::Kind, TransferError};
use crate::p2pmem::{self, P2pMem};
use crate::trace::{self, Decided, DmaDir, LegSpec};
use crate::{Error, Result};
use peerdma_mem::{format_size, Bdf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// How far the data got.
struct Moved {
    /// Bytes from the start of the range known to be in place.
    prefix: u64,
    failure: Option<IoFailure>,
    /// The provider whose P2P memory the body went through (first).
    p2p: Option<Bdf>,
    /// The I/O (`read` or `write`) the kernel refused with EREMOTEIO,
    /// after which the rest bounced.
    refused: Option<&'static str>,
}

impl Plan {
    /// Run the copy. `progress` gets (bytes done, bytes total); `stop` ends
    /// it early (the report then says how far it got and how to resume).
    pub fn execute(
        mut self,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<CopyReport> {
        let mut report = self.report();
        report.dry_run = false;
        // `--trace`: from here to the last byte moved (not the verify). On
        // every way out before `finish`, the tracer's guard puts the
        // system's tracing back.
        let devices: Vec<Bdf> = [self.src.pci(), self.dst.pci()]
            .into_iter()
            .flatten()
            .collect();
        let map = self.address_map.take();
        let tracer = trace::start_if(self.opts.trace, &self.opts.sys_root, &devices, || map);
        let t0 = Instant::now();
        let (u0, s0) = cpu_times();
        let moved = match self.move_bytes(&mut report, stop, progress) {
            Ok(m) => m,
            Err(e) => {
                // Nothing is known to be in place: a presized file gets its
                // old size back, a new one stays unnamed and goes.
                let _ = self.settle_size(0);
                return Err(e);
            }
        };
        // The trace's teardown is not part of moving the bytes (the kernel
        // waits for an RCU grace period to remove a trace instance, tens of
        // milliseconds whatever the size of the copy): its time is left
        // out of the throughput.
        let t_trace = Instant::now();
        report.trace = tracer.map(|t| match t {
            Ok(t) => t.finish(&self.legs(&moved)),
            Err(r) => r,
        });
        let trace_secs = t_trace.elapsed().as_secs_f64();
        self.settle_size(moved.prefix)?;
        let count = self.count;
        let complete = moved.failure.is_none() && moved.prefix == count;
        if complete && self.opts.fsync {
            rustix::fs::fdatasync(&self.dst.fd)
                .map_err(|e| Error::io("flush (fdatasync)", &self.dst.path, e.into()))?;
        }
        // A new file gets its name once it holds data (what was copied
        // before a failure or an interruption is kept, for the resume
        // arguments to go on from), or when the copy is complete.
        if moved.prefix > 0 || complete {
            self.dst.name_new_file()?;
        }
        let opts = &self.opts;
        if let Some(e) = moved.failure {
            return Err(TransferError {
                failure: e,
                copied: moved.prefix,
                total: count,
                dst: Some(self.dst.path.display().to_string()),
                resume: Some(resume(opts.skip, opts.seek, count, moved.prefix)),
            }
            .into_error());
        }
        let secs = t0.elapsed().as_secs_f64() - trace_secs;
        let (u1, s1) = cpu_times();
        report.seconds = secs;
        report.bytes_per_sec = if secs > 0.0 {
            moved.prefix as f64 / secs
        } else {
            0.0
        };
        report.cpu_user_seconds = u1 - u0;
        report.cpu_system_seconds = s1 - s0;
        if moved.prefix < count {
            report.interrupted = Some(Interrupted {
                copied: moved.prefix,
                resume: resume(opts.skip, opts.seek, count, moved.prefix),
            });
            return Ok(report);
        }
        if opts.verify {
            let v = self.verify()?;
            report.verified = v.equal;
            report.verify = Some(v);
            if !report.verified {
                return Err(Error::VerifyFailed(Box::new(report)));
            }
        }
        Ok(report)
    }

    /// Head, body and tail (or everything shifted), with the report's
    /// staging, engine and fallback filled in.
    fn move_bytes(
        &mut self,
        report: &mut CopyReport,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Moved> {
        let (opts, lay, count) = (&self.opts, self.layout, self.count);
        let piece = self.chunk.max(lay.align);
        let mut shifter = Shifter {
            src: &self.src,
            dst: &self.dst,
            align: lay.align,
            piece,
            read_buf: HostBuf::new((piece + 2 * lay.align) as usize, self.node)?,
            write_buf: HostBuf::new((piece + 2 * lay.align) as usize, self.node)?,
        };
        if !lay.congruent {
            report.engine = "pread/pwrite";
            let (prefix, failure) = shifter.copy(opts.skip, opts.seek, count, stop, &mut |d| {
                progress(d, count)
            });
            return Ok(Moved {
                prefix,
                failure,
                p2p: None,
                refused: None,
            });
        }
        // A file DST gets its final size first. O_DIRECT writes past the
        // end of a file extend it, and file systems serialize those (ext4
        // takes the inode lock exclusively and waits for each one; with
        // io_uring every such write is punted to a worker thread): writes
        // inside the file run concurrently. On error or interruption the
        // size is set back (settle_size). A new file has no name meanwhile,
        // so a crash leaves nothing that looks complete; an existing file
        // keeps the full size after a crash (see the module's docs).
        let dst = &self.dst;
        if dst.kind == Kind::File && dst.direct && lay.body.len > 0 && opts.seek + count > dst.size
        {
            rustix::fs::ftruncate(&dst.fd, opts.seek + count)
                .map_err(|e| Error::io("extend", &dst.path, e.into()))?;
            self.presized = true;
        }
        // Head first (so an interruption leaves a clean prefix), then the
        // body through the pipeline, then the tail.
        let (prefix, failure) = shifter.copy(opts.skip, opts.seek, lay.head, stop, &mut |_| {});
        let mut moved = Moved {
            prefix,
            failure,
            p2p: None,
            refused: None,
        };
        if moved.failure.is_none() && lay.body.len > 0 {
            self.body(report, &mut moved, stop, progress)?;
        }
        if moved.failure.is_none() && moved.prefix == lay.head + lay.body.len && lay.tail > 0 {
            let t_src = lay.body.src_off + lay.body.len;
            let t_dst = lay.body.dst_off + lay.body.len;
            let (d, failure) = shifter.copy(t_src, t_dst, lay.tail, stop, &mut |_| {});
            moved.prefix += d;
            moved.failure = failure;
        }
        progress(moved.prefix, count);
        Ok(moved)
    }

    /// Host memory for `depth` chunks, described in the report.
    fn host_staging(&self, report: &mut CopyReport, depth: usize) -> Result<Staging> {
        let h = HostBuf::new(depth * self.chunk as usize, self.node)?;
        report.depth = depth;
        report.staging.kind = "host";
        report.staging.provider = None;
        report.staging.bytes = depth as u64 * self.chunk;
        report.staging.pages = Some(h.pages);
        report.staging.numa_node = h.node;
        Ok(Staging::Host(h))
    }

    /// The aligned body through the pipeline; if the kernel refuses P2P
    /// DMA (EREMOTEIO), the rest again through host memory.
    fn body(
        &self,
        report: &mut CopyReport,
        moved: &mut Moved,
        stop: &AtomicBool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<()> {
        let (opts, chunk, depth, count) = (&self.opts, self.chunk, self.depth, self.count);
        let mut staging = match self.choice.provider {
            Some(p) => {
                // P2P memory is allocated in pages; fit depth x chunk
                // into what the provider has.
                let avail = p2pmem::info(&opts.sys_root, p)
                    .map(|i| i.available)
                    .unwrap_or(0);
                let d = depth.min((avail / chunk) as usize).max(1);
                match P2pMem::allocate(&opts.sys_root, p, d * chunk as usize) {
                    Ok(m) => {
                        report.depth = d;
                        report.staging.bytes = (d as u64) * chunk;
                        moved.p2p = Some(p);
                        Staging::P2p(m)
                    }
                    Err(e) if !opts.no_bounce => {
                        report.fallback = Some(format!(
                            "could not allocate P2P memory of {p} ({e}); bounced through host memory"
                        ));
                        report.path = CopyPath::Bounced;
                        report.path_known = PathKnown::Observed;
                        self.host_staging(report, depth)?
                    }
                    Err(e) => return Err(e),
                }
            }
            None => self.host_staging(report, depth)?,
        };
        let mut body = self.layout.body;
        let base_done = moved.prefix;
        loop {
            let p2p = matches!(staging, Staging::P2p(_));
            let d = report.depth.min(staging.len() / chunk as usize).max(1);
            // The run owns the staging memory: it frees it only when no
            // I/O points into it any more.
            let out = ring::run(
                &ring::Job {
                    src: &self.src,
                    dst: &self.dst,
                    body,
                    chunk,
                    depth: d,
                },
                staging,
                stop,
                &mut |b| progress(base_done + b, count),
            )?;
            report.engine = out.engine;
            let copied = out.done_prefix;
            moved.prefix += copied;
            match out.error {
                Some(e) if e.is_eremoteio() && p2p && !opts.no_bounce => {
                    // The kernel refused peer-to-peer DMA: redo from the
                    // first incomplete chunk through host memory.
                    report.fallback = Some(format!(
                        "the kernel refused P2P DMA through the memory of {} ({e}); the remaining {} bounced through host memory",
                        self.choice
                            .provider
                            .map_or("the provider".into(), |p| p.to_string()),
                        format_size(body.len - copied)
                    ));
                    report.path = CopyPath::Bounced;
                    report.path_known = PathKnown::Observed;
                    moved.refused = Some(e.op);
                    // Host memory is not limited by the provider's size.
                    staging = self.host_staging(report, depth)?;
                    body = Body {
                        src_off: body.src_off + copied,
                        dst_off: body.dst_off + copied,
                        len: body.len - copied,
                    };
                }
                Some(e) => {
                    moved.failure = Some(e);
                    return Ok(());
                }
                None => return Ok(()),
            }
        }
    }

    /// The legs of the copy for `--trace`: the source's device writes the
    /// staging memory, the destination's reads it.
    fn legs(&self, moved: &Moved) -> Vec<LegSpec> {
        let complete = moved.failure.is_none() && moved.prefix == self.count;
        let (staging, read, write, bytes) = match moved.p2p {
            Some(p) => (
                trace::Staging::P2p(p),
                self.choice.read_leg.map_or(Decided::Host, Decided::P2p),
                self.choice.write_leg.map_or(Decided::Host, Decided::P2p),
                self.layout.body.len,
            ),
            // Host memory throughout: the edges are staged there too.
            None => (
                trace::Staging::Host,
                Decided::Host,
                Decided::Host,
                self.count,
            ),
        };
        let moved_bytes = (complete && moved.refused.is_none()).then_some(bytes);
        let mut legs = Vec::new();
        for (leg, dev, dir, decided, op) in [
            ("read", self.src.pci(), DmaDir::FromDevice, read, "read"),
            ("write", self.dst.pci(), DmaDir::ToDevice, write, "write"),
        ] {
            if let Some(device) = dev {
                legs.push(LegSpec {
                    leg: leg.into(),
                    device,
                    dir,
                    staging,
                    decided,
                    refused: moved.refused == Some(op),
                    moved: moved_bytes,
                });
            }
        }
        legs
    }

    /// A file DST ends at the end of what was written (or where it was).
    fn settle_size(&mut self, prefix: u64) -> Result<()> {
        let (dst, opts) = (&self.dst, &self.opts);
        if dst.kind != Kind::File {
            return Ok(());
        }
        if prefix > 0 || self.presized {
            let want = if prefix == 0 {
                dst.size
            } else {
                (opts.seek + prefix).max(dst.size)
            };
            let now = rustix::fs::fstat(&dst.fd)
                .map(|s| s.st_size as u64)
                .unwrap_or(want);
            if now != want {
                rustix::fs::ftruncate(&dst.fd, want)
                    .map_err(|e| Error::io("truncate", &dst.path, e.into()))?;
            }
        }
        Ok(())
    }

    /// Hash both ranges; where they differ, find the first byte.
    fn verify(&self) -> Result<Verify> {
        let (src, dst, opts, count) = (&self.src, &self.dst, &self.opts, self.count);
        let align = self.layout.align;
        let verify_error = |failure| TransferError::verify(failure, count);
        let mut hb = HostBuf::new((4 << 20) + 2 * align as usize, self.node)?;
        let hs = hash_range(src, opts.skip, count, align, &mut hb).map_err(verify_error)?;
        let hd = hash_range(dst, opts.seek, count, align, &mut hb).map_err(verify_error)?;
        let equal = hs == hd;
        Ok(Verify {
            src_blake3: hs.to_hex().to_string(),
            dst_blake3: hd.to_hex().to_string(),
            equal,
            first_difference: if equal {
                None
            } else {
                first_difference(src, opts.skip, dst, opts.seek, count, align)
            },
        })
    }
}

/// The arguments that copy the rest of a range after `done` bytes.
fn resume(skip: u64, seek: u64, count: u64, done: u64) -> String {
    format!(
        "--skip {} --seek {} --count {}",
        skip + done,
        seek + done,
        count - done
    )
}

fn cpu_times() -> (f64, f64) {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a pointer to a live rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (t(ru.ru_utime), t(ru.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::super::endpoint::Endpoint;
    use super::super::plan::{layout, Choice};
    use super::super::ring::inject;
    use super::super::CopyOptions;
    use super::*;
    use peerdma_p2p::MapType;
    use std::fs;
    use std::path::Path;

    /// A plan that stages through the P2P memory of `0000:04:00.0`, whose
    /// `p2pmem/allocate` under a fake sysfs root is a regular file (mapping
    /// it works the same way), as if the kernel's verdict were bus address
    /// for both legs.
    fn p2p_plan(root: &Path, dir: &Path, len: usize) -> (Plan, Vec<u8>) {
        let bdf: Bdf = "0000:04:00.0".parse().unwrap();
        let p2p = root.join(format!("sys/bus/pci/devices/{bdf}/p2pmem"));
        fs::create_dir_all(&p2p).unwrap();
        for (f, v) in [
            ("size", "67108864"),
            ("available", "67108864"),
            ("published", "1"),
        ] {
            fs::write(p2p.join(f), v).unwrap();
        }
        fs::File::create(p2p.join("allocate"))
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 4099) as u8).collect();
        fs::write(dir.join("src"), &data).unwrap();
        let mut opts = CopyOptions::new(dir.join("src"), dir.join("dst"));
        opts.sys_root = root.to_path_buf();
        opts.verify = true;
        opts.depth = 2;
        let src = Endpoint::open_src(&opts.src, root).unwrap();
        let dst = Endpoint::open_dst(&opts.dst, root).unwrap();
        let align = src.align.max(dst.align);
        let plan = Plan {
            layout: layout(0, 0, len as u64, align),
            choice: Choice {
                provider: Some(bdf),
                read_leg: Some(MapType::BusAddr),
                write_leg: Some(MapType::BusAddr),
                reason: None,
            },
            count: len as u64,
            chunk: opts.chunk,
            depth: opts.depth,
            node: None,
            presized: false,
            address_map: None,
            src,
            dst,
            opts,
        };
        (plan, data)
    }

    #[test]
    fn a_p2p_copy_reports_a_decided_path_and_verified_bytes() {
        let (root, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (plan, data) = p2p_plan(root.path(), dir.path(), 5 << 20);
        let stop = AtomicBool::new(false);
        let r = plan.execute(&stop, &mut |_, _| {}).unwrap();
        assert_eq!(r.path, CopyPath::P2pBusAddr);
        assert_eq!(r.staging.kind, "p2p");
        assert_eq!(r.path_known, PathKnown::Decided);
        assert!(r.verified && r.verify.as_ref().unwrap().equal);
        assert_eq!(fs::read(dir.path().join("dst")).unwrap(), data);
        let text = r.render();
        assert!(
            text.contains("known: decided by the kernel's rule")
                && text.contains("not observable from user space")
                && text.contains("bytes: verified"),
            "{text}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["path"], "p2p_bus_addr");
        assert_eq!(j["path_known"], "decided");
        assert_eq!(j["verified"], true);
    }

    #[test]
    fn eremoteio_mid_copy_falls_back_and_reports_an_observed_path() {
        let (root, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (plan, data) = p2p_plan(root.path(), dir.path(), 5 << 20);
        // The kernel refuses the third write out of the P2P memory.
        inject::fail_write(3, libc::EREMOTEIO);
        let stop = AtomicBool::new(false);
        let r = plan.execute(&stop, &mut |_, _| {}).unwrap();
        assert_eq!(r.path, CopyPath::Bounced);
        assert_eq!(r.path_known, PathKnown::Observed);
        assert_eq!(r.staging.kind, "host");
        let f = r.fallback.clone().unwrap();
        assert!(
            f.contains("the kernel refused P2P DMA through the memory of 0000:04:00.0")
                && f.contains("EREMOTEIO"),
            "{f}"
        );
        assert!(r.verified, "the bytes were checked");
        assert_eq!(fs::read(dir.path().join("dst")).unwrap(), data);
        assert!(r.render().contains("known: observed"), "{}", r.render());
    }

    #[test]
    fn eremoteio_with_no_bounce_is_its_own_error() {
        let (root, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut plan, data) = p2p_plan(root.path(), dir.path(), 5 << 20);
        plan.opts.no_bounce = true;
        // One chunk in flight at a time, so that completions come in file
        // order whatever the load: with two, a slow first write (seen in
        // CI under load) can still be in flight when the fourth completes,
        // and nothing is a prefix yet. The fourth write fails: three
        // chunks are in place by then.
        plan.depth = 1;
        inject::fail_write(4, libc::EREMOTEIO);
        let stop = AtomicBool::new(false);
        let e = plan.execute(&stop, &mut |_, _| {}).unwrap_err();
        let Error::P2pRefused(t) = &e else {
            panic!("{e:?}");
        };
        assert_eq!(e.errno(), Some(libc::EREMOTEIO));
        // What was copied before the refusal is kept and right.
        assert!(t.copied >= 3 << 20, "{e}");
        let kept = fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(kept.len() as u64, t.copied);
        assert!(kept[..] == data[..kept.len()]);
    }
}
