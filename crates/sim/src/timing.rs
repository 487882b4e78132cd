//! Flow-level timing model of the simulated machine.
//!
//! The model works on *flows*, not packets: a flow moves `bytes` along a path
//! of full-duplex links, each crossed in one direction. Every direction of a
//! link is a *channel* with the link's full bandwidth. Concurrent flows share
//! channels max-min fairly (progressive filling); a flow's own `rate_cap`
//! (e.g. a drive's media rate) acts as a private channel of that flow.
//!
//! Simulated time ([`SimTime`], nanoseconds) is separate from wall time.
//! [`Network::simulate`] is event-driven: rates are recomputed only when a flow
//! starts or finishes, and between two events every flow moves at a constant
//! rate. A flow's end time is the time its last byte leaves its bottleneck
//! plus the sum of the latencies of the links on its path; latency is paid
//! once per flow and does not reduce throughput.
//!
//! Flows with the same set of channels and the same rate cap always get the
//! same rate, so the simulator groups them into classes and keeps, per class,
//! a virtual "bytes served per flow" clock: an event costs time proportional
//! to the number of *classes* in flight, not the number of flows. Rates
//! depend only on how many flows of each class are active, so recent results
//! are cached (compared exactly before reuse) and a queue that returns to an
//! earlier population does not pay for the computation again.
//!
//! Internally, time is `f64` nanoseconds and rates are `f64`. Reported times
//! are whole nanoseconds, rounded up (values within 0.001 ns above an integer
//! round down, absorbing floating-point noise); a queued flow (`after`)
//! starts exactly at its predecessor's reported end. A flow counts as done
//! once less than a billionth of its bytes remains, so flows that finish
//! together up to rounding finish in one event.
//!
//! ```
//! use peerdma_sim::timing::{Dir, Flow, Hop, Network, SimTime};
//!
//! let mut net = Network::new();
//! let link = net.add_link("x16", 10e9, SimTime::from_micros(1)).unwrap();
//! let flow = Flow::new(vec![Hop { link, dir: Dir::Up }], 1_000_000_000);
//! let schedule = net.simulate(&[flow]).unwrap();
//! assert_eq!(schedule.flows[0].end, SimTime::from_millis(100) + SimTime::from_micros(1));
//! ```

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

use serde::{Deserialize, Serialize};

const NS_PER_SEC: f64 = 1e9;
/// Largest simulated time (exclusive) representable in `u64` nanoseconds.
const MAX_NS: f64 = 18_446_744_073_709_551_615.0;
/// Internal times within this many nanoseconds above an integer round down
/// when reported (absorbs floating-point noise).
const ROUND_SLACK_NS: f64 = 1e-3;
/// A flow is finished when at most `FINISH_REL * bytes + FINISH_ABS` bytes
/// remain; merges finishes that differ only by floating-point noise.
const FINISH_REL: f64 = 1e-9;
const FINISH_ABS: f64 = 1e-6;

// ---------------------------------------------------------------------------
// Time, links, paths
// ---------------------------------------------------------------------------

/// A point in (or span of) simulated time, in nanoseconds.
///
/// Arithmetic saturates at `u64::MAX` / zero instead of panicking.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
pub struct SimTime(pub u64);

impl SimTime {
    /// Time zero.
    pub const ZERO: SimTime = SimTime(0);
    /// The largest representable time.
    pub const MAX: SimTime = SimTime(u64::MAX);

    /// `ns` nanoseconds.
    pub const fn from_nanos(ns: u64) -> Self {
        SimTime(ns)
    }

    /// `us` microseconds (saturating).
    pub const fn from_micros(us: u64) -> Self {
        SimTime(us.saturating_mul(1_000))
    }

    /// `ms` milliseconds (saturating).
    pub const fn from_millis(ms: u64) -> Self {
        SimTime(ms.saturating_mul(1_000_000))
    }

    /// `s` seconds (saturating).
    pub const fn from_secs(s: u64) -> Self {
        SimTime(s.saturating_mul(1_000_000_000))
    }

    /// The time in nanoseconds.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time in seconds.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NS_PER_SEC
    }

    /// `secs` seconds, rounded to the nearest nanosecond. Negative and NaN
    /// inputs give [`SimTime::ZERO`]; too large ones give [`SimTime::MAX`].
    pub fn from_secs_f64(secs: f64) -> Self {
        if secs.is_nan() || secs <= 0.0 {
            return SimTime::ZERO;
        }
        let ns = (secs * NS_PER_SEC).round();
        if ns >= MAX_NS {
            SimTime::MAX
        } else {
            SimTime(ns as u64)
        }
    }

    /// `self + rhs`, or `None` on overflow.
    pub const fn checked_add(self, rhs: SimTime) -> Option<SimTime> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(SimTime(v)),
            None => None,
        }
    }
}

impl Add for SimTime {
    type Output = SimTime;
    /// Saturating addition.
    fn add(self, rhs: SimTime) -> SimTime {
        SimTime(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign for SimTime {
    fn add_assign(&mut self, rhs: SimTime) {
        *self = *self + rhs;
    }
}

impl Sub for SimTime {
    type Output = SimTime;
    /// Saturating subtraction (never below zero).
    fn sub(self, rhs: SimTime) -> SimTime {
        SimTime(self.0.saturating_sub(rhs.0))
    }
}

impl fmt::Display for SimTime {
    /// Human-readable with an adaptive unit: `850 ns`, `1.500 µs`,
    /// `100.001 ms`, `12.345678 s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns < 1_000 {
            write!(f, "{ns} ns")
        } else if ns < 1_000_000 {
            write!(f, "{:.3} µs", ns as f64 / 1e3)
        } else if ns < 1_000_000_000 {
            write!(f, "{:.3} ms", ns as f64 / 1e6)
        } else {
            write!(f, "{:.6} s", ns as f64 / 1e9)
        }
    }
}

/// Identifies a link of a [`Network`] (returned by [`Network::add_link`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct LinkId(pub u32);

/// Direction of travel on a full-duplex link. Each direction has the link's
/// full bandwidth; flows in opposite directions do not contend.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub enum Dir {
    /// Towards the root (device to host, by convention).
    Up,
    /// Away from the root (host to device, by convention).
    Down,
}

impl Dir {
    /// The opposite direction.
    pub const fn reverse(self) -> Dir {
        match self {
            Dir::Up => Dir::Down,
            Dir::Down => Dir::Up,
        }
    }

    const fn index(self) -> u32 {
        match self {
            Dir::Up => 0,
            Dir::Down => 1,
        }
    }
}

/// One step of a flow's path: a link crossed in one direction.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Hop {
    /// The link crossed.
    pub link: LinkId,
    /// The direction it is crossed in.
    pub dir: Dir,
}

impl Hop {
    /// `link` crossed upwards.
    pub const fn up(link: LinkId) -> Hop {
        Hop { link, dir: Dir::Up }
    }

    /// `link` crossed downwards.
    pub const fn down(link: LinkId) -> Hop {
        Hop {
            link,
            dir: Dir::Down,
        }
    }
}

/// A full-duplex link of the simulated machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Human-readable name (used in error messages and reports).
    pub name: String,
    /// Bandwidth in bytes per second, per direction.
    pub bytes_per_sec: f64,
    /// One-way latency, added once to every flow that crosses the link.
    pub latency: SimTime,
}

