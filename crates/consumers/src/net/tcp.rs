//! TCP for devmem flows: the receiving socket — in-order and out-of-order
//! queues of skbs whose payload frags are `net_iov`s, `recvmsg` with
//! `MSG_SOCK_DEVMEM` handing the user `(dma-buf offset, size, token)` frags
//! (`tcp_recvmsg_dmabuf`), `SO_DEVMEM_DONTNEED` taking tokens back
//! (`sock_devmem_dontneed`) — and the sender's sequence space, with
//! selective-acknowledgement loss recovery.
//!
//! References, as the kernel counts them on a `net_iov`'s `pp_ref_count`:
//! every skb frag holds one; `recvmsg` gives the user a token holding one
//! more per frag (partial frags too) and frees the skb once all of it is
//! read; `SO_DEVMEM_DONTNEED` drops the token's. Closing the socket
//! drops what the user and the queues still hold.
//!
//! The receive window is what the socket can still queue: `rcvbuf` minus
//! the `truesize` of the skbs waiting in its queues, scaled by the ratio
//! of payload to `truesize` the socket sees (`tp->scaling_ratio`). Frags
//! the user holds by token are no longer charged to the socket: a user
//! that reads but does not return tokens keeps the window open and drains
//! the page pool, and the NIC then drops frames (see
//! [`super::nic`]); a user that does not read closes the window and the
//! sender waits.

use super::devmem::Binding;
use super::frame::{unwrap_seq, Parsed};
use super::nic::{RxPacket, MAX_FRAGS};
use super::page_pool::PagePool;
use super::NetError;
use std::collections::{BTreeMap, VecDeque};

/// `MAX_DONTNEED_TOKENS`: token ranges one `SO_DEVMEM_DONTNEED` takes.
pub const MAX_DONTNEED_TOKENS: usize = 128;
/// `MAX_DONTNEED_FRAGS`: frags one `SO_DEVMEM_DONTNEED` frees at most.
pub const MAX_DONTNEED_FRAGS: u32 = 1024;
/// `tcp_rmem[2]`: the receive buffer autotuning grows to.
pub const DEFAULT_RCVBUF: u64 = 6 << 20;

/// One `SCM_DEVMEM_DMABUF` control message (`struct dmabuf_cmsg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevmemCmsg {
    /// Where the frag starts in the dma-buf.
    pub frag_offset: u64,
    pub frag_size: u32,
    /// What to give back with `SO_DEVMEM_DONTNEED`.
    pub frag_token: u32,
    /// The binding the frag landed in.
    pub dmabuf_id: u32,
}

/// A range of tokens to give back (`struct dmabuf_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmabufToken {
    pub token_start: u32,
    pub token_count: u32,
}

/// A received segment: its place in the stream and its payload frags
/// (`net_iov`, offset, length).
#[derive(Clone, Copy, Debug)]
struct Skb {
    seq: u64,
    len: u32,
    /// Bytes already given to the user.
    consumed: u32,
    truesize: u32,
    nfrags: u8,
    frags: [(u32, u32, u32); MAX_FRAGS],
}

/// Counters of a socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Segments queued in order (directly or from the out-of-order queue).
    pub segments: u64,
    /// Segments that arrived ahead of a hole.
    pub out_of_order: u64,
    /// Segments that carried nothing new (a retransmission of what was
    /// already here).
    pub duplicates: u64,
    /// Frags handed to the user.
    pub frags: u64,
    /// Tokens the user gave back, and `SO_DEVMEM_DONTNEED` calls.
    pub tokens_returned: u64,
    pub dontneed_calls: u64,
    /// Segments dropped because the socket's queues already held more
    /// than `rcvbuf` of truesize (`TCPRcvQDrop`): buffers that hold little
    /// payload each fill the receive buffer fast.
    pub rcvbuf_drops: u64,
}

/// The receiving socket of a devmem flow.
#[derive(Debug)]
pub struct DevmemSocket {
    rcv_nxt: u64,
    queue: VecDeque<Skb>,
    ofo: BTreeMap<u64, Skb>,
    /// `sk_rmem_alloc`: truesize of the skbs queued.
    rmem: u64,
    pub rcvbuf: u64,
    /// `tp->scaling_ratio` (out of 256).
    scaling: u64,
    /// `sk_user_frags`: token - 1 -> (`net_iov`, bytes), `u32::MAX` when free.
    user_frags: Vec<(u32, u32)>,
    free_tokens: Vec<u32>,
    held: u64,
    pub dmabuf_id: u32,
    pub stats: SocketStats,
}

