//! File descriptors passed over SCM_RIGHTS: what sendmsg() on a UNIX
//! socket sent and what recvmsg() installed, one `FdSent`/`FdReceived`
//! record per descriptor, which userspace joins on the `struct file *`
//! into one `pass_fd` event (or reports as never received when the
//! receiving socket closes with it in flight).
//!
//! Hooks are the syscalls' exits (`syscalls:sys_exit_sendmsg`,
//! `sys_exit_recvmsg`, kernel/trace/trace_syscalls.c; programs in
//! `syscalls`), under the tracepoint strategy and wherever the others'
//! hooks fail; under fentry, fexit on their syscall functions
//! `__x64_sys_sendmsg`/`__x64_sys_recvmsg` (programs in `sysfns`); under
//! kprobe, a kprobe and kretprobe on `__x64_sys_sendmsg` and a kprobe on
//! `__x64_sys_recvmsg`, whose descriptors `fd_install` sees installed
//! (`installed`). So neither sends every syscall down the slow path. Only
//! after a successful sendmsg were the descriptors sent, and a received
//! one has its fd only once installed in the receiver's table.
//! The arguments come from the caller's saved registers (5.15+) or, before,
//! from `sys_enter_sendmsg`/`sys_enter_recvmsg`, which leave them in
//! `syscalls::IN_CALL` only when the message has a control buffer.
//! The user `struct user_msghdr` and `struct cmsghdr` are UAPI
//! (include/uapi/linux/socket.h, include/linux/socket.h); kernel offsets
//! come from BTF (`OFFSETS`).
//!
//! Cheap for other calls: a sendmsg without a control buffer costs one
//! user read of 16 bytes; one with control data on a socket that is not
//! AF_UNIX stops at the fd walk. Not seen: sendmmsg/recvmmsg, io_uring,
//! 32-bit (compat) calls, SCM_RIGHTS headers after the first of a message,
//! and descriptors past the first `MAX_FDS` of it (the record says how many
//! there were). Peeked receives (MSG_PEEK) are skipped: the real receive
//! follows.
//! Checked on: 6.18.44 (host, exits reading registers); Debian's 5.10.0-46
//! (entries carrying the arguments), 6.1.0-57 and 6.12.118 cloud kernels in
//! QEMU under every strategy (`tests/tests/pass_fd.rs`).

use unixpeer_common::{Backend, EventKind, PassedFile, UNIX_PATH_MAX, UnixEvent};

use crate::{
    emit::{begin, describe, submit},
    kernel::{self, Current, off},
    payload::user,
};

/// Control message headers looked at for the SCM_RIGHTS one.
const MAX_CMSGS: u64 = 4;
/// Descriptors reported of one message.
const MAX_FDS: u64 = 8;
/// `struct cmsghdr` (UAPI): cmsg_len (size_t), cmsg_level, cmsg_type (int).
const CMSG_HDR: u64 = 16;
const SOL_SOCKET: u64 = 1;
const SCM_RIGHTS: u64 = 1;
pub const MSG_PEEK: u64 = 2;

/// Whether `msg` (a user `struct user_msghdr`) has a control buffer:
/// msg_controllen (size_t at 40) is not 0. The first test on every call.
#[inline(always)]
pub fn has_control(msg: u64) -> bool {
    user::<u64>(msg + 40).is_some_and(|len| len >= CMSG_HDR + 4)
}

/// sendmsg(fd, msg, flags) or recvmsg(fd, msg, flags) returned `ret`.
/// After recvmsg, msg_controllen holds the length the kernel wrote.
#[inline(always)]
pub fn passed(cur: Current, kind: EventKind, [fd, msg, flags]: [u64; 3], ret: i64, backend: Backend) {
    if ret < 0 || (kind == EventKind::FdReceived && flags & MSG_PEEK != 0) {
        return;
    }
    // msg_control at 32, msg_controllen at 40.
    let Some([control, controllen]) = user::<[u64; 2]>(msg + 32) else { return };
    if control == 0 || controllen < CMSG_HDR + 4 {
        return;
    }
    let Some(sock) = cur.file_of_fd(fd as u32).and_then(kernel::unix_socket_of_file) else { return };
    // The first SCM_RIGHTS header: where its fds start and how many.
    let mut at = 0u64;
    let mut rights = 0u64;
    let mut count = 0u64;
    for _ in 0..MAX_CMSGS {
        if at + CMSG_HDR > controllen {
            break;
        }
        let Some([len, level_type]) = user::<[u64; 2]>(control + at) else { return };
        if len < CMSG_HDR || at + len > controllen {
            break;
        }
        if level_type & 0xffff_ffff == SOL_SOCKET && level_type >> 32 == SCM_RIGHTS {
            rights = control + at + CMSG_HDR;
            count = (len - CMSG_HDR) / 4;
            break;
        }
        // CMSG_ALIGN: to the size of a long.
        at += (len + 7) & !7;
    }
    if rights == 0 {
        return;
    }
    // One record built once and sent per descriptor: the loop body is
    // what the verifier walks once per iteration, and the load time of
    // these programs was that walk (0.24 s each on the host, seconds
    // under TCG, when the loop began each record afresh).
    let Some(e) = begin(cur, kind, backend) else { return };
    about(e, (fd as i32, sock), count as u32);
    for i in 0..MAX_FDS {
        if i >= count {
            break;
        }
        let Some(passed_fd) = user::<i32>(rights + i * 4) else { break };
        let Some(file) = cur.file_of_fd(passed_fd as u32) else { continue };
        send(e, (passed_fd, file), i as i32);
    }
}

