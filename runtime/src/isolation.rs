//! Where the two isolations differ, and only there. The lifecycle (`create`, `start`, `run`,
//! `kill`, `exec`, `update`, `delete`) is written once, in lib.rs, over an `Isolator` chosen
//! once from the container's record: `Native` (namespaces and cgroups on this host) or
//! `MicroVm` (a sandbox: the container's own VM, its processes run by the guest agent).

use std::os::fd::OwnedFd;
use std::path::Path;

use oci_spec::runtime::LinuxNamespaceType;

use super::bundle::{Bundle, Isolation, Process, Resources};
use super::cgroup::Cgroup;
use super::state::{Record, Status, Store};
use super::sys::wait::{HeldSignals, wait};
use super::{Error, ExecOptions, hooks, native, vm};

/// What one isolation does its own way.
pub(crate) trait Isolator {
    /// Refuses, before anything is made, a bundle this isolation cannot run on this host.
    fn check(&self, bundle: &Bundle) -> Result<(), Error>;
    /// The limits of the container's cgroup on the host.
    fn host_resources(&self, bundle: &Bundle) -> Resources;
    /// Starts the container's first host process, left waiting on exec.fifo for `start`: its
    /// pid, and the pty master where the process has a terminal.
    fn create(
        &self,
        bundle: &Bundle,
        record: &Record,
        dir: &Path,
        cgroup: &Cgroup,
    ) -> Result<(i32, Option<OwnedFd>), Error>;
    /// `kill --all`: the signal to every process of the container.
    fn signal_all(&self, store: &Store, record: &Record, sig: libc::c_int) -> Result<(), Error>;
    /// `exec`: a second process in a running container; its exit status, or 0 once detached.
    fn exec(
        &self,
        dir: &Path,
        record: &Record,
        process: &Process,
        opts: &ExecOptions,
    ) -> Result<i32, Error>;
    /// Refuses an `update` of limits this isolation cannot change.
    fn check_update(&self, new: &Resources) -> Result<(), Error>;
    /// What the container's host process recorded of its phases (`run --phases`).
    fn phases(&self, dir: &Path) -> Vec<(&'static str, u64)>;
}

/// The isolation a container was created with.
pub(crate) fn of(isolation: Isolation) -> &'static dyn Isolator {
    match isolation {
        Isolation::Native => &Native,
        Isolation::Vm => &MicroVm,
    }
}

/// Namespaces and cgroups on this host, as runc does.
struct Native;

impl Isolator for Native {
    fn check(&self, bundle: &Bundle) -> Result<(), Error> {
        bundle.check_hostname()?;
        bundle.check_mounts()?;
        Ok(bundle.check_sysctls()?)
    }

    fn host_resources(&self, bundle: &Bundle) -> Resources {
        bundle.resources.clone()
    }

    fn create(
        &self,
        bundle: &Bundle,
        record: &Record,
        dir: &Path,
        cgroup: &Cgroup,
    ) -> Result<(i32, Option<OwnedFd>), Error> {
        Ok(native::create(
            bundle,
            record,
            dir,
            cgroup,
            bundle.process.terminal,
        )?)
    }

    fn signal_all(&self, _: &Store, record: &Record, sig: libc::c_int) -> Result<(), Error> {
        let mut pids = vec![record.pid];
        pids.extend(record.cgroup().pids());
        super::signal_pids(record, &pids, sig)
    }

    fn exec(
        &self,
        _: &Path,
        record: &Record,
        process: &Process,
        opts: &ExecOptions,
    ) -> Result<i32, Error> {
        let signals = HeldSignals::hold().map_err(|e| Error::Io("hold signals".into(), e))?;
        let cgroup = record.cgroup();
        let (pid, mut master) = native::exec(record.pid, process, &cgroup, process.terminal)?;
        super::write_pid_file(opts.pid_file.as_deref(), pid)?;
        if let Some(socket) = &opts.console_socket
            && let Some(m) = master.take()
        {
            super::send_console(socket, &m)?;
        }
        if opts.detach {
            return Ok(0);
        }
        Ok(wait(pid, &signals, master.as_ref()))
    }

