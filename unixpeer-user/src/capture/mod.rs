//! Live capture: loads the kernel programs for one attach strategy, hands
//! them this kernel's offsets and the filters, and reads their events.

pub(crate) mod attach_btf;
mod backend;
pub(crate) mod iter;
mod kfunc;
mod misses;
pub mod payload;
pub(crate) mod traffic;

use std::{os::fd::AsRawFd, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::ProgramError,
};
use tokio::io::unix::AsyncFd;
use unixpeer_common::{KernelFilter, SyscallRecords, TASK_COMM_LEN, counter};

pub use self::backend::Strategy;
pub(crate) use self::backend::{BackendChoice, Chosen};
use crate::{
    btf::{BtfError, KernelBtf, VMLINUX_BTF},
    privileges::{self, PrivilegeError},
    tracefs::{self, TracefsError},
};

/// How long a quiet event stream may wait in the ring buffer.
const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// The object built by `cargo xtask build-ebpf`, committed so that building
/// unixtrace needs only stable Rust.
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../ebpf/unixpeer.bpf.o");

/// The object with its kfunc calls resolved for this kernel: the walks
/// use `bpf_rdonly_cast` where `offsets` says they may.
fn object_for(kbtf: &KernelBtf, offsets: &unixpeer_common::KernelOffsets) -> kfunc::Object {
    let rdonly_cast = kbtf.rdonly_cast_id().filter(|_| offsets.cast_loads != 0);
    let object = kfunc::resolve(OBJECT, rdonly_cast);
    log::debug!(
        "{} kfunc call sites made {}",
        object.resolved,
        if rdonly_cast.is_some() { "bpf_rdonly_cast calls" } else { "`r0 = r1`" }
    );
    object
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error(
        "creating the eBPF maps failed: this kernel charges them to the locked-memory limit (kernels \
         before 5.11 do), which is {kib} KiB for this process, and raising it takes CAP_SYS_RESOURCE.\n\
         run unixtrace as root, grant it CAP_SYS_RESOURCE as well, or raise the limit before starting it \
         (`ulimit -l unlimited` as root, LimitMEMLOCK=infinity in a systemd unit)"
    )]
    Memlock { kib: u64 },
    #[error(
        "the kernel refused to open a perf event for {target} (program `{program}`): \
         kernel.perf_event_paranoid is {level}, and above 2 (Debian's and Ubuntu's default is 3) \
         their kernels let only CAP_SYS_ADMIN open one, whatever CAP_PERFMON says.\n\
         run unixtrace as root, or let CAP_PERFMON suffice: `sudo sysctl kernel.perf_event_paranoid=2`"
    )]
    PerfParanoid { program: String, target: String, level: i32 },
    #[error("the kernel's verifier rejected program `{program}` ({io_error}). Last lines of its log:\n{log_tail}")]
    Verifier { program: String, io_error: std::io::Error, log_tail: String },
    #[error("program `{program}` could not be loaded or attached to {target}: {source}")]
    Program { program: String, target: String, source: Box<ProgramError> },
    #[error("the {backend} backend is not available on this kernel: {why}")]
    BackendUnavailable { backend: Strategy, why: String },
    #[error("no attach strategy works on this kernel:\n{0}")]
    NoBackend(String),
    #[error("the eBPF object lacks map `{0}`")]
    MissingMap(&'static str),
    #[error("map error: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("reading events failed: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Default)]
pub struct CaptureOptions {
    pub backend: BackendChoice,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Forward aya-log messages from the programs (`-v`).
    pub kernel_logs: bool,
    /// Bytes of the event ring buffer (`--buffer-size`); None: by CPU count.
    pub buffer_size: Option<u64>,
}

/// Ring buffer bytes per CPU that can produce events: a core running the
/// connection loop flat out fills about 90 MB/s, so 4 MiB gives the
/// consumer ~45 ms of slack per busy core between its 20 ms drains.
const BUFFER_PER_CPU: u64 = 4 << 20;
const BUFFER_MIN: u64 = 8 << 20;
const BUFFER_MAX: u64 = 256 << 20;

/// The ring buffer size: a power of two of at least a page, as the kernel
/// requires; the user's size is rounded up to one.
pub(crate) fn buffer_size(requested: Option<u64>) -> u64 {
    let page = page_size();
    match requested {
        Some(b) => b.max(page).checked_next_power_of_two().unwrap_or(1 << 31).min(1 << 31),
        None => {
            let cpus = aya::util::nr_cpus().map_or(1, |n| u64::from(n.get()));
            (cpus * BUFFER_PER_CPU).next_power_of_two().clamp(BUFFER_MIN, BUFFER_MAX)
        }
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096)
}

pub(crate) struct Capture {
    // Keeps the programs loaded and attached.
    ebpf: Ebpf,
    btf: aya::Btf,
    kbtf: KernelBtf,
    ring: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    pub(crate) chosen: Chosen,
    /// Bytes of the event ring buffer.
    pub(crate) buffer_size: u64,
    /// Whether the size was the user's (`--buffer-size`) or by CPU count.
    buffer_requested: bool,
    lost_seen: u64,
    missed_seen: u64,
    /// The kernel's counts, where bytes are counted.
    traffic: Option<traffic::TrafficMap>,
    dgram_pairs: Option<traffic::DgramPairs>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        backend::unload_all(&mut self.ebpf);
    }
}

