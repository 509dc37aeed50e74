//! Placeholder that proves the QEMU harness (`cargo xtask vm-test`) end to end:
//! a test binary runs in the guest and sees what unixtrace needs.
//! On the host it checks only what any Linux machine has.

use std::path::Path;

use unixpeer_tests::tools::in_vm;

#[test]
fn socketpair_works() {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for socketpair to fill.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
    for fd in fds {
        // SAFETY: both descriptors were just returned by socketpair and are owned here.
        unsafe { libc::close(fd) };
    }
}

#[test]
fn guest_has_what_unixtrace_needs() {
    if !in_vm() {
        eprintln!("skipped: only checked inside the vm-test guest (UNIXPEER_IN_VM=1)");
        return;
    }
    assert!(Path::new("/sys/kernel/btf/vmlinux").exists(), "no BTF");
    assert!(Path::new("/sys/module/unix_diag").exists(), "unix_diag is not loaded");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    for (fs, dir) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mounted = mounts.lines().any(|l| {
            let mut f = l.split(' ');
            f.next();
            f.next() == Some(dir) && f.next() == Some(fs)
        });
        assert!(mounted, "{fs} is not mounted on {dir}");
    }
    let bin = std::env::var("UNIXTRACE_BIN").expect("UNIXTRACE_BIN is set in the guest");
    assert!(Path::new(&bin).is_file(), "{bin} is missing");
}
