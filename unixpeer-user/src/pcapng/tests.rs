use super::*;

/// (block type, body) of every block in `file`.
fn blocks(file: &[u8]) -> Vec<(u32, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < file.len() {
        let kind = u32::from_le_bytes(file[at..at + 4].try_into().unwrap());
        let len = u32::from_le_bytes(file[at + 4..at + 8].try_into().unwrap()) as usize;
        assert_eq!(len % 4, 0);
        assert_eq!(&file[at + len - 4..at + len], &file[at + 4..at + 8], "trailing length");
        out.push((kind, &file[at + 8..at + len - 4]));
        at += len;
    }
    out
}

/// (interface, captured, original length, the packet) of an EPB body.
fn epb(body: &[u8]) -> (u32, u32, u32, &[u8]) {
    let u = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().unwrap());
    (u(0), u(12), u(16), &body[20..20 + u(12) as usize])
}

fn seq(pkt: &[u8]) -> (u32, u32, u8) {
    let u = |at: usize| u32::from_be_bytes(pkt[at..at + 4].try_into().unwrap());
    (u(24), u(28), pkt[33])
}

fn writer() -> PcapngWriter<Vec<u8>> {
    let info = SectionInfo { os: "Linux 6.18", userappl: "unixtrace 0.1", comment: "filter: all" };
    PcapngWriter::new(Vec::new(), &info, 65536, 1).unwrap()
}

fn msg<'a>(inode: u64, peer: u64, bound: bool, data: &'a [u8], len: u32) -> Message<'a> {
    Message {
        ts_ns: 10,
        sk: inode << 8,
        peer_sk: peer << 8,
        inode,
        peer_inode: peer,
        sender_bound: bound,
        peer_bound: !bound,
        sock_type: 1,
        len,
        data,
        path: b"/run/app.sock",
        comment: "pid 1",
    }
}

#[test]
fn a_conversation_is_a_tcp_flow_with_a_handshake() {
    let mut w = writer();
    w.message(&msg(100, 101, false, b"GET / HTTP/1.0\r\n\r\n", 18)).unwrap();
    w.message(&msg(101, 100, true, b"HTTP/1.0 200 OK\r\n\r\n", 19)).unwrap();
    w.message(&msg(100, 101, false, b"x", 1)).unwrap();
    let file = w.finish(20).unwrap();
    let b = blocks(&file);
    let kinds: Vec<u32> = b.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [0x0A0D0D0A, 1, 1, 6, 6, 6, 6, 6, 6, 5, 5]);
    let pkts: Vec<_> = b[3..9].iter().map(|(_, body)| epb(body)).collect();
    let tcp: Vec<_> = pkts.iter().map(|p| seq(p.3)).collect();
    assert_eq!(tcp, [(0, 0, 0x02), (0, 1, 0x12), (1, 1, 0x10), (1, 1, 0x18), (1, 19, 0x18), (19, 20, 0x18)]);
    // HTTP: the server's end has port 80, the client's is from its inode.
    assert_eq!(&pkts[3].3[22..24], &80u16.to_be_bytes());
    assert_eq!(&pkts[4].3[20..22], &80u16.to_be_bytes());
    assert_eq!(&pkts[3].3[40..], b"GET / HTTP/1.0\r\n\r\n");
}

#[test]
fn a_truncated_message_keeps_its_true_length_over_several_segments() {
    let mut w = writer();
    let len = 1 << 20;
    w.message(&msg(7, 8, false, &[b'a'; 256], len)).unwrap();
    w.message(&msg(7, 8, false, b"z", 1)).unwrap();
    let file = w.finish(20).unwrap();
    let pkts: Vec<_> = blocks(&file).into_iter().filter(|(k, _)| *k == 6).map(|(_, b)| epb(b)).skip(3).collect();
    let segments = (len as usize).div_ceil(MAX_TCP_SEGMENT as usize);
    assert_eq!(pkts.len(), segments + 1);
    assert_eq!((pkts[0].1, pkts[0].2), (40 + 256, 40 + MAX_TCP_SEGMENT));
    assert!(pkts[1..segments].iter().all(|p| p.1 == 40));
    let sent: u32 = pkts[..segments].iter().map(|p| p.2 - 40).sum();
    assert_eq!(sent, len);
    assert_eq!(seq(pkts[segments].3).0, 1 + len);
}

#[test]
fn dbus_messages_go_whole_to_their_own_interface() {
    let mut m = vec![b'l', 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    let mut w = writer();
    w.message(&msg(1, 2, false, b"\0", 1)).unwrap();
    w.message(&msg(1, 2, false, b"AUTH EXTERNAL 30\r\n", 18)).unwrap();
    w.message(&msg(2, 1, true, b"OK 0123\r\n", 9)).unwrap();
    let mut begin = b"BEGIN\r\n".to_vec();
    begin.extend_from_slice(&m[..9]);
    w.message(&msg(1, 2, false, &begin, begin.len() as u32)).unwrap();
    w.message(&msg(1, 2, false, &m[9..], 7)).unwrap();
    m[1] = 2;
    w.message(&msg(2, 1, true, &m, 16)).unwrap();
    let file = w.finish(20).unwrap();
    let pkts: Vec<_> = blocks(&file).into_iter().filter(|(k, _)| *k == 6).map(|(_, b)| epb(b)).collect();
    let on_dbus: Vec<&[u8]> = pkts.iter().filter(|p| p.0 == 1).map(|p| p.3).collect();
    assert_eq!(on_dbus.len(), 2);
    assert_eq!((on_dbus[0][1], on_dbus[1][1]), (1, 2));
    // The handshake and four lines of SASL stay on the TCP flow.
    assert_eq!(pkts.iter().filter(|p| p.0 == 0).count(), 3 + 4);
}

#[test]
fn loss_is_written_where_it_happened() {
    let mut w = writer();
    w.message(&msg(1, 2, false, b"a", 1)).unwrap();
    w.loss(15, 3).unwrap();
    w.loss(16, 2).unwrap();
    assert_eq!(w.dropped(), 5);
    let file = w.finish(20).unwrap();
    let isbs: Vec<_> = blocks(&file).into_iter().filter(|(k, _)| *k == 5).collect();
    assert_eq!(isbs.len(), 4);
    let text = String::from_utf8_lossy(isbs[1].1);
    assert!(text.contains("2 messages lost here") && text.contains("5 in all"), "{text}");
    // isb_ifdrop of the last statistics of interface 0.
    let body = isbs[2].1;
    let drop_at = body.windows(4).position(|w| w == [5, 0, 8, 0]).unwrap();
    assert_eq!(&body[drop_at + 4..drop_at + 12], &5u64.to_le_bytes());
}

#[test]
fn datagrams_are_udp() {
    let mut w = writer();
    let mut m = msg(3, 4, false, b"ping", 4);
    m.sock_type = 2;
    w.message(&m).unwrap();
    let file = w.finish(20).unwrap();
    let pkts: Vec<_> = blocks(&file).into_iter().filter(|(k, _)| *k == 6).map(|(_, b)| epb(b)).collect();
    assert_eq!(pkts.len(), 1);
    assert_eq!(pkts[0].3[9], 17);
    assert_eq!(&pkts[0].3[28..], b"ping");
}
