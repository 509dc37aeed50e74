//! Loads and attaches the payload programs (the eBPF crate's
//! `payload.rs`) for `unixtrace capture`, and reads what they copy. Only
//! they are attached: the connection events' programs stay unloaded.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use tokio::io::unix::AsyncFd;
use unixpeer_common::{PayloadFilter, PayloadHeader, PayloadRecords, payload_counter};

use super::{
    CaptureError, CaptureOptions, DRAIN_INTERVAL, attach_btf, buffer_size, iter, kernel_filter, load_error, object_for,
    program_error, register,
};
use crate::{
    btf::{KernelBtf, VMLINUX_BTF},
    privileges, tracefs,
};

/// 6.3+: one tp_btf program at `sock:sock_send_length`, which only socket
/// sends reach, instead of the syscalls' tracepoints below, which put every
/// syscall of the system on the slow path.
const SEND_LENGTH: &str = "payload_send_length";
const SEND_LENGTH_TRACEPOINT: &str = "sock_send_length";

/// What `PayloadCapture::hooks` says of each way.
const HOOKS_TP_BTF: &str = "sock:sock_send_length (tp_btf)";
const HOOKS_SYSCALLS: &str = "syscalls:sys_exit_{write,writev,sendto,sendmsg,sendmmsg}";

/// (program, syscall) of the exits, before 6.3.
const EXITS: &[(&str, &str)] = &[
    ("payload_exit_write", "write"),
    ("payload_exit_writev", "writev"),
    ("payload_exit_sendto", "sendto"),
    ("payload_exit_sendmsg", "sendmsg"),
    ("payload_exit_sendmmsg", "sendmmsg"),
];

/// The entries, before 5.15 only (no `bpf_task_pt_regs`).
const ENTRIES: &[(&str, &str)] = &[
    ("payload_enter_write", "write"),
    ("payload_enter_writev", "writev"),
    ("payload_enter_sendto", "sendto"),
    ("payload_enter_sendmsg", "sendmsg"),
    ("payload_enter_sendmmsg", "sendmmsg"),
];

/// What to capture.
#[derive(Clone, Debug, Default)]
pub struct PayloadOptions {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// `1 << type` for each SOCK_* type wanted; 0 for all.
    pub sock_types: u32,
    /// Names must start with these bytes (an abstract name with a NUL).
    pub prefix: Vec<u8>,
    pub snaplen: u32,
    pub buffer_size: Option<u64>,
}

pub struct PayloadCapture {
    ebpf: Ebpf,
    btf: aya::Btf,
    kbtf: KernelBtf,
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    lost_seen: u64,
    pub buffer_size: u64,
    /// Where the messages are taken, for people and the file's header.
    pub hooks: &'static str,
}

/// Where the payload calls' records keep their arguments and `ret`.
fn records(root: &Path) -> Result<PayloadRecords, tracefs::TracefsError> {
    fn at<const N: usize>(root: &Path, call: &str, fields: [&str; N]) -> Result<[u64; N], tracefs::TracefsError> {
        let name = format!("sys_enter_{call}");
        let mut out = [0; N];
        for (o, field) in out.iter_mut().zip(fields) {
            *o = tracefs::field_offset(root, "syscalls", &name, field)?;
        }
        Ok(out)
    }
    Ok(PayloadRecords {
        write: at(root, "write", ["fd", "buf", "count"])?,
        writev: at(root, "writev", ["fd", "vec", "vlen"])?,
        sendto: at(root, "sendto", ["fd", "buff", "len", "addr", "addr_len"])?,
        sendmsg: at(root, "sendmsg", ["fd", "msg", "flags"])?,
        sendmmsg: at(root, "sendmmsg", ["fd", "mmsg", "vlen"])?,
        exit_ret: tracefs::field_offset(root, "syscalls", "sys_exit_write", "ret")?,
    })
}

/// The tp_btf program, where the kernel has the tracepoint (6.3+).
fn attach_send_length(ebpf: &mut Ebpf, btf: &aya::Btf) -> Result<(), CaptureError> {
    let target = format!("tp_btf {SEND_LENGTH_TRACEPOINT}");
    let p = ebpf
        .program_mut(SEND_LENGTH)
        .ok_or_else(|| program_error(SEND_LENGTH, &target, aya::programs::ProgramError::NotLoaded))?;
    let tp: &mut BtfTracePoint = p.try_into().map_err(|e| program_error(SEND_LENGTH, &target, e))?;
    tp.load(SEND_LENGTH_TRACEPOINT, btf).map_err(|e| program_error(SEND_LENGTH, &target, e))?;
    tp.attach().map_err(|e| program_error(SEND_LENGTH, &target, e))?;
    Ok(())
}

fn payload_filter(opts: &PayloadOptions) -> PayloadFilter {
    let mut f = PayloadFilter::zeroed();
    f.sock_types = opts.sock_types;
    f.snaplen = opts.snaplen.min(unixpeer_common::PAYLOAD_SNAP_MAX);
    let n = opts.prefix.len().min(f.prefix.len());
    f.prefix[..n].copy_from_slice(&opts.prefix[..n]);
    f.prefix_len = n as u32;
    f
}

impl Drop for PayloadCapture {
    fn drop(&mut self) {
        super::backend::unload_all(&mut self.ebpf);
    }
}

