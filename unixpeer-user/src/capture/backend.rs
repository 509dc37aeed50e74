//! Choosing and attaching an attach strategy. Like libbpf-tools, probe what
//! the kernel offers in order of preference and fall back cleanly, keeping
//! the reason so `-v` and recordings can say why.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};

use super::{CaptureError, program_error};

use super::attach_btf::Target;
use crate::btf::KernelBtf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    #[default]
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

/// The attach strategy in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Strategy {
    pub(crate) const ALL: [Self; 3] = [Self::Fentry, Self::Kprobe, Self::Tracepoint];

    /// As `-v`, JSON output and recordings name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == s)
    }

    /// Only the syscall tracepoints miss releases done by exit() and
    /// anything else outside close(): the model infers those.
    pub(crate) fn infers_releases(self) -> bool {
        self == Self::Tracepoint
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct Chosen {
    pub(crate) backend: Strategy,
    pub(crate) why: String,
    /// How bytes and messages per socket are counted, or why they are not.
    pub(crate) traffic: super::traffic::Counting,
}

/// Regular tracepoints attached under every strategy.
const TRACEPOINTS: &[(&str, &str, &str)] =
    &[("sched_process_exit", "sched", "sched_process_exit"), ("task_rename", "task", "task_rename")];

/// The per-syscall tracepoints, attached under the tracepoint strategy
/// only: they alone there see accept, socketpair, listen, connect and
/// close(2). fentry and kprobe see these in kernel functions (`sysfns`),
/// so that no syscall of the system takes the slow path on their account.
/// (program, event of category `syscalls`)
const SYSCALL_EXITS: &[(&str, &str, &str)] = &[
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
    ("sys_exit_accept4", "syscalls", "sys_exit_accept4"),
    ("sys_exit_socketpair", "syscalls", "sys_exit_socketpair"),
    ("sys_exit_listen", "syscalls", "sys_exit_listen"),
];

/// Descriptors passed over SCM_RIGHTS (the eBPF crate's `passfd`) under
/// the tracepoint strategy, and under fentry where fexit cannot attach:
/// the exits; before 5.15 the entries too, which carry the arguments.
const PASSFD_EXITS: &[(&str, &str, &str)] =
    &[("passfd_exit_sendmsg", "syscalls", "sys_exit_sendmsg"), ("passfd_exit_recvmsg", "syscalls", "sys_exit_recvmsg")];
const PASSFD_ENTRIES: &[(&str, &str, &str)] = &[
    ("passfd_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("passfd_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
];

/// Before 5.15 (no `bpf_task_pt_regs`) the exits cannot read the caller's
/// arguments: these entries leave them in a map for the exits.
const SYSCALL_ENTRIES: &[(&str, &str, &str)] = &[
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_enter_accept", "syscalls", "sys_enter_accept"),
    ("sys_enter_accept4", "syscalls", "sys_enter_accept4"),
    ("sys_enter_socketpair", "syscalls", "sys_enter_socketpair"),
    ("sys_enter_listen", "syscalls", "sys_enter_listen"),
];

/// The syscall functions on x86_64: `__x64_sys_<name>(const struct pt_regs *)`
/// (arch/x86/include/asm/syscall_wrapper.h). The programs read the
/// caller's arguments from those registers, laid out as `SYSCALL_REGS`.
macro_rules! sys {
    ($name:literal) => {
        concat!("__x64_sys_", $name)
    };
}

enum Hook {
    Entry,
    Exit,
}

/// (program, kernel function, entry or exit)
const FENTRY: &[(&str, &str, Hook)] = &[
    ("fexit_unix_stream_connect", "unix_stream_connect", Hook::Exit),
    ("fexit_unix_dgram_connect", "unix_dgram_connect", Hook::Exit),
    ("fentry_unix_release_sock", "unix_release_sock", Hook::Entry),
];

/// The syscall functions and fd drops, under fentry.
const FENTRY_SYSFNS: &[(&str, &str, Hook)] = &[
    ("fentry_sys_close", sys!("close"), Hook::Entry),
    ("fexit_sys_accept", sys!("accept"), Hook::Exit),
    ("fexit_sys_accept4", sys!("accept4"), Hook::Exit),
    ("fexit_sys_socketpair", sys!("socketpair"), Hook::Exit),
    ("fexit_sys_listen", sys!("listen"), Hook::Exit),
    ("fentry_sys_dup2", sys!("dup2"), Hook::Entry),
    ("fentry_sys_dup3", sys!("dup3"), Hook::Entry),
    ("fentry_filp_close", "filp_close", Hook::Entry),
];

/// Under fentry, fexit on the syscall functions instead (one argument:
/// the caller's registers), so that fentry keeps clear of syscall
/// tracepoints.
const PASSFD_FEXIT: &[(&str, &str, Hook)] =
    &[("fexit_sys_sendmsg", sys!("sendmsg"), Hook::Exit), ("fexit_sys_recvmsg", sys!("recvmsg"), Hook::Exit)];

/// Functions whose argument count the fentry/fexit programs assume: fexit
/// finds the return value right after the arguments.
const FENTRY_ARGS: &[(&str, usize)] = &[
    ("unix_stream_connect", 4),
    ("unix_dgram_connect", 4),
    (sys!("accept"), 1),
    (sys!("accept4"), 1),
    (sys!("socketpair"), 1),
    (sys!("listen"), 1),
];

/// Every kernel name a BTF-attached program of ours looks up, for the
/// stand-in BTF handed to aya.
pub(crate) fn attach_targets() -> Vec<Target<'static>> {
    let mut targets: Vec<Target<'static>> =
        FENTRY.iter().chain(FENTRY_SYSFNS).chain(PASSFD_FEXIT).map(|(_, func, _)| Target::Func(func)).collect();
    targets.push(Target::Typedef(FORK_TRACEPOINT_TYPEDEF));
    targets.extend(super::traffic::attach_targets());
    targets.push(Target::Func(super::iter::ITER_TARGET_FUNC));
    targets
}

/// What aya looks up for `tp_btf/sched_process_fork`.
const FORK_TRACEPOINT_TYPEDEF: &str = "btf_trace_sched_process_fork";

const KPROBE: &[(&str, &str)] = &[
    ("kprobe_unix_stream_connect", "unix_stream_connect"),
    ("kretprobe_unix_stream_connect", "unix_stream_connect"),
    ("kprobe_unix_dgram_connect", "unix_dgram_connect"),
    ("kretprobe_unix_dgram_connect", "unix_dgram_connect"),
    ("kprobe_unix_release_sock", "unix_release_sock"),
];

/// The syscall functions and fd drops, under kprobe; under fentry too
/// where the kernel's BTF leaves the syscall functions' `struct pt_regs`
/// argument incomplete (Debian's 5.10: a forward declaration, which
/// fentry may not read through).
const KPROBE_SYSFNS: &[(&str, &str)] = &[
    ("kprobe_sys_close", sys!("close")),
    ("kprobe_sys_accept", sys!("accept")),
    ("kprobe_sys_accept4", sys!("accept4")),
    ("kprobe_fd_install", "fd_install"),
    ("kprobe_sys_socketpair", sys!("socketpair")),
    ("kretprobe_sys_socketpair", sys!("socketpair")),
    ("kprobe_sys_listen", sys!("listen")),
    ("kretprobe_sys_listen", sys!("listen")),
    ("kprobe_sys_dup2", sys!("dup2")),
    ("kprobe_sys_dup3", sys!("dup3")),
    ("kprobe_filp_close", "filp_close"),
];

/// SCM_RIGHTS under kprobe, so that it attaches no syscall tracepoint:
/// sendmsg at entry and return; recvmsg at entry only (a blocked recvmsg
/// would hold a kretprobe instance for as long as it waits), its
/// descriptors seen where `fd_install` (in `KPROBE_SYSFNS`) installs them.
const PASSFD_KPROBE: &[(&str, &str)] = &[
    ("kprobe_sys_sendmsg", sys!("sendmsg")),
    ("kretprobe_sys_sendmsg", sys!("sendmsg")),
    ("kprobe_sys_recvmsg", sys!("recvmsg")),
];

/// Counting is attached last, on the chosen strategy.
const NOT_YET: super::traffic::Counting = Err(String::new());

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

pub(crate) fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kbtf: &KernelBtf,
    choice: BackendChoice,
    (tracefs_root, records): (&Path, Result<(), &String>),
) -> Result<Chosen, CaptureError> {
    let mut chosen = match choice {
        BackendChoice::Fentry => {
            let how = attach_fentry(ebpf, btf, kbtf, tracefs_root).map_err(|e| unavailable(Strategy::Fentry, e))?;
            Chosen {
                backend: Strategy::Fentry,
                why: with_note("requested with --backend fentry", how),
                traffic: NOT_YET,
            }
        }
        BackendChoice::Kprobe => {
            attach_kprobe(ebpf, tracefs_root).map_err(|e| unavailable(Strategy::Kprobe, e))?;
            Chosen { backend: Strategy::Kprobe, why: "requested with --backend kprobe".into(), traffic: NOT_YET }
        }
        BackendChoice::Tracepoint => Chosen {
            backend: Strategy::Tracepoint,
            why: "requested with --backend tracepoint".into(),
            traffic: NOT_YET,
        },
        BackendChoice::Auto => auto(ebpf, btf, kbtf, tracefs_root)?,
    };
    if chosen.backend == Strategy::Tracepoint {
        let from_regs = kbtf.has_task_pt_regs();
        let attached = match records {
            Ok(()) if from_regs => attach_tracepoints(ebpf, SYSCALL_EXITS),
            Ok(()) => attach_tracepoints(ebpf, SYSCALL_ENTRIES).and_then(|()| attach_tracepoints(ebpf, SYSCALL_EXITS)),
            Err(why) => Err(CaptureError::NoBackend(why.clone())),
        };
        chosen.why = with_note(
            &chosen.why,
            Some(if from_regs {
                "syscall arguments read at exit from the caller's registers (bpf_task_pt_regs)"
            } else {
                "syscall arguments carried from entry to exit in a map (no bpf_task_pt_regs before 5.15)"
            }),
        );
        attached.map_err(|e| match e {
            // A verifier rejection is a bug to report, not a missing feature.
            CaptureError::Verifier { .. } => e,
            _ => CaptureError::NoBackend(format!("  {}\n  syscall tracepoints failed ({e})", chosen.why)),
        })?;
    }
    attach_tracepoints(ebpf, TRACEPOINTS)?;
    attach_fork(ebpf, btf)?;
    chosen.traffic = super::traffic::attach(ebpf, btf, kbtf, chosen.backend);
    attach_passfd(ebpf, (btf, kbtf), chosen.backend, (tracefs_root, records));
    log::info!("backend {}: {}", chosen.backend, chosen.why);
    match &chosen.traffic {
        Ok(how) => log::info!("bytes and messages counted by {how}"),
        Err(why) => log::warn!("bytes and messages are not counted: {why}"),
    }
    Ok(chosen)
}

