//! What changed between two versions of a config file, key by key: what a reload
//! (SIGHUP) applies live and what it reports as needing a restart.

use toml::{Table, Value};

/// The dotted paths of the keys whose values differ between `old` and `new` (added,
/// removed or changed), in key order. Tables are compared key by
/// key and arrays of tables element by element (`tenants[1].pool.size`); any other
/// value, lists included, is compared whole.
pub fn changed_keys(old: &Table, new: &Table) -> Vec<String> {
    let mut changed = Vec::new();
    tables(old, new, "", &mut changed);
    changed
}

/// Whether a reload can put the change of `key` in force without a restart: the pool
/// settings and limits of `[defaults.*]` and `[plans.*]`, and the `[[tenants]]`
/// entries (brought into the control store as at start), which reach running pools and
/// admission gates through the catalog, as an admin API `PATCH` does. A plan's
/// `backend` size only matters to backends created later, by drivers configured at
/// start.
pub fn is_live(key: &str) -> bool {
    if key.starts_with("tenants[") {
        return true;
    }
    let live_section = |rest: &str| rest.starts_with("pool") || rest.starts_with("limits");
    if let Some(rest) = key.strip_prefix("defaults.") {
        return live_section(rest);
    }
    if let Some(rest) = key.strip_prefix("plans.") {
        // `plans.NAME.pool…` (a tenant naming a removed plan fails validation first).
        return rest
            .split_once('.')
            .is_some_and(|(_, section)| live_section(section));
    }
    false
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn tables(old: &Table, new: &Table, prefix: &str, changed: &mut Vec<String>) {
    for (key, value) in new {
        values(old.get(key), Some(value), &join(prefix, key), changed);
    }
    for (key, value) in old {
        if !new.contains_key(key) {
            values(Some(value), None, &join(prefix, key), changed);
        }
    }
}

fn values(old: Option<&Value>, new: Option<&Value>, path: &str, changed: &mut Vec<String>) {
    match (old, new) {
        (Some(Value::Table(old)), Some(Value::Table(new))) => tables(old, new, path, changed),
        // A section added or removed whole: each of its keys.
        (None, Some(Value::Table(new))) => tables(&Table::new(), new, path, changed),
        (Some(Value::Table(old)), None) => tables(old, &Table::new(), path, changed),
        (Some(Value::Array(old)), Some(Value::Array(new)))
            if old.iter().chain(new).all(Value::is_table) =>
        {
            for i in 0..old.len().max(new.len()) {
                let path = format!("{path}[{i}]");
                match (old.get(i), new.get(i)) {
                    (Some(old), Some(new)) => values(Some(old), Some(new), &path, changed),
                    // An entry added or removed: the entry, not each of its keys.
                    _ => changed.push(path),
                }
            }
        }
        (old, new) if old == new => {}
        _ => changed.push(path.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().unwrap()
    }

    #[test]
    fn reports_each_changed_key_by_path() {
        let old = table(
            "log_format = \"text\"\n[proxy]\nlisten = [\"a\"]\n[defaults.pool]\nsize = 5\n\
             [[tenants]]\nid = \"a\"\n[tenants.pool]\nsize = 1\n",
        );
        let new = table(
            "log_format = \"json\"\n[proxy]\nlisten = [\"a\"]\n[defaults.pool]\nsize = 6\n\
             [plans.nano.limits]\nquery_rate = 1\n\
             [[tenants]]\nid = \"a\"\n[tenants.pool]\nsize = 2\n[[tenants]]\nid = \"b\"\n",
        );
        assert_eq!(
            changed_keys(&old, &new),
            [
                "defaults.pool.size",
                "log_format",
                "plans.nano.limits.query_rate",
                "tenants[0].pool.size",
                "tenants[1]"
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
    }

    #[test]
    fn only_pool_settings_and_limits_are_live() {
        assert!(is_live("defaults.pool.size"));
        assert!(is_live("defaults.limits.query_rate"));
        assert!(is_live("plans.nano.limits.connect_rate"));
        assert!(!is_live("plans.nano.backend.cores"));
        assert!(!is_live("proxy.listen"));
        assert!(is_live("tenants[0].pool.size"));
        assert!(is_live("tenants[1]"));
        assert!(!is_live("tenants"));
        assert!(!is_live("log_format"));
    }
}
