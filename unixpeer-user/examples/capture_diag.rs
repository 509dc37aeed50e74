//! Prints raw UNIX_DIAG response messages as Rust byte arrays, to refresh
//! the fixtures in src/diag/fixtures.rs: `capture_diag INODE...`.

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::unix::{ShowFlags, StateFlags, UnixRequest};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

fn main() -> anyhow::Result<()> {
    let wanted: Vec<u32> = std::env::args().skip(1).map(|a| a.parse()).collect::<Result<_, _>>()?;
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = UnixRequest {
        state_flags: StateFlags::from_bits_retain(u32::MAX),
        inode: 0,
        show_flags: ShowFlags::from_bits_retain(0x5f),
        cookie: [0xff; 8],
    };
    let mut msg = NetlinkMessage::new(header, SockDiagMessage::UnixRequest(request).into());
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);
    socket.send(&bytes, 0)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut buf[..], 0)?;
        let mut rest = &buf[..n];
        while rest.len() >= 16 {
            let m = NetlinkBuffer::new_checked(rest)?;
            if m.message_type() == 3 {
                return Ok(());
            }
            let p = m.payload();
            let inode = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            if wanted.contains(&inode) {
                println!("// inode {inode}, {} bytes", p.len());
                for line in p.chunks(12) {
                    let hex: Vec<String> = line.iter().map(|b| format!("0x{b:02x},")).collect();
                    println!("    {}", hex.join(" "));
                }
            }
            rest = &rest[(m.length() as usize).div_ceil(4) * 4..];
        }
    }
}
