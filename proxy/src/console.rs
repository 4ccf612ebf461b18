//! The admin console: PgBouncer's habit of an admin "database" on the proxy port.
//! A client whose startup packet asks for database `sluice` and names no tenant (no
//! `tenant=` in `options`, and an SNI that is absent, outside `sni_suffix`, or
//! `sluice.<sni_suffix>`) reaches it instead of a tenant (docs/console.md).
//!
//! It speaks the simple query protocol over the client's TLS stream, after the same
//! accept, negotiate and TLS phases as any client: the login asks for the password in
//! clear (inside TLS only; a plaintext client is refused with 28000 before that) and
//! takes it as an admin API key, checked by the control plane's
//! [`ConsoleAuthority`] (the API's keys and roles). Viewer keys may SHOW; operator
//! and admin keys may also PAUSE, RESUME, RECONNECT and KILL, each recorded in the
//! audit log before it is carried out.
//!
//! Written on `wire` rather than the `pgwire` crate: see ARCHITECTURE.md, Deviations.

mod act;
mod command;
mod reply;
mod show;

use std::net::SocketAddr;

use bytes::BytesMut;
use router::console::{ConsoleAuthority, ConsoleCaller, ConsoleRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::frame::split_frame;
use wire::messages::{self, tag};
use wire::startup::StartupMessage;

use crate::auth::read_password_message;
use crate::error::ClientError;
use crate::goodbye::tell_and_close;
use crate::state::Proxy;
use crate::stream::ClientStream;
use command::{parse, statements, Command};
use reply::Refusal;

/// The database name that reaches the console.
pub const DATABASE: &str = "sluice";

/// Longest message the console reads (its commands are a few words).
const MAX_MESSAGE: usize = 64 * 1024;

/// Whether this startup packet is for the console rather than a tenant.
pub fn wanted(proxy: &Proxy, startup: &StartupMessage, sni: Option<&str>) -> bool {
    if startup.database() != Some(DATABASE) {
        return false;
    }
    let names_tenant = startup
        .get("options")
        .is_some_and(|o| o.split_whitespace().any(|w| w.starts_with("tenant=")));
    if names_tenant {
        return false;
    }
    let suffix = proxy.config.identify.sni_suffix.as_deref();
    let label = match (sni, suffix) {
        (Some(sni), Some(suffix)) => sni
            .strip_suffix(suffix)
            .and_then(|s| s.strip_suffix('.'))
            .map(str::to_ascii_lowercase),
        _ => None,
    };
    // `acme.<suffix>` names tenant acme, whose own database may be called `sluice`.
    label.is_none_or(|label| label == DATABASE)
}

/// The console's login: TLS only, the password an API key. Greets the client and
/// returns who it is.
pub async fn login(
    proxy: &Proxy,
    stream: &mut ClientStream,
    startup: &StartupMessage,
) -> Result<ConsoleCaller, ClientError> {
    if !stream.is_tls() {
        return Err(ClientError::TlsRequired);
    }
    let user = startup.user().unwrap_or_default().to_owned();
    let Some(authority) = proxy.console.get() else {
        return Err(ClientError::Unsupported(
            "the admin console is not available in this process".into(),
        ));
    };
    let mut out = BytesMut::new();
    messages::auth_cleartext(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await?;
    let mut buf = BytesMut::new();
    let body = read_password_message(stream, &mut buf).await?;
    let key = body.strip_suffix(&[0]).unwrap_or(&body);
    let caller = std::str::from_utf8(key)
        .ok()
        .and_then(|key| authority.caller(key))
        .ok_or(ClientError::AuthFailed(user))?;
    out.clear();
    messages::auth_ok(&mut out);
    for (name, value) in [
        ("server_version", show::version().as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        messages::parameter_status(&mut out, name, value);
    }
    messages::ready_for_query(&mut out, tag::STATUS_IDLE);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(caller)
}

/// Answers the logged-in console client until it leaves (or Sluice's grace period
/// ends); says how it ended.
pub async fn serve(
    proxy: &Proxy,
    mut stream: ClientStream,
    caller: ConsoleCaller,
    client: SocketAddr,
) -> String {
    let authority = proxy
        .console
        .get()
        .expect("a console client logged in through it");
    let mut buf = BytesMut::with_capacity(1024);
    let mut out = BytesMut::new();
    // After an error in an extended-protocol exchange, messages up to the Sync are
    // skipped (as Postgres does).
    let mut skipping = false;
    loop {
        loop {
            let frame = match split_frame(&mut buf, MAX_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    let err = ClientError::Protocol(e.to_string());
                    out.clear();
                    err.to_response(&mut out);
                    tell_and_close(&mut stream, &out).await;
                    return err.to_string();
                }
            };
            match frame.tag {
                tag::QUERY if !skipping => {
                    let text = frame.body.strip_suffix(&[0]).unwrap_or(&frame.body);
                    let text = String::from_utf8_lossy(text);
                    let ip = client.ip();
                    let at = Statement {
                        proxy,
                        authority: authority.as_ref(),
                        caller: &caller,
                        ip,
                    };
                    at.query(&text, &mut out).await;
                    messages::ready_for_query(&mut out, tag::STATUS_IDLE);
                }
                tag::SYNC => {
                    skipping = false;
                    messages::ready_for_query(&mut out, tag::STATUS_IDLE);
                }
                tag::TERMINATE => return "client left".to_owned(),
                // Flush, and whatever follows an error until the Sync.
                b'H' => {}
                _ if skipping => {}
                _ => {
                    Refusal::new(
                        "0A000",
                        "the admin console speaks the simple query protocol only",
                    )
                    .write(&mut out);
                    skipping = true;
                }
            }
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return format!("client gone: {e}");
            }
            if let Err(e) = stream.flush().await {
                return format!("client gone: {e}");
            }
            out.clear();
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) => return "client left".to_owned(),
                Ok(_) => {}
                Err(e) => return format!("client gone: {e}"),
            },
            _ = proxy.terminate.cancelled() => {
                let err = ClientError::Terminating("Sluice is shutting down");
                err.to_response(&mut out);
                tell_and_close(&mut stream, &out).await;
                return err.to_string();
            }
        }
    }
}

