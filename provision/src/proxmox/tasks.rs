//! Proxmox VE tasks: the UPID a long call answers with, and polling
//! `GET /nodes/{node}/tasks/{upid}/status` until the task has stopped.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{segment, text, Client, PveError};

/// The node a UPID names: `UPID:$node:$pid:$pstart:$starttime:$type:$id:$user:`. Its status
/// must be asked of that node.
pub fn upid_node(upid: &str) -> Option<&str> {
    let rest = upid.strip_prefix("UPID:")?;
    if !rest.ends_with(':') || rest.split(':').count() != 8 {
        return None;
    }
    let node = rest.split(':').next()?;
    let valid = !node.is_empty()
        && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !node.starts_with('-')
        && !node.ends_with('-');
    valid.then_some(node)
}

/// The UPID in a call's `data`.
pub fn upid_of(data: &Value) -> Result<String, PveError> {
    match data.as_str() {
        Some(upid) if upid_node(upid).is_some() => Ok(upid.to_owned()),
        _ => Err(PveError::Transport {
            method: hyper::Method::POST,
            path: String::new(),
            reason: format!("expected a task UPID, got {data}"),
        }),
    }
}

/// Waits until the task stops. `OK` and `WARNINGS: N` are success; any other exit
/// status is [`PveError::Task`] with Proxmox's text. A 400 "no such task" right after
/// the call is retried (the task list may lag), as other clients do.
pub async fn wait(
    client: &Client,
    upid: &str,
    poll: Duration,
    timeout: Duration,
) -> Result<(), PveError> {
    let node = upid_node(upid).ok_or_else(|| PveError::Transport {
        method: hyper::Method::GET,
        path: String::new(),
        reason: format!("not a UPID: {upid:?}"),
    })?;
    let path = format!("nodes/{}/tasks/{}/status", segment(node), segment(upid));
    let deadline = Instant::now() + timeout;
    let mut misses = 0;
    loop {
        match client.get(&path, &[]).await {
            Ok(status) => {
                if text(&status, "status").as_deref() == Some("stopped") {
                    let exit = text(&status, "exitstatus")
                        .unwrap_or_else(|| "unexpected status".to_owned());
                    return if exit == "OK" || exit.starts_with("WARNINGS") {
                        if exit != "OK" {
                            tracing::info!(upid, exit, "proxmox task ended with warnings");
                        }
                        Ok(())
                    } else {
                        Err(PveError::Task {
                            upid: upid.to_owned(),
                            exitstatus: exit,
                        })
                    };
                }
            }
            Err(PveError::Api { status: 400, .. }) if misses < 5 => misses += 1,
            Err(e) if e.is_transient() => {
                tracing::debug!(upid, error = %e, "polling a proxmox task");
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(PveError::Task {
                upid: upid.to_owned(),
                exitstatus: format!("still running after {timeout:?} (Sluice stopped waiting)"),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_comes_from_the_upid() {
        let upid = "UPID:proxmox2:000D7AA2:08D5A17C:63DF62A5:vzclone:200:root@pam!api_token:";
        assert_eq!(upid_node(upid), Some("proxmox2"));
        assert_eq!(upid_node("UPID:pve1:1:2:3:vzcreate::u@pam:"), Some("pve1"));
        assert_eq!(upid_node("UPID:pve1:1:2:3:vzcreate:101:u@pam"), None);
        assert_eq!(upid_node("nope"), None);
    }
}
