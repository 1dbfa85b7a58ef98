//! The restore kinds: a snapshot of an idle guest, made once before the runs, restored by each
//! run in a new process. The restored guest is given one line on its console and answers it
//! (the mark: restore → guest running), then resets (the exit). The Linux guest's shell runs
//! `echo` and `reboot -f`; the test guest, waiting in its echo scenario, prints the line back.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::kinds::{Kind, LINUX_MARK, Setup, vm};

/// What the test guest prints when it answers (its echo of [`input`]).
pub const TEST_GUEST_ANSWER: &str = "echo: gureum-bench-start";
const TEST_GUEST_READY: &str = "echo: ready";
/// How long the guest that is snapshotted may take to be ready.
const READY_DEADLINE: Duration = Duration::from_secs(180);

/// The line a restored guest of `kind` is given on its console. For Linux the quotes keep the
/// tty's echo of the command from matching the mark; only `echo`'s output does.
pub fn input(kind: Kind) -> Option<&'static [u8]> {
    match kind {
        Kind::Restore => Some(b"echo gureum-bench-sta''rt; reboot -f\n"),
        Kind::TestGuestRestore => Some(b"gureum-bench-start\n"),
        _ => None,
    }
}

/// The snapshot's state and memory files for `kind`, beside the runtimes' state.
fn files(setup: &Setup, kind: Kind) -> (PathBuf, PathBuf) {
    let base = setup.state.join(format!("snapshot-{}", kind.name()));
    (base.with_extension("state"), base.with_extension("mem"))
}

/// `gureum restore` of `kind`'s snapshot, reporting its phases.
pub fn command(setup: &Setup, kind: Kind) -> Command {
    let (state, mem) = files(setup, kind);
    let mut c = Command::new(&setup.vmm);
    c.arg("restore")
        .arg("--snapshot")
        .arg(state)
        .arg("--mem")
        .arg(mem)
        .arg("--phases");
    c
}

/// Boots `kind`'s guest with an API socket, waits until it is ready, and snapshots it with
/// `gureum snapshot`. Err says why, in one line (the kind is then skipped).
pub fn prepare(setup: &Setup, kind: Kind) -> Result<(), String> {
    let (config, ready) = match kind {
        Kind::Restore => (setup.linux_vm(true), LINUX_MARK),
        Kind::TestGuestRestore => {
            let kernel = setup.test_guest.clone().unwrap_or_default();
            (
                vm(&kernel, None, "console=ttyS0 scenario=echo".into()),
                TEST_GUEST_READY,
            )
        }
        _ => return Ok(()),
    };
    let name = kind.name();
    let api = setup.state.join(format!("snapshot-{name}.sock"));
    let config_file = setup.state.join(format!("snapshot-{name}.json"));
    let mut cmd = gureum_vmm::boot::launch(&setup.vmm, &config, &config_file)
        .map_err(|e| format!("cannot write {}: {e}", config_file.display()))?;
    // stdin held open: the idle Linux guest's shell waits on it.
    cmd.arg("--api-sock")
        .arg(&api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the guest to snapshot: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take();
    std::thread::spawn(move || {
        for line in stdout
            .map(BufReader::new)
            .into_iter()
            .flat_map(|r| r.lines())
        {
            let Ok(line) = line else { break };
            if line.contains(ready) {
                let _ = tx.send(());
            }
        }
    });
    let result = match rx.recv_timeout(READY_DEADLINE) {
        Ok(()) => snapshot(setup, kind, &api),
        Err(_) => Err(format!(
            "the guest to snapshot never printed {ready:?} within {} s",
            READY_DEADLINE.as_secs()
        )),
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = std::fs::remove_file(&api);
    result.map_err(
        |e| match stderr.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(last) => format!("{e} (the guest's VMM: {last})"),
            None => e,
        },
    )
}

fn snapshot(setup: &Setup, kind: Kind, api: &std::path::Path) -> Result<(), String> {
    let (state, mem) = files(setup, kind);
    let out = Command::new(&setup.gureum)
        .arg("snapshot")
        .arg("--api-sock")
        .arg(api)
        .arg("--snapshot")
        .arg(&state)
        .arg("--mem")
        .arg(&mem)
        .arg("--leave-paused")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run gureum snapshot: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("gureum snapshot failed: {}", err.trim()))
    }
}
