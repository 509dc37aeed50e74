//! Kernel struct layouts, read from the running kernel's BTF.
//!
//! The kernel programs know no offsets of their own: everything they walk
//! is resolved here by name and handed to them as `.rodata` at load time,
//! so one object works across kernel versions and configs.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use unixpeer_common::{CastTypes, KernelOffsets, iter_abi};

pub(crate) const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The `struct pt_regs` fields holding a syscall's six arguments, in the
/// x86_64 syscall ABI (the fourth travels in r10).
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
/// The `struct pt_regs` field holding the syscall's number.
#[cfg(target_arch = "x86_64")]
const SYSCALL_NR_REG: &str = "orig_ax";
/// The `struct pt_regs` field the syscall's return value is stored in
/// (arch/x86/entry/syscall_64.c) before `sys_exit` is traced.
#[cfg(target_arch = "x86_64")]
const SYSCALL_RETURN_REG: &str = "ax";
#[cfg(not(target_arch = "x86_64"))]
compile_error!("unixtrace reads syscall arguments from x86_64's struct pt_regs: add this architecture's to btf.rs");

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF at {path}: {error}\n\
         unixtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.4 or newer; \
         every current Debian, Ubuntu, Fedora and RHEL kernel has it)"
    )]
    Unreadable { path: PathBuf, error: btf_rs::Error },
    #[error("the kernel's BTF has no `struct {0}`: this kernel is too old or too unusual for unixtrace")]
    NoStruct(String),
    #[error("the kernel's BTF has no field `{field}` in `struct {strukt}`: this kernel's layout is not supported")]
    NoField { strukt: String, field: String },
    #[error("`struct {strukt}.{field}` is a bitfield in this kernel; unixtrace cannot read it")]
    Bitfield { strukt: String, field: String },
    #[error("the kernel's BTF has no function `{0}`")]
    NoFunction(String),
    #[error("BTF is malformed: {0}")]
    Malformed(#[from] btf_rs::Error),
}

pub(crate) struct KernelBtf {
    btf: Btf,
    /// A by-name lookup scans every type: look each struct up once.
    structs: std::cell::RefCell<std::collections::HashMap<String, btf_rs::Struct>>,
}

impl KernelBtf {
    pub(crate) fn open(path: &Path) -> Result<Self, BtfError> {
        // The mmap backend parses lazily (we need a dozen types out of
        // ~100k), but sysfs only supports mmap of BTF since 6.x: read the
        // file into memory where it refuses.
        let btf = Btf::from_file_with_backend(path, btf_rs::Backend::Mmap)
            .or_else(|_| Btf::from_file(path))
            .map_err(|error| BtfError::Unreadable { path: path.to_owned(), error })?;
        Ok(Self { btf, structs: Default::default() })
    }

    /// The parsed BTF, for lookups this module does not wrap.
    pub(crate) fn btf(&self) -> &Btf {
        &self.btf
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
        if let Some(s) = self.structs.borrow().get(name) {
            return Ok(s.clone());
        }
        for t in self.btf.resolve_types_by_name(name).unwrap_or_default() {
            if let Type::Struct(s) = t {
                // Skip forward declarations' empty twins.
                if !s.members.is_empty() {
                    self.structs.borrow_mut().insert(name.to_owned(), s.clone());
                    return Ok(s);
                }
            }
        }
        Err(BtfError::NoStruct(name.to_owned()))
    }

