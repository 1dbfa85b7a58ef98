use super::*;

fn rule(
    allow: bool,
    kind: char,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> DeviceRule {
    DeviceRule {
        allow,
        kind,
        major,
        minor,
        access: access.into(),
    }
}

fn deny_all() -> DeviceRule {
    rule(false, 'a', None, None, "rwm")
}

/// Runs the program on one request, as the kernel would: the subset of eBPF it uses.
fn run(prog: &[Insn], kind: char, major: u32, minor: u32, access: &str) -> bool {
    let typ = match kind {
        'b' => 1,
        _ => 2,
    };
    let access = u32::try_from(access_mask(access).unwrap()).unwrap();
    let ctx = [typ | (access << 16), major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0;
    loop {
        let i = prog[pc];
        let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
        let imm32 = u64::from(i.imm.cast_unsigned());
        let low = |v: u64| v & 0xffff_ffff;
        let mut jump = |taken: bool| {
            if taken {
                pc = pc.wrapping_add_signed(isize::from(i.off));
            }
        };
        match i.code {
            LDX_W => {
                assert_eq!(src, 1, "loads from the context only");
                r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
            }
            AND32_K => r[dst] = low(r[dst]) & imm32,
            RSH32_K => r[dst] = low(r[dst]) >> i.imm,
            MOV32_X => r[dst] = low(r[src]),
            MOV64_K => r[dst] = u64::from(i.imm.cast_unsigned()),
            JNE32_K => jump(low(r[dst]) != imm32),
            JNE32_X => jump(low(r[dst]) != low(r[src])),
            JEQ32_K => jump(low(r[dst]) == imm32),
            EXIT => return r[0] == 1,
            c => panic!("unexpected opcode {c:#x}"),
        }
        pc += 1;
    }
}

#[test]
fn no_rules_leave_the_parent_s_and_some_rules_get_the_defaults() {
    assert!(rules(&[]).is_empty());
    let all = rules(&[deny_all()]);
    assert_eq!(all.len(), 11);
    assert_eq!(v1_line(&all[0]), "a *:* rwm");
    assert_eq!(v1_line(&all[3]), "c 1:3 rwm");
}

#[test]
fn deny_all_then_the_defaults() {
    let prog = program(&rules(&[deny_all()])).unwrap();
    let allowed = |kind, major, minor, access| run(&prog, kind, major, minor, access);
    assert!(allowed('c', 1, 3, "rw"), "/dev/null");
    assert!(allowed('c', 1, 9, "r"), "/dev/urandom");
    assert!(allowed('c', 136, 7, "rw"), "a pty");
    assert!(allowed('b', 8, 0, "m"), "mknod of any");
    assert!(!allowed('b', 8, 0, "r"), "a disk");
    assert!(!allowed('b', 8, 0, "rm"), "read and mknod of a disk");
    assert!(!allowed('c', 10, 237, "rw"), "loop-control");
    assert!(!allowed('c', 1, 4, "r"), "/dev/port");
}

#[test]
fn the_last_matching_rule_decides() {
    let prog = program(&[
        rule(true, 'c', Some(4), None, "r"),
        rule(false, 'c', Some(4), Some(1), "w"),
    ])
    .unwrap();
    assert!(run(&prog, 'c', 4, 1, "r"));
    assert!(!run(&prog, 'c', 4, 1, "w"));
    assert!(
        !run(&prog, 'c', 4, 1, "rw"),
        "a deny of any asked access wins"
    );
    assert!(run(&prog, 'c', 4, 2, "r"));
    // Nothing matches a write to 4:2 but the allow-everything end.
    assert!(run(&prog, 'c', 4, 2, "w"));
    // An allow grants only what it names: read and write of 4:2 after a deny-all.
    let prog = program(&[deny_all(), rule(true, 'c', Some(4), None, "r")]).unwrap();
    assert!(run(&prog, 'c', 4, 2, "r"));
    assert!(!run(&prog, 'c', 4, 2, "rw"));
    assert!(
        !run(&prog, 'b', 4, 2, "r"),
        "a block device of the same number"
    );
}

#[test]
fn bad_rules_are_refused() {
    let bad = |r| program(&[r]).unwrap_err().to_string();
    assert!(bad(rule(true, 'c', None, None, "rx")).contains("access \"rx\""));
    assert!(bad(rule(true, 'p', None, None, "rwm")).contains("type 'p'"));
    assert!(bad(rule(true, 'c', Some(1 << 40), None, "r")).contains("device number"));
}

#[test]
fn the_kernel_s_verifier_accepts_the_program() {
    // Root only (as every container test here): loading needs CAP_BPF or CAP_SYS_ADMIN.
    let prog = program(&rules(&[deny_all(), rule(true, 'b', Some(7), None, "rw")])).unwrap();
    load(&prog).unwrap();
    // Without a rule that matches everything, it ends with the allow of what none matched.
    load(&program(&[rule(false, 'c', Some(1), Some(3), "w")]).unwrap()).unwrap();
    // Its refusal is told in the verifier's words.
    let bad = [insn(EXIT, 0, 0, 0, 0)];
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("R0 !read_ok"), "{err}");
}
