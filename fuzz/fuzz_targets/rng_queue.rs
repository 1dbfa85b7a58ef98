//! virtio-rng on arbitrary queues and buffers.
#![no_main]

use gureum_devices::virtio::rng::fill_chains;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mem = gureum_fuzz::memory_from(input);
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        fill_chains(&mut q, &mem, &mut std::io::repeat(0x42));
    }
});
