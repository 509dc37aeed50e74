//! The BTF aya needs to load fentry, fexit, tp_btf and iterator programs.
//!
//! aya looks each attach target up by name in an `aya::Btf` and hands the
//! kernel its type id; nothing else of the kernel's BTF is used (our object
//! has no CO-RE relocations: offsets come in as globals). aya's own parse of
//! `/sys/kernel/btf/vmlinux` builds all ~130,000 types, costing 20-45 ms and
//! 18 MiB of peak RSS, which was most of the snapshot's memory. Instead we
//! find the few ids with btf-rs (lazy, over an mmap) and hand aya a stand-in
//! where those names sit at the same ids and every other id is a bare
//! pointer type.

use btf_rs::Type;

use crate::btf::{BtfError, KernelBtf};

/// Something aya will look up by name.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Target<'a> {
    /// A kernel function: fentry, fexit, and `bpf_iter_<name>` for iterators.
    Func(&'a str),
    /// `btf_trace_<tracepoint>`: tp_btf programs.
    Typedef(&'a str),
}

impl Target<'_> {
    fn name(&self) -> &str {
        match self {
            Target::Func(n) | Target::Typedef(n) => n,
        }
    }

    fn kind(&self) -> u32 {
        match self {
            Target::Func(_) => BTF_KIND_FUNC,
            Target::Typedef(_) => BTF_KIND_TYPEDEF,
        }
    }

    fn matches(&self, t: &Type) -> bool {
        matches!((self, t), (Target::Func(_), Type::Func(_)) | (Target::Typedef(_), Type::Typedef(_)))
    }
}

// include/uapi/linux/btf.h
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_FUNC: u32 = 12;
const BTF_FUNC_GLOBAL: u32 = 1;
const HEADER_LEN: u32 = 24;
const TYPE_LEN: usize = 12;

/// Builds the stand-in. Targets the kernel lacks are left out, so aya's
/// lookup fails for them with its usual "unknown BTF type" error.
pub(crate) fn stand_in(kbtf: &KernelBtf, targets: &[Target<'_>]) -> Result<aya::Btf, BtfError> {
    // aya returns the first id whose name and kind match; so do we.
    let mut found: Vec<(u32, Target<'_>)> = Vec::new();
    for target in targets {
        let id = kbtf
            .btf()
            .resolve_ids_by_name(target.name())
            .unwrap_or_default()
            .into_iter()
            .filter(|&id| kbtf.btf().resolve_type_by_id(id).is_ok_and(|t| target.matches(&t)))
            .min();
        if let Some(id) = id {
            found.push((id, *target));
        }
    }
    found.sort_by_key(|(id, _)| *id);
    found.dedup_by_key(|(id, _)| *id);
    let blob = encode(&found);
    aya::Btf::parse(&blob, aya::Endianness::default())
        .map_err(|e| BtfError::Malformed(btf_rs::Error::Format(e.to_string())))
}

/// Raw BTF: header, then types 1..=max id, then the string section.
fn encode(found: &[(u32, Target<'_>)]) -> Vec<u8> {
    let max_id = found.last().map_or(0, |(id, _)| *id) as usize;
    let mut strings = vec![0u8];
    let mut types = Vec::with_capacity(max_id * TYPE_LEN);
    let mut next = found.iter().peekable();
    for id in 1..=max_id as u32 {
        let (name_off, info, ty) = match next.next_if(|(want, _)| *want == id) {
            Some((_, target)) => {
                let off = strings.len() as u32;
                strings.extend_from_slice(target.name().as_bytes());
                strings.push(0);
                let vlen = if target.kind() == BTF_KIND_FUNC { BTF_FUNC_GLOBAL } else { 0 };
                (off, target.kind() << 24 | vlen, 0u32)
            }
            None => (0, BTF_KIND_PTR << 24, 0u32),
        };
        for word in [name_off, info, ty] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    let mut blob = Vec::with_capacity(HEADER_LEN as usize + types.len() + strings.len());
    blob.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
    blob.push(1); // version
    blob.push(0); // flags
    for word in [HEADER_LEN, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::this_kernel;

    /// The stand-in must give aya the very ids its full parse would: checked
    /// against this machine's real kernel BTF.
    #[test]
    fn ids_match_aya_full_parse_of_this_kernel() {
        let Some(kbtf) = this_kernel() else { return };
        let targets = [
            Target::Func("bpf_iter_task_file"),
            Target::Func("unix_stream_connect"),
            Target::Func("unix_dgram_connect"),
            Target::Func("unix_release_sock"),
            Target::Typedef("btf_trace_sched_process_fork"),
        ];
        let ours = stand_in(&kbtf, &targets).expect("stand-in");
        let full = aya::Btf::from_sys_fs().expect("aya parses this kernel's BTF");
        for t in targets {
            let kind = match t {
                Target::Func(_) => aya_obj::btf::BtfKind::Func,
                Target::Typedef(_) => aya_obj::btf::BtfKind::Typedef,
            };
            let want = full.id_by_type_name_kind(t.name(), kind).expect("present in the kernel");
            let got = ours.id_by_type_name_kind(t.name(), kind).expect("present in the stand-in");
            assert_eq!(got, want, "{t:?}");
        }
    }

    #[test]
    fn missing_target_is_left_out_so_aya_reports_it() {
        let Some(kbtf) = this_kernel() else { return };
        let btf = stand_in(&kbtf, &[Target::Func("no_such_kernel_function_here")]).expect("stand-in");
        assert!(btf.id_by_type_name_kind("no_such_kernel_function_here", aya_obj::btf::BtfKind::Func).is_err());
    }
}
