//! The kinds of instance `bench compare` measures, how each is started and stopped, and why one
//! is skipped on this host.

use std::path::{Path, PathBuf};
use std::process::Command;

use gureum_vmm::config::VmConfig;
use gureum_vmm::host_check::KvmKind;

use super::restore;

/// What makes a line on the instance's stdout mean "the workload is running".
pub const WORKLOAD_MARK: &str = "gureum-bench-start";
pub(super) const LINUX_MARK: &str = "gureum-init: ready";
const TEST_GUEST_MARK: &str = "boot-timer: written";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Runc,
    Runsc,
    Sandbox,
    SandboxCold,
    MicroVm,
    QemuMicroVm,
    TestGuestVm,
    QemuTestGuest,
    Firecracker,
    Restore,
    TestGuestRestore,
}

pub const ALL: [Kind; 12] = [
    Kind::Native,
    Kind::Runc,
    Kind::Runsc,
    Kind::Sandbox,
    Kind::SandboxCold,
    Kind::MicroVm,
    Kind::QemuMicroVm,
    Kind::TestGuestVm,
    Kind::QemuTestGuest,
    Kind::Firecracker,
    Kind::Restore,
    Kind::TestGuestRestore,
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Native => "native",
            Kind::Runc => "runc",
            Kind::Runsc => "runsc",
            Kind::Sandbox => "sandbox",
            Kind::SandboxCold => "sandbox-cold",
            Kind::MicroVm => "microvm",
            Kind::QemuMicroVm => "qemu-microvm",
            Kind::TestGuestVm => "microvm-test-guest",
            Kind::QemuTestGuest => "qemu-microvm-test-guest",
            Kind::Firecracker => "firecracker",
            Kind::Restore => "microvm-restore",
            Kind::TestGuestRestore => "microvm-test-guest-restore",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Native => "container, gureum native isolation",
            Kind::Runc => "container, runc",
            Kind::Runsc => "container, gVisor runsc",
            Kind::Sandbox => "container in a gureum microVM sandbox (warm: a snapshot restored)",
            Kind::SandboxCold => "container in a gureum microVM sandbox, booted cold",
            Kind::MicroVm => "gureum microVM: default kernel + initramfs to init",
            Kind::QemuMicroVm => "QEMU microvm: same kernel + initramfs",
            Kind::TestGuestVm => "gureum microVM: test guest (no Linux)",
            Kind::QemuTestGuest => "QEMU microvm: test guest",
            Kind::Firecracker => "Firecracker: same kernel + initramfs",
            Kind::Restore => "gureum microVM restored from a snapshot of the idle Linux guest",
            Kind::TestGuestRestore => "gureum microVM: test guest restored from a snapshot",
        }
    }

    pub fn is_vm(self) -> bool {
        !matches!(self, Kind::Native | Kind::Runc | Kind::Runsc)
    }

    /// The stdout line that marks the workload's (or the guest's init's) start.
    pub fn mark(self) -> &'static str {
        match self {
            Kind::MicroVm | Kind::QemuMicroVm | Kind::Firecracker => LINUX_MARK,
            Kind::TestGuestVm | Kind::QemuTestGuest => TEST_GUEST_MARK,
            Kind::TestGuestRestore => restore::TEST_GUEST_ANSWER,
            _ => WORKLOAD_MARK,
        }
    }

    /// Whether a density run (K idle at once) applies: a restored guest answers its input and
    /// ends, so the restore kinds have none.
    pub fn has_density(self) -> bool {
        !matches!(self, Kind::Restore | Kind::TestGuestRestore)
    }
}

