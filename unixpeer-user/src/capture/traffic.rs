//! Attaching the per-socket byte and message counters (the eBPF crate's
//! `traffic` module) with the cheapest hooks this kernel has, after the
//! strategy is chosen. Counting is an addition: where no hook works the
//! capture runs on and says what is not counted.

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FEntry, FExit, KProbe},
};

use super::{
    CaptureError,
    attach_btf::Target,
    backend::{Strategy, program, unload},
    program_error,
};
use crate::btf::KernelBtf;

/// tp_btf programs and the tracepoints they attach to (6.3+):
/// sk_data_ready names the receiver of a datagram sent by address.
const SOCK_TRACEPOINTS: [&str; 3] = ["sock_send_length", "sock_recv_length", "sk_data_ready"];

/// Where sk_data_ready's tracepoint sits, for the other hooks.
const DATA_READY: &str = "sock_def_readable";

/// The af_unix functions, with the argument count the fexit programs
/// assume (the return value follows the arguments).
const UNIX_FUNCS: [(&str, usize); 6] = [
    ("unix_stream_sendmsg", 3),
    ("unix_dgram_sendmsg", 3),
    ("unix_seqpacket_sendmsg", 3),
    ("unix_stream_recvmsg", 4),
    ("unix_dgram_recvmsg", 4),
    ("unix_seqpacket_recvmsg", 4),
];

pub(crate) fn attach_targets() -> impl Iterator<Item = Target<'static>> {
    const TYPEDEFS: [&str; 3] = ["btf_trace_sock_send_length", "btf_trace_sock_recv_length", "btf_trace_sk_data_ready"];
    TYPEDEFS
        .into_iter()
        .map(Target::Typedef)
        .chain(UNIX_FUNCS.iter().map(|(f, _)| Target::Func(f)))
        .chain([Target::Func(DATA_READY)])
}

/// How bytes and messages are counted, or why they are not.
pub(crate) type Counting = Result<&'static str, String>;

/// A group either attaches whole or not at all: counting sends without
/// receives would be wrong, not partial.
pub(crate) fn attach(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf, strategy: Strategy) -> Counting {
    let tracepoints = match attach_sock_tracepoints(ebpf, btf) {
        Ok(()) => return Ok("sock:sock_send_length, sock_recv_length and sk_data_ready (tp_btf)"),
        Err(e) => {
            unload(ebpf, SOCK_TRACEPOINTS.iter());
            format!("no sock:sock_send_length tracepoint before 6.3 ({})", first_line(&e))
        }
    };
    let functions = match strategy {
        Strategy::Fentry => attach_fexit(ebpf, btf, kbtf)
            .map(|()| "fexit on unix_{stream,dgram,seqpacket}_{send,recv}msg, fentry on sock_def_readable"),
        Strategy::Kprobe => attach_kprobes(ebpf)
            .map(|()| "kprobes on unix_{stream,dgram,seqpacket}_{send,recv}msg and sock_def_readable"),
        Strategy::Tracepoint => {
            return Err(format!("{tracepoints}, and the tracepoint strategy has no hook inside af_unix"));
        }
    };
    functions.map_err(|e| {
        let names = UNIX_FUNCS.iter().flat_map(|(f, _)| ["fexit", "kprobe", "kretprobe"].map(|p| format!("{p}_{f}")));
        let readable = ["fentry", "kprobe"].map(|p| format!("{p}_{DATA_READY}"));
        unload(ebpf, names.chain(readable));
        format!("{tracepoints}; {}", first_line(&e))
    })
}

fn first_line(e: &CaptureError) -> String {
    e.to_string().lines().next().unwrap_or_default().to_owned()
}

