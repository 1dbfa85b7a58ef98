//! Booting a VM: a `BootRequest` (the config file, the overrides from flags, how to run it)
//! resolved to a validated `VmConfig`, built, confined and run until the guest stops. What
//! `gureum boot` and the lean `gureum-vmm` executable do once their CLI is parsed.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::config::{FirecrackerConfig, VmConfig, VmOverrides};
use crate::host_check::KvmKind;
use crate::{config, host_check, loader, phases, seccomp, term, vmm};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error("cannot open the directory of the socket {0}")]
    SocketDir(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Api(#[from] crate::api::server::Error),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::Error),
    #[error(
        "with --api-sock and no --kernel or --config, the VM is configured through the API: \
         pass its other settings there, or give --kernel"
    )]
    FlagsWithoutKernel,
    #[error("the API socket's event loop")]
    ApiLoop(#[source] event_manager::Error),
    #[error("--timeout must be a positive number of seconds, not {0}")]
    Timeout(f64),
    #[error(
        "this host's KVM is PVM (kvm_pvm): a Linux guest's userspace cannot run here and its \
         kernel takes minutes under emulation; pass --allow-pvm-linux to boot it anyway"
    )]
    PvmLinux,
    #[error(
        "no kernel given and the default guest is not built: run guest-kernels/build.sh, or pass --kernel"
    )]
    NoDefaultGuest,
}

/// What to boot and how: the plain data a CLI hands the VMM.
#[derive(Debug, Clone, Default)]
pub struct BootRequest {
    /// A config file in Firecracker's schema.
    pub config_file: Option<PathBuf>,
    /// What overrides the file (flags); with neither a kernel, the default guest boots.
    pub overrides: VmOverrides,
    /// Stop the guest after this many seconds and exit 124.
    pub timeout: Option<f64>,
    /// Print boot phases and memory use on stderr at exit.
    pub phases: bool,
    /// Boot a Linux kernel even on a PVM host.
    pub allow_pvm_linux: bool,
    /// Run without the VMM's seccomp filter.
    pub no_seccomp: bool,
    /// Serve Firecracker's API for the running VM on this Unix socket.
    pub api_sock: Option<PathBuf>,
    /// Run the VM of a snapshot instead of booting one.
    pub restore: Option<crate::snapshot::RestoreFrom>,
}

/// One line: the error and each cause after it (skipping causes whose text some crates already
/// fold into their own message).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// A file to remove at exit, by name in its directory (open beforehand).
struct SocketFile {
    dir: std::os::fd::OwnedFd,
    dir_path: PathBuf,
    name: std::ffi::CString,
}

impl SocketFile {
    fn of(path: &std::path::Path) -> Result<Self, Error> {
        use std::os::unix::ffi::OsStrExt;
        let fail = |e| Error::SocketDir(path.to_path_buf(), e);
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir_path =
            std::path::absolute(parent.unwrap_or(std::path::Path::new("."))).map_err(fail)?;
        let dir = std::fs::File::open(&dir_path).map_err(fail)?;
        let name = path
            .file_name()
            .map(|n| std::ffi::CString::new(n.as_bytes()));
        let Some(Ok(name)) = name else {
            return Err(fail(std::io::ErrorKind::InvalidInput.into()));
        };
        Ok(Self {
            dir: dir.into(),
            dir_path,
            name,
        })
    }

    fn remove(self) {
        // SAFETY: unlinkat with a directory fd we own and a NUL-terminated name.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// The VMM's confinement, unless `--no-seccomp`.
fn confine(
    args: &BootRequest,
    socket: Option<&SocketFile>,
    api: Option<&SocketFile>,
) -> Result<Option<seccomp::Confinement>, Error> {
    if args.no_seccomp {
        return Ok(None);
    }
    seccomp::handle_sigsys()?;
    let dir = |s: &SocketFile| s.dir.as_raw_fd();
    let filter = seccomp::filter(socket.map(dir), api.map(dir))?;
    let jail = socket.map(|s| s.dir_path.clone());
    Ok(Some(seccomp::Confinement {
        filter,
        new_netns: jail.is_some(),
        jail,
    }))
}

/// `exe boot --config FILE`, with `config` written to FILE first in Firecracker's schema, which
/// reads back to the same config: the one way gureum launches a VM it described itself (a
/// sandbox, a benchmark run), so that what runs is exactly what the config says.
pub fn launch(exe: &Path, config: &VmConfig, file: &Path) -> std::io::Result<Command> {
    std::fs::write(file, config.to_firecracker_json())?;
    let mut cmd = Command::new(exe);
    cmd.arg("boot").arg("--config").arg(file);
    Ok(cmd)
}

/// The lean VMM executable installed beside this one (`gureum-vmm`), if there is one.
pub fn vmm_exe() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let vmm = me.with_file_name("gureum-vmm");
    (vmm.is_file() && vmm != me).then_some(vmm)
}

/// Where guest-kernels/build.sh leaves the default guest.
pub fn default_guest() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("GUREUM_CACHE").unwrap_or_else(|| "/var/cache/gureum".into());
    let dir = PathBuf::from(cache).join("default");
    (dir.join("vmlinux"), dir.join("initramfs.cpio"))
}

