//! The fake's endpoints: the ones the `proxmox` driver calls, with Proxmox's answers.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use serde_json::{json, Value};

use super::guests::{self, spawn_task, FirewallView, Guest, State, Work};
use super::http::{Answer, Call};
use super::Shared;

/// Parameters `POST /nodes/{node}/lxc` accepts (a subset of Proxmox's; others are 400).
const CREATE_PARAMS: [&str; 17] = [
    "vmid",
    "ostemplate",
    "hostname",
    "tags",
    "description",
    "unprivileged",
    "cores",
    "memory",
    "swap",
    "rootfs",
    "net0",
    "onboot",
    "start",
    "ssh-public-keys",
    "storage",
    "pool",
    "nameserver",
];

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
        ("POST", ["nodes", node, "lxc"]) => create(shared, node, &call),
        (_, ["nodes", node, "lxc", vmid, rest @ ..]) => {
            let Ok(vmid) = vmid.parse::<u64>() else {
                return Answer::param(
                    "vmid",
                    format!("type check ('integer') failed - got '{vmid}'"),
                );
            };
            guest_call(shared, m, node, vmid, rest, &call)
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

fn flag(call: &Call, name: &str) -> Result<bool, Answer> {
    match call.params.get(name).map(String::as_str) {
        None | Some("0") => Ok(false),
        Some("1") => Ok(true),
        Some(other) => Err(Answer::param(
            name,
            format!("type check ('boolean') failed - got '{other}'"),
        )),
    }
}

fn number(call: &Call, name: &str) -> Result<Option<u64>, Answer> {
    call.params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                Answer::param(name, format!("type check ('integer') failed - got '{v}'"))
            })
        })
        .transpose()
}

fn create(shared: &Arc<Shared>, node: &str, call: &Call) -> Answer {
    if !shared.state().nodes.iter().any(|(n, _)| n == node) {
        return Answer::error(
            500,
            format!("hostname lookup '{node}' failed - no such node"),
        );
    }
    if let Some(unknown) = call
        .params
        .keys()
        .find(|k| !CREATE_PARAMS.contains(&k.as_str()))
    {
        return Answer::param(
            unknown,
            "property is not defined in schema and the schema does not allow additional properties",
        );
    }
    let parsed = (|| {
        let vmid = number(call, "vmid")?
            .ok_or_else(|| Answer::param("vmid", "property is missing and it is not optional"))?;
        let unprivileged = flag(call, "unprivileged")?;
        flag(call, "start")?;
        flag(call, "onboot")?;
        let memory = number(call, "memory")?.unwrap_or(512);
        number(call, "cores")?;
        number(call, "swap")?;
        Ok((vmid, unprivileged, memory))
    })();
    let (vmid, unprivileged, memory) = match parsed {
        Ok(p) => p,
        Err(answer) => return answer,
    };
    let Some(ostemplate) = call.params.get("ostemplate") else {
        return Answer::param("ostemplate", "property is missing and it is not optional");
    };
    if ostemplate.starts_with('/') {
        return Answer::error(500, "Only root can pass arbitrary filesystem paths.");
    }
    if !ostemplate.contains(":vztmpl/") {
        return Answer::error(
            500,
            format!("unable to use volume {ostemplate} - content type needs to be 'vztmpl'"),
        );
    }
    let keys = call
        .params
        .get("ssh-public-keys")
        .cloned()
        .unwrap_or_default();
    if let Err(e) = check_ssh_keys(&keys) {
        return Answer::param("ssh-public-keys", e);
    }
    let rootfs = call
        .params
        .get("rootfs")
        .cloned()
        .unwrap_or_else(|| "local:4".into());
    let Some((storage, size)) = rootfs
        .split_once(':')
        .filter(|(_, s)| s.parse::<f64>().is_ok())
    else {
        return Answer::param(
            "rootfs",
            format!("invalid format - unable to parse '{rootfs}'"),
        );
    };
    let address = match guests::new_address() {
        Ok(a) => a,
        Err(e) => return Answer::error(500, e),
    };

    let mut state = shared.state();
    if let Some(owner) = state.guests.get(&vmid) {
        let owner = owner.node.clone();
        return Answer::error(500, format!("CT {vmid} already exists on node '{owner}'"));
    }
    let conflict = shared.options.storage_lock_conflicts && state.running_task(node, "vzcreate");
    let home = shared.dir.join(vmid.to_string());
    state.guests.insert(
        vmid,
        Guest {
            node: node.to_owned(),
            lock: Some("create".to_owned()),
            running: false,
            config: BTreeMap::new(),
            memory_mib: memory,
            firewall: FirewallView::default(),
            address,
            home: home.clone(),
            cluster: Default::default(),
        },
    );
    drop(state);

    let mut config: BTreeMap<String, String> = call
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "vmid" | "ostemplate" | "ssh-public-keys" | "start" | "storage" | "pool"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    config.insert(
        "rootfs".into(),
        format!("{storage}:vm-{vmid}-disk-0,size={size}G"),
    );
    config.insert("unprivileged".into(), u8::from(unprivileged).to_string());
    config.insert("memory".into(), memory.to_string());
    config
        .entry("hostname".into())
        .or_insert(format!("CT{vmid}"));
    config.insert("arch".into(), "amd64".into());
    config.insert("ostype".into(), "debian".into());
    if let Some(tags) = config.get_mut("tags") {
        let mut list: Vec<String> = tags
            .split([';', ',', ' '])
            .filter(|t| !t.is_empty())
            .map(str::to_lowercase)
            .collect();
        list.sort();
        list.dedup();
        *tags = list.join(";");
    }
    if let Some(net0) = config.get_mut("net0") {
        net0.push_str(",hwaddr=BC:24:11:00:00:01,type=veth");
    }
    let storage = storage.to_owned();
    let work: Work = Box::new(move |shared: &Arc<Shared>| {
        if conflict {
            return Err(format!(
                "can't lock file '/var/lock/pve-manager/pve-storage-{storage}' - got timeout"
            ));
        }
        let cluster = guests::build_cluster(shared, &home, address)?;
        let keys_path = guests::authorized_keys(&home);
        if let Some(dir) = keys_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        std::fs::write(&keys_path, format!("{keys}\n")).map_err(|e| e.to_string())?;
        let mut state = shared.state();
        let guest = state
            .guests
            .get_mut(&vmid)
            .ok_or_else(|| format!("CT {vmid} vanished during its creation"))?;
        *guest.cluster.lock().unwrap_or_else(PoisonError::into_inner) = Some(cluster);
        guest.config = config;
        guest.lock = None;
        Ok(())
    });
    Answer::Data(json!(spawn_task(shared, node, "vzcreate", vmid, work)))
}

