//! Frames on the wire: Ethernet II, IPv4 and TCP headers as bytes, the
//! segment size a frame carries and the bytes the line spends on it.
//!
//! TCP runs without options by default (MSS = MTU − 40: a 20-byte IPv4
//! header and a 20-byte TCP header); with timestamps on — Linux's default
//! — every segment carries 12 more bytes of TCP header and MSS = MTU − 52.
//! The headers are real bytes: the sender builds them, the receiving NIC
//! writes them into host memory (header split), and the receiving stack
//! parses what it finds there, IPv4 checksum included. The TCP checksum
//! is the NIC's (`CHECKSUM_UNNECESSARY`): devmem payloads are not readable
//! by the kernel, so nothing else could check it; every payload byte is
//! checked end to end instead.

use super::NetError;

/// Ethernet II header: destination, source, EtherType.
pub const ETH_HEADER: u32 = 14;
/// IPv4 header without options.
pub const IPV4_HEADER: u32 = 20;
/// TCP header without options.
pub const TCP_HEADER: u32 = 20;
/// The TCP timestamps option, padded (NOP, NOP, kind 8, length 10).
pub const TCP_TIMESTAMPS: u32 = 12;
/// What the line spends per frame beyond the Ethernet frame: preamble and
/// start delimiter (8), and the inter-frame gap (12).
pub const LINE_GAP: u32 = 20;
/// The frame check sequence at the end of every Ethernet frame.
pub const FCS: u32 = 4;
/// The shortest Ethernet frame before its FCS (shorter ones are padded).
pub const MIN_FRAME: u32 = 60;
/// The smallest MTU a TCP/IPv4 flow is modelled on (IPv4's 576-byte
/// datagram every host must accept).
pub const MIN_MTU: u32 = 576;
/// The largest MTU: 9216-byte jumbo frames, as most switches take.
pub const MAX_MTU: u32 = 9216;

/// Whether a flow is modelled on `mtu` ([`MIN_MTU`] to [`MAX_MTU`]).
pub fn mtu_valid(mtu: u32) -> bool {
    (MIN_MTU..=MAX_MTU).contains(&mtu)
}
/// The longest header a frame here carries.
pub const MAX_HEADER: usize = (ETH_HEADER + IPV4_HEADER + TCP_HEADER + TCP_TIMESTAMPS) as usize;

/// TCP's options on a flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// RFC 7323 timestamps in every segment (Linux: `net.ipv4.tcp_timestamps = 1`).
    pub timestamps: bool,
}

impl TcpOptions {
    /// Bytes of headers (Ethernet, IPv4, TCP) in front of every payload.
    pub fn header_len(self) -> u32 {
        ETH_HEADER + IPV4_HEADER + TCP_HEADER + if self.timestamps { TCP_TIMESTAMPS } else { 0 }
    }

    /// The segment size for an MTU.
    pub fn mss(self, mtu: u32) -> Result<u32, NetError> {
        if !mtu_valid(mtu) {
            return Err(NetError::Mtu { mtu });
        }
        Ok(mtu - (self.header_len() - ETH_HEADER))
    }

    /// The bytes the line spends on a frame carrying `payload` bytes.
    pub fn line_bytes(self, payload: u32) -> u64 {
        let frame = (self.header_len() + payload).max(MIN_FRAME) + FCS;
        u64::from(frame + LINE_GAP)
    }
}

/// The two ends of a TCP/IPv4 flow, as the headers name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: [u8; 4],
    pub dst_ip: [u8; 4],
    pub src_port: u16,
    pub dst_port: u16,
}

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey {
            src_mac: [0x02, 0, 0, 0, 0, 1],
            dst_mac: [0x02, 0, 0, 0, 0, 2],
            src_ip: [192, 168, 1, 1],
            dst_ip: [192, 168, 1, 2],
            src_port: 40000,
            dst_port: 5201,
        }
    }
}

/// What the receiving stack reads out of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The low 32 bits of the sequence number of the first payload byte.
    pub seq: u32,
    pub payload_len: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes of headers before the payload.
    pub header_len: u32,
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for w in h.chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Write the headers of a segment into `out`; the header length
/// ([`TcpOptions::header_len`]).
pub fn write_headers(
    out: &mut [u8; MAX_HEADER],
    key: &FlowKey,
    opts: TcpOptions,
    seq: u32,
    ack: u32,
    payload_len: u32,
    ip_id: u16,
) -> usize {
    let hl = opts.header_len() as usize;
    let h = &mut out[..hl];
    h[0..6].copy_from_slice(&key.dst_mac);
    h[6..12].copy_from_slice(&key.src_mac);
    h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let tcp_len = (hl as u32 - ETH_HEADER - IPV4_HEADER) as u16;
    let total = (IPV4_HEADER as u16) + tcp_len + payload_len as u16;
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&key.src_ip);
    ip[16..20].copy_from_slice(&key.dst_ip);
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let tcp = &mut h[34..];
    tcp[0..2].copy_from_slice(&key.src_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&key.dst_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = ((tcp_len / 4) as u8) << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    tcp[16..20].copy_from_slice(&[0, 0, 0, 0]); // checksum offloaded, no urgent data
    if opts.timestamps {
        tcp[20..24].copy_from_slice(&[1, 1, 8, 10]);
        tcp[24..28].copy_from_slice(&seq.wrapping_mul(7).to_be_bytes());
        tcp[28..32].copy_from_slice(&ack.to_be_bytes());
    }
    hl
}

