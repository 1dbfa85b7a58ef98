//! The virtio-mmio register file driven by an arbitrary sequence of accesses, with a block
//! device behind it; queue notifications are delivered to the device as the event loop would.
#![no_main]

use std::sync::{Arc, Mutex};

use gureum_devices::BusDevice;
use gureum_devices::virtio::block::{Block, Disk};
use gureum_devices::virtio::{Interrupt, MmioTransport, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fuzz_target!(|input: &[u8]| {
    // The first half is guest memory (rings and buffers), the second a list of accesses:
    // [kind, offset_lo, offset_hi, width, value x4].
    let (memory, accesses) = input.split_at(input.len() / 2);
    let mem = gureum_fuzz::memory_from(memory);
    let path = std::env::temp_dir().join(format!("gureum-fuzz-mmio-{}", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(16 * 512).unwrap();
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Block::new(Disk::open(&path, false, "f").unwrap())));
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(device.clone(), irq, mem);
    for a in accesses.chunks_exact(8) {
        let offset = u64::from(u16::from_le_bytes([a[1], a[2]])) % 0x1000;
        let width = [1usize, 2, 4, 8][usize::from(a[3] % 4)];
        let value = [a[4], a[5], a[6], a[7], 0, 0, 0, 0];
        match a[0] % 3 {
            0 => t.write(offset, &value[..width]),
            1 => t.read(offset, &mut [0u8; 8][..width]),
            _ => {
                device.lock().unwrap().process_queue(usize::from(a[4] % 2));
            }
        }
    }
});
