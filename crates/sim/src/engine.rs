//! The DMA engine every endpoint has: it takes a list from the mapping
//! layer, checks it is the device's and allows the transfer, holds the P2P
//! provider's in-flight ticket, and moves the bytes in steps of at most
//! 1 MiB as the fabric routes each one — firing due faults between steps,
//! answering Unsupported Requests as hardware does (reads complete with
//! all-ones, writes are dropped) — and reports what it did.

use crate::error::DmaError;
use crate::fabric::{Parts, Request, Target};
use crate::memory::{self, Store, CHUNK};
use crate::timing::{Flow, Hop, SimTime};
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
    /// step. `local(store, offset, local_offset, n)` reads or writes `n`
    /// bytes of the device's side at `local_offset` against `store` at
    /// `offset`.
    fn run(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        write: bool,
        local: &mut dyn FnMut(&Store, u64, u64, u64),
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
    fn run_entries(
        &self,
        engine: Bdf,
        initiator: FnId,
        entries: &[(DmaAddr, u64)],
        write: bool,
        local: &mut dyn FnMut(&Store, u64, u64, u64),
    ) -> Result<Transfer, DmaError> {
        let parts = self.parts();
        let mut done = 0u64;
        let mut routes: Vec<Route> = Vec::new();
        let mut unsupported = 0u64;
        let mut flows: Vec<(Vec<Hop>, u64)> = Vec::new();
        for &(addr0, len) in entries {
            let e = Entry { addr: addr0, len };
            let mut off = 0;
            while off < e.len {
                self.faults.fire(&self.topo, &|b| self.provider(b), done);
                let n = (e.len - off).min(STEP - (done % STEP));
                // A queued fault fires at its byte: end the step there.
                let n = match self.faults.next_threshold(done) {
                    Some(t) => n.min(t - done),
                    None => n,
                };
                let addr = e
                    .addr
                    .checked_add(off)
                    .filter(|a| a.checked_add(n - 1).is_some())
                    .ok_or(DmaError::AddressOverflow {
                        addr: e.addr,
                        len: e.len,
                    })?;
                let req = Request {
                    initiator,
                    addr,
                    len: n,
                    write,
                    done,
                };
                let mut local_off = done;
                for p in self.fabric.route(&parts, &req)? {
                    if !routes.contains(&p.route) {
                        routes.push(p.route);
                    }
                    match &p.target {
                        Target::Memory { region, offset } => {
                            local(&self.mem.region(*region).store, *offset, local_off, p.len);
                        }
                        Target::Unsupported { addr, reason } => {
                            unsupported += p.len;
                            self.log_unsupported(engine, *addr, p.len, write, reason);
                            if !write {
                                local(&ALL_ONES, 0, local_off, p.len);
                            }
                        }
                    }
                    let hops = data_direction(p.hops, write);
                    match flows.iter_mut().find(|(h, _)| *h == hops) {
                        Some((_, b)) => *b += p.len,
                        None => flows.push((hops, p.len)),
                    }
                    local_off += p.len;
                }
                off += n;
                done += n;
            }
        }
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
            time: self.time_alone(flows),
        })
    }

    /// The time of a DMA alone on an idle machine: its pieces one after
    /// another.
    fn time_alone(&self, flows: Vec<(Vec<Hop>, u64)>) -> SimTime {
        let chain: Vec<Flow> = flows
            .into_iter()
            .enumerate()
            .map(|(i, (path, bytes))| Flow {
                path,
                bytes,
                after: i.checked_sub(1),
                ..Flow::default()
            })
            .collect();
        // Only a time past ~584 years can fail here.
        self.net
            .simulate(&chain)
            .map_or(SimTime::MAX, |s| s.makespan)
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
        self.run(engine, sgl, true, &mut |s, off, loff, n| {
            s.write(off, &data[loff as usize..(loff + n) as usize])
        })
    }

    /// The device reads the memory of the list into `out`.
    pub fn dma_read(
        &self,
        engine: Bdf,
        sgl: &DmaSgl,
        out: &mut [u8],
    ) -> Result<Transfer, DmaError> {
        Self::check_len(out.len(), sgl)?;
        self.run(engine, sgl, false, &mut |s, off, loff, n| {
            s.read(off, &mut out[loff as usize..(loff + n) as usize])
        })
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
        self.run(engine, sgl, true, &mut |s, off, loff, n| {
            memory::copy(&media, media_offset + loff, s, off, n)
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
        self.run(engine, sgl, false, &mut |s, off, loff, n| {
            memory::copy(s, off, &media, media_offset + loff, n)
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
        let initiator = self.id(engine)?;
        if len == 0 {
            return Err(DmaError::Empty { engine, addr });
        }
        let entries = [(addr, len)];
        match from {
            Local::Bytes(data) => {
                if data.len() as u64 != len {
                    return Err(DmaError::LengthMismatch {
                        buffer: data.len() as u64,
                        list: len,
                    });
                }
                self.run_entries(engine, initiator, &entries, true, &mut |s, off, loff, n| {
                    s.write(off, &data[loff as usize..(loff + n) as usize])
                })
            }
            Local::Media(m) => {
                let media = self.media_range(engine, m, len)?;
                self.run_entries(engine, initiator, &entries, true, &mut |s, off, loff, n| {
                    memory::copy(&media, m + loff, s, off, n)
                })
            }
            Local::Own(phys) => {
                let (store, base) = self.own(engine, phys, len)?;
                self.run_entries(engine, initiator, &entries, true, &mut |s, off, loff, n| {
                    memory::copy(store, base + loff, s, off, n)
                })
            }
        }
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
        let initiator = self.id(engine)?;
        if len == 0 {
            return Err(DmaError::Empty { engine, addr });
        }
        let entries = [(addr, len)];
        match into {
            LocalMut::Bytes(out) => {
                if out.len() as u64 != len {
                    return Err(DmaError::LengthMismatch {
                        buffer: out.len() as u64,
                        list: len,
                    });
                }
                self.run_entries(
                    engine,
                    initiator,
                    &entries,
                    false,
                    &mut |s, off, loff, n| {
                        s.read(off, &mut out[loff as usize..(loff + n) as usize])
                    },
                )
            }
            LocalMut::Media(m) => {
                let media = self.media_range(engine, m, len)?;
                self.run_entries(
                    engine,
                    initiator,
                    &entries,
                    false,
                    &mut |s, off, loff, n| memory::copy(s, off, &media, m + loff, n),
                )
            }
            LocalMut::Own(phys) => {
                let (store, base) = self.own(engine, phys, len)?;
                self.run_entries(
                    engine,
                    initiator,
                    &entries,
                    false,
                    &mut |s, off, loff, n| memory::copy(s, off, store, base + loff, n),
                )
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
