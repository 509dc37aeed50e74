//! The kfunc calls in the kernel programs, resolved for the running kernel.
//!
//! aya links no kfunc calls, so the programs carry a placeholder call
//! instruction where they call `bpf_rdonly_cast` (see the eBPF crate's
//! `kernel::cast`). Before aya sees the object, each placeholder gets the
//! kfunc's BTF id, or becomes `r0 = r1` on kernels without the kfunc, where
//! the programs never take the path that has it (`cast_loads` is 0) but the
//! verifier still scans every instruction.

use unixpeer_common::KFUNC_CALL_PLACEHOLDER;

/// `r0 = r1` (BPF_ALU64 | BPF_MOV | BPF_X), what the verifier itself turns
/// a `bpf_rdonly_cast` call into.
const MOV_R0_R1: u64 = 0x10bf;

/// An object file, 8-byte aligned as aya's ELF parser needs.
pub(crate) struct Object {
    words: Vec<u64>,
    len: usize,
    /// How many placeholders were resolved.
    pub(crate) resolved: usize,
}

impl Object {
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast(), self.len) }
    }
}

/// Copies `object` and resolves its placeholders to calls of the kfunc with
/// BTF id `rdonly_cast`, or to `r0 = r1` when it is `None`.
///
/// Code sections start 8-aligned in the file, so instructions sit at file
/// offsets that are multiples of 8; the placeholder is a random 64-bit
/// value that nothing else in the object holds at such an offset.
pub(crate) fn resolve(object: &[u8], rdonly_cast: Option<u32>) -> Object {
    let mut words = vec![0u64; object.len().div_ceil(8)];
    for (w, chunk) in words.iter_mut().zip(object.chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    let replacement = match rdonly_cast {
        Some(id) => (u64::from(id) << 32) | (KFUNC_CALL_PLACEHOLDER & 0xffff_ffff),
        None => MOV_R0_R1,
    };
    let mut resolved = 0;
    for w in words.iter_mut().filter(|w| **w == KFUNC_CALL_PLACEHOLDER) {
        *w = replacement;
        resolved += 1;
    }
    // Back to the file's little-endian bytes.
    for w in &mut words {
        *w = w.to_le();
    }
    Object { words, len: object.len(), resolved }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn placeholders(bytes: &[u8]) -> usize {
        bytes.as_chunks::<8>().0.iter().filter(|c| u64::from_le_bytes(**c) == KFUNC_CALL_PLACEHOLDER).count()
    }

    #[test]
    fn every_placeholder_in_the_programs_is_resolved() {
        let object = super::super::OBJECT;
        let found = placeholders(object);
        assert!(found > 0, "the committed object has no bpf_rdonly_cast placeholder: were the walks changed?");
        let with = resolve(object, Some(0x1234));
        assert_eq!(with.resolved, found);
        assert_eq!(placeholders(with.bytes()), 0);
        assert_eq!(with.bytes().len(), object.len());
        let call = [0x85, 0x20, 0, 0, 0x34, 0x12, 0, 0];
        assert_eq!(with.bytes().as_chunks::<8>().0.iter().filter(|c| **c == call).count(), found);
        let without = resolve(object, None);
        assert_eq!(placeholders(without.bytes()), 0);
        // Everything else is byte for byte the same.
        let differ = object.iter().zip(without.bytes()).filter(|(a, b)| a != b).count();
        assert!(differ <= found * 8 && differ >= found, "{differ} bytes changed for {found} placeholders");
    }
}
