//! The DMA engine every endpoint has: it takes a list from the mapping
//! layer, checks it is the device's and allows the transfer, holds the P2P
//! provider's in-flight ticket, and moves the bytes in steps of at most
//! 1 MiB as the fabric routes each one — firing due faults between steps,
//! answering Unsupported Requests as hardware does (reads complete with
//! all-ones, writes are dropped) — and reports what it did.

use crate::error::DmaError;
use crate::fabric::{Parts, Request, Target};
use crate::memory::{self, Store, CHUNK};
use crate::timing::{Hop, SimTime};
use crate::{Route, SimMachine};
use peerdma_dma::{DmaSgl, PathTaken};
use peerdma_mem::{Address, Bdf, DmaAddr, PhysAddr};
use peerdma_p2p::DmaTicket;
use peerdma_pci::FnId;
use serde::Serialize;

/// Bytes moved per step (faults fire between steps).
const STEP: u64 = 1 << 20;

/// Bytes that crossed the same links, in the data's direction: what the
/// flow model needs to time a transfer among others.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PathBytes {
    pub hops: Vec<Hop>,
    pub bytes: u64,
}

/// What a finished DMA did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transfer {
    pub bytes: u64,
    /// How the list was mapped; `None` for a DMA to an address the device
    /// was handed (a command's data pointer, a queue entry).
    pub mapped: Option<PathTaken>,
    /// How the fabric carried it (distinct routes, in order of first use).
    pub routes: Vec<Route>,
    /// Bytes answered with Unsupported Request (all-ones or dropped).
    pub unsupported_bytes: u64,
    /// The links crossed and the bytes on each path.
    pub paths: Vec<PathBytes>,
    /// Time of this DMA alone on an idle machine.
    pub time: SimTime,
}

/// Where the bytes of a DMA in which the device writes memory come from,
/// on the device's side.
pub enum Local<'a> {
    /// Bytes the device holds (a completion it posts, a received packet).
    Bytes(&'a [u8]),
    /// The device's media at this offset (a drive's read).
    Media(u64),
    /// The device's own memory (one of its BARs) at this physical address:
    /// its copy engine pushing out of local memory.
    Own(PhysAddr),
}

/// Where the bytes of a DMA in which the device reads memory go, on the
/// device's side.
pub enum LocalMut<'a> {
    /// Into a buffer of the device (a command it fetches).
    Bytes(&'a mut [u8]),
    /// Onto the device's media at this offset (a drive's write).
    Media(u64),
    /// Into the device's own memory at this physical address: its copy
    /// engine pulling into local memory.
    Own(PhysAddr),
}

impl Transfer {
    /// Whether any byte went through the root complex.
    pub fn touched_root_complex(&self) -> bool {
        self.routes.iter().any(Route::through_root_complex)
    }
}

/// An Unsupported Request the fabric answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrEvent {
    pub initiator: Bdf,
    /// The address at the root complex (after the IOMMU).
    pub addr: PhysAddr,
    pub len: u64,
    pub write: bool,
    pub reason: String,
}

/// Where part of a request would go: [`SimMachine::trace`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoutedPiece {
    pub route: Route,
    pub len: u64,
    /// Links crossed in the data's direction.
    pub hops: Vec<Hop>,
}

struct Entry {
    addr: DmaAddr,
    len: u64,
}

/// A piece of a DMA against one store: (offset in the store, offset on the
/// device's side, bytes).
pub(crate) type Piece = (u64, u64, u64);

/// Routes a DMA keeps while it runs: at most this many windows.
const WINDOWS: usize = 4;

/// A window of DMA addresses that routes to one region the same way
/// ([`crate::fabric::Fabric`]'s `window`): `[lo, hi)` lands at `offset` of
/// `region` from `lo` on, over the links of `flow`.
struct Window {
    lo: u64,
    hi: u64,
    region: crate::memmap::RegionId,
    offset: u64,
    flow: usize,
}

/// An endless source of all-ones, for Unsupported Request reads.
static ALL_ONES: std::sync::LazyLock<Store> = std::sync::LazyLock::new(|| {
    let s = Store::new(CHUNK);
    s.fill(0, CHUNK, 0xff);
    s
});

/// Hops in the data's direction: a read's data comes back the way the
/// request went.
fn data_direction(mut hops: Vec<Hop>, write: bool) -> Vec<Hop> {
    if !write {
        hops.reverse();
        for h in &mut hops {
            h.dir = h.dir.reverse();
        }
    }
    hops
}

