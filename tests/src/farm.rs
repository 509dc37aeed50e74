//! The system calls sockfarm is made of, thin and checked.

use std::io;
use std::os::unix::io::RawFd;

/// Lines go out in whole writes of at most PIPE_BUF bytes, so the lines of
/// several processes sharing one stdout pipe never interleave mid-line.
pub struct Manifest {
    buf: Vec<u8>,
    quiet: bool,
}

const PIPE_BUF: usize = 4096;

impl Manifest {
    pub fn new(quiet: bool) -> Self {
        Self { buf: Vec::with_capacity(PIPE_BUF), quiet }
    }

    pub fn line(&mut self, line: &str) -> io::Result<()> {
        if self.buf.len() + line.len() + 1 > PIPE_BUF {
            self.flush()?;
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        Ok(())
    }

    pub fn socket(&mut self, fd: RawFd, label: &str) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let inode = inode_of(fd)?;
        self.line(&format!("S {} {fd} {inode} {label}", std::process::id()))
    }

    pub fn expect_peer(&mut self, a: RawFd, b: RawFd) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let (ia, ib) = (inode_of(a)?, inode_of(b)?);
        self.line(&format!("P {ia} {ib}"))
    }

    pub fn pair(&mut self, a: RawFd, b: RawFd, label: &str) -> io::Result<()> {
        self.socket(a, label)?;
        self.socket(b, label)?;
        self.expect_peer(a, b)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        let mut rest = &self.buf[..];
        while !rest.is_empty() {
            let n = write_fd(libc::STDOUT_FILENO, rest)?;
            rest = &rest[n..];
        }
        self.buf.clear();
        Ok(())
    }
}

pub enum Addr {
    Path(String),
    Abstract(String),
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
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

fn sockaddr(addr: &Addr) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: sockaddr_un is plain data; all zeroes is valid.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, start) = match addr {
        Addr::Path(p) => (p.as_bytes(), 0),
        Addr::Abstract(a) => (a.as_bytes(), 1),
    };
    let n = bytes.len().min(sun.sun_path.len() - 1 - start);
    for (dst, &b) in sun.sun_path[start..start + n].iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = match addr {
        Addr::Path(_) => base + n + 1,
        Addr::Abstract(_) => base + 1 + n,
    };
    (sun, len as libc::socklen_t)
}

pub fn bound(ty: libc::c_int, addr: &Addr) -> io::Result<RawFd> {
    if let Addr::Path(p) = addr {
        let _ = std::fs::remove_file(p);
    }
    let fd = socket(ty)?;
    let (sun, len) = sockaddr(addr);
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::bind(fd, (&raw const sun).cast(), len) })?;
    Ok(fd)
}

pub fn listener(ty: libc::c_int, addr: &Addr, backlog: i32) -> io::Result<RawFd> {
    let fd = bound(ty, addr)?;
    // SAFETY: plain listen(2).
    check(unsafe { libc::listen(fd, backlog) })?;
    Ok(fd)
}

pub fn connect(ty: libc::c_int, addr: &Addr) -> io::Result<RawFd> {
    let fd = socket(ty)?;
    let (sun, len) = sockaddr(addr);
    // SAFETY: `sun` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::connect(fd, (&raw const sun).cast(), len) })?;
    Ok(fd)
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

pub fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: sockfarm is single-threaded, so the child may keep running Rust code.
    check(unsafe { libc::fork() })
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

pub fn wait_pid(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

pub fn inode_of(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat fills a zeroed stat for an fd we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(st.st_ino)
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
    let mut control = vec![0u8; space];
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
