//! virtio-vsock through the test guest's driver and gureum's Unix-socket side (Firecracker's
//! protocol): host connections to a guest listener, 16 at once with 100 MB echoed in all, and a
//! guest connecting to a host listener.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::scratch;

/// FNV-1a over `data`.
fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn connect(uds: &Path, port: u32) -> UnixStream {
    let start = Instant::now();
    let mut s = loop {
        match UnixStream::connect(uds) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("connect {}: {e}", uds.display()),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
    s
}

/// Send `data` on one stream while reading the echo back; returns the echo.
fn echo(mut s: UnixStream, data: Vec<u8>) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let len = data.len();
    let writer = std::thread::spawn(move || w.write_all(&data).unwrap());
    let mut got = vec![0u8; len];
    s.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    s.shutdown(std::net::Shutdown::Both).unwrap();
    got
}

/// The test guest echoing on vsock port 5000 until `conns` connections have closed, in a
/// scratch directory `tag`, its socket there; stopped after `timeout` seconds.
fn echo_guest(tag: &str, conns: u32, timeout: u32) -> (PathBuf, PathBuf, std::process::Child) {
    let dir = scratch(tag);
    let uds = dir.join("v.sock");
    let kernel = common::test_guest().display().to_string();
    let vsock = format!("cid=3,uds={}", uds.display());
    let cmdline = format!("scenario=vsock-echo port=5000 conns={conns}");
    let timeout = timeout.to_string();
    let args = [
        "boot",
        "--kernel",
        &kernel,
        "--vsock",
        &vsock,
        "--cmdline",
        &cmdline,
        "--timeout",
        &timeout,
    ];
    let child = common::spawn(&args, None);
    (dir, uds, child)
}

#[test]
fn sixteen_host_streams_echo_100_mb_with_matching_checksums() {
    require_kvm!();
    let (dir, uds, child) = echo_guest("vsock", 16, 120);
    const STREAMS: u64 = 16;
    let per_stream = usize::try_from(100_000_000 / STREAMS).unwrap();
    let start = Instant::now();
    let workers: Vec<_> = (0..STREAMS)
        .map(|n| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let data = common::pseudo_random(n, per_stream);
                let sent = checksum(&data);
                let got = echo(connect(&uds, 5000), data);
                (sent, checksum(&got), got.len())
            })
        })
        .collect();
    for w in workers {
        let (sent, got, len) = w.join().unwrap();
        assert_eq!((got, len), (sent, per_stream));
    }
    let elapsed = start.elapsed();
    let out = common::finish(child, Duration::from_secs(60));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let want = format!(
        "vsock: echoed 16 connections, {} bytes",
        per_stream as u64 * STREAMS
    );
    assert!(out.stdout.contains(&want), "{}", out.describe());
    assert!(!uds.exists(), "gureum removes its socket");
    eprintln!(
        "vsock: 100 MB echoed over 16 streams in {elapsed:?} ({:.0} MB/s each way)",
        100.0 / elapsed.as_secs_f64()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A host that reads its echo slowly, and half-closes before it has read it: the guest waits
/// for credit (staging what it cannot send yet), and every byte comes back, then EOF.
#[test]
fn a_slow_host_reader_that_half_closes_gets_every_byte_back() {
    require_kvm!();
    let (dir, uds, child) = echo_guest("vsock-slow", 1, 60);
    let data = common::pseudo_random(7, 1 << 20);
    let mut s = connect(&uds, 5000);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    assert!(
        got == data,
        "{} of {} bytes, or out of order",
        got.len(),
        data.len()
    );
    let out = common::finish(child, Duration::from_secs(30));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("of them waited for the host's credit)"),
        "{}",
        out.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_guest_reaches_a_host_listener_and_is_refused_without_one() {
    require_kvm!();
    let dir = scratch("vsock-connect");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    let host = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        c.write_all(b"hello-from-host\n").unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
        line
    });
    let kernel = common::test_guest().display().to_string();
    let vsock = format!("cid=3,uds={}", uds.display());
    let out = common::boot_test_guest_with(&[
        "--kernel",
        &kernel,
        "--vsock",
        &vsock,
        "--cmdline",
        "scenario=vsock-connect port=6000",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout
            .contains("vsock: connected\nvsock: host says hello-from-host\nvsock: closed\n"),
        "{}",
        out.describe()
    );
    assert_eq!(host.join().unwrap(), "hello-from-guest\n");

    let out = common::boot_test_guest_with(&[
        "--kernel",
        &kernel,
        "--vsock",
        &vsock,
        "--cmdline",
        "scenario=vsock-connect port=6001",
    ]);
    assert!(
        out.stdout.contains("vsock: refused\n"),
        "{}",
        out.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_vsock_options_are_one_line_errors() {
    let g = common::test_guest().display().to_string();
    let out = common::gureum(&["boot", "--kernel", &g, "--vsock", "cid=2,uds=/tmp/x"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("reserved"), "{}", out.describe());
    let out = common::gureum(&[
        "boot",
        "--kernel",
        &g,
        "--vsock",
        "cid=3,uds=/nonexistent-dir/v.sock",
    ]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot listen on the vsock socket") && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
}
