//! The verdict for every pair, fast: per function the depth, the upstream
//! bridge, the count of ACS-redirecting functions from it to the top of its
//! tree, and per host bridge the whitelist answers, so each pair costs a
//! walk to the meeting point and a few additions instead of the kernel's
//! nested walks.

use crate::path::{ClassFacts, LinkClass};
use crate::rules::{acs_redirects, HostBridgeForwarding, Whitelisting};
use crate::MapType;
use peerdma_pci::{AcsAssumption, Bdf, FnId, Topology};
use serde::Serialize;

const NONE: u32 = u32::MAX;

/// Precomputed facts for answering many pairs.
pub struct P2pIndex<'t> {
    topo: &'t Topology,
    up: Vec<u32>,
    depth: Vec<u32>,
    /// ACS-redirecting functions from this one up to the top, inclusive.
    redir_to_top: Vec<u32>,
    redir: Vec<bool>,
    /// Functions whose ACS state is not in the capture (unknown or only
    /// assumed), from this one up to the top, inclusive.
    unknown_to_top: Vec<u32>,
    unknown: Vec<bool>,
    top: Vec<u32>,
    hb: Vec<u32>,
    cpu_ok: bool,
    /// The whitelist's answers per host bridge.
    wl: Vec<Whitelisting>,
    /// Functions in depth-first order; a subtree is a contiguous range.
    order: Vec<u32>,
    pos: Vec<u32>,
    end: Vec<u32>,
}

/// One entry of the all-pairs matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PairVerdict {
    pub provider: Bdf,
    pub client: Bdf,
    pub map_type: MapType,
    /// `None` where the kernel's `pci_p2pdma_distance` returns -1.
    pub distance: Option<u32>,
    /// How far apart the two are, in NVML's levels ([`LinkClass`]).
    pub link_class: LinkClass,
}