/// What a load of the programs needs from this kernel, found once.
struct Setup {
    kbtf: KernelBtf,
    offsets: unixpeer_common::KernelOffsets,
    tracefs_root: std::path::PathBuf,
    aya_btf: aya::Btf,
    /// For the tracepoint strategy alone: another one runs without them.
    syscall_records: Result<SyscallRecords, String>,
}

impl Setup {
    fn new() -> Result<Self, CaptureError> {
        let kbtf = KernelBtf::open(Path::new(VMLINUX_BTF))?;
        let mut offsets = kbtf.kernel_offsets()?;
        let tracefs_root = tracefs::ensure_mounted()?;
        offsets.tp_task_rename_pid = tracefs::field_offset(&tracefs_root, "task", "task_rename", "pid")?;
        offsets.tp_task_rename_newcomm = tracefs::field_offset(&tracefs_root, "task", "task_rename", "newcomm")?;
        let aya_btf = attach_btf::stand_in(&kbtf, &backend::attach_targets())?;
        let syscall_records = tracefs::syscall_records(&tracefs_root).map_err(|e| e.to_string());
        Ok(Self { kbtf, offsets, tracefs_root, aya_btf, syscall_records })
    }

    /// Loads the object with `offsets` and attaches a strategy.
    fn load(
        &self,
        offsets: &unixpeer_common::KernelOffsets,
        opts: &CaptureOptions,
    ) -> Result<(Ebpf, Chosen), CaptureError> {
        let log_level: u8 = if opts.kernel_logs { 0xff } else { 0 };
        let object = object_for(&self.kbtf, offsets);
        let ring_bytes = u32::try_from(buffer_size(opts.buffer_size)).unwrap_or(1 << 31);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", ring_bytes)
            .override_global("OFFSETS", offsets, true)
            .override_global("FILTER", &kernel_filter(opts), true)
            .override_global("SYSCALL_RECORDS", &self.syscall_records.clone().unwrap_or_default(), true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(object.bytes())
            .map_err(load_error)?;
        drop(object);
        let chosen = backend::attach(
            &mut ebpf,
            &self.aya_btf,
            &self.kbtf,
            opts.backend,
            (&self.tracefs_root, self.syscall_records.as_ref().map(|_| ())),
        )?;
        Ok((ebpf, chosen))
    }

    /// Loads with the `bpf_rdonly_cast` walks where the kernel has the
    /// kfunc. They are only faster: should this kernel's verifier refuse
    /// them, the programs load again with probe reads, as on kernels
    /// before 6.2.
    fn load_with_fallback(&self, opts: &CaptureOptions) -> Result<(Ebpf, Chosen, Walks), CaptureError> {
        let mut offsets = self.offsets;
        if offsets.cast_loads == 0 {
            return self.load(&offsets, opts).map(|(e, c)| (e, c, Walks::ProbeReads));
        }
        match self.load(&offsets, opts) {
            Ok((e, c)) => Ok((e, c, Walks::Casts)),
            Err(CaptureError::Verifier { program, log_tail, .. }) => {
                log::info!(
                    "the verifier refused program `{program}` with bpf_rdonly_cast walks; loading again with \
                     probe reads. Its log ended:\n{log_tail}"
                );
                offsets.cast_loads = 0;
                self.load(&offsets, opts).map(|(e, c)| (e, c, Walks::ProbeReads))
            }
            Err(e) => Err(e),
        }
    }
}

/// How the programs read kernel memory past the task (see the eBPF
/// crate's `kernel` module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Walks {
    /// `bpf_rdonly_cast` and plain loads (6.2+).
    Casts,
    /// One `bpf_probe_read_kernel` per field.
    ProbeReads,
}

