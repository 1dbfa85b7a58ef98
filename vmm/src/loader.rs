//! Puts the kernel, the initrd and the command line into guest memory. The kernel's format
//! (ELF vmlinux or bzImage) is detected from the file; both load through linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{self, KernelLoader, bzimage::BzImage, elf::Elf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, MMIO_GAP_START};
use crate::arch::x86_64::zero_page::Initrd;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {}", .0.display())]
    OpenKernel(PathBuf, #[source] std::io::Error),
    #[error("kernel {} is empty", .0.display())]
    EmptyKernel(PathBuf),
    #[error("kernel {} is neither an ELF vmlinux nor a bzImage", .0.display())]
    UnknownFormat(PathBuf),
    #[error("kernel {} is not a 64-bit x86 ELF executable", .0.display())]
    NotX86_64Elf(PathBuf),
    #[error(
        "kernel {} uses boot protocol {}.{:02}; gureum needs 2.12 or later with a 64-bit entry point",
        .0.display(), .1 >> 8, .1 & 0xff
    )]
    OldBootProtocol(PathBuf, u16),
    #[error("bzImage {} has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64)", .0.display())]
    NoEntry64(PathBuf),
    #[error("cannot load {format} kernel {}", .path.display())]
    Load {
        path: PathBuf,
        format: KernelFormat,
        #[source]
        source: loader::Error,
    },
    #[error("kernel {} does not fit in {mem_mib} MiB of guest memory (it needs up to {end:#x})", .path.display())]
    KernelTooBig {
        path: PathBuf,
        end: u64,
        mem_mib: u64,
    },
    #[error("kernel {} has its entry point {entry:#x} outside what it loads", .path.display())]
    BadEntry { path: PathBuf, entry: u64 },
    #[error("cannot read initrd {}", .0.display())]
    ReadInitrd(PathBuf, #[source] std::io::Error),
    #[error("initrd {} ({size} bytes) does not fit in guest memory between the kernel and {limit:#x}", .path.display())]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write the kernel command line")]
    Cmdline(#[source] loader::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

impl std::fmt::Display for KernelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Elf => "ELF",
            Self::BzImage => "bzImage",
        })
    }
}

/// What loading the kernel told us.
#[derive(Debug)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    /// The first byte past the kernel, including what a bzImage needs to decompress itself.
    pub end: u64,
    pub setup_header: Option<setup_header>,
}

const XLF_KERNEL_64: u16 = 1;
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// The format of the kernel file, from its first bytes.
fn detect(path: &Path, file: &mut File) -> Result<KernelFormat, Error> {
    let mut head = Vec::with_capacity(0x210);
    file.by_ref()
        .take(0x210)
        .read_to_end(&mut head)
        .map_err(|e| Error::OpenKernel(path.into(), e))?;
    if head.is_empty() {
        return Err(Error::EmptyKernel(path.into()));
    }
    if head.starts_with(b"\x7fELF") {
        // EI_CLASS 2 = 64-bit, e_machine 62 = x86_64.
        if head.len() < 20 || head[4] != 2 || head[18..20] != [62, 0] {
            return Err(Error::NotX86_64Elf(path.into()));
        }
        return Ok(KernelFormat::Elf);
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        let version = match head.get(0x206..0x208) {
            Some(v) => u16::from_le_bytes([v[0], v[1]]),
            None => 0,
        };
        if version < 0x020c {
            return Err(Error::OldBootProtocol(path.into(), version));
        }
        return Ok(KernelFormat::BzImage);
    }
    Err(Error::UnknownFormat(path.into()))
}

/// The kernel's format, and whether it is Linux: an ELF with Linux's sections, or a bzImage
/// whose setup header points at a kernel version string.
pub fn identify(path: &Path) -> Result<(KernelFormat, bool), Error> {
    let mut file = File::open(path).map_err(|e| Error::OpenKernel(path.into(), e))?;
    let format = detect(path, &mut file)?;
    let is_linux = match format {
        KernelFormat::BzImage => has_version_string(&mut file),
        KernelFormat::Elf => has_linux_sections(&mut file),
    };
    Ok((format, is_linux))
}

/// Whether a bzImage's `kernel_version` field points at a version string ("6.1.0 (...) ...").
fn has_version_string(file: &mut File) -> bool {
    let mut field = [0u8; 2];
    let mut text = [0u8; 1];
    file.seek(SeekFrom::Start(0x20e)).is_ok()
        && file.read_exact(&mut field).is_ok()
        && u16::from_le_bytes(field) != 0
        && file
            .seek(SeekFrom::Start(
                0x200 + u64::from(u16::from_le_bytes(field)),
            ))
            .is_ok()
        && file.read_exact(&mut text).is_ok()
        && text[0].is_ascii_digit()
}

