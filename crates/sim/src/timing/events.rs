//! The event loop of [`Network::simulate`]: between two events every flow
//! moves at a constant rate; an event is the earliest finish of any class
//! or the next arrival. At each event the loop advances every class,
//! finishes the flows that are done (releasing their successors), admits
//! the flows that arrive, and recomputes rates if any class's population
//! changed.
//!
//! Its parts: [`Book`] keeps per-flow times and the queue of arrivals;
//! [`Busy`] accounts each channel's busy time; the rates come from
//! [`Filler`] through [`RateCache`].

use super::cache::{class_hash, RateCache, MEMO_ENTRIES};
use super::classes::{Class, Mode, OrdF64, Prep};
use super::fill::Filler;
use super::time::{to_ns, MAX_NS, NS_PER_SEC};
use super::{ChannelUse, Dir, Flow, FlowResult, LinkId, Network, Schedule, SimTime, TimingError};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A flow is finished when at most `FINISH_REL * bytes + FINISH_ABS` bytes
/// remain; merges finishes that differ only by floating-point noise.
const FINISH_REL: f64 = 1e-9;
const FINISH_ABS: f64 = 1e-6;

/// One event of a traced simulation: rates (bytes/s) of the active flows.
#[cfg_attr(not(test), allow(dead_code))]
pub(super) struct Step {
    pub(super) time: f64,
    pub(super) rates: Vec<(usize, f64)>,
}

/// Per-flow bookkeeping: when each flow started and ended, its successors
/// (as CSR), and the flows waiting to arrive.
struct Book<'a> {
    flows: &'a [Flow],
    latency: Vec<u64>,
    child_start: Vec<usize>,
    children: Vec<u32>,
    /// Predecessors each flow still waits for, and the latest end of
    /// those that ended.
    waiting: Vec<u32>,
    ready_at: Vec<u64>,
    /// Activations not yet reached: (time, flow).
    pending: BinaryHeap<Reverse<(OrdF64, u32)>>,
    out_start: Vec<u64>,
    out_end: Vec<u64>,
    act: Vec<f64>,
    fin: Vec<f64>,
    last_rate: Vec<f64>,
}