    /// Strips typedefs and qualifiers down to a struct or union.
    fn underlying(&self, mut t: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            t = match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    let bt = t.as_btf_type()?;
                    self.btf.resolve_chained_type(bt).ok()?
                }
                _ => return None,
            };
        }
        None
    }

    /// Byte offset of `field` inside `s`, looking through anonymous
    /// structs and unions the way C does.
    fn find(&self, s: &btf_rs::Struct, field: &str) -> Option<(u32, Option<u32>, Type)> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let ty = self.btf.resolve_chained_type(m).ok()?;
            if name == field {
                return Some((m.bit_offset(), m.bitfield_size().filter(|b| *b != 0), ty));
            }
            if name.is_empty()
                && let Some(inner) = self.underlying(ty)
                && let Some((off, bits, t)) = self.find(&inner, field)
            {
                return Some((m.bit_offset() + off, bits, t));
            }
        }
        None
    }

    /// Byte offset of a dotted field path such as `__sk_common.skc_family`.
    pub(crate) fn offset(&self, strukt: &str, path: &str) -> Result<u64, BtfError> {
        let mut s = self.strukt(strukt)?;
        let mut bits = 0u32;
        let no_field = || BtfError::NoField { strukt: strukt.to_owned(), field: path.to_owned() };
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (off, bitfield, ty) = self.find(&s, part).ok_or_else(no_field)?;
            if bitfield.is_some() {
                return Err(BtfError::Bitfield { strukt: strukt.to_owned(), field: path.to_owned() });
            }
            bits += off;
            if parts.peek().is_some() {
                s = self.underlying(ty).ok_or_else(no_field)?;
            }
        }
        Ok(u64::from(bits / 8))
    }

    fn has_field(&self, strukt: &str, field: &str) -> bool {
        self.offset(strukt, field).is_ok()
    }

    /// Number of parameters of a kernel function, from its prototype.
    pub(crate) fn param_count(&self, func: &str) -> Result<usize, BtfError> {
        for t in self.btf.resolve_types_by_name(func).unwrap_or_default() {
            if let Type::Func(f) = t
                && let Ok(Type::FuncProto(p)) = self.btf.resolve_chained_type(&f)
            {
                return Ok(p.parameters.len());
            }
        }
        Err(BtfError::NoFunction(func.to_owned()))
    }

    /// Whether `func`'s first parameter points to a complete struct, which
    /// fentry may read through: some kernels' BTF (Debian's 5.10) gives the
    /// syscall functions' `struct pt_regs *` as a forward declaration, in
    /// some of the function's entries. Every entry must be complete, since
    /// the verifier checks the one the program attaches to.
    pub(crate) fn first_param_is_struct_pointer(&self, func: &str) -> bool {
        let entries = self.btf.resolve_types_by_name(func).unwrap_or_default();
        let funcs: Vec<&Type> = entries.iter().filter(|t| matches!(t, Type::Func(_))).collect();
        !funcs.is_empty()
            && funcs.iter().all(|t| {
                let Type::Func(f) = t else { return false };
                let Ok(Type::FuncProto(p)) = self.btf.resolve_chained_type(f) else { return false };
                let Some(Ok(Type::Ptr(ptr))) = p.parameters.first().map(|a| self.btf.resolve_chained_type(a)) else {
                    return false;
                };
                self.btf
                    .resolve_chained_type(&ptr)
                    .ok()
                    .and_then(|t| self.underlying(t))
                    .is_some_and(|s| !s.members.is_empty())
            })
    }

    /// Whether `enum name` has the enumerator `value`: how the kernel's BTF
    /// tells which BPF helpers it has.
    pub(crate) fn has_enum_value(&self, name: &str, value: &str) -> bool {
        self.btf.resolve_types_by_name(name).unwrap_or_default().iter().any(|t| match t {
            Type::Enum(e) => e.members.iter().any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == value)),
            _ => false,
        })
    }

    /// `bpf_get_current_task_btf` (5.11+): the task as a BTF pointer.
    pub(crate) fn has_current_task_btf(&self) -> bool {
        self.has_enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf")
    }

    /// `bpf_task_pt_regs` (5.15+, for tracepoint programs too), which takes
    /// the task as a BTF pointer.
    pub(crate) fn has_task_pt_regs(&self) -> bool {
        self.has_current_task_btf() && self.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs")
    }

    /// The BTF id of a kernel function, as a kfunc call names it.
    pub(crate) fn function_id(&self, func: &str) -> Option<u32> {
        let ids = self.btf.resolve_ids_by_name(func).ok()?;
        ids.into_iter().find(|id| matches!(self.btf.resolve_type_by_id(*id), Ok(Type::Func(_))))
    }

    /// `bpf_rdonly_cast`'s id, where the kernel has the kfunc (6.2+).
    pub(crate) fn rdonly_cast_id(&self) -> Option<u32> {
        self.function_id("bpf_rdonly_cast")
    }

    /// The id of the full definition of `struct name`.
    pub(crate) fn struct_id(&self, name: &str) -> Option<u64> {
        let ids = self.btf.resolve_ids_by_name(name).ok()?;
        let id = ids
            .into_iter()
            .find(|id| matches!(self.btf.resolve_type_by_id(*id), Ok(Type::Struct(s)) if !s.members.is_empty()))?;
        Some(u64::from(id))
    }

    /// `struct kiocb`, if it still starts with its `struct file *ki_filp`.
    fn file_slot(&self) -> Option<u64> {
        let kiocb = self.strukt("kiocb").ok()?;
        let (bits, bitfield, ty) = self.find(&kiocb, "ki_filp")?;
        if bits != 0 || bitfield.is_some() {
            return None;
        }
        let Type::Ptr(p) = ty else { return None };
        let pointee = self.underlying(self.btf.resolve_chained_type(&p).ok()?)?;
        (self.btf.resolve_name(&pointee).ok()? == "file").then_some(())?;
        self.struct_id("kiocb")
    }

    fn cast_types(&self) -> Option<CastTypes> {
        Some(CastTypes {
            file: self.struct_id("file")?,
            inode: self.struct_id("inode")?,
            socket: self.struct_id("socket")?,
            socket_alloc: self.struct_id("socket_alloc")?,
            sock: self.struct_id("sock")?,
            unix_sock: self.struct_id("unix_sock")?,
            net: self.struct_id("net")?,
            unix_address: self.struct_id("unix_address")?,
            file_slot: self.file_slot().unwrap_or(0),
        })
    }

    pub(crate) fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        // 6.13 replaced `atomic_long_t f_count` with `file_ref_t f_ref`,
        // which stores the count minus one.
        let (file_refcount, file_one_ref) = if self.has_field("file", "f_ref") {
            (self.offset("file", "f_ref")?, 0)
        } else {
            (self.offset("file", "f_count")?, 1)
        };
        let socket_alloc_socket = self.offset("socket_alloc", "socket")?;
        let socket_alloc_inode = self.offset("socket_alloc", "vfs_inode")?;
        // A struct socket cast to its socket_alloc must start it.
        let cast = self.rdonly_cast_id().filter(|_| socket_alloc_socket == 0).and_then(|_| self.cast_types());
        Ok(KernelOffsets {
            task_struct_files: self.offset("task_struct", "files")?,
            task_struct_tgid: self.offset("task_struct", "tgid")?,
            task_struct_pid: self.offset("task_struct", "pid")?,
            task_struct_comm: self.offset("task_struct", "comm")?,
            files_struct_fdt: self.offset("files_struct", "fdt")?,
            fdtable_fd: self.offset("fdtable", "fd")?,
            fdtable_max_fds: self.offset("fdtable", "max_fds")?,
            file_private_data: self.offset("file", "private_data")?,
            file_f_inode: self.offset("file", "f_inode")?,
            file_refcount,
            inode_i_mode: self.offset("inode", "i_mode")?,
            inode_i_ino: self.offset("inode", "i_ino")?,
            socket_sk: self.offset("socket", "sk")?,
            task_struct_group_leader: self.offset("task_struct", "group_leader")?,
            task_struct_flags: self.offset("task_struct", "flags")?,
            socket_to_inode: socket_alloc_inode - socket_alloc_socket,
            socket_type: self.offset("socket", "type")?,
            sock_family: self.offset("sock", "__sk_common.skc_family")?,
            sock_net: self.offset("sock", "__sk_common.skc_net")?,
            sock_socket: self.offset("sock", "sk_socket")?,
            net_ns_inum: self.offset("net", "ns.inum")?,
            unix_sock_peer: self.offset("unix_sock", "peer")?,
            unix_sock_addr: self.offset("unix_sock", "addr")?,
            unix_address_len: self.offset("unix_address", "len")?,
            unix_address_name: self.offset("unix_address", "name")?,
            file_one_ref,
            pt_regs_args: [
                self.offset("pt_regs", SYSCALL_REGS[0])?,
                self.offset("pt_regs", SYSCALL_REGS[1])?,
                self.offset("pt_regs", SYSCALL_REGS[2])?,
                self.offset("pt_regs", SYSCALL_REGS[3])?,
                self.offset("pt_regs", SYSCALL_REGS[4])?,
                self.offset("pt_regs", SYSCALL_REGS[5])?,
            ],
            pt_regs_syscall_nr: self.offset("pt_regs", SYSCALL_NR_REG)?,
            pt_regs_return: self.offset("pt_regs", SYSCALL_RETURN_REG)?,
            has_current_task_btf: u64::from(self.has_current_task_btf()),
            has_task_pt_regs: u64::from(self.has_task_pt_regs()),
            task_struct_cred: self.offset("task_struct", "cred")?,
            cred_uid: self.offset("cred", "uid")?,
            cast_loads: u64::from(cast.is_some()),
            btf: cast.unwrap_or_default(),
            tp_task_rename_pid: 0,
            tp_task_rename_newcomm: 0,
            file_f_path_dentry: self.offset("file", "f_path.dentry")?,
            dentry_d_name_name: self.offset("dentry", "d_name.name")?,
        })
    }

    /// The iterator's context layout is compiled into the program (the
    /// verifier insists); refuse to load it on a kernel where it differs.
    pub(crate) fn check_iter_abi(&self) -> Result<(), BtfError> {
        let want = [
            ("bpf_iter__task_file", "meta", iter_abi::TASK_FILE_META),
            ("bpf_iter__task_file", "task", iter_abi::TASK_FILE_TASK),
            ("bpf_iter__task_file", "fd", iter_abi::TASK_FILE_FD),
            ("bpf_iter__task_file", "file", iter_abi::TASK_FILE_FILE),
            ("bpf_iter_meta", "seq", iter_abi::META_SEQ),
        ];
        for (strukt, field, expected) in want {
            let got = self.offset(strukt, field)?;
            if got != expected as u64 {
                return Err(BtfError::NoField {
                    strukt: strukt.to_owned(),
                    field: format!("{field} at offset {expected} (it is at {got})"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The BTF of the machine running the tests: the point is that the
    /// walk works on a real kernel, not on a fixture. What the tests assert
    /// holds on every kernel unixtrace supports, or is derived from that
    /// kernel's BTF; a machine without BTF cannot run unixtrace, and its
    /// tests say so and check nothing.
    pub(crate) fn this_kernel() -> Option<KernelBtf> {
        if !Path::new(VMLINUX_BTF).exists() {
            cannot_run(&format!("this machine's kernel has no {VMLINUX_BTF}"));
            return None;
        }
        Some(KernelBtf::open(Path::new(VMLINUX_BTF)).expect("this machine's BTF opens"))
    }

    /// A test that needs this machine's kernel cannot run here. On a
    /// developer's machine it says so and checks nothing; in CI (`CI` set),
    /// where the machine is meant to run it, that is a failure, not a skip.
    pub(crate) fn cannot_run(why: &str) {
        assert!(std::env::var_os("CI").is_none(), "this test must run in CI, but cannot: {why}");
        eprintln!("skipped: {why}");
    }

    /// Whether `name` is among the BTF's strings: a second opinion on what
    /// the kernel has that does not go through the parser under test.
    fn in_strings(name: &str) -> bool {
        let raw = std::fs::read(VMLINUX_BTF).expect("read this machine's BTF");
        let needle = [b"\0", name.as_bytes(), b"\0"].concat();
        raw.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let Some(k) = this_kernel() else { return };
        let off = k.kernel_offsets().expect("offsets");
        // sk_common is the first member of struct sock and skc_family sits
        // within it; the peer pointer is past struct sock.
        assert!(off.sock_family < 64, "skc_family at {}", off.sock_family);
        assert!(off.unix_sock_peer > off.sock_socket);
        assert!(off.socket_to_inode > 0);
        // f_ref (6.13+) counts from 0, f_count from 1.
        assert_eq!(off.file_one_ref, u64::from(!k.has_field("file", "f_ref")));
    }

    #[test]
    fn helpers_are_found_by_their_enumerator() {
        let Some(k) = this_kernel() else { return };
        // Every kernel with BPF has map lookups.
        assert!(k.has_enum_value("bpf_func_id", "BPF_FUNC_map_lookup_elem"));
        assert!(!k.has_enum_value("bpf_func_id", "BPF_FUNC_no_such_helper"));
        // An enumerator of another enum is not a helper.
        assert!(!k.has_enum_value("bpf_func_id", "BPF_MAP_TYPE_HASH"));
        // 5.11+ has bpf_get_current_task_btf; whether this kernel does, its
        // BTF's strings tell.
        let has = k.has_enum_value("bpf_func_id", "BPF_FUNC_get_current_task_btf");
        assert_eq!(has, in_strings("BPF_FUNC_get_current_task_btf"));
        assert_eq!(k.kernel_offsets().expect("offsets").has_current_task_btf, u64::from(has));
        // 5.15+ has bpf_task_pt_regs, which takes that BTF task pointer.
        let regs = has && in_strings("BPF_FUNC_task_pt_regs");
        assert_eq!(k.has_task_pt_regs(), regs);
        assert_eq!(k.kernel_offsets().expect("offsets").has_task_pt_regs, u64::from(regs));
    }

    #[test]
    fn cast_loads_follow_the_kfunc_and_name_the_struct_ids() {
        let Some(k) = this_kernel() else { return };
        // 6.2+ has bpf_rdonly_cast; whether this kernel does, its BTF's
        // strings tell.
        let kfunc = k.rdonly_cast_id();
        assert_eq!(kfunc.is_some(), in_strings("bpf_rdonly_cast"));
        if let Some(id) = kfunc {
            assert!(matches!(k.btf().resolve_type_by_id(id), Ok(Type::Func(_))));
        }
        assert_eq!(k.function_id("no_such_kfunc"), None);

        // The ids resolve on every kernel, with the kfunc or without.
        let b = k.cast_types().expect("every struct the walks cast to");
        let ids = [b.file, b.inode, b.socket, b.socket_alloc, b.sock, b.unix_sock, b.net, b.unix_address];
        let names = ["file", "inode", "socket", "socket_alloc", "sock", "unix_sock", "net", "unix_address"];
        let kiocb_starts_with_file = k.offset("kiocb", "ki_filp").is_ok_and(|o| o == 0);
        let slot = kiocb_starts_with_file.then_some((b.file_slot, "kiocb"));
        assert_eq!(b.file_slot != 0, kiocb_starts_with_file, "file_slot {}", b.file_slot);
        for (id, name) in ids.into_iter().zip(names).chain(slot) {
            match k.btf().resolve_type_by_id(id as u32) {
                Ok(Type::Struct(s)) => {
                    assert_eq!(k.btf().resolve_name(&s).expect("name"), name);
                    assert!(!s.members.is_empty(), "struct {name} is a forward declaration");
                }
                other => panic!("id {id} for struct {name} is {other:?}"),
            }
        }

        // The walks cast only with the kfunc, and only while a struct
        // socket starts its socket_alloc.
        let off = k.kernel_offsets().expect("offsets");
        let casts = kfunc.is_some() && k.offset("socket_alloc", "socket").is_ok_and(|o| o == 0);
        assert_eq!(off.cast_loads, u64::from(casts));
        assert_eq!(off.btf, if casts { b } else { CastTypes::default() });
    }

    /// The layout has not changed since the iterator arrived in 5.8, the
    /// oldest kernel unixtrace supports.
    #[test]
    fn iter_abi_matches_this_kernel() {
        let Some(k) = this_kernel() else { return };
        k.check_iter_abi().expect("bpf_iter__task_file layout");
    }

    /// What decides whether fentry reads the syscall functions' registers
    /// itself (the VM matrix's 5.10 column shows the other side).
    #[test]
    fn the_syscall_functions_take_a_complete_pt_regs_here() {
        let Some(k) = this_kernel() else { return };
        assert!(k.first_param_is_struct_pointer("__x64_sys_close"));
        assert!(k.first_param_is_struct_pointer("filp_close"));
        assert!(!k.first_param_is_struct_pointer("__x64_sys_no_such_call"));
    }

    /// The count the fentry strategy checks before it attaches: both
    /// functions implement `proto_ops.connect`, so they take what its
    /// prototype does (four arguments, on every kernel so far).
    #[test]
    fn connect_functions_take_what_proto_ops_connect_does() {
        let Some(k) = this_kernel() else { return };
        let ops = k.strukt("proto_ops").expect("struct proto_ops");
        let (_, _, member) = k.find(&ops, "connect").expect("proto_ops.connect");
        let Type::Ptr(p) = member else { panic!("proto_ops.connect is {member:?}") };
        let Ok(Type::FuncProto(proto)) = k.btf().resolve_chained_type(&p) else {
            panic!("proto_ops.connect points at no function prototype")
        };
        let want = proto.parameters.len();
        assert!(want > 0);
        assert_eq!(k.param_count("unix_stream_connect").expect("unix_stream_connect"), want);
        assert_eq!(k.param_count("unix_dgram_connect").expect("unix_dgram_connect"), want);
    }

    #[test]
    fn missing_struct_is_named_in_the_error() {
        let Some(k) = this_kernel() else { return };
        let err = k.offset("no_such_struct_here", "x").expect_err("must fail");
        assert!(err.to_string().contains("no_such_struct_here"), "{err}");
    }

    #[test]
    fn unreadable_btf_names_the_path_and_the_config() {
        let err = KernelBtf::open(Path::new("/nonexistent/vmlinux")).err().expect("must fail");
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/vmlinux") && msg.contains("CONFIG_DEBUG_INFO_BTF"), "{msg}");
    }
}
