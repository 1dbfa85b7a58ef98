//! From an OCI runtime spec's `process` to the [`RunSpec`] both gureum's native runtime and the
//! agent apply (feature `oci`: the guest's static agent does not need the parser).

use crate::protocol::RunSpec;
use crate::security::{Caps, cap_mask};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config.json has no process to run (process.args is empty)")]
    NoArgs,
    #[error("process.cwd must be an absolute path, not {0:?}")]
    RelativeCwd(String),
    #[error("process.capabilities: {0}")]
    Capability(String),
    #[error("{field} {value:?}: {why}")]
    Security {
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

/// A security module's label or profile, which gureum does not apply: refused, with whether the
/// host has the module at all (runc refuses both where the host lacks it).
pub fn refuse_label(field: &'static str, value: &str, module: &str) -> Error {
    let enabled = std::path::Path::new("/sys/kernel/security")
        .join(module)
        .exists();
    let why = match (module, enabled) {
        ("apparmor", false) => "AppArmor is not enabled on this host",
        ("apparmor", true) => "gureum does not apply AppArmor profiles",
        (_, false) => "SELinux is not enabled on this host",
        (_, true) => "gureum does not apply SELinux labels",
    };
    Error::Security {
        field,
        value: value.to_string(),
        why,
    }
}

/// The settings of an OCI `process`; `root`, `readonly` and `hostname` are left for the caller.
pub fn process_settings(p: &oci_spec::runtime::Process) -> Result<RunSpec, Error> {
    let args = p.args().clone().unwrap_or_default();
    if args.first().is_none_or(String::is_empty) {
        return Err(Error::NoArgs);
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    let cwd = if cwd.is_empty() { "/".to_string() } else { cwd };
    if !cwd.starts_with('/') {
        return Err(Error::RelativeCwd(cwd));
    }
    if let Some(profile) = p.apparmor_profile().as_deref().filter(|s| !s.is_empty()) {
        return Err(refuse_label("process.apparmorProfile", profile, "apparmor"));
    }
    if let Some(label) = p.selinux_label().as_deref().filter(|s| !s.is_empty()) {
        return Err(refuse_label("process.selinuxLabel", label, "selinux"));
    }
    let user = p.user();
    Ok(RunSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (r.typ().to_string(), r.soft(), r.hard()))
            .collect(),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        terminal: p.terminal().unwrap_or(false),
        capabilities: p.capabilities().as_ref().map(caps).transpose()?,
        oom_score_adj: p.oom_score_adj(),
        ..RunSpec::default()
    })
}

/// The five sets as masks; a set the spec leaves out is empty.
fn caps(c: &oci_spec::runtime::LinuxCapabilities) -> Result<Caps, Error> {
    let mask = |set: &Option<oci_spec::runtime::Capabilities>| {
        let names: Vec<String> = set.iter().flatten().map(|c| format!("CAP_{c}")).collect();
        cap_mask(names.iter().map(String::as_str)).map_err(Error::Capability)
    };
    Ok(Caps {
        bounding: mask(c.bounding())?,
        effective: mask(c.effective())?,
        permitted: mask(c.permitted())?,
        inheritable: mask(c.inheritable())?,
        ambient: mask(c.ambient())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_become_masks() {
        let p: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0},
                "capabilities":{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"],
                                "ambient":["CAP_CHECKPOINT_RESTORE"]}}"#,
        )
        .unwrap();
        let c = process_settings(&p).unwrap().capabilities.unwrap();
        assert_eq!(c.bounding, 1 << 5 | 1);
        assert_eq!(c.effective, 1 << 5);
        assert_eq!((c.permitted, c.inheritable), (0, 0));
        assert_eq!(c.ambient, 1 << 40);
    }
}
