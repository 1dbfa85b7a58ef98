//! Capabilities and seccomp: the last steps before the container's process execs, shared by
//! gureum's native runtime and the guest agent. The host resolves names and compiles the
//! seccomp filters; here they are only applied, in runc's order:
//! bounding set and keep-caps → setuid → capset → ambient set → (no_new_privs) → seccomp.

use std::io;

use serde::{Deserialize, Serialize};

/// Capability names by number, as `capabilities(7)` lists them (Linux 6.1 knows 0..=40).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The five capability sets of an OCI process, as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

/// The mask of `names`; an unknown name is an error naming it.
pub fn cap_mask<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<u64, String> {
    names.into_iter().try_fold(0u64, |mask, name| {
        let n = CAP_NAMES
            .iter()
            .position(|c| c.eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown capability {name:?}"))?;
        Ok(mask | 1 << n)
    })
}

/// The capabilities this kernel knows, probed without reading /proc (which the container's
/// root may lack): PR_CAPBSET_READ fails for a number past the last.
fn kernel_caps() -> u64 {
    (0..64u64)
        // SAFETY: prctl(PR_CAPBSET_READ) only reads this thread's bounding set.
        .take_while(|&n| unsafe { libc::prctl(libc::PR_CAPBSET_READ, n, 0, 0, 0) } >= 0)
        .fold(0, |mask, n| mask | 1 << n)
}

fn check(rc: i64, what: &str) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// Who a process runs as and what confines it: the last steps before exec, shared by the
/// native runtime's init and the agent.
pub struct Identity<'a> {
    pub uid: u32,
    pub gid: u32,
    pub groups: &'a [libc::gid_t],
    pub caps: Option<&'a Caps>,
    pub seccomp: Option<&'a Filters>,
    pub no_new_privs: bool,
}

impl Identity<'_> {
    /// In runc's order: seccomp first unless no_new_privs (installing a filter then needs the
    /// privileges the rest drops), the bounding set, groups, gid, uid, the capability sets,
    /// no_new_privs, `then` (the native init's chdir, as the user), seccomp last with
    /// no_new_privs. The error names the step.
    pub fn apply(&self, then: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        if let (Some(f), false) = (self.seccomp, self.no_new_privs) {
            f.install()?;
        }
        if let Some(c) = self.caps {
            c.before_setuid()?;
        }
        let failed = |what: std::fmt::Arguments| {
            let e = io::Error::last_os_error();
            io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        // SAFETY: credential calls with a live group list and plain ids.
        unsafe {
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(failed(format_args!("setgroups")));
            }
            if libc::setgid(self.gid) != 0 {
                return Err(failed(format_args!("setgid {}", self.gid)));
            }
            if libc::setuid(self.uid) != 0 {
                return Err(failed(format_args!("setuid {}", self.uid)));
            }
        }
        if let Some(c) = self.caps {
            c.after_setuid()?;
        }
        if self.no_new_privs {
            // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) on this thread.
            let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            check(rc.into(), "no_new_privs")?;
        }
        then()?;
        if let (Some(f), true) = (self.seccomp, self.no_new_privs) {
            f.install()?;
        }
        Ok(())
    }
}

impl Caps {
    /// While still privileged: drop from the bounding set what it lacks, and keep the
    /// permitted set across the coming setuid.
    pub fn before_setuid(&self) -> io::Result<()> {
        let known = kernel_caps();
        for n in (0..64).filter(|n| known & !self.bounding & (1 << n) != 0) {
            // SAFETY: prctl(PR_CAPBSET_DROP) on this thread with a capability number it knows.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n, 0, 0, 0) };
            check(rc.into(), "cannot drop from the bounding set")?;
        }
        // SAFETY: prctl(PR_SET_KEEPCAPS) changes only this thread's securebits.
        let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        check(rc.into(), "keep capabilities")
    }

