//! Types shared by the kernel programs and userspace.
//!
//! Everything here is `#[repr(C)]` with explicit padding fields and u32 flags
//! instead of bool, so the byte layout the kernel writes is exactly the layout
//! userspace reads and no uninitialised padding can leak into the ring buffer.
#![no_std]

/// Longest `sun_path` (see `struct sockaddr_un` in include/uapi/linux/un.h).
pub const UNIX_PATH_MAX: usize = 108;
/// `TASK_COMM_LEN` in include/linux/sched.h.
pub const TASK_COMM_LEN: usize = 16;

/// What happened. The discriminants are part of the recording format: append only.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connect() on a stream or seqpacket socket succeeded.
    Connect = 1,
    /// A connect() failed; `errno` says why.
    ConnectFailed = 2,
    /// accept()/accept4() returned a new socket.
    Accept = 3,
    /// socketpair() created two connected sockets.
    Socketpair = 4,
    /// The last reference to a socket went away.
    Close = 5,
    /// connect() on a datagram socket set its default peer.
    DgramConnect = 6,
    /// listen() on a bound socket.
    Listen = 7,
    /// A process exited: it holds none of its sockets any more. Under the
    /// tracepoint strategy, sockets only it held were released without a
    /// close() call.
    TaskExit = 8,
    /// close() dropped one fd of a socket that stays open through another
    /// fd or process: a holder went away, the socket did not.
    FdClose = 9,
    /// A new process (`child_pid`) inherited the fds of `pid`.
    Fork = 10,
    /// Task `pid` (a thread id) took the name `comm` (prctl, exec, or a
    /// write to /proc/PID/comm).
    Rename = 11,
    /// An unconnected datagram socket (`inode`) sent to another
    /// (`peer_inode`, bound to `path`) for the first time; later datagrams
    /// of the pair are only counted.
    DgramSend = 12,
    /// sendmsg() on a UNIX socket (`inode`, connected to `peer_inode`,
    /// called on fd `listen_fd`) passed fd `fd` over SCM_RIGHTS: one event
    /// per descriptor. `peer_fd` is its index in the message and
    /// `child_pid` how many the message's first SCM_RIGHTS header carried.
    /// What the descriptor is rides in `traffic` (see [`PassedFile`]) and
    /// its dentry's name in `path` (never an abstract name: a plain
    /// NUL-terminated string). Joined in userspace, never shown alone.
    FdSent = 13,
    /// recvmsg() on a UNIX socket (`inode`, on fd `listen_fd`) installed
    /// a passed descriptor as fd `fd`; the other fields as for `FdSent`.
    FdReceived = 14,
    /// Made by userspace, never by the kernel: an `FdSent` joined to its
    /// `FdReceived`, or to the receiving socket's close (never received).
    PassFd = 15,
}

/// How an `FdSent`/`FdReceived` record reuses [`UnixEvent::traffic`]
/// (which only a `Close` needs) instead of growing every event: the
/// passed `struct file *` (the join key), its inode number and mode, and
/// for a UNIX socket its peer's inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassedFile {
    pub file: u64,
    pub inode: u64,
    pub mode: u32,
    pub peer_inode: u64,
}

impl PassedFile {
    pub const fn to_traffic(self) -> Traffic {
        Traffic {
            bytes_sent: self.file,
            bytes_received: self.inode,
            msgs_sent: self.mode as u64,
            msgs_received: self.peer_inode,
        }
    }

    pub const fn from_traffic(t: &Traffic) -> Self {
        Self { file: t.bytes_sent, inode: t.bytes_received, mode: t.msgs_sent as u32, peer_inode: t.msgs_received }
    }
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Connect,
            2 => Self::ConnectFailed,
            3 => Self::Accept,
            4 => Self::Socketpair,
            5 => Self::Close,
            6 => Self::DgramConnect,
            7 => Self::Listen,
            8 => Self::TaskExit,
            9 => Self::FdClose,
            10 => Self::Fork,
            11 => Self::Rename,
            12 => Self::DgramSend,
            13 => Self::FdSent,
            14 => Self::FdReceived,
            15 => Self::PassFd,
            _ => return None,
        })
    }
}

/// Which attach strategy produced an event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Tracepoint = 1,
    Fentry = 2,
    Kprobe = 3,
}