/// Errors from building a [`Network`] or simulating flows on it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TimingError {
    /// A link's bandwidth is not a finite positive number.
    #[error("link `{name}`: bandwidth {bytes_per_sec} bytes/s must be finite and > 0")]
    BadBandwidth {
        /// The link's name.
        name: String,
        /// The rejected bandwidth.
        bytes_per_sec: f64,
    },
    /// The network already has the maximum number of links.
    #[error("link `{name}`: too many links in one network")]
    TooManyLinks {
        /// The name of the link that did not fit.
        name: String,
    },
    /// A flow's path names a link that is not in the network.
    #[error("flow {flow}, hop {hop}: link {} is not in this network", link.0)]
    UnknownLink {
        /// Index of the flow.
        flow: usize,
        /// Index of the hop in the flow's path.
        hop: usize,
        /// The unknown link.
        link: LinkId,
    },
    /// A flow's `after` does not name an earlier flow.
    #[error("flow {flow}: `after` = {after} must name an earlier flow (an index < {flow})")]
    BadAfter {
        /// Index of the flow.
        flow: usize,
        /// The rejected `after` index.
        after: usize,
    },
    /// A flow's `rate_cap` is not a finite positive number.
    #[error(
        "flow {flow}: rate_cap {rate_cap} bytes/s must be finite and > 0 (use None for no cap)"
    )]
    BadRateCap {
        /// Index of the flow.
        flow: usize,
        /// The rejected cap.
        rate_cap: f64,
    },
    /// A flow with bytes to move has neither links nor a rate cap, so its
    /// rate would be infinite.
    #[error("flow {flow}: empty path and no rate_cap, so its rate would be unbounded")]
    Unconstrained {
        /// Index of the flow.
        flow: usize,
    },
    /// More flows than the simulator can index (`u32::MAX`).
    #[error("{count} flows: at most {} can be simulated at once", u32::MAX)]
    TooManyFlows {
        /// The number of flows given.
        count: usize,
    },
    /// Simulated time for a flow does not fit in `u64` nanoseconds (~584 years).
    #[error("flow {flow}: simulated time exceeds the u64 nanosecond range")]
    TimeOverflow {
        /// Index of the flow.
        flow: usize,
    },
}

/// A transfer to simulate.
///
/// Build one with a struct literal (`Flow { path, bytes, ..Default::default() }`)
/// or with [`Flow::new`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Links crossed, each in one direction. May be empty for a purely local
    /// flow, which is then limited by `rate_cap` alone. A channel crossed
    /// twice carries the flow's bytes twice.
    pub path: Vec<Hop>,
    /// Bytes to move.
    pub bytes: u64,
    /// Earliest start.
    pub start: SimTime,
    /// Index of an earlier flow in the same slice: this flow starts when that
    /// one ends (a queue). Must be smaller than this flow's own index.
    pub after: Option<usize>,
    /// Bytes/s limit of the endpoints themselves (e.g. a drive's media rate).
    pub rate_cap: Option<f64>,
}

impl Flow {
    /// A flow of `bytes` over `path`, starting at time zero, with no
    /// predecessor and no rate cap.
    pub fn new(path: Vec<Hop>, bytes: u64) -> Flow {
        Flow {
            path,
            bytes,
            ..Flow::default()
        }
    }
}

/// Outcome of one flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FlowResult {
    /// When data starts moving: `max(start, end of after)`.
    pub start: SimTime,
    /// When the last byte is delivered (includes the path latency).
    pub end: SimTime,
    /// Bytes moved.
    pub bytes: u64,
    /// Mean data rate while moving, in bytes/s:
    /// `bytes / (end - start - path latency)` (computed before rounding
    /// times to nanoseconds); 0 for a flow of 0 bytes.
    pub mean_rate: f64,
}

/// Use of one direction of one link over a whole schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChannelUse {
    /// The link.
    pub link: LinkId,
    /// The direction.
    pub dir: Dir,
    /// Bytes carried (a flow crossing the channel twice counts twice).
    pub bytes: u64,
    /// Total time during which at least one flow was moving data on it.
    pub busy: SimTime,
}

/// Result of [`Network::simulate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// One result per input flow, in input order.
    pub flows: Vec<FlowResult>,
    /// One entry per (link, direction), ordered by link then `Up` before
    /// `Down`: entry `2 * link + (dir == Down)`.
    pub channels: Vec<ChannelUse>,
    /// The latest end of any flow (zero without flows).
    pub makespan: SimTime,
    /// Number of event instants processed (each one starts and/or finishes
    /// at least one flow); at most twice the number of flows.
    pub events: usize,
}

impl Schedule {
    /// The use of `link` in direction `dir`, if the link exists.
    pub fn channel(&self, link: LinkId, dir: Dir) -> Option<&ChannelUse> {
        self.channels
            .get((link.0 as usize).checked_mul(2)? + dir.index() as usize)
    }
}

/// The links of a simulated machine; simulates flows over them.
///
/// Links are only added through [`Network::add_link`], which validates them
/// (so `Network` is `Serialize` but deliberately not `Deserialize`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Network {
    links: Vec<Link>,
}

impl Network {
    /// An empty network.
    pub fn new() -> Self {
        Network { links: Vec::new() }
    }

    /// Adds a full-duplex link with `bytes_per_sec` in each direction and a
    /// one-way `latency`. The bandwidth must be finite and positive.
    pub fn add_link(
        &mut self,
        name: impl Into<String>,
        bytes_per_sec: f64,
        latency: SimTime,
    ) -> Result<LinkId, TimingError> {
        let name = name.into();
        // The second test rejects bandwidths that underflow in bytes/ns.
        if !(bytes_per_sec.is_finite() && bytes_per_sec / NS_PER_SEC > 0.0) {
            return Err(TimingError::BadBandwidth {
                name,
                bytes_per_sec,
            });
        }
        if self.links.len() >= (u32::MAX / 2) as usize {
            return Err(TimingError::TooManyLinks { name });
        }
        let id = LinkId(self.links.len() as u32);
        self.links.push(Link {
            name,
            bytes_per_sec,
            latency,
        });
        Ok(id)
    }

    /// The link `id`.
    ///
    /// # Panics
    ///
    /// If `id` was not returned by this network's [`Network::add_link`]; use
    /// [`Network::get_link`] for a fallible lookup.
    pub fn link(&self, id: LinkId) -> &Link {
        &self.links[id.0 as usize]
    }

    /// The link `id`, or `None` if it is not in this network.
    pub fn get_link(&self, id: LinkId) -> Option<&Link> {
        self.links.get(id.0 as usize)
    }

    /// All links, indexed by `LinkId.0`.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The sum of the latencies of the links on `path` (saturating); unknown
    /// links count as zero.
    pub fn path_latency(&self, path: &[Hop]) -> SimTime {
        path.iter()
            .filter_map(|h| self.get_link(h.link))
            .fold(SimTime::ZERO, |acc, l| acc + l.latency)
    }

    /// The max-min fair rates (bytes/s), one per flow, if all `flows` were
    /// moving data at the same instant. Only `path` and `rate_cap` matter;
    /// `bytes`, `start` and `after` are ignored.
    pub fn fair_rates(&self, flows: &[Flow]) -> Result<Vec<f64>, TimingError> {
        let Prep {
            mut classes,
            class_of,
            ..
        } = self.prepare(flows, Mode::Rates)?;
        for &k in &class_of {
            classes[k as usize].n += 1;
        }
        let active: Vec<u32> = (0..classes.len() as u32)
            .filter(|&k| classes[k as usize].n > 0)
            .collect();
        let mut filler = Filler::new(self.channel_caps(), classes.len());
        filler.fill(&mut classes, &active);
        Ok(class_of
            .iter()
            .map(|&k| classes[k as usize].rate * NS_PER_SEC)
            .collect())
    }

    /// Simulates `flows` and returns when each one starts and ends, how
    /// busy each channel was, and the makespan.
    ///
    /// A flow becomes active at `max(start, end of after)`; its data moves at
    /// its max-min fair rate, recomputed whenever any flow starts or
    /// finishes; it ends when its last byte has left its bottleneck plus its
    /// path latency. A flow of 0 bytes ends at its activation plus its path
    /// latency.
    pub fn simulate(&self, flows: &[Flow]) -> Result<Schedule, TimingError> {
        self.run(flows, true, None)
            .map(|(schedule, _fills)| schedule)
    }

    fn channel_caps(&self) -> Vec<f64> {
        self.links
            .iter()
            .flat_map(|l| {
                let c = l.bytes_per_sec / NS_PER_SEC;
                [c, c]
            })
            .collect()
    }

