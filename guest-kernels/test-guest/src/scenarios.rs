//! Device scenarios: the guest half of gureum's virtio tests. Each prints what it saw; the host
//! half (tests/virtio.rs) checks it, and the disk image.

use crate::virtio::{self, Queue, r32, w32};
use crate::{put_dec, put_hex, puts};

const NET: u32 = 1;
const BLK: u32 = 2;
const RNG: u32 = 4;

pub fn write_bytes(addr: u64, bytes: &[u8]) {
    for (i, b) in bytes.iter().enumerate() {
        // SAFETY: the driver's scratch area in guest RAM.
        unsafe { core::ptr::write_volatile((addr + i as u64) as *mut u8, *b) }
    }
}

pub fn read_byte(addr: u64) -> u8 {
    // SAFETY: as above.
    unsafe { core::ptr::read_volatile(addr as *const u8) }
}

fn started(cmdline: &[u8], kind: u32, features: u32, size: u32) -> Option<Queue> {
    let Some((index, base)) = virtio::find(cmdline, kind) else {
        puts(b"virtio: no such device\n");
        return None;
    };
    match virtio::init(base, index, features, size) {
        Ok(q) => Some(q),
        Err(status) => {
            puts(b"virtio: init failed, status ");
            put_hex(u64::from(status));
            puts(b"\n");
            None
        }
    }
}

fn say(what: &[u8], value: Option<u32>) {
    puts(what);
    match value {
        Some(v) => put_dec(u64::from(v)),
        None => puts(b"timeout"),
    }
    puts(b"\n");
}

pub fn rng(cmdline: &[u8]) {
    let Some(mut q) = started(cmdline, RNG, 0, 8) else { return };
    let buf = q.buffers();
    let len = q.submit(&[(buf, 64, true)]).unwrap_or(0);
    let mut seen = [false; 256];
    for i in 0..u64::from(len) {
        seen[usize::from(read_byte(buf + i))] = true;
    }
    puts(b"rng: ");
    put_dec(u64::from(len));
    puts(b" bytes, ");
    put_dec(seen.iter().filter(|s| **s).count() as u64);
    puts(b" distinct\n");
}

/// One block request: header (type, sector), optional data buffer, status byte.
fn blk_request(q: &mut Queue, kind: u32, sector: u64, data: Option<(u64, u32, bool)>) -> u8 {
    let hdr = q.buffers();
    let status = hdr + 0x100;
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    write_bytes(hdr, &h);
    write_bytes(status, &[0xff]);
    let done = match data {
        Some(d) => q.submit(&[(hdr, 16, false), d, (status, 1, true)]),
        None => q.submit(&[(hdr, 16, false), (status, 1, true)]),
    };
    if done.is_none() {
        return 0xee;
    }
    read_byte(status)
}

fn status(what: &[u8], s: u8) {
    puts(b"blk: ");
    puts(what);
    puts(b" status=");
    put_dec(u64::from(s));
    puts(b"\n");
}