/// One event as written by the kernel into the `EVENTS` ring buffer.
///
/// Socket identities: `inode` is the socket's inode number (`sock_i_ino`) and
/// is 0 while the kernel has not given the socket a file yet (the server
/// half of a stream connection before accept). `sk` is the kernel address of
/// `struct sock`, which exists from the start, so userspace joins a connect
/// to its later accept through `peer_sk` == `sk`.
///
/// `path` comes last: a record is [`UNIX_EVENT_HEADER`] bytes and then only
/// the `path_len` bytes of `path` in use, so that a close (most events, and
/// no name) writes 144 bytes into the ring rather than 256.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnixEvent {
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub sk: u64,
    pub peer_sk: u64,
    pub inode: u64,
    pub peer_inode: u64,
    /// For `Close`: what the socket carried in its life, counted in the
    /// kernel (zero where nothing was counted).
    pub traffic: Traffic,
    pub kind: u32,
    /// Thread group id (what userspace calls pid).
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Inode number of the network namespace (`net->ns.inum`).
    pub netns: u32,
    /// SOCK_STREAM=1, SOCK_DGRAM=2, SOCK_SEQPACKET=5; 0 if unknown.
    pub sock_type: u32,
    /// Positive errno for failures, 0 on success.
    pub errno: i32,
    /// fd of `inode` in `pid`, or -1.
    pub fd: i32,
    /// fd of `peer_inode` in `pid` (socketpair), or -1.
    pub peer_fd: i32,
    /// The listening fd for accept, or -1.
    pub listen_fd: i32,
    /// Backend that saw it (see [`Backend`]).
    pub backend: u32,
    /// Bytes used in `path`; the first byte is 0 for abstract names.
    pub path_len: u32,
    /// The new process, for `Fork`.
    pub child_pid: u32,
    /// Zero. Keeps `path` at a multiple of 8 bytes, where the capture
    /// filter compares it a word at a time.
    pub reserved: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub path: [u8; UNIX_PATH_MAX],
    /// Zero, and never in a record: the size's tail, spelt out.
    pub reserved_tail: u32,
}

/// The bytes of a [`UnixEvent`] before `path`: the shortest record.
pub const UNIX_EVENT_HEADER: usize = core::mem::offset_of!(UnixEvent, path);

/// What one socket sent and received, from its own point of view: bytes
/// and calls that moved any (a stream's messages are its send and receive
/// calls). Kept per socket inode in the `TRAFFIC` map and handed over with
/// the socket's `Close`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub msgs_sent: u64,
    pub msgs_received: u64,
}

impl Traffic {
    pub const fn zeroed() -> Self {
        Self { bytes_sent: 0, bytes_received: 0, msgs_sent: 0, msgs_received: 0 }
    }
}

impl UnixEvent {
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            sk: 0,
            peer_sk: 0,
            inode: 0,
            peer_inode: 0,
            traffic: Traffic::zeroed(),
            kind: 0,
            pid: 0,
            tid: 0,
            uid: 0,
            netns: 0,
            sock_type: 0,
            errno: 0,
            fd: -1,
            peer_fd: -1,
            listen_fd: -1,
            backend: 0,
            path_len: 0,
            child_pid: 0,
            reserved: 0,
            comm: [0; TASK_COMM_LEN],
            path: [0; UNIX_PATH_MAX],
            reserved_tail: 0,
        }
    }

    /// How many bytes of this event a record carries: the header and the
    /// part of `path` in use.
    #[inline(always)]
    pub fn record_len(&self) -> usize {
        let n = self.path_len as usize;
        UNIX_EVENT_HEADER + if n > UNIX_PATH_MAX { UNIX_PATH_MAX } else { n }
    }
}

/// A datagram sender and a receiver it sent to by address: the key of
/// the `DGRAM_PAIRS` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DgramPair {
    pub sender: u64,
    pub receiver: u64,
}

/// One socket fd found by the `iter/task_file` program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskSocketFd {
    pub inode: u64,
    pub pid: u32,
    pub fd: u32,
    pub comm: [u8; TASK_COMM_LEN],
}

