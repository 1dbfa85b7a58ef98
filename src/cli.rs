//! Command-line interface (clap derive). Parsing only: `main` turns these into config.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gureum_runtime::bundle::Isolation;
use gureum_vmm::boot::BootRequest;
use gureum_vmm::config::VmOverrides;

/// Where container state lives unless --root says otherwise.
pub const DEFAULT_ROOT: &str = "/run/gureum";
const DEFAULT_LOG_FORMAT: &str = "text";

#[derive(Debug, Parser)]
#[command(
    name = "gureum",
    version,
    about = "A KVM microVM monitor: boot Linux guests in lightweight VMs, run containers natively or sandboxed",
    long_about = "gureum boots guest kernels in KVM microVMs with a serial console on your \
                  terminal.\n\nStart with `gureum host-check` to see what this host's KVM can do, \
                  then `gureum boot` (with no arguments it boots the default guest built by \
                  guest-kernels/build.sh).\n\nContainers: `gureum run --bundle DIR ID` runs an \
                  OCI bundle, in its own microVM or (--isolation native) with namespaces and \
                  cgroups; create/start/state/kill/delete/list/ps/exec/pause/resume/update work as \
                  runc's do."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Where container state lives (one directory per container).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// How containers are isolated: in their own microVM (the default) or natively with
    /// namespaces and cgroups. Overrides the config.json annotation gureum.isolation.
    #[arg(long, global = true, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// Also append errors to this file (runc compatibility, for containerd's shim).
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Format of --log: text or json (runc compatibility).
    #[arg(long, global = true, value_name = "FORMAT", default_value = DEFAULT_LOG_FORMAT)]
    pub log_format: String,
    /// Accepted for runc compatibility; gureum manages cgroupfs directly.
    #[arg(long, global = true, hide = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility.
    #[arg(long, global = true, hide = true)]
    pub debug: bool,
}

impl Command {
    /// Whether the command's whole output is a report. A closed stdout then ends it quietly,
    /// as SIGPIPE ends `ls | head` (the others, which relay a guest's or a container's
    /// streams, handle a write error themselves).
    pub fn only_reports(&self) -> bool {
        matches!(
            self,
            Command::HostCheck { .. }
                | Command::State { .. }
                | Command::List { .. }
                | Command::Ps { .. }
                | Command::Features
                | Command::Bench(_)
        )
    }
}

/// `gureum boot ...` (and `restore`) alone. Building the whole command tree touches clap's code for every
/// subcommand and flag (about 1 MiB of resident pages); a VMM started with `boot` first is
/// parsed with this much smaller tree. Same flags, same errors.
#[derive(Debug, Parser)]
#[command(name = "gureum", version)]
pub struct BootCli {
    #[command(subcommand)]
    pub command: BootOnly,
}

#[derive(Debug, Subcommand)]
pub enum BootOnly {
    /// Boot a guest kernel; its serial console is this terminal.
    Boot(BootArgs),
    /// Run a VM from a snapshot; its serial console is this terminal.
    Restore(RestoreArgs),
}

impl BootOnly {
    /// Whether this process's command line is one of these (`boot`, `restore`).
    pub fn is_vmm_command() -> bool {
        std::env::args_os()
            .nth(1)
            .is_some_and(|a| a == "boot" || a == "restore")
    }

    pub fn request(&self) -> BootRequest {
        match self {
            Self::Boot(args) => args.request(),
            Self::Restore(args) => args.request(),
        }
    }
}

impl Cli {
    /// Parses the command line, through [`BootCli`] when it starts with `boot`.
    pub fn parse_fast() -> Self {
        if BootOnly::is_vmm_command() {
            let command = match BootCli::parse().command {
                BootOnly::Boot(args) => Command::Boot(args),
                BootOnly::Restore(args) => Command::Restore(args),
            };
            return Self {
                command,
                root: PathBuf::from(DEFAULT_ROOT),
                isolation: None,
                log: None,
                log_format: DEFAULT_LOG_FORMAT.into(),
                systemd_cgroup: false,
                debug: false,
            };
        }
        Self::parse()
    }
}