/// Everything the commands are built from.
pub struct Setup {
    pub gureum: PathBuf,
    /// The VMM executable (`gureum-vmm` where installed, else gureum itself).
    pub vmm: PathBuf,
    pub bundle: PathBuf,
    /// The same with `sleep 600` as the workload.
    pub idle_bundle: PathBuf,
    /// --root for gureum; runc and runsc get subdirectories of it.
    pub state: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub test_guest: Option<PathBuf>,
    /// A Firecracker binary to compare with (`--firecracker`).
    pub firecracker: Option<PathBuf>,
    pub kvm: KvmKind,
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

impl Setup {
    /// Why `kind` cannot run here, or None if it can.
    pub fn skip_reason(&self, kind: Kind) -> Option<String> {
        let pvm = "this host's KVM is PVM: a Linux guest's userspace cannot run here";
        let missing = |p: &Path| {
            (!p.exists()).then(|| format!("{} is not built (scripts/setup.sh)", p.display()))
        };
        match kind {
            Kind::Native => None,
            Kind::Runc if !installed("runc") => {
                Some("runc is not installed (apt install runc)".into())
            }
            Kind::Runsc if !installed("runsc") => {
                Some("gVisor's runsc is not installed (apt install runsc)".into())
            }
            Kind::Runc | Kind::Runsc => None,
            Kind::Firecracker if self.firecracker.is_none() => Some(
                "no --firecracker given (the path of a Firecracker binary to compare with)".into(),
            ),
            Kind::Sandbox
            | Kind::SandboxCold
            | Kind::MicroVm
            | Kind::QemuMicroVm
            | Kind::Firecracker
            | Kind::Restore
                if self.kvm == KvmKind::Pvm =>
            {
                Some(pvm.into())
            }
            Kind::QemuMicroVm | Kind::QemuTestGuest if !installed("qemu-system-x86_64") => {
                Some("qemu-system-x86_64 is not installed".into())
            }
            Kind::Sandbox
            | Kind::SandboxCold
            | Kind::MicroVm
            | Kind::QemuMicroVm
            | Kind::Firecracker
            | Kind::Restore => missing(&self.kernel).or_else(|| missing(&self.initramfs)),
            Kind::TestGuestVm | Kind::QemuTestGuest | Kind::TestGuestRestore => {
                match &self.test_guest {
                    None => Some("no --test-guest given".into()),
                    Some(p) => missing(p),
                }
            }
        }
    }

    /// The command that starts instance `id` of `kind`; `idle` keeps it up (density runs).
    /// Fails where the VM's config file cannot be written.
    pub fn command(&self, kind: Kind, id: &str, idle: bool) -> std::io::Result<Command> {
        let bundle = if idle {
            &self.idle_bundle
        } else {
            &self.bundle
        };
        let gureum = || {
            let mut c = Command::new(&self.gureum);
            c.arg("--root").arg(&self.state);
            c
        };
        Ok(match kind {
            Kind::Native | Kind::Sandbox | Kind::SandboxCold => {
                let mut c = gureum();
                let isolation = if kind == Kind::Native { "native" } else { "vm" };
                c.args(["--isolation", isolation, "run", "--phases", "--bundle"])
                    .arg(bundle)
                    .arg(id);
                if kind == Kind::SandboxCold {
                    c.env("GUREUM_SANDBOX_BOOT", "cold");
                }
                c
            }
            Kind::Runc | Kind::Runsc => {
                let tool = kind.name();
                let mut c = Command::new(tool);
                c.arg("--root").arg(self.state.join(tool));
                // gVisor's own network stack is not the workload's business (`true` uses none),
                // and it refuses to start in a namespace it takes for the host's.
                if kind == Kind::Runsc {
                    c.arg("--network=none");
                }
                c.args(["run", "--bundle"]).arg(bundle).arg(id);
                c
            }
            Kind::MicroVm => self.gureum_vm(id, &self.linux_vm(idle))?,
            Kind::QemuMicroVm => qemu(
                self.kvm,
                &self.kernel,
                Some(&self.initramfs),
                &linux_cmdline(idle),
            ),
            Kind::TestGuestVm => {
                let kernel = self.test_guest.as_deref().unwrap_or(Path::new(""));
                self.gureum_vm(id, &vm(kernel, None, test_guest_cmdline(idle).into()))?
            }
            Kind::QemuTestGuest => {
                let kernel = self.test_guest.as_deref().unwrap_or(Path::new(""));
                qemu(self.kvm, kernel, None, test_guest_cmdline(idle))
            }
            Kind::Firecracker => self.firecracker(id, idle)?,
            Kind::Restore | Kind::TestGuestRestore => restore::command(self, kind),
        })
    }

    /// Our Linux guest (kernel and initramfs) as the gureum microVM and Firecracker kinds boot it.
    pub(super) fn linux_vm(&self, idle: bool) -> VmConfig {
        vm(&self.kernel, Some(&self.initramfs), linux_cmdline(idle))
    }

    /// gureum booting `config` (written beside gureum's state), reporting its phases.
    fn gureum_vm(&self, id: &str, config: &VmConfig) -> std::io::Result<Command> {
        let path = self.state.join(format!("vm-{id}.json"));
        let mut c = gureum_vmm::boot::launch(&self.vmm, config, &path)?;
        c.arg("--phases");
        Ok(c)
    }

