//! What a VM is made of, as plain data: no KVM types here. Built from CLI flags, a JSON file in
//! Firecracker's `--config-file` schema, or both (flags win), then validated once.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::arch::x86_64::{layout::CMDLINE_MAX_SIZE, mptable};

mod disk;
mod file;
mod net;
mod vsock;
pub use disk::{DiskConfig, Drive, MAX_ID_LEN};
pub use net::{NetConfig, NetworkInterface};
pub use vsock::{FirecrackerVsock, VsockConfig};

/// Virtio devices one VM may have (one MMIO window and one IRQ each).
pub const MAX_VIRTIO_DEVICES: usize = 16;

pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Boots fast: serial console, reset through the i8042 on reboot, no PCI or module probing,
/// and a quiet console (every byte on the serial port is a VM exit).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off nomodule quiet";
pub const MIN_MEMORY_MIB: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    /// Root disk first, if there is one.
    pub disks: Vec<DiskConfig>,
    pub nets: Vec<NetConfig>,
    pub vsock: Option<VsockConfig>,
    pub rng: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("config file {}: {what}", .path.display())]
    Parse {
        path: PathBuf,
        what: serde_json::Error,
    },
    #[error("config file {}: {what}", .path.display())]
    Unsupported { path: PathBuf, what: String },
    #[error("no kernel given: pass --kernel, or boot-source.kernel_image_path in --config")]
    NoKernel,
    #[error("vcpus must be between 1 and {max}, not {0}", max = mptable::max_vcpus())]
    Vcpus(u64),
    #[error("memory must be at least {MIN_MEMORY_MIB} MiB, not {0} MiB")]
    MemoryTooSmall(u64),
    #[error("memory of {0} MiB is more than any host can map")]
    MemoryTooLarge(u64),
    #[error("the kernel command line is {0} bytes; the limit is {max}", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("{0} disks are marked as root; at most one can be")]
    RootDisks(usize),
    #[error("two disks have the id {0:?}")]
    DuplicateDiskId(String),
    #[error("disk id {0:?} is longer than {MAX_ID_LEN} bytes")]
    DiskIdTooLong(String),
    #[error("vsock cid {0} is reserved; use 3 or more")]
    VsockCid(u32),
    #[error("{0} virtio devices asked for; at most {MAX_VIRTIO_DEVICES}")]
    TooManyDevices(usize),
}

/// Firecracker's configuration file, limited to what gureum supports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirecrackerConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: Option<BootSource>,
    #[serde(rename = "machine-config")]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// Firecracker's entropy device: present means virtio-rng.
    pub entropy: Option<Entropy>,
    pub vsock: Option<FirecrackerVsock>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    pub boot_args: Option<String>,
    pub initrd_path: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u64,
    pub mem_size_mib: u64,
    #[serde(default)]
    pub smt: bool,
    /// Accepted for compatibility and ignored: gureum does not snapshot.
    #[serde(default, rename = "track_dirty_pages")]
    pub _track_dirty_pages: bool,
    pub huge_pages: Option<String>,
}

impl FirecrackerConfig {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Read(path.into(), e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|what| Error::Parse {
            path: path.into(),
            what,
        })?;
        cfg.check().map_err(|what| Error::Unsupported {
            path: path.into(),
            what,
        })?;
        Ok(cfg)
    }

    /// What gureum cannot do of a config that parsed: a bad MAC, SMT, huge pages.
    pub fn check(&self) -> Result<(), String> {
        for n in &self.network_interfaces {
            if let Some(Err(e)) = n.guest_mac.as_deref().map(net::parse_mac) {
                return Err(format!("network-interfaces {:?}: {e}", n.iface_id));
            }
        }
        if let Some(m) = &self.machine_config {
            if m.smt {
                return Err("machine-config.smt: true is not supported".into());
            }
            if m.huge_pages.as_deref().is_some_and(|h| h != "None") {
                return Err("machine-config.huge_pages: only \"None\" is supported".into());
            }
        }
        Ok(())
    }
}

