//! `cargo xtask package`: the Debian package, assembled here and built by
//! `dpkg-deb` (no cargo-deb to install), and the CI check that installs it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    run::{build_example, build_unixtrace},
    util::{apt_install, is_root, output, run as sh, show},
};

const NAME: &str = "unixtrace";
const MAINTAINER: &str = "unixtrace developers <unixtrace@example.invalid>";

/// What the package installs, by where it comes from: the release build, the
/// `dist_assets` example's output, or `deploy/`.
enum Source {
    Binary,
    Asset(&'static str),
    Deploy(&'static str),
}

/// (path in the package, source, mode). The man pages are not listed: they
/// are whatever `*.8` the example wrote (`unixtrace.8`, `unixtrace-export.8`, ...).
const FILES: &[(&str, Source, u32)] = &[
    ("usr/bin/unixtrace", Source::Binary, 0o755),
    ("usr/share/bash-completion/completions/unixtrace", Source::Asset("unixtrace.bash"), 0o644),
    ("usr/share/zsh/vendor-completions/_unixtrace", Source::Asset("_unixtrace"), 0o644),
    ("usr/share/fish/vendor_completions.d/unixtrace.fish", Source::Asset("unixtrace.fish"), 0o644),
    ("usr/lib/systemd/system/unixtrace.service", Source::Deploy("systemd/unixtrace.service"), 0o644),
    ("etc/default/unixtrace", Source::Deploy("systemd/unixtrace.default"), 0o644),
];
const CONFFILES: &[&str] = &["/etc/default/unixtrace"];
const SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];
const MAN_DIR: &str = "usr/share/man/man8";

/// Builds the release binary and the .deb; returns the .deb's path.
pub fn package(root: &Path) -> Result<PathBuf> {
    // dpkg-shlibdeps computes Depends from the libraries the binary links.
    apt_install(&["dpkg-dev"])?;
    let bin = build_unixtrace(root)?;
    let assets_tool = build_example(root, "unixpeer-user", "dist_assets")?;
    let work = root.join("target/package");
    let assets = work.join("assets");
    reset_dir(&assets)?;
    let listed = output(Command::new(&assets_tool).arg(&assets))
        .with_context(|| format!("`{} {}` failed", assets_tool.display(), assets.display()))?;

    let version = binary_version(&bin)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .context("`dpkg --print-architecture` failed: is this Debian?")?;
    let tree = work.join(format!("{NAME}_{version}_{arch}"));
    reset_dir(&tree)?;

    for (dest, source, mode) in FILES {
        let from = match source {
            Source::Binary => bin.clone(),
            Source::Asset(name) => assets.join(name),
            Source::Deploy(path) => root.join("deploy").join(path),
        };
        install_file(&tree, &from, &tree.join(dest), *mode)?;
    }
    // Man pages: gzip -9n, as Debian ships them (no name or time inside).
    for page in listed.lines().filter(|l| l.ends_with(".8")) {
        let gz = tree.join(MAN_DIR).join(format!("{page}.gz"));
        make_dirs(&tree, &tree.join(MAN_DIR))?;
        let out =
            Command::new("gzip").args(["-9n", "-c"]).arg(assets.join(page)).output().context("could not run gzip")?;
        ensure!(out.status.success(), "gzip {page} failed");
        fs::write(&gz, out.stdout).with_context(|| format!("cannot write {}", gz.display()))?;
        fs::set_permissions(&gz, fs::Permissions::from_mode(0o644))?;
    }

    let debian = tree.join("DEBIAN");
    make_dirs(&tree, &debian)?;
    for script in SCRIPTS {
        install_file(&tree, &root.join("deploy/debian").join(script), &debian.join(script), 0o755)?;
    }
    let conffiles: String = CONFFILES.iter().map(|c| format!("{c}\n")).collect();
    write_file(&debian.join("conffiles"), &conffiles)?;
    write_file(&debian.join("md5sums"), &md5sums(&tree)?)?;
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {size}\n\
         Depends: {depends}\n\
         Section: admin\n\
         Priority: optional\n\
         Description: who talks to whom over UNIX-domain sockets\n \
         unixtrace lists every UNIX socket on the host (stream, seqpacket, dgram;\n \
         path, abstract and unnamed) with both ends of every connection named:\n \
         pid, command, fd and every process holding each end. With --follow it\n \
         reports each connect, accept, socketpair and close as it happens, from\n \
         eBPF programs in the kernel (Linux 5.8 or newer with BTF).\n \
         .\n \
         This package also ships the man page, bash, zsh and fish completions\n \
         and unixtrace.service, which is not enabled on install.\n",
        size = installed_size_kib(&tree)?,
        depends = depends(&work, &tree.join("usr/bin/unixtrace"))?,
    );
    write_file(&debian.join("control"), &control)?;

