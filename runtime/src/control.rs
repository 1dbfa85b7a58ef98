//! Control of a running container: `pause`/`resume` (the freezer cgroup) and `update` of its
//! limits.

use super::bundle;
use super::state::{Status, Store};
use super::{Error, Global, expect};

/// `update`: new limits from a resources file and flags (flags win); what neither names stays.
pub fn update(
    g: &Global,
    id: &str,
    file: Option<&bundle::Resources>,
    flags: &bundle::Resources,
) -> Result<(), Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    live(&store, &record)?;
    let base = file.cloned().unwrap_or_default();
    let r = bundle::Resources {
        memory_bytes: flags.memory_bytes.or(base.memory_bytes),
        cpu_quota_us: flags.cpu_quota_us.or(base.cpu_quota_us),
        cpu_period_us: flags.cpu_period_us.or(base.cpu_period_us),
        pids: flags.pids.or(base.pids),
        devices: Vec::new(),
        tuning: base.tuning,
    };
    super::isolation::of(record.isolation).check_update(&r)?;
    Ok(record.cgroup().update(&r)?)
}

/// `pause`: freezes every process of a running container (a sandbox's whole VM).
pub fn pause(g: &Global, id: &str) -> Result<(), Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    expect(&store, &record, Status::Running)?;
    Ok(record.cgroup().freeze(true)?)
}

/// `resume`: thaws a paused container.
pub fn resume(g: &Global, id: &str) -> Result<(), Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    expect(&store, &record, Status::Paused)?;
    Ok(record.cgroup().freeze(false)?)
}

/// `ps`: the host pids of a created, running or paused container (its cgroup's).
pub fn pids(g: &Global, id: &str) -> Result<Vec<i32>, Error> {
    let store = Store::new(&g.root);
    let record = store.load(id)?;
    live(&store, &record)?;
    Ok(record.cgroup().pids())
}

/// A container whose processes exist: created, running or paused. Its status.
pub(super) fn live(store: &Store, record: &super::state::Record) -> Result<Status, Error> {
    let status = store.status(record);
    if matches!(status, Status::Stopped | Status::Creating) {
        return Err(Error::WrongStatus {
            id: record.id.clone(),
            status: status.as_str(),
            want: "running",
        });
    }
    Ok(status)
}
