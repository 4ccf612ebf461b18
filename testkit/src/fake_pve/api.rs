//! The fake's endpoints: the ones the `proxmox` driver calls, with Proxmox's answers.
//! Here the routing and the cluster-wide ones (nodes, resources, nextid, task status);
//! creating a container in `create`, a container's own endpoints in `guest`, its
//! firewall in `firewall`.

mod create;
mod firewall;
mod guest;

use std::sync::Arc;

use serde_json::{json, Value};

use super::call::{Answer, Call};
use super::guests::Shared;

pub(crate) fn route(shared: &Arc<Shared>, call: Call) -> Answer {
    let template = template_of(&call.segments);
    let key = format!("{} {template}", call.method);
    {
        let mut state = shared.state();
        *state.requests.entry(key).or_default() += 1;
        let path = call.segments.join("/");
        if let Some(i) = state.injections.iter().position(|inj| {
            inj.method == call.method && path.ends_with(&inj.path_suffix) && inj.times > 0
        }) {
            let inj = &mut state.injections[i];
            inj.times -= 1;
            return Answer::error(inj.status, inj.message.clone());
        }
    }
    let s: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let m = call.method.as_str();
    match (m, s.as_slice()) {
        ("GET", ["nodes"]) => nodes(shared),
        ("GET", ["cluster", "resources"]) => resources(shared, &call),
        ("GET", ["cluster", "nextid"]) => nextid(shared, &call),
        ("GET", ["nodes", node, "tasks", upid, "status"]) => task_status(shared, node, upid),
        ("POST", ["nodes", node, "lxc"]) => create::create(shared, node, &call),
        (_, ["nodes", node, "lxc", vmid, rest @ ..]) => {
            let Ok(vmid) = vmid.parse::<u64>() else {
                return Answer::param(
                    "vmid",
                    format!("type check ('integer') failed - got '{vmid}'"),
                );
            };
            guest::guest_call(shared, m, node, vmid, rest, &call)
        }
        _ => Answer::error(
            501,
            format!("Method '{m} /{}' not implemented", s.join("/")),
        ),
    }
}

/// The path with numbers and UPIDs replaced by `{}`, for request counts.
fn template_of(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| {
            if s.starts_with("UPID:") || s.parse::<u64>().is_ok() {
                "{}"
            } else {
                s.as_str()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn nodes(shared: &Shared) -> Answer {
    let state = shared.state();
    let list: Vec<Value> = state
        .nodes
        .iter()
        .map(|(name, max_mib)| {
            json!({
                "node": name, "id": format!("node/{name}"), "type": "node", "status": "online",
                "cpu": 0.02, "maxcpu": 8, "mem": state.node_mem(name), "maxmem": max_mib << 20,
                "level": "", "uptime": 86400, "ssl_fingerprint": shared.fingerprint,
            })
        })
        .collect();
    Answer::Data(Value::Array(list))
}

fn resources(shared: &Shared, call: &Call) -> Answer {
    if call.params.get("type").is_some_and(|t| t != "vm") {
        return Answer::Data(json!([]));
    }
    let state = shared.state();
    let list: Vec<Value> = state
        .guests
        .iter()
        .map(|(vmid, g)| {
            let mut entry = json!({
                "id": format!("lxc/{vmid}"), "vmid": vmid, "node": g.node, "type": "lxc",
                "status": if g.running { "running" } else { "stopped" },
                "template": 0, "maxmem": g.memory_mib << 20,
            });
            if let Some(name) = g.config.get("hostname") {
                entry["name"] = json!(name);
            }
            if let Some(tags) = g.config.get("tags") {
                entry["tags"] = json!(tags);
            }
            if let Some(lock) = &g.lock {
                entry["lock"] = json!(lock);
            }
            entry
        })
        .collect();
    Answer::Data(Value::Array(list))
}

fn nextid(shared: &Shared, call: &Call) -> Answer {
    let state = shared.state();
    if let Some(wanted) = call.params.get("vmid") {
        return match wanted.parse::<u64>() {
            Ok(vmid) if state.guests.contains_key(&vmid) => {
                Answer::param("vmid", format!("VM {vmid} already exists"))
            }
            Ok(vmid) => Answer::Data(json!(vmid.to_string())),
            Err(_) => Answer::param("vmid", "type check ('integer') failed"),
        };
    }
    let free = (100u64..)
        .find(|id| !state.guests.contains_key(id))
        .unwrap_or(100);
    // A string, as the real server sends it.
    Answer::Data(json!(free.to_string()))
}

fn task_status(shared: &Shared, node: &str, upid: &str) -> Answer {
    let state = shared.state();
    let Some(task) = state.tasks.get(upid).filter(|t| t.node == node) else {
        return Answer::param("upid", "no such task");
    };
    let (user, tokenid) = shared
        .token_id
        .split_once('!')
        .unwrap_or((&shared.token_id, ""));
    let mut status = json!({
        "upid": upid, "node": task.node, "pid": task.pid, "pstart": 0x5EED,
        "starttime": task.starttime, "type": task.kind, "id": task.vmid.to_string(),
        "user": user, "tokenid": tokenid,
        "status": if task.exit.is_some() { "stopped" } else { "running" },
    });
    if let Some(exit) = &task.exit {
        status["exitstatus"] = json!(exit);
    }
    Answer::Data(status)
}