    let deb = work.join(format!("{NAME}_{version}_{arch}.deb"));
    sh(Command::new("dpkg-deb").args(["--build", "--root-owner-group"]).arg(&tree).arg(&deb))?;
    Ok(deb)
}

/// The version the binary says it is (`unixtrace 0.1.0`): the workspace's.
fn binary_version(bin: &Path) -> Result<String> {
    let out =
        output(Command::new(bin).arg("--version")).with_context(|| format!("`{} --version` failed", bin.display()))?;
    out.trim()
        .strip_prefix(&format!("{NAME} "))
        .map(str::to_owned)
        .with_context(|| format!("unexpected version line {out:?}"))
}

/// `Depends:` as dpkg-shlibdeps derives it from the binary's libraries and
/// the symbol versions it uses (`libc6 (>= 2.34), libgcc-s1 (>= 4.2)`).
/// It wants a debian/control beside it; an empty one will do.
fn depends(work: &Path, bin: &Path) -> Result<String> {
    let dir = work.join("shlibdeps");
    reset_dir(&dir.join("debian"))?;
    write_file(&dir.join("debian/control"), "")?;
    let mut c = Command::new("dpkg-shlibdeps");
    c.current_dir(&dir).arg("-O").arg(bin);
    let out = output(&mut c).with_context(|| format!("`{}` failed", show(&c)))?;
    out.lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .map(|d| d.trim().to_owned())
        .filter(|d| d.contains("libc6"))
        .with_context(|| format!("dpkg-shlibdeps said {out:?}"))
}

fn installed_size_kib(tree: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    for top in ["usr", "etc"] {
        walk(&tree.join(top), &mut total)?;
    }
    Ok(total)
}

/// DEBIAN/md5sums: every file under usr/ (conffiles are checked by dpkg itself).
fn md5sums(tree: &Path) -> Result<String> {
    let mut c = Command::new("sh");
    c.current_dir(tree).args(["-c", "find usr -type f | LC_ALL=C sort | xargs md5sum"]);
    output(&mut c).context("md5sum over the package tree failed")
}

fn reset_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Creates `dir` and its parents up to `tree`, each 0755 whatever the umask.
fn make_dirs(tree: &Path, dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut d = dir;
    while d != tree {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        d = d.parent().context("path outside the package tree")?;
    }
    Ok(())
}