/// Load the kernel at the addresses it asks for and find its 64-bit entry point.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, Error> {
    let mut file = File::open(path).map_err(|e| Error::OpenKernel(path.into(), e))?;
    let format = detect(path, &mut file)?;
    let load_err = |source| Error::Load {
        path: path.into(),
        format,
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    let mem_end = mem.last_addr().raw_value() + 1;
    let mem_mib = mem
        .iter()
        .map(vm_memory::GuestMemoryRegion::len)
        .sum::<u64>()
        >> 20;
    let too_big = |end| Error::KernelTooBig {
        path: path.into(),
        end,
        mem_mib,
    };
    let kernel = match format {
        KernelFormat::Elf => {
            let r = Elf::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let entry = r.kernel_load;
            if r.kernel_end > mem_end {
                return Err(too_big(r.kernel_end));
            }
            if entry.raw_value() >= r.kernel_end {
                return Err(Error::BadEntry {
                    path: path.into(),
                    entry: entry.raw_value(),
                });
            }
            LoadedKernel {
                entry,
                end: r.kernel_end,
                setup_header: None,
            }
        }
        KernelFormat::BzImage => {
            let r = BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let hdr = r.setup_header.unwrap_or_default();
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(Error::NoEntry64(path.into()));
            }
            // The kernel decompresses itself in place; it needs init_size bytes from its start.
            let end = (r.kernel_load.raw_value() + u64::from(hdr.init_size)).max(r.kernel_end);
            if end > mem_end.min(MMIO_GAP_START) {
                return Err(too_big(end));
            }
            let entry = r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET);
            LoadedKernel {
                entry,
                end,
                setup_header: Some(hdr),
            }
        }
    };
    Ok(kernel)
}

/// Whether `path` is an ELF kernel with a PVH entry note (Xen's XEN_ELFNOTE_PHYS32_ENTRY, type
/// 18), which other VMMs can boot directly.
pub fn has_pvh_note(path: &Path) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let mut read_at = |offset: u64, buf: &mut [u8]| {
        file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(buf).is_ok()
    };
    let mut ehdr = [0u8; 64];
    if !read_at(0, &mut ehdr) || !ehdr.starts_with(b"\x7fELF") {
        return false;
    }
    let word = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
    let quad = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (phoff, phnum) = (
        quad(&ehdr, 0x20),
        u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]),
    );
    for i in 0..u64::from(phnum.min(64)) {
        let mut ph = [0u8; 56];
        if !read_at(phoff + i * 56, &mut ph) || word(&ph, 0) != PT_NOTE {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(quad(&ph, 32).min(1 << 16)).unwrap_or(0)];
        if !read_at(quad(&ph, 8), &mut notes) {
            continue;
        }
        // Each note: namesz, descsz, type, then name and desc, each padded to 4 bytes.
        let mut at = 0;
        while at + 12 <= notes.len() {
            let (namesz, descsz, kind) =
                (word(&notes, at), word(&notes, at + 4), word(&notes, at + 8));
            let name = notes
                .get(at + 12..at + 12 + namesz as usize)
                .unwrap_or_default();
            if name == b"Xen\0" && kind == XEN_ELFNOTE_PHYS32_ENTRY {
                return true;
            }
            at +=
                12 + (namesz as usize).next_multiple_of(4) + (descsz as usize).next_multiple_of(4);
        }
    }
    false
}

/// Whether an ELF kernel has sections only Linux has (`.init.text`, `.data..percpu`), read from
/// the section-name table alone.
fn has_linux_sections(file: &mut File) -> bool {
    let mut read_at = |offset: u64, buf: &mut [u8]| {
        file.seek(SeekFrom::Start(offset)).is_ok() && file.read_exact(buf).is_ok()
    };
    let mut ehdr = [0u8; 64];
    if !read_at(0, &mut ehdr) {
        return false;
    }
    let u16_at = |b: &[u8], o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let u64_at =
        |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    let (shoff, shentsize, shstrndx) = (
        u64_at(&ehdr, 0x28),
        u16_at(&ehdr, 0x3a),
        u16_at(&ehdr, 0x3e),
    );
    let mut shdr = [0u8; 64];
    if shentsize != 64 || !read_at(shoff + shstrndx * shentsize, &mut shdr) {
        return false;
    }
    let (names_at, names_len) = (u64_at(&shdr, 0x18), u64_at(&shdr, 0x20).min(1 << 16));
    let mut names = vec![0u8; usize::try_from(names_len).unwrap_or(0)];
    read_at(names_at, &mut names)
        && [&b".init.text\0"[..], &b".data..percpu\0"[..]]
            .iter()
            .any(|n| names.windows(n.len()).any(|w| w == *n))
}

/// Put the initrd as high in low memory as it fits, page-aligned, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<Initrd, Error> {
    let mut file = File::open(path).map_err(|e| Error::ReadInitrd(path.into(), e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::ReadInitrd(path.into(), e))?
        .len();
    let mem_end = mem.last_addr().raw_value() + 1;
    let mut limit = mem_end.min(MMIO_GAP_START);
    if let Some(hdr) = kernel.setup_header.filter(|h| h.initrd_addr_max != 0) {
        limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
    }
    let too_big = || Error::InitrdTooBig {
        path: path.into(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    let size32 = u32::try_from(size).map_err(|_| too_big())?;
    if addr < kernel.end.next_multiple_of(0x1000) {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| Error::ReadInitrd(path.into(), std::io::Error::other(e)))?;
    Ok(Initrd {
        addr: GuestAddress(addr),
        size: size32,
    })
}

/// Write the command line, within the kernel's own limit; returns its length.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel: &LoadedKernel,
) -> Result<usize, Error> {
    let max = kernel
        .setup_header
        .map(|h| usize::try_from(h.cmdline_size).unwrap_or(usize::MAX))
        .filter(|&s| s > 0)
        .unwrap_or(CMDLINE_MAX_SIZE - 1)
        .min(CMDLINE_MAX_SIZE - 1);
    let too_long = || Error::CmdlineTooLong {
        len: cmdline.len(),
        max,
    };
    if cmdline.len() > max {
        return Err(too_long());
    }
    let cl = Cmdline::try_from(cmdline, max + 1).map_err(|_| too_long())?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(Error::Cmdline)?;
    Ok(cmdline.len())
}
