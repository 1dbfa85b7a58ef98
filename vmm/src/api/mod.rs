//! The API socket (`--api-sock PATH`): the part of Firecracker's REST API that a running VM
//! serves, on the same paths, with the same JSON bodies and status codes, so Firecracker's
//! clients work: GET / (instance info), GET /machine-config, PATCH /vm (pause and resume),
//! PUT /snapshot/create, and PUT /actions (SendCtrlAltDel).
//! What only configures a VM before it starts is refused once it runs, as Firecracker refuses
//! it. docs/api.yaml documents every path (a test checks it against [`route`]).

pub mod client;
pub mod http;
pub mod server;
pub mod setup;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gureum_devices::legacy::I8042;

use http::{Request, Response};

use crate::snapshot::Snapshotter;
use crate::vcpu::VcpuControl;

/// What the API reads and drives of a running VM.
pub struct Vm {
    pub id: String,
    pub vcpus: u8,
    pub memory_mib: u64,
    pub control: Arc<VcpuControl>,
    /// How long a pause may take before it is called off.
    pub pause_within: Duration,
    /// What takes a snapshot of it (none: snapshots are refused).
    pub snapshots: Option<Snapshotter>,
    /// The i8042, whose keyboard presses Ctrl+Alt+Del (none: the action is refused).
    pub keyboard: Option<Arc<Mutex<I8042>>>,
}

/// Answers requests: the running VM's API ([`Vm`]), or the one that configures a VM before it
/// starts ([`setup::Setup`]).
pub trait Routes: Send {
    fn route(&mut self, req: &Request) -> Response;
}

impl Routes for Vm {
    fn route(&mut self, req: &Request) -> Response {
        route(self, req)
    }
}

/// Every path and method the API serves (docs/api.yaml lists the same).
pub const ROUTES: [(&str, &str); 5] = [
    ("GET", "/"),
    ("GET", "/machine-config"),
    ("PATCH", "/vm"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/actions"),
];

/// The paths of Firecracker's API that configure or load a VM before it starts: refused once
/// it runs, as Firecracker refuses them.
const BEFORE_START: [&str; 9] = [
    "/boot-source",
    "/machine-config",
    "/drives",
    "/network-interfaces",
    "/vsock",
    "/entropy",
    "/logger",
    "/metrics",
    "/snapshot/load",
];

/// The answer to one request.
pub fn route(vm: &Vm, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET", "/") => Response::json(200, &instance_info(vm)),
        ("GET", "/machine-config") => Response::json(
            200,
            &serde_json::json!({
                "vcpu_count": vm.vcpus, "mem_size_mib": vm.memory_mib, "smt": false,
                "track_dirty_pages": false,
            }),
        ),
        ("PATCH", "/vm") => patch_vm(vm, &req.body),
        ("PUT", "/snapshot/create") => create_snapshot(vm, &req.body),
        ("PUT", "/actions") => action(vm, &req.body),
        ("PUT" | "PATCH", p)
            if BEFORE_START
                .iter()
                .any(|b| p == *b || p.starts_with(&format!("{b}/"))) =>
        {
            Response::fault(400, STARTED)
        }
        (method, _) => bad_path(method, path),
    }
}

/// Firecracker's answer to a path or method it does not serve.
fn bad_path(method: &str, path: &str) -> Response {
    Response::fault(
        400,
        format!("Invalid request method and/or path: {method} {path}."),
    )
}

fn instance_info(vm: &Vm) -> serde_json::Value {
    let state = if vm.control.gate.is_paused() {
        "Paused"
    } else {
        "Running"
    };
    serde_json::json!({
        "app_name": "gureum", "id": vm.id, "state": state,
        "vmm_version": env!("CARGO_PKG_VERSION"),
    })
}

/// Firecracker's SnapshotCreateParams.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotCreate {
    snapshot_path: std::path::PathBuf,
    mem_file_path: std::path::PathBuf,
    #[serde(default)]
    snapshot_type: Option<String>,
    /// Firecracker's snapshot format version: accepted and ignored (gureum writes its own).
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<String>,
}

/// Firecracker's refusal of what only configures a VM, once it runs.
const STARTED: &str = "The requested operation is not supported after starting the microVM.";

