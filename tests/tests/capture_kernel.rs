//! `unixtrace capture`'s kernel programs: what each send call on each
//! socket type sent, its length, its receiver's name, and loss counted to
//! the message, read back from the pcapng directly. The guests run these
//! on every kernel of the VM matrix (they carry no tshark: `capture.rs`
//! has the real tshark decode captures on the host).

use std::process::Stdio;

use unixpeer_tests::capture::*;
use unixpeer_tests::sys;
use unixpeer_tests::tracer::{inode_of, kernel_at_least, sockaddr};

/// The payload of a packet of the synthetic encapsulation, past its IPv4
/// and TCP (protocol 6) or UDP headers.
fn payload(p: &Packet) -> (u8, &[u8]) {
    let proto = p.data[9];
    (proto, &p.data[if proto == 6 { 40 } else { 28 }..])
}

/// Sends `parts` on `fd` with `call`; returns the bytes sent.
fn send_with(fd: i32, call: &str, parts: &[&[u8]]) -> usize {
    let mut iov: Vec<libc::iovec> =
        parts.iter().map(|p| libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() }).collect();
    let whole = parts.concat();
    // SAFETY: every pointer is to a live buffer or iovec array of the
    // length given, for the duration of the call.
    let n = unsafe {
        match call {
            "write" => libc::write(fd, whole.as_ptr().cast(), whole.len()),
            "writev" => libc::writev(fd, iov.as_ptr(), iov.len() as i32),
            "sendto" => libc::sendto(fd, whole.as_ptr().cast(), whole.len(), 0, std::ptr::null(), 0),
            "sendmsg" => {
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = iov.as_mut_ptr();
                msg.msg_iovlen = iov.len() as _;
                libc::sendmsg(fd, &msg, 0)
            }
            // Each part a message of its own.
            "sendmmsg" => {
                let mut msgs: Vec<libc::mmsghdr> = iov
                    .iter_mut()
                    .map(|v| {
                        let mut m: libc::mmsghdr = std::mem::zeroed();
                        m.msg_hdr.msg_iov = v;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                // The syscall itself, whatever the libc makes of sendmmsg().
                let sent = libc::syscall(libc::SYS_sendmmsg, fd, msgs.as_mut_ptr(), msgs.len(), 0);
                assert_eq!(sent, msgs.len() as libc::c_long, "sendmmsg sent {sent}");
                msgs.iter().map(|m| m.msg_len as isize).sum()
            }
            _ => unreachable!("no call {call}"),
        }
    };
    assert_eq!(n, whole.len() as isize, "{call} sent {n}: {}", std::io::Error::last_os_error());
    whole.len()
}

#[test]
fn every_send_call_on_every_socket_type_is_captured() {
    let s = Scratch::new("calls");
    let file = s.path("calls.pcapng");
    let me = std::process::id().to_string();
    let cap = Capture::start(&["-w", file.to_str().expect("utf-8"), "-p", &me], Stdio::null());
    let mut want = Vec::new();
    let mut keep = Vec::new();
    for (ty, name, proto) in
        [(libc::SOCK_STREAM, "stream", 6u8), (libc::SOCK_DGRAM, "dgram", 17), (libc::SOCK_SEQPACKET, "seqpacket", 6)]
    {
        let (a, b) = sys::socketpair(ty).expect("socketpair");
        for call in ["write", "writev", "sendto", "sendmsg", "sendmmsg"] {
            let first = format!("{call}-");
            let parts: [&[u8]; 2] = [first.as_bytes(), name.as_bytes()];
            send_with(a, call, &parts);
            if call == "sendmmsg" {
                want.push((proto, call, first.clone()));
                want.push((proto, call, name.to_owned()));
            } else {
                want.push((proto, call, format!("{call}-{name}")));
            }
        }
        keep.push((a, b));
    }
    let err = cap.stop();
    for (a, b) in keep {
        sys::close(a);
        sys::close(b);
    }
    assert_eq!(closing_counts(&err), (18, 0), "{err}");
    let got: Vec<(u8, String, String)> = packets(&file)
        .iter()
        // The handshakes carry nothing.
        .filter(|p| p.interface == 0 && !payload(p).1.is_empty())
        .map(|p| {
            let (proto, bytes) = payload(p);
            let call = p.comment.rsplit("; ").next().and_then(|t| t.split(' ').next()).unwrap_or_default();
            (proto, call.to_owned(), String::from_utf8_lossy(bytes).into_owned())
        })
        .collect();
    let want: Vec<(u8, String, String)> = want.into_iter().map(|(p, c, s)| (p, c.to_owned(), s)).collect();
    assert_eq!(got, want);
}
#[test]
fn messages_lost_to_a_full_buffer_are_counted_in_the_file_and_on_stderr() {
    const SENT: usize = 3000;
    let s = Scratch::new("loss");
    let file = s.path("loss.pcapng");
    let me = std::process::id().to_string();
    // One page of ring buffer holds three of these: most must be lost.
    let args = ["-w", file.to_str().expect("utf-8"), "-p", &me, "-s", "1024", "--buffer-size", "4K"];
    let cap = Capture::start(&args, Stdio::null());
    let (a, b) = sys::socketpair(libc::SOCK_DGRAM).expect("socketpair");
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..SENT {
            sys::read_fd(b, &mut buf).expect("read");
        }
        b
    });
    for i in 0..SENT {
        let msg = [(i % 256) as u8; 1000];
        assert_eq!(sys::write_fd(a, &msg).expect("write"), 1000);
    }
    let b = reader.join().expect("reader");
    let err = cap.stop();
    sys::close(a);
    sys::close(b);
    let (captured, lost) = closing_counts(&err);
    assert!(lost > 0, "a 4 KiB buffer kept up with {SENT} messages of 1000 bytes: {err}");
    assert!(err.contains("messages lost: the kernel's buffer (4 KiB) was full"), "{err}");
    assert_eq!(captured + lost, SENT, "every message captured or counted lost: {err}");
    assert_eq!(packets(&file).len(), captured);
    assert_eq!(last_ifdrop(&file), Some(lost as u64), "{err}");
}

