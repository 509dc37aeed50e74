//! Host side helpers: running commands and installing what vm-test needs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The toolchain the workspace needs (xtask itself builds with the default one).
pub const TOOLCHAIN: &str = "+1.99";

/// Debian packages the host needs, with the name of a program each provides.
/// `ss` and `lsof` are the ground truth of the snapshot tests: the guest runs the
/// host's own binaries (see `initramfs::copy_host_binary`).
const HOST_PACKAGES: [(&str, &str); 6] = [
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("cpio", "cpio"),
    ("xz-utils", "xz"),
    ("iproute2", "ss"),
    ("lsof", "lsof"),
];

/// Where Debian installs programs, searched in this order. On a merged-/usr host
/// `/bin` is a link to `/usr/bin`, so the `/usr` path comes first.
const BIN_DIRS: [&str; 4] = ["/usr/bin", "/usr/sbin", "/bin", "/sbin"];

/// The host's program `name` in one of [`BIN_DIRS`].
pub fn host_binary(name: &str) -> Option<PathBuf> {
    BIN_DIRS.iter().map(|d| Path::new(d).join(name)).find(|p| p.is_file())
}

/// Absolute paths of the shared libraries `exe` loads, the dynamic loader
/// included, as the host's `ldd` resolves them; empty for a static executable.
pub fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(exe).output().context("start ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("`ldd {}` failed: {}", exe.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_ldd(&text).with_context(|| format!("`ldd {}`", exe.display()))
}

/// The library paths in `ldd` output: `name => /path (addr)` and the loader's
/// `/path (addr)`; the vDSO (`linux-vdso.so.1 (addr)`) has no file.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if target.starts_with("not found") {
            bail!("library missing on the host: {line}");
        }
        let path = target.split(" (").next().unwrap_or(target).trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

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

/// Installs the [`HOST_PACKAGES`] that are missing (needs root, as in CI).
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(pkg, bin)| !package_installed(pkg) || host_binary(bin).is_none())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f47)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f47)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"), PathBuf::from("/lib64/ld-linux-x86-64.so.2")]
        );
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }
}
