//! Where things live in guest memory and in the port space (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT              0x0000_7000  zero page (boot_params)
//! 0x0000_0530  IDT              0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4             0x0000_a000  PDPT
//! 0x0000_b000  4 PDs (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA: MP table   0x0010_0000  high memory (kernels load here or above)
//! 0xc000_0000  MMIO gap up to 4 GiB; RAM beyond 3 GiB continues at 4 GiB
//! ```

pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x530;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
/// Gigabytes of guest-physical space identity-mapped for the kernel's entry.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's COMMAND_LINE_SIZE on x86, terminating NUL included; bzImages state their own.
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const EBDA_START_32: u32 = 0x9fc00;
/// The command line's address as the 32-bit zero-page field holds it.
pub const CMDLINE_START_32: u32 = 0x20000;
const _: () =
    assert!(EBDA_START_32 as u64 == EBDA_START && CMDLINE_START_32 as u64 == CMDLINE_START);
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 1 << 32;
pub const APIC_BASE: u32 = 0xfee0_0000;
pub const IOAPIC_BASE: u32 = 0xfec0_0000;
/// The identity map for the TSS that KVM needs on Intel hosts, just below the IOAPIC.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Virtio-mmio devices: 4 KiB windows from here (inside the MMIO gap), IRQs from 5 up.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// Legacy ports.
pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
pub const SERIAL_IRQ: u32 = 4;
/// The i8042 keyboard's interrupt (a PC's IRQ 1).
pub const KEYBOARD_IRQ: u32 = 1;
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// gureum's boot-timer port: the guest writes one byte at each milestone it wants timed.
pub const BOOT_TIMER_PORT: u64 = 0x440;

// The stack lies between the zero page and the page tables; the tables end below the cmdline.
const _: () =
    assert!(BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000 && BOOT_STACK_POINTER < PML4_START);
const _: () = assert!(PD_START + 0x1000 * IDENTITY_MAPPED_GIB <= CMDLINE_START);

/// The guest-physical ranges of RAM for `size` bytes of memory: below the MMIO gap, and the
/// rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_is_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let regions = [
            (BOOT_GDT_START, 8 * 5),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPT_START, 0x1000),
            (PD_START, 0x1000 * IDENTITY_MAPPED_GIB),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 0x400),
        ];
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                assert!(
                    a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0,
                    "{a:x?} overlaps {b:x?}"
                );
            }
        }
    }
}
