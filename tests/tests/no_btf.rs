//! A kernel without BTF must get a clear error from unixtrace, not a verifier dump.
//!
//! Debian ships no kernel without BTF, so `cargo xtask vm-test` hides
//! `/sys/kernel/btf/vmlinux` in one guest run and sets `UNIXTRACE_EXPECT_NO_BTF=1`;
//! everywhere else this test is skipped.

use std::process::Command;

#[test]
fn no_btf_error() {
    if std::env::var_os("UNIXTRACE_EXPECT_NO_BTF").is_none_or(|v| v != "1") {
        eprintln!("skipped: run by vm-test with BTF hidden (UNIXTRACE_EXPECT_NO_BTF=1)");
        return;
    }
    assert!(
        !std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        "the harness was to hide /sys/kernel/btf/vmlinux"
    );
    let bin = std::env::var("UNIXTRACE_BIN").expect("UNIXTRACE_BIN names the unixtrace binary");
    let out =
        Command::new(&bin).args(["--follow", "--duration", "1"]).output().unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "unixtrace without BTF must exit 1; stderr: {stderr}");
    assert!(
        stderr.contains("BTF") && stderr.contains("/sys/kernel/btf/vmlinux"),
        "the error must name BTF and /sys/kernel/btf/vmlinux; stderr: {stderr}"
    );
    assert!(!stderr.contains("verifier"), "a missing BTF must not surface as a verifier dump; stderr: {stderr}");
}
