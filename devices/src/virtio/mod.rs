//! Virtio devices over MMIO (virtio 1.x "modern" devices only, virtio-mmio version 2).
//!
//! Each device is split in two: the pure queue logic (parse a descriptor chain, do the work,
//! put it on the used ring), testable on virtio-queue's mock queues, and [`handler`], the thin
//! event-loop subscriber that runs it when the guest notifies a queue. The [`mmio`] transport
//! is the register file the guest driver talks to.

pub mod block;
pub mod handler;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use handler::VirtioHandler;
pub use mmio::MmioTransport;

/// Device types (virtio 1.2, 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_RNG: u32 = 4;
pub const TYPE_VSOCK: u32 = 19;

/// Offered by every gureum device: modern (virtio 1.x) only.
pub const F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits.
pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// Offered by every gureum device: used/available event indexes (fewer notifications and
/// interrupts; the transport tells each queue when the driver accepted it).
pub const F_EVENT_IDX: u64 = 1 << 29;

/// A descriptor chain in guest memory.
pub type Chain<'a> = virtio_queue::DescriptorChain<&'a GuestMemoryMmap>;

/// Pop every available chain, let `serve` handle it (returning the bytes it wrote into guest
/// memory), and put it on the used ring. Returns how many chains were used. A chain whose used
/// entry cannot be written belongs to a driver that broke its own ring, and is dropped.
pub fn complete_chains(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(Chain<'_>) -> u32,
) -> usize {
    use virtio_queue::QueueT;
    let mut used = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let written = serve(chain);
        if queue.add_used(mem, head, written).is_ok() {
            used += 1;
        }
    }
    used
}

/// Serve `queue` with `serve` (which returns how many chains it completed), with the driver's
/// notifications suppressed while it works and re-armed after, serving again if more work
/// arrived meanwhile. Returns whether the driver wants an interrupt for what was completed
/// (it may have said no with VRING_AVAIL_F_NO_INTERRUPT, or with EVENT_IDX not yet).
pub fn serve_suppressed(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut serve: impl FnMut(&mut Queue) -> usize,
) -> bool {
    use virtio_queue::QueueT;
    let mut used = 0;
    loop {
        // An error here means the driver broke its own ring; stop serving it.
        if queue.disable_notification(mem).is_err() {
            break;
        }
        let n = serve(queue);
        used += n;
        // Go round again only if that made progress: a receive queue full of buffers but
        // with nothing to receive is "more work" that cannot be done now.
        match queue.enable_notification(mem) {
            Ok(true) if n > 0 => {}
            _ => break,
        }
    }
    if used == 0 {
        return false;
    }
    if !queue.event_idx_enabled() {
        // virtio-queue leaves VRING_AVAIL_F_NO_INTERRUPT (bit 0 of avail.flags) to devices.
        const NO_INTERRUPT: u16 = 1;
        let flags: Option<u16> =
            vm_memory::Bytes::read_obj(mem, vm_memory::GuestAddress(queue.avail_ring())).ok();
        return flags.is_none_or(|f| f & NO_INTERRUPT == 0);
    }
    queue.needs_notification(mem).unwrap_or(true)
}

/// A device's interrupt: the status register the driver reads and acknowledges, and the irqfd
/// that raises its line.
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Raise the line for `bits` (INT_USED_RING, INT_CONFIG).
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // A full eventfd counter still means "raised"; there is nothing else to do on error.
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// A restored device's status: `bits` pending, the line raised again if any are.
    pub fn restore(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            let _ = self.irqfd.write(1);
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the driver set up {got} queues; the device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("queue {0} is not valid (size, alignment or addresses)")]
    BadQueue(usize),
}