const NO_FRAG: u32 = u32::MAX;

impl DevmemSocket {
    pub fn new(rcvbuf: u64) -> DevmemSocket {
        DevmemSocket {
            rcv_nxt: 0,
            queue: VecDeque::new(),
            ofo: BTreeMap::new(),
            rmem: 0,
            rcvbuf,
            scaling: 128,
            user_frags: Vec::new(),
            free_tokens: Vec::new(),
            held: 0,
            dmabuf_id: 0,
            stats: SocketStats::default(),
        }
    }

    /// The next stream byte expected.
    pub fn rcv_nxt(&self) -> u64 {
        self.rcv_nxt
    }

    /// Tokens the user holds.
    pub fn held_tokens(&self) -> u64 {
        self.held
    }

    /// Bytes queued in order and not yet read.
    pub fn readable(&self) -> u64 {
        self.queue
            .iter()
            .map(|s| u64::from(s.len - s.consumed))
            .sum()
    }

    /// The window the socket advertises.
    pub fn window(&self) -> u64 {
        self.rcvbuf.saturating_sub(self.rmem) * self.scaling / 256
    }

    /// The stream ranges held out of order (what SACK blocks report).
    pub fn sacked(&self, out: &mut Vec<(u64, u64)>) {
        out.clear();
        for s in self.ofo.values() {
            let (a, b) = (s.seq, s.seq + u64::from(s.len));
            match out.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => out.push((a, b)),
            }
        }
    }

    /// `tcp_rcv_established` for a packet the driver handed up: take the
    /// skb's references, place it in the stream, queue it in order or out
    /// of order, or free it when it brings nothing new. `truesize` is what
    /// the driver charged for its buffers.
    pub fn on_packet(
        &mut self,
        pkt: &RxPacket,
        parsed: &Parsed,
        truesize: u32,
        b: &mut Binding,
        pool: &mut PagePool,
    ) -> Result<(), NetError> {
        if parsed.payload_len != pkt.payload_len {
            return Err(NetError::Frame(format!(
                "the header says {} payload bytes, the completion {}",
                parsed.payload_len, pkt.payload_len
            )));
        }
        let frags = pkt
            .frags
            .get(..usize::from(pkt.nfrags))
            .ok_or_else(|| NetError::Frame(format!("a packet of {} frags", pkt.nfrags)))?;
        let sum: u64 = frags.iter().map(|f| u64::from(f.2)).sum();
        let bad = frags.iter().find(|&&(n, off, l)| {
            n >= b.niov_count() || u64::from(off) + u64::from(l) > u64::from(b.niov_size())
        });
        if sum != u64::from(pkt.payload_len) || bad.is_some() {
            return Err(NetError::Frame(format!(
                "a packet's frags {frags:?} do not hold its {} bytes inside net_iovs of binding {} ({} of {} bytes)",
                pkt.payload_len,
                b.id(),
                b.niov_count(),
                b.niov_size()
            )));
        }
        let mut skb = Skb {
            seq: unwrap_seq(parsed.seq, self.rcv_nxt),
            len: pkt.payload_len,
            consumed: 0,
            truesize,
            nfrags: pkt.nfrags,
            frags: pkt.frags,
        };
        for &(n, _, l) in &skb.frags[..usize::from(skb.nfrags)] {
            if n >= b.niov_count() {
                return Err(NetError::Frame(format!(
                    "a frag names net_iov {n} of {}",
                    b.niov_count()
                )));
            }
            PagePool::get(b, n);
            b.data_ref(n, l);
        }
        if skb.len > 0 {
            self.scaling = (u64::from(skb.len) * 256 / u64::from(truesize.max(1))).clamp(1, 256);
        }
        let end = skb.seq + u64::from(skb.len);
        if end <= self.rcv_nxt || self.ofo.contains_key(&skb.seq) {
            self.stats.duplicates += 1;
            return free_skb(&skb, b, pool, true);
        }
        // tcp_try_rmem_schedule: over the receive buffer, the segment goes
        // (devmem skbs cannot be collapsed into fewer bytes).
        if self.rmem > self.rcvbuf {
            self.stats.rcvbuf_drops += 1;
            return free_skb(&skb, b, pool, true);
        }
        self.rmem += u64::from(skb.truesize);
        if skb.seq <= self.rcv_nxt {
            // Trim what is already here (a retransmission overlapping it).
            let dup = (self.rcv_nxt - skb.seq) as u32;
            consume(&mut skb, dup, b);
            self.rcv_nxt = end;
            self.queue.push_back(skb);
            self.stats.segments += 1;
            // What the hole held back.
            while let Some(entry) = self.ofo.first_entry() {
                if *entry.key() > self.rcv_nxt {
                    break;
                }
                let mut s = entry.remove();
                let e = s.seq + u64::from(s.len);
                if e <= self.rcv_nxt {
                    self.rmem -= u64::from(s.truesize);
                    self.stats.duplicates += 1;
                    free_skb(&s, b, pool, true)?;
                    continue;
                }
                let dup = (self.rcv_nxt - s.seq) as u32;
                consume(&mut s, dup, b);
                self.rcv_nxt = e;
                self.queue.push_back(s);
                self.stats.segments += 1;
            }
        } else {
            self.stats.out_of_order += 1;
            self.ofo.insert(skb.seq, skb);
        }
        Ok(())
    }

    fn token(&mut self, niov: u32, bytes: u32) -> Result<u32, NetError> {
        let t = match self.free_tokens.pop() {
            Some(t) => {
                self.user_frags[t as usize] = (niov, bytes);
                t
            }
            None => {
                let t = u32::try_from(self.user_frags.len())
                    .ok()
                    .filter(|&t| t < i32::MAX as u32)
                    .ok_or(NetError::Config(
                        "the socket holds 2^31 tokens (xa_limit_31b)".into(),
                    ))?;
                self.user_frags.push((niov, bytes));
                t
            }
        };
        self.held += 1;
        Ok(t + 1)
    }

    /// `recvmsg(MSG_SOCK_DEVMEM)`: up to `max_bytes` of the stream, in
    /// order, as frags appended to `out`; the bytes read. Each frag is a
    /// token holding a reference to its `net_iov`; an skb read to its end
    /// is freed.
    pub fn recvmsg(
        &mut self,
        out: &mut Vec<DevmemCmsg>,
        max_bytes: u64,
        b: &mut Binding,
        pool: &mut PagePool,
    ) -> Result<u64, NetError> {
        let mut read = 0u64;
        while read < max_bytes {
            let Some(mut skb) = self.queue.pop_front() else {
                break;
            };
            // Walk the frags past what was read before.
            let mut pos = 0u32;
            for k in 0..usize::from(skb.nfrags) {
                let (n, off, l) = skb.frags[k];
                let (start, end) = (pos, pos + l);
                pos = end;
                if skb.consumed >= end {
                    continue;
                }
                if read >= max_bytes {
                    break;
                }
                let from = skb.consumed - start.min(skb.consumed);
                let take = (l - from).min(u32::try_from(max_bytes - read).unwrap_or(u32::MAX));
                let token = self.token(n, take)?;
                PagePool::get(b, n);
                b.data_ref(n, take);
                b.data_shrink(n, take);
                out.push(DevmemCmsg {
                    frag_offset: b.niovs[n as usize].virt + u64::from(off + from),
                    frag_size: take,
                    frag_token: token,
                    dmabuf_id: self.dmabuf_id,
                });
                self.stats.frags += 1;
                skb.consumed += take;
                read += u64::from(take);
            }
            if skb.consumed < skb.len {
                self.queue.push_front(skb);
                break;
            }
            self.rmem -= u64::from(skb.truesize);
            free_skb(&skb, b, pool, false)?;
        }
        Ok(read)
    }

    /// `SO_DEVMEM_DONTNEED`: give tokens back. More than
    /// [`MAX_DONTNEED_TOKENS`] ranges is `EINVAL`; past
    /// [`MAX_DONTNEED_FRAGS`] frags the call stops and returns early. A
    /// token the socket does not hold is skipped. The number of frags freed.
    pub fn dontneed(
        &mut self,
        tokens: &[DmabufToken],
        b: &mut Binding,
        pool: &mut PagePool,
    ) -> Result<u32, NetError> {
        if tokens.len() > MAX_DONTNEED_TOKENS {
            return Err(NetError::TooManyTokens {
                given: tokens.len(),
            });
        }
        self.stats.dontneed_calls += 1;
        let mut frags = 0u32;
        let mut freed = 0u32;
        for t in tokens {
            for j in 0..t.token_count {
                frags += 1;
                if frags > MAX_DONTNEED_FRAGS {
                    return Ok(freed);
                }
                let Some(tok) = t.token_start.checked_add(j) else {
                    continue;
                };
                let Some(idx) = tok.checked_sub(1) else {
                    continue;
                };
                let Some(slot) = self.user_frags.get_mut(idx as usize) else {
                    continue;
                };
                let (n, bytes) = *slot;
                if n == NO_FRAG {
                    continue;
                }
                *slot = (NO_FRAG, 0);
                self.free_tokens.push(idx);
                self.held -= 1;
                b.data_unref(n, bytes);
                pool.put(b, n, false)?;
                freed += 1;
                self.stats.tokens_returned += 1;
            }
        }
        Ok(freed)
    }

    /// Close the socket: every token the user holds and every skb still
    /// queued lets go of its `net_iov`.
    pub fn close(&mut self, b: &mut Binding, pool: &mut PagePool) -> Result<(), NetError> {
        for idx in 0..self.user_frags.len() {
            let (n, bytes) = self.user_frags[idx];
            if n == NO_FRAG {
                continue;
            }
            self.user_frags[idx] = (NO_FRAG, 0);
            self.free_tokens.push(idx as u32);
            self.held -= 1;
            b.data_unref(n, bytes);
            pool.put(b, n, false)?;
        }
        let queued: Vec<Skb> = self
            .queue
            .drain(..)
            .chain(std::mem::take(&mut self.ofo).into_values())
            .collect();
        for s in queued {
            self.rmem -= u64::from(s.truesize);
            free_skb(&s, b, pool, false)?;
        }
        Ok(())
    }
}

