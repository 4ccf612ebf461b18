//! The docs name everything an operator can set or call: every key of
//! `configs/sluice.example.toml` and every route of `admin-api/openapi.json` appears in
//! `docs/*.md` (keys inside code, as `` `max_wait_ms` `` or in a TOML block; routes as
//! their path template, `/v1/tenants/{id}/hostnames`).

use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `docs/*.md`, concatenated.
fn docs() -> String {
    let mut text = String::new();
    let mut files: Vec<_> = std::fs::read_dir(Path::new(ROOT).join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.sort();
    for file in files {
        text.push_str(&std::fs::read_to_string(file).unwrap());
        text.push('\n');
    }
    text
}

/// The code in markdown: fenced blocks and inline spans.
fn code_of(markdown: &str) -> String {
    let mut code = String::new();
    let mut prose = String::new();
    for (i, part) in markdown.split("```").enumerate() {
        if i % 2 == 1 {
            code.push_str(part);
            code.push('\n');
        } else {
            prose.push_str(part);
        }
    }
    for line in prose.lines() {
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 {
                code.push_str(span);
                code.push('\n');
            }
        }
    }
    code
}

fn has_word(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(ident) && !after.is_some_and(ident)
    })
}

/// The example config's keys: every key of every table, except the names an operator
/// chooses (plans under `[plans]`).
fn config_keys(table: &toml::Table, path: &str, keys: &mut BTreeSet<String>) {
    for (key, value) in table {
        let named_by_operator = path == "plans";
        if !named_by_operator {
            keys.insert(key.clone());
        }
        let here = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match value {
            toml::Value::Table(t) => config_keys(t, &here, keys),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(t) = item {
                        config_keys(t, &here, keys);
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn every_key_of_the_example_config_is_documented() {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("configs/sluice.example.toml")).unwrap();
    let example: toml::Table = text.parse().unwrap();
    let mut keys = BTreeSet::new();
    config_keys(&example, "", &mut keys);
    assert!(keys.contains("max_wait_ms") && keys.contains("sni_suffix"));
    let code = code_of(&docs());
    let missing: Vec<&String> = keys.iter().filter(|k| !has_word(&code, k)).collect();
    assert!(missing.is_empty(), "not in docs/*.md: {missing:?}");
}

#[test]
fn every_route_of_the_api_is_documented() {
    let text = std::fs::read_to_string(Path::new(ROOT).join("admin-api/openapi.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let docs = docs();
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.len() > 10);
    let missing: Vec<&&String> = paths
        .iter()
        .filter(|p| !docs.contains(p.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in docs/*.md: {missing:?}");
}
