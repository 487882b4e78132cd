//! Simulated time: whole nanoseconds outside, `f64` nanoseconds inside the
//! event loop, and the rounding between them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

pub(super) const NS_PER_SEC: f64 = 1e9;
/// Largest simulated time (exclusive) representable in `u64` nanoseconds.
pub(super) const MAX_NS: f64 = 18_446_744_073_709_551_615.0;
/// Internal times within this many nanoseconds above an integer round down
/// when reported (absorbs floating-point noise).
pub(super) const ROUND_SLACK_NS: f64 = 1e-3;

/// A point in (or span of) simulated time, in nanoseconds.
///
/// A plain value: any `u64` of nanoseconds is a time, so it is built from
/// a number ([`SimTime::from_nanos`] and the other units) and has no owner.
/// The field is private only so that the representation stays this
/// crate's to change, as `std::time::Duration`'s is.
///
/// Arithmetic saturates at `u64::MAX` / zero instead of panicking.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SimTime(u64);

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

/// Rounds an internal time (f64 ns) to reported nanoseconds: up, except that
/// values within [`ROUND_SLACK_NS`] above an integer round down.
pub(super) fn to_ns(t: f64) -> Option<u64> {
    let v = (t - ROUND_SLACK_NS).ceil().max(0.0);
    if v < MAX_NS {
        Some(v as u64)
    } else {
        None
    }
}