/// Mark the first `n` bytes of `skb` as gone (read, or already received):
/// the `net_iov` data they held is no longer held by this skb.
fn consume(skb: &mut Skb, n: u32, b: &mut Binding) {
    if n == 0 {
        return;
    }
    let mut pos = 0u32;
    for &(niov, _, l) in &skb.frags[..usize::from(skb.nfrags)] {
        let (start, end) = (pos, pos + l);
        pos = end;
        let lo = skb.consumed.max(start);
        let hi = (skb.consumed + n).min(end);
        if hi > lo {
            b.data_shrink(niov, hi - lo);
        }
    }
    skb.consumed += n;
}

/// Free an skb: each frag's reference goes.
fn free_skb(skb: &Skb, b: &mut Binding, pool: &mut PagePool, direct: bool) -> Result<(), NetError> {
    let mut pos = 0u32;
    for &(n, _, l) in &skb.frags[..usize::from(skb.nfrags)] {
        let (start, end) = (pos, pos + l);
        pos = end;
        let unread = end - skb.consumed.clamp(start, end);
        b.data_unref(n, unread);
        pool.put(b, n, direct)?;
    }
    Ok(())
}

/// The sender's view of the stream: what was acknowledged, what was sent,
/// what must be sent again.
#[derive(Debug)]
pub struct TcpSender {
    pub mss: u32,
    pub stream_len: u64,
    pub snd_una: u64,
    pub snd_nxt: u64,
    /// The receiver's last advertised window.
    pub rwnd: u64,
    /// The congestion window and slow-start threshold, in segments.
    pub cwnd: u64,
    pub ssthresh: u64,
    lost: VecDeque<(u64, u32)>,
    pub stats: SenderStats,
}