impl Capture {
    pub(crate) fn start(opts: &CaptureOptions) -> Result<Self, CaptureError> {
        privileges::check_capture()?;
        let setup = Setup::new()?;
        let (mut ebpf, chosen, walks) = setup.load_with_fallback(opts)?;
        log::debug!(
            "kernel pointer walks: {}",
            match walks {
                Walks::Casts => "bpf_rdonly_cast and plain loads",
                Walks::ProbeReads => "bpf_probe_read_kernel",
            }
        );
        let ring = RingBuf::try_from(ebpf.take_map("EVENTS").ok_or(CaptureError::MissingMap("EVENTS"))?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map("COUNTERS").ok_or(CaptureError::MissingMap("COUNTERS"))?)?;
        let logger = if opts.kernel_logs {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(register(l)?),
                Err(e) => {
                    log::warn!("kernel program logs unavailable: {e}");
                    None
                }
            }
        } else {
            None
        };
        let Setup { kbtf, aya_btf, .. } = setup;
        let traffic = if chosen.traffic.is_ok() { traffic::TrafficMap::new(&mut ebpf) } else { None };
        let dgram_pairs = if chosen.traffic.is_ok() { traffic::DgramPairs::new(&mut ebpf) } else { None };
        Ok(Self {
            ebpf,
            btf: aya_btf,
            kbtf,
            ring: register(ring)?,
            counters,
            logger,
            chosen,
            buffer_size: buffer_size(opts.buffer_size),
            buffer_requested: opts.buffer_size.is_some(),
            lost_seen: 0,
            missed_seen: 0,
            traffic,
            dgram_pairs,
        })
    }

    /// The kernel's per-socket counts, for the consumer: it infers some
    /// releases, and `--top` reads them all.
    pub(crate) fn take_traffic_map(&mut self) -> Option<traffic::TrafficMap> {
        self.traffic.take()
    }

    /// Every socket's counts now (none where nothing counts).
    pub(crate) fn traffic_now(&self) -> Vec<(u64, unixpeer_common::Traffic)> {
        self.traffic.as_ref().map(traffic::TrafficMap::read_all).unwrap_or_default()
    }

    /// Per (sender, receiver) counts of datagrams sent by address.
    pub(crate) fn take_dgram_pairs(&mut self) -> Option<traffic::DgramPairs> {
        self.dgram_pairs.take()
    }

    /// The ring buffer's size and where it came from, for `-v`.
    pub(crate) fn buffer_size_text(&self) -> String {
        let why = if self.buffer_requested {
            "--buffer-size, rounded up to a power of two".to_owned()
        } else {
            let cpus = aya::util::nr_cpus().map_or(1, |n| n.get());
            format!("{} MiB per CPU for {cpus} CPUs, within 8-256 MiB; --buffer-size to change", BUFFER_PER_CPU >> 20)
        };
        format!("{} KiB ({why})", self.buffer_size >> 10)
    }

    /// Waits until the ring buffer has data or the drain interval passed,
    /// then hands every record in it to `f`. Returns after one batch so the
    /// caller can check its stop conditions in between.
    ///
    /// The programs never wake us (see `submit` in the eBPF crate's emit.rs):
    /// the timer drains the ring buffer.
    pub(crate) async fn next_batch(&mut self, f: &mut dyn FnMut(&[u8])) -> Result<(), CaptureError> {
        let tick = tokio::time::sleep(DRAIN_INTERVAL);
        tokio::select! {
            g = self.ring.readable_mut() => g?.clear_ready(),
            _ = tick => {}
            lg = async {
                match self.logger.as_mut() {
                    Some(l) => l.readable_mut().await.map(|mut g| {
                        g.get_inner_mut().flush();
                        g.clear_ready();
                    }),
                    None => std::future::pending().await,
                }
            } => lg?,
        }
        self.drain_now(f);
        Ok(())
    }

    /// Drains whatever is already in the ring buffer, without waiting.
    pub(crate) fn drain_now(&mut self, f: &mut dyn FnMut(&[u8])) {
        if let Some(l) = self.logger.as_mut() {
            l.get_mut().flush();
        }
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            f(&item);
        }
    }

    /// Every socket fd of every process, from the iterator in this object.
    pub(crate) fn task_socket_fds(&mut self) -> Result<Vec<unixpeer_common::TaskSocketFd>, CaptureError> {
        iter::task_socket_fds(&mut self.ebpf, &self.btf, &self.kbtf)
    }

    /// The lost-event counters alone, shareable with another thread.
    pub(crate) fn lost_counters(&self) -> LostCounters<'_> {
        LostCounters(&self.counters)
    }

    /// Events the kernel could not queue since the last call.
    pub(crate) fn take_lost(&mut self) -> Result<u64, CaptureError> {
        let total: u64 = self.counters.get(&counter::LOST, 0)?.iter().sum();
        let new = total.saturating_sub(self.lost_seen);
        self.lost_seen = total;
        Ok(new)
    }

    /// Hook runs the kernel skipped since the last call (see `misses`): each
    /// may have been an event. 0 where the kernel does not count them.
    pub(crate) fn take_missed(&mut self) -> u64 {
        let Some(total) = misses::total(&self.ebpf) else { return 0 };
        let new = total.saturating_sub(self.missed_seen);
        self.missed_seen = total;
        new
    }
}

