//! Warm sandboxes: a sandbox starts by restoring a snapshot of a guest already booted, its
//! agent listening on vsock, instead of booting one. The snapshot (a template) is made once per
//! guest kernel, agent initramfs, VMM, memory size and vCPU count, on first use, and kept in
//! the cache (`warm/<key>/`). It has the two disks a sandbox may have (root, bind mounts) as
//! large, empty placeholders; a restore gives it the container's images instead (the guest is
//! told, and the agent drops what it cached of the placeholders before mounting) and a vsock
//! socket in the container's state directory. Anything that stops a template from being made
//! or used leaves the sandbox to boot cold, as before.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// The placeholders' size: the guest sees this capacity until the restore tells it the real
/// one, so any image fits under it.
const PLACEHOLDER_BYTES: u64 = 64 << 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the warm template cache {0}")]
    Cache(PathBuf, #[source] std::io::Error),
    #[error("the template's guest did not come up: {0}")]
    Boot(String),
    #[error("cannot snapshot the template's guest")]
    Snapshot(#[source] gureum_vmm::api::client::Error),
    #[error(transparent)]
    Config(#[from] gureum_vmm::config::Error),
    #[error(transparent)]
    Image(#[from] super::image::Error),
}

/// A template: its snapshot's two files, and the bind-mount placeholder a sandbox without
/// bind mounts keeps.
pub struct Template {
    pub state: PathBuf,
    pub mem: PathBuf,
    pub empty_disk: PathBuf,
}

impl Template {
    fn at(dir: &Path) -> Self {
        Self {
            state: dir.join("state"),
            mem: dir.join("mem"),
            empty_disk: dir.join("binds.img"),
        }
    }

    /// `exe restore ...` for a sandbox: its root image, its bind-mount image (or the empty
    /// placeholder), its vsock socket.
    pub fn restore(&self, exe: &Path, root: &Path, binds: Option<&Path>, uds: &Path) -> Command {
        let mut cmd = Command::new(exe);
        cmd.arg("restore")
            .arg("--snapshot")
            .arg(&self.state)
            .arg("--mem")
            .arg(&self.mem)
            .arg("--vsock-uds")
            .arg(uds)
            .arg("--disk")
            .arg(format!("0={}", root.display()))
            .arg("--disk")
            .arg(format!("1={}", binds.unwrap_or(&self.empty_disk).display()));
        cmd
    }
}

/// What a template is made for.
pub struct Guest<'a> {
    pub exe: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
    pub memory_mib: u64,
    pub vcpus: u64,
}

/// The template for `guest`, made now if the cache has none.
pub fn template(cache: &Path, guest: &Guest<'_>) -> Result<Template, Error> {
    let dir = cache.join("warm").join(key(guest)?);
    if dir.join("mem").exists() {
        return Ok(Template::at(&dir));
    }
    let locks = cache.join("warm").join("lock");
    std::fs::create_dir_all(&locks).map_err(|e| Error::Cache(locks.clone(), e))?;
    let name = dir.file_name().unwrap_or_default();
    let _maker = super::image::lock(&locks.join(name))?;
    if !dir.join("mem").exists() {
        make(guest, &dir)?;
    }
    Ok(Template::at(&dir))
}

/// A digest of everything the template depends on: the files by path, size and time.
fn key(g: &Guest<'_>) -> Result<String, Error> {
    let mut hash = sha2::Sha256::new();
    for file in [g.exe, g.kernel, g.initrd] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(file).map_err(|e| Error::Cache(file.to_path_buf(), e))?;
        let stamp = format!(
            "{} {} {}.{}\n",
            file.display(),
            meta.len(),
            meta.mtime(),
            meta.mtime_nsec()
        );
        hash.update(stamp.as_bytes());
    }
    let rest = format!(
        "{}\n{}\n{}\n{}\n",
        g.cmdline,
        g.memory_mib,
        g.vcpus,
        gureum_vmm::snapshot::format::FORMAT_VERSION
    );
    hash.update(rest.as_bytes());
    let digest = hash.finalize();
    Ok(digest.iter().take(12).map(|b| format!("{b:02x}")).collect())
}

/// Boots the template's guest in a scratch directory, waits until its agent listens,
/// snapshots it and moves the directory into place.
fn make(g: &Guest<'_>, dir: &Path) -> Result<(), Error> {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    let cache_err = |e| Error::Cache(tmp.clone(), e);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(cache_err)?;
    let mut disks = Vec::new();
    for name in ["root.img", "binds.img"] {
        let path = tmp.join(name);
        let file = std::fs::File::create(&path).map_err(cache_err)?;
        file.set_len(PLACEHOLDER_BYTES).map_err(cache_err)?;
        disks.push(gureum_vmm::config::DiskConfig {
            path,
            read_only: true,
            root: false,
            id: None,
        });
    }
    let uds = tmp.join("v.sock");
    let config = gureum_vmm::config::VmOverrides {
        kernel: Some(g.kernel.to_path_buf()),
        initrd: Some(g.initrd.to_path_buf()),
        cmdline: Some(g.cmdline.to_string()),
        vcpus: Some(g.vcpus),
        memory_mib: Some(g.memory_mib),
        disks: Some(disks),
        vsock: Some(gureum_vmm::config::VsockConfig {
            cid: 3,
            uds: uds.clone(),
        }),
        ..Default::default()
    }
    .into_config()?;
    let ready_path = PathBuf::from(format!("{}_{}", uds.display(), super::READY_PORT));
    let ready = UnixListener::bind(&ready_path).map_err(cache_err)?;
    ready.set_nonblocking(true).map_err(cache_err)?;
    let api = tmp.join("api.sock");
    let mut cmd =
        gureum_vmm::boot::launch(g.exe, &config, &tmp.join("vm.json")).map_err(cache_err)?;
    let console = std::fs::File::create(tmp.join("console.log")).map_err(cache_err)?;
    let err = console.try_clone().map_err(cache_err)?;
    cmd.arg("--api-sock").arg(&api);
    cmd.stdin(Stdio::null()).stdout(console).stderr(err);
    let mut vmm = cmd.spawn().map_err(cache_err)?;
    let made = snapshot_when_ready(&mut vmm, &ready, &api, &tmp);
    let _ = vmm.kill();
    let _ = vmm.wait();
    for leftover in [&api, &uds, &ready_path] {
        let _ = std::fs::remove_file(leftover);
    }
    match made
        .and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::Cache(dir.to_path_buf(), e)))
    {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

fn snapshot_when_ready(
    vmm: &mut Child,
    ready: &UnixListener,
    api: &Path,
    dir: &Path,
) -> Result<(), Error> {
    let within = super::AGENT_DEADLINE * gureum_vmm::host_check::slowdown();
    let start = Instant::now();
    loop {
        if let Ok((mut told, _)) = ready.accept() {
            // The agent's word: it connects and closes. Read to its end, so our side closes too.
            let _ = told.set_read_timeout(Some(Duration::from_secs(1)));
            let _ = told.read_to_end(&mut Vec::new());
            break;
        }
        if let Ok(Some(status)) = vmm.try_wait() {
            return Err(Error::Boot(format!("its VMM exited ({status})")));
        }
        if start.elapsed() > within {
            return Err(Error::Boot(format!(
                "no word from its agent within {within:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The template is taken with the vsock device idle (the agent's connection closed on both
    // sides, its last packets delivered), so a sandbox's restore needs no transport reset,
    // which could race the sandbox's own first connection: one that lost a connection is
    // taken again.
    let (state, mem) = (dir.join("state"), dir.join("mem"));
    loop {
        gureum_vmm::api::client::snapshot(api, &state, &mem, false).map_err(Error::Snapshot)?;
        match gureum_vmm::snapshot::lost_state(&state) {
            Ok(false) => return Ok(()),
            Ok(true) if start.elapsed() < within => std::thread::sleep(Duration::from_millis(5)),
            Ok(true) => {
                return Err(Error::Boot(format!(
                    "its vsock device was not idle within {within:?}"
                )));
            }
            Err(e) => return Err(Error::Boot(format!("its snapshot cannot be read: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_s_key_follows_every_input_and_nothing_else() {
        let exe = std::env::current_exe().unwrap();
        let guest = |memory_mib, cmdline| Guest {
            exe: &exe,
            kernel: &exe,
            initrd: &exe,
            cmdline,
            memory_mib,
            vcpus: 1,
        };
        let one = key(&guest(128, "a")).unwrap();
        assert_eq!(one, key(&guest(128, "a")).unwrap());
        assert_ne!(one, key(&guest(256, "a")).unwrap());
        assert_ne!(one, key(&guest(128, "b")).unwrap());
        assert_eq!(one.len(), 24);
        let missing = Guest {
            kernel: Path::new("/nonexistent/vmlinux"),
            ..guest(128, "a")
        };
        assert!(matches!(key(&missing), Err(Error::Cache(..))));
    }

    #[test]
    fn a_sandbox_restores_with_its_own_disks_and_socket() {
        let t = Template::at(Path::new("/c/warm/k"));
        let cmd = t.restore(
            Path::new("vmm"),
            Path::new("/r.ext4"),
            None,
            Path::new("/s/v"),
        );
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "restore",
                "--snapshot",
                "/c/warm/k/state",
                "--mem",
                "/c/warm/k/mem",
                "--vsock-uds",
                "/s/v",
                "--disk",
                "0=/r.ext4",
                "--disk",
                "1=/c/warm/k/binds.img"
            ]
        );
    }
}
