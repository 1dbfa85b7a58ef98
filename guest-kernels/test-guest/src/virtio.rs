//! A minimal virtio-mmio driver: find devices on the command line, negotiate VERSION_1, set up
//! queue 0, submit one chain at a time and poll the used ring. No interrupts.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

pub const STATUS: u64 = 0x070;
pub const NEEDS_RESET: u32 = 0x40;
const WRITE: u16 = 2;
const NEXT: u16 = 1;
/// Where the driver keeps rings and buffers: 128 KiB per device from 4 MiB up, 32 KiB per queue
/// (descriptors, available ring, used ring, then 20 KiB of buffers).
pub const SCRATCH: u64 = 0x40_0000;
/// How long to wait for the device: about 10 s at a few GHz of TSC.
const WAIT_TSC: u64 = 30_000_000_000;

fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter; no memory effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    u64::from(hi) << 32 | u64::from(lo)
}

pub fn r32(addr: u64) -> u32 {
    // SAFETY: a device register (or guest RAM) the VMM set up; identity mapped.
    unsafe { read_volatile(addr as *const u32) }
}

pub fn w32(addr: u64, v: u32) {
    // SAFETY: as above.
    unsafe { write_volatile(addr as *mut u32, v) }
}

fn w16(addr: u64, v: u16) {
    // SAFETY: guest RAM in the driver's scratch area.
    unsafe { write_volatile(addr as *mut u16, v) }
}

fn r16(addr: u64) -> u16 {
    // SAFETY: as above.
    unsafe { read_volatile(addr as *const u16) }
}

fn w64(addr: u64, v: u64) {
    // SAFETY: as above.
    unsafe { write_volatile(addr as *mut u64, v) }
}

/// The base addresses in `virtio_mmio.device=4K@0xBASE:IRQ` entries, in order.
pub fn devices(cmdline: &[u8]) -> impl Iterator<Item = u64> + '_ {
    cmdline.split(|&b| b == b' ').filter_map(|w| {
        let rest = w.strip_prefix(b"virtio_mmio.device=")?;
        let at = rest.iter().position(|&b| b == b'@')?;
        let hex = rest[at + 1..].strip_prefix(b"0x")?;
        let mut v = 0u64;
        for &c in hex.iter().take_while(|&&c| c != b':') {
            v = v * 16 + u64::from((c as char).to_digit(16)?);
        }
        Some(v)
    })
}

/// Where QEMU's microvm puts its virtio-mmio transports (24 slots of 512 bytes), for when the
/// command line names no devices (QEMU does not add them for a PVH kernel).
const MICROVM_SLOTS: core::ops::Range<u64> = 0..24;
const MICROVM_BASE: u64 = 0xfeb0_0000;

/// The first device of type `kind`, and its index (for its scratch area).
pub fn find(cmdline: &[u8], kind: u32) -> Option<(usize, u64)> {
    let is = |base: u64| r32(base) == 0x7472_6976 && r32(base + 4) == 2 && r32(base + 8) == kind;
    if devices(cmdline).next().is_some() {
        return devices(cmdline).enumerate().find(|&(_, base)| is(base));
    }
    MICROVM_SLOTS.map(|i| (i as usize, MICROVM_BASE + i * 0x200)).find(|&(_, base)| is(base))
}

pub struct Queue {
    pub base: u64,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    last_used: u16,
    notify: u32,
}

/// Reset, negotiate VERSION_1 plus `features` (low word), set up queue 0 with `size` entries
/// and start the device. Returns the status register on failure.
pub fn init(base: u64, index: usize, features: u32, size: u32) -> Result<Queue, u32> {
    let [q, _] = init_queues(base, index, features, size, 1)?;
    Ok(q)
}

/// As `init`, with `count` (1 or 2) queues.
pub fn init_queues(base: u64, index: usize, features: u32, size: u32, count: u32) -> Result<[Queue; 2], u32> {
    init_queues_n(base, index, features, size, count)
}