/// What `create` and `run` take.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// The OCI bundle: a directory with config.json and the rootfs it names.
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub bundle: PathBuf,
    /// Write the container's pid (its init natively, its VM monitor in a microVM) here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket that receives the pty master (process.terminal), as runc sends it.
    #[arg(long, value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,
    /// The container's ID: letters, digits, '_', '-', '.', '+'.
    pub id: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel; its serial console is this terminal (output on stdout, keys from
    /// stdin). Exits 0 when the guest powers off or resets, 3 if it crashes, 124 on --timeout,
    /// 128+N on signal N, 1 on an error (one line on stderr).
    Boot(BootArgs),
    /// Run a VM from a snapshot (PUT /snapshot/create on a VM's --api-sock made it), in this
    /// process: it goes on exactly where it was paused, its console on this terminal. Exit
    /// codes as `boot`'s.
    Restore(RestoreArgs),
    /// Snapshot a running VM through its API socket (as PATCH /vm and PUT /snapshot/create
    /// do): pause it, write its state and memory, and resume it. `gureum restore` runs it
    /// again. A VM with a network interface, or with vsock connections open, is refused
    /// (docs/snapshots.md).
    Snapshot {
        /// The VM's API socket (its `boot --api-sock`).
        #[arg(long, value_name = "PATH")]
        api_sock: PathBuf,
        /// Where to write the VM's state.
        #[arg(long, value_name = "PATH")]
        snapshot: PathBuf,
        /// Where to write its guest memory.
        #[arg(long, value_name = "PATH")]
        mem: PathBuf,
        /// Leave the VM paused afterwards (to stop it, or to snapshot it again unchanged).
        #[arg(long)]
        leave_paused: bool,
    },
    /// Say what this host's KVM is (hardware or PVM), what gureum uses, and how fast guests run.
    HostCheck {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that print numbers, never pass/fail.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a container from an OCI bundle and wait for it: its stdio is this process's, gureum
    /// exits with its status (128+N for signal N), SIGINT/SIGTERM reach it. create + start +
    /// wait + delete.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        /// Give the process a terminal (as process.terminal: true).
        #[arg(short, long)]
        tty: bool,
        /// Print the run's phases on stderr at exit (µs since gureum started): created,
        /// started, exited, torn_down; in a microVM also vmm_spawned and agent_ready.
        #[arg(long)]
        phases: bool,
        /// Run an OCI image instead of a bundle: an image layout directory or a `docker save`
        /// tarball. Its Entrypoint, Cmd, Env, WorkingDir and User apply; layers are cached.
        #[arg(long, value_name = "PATH", conflicts_with = "bundle")]
        image: Option<PathBuf>,
        /// With --image: the command to run instead of the image's Cmd (after `--`).
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Create a container: set up and waiting for `start` (runc's create).
    Create(CreateArgs),
    /// Start a created container's process.
    Start {
        /// The container's ID.
        id: String,
    },
    /// Print a container's state as OCI runtime-spec JSON.
    State {
        /// The container's ID.
        id: String,
    },
    /// Change a container's resource limits (runc update): from an OCI linux.resources JSON
    /// file (- for stdin) and/or flags; what neither names stays. A sandbox's memory is its
    /// guest's size: there only the CPU quota can change.
    Update {
        /// An OCI linux.resources JSON file, or - to read it from stdin.
        #[arg(short, long, value_name = "FILE")]
        resources: Option<PathBuf>,
        /// Memory limit in bytes (suffixes k, m, g allowed; -1 for none).
        #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
        memory: Option<String>,
        /// CPU quota in µs per period (-1 for none).
        #[arg(long, value_name = "US", allow_hyphen_values = true)]
        cpu_quota: Option<i64>,
        /// CPU period in µs.
        #[arg(long, value_name = "US")]
        cpu_period: Option<u64>,
        /// Most processes (-1 for no limit).
        #[arg(long, value_name = "N", allow_hyphen_values = true)]
        pids_limit: Option<i64>,
        /// The container's ID.
        id: String,
    },
    /// Freeze every process of a running container (in a microVM sandbox, the whole VM).
    Pause {
        /// The container's ID.
        id: String,
    },
    /// Thaw a paused container.
    Resume {
        /// The container's ID.
        id: String,
    },
    /// Send a signal (name or number, default SIGTERM) to a container's process.
    Kill {
        /// Signal every process of the container (in a sandbox, every process of its guest).
        #[arg(short, long)]
        all: bool,
        /// The container's ID.
        id: String,
        /// A signal name (TERM, SIGKILL) or number.
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a stopped or created container: its processes, cgroups and state.
    Delete {
        /// Kill it first if it is running.
        #[arg(short, long)]
        force: bool,
        /// The container's ID.
        id: String,
    },
    /// Print what this runtime supports (namespaces, capabilities, seccomp actions, hooks,
    /// mount options, cgroup versions) as the OCI runtime-spec's features JSON (runc features).
    Features,
    /// List containers.
    List {
        /// table or json.
        #[arg(short, long, default_value = "table")]
        format: String,
        /// Only the IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// List a container's processes on this host (runc ps): natively every process of the
    /// container; for a microVM sandbox, its monitor and VMM (the guest's own are inside).
    Ps {
        /// table or json (an array of pids, as runc prints it).
        #[arg(short, long, default_value = "table")]
        format: String,
        /// The container's ID.
        id: String,
    },
    /// Run another process in a running container; exits with its status.
    Exec(ExecArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// NAME=VALUE to add to the container's environment. Repeatable.
    #[arg(short, long, value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the container.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short, long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Do not wait for the process.
    #[arg(short, long)]
    pub detach: bool,
    /// Write the process's pid here.
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// With a terminal: send the pty master to this Unix socket (as runc does) instead of
    /// relaying it here.
    #[arg(long, value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,
    /// A JSON file with an OCI process (runc exec --process); its args replace COMMAND.
    #[arg(short, long, value_name = "FILE")]
    pub process: Option<PathBuf>,
    /// The container's ID.
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
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
    pub disk: Vec<gureum_vmm::config::DiskConfig>,
    /// A virtio-net interface on an existing TAP device: tap=NAME[,mac=MAC]. Repeat for more.
    /// Checksum and TCP segmentation offloads are negotiated with the guest and passed to the
    /// TAP. The MAC defaults to a made-up locally administered one.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<gureum_vmm::config::NetConfig>,
    /// A virtio-vsock device: cid=N,uds=PATH. Host processes reach a guest listener on port P
    /// by connecting to PATH and writing "CONNECT P\n" (answered "OK <port>\n"); the guest
    /// reaches host port P at the Unix socket PATH_P. Firecracker's protocol.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<gureum_vmm::config::VsockConfig>,
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
    /// Run without the VMM's seccomp filter (for debugging). By default, once the VM is built,
    /// its threads may make only the system calls serving a guest needs; any other stops the
    /// VMM with one line naming it.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Serve Firecracker's REST API for the running VM on this Unix socket, as
    /// `firecracker --api-sock` does: GET / (state), GET /machine-config, and
    /// PATCH /vm {"state": "Paused"} or {"state": "Resumed"}. E.g.
    /// `curl --unix-socket PATH -X PATCH http://localhost/vm -d '{"state":"Paused"}'`.
    /// docs/api.yaml lists every path. The socket file is removed at exit.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// The snapshot's state file (snapshot_path).
    #[arg(long, value_name = "PATH")]
    pub snapshot: PathBuf,
    /// The snapshot's guest memory file (mem_file_path), mapped privately: read as the guest
    /// touches it, never written.
    #[arg(long, value_name = "PATH")]
    pub mem: PathBuf,
    /// Serve Firecracker's API for the restored VM on this Unix socket (as `boot --api-sock`).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// The vsock device's host socket, instead of the snapshot's (each clone of a snapshot
    /// needs its own).
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Another image for disk N of the snapshot (0: the first), as N=PATH. Repeat for more.
    /// The guest is told the disk changed; what it cached of the old one it must drop.
    #[arg(long, value_name = "N=PATH", value_parser = disk_override)]
    pub disk: Vec<(usize, PathBuf)>,
    /// Another TAP for network interface N of the snapshot (0: the first), as N=TAP. Repeat
    /// for more. The guest keeps its MAC; frames in flight at the snapshot are lost, as on a
    /// real link.
    #[arg(long, value_name = "N=TAP", value_parser = net_override)]
    pub net: Vec<(usize, String)>,
    /// Stop the guest after this many seconds and exit 124.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Print the phases (as `boot --phases`) on stderr at exit.
    #[arg(long)]
    pub phases: bool,
    /// Run without the VMM's seccomp filter (for debugging).
    #[arg(long)]
    pub no_seccomp: bool,
}

/// `N=VALUE`, N the device's place among its kind (`what`) in the snapshot's config.
fn numbered<'a>(arg: &'a str, what: &str) -> Result<(usize, &'a str), String> {
    let (n, value) = arg
        .split_once('=')
        .ok_or_else(|| format!("{arg:?} is not N=VALUE (N: the {what}'s number, from 0)"))?;
    let n = n
        .parse()
        .map_err(|_| format!("{n:?} is not a {what} number"))?;
    match value.is_empty() {
        true => Err(format!("nothing after the {what} number in {arg:?}")),
        false => Ok((n, value)),
    }
}

fn disk_override(arg: &str) -> Result<(usize, PathBuf), String> {
    numbered(arg, "disk").map(|(n, path)| (n, PathBuf::from(path)))
}

fn net_override(arg: &str) -> Result<(usize, String), String> {
    numbered(arg, "network interface").map(|(n, tap)| (n, tap.to_string()))
}

impl RestoreArgs {
    pub fn request(&self) -> BootRequest {
        BootRequest {
            timeout: self.timeout,
            phases: self.phases,
            no_seccomp: self.no_seccomp,
            api_sock: self.api_sock.clone(),
            restore: Some(gureum_vmm::snapshot::RestoreFrom {
                snapshot: self.snapshot.clone(),
                mem: self.mem.clone(),
                vsock_uds: self.vsock_uds.clone(),
                disks: self.disk.clone(),
                nets: self.net.clone(),
            }),
            ..BootRequest::default()
        }
    }
}

impl BootArgs {
    /// The plain request the VMM core takes: the config file, the flags that override it, and
    /// how to run the VM.
    pub fn request(&self) -> BootRequest {
        let overrides = VmOverrides {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory,
            disks: (!self.disk.is_empty()).then(|| self.disk.clone()),
            nets: (!self.net.is_empty()).then(|| self.net.clone()),
            vsock: self.vsock.clone(),
            rng: self.rng.then_some(true),
        };
        BootRequest {
            config_file: self.config.clone(),
            overrides,
            timeout: self.timeout,
            phases: self.phases,
            allow_pvm_linux: self.allow_pvm_linux,
            no_seccomp: self.no_seccomp,
            api_sock: self.api_sock.clone(),
            restore: None,
        }
    }
}

/// `--isolation`: the runtime's `Isolation`, spelled for the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationArg {
    /// In the container's own microVM.
    Vm,
    /// With namespaces and cgroups on this host.
    Native,
}

impl From<IsolationArg> for Isolation {
    fn from(arg: IsolationArg) -> Self {
        match arg {
            IsolationArg::Vm => Isolation::Vm,
            IsolationArg::Native => Isolation::Native,
        }
    }
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
    /// The same workload as a native container, under runc and runsc (when installed), in a
    /// gureum microVM sandbox, and bare microVMs under gureum and QEMU, interleaved; then K idle
    /// instances of each at once. Prints medians, p95 and ratios; writes compare.json,
    /// report.md, startup.svg and memory.svg under --out. Kinds a host cannot run are reported
    /// as skipped, with the reason.
    Compare {
        /// Runs per kind.
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The container workload (busybox applets are in its PATH).
        #[arg(long, value_name = "CMD", default_value = "true", num_args = 1.., allow_hyphen_values = true)]
        workload: Vec<String>,
        /// Where the report files go.
        #[arg(long, value_name = "DIR", default_value = "bench-compare")]
        out: PathBuf,
        /// Idle instances per kind started at once for the density run (0: none).
        #[arg(long, value_name = "K", default_value_t = 10)]
        density: usize,
        /// The test guest, for the microVM kinds that need no Linux userspace
        /// (guest-kernels/test-guest/build.sh prints its path).
        #[arg(long, value_name = "PATH")]
        test_guest: Option<PathBuf>,
        /// A Firecracker binary to compare with: one more row, booting the same kernel and
        /// initramfs as the gureum microVM kind (firecracker --no-api --config-file).
        #[arg(long, value_name = "PATH")]
        firecracker: Option<PathBuf>,
        /// Only these kinds (comma-separated): native, runc, runsc, sandbox, microvm,
        /// qemu-microvm, microvm-test-guest, qemu-microvm-test-guest, firecracker.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
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