/// SCM_RIGHTS: an addition like counting. Where it cannot attach, the
/// capture runs on without `pass_fd` events and says why.
fn attach_passfd(
    ebpf: &mut Ebpf,
    (btf, kbtf): (&Btf, &KernelBtf),
    strategy: Strategy,
    (tracefs_root, records): (&Path, Result<(), &String>),
) {
    if strategy == Strategy::Kprobe {
        match attach_kprobes(ebpf, tracefs_root, PASSFD_KPROBE) {
            Ok(()) => {
                return log::info!(
                    "descriptors passed over SCM_RIGHTS seen by kprobes on __x64_sys_{{sendmsg,recvmsg}} and fd_install"
                );
            }
            Err(e) => {
                unload(ebpf, PASSFD_KPROBE.iter().map(|(p, _)| *p));
                log::info!("kprobes on __x64_sys_{{sendmsg,recvmsg}} failed ({}): trying their tracepoints", short(&e));
            }
        }
    }
    if strategy == Strategy::Fentry
        && PASSFD_FEXIT.iter().all(|(_, func, _)| {
            kbtf.first_param_is_struct_pointer(func) && kbtf.param_count(func).is_ok_and(|n| n == 1)
        })
    {
        match attach_trampolines(ebpf, btf, PASSFD_FEXIT) {
            Ok(()) => {
                return log::info!("descriptors passed over SCM_RIGHTS seen by fexit on __x64_sys_{{sendmsg,recvmsg}}");
            }
            Err(e) => {
                unload(ebpf, PASSFD_FEXIT.iter().map(|(p, _, _)| *p));
                log::info!("fexit on __x64_sys_{{sendmsg,recvmsg}} failed ({}): trying their tracepoints", short(&e));
            }
        }
    }
    let attached = match records {
        Ok(()) if kbtf.has_task_pt_regs() => attach_tracepoints(ebpf, PASSFD_EXITS),
        Ok(()) => attach_tracepoints(ebpf, PASSFD_ENTRIES).and_then(|()| attach_tracepoints(ebpf, PASSFD_EXITS)),
        Err(why) => Err(CaptureError::NoBackend(why.clone())),
    };
    match attached {
        Ok(()) => log::info!("descriptors passed over SCM_RIGHTS seen at syscalls:sys_exit_{{sendmsg,recvmsg}}"),
        Err(e) => {
            unload(ebpf, PASSFD_ENTRIES.iter().chain(PASSFD_EXITS).map(|(p, _, _)| *p));
            log::warn!("descriptors passed over SCM_RIGHTS are not reported: {}", short(&e));
        }
    }
}

