//! The boot GDT. The Linux boot protocol wants a flat code segment at selector 0x10
//! (`__BOOT_CS`) and a flat data segment at 0x18 (`__BOOT_DS`); a TSS follows at 0x20.

use kvm_bindings::kvm_segment;

/// Descriptor flags (access byte and the flags nibble) for the boot segments.
const CODE64: u16 = 0xa09b;
const DATA: u16 = 0xc093;
const TSS: u16 = 0x808b;

pub const CODE_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Encode one 8-byte segment descriptor.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The GDT as written to guest memory.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        0,
        descriptor(CODE64, 0, 0xfffff),
        descriptor(DATA, 0, 0xfffff),
        descriptor(TSS, 0, 0xfffff),
    ]
}

/// The KVM view of the descriptor at `selector` in [`boot_gdt`].
pub fn segment(selector: u16) -> kvm_segment {
    let entry = boot_gdt()[usize::from(selector >> 3)];
    let bits =
        |shift: u32, width: u32| u8::try_from((entry >> shift) & ((1 << width) - 1)).unwrap_or(0);
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0xf_0000);
    let granular = bits(55, 1);
    kvm_segment {
        base,
        // A granular limit counts 4 KiB pages.
        limit: u32::try_from(if granular == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        })
        .unwrap_or(u32::MAX),
        selector,
        type_: bits(40, 4),
        present: bits(47, 1),
        dpl: bits(45, 2),
        db: bits(54, 1),
        s: bits(44, 1),
        l: bits(53, 1),
        g: granular,
        avl: bits(52, 1),
        unusable: u8::from(bits(47, 1) == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_descriptors() {
        // Values from the Intel SDM's flat 64-bit code / data segments.
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(TSS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn decodes_segments() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.present, cs.s),
            (0x10, 0xb, 1, 0, 1, 1)
        );
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1));
        let ds = segment(DATA_SELECTOR);
        assert_eq!((ds.type_, ds.l, ds.db, ds.s), (0x3, 0, 1, 1));
        let tr = segment(TSS_SELECTOR);
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1));
    }
}
