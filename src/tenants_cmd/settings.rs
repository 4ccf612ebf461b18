//! Request bodies from the command line: `--set SECTION.KEY=VALUE` and `--file`.
//!
//! The CLI does not know the keys (the server checks them and names a wrong one), so a
//! setting the server learns later works without a new CLI.

use std::io::Read;
use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context};
use serde_json::{Map, Value};

/// One `--set pool.size=20` / `--set limits.allow_cidrs=10.0.0.0/8,::1/128`.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// `pool` or `limits`: the body's object the key goes in.
    section: &'static str,
    key: String,
    value: Value,
}

const SECTIONS: [&str; 2] = ["pool", "limits"];

impl FromStr for Setting {
    type Err = String;

    fn from_str(arg: &str) -> Result<Self, String> {
        let expected = || {
            format!("{arg:?}: expected SECTION.KEY=VALUE with SECTION pool or limits, as in pool.size=20")
        };
        let (path, raw) = arg.split_once('=').ok_or_else(expected)?;
        let (section, key) = path.trim().split_once('.').ok_or_else(expected)?;
        let section = SECTIONS
            .into_iter()
            .find(|s| *s == section)
            .ok_or_else(expected)?;
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !key_ok {
            return Err(format!(
                "{arg:?}: KEY is a [defaults.{section}] key (lowercase letters, digits, _), as in {section}.size"
            ));
        }
        Ok(Setting {
            section,
            key: key.to_owned(),
            value: parse_value(key, raw),
        })
    }
}

/// A value as typed: an integer, else `true`/`false`, else a string. `allow_cidrs` is
/// a list, comma-separated (empty: no restriction).
fn parse_value(key: &str, raw: &str) -> Value {
    if key == "allow_cidrs" {
        let items = raw.split(',').map(str::trim).filter(|s| !s.is_empty());
        return Value::Array(items.map(|s| Value::String(s.to_owned())).collect());
    }
    if let Ok(n) = raw.parse::<i64>() {
        return n.into();
    }
    if let Ok(n) = raw.parse::<u64>() {
        return n.into();
    }
    match raw {
        "true" => true.into(),
        "false" => false.into(),
        _ => raw.into(),
    }
}

/// Puts `settings` into `body` (`{"pool": {...}, "limits": {...}}`), over what a
/// `--file` put there. The same key twice on the command line is a mistake worth
/// saying rather than a silent last-wins.
pub fn apply(body: &mut Map<String, Value>, settings: &[Setting]) -> anyhow::Result<()> {
    for (i, s) in settings.iter().enumerate() {
        if settings[..i]
            .iter()
            .any(|t| t.section == s.section && t.key == s.key)
        {
            bail!("--set {}.{} is given twice", s.section, s.key);
        }
        let section = body
            .entry(s.section)
            .or_insert_with(|| Value::Object(Map::new()));
        let Some(section) = section.as_object_mut() else {
            bail!("\"{}\" in the request body is not an object", s.section);
        };
        section.insert(s.key.clone(), s.value.clone());
    }
    Ok(())
}

/// A JSON object from `path` (`-`: standard input).
pub fn read_object(path: &Path) -> anyhow::Result<Map<String, Value>> {
    let (text, name) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the request body from standard input")?;
        (text, "standard input".to_owned())
    } else {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        (text, path.display().to_string())
    };
    match serde_json::from_str(&text).with_context(|| format!("{name}: not JSON"))? {
        Value::Object(map) => Ok(map),
        _ => bail!("{name}: expected a JSON object, as in {{\"pool\": {{\"size\": 20}}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(arg: &str) -> Setting {
        arg.parse().unwrap_or_else(|e| panic!("{arg}: {e}"))
    }

    #[test]
    fn values_are_integers_else_bools_else_strings() {
        assert_eq!(set("pool.size=20").value, json!(20));
        assert_eq!(set("limits.query_rate=0").value, json!(0));
        assert_eq!(set("pool.size=-1").value, json!(-1));
        assert_eq!(set("pool.size=18446744073709551615").value, json!(u64::MAX));
        assert_eq!(set("pool.x=true").value, json!(true));
        assert_eq!(set("pool.x=false").value, json!(false));
        assert_eq!(set("pool.mode=session").value, json!("session"));
        assert_eq!(set("pool.x=1.5").value, json!("1.5"));
        assert_eq!(set("pool.x=").value, json!(""));
        assert_eq!(set("pool.x=a=b").value, json!("a=b"));
        assert_eq!(set("pool.x=True").value, json!("True"));
    }

    #[test]
    fn allow_cidrs_is_a_list() {
        assert_eq!(
            set("limits.allow_cidrs=10.0.0.0/8, ::1/128").value,
            json!(["10.0.0.0/8", "::1/128"])
        );
        assert_eq!(
            set("limits.allow_cidrs=10.0.0.0/8").value,
            json!(["10.0.0.0/8"])
        );
        assert_eq!(set("limits.allow_cidrs=").value, json!([]));
    }

    #[test]
    fn malformed_settings_are_refused_with_the_form_expected() {
        for bad in [
            "size=20",
            "pool.size",
            "backend.host=x",
            "pool.=1",
            "pool.a.b=1",
            "Pool.size=1",
            "pool.Size=1",
        ] {
            let e = bad.parse::<Setting>().expect_err(bad);
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn settings_build_the_patch_body() {
        let mut body = Map::new();
        let settings = [
            set("pool.size=20"),
            set("limits.query_rate=100"),
            set("pool.mode=session"),
        ];
        apply(&mut body, &settings).unwrap();
        assert_eq!(
            Value::Object(body),
            json!({"pool": {"size": 20, "mode": "session"}, "limits": {"query_rate": 100}})
        );
    }

    #[test]
    fn settings_override_a_file_but_not_each_other() {
        let Value::Object(mut body) = json!({"pool": {"size": 5, "min_idle": 1}}) else {
            unreachable!()
        };
        apply(&mut body, &[set("pool.size=20")]).unwrap();
        assert_eq!(
            Value::Object(body.clone()),
            json!({"pool": {"size": 20, "min_idle": 1}})
        );
        let twice = apply(&mut body, &[set("pool.size=1"), set("pool.size=2")]);
        assert!(twice.unwrap_err().to_string().contains("twice"));
        let Value::Object(mut odd) = json!({"limits": 3}) else {
            unreachable!()
        };
        assert!(apply(&mut odd, &[set("limits.query_rate=1")]).is_err());
    }

    #[test]
    fn files_must_hold_an_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("patch.json");
        std::fs::write(&path, r#"{"pool": {"size": 3}}"#).unwrap();
        assert_eq!(read_object(&path).unwrap()["pool"]["size"], 3);
        std::fs::write(&path, "[1]").unwrap();
        assert!(read_object(&path)
            .unwrap_err()
            .to_string()
            .contains("object"));
        std::fs::write(&path, "{").unwrap();
        assert!(read_object(&path)
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(read_object(&dir.path().join("missing")).is_err());
    }
}