/// Read sector 0, write sector 1, flush, read it back, discard sector 2, get the id, read past
/// the end.
pub fn blk(cmdline: &[u8]) {
    // FLUSH, DISCARD, WRITE_ZEROES, RO: the driver takes what the device offers of these.
    let features = (1 << 5) | (1 << 9) | (1 << 13) | (1 << 14);
    let Some(mut q) = started(cmdline, BLK, features, 8) else { return };
    let capacity = u64::from(r32(q.base + 0x100)) | u64::from(r32(q.base + 0x104)) << 32;
    puts(b"blk: capacity ");
    put_dec(capacity);
    puts(b" sectors\n");
    let data = q.buffers() + 0x1000;
    let back = q.buffers() + 0x2000;

    let s = blk_request(&mut q, 0, 0, Some((data, 512, true)));
    status(b"read sector 0", s);
    puts(b"blk: sector 0 begins ");
    for i in 0..16 {
        let c = read_byte(data + i);
        puts(&[if c.is_ascii_graphic() { c } else { b'.' }]);
    }
    puts(b"\n");

    let mut sector = [0x5au8; 512];
    sector[..16].copy_from_slice(b"written-by-guest");
    write_bytes(data, &sector);
    status(b"write sector 1", blk_request(&mut q, 1, 1, Some((data, 512, false))));
    status(b"flush", blk_request(&mut q, 4, 0, None));
    let s = blk_request(&mut q, 0, 1, Some((back, 512, true)));
    let same = (0..512).all(|i| read_byte(back + i) == sector[i as usize]);
    status(if same { b"read back (same)" } else { b"read back (DIFFERENT)" }, s);

    let seg = q.buffers() + 0x3000;
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&2u64.to_le_bytes());
    d[8..12].copy_from_slice(&1u32.to_le_bytes());
    write_bytes(seg, &d);
    status(b"discard sector 2", blk_request(&mut q, 11, 0, Some((seg, 16, false))));

    let s = blk_request(&mut q, 8, 0, Some((data, 20, true)));
    puts(b"blk: id ");
    for i in 0..20 {
        match read_byte(data + i) {
            0 => break,
            c => puts(&[c]),
        }
    }
    puts(b"\n");
    status(b"get id", s);
    status(b"read past the end", blk_request(&mut q, 0, capacity, Some((data, 512, true))));
}

/// What a hostile or broken driver might do; the device must answer sanely and keep working.
pub fn hostile(cmdline: &[u8]) {
    let Some((index, base)) = virtio::find(cmdline, RNG) else {
        puts(b"hostile: no rng device\n");
        return;
    };
    // A notify before the device is set up.
    w32(base + virtio::STATUS, 0);
    w32(base + 0x050, 0);
    puts(b"hostile: notified before activation\n");
    // A queue size that is not a power of two.
    match virtio::init(base, index, 0, 6) {
        Err(s) if s & virtio::NEEDS_RESET != 0 => puts(b"hostile: queue size 6 refused (needs reset)\n"),
        _ => puts(b"hostile: queue size 6 ACCEPTED\n"),
    }
    // Config-space writes out of range, and writes to read-only registers.
    w32(base + 0x100 + 0xefc, 0xdead_beef);
    w32(base + 0x000, 0);
    w32(base + 0x008, 0);
    let Ok(mut q) = virtio::init(base, index, 0, 8) else {
        puts(b"hostile: could not restart the device\n");
        return;
    };
    let buf = q.buffers();
    say(b"hostile: buffer outside memory -> ", q.submit(&[(0xffff_0000_0000, 64, true)]));
    say(b"hostile: read-only buffer -> ", q.submit(&[(buf, 64, false)]));
    say(b"hostile: zero length -> ", q.submit(&[(buf, 0, true)]));
    // A descriptor loop: 0 -> 1 -> 0 -> ...
    q.raw_desc(0, buf, 16, 2 | 1, 1);
    q.raw_desc(1, buf, 16, 2 | 1, 0);
    say(b"hostile: descriptor loop -> ", q.publish(0));
    // A chain longer than the queue: 8 descriptors all chained, the last pointing back.
    for i in 0..8u16 {
        q.raw_desc(i, buf + u64::from(i) * 16, 16, 2 | 1, (i + 1) % 8);
    }
    say(b"hostile: chain longer than the queue -> ", q.publish(0));
    say(b"hostile: a good request after all that -> ", q.submit(&[(buf, 32, true)]));
}