fn unavailable(backend: Strategy, e: CaptureError) -> CaptureError {
    match e {
        // A verifier rejection is a bug to report, not a missing feature.
        CaptureError::Verifier { .. } => e,
        other => CaptureError::BackendUnavailable { backend, why: other.to_string() },
    }
}

fn auto(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf, tracefs_root: &Path) -> Result<Chosen, CaptureError> {
    let fentry_why = match attach_fentry(ebpf, btf, kbtf, tracefs_root) {
        Ok(how) => {
            return Ok(Chosen {
                backend: Strategy::Fentry,
                why: with_note("BPF trampolines load on this kernel", how),
                traffic: NOT_YET,
            });
        }
        Err(e @ CaptureError::Verifier { .. }) => return Err(e),
        Err(e) => {
            unload(ebpf, FENTRY.iter().chain(FENTRY_SYSFNS).map(|(p, _, _)| *p));
            unload(ebpf, KPROBE_SYSFNS.iter().map(|(p, _)| *p));
            format!("fentry unavailable ({})", short(&e))
        }
    };
    let kprobe_why = match attach_kprobe(ebpf, tracefs_root) {
        Ok(()) => {
            return Ok(Chosen {
                backend: Strategy::Kprobe,
                why: format!("{fentry_why}; kprobes load on this kernel"),
                traffic: NOT_YET,
            });
        }
        Err(e @ CaptureError::Verifier { .. }) => return Err(e),
        Err(e) => {
            unload(ebpf, KPROBE.iter().chain(KPROBE_SYSFNS).map(|(p, _)| *p));
            format!("kprobes unavailable ({})", short(&e))
        }
    };
    Ok(Chosen { backend: Strategy::Tracepoint, why: format!("{fentry_why}; {kprobe_why}"), traffic: NOT_YET })
}

