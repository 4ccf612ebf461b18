//! Which tenant a connection is for: from the TLS server name (SNI), else from the
//! `options` startup parameter.
//!
//! `options` is libpq's command-line string for the backend: words separated by
//! unescaped whitespace, `\` escaping the next character. Sluice recognises its own
//! word in any of the spellings people use (`tenant=acme`, `-c tenant=acme`,
//! `-ctenant=acme`, `--tenant=acme`) and removes it, so the backend never sees it.

/// Which identification methods a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifyRules {
    /// `acme.<sni_suffix>` names tenant `acme`. Lowercase, without a leading dot.
    pub sni_suffix: Option<String>,
    /// Whether `options=tenant=<id>` is accepted.
    pub tenant_from_options: bool,
}

/// Where the tenant name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    Sni,
    Options,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The tenant name as the client gave it (not yet checked against the catalog).
    pub tenant: String,
    pub source: TenantSource,
    /// `options` with Sluice's word removed; `None` when nothing is left.
    pub options: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("no tenant: {hint}")]
    NoTenant { hint: String },
    #[error("the server name names tenant \"{sni}\" but options name tenant \"{options}\"")]
    Conflict { sni: String, options: String },
}

/// Finds the tenant for a connection. `sni` is the TLS server name, if any; `options`
/// the raw `options` startup parameter, if any.
pub fn identify(
    rules: &IdentifyRules,
    sni: Option<&str>,
    options: Option<&str>,
) -> Result<Identified, IdentifyError> {
    let from_sni = match (sni, rules.sni_suffix.as_deref()) {
        (Some(name), Some(suffix)) => tenant_from_server_name(name, suffix),
        _ => None,
    };
    let (from_options, rest) = match options {
        Some(opts) if rules.tenant_from_options => strip_tenant_option(opts),
        Some(opts) => (None, Some(opts.to_owned())),
        None => (None, None),
    };
    let rest = rest.filter(|r| !r.is_empty());
    match (from_sni, from_options) {
        (Some(sni), Some(opt)) if sni != opt => Err(IdentifyError::Conflict { sni, options: opt }),
        (Some(tenant), _) => Ok(Identified {
            tenant,
            source: TenantSource::Sni,
            options: rest,
        }),
        (None, Some(tenant)) => Ok(Identified {
            tenant,
            source: TenantSource::Options,
            options: rest,
        }),
        (None, None) => Err(IdentifyError::NoTenant { hint: hint(rules) }),
    }
}

fn hint(rules: &IdentifyRules) -> String {
    match (&rules.sni_suffix, rules.tenant_from_options) {
        (Some(suffix), true) => {
            format!("connect to <tenant>.{suffix} or pass options=tenant=<id>")
        }
        (Some(suffix), false) => format!("connect to <tenant>.{suffix} with TLS"),
        (None, true) => "pass options=tenant=<id>".to_owned(),
        (None, false) => "this listener has no way to identify tenants".to_owned(),
    }
}

/// `acme.db.example.com` with suffix `db.example.com` → `acme`. Everything before the
/// suffix is the tenant name (checked against the catalog later, so `a.b` becomes
/// "tenant does not exist" rather than silently matching something).
fn tenant_from_server_name(name: &str, suffix: &str) -> Option<String> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let label = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (!label.is_empty()).then(|| label.to_owned())
}

