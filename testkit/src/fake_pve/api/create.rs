//! `POST /nodes/{node}/lxc`: a new container, its parameters checked as Proxmox checks
//! them; the `vzcreate` task builds its cluster and lifts the `create` lock.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};

use serde_json::json;

use crate::fake_pve::call::{Answer, Call};
use crate::fake_pve::guests::Shared;
use crate::fake_pve::guests::{self, spawn_task, FirewallView, Guest, Work};

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

pub(super) fn create(shared: &Arc<Shared>, node: &str, call: &Call) -> Answer {
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
