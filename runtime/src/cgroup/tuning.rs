//! The rest of `linux.resources` — beyond the memory limit, CPU quota, pids and devices that
//! `update` can change too — as the cgroup files that apply it on v1 or v2. A setting the host's
//! cgroup version has no file for is refused, never dropped: `files` says which and why.

use serde::{Deserialize, Serialize};

/// What of `linux.resources` is applied once, at create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tuning {
    pub memory_reservation: Option<i64>,
    /// Memory plus swap (the spec's and v1's meaning), with the memory limit for v2's swap.
    pub memory_swap: Option<(i64, Option<i64>)>,
    pub swappiness: Option<u64>,
    /// memory.kernel or kernelTCP: the kernel dropped both limits.
    pub kernel_memory: bool,
    pub disable_oom_killer: bool,
    pub cpu_shares: Option<u64>,
    pub cpus: Option<String>,
    pub mems: Option<String>,
    pub rt_runtime: Option<i64>,
    pub rt_period: Option<u64>,
    pub blkio_weight: Option<u16>,
    pub blkio_leaf_weight: Option<u16>,
    /// (major, minor, weight)
    pub blkio_weight_device: Vec<(i64, i64, u16)>,
    /// (kind: read_bps, write_bps, read_iops or write_iops; major; minor; rate)
    pub blkio_throttle: Vec<(String, i64, i64, u64)>,
    /// (page size as the spec spells it, e.g. 2MB; limit in bytes)
    pub hugepages: Vec<(String, u64)>,
    pub net_class_id: Option<u32>,
    pub net_priorities: Vec<(String, u32)>,
    pub rdma: bool,
    /// cgroup v2 files, written as they are.
    pub unified: Vec<(String, String)>,
}