/// What one Query of a console client is answered with.
struct Statement<'a> {
    proxy: &'a Proxy,
    authority: &'a dyn ConsoleAuthority,
    caller: &'a ConsoleCaller,
    ip: std::net::IpAddr,
}

impl Statement<'_> {
    /// Runs each statement of `text` in order, writing its answer; the first that
    /// fails ends the Query (as in Postgres).
    async fn query(&self, text: &str, out: &mut BytesMut) {
        let statements = statements(text);
        if statements.is_empty() {
            messages::empty_query_response(out);
        }
        for statement in statements {
            if let Err(refusal) = self.one(statement, out).await {
                refusal.write(out);
                return;
            }
        }
    }

    async fn one(&self, statement: &str, out: &mut BytesMut) -> Result<(), Refusal> {
        let command = parse(statement).map_err(|e| Refusal::new(e.sqlstate(), e.message()))?;
        if let Command::Show(what) = command {
            show::table(self.proxy, what).write(out);
            return Ok(());
        }
        if command.writes() && self.caller.role < ConsoleRole::Operator {
            return Err(Refusal::new(
                "42501",
                format!(
                    "permission denied: {} needs an operator or admin key; this key is a viewer's",
                    command.tag()
                ),
            ));
        }
        let tenants = act::targets(self.proxy, command.tenant())?;
        let target = command.tenant().unwrap_or("*");
        self.authority
            .audit(self.caller, self.ip, command.action(), target, statement)
            .await
            .map_err(|e| {
                tracing::error!(action = command.action(), error = %e, "console: audit append failed; the command was not run");
                Refusal::new(
                    "58000",
                    "the audit log cannot record the command, so it was not run",
                )
            })?;
        tracing::info!(key = %self.caller.key_id, command = statement, "console command");
        act::run(self.proxy, &command, &tenants).await?;
        messages::command_complete(out, command.tag());
        Ok(())
    }
}
