//! Choosing and attaching an attach strategy. Like libbpf-tools, probe what
//! the kernel offers in order of preference and fall back cleanly, keeping
//! the reason so `-v` and recordings can say why.

use std::path::Path;

use aya::{
    Btf, Ebpf,
    maps::Array,
    programs::{BtfTracePoint, FEntry, FExit, KProbe, Program, ProgramError, TracePoint},
};

use super::{CaptureError, program_error};
use unixpeer_common::setting;

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
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fentry => "fentry",
            Self::Kprobe => "kprobe",
            Self::Tracepoint => "tracepoint",
        }
    }

    /// Only the syscall tracepoints miss releases done by exit() and
    /// anything else outside close(): the model infers those.
    pub fn infers_releases(self) -> bool {
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
    pub backend: Strategy,
    pub why: String,
}

/// Regular tracepoints attached under every strategy.
const TRACEPOINTS: &[(&str, &str, &str)] =
    &[("sched_process_exit", "sched", "sched_process_exit"), ("task_rename", "task", "task_rename")];

/// The raw syscall tracepoints, attached under every strategy: accept,
/// socketpair and listen only the syscalls can see (they alone know the fds
/// they return), and every close() drops a holder. Under the tracepoint
/// strategy they also report connect and the final close.
const RAW_SYSCALLS: [&str; 2] = ["sys_enter", "sys_exit"];

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

/// Every kernel name a BTF-attached program of ours looks up, for the
/// stand-in BTF handed to aya.
pub fn attach_targets() -> Vec<Target<'static>> {
    let mut targets: Vec<Target<'static>> = FENTRY.iter().map(|(_, func, _)| Target::Func(func)).collect();
    targets.push(Target::Typedef(FORK_TRACEPOINT_TYPEDEF));
    targets.extend(RAW_SYSCALL_TYPEDEFS.iter().map(|t| Target::Typedef(t)));
    targets.push(Target::Func(super::iter::ITER_TARGET_FUNC));
    targets
}

/// What aya looks up for `tp_btf/sched_process_fork`.
const FORK_TRACEPOINT_TYPEDEF: &str = "btf_trace_sched_process_fork";
/// And for `tp_btf/sys_enter` and `tp_btf/sys_exit`.
const RAW_SYSCALL_TYPEDEFS: [&str; 2] = ["btf_trace_sys_enter", "btf_trace_sys_exit"];

const KPROBE: &[(&str, &str)] = &[
    ("kprobe_unix_stream_connect", "unix_stream_connect"),
    ("kretprobe_unix_stream_connect", "unix_stream_connect"),
    ("kprobe_unix_dgram_connect", "unix_dgram_connect"),
    ("kretprobe_unix_dgram_connect", "unix_dgram_connect"),
    ("kprobe_unix_release_sock", "unix_release_sock"),
];

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kbtf: &KernelBtf,
    choice: BackendChoice,
    tracefs_root: &Path,
) -> Result<Chosen, CaptureError> {
    let chosen = match choice {
        BackendChoice::Fentry => {
            attach_fentry(ebpf, btf, kbtf).map_err(|e| unavailable(Strategy::Fentry, e))?;
            Chosen { backend: Strategy::Fentry, why: "requested with --backend fentry".into() }
        }
        BackendChoice::Kprobe => {
            attach_kprobe(ebpf, tracefs_root).map_err(|e| unavailable(Strategy::Kprobe, e))?;
            Chosen { backend: Strategy::Kprobe, why: "requested with --backend kprobe".into() }
        }
        BackendChoice::Tracepoint => {
            Chosen { backend: Strategy::Tracepoint, why: "requested with --backend tracepoint".into() }
        }
        BackendChoice::Auto => auto(ebpf, btf, kbtf, tracefs_root)?,
    };
    let mut settings: Array<_, u32> =
        Array::try_from(ebpf.map_mut("SETTINGS").ok_or(CaptureError::MissingMap("SETTINGS"))?)?;
    settings.set(setting::SYSCALL_STRATEGY, &u32::from(chosen.backend == Strategy::Tracepoint), 0)?;
    // Only now: the syscall programs must know whether they report connect
    // and final closes.
    attach_raw_syscalls(ebpf, btf).map_err(|e| match e {
        // A verifier rejection is a bug to report, not a missing feature.
        CaptureError::Verifier { .. } => e,
        _ if chosen.backend == Strategy::Tracepoint => {
            CaptureError::NoBackend(format!("  {}\n  raw syscall tracepoints failed ({e})", chosen.why))
        }
        _ => e,
    })?;
    attach_tracepoints(ebpf, TRACEPOINTS)?;
    attach_fork(ebpf, btf)?;
    log::info!("backend {}: {}", chosen.backend, chosen.why);
    Ok(chosen)
}