/// Copies `from` to `to`, a path inside `tree`, with `mode`.
fn install_file(tree: &Path, from: &Path, to: &Path, mode: u32) -> Result<()> {
    make_dirs(tree, to.parent().unwrap_or(tree))?;
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// `Command::new(program)`, through sudo when not root: dpkg -i and -r.
fn as_root(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

/// The CI check of the package: builds it, installs it with `dpkg -i`,
/// uses what it installed (binary, man page, bash completion, unit), then
/// removes it and checks it is gone. Fails on the first failure, after
/// removing the package.
pub fn check(root: &Path) -> Result<()> {
    // `man -l` renders the page; zsh and fish load their completions.
    apt_install(&["man-db", "zsh", "fish"])?;
    let deb = package(root)?;
    let version = output(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg("Version"))
        .map(|v| v.trim().to_owned())
        .context("dpkg-deb -f VERSION failed")?;
    if output(Command::new("dpkg-query").args(["-W", "-f=${Status}", NAME])).is_some_and(|s| s.contains("installed")) {
        eprintln!("xtask: note: {NAME} is already installed; this check replaces it and removes it at the end");
    }
    sh(as_root("dpkg").arg("-i").arg(&deb))?;
    let checked = check_installed(&version);
    let removed = sh(as_root("dpkg").args(["-r", NAME])).and_then(|()| {
        let man = format!("{MAN_DIR}/{NAME}.8.gz");
        for dest in FILES.iter().map(|(d, _, _)| *d).filter(|d| !d.starts_with("etc/")).chain([man.as_str()]) {
            ensure!(!Path::new("/").join(dest).exists(), "/{dest} is still there after dpkg -r");
        }
        // The conffile stays until purge.
        sh(as_root("dpkg").args(["--purge", NAME]))?;
        ensure!(!Path::new("/etc/default/unixtrace").exists(), "dpkg --purge left /etc/default/unixtrace");
        eprintln!("xtask: removed and purged: /usr/bin/unixtrace, the unit and /etc/default/unixtrace are gone");
        Ok(())
    });
    checked.and(removed)
}

fn check_installed(version: &str) -> Result<()> {
    for (dest, _, _) in FILES {
        ensure!(Path::new("/").join(dest).is_file(), "the package did not install /{dest}");
    }
    let man = format!("/{MAN_DIR}/{NAME}.8.gz");
    ensure!(
        Path::new(&man).is_file(),
        "the package did not install {man} (a dpkg path-exclude for /usr/share/man would do that)"
    );

    let said = capture(Command::new("/usr/bin/unixtrace").arg("--version"))?;
    ensure!(said.trim() == format!("{NAME} {version}"), "installed unixtrace --version said {said:?}, not {version}");
    eprintln!("xtask: /usr/bin/unixtrace --version: {}", said.trim());

    let page = capture(Command::new("man").args(["-P", "cat", "-l", &man]).env("MANWIDTH", "80"))?;
    for want in ["NAME", "unixtrace - Who talks to whom", "--follow", "SUBCOMMANDS", "unixtrace-export(8)"] {
        ensure!(page.contains(want), "man -l {man} has no {want:?}:\n{page}");
    }
    eprintln!("xtask: man -l {man}: {} lines", page.lines().count());

    let bash = "/usr/share/bash-completion/completions/unixtrace";
    for (line, want) in [("unixtrace --fol", "--follow"), ("unixtrace --backend ", "tracepoint")] {
        let got = bash_complete(bash, line)?;
        ensure!(got.iter().any(|w| w == want), "bash completion of {line:?} gave {got:?}, without {want}");
        eprintln!("xtask: bash completes {line:?} to {got:?}");
    }
    // fish completes flags through the generated file; zsh needs compinit
    // to register it.
    let fish = "/usr/share/fish/vendor_completions.d/unixtrace.fish";
    let got = capture(Command::new("fish").args([
        "--no-config",
        "-c",
        &format!("source {fish}; complete -C'unixtrace --fol'"),
    ]))?;
    ensure!(got.lines().any(|l| l.starts_with("--follow\t")), "fish completion of \"unixtrace --fol\" gave {got:?}");
    eprintln!("xtask: fish completes \"unixtrace --fol\" to {:?}", got.trim());
    let zsh = "/usr/share/zsh/vendor-completions/_unixtrace";
    let script = format!("autoload -Uz compinit && compinit -D && source {zsh} && print -r -- ${{_comps[unixtrace]}}");
    let got = capture(Command::new("zsh").args(["-f", "-c", &script]))?;
    ensure!(got.trim() == "_unixtrace", "zsh did not register _unixtrace for unixtrace: {got:?}");
    eprintln!("xtask: zsh registers {} for unixtrace", got.trim());

    let unit = "/usr/lib/systemd/system/unixtrace.service";
    if output(Command::new("sh").args(["-c", "command -v systemd-analyze"])).is_some() {
        // verify exits 0 on some warnings (an unknown key, say): any line
        // about the unit fails the check too.
        let mut c = Command::new("systemd-analyze");
        c.args(["verify", unit]);
        let out = c.output().with_context(|| format!("could not run {}", show(&c)))?;
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success() && !said.contains("unixtrace"), "`{}` failed:\n{said}", show(&c));
        eprintln!("xtask: systemd-analyze verify {unit}: clean");
    } else {
        eprintln!("xtask: no systemd-analyze here: {unit} was installed, not verified");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails on a non-zero exit or
/// anything on stderr.
fn capture(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd.output().with_context(|| format!("could not run `{shown}`"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stderr.trim().is_empty() {
        bail!("`{shown}` failed with {}: {stderr}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the bash completion in `file` offers for `line` (the cursor at its
/// end), through the function it registers for unixtrace, as bash's
/// programmable completion would call it.
fn bash_complete(file: &str, line: &str) -> Result<Vec<String>> {
    const SCRIPT: &str = r#"
source "$1" || exit 1
spec=$(complete -p unixtrace) || { echo "no completion registered for unixtrace" >&2; exit 1; }
fn=${spec##*-F }; fn=${fn%% *}
COMP_LINE=$2; COMP_POINT=${#COMP_LINE}
read -r -a COMP_WORDS <<< "$COMP_LINE"
[[ $COMP_LINE == *' ' ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
prev=""; (( COMP_CWORD > 0 )) && prev=${COMP_WORDS[COMP_CWORD-1]}
"$fn" unixtrace "${COMP_WORDS[COMP_CWORD]}" "$prev"
printf '%s\n' "${COMPREPLY[@]}"
"#;
    let out = capture(Command::new("bash").args(["--norc", "--noprofile", "-c", SCRIPT, "bash", file, line]))?;
    Ok(out.lines().map(str::to_owned).filter(|w| !w.is_empty()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file the package takes from deploy/ is there, the scripts
    /// executable, so a rename fails here rather than in CI's package stage.
    #[test]
    fn deploy_files_exist() {
        let root = crate::workspace_root();
        for (_, source, _) in FILES {
            if let Source::Deploy(path) = source {
                assert!(root.join("deploy").join(path).is_file(), "deploy/{path} is missing");
            }
        }
        for script in SCRIPTS {
            let path = root.join("deploy/debian").join(script);
            let mode = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode();
            assert!(mode & 0o111 != 0, "{} is not executable", path.display());
        }
    }
}