/// Under kprobe, a descriptor that recvmsg(2) on UNIX socket `fd` installs
/// as `passed_fd` (`fd_install` inside `receive_fd`), the `index`th of the
/// call. How many the message carried is not known yet (the control
/// header is written after the descriptors): `count` is 0.
#[inline(always)]
pub fn installed(cur: Current, fd: u32, (passed_fd, file): (i32, u64), index: u32) {
    let Some(sock) = cur.file_of_fd(fd).and_then(kernel::unix_socket_of_file) else { return };
    let Some(e) = begin(cur, EventKind::FdReceived, Backend::Kprobe) else { return };
    about(e, (fd as i32, sock), 0);
    send(e, (passed_fd, file), index as i32);
}

/// What every record of one call shares: the UNIX socket `sock` (`fd`)
/// the descriptors went over, and how many the message carried.
#[inline(always)]
fn about(e: &mut UnixEvent, (fd, sock): (i32, kernel::UnixSocket), count: u32) {
    describe(e, sock);
    e.listen_fd = fd;
    e.child_pid = count;
}

/// Sends `e` for descriptor `passed_fd` (`file`), the `index`th of the call.
#[inline(always)]
fn send(e: &mut UnixEvent, (passed_fd, file): (i32, u64), index: i32) {
    e.fd = passed_fd;
    e.peer_fd = index;
    let (inode, mode) = file_inode(file);
    let peer_inode = match kernel::unix_socket_of_file(file) {
        Some(s) => match kernel::peer_of(s.sk) {
            0 => 0,
            peer => kernel::inode_of_socket(kernel::socket_of_sk(peer)),
        },
        None => 0,
    };
    e.traffic = PassedFile { file, inode, mode, peer_inode }.to_traffic();
    e.path_len = 0;
    file_name(e, file);
    submit(e);
}

/// `file->f_inode`: its number and mode.
#[inline(always)]
fn file_inode(file: u64) -> (u64, u32) {
    let Some(inode) = kernel::field::<u64>(file, off!(btf.file), off!(file_f_inode)).filter(|i| *i != 0) else {
        return (0, 0);
    };
    let ino = kernel::field::<u64>(inode, off!(btf.inode), off!(inode_i_ino)).unwrap_or(0);
    let mode = kernel::field::<u16>(inode, off!(btf.inode), off!(inode_i_mode)).unwrap_or(0);
    (ino, u32::from(mode))
}

/// `file->f_path.dentry->d_name.name` into `path`: a file's own name (not
/// its directory), `memfd:NAME`, `[eventfd]` for an anonymous inode, empty
/// for a pipe.
#[inline(always)]
fn file_name(e: &mut UnixEvent, file: u64) {
    let Some(dentry) = kernel::read::<u64>(file + off!(file_f_path_dentry)).filter(|d| *d != 0) else { return };
    let Some(name) = kernel::read::<u64>(dentry + off!(dentry_d_name_name)).filter(|n| *n != 0) else { return };
    // SAFETY: the helper writes at most UNIX_PATH_MAX bytes, the length of
    // `e.path`, which `e` holds exclusively; the source may be any address
    // (the helper fails instead of faulting).
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
            e.path.as_mut_ptr().cast(),
            UNIX_PATH_MAX as u32,
            name as *const core::ffi::c_void,
        )
    };
    // The count includes the NUL.
    if n > 1 {
        e.path_len = (n - 1) as u32 & 0x7f;
    }
}