/// Proxmox checks keys with ssh-keygen: `[options] type base64 [comment]` per line, the
/// blob naming the same type.
fn check_ssh_keys(keys: &str) -> Result<(), String> {
    use base64::Engine;
    for line in keys.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let words: Vec<&str> = line.split(' ').collect();
        let at = words
            .iter()
            .position(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-"))
            .ok_or_else(|| format!("invalid format - no key type in '{line}'"))?;
        let blob = words
            .get(at + 1)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .ok_or_else(|| "invalid format - bad key data".to_owned())?;
        let len = blob
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .unwrap_or(usize::MAX);
        if blob.get(4..4usize.saturating_add(len)) != Some(words[at].as_bytes()) {
            return Err("invalid format - key type mismatch".to_owned());
        }
    }
    Ok(())
}

fn missing(node: &str, vmid: u64) -> Answer {
    Answer::error(
        500,
        format!("Configuration file 'nodes/{node}/lxc/{vmid}.conf' does not exist"),
    )
}

fn guest_call(
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
        ("POST", ["status", "stop"]) => {
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
            Answer::Data(json!(spawn_task(shared, node, "vzstop", vmid, work)))
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

fn firewall(fw: &mut FirewallView, method: &str, rest: &[&str], call: &Call) -> Answer {
    match (method, rest) {
        ("GET", ["options"]) => Answer::Data(json!(fw.options)),
        ("PUT", ["options"]) => {
            for (k, v) in &call.params {
                fw.options.insert(k.clone(), v.clone());
            }
            Answer::Data(Value::Null)
        }
        ("GET", ["ipset"]) => Answer::Data(Value::Array(
            fw.ipsets
                .keys()
                .map(|name| json!({"name": name, "digest": "0"}))
                .collect(),
        )),
        ("POST", ["ipset"]) => {
            let Some(name) = call.params.get("name") else {
                return Answer::param("name", "property is missing and it is not optional");
            };
            if fw.ipsets.contains_key(name) {
                return Answer::error(
                    500,
                    format!("create ipset '{name}' failed - ipset '{name}' already exists"),
                );
            }
            fw.ipsets.insert(name.clone(), Vec::new());
            Answer::Data(Value::Null)
        }
        ("GET", ["ipset", name]) => match fw.ipsets.get(*name) {
            Some(entries) => Answer::Data(Value::Array(
                entries
                    .iter()
                    .map(|c| json!({"cidr": c, "digest": "0"}))
                    .collect(),
            )),
            None => Answer::error(500, format!("no such IPSet '{name}'")),
        },
        ("POST", ["ipset", name]) => {
            let Some(entries) = fw.ipsets.get_mut(*name) else {
                return Answer::error(500, format!("no such IPSet '{name}'"));
            };
            let Some(cidr) = call.params.get("cidr") else {
                return Answer::param("cidr", "property is missing and it is not optional");
            };
            if entries.contains(cidr) {
                return Answer::error(500, format!("address '{cidr}' already exists"));
            }
            entries.push(cidr.clone());
            Answer::Data(Value::Null)
        }
        ("DELETE", ["ipset", name, cidr]) => {
            if let Some(entries) = fw.ipsets.get_mut(*name) {
                entries.retain(|c| c != cidr);
            }
            Answer::Data(Value::Null)
        }
        ("GET", ["rules"]) => Answer::Data(Value::Array(
            fw.rules
                .iter()
                .enumerate()
                .map(|(pos, rule)| {
                    let mut r = json!(rule);
                    r["pos"] = json!(pos);
                    r["digest"] = json!("0");
                    r
                })
                .collect(),
        )),
        ("POST", ["rules"]) => {
            for required in ["type", "action"] {
                if !call.params.contains_key(required) {
                    return Answer::param(required, "property is missing and it is not optional");
                }
            }
            let mut rule = call.params.clone();
            rule.entry("enable".into()).or_insert_with(|| "0".into());
            fw.rules.insert(0, rule);
            Answer::Data(Value::Null)
        }
        _ => Answer::error(
            501,
            format!(
                "Method '{method} firewall/{}' not implemented",
                rest.join("/")
            ),
        ),
    }
}