impl<'t> P2pIndex<'t> {
    pub fn new(topo: &'t Topology) -> P2pIndex<'t> {
        let n = topo.len();
        let mut idx = P2pIndex {
            topo,
            up: Vec::with_capacity(n),
            depth: vec![0; n],
            redir_to_top: vec![0; n],
            redir: Vec::with_capacity(n),
            unknown_to_top: vec![0; n],
            unknown: Vec::with_capacity(n),
            top: vec![0; n],
            hb: Vec::with_capacity(n),
            cpu_ok: topo.cpu().supports_p2pdma(),
            wl: topo
                .host_bridges()
                .iter()
                .map(|h| Whitelisting::of(topo, h.id))
                .collect(),
            order: Vec::with_capacity(n),
            pos: vec![0; n],
            end: vec![0; n],
        };
        for f in topo.functions() {
            idx.up.push(f.upstream.map_or(NONE, |u| u.index() as u32));
            idx.redir.push(acs_redirects(&f.acs).unwrap_or(false));
            idx.unknown.push(!f.acs.is_known());
            idx.hb.push(f.host_bridge.index() as u32);
        }
        // Ancestors are not always earlier in BDF order (a VF's bus), so
        // resolve each chain with memoisation.
        let mut done = vec![false; n];
        let mut stack = Vec::new();
        for i in 0..n {
            let mut cur = i as u32;
            while cur != NONE && !done[cur as usize] {
                stack.push(cur);
                cur = idx.up[cur as usize];
            }
            while let Some(x) = stack.pop() {
                let x = x as usize;
                let u = idx.up[x];
                let r = u32::from(idx.redir[x]);
                let k = u32::from(idx.unknown[x]);
                if u == NONE {
                    idx.depth[x] = 0;
                    idx.redir_to_top[x] = r;
                    idx.unknown_to_top[x] = k;
                    idx.top[x] = x as u32;
                } else {
                    let u = u as usize;
                    idx.depth[x] = idx.depth[u] + 1;
                    idx.redir_to_top[x] = idx.redir_to_top[u] + r;
                    idx.unknown_to_top[x] = idx.unknown_to_top[u] + k;
                    idx.top[x] = idx.top[u];
                }
                done[x] = true;
            }
        }
        // Depth-first order over the upstream relation (children lists do
        // not hold virtual functions, so build them here).
        let mut kids: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for i in 0..n {
            match idx.up[i] {
                NONE => roots.push(i as u32),
                u => kids[u as usize].push(i as u32),
            }
        }
        let mut stack: Vec<(u32, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
        while let Some((x, closing)) = stack.pop() {
            if closing {
                idx.end[x as usize] = idx.order.len() as u32;
                continue;
            }
            idx.pos[x as usize] = idx.order.len() as u32;
            idx.order.push(x);
            stack.push((x, true));
            for &k in kids[x as usize].iter().rev() {
                stack.push((k, false));
            }
        }
        idx
    }

    pub fn topology(&self) -> &'t Topology {
        self.topo
    }

    /// Map type and the raw distance `calc_map_type_and_dist` computes.
    #[inline]
    pub fn map_type_and_dist(&self, provider: FnId, client: FnId) -> (MapType, u32) {
        let (a, b) = (provider.index(), client.index());
        if self.top[a] == self.top[b] {
            let (mut x, mut y) = (a, b);
            while self.depth[x] > self.depth[y] {
                x = self.up[x] as usize;
            }
            while self.depth[y] > self.depth[x] {
                y = self.up[y] as usize;
            }
            while x != y {
                x = self.up[x] as usize;
                y = self.up[y] as usize;
            }
            let c = x;
            let dist = self.depth[a] + self.depth[b] - 2 * self.depth[c];
            let redirects = self.redir_to_top[a] + self.redir_to_top[b] - 2 * self.redir_to_top[c]
                + u32::from(self.redir[c]);
            if redirects == 0 {
                return (MapType::BusAddr, dist);
            }
            return (self.through_host_bridge(a, b), dist);
        }
        let dist = self.depth[a] + self.depth[b] + 2;
        (self.through_host_bridge(a, b), dist)
    }

    /// Whether the kernel's walk for this pair checks a function whose ACS
    /// state is not in the capture (unknown, or only assumed): the
    /// provider's bridges up to the common one and the client's below it,
    /// or, without a common bridge, the provider's bridges to the top.
    pub fn acs_unknown_on_walk(&self, provider: FnId, client: FnId) -> bool {
        let (a, b) = (provider.index(), client.index());
        if self.top[a] != self.top[b] {
            return self.unknown_to_top[a] > 0;
        }
        let (mut x, mut y) = (a, b);
        while self.depth[x] > self.depth[y] {
            x = self.up[x] as usize;
        }
        while self.depth[y] > self.depth[x] {
            y = self.up[y] as usize;
        }
        while x != y {
            x = self.up[x] as usize;
            y = self.up[y] as usize;
        }
        self.unknown_to_top[a] + self.unknown_to_top[b] - 2 * self.unknown_to_top[x]
            + u32::from(self.unknown[x])
            > 0
    }

    #[inline]
    fn through_host_bridge(&self, a: usize, b: usize) -> MapType {
        if self.host_bridge_forwards(self.hb[a] as usize, self.hb[b] as usize) {
            MapType::ThruHostBridge
        } else {
            MapType::NotSupported
        }
    }

    /// The host-bridge rule ([`HostBridgeForwarding`]) on the
    /// precomputed whitelist answers.
    #[inline]
    fn host_bridge_forwards(&self, ha: usize, hb: usize) -> bool {
        HostBridgeForwarding::decide(self.cpu_ok, self.wl[ha], self.wl[hb], ha == hb).forwards()
    }

    /// The pair's verdict as `pci_p2pdma_distance` reports it.
    pub fn pair(&self, provider: FnId, client: FnId) -> PairVerdict {
        let (map_type, dist) = self.map_type_and_dist(provider, client);
        PairVerdict {
            provider: self.topo.function(provider).bdf,
            client: self.topo.function(client).bdf,
            map_type,
            distance: (map_type != MapType::NotSupported).then_some(dist),
            link_class: crate::path::link_class(self.topo, provider, client),
        }
    }
}

/// A cell of the matrix: map type in the low two bits, raw distance above.
const CELL_NOT_SUPPORTED: u32 = 0;
const CELL_BUS_ADDR: u32 = 1;
const CELL_THRU_HOST_BRIDGE: u32 = 2;

#[inline]
fn cell(map: u32, dist: u32) -> u32 {
    dist << 2 | map
}

/// The verdict for every ordered pair, computed row by row: for each
/// provider, the pairs with no common bridge are filled from per-host-bridge
/// answers, then the ancestors' subtrees (contiguous in depth-first order)
/// give the pairs that meet at each ancestor in one pass.
pub struct Matrix {
    n: usize,
    bdfs: Vec<Bdf>,
    cells: Vec<u32>,
    /// Link classes are decided per pair on demand from these.
    classes: ClassFacts,
}

impl Matrix {
    pub fn compute(topo: &Topology) -> Matrix {
        let idx = P2pIndex::new(topo);
        let n = topo.len();
        let mut cells = vec![0u32; n * n];
        if n > 0 {
            let threads = std::thread::available_parallelism()
                .map_or(1, |p| p.get())
                .min(n);
            let rows_per = n.div_ceil(threads);
            std::thread::scope(|s| {
                for (chunk_no, chunk) in cells.chunks_mut(rows_per * n).enumerate() {
                    let idx = &idx;
                    s.spawn(move || {
                        for (r, row) in chunk.chunks_mut(n).enumerate() {
                            idx.fill_row(chunk_no * rows_per + r, row);
                        }
                    });
                }
            });
        }
        Matrix {
            n,
            bdfs: topo.functions().iter().map(|f| f.bdf).collect(),
            cells,
            classes: ClassFacts::new(topo),
        }
    }