fn with_note(why: &str, note: Option<&str>) -> String {
    match note {
        Some(n) => format!("{why}; {n}"),
        None => why.to_owned(),
    }
}

fn short(e: &CaptureError) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().to_owned()
}

pub(super) fn unload<S: AsRef<str>>(ebpf: &mut Ebpf, programs: impl Iterator<Item = S>) {
    for name in programs {
        if let Some(p) = ebpf.program_mut(name.as_ref()) {
            unload_one(p);
        }
    }
}

/// Detaches and unloads every program of `ebpf` at once, each on its own
/// thread. Removing a perf-event tracepoint or a kprobe waits for RCU
/// grace periods (about 70 ms each on the host, 200 ms under TCG): one
/// after the other, they held every exit up by their sum (0.7 s here, 2 s
/// in a guest). Side by side they wait for the same grace periods.
pub(super) fn unload_all(ebpf: &mut Ebpf) {
    std::thread::scope(|s| {
        for (_, p) in ebpf.programs_mut() {
            s.spawn(move || unload_one(p));
        }
    });
}

fn unload_one(p: &mut Program) {
    // An error here means already unloaded: there is nothing left to do.
    let _ = match p {
        Program::BtfTracePoint(p) => p.unload(),
        Program::FEntry(p) => p.unload(),
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::Iter(p) => p.unload(),
        _ => Ok(()),
    };
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| program_error(name, "-", ProgramError::NotLoaded))?;
    p.try_into().map_err(|e| program_error(name, "-", e))
}

