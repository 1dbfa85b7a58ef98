//! The CPUID a vCPU sees: KVM's supported set, with this vCPU's APIC ID, the hypervisor bit and
//! a topology of one socket with `vcpus` single-threaded cores.

use kvm_bindings::{CpuId, kvm_cpuid_entry2};

const HYPERVISOR_BIT: u32 = 1 << 31;
const HTT_BIT: u32 = 1 << 28;
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits of the APIC ID that number the cores: ceil(log2(vcpus)).
fn core_id_bits(vcpus: u8) -> u32 {
    u32::from(vcpus).next_power_of_two().trailing_zeros()
}

/// Patch one entry for vCPU `id` of `vcpus`.
pub fn patch_entry(entry: &mut kvm_cpuid_entry2, id: u8, vcpus: u8) {
    let (id, n) = (u32::from(id), u32::from(vcpus));
    match entry.function {
        0x1 => {
            // EBX: [31:24] initial APIC ID, [23:16] logical processors per package.
            entry.ebx = (entry.ebx & 0xffff) | (id << 24) | (n << 16);
            entry.ecx |= HYPERVISOR_BIT;
            if n > 1 {
                entry.edx |= HTT_BIT;
            } else {
                entry.edx &= !HTT_BIT;
            }
        }
        0x4 => {
            // EAX: [31:26] cores per package - 1, [25:14] threads sharing this cache - 1.
            let cache_level = (entry.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { n - 1 } else { 0 };
            entry.eax = (entry.eax & 0x3fff) | (sharing.min(0xfff) << 14) | ((n - 1).min(63) << 26);
        }
        0xb | 0x1f => {
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_TYPE_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = core_id_bits(vcpus);
                    entry.ebx = n;
                    entry.ecx = (LEVEL_TYPE_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        _ => {}
    }
}

/// The CPUID for vCPU `id` of `vcpus`, from KVM's supported set.
pub fn for_vcpu(supported: &CpuId, id: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        patch_entry(entry, id, vcpus);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0008_0800,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_count_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        patch_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e.edx & HTT_BIT, 0);
        let mut e = entry(1, 0);
        patch_entry(&mut e, 0, 1);
        assert_eq!(e.edx & HTT_BIT, 0);
    }

    #[test]
    fn extended_topology_describes_cores() {
        for (vcpus, bits) in [(1u8, 0u32), (2, 1), (3, 2), (4, 2), (5, 3), (32, 5)] {
            let mut smt = entry(0xb, 0);
            let mut core = entry(0xb, 1);
            let mut end = entry(0xb, 2);
            for e in [&mut smt, &mut core, &mut end] {
                patch_entry(e, vcpus - 1, vcpus);
                assert_eq!(e.edx, u32::from(vcpus - 1));
            }
            assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
            assert_eq!(
                (core.eax, core.ebx, core.ecx),
                (bits, u32::from(vcpus), 0x201)
            );
            assert_eq!((end.eax, end.ebx, end.ecx >> 8), (0, 0, 0));
        }
    }

    #[test]
    fn cache_leaf_counts_cores() {
        let mut l1 = kvm_cpuid_entry2 {
            function: 4,
            eax: 1 << 5 | 0x1,
            ..Default::default()
        };
        let mut l3 = kvm_cpuid_entry2 {
            function: 4,
            eax: 3 << 5 | 0x3,
            ..Default::default()
        };
        patch_entry(&mut l1, 0, 4);
        patch_entry(&mut l3, 0, 4);
        assert_eq!(l1.eax >> 26, 3);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        assert_eq!((l3.eax >> 14) & 0xfff, 3);
        assert_eq!(l3.eax & 0x3fff, 3 << 5 | 0x3);
    }
}
