//! The virtio-mmio transport, version 2 (virtio 1.2, 4.2.2): the register file a guest driver
//! uses to negotiate features, set up queues and start the device. Queue notifications normally
//! never reach it: the VMM binds an ioeventfd to QueueNotify for each queue.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::{F_EVENT_IDX, F_VERSION_1, INT_CONFIG, Interrupt, VirtioDevice};

mod snapshot;
use crate::BusDevice;
use crate::bus::lock;

pub const MMIO_SIZE: u64 = 0x1000;
/// Where QueueNotify lives: the VMM binds each queue's ioeventfd here.
pub const QUEUE_NOTIFY: u64 = 0x050;
const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4d52_5547; // "GURM"
const CONFIG_SPACE: u64 = 0x100;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    interrupt: Arc<Interrupt>,
    mem: GuestMemoryMmap,
    device_type: u32,
    offered: u64,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    /// Queues given a size or ring address the device refused: they may not start.
    refused: Vec<bool>,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        interrupt: Arc<Interrupt>,
        mem: GuestMemoryMmap,
    ) -> Self {
        let (device_type, offered, queues) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.features() | F_VERSION_1 | F_EVENT_IDX,
                fresh_queues(d.queue_max_sizes()),
            )
        };
        Self {
            device,
            interrupt,
            mem,
            device_type,
            offered,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            refused: vec![false; queues.len()],
            queues,
            config_generation: 0,
        }
    }

    pub fn status(&self) -> u32 {
        self.status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::try_from(self.queue_sel).ok()?)
    }

    /// Queue registers may change only while the driver sets the device up.
    fn configuring_queues(&self) -> bool {
        self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0
    }

    fn read_register(&self, offset: u64) -> u32 {
        let half = |v: u64, sel: u32| match sel {
            0 => u32::try_from(v & 0xffff_ffff).unwrap_or(0),
            1 => u32::try_from(v >> 32).unwrap_or(0),
            _ => 0,
        };
        let queue = self
            .queues
            .get(usize::try_from(self.queue_sel).unwrap_or(usize::MAX));
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device_type,
            0x00c => VENDOR,
            0x010 => half(self.offered, self.device_features_sel),
            0x034 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x044 => queue.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            0x0fc => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, v: u32) {
        let configuring = self.configuring_queues();
        match offset {
            0x014 => self.device_features_sel = v,
            0x020 if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_features_sel {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features = (self.driver_features & !mask) | (u64::from(v) << shift);
            }
            0x024 => self.driver_features_sel = v,
            0x030 => self.queue_sel = v,
            0x038 if configuring => {
                // A size that is not a power of two, or too large, is refused, and the queue
                // may not start.
                let sel = usize::try_from(self.queue_sel).unwrap_or(usize::MAX);
                if let Some(q) = self.queues.get_mut(sel) {
                    // Refusals accumulate until the driver resets the device.
                    self.refused[sel] |= q.try_set_size(u16::try_from(v).unwrap_or(0)).is_err();
                }
            }
            0x044 if configuring => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x064 => self.interrupt.ack(v),
            0x070 => self.set_status(v),
            0x080..=0x0a4 if configuring => {
                let sel = usize::try_from(self.queue_sel).unwrap_or(usize::MAX);
                let Some(q) = self.queues.get_mut(sel) else {
                    return;
                };
                // virtio-queue keeps the old address when it refuses a new one (misaligned):
                // check the write took, or the device would use rings the driver did not set.
                let ring = |q: &Queue| match offset & !4 {
                    0x080 => q.desc_table(),
                    0x090 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                let old = ring(q);
                let wanted = if offset & 4 == 0 {
                    (old & !0xffff_ffff) | u64::from(v)
                } else {
                    (old & 0xffff_ffff) | (u64::from(v) << 32)
                };
                match offset {
                    0x080 => q.set_desc_table_address(Some(v), None),
                    0x084 => q.set_desc_table_address(None, Some(v)),
                    0x090 => q.set_avail_ring_address(Some(v), None),
                    0x094 => q.set_avail_ring_address(None, Some(v)),
                    0x0a0 => q.set_used_ring_address(Some(v), None),
                    0x0a4 => q.set_used_ring_address(None, Some(v)),
                    _ => return,
                }
                if ring(q) != wanted {
                    self.refused[sel] = true;
                }
            }
            // QueueNotify without an ioeventfd behind it, and anything read-only or out of
            // phase: ignored, as a device must.
            _ => {}
        }
    }

    /// The driver writes the whole status each time; bits are only added, except by a reset
    /// (0). FEATURES_OK sticks only for an acceptable feature set; DRIVER_OK starts the device.
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v | self.status;
        let features_ok_now = v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0;
        if features_ok_now && !self.features_acceptable() {
            v &= !(STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        }
        let starting = v & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        if starting && v & STATUS_FEATURES_OK == 0 {
            v &= !STATUS_DRIVER_OK;
        }
        self.status = v;
        if starting && v & STATUS_DRIVER_OK != 0 {
            self.activate();
        }
    }

    /// Only features the device offered, and VERSION_1: gureum has no legacy devices.
    fn features_acceptable(&self) -> bool {
        self.driver_features & !self.offered == 0 && self.driver_features & F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .zip(&self.refused)
            .all(|(q, refused)| !q.ready() || (!refused && q.is_valid(&self.mem)));
        if !valid || !self.queues.iter().any(|q| q.ready()) {
            self.status |= STATUS_NEEDS_RESET;
            self.interrupt.signal(INT_CONFIG);
            return;
        }
        let mut queues = std::mem::take(&mut self.queues);
        let event_idx = self.driver_features & F_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        lock(&self.device).activate(self.mem.clone(), queues, self.driver_features);
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        let d = lock(&self.device);
        self.queues = fresh_queues(d.queue_max_sizes());
        drop(d);
        self.refused = vec![false; self.queues.len()];
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.ack(u32::MAX);
    }
}

