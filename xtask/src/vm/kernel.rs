//! Debian cloud kernels: pick the newest package of a series, download it once into
//! `target/vm/debs/`, and extract the kernel image, its config and `unix_diag.ko`
//! (with any modules it depends on) into `target/vm/kernels/<release>/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::host;

/// The module unixtrace's snapshot needs; Debian builds it as a module.
const ROOT_MODULE: &str = "unix_diag";
const SUFFIX: &str = "-cloud-amd64";

/// Where apt finds a series: the system's own lists, or a private list of Debian 11.
#[derive(Clone, Copy, PartialEq)]
enum Suite {
    System,
    Bullseye,
}

/// A kernel series: packages named `<prefix><digits…><SUFFIX>`, e.g. `linux-image-6.1.0-56-cloud-amd64`.
struct Series {
    label: &'static str,
    prefix: &'static str,
    suite: Suite,
    /// An optional series that apt can no longer serve is reported, not failed.
    optional: bool,
}

const SERIES: [Series; 3] = [
    Series { label: "6.12", prefix: "linux-image-6.12.", suite: Suite::System, optional: false },
    Series { label: "6.1", prefix: "linux-image-6.1.0-", suite: Suite::System, optional: false },
    // Debian 11: its archive will move away one day, hence optional.
    Series { label: "5.10", prefix: "linux-image-5.10.0-", suite: Suite::Bullseye, optional: true },
];

/// The kernels tested when none is named.
pub fn default_requests() -> Vec<String> {
    SERIES.iter().map(|s| s.label.to_string()).collect()
}

/// A kernel ready to boot.
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("config")
    }
    /// Decompressed modules to insmod, in load order (dependencies first).
    pub fn modules(&self) -> Result<Vec<PathBuf>> {
        let order = fs::read_to_string(self.dir.join("modules.order"))?;
        Ok(order.lines().map(|m| self.dir.join("modules").join(format!("{m}.ko"))).collect())
    }
}

pub enum Prepared {
    Ready(Kernel),
    /// An optional series apt cannot serve, with why.
    Unavailable(String),
}

/// Resolves, downloads and extracts the kernel named by `request`
/// (a series label such as `6.1`, or a full package name).
pub fn prepare(vm_dir: &Path, request: &str) -> Result<Prepared> {
    let debs = vm_dir.join("debs");
    fs::create_dir_all(&debs)?;
    let (package, suite, optional) = match SERIES.iter().find(|s| s.label == request) {
        Some(series) => match resolve_series(vm_dir, series) {
            Ok(p) => (p, series.suite, series.optional),
            Err(e) => match cached_deb(&debs, series) {
                Some(p) => {
                    eprintln!("vm-test: {e:#}; using the cached {p}");
                    (p, series.suite, series.optional)
                }
                None if series.optional => return Ok(Prepared::Unavailable(format!("{e:#}"))),
                None => return Err(e),
            },
        },
        None if request.starts_with("linux-image-") => {
            let suite = if newest(&search(vm_dir, Suite::System, request)?).is_some() {
                Suite::System
            } else {
                Suite::Bullseye
            };
            (request.to_string(), suite, false)
        }
        None => bail!(
            "unknown kernel {request:?}: give a series ({}) or a package name linux-image-…",
            default_requests().join(", ")
        ),
    };
    let deb = match download(vm_dir, suite, &package) {
        Ok(deb) => deb,
        Err(e) if optional => return Ok(Prepared::Unavailable(format!("{e:#}"))),
        Err(e) => return Err(e),
    };
    let release = package.trim_start_matches("linux-image-").to_string();
    let dir = vm_dir.join("kernels").join(&release);
    if !dir.join("ready").exists() {
        extract(&deb, &release, &dir).with_context(|| format!("extract {} into {}", deb.display(), dir.display()))?;
    }
    Ok(Prepared::Ready(Kernel { release, dir }))
}

fn in_series(series: &Series, name: &str) -> bool {
    name.strip_prefix(series.prefix)
        .and_then(|rest| rest.strip_suffix(SUFFIX))
        .is_some_and(|mid| mid.starts_with(|c: char| c.is_ascii_digit()) && !mid.contains('-'))
}

/// Natural order of package names: `6.12.117` after `6.12.99`.
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().unwrap_or(u64::MAX)).collect()
}

fn newest(names: &[String]) -> Option<String> {
    names.iter().max_by_key(|n| version_key(n)).cloned()
}