/// What a virtio device model implements; the transport does the rest.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// The largest size of each queue; their number is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits offered, F_VERSION_1 included.
    fn features(&self) -> u64;
    /// Read device-specific configuration space at `offset`; out of range reads give zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write configuration space; read-only devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start serving `queues` with the negotiated `features`.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>, features: u64);
    /// Stop serving and forget the queues (the driver reset the device).
    fn reset(&mut self);
    /// Serve queue `index` after a notification; returns whether the used ring changed. A
    /// device that is not active ignores notifications.
    fn process_queue(&mut self, index: usize) -> bool;
    /// Other descriptors the device waits on (a TAP), watched edge-triggered: the device must
    /// drain what it can each time one is ready.
    fn extra_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of `extra_fds` is ready; returns whether a used ring changed.
    fn process_fd(&mut self, _fd: RawFd) -> bool {
        false
    }
    /// The queues the device serves, in order (none before the driver started it): what a
    /// snapshot saves of it.
    fn active_queues(&self) -> Vec<&Queue> {
        Vec::new()
    }
    /// Why the device cannot be snapshotted as it is now, if it cannot.
    fn snapshot_refusal(&self) -> Option<String> {
        None
    }
    /// Whether a snapshot taken now would lose state the driver relies on (vsock: open
    /// connections), which the restore must then tell it about.
    fn snapshot_loses(&self) -> bool {
        false
    }
    /// Restored from a snapshot and active again; `lost` is what [`Self::snapshot_loses`]
    /// said then: tell the driver (vsock: a transport reset). Returns whether a used ring
    /// changed.
    fn restored(&mut self, _lost: bool) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Address, Bytes, GuestAddress};

    fn setup(mem: &GuestMemoryMmap, chains: u16) -> MockSplitQueue<'_, GuestMemoryMmap> {
        let mq = MockSplitQueue::new(mem, 16);
        for i in 0..chains {
            let d = RawDescriptor::from(SplitDescriptor::new(0x10_0000, 16, 2, 0));
            mq.add_desc_chains(&[d], i).unwrap();
        }
        mq
    }

    /// The avail ring's used_event field: after flags, idx and 16 ring entries.
    fn used_event(mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> GuestAddress {
        mq.avail_addr().unchecked_add(4 + 2 * 16)
    }

    /// The mock's queue, with its used ring moved to 0x2000: the mock lays the used ring over
    /// the avail ring's used_event field, which EVENT_IDX needs.
    fn queue_of(mq: &MockSplitQueue<'_, GuestMemoryMmap>) -> Queue {
        let mut q = Queue::new(16).unwrap();
        let split = |a: GuestAddress| {
            let lo = u32::try_from(a.0 & 0xffff_ffff).unwrap();
            (Some(lo), Some(u32::try_from(a.0 >> 32).unwrap()))
        };
        let (lo, hi) = split(mq.desc_table_addr());
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(mq.avail_addr());
        q.set_avail_ring_address(lo, hi);
        q.set_used_ring_address(Some(0x2000), Some(0));
        q.set_ready(true);
        q
    }

    fn consume(q: &mut Queue, mem: &GuestMemoryMmap) -> usize {
        let mut n = 0;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            q.add_used(mem, chain.head_index(), 0).unwrap();
            n += 1;
        }
        n
    }

    #[test]
    fn interrupts_follow_the_drivers_wishes() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mq = setup(&mem, 2);
        let mut q: Queue = mq.create_queue().unwrap();
        assert!(serve_suppressed(&mut q, &mem, |q| consume(q, &mem)));
        // Nothing completed: no interrupt.
        assert!(!serve_suppressed(&mut q, &mem, |q| consume(q, &mem)));

        // VRING_AVAIL_F_NO_INTERRUPT: the driver polls; no interrupt.
        let mq = setup(&mem, 1);
        mem.write_obj(1u16, mq.avail_addr()).unwrap(); // avail.flags
        let mut q = queue_of(&mq);
        assert!(!serve_suppressed(&mut q, &mem, |q| consume(q, &mem)));
    }

    #[test]
    fn event_idx_interrupts_only_past_used_event() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mq = setup(&mem, 3);
        let mut q = queue_of(&mq);
        q.set_event_idx(true);
        // The driver asks for an interrupt once the used index passes 5: not yet after 3.
        mem.write_obj(5u16, used_event(&mq)).unwrap();
        assert!(!serve_suppressed(&mut q, &mem, |q| consume(q, &mem)));
        // With used_event 0 the first completion already crosses it.
        let mq = setup(&mem, 1);
        let mut q = queue_of(&mq);
        q.set_event_idx(true);
        mem.write_obj(0u16, used_event(&mq)).unwrap();
        assert!(serve_suppressed(&mut q, &mem, |q| consume(q, &mem)));
    }
}
