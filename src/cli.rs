//! Command-line interface (clap derive). Parsing only: `main` turns these into config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "gureum",
    version,
    about = "A KVM microVM monitor: boot Linux guests in lightweight VMs",
    long_about = "gureum boots guest kernels in KVM microVMs with a serial console on your \
                  terminal.\n\nStart with `gureum host-check` to see what this host's KVM can do, \
                  then `gureum boot` (with no arguments it boots the default guest built by \
                  guest-kernels/build.sh)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel; its serial console is this terminal (output on stdout, keys from
    /// stdin). Exits 0 when the guest powers off or resets, 3 if it crashes, 124 on --timeout,
    /// 128+N on signal N, 1 on an error (one line on stderr).
    Boot(BootArgs),
    /// Say what this host's KVM is (hardware or PVM), what gureum uses, and how fast guests run.
    HostCheck {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print numbers, never pass/fail.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Clone, Args)]
pub struct BootArgs {
    /// Guest kernel: an ELF vmlinux or a bzImage (detected from the file).
    /// Default: the guest built by guest-kernels/build.sh, with its initramfs.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio, optionally compressed) placed where the boot protocol requires.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "ARGS", default_value = None,
          long_help = concat!("Kernel command line. Default: \"", "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet", "\""))]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Guest memory in MiB [default: 128].
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// JSON config in Firecracker's --config-file schema: boot-source, machine-config, drives,
    /// network-interfaces, vsock, entropy. Flags given here override the file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A virtio-blk disk backed by a raw image: PATH[,ro][,root][,id=ID]. Repeat for more.
    /// `root` boots from it (root=/dev/vda); `ro` makes guest writes fail with an I/O error;
    /// `id` is what the guest reads as the disk's serial (default disk<N>).
    #[arg(long, value_name = "PATH[,ro][,root][,id=ID]")]
    pub disk: Vec<crate::config::DiskConfig>,
    /// A virtio-net interface on an existing TAP device: tap=NAME[,mac=MAC]. Repeat for more.
    /// Checksum and TCP segmentation offloads are negotiated with the guest and passed to the
    /// TAP. The MAC defaults to a made-up locally administered one.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<crate::config::NetConfig>,
    /// A virtio-vsock device: cid=N,uds=PATH. Host processes reach a guest listener on port P
    /// by connecting to PATH and writing "CONNECT P\n" (answered "OK <port>\n"); the guest
    /// reaches host port P at the Unix socket PATH_P. Firecracker's protocol.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<crate::config::VsockConfig>,
    /// A virtio-rng device, fed from the host's /dev/urandom.
    #[arg(long)]
    pub rng: bool,
    /// Stop the guest after this many seconds and exit 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print boot phases (microseconds since start) and memory use on stderr at exit.
    #[arg(long)]
    pub phases: bool,
    /// Boot a Linux kernel even on a PVM host, where its userspace cannot run.
    #[arg(long)]
    pub allow_pvm_linux: bool,
}

// Parsed once per process: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Boot a guest N times and print min / median / p95 of each boot phase and of the VMM's
    /// own memory; with qemu-system-x86_64 installed, the same guest under QEMU microvm too.
    Boot {
        #[command(flatten)]
        boot: BootArgs,
        /// Boots per VMM.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Skip the QEMU comparison.
        #[arg(long)]
        no_qemu: bool,
    },
    /// Device throughput measured with the test guest driving the device: block MB/s and IOPS,
    /// network frames/s, vsock MB/s; against QEMU microvm when it is installed (not for vsock:
    /// QEMU has only vhost-vsock). The network rows need root and iproute2.
    Devices {
        /// The test guest (guest-kernels/test-guest/build.sh prints its path).
        #[arg(long, value_name = "PATH")]
        kernel: PathBuf,
        /// Runs per workload and VMM.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Skip the QEMU comparison.
        #[arg(long)]
        no_qemu: bool,
    },
}
