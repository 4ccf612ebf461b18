//! Aligned text tables of API answers, for the CLI's `--output table`: one line per
//! item under a header line, columns two spaces apart. Cells read JSON with a
//! pointer, and anything missing shows as `-`, so a field the server adds or drops
//! never breaks the output.

use serde_json::Value;

/// How a column lines up: names to the left, numbers to the right.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// One column: its header, alignment, and how to read a cell out of an item.
pub type Column = (&'static str, Align, fn(&Value) -> String);

/// The header line and one line per item. Pure, so tables are tested without a
/// server.
pub fn render(columns: &[Column], items: &[Value]) -> Vec<String> {
    let header: Vec<String> = columns.iter().map(|(h, _, _)| (*h).to_owned()).collect();
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, _, cell)| cell(item)).collect())
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let aligns: Vec<Align> = columns.iter().map(|(_, a, _)| *a).collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| line(row, &widths, &aligns))
        .collect()
}

/// `key  value` lines with the keys padded to one width: the view of one item.
pub fn key_values(pairs: &[(String, String)]) -> Vec<String> {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{k:<width$}  {v}").trim_end().to_owned())
        .collect()
}

fn line(cells: &[String], widths: &[usize], aligns: &[Align]) -> String {
    let padded: Vec<String> = cells
        .iter()
        .zip(widths)
        .zip(aligns)
        .map(|((cell, &width), align)| match align {
            Align::Left => format!("{cell:<width$}"),
            Align::Right => format!("{cell:>width$}"),
        })
        .collect();
    padded.join("  ").trim_end().to_owned()
}

/// A string field, made printable: a name with a newline or an escape sequence must
/// not break the table or the terminal.
pub fn text(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer).and_then(Value::as_str) {
        Some(s) => printable(s),
        None => "-".to_owned(),
    }
}

/// Control characters replaced by `?`.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A time field as `2026-11-22T23:40:01Z`: the API's `2026-11-22T23:40:01.123456Z`
/// without the fraction, still a time the API's filters take.
pub fn time(v: &Value, pointer: &str) -> String {
    let at = text(v, pointer);
    match (at.split_once('.'), at.ends_with('Z')) {
        (Some((whole, _)), true) => format!("{whole}Z"),
        _ => at,
    }
}

pub fn count(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).map_or_else(|| "-".to_owned(), number)
}

pub fn number(n: &Value) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (None, Some(i), _) => i.to_string(),
        (None, None, Some(f)) => format!("{f:.1}"),
        (None, None, None) => "-".to_owned(),
    }
}

/// Any JSON value as one cell: strings bare, lists comma-separated, nothing as `-`.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => printable(s),
        Value::Number(_) => number(v),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(scalar).collect::<Vec<_>>().join(","),
        Value::Object(_) => printable(&v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn columns_align_and_missing_cells_show_a_dash() {
        const COLUMNS: &[Column] = &[
            ("NAME", Align::Left, |v| text(v, "/name")),
            ("N", Align::Right, |v| count(v, "/n")),
        ];
        let lines = render(
            COLUMNS,
            &[json!({"name": "a\u{1b}b", "n": 1234}), json!({"n": -5})],
        );
        assert_eq!(lines, ["NAME     N", "a?b   1234", "-       -5"]);
    }

    #[test]
    fn times_lose_their_fraction_only() {
        let at = |s: &str| time(&json!({"at": s}), "/at");
        assert_eq!(at("2026-11-22T23:40:01.123456Z"), "2026-11-22T23:40:01Z");
        assert_eq!(at("2026-11-22T23:40:01Z"), "2026-11-22T23:40:01Z");
        assert_eq!(at("yesterday"), "yesterday");
        assert_eq!(time(&json!({"at": null}), "/at"), "-");
    }

    #[test]
    fn values_and_key_values_read_well() {
        assert_eq!(
            scalar(&json!(["10.0.0.0/8", "::1/128"])),
            "10.0.0.0/8,::1/128"
        );
        assert_eq!(scalar(&json!([])), "-");
        assert_eq!(scalar(&json!(null)), "-");
        assert_eq!(scalar(&json!(true)), "true");
        assert_eq!(scalar(&json!(2.26)), "2.3");
        let pairs = [
            ("id".to_owned(), "acme".to_owned()),
            ("pool.size".to_owned(), String::new()),
        ];
        assert_eq!(key_values(&pairs), ["id         acme", "pool.size"]);
    }
}