    /// After setuid: the effective, permitted and inheritable sets, then the ambient set (an
    /// ambient capability the other sets do not allow is skipped, as runc does).
    pub fn after_setuid(&self) -> io::Result<()> {
        let known = kernel_caps();
        let (e, p, i) = (
            self.effective & known,
            self.permitted & known,
            self.inheritable & known,
        );
        let lo = |m: u64| (m & 0xffff_ffff) as u32;
        let hi = |m: u64| (m >> 32) as u32;
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: lo(e),
                permitted: lo(p),
                inheritable: lo(i),
            },
            CapData {
                effective: hi(e),
                permitted: hi(p),
                inheritable: hi(i),
            },
        ];
        // SAFETY: capset(2) with a version-3 header and the two data words it reads.
        let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
        check(rc, "cannot set capabilities")?;
        // SAFETY: prctl calls that change only this thread's securebits and ambient set.
        unsafe {
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            for n in (0..64).filter(|n| self.ambient & known & (1 << n) != 0) {
                libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, n, 0, 0);
            }
        }
        Ok(())
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Seccomp filters compiled by the host: each instruction packed as code | jt << 16 | jf << 24 |
/// k << 32, installed in order (the kernel runs them all; the strictest answer wins).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seccomp {
    pub filters: Vec<Vec<u64>>,
    /// SECCOMP_FILTER_FLAG_* for seccomp(2).
    pub flags: u32,
}

/// Seccomp filters unpacked into BPF instructions, ready to install after a fork.
pub struct Filters {
    programs: Vec<Vec<libc::sock_filter>>,
    flags: u32,
}

impl Seccomp {
    pub fn unpack(&self) -> Filters {
        let insn = |w: &u64| libc::sock_filter {
            code: (w & 0xffff) as u16,
            jt: ((w >> 16) & 0xff) as u8,
            jf: ((w >> 24) & 0xff) as u8,
            k: (w >> 32) as u32,
        };
        Filters {
            programs: self
                .filters
                .iter()
                .map(|f| f.iter().map(insn).collect())
                .collect(),
            flags: self.flags,
        }
    }

    /// Packs BPF instructions as [`Seccomp::filters`] carries them.
    pub fn pack(insns: &[libc::sock_filter]) -> Vec<u64> {
        insns
            .iter()
            .map(|i| {
                u64::from(i.code)
                    | u64::from(i.jt) << 16
                    | u64::from(i.jf) << 24
                    | u64::from(i.k) << 32
            })
            .collect()
    }
}

impl Filters {
    /// Installs every filter on this thread. Without no_new_privs this needs CAP_SYS_ADMIN.
    pub fn install(&self) -> io::Result<()> {
        for program in &self.programs {
            let prog = libc::sock_fprog {
                len: u16::try_from(program.len())
                    .map_err(|_| io::Error::other("seccomp filter too long"))?,
                filter: program.as_ptr().cast_mut(),
            };
            // SAFETY: seccomp(2) reads `prog`, which points at `program`, live for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &prog,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot install seccomp filter: {e}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_numbers() {
        assert_eq!(cap_mask(["CAP_CHOWN"]).unwrap(), 1);
        assert_eq!(
            cap_mask(["CAP_SYS_ADMIN", "CAP_KILL"]).unwrap(),
            1 << 21 | 1 << 5
        );
        assert_eq!(cap_mask(["CAP_CHECKPOINT_RESTORE"]).unwrap(), 1 << 40);
        assert!(cap_mask(["CAP_NOPE"]).unwrap_err().contains("CAP_NOPE"));
    }

    #[test]
    fn bpf_packs_and_unpacks() {
        let insns = [libc::sock_filter {
            code: 0x15,
            jt: 3,
            jf: 250,
            k: 0xc000_003e,
        }];
        let s = Seccomp {
            filters: vec![Seccomp::pack(&insns)],
            flags: 0,
        };
        let f = s.unpack();
        let back = &f.programs[0][0];
        assert_eq!(
            (back.code, back.jt, back.jf, back.k),
            (0x15, 3, 250, 0xc000_003e)
        );
    }
}