    /// Validates flows and groups them into classes of identical
    /// (channel multiset, rate cap).
    fn prepare(&self, flows: &[Flow], mode: Mode) -> Result<Prep, TimingError> {
        if flows.len() > u32::MAX as usize {
            return Err(TimingError::TooManyFlows { count: flows.len() });
        }
        let mut index: HashMap<Vec<u64>, u32> = HashMap::new();
        let mut classes: Vec<Class> = Vec::new();
        let mut class_of = Vec::with_capacity(flows.len());
        let mut latency = Vec::with_capacity(flows.len());
        let mut chans: Vec<u32> = Vec::new();
        let mut key: Vec<u64> = Vec::new();
        for (i, f) in flows.iter().enumerate() {
            if mode == Mode::Simulate {
                if let Some(after) = f.after {
                    if after >= i {
                        return Err(TimingError::BadAfter { flow: i, after });
                    }
                }
            }
            let cap = match f.rate_cap {
                None => f64::INFINITY,
                Some(c) if c.is_finite() && c / NS_PER_SEC > 0.0 => c / NS_PER_SEC,
                Some(c) => {
                    return Err(TimingError::BadRateCap {
                        flow: i,
                        rate_cap: c,
                    })
                }
            };
            chans.clear();
            let mut lat: u64 = 0;
            for (h, hop) in f.path.iter().enumerate() {
                let link = self.get_link(hop.link).ok_or(TimingError::UnknownLink {
                    flow: i,
                    hop: h,
                    link: hop.link,
                })?;
                lat = lat
                    .checked_add(link.latency.0)
                    .ok_or(TimingError::TimeOverflow { flow: i })?;
                chans.push(hop.link.0 * 2 + hop.dir.index());
            }
            let exempt = mode == Mode::Simulate && f.bytes == 0;
            if chans.is_empty() && cap.is_infinite() && !exempt {
                return Err(TimingError::Unconstrained { flow: i });
            }
            chans.sort_unstable();
            key.clear();
            key.push(cap.to_bits());
            let mut j = 0;
            while j < chans.len() {
                let c = chans[j];
                let mut m = 0u32;
                while j < chans.len() && chans[j] == c {
                    m += 1;
                    j += 1;
                }
                key.push(((c as u64) << 32) | m as u64);
            }
            let k = match index.get(key.as_slice()) {
                Some(&k) => k,
                None => {
                    let k = classes.len() as u32;
                    classes.push(Class::new(
                        key[1..]
                            .iter()
                            .map(|&e| ((e >> 32) as u32, (e & 0xffff_ffff) as f64))
                            .collect(),
                        cap,
                    ));
                    index.insert(key.clone(), k);
                    k
                }
            };
            class_of.push(k);
            latency.push(lat);
        }
        // Number classes by ascending cap, so that a list of active classes
        // sorted by index is also sorted by cap (see `Filler::fill`).
        let mut order: Vec<u32> = (0..classes.len() as u32).collect();
        order.sort_by(|&a, &b| {
            classes[a as usize]
                .cap
                .total_cmp(&classes[b as usize].cap)
                .then(a.cmp(&b))
        });
        let mut rank = vec![0u32; classes.len()];
        for (r, &k) in order.iter().enumerate() {
            rank[k as usize] = r as u32;
        }
        let mut slots: Vec<Option<Class>> = classes.into_iter().map(Some).collect();
        let classes: Vec<Class> = order
            .iter()
            .map(|&k| slots[k as usize].take().expect("each class once"))
            .collect();
        for k in class_of.iter_mut() {
            *k = rank[*k as usize];
        }
        Ok(Prep {
            classes,
            class_of,
            latency,
        })
    }

    /// The event loop. `trace`, if given, receives the per-flow rates in
    /// force after every event (used by the tests).
    ///
    /// With `memo`, rates are looked up in a small cache of recent
    /// (populations -> rates) results before being recomputed; the result is
    /// identical either way. Also returns how many times rates were
    /// computed from scratch.
    fn run(
        &self,
        flows: &[Flow],
        memo: bool,
        mut trace: Option<&mut Vec<Step>>,
    ) -> Result<(Schedule, usize), TimingError> {
        let Prep {
            mut classes,
            class_of,
            latency,
        } = self.prepare(flows, Mode::Simulate)?;
        let n = flows.len();
        let nch = self.links.len() * 2;

        // Successors of each flow (flows whose `after` names it), as CSR.
        let mut child_start = vec![0usize; n + 1];
        for f in flows {
            if let Some(a) = f.after {
                child_start[a + 1] += 1;
            }
        }
        for i in 0..n {
            child_start[i + 1] += child_start[i];
        }
        let mut children = vec![0u32; child_start[n]];
        let mut cursor = child_start.clone();
        for (i, f) in flows.iter().enumerate() {
            if let Some(a) = f.after {
                children[cursor[a]] = i as u32;
                cursor[a] += 1;
            }
        }
        drop(cursor);

        let mut chan_bytes = vec![0u64; nch];
        for (i, f) in flows.iter().enumerate() {
            for &(c, m) in &classes[class_of[i] as usize].chans {
                let b = &mut chan_bytes[c as usize];
                *b = b.saturating_add(f.bytes.saturating_mul(m as u64));
            }
        }

        let mut book = Book {
            flows,
            latency: &latency,
            child_start: &child_start,
            children: &children,
            pending: BinaryHeap::new(),
            out_start: vec![0; n],
            out_end: vec![0; n],
            act: vec![0.0; n],
            fin: vec![0.0; n],
            last_rate: vec![0.0; n],
        };
        for (i, f) in flows.iter().enumerate() {
            if f.after.is_none() {
                book.out_start[i] = f.start.0;
                book.pending
                    .push(Reverse((OrdF64(f.start.0 as f64), i as u32)));
            }
        }

        let mut filler = Filler::new(self.channel_caps(), classes.len());
        let mut active: Vec<u32> = Vec::new();
        let mut touched: Vec<u32> = Vec::new();
        let slack: Vec<f64> = flows
            .iter()
            .map(|f| FINISH_REL * f.bytes as f64 + FINISH_ABS)
            .collect();
        // Busy time: a channel is busy while some active class crosses it.
        let mut busy = vec![0.0f64; nch];
        let mut busy_since = vec![0.0f64; nch];
        let mut users = vec![0u32; nch];
        // Rates depend only on the population of every class: remember the
        // last few results, found by a hash of the populations kept up to
        // date incrementally and then compared exactly.
        let mut memo_cache = RateCache::new(if memo { MEMO_ENTRIES } else { 0 });
        let mut pop_hash: u64 = 0;
        let mut fills = 0usize;
        let mut now = 0.0f64;
        let mut events = 0usize;

        loop {
            // Next event: the earliest finish of any class, or the next arrival.
            let mut t_fin = f64::INFINITY;
            let mut fin_k = u32::MAX;
            for &k in &active {
                let cl = &classes[k as usize];
                if let Some(&Reverse((target, _))) = cl.queue.peek() {
                    let t = now + (target.0 - cl.served).max(0.0) / cl.rate;
                    if t < t_fin {
                        t_fin = t;
                        fin_k = k;
                    }
                }
            }
            let t_arr = book.pending.peek().map_or(f64::INFINITY, |r| (r.0).0 .0);
            if active.is_empty() && book.pending.is_empty() {
                break;
            }
            let t = t_fin.min(t_arr).max(now);
            if t.is_nan() || t >= MAX_NS {
                let culprit = if t_fin <= t_arr {
                    classes[fin_k as usize].queue.peek().map(|r| (r.0).1)
                } else {
                    book.pending.peek().map(|r| (r.0).1)
                };
                return Err(TimingError::TimeOverflow {
                    flow: culprit.unwrap_or(0) as usize,
                });
            }

            // Advance every class to `t`.
            let dt = t - now;
            if dt > 0.0 {
                for &k in &active {
                    let cl = &mut classes[k as usize];
                    cl.served += cl.rate * dt;
                }
            }
            now = t;

            // Finishes. The class that defined a finish event finishes its
            // head flow exactly, so every event makes progress.
            let forced = t_fin <= t_arr;
            let mut emptied = false;
            let mut i = 0;
            while i < active.len() {
                let k = active[i];
                let cl = &mut classes[k as usize];
                if forced && k == fin_k {
                    if let Some(&Reverse((target, _))) = cl.queue.peek() {
                        cl.served = cl.served.max(target.0);
                    }
                }
                let mut changed = false;
                while let Some(&Reverse((target, f))) = cl.queue.peek() {
                    let f = f as usize;
                    if target.0 - cl.served > slack[f] {
                        break;
                    }
                    cl.queue.pop();
                    cl.n -= 1;
                    changed = true;
                    book.last_rate[f] = cl.rate;
                    let data_end = to_ns(now).ok_or(TimingError::TimeOverflow { flow: f })?;
                    book.finish(f, now, data_end)?;
                }
                if changed {
                    touched.push(k);
                }
                if cl.n == 0 {
                    cl.served = 0.0;
                    emptied = true;
                    for &(c, _) in &cl.chans {
                        let c = c as usize;
                        users[c] -= 1;
                        if users[c] == 0 {
                            busy[c] += now - busy_since[c];
                        }
                    }
                }
                i += 1;
            }
            if emptied {
                active.retain(|&k| classes[k as usize].n > 0);
            }

            // Arrivals at `now` (including successors released just above).
            while let Some(&Reverse((ta, f))) = book.pending.peek() {
                if ta.0 > now {
                    break;
                }
                book.pending.pop();
                let f = f as usize;
                book.act[f] = now;
                if flows[f].bytes == 0 {
                    let s = book.out_start[f];
                    book.finish(f, now, s)?;
                    continue;
                }
                let k = class_of[f];
                let cl = &mut classes[k as usize];
                if cl.n == 0 {
                    cl.served = 0.0;
                    // Kept sorted by class index (= by cap) for `Filler::fill`.
                    let pos = active.binary_search(&k).unwrap_or_else(|p| p);
                    active.insert(pos, k);
                    for &(c, _) in &cl.chans {
                        let c = c as usize;
                        if users[c] == 0 {
                            busy_since[c] = now;
                        }
                        users[c] += 1;
                    }
                }
                cl.queue.push(Reverse((
                    OrdF64(cl.served + flows[f].bytes as f64),
                    f as u32,
                )));
                cl.n += 1;
                touched.push(k);
            }

            events += 1;

            // Rates change only if some class's population changed.
            let mut dirty = false;
            for &k in &touched {
                let cl = &mut classes[k as usize];
                if cl.n != cl.n_at_fill {
                    let z = class_hash(k);
                    pop_hash = pop_hash
                        .wrapping_add(z.wrapping_mul(cl.n as u64))
                        .wrapping_sub(z.wrapping_mul(cl.n_at_fill as u64));
                    cl.n_at_fill = cl.n;
                    dirty = true;
                }
            }
            touched.clear();
            if dirty && !memo_cache.restore(pop_hash, &active, &mut classes) {
                filler.fill(&mut classes, &active);
                fills += 1;
                memo_cache.store(pop_hash, &active, &classes);
            }

            if let Some(tr) = trace.as_deref_mut() {
                let mut rates = Vec::new();
                for &k in &active {
                    let cl = &classes[k as usize];
                    for r in cl.queue.iter() {
                        rates.push(((r.0).1 as usize, cl.rate * NS_PER_SEC));
                    }
                }
                rates.sort_unstable_by_key(|r| r.0);
                tr.push(Step { time: now, rates });
            }
        }

        let Book {
            out_start,
            out_end,
            act,
            fin,
            last_rate,
            ..
        } = book;
        let results: Vec<FlowResult> = (0..n)
            .map(|i| {
                let bytes = flows[i].bytes;
                let dur = fin[i] - act[i];
                let mean_rate = if bytes == 0 {
                    0.0
                } else if dur > 0.0 {
                    bytes as f64 / dur * NS_PER_SEC
                } else {
                    last_rate[i] * NS_PER_SEC
                };
                FlowResult {
                    start: SimTime(out_start[i]),
                    end: SimTime(out_end[i]),
                    bytes,
                    mean_rate,
                }
            })
            .collect();
        let channels = (0..nch)
            .map(|c| ChannelUse {
                link: LinkId((c / 2) as u32),
                dir: if c % 2 == 0 { Dir::Up } else { Dir::Down },
                bytes: chan_bytes[c],
                busy: SimTime(to_ns(busy[c]).unwrap_or(u64::MAX)),
            })
            .collect();
        let makespan = SimTime(out_end.iter().copied().max().unwrap_or(0));
        Ok((
            Schedule {
                flows: results,
                channels,
                makespan,
                events,
            },
            fills,
        ))
    }
}