/// Send a broadcast frame (ethertype 0x88b5, "gureum-net-ping") and wait for the host's
/// "gureum-net-pong" frame, skipping any other traffic.
pub fn net(cmdline: &[u8]) {
    let Some((index, base)) = virtio::find(cmdline, NET) else {
        puts(b"net: no device\n");
        return;
    };
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = read_byte(base + 0x100 + i as u64);
    }
    puts(b"net: mac");
    for m in mac {
        puts(b" ");
        put_hex(u64::from(m));
    }
    puts(b"\n");
    let Ok([mut rx, mut tx]) = virtio::init_queues(base, index, 1 << 5, 8, 2) else {
        puts(b"net: init failed\n");
        return;
    };
    let rxbuf = rx.buffers();
    rx.raw_desc(0, rxbuf, 2048, 2, 0);
    rx.post(0);

    let txbuf = tx.buffers();
    let mut frame = [0u8; 12 + 14 + 15];
    frame[12..18].fill(0xff);
    frame[18..24].copy_from_slice(&mac);
    frame[24..26].copy_from_slice(&[0x88, 0xb5]);
    frame[26..].copy_from_slice(b"gureum-net-ping");
    write_bytes(txbuf, &frame);
    say(b"net: sent ping, used ", tx.submit(&[(txbuf, frame.len() as u32, false)]));

    for _ in 0..16 {
        let Some(len) = rx.wait() else {
            puts(b"net: no frame arrived\n");
            return;
        };
        let pong = (0..15).all(|i| read_byte(rxbuf + 26 + i) == b"gureum-net-pong"[i as usize]);
        if len >= 41 && read_byte(rxbuf + 24) == 0x88 && read_byte(rxbuf + 25) == 0xb5 && pong {
            say(b"net: received pong, bytes ", Some(len));
            return;
        }
        rx.post(0);
    }
    puts(b"net: no pong among 16 frames\n");
}

/// Parse a decimal `key=` value from the command line.
pub fn number(cmdline: &[u8], key: &[u8], default: u64) -> u64 {
    crate::param(cmdline, key)
        .and_then(|v| v.iter().try_fold(0u64, |a, &c| c.is_ascii_digit().then(|| a * 10 + u64::from(c - b'0'))))
        .unwrap_or(default)
}

/// Read `count` requests of `bs` bytes (`bs=`, `count=`), `depth` in flight (`depth=`, at most
/// 64), cycling over the disk. The guest touches only headers and rings: the device moves the
/// data. Prints "bench: start" and "bench: done" around the run for the host to time.
pub fn bench_blk(cmdline: &[u8]) {
    let bs = number(cmdline, b"bs", 65536).clamp(512, 1 << 20) & !511;
    let count = number(cmdline, b"count", 1024);
    let depth = number(cmdline, b"depth", 32).clamp(1, 64) as u16;
    let write = crate::param(cmdline, b"op") == Some(b"write");
    let Some((index, base)) = virtio::find(cmdline, BLK) else {
        puts(b"bench: no block device\n");
        return;
    };
    let Ok(mut q) = virtio::init(base, index, 0, 256) else {
        puts(b"bench: init failed\n");
        return;
    };
    // This driver polls: VRING_AVAIL_F_NO_INTERRUPT spares the device its interrupts.
    q.no_interrupts();
    let capacity = u64::from(r32(base + 0x100)) | u64::from(r32(base + 0x104)) << 32;
    let per_disk = (capacity * 512 / bs).max(1);
    // Headers and status bytes in the scratch buffers; data from 16 MiB up.
    let hdrs = q.buffers();
    let data = 0x100_0000u64;
    let kind: u32 = if write { 1 } else { 0 };
    let mut issued = 0u64;
    let mut fill = |q: &Queue, slot: u16, n: u64| {
        let hdr = hdrs + u64::from(slot) * 32;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&((n % per_disk) * bs / 512).to_le_bytes());
        write_bytes(hdr, &h);
        let d = slot * 3;
        q.raw_desc(d, hdr, 16, 1, d + 1);
        q.raw_desc(d + 1, data + u64::from(slot) * bs, bs as u32, if write { 1 } else { 3 }, d + 2);
        q.raw_desc(d + 2, hdr + 16, 1, 2, 0);
    };
    puts(b"bench: start\n");
    let first = depth.min(count as u16);
    for slot in 0..first {
        fill(&q, slot, issued);
        issued += 1;
    }
    q.post_many((0..first).map(|s| s * 3));
    let mut done = 0u64;
    while done < count {
        let Some(head) = q.wait_head() else {
            puts(b"bench: timeout\n");
            return;
        };
        done += 1;
        if issued < count {
            let slot = head / 3;
            fill(&q, slot, issued);
            issued += 1;
            q.post_many(core::iter::once(head));
        }
    }
    puts(b"bench: done ");
    put_dec(done);
    puts(b" requests of ");
    put_dec(bs);
    puts(b" bytes\n");
}

