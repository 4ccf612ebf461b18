//! One open, authenticated server connection and the few request/response exchanges
//! Sluice itself runs on it (resets, SETs, the auth query).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::frame::{split_frame, Frame, FrameError};
use wire::messages::{self, ErrorFields};
use wire::startup::CancelKey;

use crate::prepared::PreparedSet;
use crate::stream::ServerStream;
use router::BackendAddr;

/// Largest message Sluice accepts on its own exchanges (not relayed traffic): results
/// of resets, SETs and the auth query are tiny.
const CONTROL_FRAME_LIMIT: usize = 1 << 20;

/// How long Sluice's own exchanges may take before the connection is given up.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("server connection I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("malformed message from server: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol violation by server: {0}")]
    Protocol(String),
    #[error("server did not answer within {0:?}")]
    Timeout(Duration),
}

pub struct ServerConn {
    stream: ServerStream,
    buf: BytesMut,
    /// Where it connects; cancel requests go to the same place.
    pub addr: Arc<BackendAddr>,
    /// ParameterStatus values as the server last reported them.
    pub params: BTreeMap<String, String>,
    /// The server's own BackendKeyData (Sluice gives clients different keys).
    pub cancel_key: Option<CancelKey>,
    pub created: Instant,
    pub last_used: Instant,
    /// When the pool retires it (its lifetime, with jitter), set by the pool.
    pub retire_at: Option<Instant>,
    /// Statements Sluice prepared on it for transaction-mode clients.
    pub prepared: PreparedSet,
    /// Settings Sluice SET that the server does not report (lowercase names), so the
    /// next client can be given its own values or the defaults back.
    pub unreported_settings: BTreeMap<String, String>,
    /// A client ran SET/RESET/DISCARD on it (transaction mode): its settings are not
    /// what Sluice knows, so the next client's sync starts with RESET ALL.
    pub settings_unknown: bool,
    /// Its place in the tenant's `max_server_connections`, freed when it closes.
    pub slot: Option<crate::tenant_servers::ServerSlot>,
    /// Its entry in the process's registry (SHOW SERVERS), removed when it closes.
    pub registered: Option<crate::registry::ServerHandle>,
    /// The pool's generation when it was opened: a RECONNECT makes it older than the
    /// pool's, and it then closes instead of going idle.
    pub generation: u64,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("addr", &self.addr)
            .field("backend_pid", &self.cancel_key.map(|k| k.pid))
            .finish_non_exhaustive()
    }
}

/// What one simple query produced, as far as Sluice cares.
#[derive(Debug, Default)]
pub struct QueryOutcome {
    pub rows: Vec<Vec<Option<Bytes>>>,
    /// The first ErrorResponse, if the query failed.
    pub error: Option<ErrorFields>,
    /// The transaction status from the final ReadyForQuery.
    pub status: u8,
}

impl ServerConn {
    pub(crate) fn new(stream: ServerStream, addr: Arc<BackendAddr>) -> Self {
        let now = Instant::now();
        ServerConn {
            stream,
            buf: BytesMut::with_capacity(1024),
            addr,
            params: BTreeMap::new(),
            cancel_key: None,
            created: now,
            last_used: now,
            retire_at: None,
            prepared: PreparedSet::default(),
            unreported_settings: BTreeMap::new(),
            settings_unknown: false,
            slot: None,
            registered: None,
            generation: 0,
        }
    }

    /// The raw stream, for the relay. Call only at a message boundary with nothing
    /// buffered (see [`ServerConn::buffered`]).
    pub fn stream_mut(&mut self) -> &mut ServerStream {
        &mut self.stream
    }

    /// Lends the connection's read buffer (with any bytes read and not consumed yet)
    /// to a relay that reads the stream itself, so that a buffer is allocated per
    /// connection rather than per lending. The relay gives it back with
    /// [`ServerConn::return_buffer`] before the connection is released.
    pub fn lend_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Takes back the read buffer [`ServerConn::lend_buffer`] lent.
    pub fn return_buffer(&mut self, buf: BytesMut) {
        self.buf = buf;
    }