impl<'a> Book<'a> {
    fn new(flows: &'a [Flow], latency: Vec<u64>) -> Book<'a> {
        let n = flows.len();
        // Successors of each flow (flows whose `after` names it), as CSR.
        // A predecessor named twice counts once.
        let preds = |f: &Flow| {
            let mut p: Vec<usize> = f.predecessors().collect();
            p.sort_unstable();
            p.dedup();
            p
        };
        let mut child_start = vec![0usize; n + 1];
        let mut waiting = vec![0u32; n];
        for (i, f) in flows.iter().enumerate() {
            for a in preds(f) {
                child_start[a + 1] += 1;
                waiting[i] += 1;
            }
        }
        for i in 0..n {
            child_start[i + 1] += child_start[i];
        }
        let mut children = vec![0u32; child_start[n]];
        let mut cursor = child_start.clone();
        for (i, f) in flows.iter().enumerate() {
            for a in preds(f) {
                children[cursor[a]] = i as u32;
                cursor[a] += 1;
            }
        }
        let mut book = Book {
            flows,
            latency,
            child_start,
            children,
            ready_at: flows.iter().map(|f| f.start.as_nanos()).collect(),
            waiting,
            pending: BinaryHeap::new(),
            out_start: vec![0; n],
            out_end: vec![0; n],
            act: vec![0.0; n],
            fin: vec![0.0; n],
            last_rate: vec![0.0; n],
        };
        for (i, f) in flows.iter().enumerate() {
            if book.waiting[i] == 0 {
                let start = f.start.as_nanos();
                book.out_start[i] = start;
                book.pending.push(Reverse((OrdF64(start as f64), i as u32)));
            }
        }
        book
    }

    /// The time of the next arrival.
    fn next_arrival(&self) -> f64 {
        self.pending.peek().map_or(f64::INFINITY, |r| (r.0).0 .0)
    }

    /// The next flow arriving at or before `now`.
    fn arrival_by(&mut self, now: f64) -> Option<usize> {
        let &Reverse((t, f)) = self.pending.peek()?;
        if t.0 > now {
            return None;
        }
        self.pending.pop();
        Some(f as usize)
    }

    /// Flow `f`'s data is done at internal time `now`, reported `data_end`;
    /// releases its successors.
    fn finish(&mut self, f: usize, now: f64, data_end: u64) -> Result<(), TimingError> {
        self.fin[f] = now;
        let end = data_end
            .checked_add(self.latency[f])
            .ok_or(TimingError::TimeOverflow { flow: f })?;
        self.out_end[f] = end;
        for &c in &self.children[self.child_start[f]..self.child_start[f + 1]] {
            let ci = c as usize;
            self.ready_at[ci] = self.ready_at[ci].max(end);
            self.waiting[ci] -= 1;
            if self.waiting[ci] == 0 {
                let s = self.ready_at[ci];
                self.out_start[ci] = s;
                self.pending.push(Reverse((OrdF64((s as f64).max(now)), c)));
            }
        }
        Ok(())
    }

    /// One result per flow.
    fn results(&self) -> Vec<FlowResult> {
        (0..self.flows.len())
            .map(|i| {
                let bytes = self.flows[i].bytes;
                let dur = self.fin[i] - self.act[i];
                let mean_rate = if bytes == 0 {
                    0.0
                } else if dur > 0.0 {
                    bytes as f64 / dur * NS_PER_SEC
                } else {
                    self.last_rate[i] * NS_PER_SEC
                };
                FlowResult {
                    start: SimTime::from_nanos(self.out_start[i]),
                    end: SimTime::from_nanos(self.out_end[i]),
                    bytes,
                    mean_rate,
                }
            })
            .collect()
    }
}

/// Busy time per channel: a channel is busy while some active class
/// crosses it.
struct Busy {
    busy: Vec<f64>,
    since: Vec<f64>,
    users: Vec<u32>,
}

impl Busy {
    fn new(nch: usize) -> Busy {
        Busy {
            busy: vec![0.0; nch],
            since: vec![0.0; nch],
            users: vec![0; nch],
        }
    }

    /// A class using `chans` became active at `now`.
    fn start(&mut self, chans: &[(u32, f64)], now: f64) {
        for &(c, _) in chans {
            let c = c as usize;
            if self.users[c] == 0 {
                self.since[c] = now;
            }
            self.users[c] += 1;
        }
    }

    /// A class using `chans` became idle at `now`.
    fn stop(&mut self, chans: &[(u32, f64)], now: f64) {
        for &(c, _) in chans {
            let c = c as usize;
            self.users[c] -= 1;
            if self.users[c] == 0 {
                self.busy[c] += now - self.since[c];
            }
        }
    }
}

/// The state of one simulation.
struct Sim<'a> {
    flows: &'a [Flow],
    classes: Vec<Class>,
    class_of: Vec<u32>,
    book: Book<'a>,
    busy: Busy,
    filler: Filler,
    cache: RateCache,
    /// Classes with active flows, sorted by index (= by cap).
    active: Vec<u32>,
    /// Classes whose population changed since rates were last set.
    touched: Vec<u32>,
    /// Per flow, the bytes it may have left and count as finished.
    slack: Vec<f64>,
    /// `sum(class_hash(k) * n_k)` over the populations rates were set for.
    pop_hash: u64,
    fills: usize,
    now: f64,
    events: usize,
}

/// The next event: when, and the class whose head flow finishes then (if
/// a finish comes no later than the next arrival).
struct Event {
    t: f64,
    finishing: Option<u32>,
}

