//! A minimal virtio-vsock driver for tests: an echo listener (host connects through gureum's
//! Unix socket), and a client connecting to the host. Zero-copy echo: the echoed payload is
//! transmitted straight from the receive buffer it arrived in, unless the host has no credit
//! for it; then it waits in a per-connection staging ring until the host's credit comes back.

use crate::scenarios::{number, read_byte, write_bytes};
use crate::virtio::{self, Queue, r32};
use crate::{put_dec, puts};

const VSOCK: u32 = 19;
const HDR: u64 = 44;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Receive buffers: 16 of 64 KiB + header, from 8 MiB up.
const RX_BUFS: u64 = 0x80_0000;
const RX_BUF_LEN: u64 = 0x1_1000;
const RX_COUNT: u16 = 16;
/// The credit this driver gives the host: no more than one connection's staging ring holds,
/// since only echoed bytes are counted as forwarded.
const BUF_ALLOC: u32 = 256 * 1024;
/// Staging rings for echoes waiting for the host's credit: one of `BUF_ALLOC` per connection.
const STAGE: u64 = 0xC0_0000;
const MAX_CONNS: usize = 32;

fn rd32(a: u64) -> u32 {
    r32(a)
}

fn rd16(a: u64) -> u16 {
    u16::from(read_byte(a)) | u16::from(read_byte(a + 1)) << 8
}

fn rd64(a: u64) -> u64 {
    u64::from(r32(a)) | u64::from(r32(a + 4)) << 32
}

struct Vsock {
    cid: u64,
    rx: Queue,
    tx: Queue,
    /// The event queue, with one buffer posted: the device's transport reset (after a
    /// restore, which keeps no connections) arrives here.
    event: Queue,
}

struct Packet {
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Vsock {
    fn start(cmdline: &[u8]) -> Option<Self> {
        let (index, base) = virtio::find(cmdline, VSOCK)?;
        let cid = u64::from(r32(base + 0x100)) | u64::from(r32(base + 0x104)) << 32;
        let [mut rx, tx, mut event] = virtio::init_queues_n(base, index, 0, 64, 3).ok()?;
        for i in 0..RX_COUNT {
            rx.raw_desc(i, RX_BUFS + u64::from(i) * RX_BUF_LEN, RX_BUF_LEN as u32, 2, 0);
        }
        rx.post_many(0..RX_COUNT);
        event.raw_desc(0, event.buffers(), 8, 2, 0);
        event.post(0);
        Some(Self { cid, rx, tx, event })
    }

    /// Whether the device reset the transport (every connection is gone) since last asked.
    fn transport_reset(&mut self) -> bool {
        if self.event.in_step() {
            return false;
        }
        let reset = self.event.wait_head().is_some() && rd32(self.event.buffers()) == EVENT_TRANSPORT_RESET;
        self.event.post(0);
        reset
    }

    /// The next packet and the receive buffer it is in (give it back with `repost`).
    fn recv(&mut self) -> Option<(Packet, u16)> {
        let head = self.rx.wait_head()?;
        let b = RX_BUFS + u64::from(head) * RX_BUF_LEN;
        let p = Packet {
            src_port: rd32(b + 16),
            dst_port: rd32(b + 20),
            len: rd32(b + 24),
            op: rd16(b + 30),
            flags: rd32(b + 32),
            buf_alloc: rd32(b + 36),
            fwd_cnt: rd32(b + 40),
        };
        let _ = rd64(b);
        Some((p, head))
    }

    fn repost(&mut self, head: u16) {
        self.rx.post_many(core::iter::once(head));
    }

    /// Send a packet; `data` is (address, length) of its payload in guest memory.
    fn send(&mut self, src_port: u32, dst_port: u32, op: u16, flags: u32, fwd_cnt: u32, data: Option<(u64, u32)>) {
        let hdr = self.tx.buffers();
        let mut h = [0u8; HDR as usize];
        h[0..8].copy_from_slice(&self.cid.to_le_bytes());
        h[8..16].copy_from_slice(&2u64.to_le_bytes());
        h[16..20].copy_from_slice(&src_port.to_le_bytes());
        h[20..24].copy_from_slice(&dst_port.to_le_bytes());
        h[24..28].copy_from_slice(&data.map_or(0, |d| d.1).to_le_bytes());
        h[28..30].copy_from_slice(&1u16.to_le_bytes());
        h[30..32].copy_from_slice(&op.to_le_bytes());
        h[32..36].copy_from_slice(&flags.to_le_bytes());
        h[36..40].copy_from_slice(&BUF_ALLOC.to_le_bytes());
        h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
        write_bytes(hdr, &h);
        match data {
            Some((addr, len)) if len > 0 => self.tx.submit(&[(hdr, HDR as u32, false), (addr, len, false)]),
            _ => self.tx.submit(&[(hdr, HDR as u32, false)]),
        };
    }
}

/// One host connection the echo listener serves.
#[derive(Clone, Copy, Default)]
struct Conn {
    open: bool,
    port: u32,
    /// Bytes echoed: what this driver tells the host it has forwarded.
    fwd: u32,
    /// Bytes sent to the host, and the host's credit as its last packet gave it.
    sent: u32,
    peer_alloc: u32,
    peer_fwd: u32,
    /// Bytes waiting in the staging ring, from offset `start`.
    start: u32,
    staged: u32,
    /// The host shut down; close (SHUTDOWN both ways) once the staged bytes are echoed, and
    /// count the connection closed at the host's RST, which comes once they are written.
    closing: bool,
    shut_sent: bool,
}

impl Conn {
    fn credit(&self) -> u32 {
        self.peer_alloc.saturating_sub(self.sent.wrapping_sub(self.peer_fwd))
    }

