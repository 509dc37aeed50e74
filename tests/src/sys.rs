//! The system calls the workload and the tests' own children are made of,
//! thin and checked. None of them allocates, so a child forked from the
//! multithreaded test process may call them (another thread may hold the
//! allocator's lock at the fork, which the child would wait on forever).
//!
//! A socket name is a path, or an abstract name written `@name`, as `ss`
//! and unixtrace print it.

use std::io;
use std::os::unix::io::RawFd;

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// `fd`, if the call on it that returned `rc` worked; else the error, with
/// `fd` closed.
fn kept(fd: RawFd, rc: libc::c_int) -> io::Result<RawFd> {
    check(rc).map(|_| fd).inspect_err(|_| close(fd))
}

/// The `sockaddr_un` for `name` and its length; a name too long for
/// `sun_path` is cut short rather than failing in a child.
pub fn sockaddr(name: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, start) = match name.strip_prefix('@') {
        Some(abstract_name) => (abstract_name.as_bytes(), 1),
        None => (name.as_bytes(), 0),
    };
    let n = bytes.len().min(sun.sun_path.len() - 1 - start);
    for (dst, &b) in sun.sun_path[start..start + n].iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    // An abstract name is exactly its bytes after the leading NUL; a path
    // counts its terminating NUL.
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + 1 + n;
    (sun, len as libc::socklen_t)
}

pub fn socket(ty: libc::c_int) -> io::Result<RawFd> {
    // SAFETY: plain socket(2).
    check(unsafe { libc::socket(libc::AF_UNIX, ty, 0) })
}

pub fn socketpair(ty: libc::c_int) -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    check(unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) })?;
    Ok((fds[0], fds[1]))
}

/// A socket bound to `name`, after removing what a previous run left at
/// that path.
pub fn bound(ty: libc::c_int, name: &str) -> io::Result<RawFd> {
    if !name.starts_with('@') {
        let _ = std::fs::remove_file(name);
    }
    bound_as_is(ty, name)
}

/// A socket bound to `name` as it is: nothing removed first, so nothing
/// allocated.
fn bound_as_is(ty: libc::c_int, name: &str) -> io::Result<RawFd> {
    let fd = socket(ty)?;
    let (sun, len) = sockaddr(name);
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    kept(fd, unsafe { libc::bind(fd, (&raw const sun).cast(), len) })
}

fn listening(fd: RawFd, backlog: i32) -> io::Result<RawFd> {
    // SAFETY: plain listen(2).
    kept(fd, unsafe { libc::listen(fd, backlog) })
}

pub fn listener(ty: libc::c_int, name: &str, backlog: i32) -> io::Result<RawFd> {
    listening(bound(ty, name)?, backlog)
}

/// [`listener`] on a `name` the caller has already cleared: nothing is
/// removed first, so a child forked from the multithreaded test process
/// may call it.
pub fn fresh_listener(ty: libc::c_int, name: &str, backlog: i32) -> io::Result<RawFd> {
    listening(bound_as_is(ty, name)?, backlog)
}

/// A new socket connected to `name`. A non-blocking one fails with EAGAIN
/// on a full backlog instead of waiting.
pub fn connect(ty: libc::c_int, name: &str) -> io::Result<RawFd> {
    let fd = socket(ty)?;
    let (sun, len) = sockaddr(name);
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    kept(fd, unsafe { libc::connect(fd, (&raw const sun).cast(), len) })
}

pub fn accept(listener: RawFd) -> io::Result<RawFd> {
    // SAFETY: accept(2) without asking for the address.
    check(unsafe { libc::accept(listener, std::ptr::null_mut(), std::ptr::null_mut()) })
}

pub fn close(fd: RawFd) {
    // SAFETY: closing an fd this process owns and no longer uses.
    unsafe { libc::close(fd) };
}

pub fn pipe() -> io::Result<(RawFd, RawFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into `fds`.
    check(unsafe { libc::pipe(fds.as_mut_ptr()) })?;
    Ok((fds[0], fds[1]))
}

/// In the child of a multithreaded process, only calls like these are
/// safe until it exits: sockfarm is single-threaded, and the tests'
/// children keep to this module.
pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: fork(2) itself has no preconditions; see above for the child.
    check(unsafe { libc::fork() })
}

/// Leaves a forked child without running the destructors and exit
/// handlers it copied from its parent.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit(2) ends the process at once.
    unsafe { libc::_exit(code) }
}

pub fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: writes from a valid slice.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// All of `buf`, in as many writes as it takes.
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = write_fd(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

/// Waits for our own child `pid`; returns its wait status.
pub fn wait_pid(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local.
    check(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    Ok(status)
}

pub fn inode_of(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat fills a zeroed stat for an fd we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_ino)
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) with integer arguments.
    unsafe { libc::kill(pid, sig) };
}

/// The soft limit may be raised up to the hard one without privilege.
pub fn raise_nofile() -> io::Result<()> {
    // SAFETY: getrlimit/setrlimit on a local struct.
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) })?;
    lim.rlim_cur = lim.rlim_max;
    check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) })?;
    Ok(())
}

