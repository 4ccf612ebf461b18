//! The container's own firewall: inbound traffic dropped except TCP 5432 from the Sluice
//! hosts. One IP set (`sluice`) holds the allowed sources and one rule accepts them, so a
//! change of `sluice_hosts` edits set entries and never rule positions.
//!
//! All three switches must be on for rules to apply: the datacenter firewall (the
//! operator's, docs/drivers.md), the container's (`options enable=1`, set here) and the
//! NIC's (`firewall=1` in `net0`, set at creation).

use std::collections::BTreeSet;

use anyhow::Context;

use super::client::{segment, text, PveError};
use super::container::Ct;
use super::{backoff, ProxmoxDriver, POSTGRES_PORT};

/// The IP set of allowed sources.
const IPSET: &str = "sluice";
/// The comment that identifies the driver's rule.
const RULE_COMMENT: &str = "sluice: PostgreSQL from the Sluice hosts";

impl ProxmoxDriver {
    /// Makes the container's firewall what the configuration says; safe to repeat.
    /// Transient errors redo the whole (idempotent) sequence.
    pub(super) async fn ensure_firewall(&self, ct: &Ct) -> anyhow::Result<()> {
        let mut attempt = 0;
        loop {
            match self.firewall(ct).await {
                Err(e) if e.is_transient() && attempt < 5 => {
                    tracing::warn!(vmid = ct.vmid, error = %e, "setting a proxmox firewall; retrying");
                    tokio::time::sleep(backoff(&self.timings, attempt)).await;
                    attempt += 1;
                }
                other => {
                    return other.with_context(|| {
                        format!(
                            "setting the firewall of container {} on {}",
                            ct.vmid, ct.node
                        )
                    })
                }
            }
        }
    }

    async fn firewall(&self, ct: &Ct) -> Result<(), PveError> {
        let base = ct.path("firewall");
        let sets = self.client.get(&format!("{base}/ipset"), &[]).await?;
        let has_set = sets.as_array().is_some_and(|sets| {
            sets.iter()
                .any(|s| text(s, "name").as_deref() == Some(IPSET))
        });
        if !has_set {
            self.client
                .post(
                    &format!("{base}/ipset"),
                    &[
                        ("name", IPSET.to_owned()),
                        ("comment", "Sluice hosts".to_owned()),
                    ],
                )
                .await?;
        }
        let set_path = format!("{base}/ipset/{IPSET}");
        let entries = self.client.get(&set_path, &[]).await?;
        let present: BTreeSet<String> = entries
            .as_array()
            .map(|entries| entries.iter().filter_map(|e| text(e, "cidr")).collect())
            .unwrap_or_default();
        let wanted: BTreeSet<String> = self.config.sluice_hosts.iter().cloned().collect();
        for cidr in wanted.difference(&present) {
            self.client
                .post(&set_path, &[("cidr", cidr.clone())])
                .await?;
        }
        for cidr in present.difference(&wanted) {
            self.client
                .delete(&format!("{set_path}/{}", segment(cidr)), &[])
                .await?;
        }

        let rules = self.client.get(&format!("{base}/rules"), &[]).await?;
        let has_rule = rules.as_array().is_some_and(|rules| {
            rules
                .iter()
                .any(|r| text(r, "comment").as_deref() == Some(RULE_COMMENT))
        });
        if !has_rule {
            self.client
                .post(
                    &format!("{base}/rules"),
                    &[
                        ("type", "in".to_owned()),
                        ("action", "ACCEPT".to_owned()),
                        ("proto", "tcp".to_owned()),
                        ("dport", POSTGRES_PORT.to_string()),
                        ("source", format!("+{IPSET}")),
                        ("iface", "net0".to_owned()),
                        // An integer flag: omitted, the rule would be created disabled.
                        ("enable", "1".to_owned()),
                        ("comment", RULE_COMMENT.to_owned()),
                    ],
                )
                .await?;
        }
        self.client
            .put(
                &format!("{base}/options"),
                &[
                    ("enable", "1".to_owned()),
                    ("policy_in", "DROP".to_owned()),
                    ("policy_out", "ACCEPT".to_owned()),
                ],
            )
            .await?;
        Ok(())
    }
}
