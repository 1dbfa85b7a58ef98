//! Shared by the fuzz targets: guest memory whose first bytes are the fuzzer's input, holding a
//! split queue of 16 entries (descriptor table at 0, available ring at 0x100, used ring at
//! 0x200) and whatever buffers the input describes.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub const MEM_SIZE: usize = 1 << 20;

pub fn memory_from(input: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = input.len().min(MEM_SIZE);
    mem.write_slice(&input[..n], GuestAddress(0)).unwrap();
    mem
}

/// The queue the input describes, if it is one a transport would accept.
pub fn queue(mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut q = Queue::new(16).ok()?;
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x100), Some(0));
    q.set_used_ring_address(Some(0x200), Some(0));
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}