    /// Number of functions (the matrix is n x n).
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Map type and raw distance for a pair.
    pub fn get(&self, provider: FnId, client: FnId) -> (MapType, u32) {
        self.get_at(provider.index(), client.index())
    }

    /// The verdict for a pair.
    pub fn verdict(&self, provider: FnId, client: FnId) -> PairVerdict {
        let (a, b) = (provider.index(), client.index());
        let (map_type, dist) = self.get_at(a, b);
        PairVerdict {
            provider: self.bdfs[a],
            client: self.bdfs[b],
            map_type,
            distance: (map_type != MapType::NotSupported).then_some(dist),
            link_class: self.classes.class(a, b),
        }
    }

    /// The link class of a pair ([`LinkClass`]).
    pub fn link_class(&self, a: FnId, b: FnId) -> LinkClass {
        self.classes.class(a.index(), b.index())
    }

    fn get_at(&self, a: usize, b: usize) -> (MapType, u32) {
        let c = self.cells[a * self.n + b];
        let map = match c & 3 {
            CELL_BUS_ADDR => MapType::BusAddr,
            CELL_THRU_HOST_BRIDGE => MapType::ThruHostBridge,
            _ => MapType::NotSupported,
        };
        (map, c >> 2)
    }

    /// Every ordered pair of distinct functions, in BDF order.
    pub fn pairs(&self) -> impl Iterator<Item = PairVerdict> + '_ {
        (0..self.n).flat_map(move |a| {
            (0..self.n).filter(move |&b| b != a).map(move |b| {
                let (map_type, dist) = self.get_at(a, b);
                PairVerdict {
                    provider: self.bdfs[a],
                    client: self.bdfs[b],
                    map_type,
                    distance: (map_type != MapType::NotSupported).then_some(dist),
                    link_class: self.classes.class(a, b),
                }
            })
        })
    }
}

