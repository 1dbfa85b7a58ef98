//! gureum's test guest: a tiny x86_64 kernel entered like Linux (64-bit boot protocol, long
//! mode, boot_params in RSI). It reports what the VMM gave it on the serial port — command line,
//! e820 map, the vCPUs in the MP table — writes the boot-timer port, runs the scenario named by
//! `scenario=` on its command line, and resets through the i8042.
//!
//! Every instruction here may be emulated (on a PVM host guest kernel code runs at about a
//! million instructions a second), so it does little, and prints little.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};

mod mem;
mod scenarios;
mod virtio;
mod vsock;

const SERIAL: u16 = 0x3f8;
const SERIAL_LSR: u16 = SERIAL + 5;
const I8042_COMMAND: u16 = 0x64;
const I8042_DATA: u16 = 0x60;
const BOOT_TIMER: u16 = 0x440;

const STACK_SIZE: usize = 16 * 1024;
#[unsafe(no_mangle)]
static mut STACK: [u8; STACK_SIZE] = [0; STACK_SIZE];

// 64-bit entry (Linux boot protocol: long mode, identity paging, boot_params in RSI). Turn on
// SSE state handling (the VMM leaves CR4.OSFXSR clear), take our own stack, and call
// guest_main(boot_params, 0).
global_asm!(
    ".section .text.entry, \"ax\"",
    ".global _start",
    "_start:",
    "cli",
    "mov rax, cr0",
    "and rax, ~4",
    "or rax, 2",
    "mov cr0, rax",
    "mov rax, cr4",
    "or rax, 0x600",
    "mov cr4, rax",
    "lea rsp, [rip + {stack} + {size}]",
    "mov rdi, rsi",
    "xor esi, esi",
    "call {main}",
    "2: hlt",
    "jmp 2b",
    stack = sym STACK,
    size = const STACK_SIZE,
    main = sym guest_main,
);

// 32-bit PVH entry (protected mode, paging off, hvm_start_info in EBX): enable long mode with
// the identity map below, then call guest_main(0, start_info).
global_asm!(
    ".section .text.entry32, \"ax\"",
    ".code32",
    ".global pvh_start",
    "pvh_start:",
    "cli",
    "mov esi, ebx",
    "mov eax, cr4",
    "or eax, 0x620",           // PAE, OSFXSR, OSXMMEXCPT
    "mov cr4, eax",
    "mov eax, offset boot_pml4",
    "mov cr3, eax",
    "mov ecx, 0xc0000080",     // EFER.LME
    "rdmsr",
    "or eax, 0x100",
    "wrmsr",
    "mov eax, cr0",
    "and eax, ~4",
    "or eax, 0x80000003",      // PG, MP, PE
    "mov cr0, eax",
    "lgdt [boot_gdtr]",
    // jmp far 0x10:pvh_long_mode, encoded by hand (ptr16:32).
    ".byte 0xea",
    ".long pvh_long_mode",
    ".word 0x10",
    ".code64",
    "pvh_long_mode:",
    "mov ax, 0x18",
    "mov ds, ax",
    "mov es, ax",
    "mov ss, ax",
    "lea rsp, [rip + {stack} + {size}]",
    "xor edi, edi",
    "call {main}",
    "4: hlt",
    "jmp 4b",
    // hvm_start_info's PVH entry note for loaders (XEN_ELFNOTE_PHYS32_ENTRY = 18).
    ".section .note.pvh, \"a\", @note",
    ".balign 4",
    ".long 4, 4, 18",
    ".asciz \"Xen\"",
    ".long pvh_start",
    ".section .data.boot, \"aw\"",
    ".balign 8",
    "boot_gdt:",
    ".quad 0, 0, 0x00af9a000000ffff, 0x00cf92000000ffff",
    "boot_gdtr:",
    ".word 31",
    ".long boot_gdt",
    ".balign 4096",
    "boot_pml4:",
    ".quad boot_pdpt + 3",
    ".fill 511, 8, 0",
    "boot_pdpt:",
    ".quad boot_pd + 3, boot_pd + 0x1003, boot_pd + 0x2003, boot_pd + 0x3003",
    ".fill 508, 8, 0",
    "boot_pd:",
    ".set page, 0",
    ".rept 2048",
    ".quad (page << 21) | 0x83",
    ".set page, page + 1",
    ".endr",
    stack = sym STACK,
    size = const STACK_SIZE,
    main = sym guest_main,
    );

fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects in this guest.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as above.
    unsafe { asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags)) }
    value
}

pub fn puts(s: &[u8]) {
    for &b in s {
        outb(SERIAL, b);
    }
}

pub fn put_hex(v: u64) {
    puts(b"0x");
    let digits = (64 - v.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        outb(SERIAL, b"0123456789abcdef"[((v >> (i * 4)) & 0xf) as usize]);
    }
}