/// Kernel struct field offsets, read from the running kernel's BTF by
/// userspace and written into the programs' `.rodata` at load time. Nothing
/// in the kernel programs knows a layout by itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_struct_files: u64,
    pub task_struct_tgid: u64,
    pub task_struct_pid: u64,
    pub task_struct_comm: u64,
    pub files_struct_fdt: u64,
    pub fdtable_fd: u64,
    pub fdtable_max_fds: u64,
    pub file_private_data: u64,
    pub file_f_inode: u64,
    /// `f_ref` (6.13+, file_ref_t) or `f_count` (older, atomic_long_t).
    pub file_refcount: u64,
    pub inode_i_mode: u64,
    pub inode_i_ino: u64,
    pub socket_sk: u64,
    /// `task_struct.group_leader`: events name the process by its thread
    /// group leader's command, as ps, ss -p and lsof do, not by the name of
    /// whichever thread made the call.
    pub task_struct_group_leader: u64,
    /// `task_struct.flags`, for PF_EXITING: a dying process's fds are not
    /// reported one by one.
    pub task_struct_flags: u64,
    /// `socket_alloc.vfs_inode - socket_alloc.socket`: SOCK_INODE().
    pub socket_to_inode: u64,
    /// `socket.type` (a plain short on every kernel, unlike `sock.sk_type`,
    /// which was a bitfield before 5.6).
    pub socket_type: u64,
    pub sock_family: u64,
    pub sock_net: u64,
    pub sock_socket: u64,
    pub net_ns_inum: u64,
    pub unix_sock_peer: u64,
    pub unix_sock_addr: u64,
    pub unix_address_len: u64,
    pub unix_address_name: u64,
    /// The raw counter value that means "one reference": 0 for file_ref_t
    /// (it stores refs - 1), 1 for atomic_long_t.
    pub file_one_ref: u64,
    /// `struct pt_regs`: where the six syscall arguments sit (x86_64: di,
    /// si, dx, r10, r8, r9), for the syscall functions' hooks.
    pub pt_regs_args: [u64; 6],
    /// `struct pt_regs`: the syscall's number (x86_64: orig_ax), for hooks
    /// inside a call that need to know which.
    pub pt_regs_syscall_nr: u64,
    /// `struct pt_regs`: where a syscall's return value is stored before
    /// its exit is traced (x86_64: ax).
    pub pt_regs_return: u64,
    /// 1 when the kernel has `bpf_get_current_task_btf` (5.11+): the fd
    /// table walk is then plain loads instead of one helper call a step.
    pub has_current_task_btf: u64,
    /// 1 when the kernel has `bpf_task_pt_regs` (5.15+) as well: the
    /// tracepoint strategy's syscall exits then read the caller's arguments
    /// from its saved registers, and no entry tracepoint carries them over.
    pub has_task_pt_regs: u64,
    /// `task_struct.cred` and `cred.uid`: the uid of an event, read where
    /// the task is a BTF pointer (bpf_get_current_uid_gid maps it through
    /// the init user namespace, which leaves it as is).
    pub task_struct_cred: u64,
    pub cred_uid: u64,
    /// 1 when the walks past the fd table use `bpf_rdonly_cast` (6.2+) and
    /// plain loads rather than bpf_probe_read_kernel calls.
    pub cast_loads: u64,
    /// BTF type ids of the structs those walks cast to.
    pub btf: CastTypes,
    /// `pid` and `newcomm` in the `task:task_rename` record.
    pub tp_task_rename_pid: u64,
    pub tp_task_rename_newcomm: u64,
    /// `file.f_path.dentry` and `dentry.d_name.name`: the name of a file
    /// passed over SCM_RIGHTS.
    pub file_f_path_dentry: u64,
    pub dentry_d_name_name: u64,
}

/// BTF ids, in the running kernel's vmlinux BTF, of the structs the kernel
/// programs cast pointers to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CastTypes {
    pub file: u64,
    pub inode: u64,
    pub socket: u64,
    /// `struct socket_alloc`, for SOCK_INODE(): casts need `socket` at
    /// its start, which userspace checks.
    pub socket_alloc: u64,
    pub sock: u64,
    pub unix_sock: u64,
    pub net: u64,
    pub unix_address: u64,
    /// A struct that starts with a `struct file *` (`struct kiocb`): cast
    /// to it, a slot of the fd array is read with a plain load. 0 where no
    /// such struct was found; the slot is then probe-read.
    pub file_slot: u64,
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// The `iter/task_file` context (`struct bpf_iter__task_file`) and
/// `struct bpf_iter_meta`. The verifier only allows context and BTF-pointer
/// loads at offsets fixed in the instruction, so these cannot be load-time
/// globals; userspace checks them against the running kernel's BTF before
/// loading the iterator and refuses it when they differ.
pub mod iter_abi {
    pub const TASK_FILE_META: usize = 0;
    pub const TASK_FILE_TASK: usize = 8;
    pub const TASK_FILE_FD: usize = 16;
    pub const TASK_FILE_FILE: usize = 24;
    pub const META_SEQ: usize = 0;
}

