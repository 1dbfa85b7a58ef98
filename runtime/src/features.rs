//! `features` (runc features): what this runtime supports, as the OCI runtime-spec's features
//! document (features.md), so that containerd, CRI-O or podman can ask before they rely on it.
//! Built from the same tables the runtime applies, so it cannot claim what gureum does not do.

use std::collections::HashMap;

use oci_spec::runtime::{
    ApparmorBuilder, Arch, CgroupBuilder, Features, FeaturesBuilder, IntelRdtBuilder,
    LinuxFeatureBuilder, LinuxNamespaceType, SeccompBuilder, SelinuxBuilder,
};

use super::native::mounts::{FLAG_OPTIONS, PROPAGATION_OPTIONS};
use super::{hooks, seccomp};

/// The features document.
pub fn features() -> Features {
    let namespaces = [
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::User,
        LinuxNamespaceType::Uts,
    ];
    let flags: Vec<String> = seccomp::FLAGS.iter().map(|(n, _)| n.to_string()).collect();
    let seccomp = SeccompBuilder::default()
        .enabled(true)
        .actions(seccomp::ACTIONS.to_vec())
        .operators(seccomp::OPERATORS.map(String::from).to_vec())
        .archs(vec![Arch::ScmpArchX86_64])
        .known_flags(flags.clone())
        .supported_flags(flags)
        .build();
    let cgroup = CgroupBuilder::default()
        .v1(true)
        .v2(true)
        .systemd(false)
        .systemd_user(false)
        .rdma(false)
        .build();
    let linux = LinuxFeatureBuilder::default()
        .namespaces(namespaces.to_vec())
        .capabilities(
            gureum_process::security::CAP_NAMES
                .map(String::from)
                .to_vec(),
        )
        .cgroup(cgroup.unwrap_or_default())
        .seccomp(seccomp.unwrap_or_default())
        .apparmor(
            ApparmorBuilder::default()
                .enabled(false)
                .build()
                .unwrap_or_default(),
        )
        .selinux(
            SelinuxBuilder::default()
                .enabled(false)
                .build()
                .unwrap_or_default(),
        )
        .intel_rdt(
            IntelRdtBuilder::default()
                .enabled(false)
                .build()
                .unwrap_or_default(),
        )
        .build();
    let mount_options = FLAG_OPTIONS
        .iter()
        .map(|(name, ..)| name.to_string())
        .chain(
            PROPAGATION_OPTIONS
                .iter()
                .flat_map(|(name, _)| [name.to_string(), format!("r{name}")]),
        )
        .collect::<Vec<_>>();
    let annotations = HashMap::from([
        (
            "io.github.gureum.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (
            "io.github.gureum.isolation".to_string(),
            "vm,native".to_string(),
        ),
        (
            "io.github.gureum.seccomp.compiler".to_string(),
            "seccompiler".to_string(),
        ),
    ]);
    FeaturesBuilder::default()
        .oci_version_min("1.0.0")
        .oci_version_max("1.2.1")
        .hooks(hooks::Point::ALL.map(|p| p.name().to_string()).to_vec())
        .mount_options(mount_options)
        .linux(linux.unwrap_or_default())
        .annotations(annotations)
        .build()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_what_gureum_applies() {
        let f = serde_json::to_value(features()).unwrap();
        assert_eq!(f["ociVersionMin"], "1.0.0");
        let hooks = f["hooks"].as_array().unwrap();
        assert_eq!(hooks.len(), 6);
        assert!(hooks.contains(&"createContainer".into()));
        let options = f["mountOptions"].as_array().unwrap();
        for o in ["ro", "nosuid", "rbind", "rprivate", "unbindable"] {
            assert!(options.contains(&o.into()), "{o}");
        }
        let linux = &f["linux"];
        assert_eq!(linux["namespaces"].as_array().unwrap().len(), 7);
        assert!(
            linux["capabilities"]
                .as_array()
                .unwrap()
                .contains(&"CAP_SYS_ADMIN".into())
        );
        assert_eq!(linux["cgroup"]["v2"], true);
        let actions = linux["seccomp"]["actions"].as_array().unwrap();
        assert!(actions.contains(&"SCMP_ACT_ERRNO".into()));
        assert!(
            !actions.contains(&"SCMP_ACT_NOTIFY".into()),
            "refused by gureum"
        );
        assert_eq!(linux["seccomp"]["operators"].as_array().unwrap().len(), 7);
        assert_eq!(linux["apparmor"]["enabled"], false);
    }
}