fn attach_tracepoints(ebpf: &mut Ebpf, set: &[(&str, &str, &str)]) -> Result<(), CaptureError> {
    for (name, category, event) in set {
        let target = format!("tracepoint {category}:{event}");
        let tp: &mut TracePoint = program(ebpf, name)?;
        tp.load().map_err(|e| program_error(name, &target, e))?;
        tp.attach(category, event).map_err(|e| program_error(name, &target, e))?;
    }
    Ok(())
}

/// tp_btf loads wherever BTF does (5.5+), even where fentry is refused.
fn attach_fork(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), CaptureError> {
    let name = "sched_process_fork";
    let target = "tp_btf sched_process_fork";
    let p: &mut BtfTracePoint = program(ebpf, name)?;
    p.load(name, btf).map_err(|e| program_error(name, target, e))?;
    p.attach().map_err(|e| program_error(name, target, e))?;
    Ok(())
}

/// Attaches the fentry strategy; returns how the syscall functions are
/// hooked when it is not by fentry.
fn attach_fentry(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kbtf: &KernelBtf,
    tracefs_root: &Path,
) -> Result<Option<&'static str>, CaptureError> {
    for &(func, want) in FENTRY_ARGS {
        let n = kbtf.param_count(func)?;
        if n != want {
            return Err(CaptureError::BackendUnavailable {
                backend: Strategy::Fentry,
                why: format!("{func} takes {n} arguments on this kernel, unixtrace expects {want}"),
            });
        }
    }
    attach_trampolines(ebpf, btf, FENTRY)?;
    if FENTRY_SYSFNS.iter().all(|(_, func, _)| kbtf.first_param_is_struct_pointer(func)) {
        attach_trampolines(ebpf, btf, FENTRY_SYSFNS)?;
        return Ok(None);
    }
    attach_kprobes(ebpf, tracefs_root, KPROBE_SYSFNS).map_err(|e| CaptureError::BackendUnavailable {
        backend: Strategy::Fentry,
        why: format!("this kernel's BTF leaves the syscall functions' registers incomplete, and kprobes fail: {e}"),
    })?;
    Ok(Some("the syscall functions through kprobes: this kernel's BTF leaves their registers incomplete"))
}

fn attach_trampolines(ebpf: &mut Ebpf, btf: &Btf, set: &[(&str, &str, Hook)]) -> Result<(), CaptureError> {
    for (name, func, hook) in set {
        let target = format!("fentry {func}");
        match hook {
            Hook::Entry => {
                let p: &mut FEntry = program(ebpf, name)?;
                p.load(func, btf).map_err(|e| program_error(name, &target, e))?;
                p.attach().map_err(|e| program_error(name, &target, e))?;
            }
            Hook::Exit => {
                let p: &mut FExit = program(ebpf, name)?;
                p.load(func, btf).map_err(|e| program_error(name, &target, e))?;
                p.attach().map_err(|e| program_error(name, &target, e))?;
            }
        }
    }
    Ok(())
}

fn attach_kprobe(ebpf: &mut Ebpf, tracefs_root: &Path) -> Result<(), CaptureError> {
    attach_kprobes(ebpf, tracefs_root, KPROBE)?;
    attach_kprobes(ebpf, tracefs_root, KPROBE_SYSFNS)
}

fn attach_kprobes(ebpf: &mut Ebpf, tracefs_root: &Path, set: &[(&str, &str)]) -> Result<(), CaptureError> {
    if !Path::new(KPROBE_PMU).exists() && !tracefs_root.join("kprobe_events").exists() {
        return Err(CaptureError::BackendUnavailable {
            backend: Strategy::Kprobe,
            why: format!("{KPROBE_PMU} and kprobe_events are missing: the kernel has no CONFIG_KPROBES"),
        });
    }
    for (name, func) in set {
        let target = format!("kprobe {func}");
        let p: &mut KProbe = program(ebpf, name)?;
        p.load().map_err(|e| program_error(name, &target, e))?;
        p.attach(func, 0).map_err(|e| program_error(name, &target, e))?;
    }
    Ok(())
}