/// The newest package of the series apt knows, after an `apt-get update` if it knows none.
fn resolve_series(vm_dir: &Path, series: &Series) -> Result<String> {
    let find = || -> Result<Option<String>> {
        let names = search(vm_dir, series.suite, series.prefix)?;
        let names: Vec<String> = names.into_iter().filter(|n| in_series(series, n)).collect();
        Ok(newest(&names))
    };
    if let Some(p) = find()? {
        return Ok(p);
    }
    update(vm_dir, series.suite)?;
    find()?.with_context(|| format!("apt knows no package {}N{SUFFIX} (kernel {})", series.prefix, series.label))
}

fn cached_deb(debs: &Path, series: &Series) -> Option<String> {
    let names: Vec<String> = fs::read_dir(debs)
        .ok()?
        .filter_map(|e| {
            let file = e.ok()?.file_name().into_string().ok()?;
            let name = file.split('_').next()?.to_string();
            (file.ends_with(".deb") && in_series(series, &name)).then_some(name)
        })
        .collect();
    newest(&names)
}

/// Names of packages starting with `prefix` in the suite's lists.
fn search(vm_dir: &Path, suite: Suite, prefix: &str) -> Result<Vec<String>> {
    let regex = format!("^{}", prefix.replace('.', "\\.").replace('+', "\\+"));
    let mut cmd = apt(vm_dir, suite, "apt-cache")?;
    let out = host::output(cmd.args(["search", "--names-only", &regex]))?;
    Ok(out.lines().filter_map(|l| l.split(' ').next()).map(str::to_string).collect())
}

fn update(vm_dir: &Path, suite: Suite) -> Result<()> {
    match suite {
        Suite::System => host::apt_update(),
        Suite::Bullseye => host::run(apt(vm_dir, suite, "apt-get")?.args(["-q", "update"])),
    }
}

/// `apt-get download` into `target/vm/debs/` unless cached; an `apt-get update` and one
/// retry if the mirror no longer has the version the lists name.
fn download(vm_dir: &Path, suite: Suite, package: &str) -> Result<PathBuf> {
    let debs = vm_dir.join("debs");
    let cached = || {
        fs::read_dir(&debs).ok()?.find_map(|e| {
            let path = e.ok()?.path();
            let file = path.file_name()?.to_str()?;
            (file.starts_with(&format!("{package}_")) && file.ends_with(".deb")).then_some(path)
        })
    };
    if let Some(deb) = cached() {
        return Ok(deb);
    }
    eprintln!("vm-test: downloading {package}");
    let get = || -> Result<()> {
        let mut cmd = apt(vm_dir, suite, "apt-get")?;
        host::run(cmd.current_dir(&debs).args(["-q", "download", package]))
    };
    get().or_else(|_| {
        update(vm_dir, suite)?;
        get()
    })?;
    cached().with_context(|| format!("apt-get download left no {package}_*.deb"))
}

/// An apt command for the suite. For Debian 11, a private source list under
/// `target/vm/apt/` points at the same archive the system uses; the system's own
/// lists and sources stay untouched.
fn apt(vm_dir: &Path, suite: Suite, program: &str) -> Result<Command> {
    let mut cmd = Command::new(program);
    // Keep stdout for the results table.
    cmd.stdout(std::io::stderr());
    // Files downloaded as root into our tree: no `_apt` sandbox user.
    cmd.args(["-o", "APT::Sandbox::User=root"]);
    if suite == Suite::Bullseye {
        let dir = vm_dir.join("apt").join("bullseye");
        fs::create_dir_all(dir.join("lists").join("partial"))?;
        fs::create_dir_all(dir.join("cache").join("archives").join("partial"))?;
        let list = dir.join("sources.list");
        fs::write(&list, bullseye_sources())?;
        for (key, value) in [
            ("Dir::Etc::SourceList", list),
            ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
            ("Dir::State::Lists", dir.join("lists")),
            ("Dir::Cache", dir.join("cache")),
        ] {
            cmd.arg("-o").arg(format!("{key}={}", value.display()));
        }
    }
    Ok(cmd)
}

/// Source lines for Debian 11 on the archive and security mirrors apt already uses.
fn bullseye_sources() -> String {
    let targets = host::output(Command::new("apt-get").args(["indextargets", "--format", "$(REPO_URI) $(RELEASE)"]))
        .unwrap_or_default();
    let uri = |security: bool| {
        targets
            .lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(_, rel)| rel.ends_with("-security") == security && !rel.ends_with("-updates"))
            .map(|(uri, _)| uri.trim_end_matches('/').to_string())
            .unwrap_or_else(|| {
                let path = if security { "debian-security" } else { "debian" };
                format!("http://deb.debian.org/{path}")
            })
    };
    let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    format!("deb {key} {} bullseye main\ndeb {key} {} bullseye-security main\n", uri(false), uri(true))
}