impl P2pIndex<'_> {
    #[inline]
    fn host_bridge_cell(&self, ha: usize, hb: usize) -> u32 {
        if self.host_bridge_forwards(ha, hb) {
            CELL_THRU_HOST_BRIDGE
        } else {
            CELL_NOT_SUPPORTED
        }
    }

    fn fill_row(&self, a: usize, row: &mut [u32]) {
        let ha = self.hb[a] as usize;
        let da = self.depth[a];
        // Per host bridge of the client, the answer when the path crosses it.
        let per_hb: Vec<u32> = (0..self.wl.len())
            .map(|h| self.host_bridge_cell(ha, h))
            .collect();
        for (b, out) in row.iter_mut().enumerate() {
            *out = cell(per_hb[self.hb[b] as usize], da + self.depth[b] + 2);
        }
        // Pairs meeting at each ancestor x of a (a itself first).
        let ra = self.redir_to_top[a];
        let same_hb = per_hb[ha];
        let (mut skip_s, mut skip_e) = (0u32, 0u32);
        let mut x = a;
        loop {
            let (s, e) = (self.pos[x], self.end[x]);
            let dx = self.depth[x];
            let rx = self.redir_to_top[x];
            let acs_a = ra - rx + u32::from(self.redir[x]);
            let up_dist = da - dx;
            for p in (s..e).filter(|p| *p < skip_s || *p >= skip_e) {
                let b = self.order[p as usize] as usize;
                let acs = acs_a + self.redir_to_top[b] - rx;
                let dist = up_dist + self.depth[b] - dx;
                row[b] = cell(if acs == 0 { CELL_BUS_ADDR } else { same_hb }, dist);
            }
            (skip_s, skip_e) = (s, e);
            match self.up[x] {
                NONE => break,
                u => x = u as usize,
            }
        }
    }
}

/// Every ordered pair of distinct functions, in BDF order.
pub fn matrix(topo: &Topology) -> Matrix {
    Matrix::compute(topo)
}

/// A pair's verdict, and where the capture does not show the ACS state of
/// functions the kernel's walk checks, the verdict under the other
/// assumption (`--assume-acs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PairReport {
    #[serde(flatten)]
    pub verdict: PairVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acs_unknown: Option<PairAcsUnknown>,
}

/// What unknown ACS leaves open for one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PairAcsUnknown {
    /// What the verdict assumed.
    pub assumed: AcsAssumption,
    /// The other assumption, and the verdict it gives.
    pub other: AcsAssumption,
    pub other_map_type: MapType,
    pub other_distance: Option<u32>,
}

/// Every ordered pair of distinct functions, in BDF order, each with what
/// unknown ACS leaves open (`matrix --json`).
pub fn pair_reports(topo: &Topology) -> Vec<PairReport> {
    let m = Matrix::compute(topo);
    let unknown = topo.has_unknown_acs();
    let other = topo.acs_assumption().other();
    let alt_topo = unknown.then(|| topo.with_acs_assumption(other));
    let alt = alt_topo.as_ref().map(Matrix::compute);
    let idx = P2pIndex::new(topo);
    let mut out = Vec::with_capacity(m.n * m.n.saturating_sub(1));
    for a in topo.ids() {
        for b in topo.ids().filter(|&b| b != a) {
            let verdict = m.verdict(a, b);
            let acs_unknown = match &alt {
                Some(alt) if idx.acs_unknown_on_walk(a, b) => {
                    let (map, dist) = alt.get(a, b);
                    Some(PairAcsUnknown {
                        assumed: topo.acs_assumption(),
                        other,
                        other_map_type: map,
                        other_distance: (map != MapType::NotSupported).then_some(dist),
                    })
                }
                _ => None,
            };
            out.push(PairReport {
                verdict,
                acs_unknown,
            });
        }
    }
    out
}