impl<'a> Sim<'a> {
    fn new(net: &Network, flows: &'a [Flow], prep: Prep, memo: bool) -> Sim<'a> {
        let Prep {
            classes,
            class_of,
            latency,
        } = prep;
        Sim {
            flows,
            book: Book::new(flows, latency),
            busy: Busy::new(net.links.len() * 2),
            filler: Filler::new(net.channel_caps(), classes.len()),
            cache: RateCache::new(if memo { MEMO_ENTRIES } else { 0 }),
            classes,
            class_of,
            active: Vec::new(),
            touched: Vec::new(),
            slack: flows
                .iter()
                .map(|f| FINISH_REL * f.bytes as f64 + FINISH_ABS)
                .collect(),
            pop_hash: 0,
            fills: 0,
            now: 0.0,
            events: 0,
        }
    }

    /// The earliest finish of any class or the next arrival; `None` when
    /// nothing is left.
    #[inline(always)]
    fn next_event(&self) -> Result<Option<Event>, TimingError> {
        let mut t_fin = f64::INFINITY;
        let mut fin_k = u32::MAX;
        for &k in &self.active {
            let cl = &self.classes[k as usize];
            if let Some(&Reverse((target, _))) = cl.queue.peek() {
                let t = self.now + (target.0 - cl.served).max(0.0) / cl.rate;
                if t < t_fin {
                    t_fin = t;
                    fin_k = k;
                }
            }
        }
        let t_arr = self.book.next_arrival();
        if self.active.is_empty() && self.book.pending.is_empty() {
            return Ok(None);
        }
        let t = t_fin.min(t_arr).max(self.now);
        if t.is_nan() || t >= MAX_NS {
            let culprit = if t_fin <= t_arr {
                self.classes[fin_k as usize].queue.peek().map(|r| (r.0).1)
            } else {
                self.book.pending.peek().map(|r| (r.0).1)
            };
            return Err(TimingError::TimeOverflow {
                flow: culprit.unwrap_or(0) as usize,
            });
        }
        Ok(Some(Event {
            t,
            finishing: (t_fin <= t_arr).then_some(fin_k),
        }))
    }

    /// Move every active class to time `t`.
    #[inline(always)]
    fn advance(&mut self, t: f64) {
        let dt = t - self.now;
        if dt > 0.0 {
            for &k in &self.active {
                let cl = &mut self.classes[k as usize];
                cl.served += cl.rate * dt;
            }
        }
        self.now = t;
    }

    /// Finish every flow that is done. The class that defined the event
    /// (`forced`) finishes its head flow exactly, so every event makes
    /// progress.
    #[inline(always)]
    fn finish_due(&mut self, forced: Option<u32>) -> Result<(), TimingError> {
        let now = self.now;
        let mut emptied = false;
        for &k in &self.active {
            let cl = &mut self.classes[k as usize];
            if forced == Some(k) {
                if let Some(&Reverse((target, _))) = cl.queue.peek() {
                    cl.served = cl.served.max(target.0);
                }
            }
            let mut changed = false;
            while let Some(&Reverse((target, f))) = cl.queue.peek() {
                let f = f as usize;
                if target.0 - cl.served > self.slack[f] {
                    break;
                }
                cl.queue.pop();
                cl.n -= 1;
                changed = true;
                self.book.last_rate[f] = cl.rate;
                let data_end = to_ns(now).ok_or(TimingError::TimeOverflow { flow: f })?;
                self.book.finish(f, now, data_end)?;
            }
            if changed {
                self.touched.push(k);
            }
            if cl.n == 0 {
                cl.served = 0.0;
                emptied = true;
                self.busy.stop(&cl.chans, now);
            }
        }
        if emptied {
            let classes = &self.classes;
            self.active.retain(|&k| classes[k as usize].n > 0);
        }
        Ok(())
    }

    /// Admit the flows that arrive by now (including successors released
    /// by the finishes just before). A flow of 0 bytes finishes at once.
    #[inline(always)]
    fn arrive(&mut self) -> Result<(), TimingError> {
        let now = self.now;
        while let Some(f) = self.book.arrival_by(now) {
            self.book.act[f] = now;
            if self.flows[f].bytes == 0 {
                let s = self.book.out_start[f];
                self.book.finish(f, now, s)?;
                continue;
            }
            let k = self.class_of[f];
            let cl = &mut self.classes[k as usize];
            if cl.n == 0 {
                cl.served = 0.0;
                // Kept sorted by class index (= by cap) for `Filler::fill`.
                let pos = self.active.binary_search(&k).unwrap_or_else(|p| p);
                self.active.insert(pos, k);
                self.busy.start(&cl.chans, now);
            }
            cl.queue.push(Reverse((
                OrdF64(cl.served + self.flows[f].bytes as f64),
                f as u32,
            )));
            cl.n += 1;
            self.touched.push(k);
        }
        Ok(())
    }

    /// Recompute rates if some class's population changed: from the cache
    /// when it has these populations, else by progressive filling.
    #[inline(always)]
    fn update_rates(&mut self) {
        let mut dirty = false;
        for &k in &self.touched {
            let cl = &mut self.classes[k as usize];
            if cl.n != cl.n_at_fill {
                let z = class_hash(k);
                self.pop_hash = self
                    .pop_hash
                    .wrapping_add(z.wrapping_mul(cl.n as u64))
                    .wrapping_sub(z.wrapping_mul(cl.n_at_fill as u64));
                cl.n_at_fill = cl.n;
                dirty = true;
            }
        }
        self.touched.clear();
        if dirty
            && !self
                .cache
                .restore(self.pop_hash, &self.active, &mut self.classes)
        {
            self.filler.fill(&mut self.classes, &self.active);
            self.fills += 1;
            self.cache.store(self.pop_hash, &self.active, &self.classes);
        }
    }

    /// The rates in force now, per active flow (for tests).
    fn step(&self) -> Step {
        let mut rates = Vec::new();
        for &k in &self.active {
            let cl = &self.classes[k as usize];
            for r in cl.queue.iter() {
                rates.push(((r.0).1 as usize, cl.rate * NS_PER_SEC));
            }
        }
        rates.sort_unstable_by_key(|r| r.0);
        Step {
            time: self.now,
            rates,
        }
    }

    /// The schedule of a finished simulation.
    fn schedule(self, net: &Network) -> Schedule {
        let nch = net.links.len() * 2;
        let mut chan_bytes = vec![0u64; nch];
        for (i, f) in self.flows.iter().enumerate() {
            for &(c, m) in &self.classes[self.class_of[i] as usize].chans {
                let b = &mut chan_bytes[c as usize];
                *b = b.saturating_add(f.bytes.saturating_mul(m as u64));
            }
        }
        let channels = (0..nch)
            .map(|c| ChannelUse {
                link: LinkId::new(net.id, (c / 2) as u32),
                dir: if c % 2 == 0 { Dir::Up } else { Dir::Down },
                bytes: chan_bytes[c],
                busy: SimTime::from_nanos(to_ns(self.busy.busy[c]).unwrap_or(u64::MAX)),
            })
            .collect();
        let makespan = SimTime::from_nanos(self.book.out_end.iter().copied().max().unwrap_or(0));
        Schedule {
            flows: self.book.results(),
            channels,
            makespan,
            events: self.events,
            network: net.id,
        }
    }
}

impl Network {
    /// The event loop. `trace`, if given, receives the per-flow rates in
    /// force after every event (used by the tests).
    ///
    /// With `memo`, rates are looked up in a small cache of recent
    /// (populations -> rates) results before being recomputed; the result is
    /// identical either way. Also returns how many times rates were
    /// computed from scratch.
    pub(super) fn run(
        &self,
        flows: &[Flow],
        memo: bool,
        mut trace: Option<&mut Vec<Step>>,
    ) -> Result<(Schedule, usize), TimingError> {
        let prep = self.prepare(flows, Mode::Simulate)?;
        let mut sim = Sim::new(self, flows, prep, memo);
        while let Some(event) = sim.next_event()? {
            sim.advance(event.t);
            sim.finish_due(event.finishing)?;
            sim.arrive()?;
            sim.events += 1;
            sim.update_rates();
            if let Some(tr) = trace.as_deref_mut() {
                tr.push(sim.step());
            }
        }
        let fills = sim.fills;
        Ok((sim.schedule(self), fills))
    }
}