// ---------------------------------------------------------------------------
// Internals
// ---------------------------------------------------------------------------

/// Rounds an internal time (f64 ns) to reported nanoseconds: up, except that
/// values within [`ROUND_SLACK_NS`] above an integer round down.
fn to_ns(t: f64) -> Option<u64> {
    let v = (t - ROUND_SLACK_NS).ceil().max(0.0);
    if v < MAX_NS {
        Some(v as u64)
    } else {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Simulate,
    Rates,
}

/// An f64 with a total order (for heaps).
#[derive(Clone, Copy, Debug, PartialEq)]
struct OrdF64(f64);

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Flows with the same channels (with multiplicity) and the same rate cap:
/// they always have the same rate.
struct Class {
    /// (channel, multiplicity), sorted by channel.
    chans: Vec<(u32, f64)>,
    /// Per-flow cap in bytes/ns (infinite if none).
    cap: f64,
    /// Active flows.
    n: u32,
    /// `n` when rates were last computed.
    n_at_fill: u32,
    /// Per-flow rate in bytes/ns.
    rate: f64,
    /// Bytes served to every flow of the class since it last became active.
    served: f64,
    /// Active flows keyed by the `served` value at which they finish.
    queue: BinaryHeap<Reverse<(OrdF64, u32)>>,
}

impl Class {
    fn new(chans: Vec<(u32, f64)>, cap: f64) -> Class {
        Class {
            chans,
            cap,
            n: 0,
            n_at_fill: 0,
            rate: 0.0,
            served: 0.0,
            queue: BinaryHeap::new(),
        }
    }
}

struct Prep {
    classes: Vec<Class>,
    class_of: Vec<u32>,
    latency: Vec<u64>,
}

/// One event of a traced simulation: rates (bytes/s) of the active flows.
#[cfg_attr(not(test), allow(dead_code))]
struct Step {
    time: f64,
    rates: Vec<(usize, f64)>,
}

/// Per-flow bookkeeping of the event loop.
struct Book<'a> {
    flows: &'a [Flow],
    latency: &'a [u64],
    child_start: &'a [usize],
    children: &'a [u32],
    /// Activations not yet reached: (time, flow).
    pending: BinaryHeap<Reverse<(OrdF64, u32)>>,
    out_start: Vec<u64>,
    out_end: Vec<u64>,
    act: Vec<f64>,
    fin: Vec<f64>,
    last_rate: Vec<f64>,
}

impl Book<'_> {
    /// Flow `f`'s data is done at internal time `now`, reported `data_end`;
    /// releases its successors.
    fn finish(&mut self, f: usize, now: f64, data_end: u64) -> Result<(), TimingError> {
        self.fin[f] = now;
        let end = data_end
            .checked_add(self.latency[f])
            .ok_or(TimingError::TimeOverflow { flow: f })?;
        self.out_end[f] = end;
        for &c in &self.children[self.child_start[f]..self.child_start[f + 1]] {
            let s = self.flows[c as usize].start.0.max(end);
            self.out_start[c as usize] = s;
            self.pending.push(Reverse((OrdF64((s as f64).max(now)), c)));
        }
        Ok(())
    }
}

/// Entries of the rate cache of [`Network::simulate`].
const MEMO_ENTRIES: usize = 256;
/// States with more active classes than this are not cached (bounds the
/// cache to `MEMO_ENTRIES * MEMO_MAX_CLASSES` rows).
const MEMO_MAX_CLASSES: usize = 1024;

