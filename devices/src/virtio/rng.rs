//! virtio-rng (virtio 1.2, 5.4): one queue of write-only buffers the device fills with entropy
//! from the host (/dev/urandom, which does not block once the host's pool is initialised).

use std::fs::File;
use std::io::{Read, Write};

use virtio_queue::{Queue, Writer};
use vm_memory::GuestMemoryMmap;

use super::{TYPE_RNG, VirtioDevice, complete_chains, serve_suppressed};

/// At most this many bytes per request, whatever the guest's buffers claim.
pub const MAX_REQUEST: usize = 64 * 1024;
const QUEUE_SIZE: u16 = 256;

/// Fill every available chain with bytes from `source`; returns how many chains were used.
/// A chain that is not writable or points outside guest memory completes with 0 bytes.
pub fn fill_chains(queue: &mut Queue, mem: &GuestMemoryMmap, source: &mut impl Read) -> usize {
    complete_chains(queue, mem, |chain| {
        let Ok(mut writer) = Writer::new(mem, chain) else {
            return 0;
        };
        let mut buf = vec![0u8; writer.available_bytes().min(MAX_REQUEST)];
        match source
            .read_exact(&mut buf)
            .and_then(|()| writer.write_all(&buf))
        {
            Ok(()) => u32::try_from(buf.len()).unwrap_or(0),
            Err(_) => 0,
        }
    })
}

pub struct Rng {
    source: File,
    active: Option<(GuestMemoryMmap, Queue)>,
}

impl Rng {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            source: File::open("/dev/urandom")?,
            active: None,
        })
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, mem: GuestMemoryMmap, mut queues: Vec<Queue>, _features: u64) {
        if let Some(queue) = queues.pop() {
            self.active = Some((mem, queue));
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn active_queues(&self) -> Vec<&Queue> {
        self.active.iter().map(|(_, q)| q).collect()
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match (&mut self.active, index) {
            (Some((mem, queue)), 0) => {
                let source = &mut self.source;
                serve_suppressed(queue, mem, |q| fill_chains(q, mem, source))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2; // VRING_DESC_F_WRITE

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    struct Counter(u8);
    impl Read for Counter {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            for b in buf.iter_mut() {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(buf.len())
        }
    }

    fn used_len(mq: &MockSplitQueue<GuestMemoryMmap>, i: u16) -> u32 {
        mq.used()
            .ring()
            .ref_at(usize::from(i))
            .unwrap()
            .load()
            .len()
    }

    #[test]
    fn fills_writable_buffers_across_descriptors() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        mq.build_desc_chain(&[desc(0x10_0000, 16, WRITE), desc(0x10_1000, 8, WRITE)])
            .unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        assert_eq!(fill_chains(&mut q, &mem, &mut Counter(0)), 1);
        assert_eq!(used_len(&mq, 0), 24);
        let mut a = [0u8; 16];
        mem.read_slice(&mut a, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(a[0], 1);
        assert_eq!(a[15], 16);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_1000)).unwrap(), 17);
    }

    #[test]
    fn hostile_chains_complete_empty_and_the_queue_goes_on() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        // Read-only where write-only is required; outside guest memory; zero length; huge.
        mq.add_desc_chains(&[desc(0x10_0000, 16, 0)], 0).unwrap();
        mq.add_desc_chains(&[desc(0xffff_0000_0000, 16, WRITE)], 1)
            .unwrap();
        mq.add_desc_chains(&[desc(0x10_0000, 0, WRITE)], 2).unwrap();
        mq.add_desc_chains(&[desc(0x10_0000, u32::MAX, WRITE)], 3)
            .unwrap();
        mq.add_desc_chains(&[desc(0x10_0000, 4, WRITE)], 4).unwrap();
        let mut q: Queue = mq.create_queue().unwrap();
        assert_eq!(fill_chains(&mut q, &mem, &mut Counter(0)), 5);
        let lens: Vec<u32> = (0..5).map(|i| used_len(&mq, i)).collect();
        assert_eq!(lens, [0, 0, 0, 0, 4]);
    }

    #[test]
    fn a_descriptor_loop_ends() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 4);
        let next = 1; // VRING_DESC_F_NEXT
        // Descriptor 0 -> 1 -> 0 -> ...
        mq.desc_table()
            .store(
                0,
                RawDescriptor::from(SplitDescriptor::new(0x10_0000, 8, WRITE | next, 1)),
            )
            .unwrap();
        mq.desc_table()
            .store(
                1,
                RawDescriptor::from(SplitDescriptor::new(0x10_1000, 8, WRITE | next, 0)),
            )
            .unwrap();
        mq.avail().ring().ref_at(0).unwrap().store(0);
        mq.avail().idx().store(1);
        let mut q: Queue = mq.create_queue().unwrap();
        assert_eq!(fill_chains(&mut q, &mem, &mut Counter(0)), 1);
        // The chain is cut at the queue size (4 descriptors of 8 bytes) at most.
        assert!(used_len(&mq, 0) <= 32);
    }
}