    fn check_update(&self, _: &Resources) -> Result<(), Error> {
        Ok(())
    }

    fn phases(&self, _: &Path) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// A microVM sandbox: the VMM and its monitor are the container's host processes.
struct MicroVm;

impl Isolator for MicroVm {
    fn check(&self, bundle: &Bundle) -> Result<(), Error> {
        vm::check_host()?;
        let hooks = bundle.spec.hooks().as_ref();
        let inside = [hooks::Point::CreateContainer, hooks::Point::StartContainer];
        if inside.iter().any(|p| hooks::has(*p, hooks)) {
            return Err(Error::VmHooks);
        }
        let linux = bundle.spec.linux().as_ref();
        if linux
            .and_then(|l| l.devices().as_ref())
            .is_some_and(|d| !d.is_empty())
        {
            return Err(Error::VmDevices);
        }
        let pid_path = (bundle.namespaces().into_iter())
            .find_map(|(kind, path)| path.filter(|_| kind == LinuxNamespaceType::Pid));
        if let Some(path) = pid_path {
            return Err(Error::VmPidNamespace(path));
        }
        if let Some(setting) = bundle.resources.tuning.memory_settings() {
            return Err(Error::VmMemory(setting));
        }
        let net_path = (bundle.namespaces().into_iter())
            .find_map(|(kind, path)| path.filter(|_| kind == LinuxNamespaceType::Network));
        if let Some(path) = net_path {
            vm::network::check(&path).map_err(vm::Error::from)?;
        }
        Ok(())
    }

    fn host_resources(&self, bundle: &Bundle) -> Resources {
        bundle.resources.for_vmm()
    }

    fn create(
        &self,
        bundle: &Bundle,
        record: &Record,
        dir: &Path,
        cgroup: &Cgroup,
    ) -> Result<(i32, Option<OwnedFd>), Error> {
        let (pid, master) = vm::create(bundle, dir, cgroup)?;
        super::runtime_hooks(record, pid)?;
        Ok((pid, master))
    }

    /// The guest agent signals every process of the guest, so it must be running to answer;
    /// a created sandbox has only its monitor.
    fn signal_all(&self, store: &Store, record: &Record, sig: libc::c_int) -> Result<(), Error> {
        if store.status(record) == Status::Created {
            return super::signal_pids(record, &[record.pid], sig);
        }
        super::expect(store, record, Status::Running)?;
        Ok(vm::signal_all(&store.dir(&record.id), sig)?)
    }

    fn exec(
        &self,
        dir: &Path,
        _: &Record,
        process: &Process,
        opts: &ExecOptions,
    ) -> Result<i32, Error> {
        // Our own terminal is raw meanwhile: the guest's pty echoes and edits.
        let mut _raw = None;
        let tty = match (process.terminal, &opts.console_socket) {
            (false, _) => None,
            (true, Some(socket)) => {
                let (master, slave) = super::host_pty()?;
                super::send_console(socket, &master)?;
                Some(slave)
            }
            (true, None) => {
                let own = super::own_terminal()?;
                _raw = gureum_vmm::term::RawTerminal::enable(0);
                Some(own)
            }
        };
        if opts.detach {
            let pid = vm::exec_detached(dir, process, tty)?;
            super::write_pid_file(opts.pid_file.as_deref(), pid)?;
            return Ok(0);
        }
        Ok(vm::exec(dir, process, tty)?)
    }

    /// A sandbox's memory is its guest's size and its processes are the guest's.
    fn check_update(&self, new: &Resources) -> Result<(), Error> {
        match new.memory_bytes.is_some() || new.pids.is_some() {
            true => Err(Error::VmUpdate),
            false => Ok(()),
        }
    }

    fn phases(&self, dir: &Path) -> Vec<(&'static str, u64)> {
        vm::phases(dir)
    }
}
