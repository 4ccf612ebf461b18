//! `/nodes/{node}/lxc/{vmid}/…`: one container's status, start, shutdown, stop, config, resize,
//! destroy and interfaces (its firewall is in `firewall`).

use std::sync::{Arc, PoisonError};

use serde_json::{json, Value};

use super::firewall::firewall;
use crate::fake_pve::call::{Answer, Call};
use crate::fake_pve::guests::Shared;
use crate::fake_pve::guests::{self, spawn_task, State, Work};

fn missing(node: &str, vmid: u64) -> Answer {
    Answer::error(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
}

pub(super) fn guest_call(
    shared: &Arc<Shared>,
    method: &str,
    node: &str,
    vmid: u64,
    rest: &[&str],
    call: &Call,
) -> Answer {
    let mut state = shared.state();
    let Some(guest) = state.guests.get_mut(&vmid).filter(|g| g.node == node) else {
        return missing(node, vmid);
    };
    match (method, rest) {
        ("GET", ["status", "current"]) => {
            let mut status = json!({
                // A string here, as some versions send it.
                "vmid": vmid.to_string(), "type": "lxc",
                "status": if guest.running { "running" } else { "stopped" },
                "name": guest.config.get("hostname"), "maxmem": guest.memory_mib << 20,
                "cpus": 1, "uptime": 0, "ha": {"managed": 0},
            });
            if let Some(lock) = &guest.lock {
                status["lock"] = json!(lock);
            }
            Answer::Data(status)
        }
        ("POST", ["status", "start"]) => {
            if guest.running {
                return Answer::error(500, format!("CT {vmid} already running"));
            }
            let (home, slot) = (guest.home.clone(), guest.cluster.clone());
            drop(state);
            let work: Work = Box::new(move |shared: &Arc<Shared>| {
                if let Some(lock) = shared
                    .state()
                    .guests
                    .get(&vmid)
                    .and_then(|g| g.lock.clone())
                {
                    return Err(format!("CT is locked ({lock})"));
                }
                let mut cluster = slot.lock().unwrap_or_else(PoisonError::into_inner);
                let cluster = cluster
                    .as_mut()
                    .ok_or("the container has no root file system")?;
                guests::first_boot(&home, cluster)?;
                cluster
                    .start()
                    .map_err(|e| format!("startup for container '{vmid}' failed: {e}"))?;
                if let Some(g) = shared.state().guests.get_mut(&vmid) {
                    g.running = true;
                }
                Ok(())
            });
            Answer::Data(json!(spawn_task(shared, node, "vzstart", vmid, work)))
        }
        // `shutdown` is clean (`lxc-stop --nokill` within `timeout`, then a kill with
        // `forceStop=1`), `stop` a kill; here both are the cluster's fast shutdown.
        ("POST", ["status", action @ ("shutdown" | "stop")]) => {
            if !guest.running {
                return Answer::error(500, format!("CT {vmid} not running"));
            }
            let slot = guest.cluster.clone();
            drop(state);
            let work: Work = Box::new(move |shared: &Arc<Shared>| {
                if let Some(c) = slot.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
                    c.stop(localpg::StopMode::Fast).map_err(|e| e.to_string())?;
                }
                if let Some(g) = shared.state().guests.get_mut(&vmid) {
                    g.running = false;
                }
                Ok(())
            });
            let kind = if *action == "shutdown" {
                "vzshutdown"
            } else {
                "vzstop"
            };
            Answer::Data(json!(spawn_task(shared, node, kind, vmid, work)))
        }
        ("GET", ["config"]) => {
            let mut config: serde_json::Map<String, Value> = guest
                .config
                .iter()
                .map(|(k, v)| {
                    // Integers come back as numbers; the rest as strings.
                    let value = match k.as_str() {
                        "cores" | "memory" | "swap" | "unprivileged" | "onboot" => {
                            v.parse::<u64>().map_or_else(|_| json!(v), |n| json!(n))
                        }
                        _ => json!(v),
                    };
                    (k.clone(), value)
                })
                .collect();
            config.insert(
                "digest".into(),
                json!(format!("{:040x}", guest.config.len())),
            );
            if let Some(lock) = &guest.lock {
                config.insert("lock".into(), json!(lock));
            }
            Answer::Data(Value::Object(config))
        }
        ("PUT", ["config"]) => {
            if let Some(lock) = &guest.lock {
                return Answer::error(500, format!("CT is locked ({lock})"));
            }
            if call.params.is_empty() {
                return Answer::error(500, "no options specified");
            }
            if call.params.contains_key("unprivileged") {
                return Answer::error(500, "unable to modify read-only option: 'unprivileged'");
            }
            for (k, v) in &call.params {
                if k == "memory" {
                    guest.memory_mib = v.parse().unwrap_or(guest.memory_mib);
                }
                guest.config.insert(k.clone(), v.clone());
            }
            Answer::Data(Value::Null)
        }
        ("PUT", ["resize"]) => resize(shared, state, node, vmid, call),
        ("DELETE", []) => {
            if let Some(lock) = &guest.lock {
                return Answer::error(500, format!("CT is locked ({lock})"));
            }
            let force = call.params.get("force").is_some_and(|v| v == "1");
            if guest.running && !force {
                return Answer::error(
                    500,
                    format!("unable to destroy CT {vmid} - container is running"),
                );
            }
            guest.lock = Some("destroyed".to_owned());
            state.destroyed.push((vmid, call.params.clone()));
            drop(state);
            let work: Work = Box::new(move |shared: &Arc<Shared>| {
                guests::remove_guest(shared, vmid);
                Ok(())
            });
            Answer::Data(json!(spawn_task(shared, node, "vzdestroy", vmid, work)))
        }
        ("GET", ["interfaces"]) => {
            if !guest.running {
                return Answer::Data(Value::Null);
            }
            let ip = guest.address.to_string();
            Answer::Data(json!([
                {"name": "lo", "hwaddr": "00:00:00:00:00:00", "hardware-address": "00:00:00:00:00:00",
                 "inet": "127.0.0.1/8",
                 "ip-addresses": [{"ip-address": "127.0.0.1", "prefix": 8, "ip-address-type": "inet"}]},
                {"name": "eth0", "hwaddr": "bc:24:11:00:00:01", "hardware-address": "bc:24:11:00:00:01",
                 "inet": format!("{ip}/8"), "inet6": "fe80::be24:11ff:fe00:1/64",
                 "ip-addresses": [
                    {"ip-address": "fe80::be24:11ff:fe00:1", "prefix": 64, "ip-address-type": "inet6"},
                    {"ip-address": ip, "prefix": 8, "ip-address-type": "inet"}]}
            ]))
        }
        (_, ["firewall", more @ ..]) => firewall(&mut guest.firewall, method, more, call),
        _ => Answer::error(
            501,
            format!(
                "Method '{method} /nodes/{node}/lxc/{vmid}/{}' not implemented",
                rest.join("/")
            ),
        ),
    }
}

