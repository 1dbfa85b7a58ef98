//! The zero page (`boot_params`): the setup header, the command line and initrd locations, and
//! the e820 map with the legacy hole and the MMIO gap.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use super::layout::{CMDLINE_START_32, EBDA_START, HIMEM_START, ZERO_PAGE_START, ram_ranges};

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// "HdrS", the setup header's magic.
const HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// Boot loader type 0xff: "undefined", as other VMMs report.
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const MAX_E820: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the e820 map has more than {MAX_E820} entries")]
    TooManyE820Entries,
    #[error("cannot write the zero page")]
    Write(#[source] linux_loader::configurator::Error),
}

/// Where the initrd was put.
#[derive(Clone, Copy, Debug)]
pub struct Initrd {
    pub addr: GuestAddress,
    pub size: u32,
}

/// The e820 map for `mem_size` bytes of RAM: low memory up to the EBDA, the EBDA and BIOS area
/// as reserved, then RAM from 1 MiB split around the MMIO gap.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(mem_size) {
        let start_hi = start.max(HIMEM_START);
        if start + len > start_hi {
            map.push((start_hi, start + len - start_hi, E820_RAM));
        }
    }
    map
}

/// Fill and write the zero page. `header` is the bzImage's setup header, if the kernel was one.
pub fn write<M: GuestMemoryBackend>(
    mem: &M,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<Initrd>,
    mem_size: u64,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = HDR_MAGIC;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START_32;
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(u32::MAX);
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = u32::try_from(initrd.addr.0).unwrap_or(0);
        params.hdr.ramdisk_size = initrd.size;
    }
    let map = e820_map(mem_size);
    if map.len() > MAX_E820 {
        return Err(Error::TooManyE820Entries);
    }
    for (i, &(addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = u8::try_from(map.len()).unwrap_or(u8::MAX);
    let params = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&params, mem).map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
    use vm_memory::{Bytes, GuestMemoryMmap};

    #[test]
    fn e820_small_memory() {
        let m = 64 << 20;
        assert_eq!(
            e820_map(m),
            vec![
                (0, 0x9fc00, E820_RAM),
                (0x9fc00, 0x60400, E820_RESERVED),
                (0x10_0000, m - 0x10_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_mmio_gap() {
        let m = 4u64 << 30;
        let map = e820_map(m);
        assert_eq!(map[2], (0x10_0000, MMIO_GAP_START - 0x10_0000, E820_RAM));
        assert_eq!(map[3], (MMIO_GAP_END, m - MMIO_GAP_START, E820_RAM));
        let ram: u64 = map.iter().filter(|e| e.2 == E820_RAM).map(|e| e.1).sum();
        assert_eq!(ram, m - (0x10_0000 - 0x9fc00));
    }

    #[test]
    fn zero_page_points_at_cmdline_and_initrd() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let initrd = Initrd {
            addr: GuestAddress(0x80_0000),
            size: 4096,
        };
        write(&mem, None, 12, Some(initrd), 512 << 20).unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = p.hdr;
        assert_eq!({ hdr.header }, HDR_MAGIC);
        assert_eq!(
            u64::from(hdr.cmd_line_ptr),
            crate::arch::x86_64::layout::CMDLINE_START
        );
        assert_eq!((hdr.ramdisk_image, hdr.ramdisk_size), (0x80_0000, 4096));
        assert_eq!(p.e820_entries, 3);
        let last = p.e820_table[2];
        assert_eq!({ last.addr } + { last.size }, 512 << 20);
    }
}