fn fresh_queues(sizes: &[u16]) -> Vec<Queue> {
    // Sizes come from the device model and are powers of two by construction.
    sizes.iter().filter_map(|&s| Queue::new(s).ok()).collect()
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_SPACE {
            lock(&self.device).read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            lock(&self.device).write_config(offset - CONFIG_SPACE, data);
            self.config_generation = self.config_generation.wrapping_add(1);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

    /// A device that records what the transport does to it.
    #[derive(Default)]
    pub(super) struct Probe {
        pub(super) activated: Option<(usize, u64)>,
        pub(super) queues: Vec<Queue>,
        pub(super) resets: usize,
        pub(super) served: Vec<usize>,
    }

    impl VirtioDevice for Probe {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(0);
            if offset == 0 {
                data[0] = 0x5a;
            }
        }
        fn activate(&mut self, _mem: GuestMemoryMmap, queues: Vec<Queue>, features: u64) {
            self.activated = Some((queues.len(), features));
            self.queues = queues;
        }
        fn reset(&mut self) {
            self.activated = None;
            self.queues.clear();
            self.resets += 1;
        }
        fn process_queue(&mut self, index: usize) -> bool {
            self.served.push(index);
            false
        }
        fn active_queues(&self) -> Vec<&Queue> {
            self.queues.iter().collect()
        }
    }

    pub(super) fn setup() -> (MmioTransport, Arc<Mutex<Probe>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let probe = Arc::new(Mutex::new(Probe::default()));
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        (MmioTransport::new(probe.clone(), irq, mem), probe)
    }

    pub(super) fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    pub(super) fn w(t: &mut MmioTransport, offset: u64, v: u32) {
        t.write(offset, &v.to_le_bytes());
    }

    /// Negotiate `features` and set up both queues at sane addresses with `size`.
    pub(super) fn drive(t: &mut MmioTransport, features: u64, size: u32) {
        w(t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, 0x024, 0);
        w(t, 0x020, u32::try_from(features & 0xffff_ffff).unwrap());
        w(t, 0x024, 1);
        w(t, 0x020, u32::try_from(features >> 32).unwrap());
        w(
            t,
            0x070,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        for (q, base) in [(0u32, 0x1000u32), (1, 0x4000)] {
            w(t, 0x030, q);
            w(t, 0x038, size);
            w(t, 0x080, base);
            w(t, 0x090, base + 0x1000);
            w(t, 0x0a0, base + 0x2000);
            w(t, 0x044, 1);
        }
    }

    pub(super) const ALL: u32 =
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identifies_itself_and_offers_version_1() {
        let (mut t, _) = setup();
        assert_eq!(r(&mut t, 0x000), MAGIC);
        assert_eq!(r(&mut t, 0x004), 2);
        assert_eq!(r(&mut t, 0x008), 42);
        w(&mut t, 0x014, 0);
        assert_eq!(
            r(&mut t, 0x010),
            1 << 3 | 1 << 29,
            "the device's own, and EVENT_IDX"
        );
        w(&mut t, 0x014, 1);
        assert_eq!(r(&mut t, 0x010), 1, "VERSION_1 is bit 32");
        w(&mut t, 0x030, 1);
        assert_eq!(r(&mut t, 0x034), 8);
        w(&mut t, 0x030, 7);
        assert_eq!(r(&mut t, 0x034), 0, "no such queue");
    }

    #[test]
    fn a_full_handshake_activates_the_device() {
        let (mut t, probe) = setup();
        drive(&mut t, F_VERSION_1 | 1 << 3, 8);
        w(&mut t, 0x070, ALL);
        assert_eq!(r(&mut t, 0x070), ALL);
        assert_eq!(lock(&probe).activated, Some((2, F_VERSION_1 | 1 << 3)));
        // Queue registers are frozen once running.
        w(&mut t, 0x030, 0);
        w(&mut t, 0x038, 2);
        // Reset: the device stops, the transport starts over.
        w(&mut t, 0x070, 0);
        assert_eq!(r(&mut t, 0x070), 0);
        assert_eq!(lock(&probe).activated, None);
        assert_eq!(lock(&probe).resets, 1);
        // ... and a second handshake (a driver rebinding) works again.
        drive(&mut t, F_VERSION_1, 8);
        w(&mut t, 0x070, ALL);
        assert_eq!(lock(&probe).activated, Some((2, F_VERSION_1)));
    }

    #[test]
    fn features_not_offered_or_without_version_1_are_refused() {
        for features in [1u64 << 3, F_VERSION_1 | 1 << 7] {
            let (mut t, probe) = setup();
            drive(&mut t, features, 8);
            assert_eq!(r(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
            w(&mut t, 0x070, ALL);
            assert_eq!(r(&mut t, 0x070) & STATUS_DRIVER_OK, 0);
            assert_eq!(lock(&probe).activated, None);
        }
    }

    #[test]
    fn bad_queues_need_a_reset_instead_of_activation() {
        // A size that is not a power of two, and one larger than the maximum.
        for size in [6, 32] {
            let (mut t, probe) = setup();
            drive(&mut t, F_VERSION_1, size);
            w(&mut t, 0x070, ALL);
            assert_ne!(r(&mut t, 0x070) & STATUS_NEEDS_RESET, 0, "size {size}");
            assert_eq!(lock(&probe).activated, None);
            assert_ne!(r(&mut t, 0x060) & INT_CONFIG, 0);
        }
        // Rings outside guest memory.
        let (mut t, probe) = setup();
        drive(&mut t, F_VERSION_1, 8);
        w(&mut t, 0x030, 0);
        w(&mut t, 0x070, ALL & !STATUS_DRIVER_OK);
        assert_eq!(lock(&probe).activated, None);
        w(&mut t, 0x084, 0xffff);
        w(&mut t, 0x070, ALL);
        assert_ne!(r(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn misaligned_rings_need_a_reset() {
        // Descriptor tables align to 16, available rings to 2, used rings to 4.
        for (reg, addr) in [(0x080, 0x1008), (0x090, 0x2001), (0x0a0, 0x3002)] {
            let (mut t, probe) = setup();
            drive(&mut t, F_VERSION_1, 8);
            w(&mut t, 0x030, 0);
            w(&mut t, reg, addr);
            w(&mut t, 0x070, ALL);
            assert_ne!(
                r(&mut t, 0x070) & STATUS_NEEDS_RESET,
                0,
                "register {reg:#x} = {addr:#x}"
            );
            assert_eq!(lock(&probe).activated, None);
        }
    }

    #[test]
    fn odd_accesses_are_harmless() {
        let (mut t, _) = setup();
        // Registers are 32-bit: other widths read zero and write nothing.
        let mut b = [0xffu8; 2];
        t.read(0x000, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x070, &[1, 0]);
        assert_eq!(r(&mut t, 0x070), 0);
        // Config space: in range, out of range, far out of range.
        let mut c = [0u8; 1];
        t.read(0x100, &mut c);
        assert_eq!(c, [0x5a]);
        t.read(0xfff, &mut c);
        assert_eq!(c, [0]);
        t.write(0x800, &[1, 2, 3, 4]);
        // Writes to read-only registers and QueueNotify change nothing.
        w(&mut t, 0x000, 0);
        w(&mut t, 0x050, 0);
        assert_eq!(r(&mut t, 0x000), MAGIC);
    }
}
