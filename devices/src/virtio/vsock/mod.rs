//! virtio-vsock (virtio 1.2, 5.10) with host-side Unix sockets, wire-compatible with
//! Firecracker's: queue 0 receives, 1 transmits, 2 carries events (unused: gureum never moves
//! a guest). See [`muxer`] for the host side.

pub mod muxer;
pub mod packet;

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::Path;

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{TYPE_VSOCK, VirtioDevice, complete_chains, serve_suppressed};
use muxer::{MAX_PAYLOAD, Muxer};
use packet::{HDR_LEN, Header};

const QUEUE_SIZES: [u16; 3] = [256, 256, 16];
/// virtio-vsock's only event: every connection is gone (5.10.6.7).
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Hand every transmitted packet to the muxer; returns how many chains were used.
pub fn transmit(queue: &mut Queue, mem: &GuestMemoryMmap, muxer: &mut Muxer) -> usize {
    complete_chains(queue, mem, |chain| {
        if let Ok(mut reader) = Reader::new(mem, chain) {
            let mut bytes = [0u8; HDR_LEN];
            if reader.read_exact(&mut bytes).is_ok() {
                let hdr = Header::parse(&bytes);
                muxer.handle_guest_packet(hdr, &mut (&mut reader).take(u64::from(hdr.len)));
            }
        }
        0
    })
}

/// Fill receive buffers with what the muxer has for the guest; returns how many were used.
pub fn receive(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    muxer: &mut Muxer,
    buf: &mut [u8],
) -> usize {
    let mut used = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let len = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                let room = w.available_bytes() - HDR_LEN;
                let Some((hdr, n)) = muxer.next_packet(room, buf) else {
                    // Nothing to send: give the buffer back for later.
                    queue.go_to_previous_position();
                    break;
                };
                match w
                    .write_all(&hdr.bytes())
                    .and_then(|()| w.write_all(&buf[..n]))
                {
                    Ok(()) => HDR_LEN + n,
                    Err(_) => 0,
                }
            }
            // A buffer too small for a header, or unusable: returned empty.
            _ => 0,
        };
        if queue
            .add_used(mem, head, u32::try_from(len).unwrap_or(0))
            .is_ok()
        {
            used += 1;
        }
    }
    used
}

pub struct Vsock {
    cid: u64,
    muxer: Muxer,
    buf: Vec<u8>,
    active: Option<(GuestMemoryMmap, Queue, Queue)>,
    /// The event queue: a transport reset after a restore goes here.
    event: Option<Queue>,
}

impl Vsock {
    /// Guest `cid` (3 or more), host side at the Unix socket `uds`.
    pub fn new(cid: u64, uds: &Path) -> std::io::Result<Self> {
        Ok(Self {
            cid,
            muxer: Muxer::new(cid, uds)?,
            buf: vec![0; MAX_PAYLOAD],
            active: None,
            event: None,
        })
    }

    /// Guest connections to the host go to `/NAME_<port>` from now on (see `Muxer::jail`).
    pub fn jail(&mut self) {
        self.muxer.jail();
    }

    fn rx(&mut self) -> bool {
        let Some((mem, rx, _)) = &mut self.active else {
            return false;
        };
        let (muxer, buf) = (&mut self.muxer, &mut self.buf);
        serve_suppressed(rx, mem, |q| receive(q, mem, muxer, buf))
    }

