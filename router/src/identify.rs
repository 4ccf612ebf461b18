//! Which tenant a connection is for, and as which role it logs in.
//!
//! The sources, in order of precedence (each but SNI opt-in per listener):
//! 1. the TLS server name (SNI): `<tenant>.<sni_suffix>`, or a tenant's own host name
//!    (an exact name with its own certificate, looked up by the caller);
//! 2. the `options` word `tenant=<id>` (`tenant_from_options`);
//! 3. the user name `<role>.<tenant>` (`tenant_from_user`, Supavisor's form): the name
//!    is split at its last dot, and the part after it names a tenant only when it is
//!    exactly the id of a tenant in the catalog and the part before it is not empty.
//!    The role is then the part before the dot. Any other user name is the role as
//!    given, dots and all;
//! 4. the listener's `default_tenant`, for clients that name none.
//!
//! SNI and options must agree when both name a tenant; so must the user name's tenant
//! with either (a user name whose suffix is the same tenant is stripped).
//!
//! `options` is libpq's command-line string for the backend: words separated by
//! unescaped whitespace, `\` escaping the next character. Sluice recognises its own
//! word in any of the spellings people use (`tenant=acme`, `-c tenant=acme`,
//! `-ctenant=acme`, `--tenant=acme`) and removes it, so the backend never sees it.

/// Which identification methods a listener accepts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentifyRules {
    /// `acme.<sni_suffix>` names tenant `acme`. Lowercase, without a leading dot.
    pub sni_suffix: Option<String>,
    /// Whether `options=tenant=<id>` is accepted.
    pub tenant_from_options: bool,
    /// Whether a user name `<role>.<tenant>` names the tenant (and the role).
    pub tenant_from_user: bool,
    /// The tenant of clients that name none; `None`: they are refused.
    pub default_tenant: Option<String>,
}

/// Where the tenant name was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantSource {
    Sni,
    /// A tenant's own host name (an exact TLS server name).
    Hostname,
    Options,
    User,
    Default,
}

impl TenantSource {
    fn describe(self) -> &'static str {
        match self {
            TenantSource::Sni | TenantSource::Hostname => "the server name",
            TenantSource::Options => "the options parameter",
            TenantSource::User => "the user name",
            TenantSource::Default => "the default tenant",
        }
    }
}