/// A pseudo-random 64-bit value per class (splitmix64), for hashing
/// population vectors as `sum(hash(k) * n_k)`.
fn class_hash(k: u32) -> u64 {
    let mut z = (k as u64)
        .wrapping_add(1)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Recent results of [`Filler::fill`]: for a population hash, the active
/// classes with their populations and rates. Rates are a function of the
/// populations alone, and a hit is compared in full, so using the cache
/// never changes a result. Replaced round-robin.
struct RateCache {
    hashes: Vec<u64>,
    rows: Vec<Vec<(u32, u32, f64)>>,
    capacity: usize,
    next: usize,
}

impl RateCache {
    fn new(capacity: usize) -> RateCache {
        RateCache {
            hashes: Vec::with_capacity(capacity),
            rows: Vec::with_capacity(capacity),
            capacity,
            next: 0,
        }
    }

    /// Sets the rates of the `active` classes from a cached result for
    /// exactly their current populations, if there is one.
    fn restore(&self, hash: u64, active: &[u32], classes: &mut [Class]) -> bool {
        for (i, _) in self.hashes.iter().enumerate().filter(|&(_, &h)| h == hash) {
            let rows = &self.rows[i];
            let same = rows.len() == active.len()
                && rows
                    .iter()
                    .zip(active)
                    .all(|(&(k, n, _), &a)| k == a && classes[a as usize].n == n);
            if same {
                for &(k, _, r) in rows {
                    classes[k as usize].rate = r;
                }
                return true;
            }
        }
        false
    }

    /// Remembers the rates just computed for the `active` classes.
    fn store(&mut self, hash: u64, active: &[u32], classes: &[Class]) {
        if self.capacity == 0 || active.len() > MEMO_MAX_CLASSES {
            return;
        }
        let rows = active.iter().map(|&k| {
            let cl = &classes[k as usize];
            (k, cl.n, cl.rate)
        });
        if self.hashes.len() < self.capacity {
            self.hashes.push(hash);
            self.rows.push(rows.collect());
        } else {
            self.hashes[self.next] = hash;
            let slot = &mut self.rows[self.next];
            slot.clear();
            slot.extend(rows);
            self.next = (self.next + 1) % self.capacity;
        }
    }
}

/// Per-channel state of [`Filler`].
#[derive(Clone, Copy, Default)]
struct ChanState {
    /// Capacity, bytes/ns.
    cap: f64,
    /// Capacity not yet given to frozen flows.
    rem: f64,
    /// Number of unfrozen flows on the channel (with multiplicity).
    w: f64,
    /// `Filler::epoch` of the last fill that used the channel.
    epoch: u32,
    /// Index of the channel in `Filler::touched` and `Filler::lam`.
    slot: u32,
    /// The channel's active classes are `Filler::members[start..start + len]`.
    start: u32,
    len: u32,
}

/// Max-min fair allocation by progressive filling, with scratch space kept
/// across events.
struct Filler {
    chans: Vec<ChanState>,
    epoch: u32,
    /// Channels used by some active class in this fill.
    touched: Vec<u32>,
    /// Per touched channel: the fill level at which it saturates
    /// (`rem / w`), infinite once all its flows are frozen.
    lam: Vec<f64>,
    /// Active classes per channel (see [`ChanState::start`]).
    members: Vec<u32>,
    frozen: Vec<bool>,
}

impl Filler {
    fn new(cap: Vec<f64>, n_classes: usize) -> Filler {
        Filler {
            chans: cap
                .into_iter()
                .map(|cap| ChanState {
                    cap,
                    ..ChanState::default()
                })
                .collect(),
            epoch: 0,
            touched: Vec::new(),
            lam: Vec::new(),
            members: Vec::new(),
            frozen: vec![false; n_classes],
        }
    }

    /// Sets `rate` of every class in `active` (each with `n > 0` flows).
    /// `active` must be sorted by class index, which [`Network::prepare`]
    /// makes the same as sorted by cap.
    ///
    /// All unfrozen flows share a common level that rises from zero; when a
    /// channel saturates (at level `rem / w`), every unfrozen flow on it
    /// freezes at the level; when the level reaches a flow's cap, that flow
    /// freezes at its cap. Freezing flows at a level no higher than a
    /// channel's saturation level never lowers that level, so the channel
    /// minimum is searched again only when the minimum itself changed.
    fn fill(&mut self, classes: &mut [Class], active: &[u32]) {
        let Filler {
            chans,
            epoch,
            touched,
            lam,
            members,
            frozen,
        } = self;
        *epoch = epoch.wrapping_add(1);
        if *epoch == 0 {
            // Wrapped: forget all stamps so none matches by accident.
            chans.iter_mut().for_each(|ch| ch.epoch = u32::MAX);
            *epoch = 1;
        }
        let epoch = *epoch;
        touched.clear();
        for &k in active {
            let cl = &classes[k as usize];
            frozen[k as usize] = false;
            let n = cl.n as f64;
            for &(c, m) in &cl.chans {
                let ch = &mut chans[c as usize];
                if ch.epoch != epoch {
                    ch.epoch = epoch;
                    ch.rem = ch.cap;
                    ch.w = 0.0;
                    ch.len = 0;
                    ch.slot = touched.len() as u32;
                    touched.push(c);
                }
                ch.w += n * m;
                ch.len += 1;
            }
        }
        let mut total = 0u32;
        lam.clear();
        for &c in touched.iter() {
            let ch = &mut chans[c as usize];
            ch.start = total;
            total += ch.len;
            ch.len = 0;
            lam.push(ch.rem / ch.w);
        }
        members.resize(total as usize, 0);
        for &k in active {
            for &(c, _) in &classes[k as usize].chans {
                let ch = &mut chans[c as usize];
                members[(ch.start + ch.len) as usize] = k;
                ch.len += 1;
            }
        }

        let mut next_cap = 0;
        let mut left = active.len();
        let mut level = 0.0f64;
        let mut rescan = true;
        let (mut best_l, mut best_i) = (f64::INFINITY, usize::MAX);
        while left > 0 {
            while next_cap < active.len() && frozen[active[next_cap] as usize] {
                next_cap += 1;
            }
            let cap_l = active
                .get(next_cap)
                .map_or(f64::INFINITY, |&k| classes[k as usize].cap);
            if rescan {
                (best_l, best_i) = (f64::INFINITY, usize::MAX);
                for (i, &l) in lam.iter().enumerate() {
                    if l < best_l {
                        (best_l, best_i) = (l, i);
                    }
                }
                rescan = false;
            }
            if best_i != usize::MAX && best_l < cap_l {
                // A channel saturates first: freeze every flow on it.
                level = level.max(best_l);
                let ch = chans[touched[best_i] as usize];
                for &k in &members[ch.start as usize..(ch.start + ch.len) as usize] {
                    if !frozen[k as usize] {
                        frozen[k as usize] = true;
                        left -= 1;
                        freeze(&mut classes[k as usize], level, chans, lam);
                    }
                }
                rescan = true;
            } else if cap_l.is_finite() {
                // A cap comes first: freeze that class.
                let k = active[next_cap];
                next_cap += 1;
                level = level.max(cap_l);
                frozen[k as usize] = true;
                left -= 1;
                let cl = &mut classes[k as usize];
                freeze(cl, level, chans, lam);
                rescan |= best_i != usize::MAX && lam[best_i] != best_l;
            } else {
                // Unreachable: every active class has a channel or a cap.
                debug_assert!(false, "unconstrained class in fill");
                break;
            }
        }
    }
}

/// Freezes class `cl` at per-flow rate `r`, takes its use off its channels
/// and updates their saturation levels.
fn freeze(cl: &mut Class, r: f64, chans: &mut [ChanState], lam: &mut [f64]) {
    cl.rate = r;
    let n = cl.n as f64;
    for &(c, m) in &cl.chans {
        let ch = &mut chans[c as usize];
        let weight = n * m;
        ch.rem -= weight * r;
        ch.w -= weight;
        lam[ch.slot as usize] = if ch.w > 0.5 {
            ch.rem / ch.w
        } else {
            f64::INFINITY
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GB: f64 = 1e9;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// Gen4 x16: 16 GT/s × 16 lanes × 128/130 / 8 bits.
    fn gen4_x16() -> f64 {
        16e9 * 16.0 * 128.0 / 130.0 / 8.0
    }

    fn flow(path: Vec<Hop>, bytes: u64) -> Flow {
        Flow::new(path, bytes)
    }

    /// Checks that `rates` is the max-min fair allocation for `flows`:
    /// feasible on every channel and cap, and every flow has a bottleneck:
    /// its own saturated cap, or a saturated channel on its path on which no
    /// flow gets more than it does. Together these characterize max-min
    /// fairness; the first part of the second is work conservation.
    fn assert_max_min(net: &Network, flows: &[&Flow], rates: &[f64]) {
        let nch = net.links().len() * 2;
        let ch = |h: &Hop| h.link.0 as usize * 2 + h.dir.index() as usize;
        let capacity = |c: usize| net.links()[c / 2].bytes_per_sec;
        let mut load = vec![0.0; nch];
        let mut max_rate = vec![0.0f64; nch];
        for (f, &r) in flows.iter().zip(rates) {
            assert!(r > 0.0 && r.is_finite(), "rate {r}");
            if let Some(cap) = f.rate_cap {
                assert!(r <= cap * (1.0 + 1e-9), "rate {r} over cap {cap}");
            }
            for h in &f.path {
                load[ch(h)] += r;
                max_rate[ch(h)] = max_rate[ch(h)].max(r);
            }
        }
        for (c, &l) in load.iter().enumerate() {
            assert!(
                l <= capacity(c) * (1.0 + 1e-9),
                "channel {c} overloaded: {l} > {}",
                capacity(c)
            );
        }
        for (i, (f, &r)) in flows.iter().zip(rates).enumerate() {
            let capped = f.rate_cap.is_some_and(|cap| r >= cap * (1.0 - 1e-9));
            let bottleneck = f.path.iter().any(|h| {
                let c = ch(h);
                load[c] >= capacity(c) * (1.0 - 1e-9) && r >= max_rate[c] * (1.0 - 1e-9)
            });
            assert!(
                capped || bottleneck,
                "flow {i} (rate {r}) has no saturated bottleneck: not work-conserving/max-min"
            );
        }
    }

    fn two_links(l1: f64, l2: f64) -> (Network, LinkId, LinkId) {
        let mut net = Network::new();
        let a = net.add_link("l1", l1, SimTime::ZERO).unwrap();
        let b = net.add_link("l2", l2, SimTime::ZERO).unwrap();
        (net, a, b)
    }

    #[test]
    fn one_flow_gets_full_bandwidth() {
        let mut net = Network::new();
        let l = net
            .add_link("l", 10.0 * GB, SimTime::from_micros(1))
            .unwrap();
        let s = net
            .simulate(&[flow(vec![Hop::up(l)], 1_000_000_000)])
            .unwrap();
        let r = &s.flows[0];
        assert_eq!(r.start, SimTime::ZERO);
        assert_eq!(r.end, SimTime(100_000_000 + 1_000));
        assert!(rel(r.mean_rate, 10.0 * GB) < 1e-12, "{}", r.mean_rate);
        assert_eq!(s.makespan, r.end);
        let up = s.channel(l, Dir::Up).unwrap();
        assert_eq!(
            (up.bytes, up.busy),
            (1_000_000_000, SimTime::from_millis(100))
        );
        let down = s.channel(l, Dir::Down).unwrap();
        assert_eq!((down.bytes, down.busy), (0, SimTime::ZERO));
    }

    #[test]
    fn two_flows_split_a_gen4_x16_link() {
        let mut net = Network::new();
        let l = net
            .add_link("x16", gen4_x16(), SimTime::from_nanos(300))
            .unwrap();
        let flows = [
            flow(vec![Hop::up(l)], 1 << 30),
            flow(vec![Hop::up(l)], 1 << 30),
        ];
        let s = net.simulate(&flows).unwrap();
        for r in &s.flows {
            assert!(rel(r.mean_rate, gen4_x16() / 2.0) < 1e-6, "{}", r.mean_rate);
        }
        assert_eq!(s.flows[0].end, s.flows[1].end);
        let expect = (2.0 * (1u64 << 30) as f64 / gen4_x16() * 1e9).ceil() as u64 + 300;
        assert!(
            s.flows[0].end.0.abs_diff(expect) <= 1,
            "{:?} vs {expect}",
            s.flows[0].end
        );
        let rates = net.fair_rates(&flows).unwrap();
        assert!(rates.iter().all(|&r| rel(r, gen4_x16() / 2.0) < 1e-12));
    }

    #[test]
    fn max_min_across_two_links() {
        let (net, l1, l2) = two_links(10.0 * GB, 4.0 * GB);
        let a = flow(vec![Hop::up(l1), Hop::up(l2)], 2_000_000_000);
        let b = flow(vec![Hop::up(l1)], 8_000_000_000);
        let c = flow(vec![Hop::up(l2)], 2_000_000_000);
        let flows = [a.clone(), b.clone(), c.clone()];
        let rates = net.fair_rates(&flows).unwrap();
        for (r, want) in rates.iter().zip([2.0 * GB, 8.0 * GB, 2.0 * GB]) {
            assert!(rel(*r, want) < 1e-12, "{rates:?}");
        }
        assert_max_min(&net, &[&a, &b, &c], &rates);
        // Sized so all three end together at 1 s.
        let s = net.simulate(&flows).unwrap();
        for r in &s.flows {
            assert_eq!(r.end, SimTime::from_secs(1));
        }
        assert_eq!(s.events, 2);
        // C smaller: after C ends at 0.5 s, A gets all of L2 (4) and B the
        // rest of L1 (6): A ends at 0.5 + 1/4 = 0.75 s; B has 4 + 1.5 GB at
        // 0.75 s and its last 2.5 GB at 10 GB/s end at 1.0 s.
        let flows = [a, b, flow(vec![Hop::up(l2)], 1_000_000_000)];
        let s = net.simulate(&flows).unwrap();
        assert_eq!(s.flows[2].end, SimTime::from_millis(500));
        assert_eq!(s.flows[0].end, SimTime::from_millis(750));
        assert_eq!(s.flows[1].end, SimTime::from_millis(1000));
    }

    #[test]
    fn later_flow_takes_its_share_from_its_start() {
        let mut net = Network::new();
        let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
        let a = flow(vec![Hop::up(l)], 10_000_000_000);
        let b = Flow {
            start: SimTime::from_millis(500),
            ..flow(vec![Hop::up(l)], 2_000_000_000)
        };
        let s = net.simulate(&[a, b]).unwrap();
        // A alone for 0.5 s (5 GB), then 5 GB/s each: B's 2 GB take 0.4 s;
        // A then has 3 GB left at 10 GB/s: 0.3 s more.
        assert_eq!(s.flows[1].start, SimTime::from_millis(500));
        assert_eq!(s.flows[1].end, SimTime::from_millis(900));
        assert_eq!(s.flows[0].end, SimTime::from_millis(1200));
        assert!(rel(s.flows[1].mean_rate, 5.0 * GB) < 1e-9);
        assert!(rel(s.flows[0].mean_rate, 10e9 / 1.2) < 1e-9);
        assert_eq!(s.events, 4);
        assert_eq!(
            s.channel(l, Dir::Up).unwrap().busy,
            SimTime::from_millis(1200)
        );
    }

    #[test]
    fn after_chains_serialize() {
        let mut net = Network::new();
        let l = net.add_link("l", GB, SimTime::from_micros(10)).unwrap();
        let flows = [
            flow(vec![Hop::up(l)], 1_000_000),
            Flow {
                after: Some(0),
                ..flow(vec![Hop::up(l)], 1_000_000)
            },
            Flow {
                after: Some(1),
                start: SimTime::from_secs(5),
                ..flow(vec![Hop::up(l)], 1_000_000)
            },
        ];
        let s = net.simulate(&flows).unwrap();
        let t = |i: usize| (s.flows[i].start.0, s.flows[i].end.0);
        assert_eq!(t(0), (0, 1_010_000));
        assert_eq!(t(1), (1_010_000, 2_020_000));
        assert_eq!(t(2), (5_000_000_000, 5_001_010_000));
        // Two interleaved queues on one link: each request gets half while
        // both queues are busy, and a queue's requests never overlap.
        let mut flows = Vec::new();
        for i in 0..8usize {
            flows.push(Flow {
                after: i.checked_sub(2),
                ..flow(vec![Hop::up(l)], 1_000_000)
            });
        }
        let s = net.simulate(&flows).unwrap();
        for i in 2..8 {
            assert_eq!(s.flows[i].start, s.flows[i - 2].end);
            assert!(rel(s.flows[i].mean_rate, GB / 2.0) < 1e-9);
        }
        assert_eq!(s.makespan, SimTime(4 * 2_010_000));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut net = Network::new();
        let l = net.add_link("l", GB, SimTime::ZERO).unwrap();
        let f = flow(vec![Hop::up(l)], 10);
        let self_ref = Flow {
            after: Some(0),
            ..f.clone()
        };
        assert_eq!(
            net.simulate(&[self_ref]).unwrap_err(),
            TimingError::BadAfter { flow: 0, after: 0 }
        );
        let forward = Flow {
            after: Some(1),
            ..f.clone()
        };
        assert_eq!(
            net.simulate(&[forward, f.clone()]).unwrap_err(),
            TimingError::BadAfter { flow: 0, after: 1 }
        );
        let far = Flow {
            after: Some(usize::MAX),
            ..f.clone()
        };
        assert!(matches!(
            net.simulate(&[f.clone(), far]),
            Err(TimingError::BadAfter { flow: 1, .. })
        ));
        for bw in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-320] {
            assert!(matches!(
                net.add_link("bad", bw, SimTime::ZERO),
                Err(TimingError::BadBandwidth { .. })
            ));
        }
        let unknown = flow(vec![Hop::up(l), Hop::down(LinkId(7))], 1);
        assert_eq!(
            net.simulate(&[unknown]).unwrap_err(),
            TimingError::UnknownLink {
                flow: 0,
                hop: 1,
                link: LinkId(7)
            }
        );
        for cap in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let capped = Flow {
                rate_cap: Some(cap),
                ..f.clone()
            };
            assert!(matches!(
                net.simulate(&[capped]),
                Err(TimingError::BadRateCap { flow: 0, .. })
            ));
        }
        assert_eq!(
            net.simulate(&[flow(vec![], 1)]).unwrap_err(),
            TimingError::Unconstrained { flow: 0 }
        );
        // A far-future start is fine; a time past u64 ns is an error.
        let late = Flow {
            start: SimTime(u64::MAX - 5),
            ..f.clone()
        };
        assert_eq!(
            net.simulate(&[late]).unwrap_err(),
            TimingError::TimeOverflow { flow: 0 }
        );
        let msg = TimingError::BadAfter { flow: 3, after: 9 }.to_string();
        assert!(msg.contains("flow 3") && msg.contains('9'), "{msg}");
    }

    #[test]
    fn rate_cap_limits_a_flow_and_leaves_the_rest() {
        let mut net = Network::new();
        let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
        let a = Flow {
            rate_cap: Some(3.0 * GB),
            ..flow(vec![Hop::up(l)], 3_000_000_000)
        };
        let b = flow(vec![Hop::up(l)], 7_000_000_000);
        let rates = net.fair_rates(&[a.clone(), b.clone()]).unwrap();
        assert!(rel(rates[0], 3.0 * GB) < 1e-12 && rel(rates[1], 7.0 * GB) < 1e-12);
        assert_max_min(&net, &[&a, &b], &rates);
        let s = net.simulate(&[a, b]).unwrap();
        assert_eq!(s.flows[0].end, SimTime::from_secs(1));
        assert_eq!(s.flows[1].end, SimTime::from_secs(1));
        // A purely local flow moves at its cap.
        let local = Flow {
            rate_cap: Some(2.0 * GB),
            ..flow(vec![], 1_000_000_000)
        };
        let s = net.simulate(&[local]).unwrap();
        assert_eq!(s.flows[0].end, SimTime::from_millis(500));
    }

    #[test]
    fn opposite_directions_do_not_contend() {
        let mut net = Network::new();
        let l = net.add_link("l", 10.0 * GB, SimTime::ZERO).unwrap();
        let s = net
            .simulate(&[
                flow(vec![Hop::up(l)], 1_000_000_000),
                flow(vec![Hop::down(l)], 1_000_000_000),
            ])
            .unwrap();
        assert_eq!(s.flows[0].end, SimTime::from_millis(100));
        assert_eq!(s.flows[1].end, SimTime::from_millis(100));
        let s = net
            .simulate(&[
                flow(vec![Hop::up(l)], 1_000_000_000),
                flow(vec![Hop::up(l)], 1_000_000_000),
            ])
            .unwrap();
        assert_eq!(s.flows[0].end, SimTime::from_millis(200));
        // Crossing one channel twice uses it twice.
        let rates = net
            .fair_rates(&[flow(vec![Hop::up(l), Hop::up(l)], 1)])
            .unwrap();
        assert!(rel(rates[0], 5.0 * GB) < 1e-12);
        let rates = net
            .fair_rates(&[flow(vec![Hop::up(l), Hop::down(l)], 1)])
            .unwrap();
        assert!(rel(rates[0], 10.0 * GB) < 1e-12);
    }

    #[test]
    fn zero_byte_flows_cost_only_latency() {
        let mut net = Network::new();
        let l = net.add_link("l", GB, SimTime::from_micros(2)).unwrap();
        let flows = [
            Flow {
                start: SimTime(50),
                ..flow(vec![Hop::up(l), Hop::down(l)], 0)
            },
            Flow {
                after: Some(0),
                ..flow(vec![Hop::up(l)], 0)
            },
            Flow {
                after: Some(1),
                ..flow(vec![], 0)
            },
        ];
        let s = net.simulate(&flows).unwrap();
        assert_eq!((s.flows[0].start.0, s.flows[0].end.0), (50, 4_050));
        assert_eq!((s.flows[1].start.0, s.flows[1].end.0), (4_050, 6_050));
        assert_eq!((s.flows[2].start.0, s.flows[2].end.0), (6_050, 6_050));
        assert_eq!(s.flows[0].mean_rate, 0.0);
        assert_eq!(net.simulate(&[]).unwrap().makespan, SimTime::ZERO);
    }

    #[test]
    fn hand_instances_are_max_min_and_work_conserving() {
        // Parking lot: one long flow over three links, one short flow per link.
        let mut net = Network::new();
        let ls: Vec<_> = [4.0, 6.0, 9.0]
            .iter()
            .map(|&g| net.add_link("l", g * GB, SimTime::ZERO).unwrap())
            .collect();
        let mut flows = vec![flow(ls.iter().map(|&l| Hop::up(l)).collect(), 1)];
        flows.extend(ls.iter().map(|&l| flow(vec![Hop::up(l)], 1)));
        flows.push(Flow {
            rate_cap: Some(1.0 * GB),
            ..flow(vec![Hop::up(ls[2])], 1)
        });
        flows.push(flow(vec![Hop::down(ls[0]), Hop::down(ls[0])], 1));
        let rates = net.fair_rates(&flows).unwrap();
        let refs: Vec<&Flow> = flows.iter().collect();
        assert_max_min(&net, &refs, &rates);
        // Long flow: bottleneck l0 (4 GB/s shared with one short flow) = 2.
        assert!(rel(rates[0], 2.0 * GB) < 1e-12, "{rates:?}");
        assert!(rel(rates[2], 4.0 * GB) < 1e-12, "{rates:?}");
        assert!(rel(rates[3], 6.0 * GB) < 1e-12, "{rates:?}");
        assert!(rel(rates[4], 1.0 * GB) < 1e-12, "{rates:?}");

        // A checker that must reject an allocation that leaves capacity idle.
        let (net, l1, l2) = two_links(10.0 * GB, 4.0 * GB);
        let a = flow(vec![Hop::up(l1), Hop::up(l2)], 1);
        let b = flow(vec![Hop::up(l1)], 1);
        let bad = std::panic::catch_unwind(|| {
            assert_max_min(&net, &[&a, &b], &[2.0 * GB, 6.0 * GB]);
        });
        assert!(
            bad.is_err(),
            "checker accepted a non-work-conserving allocation"
        );
        let rates = net.fair_rates(&[a.clone(), b.clone()]).unwrap();
        assert_max_min(&net, &[&a, &b], &rates);
        assert!(rel(rates[1], 6.0 * GB) < 1e-12);
    }

    #[test]
    fn many_identical_queues_finish_with_few_events() {
        // 8 devices × 4 queues × 8 requests into one shared host channel.
        let mut net = Network::new();
        let host = net
            .add_link("host", 20.0 * GB, SimTime::from_nanos(80))
            .unwrap();
        let mut flows = Vec::new();
        for d in 0..8 {
            let dev = net
                .add_link(format!("dev{d}"), 8.0 * GB, SimTime::from_nanos(500))
                .unwrap();
            for _q in 0..4 {
                for r in 0..8 {
                    let after = (r > 0).then(|| flows.len() - 1);
                    flows.push(Flow {
                        after,
                        rate_cap: Some(3.0 * GB),
                        ..flow(vec![Hop::up(dev), Hop::down(host)], 1 << 20)
                    });
                }
            }
        }
        let s = net.simulate(&flows).unwrap();
        assert!(s.events <= 2 * flows.len());
        let host_down = s.channel(host, Dir::Down).unwrap();
        assert_eq!(host_down.bytes, 256 << 20);
        // The host channel (20 GB/s) is the bottleneck for 24 GB/s of drives.
        let data_time = (256u64 << 20) as f64 / (20.0 * GB);
        assert!(host_down.busy.as_secs_f64() >= data_time * (1.0 - 1e-9));
        for r in &s.flows {
            assert!(rel(r.mean_rate, 20.0 * GB / 32.0) < 1e-6, "{}", r.mean_rate);
        }
    }

    #[test]
    fn rate_cache_is_used_and_changes_nothing() {
        // 4 devices behind one uplink, 16 queues of 40 requests of varied
        // size each, reading to and writing from a shared host channel.
        let mut net = Network::new();
        let host = net
            .add_link("host", 20.0 * GB, SimTime::from_nanos(80))
            .unwrap();
        let up = net
            .add_link("uplink", 16.0 * GB, SimTime::from_nanos(150))
            .unwrap();
        let devs: Vec<_> = (0..4)
            .map(|d| {
                net.add_link(format!("dev{d}"), 8.0 * GB, SimTime::from_nanos(500))
                    .unwrap()
            })
            .collect();
        let mut flows = Vec::new();
        let mut last = [None; 16];
        let mut x: u64 = 12345;
        for i in 0..16 * 40 {
            let q = i % 16;
            let d = q % 4;
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let path = if q < 12 {
                vec![Hop::up(devs[d]), Hop::up(up), Hop::down(host)]
            } else {
                vec![Hop::up(host), Hop::down(up), Hop::down(devs[d])]
            };
            flows.push(Flow {
                after: last[q],
                rate_cap: Some((3 + d) as f64 * GB),
                ..flow(path, 4096 * (1 + (x >> 33) % 256))
            });
            last[q] = Some(i);
        }
        let (with, fills_with) = net.run(&flows, true, None).unwrap();
        let (without, fills_without) = net.run(&flows, false, None).unwrap();
        assert_eq!(with, without);
        assert!(
            fills_with < fills_without,
            "{fills_with} vs {fills_without}"
        );
        assert!(with.events <= 2 * flows.len());
    }

    #[test]
    fn sim_time_conversions() {
        assert_eq!(SimTime::from_secs_f64(1.5).0, 1_500_000_000);
        assert_eq!(SimTime::from_secs_f64(-1.0), SimTime::ZERO);
        assert_eq!(SimTime::from_secs_f64(f64::NAN), SimTime::ZERO);
        assert_eq!(SimTime::from_secs_f64(1e30), SimTime::MAX);
        assert_eq!(SimTime(2_500_000).as_secs_f64(), 0.0025);
        assert_eq!(SimTime(5) + SimTime(7), SimTime(12));
        assert_eq!(SimTime::MAX + SimTime(1), SimTime::MAX);
        assert_eq!(SimTime(5) - SimTime(7), SimTime::ZERO);
        assert_eq!(SimTime::from_micros(1_000_001).to_string(), "1.000001 s");
        assert_eq!(SimTime(850).to_string(), "850 ns");
    }

    /// A random small instance: links, flows with random paths (repeats
    /// allowed), sizes, starts, queues and caps.
    fn instance() -> impl Strategy<Value = (Vec<(f64, u64)>, Vec<Flow>)> {
        let links = prop::collection::vec((1u32..=100, 0u64..2_000), 1..4);
        links.prop_flat_map(|links| {
            let nl = links.len() as u32;
            let hop = (0..nl, any::<bool>()).prop_map(|(l, up)| Hop {
                link: LinkId(l),
                dir: if up { Dir::Up } else { Dir::Down },
            });
            let fl = (
                prop::collection::vec(hop, 0..4),
                prop_oneof![Just(0u64), 1u64..1_000, 1_000u64..2_000_000_000],
                0u64..1_000_000,
                prop::option::of(any::<prop::sample::Index>()),
                prop::option::of(1u32..=200),
            );
            let flows = prop::collection::vec(fl, 1..9).prop_map(|fs| {
                fs.into_iter()
                    .enumerate()
                    .map(|(i, (path, bytes, start, after, cap))| {
                        let mut rate_cap = cap.map(|c| c as f64 * 0.5e9);
                        if path.is_empty() && rate_cap.is_none() {
                            rate_cap = Some(3e9);
                        }
                        Flow {
                            path,
                            bytes,
                            start: SimTime(start),
                            after: if i == 0 {
                                None
                            } else {
                                after.map(|a| a.index(i))
                            },
                            rate_cap,
                        }
                    })
                    .collect::<Vec<_>>()
            });
            (
                Just(
                    links
                        .iter()
                        .map(|&(g, lat)| (g as f64 * 1e8, lat))
                        .collect::<Vec<_>>(),
                ),
                flows,
            )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn conservation_and_fairness((links, flows) in instance()) {
            let mut net = Network::new();
            for (i, &(bw, lat)) in links.iter().enumerate() {
                net.add_link(format!("l{i}"), bw, SimTime(lat)).unwrap();
            }
            let mut trace = Vec::new();
            let (s, _) = net.run(&flows, true, Some(&mut trace)).unwrap();
            // Restoring memoized rates changes nothing.
            prop_assert_eq!(&s, &net.run(&flows, false, None).unwrap().0);
            prop_assert_eq!(s.flows.len(), flows.len());
            prop_assert!(s.events <= 2 * flows.len());
            let mut makespan = SimTime::ZERO;
            for (f, r) in flows.iter().zip(&s.flows) {
                let lat = net.path_latency(&f.path);
                prop_assert!(r.end >= r.start + lat);
                // Queues: start exactly when allowed.
                let allowed = f.after.map_or(f.start, |a| f.start.max(s.flows[a].end));
                prop_assert_eq!(r.start, allowed);
                makespan = makespan.max(r.end);
                if f.bytes == 0 {
                    prop_assert_eq!(r.end, r.start + lat);
                    continue;
                }
                // No flow beats the slowest channel or cap on its path.
                let min_cap = f
                    .path
                    .iter()
                    .map(|h| net.link(h.link).bytes_per_sec)
                    .chain(f.rate_cap)
                    .fold(f64::INFINITY, f64::min);
                // Internal times are f64 ns: allow a few ulps of the latest
                // time as error in the flow's duration.
                let time_eps = 8.0 * f64::EPSILON * s.makespan.0 as f64;
                let slack = 1e-8 + time_eps * (min_cap / 1e9) / f.bytes as f64;
                prop_assert!(r.mean_rate <= min_cap * (1.0 + slack), "{} > {}", r.mean_rate, min_cap);
                // Same on reported (ns-rounded) times.
                let moving_ns = (r.end.0 - r.start.0 - lat.0) as f64 + ROUND_SLACK_NS;
                prop_assert!(f.bytes as f64 <= min_cap / 1e9 * moving_ns * (1.0 + 1e-8));
            }
            prop_assert_eq!(s.makespan, makespan);
            for c in &s.channels {
                let cap = net.link(c.link).bytes_per_sec / 1e9;
                let want: u64 = flows
                    .iter()
                    .map(|f| f.bytes * f.path.iter().filter(|h| h.link == c.link && h.dir == c.dir).count() as u64)
                    .sum();
                prop_assert_eq!(c.bytes, want);
                prop_assert!(c.bytes as f64 <= cap * (c.busy.0 as f64 + ROUND_SLACK_NS) * (1.0 + 1e-8) + 1.0,
                    "channel {:?}: {} bytes in {:?}", (c.link, c.dir), c.bytes, c.busy);
            }
            // Between any two events, rates are max-min fair: feasible and
            // work-conserving.
            let mut last = f64::NEG_INFINITY;
            for step in &trace {
                prop_assert!(step.time >= last, "time went backwards");
                last = step.time;
                let active: Vec<&Flow> = step.rates.iter().map(|&(f, _)| &flows[f]).collect();
                let rates: Vec<f64> = step.rates.iter().map(|&(_, r)| r).collect();
                assert_max_min(&net, &active, &rates);
            }
        }
    }
}