    /// Copy `len` bytes at `data` to the end of this connection's staging ring (`ring`).
    fn stage(&mut self, ring: u64, data: u64, len: u32) {
        for i in 0..len {
            let at = (self.start + self.staged + i) % BUF_ALLOC;
            write_bytes(ring + u64::from(at), &[read_byte(data + u64::from(i))]);
        }
        self.staged += len;
    }
}

/// Accept host connections on `port=` and echo everything back, until `conns=` of them have
/// shut down. Prints the totals.
pub fn echo(cmdline: &[u8]) {
    let port = number(cmdline, b"port", 5000) as u32;
    let want = number(cmdline, b"conns", 1);
    let Some(mut v) = Vsock::start(cmdline) else {
        puts(b"vsock: no device\n");
        return;
    };
    puts(b"vsock: listening\n");
    let mut conns = [Conn::default(); MAX_CONNS];
    let (mut closed, mut bytes, mut staged) = (0u64, 0u64, 0u64);
    while closed < want {
        let Some((p, head)) = v.recv() else {
            puts(b"vsock: timeout\n");
            return;
        };
        if v.transport_reset() {
            let open = conns.iter().filter(|c| c.open).count();
            conns = [Conn::default(); MAX_CONNS];
            puts(b"vsock: transport reset, ");
            put_dec(open as u64);
            puts(b" connections dropped\n");
        }
        let slot = conns.iter().position(|c| c.open && c.port == p.src_port);
        if let Some(c) = slot.map(|i| &mut conns[i]) {
            (c.peer_alloc, c.peer_fwd) = (p.buf_alloc, p.fwd_cnt);
        }
        match (p.op, slot) {
            (OP_REQUEST, _) if p.dst_port == port => match conns.iter().position(|c| !c.open) {
                Some(i) => {
                    conns[i] = Conn { open: true, port: p.src_port, peer_alloc: p.buf_alloc, peer_fwd: p.fwd_cnt, ..Conn::default() };
                    v.send(port, p.src_port, OP_RESPONSE, 0, 0, None);
                }
                None => v.send(port, p.src_port, OP_RST, 0, 0, None),
            },
            (OP_RW, Some(i)) => {
                bytes += u64::from(p.len);
                let data = RX_BUFS + u64::from(head) * RX_BUF_LEN + HDR;
                let c = &mut conns[i];
                if c.staged == 0 && c.credit() >= p.len {
                    c.sent = c.sent.wrapping_add(p.len);
                    c.fwd = c.fwd.wrapping_add(p.len);
                    v.send(port, p.src_port, OP_RW, 0, c.fwd, Some((data, p.len)));
                } else {
                    if c.staged == 0 {
                        v.send(port, p.src_port, OP_CREDIT_REQUEST, 0, c.fwd, None);
                    }
                    c.stage(STAGE + i as u64 * u64::from(BUF_ALLOC), data, p.len);
                    staged += u64::from(p.len);
                }
            }
            (OP_CREDIT_REQUEST, Some(i)) => v.send(port, p.src_port, OP_CREDIT_UPDATE, 0, conns[i].fwd, None),
            (OP_CREDIT_REQUEST, None) => v.send(port, p.src_port, OP_CREDIT_UPDATE, 0, 0, None),
            (OP_SHUTDOWN, Some(i)) => conns[i].closing = true,
            (OP_RST, Some(i)) => {
                conns[i].open = false;
                closed += 1;
            }
            _ => {}
        }
        v.repost(head);
        if let Some(i) = slot {
            drain(&mut v, port, i, &mut conns[i]);
        }
    }
    puts(b"vsock: echoed ");
    put_dec(closed);
    puts(b" connections, ");
    put_dec(bytes);
    puts(b" bytes");
    if staged > 0 {
        puts(b" (");
        put_dec(staged);
        puts(b" of them waited for the host's credit)");
    }
    puts(b"\n");
}

/// Echo what connection `i` has staged, as far as the host's credit goes; close it when the
/// host has shut down and nothing is left.
fn drain(v: &mut Vsock, port: u32, i: usize, c: &mut Conn) {
    if !c.open || c.shut_sent {
        return;
    }
    let ring = STAGE + i as u64 * u64::from(BUF_ALLOC);
    while c.staged > 0 && c.credit() > 0 {
        let n = c.staged.min(c.credit()).min(BUF_ALLOC - c.start);
        c.sent = c.sent.wrapping_add(n);
        c.fwd = c.fwd.wrapping_add(n);
        v.send(port, c.port, OP_RW, 0, c.fwd, Some((ring + u64::from(c.start), n)));
        c.start = (c.start + n) % BUF_ALLOC;
        c.staged -= n;
    }
    if c.closing && c.staged == 0 {
        v.send(port, c.port, OP_SHUTDOWN, 3, c.fwd, None);
        c.shut_sent = true;
    }
}

/// Connect to the host's `port=`, send a greeting, print the answer, shut down.
pub fn connect(cmdline: &[u8]) {
    let port = number(cmdline, b"port", 6000) as u32;
    let Some(mut v) = Vsock::start(cmdline) else {
        puts(b"vsock: no device\n");
        return;
    };
    const LOCAL: u32 = 40_000;
    v.send(LOCAL, port, OP_REQUEST, 0, 0, None);
    let mut fwd = 0u32;
    let mut answered = false;
    loop {
        let Some((p, head)) = v.recv() else {
            puts(b"vsock: timeout\n");
            return;
        };
        match p.op {
            OP_RESPONSE => {
                puts(b"vsock: connected\n");
                let msg = b"hello-from-guest\n";
                let at = v.tx.buffers() + 0x100;
                write_bytes(at, msg);
                v.send(LOCAL, port, OP_RW, 0, 0, Some((at, msg.len() as u32)));
            }
            OP_RW => {
                fwd = fwd.wrapping_add(p.len);
                puts(b"vsock: host says ");
                let data = RX_BUFS + u64::from(head) * RX_BUF_LEN + HDR;
                for i in 0..u64::from(p.len.min(64)) {
                    let c = read_byte(data + i);
                    if c != b'\n' {
                        puts(&[c]);
                    }
                }
                puts(b"\n");
                answered = true;
                v.send(LOCAL, port, OP_SHUTDOWN, 3, fwd, None);
            }
            OP_RST => {
                puts(if answered { b"vsock: closed\n" } else { b"vsock: refused\n" });
                v.repost(head);
                return;
            }
            _ => {}
        }
        let _ = p.flags;
        v.repost(head);
    }
}
