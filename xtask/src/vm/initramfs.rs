//! The guest's initramfs: a busybox init script, the test binaries and
//! `unixtrace` as `cargo xtask test` built them for the host's own tests, and
//! the host's `ss` and `lsof`, each with its shared libraries (shared by every
//! kernel), then per kernel its config and modules.
//! Linux unpacks concatenated cpio archives in order, so each kernel's initrd is the
//! common archive followed by its own small one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::host::{self, TOOLCHAIN};
use super::kernel::Kernel;

/// PID 1 in the guest.
const INIT: &str = include_str!("init.sh");

/// Host programs the tests run in the guest: the snapshot test's ground truth
/// (`ss -xap`, `lsof +E -U`). The real tools, not busybox look-alikes.
const HOST_TOOLS: [&str; 2] = ["ss", "lsof"];

/// What goes into every guest.
pub struct GuestBinaries {
    /// `(target name, executable)` of every integration test of `unixpeer-tests`.
    pub tests: Vec<(String, PathBuf)>,
    /// Binaries of `unixpeer-tests` that tests find through `CARGO_BIN_EXE_*`: placed
    /// in the guest at the same absolute path as on the host.
    pub helpers: Vec<PathBuf>,
    pub unixtrace: PathBuf,
}

/// `(target name, executable)` of the artifacts of `kind` in cargo's JSON messages.
fn executables(json: &str, kind: &str) -> Vec<(String, PathBuf)> {
    let field = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!("\"{key}\":\""))? + key.len() + 4;
        let end = start + line[start..].find('"')?;
        Some(line[start..end].to_string())
    };
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| l.contains(&format!("\"target\":{{\"kind\":[\"{kind}\"]")))
        .filter_map(|l| {
            let target = &l[l.find("\"target\":")?..];
            Some((field(target, "name")?, PathBuf::from(field(l, "executable")?)))
        })
        .collect()
}

/// The same commands, flags and target as the host's integration tests
/// (`cargo xtask test`), so that in CI the guests reuse their build.
fn cargo_json(root: &Path, args: &[&str]) -> Result<String> {
    host::output(Command::new("cargo").current_dir(root).arg(TOOLCHAIN).args(args).args([
        "--release",
        "--locked",
        "--message-format=json-render-diagnostics",
    ]))
}

/// Integration tests the guests do not run: `metrics` needs Debian's
/// Prometheus server, which the guests do not carry, and tests nothing below
/// the consumer (the capture it reads from is `live`'s, run in every column).
const HOST_ONLY: &[&str] = &["dbus", "metrics", "capture", "traffic_tools", "pass_fd_python"];

/// Builds the integration tests and `unixtrace` for the host (the guests get
/// their shared libraries too: `copy_with_libraries`).
pub fn build_guest_binaries(root: &Path) -> Result<GuestBinaries> {
    let json = cargo_json(root, &["test", "-p", "unixpeer-tests", "--no-run"])?;
    let tests: Vec<_> =
        executables(&json, "test").into_iter().filter(|(name, _)| !HOST_ONLY.contains(&name.as_str())).collect();
    if tests.is_empty() {
        bail!("cargo built no integration test of unixpeer-tests");
    }
    let helpers = executables(&json, "bin").into_iter().map(|(_, exe)| exe).collect();
    let json = cargo_json(root, &["build", "--bins", "-p", "unixpeer-user", "-p", "unixpeer-tests"])?;
    let (_, unixtrace) = executables(&json, "bin")
        .into_iter()
        .find(|(name, _)| name == "unixtrace")
        .context("cargo built no unixtrace binary")?;
    Ok(GuestBinaries { tests, helpers, unixtrace })
}

fn copy_into(src: &Path, dest: &Path) -> Result<()> {
    fs::create_dir_all(dest.parent().context("destination has a parent")?)?;
    fs::copy(src, dest).with_context(|| format!("copy {} to {}", src.display(), dest.display()))?;
    Ok(())
}