/// One write: (controller, file, value).
pub type Write = (&'static str, String, String);

#[derive(Debug, thiserror::Error)]
#[error("linux.resources.{0}: {1}")]
pub struct Refused(pub &'static str, pub &'static str);

impl Tuning {
    /// What `r` sets; a zero (or a swappiness of -1) sets nothing, as runc reads it: docker
    /// sends `shares: 0` and `weight: 0` with every container.
    pub fn from_oci(r: &oci_spec::runtime::LinuxResources) -> Self {
        let mut t = Tuning::default();
        if let Some(m) = r.memory() {
            t.memory_reservation = m.reservation().filter(|&r| r != 0);
            t.memory_swap = m.swap().filter(|&s| s != 0).map(|s| (s, m.limit()));
            t.swappiness = m.swappiness().filter(|&s| s != u64::MAX);
            t.kernel_memory = m.kernel().is_some() || m.kernel_tcp().is_some();
            t.disable_oom_killer = m.disable_oom_killer().unwrap_or(false);
        }
        if let Some(c) = r.cpu() {
            t.cpu_shares = c.shares().filter(|&s| s != 0);
            t.cpus = c.cpus().clone().filter(|s| !s.is_empty());
            t.mems = c.mems().clone().filter(|s| !s.is_empty());
            t.rt_runtime = c.realtime_runtime().filter(|&r| r != 0);
            t.rt_period = c.realtime_period().filter(|&p| p != 0);
        }
        if let Some(b) = r.block_io() {
            t.blkio_weight = b.weight().filter(|&w| w != 0);
            t.blkio_leaf_weight = b.leaf_weight().filter(|&w| w != 0);
            t.blkio_weight_device = (b.weight_device().iter().flatten())
                .filter_map(|d| Some((d.major(), d.minor(), d.weight()?)))
                .collect();
            let throttles = [
                ("read_bps", b.throttle_read_bps_device()),
                ("write_bps", b.throttle_write_bps_device()),
                ("read_iops", b.throttle_read_iops_device()),
                ("write_iops", b.throttle_write_iops_device()),
            ];
            for (kind, list) in throttles {
                let each = list.iter().flatten();
                t.blkio_throttle
                    .extend(each.map(|d| (kind.to_string(), d.major(), d.minor(), d.rate())));
            }
        }
        t.hugepages = (r.hugepage_limits().iter().flatten())
            .map(|h| (h.page_size().clone(), h.limit().max(0).cast_unsigned()))
            .collect();
        if let Some(n) = r.network() {
            t.net_class_id = n.class_id();
            t.net_priorities = (n.priorities().iter().flatten())
                .map(|p| (p.name().clone(), p.priority()))
                .collect();
        }
        t.rdma = r.rdma().as_ref().is_some_and(|m| !m.is_empty());
        t.unified = r
            .unified()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        t.unified.sort();
        t
    }

    /// The writes that apply it, in order, on cgroup v1 or v2.
    pub fn files(&self, v2: bool) -> Result<Vec<Write>, Refused> {
        if self.kernel_memory {
            return Err(Refused(
                "memory.kernel",
                "the kernel no longer limits kernel memory",
            ));
        }
        if self.rdma {
            return Err(Refused("rdma", "gureum does not apply rdma limits"));
        }
        let mut w: Vec<Write> = Vec::new();
        let mut put = |controller, file: &str, value: String| {
            w.push((controller, file.to_string(), value));
        };
        match v2 {
            false => self.v1(&mut put)?,
            true => self.v2(&mut put)?,
        }
        Ok(w)
    }

    fn v1(&self, put: &mut impl FnMut(&'static str, &str, String)) -> Result<(), Refused> {
        if !self.unified.is_empty() {
            return Err(Refused("unified", "this host's cgroups are v1"));
        }
        if self.swappiness.is_some_and(|s| s > 100) {
            return Err(Refused("memory.swappiness", "must be 0 to 100"));
        }
        let t = self;
        if let Some(r) = t.memory_reservation {
            put("memory", "memory.soft_limit_in_bytes", r.to_string());
        }
        if let Some((s, _)) = t.memory_swap {
            put("memory", "memory.memsw.limit_in_bytes", s.to_string());
        }
        if let Some(s) = t.swappiness {
            put("memory", "memory.swappiness", s.to_string());
        }
        if t.disable_oom_killer {
            put("memory", "memory.oom_control", "1".into());
        }
        if let Some(s) = t.cpu_shares {
            put("cpu", "cpu.shares", s.to_string());
        }
        if let Some(p) = t.rt_period {
            put("cpu", "cpu.rt_period_us", p.to_string());
        }
        if let Some(r) = t.rt_runtime {
            put("cpu", "cpu.rt_runtime_us", r.to_string());
        }
        if let Some(c) = t.cpus.clone() {
            put("cpuset", "cpuset.cpus", c);
        }
        if let Some(m) = t.mems.clone() {
            put("cpuset", "cpuset.mems", m);
        }
        if let Some(b) = t.blkio_weight {
            put("blkio", "blkio.weight", b.to_string());
        }
        if let Some(b) = t.blkio_leaf_weight {
            put("blkio", "blkio.leaf_weight", b.to_string());
        }
        for (major, minor, weight) in &t.blkio_weight_device {
            put(
                "blkio",
                "blkio.weight_device",
                format!("{major}:{minor} {weight}"),
            );
        }
        for (kind, major, minor, rate) in &t.blkio_throttle {
            let file = format!("blkio.throttle.{kind}_device");
            put("blkio", &file, format!("{major}:{minor} {rate}"));
        }
        for (size, limit) in &t.hugepages {
            put(
                "hugetlb",
                &format!("hugetlb.{size}.limit_in_bytes"),
                limit.to_string(),
            );
        }
        if let Some(c) = t.net_class_id {
            put("net_cls", "net_cls.classid", c.to_string());
        }
        for (name, prio) in &t.net_priorities {
            put("net_prio", "net_prio.ifpriomap", format!("{name} {prio}"));
        }
        Ok(())
    }

    fn v2(&self, put: &mut impl FnMut(&'static str, &str, String)) -> Result<(), Refused> {
        let t = self;
        let no = |field, why| Err(Refused(field, why));
        if t.swappiness.is_some() {
            return no("memory.swappiness", "cgroup v2 has no swappiness");
        }
        if t.disable_oom_killer {
            return no(
                "memory.disableOOMKiller",
                "cgroup v2 cannot disable the OOM killer",
            );
        }
        if t.rt_runtime.is_some() || t.rt_period.is_some() {
            return no("cpu.realtime*", "cgroup v2 has no realtime CPU limits");
        }
        if t.blkio_leaf_weight.is_some() {
            return no("blockIO.leafWeight", "cgroup v2 has no leaf weight");
        }
        if t.net_class_id.is_some() || !t.net_priorities.is_empty() {
            return no("network", "cgroup v2 has no net_cls or net_prio");
        }
        if let Some(r) = t.memory_reservation {
            put("memory", "memory.low", r.to_string());
        }
        if let Some((swap, limit)) = t.memory_swap {
            // The spec's swap is memory plus swap; v2 limits swap alone.
            let value = match (swap, limit) {
                (-1, _) => "max".to_string(),
                (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                _ => return no("memory.swap", "on cgroup v2 it needs memory.limit"),
            };
            put("memory", "memory.swap.max", value);
        }
        // runc's conversion of shares [2, 262144] to a weight [1, 10000].
        if let Some(s) = t.cpu_shares.filter(|&s| s > 0) {
            let weight = 1 + (s.clamp(2, 262_144) - 2) * 9999 / 262_142;
            put("cpu", "cpu.weight", weight.to_string());
        }
        if let Some(c) = t.cpus.clone() {
            put("cpuset", "cpuset.cpus", c);
        }
        if let Some(m) = t.mems.clone() {
            put("cpuset", "cpuset.mems", m);
        }
        // blkio's weight [10, 1000] to io's [1, 10000], as runc converts it.
        let io_weight = |w: u16| 1 + (u64::from(w).clamp(10, 1000) - 10) * 9999 / 990;
        if let Some(w) = t.blkio_weight {
            put("io", "io.weight", io_weight(w).to_string());
        }
        for (major, minor, weight) in &t.blkio_weight_device {
            let line = format!("{major}:{minor} {}", io_weight(*weight));
            put("io", "io.weight", line);
        }
        for (kind, major, minor, rate) in &t.blkio_throttle {
            let key = match kind.as_str() {
                "read_bps" => "rbps",
                "write_bps" => "wbps",
                "read_iops" => "riops",
                _ => "wiops",
            };
            put("io", "io.max", format!("{major}:{minor} {key}={rate}"));
        }
        for (size, limit) in &t.hugepages {
            put("hugetlb", &format!("hugetlb.{size}.max"), limit.to_string());
        }
        for (file, value) in &t.unified {
            let controller = controller_of(file);
            put(controller, file, value.clone());
        }
        Ok(())
    }

    /// The memory settings it makes, by name: a microVM's memory is its guest's size, so a
    /// sandbox refuses them.
    pub fn memory_settings(&self) -> Option<&'static str> {
        [
            (self.memory_reservation.is_some(), "memory.reservation"),
            (self.memory_swap.is_some(), "memory.swap"),
            (self.swappiness.is_some(), "memory.swappiness"),
            (self.disable_oom_killer, "memory.disableOOMKiller"),
        ]
        .into_iter()
        .find_map(|(set, name)| set.then_some(name))
    }

    /// The v2 controllers its writes need enabled.
    pub fn v2_controllers(&self) -> Vec<&'static str> {
        let mut c: Vec<&'static str> = self
            .files(true)
            .unwrap_or_default()
            .iter()
            .map(|w| w.0)
            .collect();
        c.sort_unstable();
        c.dedup();
        c
    }
}

/// The v2 controller a unified file belongs to (its name's prefix), or "cgroup" for the core's.
fn controller_of(file: &str) -> &'static str {
    let prefix = file.split('.').next().unwrap_or_default();
    const KNOWN: [&str; 8] = [
        "memory", "cpu", "cpuset", "io", "pids", "hugetlb", "rdma", "misc",
    ];
    KNOWN.into_iter().find(|k| *k == prefix).unwrap_or("cgroup")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(json: &str) -> Tuning {
        Tuning::from_oci(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn v1_and_v2_files_for_the_same_settings() {
        let t = tuning(
            r#"{"memory":{"limit":1000,"reservation":500,"swap":3000},
                "cpu":{"shares":512,"cpus":"0","mems":"0"},
                "blockIO":{"weight":500,"throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}]},
                "hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#,
        );
        let v1 = t.files(false).unwrap();
        let has =
            |w: &[Write], f: &str, v: &str| w.iter().any(|(_, file, val)| file == f && val == v);
        assert!(has(&v1, "memory.soft_limit_in_bytes", "500"));
        assert!(has(&v1, "memory.memsw.limit_in_bytes", "3000"));
        assert!(has(&v1, "cpu.shares", "512"));
        assert!(has(&v1, "blkio.throttle.read_bps_device", "8:0 1048576"));
        assert!(has(&v1, "hugetlb.2MB.limit_in_bytes", "4194304"));
        let v2 = t.files(true).unwrap();
        assert!(has(&v2, "memory.low", "500"));
        assert!(has(&v2, "memory.swap.max", "2000"));
        assert!(has(&v2, "cpu.weight", "20"));
        assert!(has(&v2, "io.weight", "4950"));
        assert!(has(&v2, "io.max", "8:0 rbps=1048576"));
        assert!(has(&v2, "hugetlb.2MB.max", "4194304"));
        assert_eq!(
            t.v2_controllers(),
            ["cpu", "cpuset", "hugetlb", "io", "memory"]
        );
    }

    #[test]
    fn zeros_set_nothing() {
        let t = tuning(
            r#"{"memory":{"disableOOMKiller":false},"cpu":{"shares":0},"blockIO":{"weight":0}}"#,
        );
        assert_eq!(t, Tuning::default());
        assert!(t.files(false).unwrap().is_empty());
    }

    #[test]
    fn what_a_version_cannot_apply_is_refused_by_name() {
        let refused = |json, v2| tuning(json).files(v2).unwrap_err().to_string();
        assert!(refused(r#"{"memory":{"kernel":1000}}"#, false).contains("memory.kernel"));
        assert!(refused(r#"{"memory":{"swappiness":10}}"#, true).contains("swappiness"));
        assert!(refused(r#"{"cpu":{"realtimeRuntime":10}}"#, true).contains("realtime"));
        assert!(refused(r#"{"network":{"classID":1}}"#, true).contains("net_cls"));
        assert!(refused(r#"{"unified":{"memory.high":"1"}}"#, false).contains("v1"));
        assert!(refused(r#"{"rdma":{"mlx":{"hcaHandles":1}}}"#, false).contains("rdma"));
    }
}