fn unavailable(backend: Strategy, e: CaptureError) -> CaptureError {
    match e {
        // A verifier rejection is a bug to report, not a missing feature.
        CaptureError::Verifier { .. } => e,
        other => CaptureError::BackendUnavailable { backend, why: other.to_string() },
    }
}

fn auto(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf, tracefs_root: &Path) -> Result<Chosen, CaptureError> {
    let fentry_why = match attach_fentry(ebpf, btf, kbtf) {
        Ok(()) => return Ok(Chosen { backend: Strategy::Fentry, why: "BPF trampolines load on this kernel".into() }),
        Err(e @ CaptureError::Verifier { .. }) => return Err(e),
        Err(e) => {
            unload(ebpf, FENTRY.iter().map(|(p, _, _)| *p));
            format!("fentry unavailable ({})", short(&e))
        }
    };
    let kprobe_why = match attach_kprobe(ebpf, tracefs_root) {
        Ok(()) => {
            return Ok(Chosen { backend: Strategy::Kprobe, why: format!("{fentry_why}; kprobes load on this kernel") });
        }
        Err(e @ CaptureError::Verifier { .. }) => return Err(e),
        Err(e) => {
            unload(ebpf, KPROBE.iter().map(|(p, _)| *p));
            format!("kprobes unavailable ({})", short(&e))
        }
    };
    Ok(Chosen { backend: Strategy::Tracepoint, why: format!("{fentry_why}; {kprobe_why}") })
}

fn short(e: &CaptureError) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or_default().to_owned()
}

fn unload<'a>(ebpf: &mut Ebpf, programs: impl Iterator<Item = &'a str>) {
    for name in programs {
        let _ = match ebpf.program_mut(name) {
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::FExit(p)) => p.unload(),
            Some(Program::KProbe(p)) => p.unload(),
            _ => Ok(()),
        };
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, CaptureError>
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
fn attach_raw_syscalls(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), CaptureError> {
    for name in RAW_SYSCALLS {
        let target = format!("tp_btf {name}");
        let p: &mut BtfTracePoint = program(ebpf, name)?;
        p.load(name, btf).map_err(|e| program_error(name, &target, e))?;
        p.attach().map_err(|e| program_error(name, &target, e))?;
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

fn attach_fentry(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf) -> Result<(), CaptureError> {
    // fexit reads the return value right after the arguments: make sure
    // the argument count the programs assume still holds.
    for func in ["unix_stream_connect", "unix_dgram_connect"] {
        let n = kbtf.param_count(func)?;
        if n != 4 {
            return Err(CaptureError::BackendUnavailable {
                backend: Strategy::Fentry,
                why: format!("{func} takes {n} arguments on this kernel, unixtrace expects 4"),
            });
        }
    }
    for (name, func, hook) in FENTRY {
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
    if !Path::new(KPROBE_PMU).exists() && !tracefs_root.join("kprobe_events").exists() {
        return Err(CaptureError::BackendUnavailable {
            backend: Strategy::Kprobe,
            why: format!("{KPROBE_PMU} and kprobe_events are missing: the kernel has no CONFIG_KPROBES"),
        });
    }
    for (name, func) in KPROBE {
        let target = format!("kprobe {func}");
        let p: &mut KProbe = program(ebpf, name)?;
        p.load().map_err(|e| program_error(name, &target, e))?;
        p.attach(func, 0).map_err(|e| program_error(name, &target, e))?;
    }
    Ok(())
}
