//! virtio-vsock packet parsing: arbitrary transmit chains go to a muxer with a live host
//! listener for the guest to connect to, then the muxer's answers fill arbitrary receive
//! buffers.
#![no_main]

use std::os::unix::net::UnixListener;
use std::sync::OnceLock;

use gureum_devices::virtio::vsock::muxer::{MAX_PAYLOAD, Muxer};
use gureum_devices::virtio::vsock::{receive, transmit};
use libfuzzer_sys::fuzz_target;

fn base() -> &'static std::path::PathBuf {
    static BASE: OnceLock<std::path::PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("gureum-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A host listener on port 7, so guest REQUESTs to it can succeed.
        // Accepted and dropped at once, so the backlog never fills.
        let listener = UnixListener::bind(dir.join("v.sock_7")).unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
            }
        });
        dir.join("v.sock")
    })
}

fuzz_target!(|input: &[u8]| {
    let path = base();
    let _ = std::fs::remove_file(path);
    let mut muxer = Muxer::new(3, path).unwrap();
    let mem = gureum_fuzz::memory_from(input);
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        transmit(&mut q, &mem, &mut muxer);
    }
    if let Some(mut q) = gureum_fuzz::queue(&mem) {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        receive(&mut q, &mem, &mut muxer, &mut buf);
    }
});