#[test]
fn an_unconnected_datagram_is_named_by_its_receiver() {
    let s = Scratch::new("dgram");
    let path = s.path("receiver.sock");
    let receiver = sys::bound(libc::SOCK_DGRAM, path.to_str().expect("utf-8")).expect("bind");
    let file = s.path("dgram.pcapng");
    let cap =
        Capture::start(&["-w", file.to_str().expect("utf-8"), "--path", path.to_str().expect("utf-8")], Stdio::null());
    let sender = sys::socket(libc::SOCK_DGRAM).expect("socket");
    let (addr, len) = sockaddr(path.to_str().expect("utf-8"));
    let payload = b"to whoever listens";
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    // SAFETY: msghdr zeroed, then pointed at live locals for the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = &addr as *const _ as *mut _;
        msg.msg_namelen = len;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        libc::sendmsg(sender, &msg, 0)
    };
    assert_eq!(n, payload.len() as isize, "{}", std::io::Error::last_os_error());
    // sendto carries the address in its fifth argument.
    let again = b"and again";
    // SAFETY: the buffer and the address are live locals of the lengths given.
    let n = unsafe { libc::sendto(sender, again.as_ptr().cast(), again.len(), 0, &addr as *const _ as *const _, len) };
    assert_eq!(n, again.len() as isize, "{}", std::io::Error::last_os_error());
    let err = cap.stop();
    sys::close(sender);
    sys::close(receiver);
    let got = packets(&file);
    assert_eq!(got.len(), 2, "{got:?} {err}");
    assert_eq!(self::payload(&got[0]), (17, &payload[..]));
    assert!(got[0].comment.contains(&format!("via {}; sendmsg of 18 bytes", path.display())), "{got:?}");
    assert_eq!(self::payload(&got[1]), (17, &again[..]));
    assert!(got[1].comment.contains(&format!("via {}; sendto of 9 bytes", path.display())), "{got:?}");
}