/// Splits libpq's options string into words, honouring backslash escapes
/// (the way the backend reads it).
pub fn split_words(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            c if c.is_ascii_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

fn escape_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Removes Sluice's `tenant` word from `options`; returns the tenant (the last one
/// given wins, as with repeated `-c` settings) and what remains.
fn strip_tenant_option(options: &str) -> (Option<String>, Option<String>) {
    let words = split_words(options);
    let mut tenant = None;
    let mut kept: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let setting = if word == "-c" {
            words.get(i + 1).map(|next| (next.as_str(), 2))
        } else if let Some(s) = word.strip_prefix("-c") {
            Some((s, 1))
        } else if let Some(s) = word.strip_prefix("--") {
            Some((s, 1))
        } else {
            Some((word.as_str(), 1))
        };
        match setting.and_then(|(s, n)| s.strip_prefix("tenant=").map(|v| (v, n))) {
            Some((value, consumed)) => {
                tenant = Some(value.to_ascii_lowercase());
                i += consumed;
            }
            None => {
                kept.push(escape_word(word));
                i += 1;
            }
        }
    }
    (tenant, Some(kept.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> IdentifyRules {
        IdentifyRules {
            sni_suffix: Some("db.example.test".into()),
            tenant_from_options: true,
        }
    }

    #[test]
    fn sni_names_the_tenant() {
        let id = identify(&rules(), Some("acme.db.example.test"), None).unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.source, TenantSource::Sni);
        assert_eq!(id.options, None);
        let id = identify(&rules(), Some("ACME.DB.example.test."), None).unwrap();
        assert_eq!(id.tenant, "acme");
    }

    #[test]
    fn foreign_server_names_are_ignored() {
        let err = identify(&rules(), Some("acme.other.test"), None).unwrap_err();
        assert!(matches!(err, IdentifyError::NoTenant { .. }));
        assert_eq!(
            err.to_string(),
            "no tenant: connect to <tenant>.db.example.test or pass options=tenant=<id>"
        );
        // The suffix must sit at a label boundary.
        assert!(identify(&rules(), Some("xdb.example.test"), None).is_err());
        assert!(identify(&rules(), Some("db.example.test"), None).is_err());
    }

    #[test]
    fn options_in_every_spelling() {
        for opts in [
            "tenant=acme",
            "-c tenant=acme",
            "-ctenant=acme",
            "--tenant=acme",
        ] {
            let id = identify(&rules(), None, Some(opts)).unwrap();
            assert_eq!(id.tenant, "acme", "{opts}");
            assert_eq!(id.source, TenantSource::Options);
            assert_eq!(id.options, None, "{opts}");
        }
    }

    #[test]
    fn other_options_reach_the_backend_intact() {
        let id = identify(
            &rules(),
            None,
            Some("-c search_path=a\\ b tenant=acme  -c statement_timeout=5s"),
        )
        .unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(
            id.options.as_deref(),
            Some("-c search_path=a\\ b -c statement_timeout=5s")
        );
        // Without SNI-capable rules, options still pass through untouched.
        let id = identify(&rules(), Some("acme.db.example.test"), Some("-c x=1")).unwrap();
        assert_eq!(id.options.as_deref(), Some("-c x=1"));
    }

    #[test]
    fn options_disabled_means_not_stripped() {
        let rules = IdentifyRules {
            sni_suffix: Some("db.example.test".into()),
            tenant_from_options: false,
        };
        assert!(identify(&rules, None, Some("tenant=acme")).is_err());
        let id = identify(&rules, Some("acme.db.example.test"), Some("tenant=x")).unwrap();
        assert_eq!(id.options.as_deref(), Some("tenant=x"));
    }

    #[test]
    fn sni_and_options_must_agree() {
        assert!(identify(&rules(), Some("acme.db.example.test"), Some("tenant=acme")).is_ok());
        assert_eq!(
            identify(
                &rules(),
                Some("acme.db.example.test"),
                Some("tenant=globex")
            ),
            Err(IdentifyError::Conflict {
                sni: "acme".into(),
                options: "globex".into()
            })
        );
    }

    proptest! {
        #[test]
        fn splitting_round_trips_escaped_words(words in proptest::collection::vec("[ -~]{1,12}", 0..6)) {
            let joined = words.iter().map(|w| escape_word(w)).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(split_words(&joined), words);
        }

        #[test]
        fn identify_never_panics(sni in proptest::option::of(".{0,80}"), opts in proptest::option::of(".{0,80}")) {
            let _ = identify(&rules(), sni.as_deref(), opts.as_deref());
        }
    }
}
