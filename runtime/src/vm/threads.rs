//! Where a VMM is, from this host's side, for an error that says a sandbox did not come up in
//! time: each of its threads' name, state, kernel wait channel and the CPU time it used over a
//! short sample. A vCPU thread that burns a whole CPU in `R` runs guest code that makes no
//! progress (a guest frozen or spinning); one asleep in `kvm_vcpu_block` has a guest that
//! halted and waits for an interrupt; a VMM thread asleep elsewhere points at the VMM.

use std::time::{Duration, Instant};

/// One thread of a process, as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Thread {
    tid: u32,
    name: String,
    state: char,
    /// user + system time, in clock ticks.
    ticks: u64,
    wchan: String,
}

/// The fields of /proc/PID/task/TID/stat this needs: the name (between the first '(' and the
/// last ')'), the state, and utime + stime (fields 14 and 15).
fn parse_stat(tid: u32, stat: &str) -> Option<Thread> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    // After the state come ppid .. cmajflt (fields 4-13), then utime and stime.
    let mut rest = rest.skip(10);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some(Thread {
        tid,
        name,
        state,
        ticks: utime + stime,
        wchan: String::new(),
    })
}

fn threads(pid: u32) -> Vec<Thread> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut all: Vec<Thread> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| {
            let task = format!("/proc/{pid}/task/{tid}");
            let stat = std::fs::read_to_string(format!("{task}/stat")).ok()?;
            let mut t = parse_stat(tid, &stat)?;
            t.wchan = std::fs::read_to_string(format!("{task}/wchan")).unwrap_or_default();
            Some(t)
        })
        .collect();
    all.sort_by_key(|t| t.tid);
    all
}

fn ticks_per_second() -> u64 {
    // SAFETY: sysconf reads a constant of this system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0).unwrap_or(100)
}

/// One line per thread of process `pid`, with the CPU it used over `sample`:
/// `vcpu0 (tid 12): R, 0.98 s of CPU in 1 s, wchan 0`.
pub fn describe(pid: u32, sample: Duration) -> String {
    let before = threads(pid);
    let start = Instant::now();
    std::thread::sleep(sample);
    let after = threads(pid);
    let seconds = start.elapsed().as_secs_f64();
    let hz = ticks_per_second();
    let lines: Vec<String> = after
        .iter()
        .map(|t| {
            let was = before
                .iter()
                .find(|b| b.tid == t.tid)
                .map_or(0, |b| b.ticks);
            let used = t.ticks.saturating_sub(was) as f64 / hz as f64;
            let wchan = if t.wchan.is_empty() || t.wchan == "0" {
                String::new()
            } else {
                format!(", in {}", t.wchan)
            };
            format!(
                "{} (tid {}): {}{wchan}, {used:.2} s of CPU in {seconds:.1} s",
                t.name, t.tid, t.state
            )
        })
        .collect();
    if lines.is_empty() {
        return format!("process {pid} has gone");
    }
    format!("the VMM's threads:\n    {}", lines.join("\n    "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parens_in_the_name_parses() {
        let stat = "42 (vcpu (0) x) R 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0";
        let t = parse_stat(42, stat).unwrap();
        assert_eq!(
            (t.name.as_str(), t.state, t.ticks),
            ("vcpu (0) x", 'R', 280)
        );
    }

    #[test]
    fn a_short_or_garbled_stat_line_is_none() {
        assert_eq!(parse_stat(1, "1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat(1, "no parens here"), None);
        assert_eq!(parse_stat(1, "1 (x) S 1 1 1 0 -1 0 0 0 0 0 ab 1 0"), None);
    }

    #[test]
    fn this_process_s_threads_are_described() {
        let text = describe(std::process::id(), Duration::from_millis(20));
        assert!(text.starts_with("the VMM's threads:"), "{text}");
        assert!(text.contains("s of CPU in"), "{text}");
        assert_eq!(
            describe(u32::MAX, Duration::ZERO),
            format!("process {} has gone", u32::MAX)
        );
    }
}
