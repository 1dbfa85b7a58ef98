//! virtio-net (virtio 1.2, 5.1) over a TAP: queue 0 receives, queue 1 transmits. Each chain is
//! one frame with its 12-byte virtio-net header, which the TAP understands as is.
//!
//! Receive without loss or spinning: the TAP is watched edge-triggered and drained until it is
//! empty or the guest has no buffer left; a frame read with no buffer to take it waits in the
//! device, and reading resumes when the guest posts buffers (notifies the receive queue).
//!
//! A snapshot keeps the queues (the transport saves them) and not that waiting frame, nor what
//! the TAP holds: frames in flight are lost, as on a real link, and a restore opens the TAP
//! its config names (or `restore --net N=TAP`'s).

mod tap;

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

pub use tap::{Error as TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, Tap, VNET_HDR_LEN};

use super::{TYPE_NET, VirtioDevice, complete_chains, serve_suppressed};

pub const F_CSUM: u64 = 1 << 0;
pub const F_GUEST_CSUM: u64 = 1 << 1;
pub const F_MAC: u64 = 1 << 5;
pub const F_GUEST_TSO4: u64 = 1 << 7;
pub const F_GUEST_TSO6: u64 = 1 << 8;
pub const F_HOST_TSO4: u64 = 1 << 11;
pub const F_HOST_TSO6: u64 = 1 << 12;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// The largest frame: a 64 KiB TSO segment plus Ethernet and virtio-net headers.
pub const MAX_FRAME: usize = 65_562 + VNET_HDR_LEN;

/// Send every available transmit chain to `sink` as one frame (header included). Chains that
/// are not readable, point outside guest memory, are shorter than a header or longer than a
/// frame are dropped. Returns how many chains were used.
pub fn transmit(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    sink: &mut impl Write,
    buf: &mut [u8],
) -> usize {
    complete_chains(queue, mem, |chain| {
        if let Ok(mut reader) = Reader::new(mem, chain) {
            let n = reader.available_bytes();
            if (VNET_HDR_LEN..=buf.len()).contains(&n) && reader.read_exact(&mut buf[..n]).is_ok() {
                // A full TAP queue drops the frame, as a NIC would; TCP recovers.
                let _ = sink.write(&buf[..n]);
            }
        }
        0
    })
}

/// Deliver frames into the guest's receive buffers: first `pending`, then what `source` has,
/// until the source is empty or the guest has no buffer left (the frame then stays in
/// `pending`). Returns how many frames were delivered.
pub fn receive(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    source: &mut impl Read,
    pending: &mut Option<usize>,
    buf: &mut [u8],
) -> usize {
    let mut delivered = 0;
    loop {
        let len = match pending.take() {
            Some(len) => len,
            None => match source.read(buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break, // WouldBlock: the TAP is empty
            },
        };
        if len < VNET_HDR_LEN {
            continue;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            *pending = Some(len);
            break;
        };
        let head = chain.head_index();
        // Without mergeable buffers every frame uses exactly one buffer.
        buf[10..12].copy_from_slice(&1u16.to_le_bytes());
        // A buffer too small for the frame, or unusable: the frame is dropped.
        let written = match Writer::new(mem, chain) {
            Ok(mut w) if w.available_bytes() >= len => w.write_all(&buf[..len]).map_or(0, |()| len),
            _ => 0,
        };
        if queue
            .add_used(mem, head, u32::try_from(written).unwrap_or(0))
            .is_ok()
        {
            delivered += 1;
        }
    }
    delivered
}

pub struct Net {
    tap: Tap,
    mac: [u8; 6],
    buf: Vec<u8>,
    pending: Option<usize>,
    active: Option<(GuestMemoryMmap, Queue, Queue)>,
}

