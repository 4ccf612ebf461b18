//! A client's session settings (startup parameters and `-c` options) applied to a
//! pooled server connection with SET, so that `DISCARD ALL` removes them again when
//! the client leaves. Server connections themselves start with neutral settings.

use pooler::ServerConn;

use crate::error::ClientError;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The settings a client asked for, in order, from its startup parameters and the
/// `options` words left after Sluice removed its own.
pub fn client_settings(
    params: &[(String, String)],
    options: Option<&str>,
) -> Result<Vec<(String, String)>, ClientError> {
    if params.iter().any(|(k, _)| k == "replication") {
        return Err(ClientError::Unsupported(
            "replication connections are not supported through Sluice".into(),
        ));
    }
    let mut settings: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if let Some(options) = options {
        let words = router::identify::split_words(options);
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let setting = if word == "-c" {
                words.next().map(String::as_str)
            } else {
                word.strip_prefix("-c").or_else(|| word.strip_prefix("--"))
            };
            let Some((name, value)) = setting.and_then(|s| s.split_once('=')) else {
                return Err(ClientError::Unsupported(format!(
                    "option {word:?} is not supported: use -c name=value"
                )));
            };
            // `--work-mem=x` is Postgres' spelling of work_mem.
            settings.push((name.replace('-', "_"), value.to_owned()));
        }
    }
    for (name, _) in &settings {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid {
            return Err(ClientError::Protocol(format!(
                "invalid configuration parameter name {name:?}"
            )));
        }
    }
    Ok(settings)
}

/// The server's current value of `name`: as it reports it, or as Sluice set it.
fn current<'a>(conn: &'a ServerConn, name: &str) -> Option<&'a str> {
    // The usual case first, without a scan: a reported parameter in the server's own
    // spelling (a server reports each name once, so no other key matches it).
    if let Some(value) = conn.params.get(name) {
        return Some(value);
    }
    conn.params
        .iter()
        .chain(conn.unreported_settings.iter())
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether the server reports the parameter `name` (in any case).
fn reported(conn: &ServerConn, name: &str) -> bool {
    conn.params.contains_key(name) || conn.params.keys().any(|p| p.eq_ignore_ascii_case(name))
}

/// What to run to make `conn` match `settings`: a simple query that resets (all of
/// it, when the server's settings are unknown; otherwise the settings Sluice made for
/// an earlier client that this one does not have), and the settings to apply.
pub fn plan<'s>(conn: &ServerConn, settings: impl Settings<'s>) -> (String, Vec<(String, String)>) {
    let mut reset = String::new();
    let full = conn.settings_unknown;
    if full {
        reset.push_str("SET SESSION AUTHORIZATION DEFAULT; RESET ALL;");
    } else {
        for name in conn.unreported_settings.keys() {
            if !settings
                .clone()
                .into_iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
            {
                reset.push_str(&format!("RESET {name};"));
            }
        }
    }
    let apply = settings
        .into_iter()
        .filter(|&(name, value)| full || current(conn, name) != Some(value))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    (reset, apply)
}

/// A client's settings as (name, value) pairs, borrowed from wherever they are kept
/// (a transaction-mode client syncs at every attach: nothing is copied for it).
pub trait Settings<'s>: IntoIterator<Item = (&'s str, &'s str)> + Clone {}

impl<'s, T: IntoIterator<Item = (&'s str, &'s str)> + Clone> Settings<'s> for T {}

/// `settings` as [`Settings`].
pub fn pairs(settings: &[(String, String)]) -> impl Settings<'_> {
    settings.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

/// A Postgres text array literal.
fn text_array(items: impl Iterator<Item = String>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Makes the server's session settings the client's. Values go through `set_config`
/// as parameters, exactly as a startup packet would set them (list settings such as
/// `search_path=a,b` keep their meaning; no quoting). A setting the server rejects is
/// the client's error, as it would be with a direct connection.
pub async fn sync<'s>(
    conn: &mut ServerConn,
    settings: impl Settings<'s>,
    tenant: &str,
) -> Result<(), ClientError> {
    let (reset, apply) = plan(conn, settings.clone());
    let failed = |e: pooler::ServerError| ClientError::BackendUnavailable {
        tenant: tenant.to_owned(),
        detail: e.to_string(),
    };
    if !reset.is_empty() {
        let outcome = conn.simple_query(&reset).await.map_err(failed)?;
        if let Some(fields) = outcome.error {
            return Err(ClientError::BackendRefused(fields));
        }
    }
    if !apply.is_empty() {
        let names = text_array(apply.iter().map(|(k, _)| k.clone()));
        let values = text_array(apply.iter().map(|(_, v)| v.clone()));
        let outcome = conn
            .extended_query(
                "SELECT pg_catalog.set_config(n, v, false) \
                 FROM unnest($1::text[], $2::text[]) AS s(n, v)",
                &[Some(names.as_bytes()), Some(values.as_bytes())],
            )
            .await
            .map_err(failed)?;
        if let Some(fields) = outcome.error {
            return Err(ClientError::BackendRefused(fields));
        }
    }
    conn.settings_unknown = false;
    // Reported settings are tracked through ParameterStatus; remember the others.
    conn.unreported_settings = settings
        .into_iter()
        .filter(|(k, _)| !reported(conn, k))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn settings_come_from_params_and_options() {
        let s = client_settings(
            &p(&[
                ("user", "app"),
                ("database", "db"),
                ("application_name", "psql"),
                ("_pq_.x", "1"),
            ]),
            Some("-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB"),
        )
        .unwrap();
        assert_eq!(
            s,
            p(&[
                ("application_name", "psql"),
                ("search_path", "a,b"),
                ("statement_timeout", "5s"),
                ("work_mem", "4MB"),
            ])
        );
    }

    #[test]
    fn odd_input_is_refused_not_passed_on() {
        assert!(client_settings(&p(&[("replication", "true")]), None).is_err());
        assert!(client_settings(&[], Some("-d 5")).is_err());
        assert!(client_settings(&p(&[("bad name;", "x")]), None).is_err());
    }

    #[test]
    fn array_literals_escape_quotes_and_backslashes() {
        let items = ["a,b", "it's \"q\"", "back\\slash"].map(String::from);
        assert_eq!(
            text_array(items.into_iter()),
            r#"{"a,b","it's \"q\"","back\\slash"}"#
        );
    }
}