impl PayloadCapture {
    pub fn start(opts: &PayloadOptions) -> Result<Self, CaptureError> {
        privileges::check_capture()?;
        let kbtf = KernelBtf::open(Path::new(VMLINUX_BTF))?;
        let root = tracefs::ensure_mounted()?;
        let recs = records(&root)?;
        let targets = [
            attach_btf::Target::Func(iter::ITER_TARGET_FUNC),
            attach_btf::Target::Typedef("btf_trace_sock_send_length"),
        ];
        let btf = attach_btf::stand_in(&kbtf, &targets)?;
        let mut offsets = kbtf.kernel_offsets()?;
        let ebpf = match Self::load(&kbtf, &btf, &offsets, &recs, opts) {
            Err(CaptureError::Verifier { program, log_tail, .. }) if offsets.cast_loads != 0 => {
                log::info!(
                    "the verifier refused program `{program}` with bpf_rdonly_cast walks; loading again with \
                     probe reads. Its log ended:\n{log_tail}"
                );
                offsets.cast_loads = 0;
                Self::load(&kbtf, &btf, &offsets, &recs, opts)?
            }
            other => other?,
        };
        let (mut ebpf, hooks) = ebpf;
        let ring = RingBuf::try_from(ebpf.take_map("PAYLOAD").ok_or(CaptureError::MissingMap("PAYLOAD"))?)?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("PAYLOAD_COUNTERS").ok_or(CaptureError::MissingMap("PAYLOAD_COUNTERS"))?,
        )?;
        Ok(Self {
            ebpf,
            btf,
            kbtf,
            ring: register(ring)?,
            counters,
            lost_seen: 0,
            buffer_size: buffer_size(opts.buffer_size),
            hooks,
        })
    }

    /// The object loaded and its programs attached, and which hooks.
    fn load(
        kbtf: &KernelBtf,
        btf: &aya::Btf,
        offsets: &unixpeer_common::KernelOffsets,
        recs: &PayloadRecords,
        opts: &PayloadOptions,
    ) -> Result<(Ebpf, &'static str), CaptureError> {
        let object = object_for(kbtf, offsets);
        let cpus = aya::util::nr_cpus().map_or(1, |n| n.get()) as u32;
        let filter = kernel_filter(&CaptureOptions { pid: opts.pid, comm: opts.comm.clone(), ..Default::default() });
        let ring_bytes = u32::try_from(buffer_size(opts.buffer_size)).unwrap_or(1 << 31);
        let mut ebpf = EbpfLoader::new()
            // The connection events' buffer stays empty: only the payload's is read.
            .map_max_entries("EVENTS", 4096)
            .map_max_entries("AYA_LOGS", 4096)
            .map_max_entries("PAYLOAD", ring_bytes)
            .map_max_entries("PAYLOAD_STAGING", cpus)
            .override_global("OFFSETS", offsets, true)
            .override_global("FILTER", &filter, true)
            .override_global("PAYLOAD_FILTER", &payload_filter(opts), true)
            .override_global("PAYLOAD_RECORDS", recs, true)
            .load(object.bytes())
            .map_err(load_error)?;
        match attach_send_length(&mut ebpf, btf) {
            Ok(()) => return Ok((ebpf, HOOKS_TP_BTF)),
            Err(e) => log::info!("capturing at the syscalls' exits: {e}"),
        }
        let mut attach = |set: &[(&str, &str)]| -> Result<(), CaptureError> {
            for (name, call) in set {
                let event = format!("{}_{call}", if name.contains("_enter_") { "sys_enter" } else { "sys_exit" });
                let target = format!("tracepoint syscalls:{event}");
                let p = ebpf
                    .program_mut(name)
                    .ok_or_else(|| program_error(name, &target, aya::programs::ProgramError::NotLoaded))?;
                let tp: &mut TracePoint = p.try_into().map_err(|e| program_error(name, &target, e))?;
                tp.load().map_err(|e| program_error(name, &target, e))?;
                tp.attach("syscalls", &event).map_err(|e| program_error(name, &target, e))?;
            }
            Ok(())
        };
        if !kbtf.has_task_pt_regs() {
            attach(ENTRIES)?;
        }
        attach(EXITS)?;
        Ok((ebpf, HOOKS_SYSCALLS))
    }

    /// Waits for data or the drain interval, then hands every record to `f`.
    pub async fn next_batch(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<(), CaptureError> {
        tokio::select! {
            g = self.ring.readable_mut() => g?.clear_ready(),
            _ = tokio::time::sleep(DRAIN_INTERVAL) => {}
        }
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            f(&item);
        }
        Ok(())
    }

    /// Messages the kernel could not queue since the last call.
    pub fn take_lost(&mut self) -> Result<u64, CaptureError> {
        let total: u64 = self.counters.get(&payload_counter::LOST, 0)?.iter().sum();
        let new = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        Ok(new)
    }

    /// Every socket fd of every process, to name the peers.
    pub fn task_socket_fds(&mut self) -> Result<Vec<unixpeer_common::TaskSocketFd>, CaptureError> {
        iter::task_socket_fds(&mut self.ebpf, &self.btf, &self.kbtf)
    }
}

/// A record's header and its captured bytes, or None for a short record.
pub fn parse_record(bytes: &[u8]) -> Option<(PayloadHeader, &[u8])> {
    let size = std::mem::size_of::<PayloadHeader>();
    let head = bytes.get(..size)?;
    // SAFETY: `head` is exactly size_of::<PayloadHeader>() bytes, read
    // unaligned, and PayloadHeader is plain integers, valid for any bytes.
    let h: PayloadHeader = unsafe { std::ptr::read_unaligned(head.as_ptr().cast()) };
    let data = bytes.get(size..size + h.cap_len as usize)?;
    Some((h, data))
}