/// Everything a user may set, each optional; merged as defaults < file < flags.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VmOverrides {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub vcpus: Option<u64>,
    pub memory_mib: Option<u64>,
    pub disks: Option<Vec<DiskConfig>>,
    pub nets: Option<Vec<NetConfig>>,
    pub vsock: Option<VsockConfig>,
    pub rng: Option<bool>,
}

impl From<FirecrackerConfig> for VmOverrides {
    fn from(cfg: FirecrackerConfig) -> Self {
        let (boot, machine) = (cfg.boot_source, cfg.machine_config);
        let disks = cfg
            .drives
            .into_iter()
            .map(DiskConfig::from)
            .collect::<Vec<_>>();
        // MACs were checked by `from_file`.
        let nets = cfg
            .network_interfaces
            .into_iter()
            .filter_map(|n| NetConfig::try_from(n).ok())
            .collect::<Vec<_>>();
        Self {
            disks: (!disks.is_empty()).then_some(disks),
            nets: (!nets.is_empty()).then_some(nets),
            vsock: cfg.vsock.map(|v| VsockConfig {
                cid: v.guest_cid,
                uds: v.uds_path,
            }),
            rng: cfg.entropy.map(|_| true),
            kernel: boot.as_ref().map(|b| b.kernel_image_path.clone()),
            initrd: boot.as_ref().and_then(|b| b.initrd_path.clone()),
            cmdline: boot.and_then(|b| b.boot_args),
            vcpus: machine.as_ref().map(|m| m.vcpu_count),
            memory_mib: machine.map(|m| m.mem_size_mib),
        }
    }
}

impl VmOverrides {
    /// `self` with every field that `flags` sets replaced.
    pub fn overridden_by(self, flags: VmOverrides) -> Self {
        Self {
            kernel: flags.kernel.or(self.kernel),
            initrd: flags.initrd.or(self.initrd),
            cmdline: flags.cmdline.or(self.cmdline),
            vcpus: flags.vcpus.or(self.vcpus),
            memory_mib: flags.memory_mib.or(self.memory_mib),
            disks: flags.disks.or(self.disks),
            nets: flags.nets.or(self.nets),
            vsock: flags.vsock.or(self.vsock),
            rng: flags.rng.or(self.rng),
        }
    }

    /// Fill defaults and validate.
    pub fn into_config(self) -> Result<VmConfig, Error> {
        let kernel = self.kernel.ok_or(Error::NoKernel)?;
        let vcpus = self.vcpus.unwrap_or(DEFAULT_VCPUS.into());
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|v| (1..=mptable::max_vcpus()).contains(v))
            .ok_or(Error::Vcpus(vcpus))?;
        let memory_mib = self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall(memory_mib));
        }
        // x86_64 guests have at most 52 physical address bits.
        if memory_mib > (1 << (52 - 20)) {
            return Err(Error::MemoryTooLarge(memory_mib));
        }
        let cmdline = self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        if cmdline.len() >= CMDLINE_MAX_SIZE {
            return Err(Error::CmdlineTooLong(cmdline.len()));
        }
        if cmdline.contains('\0') {
            return Err(Error::CmdlineNul);
        }
        let disks = validate_disks(self.disks.unwrap_or_default())?;
        let rng = self.rng.unwrap_or(false);
        let nets = self.nets.unwrap_or_default();
        let vsock = self.vsock;
        if let Some(v) = vsock.as_ref().filter(|v| v.cid < 3) {
            return Err(Error::VsockCid(v.cid));
        }
        let devices = disks.len() + nets.len() + usize::from(rng) + usize::from(vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(Error::TooManyDevices(devices));
        }
        Ok(VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline,
            vcpus,
            memory_mib,
            disks,
            nets,
            vsock,
            rng,
        })
    }
}

