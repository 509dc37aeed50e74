//! Host side helpers: running commands and installing what vm-test needs.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The toolchain the workspace needs (xtask itself builds with the default one).
pub const TOOLCHAIN: &str = "+1.99";
/// Guest binaries are static musl executables: no libc to copy into the initramfs.
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// Debian packages the host needs, with a binary each provides.
const HOST_PACKAGES: [(&str, &str); 4] = [
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("cpio", "/usr/bin/cpio"),
    ("xz-utils", "/usr/bin/xz"),
];

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with inherited stdout/stderr and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("start `{}`", describe(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; stderr goes to ours.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", describe(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", describe(cmd)))
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// `apt-get update` of the system lists, for when a package or kernel is not found.
pub fn apt_update() -> Result<()> {
    run(Command::new("apt-get").args(["-q", "update"]).stdout(std::io::stderr()))
}

/// Installs qemu, busybox-static, cpio and xz-utils when missing (needs root, as in CI).
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(pkg, bin)| !package_installed(pkg) || !std::path::Path::new(bin).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("vm-test needs {}: run `apt-get install {}` as root", missing.join(", "), missing.join(" "));
    }
    eprintln!("vm-test: installing {}", missing.join(" "));
    let install = || {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["-q", "install", "-y", "--no-install-recommends"])
            .args(&missing)
            .stdout(std::io::stderr()))
    };
    install().or_else(|_| {
        apt_update()?;
        install()
    })
}

/// Adds the musl target to the pinned toolchain when missing.
pub fn ensure_musl_target() -> Result<()> {
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed", "--toolchain", &TOOLCHAIN[1..]]))?;
    if installed.lines().any(|l| l.trim() == MUSL) {
        return Ok(());
    }
    run(Command::new("rustup").args(["target", "add", "--toolchain", &TOOLCHAIN[1..], MUSL]))
}
