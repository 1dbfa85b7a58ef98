//! From an OCI runtime spec's `process` to the [`RunSpec`] both gureum's native runtime and the
//! agent apply (feature `oci`: the guest's static agent does not need the parser).

use crate::protocol::RunSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config.json has no process to run (process.args is empty)")]
    NoArgs,
    #[error("process.cwd must be an absolute path, not {0:?}")]
    RelativeCwd(String),
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
        ..RunSpec::default()
    })
}
