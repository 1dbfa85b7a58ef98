//! virtio-net through a TAP in a network namespace the test creates: the guest (test guest's
//! driver) broadcasts a ping frame, the host answers from a packet socket on the TAP, and the
//! guest must receive the pong.

mod common;

use std::sync::mpsc;
use std::time::Duration;

const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];

/// A raw packet socket bound to `tap` (in the calling thread's namespace), with a 30 s
/// receive timeout.
fn packet_socket(tap: &str) -> i32 {
    let name = std::ffi::CString::new(tap).unwrap();
    // SAFETY: plain socket syscalls on values owned here.
    unsafe {
        let all = u16::try_from(libc::ETH_P_ALL).unwrap().to_be();
        let sock = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all));
        assert!(sock >= 0, "packet socket");
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap();
        addr.sll_protocol = all;
        addr.sll_ifindex = i32::try_from(libc::if_nametoindex(name.as_ptr())).unwrap();
        let len = u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).unwrap();
        assert_eq!(
            libc::bind(sock, (&raw const addr).cast(), len),
            0,
            "bind to {tap}"
        );
        let timeout = libc::timeval {
            tv_sec: 30,
            tv_usec: 0,
        };
        let tlen = u32::try_from(std::mem::size_of::<libc::timeval>()).unwrap();
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            tlen,
        );
        sock
    }
}

/// The pong frame to `to`, on `sock`.
fn send_pong(sock: i32, to: &[u8]) {
    let mut pong = Vec::new();
    pong.extend_from_slice(to);
    pong.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    pong.extend_from_slice(&ETHERTYPE);
    pong.extend_from_slice(b"gureum-net-pong");
    pong.resize(60, 0);
    // SAFETY: sends our buffer on our socket.
    let sent = unsafe { libc::send(sock, pong.as_ptr().cast(), pong.len(), 0) };
    assert_eq!(usize::try_from(sent).ok(), Some(pong.len()), "send pong");
}

/// In a thread inside `ns`: open a packet socket on `tap`, say ready, wait for the guest's ping
/// and answer it. Returns the ping frame.
fn answer_ping(
    ns: &common::Netns,
    tap: &'static str,
    ready: mpsc::Sender<()>,
) -> std::thread::JoinHandle<Vec<u8>> {
    ns.run(move || {
        let sock = packet_socket(tap);
        ready.send(()).unwrap();
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: receives into our buffer on our socket.
            let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let n = usize::try_from(n).expect("no ping within 30 s");
            if n >= 29 && buf[12..14] == ETHERTYPE && &buf[14..29] == b"gureum-net-ping" {
                send_pong(sock, &buf[6..12]);
                // SAFETY: closes our socket.
                unsafe { libc::close(sock) };
                return buf[..n].to_vec();
            }
        }
    })
}

/// In a thread inside `ns`: send the guest a pong on `tap` every 50 ms (a frame sent before
/// the VMM opens the TAP is dropped) until `done` is set, or for 30 s.
fn keep_ponging(
    ns: &common::Netns,
    tap: &'static str,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<()> {
    ns.run(move || {
        let sock = packet_socket(tap);
        let start = std::time::Instant::now();
        while !done.load(std::sync::atomic::Ordering::Relaxed)
            && start.elapsed() < Duration::from_secs(30)
        {
            send_pong(sock, &GUEST_MAC);
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: closes our socket.
        unsafe { libc::close(sock) };
    })
}

#[test]
fn frames_cross_a_tap_both_ways() {
    require_kvm!();
    let tap = "gtap0";
    let ns = common::Netns::new("net", tap, None);
    let (tx, rx) = mpsc::channel();
    let host = answer_ping(&ns, tap, tx);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("host side ready");
    let kernel = common::test_guest().display().to_string();
    let gureum = common::GUREUM;
    let out = common::finish(
        {
            let mut cmd = ns.command(gureum);
            cmd.args(["boot", "--kernel", &kernel]);
            cmd.args(["--net", &format!("tap={tap},mac=02:00:00:00:00:07")]);
            cmd.args(["--cmdline", "scenario=virtio-net", "--timeout", "30"]);
            cmd.stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        },
        Duration::from_secs(40),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("net: mac 0x2 0x0 0x0 0x0 0x0 0x7\n"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("net: received pong, bytes "),
        "{}",
        out.describe()
    );
    let ping = host.join().expect("host side");
    assert_eq!(&ping[0..6], &[0xff; 6], "broadcast");
    assert_eq!(&ping[6..12], &GUEST_MAC);
}

/// A VM with a network interface is snapshotted while its guest waits for the pong to the
/// ping it sent on one TAP, and restored onto another (`restore --net 0=TAP`): the pong
/// answered there reaches the restored guest, through the queues the snapshot kept.
#[test]
fn a_snapshot_with_a_network_interface_restores_onto_another_tap() {
    require_kvm!();
    let (tap, other) = ("gsnap0", "gsnap1");
    let ns = common::Netns::new("netsnap", tap, None);
    ns.add_tap(other);
    let dir = common::scratch("net-snapshot");
    let (console, api) = (dir.join("console.txt"), dir.join("api.sock"));
    let (state, mem) = (dir.join("vm.state"), dir.join("vm.mem"));
    let kernel = common::test_guest().display().to_string();
    let mut first = ns
        .command(common::GUREUM)
        .args([
            "boot",
            "--kernel",
            &kernel,
            "--cmdline",
            "scenario=virtio-net",
        ])
        .args(["--net", &format!("tap={tap},mac=02:00:00:00:00:07")])
        .args(["--timeout", "60", "--api-sock", api.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&console).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::scaled(Duration::from_secs(10));
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("net: sent ping")
    {
        assert!(std::time::Instant::now() < deadline, "no ping sent");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = common::gureum(&[
        "snapshot",
        "--api-sock",
        api.to_str().unwrap(),
        "--snapshot",
        state.to_str().unwrap(),
        "--mem",
        mem.to_str().unwrap(),
        "--leave-paused",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let _ = first.kill();
    let _ = first.wait();

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = keep_ponging(&ns, other, done.clone());
    let (state, mem) = (state.to_str().unwrap(), mem.to_str().unwrap());
    let out = common::finish(
        ns.command(common::GUREUM)
            .args(["restore", "--snapshot", state, "--mem", mem])
            .args(["--net", &format!("0={other}"), "--timeout", "30"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        Duration::from_secs(40),
    );
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    host.join().expect("host side");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("net: received pong, bytes "),
        "{}",
        out.describe()
    );
    // A TAP for an interface the snapshot does not have is refused in one line.
    let out = common::gureum(&["restore", "--snapshot", state, "--mem", mem, "--net", "1=x"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("no network interface 1") && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_network_options_are_one_line_errors() {
    let g = common::test_guest().display().to_string();
    let out = common::gureum(&["boot", "--kernel", &g, "--net", "tap=a-name-longer-than-15"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("longer than 15 bytes") && out.stderr.lines().count() == 1,
        "{}",
        out.describe()
    );
    let out = common::gureum(&["boot", "--kernel", &g, "--net", "tap=t0,mac=02:00"]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("six bytes"), "{}", out.describe());
}
