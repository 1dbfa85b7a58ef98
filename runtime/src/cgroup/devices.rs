//! Which devices a container may use: the spec's `linux.resources.devices` rules in order, then
//! runc's defaults. Cgroup v1 takes them as `devices.allow` / `devices.deny` lines; cgroup v2
//! has no such files, so they become an eBPF program (`BPF_PROG_TYPE_CGROUP_DEVICE`) attached
//! to the container's cgroup, as runc and crun do.
//!
//! The program's rule: the last rule that matches a request decides it. An allow rule matches
//! when it grants every access asked for, a deny rule when it forbids any of them. A request
//! no rule matches is left to the cgroups above (allowed here). A spec that starts with
//! `{"allow": false, "access": "rwm"}`, as runc's default spec does, so denies all but the
//! devices allowed after it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::Error;
use crate::bundle::DeviceRule;

/// Devices every container may use, after the spec's own rules (runc's list): mknod of any,
/// null, zero, full, tty, random, urandom, the ptys and the tun device.
const DEFAULTS: [(char, Option<i64>, Option<i64>, &str); 10] = [
    ('c', None, None, "m"),
    ('b', None, None, "m"),
    ('c', Some(1), Some(3), "rwm"),
    ('c', Some(1), Some(5), "rwm"),
    ('c', Some(1), Some(7), "rwm"),
    ('c', Some(5), Some(0), "rwm"),
    ('c', Some(1), Some(8), "rwm"),
    ('c', Some(1), Some(9), "rwm"),
    ('c', Some(136), None, "rwm"),
    ('c', Some(5), Some(2), "rwm"),
];

/// The rules to enforce: none when the spec has none (the cgroup keeps its parent's), else the
/// spec's followed by the defaults.
pub fn rules(spec: &[DeviceRule]) -> Vec<DeviceRule> {
    if spec.is_empty() {
        return Vec::new();
    }
    let defaults = DEFAULTS
        .iter()
        .map(|&(kind, major, minor, access)| DeviceRule {
            allow: true,
            kind,
            major,
            minor,
            access: access.into(),
        });
    spec.iter().cloned().chain(defaults).collect()
}

/// The line cgroup v1's devices.allow / devices.deny take: "c 1:3 rwm".
pub fn v1_line(r: &DeviceRule) -> String {
    let n = |v: Option<i64>| v.map_or_else(|| "*".to_string(), |v| v.to_string());
    format!("{} {}:{} {}", r.kind, n(r.major), n(r.minor), r.access)
}

/// One eBPF instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND32_K: u8 = 0x54; // dst &= imm (32 bits)
const RSH32_K: u8 = 0x74; // dst >>= imm
const MOV32_X: u8 = 0xbc; // dst = src
const MOV64_K: u8 = 0xb7; // dst = imm
const JNE32_K: u8 = 0x56; // if dst != imm: pc += off
const JNE32_X: u8 = 0x5e; // if dst != src: pc += off
const JEQ32_K: u8 = 0x16; // if dst == imm: pc += off
const EXIT: u8 = 0x95;

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// bpf_cgroup_dev_ctx: access_type (type | access << 16) at 0, major at 4, minor at 8. The
/// program keeps type in r2, access in r3, major in r4, minor in r5.
const PROLOGUE: [Insn; 6] = [
    insn(LDX_W, 2, 1, 0, 0),
    insn(AND32_K, 2, 0, 0, 0xffff),
    insn(LDX_W, 3, 1, 0, 0),
    insn(RSH32_K, 3, 0, 0, 16),
    insn(LDX_W, 4, 1, 4, 0),
    insn(LDX_W, 5, 1, 8, 0),
];

/// BPF_DEVCG_ACC_MKNOD, _READ, _WRITE.
fn access_mask(access: &str) -> Result<i32, Error> {
    access.chars().try_fold(0, |mask, c| match c {
        'm' => Ok(mask | 1),
        'r' => Ok(mask | 2),
        'w' => Ok(mask | 4),
        _ => Err(Error::DeviceRule(format!("access {access:?}"))),
    })
}

fn number(n: Option<i64>) -> Result<Option<i32>, Error> {
    n.filter(|&n| n >= 0)
        .map(|n| {
            u32::try_from(n)
                .map(u32::cast_signed)
                .map_err(|_| Error::DeviceRule(format!("device number {n}")))
        })
        .transpose()
}

