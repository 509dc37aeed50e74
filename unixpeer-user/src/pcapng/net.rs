//! The synthetic IPv4 encapsulation: each socket is an address and port
//! derived from its inode, so every connection is a flow of its own that
//! TCP-based dissectors and "Follow stream" understand.

/// Most payload one IPv4 packet with a 20-byte TCP header can carry.
pub const MAX_TCP_SEGMENT: u32 = 65535 - 40;
pub const MAX_UDP_PAYLOAD: u32 = 65535 - 28;

pub const SYN: u8 = 0x02;
pub const PSH_ACK: u8 = 0x18;
pub const ACK: u8 = 0x10;
pub const SYN_ACK: u8 = 0x12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: [u8; 4],
    pub port: u16,
}

impl Endpoint {
    /// 39 bits of the inode: the low 24 in a 127/8 address, so each
    /// socket shows as a host of its own, and 15 more in a port at or
    /// above 32768, away from the well-known ports whose dissectors would
    /// otherwise claim arbitrary flows.
    pub fn of_inode(inode: u64) -> Self {
        let ip = [127, (inode >> 16) as u8, (inode >> 8) as u8, inode as u8];
        Self { ip, port: 32768 | ((inode >> 24) & 0x7fff) as u16 }
    }

    /// A socket by its inode, or by its `struct sock` address before it
    /// has one (the server's end before accept): a flow keeps the
    /// endpoints it started with.
    pub fn of_socket(inode: u64, sk: u64) -> Self {
        if inode != 0 {
            return Self::of_inode(inode);
        }
        // Slab objects are at least 8-aligned: the low bits say nothing.
        Self::of_inode(sk >> 3)
    }

    pub fn with_port(self, port: u16) -> Self {
        Self { port, ..self }
    }
}

fn ipv4(out: &mut Vec<u8>, src: Endpoint, dst: Endpoint, proto: u8, total_len: u16) {
    let start = out.len();
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total_len.to_be_bytes());
    // Identification 0, don't fragment, TTL 64.
    out.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
    out.extend_from_slice(&src.ip);
    out.extend_from_slice(&dst.ip);
    let sum = checksum(&out[start..]);
    out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 and TCP headers for a segment of `payload_len` bytes on the wire.
/// The TCP checksum is left 0: it would need bytes a truncated capture
/// does not have, and Wireshark does not check it by default.
pub fn tcp(src: Endpoint, dst: Endpoint, seq: u32, ack: u32, flags: u8, payload_len: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    ipv4(&mut out, src, dst, 6, (40 + payload_len.min(MAX_TCP_SEGMENT)) as u16);
    out.extend_from_slice(&src.port.to_be_bytes());
    out.extend_from_slice(&dst.port.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
    out.extend_from_slice(&[5 << 4, flags, 0xff, 0xff, 0, 0, 0, 0]);
    out
}

/// IPv4 and UDP headers for a datagram of `payload_len` bytes. The UDP
/// checksum 0 means none (RFC 768).
pub fn udp(src: Endpoint, dst: Endpoint, payload_len: u32) -> Vec<u8> {
    let len = payload_len.min(MAX_UDP_PAYLOAD);
    let mut out = Vec::with_capacity(28);
    ipv4(&mut out, src, dst, 17, (28 + len) as u16);
    out.extend_from_slice(&src.port.to_be_bytes());
    out.extend_from_slice(&dst.port.to_be_bytes());
    out.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_header_bytes() {
        let a = Endpoint { ip: [127, 0, 0, 1], port: 0x8001 };
        let b = Endpoint { ip: [127, 0, 0, 2], port: 80 };
        let h = tcp(a, b, 1, 2, PSH_ACK, 5);
        #[rustfmt::skip]
        let want: &[u8] = &[
            0x45, 0, 0, 45, 0, 0, 0x40, 0, 64, 6, 0x3c, 0xc8, 127, 0, 0, 1, 127, 0, 0, 2,
            0x80, 0x01, 0, 80, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0,
        ];
        assert_eq!(h, want);
        // A header with its checksum in place sums to zero.
        assert_eq!(checksum(&h[..20]), 0);
    }

    #[test]
    fn endpoints_differ_by_inode_and_avoid_low_ports() {
        let a = Endpoint::of_inode(0x1234_5678);
        let b = Endpoint::of_inode(0x1234_5679);
        assert_ne!(a, b);
        assert!(a.port >= 32768 && b.port >= 32768);
        assert_eq!(a.ip[0], 127);
        assert_ne!(Endpoint::of_inode(1 << 24), Endpoint::of_inode(0));
        assert_eq!(Endpoint::of_inode(0x0102_0304).ip, [127, 2, 3, 4]);
    }

    #[test]
    fn udp_header_lengths() {
        let h = udp(Endpoint::of_inode(1), Endpoint::of_inode(2), 10);
        assert_eq!(h.len(), 28);
        assert_eq!(&h[2..4], &38u16.to_be_bytes());
        assert_eq!(&h[24..26], &18u16.to_be_bytes());
    }
}