/// A killed test must not leave thousands of sockets behind.
pub fn die_with_parent() {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Names the calling thread (its process, if it is the only one), cut to
/// the kernel's 15 bytes.
pub fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

/// Runs `f` with a msghdr carrying a one-byte payload and room for one fd
/// of SCM_RIGHTS ancillary data.
fn with_fd_msghdr<R>(f: impl FnOnce(&mut libc::msghdr) -> R) -> R {
    let mut byte = *b"x";
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // On the stack: CMSG_SPACE of one fd is 24 bytes on 64-bit Linux.
    let mut control = [0u64; 4];
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is plain data; the buffers it points at outlive `f`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // socklen_t on musl, size_t on glibc.
    msg.msg_controllen = space as _;
    f(&mut msg)
}

/// Sends `fd` as SCM_RIGHTS ancillary data.
pub fn send_fd(chan: RawFd, fd: RawFd) -> io::Result<()> {
    with_fd_msghdr(|msg| {
        // SAFETY: the control buffer has room for one cmsg carrying one fd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
        // SAFETY: `msg` is fully initialised.
        let n = unsafe { libc::sendmsg(chan, msg, 0) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    })
}

/// Receives one fd sent by [`send_fd`].
pub fn recv_fd(chan: RawFd) -> io::Result<RawFd> {
    with_fd_msghdr(|msg| {
        // SAFETY: recvmsg writes into the buffers `msg` points at.
        let n = unsafe { libc::recvmsg(chan, msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the control buffer; CMSG_* stay within it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(msg);
            if cmsg.is_null() || (*cmsg).cmsg_type != libc::SCM_RIGHTS {
                return Err(io::Error::other("no SCM_RIGHTS in message"));
            }
            Ok(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>()))
        }
    })
}

/// Becomes `uid`/`gid` keeping only the capabilities `caps` (numbers from
/// linux/capability.h), raised as ambient so that they survive the exec of
/// an ordinary binary: a user granted exactly those, as `setcap` or a
/// systemd unit would. For a child between fork and exec: it allocates nothing.
pub fn become_user_with_caps(uid: u32, gid: u32, caps: &[u32]) -> io::Result<()> {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // SAFETY: plain prctl/set*id calls with valid arguments.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(gid))?;
        check(libc::setuid(uid))?;
    }
    let mut data = [Data::default(); 2];
    for &cap in caps {
        let (word, bit) = ((cap / 32) as usize, 1u32 << (cap % 32));
        data[word].effective |= bit;
        data[word].permitted |= bit;
        data[word].inheritable |= bit;
    }
    let header = Header { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    // SAFETY: capset with a version-3 header and its two data words.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)?;
    for &cap in caps {
        // SAFETY: raising an ambient capability that is permitted and inheritable.
        check(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, cap as libc::c_ulong, 0, 0) })?;
    }
    Ok(())
}

/// Most descriptors [`send_fds`] and [`recv_fds`] handle in one message.
pub const MAX_PASSED: usize = 8;

/// sendmsg(2) of one byte with `fds` in an SCM_RIGHTS header, as Python's
/// `socket.send_fds` does. No allocation: safe in a forked child.
pub fn send_fds(sock: RawFd, fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= MAX_PASSED);
    let mut byte = *b"f";
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // 8-aligned, as cmsghdr needs; room for MAX_PASSED fds.
    let mut control = [0u64; 8];
    let data = std::mem::size_of_val(fds) as u32;
    // SAFETY: CMSG_SPACE is arithmetic.
    let space = unsafe { libc::CMSG_SPACE(data) } as usize;
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `control` holds `space` (<= 64) bytes, 8-aligned, so
    // CMSG_FIRSTHDR returns its start and the header and the fds fit; the
    // copy reads `fds` and writes inside `control`.
    let rc = unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(data) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
        libc::sendmsg(sock, &raw const msg, 0)
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc as usize) }
}

/// recvmsg(2) of one message; the descriptors its SCM_RIGHTS header
/// carried go to `fds`, and their count is returned.
pub fn recv_fds(sock: RawFd, fds: &mut [RawFd; MAX_PASSED]) -> io::Result<usize> {
    let mut buf = [0u8; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; its pointers are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the buffers live across the call and have the lengths given.
    let rc = unsafe { libc::recvmsg(sock, &raw mut msg, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after recvmsg, CMSG_FIRSTHDR is null or points at a header
    // the kernel wrote inside `control`, whose data is `cmsg_len` long.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Ok(0);
        }
        let n = (((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / 4).min(MAX_PASSED);
        std::ptr::copy_nonoverlapping(libc::CMSG_DATA(c).cast::<RawFd>(), fds.as_mut_ptr(), n);
        Ok(n)
    }
}

/// memfd_create(2) by its syscall (musl's libc may lack the wrapper).
pub fn memfd(name: &std::ffi::CStr) -> io::Result<RawFd> {
    // SAFETY: a NUL-terminated name and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_memfd_create, name.as_ptr(), 0) };
    if fd < 0 { Err(io::Error::last_os_error()) } else { Ok(fd as RawFd) }
}
