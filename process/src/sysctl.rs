//! `linux.sysctl`: names checked, values written under /proc/sys.

/// Sets each sysctl, in the caller's namespaces: the guest agent's for the whole guest (which
/// is the container's), a native init's in the container's.
pub fn set(sysctl: &[(String, String)]) -> Result<(), String> {
    for (key, value) in sysctl {
        if !valid_name(key) {
            return Err(format!("bad sysctl name {key:?}"));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("cannot set sysctl {key}: {e}"))?;
    }
    Ok(())
}

/// A sysctl's name and nothing more: dotted parts, none empty, no path of its own
/// ("net./../../sysrq-trigger" is not one).
pub fn valid_name(key: &str) -> bool {
    key.split('.')
        .all(|part| !part.is_empty() && !part.contains('/'))
}