    fn tx(&mut self) -> bool {
        let Some((mem, _, tx)) = &mut self.active else {
            return false;
        };
        let muxer = &mut self.muxer;
        serve_suppressed(tx, mem, |q| transmit(q, mem, muxer))
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let cid = self.cid.to_le_bytes();
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| cid.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>, _features: u64) {
        let mut queues = queues.into_iter();
        if let (Some(rx), Some(tx)) = (queues.next(), queues.next()) {
            self.active = Some((mem, rx, tx));
            self.event = queues.next();
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.event = None;
    }

    fn active_queues(&self) -> Vec<&Queue> {
        match &self.active {
            Some((_, rx, tx)) => [rx, tx].into_iter().chain(&self.event).collect(),
            None => Vec::new(),
        }
    }

    /// A snapshot keeps no connections, nor packets in flight.
    fn snapshot_loses(&self) -> bool {
        !self.muxer.is_idle()
    }

    /// Where the snapshot lost connections, the restored guest is told its transport was reset
    /// (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, as Firecracker does) and drops them; listening
    /// sockets stay. A snapshot of an idle device restores without one.
    fn restored(&mut self, lost: bool) -> bool {
        let (true, Some((mem, _, _)), Some(event)) = (lost, &self.active, &mut self.event) else {
            return false;
        };
        // One event, in the first buffer the driver posted (a driver with none misses it).
        let Some(chain) = event.pop_descriptor_chain(mem) else {
            return false;
        };
        let head = chain.head_index();
        let reset = EVENT_TRANSPORT_RESET.to_le_bytes();
        let written = Writer::new(mem, chain)
            .ok()
            .filter(|w| w.available_bytes() >= reset.len())
            .and_then(|mut w| w.write_all(&reset).ok())
            .map_or(0, |()| u32::try_from(reset.len()).unwrap_or(0));
        event.add_used(mem, head, written).is_ok()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            0 => self.rx(),
            // Transmitted packets may need answers (RESPONSE, RST, credit).
            1 => self.tx() | self.rx(),
            _ => false,
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn process_fd(&mut self, _fd: RawFd) -> bool {
        self.muxer.process_events();
        self.rx()
    }
}

#[cfg(test)]
mod tests {
    use super::packet::*;
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const GUEST: u64 = 3;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn muxer(name: &str) -> Muxer {
        let path = std::env::temp_dir().join(format!("gureum-vsock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Muxer::new(GUEST, &path).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn guest_hdr(op: u16, len: u32) -> Header {
        Header {
            src_cid: GUEST,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 7,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    /// Transmit `packets` (each written at its own address), then collect what the device sends
    /// back into receive buffers.
    fn exchange(m: &mut Muxer, packets: &[(Header, Vec<u8>, u16)]) -> Vec<Header> {
        let mem = memory();
        let txq = MockSplitQueue::new(&mem, 16);
        for (i, (h, payload, flags)) in packets.iter().enumerate() {
            let at = 0x10_0000 + i as u64 * 0x1_0000;
            let mut bytes = h.bytes().to_vec();
            bytes.extend_from_slice(payload);
            mem.write_slice(&bytes, GuestAddress(at)).unwrap();
            let len = u32::try_from(bytes.len()).unwrap();
            txq.add_desc_chains(&[d(at, len, *flags)], u16::try_from(i).unwrap())
                .unwrap();
        }
        let mut q: Queue = txq.create_queue().unwrap();
        assert_eq!(transmit(&mut q, &mem, m), packets.len());
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x30_0000), 16);
        for i in 0..8u16 {
            rxq.add_desc_chains(&[d(0x20_0000 + u64::from(i) * 0x1000, 0x1000, W)], i)
                .unwrap();
        }
        let mut rq: Queue = rxq.create_queue().unwrap();
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let n = receive(&mut rq, &mem, m, &mut buf);
        (0..n)
            .map(|i| {
                let mut b = [0u8; HDR_LEN];
                mem.read_slice(&mut b, GuestAddress(0x20_0000 + i as u64 * 0x1000))
                    .unwrap();
                Header::parse(&b)
            })
            .collect()
    }

    #[test]
    fn a_muxer_removes_its_socket_unless_jailed() {
        let path = std::env::temp_dir().join(format!("gureum-vsock-{}-drop", std::process::id()));
        let _ = std::fs::remove_file(&path);
        drop(Muxer::new(GUEST, &path).unwrap());
        assert!(!path.exists());
        // Jailed, the VMM may not unlink by path (its seccomp filter would stop it): the
        // socket is left to the jailer.
        let mut m = Muxer::new(GUEST, &path).unwrap();
        m.jail();
        drop(m);
        assert!(path.exists());
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_connect_to_a_missing_host_listener_is_reset() {
        let mut m = muxer("missing");
        let replies = exchange(&mut m, &[(guest_hdr(OP_REQUEST, 0), vec![], 0)]);
        assert_eq!(replies.len(), 1);
        assert_eq!(
            (replies[0].op, replies[0].dst_port, replies[0].src_port),
            (OP_RST, 1000, 7)
        );
        assert_eq!(m.connections(), 0);
    }

    #[test]
    fn hostile_packets_get_resets_not_crashes() {
        let mut m = muxer("hostile");
        let mut wrong_cid = guest_hdr(OP_REQUEST, 0);
        wrong_cid.src_cid = 99;
        let mut not_stream = guest_hdr(OP_REQUEST, 0);
        not_stream.type_ = 2;
        let packets = [
            (wrong_cid, vec![], 0),
            (not_stream, vec![], 0),
            (guest_hdr(OP_RW, 5), b"hello".to_vec(), 0), // data for no connection
            (guest_hdr(99, 0), vec![], 0),               // no such op
            (guest_hdr(OP_RESPONSE, 0), vec![], 0),      // a response nobody asked for
            (guest_hdr(OP_RW, 0), vec![], W),            // header in a write-only buffer: dropped
        ];
        let replies = exchange(&mut m, &packets);
        assert_eq!(
            replies.iter().filter(|h| h.op == OP_RST).count(),
            5,
            "{replies:?}"
        );
        assert_eq!(m.connections(), 0);
    }

    /// A muxer named `name` with one connection from the guest (port 1000) to a host listener
    /// on port 7: the muxer, the host's end, the listener's path, and the muxer's replies.
    fn connected(
        name: &str,
    ) -> (
        Muxer,
        std::os::unix::net::UnixStream,
        std::path::PathBuf,
        Vec<Header>,
    ) {
        let mut m = muxer(name);
        let path =
            std::env::temp_dir().join(format!("gureum-vsock-{}-{name}_7", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let replies = exchange(&mut m, &[(guest_hdr(OP_REQUEST, 0), vec![], 0)]);
        assert_eq!(replies[0].op, OP_RESPONSE);
        let (peer, _) = listener.accept().unwrap();
        (m, peer, path, replies)
    }

    /// Whether nothing is ready on `fd` right now.
    fn quiet(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd, without waiting.
        unsafe { libc::poll(&raw mut p, 1, 0) == 0 }
    }

    #[test]
    fn a_guest_s_half_close_reaches_the_host_once_and_the_muxer_goes_quiet() {
        let (mut m, mut peer, path, _) = connected("half");
        let mut shut = guest_hdr(OP_SHUTDOWN, 0);
        shut.flags = SHUTDOWN_SEND;
        exchange(&mut m, &[(shut, vec![], 0)]);
        // The host side reads the end of the guest's data...
        let mut rest = Vec::new();
        peer.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        // ...and the muxer settles: a round of events returns, and its own shutdown does not
        // wake it again (it used to, forever, holding the VMM's event loop).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..3 {
                m.process_events();
            }
            let _ = tx.send(quiet(m.epoll_fd()));
        });
        let settled = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(settled, Ok(true));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn room_freed_when_the_host_reads_late_is_credited_to_the_guest() {
        let (mut m, mut peer, path, mut told) = connected("late");
        // The host reads nothing: its socket fills, then the muxer's buffer does, each round
        // within the credit the guest was given.
        let chunk = vec![0x5au8; 0xffd0];
        let packet = (guest_hdr(OP_RW, 0xffd0), chunk, 0);
        told.extend(exchange(&mut m, &vec![packet.clone(); 4]));
        told.extend(exchange(&mut m, &vec![packet; 3]));
        let total = 7 * 0xffd0;
        let heard = told.iter().map(|h| h.fwd_cnt).max().unwrap();
        assert!(
            total - heard > muxer::BUF_ALLOC / 2,
            "a full buffer: {heard} of {total}"
        );
        // Now the host reads it all.
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = vec![0u8; total as usize];
        let mut n = 0;
        while n < got.len() {
            m.process_events(); // the host socket has room again: the rest goes out
            n += peer.read(&mut got[n..]).unwrap();
        }
        m.process_events();
        told.extend(exchange(&mut m, &[]));
        // The guest, which never asks for credit, has heard of all but less than a quarter.
        let heard = told.iter().map(|h| h.fwd_cnt).max().unwrap();
        assert!(
            total - heard < muxer::BUF_ALLOC / 4,
            "told {heard} of {total}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn what_a_guest_sent_before_it_closed_reaches_a_slow_host_then_the_connection_ends() {
        let (mut m, mut peer, path, _) = connected("close");
        let chunk: Vec<u8> = (0..0xffd0u32).map(|i| i.to_le_bytes()[0]).collect();
        let packet = (guest_hdr(OP_RW, 0xffd0), chunk.clone(), 0);
        exchange(&mut m, &vec![packet.clone(); 4]);
        exchange(&mut m, &vec![packet; 3]);
        // The host has not read yet; the guest closes its socket (SHUTDOWN, both ways).
        let mut shut = guest_hdr(OP_SHUTDOWN, 0);
        shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        let replies = exchange(&mut m, &[(shut, vec![], 0)]);
        assert!(replies.iter().all(|h| h.op != OP_RST), "{replies:?}");
        assert_eq!(
            m.connections(),
            1,
            "the connection waits for its data to be written"
        );
        peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            m.process_events();
            match peer.read(&mut buf).unwrap() {
                0 => break,
                n => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(got, chunk.repeat(7), "every byte, in order, then EOF");
        let replies = exchange(&mut m, &[]);
        assert_eq!(replies.iter().filter(|h| h.op == OP_RST).count(), 1);
        assert_eq!(m.connections(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_restored_device_tells_the_driver_once_that_its_transport_was_reset() {
        let mem = memory();
        let path = std::env::temp_dir().join(format!("gureum-vsock-{}-rst", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut v = Vsock::new(GUEST, &path).unwrap();
        let queue = |at: u64, buffers: u16| {
            let m = MockSplitQueue::create(&mem, GuestAddress(at), 16);
            for i in 0..buffers {
                let buf = at + 0x1_0000 + u64::from(i) * 0x1000;
                mem.write_slice(&[0xff; 8], GuestAddress(buf)).unwrap();
                m.add_desc_chains(&[d(buf, 8, W)], i).unwrap();
            }
            m.create_queue::<Queue>().unwrap()
        };
        let queues = vec![
            queue(0x10_0000, 0),
            queue(0x20_0000, 0),
            queue(0x30_0000, 2),
        ];
        v.activate(mem.clone(), queues, 0);
        assert!(!v.snapshot_loses(), "an idle device loses nothing");
        assert!(v.restored(true));
        let mut event = [0u8; 8];
        mem.read_slice(&mut event, GuestAddress(0x31_0000)).unwrap();
        assert_eq!(
            event,
            [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            "id 0: transport reset"
        );
        mem.read_slice(&mut event, GuestAddress(0x31_1000)).unwrap();
        assert_eq!(event, [0xff; 8], "one event, not one per buffer");
        assert_eq!(v.active_queues()[2].next_used(), 1);
        drop(v);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_guest_that_ignores_our_credit_is_reset() {
        let (mut m, _peer, path, replies) = connected("credit");
        assert_eq!(replies[0].buf_alloc, muxer::BUF_ALLOC);
        // Nobody reads on the host side: the guest may send BUF_ALLOC bytes, not more.
        let chunk = vec![0x5au8; 0xf000];
        let mut packets = Vec::new();
        for _ in 0..10 {
            packets.push((guest_hdr(OP_RW, 0xf000), chunk.clone(), 0));
        }
        let replies = exchange(&mut m, &packets);
        // 614 KB against 256 KB of credit plus what the host socket buffers: reset, and gone.
        assert!(replies.iter().any(|h| h.op == OP_RST), "{replies:?}");
        assert_eq!(m.connections(), 0);
        std::fs::remove_file(path).unwrap();
    }
}
