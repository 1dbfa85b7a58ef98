//! A minimal virtio-vsock driver for tests: an echo listener (host connects through gureum's
//! Unix socket), and a client connecting to the host. Zero-copy echo: the echoed payload is
//! transmitted straight from the receive buffer it arrived in.

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
/// Receive buffers: 16 of 64 KiB + header, from 8 MiB up.
const RX_BUFS: u64 = 0x80_0000;
const RX_BUF_LEN: u64 = 0x1_1000;
const RX_COUNT: u16 = 16;
const BUF_ALLOC: u32 = 1 << 20;

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
}

struct Packet {
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
}

impl Vsock {
    fn start(cmdline: &[u8]) -> Option<Self> {
        let (index, base) = virtio::find(cmdline, VSOCK)?;
        let cid = u64::from(r32(base + 0x100)) | u64::from(r32(base + 0x104)) << 32;
        let [mut rx, tx] = virtio::init_queues(base, index, 0, 64, 2).ok()?;
        for i in 0..RX_COUNT {
            rx.raw_desc(i, RX_BUFS + u64::from(i) * RX_BUF_LEN, RX_BUF_LEN as u32, 2, 0);
        }
        rx.post_many(0..RX_COUNT);
        Some(Self { cid, rx, tx })
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
    // (host port, bytes received) per open connection.
    let mut conns = [(0u32, 0u32, false); 32];
    let (mut closed, mut bytes) = (0u64, 0u64);
    while closed < want {
        let Some((p, head)) = v.recv() else {
            puts(b"vsock: timeout\n");
            return;
        };
        let slot = conns.iter().position(|c| c.2 && c.0 == p.src_port);
        match p.op {
            OP_REQUEST if p.dst_port == port => match conns.iter().position(|c| !c.2) {
                Some(i) => {
                    conns[i] = (p.src_port, 0, true);
                    v.send(port, p.src_port, OP_RESPONSE, 0, 0, None);
                }
                None => v.send(port, p.src_port, OP_RST, 0, 0, None),
            },
            OP_RW => {
                if let Some(i) = slot {
                    conns[i].1 = conns[i].1.wrapping_add(p.len);
                    bytes += u64::from(p.len);
                    let data = RX_BUFS + u64::from(head) * RX_BUF_LEN + HDR;
                    v.send(port, p.src_port, OP_RW, 0, conns[i].1, Some((data, p.len)));
                }
            }
            OP_CREDIT_REQUEST => {
                let fwd = slot.map_or(0, |i| conns[i].1);
                v.send(port, p.src_port, OP_CREDIT_UPDATE, 0, fwd, None);
            }
            OP_SHUTDOWN | OP_RST => {
                if let Some(i) = slot {
                    conns[i].2 = false;
                    closed += 1;
                    if p.op == OP_SHUTDOWN {
                        v.send(port, p.src_port, OP_RST, 0, conns[i].1, None);
                    }
                }
            }
            _ => {}
        }
        v.repost(head);
    }
    puts(b"vsock: echoed ");
    put_dec(closed);
    puts(b" connections, ");
    put_dec(bytes);
    puts(b" bytes\n");
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