fn attach_sock_tracepoints(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), CaptureError> {
    for name in SOCK_TRACEPOINTS {
        let target = format!("tp_btf {name}");
        let p: &mut BtfTracePoint = program(ebpf, name)?;
        p.load(name, btf).map_err(|e| program_error(name, &target, e))?;
        p.attach().map_err(|e| program_error(name, &target, e))?;
    }
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, btf: &Btf, kbtf: &KernelBtf) -> Result<(), CaptureError> {
    for (func, want) in UNIX_FUNCS {
        let n = kbtf.param_count(func)?;
        if n != want {
            return Err(CaptureError::BackendUnavailable {
                backend: Strategy::Fentry,
                why: format!("{func} takes {n} arguments on this kernel, unixtrace expects {want}"),
            });
        }
        let name = format!("fexit_{func}");
        let target = format!("fexit {func}");
        let p: &mut FExit = program(ebpf, &name)?;
        p.load(func, btf).map_err(|e| program_error(&name, &target, e))?;
        p.attach().map_err(|e| program_error(&name, &target, e))?;
    }
    let name = format!("fentry_{DATA_READY}");
    let target = format!("fentry {DATA_READY}");
    let p: &mut FEntry = program(ebpf, &name)?;
    p.load(DATA_READY, btf).map_err(|e| program_error(&name, &target, e))?;
    p.attach().map_err(|e| program_error(&name, &target, e))?;
    Ok(())
}

fn attach_kprobes(ebpf: &mut Ebpf) -> Result<(), CaptureError> {
    let probes = UNIX_FUNCS.iter().flat_map(|(f, _)| [("kprobe", *f), ("kretprobe", *f)]);
    for (prefix, func) in probes.chain([("kprobe", DATA_READY)]) {
        let name = format!("{prefix}_{func}");
        let target = format!("{prefix} {func}");
        let p: &mut KProbe = program(ebpf, &name)?;
        p.load().map_err(|e| program_error(&name, &target, e))?;
        p.attach(func, 0).map_err(|e| program_error(&name, &target, e))?;
    }
    Ok(())
}

/// The kernel's counts of sockets whose release no program saw (the
/// tracepoint strategy's exits, orphans released later): userspace takes
/// them when it infers the release.
pub(crate) struct TrafficMap(aya::maps::HashMap<aya::maps::MapData, u64, unixpeer_common::Traffic>);

impl TrafficMap {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Option<Self> {
        let map = ebpf.take_map("TRAFFIC")?;
        match aya::maps::HashMap::try_from(map) {
            Ok(m) => Some(Self(m)),
            Err(e) => {
                log::warn!("cannot read the TRAFFIC map: {e}");
                None
            }
        }
    }

    /// Every socket's counts so far: at most the map's 65,536 entries.
    pub(crate) fn read_all(&self) -> Vec<(u64, unixpeer_common::Traffic)> {
        self.0.iter().filter_map(Result::ok).collect()
    }

    /// What `inode` carried (nothing counted is zero), out of the map.
    pub(crate) fn take(&mut self, inode: u64) -> unixpeer_common::Traffic {
        match self.0.get(&inode, 0) {
            Ok(t) => {
                let _ = self.0.remove(&inode);
                t
            }
            Err(_) => unixpeer_common::Traffic::default(),
        }
    }
}

/// What unconnected datagram sockets sent to each receiver (`DGRAM_PAIRS`).
pub(crate) struct DgramPairs(
    aya::maps::HashMap<aya::maps::MapData, unixpeer_common::DgramPair, unixpeer_common::Traffic>,
);

impl DgramPairs {
    pub(crate) fn new(ebpf: &mut Ebpf) -> Option<Self> {
        let map = ebpf.take_map("DGRAM_PAIRS")?;
        aya::maps::HashMap::try_from(map).map(Self).map_err(|e| log::warn!("cannot read the DGRAM_PAIRS map: {e}")).ok()
    }

    /// What `sender` sent to `receiver` (bytes, datagrams), out of the map.
    pub(crate) fn take(&mut self, sender: u64, receiver: u64) -> Option<(u64, u64)> {
        let pair = unixpeer_common::DgramPair { sender, receiver };
        let t = self.0.get(&pair, 0).ok()?;
        let _ = self.0.remove(&pair);
        Some((t.bytes_sent, t.msgs_sent))
    }
}
