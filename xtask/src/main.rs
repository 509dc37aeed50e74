//! `cargo xtask`. Only `bench snapshot` lives on this branch; the main
//! branch's xtask takes the module over.

mod bench_snapshot;

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["bench", "snapshot"] => bench_snapshot::run(&root, &root.join("target/release/unixtrace")),
        _ => anyhow::bail!("usage: cargo xtask bench snapshot"),
    }
}
