//! The API before the VM starts (`--api-sock` with neither `--kernel` nor `--config`), as
//! Firecracker serves it: boot-source, machine-config, drives, network-interfaces, vsock and
//! entropy configure the VM, each body in Firecracker's schema (the config file's sections);
//! `PUT /actions {"action_type": "InstanceStart"}` builds it, and `PUT /snapshot/load` restores
//! one instead. A build that fails is a 400 with the reason, and the configuration can be
//! fixed and the VM started again.

use serde_json::{Map, Value, json};

use super::http::{Request, Response};
use super::{Action, Routes, bad_body, bad_path};
use crate::config::{FirecrackerConfig, VmOverrides};
use crate::snapshot::RestoreFrom;
use crate::vmm::Vmm;

/// A VM built and ready to run; `paused`: a snapshot loaded without `resume_vm`.
pub struct Started {
    pub vmm: Vmm,
    pub paused: bool,
}

/// The configuration so far, as the sections of a Firecracker config file.
#[derive(Default)]
pub struct Setup {
    file: Map<String, Value>,
    pub started: Option<Started>,
    /// `--allow-pvm-linux`: boot a Linux kernel on a PVM host anyway.
    allow_pvm_linux: bool,
}

/// Every path and method served before the VM starts (docs/api.yaml lists the same).
pub const ROUTES: [(&str, &str); 11] = [
    ("GET", "/"),
    ("GET", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PUT", "/vsock"),
    ("PUT", "/entropy"),
    ("PUT", "/actions"),
    ("PUT", "/snapshot/load"),
];

const NOT_STARTED: &str = "The requested operation is not supported before starting the microVM.";

impl Routes for Setup {
    fn route(&mut self, req: &Request) -> Response {
        if self.started.is_some() {
            return Response::fault(400, "The microVM is starting.");
        }
        let path = req.path.split('?').next().unwrap_or_default();
        let item = |prefix: &str| path.strip_prefix(prefix).filter(|id| !id.contains('/'));
        match (req.method.as_str(), path) {
            ("GET", "/") => Response::json(
                200,
                &json!({"app_name": "gureum", "id": "anonymous-instance",
                        "state": "Not started", "vmm_version": env!("CARGO_PKG_VERSION")}),
            ),
            ("GET", "/machine-config") => Response::json(200, &self.machine_config()),
            ("PUT", "/boot-source") => self.section("boot-source", &req.body),
            ("PUT", "/machine-config") => self.section("machine-config", &req.body),
            ("PATCH", "/machine-config") => self.patch_machine_config(&req.body),
            ("PUT", "/vsock") => self.section("vsock", &req.body),
            ("PUT", "/entropy") => self.section("entropy", &req.body),
            ("PUT", _) if item("/drives/").is_some() => {
                self.item("drives", "drive_id", item("/drives/"), &req.body)
            }
            ("PUT", _) if item("/network-interfaces/").is_some() => self.item(
                "network-interfaces",
                "iface_id",
                item("/network-interfaces/"),
                &req.body,
            ),
            ("PUT", "/actions") => self.action(&req.body),
            ("PUT", "/snapshot/load") => self.load(&req.body),
            ("PATCH", "/vm") | ("PUT", "/snapshot/create") => Response::fault(400, NOT_STARTED),
            (method, _) => bad_path(method, path),
        }
    }
}

impl Setup {
    /// The file as it stands, checked as `--config` checks a file.
    fn config(&self) -> Result<FirecrackerConfig, String> {
        let cfg: FirecrackerConfig =
            serde_json::from_value(Value::Object(self.file.clone())).map_err(|e| e.to_string())?;
        cfg.check()?;
        Ok(cfg)
    }

    fn machine_config(&self) -> Value {
        let mut m = json!({"vcpu_count": crate::config::DEFAULT_VCPUS,
            "mem_size_mib": crate::config::DEFAULT_MEMORY_MIB, "smt": false,
            "track_dirty_pages": false});
        if let Some(Value::Object(set)) = self.file.get("machine-config") {
            for (k, v) in set {
                m[k] = v.clone();
            }
        }
        m
    }

    /// Puts `body` in as section `name`, if the whole then still reads as a config.
    fn section(&mut self, name: &str, body: &[u8]) -> Response {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_body(e),
        };
        self.set(name, value)
    }

    /// Puts `value` in as section `name` if the whole then still reads as a config; else
    /// leaves the section as it was.
    fn set(&mut self, name: &str, value: Value) -> Response {
        let old = self.file.insert(name.into(), value);
        match self.config() {
            Ok(_) => Response::no_content(),
            Err(e) => {
                match old {
                    Some(old) => self.file.insert(name.into(), old),
                    None => self.file.remove(name),
                };
                bad_body(e)
            }
        }
    }

    fn patch_machine_config(&mut self, body: &[u8]) -> Response {
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
            return bad_body("expected an object");
        };
        let mut whole = self.machine_config();
        for (k, v) in patch {
            whole[k] = v;
        }
        self.section("machine-config", whole.to_string().as_bytes())
    }

    /// A drive or network interface at `/<list>/<id>`: its body's `key` must be `id`; one with
    /// the same id is replaced.
    fn item(&mut self, list: &str, key: &str, id: Option<&str>, body: &[u8]) -> Response {
        let value: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_body(e),
        };
        if value[key].as_str() != id {
            return Response::fault(400, format!("the path's id and the body's {key} differ"));
        }
        let mut items: Vec<Value> = (self.file.get(list))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        items.retain(|i| i[key] != value[key]);
        items.push(value);
        self.set(list, Value::Array(items))
    }

    fn action(&mut self, body: &[u8]) -> Response {
        let action = match serde_json::from_slice::<Action>(body) {
            Ok(a) => a.action_type,
            Err(e) => return bad_body(e),
        };
        if action != "InstanceStart" {
            return Response::fault(400, NOT_STARTED);
        }
        let config = self
            .config()
            .map(VmOverrides::from)
            .and_then(|o| o.into_config().map_err(|e| crate::boot::chain(&e)));
        let allow = self.allow_pvm_linux;
        let built = config.and_then(|c| {
            crate::boot::refuse_linux_on_pvm(allow, &c).map_err(|e| crate::boot::chain(&e))?;
            Vmm::try_from(&c).map_err(|e| crate::boot::chain(&e))
        });
        match built {
            Ok(vmm) => {
                self.started = Some(Started { vmm, paused: false });
                Response::no_content()
            }
            Err(why) => Response::fault(400, format!("cannot start the microVM: {why}")),
        }
    }

    /// Firecracker's SnapshotLoadParams: `mem_backend` (File) or the older `mem_file_path`.
    fn load(&mut self, body: &[u8]) -> Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Backend {
            backend_type: String,
            backend_path: std::path::PathBuf,
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Load {
            snapshot_path: std::path::PathBuf,
            mem_backend: Option<Backend>,
            mem_file_path: Option<std::path::PathBuf>,
            #[serde(default)]
            resume_vm: bool,
            #[serde(default)]
            enable_diff_snapshots: bool,
            #[serde(default)]
            track_dirty_pages: bool,
        }
        let load = match serde_json::from_slice::<Load>(body) {
            Ok(l) => l,
            Err(e) => return bad_body(e),
        };
        if load.enable_diff_snapshots || load.track_dirty_pages {
            return Response::fault(400, "diff snapshots are not supported");
        }
        let mem = match (load.mem_backend, load.mem_file_path) {
            (Some(b), None) if b.backend_type == "File" => b.backend_path,
            (None, Some(path)) => path,
            (Some(_), None) => {
                return Response::fault(400, "only a File memory backend is supported");
            }
            _ => return Response::fault(400, "give one of mem_backend and mem_file_path"),
        };
        let from = RestoreFrom {
            snapshot: load.snapshot_path,
            mem,
            ..RestoreFrom::default()
        };
        match Vmm::restore(&from) {
            Ok(vmm) => {
                let paused = !load.resume_vm;
                self.started = Some(Started { vmm, paused });
                Response::no_content()
            }
            Err(e) => Response::fault(
                400,
                format!("cannot load the snapshot: {}", crate::boot::chain(&e)),
            ),
        }
    }
}

/// Serves the API on `sockets` until a VM is started or loaded through it; the sockets, to go
/// on serving it, and the VM.
pub fn serve_until_started(
    sockets: super::server::Sockets,
    allow_pvm_linux: bool,
) -> Result<(super::server::Sockets, Started), event_manager::Error> {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::{Arc, Mutex};
    let setup = Setup {
        allow_pvm_linux,
        ..Setup::default()
    };
    let server = Arc::new(Mutex::new(super::server::ApiServer::new(sockets, setup)));
    let mut events = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new()?;
    events.add_subscriber(server.clone());
    loop {
        match events.run() {
            Ok(_) => {}
            Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
            Err(e) => return Err(e),
        }
        let mut s = gureum_devices::bus::lock(&server);
        if let Some(started) = s.routes.started.take() {
            drop(s);
            drop(events);
            let server = match Arc::try_unwrap(server) {
                Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
                // The event manager held the only other reference, and it is gone.
                Err(_) => return Err(event_manager::Error::InvalidId),
            };
            let (sockets, _) = server.into_parts();
            return Ok((sockets, started));
        }
    }
}