/// `TCP_INIT_CWND`: segments a connection may send in its first round.
pub const INIT_CWND: u64 = 10;
/// A bound on the congestion window (segments).
const MAX_CWND: u64 = 1 << 20;

/// What the sender counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    pub segments: u64,
    pub retransmitted: u64,
    pub retransmitted_bytes: u64,
    /// Losses found below data the receiver reported (SACK): recovered
    /// fast, within a round trip.
    pub fast_recoveries: u64,
    /// Losses at the tail, with nothing after them to report them: a
    /// retransmission timeout (at least `TCP_RTO_MIN`, 200 ms).
    pub timeouts: u64,
    /// Rounds the sender had data but the receiver's window was closed.
    pub zero_window: u64,
}

/// One segment to put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub len: u32,
    pub retransmit: bool,
}

impl TcpSender {
    pub fn new(mss: u32, stream_len: u64, rwnd: u64) -> TcpSender {
        TcpSender {
            mss: mss.max(1),
            stream_len,
            snd_una: 0,
            snd_nxt: 0,
            rwnd,
            cwnd: INIT_CWND,
            ssthresh: MAX_CWND,
            lost: VecDeque::new(),
            stats: SenderStats::default(),
        }
    }

    /// Whether every byte was acknowledged.
    pub fn done(&self) -> bool {
        self.snd_una >= self.stream_len
    }