/// `offsetof(struct sockaddr_un, sun_path)`: UAPI, fixed on every kernel.
pub const SUN_PATH_OFFSET: u64 = 2;
pub const AF_UNIX: u16 = 1;

/// A kfunc call instruction (`call` with src_reg BPF_PSEUDO_KFUNC_CALL) whose
/// imm is a placeholder: the kernel programs emit it where they call
/// `bpf_rdonly_cast`, and userspace rewrites it at load time. As a
/// little-endian u64: opcode 0x85, registers 0x20, offset 0, imm in the
/// high half.
pub const KFUNC_CALL_PLACEHOLDER: u64 = (0x7fdc_a57e << 32) | 0x2085;

/// Filters applied inside the kernel, set at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFilter {
    /// Only this thread group (0: all).
    pub pid: u32,
    /// Never report this thread group (unixtrace itself).
    pub self_pid: u32,
    /// 1 when `comm` must match.
    pub comm_enabled: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// 0xff over `comm`'s bytes up to and including its NUL: a task's
    /// command matches when it equals `comm` under this mask, which the
    /// programs test as two 8-byte words rather than byte by byte.
    pub comm_mask: [u8; TASK_COMM_LEN],
}

impl KernelFilter {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Where the tracepoint strategy finds a syscall's arguments and return
/// value in the `syscalls:sys_enter_*` and `sys_exit_*` records, by the
/// kernel's own field names, read from tracefs `format` files at load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallRecords {
    pub close_fd: u64,
    pub connect_fd: u64,
    pub connect_uservaddr: u64,
    pub connect_addrlen: u64,
    pub accept_fd: u64,
    pub accept4_fd: u64,
    pub socketpair_family: u64,
    pub socketpair_usockvec: u64,
    pub listen_fd: u64,
    /// sendmsg(fd, msg, flags) and recvmsg(fd, msg, flags), for kernels
    /// before 5.15 (SCM_RIGHTS).
    pub sendmsg_fd: u64,
    pub sendmsg_msg: u64,
    pub sendmsg_flags: u64,
    pub recvmsg_fd: u64,
    pub recvmsg_msg: u64,
    pub recvmsg_flags: u64,
    /// `ret`, the same in every `sys_exit_*` record.
    pub exit_ret: u64,
}

impl SyscallRecords {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Indices into the `COUNTERS` per-CPU array.
pub mod counter {
    /// bpf_ringbuf_reserve failed: an event was lost.
    pub const LOST: u32 = 0;
    /// A pointer walk failed (a read returned an error).
    pub const READ_ERRORS: u32 = 1;
    pub const MAX: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain old data with explicit
    // padding, valid for every bit pattern.
    unsafe impl aya::Pod for super::UnixEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::KernelFilter {}
    unsafe impl aya::Pod for super::TaskSocketFd {}
    unsafe impl aya::Pod for super::SyscallRecords {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::DgramPair {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::{align_of, size_of};

    // The layouts are a contract with the kernel programs and the
    // recording format; a silent change must fail here.
    #[test]
    fn event_layout_has_no_hidden_padding() {
        let fields = 5 * 8 + 4 * 8 + 14 * 4 + TASK_COMM_LEN + UNIX_PATH_MAX + 4;
        assert_eq!(size_of::<UnixEvent>(), fields);
        assert_eq!(UNIX_EVENT_HEADER + UNIX_PATH_MAX + 4, size_of::<UnixEvent>());
        assert_eq!(UNIX_EVENT_HEADER % 8, 0);
        assert_eq!(size_of::<UnixEvent>() % align_of::<UnixEvent>(), 0);
    }

    #[test]
    fn offsets_layout_has_no_hidden_padding() {
        assert_eq!(size_of::<KernelOffsets>(), 52 * 8);
        assert_eq!(size_of::<SyscallRecords>(), 16 * 8);
        assert_eq!(size_of::<KernelFilter>(), 4 * 4 + 2 * TASK_COMM_LEN);
        assert_eq!(size_of::<TaskSocketFd>(), 8 + 4 + 4 + TASK_COMM_LEN);
    }

