//! Validation of the flows and their grouping into classes: flows with the
//! same channels (with multiplicity) and the same rate cap always get the
//! same rate, so the event loop and the rate computation work per class.

use super::time::NS_PER_SEC;
use super::{Flow, Network, TimingError};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

/// An f64 with a total order (for heaps).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct OrdF64(pub(super) f64);

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

/// What the flows are prepared for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    /// A full simulation: `after` must name an earlier flow; a flow of 0
    /// bytes may have neither links nor a cap.
    Simulate,
    /// Rates at one instant: `after` and `bytes` do not matter.
    Rates,
}

/// Flows with the same channels (with multiplicity) and the same rate cap:
/// they always have the same rate.
pub(super) struct Class {
    /// (channel, multiplicity), sorted by channel.
    pub(super) chans: Vec<(u32, f64)>,
    /// Per-flow cap in bytes/ns (infinite if none).
    pub(super) cap: f64,
    /// Active flows.
    pub(super) n: u32,
    /// `n` when rates were last computed.
    pub(super) n_at_fill: u32,
    /// Per-flow rate in bytes/ns.
    pub(super) rate: f64,
    /// Bytes served to every flow of the class since it last became active.
    pub(super) served: f64,
    /// Active flows keyed by the `served` value at which they finish.
    pub(super) queue: BinaryHeap<Reverse<(OrdF64, u32)>>,
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

/// The flows, validated and grouped.
pub(super) struct Prep {
    /// Numbered by ascending cap (see [`Network::prepare`]).
    pub(super) classes: Vec<Class>,
    /// The class of each flow.
    pub(super) class_of: Vec<u32>,
    /// The path latency of each flow, in ns.
    pub(super) latency: Vec<u64>,
}

impl Network {
    /// Validates flows and groups them into classes of identical
    /// (channel multiset, rate cap).
    pub(super) fn prepare(&self, flows: &[Flow], mode: Mode) -> Result<Prep, TimingError> {
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
                if let Some(after) = f.predecessors().find(|&a| a >= i) {
                    return Err(TimingError::BadAfter { flow: i, after });
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
                let link = self.link(hop.link).ok_or(TimingError::UnknownLink {
                    flow: i,
                    hop: h,
                    link: hop.link,
                })?;
                lat = lat
                    .checked_add(link.latency.as_nanos())
                    .ok_or(TimingError::TimeOverflow { flow: i })?;
                chans.push(hop.link.index() * 2 + hop.dir.index());
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
            .filter_map(|&k| slots[k as usize].take())
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
}
