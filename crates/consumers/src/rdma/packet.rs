//! RoCEv2 packets as they cross the wire: Ethernet, IPv4 and UDP (port
//! 4791) headers, the InfiniBand Base Transport Header, the RDMA and ACK
//! extended headers where the opcode carries them, the payload, and the
//! invariant CRC. Real bytes: the receiving NIC parses what the sender
//! built.
//!
//! The path MTU follows the kernel's `iboe_get_mtu`: the largest
//! InfiniBand MTU (256 to 4096 bytes) that fits the interface MTU after
//! the headers RoCE may need.

/// Bytes of an Ethernet header (no VLAN tag).
pub const ETH_HDR: usize = 14;
/// Bytes of an IPv4 header without options.
pub const IPV4_HDR: usize = 20;
/// Bytes of a UDP header.
pub const UDP_HDR: usize = 8;
/// Base Transport Header.
pub const BTH: usize = 12;
/// RDMA Extended Transport Header (virtual address, R_Key, DMA length).
pub const RETH: usize = 16;
/// ACK Extended Transport Header (syndrome, MSN).
pub const AETH: usize = 4;
/// Invariant CRC.
pub const ICRC: usize = 4;
/// Ethernet frame check sequence.
pub const FCS: usize = 4;
/// Preamble, start delimiter and inter-frame gap: line time of every frame.
pub const PREAMBLE_IFG: usize = 20;
/// The UDP destination port of RoCEv2.
pub const ROCE_UDP_PORT: u16 = 4791;

/// RC transport opcodes (InfiniBand spec, table 38), the ones modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    SendOnly,
    WriteFirst,
    WriteMiddle,
    WriteLast,
    WriteOnly,
    ReadRequest,
    ReadResponseFirst,
    ReadResponseMiddle,
    ReadResponseLast,
    ReadResponseOnly,
    Acknowledge,
}

impl Opcode {
    pub fn code(self) -> u8 {
        match self {
            Opcode::SendOnly => 0x04,
            Opcode::WriteFirst => 0x06,
            Opcode::WriteMiddle => 0x07,
            Opcode::WriteLast => 0x08,
            Opcode::WriteOnly => 0x0a,
            Opcode::ReadRequest => 0x0c,
            Opcode::ReadResponseFirst => 0x0d,
            Opcode::ReadResponseMiddle => 0x0e,
            Opcode::ReadResponseLast => 0x0f,
            Opcode::ReadResponseOnly => 0x10,
            Opcode::Acknowledge => 0x11,
        }
    }
    pub fn from_code(c: u8) -> Option<Opcode> {
        Some(match c {
            0x04 => Opcode::SendOnly,
            0x06 => Opcode::WriteFirst,
            0x07 => Opcode::WriteMiddle,
            0x08 => Opcode::WriteLast,
            0x0a => Opcode::WriteOnly,
            0x0c => Opcode::ReadRequest,
            0x0d => Opcode::ReadResponseFirst,
            0x0e => Opcode::ReadResponseMiddle,
            0x0f => Opcode::ReadResponseLast,
            0x10 => Opcode::ReadResponseOnly,
            0x11 => Opcode::Acknowledge,
            _ => return None,
        })
    }
    fn has_reth(self) -> bool {
        matches!(
            self,
            Opcode::WriteFirst | Opcode::WriteOnly | Opcode::ReadRequest
        )
    }
    fn has_aeth(self) -> bool {
        matches!(
            self,
            Opcode::ReadResponseFirst
                | Opcode::ReadResponseLast
                | Opcode::ReadResponseOnly
                | Opcode::Acknowledge
        )
    }
    /// The first, middle, last or only packet of a message of `n` packets.
    pub fn write_part(i: u64, n: u64) -> Opcode {
        match (i, n) {
            (_, 1) => Opcode::WriteOnly,
            (0, _) => Opcode::WriteFirst,
            (i, n) if i + 1 == n => Opcode::WriteLast,
            _ => Opcode::WriteMiddle,
        }
    }
    pub fn read_response_part(i: u64, n: u64) -> Opcode {
        match (i, n) {
            (_, 1) => Opcode::ReadResponseOnly,
            (0, _) => Opcode::ReadResponseFirst,
            (i, n) if i + 1 == n => Opcode::ReadResponseLast,
            _ => Opcode::ReadResponseMiddle,
        }
    }
}