    #[test]
    fn event_kind_round_trips() {
        for k in 1..=15 {
            assert_eq!(EventKind::from_u32(k).map(|e| e as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(16), None);
    }
}

/// Longest payload `capture` copies of one message: the staging buffer is
/// twice this plus one byte, which lets the verifier bound every copy into
/// it with a 16-bit mask.
pub const PAYLOAD_SNAP_MAX: u32 = 65535;

/// Which call sent a captured message (`PayloadHeader::call`).
pub mod payload_call {
    pub const WRITE: u32 = 1;
    pub const WRITEV: u32 = 2;
    pub const SENDTO: u32 = 3;
    pub const SENDMSG: u32 = 4;
    pub const SENDMMSG: u32 = 5;
}

/// `PayloadHeader::name_flags`: whose bound name `path` is.
pub const PAYLOAD_NAME_OWN: u32 = 1;
pub const PAYLOAD_NAME_PEER: u32 = 2;

/// One message sent on a UNIX socket, as `capture` records it in the
/// `PAYLOAD` ring buffer: this header, then `cap_len` bytes of it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PayloadHeader {
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC.
    pub ts_ns: u64,
    pub sk: u64,
    pub peer_sk: u64,
    pub inode: u64,
    pub peer_inode: u64,
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub sock_type: u32,
    /// Bytes the call sent.
    pub len: u32,
    /// Bytes that follow the header: min(len, snap length).
    pub cap_len: u32,
    /// See [`payload_call`].
    pub call: u32,
    /// [`PAYLOAD_NAME_OWN`] or [`PAYLOAD_NAME_PEER`] (both when both ends are bound).
    pub name_flags: u32,
    pub path_len: u32,
    pub _pad: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub path: [u8; UNIX_PATH_MAX],
    pub _tail: u32,
}

/// What `capture` copies, set at load time; filters the event programs
/// share (pid, command) stay in [`KernelFilter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadFilter {
    /// Bit `1 << type` for each socket type wanted; 0: every type.
    pub sock_types: u32,
    /// Bytes copied of each message, at most [`PAYLOAD_SNAP_MAX`].
    pub snaplen: u32,
    /// The name must start with `prefix[..prefix_len]` (0: any name, or none).
    pub prefix_len: u32,
    pub _pad: u32,
    pub prefix: [u8; UNIX_PATH_MAX],
    pub _tail: u32,
}

impl PayloadFilter {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Where the payload calls' `sys_enter_*` records keep (fd, buffer or
/// vector, count), for kernels before 5.15 whose exits cannot read the
/// caller's registers. sendmsg's third is its `flags`, unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayloadRecords {
    pub write: [u64; 3],
    pub writev: [u64; 3],
    /// Also its `addr` and `addr_len`: where an unconnected datagram went.
    pub sendto: [u64; 5],
    pub sendmsg: [u64; 3],
    pub sendmmsg: [u64; 3],
    pub exit_ret: u64,
}

impl PayloadRecords {
    pub const fn zeroed() -> Self {
        // SAFETY: all fields are integers.
        unsafe { core::mem::zeroed() }
    }
}

/// Indices into the `PAYLOAD_COUNTERS` per-CPU array.
pub mod payload_counter {
    /// The ring buffer had no room: a message was lost.
    pub const LOST: u32 = 0;
    /// A user buffer could not be read: a message went uncaptured.
    pub const READ_ERRORS: u32 = 1;
    pub const MAX: u32 = 2;
}

#[cfg(feature = "user")]
mod payload_pod {
    // SAFETY: #[repr(C)] plain old data with explicit padding, valid for
    // every bit pattern.
    unsafe impl aya::Pod for super::PayloadHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PayloadFilter {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PayloadRecords {}
}

#[cfg(test)]
mod payload_tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn payload_layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<PayloadHeader>(), 5 * 8 + 10 * 4 + TASK_COMM_LEN + UNIX_PATH_MAX + 4);
        assert_eq!(size_of::<PayloadHeader>() % 8, 0);
        assert_eq!(size_of::<PayloadFilter>(), 4 * 4 + UNIX_PATH_MAX + 4);
        assert_eq!(size_of::<PayloadRecords>(), 18 * 8);
    }
}
