//! Pointer walks through kernel structures.
//!
//! Every offset comes from `OFFSETS`, which userspace fills from the running
//! kernel's BTF at load time, and so do the BTF ids the walks cast to.
//! Reads through pointers the verifier can type are plain loads: the current
//! task's fields (5.11+), and past the fd table every struct cast with
//! `bpf_rdonly_cast` (6.2+). Where the kernel has neither, a read goes
//! through bpf_probe_read_kernel and turns a fault into `None`.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, generated};
use unixpeer_common::{AF_UNIX, KernelOffsets};

// SAFETY: unmangled so that the loader can find it by name
// (override_global); no other symbol in the object has this name.
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: KernelOffsets = KernelOffsets::zeroed();

/// Reads one offset. Volatile so that the compiler does not fold the
/// all-zero initialiser into the code: the real value arrives at load time.
macro_rules! off {
    ($($field:tt)+) => {{
        // SAFETY: a field of a static, so valid and aligned. OFFSETS sits in
        // .rodata, which the loader writes before loading the programs and
        // then freezes (BPF_F_RDONLY_PROG, bpf_map_freeze): nothing writes
        // it while a program runs.
        #[allow(unused_unsafe)]
        let v = unsafe { core::ptr::read_volatile(&raw const $crate::kernel::OFFSETS.$($field)+) };
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
    // SAFETY: `addr` may be any address: bpf_probe_read_kernel returns an
    // error where it is not readable instead of faulting, and aya's wrapper
    // takes the copy only after a success. What is left is that any bytes
    // be a valid T, which this generic fn cannot check: every caller reads
    // an integer (u16, u32, i32, u64) or [u8; TASK_COMM_LEN], never a bool,
    // an enum or a reference.
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// `bpf_rdonly_cast(ptr, btf_id)` (6.2+): `ptr` as a read-only pointer to
/// the kernel type `btf_id`, which the programs then read with plain loads
/// (the JIT turns a fault into 0) instead of a bpf_probe_read_kernel call
/// each. The verifier rewrites the call into `r0 = r1`, so it costs nothing.
/// aya cannot emit kfunc calls: the instruction is a placeholder whose imm
/// userspace sets to the kfunc's BTF id at load time, or which it turns
/// into `r0 = r1` where the kernel lacks the kfunc (and `cast_loads` is 0).
#[inline(always)]
pub fn cast(ptr: u64, btf_id: u64) -> u64 {
    let out: u64;
    // SAFETY: the instruction is a placeholder that userspace rewrites
    // before loading (capture/kfunc.rs): into a call of bpf_rdonly_cast,
    // which returns r1 retyped and touches no memory, or, where the kernel
    // lacks it, into `r0 = r1`. Either reads only r1 and r2 and writes
    // only r0, and the operands below give up r1-r5 as any BPF call
    // clobbers them, so `pure, nomem, nostack` hold for both. Left as is,
    // it names no kfunc and the verifier refuses the program. The result
    // is an integer here, dereferenced only by `load`.
    unsafe {
        core::arch::asm!(
            ".8byte {insn}",
            insn = const unixpeer_common::KFUNC_CALL_PLACEHOLDER,
            inlateout("r1") ptr => _,
            inlateout("r2") btf_id => _,
            lateout("r0") out,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(pure, nomem, nostack),
        );
    }
    out
}

/// Whether the walks cast and load (see [`cast`]) rather than probe-read.
#[inline(always)]
pub fn cast_loads() -> bool {
    off!(cast_loads) != 0
}

/// The field at `off` in the struct at `base`, whose BTF id is `ty`: a
/// plain load through a cast pointer where the kernel allows it, else a
/// probe read.
#[inline(always)]
pub fn field<T: Copy>(base: u64, ty: u64, off: u64) -> Option<T> {
    if base == 0 {
        return None;
    }
    if cast_loads() {
        return Some(load(cast(base, ty) + off));
    }
    read(base + off)
}

#[inline(always)]
fn field_ptr(base: u64, ty: u64, off: u64) -> Option<u64> {
    field::<u64>(base, ty, off).filter(|p| *p != 0)
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
    // SAFETY: callers pass a BTF pointer (the current task, a field of it,
    // an fentry/fexit argument or a `cast` result) plus an offset from that
    // type's BTF. The verifier refuses a program with a load through
    // anything else, so no such load runs; a BTF-pointer load is one the
    // JIT guards, turning a fault into 0. T is generic: every caller loads
    // a u16, u32 or u64, for which any bytes are a valid value.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

/// The task a program runs in, looked up once per run: where the kernel
/// has `bpf_get_current_task_btf` (5.11+), a BTF pointer the programs read
/// with plain loads. The helper is a real call every time (the verifier
/// does not inline it), so it is not called per field.
#[derive(Clone, Copy)]
pub struct Current(u64);

impl Current {
    #[inline(always)]
    pub fn get() -> Self {
        // The test is on a load-time constant, so older kernels' verifiers
        // never see the newer helper.
        if off!(has_current_task_btf) == 0 {
            return Self(0);
        }
        // SAFETY: the helper takes no arguments, and is reached only where
        // the kernel has it. The trusted task pointer it returns is kept as
        // an integer and dereferenced only through `load`.
        Self(unsafe { bpf_get_current_task_btf() } as u64)
    }

    /// The task as a BTF pointer, where the kernel has one.
    #[inline(always)]
    pub fn btf(self) -> Option<u64> {
        if off!(has_current_task_btf) == 0 {
            return None;
        }
        Some(self.0)
    }

    /// The user registers the task entered the kernel with, as a BTF
    /// pointer, where the kernel has `bpf_task_pt_regs` (5.15+): at a
    /// syscall's exit they still hold its arguments.
    #[inline(always)]
    pub fn user_regs(self) -> Option<u64> {
        if off!(has_task_pt_regs) == 0 {
            return None;
        }
        let task = self.btf()?;
        // SAFETY: the helper takes a task BTF pointer, which `task` is (from
        // bpf_get_current_task_btf), and returns that task's saved
        // registers, which live as long as the task's kernel stack.
        Some(unsafe { generated::bpf_task_pt_regs(task as *mut _) } as u64)
    }

    /// Thread group id and thread id.
    #[inline(always)]
    pub fn tgid_pid(self) -> (u32, u32) {
        match self.btf() {
            Some(task) => (load::<u32>(task + off!(task_struct_tgid)), load::<u32>(task + off!(task_struct_pid))),
            None => {
                let pid_tgid = aya_ebpf::helpers::bpf_get_current_pid_tgid();
                ((pid_tgid >> 32) as u32, pid_tgid as u32)
            }
        }
    }

    /// Whether the task is in do_exit() (PF_EXITING, include/linux/sched.h).
    #[inline(always)]
    pub fn exiting(self) -> bool {
        const PF_EXITING: u32 = 0x4;
        let flags = match self.btf() {
            Some(task) => load::<u32>(task + off!(task_struct_flags)),
            // SAFETY: the helper takes no arguments; the task address it
            // returns is read only through `read` (bpf_probe_read_kernel).
            None => read::<u32>(unsafe { bpf_get_current_task() } + off!(task_struct_flags)).unwrap_or(0),
        };
        flags & PF_EXITING != 0
    }

    /// `files->fdt->fd[fd]`. Through the BTF pointer the walk down to the
    /// fd array is plain loads. BTF cannot type the array's slots; cast to
    /// a struct that starts with a `struct file *`, one is a plain load too.
    #[inline(always)]
    pub fn file_of_fd(self, fd: u32) -> Option<u64> {
        let Some(task) = self.btf() else {
            // SAFETY: the helper takes no arguments; `file_of_fd` reads the
            // task address it returns only through `read`
            // (bpf_probe_read_kernel).
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
        let slot = fds + u64::from(fd) * 8;
        if cast_loads() && off!(btf.file_slot) != 0 {
            let file: u64 = load(cast(slot, off!(btf.file_slot)));
            return (file != 0).then_some(file);
        }
        read_ptr(slot)
    }
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
        // SAFETY: the offsets are of 8-byte fields (pointers, atomic_long_t),
        // so multiples of 8, and `hi - lo` < SPAN_WORDS * 8: `len` is at most
        // the size of `buf`. The offsets are frozen .rodata, constants to
        // the verifier, which refuses the program should a kernel's layout
        // break that and `len` exceed `buf`. The source may be any address: the
        // helper returns an error where it is not readable instead of
        // faulting, and `buf` is read below only after a success.
        let rc = unsafe { generated::bpf_probe_read_kernel(buf.as_mut_ptr().cast(), len, (base + lo) as *const _) };
        if rc != 0 {
            return None;
        }
        let words = buf.as_ptr().cast::<u64>();
        for i in 0..N {
            let at = ((offs[i] - lo) / 8) as usize & (SPAN_WORDS - 1);
            // SAFETY: offs[i] - lo <= hi - lo, so `at` <= (hi - lo) / 8 <
            // len / 8 (the mask changes nothing but shows the verifier the
            // bound): word `at` lies in the `len` bytes the read above
            // filled. `buf` is a [u64; 8], so aligned, and any bytes are a
            // valid u64.
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
    let [inode, socket, file_refs] = if cast_loads() {
        let f = cast(file, off!(btf.file));
        [load(f + off!(file_f_inode)), load(f + off!(file_private_data)), load(f + off!(file_refcount))]
    } else {
        read_words(file, [off!(file_f_inode), off!(file_private_data), off!(file_refcount)])?
    };
    if inode == 0 || socket == 0 {
        return None;
    }
    let mode: u16 = field(inode, off!(btf.inode), off!(inode_i_mode))?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let (sk, sock_type) = if cast_loads() {
        let s = cast(socket, off!(btf.socket));
        (load::<u64>(s + off!(socket_sk)), u32::from(load::<u16>(s + off!(socket_type))))
    } else {
        // `type` is a short: fetch the aligned word holding it.
        let type_at = off!(socket_type);
        let [sk, type_word] = read_words(socket, [off!(socket_sk), type_at & !7])?;
        (sk, ((type_word >> ((type_at & 7) * 8)) & 0xffff) as u32)
    };
    if sk == 0 || !is_unix(sk) {
        return None;
    }
    Some(UnixSocket { socket, sk, file_refs, sock_type })
}

#[inline(always)]
pub fn is_unix(sk: u64) -> bool {
    field::<u16>(sk, off!(btf.sock), off!(sock_family)) == Some(AF_UNIX)
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
    field::<u64>(socket, off!(btf.socket_alloc), off!(socket_to_inode) + off!(inode_i_ino)).unwrap_or(0)
}

#[inline(always)]
pub fn socket_of_sk(sk: u64) -> u64 {
    field::<u64>(sk, off!(btf.sock), off!(sock_socket)).unwrap_or(0)
}

#[inline(always)]
pub fn socket_sk(socket: u64) -> Option<u64> {
    field_ptr(socket, off!(btf.socket), off!(socket_sk))
}

#[inline(always)]
pub fn socket_type(socket: u64) -> u32 {
    field::<u16>(socket, off!(btf.socket), off!(socket_type)).map_or(0, u32::from)
}

/// `unix_sk(sk)->peer`: for a connected stream socket before accept this is
/// the embryo sock the server will get from accept().
#[inline(always)]
pub fn peer_of(sk: u64) -> u64 {
    field::<u64>(sk, off!(btf.unix_sock), off!(unix_sock_peer)).unwrap_or(0)
}

/// `sock_net(sk)->ns.inum`.
#[inline(always)]
pub fn netns_of(sk: u64) -> u32 {
    field_ptr(sk, off!(btf.sock), off!(sock_net))
        .and_then(|net| field::<u32>(net, off!(btf.net), off!(net_ns_inum)))
        .unwrap_or(0)
}

/// `unix_sk(sk)->addr`, or 0 where it is unbound.
#[inline(always)]
pub fn unix_addr(sk: u64) -> u64 {
    field_ptr(sk, off!(btf.unix_sock), off!(unix_sock_addr)).unwrap_or(0)
}

/// The bound address of `sk` (`unix_sk(sk)->addr`): where its
/// `sockaddr_un` starts and how long it is, in kernel memory.
#[inline(always)]
pub fn bound_name(sk: u64) -> Option<(u64, u32)> {
    bound_address(sk).map(|(addr, len)| (addr + off!(unix_address_name), len))
}

/// The `struct unix_address` `sk` is bound to and the length of its
/// `sockaddr_un`.
#[inline(always)]
pub fn bound_address(sk: u64) -> Option<(u64, u32)> {
    let addr = field_ptr(sk, off!(btf.unix_sock), off!(unix_sock_addr))?;
    let len: i32 = field(addr, off!(btf.unix_address), off!(unix_address_len))?;
    if len <= 0 {
        return None;
    }
    Some((addr, len as u32))
}

/// The 8 bytes of `sun_path` from byte `at` of the `struct unix_address`
/// at `addr`, with a plain load through a cast pointer (`cast_loads` only).
/// `at` must be a constant to the verifier, which walks `name`, a flexible
/// array of `struct sockaddr_un`, into `sun_path` and allows the load while
/// it stays inside it (`at` <= 100).
#[inline(always)]
pub fn sun_path_u64(addr: u64, at: u64) -> u64 {
    load(cast(addr, off!(btf.unix_address)) + off!(unix_address_name) + 2 + at)
}

/// As `sun_path_u64`, 4 bytes.
#[inline(always)]
pub fn sun_path_u32(addr: u64, at: u64) -> u32 {
    load(cast(addr, off!(btf.unix_address)) + off!(unix_address_name) + 2 + at)
}
