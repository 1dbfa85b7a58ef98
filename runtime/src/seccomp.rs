//! `linux.seccomp` compiled to BPF on the host (seccompiler), for the native init and the guest
//! agent to install as they are (`gureum_process::security`).
//!
//! seccompiler builds filters with one action on a match and one on a miss, while an OCI
//! profile gives each syscall its own action. So a profile becomes several filters, relying on
//! the kernel running every installed filter and taking the strictest answer:
//! - a base filter: every syscall the profile lists (with its argument conditions) → allow,
//!   anything else → the default action;
//! - one filter per other action A: the syscalls listed with A → A, anything else → allow.
//!
//! Syscall names this architecture does not have are skipped, as libseccomp does; syscalls of
//! another architecture (32-bit `int 0x80`) kill the process.

use std::collections::BTreeMap;
use std::str::FromStr;

use gureum_process::security::Seccomp;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp action SCMP_ACT_NOTIFY is not supported")]
    Notify,
    #[error("seccomp flag {0} is not supported")]
    Flag(String),
    #[error("seccomp rule for {0}")]
    Rule(String, #[source] seccompiler::BackendError),
    #[error("seccomp filter")]
    Filter(#[source] seccompiler::BackendError),
}

/// Per syscall number: None matches it whatever its arguments, else any of the rules.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

pub fn compile(profile: &LinuxSeccomp) -> Result<Seccomp, Error> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut listed = Rules::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for entry in profile.syscalls().iter().flatten() {
        let act = action(entry.action(), entry.errno_ret())?;
        if act == default {
            continue;
        }
        let rule = rule(entry)?;
        let group = match by_action.iter_mut().position(|(a, _)| *a == act) {
            Some(i) => &mut by_action[i].1,
            None => {
                by_action.push((act.clone(), Rules::new()));
                &mut by_action.last_mut().expect("just pushed").1
            }
        };
        for nr in entry.names().iter().filter_map(|n| syscall_number(n)) {
            add(&mut listed, nr, rule.clone());
            add(group, nr, rule.clone());
        }
    }
    let mut filters = Vec::new();
    if default != SeccompAction::Allow {
        filters.push(build(listed, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        if act != SeccompAction::Allow {
            filters.push(build(rules, SeccompAction::Allow, act)?);
        }
    }
    Ok(Seccomp {
        filters,
        flags: flags(profile)?,
    })
}

fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name)
        .ok()
        .map(|s| i64::from(s.id()))
}

fn add(rules: &mut Rules, nr: i64, rule: Option<SeccompRule>) {
    let slot = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (slot.as_mut(), rule) {
        (Some(list), Some(rule)) => list.push(rule),
        (_, None) => *slot = None,
        (None, Some(_)) => {}
    }
}

fn build(rules: Rules, miss: SeccompAction, hit: SeccompAction) -> Result<Vec<u64>, Error> {
    let rules = rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, miss, hit, TargetArch::x86_64).map_err(Error::Filter)?;
    let program = BpfProgram::try_from(filter).map_err(Error::Filter)?;
    let insns: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    Ok(Seccomp::pack(&insns))
}

/// The entry's argument conditions as one rule (all must hold); None when it has none.
fn rule(entry: &LinuxSyscall) -> Result<Option<SeccompRule>, Error> {
    let args = entry.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Ok(None);
    }
    let name = entry.names().join(",");
    let conditions = args
        .iter()
        .map(|a| {
            let (op, value) = match a.op() {
                LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
                LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
                LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
                LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
                LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
                LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
                // libseccomp's order: value is the mask, valueTwo the datum.
                LinuxSeccompOperator::ScmpCmpMaskedEq => (
                    SeccompCmpOp::MaskedEq(a.value()),
                    a.value_two().unwrap_or(0),
                ),
            };
            let index = u8::try_from(a.index()).unwrap_or(u8::MAX);
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .map_err(|e| Error::Rule(name.clone(), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(|e| Error::Rule(name, e))
}

/// The actions gureum applies (`action`); SCMP_ACT_NOTIFY is refused.
pub const ACTIONS: [LinuxSeccompAction; 8] = [
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActTrap,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActAllow,
];

/// The argument comparisons `rule` applies (all of the spec's).
pub const OPERATORS: [&str; 7] = [
    "SCMP_CMP_NE",
    "SCMP_CMP_LT",
    "SCMP_CMP_LE",
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_MASKED_EQ",
];

/// The filter flags gureum passes to seccomp(2).
pub const FLAGS: [(&str, libc::c_ulong); 3] = [
    ("SECCOMP_FILTER_FLAG_TSYNC", libc::SECCOMP_FILTER_FLAG_TSYNC),
    ("SECCOMP_FILTER_FLAG_LOG", libc::SECCOMP_FILTER_FLAG_LOG),
    (
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
    ),
];

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, Error> {
    let errno = errno.unwrap_or(libc::EPERM.unsigned_abs());
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActNotify => return Err(Error::Notify),
    })
}

fn flags(profile: &LinuxSeccomp) -> Result<u32, Error> {
    profile.flags().iter().flatten().try_fold(0u32, |acc, f| {
        let name = serde_json::to_value(f)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let Some(&(_, bit)) = FLAGS.iter().find(|(n, _)| *n == name) else {
            return Err(Error::Flag(name));
        };
        Ok(acc | u32::try_from(bit).unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advertised_actions_and_operators_are_the_applied_ones() {
        for a in ACTIONS {
            assert!(action(a, None).is_ok(), "{a:?}");
        }
        assert!(action(LinuxSeccompAction::ScmpActNotify, None).is_err());
        for op in OPERATORS {
            let json = format!(r#"{{"index":0,"value":1,"valueTwo":1,"op":"{op}"}}"#);
            let arg: oci_spec::runtime::LinuxSeccompArg = serde_json::from_str(&json).unwrap();
            let entry = oci_spec::runtime::LinuxSyscallBuilder::default()
                .names(vec!["read".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .args(vec![arg])
                .build()
                .unwrap();
            assert!(rule(&entry).unwrap().is_some(), "{op}");
        }
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn an_allow_list_is_one_filter() {
        let s = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(s.filters.len(), 1);
        assert_eq!(s.flags, 0);
    }

    #[test]
    fn each_other_action_gets_its_filter() {
        let s = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],"syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        ))
        .unwrap();
        // The default allows, so no base filter: ERRNO(38), ERRNO(EPERM) and KILL_PROCESS.
        assert_eq!(s.filters.len(), 3);
        assert_eq!(s.flags, 2);
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let notify = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_NOTIFY"}]}"#,
        );
        assert!(matches!(compile(&notify), Err(Error::Notify)));
        let bad_index = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ALLOW","args":[{"index":9,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(matches!(compile(&bad_index), Err(Error::Rule(..))));
    }
}
