//! `cargo xtask vm-test`: boots Debian's cloud kernels in QEMU and runs the
//! integration suite inside each under every strategy the kernel supports.
//!
//! Everything it downloads or builds lives under `target/vm/`: `debs/` (kernel
//! packages, downloaded once), `kernels/<release>/` (image, config, modules),
//! `apt/` (a private Debian 11 source list), `initramfs/` and `logs/` (each
//! guest's console).

mod host;
mod initramfs;
mod kernel;
mod qemu;

use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use qemu::{Cell, Status};

/// Options of `cargo xtask vm-test`.
#[derive(Default)]
pub struct VmOpts {
    /// Series (`6.1`) or package names; empty means the default set.
    pub kernels: Vec<String>,
    /// Test the other kernels after one fails.
    pub keep_going: bool,
    /// Only the tests whose name contains this.
    pub filter: Option<String>,
}

/// The columns the guest reports, in table order (see `vm/init.sh`).
const COLUMNS: [&str; 5] = ["fentry", "kprobe", "tracepoint", "auto", "no-btf"];
/// Strategies every Debian cloud kernel has: "unsupported" there is a failure.
const REQUIRED: [&str; 3] = ["fentry", "kprobe", "tracepoint"];
/// Seconds one boot may take: a backstop for a hung guest, well above the 2 to 3
/// minutes one kernel's run takes under TCG (each test binary also has its own
/// timeout in `vm/init.sh`). Override with UNIXPEER_VM_TIMEOUT.
const DEFAULT_TIMEOUT_SECS: u64 = 1500;
/// Console lines shown when a guest fails.
const TAIL_LINES: usize = 60;
/// How one kernel's columns are split over boots, slowest first (under TCG,
/// about 200, 185, 125 and 125 s): each is a guest of its own, so that two
/// host cores share three kernels' twelve guests evenly instead of running
/// the third kernel alone after the first two, and the last guest to start
/// is a short one.
const BOOTS: [&str; 4] = ["kprobe", "fentry", "tracepoint", "auto,no-btf"];

/// One kernel's line in the results table.
struct Row {
    kernel: String,
    cells: Vec<Cell>,
    /// Why the kernel as a whole failed (setup, panic, timeout).
    problem: Option<String>,
    /// An optional kernel apt could not serve: reported, not failed.
    unavailable: Option<String>,
    elapsed: Option<Duration>,
}

impl Row {
    fn new(kernel: &str) -> Row {
        Row { kernel: kernel.to_string(), cells: Vec::new(), problem: None, unavailable: None, elapsed: None }
    }

    fn cell(&self, column: &str) -> Option<&Cell> {
        self.cells.iter().find(|c| c.column == column)
    }

    fn cell_failed(&self, column: &str) -> bool {
        match self.cell(column) {
            None => true,
            Some(c) => c.status == Status::Fail || (c.status == Status::Unsupported && REQUIRED.contains(&column)),
        }
    }

    fn failed(&self) -> bool {
        self.unavailable.is_none() && (self.problem.is_some() || COLUMNS.iter().any(|c| self.cell_failed(c)))
    }
}