pub fn put_dec(mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    puts(&buf[i..]);
}

/// Read a value at a guest-physical address (identity mapped).
fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: callers pass addresses inside structures the VMM wrote into RAM.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |a, i| a.wrapping_add(rd::<u8>(addr + i))) == 0
}

/// Where the VMM described the machine: the Linux zero page or a PVH hvm_start_info.
struct BootInfo {
    cmdline: u64,
    e820: u64,
    e820_entries: u64,
    e820_stride: u64,
}

impl BootInfo {
    fn linux(boot_params: u64) -> Self {
        Self {
            cmdline: u64::from(rd::<u32>(boot_params + 0x228)),
            e820: boot_params + 0x2d0,
            e820_entries: u64::from(rd::<u8>(boot_params + 0x1e8)).min(128),
            e820_stride: 20,
        }
    }

    fn pvh(start_info: u64) -> Self {
        let version = rd::<u32>(start_info + 4);
        let (e820, e820_entries) = if version >= 1 {
            (rd::<u64>(start_info + 40), u64::from(rd::<u32>(start_info + 48)).min(128))
        } else {
            (0, 0)
        };
        Self { cmdline: rd::<u64>(start_info + 24), e820, e820_entries, e820_stride: 24 }
    }
}

/// The NUL-terminated command line at `ptr`.
fn cmdline(ptr: u64) -> &'static [u8] {
    if ptr == 0 {
        return &[];
    }
    let mut len = 0;
    while len < 4096 && rd::<u8>(ptr + len) != 0 {
        len += 1;
    }
    // SAFETY: `ptr..ptr+len` is the command line in RAM, which nothing writes while we run.
    unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) }
}

/// The value of `key=` on the command line.
pub fn param<'a>(cmdline: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    cmdline.split(|&b| b == b' ').find_map(|w| {
        (w.len() > key.len() && w.starts_with(key) && w[key.len()] == b'=').then(|| &w[key.len() + 1..])
    })
}

/// Print the e820 map; touch the last byte of each RAM range below 4 GiB (what is identity
/// mapped) to show it is really there. Returns the RAM total.
fn report_e820(info: &BootInfo) -> u64 {
    let mut ram = 0;
    for i in 0..info.e820_entries {
        let entry = info.e820 + i * info.e820_stride;
        let (start, size, kind) = (rd::<u64>(entry), rd::<u64>(entry + 8), rd::<u32>(entry + 16));
        puts(b"e820: ");
        put_hex(start);
        puts(b"-");
        put_hex(start + size);
        puts(if kind == 1 { b" ram\n" } else { b" reserved\n" });
        if kind == 1 {
            ram += size;
            let last = start + size - 1;
            if last < (4 << 30) {
                let p = last as *mut u8;
                // SAFETY: the VMM says this byte is RAM; nothing else lives at the end of RAM.
                let ok = unsafe {
                    core::ptr::write_volatile(p, 0xa5);
                    core::ptr::read_volatile(p) == 0xa5
                };
                if !ok {
                    puts(b"e820: RAM at the end of this range does not hold a value\n");
                }
            }
        }
    }
    ram
}

/// Find the MP floating pointer where Linux looks: the EBDA, then the BIOS area.
fn find_mp_table() -> Option<u64> {
    for (start, len) in [(0x9fc00u64, 0x400u64), (0xf0000, 0x10000)] {
        let mut addr = start;
        while addr < start + len {
            if rd::<[u8; 4]>(addr) == *b"_MP_" && checksum_ok(addr, 16) {
                return Some(addr);
            }
            addr += 16;
        }
    }
    None
}

/// Print the processors the MP table lists.
fn report_cpus() {
    let Some(fp) = find_mp_table() else {
        puts(b"cpus: no MP table\n");
        return;
    };
    let cfg = u64::from(rd::<u32>(fp + 4));
    let len = u64::from(rd::<u16>(cfg + 4));
    if rd::<[u8; 4]>(cfg) != *b"PCMP" || !checksum_ok(cfg, len) {
        puts(b"cpus: bad MP configuration table\n");
        return;
    }
    let count = rd::<u16>(cfg + 34);
    let (mut at, mut cpus) = (cfg + 44, 0u64);
    let mut ids = [0u8; 64];
    for _ in 0..count {
        if at >= cfg + len {
            break;
        }
        let kind = rd::<u8>(at);
        if kind == 0 {
            if rd::<u8>(at + 3) & 1 != 0 && cpus < 64 {
                ids[cpus as usize] = rd::<u8>(at + 1);
                cpus += 1;
            }
            at += 20;
        } else {
            at += 8;
        }
    }
    puts(b"cpus: ");
    put_dec(cpus);
    puts(b" apic-ids:");
    for id in &ids[..cpus as usize] {
        puts(b" ");
        put_dec(u64::from(*id));
    }
    puts(b"\n");
}

