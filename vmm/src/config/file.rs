//! A [`VmConfig`] written out in Firecracker's `--config-file` schema, which `gureum boot
//! --config` reads back to the same VmConfig: how gureum hands a VM it described itself (a
//! sandbox, a benchmark run) to the VMM, so that what runs is exactly what the config says.

use serde_json::{Value, json};

use super::VmConfig;
use super::net::format_mac;

impl VmConfig {
    /// This VM as a Firecracker config file's JSON.
    pub fn to_firecracker_json(&self) -> String {
        let drives: Vec<Value> = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| {
                json!({
                    "drive_id": d.id.clone().unwrap_or_else(|| format!("disk{i}")),
                    "path_on_host": d.path,
                    "is_root_device": d.root,
                    "is_read_only": d.read_only,
                })
            })
            .collect();
        let nets: Vec<Value> = self
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "iface_id": format!("net{i}"),
                    "host_dev_name": n.tap,
                    "guest_mac": n.mac.map(format_mac),
                })
            })
            .collect();
        let mut file = json!({
            "boot-source": {
                "kernel_image_path": self.kernel,
                "initrd_path": self.initrd,
                "boot_args": self.cmdline,
            },
            "machine-config": {"vcpu_count": self.vcpus, "mem_size_mib": self.memory_mib},
            "drives": drives,
            "network-interfaces": nets,
        });
        if let Some(v) = &self.vsock {
            file["vsock"] = json!({"guest_cid": v.cid, "uds_path": v.uds});
        }
        if self.rng {
            file["entropy"] = json!({});
        }
        file.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DiskConfig, FirecrackerConfig, NetConfig, VmOverrides, VsockConfig};
    use super::*;

    fn read_back(cfg: &VmConfig) -> VmConfig {
        let path = std::env::temp_dir().join(format!("gureum-file-{}.json", std::process::id()));
        std::fs::write(&path, cfg.to_firecracker_json()).unwrap();
        let back = FirecrackerConfig::from_file(&path).map(VmOverrides::from);
        std::fs::remove_file(&path).unwrap();
        back.unwrap().into_config().unwrap()
    }

    #[test]
    fn every_field_reads_back_the_same() {
        let full = VmOverrides {
            kernel: Some("/k/vmlinux".into()),
            initrd: Some("/k/initrd.cpio".into()),
            cmdline: Some("console=ttyS0 \"quoted\" gureum.x=1".into()),
            vcpus: Some(2),
            memory_mib: Some(96),
            disks: Some(vec![
                DiskConfig {
                    path: "/d/data.img".into(),
                    read_only: false,
                    root: false,
                    id: None,
                },
                DiskConfig {
                    path: "/d/root.ext4".into(),
                    read_only: true,
                    root: true,
                    id: Some("rootfs".into()),
                },
            ]),
            nets: Some(vec![
                NetConfig {
                    tap: "tap0".into(),
                    mac: Some([2, 0, 0, 0xaa, 0xbb, 0x0c]),
                },
                NetConfig {
                    tap: "tap1".into(),
                    mac: None,
                },
            ]),
            vsock: Some(VsockConfig {
                cid: 7,
                uds: "/run/v.sock".into(),
            }),
            rng: Some(true),
        }
        .into_config()
        .unwrap();
        assert_eq!(read_back(&full), full);
        let bare = VmOverrides {
            kernel: Some("/k/vmlinux".into()),
            ..Default::default()
        }
        .into_config()
        .unwrap();
        assert_eq!(read_back(&bare), bare);
    }
}
