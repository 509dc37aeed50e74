//! Building and checking the committed eBPF object.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    toolchain,
    util::{output, run},
};

pub const OBJECT: &str = "unixpeer-user/ebpf/unixpeer.bpf.o";
const TARGET: &str = "bpfel-unknown-none";

/// Builds the eBPF crate into `target_dir` and returns the object's path.
///
/// Deterministic: every absolute path that could reach the object's BTF
/// line info (this checkout, the cargo registry, the nightly's rust-src) is
/// remapped, so a clone in another folder builds the same bytes.
fn build_into(root: &Path, target_dir: &Path) -> Result<PathBuf> {
    let nightly = toolchain::nightly()?;
    toolchain::ensure_bpf_linker()?;
    let sysroot = output(Command::new("rustc").args([nightly.as_str(), "--print", "sysroot"]))
        .context("could not ask the pinned nightly for its sysroot")?;
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let remaps = [
        (root.to_path_buf(), "/unixpeer"),
        (cargo_home.join("registry"), "/cargo/registry"),
        (PathBuf::from(sysroot.trim()), "/rust/sysroot"),
    ];
    let mut flags = vec!["-Cdebuginfo=2".to_owned(), "-Clink-arg=--btf".to_owned()];
    for (from, to) in &remaps {
        flags.push(format!("--remap-path-prefix={}={to}", from.display()));
    }
    let path = format!("{}:{}", toolchain::llvm_bin().display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new("cargo")
        .current_dir(root)
        .arg(&nightly)
        .args(["build", "--release", "--locked", "-p", "unixpeer-ebpf", "--target", TARGET])
        .args(["-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env_remove("RUSTFLAGS")
        .env("PATH", path))?;
    let linked = target_dir.join(TARGET).join("release").join("unixpeer");
    // The DWARF only feeds bpf-linker's BTF (.BTF and .BTF.ext, which stay):
    // without it the object is a fifth of the size, and unixtrace, which
    // copies it to resolve kfunc calls at every start, peaks 2 MiB lower.
    let stripped = linked.with_extension("stripped.o");
    run(Command::new(toolchain::llvm_bin().join("llvm-objcopy")).arg("--strip-debug").arg(&linked).arg(&stripped))?;
    Ok(stripped)
}

pub fn build(root: &Path) -> Result<()> {
    let built = build_into(root, &root.join("target/ebpf"))?;
    let dest = root.join(OBJECT);
    fs::create_dir_all(dest.parent().unwrap_or(root))?;
    fs::copy(&built, &dest).with_context(|| format!("copying {} to {}", built.display(), dest.display()))?;
    eprintln!("xtask: wrote {OBJECT} ({} bytes)", fs::metadata(&dest)?.len());
    Ok(())
}

pub fn check(root: &Path) -> Result<()> {
    let committed_path = root.join(OBJECT);
    let committed = fs::read(&committed_path)
        .with_context(|| format!("{OBJECT} is missing: run `cargo xtask build-ebpf` and commit it"))?;
    let built_path = build_into(root, &root.join("target/ebpf-check"))?;
    let built = fs::read(&built_path)?;
    if built == committed {
        eprintln!("xtask: {OBJECT} matches its sources ({} bytes)", built.len());
        return Ok(());
    }
    eprintln!("xtask: {OBJECT} is NOT what the sources build:");
    eprintln!("  committed {} bytes, built {} bytes", committed.len(), built.len());
    show_difference(&committed_path, &built_path);
    bail!("the committed eBPF object is stale: run `cargo xtask build-ebpf` and commit {OBJECT}")
}

/// Prints a disassembly diff (the part a reviewer can read) or, failing
/// that, the first differing bytes.
fn show_difference(committed: &Path, built: &Path) {
    let objdump = toolchain::llvm_bin().join("llvm-objdump");
    let dis = |p: &Path| output(Command::new(&objdump).args(["-d", "--no-show-raw-insn"]).arg(p));
    if let (Some(a), Some(b)) = (dis(committed), dis(built)) {
        let tmp = std::env::temp_dir();
        let (fa, fb) = (tmp.join("unixpeer.committed.s"), tmp.join("unixpeer.built.s"));
        if fs::write(&fa, a).is_ok() && fs::write(&fb, b).is_ok() {
            let diff = Command::new("diff")
                .args(["-u", "--label", "committed", "--label", "built"])
                .arg(&fa)
                .arg(&fb)
                .output();
            if let Ok(d) = diff {
                let text = String::from_utf8_lossy(&d.stdout);
                if !text.trim().is_empty() {
                    for line in text.lines().take(80) {
                        eprintln!("  {line}");
                    }
                    return;
                }
                eprintln!("  the code is identical; the difference is in data, BTF or debug sections:");
            }
        }
    }
    let a = fs::read(committed).unwrap_or_default();
    let b = fs::read(built).unwrap_or_default();
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        eprintln!("  first differing byte at offset {i:#x}");
    }
}