fn resize(
    shared: &Arc<Shared>,
    mut state: std::sync::MutexGuard<'_, State>,
    node: &str,
    vmid: u64,
    call: &Call,
) -> Answer {
    let Some(guest) = state.guests.get_mut(&vmid) else {
        return missing(node, vmid);
    };
    if let Some(lock) = &guest.lock {
        return Answer::error(500, format!("CT is locked ({lock})"));
    }
    if call.params.get("disk").map(String::as_str) != Some("rootfs") {
        return Answer::param("disk", "value 'x' does not have a value in the enumeration");
    }
    let size = call.params.get("size").cloned().unwrap_or_default();
    let Some(gib) = size.strip_suffix('G').and_then(|n| n.parse::<u64>().ok()) else {
        return Answer::param(
            "size",
            format!("value does not match the regex pattern: {size}"),
        );
    };
    let rootfs = guest.config.get("rootfs").cloned().unwrap_or_default();
    let current: u64 = rootfs
        .split(",size=")
        .nth(1)
        .and_then(|s| s.trim_end_matches('G').parse().ok())
        .unwrap_or(0);
    if gib < current {
        return Answer::error(500, "unable to shrink disk size");
    }
    if gib == current {
        return Answer::error(500, "disk is already at specified size");
    }
    drop(state);
    let work: Work = Box::new(move |shared: &Arc<Shared>| {
        if let Some(g) = shared.state().guests.get_mut(&vmid) {
            let volume = rootfs.split(',').next().unwrap_or("").to_owned();
            g.config
                .insert("rootfs".into(), format!("{volume},size={gib}G"));
        }
        Ok(())
    });
    Answer::Data(json!(spawn_task(shared, node, "resize", vmid, work)))
}