    /// Bytes read from the server but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn backend_pid(&self) -> Option<i32> {
        self.cancel_key.map(|k| k.pid)
    }

    pub fn is_idle_and_open(&mut self) -> bool {
        self.buf.is_empty() && self.stream.is_idle_and_open()
    }

    pub(crate) async fn send(&mut self, bytes: &[u8]) -> Result<(), ServerError> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// Reads the next whole message.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, ServerError> {
        loop {
            if let Some(frame) = split_frame(&mut self.buf, CONTROL_FRAME_LIMIT)? {
                return Ok(frame);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ServerError::Closed);
            }
        }
    }

    /// Records a ParameterStatus body.
    pub(crate) fn note_parameter(&mut self, body: &[u8]) -> Result<(), ServerError> {
        let (name, value) = messages::parse_parameter_status(body)
            .map_err(|e| ServerError::Protocol(format!("ParameterStatus: {e}")))?;
        self.params.insert(name.to_owned(), value.to_owned());
        Ok(())
    }

    /// Runs `sql` with the simple query protocol and reads up to ReadyForQuery,
    /// recording parameter changes on the way.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryOutcome, ServerError> {
        let mut out = BytesMut::new();
        messages::query(&mut out, sql);
        self.exchange(&out).await
    }

    /// Runs one statement through the extended protocol with text parameters, so values
    /// never need quoting.
    pub async fn extended_query(
        &mut self,
        sql: &str,
        params: &[Option<&[u8]>],
    ) -> Result<QueryOutcome, ServerError> {
        let mut out = BytesMut::new();
        messages::parse(&mut out, "", sql, &[]);
        messages::bind_text(&mut out, "", "", params);
        messages::execute(&mut out, "", 0);
        messages::sync(&mut out);
        self.exchange(&out).await
    }

    async fn exchange(&mut self, request: &[u8]) -> Result<QueryOutcome, ServerError> {
        let work = async {
            self.send(request).await?;
            let mut outcome = QueryOutcome::default();
            loop {
                let frame = self.read_frame().await?;
                match frame.tag {
                    b'Z' => {
                        outcome.status = *frame
                            .body
                            .first()
                            .ok_or_else(|| ServerError::Protocol("empty ReadyForQuery".into()))?;
                        return Ok(outcome);
                    }
                    b'D' => {
                        let row = messages::parse_data_row(&frame.body)
                            .map_err(|e| ServerError::Protocol(format!("DataRow: {e}")))?
                            .into_iter()
                            .map(|v| v.map(|v| frame.body.slice_ref(v)))
                            .collect();
                        outcome.rows.push(row);
                    }
                    b'E' => {
                        let fields = messages::parse_error_fields(&frame.body)
                            .map_err(|e| ServerError::Protocol(format!("ErrorResponse: {e}")))?;
                        outcome.error.get_or_insert(fields);
                    }
                    b'S' => self.note_parameter(&frame.body)?,
                    // RowDescription, CommandComplete, Parse/BindComplete, notices, ...
                    _ => {}
                }
            }
        };
        tokio::time::timeout(CONTROL_TIMEOUT, work)
            .await
            .map_err(|_| ServerError::Timeout(CONTROL_TIMEOUT))?
    }

    /// Ends any transaction, then runs `DISCARD ALL` if asked (which also drops every
    /// prepared statement): what the pool does before a connection goes idle again.
    pub(crate) async fn reset(&mut self, status: u8, discard: bool) -> Result<(), ServerError> {
        if status != b'I' {
            let outcome = self.simple_query("ROLLBACK").await?;
            if let Some(e) = outcome.error {
                return Err(ServerError::Protocol(format!(
                    "ROLLBACK failed: {}",
                    e.message
                )));
            }
        }
        if discard {
            self.prepared.clear();
            self.unreported_settings.clear();
            self.settings_unknown = false;
            let outcome = self.simple_query("DISCARD ALL").await?;
            if let Some(e) = outcome.error {
                return Err(ServerError::Protocol(format!(
                    "DISCARD ALL failed: {}",
                    e.message
                )));
            }
            if outcome.status != b'I' {
                return Err(ServerError::Protocol(
                    "server not idle after DISCARD ALL".into(),
                ));
            }
        }
        Ok(())
    }

    /// Says goodbye politely; errors are irrelevant since the connection is going.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.stream.write_all(&out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }
}