/// The instructions of one rule: tests that skip the rest of the block, then its answer.
fn block(r: &DeviceRule) -> Result<Vec<Insn>, Error> {
    let mut tests: Vec<Insn> = Vec::new();
    match r.kind {
        'a' => {}
        'b' => tests.push(insn(JNE32_K, 2, 0, 0, 1)),
        'c' => tests.push(insn(JNE32_K, 2, 0, 0, 2)),
        k => return Err(Error::DeviceRule(format!("type {k:?}"))),
    }
    let mask = access_mask(&r.access)?;
    if mask != 7 {
        tests.push(insn(MOV32_X, 1, 3, 0, 0));
        tests.push(insn(AND32_K, 1, 0, 0, mask));
        tests.push(match r.allow {
            true => insn(JNE32_X, 1, 3, 0, 0),  // asks for more than it grants
            false => insn(JEQ32_K, 1, 0, 0, 0), // asks for none of what it denies
        });
    }
    if let Some(major) = number(r.major)? {
        tests.push(insn(JNE32_K, 4, 0, 0, major));
    }
    if let Some(minor) = number(r.minor)? {
        tests.push(insn(JNE32_K, 5, 0, 0, minor));
    }
    let len = tests.len() + 2;
    let mut out = Vec::with_capacity(len);
    for (i, mut t) in tests.into_iter().enumerate() {
        if t.code != MOV32_X && t.code != AND32_K {
            // To the instruction after this block.
            t.off = i16::try_from(len - i - 1).unwrap_or(i16::MAX);
        }
        out.push(t);
    }
    out.push(insn(MOV64_K, 0, 0, 0, i32::from(r.allow)));
    out.push(insn(EXIT, 0, 0, 0, 0));
    Ok(out)
}

/// The program: the rules from the last to the first, each returning its answer when it
/// matches, then "allow" for what none matched. A rule that matches everything ends it (the
/// verifier refuses code that cannot run).
pub fn program(rules: &[DeviceRule]) -> Result<Vec<Insn>, Error> {
    let mut prog = PROLOGUE.to_vec();
    for r in rules.iter().rev() {
        let b = block(r)?;
        let matches_all = b.len() == 2;
        prog.extend(b);
        if matches_all {
            return Ok(prog);
        }
    }
    prog.push(insn(MOV64_K, 0, 0, 0, 1));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    Ok(prog)
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to expected_attach_type.
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

const BPF_PROG_LOAD: i32 = 5;
const BPF_PROG_ATTACH: i32 = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

fn bpf<T>(cmd: i32, attr: &T) -> std::io::Result<i32> {
    let size = u32::try_from(std::mem::size_of::<T>()).unwrap_or(u32::MAX);
    // SAFETY: `attr` is a live bpf_attr of `size` bytes for `cmd`; the pointers in it point to
    // buffers that outlive the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_ref(attr), size) };
    match i32::try_from(ret) {
        Ok(fd) if fd >= 0 => Ok(fd),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Loads the program; a program the verifier refuses gives the verifier's last words.
fn load(prog: &[Insn]) -> Result<OwnedFd, Error> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 1 << 16];
    let mut name = [0u8; 16];
    name[..7].copy_from_slice(b"gureum\0");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(prog.len()).unwrap_or(u32::MAX),
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    let first = bpf(BPF_PROG_LOAD, &attr);
    let fd = first.or_else(|e| {
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::EACCES) {
            return Err(Error::Bpf("load the devices program", e));
        }
        (attr.log_level, attr.log_size) = (1, u32::try_from(log.len()).unwrap_or(0));
        attr.log_buf = log.as_mut_ptr() as u64;
        bpf(BPF_PROG_LOAD, &attr).map_err(|_| {
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            // Its complaint is the last line before the "processed N insns" summary.
            let last = text
                .lines()
                .rfind(|l| !l.is_empty() && !l.starts_with("processed "));
            Error::Verifier(last.unwrap_or_default().to_string())
        })
    })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Compiles `rules` and attaches the program to the cgroup v2 directory `dir`. The cgroup
/// keeps it until it is removed.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), Error> {
    let prog = load(&program(rules)?)?;
    let cgroup = std::fs::File::open(dir).map_err(|e| Error::Io(dir.to_path_buf(), e))?;
    let fd = |f: std::os::fd::RawFd| u32::try_from(f).unwrap_or(u32::MAX);
    let attr = ProgAttach {
        target_fd: fd(cgroup.as_raw_fd()),
        attach_bpf_fd: fd(prog.as_raw_fd()),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_ATTACH, &attr)
        .map(drop)
        .map_err(|e| Error::Bpf("attach the devices program", e))
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