pub(crate) struct LostCounters<'a>(&'a PerCpuArray<MapData, u64>);

impl LostCounters<'_> {
    /// Whether the calling thread can read them.
    pub(crate) fn readable(&self) -> bool {
        self.0.get(&counter::LOST, 0).is_ok()
    }
}

fn register<T: AsRawFd>(inner: T) -> std::io::Result<AsyncFd<T>> {
    // SAFETY: both the ring buffer and the logger own their fd and keep it
    // open, unchanged, for as long as they live inside the AsyncFd.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }.map_err(|e| e.into_parts().1)
}

fn kernel_filter(opts: &CaptureOptions) -> KernelFilter {
    let mut f = KernelFilter::zeroed();
    f.pid = opts.pid.unwrap_or(0);
    f.self_pid = std::process::id();
    if let Some(comm) = &opts.comm {
        f.comm_enabled = 1;
        // The kernel keeps TASK_COMM_LEN - 1 bytes of a command name.
        let b = comm.as_bytes();
        let n = b.len().min(TASK_COMM_LEN - 1);
        f.comm[..n].copy_from_slice(&b[..n]);
        // The name and the NUL that ends it.
        f.comm_mask[..=n].fill(0xff);
    }
    f
}

/// The verifier log's tail: the lines that say what went wrong.
fn log_tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A load failure, told apart when the cause is the machine's limit on
/// locked memory rather than anything of ours.
pub(crate) fn load_error(e: aya::EbpfError) -> CaptureError {
    if let aya::EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) = &e
        && io_error.raw_os_error() == Some(libc::EPERM)
        && let Some(kib) = memlock_limit_kib()
    {
        return CaptureError::Memlock { kib };
    }
    CaptureError::Load(Box::new(e))
}

/// The locked-memory limit, unless it is unlimited.
fn memlock_limit_kib() -> Option<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills the struct it is given.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    (rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur / 1024)
}

