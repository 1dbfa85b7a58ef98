//! virtio-net transmit and receive on arbitrary queues and buffers; the "TAP" is a sink, and a
//! source of frames whose sizes come from the input's last bytes.
#![no_main]

use std::io::{self, Read};

use gureum_devices::virtio::net::{MAX_FRAME, receive, transmit};
use libfuzzer_sys::fuzz_target;

struct Frames(Vec<usize>);

impl Read for Frames {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.pop().ok_or(io::ErrorKind::WouldBlock)?.min(buf.len());
        buf[..n].fill(0x5a);
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let mem = gureum_fuzz::memory_from(input);
    let mut buf = vec![0u8; MAX_FRAME];
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        transmit(&mut q, &mem, &mut io::sink(), &mut buf);
    }
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        let sizes = input.iter().rev().take(8).map(|b| usize::from(*b) * 257).collect();
        let mut pending = None;
        receive(&mut q, &mem, &mut Frames(sizes), &mut pending, &mut buf);
    }
});
