//! Canonical JSON: the one byte string a JSON value hashes as.
//!
//! The audit chain hashes events, and verification recomputes the hashes from stored rows
//! possibly years later, so the text must not depend on how a map happened to be ordered
//! or which serde_json features some other crate switched on (`preserve_order` would keep
//! insertion order). The rule:
//!
//! - objects: members sorted by key, comparing the keys' UTF-8 bytes (which is code point
//!   order), written `{"k":v,...}`;
//! - arrays: `[v,...]` in their order;
//! - no whitespace anywhere;
//! - strings (keys too): escaped exactly as serde_json escapes them: `"` and `\` with a
//!   backslash, `\b \f \n \r \t` by name, other control characters below U+0020 as
//!   `\u00XX` (lowercase hex), everything else (non-ASCII included) as raw UTF-8;
//! - numbers as serde_json prints them (integers in decimal, floats in ryu's shortest
//!   round-trip form); `true`, `false`, `null` as such.

use serde_json::Value;

/// The canonical text of `value` (see the module docs for the rule).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(number) => out.push_str(&number.to_string()),
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (index, (key, item)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// A JSON string literal with serde_json's escaping.
fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < '\u{20}' => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let value: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"z": [3, {"y": 0, "x": null}], "c": true}}"#)
                .unwrap();
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"c":true,"z":[3,{"x":null,"y":0}]},"b":1}"#
        );
    }

    #[test]
    fn keys_sort_by_bytes_not_by_length_or_case() {
        let value = json!({"bb": 1, "a": 2, "B": 3, "é": 4, "z": 5});
        assert_eq!(
            canonical_json(&value),
            r#"{"B":3,"a":2,"bb":1,"z":5,"é":4}"#
        );
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let tricky = "quote \" backslash \\ nl \n tab \t cr \r bs \u{08} ff \u{0c} \
                      nul \u{0} us \u{1f} del \u{7f} é 日本 🦀 \u{2028}";
        let value = json!({ tricky: tricky });
        let expected_string = serde_json::to_string(tricky).unwrap();
        assert_eq!(
            canonical_json(&value),
            format!("{{{expected_string}:{expected_string}}}")
        );
        assert!(canonical_json(&json!("\u{1f}")).contains("\\u001f"));
        assert_eq!(canonical_json(&json!("日本🦀")), "\"日本🦀\"");
    }

    #[test]
    fn numbers_and_literals_print_as_serde_json_does() {
        let value = json!([
            0,
            -1,
            1.5,
            u64::MAX,
            i64::MIN,
            1e300,
            0.1,
            true,
            false,
            null
        ]);
        assert_eq!(
            canonical_json(&value),
            serde_json::to_string(&value).unwrap()
        );
        assert_eq!(canonical_json(&json!({})), "{}");
        assert_eq!(canonical_json(&json!([])), "[]");
    }
}