/// 6.3+ takes messages at `sock:sock_send_length`, one call each; before,
/// at the syscalls' exits, where sendmmsg's first four are copied.
#[test]
fn a_sendmmsg_is_captured_whole_or_past_what_is_copied_counted_lost() {
    let s = Scratch::new("mmsg");
    let file = s.path("mmsg.pcapng");
    let me = std::process::id().to_string();
    let cap = Capture::start(&["-w", file.to_str().expect("utf-8"), "-p", &me, "--type", "dgram"], Stdio::null());
    let (a, b) = sys::socketpair(libc::SOCK_DGRAM).expect("socketpair");
    let parts: [&[u8]; 6] = [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"];
    send_with(a, "sendmmsg", &parts);
    let err = cap.stop();
    sys::close(a);
    sys::close(b);
    let got: Vec<Vec<u8>> = packets(&file).iter().map(|p| payload(p).1.to_vec()).collect();
    let at_send_length = err.contains("at sock:sock_send_length (tp_btf)");
    assert_eq!(at_send_length, kernel_at_least(6, 3), "which hook, on this kernel: {err}");
    if at_send_length {
        assert_eq!(closing_counts(&err), (6, 0), "{err}");
        assert_eq!(got, parts);
        assert_eq!(last_ifdrop(&file).unwrap_or(0), 0);
    } else {
        assert_eq!(closing_counts(&err), (4, 2), "{err}");
        assert_eq!(got, [b"m0", b"m1", b"m2", b"m3"]);
        assert_eq!(last_ifdrop(&file), Some(2));
    }
}

#[test]
fn without_w_each_message_is_a_json_line_with_its_exact_bytes() {
    let s = Scratch::new("lines");
    let path = s.path("lines.sock");
    let name = path.to_str().expect("utf-8");
    let listener = sys::listener(libc::SOCK_STREAM, name, 4).expect("listen");
    let out = s.path("lines.jsonl");
    let file = std::fs::File::create(&out).expect("create the output");
    let cap = Capture::start(&["-X", "--json", "--path", name], Stdio::from(file));
    let client = sys::connect(libc::SOCK_STREAM, name).expect("connect");
    let server = sys::accept(listener).expect("accept");
    let payload = b"hello \x1b[2J\x00\xff";
    assert_eq!(sys::write_fd(client, payload).expect("write"), payload.len());
    let err = cap.stop();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .expect("read the output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?} {err}");
    let m = &lines[0];
    let hex: String = payload.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        (m["kind"].as_str(), m["data_hex"].as_str(), m["call"].as_str()),
        (Some("message"), Some(hex.as_str()), Some("write")),
        "{m}"
    );
    assert_eq!(
        (m["pid"].as_u64(), m["fd"].as_i64()),
        (Some(u64::from(std::process::id())), Some(i64::from(client))),
        "{m}"
    );
    assert_eq!(
        (m["inode"].as_u64(), m["peer_inode"].as_u64()),
        (Some(inode_of(client)), Some(inode_of(server))),
        "{m}"
    );
    assert_eq!(
        (m["len"].as_u64(), m["truncated"].as_bool(), m["path"].as_str()),
        (Some(payload.len() as u64), Some(false), Some(name))
    );
    for fd in [client, server, listener] {
        sys::close(fd);
    }
}

/// Connects to a fresh listener at `name`; returns (client, server).
fn connected_pair(name: &str) -> (i32, i32) {
    let listener = sys::listener(libc::SOCK_STREAM, name, 4).expect("listen");
    let client = sys::connect(libc::SOCK_STREAM, name).expect("connect");
    let server = sys::accept(listener).expect("accept");
    sys::close(listener);
    (client, server)
}

/// The kernel leaves out what `--path` does not name before anything is
/// copied. A flood on names that differ from the wanted one in their last
/// byte or their first would overflow a 4 KiB buffer if a single message
/// of it were copied: nothing may be lost, and the wanted name's messages
/// are all captured. Abstract names of 107 bytes reach the last bytes of
/// `sun_path`, which the programs compare apart from the rest.
#[test]
fn names_path_leaves_out_are_never_copied() {
    let s = Scratch::new("prefix");
    let dir = s.path("");
    let dir = dir.to_str().expect("utf-8").trim_end_matches('/');
    let long = "n".repeat(105);
    let cases = [
        (format!("{dir}/sock-0001"), format!("{dir}/sock-0002"), format!("{dir}/tock-0001")),
        (format!("@{long}1"), format!("@{long}2"), format!("@m{}", &long[1..])),
    ];
    for (i, (wanted, last_differs, first_differs)) in cases.into_iter().enumerate() {
        let file = s.path(&format!("prefix-{i}.pcapng"));
        let cap = Capture::start(
            &["-w", file.to_str().expect("utf-8"), "--path", &wanted, "--buffer-size", "4K"],
            Stdio::null(),
        );
        let flood = [7u8; 100];
        let mut open = Vec::new();
        for other in [&last_differs, &first_differs] {
            let (client, server) = connected_pair(other);
            for _ in 0..200 {
                assert_eq!(sys::write_fd(client, &flood).expect("write"), flood.len());
            }
            open.push((client, server));
        }
        let (client, server) = connected_pair(&wanted);
        for i in 0..3u8 {
            assert_eq!(sys::write_fd(client, &[i; 10]).expect("write"), 10);
        }
        open.push((client, server));
        let err = cap.stop();
        for (a, b) in open {
            sys::close(a);
            sys::close(b);
        }
        assert_eq!(closing_counts(&err), (3, 0), "--path {wanted}: {err}");
        let got: Vec<Vec<u8>> =
            packets(&file).iter().map(|p| payload(p).1.to_vec()).filter(|p| !p.is_empty()).collect();
        assert_eq!(got, [vec![0u8; 10], vec![1u8; 10], vec![2u8; 10]], "--path {wanted}");
    }
}