pub fn run(workspace_root: &Path, opts: &VmOpts) -> Result<()> {
    let start = Instant::now();
    let vm_dir = workspace_root.join("target").join("vm");
    fs::create_dir_all(vm_dir.join("logs"))?;
    host::ensure_packages()?;
    let bins = initramfs::build_guest_binaries(workspace_root)?;
    let common = initramfs::common_archive(&vm_dir, &bins)?;
    let marker = random_marker()?;
    if let Some(f) = &opts.filter
        && (f.is_empty() || !f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'))
    {
        bail!(
            "--filter {f:?}: a test name or part of one (letters, digits, _ and ::), since it travels on the kernel command line"
        );
    }
    let mut cmdline = format!("UNIXPEER_MARKER={marker}");
    if let Some(f) = &opts.filter {
        cmdline.push_str(&format!(" UNIXPEER_FILTER={f}"));
    }
    let timeout = boot_timeout()?;
    let requests = if opts.kernels.is_empty() { kernel::default_requests() } else { opts.kernels.clone() };
    // Downloads and initramfs builds one at a time (apt and the cache are
    // shared), then the guests side by side: single-threaded TCG keeps each
    // on one host core, so N cores run N guests at the speed of one.
    let mut rows = Vec::new();
    let mut ready = Vec::new();
    for request in &requests {
        match prepare(&vm_dir, &common, request) {
            Ok(guest) => ready.push(guest),
            Err(row) => {
                let failed = row.failed();
                rows.push(row);
                if failed && !opts.keep_going {
                    break;
                }
            }
        }
    }
    if rows.iter().all(|r| !r.failed()) || opts.keep_going {
        let slots = parallel_guests(ready.len() * BOOTS.len())?;
        eprintln!("vm-test: {} kernels in {} guests, {slots} at a time", ready.len(), ready.len() * BOOTS.len());
        rows.extend(boot_all(&vm_dir, ready, slots, (marker.as_str(), cmdline.as_str()), timeout, opts.keep_going));
    }
    print_table(&rows);
    eprintln!("vm-test: {:.0} s in all", start.elapsed().as_secs_f64());
    let failed: Vec<&str> = rows.iter().filter(|r| r.failed()).map(|r| r.kernel.as_str()).collect();
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    if rows.len() < requests.len() {
        bail!("vm-test stopped early");
    }
    Ok(())
}

/// Boots each of `requests` in turn to run the helper binary `helper` of
/// unixpeer-tests instead of the tests: its guest path goes on the command
/// line as `{var}=PATH`, with `extra`, for the guest's init. Returns, per
/// kernel, its release and the lines the guest marked `tag`. The guest's
/// clocks count instructions (`GuestClock::Instructions`): the helpers
/// measure.
pub fn collect(
    workspace_root: &Path,
    requests: &[String],
    (helper, var, extra): (&str, &str, &str),
    tag: &str,
) -> Result<Vec<(String, Vec<String>)>> {
    let vm_dir = workspace_root.join("target").join("vm");
    fs::create_dir_all(vm_dir.join("logs"))?;
    host::ensure_packages()?;
    let bins = initramfs::build_guest_binaries(workspace_root)?;
    let path = bins
        .helpers
        .iter()
        .find(|p| p.file_name().is_some_and(|n| n == helper))
        .with_context(|| format!("cargo built no {helper} for the guests"))?;
    let common = initramfs::common_archive(&vm_dir, &bins)?;
    let marker = random_marker()?;
    let cmdline = format!("UNIXPEER_MARKER={marker} {var}={} {extra}", path.display());
    let timeout = boot_timeout()?;
    let mut out = Vec::new();
    for request in requests {
        let guest = match prepare(&vm_dir, &common, request) {
            Ok(g) => g,
            Err(row) => bail!("kernel {request}: {}", row.problem.or(row.unavailable).unwrap_or_default()),
        };
        let log = vm_dir.join("logs").join(format!("{}-{tag}.log", guest.kernel.release));
        let boot = qemu::boot(
            &guest.kernel,
            &guest.initrd,
            (&marker, &cmdline),
            &log,
            timeout,
            qemu::GuestClock::Instructions,
        )?;
        if let Some(problem) = boot.problem {
            print_tail(&log);
            bail!("{}: {problem}", guest.kernel.release);
        }
        let prefix = format!("@@UNIXPEER {marker} {tag} ");
        let text = fs::read_to_string(&log)?;
        let lines = text.lines().filter_map(|l| l.split_once(&prefix).map(|(_, r)| r.to_string())).collect();
        out.push((guest.kernel.release.clone(), lines));
    }
    Ok(out)
}

/// A kernel ready to boot.
struct Guest {
    kernel: kernel::Kernel,
    initrd: std::path::PathBuf,
}

/// Downloads and unpacks one kernel and builds its initramfs; a kernel that
/// cannot be tested comes back as its finished row.
fn prepare(vm_dir: &Path, common: &Path, request: &str) -> Result<Guest, Row> {
    let mut row = Row::new(request);
    let kernel = match kernel::prepare(vm_dir, request) {
        Ok(kernel::Prepared::Ready(k)) => k,
        Ok(kernel::Prepared::Unavailable(why)) => {
            eprintln!("vm-test: kernel {request} is not available: {why}");
            row.unavailable = Some(why);
            return Err(row);
        }
        Err(e) => {
            row.problem = Some(format!("{e:#}"));
            return Err(row);
        }
    };
    match initramfs::kernel_initrd(vm_dir, common, &kernel) {
        Ok(initrd) => Ok(Guest { kernel, initrd }),
        Err(e) => {
            row.kernel = kernel.release.clone();
            row.problem = Some(format!("{e:#}"));
            Err(row)
        }
    }
}

/// How many guests run at once: one per host core unless
/// UNIXPEER_VM_PARALLEL says otherwise.
fn parallel_guests(kernels: usize) -> Result<usize> {
    let n = match std::env::var("UNIXPEER_VM_PARALLEL") {
        Ok(s) => s.parse().context("UNIXPEER_VM_PARALLEL is a number of guests")?,
        Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(n.clamp(1, kernels.max(1)))
}

/// Boots every guest's kernel once per entry of [`BOOTS`], `slots` at a time,
/// and returns one row per kernel, in the order given. Without `keep_going`,
/// no new boot starts after a failure. `marker` tags the guest's report lines;
/// `cmdline` carries it and the filter.
fn boot_all(
    vm_dir: &Path,
    guests: Vec<Guest>,
    slots: usize,
    (marker, cmdline): (&str, &str),
    timeout: Duration,
    keep_going: bool,
) -> Vec<Row> {
    // The slowest group of every kernel first, so that the short ones fill
    // in at the end.
    let jobs = BOOTS.iter().flat_map(|columns| (0..guests.len()).map(move |i| (i, *columns)));
    // The timeline tests test the file format, replay and export, above the
    // capture layer (init.sh, `ONCE`): the host runs them on its kernel and
    // the oldest guest on its own, where the recordings differ most.
    let oldest = (0..guests.len()).min_by_key(|&i| kernel_version(&guests[i].kernel.release));
    let queue = std::sync::Mutex::new(jobs.collect::<std::collections::VecDeque<_>>());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let parts: Vec<(usize, Row)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..slots)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        let Some((i, columns)) = queue.lock().map_or(None, |mut q| q.pop_front()) else { break };
                        let timeline = if Some(i) == oldest { " UNIXPEER_TIMELINE=1" } else { "" };
                        let cmdline = format!("{cmdline}{timeline}");
                        let row = boot_one(vm_dir, &guests[i], columns, (marker, &cmdline), timeout);
                        let failed = row.problem.is_some() || row.cells.iter().any(|c| c.status == Status::Fail);
                        if failed && !keep_going {
                            stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        done.push((i, row));
                    }
                    done
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    });
    let mut rows: Vec<Row> = guests.iter().map(|g| Row::new(&g.kernel.release)).collect();
    for (i, part) in parts {
        let row = &mut rows[i];
        row.cells.extend(part.cells);
        row.problem = match (row.problem.take(), part.problem) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        row.elapsed = Some(row.elapsed.unwrap_or_default() + part.elapsed.unwrap_or_default());
    }
    rows
}

