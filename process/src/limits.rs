//! Resource limits by their OCI names.

/// The setrlimit resource for an OCI rlimit name (RLIMIT_NOFILE, ...).
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return None,
    })
}

/// Applies every limit it knows; the first failure's name.
pub fn apply(rlimits: &[(String, u64, u64)]) -> Result<(), String> {
    for (name, soft, hard) in rlimits {
        let Some(resource) = rlimit_resource(name) else {
            continue;
        };
        let limit = libc::rlimit {
            rlim_cur: *soft,
            rlim_max: *hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            let error = std::io::Error::last_os_error();
            return Err(match hard_limit(resource) {
                Some(now) if *hard > now && error.raw_os_error() == Some(libc::EPERM) => {
                    above_hard_limit(name, *hard, now)
                }
                _ => format!("cannot set {name}: {error}"),
            });
        }
    }
    Ok(())
}

/// `process.oomScoreAdj`, for this process (and what it execs): written while it still has
/// the privileges lowering it needs.
pub fn set_oom_score_adj(adj: Option<i32>) -> Result<(), String> {
    let Some(adj) = adj else { return Ok(()) };
    std::fs::write("/proc/self/oom_score_adj", adj.to_string())
        .map_err(|e| format!("cannot set oomScoreAdj {adj}: {e}"))
}

/// The hard limit this process has now.
fn hard_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid struct.
    (unsafe { libc::getrlimit(resource, &mut now) } == 0).then_some(now.rlim_max)
}

/// A limit asked above the hard limit, which only CAP_SYS_RESOURCE may raise: the limit, and
/// the way out (the flag podman and docker spell it with).
fn above_hard_limit(name: &str, asked: u64, hard: u64) -> String {
    let flag = name.trim_start_matches("RLIMIT_").to_ascii_lowercase();
    format!(
        "cannot raise {name} to {asked}: the hard limit here is {hard}, and raising it needs \
         CAP_SYS_RESOURCE; ask for at most {hard} in process.rlimits (podman, docker: \
         --ulimit {flag}={hard}:{hard})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_above_the_hard_one_names_it_and_the_way_out() {
        let line = above_hard_limit("RLIMIT_NOFILE", 1048576, 20000);
        assert!(line.contains("RLIMIT_NOFILE to 1048576"), "{line}");
        assert!(line.contains("hard limit here is 20000"), "{line}");
        assert!(line.contains("--ulimit nofile=20000:20000"), "{line}");
    }
}