/// At most one root disk, put first (it becomes /dev/vda); ids unique and short enough.
fn validate_disks(mut disks: Vec<DiskConfig>) -> Result<Vec<DiskConfig>, Error> {
    let roots = disks.iter().filter(|d| d.root).count();
    if roots > 1 {
        return Err(Error::RootDisks(roots));
    }
    disks.sort_by_key(|d| !d.root);
    for (i, disk) in disks.iter_mut().enumerate() {
        let id = disk.id.get_or_insert_with(|| format!("disk{i}"));
        if id.len() > MAX_ID_LEN {
            return Err(Error::DiskIdTooLong(id.clone()));
        }
    }
    for (i, disk) in disks.iter().enumerate() {
        if disks[..i].iter().any(|d| d.id == disk.id) {
            return Err(Error::DuplicateDiskId(disk.id.clone().unwrap_or_default()));
        }
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<FirecrackerConfig, Error> {
        let dir = std::env::temp_dir().join(format!("gureum-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "{:x}.json",
            json.len() * 31 + json.as_bytes()[1] as usize
        ));
        std::fs::write(&path, json).unwrap();
        let r = FirecrackerConfig::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        r
    }

    #[test]
    fn firecracker_config_maps_to_vm_config() {
        let cfg = parse(
            r#"{"boot-source": {"kernel_image_path": "/k", "boot_args": "a=b", "initrd_path": "/i"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false,
                                   "track_dirty_pages": false, "huge_pages": "None"},
                "drives": [], "network-interfaces": []}"#,
        )
        .unwrap();
        let vm = VmOverrides::from(cfg).into_config().unwrap();
        assert_eq!(
            vm,
            VmConfig {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "a=b".into(),
                vcpus: 2,
                memory_mib: 256,
                disks: Vec::new(),
                nets: Vec::new(),
                vsock: None,
                rng: false,
            }
        );
    }

    #[test]
    fn flags_override_the_file() {
        let file = VmOverrides {
            kernel: Some("/k".into()),
            vcpus: Some(2),
            ..Default::default()
        };
        let flags = VmOverrides {
            vcpus: Some(4),
            memory_mib: Some(64),
            ..Default::default()
        };
        let vm = file.overridden_by(flags).into_config().unwrap();
        assert_eq!((vm.vcpus, vm.memory_mib, vm.kernel), (4, 64, "/k".into()));
        assert_eq!(vm.cmdline, DEFAULT_CMDLINE);
    }

    #[test]
    fn unknown_fields_are_named() {
        let e = parse(r#"{"boot-source": {"kernel_image_path": "/k", "bogus": 1}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `bogus`"), "{e}");
        let e = parse(r#"{"machine": {}}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `machine`"), "{e}");
        let e = parse(r#"{"drives": [{"drive_id": "rootfs"}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("missing field `path_on_host`"),
            "{e}"
        );
        let e = parse(r#"{"drives": [{"drive_id": "r", "path_on_host": "/x", "is_root_device": false, "cache_type": "Unsafe"}]}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `cache_type`"), "{e}");
        let e = parse(r#"{"network-interfaces": [{"iface_id": "eth0"}]}"#).unwrap_err();
        assert!(
            e.to_string().contains("missing field `host_dev_name`"),
            "{e}"
        );
        let e = parse(r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "t", "guest_mac": "zz"}]}"#)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("network-interfaces \"eth0\": bad MAC address"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_problem() {
        let base = || VmOverrides {
            kernel: Some("/k".into()),
            ..Default::default()
        };
        let err = |o: VmOverrides| o.into_config().unwrap_err().to_string();
        assert!(err(VmOverrides::default()).contains("no kernel"));
        assert!(
            err(VmOverrides {
                vcpus: Some(0),
                ..base()
            })
            .contains("vcpus must be")
        );
        assert!(
            err(VmOverrides {
                vcpus: Some(300),
                ..base()
            })
            .contains("not 300")
        );
        assert!(
            err(VmOverrides {
                memory_mib: Some(0),
                ..base()
            })
            .contains("at least")
        );
        assert!(
            err(VmOverrides {
                memory_mib: Some(u64::MAX),
                ..base()
            })
            .contains("more than")
        );
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(
            err(VmOverrides {
                cmdline: Some(long),
                ..base()
            })
            .contains("2047")
        );
    }
}