    /// `firecracker --no-api --config-file` with the same VM as the gureum microVM kind (its
    /// config file written beside gureum's state).
    fn firecracker(&self, id: &str, idle: bool) -> std::io::Result<Command> {
        let path = self.state.join(format!("firecracker-{id}.json"));
        std::fs::write(&path, self.linux_vm(idle).to_firecracker_json())?;
        let mut c = Command::new(
            self.firecracker
                .as_deref()
                .unwrap_or(Path::new("firecracker")),
        );
        c.args(["--no-api", "--config-file"]).arg(path);
        Ok(c)
    }

    /// How to stop an idle instance of `kind` that was started as `id`.
    pub fn stop(&self, kind: Kind, id: &str, child: &mut std::process::Child) {
        if matches!(
            kind,
            Kind::Native | Kind::Sandbox | Kind::SandboxCold | Kind::Runc | Kind::Runsc
        ) {
            let mut c = match kind {
                Kind::Runc | Kind::Runsc => {
                    let mut c = Command::new(kind.name());
                    c.arg("--root").arg(self.state.join(kind.name()));
                    c
                }
                _ => {
                    let mut c = Command::new(&self.gureum);
                    c.arg("--root").arg(&self.state);
                    c
                }
            };
            let _ = c.args(["kill", id, "KILL"]).output();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

/// A VM of the default size (1 vCPU, 128 MiB) with no devices.
pub(super) fn vm(kernel: &Path, initrd: Option<&Path>, cmdline: String) -> VmConfig {
    VmConfig {
        kernel: kernel.to_path_buf(),
        initrd: initrd.map(Path::to_path_buf),
        cmdline,
        vcpus: gureum_vmm::config::DEFAULT_VCPUS,
        memory_mib: gureum_vmm::config::DEFAULT_MEMORY_MIB,
        disks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
        rng: false,
    }
}

fn linux_cmdline(idle: bool) -> String {
    let shell = if idle { "" } else { " gureum.shell=0" };
    format!("console=ttyS0 reboot=k panic=1 pci=off nomodule quiet{shell}")
}

fn test_guest_cmdline(idle: bool) -> &'static str {
    if idle {
        "console=ttyS0 then=idle"
    } else {
        "console=ttyS0"
    }
}

fn qemu(kvm: KvmKind, kernel: &Path, initrd: Option<&Path>, append: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    // PVM does not offer the MSR behind arch-capabilities; QEMU would refuse to start.
    let cpu = if kvm == KvmKind::Pvm {
        "host,-arch-capabilities"
    } else {
        "host"
    };
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off",
        "-enable-kvm",
        "-cpu",
        cpu,
    ]);
    c.args([
        "-m",
        "128",
        "-smp",
        "1",
        "-nographic",
        "-nodefaults",
        "-serial",
        "stdio",
    ]);
    c.args(["-no-reboot", "-device", "isa-debug-exit,iobase=0xf4"]);
    c.arg("-kernel")
        .arg(kernel)
        .args(["-append", &crate::bench::qemu_append(append)]);
    if let Some(initrd) = initrd {
        c.arg("-initrd").arg(initrd);
    }
    c
}

/// A busybox bundle at `dir` whose process prints the start mark and then execs the workload.
pub fn write_bundle(dir: &Path, workload: &[String], idle: bool) -> std::io::Result<()> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "etc", "sys"] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let busybox = rootfs.join("bin/busybox");
    if !busybox.exists() {
        std::fs::copy("/bin/busybox", &busybox)?;
        let list = Command::new("/bin/busybox").arg("--list").output()?;
        for name in String::from_utf8_lossy(&list.stdout)
            .lines()
            .filter(|n| *n != "busybox")
        {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(name));
        }
    }
    let mut args = vec![
        "sh".to_string(),
        "-c".to_string(),
        format!("echo {WORKLOAD_MARK}; exec \"$@\""),
        "sh".to_string(),
    ];
    if idle {
        args.extend(["sleep".to_string(), "600".to_string()]);
    } else {
        args.extend(workload.iter().cloned());
    }
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": args,
                    "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": true},
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                 {"type": "uts"}, {"type": "mount"}]}
    });
    std::fs::write(dir.join("config.json"), config.to_string())
}
