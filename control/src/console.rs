//! [`ConsoleKeys`]: the admin API's keys and audit log, as the proxy's admin console
//! (docs/console.md) asks for them through `router::console::ConsoleAuthority`.

use std::net::IpAddr;
use std::sync::Arc;

use router::console::{AuditFuture, ConsoleAuthority, ConsoleCaller, ConsoleRole};
use serde_json::json;

use crate::keys::{ApiKeys, Role};
use crate::open::Control;
use crate::store::AuditEvent;

/// The keys this process accepts (shared with the admin API, so a key revoked there
/// stops working here at once) and the store the audit log is in.
#[derive(Debug)]
pub struct ConsoleKeys {
    pub keys: Arc<ApiKeys>,
    pub control: Control,
}

impl ConsoleAuthority for ConsoleKeys {
    fn caller(&self, key: &str) -> Option<ConsoleCaller> {
        let caller = self.keys.verify(key)?;
        Some(ConsoleCaller {
            key_id: caller.key_id,
            role: match caller.role {
                Role::Viewer => ConsoleRole::Viewer,
                Role::Operator => ConsoleRole::Operator,
                Role::Admin => ConsoleRole::Admin,
            },
        })
    }

    fn audit<'a>(
        &'a self,
        caller: &'a ConsoleCaller,
        source_ip: IpAddr,
        action: &'a str,
        target: &'a str,
        command: &'a str,
    ) -> AuditFuture<'a> {
        Box::pin(async move {
            let store = self.control.store().map_err(|e| e.to_string())?;
            let event = AuditEvent {
                actor: Some(caller.key_id.clone()),
                source_ip: Some(source_ip.to_string()),
                target: Some(target.to_owned()),
                details: json!({"via": "console", "command": command}),
                ..AuditEvent::new(action)
            };
            store
                .append_audit(&event)
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:#}"))
        })
    }
}