/// `kernel.perf_event_paranoid`, when a refused perf_event_open in
/// `source` is explained by it: Debian's and Ubuntu's kernels add a level
/// 3 at which only CAP_SYS_ADMIN may open perf events.
fn paranoid_refusal(source: &ProgramError) -> Option<i32> {
    let refused = |s: &aya::sys::SyscallError| {
        s.call.starts_with("perf_event_open")
            && matches!(s.io_error.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
    };
    // `ProgramError::SyscallError` is transparent: its source skips it.
    let direct = matches!(source, ProgramError::SyscallError(s) if refused(s));
    let mut cur: Option<&dyn std::error::Error> = Some(source);
    let nested = std::iter::from_fn(|| {
        let e = cur?;
        cur = e.source();
        Some(e)
    })
    .filter_map(|e| e.downcast_ref::<aya::sys::SyscallError>())
    .any(refused);
    let level: i32 = std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").ok()?.trim().parse().ok()?;
    ((direct || nested) && level > 2).then_some(level)
}

pub(crate) fn program_error(program: &str, target: &str, source: ProgramError) -> CaptureError {
    if let Some(level) = paranoid_refusal(&source) {
        return CaptureError::PerfParanoid { program: program.to_owned(), target: target.to_owned(), level };
    }
    match source {
        // A refusal before verification (EPERM for a program type the
        // kernel forbids) leaves the log empty: that is a missing feature.
        ProgramError::LoadError { io_error, verifier_log } if !verifier_log.to_string().trim().is_empty() => {
            CaptureError::Verifier {
                program: program.to_owned(),
                io_error,
                log_tail: log_tail(&verifier_log.to_string()),
            }
        }
        source => {
            CaptureError::Program { program: program.to_owned(), target: target.to_owned(), source: Box::new(source) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads the real programs into this kernel, which takes root (or
    /// CAP_BPF and CAP_PERFMON) and BTF: CI runs the unit tests as root on
    /// a kernel with BTF; anywhere else the test says it checked nothing.
    /// Which walks load depends on the kernel, and the test expects what
    /// its BTF says.
    #[test]
    fn a_refused_cast_walk_loads_again_with_probe_reads() {
        if let Err(e) = privileges::check_capture() {
            crate::btf::tests::cannot_run(&format!("this test loads BPF programs. {e}"));
            return;
        }
        if crate::btf::tests::this_kernel().is_none() {
            return;
        }
        let mut setup = Setup::new().expect("BTF, offsets and tracefs of this kernel");
        let opts = CaptureOptions { backend: BackendChoice::Tracepoint, ..Default::default() };
        let expected = if setup.offsets.cast_loads != 0 { Walks::Casts } else { Walks::ProbeReads };
        let (ebpf, chosen, walks) = setup.load_with_fallback(&opts).expect("the programs load");
        // Skipped hook runs are read from every loaded program (0 before 5.12).
        assert!(misses::total(&ebpf).is_some(), "bpf_prog_info of our own programs");
        assert_eq!((chosen.backend, walks), (Strategy::Tracepoint, expected));

        // Walks that cast a `struct file *` to a 16-byte list_head read
        // outside it, which the verifier must refuse. Where the kernel
        // lacks bpf_rdonly_cast the casts become `r0 = r1`, and it refuses
        // loads through those untyped pointers just the same.
        setup.offsets.cast_loads = 1;
        setup.offsets.btf.file = setup.kbtf.struct_id("list_head").expect("struct list_head");
        match setup.load(&setup.offsets, &opts) {
            Err(CaptureError::Verifier { log_tail, .. }) => assert!(!log_tail.is_empty()),
            Err(e) => panic!("expected a verifier rejection, got: {e}"),
            Ok(_) => panic!("the verifier accepted loads outside struct list_head"),
        }
        let (_, chosen, walks) = setup.load_with_fallback(&opts).expect("the programs load again with probe reads");
        assert_eq!((chosen.backend, walks), (Strategy::Tracepoint, Walks::ProbeReads));
    }
}
