//! Max-min fair rates by progressive filling: every active class's flows
//! share a level that rises until a channel on their path saturates or
//! their own cap is reached.

use super::classes::Class;

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
pub(super) struct Filler {
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
    pub(super) fn new(cap: Vec<f64>, n_classes: usize) -> Filler {
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
    pub(super) fn fill(&mut self, classes: &mut [Class], active: &[u32]) {
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
