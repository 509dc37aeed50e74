//! sockfarm's manifest: what each of its processes holds, as lines on
//! the stdout they share.

use std::io;
use std::os::unix::io::RawFd;

use crate::sys::{inode_of, write_all};

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
        write_all(libc::STDOUT_FILENO, &self.buf)?;
        self.buf.clear();
        Ok(())
    }
}