/// Firecracker's answer to a body it cannot read.
fn bad_body(e: impl std::fmt::Display) -> Response {
    Response::fault(
        400,
        format!("An error occurred when deserializing the json body of a request: {e}."),
    )
}

fn create_snapshot(vm: &Vm, body: &[u8]) -> Response {
    let params = match serde_json::from_slice::<SnapshotCreate>(body) {
        Ok(p) => p,
        Err(e) => return bad_body(e),
    };
    if params.snapshot_type.as_deref().is_some_and(|t| t != "Full") {
        return Response::fault(400, "only Full snapshots are supported");
    }
    if !vm.control.gate.is_paused() {
        return Response::fault(
            400,
            "the VM must be paused for a snapshot: PATCH /vm {\"state\": \"Paused\"} first",
        );
    }
    let Some(snapshots) = &vm.snapshots else {
        return Response::fault(400, "this VM cannot be snapshotted");
    };
    match snapshots.create(&params.snapshot_path, &params.mem_file_path) {
        Ok(()) => Response::no_content(),
        Err(e) => Response::fault(
            400,
            format!("cannot create the snapshot: {}", crate::boot::chain(&e)),
        ),
    }
}

/// Firecracker's InstanceActionInfo (both routers take it).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

/// `PUT /actions` on a running VM: SendCtrlAltDel presses the keys on the i8042 keyboard
/// (IRQ 1); what the guest does with them is its own business, as with Firecracker.
fn action(vm: &Vm, body: &[u8]) -> Response {
    let action = match serde_json::from_slice::<Action>(body) {
        Ok(a) => a.action_type,
        Err(e) => return bad_body(e),
    };
    match action.as_str() {
        "SendCtrlAltDel" => {
            let Some(keyboard) = &vm.keyboard else {
                return Response::fault(400, "this VM has no i8042 keyboard");
            };
            match gureum_devices::bus::lock(keyboard).ctrl_alt_del() {
                Ok(()) => Response::no_content(),
                Err(e) => Response::fault(400, format!("cannot press Ctrl+Alt+Del: {e}")),
            }
        }
        "InstanceStart" => Response::fault(400, STARTED),
        "FlushMetrics" => Response::fault(
            400,
            "no metrics file is configured: gureum keeps no metrics (--phases prints its timings)",
        ),
        other => Response::fault(
            400,
            format!("unknown action_type {other:?}: a running VM takes \"SendCtrlAltDel\""),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

fn patch_vm(vm: &Vm, body: &[u8]) -> Response {
    let state = match serde_json::from_slice::<VmState>(body) {
        Ok(s) => s.state,
        Err(e) => return bad_body(e),
    };
    let done = match state.as_str() {
        "Paused" => vm.control.gate.pause(vm.pause_within),
        "Resumed" => vm.control.gate.resume(),
        other => {
            return Response::fault(
                400,
                format!("unknown state {other:?}: PATCH /vm takes \"Paused\" or \"Resumed\""),
            );
        }
    };
    match done {
        Ok(()) => Response::no_content(),
        Err(e) => Response::fault(
            400,
            format!("cannot set the VM {}: {e}", state.to_lowercase()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> Vm {
        Vm {
            id: "t".into(),
            vcpus: 2,
            memory_mib: 128,
            control: Arc::new(VcpuControl::new(2, Vec::new())),
            pause_within: Duration::from_millis(100),
            snapshots: None,
            keyboard: None,
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    fn fault(r: &Response) -> String {
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        body["fault_message"].as_str().unwrap().to_string()
    }

    #[test]
    fn instance_info_and_machine_config_read_the_vm() {
        let vm = vm();
        let r = route(&vm, &req("GET", "/", ""));
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            (r.status, &body["state"], &body["id"]),
            (200, &"Running".into(), &"t".into())
        );
        let r = route(&vm, &req("GET", "/machine-config", ""));
        let body: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            (body["vcpu_count"].as_u64(), body["mem_size_mib"].as_u64()),
            (Some(2), Some(128))
        );
    }

    #[test]
    fn wrong_paths_bodies_and_states_get_400_with_a_fault_message() {
        let vm = vm();
        for (method, path, body, says) in [
            (
                "GET",
                "/nowhere",
                "",
                "Invalid request method and/or path: GET /nowhere.",
            ),
            (
                "DELETE",
                "/vm",
                "",
                "Invalid request method and/or path: DELETE /vm.",
            ),
            ("PUT", "/boot-source", "{}", "not supported after starting"),
            (
                "PUT",
                "/drives/rootfs",
                "{}",
                "not supported after starting",
            ),
            ("PATCH", "/vm", "{\"state\":", "deserializing the json body"),
            (
                "PATCH",
                "/vm",
                "{\"state\":\"Paused\",\"x\":1}",
                "unknown field",
            ),
            (
                "PATCH",
                "/vm",
                "{\"state\":\"Asleep\"}",
                "unknown state \"Asleep\"",
            ),
            (
                "PUT",
                "/actions",
                "{\"action_type\":\"InstanceStart\"}",
                "not supported after starting",
            ),
            ("PUT", "/actions", "{\"action\":1}", "unknown field"),
            (
                "PUT",
                "/actions",
                "{\"action_type\":\"Dance\"}",
                "unknown action_type \"Dance\"",
            ),
            (
                "PUT",
                "/actions",
                "{\"action_type\":\"SendCtrlAltDel\"}",
                "no i8042 keyboard",
            ),
        ] {
            let r = route(&vm, &req(method, path, body));
            assert_eq!(r.status, 400, "{method} {path}");
            assert!(fault(&r).contains(says), "{method} {path}: {}", fault(&r));
        }
        // No vCPU runs here: the guest has stopped, so there is nothing to pause.
        let r = route(&vm, &req("PATCH", "/vm", "{\"state\":\"Paused\"}"));
        assert_eq!(
            (r.status, fault(&r)),
            (
                400,
                "cannot set the VM paused: the guest has stopped".into()
            )
        );
    }

    #[test]
    fn send_ctrl_alt_del_presses_the_keys_on_the_i8042() {
        use gureum_devices::BusDevice;
        use gureum_devices::legacy::EventFdTrigger;
        use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let keyboard = Arc::new(Mutex::new(I8042::new(
            EventFdTrigger(reset),
            EventFdTrigger(irq.try_clone().unwrap()),
        )));
        let vm = Vm {
            keyboard: Some(keyboard.clone()),
            ..vm()
        };
        let r = route(
            &vm,
            &req("PUT", "/actions", "{\"action_type\":\"SendCtrlAltDel\"}"),
        );
        assert_eq!(r.status, 204);
        assert!(irq.read().is_ok(), "IRQ 1 raised");
        let mut k = keyboard.lock().unwrap();
        let mut b = [0u8];
        k.read(0, &mut b);
        assert_eq!(b[0], gureum_devices::legacy::CTRL_ALT_DEL[0]);
    }

    /// Each documented path's methods, from docs/api.yaml.
    fn documented() -> Vec<(String, String)> {
        let doc = include_str!("../../../docs/api.yaml");
        let paths = doc.split("\ncomponents:").next().unwrap_or_default();
        let mut all = Vec::new();
        let mut path = None;
        for line in paths.lines() {
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end_matches(':')));
            } else if let (Some(p), Some(m)) = (&path, line.strip_prefix("    ")) {
                let m = m.trim_end_matches(':');
                if ["get", "put", "patch"].contains(&m) {
                    all.push((m.to_uppercase(), p.clone()));
                }
            }
        }
        all
    }

    #[test]
    fn every_route_is_in_the_openapi_document_and_every_path_there_is_routed() {
        let doc = documented();
        let ours: Vec<(String, String)> = (ROUTES.iter().chain(&setup::ROUTES))
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        for route in &ours {
            assert!(doc.contains(route), "{route:?} is not in docs/api.yaml");
        }
        for route in &doc {
            assert!(
                ours.contains(route),
                "docs/api.yaml has {route:?}, not routed"
            );
        }
        // And each is answered by its router, not refused as unknown.
        let unknown = |r: Response| r.status == 400 && fault(&r).starts_with("Invalid request");
        for (method, path) in ROUTES {
            assert!(
                !unknown(route(&vm(), &req(method, path, ""))),
                "{method} {path}"
            );
        }
        for (method, path) in setup::ROUTES {
            let path = path.replace("{drive_id}", "d").replace("{iface_id}", "n");
            let r = setup::Setup::default().route(&req(method, &path, ""));
            assert!(!unknown(r), "{method} {path}");
        }
    }
}
