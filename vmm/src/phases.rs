//! Boot phase timestamps, reported in microseconds since gureum's `main` started.

use std::fmt::Write;
use std::time::Instant;

#[derive(Debug)]
pub struct Phases {
    pub start: Instant,
    /// The VM is built: memory, kernel, devices, vCPUs configured.
    pub vm_built: Option<Instant>,
    /// vCPU 0 is about to enter the guest for the first time.
    pub first_entry: Option<Instant>,
    /// The guest's first write to the boot-timer port.
    pub boot_timer: Option<Instant>,
    /// gureum saw the guest stop (or the run end otherwise).
    pub shutdown: Option<Instant>,
    /// Bytes of guest memory the guest touched.
    pub guest_touched: Option<u64>,
    /// The process's resident bytes when the guest stopped.
    pub rss: Option<u64>,
    /// Where the memory figures come from, when they are wanted: /proc/self/smaps, opened
    /// before the VMM's seccomp filter forbids opening files.
    smaps: Option<std::fs::File>,
}

impl Phases {
    /// `memory`: also measure the process's and the guest's memory at the end.
    pub fn new(start: Instant, memory: bool) -> Self {
        Self {
            start,
            vm_built: None,
            first_entry: None,
            boot_timer: None,
            shutdown: None,
            guest_touched: None,
            rss: None,
            smaps: memory
                .then(|| std::fs::File::open("/proc/self/smaps").ok())
                .flatten(),
        }
    }

    /// /proc/self/smaps, when memory is measured.
    pub fn smaps(&self) -> Option<&std::fs::File> {
        self.smaps.as_ref()
    }

    fn us(&self, at: Option<Instant>) -> String {
        at.map_or("-".into(), |t| {
            t.duration_since(self.start).as_micros().to_string()
        })
    }

    /// One line: `gureum-phases vm_built=812 first_entry=840 ... vmm_rss_kib=1600`.
    /// Memory: the process's RSS, guest pages touched, and the VMM's own share (the difference).
    pub fn report(&self) -> String {
        let mut s = String::from("gureum-phases");
        for (name, at) in [
            ("vm_built", self.vm_built),
            ("first_entry", self.first_entry),
            ("boot_timer", self.boot_timer),
            ("shutdown", self.shutdown),
            ("exit", Some(Instant::now())),
        ] {
            let _ = write!(s, " {name}_us={}", self.us(at));
        }
        let rss = self.rss.map(|b| b / 1024);
        let touched = self.guest_touched.map(|b| b / 1024);
        if let (Some(rss), Some(touched)) = (rss, touched) {
            let _ = write!(
                s,
                " rss_kib={rss} guest_touched_kib={touched} vmm_kib={}",
                rss.saturating_sub(touched)
            );
        }
        s
    }
}

/// The whole of a /proc file opened earlier, read anew (from the start: procfs makes its text
/// again), with read and lseek alone: the VMM's seccomp filter allows no open or stat.
pub fn reread(mut file: &std::fs::File) -> std::io::Result<String> {
    use std::io::{Read, Seek};
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(String::from_utf8_lossy(&out).into_owned()),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn report_lists_every_phase_in_order() {
        let start = Instant::now();
        let mut p = Phases::new(start, true);
        p.vm_built = Some(start + Duration::from_micros(900));
        p.guest_touched = Some(8 << 20);
        p.rss = Some(11 << 20);
        let r = p.report();
        assert!(r.starts_with("gureum-phases vm_built_us=900 first_entry_us=- boot_timer_us=-"));
        assert!(
            r.contains(" rss_kib=11264 guest_touched_kib=8192 vmm_kib=3072"),
            "{r}"
        );
        assert!(r.contains(" exit_us="), "{r}");
    }
}
