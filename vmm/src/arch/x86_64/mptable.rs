//! The Intel MultiProcessor table (spec 1.4) in the EBDA, so the guest finds every vCPU, the
//! IOAPIC and the ISA interrupt routing without ACPI.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::layout::{APIC_BASE, EBDA_START, EBDA_START_32, IOAPIC_BASE};

/// ISA IRQs routed one-to-one to IOAPIC pins.
const ISA_IRQS: u8 = 16;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Room from the EBDA's start to the end of base memory (0xa0000).
const MAX_SIZE: usize = 0x400;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an MP table for {0} vCPUs does not fit in the EBDA (at most {max})", max = max_vcpus())]
    TooManyVcpus(u8),
    #[error("cannot write the MP table to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The most vCPUs whose MP table fits in the EBDA: floating pointer 16 + header 44 + bus 8 +
/// IOAPIC 8 + 16 IRQs * 8 + 2 LINTs * 8 = 220 bytes, plus 20 per processor.
const MAX_VCPUS: u8 = 40;
const _: () = assert!(220 + 20 * MAX_VCPUS as usize <= MAX_SIZE);
const _: () = assert!(EBDA_START + MAX_SIZE as u64 <= 0xa0000);

pub const fn max_vcpus() -> u8 {
    MAX_VCPUS
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_sub(*b))
}

/// The floating pointer followed by the configuration table, as bytes placed at `base`.
pub fn build(vcpus: u8, base: u32) -> Result<Vec<u8>, Error> {
    if vcpus == 0 || vcpus > max_vcpus() {
        return Err(Error::TooManyVcpus(vcpus));
    }
    let ioapic_id = vcpus;
    let mut t = Vec::with_capacity(MAX_SIZE);
    // Floating pointer structure (16 bytes); the configuration table follows it.
    t.extend_from_slice(b"_MP_");
    t.extend_from_slice(&(base + 16).to_le_bytes());
    t.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length in 16-byte units, spec 1.4
    t[10] = checksum(&t[..16]);
    // Configuration table header (44 bytes); length, entry count and checksum patched below.
    let header = t.len();
    t.extend_from_slice(b"PCMP\0\0\x04\0GUREUM  MICROVM     ");
    t.extend_from_slice(&[0; 8]); // OEM table pointer and size, entry count
    t.extend_from_slice(&APIC_BASE.to_le_bytes());
    t.extend_from_slice(&[0; 4]); // extended table length and checksum
    let mut entries: u16 = 0;
    for id in 0..vcpus {
        let flags = if id == 0 { 0x3 } else { 0x1 }; // enabled, bootstrap processor
        t.extend_from_slice(&[0, id, APIC_VERSION, flags]);
        t.extend_from_slice(&0x600u32.to_le_bytes()); // family 6 signature
        t.extend_from_slice(&0x201u32.to_le_bytes()); // FPU and APIC present
        t.extend_from_slice(&[0; 8]);
        entries += 1;
    }
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(b"ISA   ");
    t.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    t.extend_from_slice(&IOAPIC_BASE.to_le_bytes());
    entries += 2;
    for irq in 0..ISA_IRQS {
        // I/O interrupt: INT, conforming polarity and trigger, bus 0 IRQ -> IOAPIC pin.
        t.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        entries += 1;
    }
    // Local interrupts: ExtINT on every LAPIC's LINT0, NMI on every LAPIC's LINT1.
    t.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    t.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    entries += 2;
    let length = u16::try_from(t.len() - header).unwrap_or(u16::MAX);
    t[header + 4..header + 6].copy_from_slice(&length.to_le_bytes());
    t[header + 34..header + 36].copy_from_slice(&entries.to_le_bytes());
    t[header + 7] = checksum(&t[header..]);
    Ok(t)
}

/// Write the MP table for `vcpus` at the start of the EBDA.
pub fn setup<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<(), Error> {
    let table = build(vcpus, EBDA_START_32)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn table_is_well_formed_for_every_size() {
        for vcpus in 1..=max_vcpus() {
            let t = build(vcpus, 0x9fc00).unwrap();
            assert!(t.len() <= MAX_SIZE);
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 0x9fc10);
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([cfg[4], cfg[5]]));
            assert_eq!(len, cfg.len());
            assert_eq!(sum(cfg), 0, "configuration table checksum");
            let count = u16::from_le_bytes([cfg[34], cfg[35]]);
            assert_eq!(usize::from(count), usize::from(vcpus) + 2 + 16 + 2);
            // Walk the entries as a guest does and count processors.
            let (mut at, mut cpus, mut bsp) = (44, 0, 0);
            for _ in 0..count {
                let size = if cfg[at] == 0 { 20 } else { 8 };
                if cfg[at] == 0 {
                    assert_eq!(cfg[at + 1], cpus, "APIC IDs in order");
                    cpus += 1;
                    bsp += usize::from(cfg[at + 3] & 2 != 0);
                }
                at += size;
            }
            assert_eq!((at, cpus, bsp), (cfg.len(), vcpus, 1));
        }
    }

    #[test]
    fn rejects_zero_and_too_many_vcpus() {
        assert!(build(0, 0).is_err());
        assert!(build(max_vcpus() + 1, 0).is_err());
        assert!(max_vcpus() >= 32);
    }
}
