//! The route table: every endpoint of the API, its path template and a handler per
//! method. `openapi.json` describes exactly these (a test checks).

use hyper::{Method, StatusCode};

use crate::error::ApiError;
use crate::handlers::{api_keys, audit, bans, connections, health, hostnames, jobs, pools};
use crate::handlers::{replicas, roles, tenant_changes, tenant_create, tenants, usage};
use crate::request::Handler::{self, Later, Now};
use crate::request::Req;

/// One endpoint: its path template (also the `route` label of
/// `sluice_admin_requests_total`, never the raw path; a `{...}` segment matches any one
/// segment) and a handler per method.
struct Route {
    template: &'static str,
    methods: &'static [(Method, Handler)],
}

impl Route {
    fn matches(&self, segments: &[&str]) -> bool {
        let pattern = self.template.trim_start_matches('/').split('/');
        pattern.clone().count() == segments.len()
            && pattern
                .zip(segments)
                .all(|(p, s)| p.starts_with('{') || p == *s)
    }
}

/// Every endpoint of the API. `openapi.json` describes exactly these (a test checks).
static ROUTES: &[Route] = &[
    Route {
        template: "/healthz",
        methods: &[(Method::GET, Now(health::healthz))],
    },
    Route {
        template: "/readyz",
        methods: &[(Method::GET, Later(health::readyz))],
    },
    Route {
        template: "/metrics",
        methods: &[(Method::GET, Now(health::metrics))],
    },
    Route {
        template: "/v1/openapi.json",
        methods: &[(Method::GET, Now(health::openapi))],
    },
    Route {
        template: "/v1/pools",
        methods: &[(Method::GET, Now(pools::pools))],
    },
    Route {
        template: "/v1/replicas",
        methods: &[(Method::GET, Later(replicas::list))],
    },
    Route {
        template: "/v1/clients",
        methods: &[(Method::GET, Now(connections::clients))],
    },
    Route {
        template: "/v1/servers",
        methods: &[(Method::GET, Now(connections::servers))],
    },
    Route {
        template: "/v1/tenants/{id}/pause",
        methods: &[
            (Method::POST, Later(connections::pause)),
            (Method::DELETE, Later(connections::unpause)),
        ],
    },
    Route {
        template: "/v1/tenants",
        methods: &[
            (Method::GET, Later(tenants::list)),
            (Method::POST, Later(tenant_create::create)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}",
        methods: &[
            (Method::GET, Later(tenants::get)),
            (Method::PATCH, Later(tenant_changes::patch)),
            (Method::DELETE, Later(tenant_changes::delete)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}/roles",
        methods: &[
            (Method::GET, Later(roles::list)),
            (Method::POST, Later(roles::create)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}/roles/{name}",
        methods: &[(Method::DELETE, Later(roles::delete))],
    },
    Route {
        template: "/v1/tenants/{id}/roles/{name}/rotate",
        methods: &[(Method::POST, Later(roles::rotate))],
    },
    Route {
        template: "/v1/tenants/{id}/hostnames",
        methods: &[
            (Method::GET, Later(hostnames::list)),
            (Method::POST, Later(hostnames::add)),
        ],
    },
    Route {
        template: "/v1/tenants/{id}/hostnames/{hostname}",
        methods: &[(Method::DELETE, Later(hostnames::remove))],
    },
    Route {
        template: "/v1/jobs/{id}",
        methods: &[(Method::GET, Later(jobs::job))],
    },
    Route {
        template: "/v1/tenants/{id}/stats",
        methods: &[(Method::GET, Now(pools::tenant_stats))],
    },
    Route {
        template: "/v1/tenants/{id}/usage",
        methods: &[(Method::GET, Later(usage::usage))],
    },
    Route {
        template: "/v1/tenants/{id}/suspend",
        methods: &[(Method::POST, Later(tenant_changes::suspend))],
    },
    Route {
        template: "/v1/tenants/{id}/resume",
        methods: &[(Method::POST, Later(tenant_changes::resume))],
    },
    Route {
        template: "/v1/tenants/{id}/bans",
        methods: &[
            (Method::GET, Now(bans::bans)),
            (Method::DELETE, Later(bans::lift_bans)),
        ],
    },
    Route {
        template: "/v1/api-keys",
        methods: &[
            (Method::GET, Later(api_keys::list)),
            (Method::POST, Later(api_keys::create)),
        ],
    },
    Route {
        template: "/v1/api-keys/{id}",
        methods: &[(Method::DELETE, Later(api_keys::revoke))],
    },
    Route {
        template: "/v1/audit-events",
        methods: &[(Method::GET, Later(audit::list))],
    },
    Route {
        template: "/v1/audit-events/verify",
        methods: &[(Method::GET, Later(audit::verify))],
    },
];

/// Every (path template, method) the API serves; `HEAD` is also accepted wherever
/// `GET` is.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .flat_map(|r| r.methods.iter().map(|(m, _)| (r.template, m.as_str())))
        .collect()
}

/// Matches the request to a route and method.
pub(crate) fn route(req: &Req) -> (&'static str, Result<Handler, ApiError>) {
    let segments = req.segments();
    let Some(route) = ROUTES.iter().find(|r| r.matches(&segments)) else {
        let path = req.head.uri.path();
        let e = ApiError::not_found(format!("no such endpoint: {path}"));
        return ("other", Err(e));
    };
    let template = route.template;
    let method = if req.head.method == Method::HEAD {
        Method::GET
    } else {
        req.head.method.clone()
    };
    match route.methods.iter().find(|(m, _)| *m == method) {
        Some((_, handler)) => (template, Ok(*handler)),
        None => {
            let allowed: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
            let e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} {template} is not supported (allowed: {})",
                    req.head.method,
                    allowed.join(", ")
                ),
            );
            (template, Err(e))
        }
    }
}