/// (major, minor) of a kernel release such as `5.10.0-46-cloud-amd64`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// One boot of `guest` running `columns` (comma-separated), its console in
/// `logs/RELEASE-FIRSTCOLUMN.log`.
fn boot_one(vm_dir: &Path, guest: &Guest, columns: &str, (marker, cmdline): (&str, &str), timeout: Duration) -> Row {
    let mut row = Row::new(&guest.kernel.release);
    let first = columns.split(',').next().unwrap_or(columns);
    let log = vm_dir.join("logs").join(format!("{}-{first}.log", guest.kernel.release));
    let cmdline = format!("{cmdline} UNIXPEER_COLUMNS={columns}");
    match qemu::boot(&guest.kernel, &guest.initrd, (marker, &cmdline), &log, timeout, qemu::GuestClock::Host) {
        Ok(boot) => {
            row.cells = boot.cells;
            row.problem = boot.problem;
            row.elapsed = Some(boot.elapsed);
        }
        Err(e) => row.problem = Some(format!("{e:#}")),
    }
    // A flaky test's first failure is printed too: it passed, but someone
    // should look at why it failed. Columns another boot runs are not
    // missing here.
    let failed = row.problem.is_some() || columns.split(',').any(|c| row.cell_failed(c));
    if failed || row.cells.iter().any(|c| c.reason.contains("flaky")) {
        print_tail(&log);
    }
    row
}