impl Net {
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self {
            tap,
            mac,
            buf: vec![0; MAX_FRAME],
            pending: None,
            active: None,
        }
    }

    fn rx(&mut self) -> bool {
        match &mut self.active {
            Some((mem, rx, _)) => {
                let (tap, pending, buf) = (&mut self.tap, &mut self.pending, &mut self.buf);
                serve_suppressed(rx, mem, |q| receive(q, mem, tap, pending, buf))
            }
            None => false,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        F_MAC | F_CSUM | F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_HOST_TSO4 | F_HOST_TSO6
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.mac.get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>, features: u64) {
        let mut offload = 0;
        for (feature, flag) in [
            (F_GUEST_CSUM, TUN_F_CSUM),
            (F_GUEST_TSO4, TUN_F_TSO4),
            (F_GUEST_TSO6, TUN_F_TSO6),
        ] {
            if features & feature != 0 {
                offload |= flag;
            }
        }
        // TSO needs checksum offload as well; without it the TAP takes neither.
        if offload & TUN_F_CSUM == 0 {
            offload = 0;
        }
        // If the TAP refuses offloads it hands over plain frames, which the guest accepts too.
        let _ = self.tap.set_offload(offload);
        let mut queues = queues.into_iter();
        if let (Some(rx), Some(tx)) = (queues.next(), queues.next()) {
            self.active = Some((mem, rx, tx));
        }
    }

    fn active_queues(&self) -> Vec<&Queue> {
        self.active
            .iter()
            .flat_map(|(_, rx, tx)| [rx, tx])
            .collect()
    }

    fn reset(&mut self) {
        self.active = None;
        self.pending = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            RX => self.rx(),
            TX => match &mut self.active {
                Some((mem, _, tx)) => {
                    let (tap, buf) = (&mut self.tap, &mut self.buf);
                    serve_suppressed(tx, mem, |q| transmit(q, mem, tap, buf))
                }
                None => false,
            },
            _ => false,
        }
    }

    fn extra_fds(&self) -> Vec<RawFd> {
        vec![self.tap.as_raw_fd()]
    }

    fn process_fd(&mut self, _fd: RawFd) -> bool {
        self.rx()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = 2; // VRING_DESC_F_WRITE

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![tag; len];
        f[..VNET_HDR_LEN].fill(0);
        f
    }

    /// Frames handed out one per read, then WouldBlock.
    struct Frames(Vec<Vec<u8>>);
    impl Read for Frames {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let f = self.0.remove(0);
            buf[..f.len()].copy_from_slice(&f);
            Ok(f.len())
        }
    }

    #[test]
    fn transmit_sends_each_chain_as_one_frame_and_drops_bad_ones() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        mem.write_slice(&frame(7, 60), GuestAddress(0x10_0000))
            .unwrap();
        // A frame split over two descriptors; one too short; one writable; one out of memory.
        let first = RawDescriptor::from(SplitDescriptor::new(0x10_0000, 20, 1, 1)); // NEXT -> 1
        mq.add_desc_chains(&[first, d(0x10_0014, 40, 0)], 0)
            .unwrap();
        mq.add_desc_chains(&[d(0x10_0000, 4, 0)], 2).unwrap();
        mq.add_desc_chains(&[d(0x10_0000, 60, W)], 3).unwrap();
        mq.add_desc_chains(&[d(0xffff_0000_0000, 60, 0)], 4)
            .unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let mut sent = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        assert_eq!(transmit(&mut q, &mem, &mut sent, &mut buf), 4);
        assert_eq!(sent, frame(7, 60));
    }

    #[test]
    fn receive_waits_for_buffers_and_loses_nothing() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        mq.add_desc_chains(&[d(0x10_0000, 2048, W)], 0).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let mut tap = Frames(vec![frame(1, 100), frame(2, 200), frame(3, 300)]);
        let (mut pending, mut buf) = (None, vec![0u8; MAX_FRAME]);
        // One buffer: one frame delivered, the second read and held, the third still queued.
        assert_eq!(receive(&mut q, &mem, &mut tap, &mut pending, &mut buf), 1);
        assert_eq!(pending, Some(200));
        assert_eq!(tap.0.len(), 1);
        let got: u16 = mem.read_obj(GuestAddress(0x10_000a)).unwrap();
        assert_eq!(got, 1, "num_buffers");
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000 + 99)).unwrap(), 1);
        // The guest posts two more buffers: both remaining frames arrive, in order.
        mq.add_desc_chains(&[d(0x11_0000, 2048, W)], 1).unwrap();
        mq.add_desc_chains(&[d(0x12_0000, 2048, W)], 2).unwrap();
        assert_eq!(receive(&mut q, &mem, &mut tap, &mut pending, &mut buf), 2);
        assert_eq!(pending, None);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x11_0000 + 199)).unwrap(),
            2
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(0x12_0000 + 299)).unwrap(),
            3
        );
        let lens: Vec<u32> = (0..3)
            .map(|i| mq.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        assert_eq!(lens, [100, 200, 300]);
    }

    #[test]
    fn receive_into_bad_buffers_drops_the_frame_not_the_queue() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        mq.add_desc_chains(&[d(0x10_0000, 50, W)], 0).unwrap(); // too small
        mq.add_desc_chains(&[d(0x10_0000, 2048, 0)], 1).unwrap(); // read-only
        mq.add_desc_chains(&[d(0xffff_0000_0000, 2048, W)], 2)
            .unwrap(); // outside memory
        mq.add_desc_chains(&[d(0x10_0000, 2048, W)], 3).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        let frames = (1..=4).map(|t| frame(t, 100)).collect();
        let (mut pending, mut buf) = (None, vec![0u8; MAX_FRAME]);
        assert_eq!(
            receive(&mut q, &mem, &mut Frames(frames), &mut pending, &mut buf),
            4
        );
        let lens: Vec<u32> = (0..4)
            .map(|i| mq.used().ring().ref_at(i).unwrap().load().len())
            .collect();
        assert_eq!(lens, [0, 0, 0, 100]);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0000 + 99)).unwrap(), 4);
    }
}