    /// Up to `budget` segments: retransmissions first, then new data up to
    /// the window's right edge and `avail` (the end of what the send
    /// buffer holds).
    pub fn segments(&mut self, budget: usize, avail: u64, out: &mut Vec<Segment>) {
        out.clear();
        while out.len() < budget {
            let Some((seq, len)) = self.lost.pop_front() else {
                break;
            };
            out.push(Segment {
                seq,
                len,
                retransmit: true,
            });
            self.stats.retransmitted += 1;
            self.stats.retransmitted_bytes += u64::from(len);
        }
        let edge = self
            .snd_una
            .saturating_add(self.rwnd)
            .min(self.snd_una.saturating_add(self.cwnd * u64::from(self.mss)))
            .min(self.stream_len)
            .min(avail);
        let window_edge = self.snd_una.saturating_add(self.rwnd);
        if self.snd_nxt < self.stream_len && window_edge <= self.snd_nxt && out.is_empty() {
            self.stats.zero_window += 1;
        }
        while out.len() < budget && self.snd_nxt < edge {
            let len = (edge - self.snd_nxt).min(u64::from(self.mss)) as u32;
            // No segment is cut to fit the window or the send buffer
            // (tcp_snd_wnd_test; Nagle holds a short one back while data is
            // in flight): only the stream's end, or a probe with nothing
            // in flight, may be short.
            let last = self.snd_nxt + u64::from(len) == self.stream_len;
            if len < self.mss && !last && self.snd_nxt > self.snd_una {
                break;
            }
            out.push(Segment {
                seq: self.snd_nxt,
                len,
                retransmit: false,
            });
            self.snd_nxt += u64::from(len);
        }
        self.stats.segments += out.len() as u64;
    }

    /// An acknowledgement after a round: `ack` (everything below it
    /// arrived), the ranges held above it, the window. Everything else
    /// sent is lost (every frame of the round has been seen by then):
    /// holes below a reported range are recovered fast, a tail with
    /// nothing reported after it takes a timeout.
    pub fn on_ack(&mut self, ack: u64, sacked: &[(u64, u64)], window: u64) {
        let before = self.snd_una;
        self.snd_una = self.snd_una.max(ack.min(self.snd_nxt));
        let acked = (self.snd_una - before).div_ceil(u64::from(self.mss));
        self.rwnd = window;
        self.lost.clear();
        let top = sacked.last().map_or(self.snd_una, |s| s.1);
        let mut pos = self.snd_una;
        let mss = u64::from(self.mss);
        let mark = |from: u64, to: u64, lost: &mut VecDeque<(u64, u32)>| {
            let mut p = from;
            while p < to {
                let l = (to - p).min(mss) as u32;
                lost.push_back((p, l));
                p += u64::from(l);
            }
        };
        let mut holes = false;
        for &(a, b) in sacked {
            if a > pos {
                mark(pos, a, &mut self.lost);
                holes = true;
            }
            pos = pos.max(b);
        }
        let tail_from = top.max(self.snd_una);
        let tail = tail_from < self.snd_nxt;
        if tail {
            mark(tail_from, self.snd_nxt, &mut self.lost);
            self.stats.timeouts += 1;
            // A timeout: back to one segment, slow start to half.
            self.ssthresh = (self.cwnd / 2).max(2);
            self.cwnd = 1;
        } else if holes {
            self.stats.fast_recoveries += 1;
            // Fast recovery: multiplicative decrease (CUBIC's 0.7).
            self.ssthresh = (self.cwnd * 7 / 10).max(2);
            self.cwnd = self.ssthresh;
        } else if self.cwnd < self.ssthresh {
            // Slow start: one more segment per segment acknowledged.
            self.cwnd = (self.cwnd + acked).min(MAX_CWND);
        } else {
            // Congestion avoidance: about one more segment per round.
            self.cwnd = (self.cwnd + 1).min(MAX_CWND);
        }
        if holes && tail {
            self.stats.fast_recoveries += 1;
        }
    }
}
