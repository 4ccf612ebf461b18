//! `/nodes/{node}/lxc/{vmid}/firewall/…`: a container's firewall options, IP sets and
//! rules, kept as the API set them.

use serde_json::{json, Value};

use crate::fake_pve::call::{Answer, Call};
use crate::fake_pve::guests::FirewallView;

pub(super) fn firewall(fw: &mut FirewallView, method: &str, rest: &[&str], call: &Call) -> Answer {
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