/// Read the headers at the start of `h`; an error names what is wrong.
pub fn parse(h: &[u8]) -> Result<Parsed, String> {
    if h.len() < (ETH_HEADER + IPV4_HEADER + TCP_HEADER) as usize {
        return Err(format!("{} bytes cannot hold the headers", h.len()));
    }
    if h[12..14] != [0x08, 0x00] {
        return Err(format!("EtherType {:02x}{:02x} is not IPv4", h[12], h[13]));
    }
    let ip = &h[14..34];
    if ip[0] != 0x45 {
        return Err(format!(
            "IPv4 version/IHL byte {:#04x} (options are not modelled)",
            ip[0]
        ));
    }
    if ipv4_checksum(ip) != 0 {
        return Err("the IPv4 header checksum is wrong".into());
    }
    if ip[9] != 6 {
        return Err(format!("IP protocol {} is not TCP", ip[9]));
    }
    let total = u32::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = &h[34..];
    let tcp_len = u32::from(tcp[12] >> 4) * 4;
    if tcp_len < TCP_HEADER || 34 + tcp_len as usize > h.len() {
        return Err(format!(
            "TCP data offset {tcp_len} does not fit the header buffer"
        ));
    }
    let payload_len = total
        .checked_sub(IPV4_HEADER + tcp_len)
        .ok_or_else(|| format!("IPv4 total length {total} is shorter than its headers"))?;
    Ok(Parsed {
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        payload_len,
        src_port: u16::from_be_bytes([tcp[0], tcp[1]]),
        dst_port: u16::from_be_bytes([tcp[2], tcp[3]]),
        header_len: ETH_HEADER + IPV4_HEADER + tcp_len,
    })
}

/// The 64-bit stream offset whose low 32 bits are `seq`, closest to `near`
/// (TCP's sequence space wraps every 4 GiB; a receiver places a segment
/// relative to what it expects next).
pub fn unwrap_seq(seq: u32, near: u64) -> u64 {
    let base = near & !0xffff_ffff;
    let cands = [
        base.wrapping_sub(1 << 32) | u64::from(seq),
        base | u64::from(seq),
        base.wrapping_add(1 << 32) | u64::from(seq),
    ];
    cands
        .into_iter()
        .min_by_key(|c| c.abs_diff(near))
        .unwrap_or(u64::from(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sizes_and_line_bytes() {
        let plain = TcpOptions::default();
        assert_eq!(plain.mss(1500).unwrap(), 1460);
        assert_eq!(plain.mss(9000).unwrap(), 8960);
        let ts = TcpOptions { timestamps: true };
        assert_eq!(ts.mss(1500).unwrap(), 1448);
        assert_eq!(plain.header_len(), 54);
        // 1460 + 54 + 4 (FCS) + 8 (preamble) + 12 (gap) = 1538 per MTU frame.
        assert_eq!(plain.line_bytes(1460), 1538);
        // A short segment is padded to the minimum frame.
        assert_eq!(plain.line_bytes(1), 60 + 4 + 20);
        assert!(matches!(
            plain.mss(100_000),
            Err(NetError::Mtu { mtu: 100_000 })
        ));
        assert!(plain.mss(575).is_err());
    }

    #[test]
    fn headers_round_trip_and_damage_shows() {
        for opts in [TcpOptions::default(), TcpOptions { timestamps: true }] {
            let mut b = [0u8; MAX_HEADER];
            let key = FlowKey::default();
            let n = write_headers(&mut b, &key, opts, 0xfedc_ba98, 17, 1460, 3);
            assert_eq!(n as u32, opts.header_len());
            let p = parse(&b[..n]).unwrap();
            assert_eq!(p.seq, 0xfedc_ba98);
            assert_eq!(p.payload_len, 1460);
            assert_eq!((p.src_port, p.dst_port), (40000, 5201));
            assert_eq!(p.header_len, opts.header_len());
            let mut bad = b;
            bad[20] ^= 0x40;
            assert!(parse(&bad[..n]).unwrap_err().contains("checksum"));
            assert!(parse(&b[..20]).is_err());
        }
    }

    #[test]
    fn sequence_numbers_unwrap_near_the_expected_one() {
        assert_eq!(unwrap_seq(5, 0), 5);
        assert_eq!(unwrap_seq(5, (1 << 32) - 10), (1 << 32) + 5);
        assert_eq!(unwrap_seq(u32::MAX - 1, (1 << 32) + 3), (1 << 32) - 2);
        assert_eq!(unwrap_seq(100, (3 << 32) + 50), (3 << 32) + 100);
    }
}