/// Echo one line typed on the console back.
fn echo_line() {
    puts(b"echo: ready\n");
    let mut line = [0u8; 128];
    let mut len = 0;
    loop {
        while inb(SERIAL_LSR) & 1 == 0 {}
        let b = inb(SERIAL);
        if b == b'\n' || b == b'\r' {
            break;
        }
        if len < line.len() {
            line[len] = b;
            len += 1;
        }
    }
    puts(b"echo: ");
    puts(&line[..len]);
    puts(b"\n");
}

/// Print the keys the i8042 keyboard sends (SendCtrlAltDel through the API), polling its
/// status port, for up to about 20 s.
fn keyboard() {
    puts(b"keyboard: waiting\n");
    puts(b"keyboard:");
    let (start, mut keys) = (scenarios::rdtsc(), 0);
    while keys < 4 && scenarios::rdtsc().wrapping_sub(start) < 60_000_000_000 {
        if inb(I8042_COMMAND) & 1 != 0 {
            puts(b" ");
            put_hex(u64::from(inb(I8042_DATA)));
            keys += 1;
        }
    }
    puts(if keys == 4 { b"\n" } else { b" (timed out)\n" });
}

fn reset() -> ! {
    puts(b"gureum-test-guest: reset\n");
    outb(I8042_COMMAND, 0xfe);
    // Where there is no i8042 (QEMU microvm), QEMU's isa-debug-exit device on port 0xf4 ends
    // the VM instead.
    outb(0xf4, 0);
    loop {
        // SAFETY: halting with interrupts off only stops this vCPU.
        unsafe { asm!("hlt", options(nomem, nostack)) }
    }
}

extern "C" fn guest_main(boot_params: u64, pvh_start_info: u64) -> ! {
    puts(b"gureum-test-guest: hello\n");
    let info = if boot_params != 0 {
        BootInfo::linux(boot_params)
    } else {
        puts(b"boot: pvh\n");
        BootInfo::pvh(pvh_start_info)
    };
    let cmdline = cmdline(info.cmdline);
    puts(b"cmdline: ");
    puts(cmdline);
    puts(b"\n");
    let ram = report_e820(&info);
    puts(b"ram: ");
    put_dec(ram >> 10);
    puts(b" KiB\n");
    report_cpus();
    outb(BOOT_TIMER, 1);
    puts(b"boot-timer: written\n");
    if let Some(token) = param(cmdline, b"token") {
        puts(b"token: ");
        puts(token);
        puts(b"\n");
    }
    match param(cmdline, b"scenario") {
        None | Some(b"reset") => {}
        Some(b"echo") => echo_line(),
        Some(b"keyboard") => keyboard(),
        Some(b"virtio-rng") => scenarios::rng(cmdline),
        Some(b"virtio-blk") => scenarios::blk(cmdline),
        Some(b"virtio-hostile") => scenarios::hostile(cmdline),
        Some(b"virtio-net") => scenarios::net(cmdline),
        Some(b"bench-blk") => scenarios::bench_blk(cmdline),
        Some(b"bench-net") => scenarios::bench_net(cmdline),
        Some(b"vsock-echo") => vsock::echo(cmdline),
        Some(b"vsock-connect") => vsock::connect(cmdline),
        Some(b"triple-fault") => triple_fault(),
        Some(b"count") => scenarios::count(cmdline),
        Some(b"rng-count") => scenarios::rng_count(cmdline),
        Some(b"hang") => {
            puts(b"hang: spinning until stopped\n");
            loop {
                core::hint::spin_loop();
            }
        }
        Some(other) => {
            puts(b"scenario: unknown ");
            puts(other);
            puts(b"\n");
        }
    }
    if param(cmdline, b"then") == Some(b"idle") {
        // An idle instance for density runs: halted, interrupts off, costing no host CPU.
        puts(b"idle: halted until stopped\n");
        loop {
            // SAFETY: halting with interrupts off only stops this vCPU.
            unsafe { asm!("hlt", options(nomem, nostack)) }
        }
    }
    if param(cmdline, b"then") == Some(b"hang") {
        puts(b"hang: spinning until stopped\n");
        loop {
            core::hint::spin_loop();
        }
    }
    reset()
}

/// An exception with no IDT to deliver it through: #UD becomes #GP, then #DF, then a triple
/// fault, the way a kernel that crashes before it can print anything ends.
fn triple_fault() -> ! {
    puts(b"triple-fault: an empty IDT, then ud2\n");
    let empty_idt = [0u16; 5];
    // SAFETY: the point is to crash this vCPU; nothing runs after it.
    unsafe { asm!("lidt [{}]", "ud2", in(reg) empty_idt.as_ptr(), options(noreturn)) }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    puts(b"gureum-test-guest: panic\n");
    reset()
}