impl SimMachine {
    fn parts(&self) -> Parts<'_> {
        Parts {
            mem: &self.mem,
            mapper: &self.mapper,
            faults: &self.faults,
        }
    }

    /// Check `sgl` may be used by `engine` for a DMA in which the device
    /// writes (`device_writes`) or reads the list's memory; take the
    /// provider's in-flight ticket.
    fn start(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        device_writes: bool,
    ) -> Result<(FnId, Option<DmaTicket>), DmaError> {
        if sgl.device() != engine {
            return Err(DmaError::WrongDevice {
                mapped_for: sgl.device(),
                engine,
            });
        }
        let allowed = if device_writes {
            sgl.direction().device_writes()
        } else {
            sgl.direction().device_reads()
        };
        if !allowed {
            return Err(DmaError::WrongDirection {
                mapped: sgl.direction(),
                device_writes,
            });
        }
        let f = self.id(engine)?;
        let ticket = match sgl.provider() {
            Some(p) => Some(
                p.begin_dma()
                    .map_err(|_| DmaError::Revoked { provider: p.bdf() })?,
            ),
            None => None,
        };
        Ok((f, ticket))
    }

    /// Move bytes between the engine's local side and the list, step by
    /// step. `local(store, pieces)` reads or writes, for each piece
    /// `(offset, local_offset, n)`, `n` bytes of the device's side at
    /// `local_offset` against `store` at `offset`.
    fn run(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        write: bool,
        local: &mut dyn FnMut(&Store, &[Piece]),
    ) -> Result<Transfer, DmaError> {
        let (initiator, ticket) = self.start(engine, sgl, write)?;
        let entries: Vec<(DmaAddr, u64)> = sgl.entries().iter().map(|e| (e.addr, e.len)).collect();
        let mut t = self.run_entries(engine, initiator, &entries, write, local)?;
        drop(ticket);
        t.mapped = Some(sgl.path());
        Ok(t)
    }

    /// Move bytes between the engine's local side and `entries` (DMA
    /// address, length), step by step, as the fabric routes each step.
    ///
    /// While no fault is queued or in effect, a route found for one step
    /// is reused for later steps inside its window (the fabric's
    /// `window`): the same region, links and route the fabric would give
    /// them, without walking the tree again. With a fault queued or in
    /// effect every step is routed and checked.
    fn run_entries(
        &self,
        engine: Bdf,
        initiator: FnId,
        entries: &[(DmaAddr, u64)],
        write: bool,
        local: &mut dyn FnMut(&Store, &[Piece]),
    ) -> Result<Transfer, DmaError> {
        let parts = self.parts();
        let mut done = 0u64;
        let mut routes: Vec<Route> = Vec::new();
        let mut unsupported = 0u64;
        let mut flows: Vec<(Vec<Hop>, u64)> = Vec::new();
        let mut cache: Vec<Window> = Vec::new();
        // Pieces through known windows into one store, moved together
        // (one lock) before anything else happens.
        let mut batch: Vec<Piece> = Vec::new();
        let mut batch_region: Option<crate::memmap::RegionId> = None;
        for &(addr0, len) in entries {
            let e = Entry { addr: addr0, len };
            let mut off = 0;
            while off < e.len {
                let quiet = self.faults.quiet();
                if !quiet {
                    self.flush(local, &mut batch, batch_region);
                    cache.clear();
                    self.faults.fire(&self.topo, &|b| self.provider(b), done);
                }
                let n = (e.len - off).min(STEP - (done % STEP));
                // A queued fault fires at its byte: end the step there
                // (nothing is queued while quiet, and the lock is skipped).
                let threshold = if quiet {
                    None
                } else {
                    self.faults.next_threshold(done)
                };
                let n = threshold.map_or(n, |t| n.min(t - done));
                let Some(addr) = e
                    .addr
                    .checked_add(off)
                    .filter(|a| a.checked_add(n - 1).is_some())
                else {
                    self.flush(local, &mut batch, batch_region);
                    return Err(DmaError::AddressOverflow {
                        addr: e.addr,
                        len: e.len,
                    });
                };
                if quiet {
                    let a = addr.raw();
                    if let Some(w) = cache.iter().find(|w| w.lo <= a && a + n <= w.hi) {
                        if batch_region != Some(w.region) {
                            self.flush(local, &mut batch, batch_region);
                            batch_region = Some(w.region);
                        }
                        batch.push((w.offset + (a - w.lo), done, n));
                        flows[w.flow].1 += n;
                        off += n;
                        done += n;
                        continue;
                    }
                }
                self.flush(local, &mut batch, batch_region);
                let req = Request {
                    initiator,
                    addr,
                    len: n,
                    write,
                    done,
                };
                let mut local_off = done;
                let pieces = self.fabric.route(&parts, &req)?;
                let single = pieces.len() == 1;
                for p in pieces {
                    if !routes.contains(&p.route) {
                        routes.push(p.route);
                    }
                    let window = if quiet && single {
                        self.fabric.window(&parts, &req, &p)
                    } else {
                        None
                    };
                    match &p.target {
                        Target::Memory { region, offset } => {
                            batch_region = Some(*region);
                            batch.push((*offset, local_off, p.len));
                            self.flush(local, &mut batch, batch_region);
                        }
                        Target::Unsupported { addr, reason } => {
                            unsupported += p.len;
                            self.log_unsupported(engine, *addr, p.len, write, reason);
                            if !write {
                                // A step is at most 1 MiB: inside the
                                // one-chunk all-ones store.
                                local(&ALL_ONES, &[(0, local_off, p.len)]);
                            }
                        }
                    }
                    let hops = data_direction(p.hops, write);
                    let flow = match flows.iter().position(|(h, _)| *h == hops) {
                        Some(i) => {
                            flows[i].1 += p.len;
                            i
                        }
                        None => {
                            flows.push((hops, p.len));
                            flows.len() - 1
                        }
                    };
                    if let Some((lo, hi, region, offset)) = window {
                        if cache.len() == WINDOWS {
                            cache.remove(0);
                        }
                        cache.push(Window {
                            lo,
                            hi,
                            region,
                            offset,
                            flow,
                        });
                    }
                    local_off += p.len;
                }
                off += n;
                done += n;
            }
        }
        self.flush(local, &mut batch, batch_region);
        Ok(Transfer {
            bytes: done,
            mapped: None,
            routes,
            unsupported_bytes: unsupported,
            paths: flows
                .iter()
                .map(|(hops, bytes)| PathBytes {
                    hops: hops.clone(),
                    bytes: *bytes,
                })
                .collect(),
            time: self.time_alone(&flows),
        })
    }

    /// Move the pieces gathered for one store, and start over.
    fn flush(
        &self,
        local: &mut dyn FnMut(&Store, &[Piece]),
        batch: &mut Vec<Piece>,
        region: Option<crate::memmap::RegionId>,
    ) {
        if let (false, Some(r)) = (batch.is_empty(), region) {
            local(&self.mem.region(r).store, batch);
        }
        batch.clear();
    }

    /// The time of a DMA alone on an idle machine: its pieces one after
    /// another, each at its path's narrowest link plus the path's latency
    /// (what the flow model gives a chain of lone flows, without running
    /// it: a DMA of many pieces would pay for an event simulation per
    /// call). A piece inside one device (no links) takes no time.
    fn time_alone(&self, flows: &[(Vec<Hop>, u64)]) -> SimTime {
        let mut ns = 0u64;
        for (path, bytes) in flows {
            let rate = path
                .iter()
                .filter_map(|h| self.net.link(h.link))
                .map(|l| l.bytes_per_sec)
                .fold(f64::INFINITY, f64::min);
            // Rounded as the flow model rounds: up, except within a
            // thousandth of a nanosecond above a whole one.
            let data = if rate.is_finite() && rate > 0.0 {
                (*bytes as f64 / rate * 1e9 - 1e-3).ceil().max(0.0)
            } else {
                0.0
            };
            let piece = if data < u64::MAX as f64 {
                (data as u64).saturating_add(self.net.path_latency(path).as_nanos())
            } else {
                u64::MAX
            };
            ns = ns.saturating_add(piece);
        }
        SimTime::from_nanos(ns)
    }

    fn log_unsupported(&self, initiator: Bdf, addr: PhysAddr, len: u64, write: bool, why: &str) {
        self.ur_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(UrEvent {
                initiator,
                addr,
                len,
                write,
                reason: why.to_string(),
            });
    }

    fn check_len(buffer: usize, sgl: &DmaSgl) -> Result<(), DmaError> {
        if buffer as u64 != sgl.len() {
            return Err(DmaError::LengthMismatch {
                buffer: buffer as u64,
                list: sgl.len(),
            });
        }
        Ok(())
    }

    /// The device writes `data` into the memory of the list (a receive, a
    /// read from a drive).
    pub fn dma_write(&self, engine: Bdf, sgl: &DmaSgl, data: &[u8]) -> Result<Transfer, DmaError> {
        Self::check_len(data.len(), sgl)?;
        self.run(engine, sgl, true, &mut |s, ps| s.write_pieces(ps, data))
    }

    /// The device reads the memory of the list into `out`.
    pub fn dma_read(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        out: &mut [u8],
    ) -> Result<Transfer, DmaError> {
        Self::check_len(out.len(), sgl)?;
        self.run(engine, sgl, false, &mut |s, ps| s.read_pieces(ps, out))
    }

    /// The device moves `sgl.len()` bytes from its media at `media_offset`
    /// into the list's memory (a drive's read).
    pub fn media_to_memory(
        &self,
        engine: Bdf,
        media_offset: u64,
        sgl: &DmaSgl,
    ) -> Result<Transfer, DmaError> {
        let media = self.media_range(engine, media_offset, sgl.len())?;
        self.run(engine, sgl, true, &mut |s, ps| {
            for &(off, loff, n) in ps {
                memory::copy(&media, media_offset + loff, s, off, n)
            }
        })
    }

    /// The device moves the list's memory to its media at `media_offset`
    /// (a drive's write).
    pub fn memory_to_media(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        media_offset: u64,
    ) -> Result<Transfer, DmaError> {
        let media = self.media_range(engine, media_offset, sgl.len())?;
        self.run(engine, sgl, false, &mut |s, ps| {
            for &(off, loff, n) in ps {
                memory::copy(s, off, &media, media_offset + loff, n)
            }
        })
    }

    /// The store and offset of `len` bytes of `engine`'s own memory (one of
    /// its BARs) at `phys`.
    fn own(&self, engine: Bdf, phys: PhysAddr, len: u64) -> Result<(&Store, u64), DmaError> {
        let f = self.id(engine)?;
        let (region, offset) = self.mem.find_or_err(phys, len)?;
        let r = self.mem.region(region);
        match r.owner {
            crate::memmap::Owner::Bar { function, .. } if function == f => Ok((&r.store, offset)),
            _ => Err(DmaError::NotOwnMemory {
                engine,
                addr: phys,
                len,
            }),
        }
    }

    /// `engine` writes `len` bytes from its side (`from`) to the DMA
    /// address `addr` it was handed — a command's data pointer, a queue
    /// entry — as the fabric routes each step. The caller holds whatever
    /// keeps that memory alive (the mapping, the provider's DMA ticket);
    /// the device itself knows only the address.
    pub fn dma_to(
        &self,
        engine: Bdf,
        addr: DmaAddr,
        len: u64,
        from: Local<'_>,
    ) -> Result<Transfer, DmaError> {
        self.dma_to_many(engine, &[(addr, len)], from)
    }

    /// `engine` reads `len` bytes at the DMA address `addr` it was handed
    /// into its side (`into`). See [`SimMachine::dma_to`].
    pub fn dma_from(
        &self,
        engine: Bdf,
        addr: DmaAddr,
        len: u64,
        into: LocalMut<'_>,
    ) -> Result<Transfer, DmaError> {
        self.dma_from_many(engine, &[(addr, len)], into)
    }

    /// Check a list of handed addresses: none empty, none past the end of
    /// the address space; their total length.
    fn handed(engine: Bdf, entries: &[(DmaAddr, u64)]) -> Result<u64, DmaError> {
        if entries.is_empty() {
            // Nothing to route: as a request of no bytes.
            return Err(DmaError::Empty {
                engine,
                addr: DmaAddr::from_descriptor(0),
            });
        }
        let mut total = 0u64;
        for &(addr, len) in entries {
            if len == 0 {
                return Err(DmaError::Empty { engine, addr });
            }
            if addr.checked_add(len - 1).is_none() {
                return Err(DmaError::AddressOverflow { addr, len });
            }
            total = total
                .checked_add(len)
                .ok_or(DmaError::AddressOverflow { addr, len })?;
        }
        Ok(total)
    }

    /// One DMA of many pieces: `engine` writes its side (`from`, taken in
    /// order) to the handed addresses `entries` (DMA address, length), one
    /// after another — a NIC scattering a burst of received packets into
    /// the buffers it was given, a descriptor list in one go. Bytes, routes
    /// and faults are as for one [`SimMachine::dma_to`] per entry; the
    /// result is one [`Transfer`] for all of them. `from` holds as many
    /// bytes as the entries together (its media or own memory from the
    /// given offset on).
    pub fn dma_to_many(
        &self,
        engine: Bdf,
        entries: &[(DmaAddr, u64)],
        from: Local<'_>,
    ) -> Result<Transfer, DmaError> {
        let initiator = self.id(engine)?;
        let len = Self::handed(engine, entries)?;
        match from {
            Local::Bytes(data) => {
                if data.len() as u64 != len {
                    return Err(DmaError::LengthMismatch {
                        buffer: data.len() as u64,
                        list: len,
                    });
                }
                self.run_entries(engine, initiator, entries, true, &mut |s, ps| {
                    s.write_pieces(ps, data)
                })
            }
            Local::Media(m) => {
                let media = self.media_range(engine, m, len)?;
                self.run_entries(engine, initiator, entries, true, &mut |s, ps| {
                    for &(off, loff, n) in ps {
                        memory::copy(&media, m + loff, s, off, n)
                    }
                })
            }
            Local::Own(phys) => {
                let (store, base) = self.own(engine, phys, len)?;
                self.run_entries(engine, initiator, entries, true, &mut |s, ps| {
                    for &(off, loff, n) in ps {
                        memory::copy(store, base + loff, s, off, n)
                    }
                })
            }
        }
    }

    /// One DMA of many pieces the other way: `engine` reads the handed
    /// addresses `entries` in order into its side (`into`). See
    /// [`SimMachine::dma_to_many`].
    pub fn dma_from_many(
        &self,
        engine: Bdf,
        entries: &[(DmaAddr, u64)],
        into: LocalMut<'_>,
    ) -> Result<Transfer, DmaError> {
        let initiator = self.id(engine)?;
        let len = Self::handed(engine, entries)?;
        match into {
            LocalMut::Bytes(out) => {
                if out.len() as u64 != len {
                    return Err(DmaError::LengthMismatch {
                        buffer: out.len() as u64,
                        list: len,
                    });
                }
                self.run_entries(engine, initiator, entries, false, &mut |s, ps| {
                    s.read_pieces(ps, out)
                })
            }
            LocalMut::Media(m) => {
                let media = self.media_range(engine, m, len)?;
                self.run_entries(engine, initiator, entries, false, &mut |s, ps| {
                    for &(off, loff, n) in ps {
                        memory::copy(s, off, &media, m + loff, n)
                    }
                })
            }
            LocalMut::Own(phys) => {
                let (store, base) = self.own(engine, phys, len)?;
                self.run_entries(engine, initiator, entries, false, &mut |s, ps| {
                    for &(off, loff, n) in ps {
                        memory::copy(s, off, store, base + loff, n)
                    }
                })
            }
        }
    }

    /// Where a request of `len` bytes at `addr` from `engine` would go,
    /// piece by piece, without moving data or logging Unsupported
    /// Requests: each piece's route and the links it crosses in the data's
    /// direction (`write`: the device writes memory). A fault injected and
    /// already fired shows as the error the DMA would get.
    pub fn trace(
        &self,
        engine: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<RoutedPiece>, DmaError> {
        if len == 0 {
            return Err(DmaError::Empty { engine, addr });
        }
        if addr.checked_add(len - 1).is_none() {
            return Err(DmaError::AddressOverflow { addr, len });
        }
        let req = Request {
            initiator: self.id(engine)?,
            addr,
            len,
            write,
            done: 0,
        };
        Ok(self
            .fabric
            .route(&self.parts(), &req)?
            .into_iter()
            .map(|p| RoutedPiece {
                route: p.route,
                len: p.len,
                hops: data_direction(p.hops, write),
            })
            .collect())
    }

    /// The links a DMA of `engine` to `addr` would cross, in the data's
    /// direction, without moving data (for timing studies): the hops of
    /// [`SimMachine::trace`]'s pieces, one after another.
    pub fn path_hops(
        &self,
        engine: Bdf,
        addr: DmaAddr,
        len: u64,
        write: bool,
    ) -> Result<Vec<Hop>, DmaError> {
        Ok(self
            .trace(engine, addr, len, write)?
            .into_iter()
            .flat_map(|p| p.hops)
            .collect())
    }
}
