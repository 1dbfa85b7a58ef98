//! virtio-blk request parsing and execution on arbitrary queues and buffers.
#![no_main]

use std::sync::OnceLock;

use gureum_devices::virtio::block::{Disk, serve_queue};
use libfuzzer_sys::fuzz_target;

fn disk() -> &'static Disk {
    static DISK: OnceLock<Disk> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("gureum-fuzz-blk-{}", std::process::id()));
        std::fs::File::create(&path).unwrap().set_len(64 * 512).unwrap();
        Disk::open(&path, false, "fuzz").unwrap()
    })
}

fuzz_target!(|input: &[u8]| {
    let mem = gureum_fuzz::memory_from(input);
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        serve_queue(disk(), &mut q, &mem);
    }
});