/// `dpkg-deb --fsys-tarfile DEB | tar ARGS` in `dir`; returns tar's stdout.
fn deb_tar(deb: &Path, dir: &Path, tar_args: &[&str]) -> Result<String> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("start dpkg-deb")?;
    let stdin = dpkg.stdout.take().context("dpkg-deb stdout")?;
    let out = host::output(Command::new("tar").current_dir(dir).args(tar_args).stdin(stdin));
    let status = dpkg.wait()?;
    if !status.success() {
        bail!("dpkg-deb --fsys-tarfile {} failed: {status}", deb.display());
    }
    out
}

/// Extracts `member` of the deb to `dest`, decompressing `.ko.xz`.
fn extract_member(deb: &Path, member: &str, dest: &Path) -> Result<()> {
    let dir = dest.parent().context("destination has a parent")?;
    let tmp = dir.join("member.tmp");
    fs::create_dir_all(&tmp)?;
    deb_tar(deb, &tmp, &["-x", member])?;
    let got = tmp.join(member);
    if member.ends_with(".xz") {
        let out = fs::File::create(dest)?;
        host::run(Command::new("xz").arg("-dc").arg(&got).stdout(out))?;
    } else {
        fs::rename(&got, dest)?;
    }
    fs::remove_dir_all(&tmp)?;
    Ok(())
}

/// The module's `depends=` list from its `.modinfo` section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect()
}

fn module_name(member: &str) -> Option<String> {
    let file = member.rsplit('/').next()?;
    let stem = file.strip_suffix(".ko.xz").or_else(|| file.strip_suffix(".ko"))?;
    Some(stem.replace('-', "_"))
}

fn extract(deb: &Path, release: &str, dir: &Path) -> Result<()> {
    let modules_dir = dir.join("modules");
    fs::create_dir_all(&modules_dir)?;
    let members = deb_tar(deb, dir, &["-t"])?;
    let members: Vec<&str> = members.lines().collect();
    for (what, dest) in [("vmlinuz", "vmlinuz"), ("config", "config")] {
        let member = format!("./boot/{what}-{release}");
        if !members.contains(&member.as_str()) {
            bail!("{} has no {member}", deb.display());
        }
        extract_member(deb, &member, &dir.join(dest))?;
    }
    // Depth-first: every module after the modules it depends on.
    let mut order: Vec<String> = Vec::new();
    let mut stack = vec![(ROOT_MODULE.to_string(), false)];
    while let Some((name, deps_done)) = stack.pop() {
        if order.contains(&name) {
            continue;
        }
        let ko = modules_dir.join(format!("{name}.ko"));
        if deps_done {
            order.push(name);
            continue;
        }
        let member = members
            .iter()
            .find(|m| module_name(m).as_deref() == Some(&name))
            .with_context(|| format!("{} has no module {name}", deb.display()))?;
        extract_member(deb, member, &ko)?;
        stack.push((name, true));
        for dep in module_depends(&fs::read(&ko)?) {
            stack.push((dep, false));
        }
    }
    fs::write(dir.join("modules.order"), order.join("\n") + "\n")?;
    fs::write(dir.join("ready"), "")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_membership_and_newest() {
        let names = [
            "linux-image-6.12.99+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64",
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
        ]
        .map(String::from);
        let in_612: Vec<String> = names.iter().filter(|n| in_series(&SERIES[0], n)).cloned().collect();
        assert_eq!(in_612.len(), 2);
        assert_eq!(newest(&in_612).as_deref(), Some("linux-image-6.12.117+deb12-cloud-amd64"));
        assert!(in_series(&SERIES[1], "linux-image-6.1.0-56-cloud-amd64"));
        assert!(!in_series(&SERIES[1], "linux-image-6.12.117+deb12-cloud-amd64"));
    }

    #[test]
    fn modinfo_depends() {
        assert!(module_depends(b"\0name=unix_diag\0depends=\0vermagic=x\0").is_empty());
        assert_eq!(module_depends(b"license=GPL\0depends=nf-conntrack,libcrc32c\0"), ["nf_conntrack", "libcrc32c"]);
        assert_eq!(module_name("./lib/modules/6.1/kernel/net/unix/unix_diag.ko.xz").as_deref(), Some("unix_diag"));
    }
}