/// Defaults < config file < flags, validated.
pub fn resolve_config(args: &BootRequest) -> Result<VmConfig, Error> {
    let file = match &args.config_file {
        Some(path) => FirecrackerConfig::from_file(path)?.into(),
        None => VmOverrides::default(),
    };
    let mut flags = args.overrides.clone();
    if flags.kernel.is_none() && file.kernel.is_none() {
        let (kernel, initrd) = default_guest();
        if !kernel.exists() || !initrd.exists() {
            return Err(Error::NoDefaultGuest);
        }
        flags.kernel = Some(kernel);
        flags.initrd = flags.initrd.or(Some(initrd));
    }
    Ok(file.overridden_by(flags).into_config()?)
}

pub(crate) fn refuse_linux_on_pvm(allow: bool, config: &VmConfig) -> Result<(), Error> {
    let (_, is_linux) = loader::identify(&config.kernel)?;
    if is_linux && host_check::kvm_kind().0 == KvmKind::Pvm {
        if !allow {
            return Err(Error::PvmLinux);
        }
        eprintln!(
            "gureum: warning: PVM host: this Linux guest's kernel runs emulated and its userspace cannot run"
        );
    }
    Ok(())
}

/// The VM to run, the API socket to serve it on (with its file, to remove at exit) and whether
/// it starts paused: built from the flags or config file, restored from a snapshot, or, with
/// `--api-sock` and neither a kernel nor a config file, configured through the API first.
fn build(args: &BootRequest) -> Result<(vmm::Vmm, Option<ApiSocket>, bool), Error> {
    let api_first = args.api_sock.is_some()
        && args.restore.is_none()
        && args.config_file.is_none()
        && args.overrides.kernel.is_none();
    if api_first {
        if args.overrides != VmOverrides::default() {
            return Err(Error::FlagsWithoutKernel);
        }
        let (sockets, file) =
            api_socket(args.api_sock.as_deref())?.ok_or(Error::FlagsWithoutKernel)?;
        return match crate::api::setup::serve_until_started(sockets, args.allow_pvm_linux) {
            Ok((sockets, started)) => Ok((started.vmm, Some((sockets, file)), started.paused)),
            Err(e) => {
                file.remove();
                Err(Error::ApiLoop(e))
            }
        };
    }
    let vmm = match &args.restore {
        Some(from) => vmm::Vmm::restore(from)?,
        None => {
            let config = resolve_config(args)?;
            refuse_linux_on_pvm(args.allow_pvm_linux, &config)?;
            vmm::Vmm::try_from(&config)?
        }
    };
    Ok((vmm, api_socket(args.api_sock.as_deref())?, false))
}

type ApiSocket = (crate::api::server::Sockets, SocketFile);

/// The API socket at `path`, listening, and its file to remove at exit.
fn api_socket(path: Option<&Path>) -> Result<Option<ApiSocket>, Error> {
    let Some(path) = path else {
        return Ok(None);
    };
    let file = SocketFile::of(path)?;
    Ok(Some((crate::api::server::bind(path)?.into(), file)))
}

pub fn boot(args: &BootRequest, start: Instant) -> Result<i32, Error> {
    let timeout = args
        .timeout
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or(Error::Timeout(s))
        })
        .transpose()?;
    let mut phases = phases::Phases::new(start, args.phases);
    let (vmm, api, paused) = build(args)?;
    // The VM made the vsock socket; gureum removes it at exit through its directory, the one
    // the filter lets it unlink in.
    let socket = (vmm.config.vsock.as_ref()).map(|v| {
        SocketFile::of(&v.uds).inspect_err(|_| {
            let _ = std::fs::remove_file(&v.uds);
        })
    });
    let socket = match socket.transpose() {
        Ok(socket) => socket,
        Err(e) => {
            api.into_iter().for_each(|(_, file)| file.remove());
            return Err(e);
        }
    };
    let (listener, api_file) = api.unzip();
    let outcome = confine(args, socket.as_ref(), api_file.as_ref()).and_then(|confinement| {
        let raw_terminal = term::RawTerminal::enable(0);
        let outcome = vmm.run(timeout, &mut phases, confinement, listener, paused);
        drop(raw_terminal);
        Ok(outcome?)
    });
    for s in socket.into_iter().chain(api_file) {
        s.remove();
    }
    let outcome = outcome?;
    if outcome.worth_a_line() {
        eprintln!("gureum: {outcome}");
    }
    if args.phases {
        eprintln!("{}", phases.report());
    }
    Ok(outcome.exit_code())
}