/// What a client sent that can name a tenant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    /// The TLS server name, if any.
    pub sni: Option<&'a str>,
    /// The tenant whose own host name `sni` is, if it is one.
    pub host_tenant: Option<&'a str>,
    /// The raw `options` startup parameter, if any.
    pub options: Option<&'a str>,
    /// The `user` startup parameter, if known yet.
    pub user: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The tenant name as the client gave it (not yet checked against the catalog,
    /// except for a user name's suffix).
    pub tenant: String,
    pub source: TenantSource,
    /// `options` with Sluice's word removed; `None` when nothing is left.
    pub options: Option<String>,
    /// The role to log in as when the user name carried the tenant (`app` for
    /// `app.acme`); `None`: the user name as given.
    pub role: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifyError {
    #[error("no tenant: {hint}")]
    NoTenant { hint: String },
    #[error("the server name names tenant \"{sni}\" but options name tenant \"{options}\"")]
    Conflict { sni: String, options: String },
    #[error("{} names tenant \"{named}\" but the user name names tenant \"{user}\"", .by.describe())]
    UserConflict {
        /// Where `named` came from.
        by: TenantSource,
        named: String,
        user: String,
    },
}

/// Finds the tenant for a connection. `is_tenant` says whether an id is in the
/// catalog; it is asked only about a user name's suffix.
pub fn identify(
    rules: &IdentifyRules,
    client: Client<'_>,
    is_tenant: impl Fn(&str) -> bool,
) -> Result<Identified, IdentifyError> {
    let from_sni = match (client.host_tenant, client.sni, rules.sni_suffix.as_deref()) {
        (Some(tenant), _, _) => Some((tenant.to_owned(), TenantSource::Hostname)),
        (None, Some(name), Some(suffix)) => {
            tenant_from_server_name(name, suffix).map(|t| (t, TenantSource::Sni))
        }
        _ => None,
    };
    let (from_options, rest) = match client.options {
        Some(opts) if rules.tenant_from_options => strip_tenant_option(opts),
        Some(opts) => (None, Some(opts.to_owned())),
        None => (None, None),
    };
    let options = rest.filter(|r| !r.is_empty());
    let named = match (from_sni, from_options) {
        (Some((sni, _)), Some(opt)) if sni != opt => {
            return Err(IdentifyError::Conflict { sni, options: opt })
        }
        (Some(named), _) => Some(named),
        (None, Some(tenant)) => Some((tenant, TenantSource::Options)),
        (None, None) => None,
    };
    let from_user = match client.user {
        Some(user) if rules.tenant_from_user => split_user(user, &is_tenant),
        _ => None,
    };
    let (tenant, source, role) = match (named, from_user) {
        (Some((named, source)), Some((role, user))) => {
            if named != user {
                return Err(IdentifyError::UserConflict {
                    by: source,
                    named,
                    user: user.to_owned(),
                });
            }
            (named, source, Some(role.to_owned()))
        }
        (Some((named, source)), None) => (named, source, None),
        (None, Some((role, user))) => (user.to_owned(), TenantSource::User, Some(role.to_owned())),
        (None, None) => match &rules.default_tenant {
            Some(tenant) => (tenant.clone(), TenantSource::Default, None),
            None => return Err(IdentifyError::NoTenant { hint: hint(rules) }),
        },
    };
    Ok(Identified {
        tenant,
        source,
        options,
        role,
    })
}

/// `app.acme` → (`app`, `acme`) when `acme` is a tenant; split at the last dot, so a
/// role may itself contain dots (`first.last.acme` → `first.last`).
fn split_user(user: &str, is_tenant: impl Fn(&str) -> bool) -> Option<(&str, &str)> {
    let (role, tenant) = user.rsplit_once('.')?;
    (!role.is_empty() && !tenant.is_empty() && is_tenant(tenant)).then_some((role, tenant))
}

fn hint(rules: &IdentifyRules) -> String {
    let mut ways = Vec::new();
    if let Some(suffix) = &rules.sni_suffix {
        ways.push(format!("connect to <tenant>.{suffix}"));
    }
    if rules.tenant_from_options {
        ways.push("pass options=tenant=<id>".to_owned());
    }
    if rules.tenant_from_user {
        ways.push("log in as user <role>.<tenant>".to_owned());
    }
    match ways.len() {
        0 => "this listener has no way to identify tenants".to_owned(),
        1 if rules.sni_suffix.is_some() => format!("{} with TLS", ways[0]),
        _ => ways.join(" or "),
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
            ..IdentifyRules::default()
        }
    }

    /// The catalog of these tests: `acme` and `globex`.
    fn known(id: &str) -> bool {
        matches!(id, "acme" | "globex")
    }

    fn ident(
        rules: &IdentifyRules,
        sni: Option<&str>,
        options: Option<&str>,
    ) -> Result<Identified, IdentifyError> {
        identify(
            rules,
            Client {
                sni,
                options,
                user: None,
                ..Client::default()
            },
            known,
        )
    }

    fn with_user(
        rules: &IdentifyRules,
        sni: Option<&str>,
        options: Option<&str>,
        user: &str,
    ) -> Result<Identified, IdentifyError> {
        identify(
            rules,
            Client {
                sni,
                options,
                user: Some(user),
                ..Client::default()
            },
            known,
        )
    }

    #[test]
    fn sni_names_the_tenant() {
        let id = ident(&rules(), Some("acme.db.example.test"), None).unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.source, TenantSource::Sni);
        assert_eq!(id.options, None);
        let id = ident(&rules(), Some("ACME.DB.example.test."), None).unwrap();
        assert_eq!(id.tenant, "acme");
    }

    #[test]
    fn foreign_server_names_are_ignored() {
        let err = ident(&rules(), Some("acme.other.test"), None).unwrap_err();
        assert!(matches!(err, IdentifyError::NoTenant { .. }));
        assert_eq!(
            err.to_string(),
            "no tenant: connect to <tenant>.db.example.test or pass options=tenant=<id>"
        );
        // The suffix must sit at a label boundary.
        assert!(ident(&rules(), Some("xdb.example.test"), None).is_err());
        assert!(ident(&rules(), Some("db.example.test"), None).is_err());
    }

    #[test]
    fn options_in_every_spelling() {
        for opts in [
            "tenant=acme",
            "-c tenant=acme",
            "-ctenant=acme",
            "--tenant=acme",
        ] {
            let id = ident(&rules(), None, Some(opts)).unwrap();
            assert_eq!(id.tenant, "acme", "{opts}");
            assert_eq!(id.source, TenantSource::Options);
            assert_eq!(id.options, None, "{opts}");
        }
    }

    #[test]
    fn other_options_reach_the_backend_intact() {
        let id = ident(
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
        let id = ident(&rules(), Some("acme.db.example.test"), Some("-c x=1")).unwrap();
        assert_eq!(id.options.as_deref(), Some("-c x=1"));
    }

    #[test]
    fn options_disabled_means_not_stripped() {
        let rules = IdentifyRules {
            tenant_from_options: false,
            ..rules()
        };
        assert!(ident(&rules, None, Some("tenant=acme")).is_err());
        let id = ident(&rules, Some("acme.db.example.test"), Some("tenant=x")).unwrap();
        assert_eq!(id.options.as_deref(), Some("tenant=x"));
    }

    #[test]
    fn sni_and_options_must_agree() {
        assert!(ident(&rules(), Some("acme.db.example.test"), Some("tenant=acme")).is_ok());
        assert_eq!(
            ident(
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

    fn user_rules() -> IdentifyRules {
        IdentifyRules {
            tenant_from_user: true,
            ..rules()
        }
    }

    #[test]
    fn user_suffix_names_tenant_and_role() {
        let id = with_user(&user_rules(), None, None, "app.acme").unwrap();
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.source, TenantSource::User);
        assert_eq!(id.role.as_deref(), Some("app"));
        // Split at the last dot: the role keeps its own dots.
        let id = with_user(&user_rules(), None, None, "first.last.globex").unwrap();
        assert_eq!(id.tenant, "globex");
        assert_eq!(id.role.as_deref(), Some("first.last"));
    }

    #[test]
    fn user_suffix_that_is_no_tenant_leaves_the_role_alone() {
        // Not a tenant (nor a tenant in another case): no tenant named at all.
        for user in [
            "first.last",
            "app.ACME",
            "app.",
            ".acme",
            "app",
            "app.acme ",
        ] {
            let err = with_user(&user_rules(), None, None, user).unwrap_err();
            assert!(matches!(err, IdentifyError::NoTenant { .. }), "{user}");
        }
        // With another source, the dotted role goes through as given.
        let id = with_user(&user_rules(), None, Some("tenant=acme"), "first.last").unwrap();
        assert_eq!((id.tenant.as_str(), id.role), ("acme", None));
        let id = with_user(&user_rules(), None, Some("tenant=acme"), ".acme").unwrap();
        assert_eq!((id.tenant.as_str(), id.role), ("acme", None));
    }

    #[test]
    fn user_suffix_is_ignored_unless_enabled() {
        let err = with_user(&rules(), None, None, "app.acme").unwrap_err();
        assert!(matches!(err, IdentifyError::NoTenant { .. }));
        let id = with_user(&rules(), None, Some("tenant=globex"), "app.acme").unwrap();
        assert_eq!((id.tenant.as_str(), id.role), ("globex", None));
    }

    #[test]
    fn user_suffix_must_agree_with_sni_and_options() {
        let sni = Some("acme.db.example.test");
        let id = with_user(&user_rules(), sni, None, "app.acme").unwrap();
        assert_eq!(id.source, TenantSource::Sni);
        assert_eq!(id.role.as_deref(), Some("app"));
        let id = with_user(&user_rules(), None, Some("tenant=acme"), "app.acme").unwrap();
        assert_eq!(id.source, TenantSource::Options);
        assert_eq!(id.role.as_deref(), Some("app"));
        let err = with_user(&user_rules(), sni, None, "app.globex").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server name names tenant \"acme\" but the user name names tenant \"globex\""
        );
        let err = with_user(&user_rules(), None, Some("-c tenant=acme"), "app.globex").unwrap_err();
        assert_eq!(
            err,
            IdentifyError::UserConflict {
                by: TenantSource::Options,
                named: "acme".into(),
                user: "globex".into()
            }
        );
    }

    #[test]
    fn default_tenant_is_the_last_resort() {
        let rules = IdentifyRules {
            default_tenant: Some("globex".into()),
            tenant_from_user: true,
            ..rules()
        };
        let id = ident(&rules, None, Some("-c x=1")).unwrap();
        assert_eq!(id.tenant, "globex");
        assert_eq!(id.source, TenantSource::Default);
        assert_eq!(id.options.as_deref(), Some("-c x=1"));
        // A foreign server name names nothing, so the default applies.
        let id = ident(&rules, Some("acme.other.test"), None).unwrap();
        assert_eq!(id.source, TenantSource::Default);
        // Every other source wins over it.
        let id = ident(&rules, Some("acme.db.example.test"), None).unwrap();
        assert_eq!((id.tenant.as_str(), id.source), ("acme", TenantSource::Sni));
        let id = ident(&rules, None, Some("tenant=acme")).unwrap();
        assert_eq!(
            (id.tenant.as_str(), id.source),
            ("acme", TenantSource::Options)
        );
        let id = with_user(&rules, None, None, "app.acme").unwrap();
        assert_eq!(
            (id.tenant.as_str(), id.source),
            ("acme", TenantSource::User)
        );
        let id = with_user(&rules, None, None, "first.last").unwrap();
        assert_eq!((id.tenant.as_str(), id.role), ("globex", None));
    }

    #[test]
    fn the_hint_names_every_enabled_way() {
        let rules = IdentifyRules {
            sni_suffix: Some("db.example.test".into()),
            tenant_from_options: false,
            tenant_from_user: true,
            default_tenant: None,
        };
        assert_eq!(
            ident(&rules, None, None).unwrap_err().to_string(),
            "no tenant: connect to <tenant>.db.example.test or log in as user <role>.<tenant>"
        );
        let rules = IdentifyRules {
            tenant_from_user: false,
            ..rules
        };
        assert_eq!(
            ident(&rules, None, None).unwrap_err().to_string(),
            "no tenant: connect to <tenant>.db.example.test with TLS"
        );
    }

    #[test]
    fn a_tenants_own_host_name_counts_as_sni() {
        let rules = IdentifyRules {
            tenant_from_user: true,
            default_tenant: Some("globex".into()),
            ..rules()
        };
        let own = |options, user| Client {
            sni: Some("db.acme-corp.test"),
            host_tenant: Some("acme"),
            options,
            user,
        };
        let id = identify(&rules, own(None, Some("app")), known).unwrap();
        assert_eq!(
            (id.tenant.as_str(), id.source),
            ("acme", TenantSource::Hostname)
        );
        let id = identify(&rules, own(Some("tenant=acme"), Some("app.acme")), known).unwrap();
        assert_eq!(
            (id.source, id.role.as_deref()),
            (TenantSource::Hostname, Some("app"))
        );
        let err = identify(&rules, own(Some("tenant=globex"), None), known).unwrap_err();
        assert!(matches!(err, IdentifyError::Conflict { .. }), "{err}");
        let err = identify(&rules, own(None, Some("app.globex")), known).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server name names tenant \"acme\" but the user name names tenant \"globex\""
        );
    }

    proptest! {
        #[test]
        fn splitting_round_trips_escaped_words(words in proptest::collection::vec("[ -~]{1,12}", 0..6)) {
            let joined = words.iter().map(|w| escape_word(w)).collect::<Vec<_>>().join(" ");
            prop_assert_eq!(split_words(&joined), words);
        }

        #[test]
        fn identify_never_panics(
            sni in proptest::option::of(".{0,80}"),
            opts in proptest::option::of(".{0,80}"),
            user in proptest::option::of(".{0,80}"),
        ) {
            let rules = IdentifyRules {
                tenant_from_user: true,
                default_tenant: Some("acme".into()),
                ..rules()
            };
            let client = Client {
                sni: sni.as_deref(),
                options: opts.as_deref(),
                user: user.as_deref(),
                host_tenant: None,
            };
            let _ = identify(&rules, client, known);
        }
    }
}