/// AETH syndromes (InfiniBand spec, table 45), the ones modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syndrome {
    Ack,
    /// NAK: invalid request.
    InvalidRequest,
    /// NAK: remote access error (bad R_Key, access or bounds).
    RemoteAccess,
    /// NAK: remote operational error (the responder could not do it).
    RemoteOperational,
}

impl Syndrome {
    pub fn code(self) -> u8 {
        match self {
            // ACK with credits "invalid" (0x1f): no end-to-end credit.
            Syndrome::Ack => 0x1f,
            Syndrome::InvalidRequest => 0x61,
            Syndrome::RemoteAccess => 0x62,
            Syndrome::RemoteOperational => 0x63,
        }
    }
    pub fn from_code(c: u8) -> Option<Syndrome> {
        Some(match c {
            c if c >> 5 == 0 => Syndrome::Ack,
            0x61 => Syndrome::InvalidRequest,
            0x62 => Syndrome::RemoteAccess,
            0x63 => Syndrome::RemoteOperational,
            _ => return None,
        })
    }
}

/// The RDMA extended header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reth {
    pub va: u64,
    pub rkey: u32,
    pub len: u32,
}

/// One packet: its headers as fields, its payload as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub opcode: Opcode,
    /// Destination queue pair (24 bits).
    pub dest_qp: u32,
    /// Packet sequence number (24 bits).
    pub psn: u32,
    pub ack_req: bool,
    pub reth: Option<Reth>,
    /// Syndrome and message sequence number.
    pub aeth: Option<(Syndrome, u32)>,
    pub payload: Vec<u8>,
}