/// As `init`, with N queues set up, the first `count` of them enabled.
pub fn init_queues_n<const N: usize>(base: u64, index: usize, features: u32, size: u32, count: u32) -> Result<[Queue; N], u32> {
    w32(base + STATUS, 0);
    w32(base + STATUS, 1 | 2);
    w32(base + 0x014, 1);
    if r32(base + 0x010) & 1 == 0 {
        return Err(r32(base + STATUS));
    }
    w32(base + 0x014, 0);
    let offered = r32(base + 0x010);
    w32(base + 0x024, 0);
    w32(base + 0x020, features & offered);
    w32(base + 0x024, 1);
    w32(base + 0x020, 1);
    w32(base + STATUS, 1 | 2 | 8);
    if r32(base + STATUS) & 8 == 0 {
        return Err(r32(base + STATUS));
    }
    let queue = |q: u32| {
        let area = SCRATCH + index as u64 * 0x2_0000 + u64::from(q) * 0x8000;
        for off in (0..0x3000).step_by(8) {
            w64(area + off, 0);
        }
        w32(base + 0x030, q);
        let size = size.min(r32(base + 0x034));
        w32(base + 0x038, size);
        let (desc, avail, used) = (area, area + 0x1000, area + 0x2000);
        for (reg, addr) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
            w32(base + reg, addr as u32);
            w32(base + reg + 4, (addr >> 32) as u32);
        }
        if q < count {
            w32(base + 0x044, 1);
        }
        Queue { base, desc, avail, used, size: size.max(1) as u16, last_used: 0, notify: q }
    };
    let queues = core::array::from_fn(|q| queue(q as u32));
    w32(base + STATUS, 1 | 2 | 8 | 4);
    let status = r32(base + STATUS);
    if status & NEEDS_RESET != 0 || status & 4 == 0 {
        return Err(status);
    }
    Ok(queues)
}

impl Queue {
    /// Where this device's data buffers may go (after its rings).
    pub fn buffers(&self) -> u64 {
        self.desc + 0x3000
    }

    /// Submit one chain of (address, length, device-writable) buffers starting at descriptor
    /// `first`, wait for the device, and return the length it reports (None if it never answers).
    pub fn submit_at(&mut self, first: u16, bufs: &[(u64, u32, bool)]) -> Option<u32> {
        let n = bufs.len() as u16;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let i = i as u16;
            let slot = (first + i) % self.size;
            let d = self.desc + u64::from(slot) * 16;
            let last = i + 1 == n;
            let flags = if writable { WRITE } else { 0 } | if last { 0 } else { NEXT };
            w64(d, addr);
            w32(d + 8, len);
            w16(d + 12, flags);
            w16(d + 14, (slot + 1) % self.size);
        }
        self.publish(first % self.size)
    }

    /// Put descriptor `head` (already written) on the available ring and wait for it.
    pub fn publish(&mut self, head: u16) -> Option<u32> {
        self.post(head);
        self.wait()
    }

    /// Put descriptor `head` on the available ring and notify the device, without waiting.
    pub fn post(&mut self, head: u16) {
        let idx = r16(self.avail + 2);
        w16(self.avail + 4 + u64::from(idx % self.size) * 2, head);
        fence(Ordering::SeqCst);
        w16(self.avail + 2, idx.wrapping_add(1));
        fence(Ordering::SeqCst);
        w32(self.base + 0x050, self.notify);
    }

    /// Wait for the next used element: its (head, length), or None after about ten seconds.
    fn next_used(&mut self) -> Option<(u16, u32)> {
        let start = rdtsc();
        while rdtsc().wrapping_sub(start) < WAIT_TSC {
            if r16(self.used + 2) != self.last_used {
                fence(Ordering::SeqCst);
                let elem = self.used + 4 + u64::from(self.last_used % self.size) * 8;
                self.last_used = self.last_used.wrapping_add(1);
                return Some((r32(elem) as u16, r32(elem + 4)));
            }
            core::hint::spin_loop();
        }
        None
    }

    /// The length the device reported for the next used element.
    pub fn wait(&mut self) -> Option<u32> {
        self.next_used().map(|(_, len)| len)
    }

    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> Option<u32> {
        self.submit_at(0, bufs)
    }

    /// Put several heads on the available ring and notify once.
    pub fn post_many(&mut self, heads: impl Iterator<Item = u16>) {
        let mut idx = r16(self.avail + 2);
        for head in heads {
            w16(self.avail + 4 + u64::from(idx % self.size) * 2, head);
            idx = idx.wrapping_add(1);
        }
        fence(Ordering::SeqCst);
        w16(self.avail + 2, idx);
        fence(Ordering::SeqCst);
        w32(self.base + 0x050, self.notify);
    }

    /// The head of the next used element.
    pub fn wait_head(&mut self) -> Option<u16> {
        self.next_used().map(|(head, _)| head)
    }

    /// Whether the device's used index is exactly where this driver has read to: a device that
    /// lost its place (a bad restore) is off.
    pub fn in_step(&self) -> bool {
        r16(self.used + 2) == self.last_used
    }

    /// Tell the device not to interrupt (VRING_AVAIL_F_NO_INTERRUPT); this driver polls.
    pub fn no_interrupts(&self) {
        w16(self.avail, 1);
    }

    /// Write a raw descriptor, for hostile chains.
    pub fn raw_desc(&self, slot: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = self.desc + u64::from(slot % self.size) * 16;
        w64(d, addr);
        w32(d + 8, len);
        w16(d + 12, flags);
        w16(d + 14, next);
    }
}