/// Transmit `count=` frames of `size=` bytes (default 1514), `depth=` in flight, from one buffer
/// the device reads each time. Prints "bench: start" / "bench: done" for the host to time.
pub fn bench_net(cmdline: &[u8]) {
    let count = number(cmdline, b"count", 20000);
    let size = number(cmdline, b"size", 1514).clamp(60, 1514) as u32;
    let depth = number(cmdline, b"depth", 32).clamp(1, 128) as u16;
    let Some((index, base)) = virtio::find(cmdline, NET) else {
        puts(b"bench: no network device\n");
        return;
    };
    let Ok([_rx, mut tx]) = virtio::init_queues(base, index, 0, 256, 2) else {
        puts(b"bench: init failed\n");
        return;
    };
    tx.no_interrupts();
    let frame = tx.buffers();
    let mut f = [0u8; 12 + 14];
    f[12..18].fill(0xff);
    f[18..24].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
    f[24..26].copy_from_slice(&[0x88, 0xb5]);
    write_bytes(frame, &f);
    for slot in 0..depth {
        tx.raw_desc(slot, frame, 12 + size, 0, 0);
    }
    puts(b"bench: start\n");
    let first = depth.min(count as u16);
    tx.post_many(0..first);
    let (mut issued, mut done) = (u64::from(first), 0u64);
    while done < count {
        let Some(head) = tx.wait_head() else {
            puts(b"bench: timeout\n");
            return;
        };
        done += 1;
        if issued < count {
            issued += 1;
            tx.post_many(core::iter::once(head));
        }
    }
    puts(b"bench: done ");
    put_dec(done);
    puts(b" frames\n");
}

pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reads the time-stamp counter; no memory effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Every `every=` TSC ticks (default 2^27), 8 bytes from virtio-rng, printed as
/// "rng N: 16 hex digits", for ever: the device's queue must go on where it was across a
/// snapshot, and two clones of one snapshot must print different bytes.
pub fn rng_count(cmdline: &[u8]) {
    let Some(mut q) = started(cmdline, RNG, 0, 8) else { return };
    let every = number(cmdline, b"every", 1 << 27);
    let buf = q.buffers();
    let mut n = 0;
    loop {
        let due = rdtsc().wrapping_add(every);
        while rdtsc() < due {
            core::hint::spin_loop();
        }
        n += 1;
        let len = q.submit(&[(buf, 8, true)]);
        if !q.in_step() {
            puts(b"rng: the used ring is out of step\n");
            return;
        }
        puts(b"rng ");
        put_dec(n);
        puts(b": ");
        match len {
            Some(8) => {
                for i in 0..8 {
                    let b = read_byte(buf + i);
                    puts(&[b"0123456789abcdef"[usize::from(b >> 4)], b"0123456789abcdef"[usize::from(b & 15)]]);
                }
            }
            Some(other) => say(b"length ", Some(other)),
            None => puts(b"timeout"),
        }
        puts(b"\n");
    }
}

/// Counts, printing "count: N" every `every=` TSC ticks (default 2^27, ~50 ms at 2.7 GHz),
/// up to `count=` (default: until stopped). The next line is due `every` ticks after the
/// last one printed, so a pause leaves a gap, not a burst: for tests of pause, resume and
/// (later) snapshots, where the numbers must go on from where they were.
pub fn count(cmdline: &[u8]) {
    let every = number(cmdline, b"every", 1 << 27);
    let last = number(cmdline, b"count", u64::MAX);
    let mut n = 0;
    while n < last {
        let due = rdtsc().wrapping_add(every);
        while rdtsc() < due {
            core::hint::spin_loop();
        }
        n += 1;
        puts(b"count: ");
        crate::put_dec(n);
        puts(b"\n");
    }
}
