//! Pointer walks through kernel structures.
//!
//! Every offset comes from `OFFSETS`, which userspace fills from the running
//! kernel's BTF at load time. Reads through pointers the verifier can type
//! (the current task's fd table, where the kernel allows it) are plain loads;
//! every other read goes through bpf_probe_read_kernel and turns a fault
//! into `None`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, generated};
use unixpeer_common::{AF_UNIX, KernelOffsets};

#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Reads one offset. Volatile so that the compiler does not fold the
/// all-zero initialiser into the code: the real value arrives at load time.
macro_rules! off {
    ($field:ident) => {{
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$field) };
        v
    }};
}
pub(crate) use off;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
pub fn read<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

#[inline(always)]
fn read_ptr(addr: u64) -> Option<u64> {
    read::<u64>(addr).filter(|p| *p != 0)
}

/// A load through a BTF pointer (from `bpf_get_current_task_btf` or a field
/// of one): the verifier checks the offset against BTF and the JIT turns a
/// fault into 0, so no helper call is needed.
#[inline(always)]
pub fn load<T: Copy>(addr: u64) -> T {
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// The current task's `files->fdt->fd[fd]`. Where the kernel has
/// `bpf_get_current_task_btf` (5.11+), the walk down to the fd array is
/// plain loads; the array holds `struct file *` that BTF cannot type, so the
/// last step stays a probe read.
#[inline(always)]
pub fn current_file_of_fd(fd: u32) -> Option<u64> {
    let Some(task) = current_task_btf() else {
        return file_of_fd(unsafe { bpf_get_current_task() }, fd);
    };
    let files: u64 = load(task + off!(task_struct_files));
    if files == 0 {
        return None;
    }
    let fdt: u64 = load(files + off!(files_struct_fdt));
    if fdt == 0 {
        return None;
    }
    let max_fds: u32 = load(fdt + off!(fdtable_max_fds));
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = load(fdt + off!(fdtable_fd));
    read_ptr(fds + u64::from(fd) * 8)
}

/// The current task as a BTF pointer, where the kernel has
/// `bpf_get_current_task_btf` (5.11+). The test is on a load-time constant,
/// so older kernels' verifiers never see the newer helper.
#[inline(always)]
pub fn current_task_btf() -> Option<u64> {
    if off!(has_current_task_btf) == 0 {
        return None;
    }
    Some(unsafe { bpf_get_current_task_btf() } as u64)
}

/// `task->files->fdt->fd[fd]`.
#[inline(always)]
pub fn file_of_fd(task: u64, fd: u32) -> Option<u64> {
    let files = read_ptr(task + off!(task_struct_files))?;
    let fdt = read_ptr(files + off!(files_struct_fdt))?;
    let max_fds: u32 = read(fdt + off!(fdtable_max_fds))?;
    if fd >= max_fds {
        return None;
    }
    let fds = read_ptr(fdt + off!(fdtable_fd))?;
    read_ptr(fds + u64::from(fd) * 8)
}

/// An AF_UNIX socket reached from a file: `struct socket *`, its
/// `struct sock *`, and what was read on the way.
#[derive(Clone, Copy)]
pub struct UnixSocket {
    pub socket: u64,
    pub sk: u64,
    /// The file's raw reference count (`f_ref` or `f_count`).
    pub file_refs: u64,
    /// `socket.type`.
    pub sock_type: u32,
}

impl UnixSocket {
    /// A socket reached without its file (inside af_unix).
    #[inline(always)]
    pub fn of_socket(socket: u64, sk: u64) -> Self {
        Self { socket, sk, file_refs: 0, sock_type: socket_type(socket) }
    }
}

/// Widest span `read_words` fetches with one probe read.
const SPAN_WORDS: usize = 8;

/// The 8-byte words at `offs` (each 8-aligned) of the struct at `base`.
/// When they lie within 64 bytes of each other, as `struct file`'s and
/// `struct socket`'s do on current kernels, one probe read fetches them
/// all; otherwise one each. Offsets are load-time constants, so the
/// verifier sees every index and length as a constant.
#[inline(always)]
fn read_words<const N: usize>(base: u64, offs: [u64; N]) -> Option<[u64; N]> {
    let mut lo = u64::MAX;
    let mut hi = 0;
    for o in offs {
        lo = lo.min(o);
        hi = hi.max(o);
    }
    let mut out = [0u64; N];
    if hi - lo < (SPAN_WORDS as u64) * 8 {
        let mut buf = core::mem::MaybeUninit::<[u64; SPAN_WORDS]>::uninit();
        let len = (hi - lo + 8) as u32;
        let rc = unsafe { generated::bpf_probe_read_kernel(buf.as_mut_ptr().cast(), len, (base + lo) as *const _) };
        if rc != 0 {
            return None;
        }
        let words = buf.as_ptr().cast::<u64>();
        for i in 0..N {
            let at = ((offs[i] - lo) / 8) as usize & (SPAN_WORDS - 1);
            // SAFETY: `at` < len / 8, which the read above filled.
            out[i] = unsafe { *words.add(at) };
        }
    } else {
        for i in 0..N {
            out[i] = read::<u64>(base + offs[i])?;
        }
    }
    Some(out)
}

#[inline(always)]
pub fn unix_socket_of_file(file: u64) -> Option<UnixSocket> {
    if file == 0 {
        return None;
    }
    let [inode, socket, file_refs] =
        read_words(file, [off!(file_f_inode), off!(file_private_data), off!(file_refcount)])?;
    if inode == 0 || socket == 0 {
        return None;
    }
    let mode: u16 = read(inode + off!(inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    // `type` is a short: fetch the aligned word holding it.
    let type_at = off!(socket_type);
    let [sk, type_word] = read_words(socket, [off!(socket_sk), type_at & !7])?;
    if sk == 0 || !is_unix(sk) {
        return None;
    }
    let sock_type = ((type_word >> ((type_at & 7) * 8)) & 0xffff) as u32;
    Some(UnixSocket { socket, sk, file_refs, sock_type })
}

#[inline(always)]
pub fn is_unix(sk: u64) -> bool {
    read::<u16>(sk + off!(sock_family)) == Some(AF_UNIX)
}

/// Whether closing this file drops its last reference, i.e. the close()
/// releases the socket rather than one of several fds sharing it.
#[inline(always)]
pub fn file_is_last_ref(sock: &UnixSocket) -> bool {
    sock.file_refs == off!(file_one_ref)
}

/// SOCK_INODE(socket)->i_ino: `struct socket` is embedded in
/// `struct socket_alloc` next to its inode.
#[inline(always)]
pub fn inode_of_socket(socket: u64) -> u64 {
    if socket == 0 {
        return 0;
    }
    read::<u64>(socket + off!(socket_to_inode) + off!(inode_i_ino)).unwrap_or(0)
}

#[inline(always)]
pub fn socket_of_sk(sk: u64) -> u64 {
    read::<u64>(sk + off!(sock_socket)).unwrap_or(0)
}

#[inline(always)]
pub fn socket_type(socket: u64) -> u32 {
    read::<i16>(socket + off!(socket_type)).map_or(0, |t| t as u32)
}

/// `unix_sk(sk)->peer`: for a connected stream socket before accept this is
/// the embryo sock the server will get from accept().
#[inline(always)]
pub fn peer_of(sk: u64) -> u64 {
    read::<u64>(sk + off!(unix_sock_peer)).unwrap_or(0)
}

/// `sock_net(sk)->ns.inum`.
#[inline(always)]
pub fn netns_of(sk: u64) -> u32 {
    read_ptr(sk + off!(sock_net)).and_then(|net| read::<u32>(net + off!(net_ns_inum))).unwrap_or(0)
}

/// The bound address of `sk` (`unix_sk(sk)->addr`): where its
/// `sockaddr_un` starts and how long it is, in kernel memory.
#[inline(always)]
pub fn bound_name(sk: u64) -> Option<(u64, u32)> {
    let addr = read_ptr(sk + off!(unix_sock_addr))?;
    let len: i32 = read(addr + off!(unix_address_len))?;
    if len <= 0 {
        return None;
    }
    Some((addr + off!(unix_address_name), len as u32))
}