/// What a failed guest printed about its failures: every failed test
/// binary's `failures:` section (see `run_suite` in `vm/init.sh`), which
/// the tail alone cut off whenever a later column printed more; then the
/// log's last lines, for a boot that went wrong before or after the tests.
fn print_tail(log: &Path) {
    let Ok(text) = fs::read_to_string(log) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut in_failure = false;
    for line in &lines {
        let line = line.trim_end();
        if line.starts_with("---- ") && line.contains(" exited ") && line.ends_with("its failures:") {
            in_failure = true;
            eprintln!("---- from {}:", log.display());
        }
        if in_failure {
            eprintln!("{line}");
            in_failure = line != "----";
        }
    }
    let from = lines.len().saturating_sub(TAIL_LINES);
    eprintln!("---- last {} lines of {} ----", lines.len() - from, log.display());
    for line in &lines[from..] {
        eprintln!("{line}");
    }
    eprintln!("---- end of {} ----", log.display());
}

fn random_marker() -> Result<String> {
    let mut bytes = [0u8; 8];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn boot_timeout() -> Result<Duration> {
    let secs = match std::env::var("UNIXPEER_VM_TIMEOUT") {
        Ok(s) => s.parse().context("UNIXPEER_VM_TIMEOUT is a number of seconds")?,
        Err(_) => DEFAULT_TIMEOUT_SECS,
    };
    Ok(Duration::from_secs(secs))
}

fn cell_text(row: &Row, column: &str) -> &'static str {
    match row.cell(column).map(|c| c.status) {
        _ if row.unavailable.is_some() => "n/a",
        None => "-",
        Some(Status::Pass) => "pass",
        Some(Status::Fail) => "FAIL",
        Some(Status::Unsupported) if row.cell_failed(column) => "UNSUPPORTED",
        Some(Status::Unsupported) => "unsupported",
    }
}

/// The kernel × column table, then every reason.
fn print_table(rows: &[Row]) {
    let width = rows.iter().map(|r| r.kernel.len()).max().unwrap_or(6).max(6);
    let mut header = format!("{:width$}", "kernel");
    for c in COLUMNS {
        header.push_str(&format!("  {c:11}"));
    }
    println!("\nvm-test results\n{header}  guests' time");
    for row in rows {
        let mut line = format!("{:width$}", row.kernel);
        for c in COLUMNS {
            line.push_str(&format!("  {:11}", cell_text(row, c)));
        }
        match row.elapsed {
            Some(t) => line.push_str(&format!("  {:.1} s", t.as_secs_f64())),
            None => line.push_str("  -"),
        }
        println!("{line}");
    }
    println!();
    for row in rows {
        if let Some(why) = &row.unavailable {
            println!("{}: not available: {why}", row.kernel);
        }
        if let Some(why) = &row.problem {
            println!("{}: FAILED: {why}", row.kernel);
        }
        for c in &row.cells {
            println!("{} {}: {}", row.kernel, c.column, c.summary());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_version;

    #[test]
    fn kernel_versions_order_as_numbers() {
        assert_eq!(kernel_version("5.10.0-46-cloud-amd64"), (5, 10));
        assert_eq!(kernel_version("6.12.118+deb12-cloud-amd64"), (6, 12));
        assert!(kernel_version("5.10.0-46-cloud-amd64") < kernel_version("6.1.0-57-cloud-amd64"));
        assert!(kernel_version("6.1.0-57-cloud-amd64") < kernel_version("6.12.118+deb12-cloud-amd64"));
    }
}
