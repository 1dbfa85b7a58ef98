//! A vCPU's state at kernel entry: long mode with identity paging, per the Linux 64-bit boot
//! protocol (boot_params in RSI), plus FPU, boot MSRs and the LAPIC's LINT pins.

use kvm_bindings::{Msrs, kvm_fpu, kvm_msr_entry, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::gdt;
use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write the boot GDT, IDT or page tables to guest memory")]
    WriteBootTables(#[source] vm_memory::GuestMemoryError),
    #[error("cannot set vCPU {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted {set} of {total} boot MSRs; MSR {first_refused:#x} was refused")]
    MsrsRefused {
        set: usize,
        total: usize,
        first_refused: u32,
    },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT_RW: u64 = 0x3;
const PDE_LARGE: u64 = 0x80;

/// Write the GDT, an empty IDT and the identity page tables. Done once per VM.
pub fn write_boot_tables<M: GuestMemoryBackend>(mem: &M) -> Result<(), Error> {
    let w = |addr: u64, val: u64| {
        mem.write_obj(val, GuestAddress(addr))
            .map_err(Error::WriteBootTables)
    };
    for (i, entry) in gdt::boot_gdt().iter().enumerate() {
        w(BOOT_GDT_START + 8 * i as u64, *entry)?;
    }
    w(BOOT_IDT_START, 0)?;
    w(PML4_START, PDPT_START | PTE_PRESENT_RW)?;
    for gib in 0..IDENTITY_MAPPED_GIB {
        let pd = PD_START + gib * 0x1000;
        w(PDPT_START + gib * 8, pd | PTE_PRESENT_RW)?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            w(pd + i * 8, phys | PTE_PRESENT_RW | PDE_LARGE)?;
        }
    }
    Ok(())
}

/// General-purpose registers at the kernel's 64-bit entry point.
pub fn setup_regs(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), Error> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry.raw_value(),
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

/// Segments, control registers and EFER for long mode with paging on.
pub fn setup_sregs(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let code = gdt::segment(gdt::CODE_SELECTOR);
    let data = gdt::segment(gdt::DATA_SELECTOR);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = gdt::segment(gdt::TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(gdt::boot_gdt().len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))
}

/// x87 control word and MXCSR at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

/// The MSRs a booting kernel expects in a known state.
pub fn boot_msrs() -> Vec<(u32, u64)> {
    const MTRR_ENABLE: u64 = 1 << 11;
    const MTRR_TYPE_WB: u64 = 6;
    vec![
        (0x174, 0),                          // IA32_SYSENTER_CS
        (0x175, 0),                          // IA32_SYSENTER_ESP
        (0x176, 0),                          // IA32_SYSENTER_EIP
        (0xc000_0081, 0),                    // STAR
        (0xc000_0082, 0),                    // LSTAR
        (0xc000_0083, 0),                    // CSTAR
        (0xc000_0084, 0),                    // SYSCALL_MASK
        (0xc000_0102, 0),                    // KERNEL_GS_BASE
        (0x10, 0),                           // IA32_TSC
        (0x1a0, 1),                          // IA32_MISC_ENABLE: fast strings
        (0x2ff, MTRR_ENABLE | MTRR_TYPE_WB), // MTRRdefType: write-back by default
    ]
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let wanted = boot_msrs();
    let entries: Vec<kvm_msr_entry> = wanted
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::MsrsRefused {
        set: 0,
        total: entries.len(),
        first_refused: entries[0].index,
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set < entries.len() {
        return Err(Error::MsrsRefused {
            set,
            total: entries.len(),
            first_refused: entries[set].index,
        });
    }
    Ok(())
}

/// LINT0 takes the PIC's interrupts (ExtINT); LINT1 takes NMIs, as on a PC.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), Error> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("LAPIC"))?;
    for (reg, mode) in [(LVT_LINT0, MODE_EXTINT), (LVT_LINT1, MODE_NMI)] {
        // The register page is an array of C chars; reinterpret them as bytes.
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[reg + i] = b as libc::c_char;
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("LAPIC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn page_tables_identity_map_the_first_gibibytes() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_tables(&mem).unwrap();
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(PML4_START), PDPT_START | 3);
        // Walk a few addresses through the tables as the MMU would.
        for addr in [
            0u64,
            0x20_0000,
            0x1234_5678,
            (3 << 30) + 0x40_0000,
            (4 << 30) - 1,
        ] {
            let pdpte = read(PDPT_START + ((addr >> 30) & 511) * 8);
            assert_eq!(pdpte & 3, 3);
            let pde = read((pdpte & !0xfff) + ((addr >> 21) & 511) * 8);
            assert_eq!(pde & 0x83, 0x83, "2 MiB page, present, writable");
            assert_eq!((pde & !0x1f_ffff & !0xfff) | (addr & 0x1f_ffff), addr);
        }
        assert_eq!(read(BOOT_GDT_START + 0x10), gdt::boot_gdt()[2]);
    }
}