/// Copies the program `exe` into `root` at `dest`, with every shared
/// library it loads (the dynamic loader included) at their host paths; the
/// guest's glibc loader finds them in its built-in directories without an
/// ld.so.cache.
fn copy_with_libraries(root: &Path, exe: &Path, dest: &Path) -> Result<()> {
    copy_into(exe, &root.join(dest.strip_prefix("/").unwrap_or(dest)))?;
    for lib in host::shared_libraries(exe)? {
        let at = root.join(lib.strip_prefix("/")?);
        if !at.exists() {
            // fs::copy follows links: a library's soname link becomes a plain file.
            copy_into(&lib, &at)?;
        }
    }
    Ok(())
}

/// The host's program `name`, at its host path, with its libraries.
fn copy_host_binary(root: &Path, name: &str) -> Result<()> {
    let exe = host::host_binary(name).with_context(|| format!("the host has no `{name}`"))?;
    copy_with_libraries(root, &exe, &exe)
}

/// Packs the directory `staging` into a gzip-compressed newc cpio archive `out`.
fn pack(staging: &Path, out: &Path) -> Result<()> {
    host::run(
        Command::new("bash")
            .current_dir(staging)
            .args([
                "-o",
                "pipefail",
                "-c",
                "find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -1 > \"$0\"",
            ])
            .arg(out),
    )
}

/// A fresh, empty staging directory.
fn staging(dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

/// The archive every kernel shares: init, busybox, unixtrace and the test binaries.
pub fn common_archive(vm_dir: &Path, bins: &GuestBinaries) -> Result<PathBuf> {
    let root = staging(&vm_dir.join("initramfs").join("common"))?;
    for dir in ["proc", "sys", "dev", "tmp", "run", "etc", "boot", "lib/modules"] {
        fs::create_dir_all(root.join(dir))?;
    }
    // Enough for tools that look up user and group names.
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    copy_into(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    copy_with_libraries(&root, &bins.unixtrace, Path::new("/bin/unixtrace"))?;
    for tool in HOST_TOOLS {
        copy_host_binary(&root, tool)?;
    }
    for (name, exe) in &bins.tests {
        copy_with_libraries(&root, exe, &Path::new("/tests").join(name))?;
    }
    for exe in &bins.helpers {
        copy_with_libraries(&root, exe, exe)?;
    }
    let out = vm_dir.join("initramfs").join("common.cpio.gz");
    pack(&root, &out)?;
    Ok(out)
}

/// The common archive followed by the kernel's config and modules: its initrd.
pub fn kernel_initrd(vm_dir: &Path, common: &Path, kernel: &Kernel) -> Result<PathBuf> {
    let base = vm_dir.join("initramfs");
    let root = staging(&base.join(&kernel.release))?;
    copy_into(&kernel.config(), &root.join("boot/config"))?;
    let mut order = String::new();
    for ko in kernel.modules()? {
        let file = ko.file_name().context("module file name")?;
        copy_into(&ko, &root.join("lib/modules").join(file))?;
        order.push_str(&format!("/lib/modules/{}\n", file.to_string_lossy()));
    }
    fs::create_dir_all(root.join("etc"))?;
    fs::write(root.join("etc/modules"), order)?;
    let own = base.join(format!("{}.cpio.gz", kernel.release));
    pack(&root, &own)?;
    let initrd = base.join(format!("{}.initrd", kernel.release));
    let mut bytes = fs::read(common)?;
    bytes.extend(fs::read(&own)?);
    fs::write(&initrd, bytes)?;
    Ok(initrd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_executables_in_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"crate_types":["lib"],"name":"unixpeer_tests","test":true},"executable":"/t/deps/unixpeer_tests-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"crate_types":["bin"],"name":"vm_smoke","test":true},"profile":{"test":true},"executable":"/t/deps/vm_smoke-3c8","fresh":true}
{"reason":"compiler-artifact","target":{"kind":["custom-build"],"name":"build-script-build"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executables(json, "test"), [("vm_smoke".to_string(), PathBuf::from("/t/deps/vm_smoke-3c8"))]);
    }
}