/// Why a frame could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("a {0}-byte frame is too short for the RoCEv2 headers")]
    Short(usize),
    #[error("not a RoCEv2 frame: {0}")]
    NotRoce(&'static str),
    #[error("unknown transport opcode {0:#04x}")]
    Opcode(u8),
    #[error("unknown AETH syndrome {0:#04x}")]
    Syndrome(u8),
    #[error("pad count {0} larger than the payload")]
    Pad(u8),
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl Packet {
    /// Bytes of the IP packet (what the interface MTU limits).
    pub fn ip_len(&self) -> usize {
        IPV4_HDR + UDP_HDR + self.transport_len()
    }
    fn transport_len(&self) -> usize {
        let pad = (4 - self.payload.len() % 4) % 4;
        BTH + if self.reth.is_some() { RETH } else { 0 }
            + if self.aeth.is_some() { AETH } else { 0 }
            + self.payload.len()
            + pad
            + ICRC
    }
    /// Line time of the frame, in bytes: the frame plus FCS, preamble and
    /// inter-frame gap.
    pub fn wire_len(&self) -> usize {
        ETH_HDR + self.ip_len() + FCS + PREAMBLE_IFG
    }

    /// The frame, from the Ethernet header to the ICRC (the FCS is the
    /// MAC's). `src`/`dst` name the two ends (machine numbers).
    pub fn encode(&self, src: u8, dst: u8) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HDR + self.ip_len());
        // Ethernet: locally administered MACs of the two NICs, IPv4.
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, dst]);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, src]);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        // IPv4: version 4, IHL 5, ECN capable, no fragments, TTL 64, UDP.
        let ip_len = self.ip_len() as u16;
        f.extend_from_slice(&[0x45, 0x02]);
        f.extend_from_slice(&ip_len.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[192, 168, 0, src + 1]);
        f.extend_from_slice(&[192, 168, 0, dst + 1]);
        let sum = ipv4_checksum(&f[ETH_HDR..ETH_HDR + IPV4_HDR]);
        f[ETH_HDR + 10..ETH_HDR + 12].copy_from_slice(&sum.to_be_bytes());
        // UDP: the source port spreads flows; checksum 0 (RoCEv2 over IPv4).
        let udp_len = (UDP_HDR + self.transport_len()) as u16;
        f.extend_from_slice(&(0xc000u16 | (self.dest_qp as u16 & 0x3fff)).to_be_bytes());
        f.extend_from_slice(&ROCE_UDP_PORT.to_be_bytes());
        f.extend_from_slice(&udp_len.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        // BTH.
        let pad = ((4 - self.payload.len() % 4) % 4) as u8;
        f.push(self.opcode.code());
        f.push(pad << 4); // SE 0, M 0, pad, TVer 0
        f.extend_from_slice(&0xffffu16.to_be_bytes()); // default P_Key
        f.extend_from_slice(&(self.dest_qp & 0xff_ffff).to_be_bytes());
        let a = u32::from(self.ack_req) << 31;
        f.extend_from_slice(&(a | (self.psn & 0xff_ffff)).to_be_bytes());
        if let Some(r) = self.reth {
            f.extend_from_slice(&r.va.to_be_bytes());
            f.extend_from_slice(&r.rkey.to_be_bytes());
            f.extend_from_slice(&r.len.to_be_bytes());
        }
        if let Some((s, msn)) = self.aeth {
            f.extend_from_slice(&((u32::from(s.code()) << 24) | (msn & 0xff_ffff)).to_be_bytes());
        }
        f.extend_from_slice(&self.payload);
        f.extend(std::iter::repeat_n(0u8, pad as usize));
        // The invariant CRC is not computed: the simulated wire does not
        // corrupt frames, and the receiver checks every byte it places.
        f.extend_from_slice(&[0; ICRC]);
        f
    }

    /// Parse a frame built by [`Packet::encode`] (or any RoCEv2 frame of
    /// the opcodes modelled).
    pub fn decode(f: &[u8]) -> Result<Packet, PacketError> {
        let min = ETH_HDR + IPV4_HDR + UDP_HDR + BTH + ICRC;
        if f.len() < min {
            return Err(PacketError::Short(f.len()));
        }
        if be16(&f[12..14]) != 0x0800 {
            return Err(PacketError::NotRoce("not IPv4"));
        }
        let ip = &f[ETH_HDR..];
        if ip[9] != 17 {
            return Err(PacketError::NotRoce("not UDP"));
        }
        let ip_len = usize::from(be16(&ip[2..4]));
        if ip_len > f.len() - ETH_HDR || ip_len < IPV4_HDR + UDP_HDR + BTH + ICRC {
            return Err(PacketError::NotRoce("bad IP length"));
        }
        let udp = &ip[IPV4_HDR..];
        if be16(&udp[2..4]) != ROCE_UDP_PORT {
            return Err(PacketError::NotRoce("not UDP port 4791"));
        }
        let t = &udp[UDP_HDR..ip_len - IPV4_HDR];
        let opcode = Opcode::from_code(t[0]).ok_or(PacketError::Opcode(t[0]))?;
        let pad = (t[1] >> 4) & 0x3;
        let dest_qp = be32(&t[4..8]) & 0xff_ffff;
        let w = be32(&t[8..12]);
        let mut at = BTH;
        let need = |at: usize, n: usize| {
            if at + n + ICRC > t.len() {
                Err(PacketError::Short(f.len()))
            } else {
                Ok(())
            }
        };
        let reth = if opcode.has_reth() {
            need(at, RETH)?;
            let r = Reth {
                va: be64(&t[at..]),
                rkey: be32(&t[at + 8..]),
                len: be32(&t[at + 12..]),
            };
            at += RETH;
            Some(r)
        } else {
            None
        };
        let aeth = if opcode.has_aeth() {
            need(at, AETH)?;
            let v = be32(&t[at..]);
            let code = (v >> 24) as u8;
            at += AETH;
            Some((
                Syndrome::from_code(code).ok_or(PacketError::Syndrome(code))?,
                v & 0xff_ffff,
            ))
        } else {
            None
        };
        let body = t.len() - ICRC - at;
        if usize::from(pad) > body {
            return Err(PacketError::Pad(pad));
        }
        Ok(Packet {
            opcode,
            dest_qp,
            psn: w & 0xff_ffff,
            ack_req: w >> 31 != 0,
            reth,
            aeth,
            payload: t[at..at + body - usize::from(pad)].to_vec(),
        })
    }
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut s: u32 = h.chunks(2).map(|c| u32::from(be16(c))).sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// RoCE's path MTU for an interface MTU, as the kernel's `iboe_get_mtu`:
/// the largest of 4096, 2048, 1024, 512, 256 that fits after the headers
/// RoCE may need (GRH 40, UDP 8, BTH 12, XRC 4, AtomicETH 28, ICRC 4);
/// `None` below that.
pub fn path_mtu(if_mtu: u32) -> Option<u32> {
    let room = if_mtu.checked_sub(40 + 8 + 12 + 4 + 28 + 4)?;
    [4096, 2048, 1024, 512, 256]
        .into_iter()
        .find(|&m| room >= m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip_with_every_header() {
        for (op, payload) in [
            (Opcode::WriteFirst, vec![1u8; 1024]),
            (Opcode::WriteMiddle, vec![2u8; 1023]),
            (Opcode::ReadRequest, vec![]),
            (Opcode::ReadResponseFirst, vec![3u8; 4093]),
            (Opcode::Acknowledge, vec![]),
        ] {
            let p = Packet {
                opcode: op,
                dest_qp: 0x12_3456,
                psn: 0xab_cdef,
                ack_req: true,
                reth: op.has_reth().then_some(Reth {
                    va: 0x1122_3344_5566_7788,
                    rkey: 0xdead_beef,
                    len: 65536,
                }),
                aeth: op.has_aeth().then_some((Syndrome::Ack, 7)),
                payload,
            };
            let f = p.encode(0, 1);
            assert_eq!(f.len(), ETH_HDR + p.ip_len());
            assert_eq!(f.len() % 2, 0);
            assert_eq!(Packet::decode(&f).unwrap(), p);
            assert_eq!(ipv4_checksum(&f[ETH_HDR..ETH_HDR + IPV4_HDR]), 0);
        }
    }

    #[test]
    fn a_broken_frame_is_an_error_not_a_panic() {
        let p = Packet {
            opcode: Opcode::WriteOnly,
            dest_qp: 1,
            psn: 0,
            ack_req: false,
            reth: Some(Reth {
                va: 0,
                rkey: 1,
                len: 8,
            }),
            aeth: None,
            payload: vec![9; 8],
        };
        let f = p.encode(0, 1);
        for cut in 0..f.len() {
            let _ = Packet::decode(&f[..cut]);
        }
        let mut bad = f.clone();
        bad[ETH_HDR + IPV4_HDR + 3] = 0; // UDP port
        assert!(matches!(Packet::decode(&bad), Err(PacketError::NotRoce(_))));
        let mut bad = f;
        bad[ETH_HDR + IPV4_HDR + UDP_HDR] = 0x7f;
        assert_eq!(Packet::decode(&bad), Err(PacketError::Opcode(0x7f)));
    }

    #[test]
    fn path_mtu_is_the_kernels() {
        assert_eq!(path_mtu(1500), Some(1024));
        assert_eq!(path_mtu(4200), Some(4096));
        assert_eq!(path_mtu(9000), Some(4096));
        assert_eq!(path_mtu(2200), Some(2048));
        assert_eq!(path_mtu(300), None);
    }
}
