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
//! The model's parts, one file each: simulated time (`time.rs`); flows
//! validated and grouped into classes (`classes.rs`); the max-min rate
//! computation by progressive filling (`fill.rs`) and its cache of recent
//! results (`cache.rs`); and the event loop with its flow bookkeeping
//! (`events.rs`).
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

mod cache;
mod classes;
mod events;
mod fill;
#[cfg(test)]
mod tests;
mod time;

pub use time::SimTime;

use classes::{Mode, Prep};
use fill::Filler;
use serde::{Deserialize, Serialize, Serializer};
use std::sync::atomic::{AtomicU32, Ordering};
use time::NS_PER_SEC;

// ---------------------------------------------------------------------------
// Links and paths
// ---------------------------------------------------------------------------

/// Identifies a link of a [`Network`]: only [`Network::add_link`] makes
/// one, and it names its network, so a link of one network is unknown to
/// another (an error, never a different link).
///
/// ```compile_fail
/// // Not made from a number.
/// let l = peerdma_sim::timing::LinkId(3);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct LinkId {
    network: u32,
    index: u32,
}

impl LinkId {
    fn new(network: u32, index: u32) -> LinkId {
        LinkId { network, index }
    }

    /// The link's position in its network ([`Network::links`]), as it is
    /// shown in reports and serialized.
    pub fn index(self) -> u32 {
        self.index
    }
}

impl Serialize for LinkId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.index)
    }
}

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
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
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
    #[error("flow {flow}, hop {hop}: link {} is not a link of this network", link.index())]
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
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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
    /// More earlier flows this one waits for: it starts when `after` and
    /// all of these have ended (a join, such as a job that waits for
    /// several others). Each must be smaller than this flow's own index.
    pub also_after: Vec<usize>,
    /// Bytes/s limit of the endpoints themselves (e.g. a drive's media rate).
    pub rate_cap: Option<f64>,
}

impl Flow {
    /// Every flow this one waits for.
    pub fn predecessors(&self) -> impl Iterator<Item = usize> + '_ {
        self.after.iter().chain(self.also_after.iter()).copied()
    }
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
    /// When data starts moving: `max(start, end of every predecessor)`.
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
#[derive(Clone, Debug, PartialEq, Serialize)]
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
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// The network simulated.
    #[serde(skip)]
    network: u32,
}

impl Schedule {
    /// The use of `link` in direction `dir`, if the link exists.
    pub fn channel(&self, link: LinkId, dir: Dir) -> Option<&ChannelUse> {
        if link.network != self.network {
            return None;
        }
        self.channels
            .get((link.index as usize).checked_mul(2)? + dir.index() as usize)
    }
}

/// The links of a simulated machine; simulates flows over them.
///
/// Links are only added through [`Network::add_link`], which validates them
/// (so `Network` is `Serialize` but deliberately not `Deserialize`). Each
/// network has an identity its [`LinkId`]s carry; a clone keeps it (the
/// clone has the same links).
#[derive(Clone, Debug, Serialize)]
pub struct Network {
    #[serde(skip)]
    id: u32,
    links: Vec<Link>,
}

impl Default for Network {
    fn default() -> Self {
        Network::new()
    }
}

impl PartialEq for Network {
    /// Networks are equal when their links are (whatever their identity).
    fn eq(&self, other: &Self) -> bool {
        self.links == other.links
    }
}

/// Identities of networks (wrapping after 2^32 networks, which keeps ids
/// distinct among any networks alive at once in practice).
static NEXT_NETWORK: AtomicU32 = AtomicU32::new(1);

impl Network {
    /// An empty network.
    pub fn new() -> Self {
        Network {
            id: NEXT_NETWORK.fetch_add(1, Ordering::Relaxed),
            links: Vec::new(),
        }
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
        let id = LinkId::new(self.id, self.links.len() as u32);
        self.links.push(Link {
            name,
            bytes_per_sec,
            latency,
        });
        Ok(id)
    }

    /// The link `id`, or `None` if it is not a link of this network.
    pub fn link(&self, id: LinkId) -> Option<&Link> {
        if id.network != self.id {
            return None;
        }
        self.links.get(id.index as usize)
    }

    /// All links, in the order they were added ([`LinkId::index`]).
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The sum of the latencies of the links on `path` (saturating); unknown
    /// links count as zero.
    pub fn path_latency(&self, path: &[Hop]) -> SimTime {
        path.iter()
            .filter_map(|h| self.link(h.link))
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
}
