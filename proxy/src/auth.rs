//! Client authentication: SCRAM-SHA-256 (with -PLUS channel binding on TLS) against
//! the role's verifier, or md5 for roles whose secret is an md5 hash. The outcome is
//! the credential Sluice uses to log into the backend as that role.

use bytes::BytesMut;
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wire::frame::split_frame;
use wire::messages::{self, tag};
use wire::scram::{ScramError, ScramServer, Verifier};

use crate::error::ClientError;
use crate::secrets::RoleSecret;
use crate::stream::ClientStream;
use pooler::ServerCredential;

/// Authentication messages are small; anything bigger is not a client we want.
const AUTH_FRAME_LIMIT: usize = 8192;

/// Iterations of the fake verifier for unknown roles: Postgres' default, so the
/// unknown-role path costs what a real one does.
const MOCK_ITERATIONS: u32 = 4096;

/// Per-process secret that makes fake salts for unknown roles stable within a run
/// (the same unknown name always gets the same salt, as a real role would).
pub struct MockSecret(pub [u8; 32]);

impl MockSecret {
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        MockSecret(secret)
    }
}

impl std::fmt::Debug for MockSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockSecret(..)")
    }
}

/// Authenticates `role` on `stream`. `secret` is `None` for roles that cannot log in:
/// they go through a SCRAM exchange against a fake verifier and fail exactly like a
/// wrong password.
///
/// When the client's password does not match, `second_look` is called once: it reads
/// the role's secret again, if it may have changed on the backend since `secret` was
/// read (`SecretCache::reread`, which also puts it in the cache). An md5 answer is then
/// checked against a changed md5 secret: the md5 salt is Sluice's own, so the same
/// answer can be. A SCRAM proof cannot: it is bound to the salt and iteration count
/// sent in server-first, taken from `secret`, and a new password comes with a new
/// salt. That attempt fails; the next one meets the new verifier.
pub async fn authenticate(
    stream: &mut ClientStream,
    role: &str,
    secret: Option<RoleSecret>,
    channel_binding: Option<&[u8]>,
    mock: &MockSecret,
    second_look: impl AsyncFnOnce() -> Option<RoleSecret>,
) -> Result<ServerCredential, ClientError> {
    let channel_binding = channel_binding.filter(|_| stream.is_tls());
    let (verifier, is_mock) = match secret {
        Some(RoleSecret::Md5(stored)) => return md5(stream, role, &stored, second_look).await,
        Some(RoleSecret::Scram(verifier)) => (verifier, false),
        None => (Verifier::mock(&mock.0, role, MOCK_ITERATIONS), true),
    };
    match scram(stream, role, verifier, is_mock, channel_binding).await {
        Err(ClientError::AuthFailed(role)) => {
            // Only so that the next attempt meets the current secret.
            second_look().await;
            Err(ClientError::AuthFailed(role))
        }
        other => other,
    }
}

async fn scram(
    stream: &mut ClientStream,
    role: &str,
    verifier: Verifier,
    is_mock: bool,
    channel_binding: Option<&[u8]>,
) -> Result<ServerCredential, ClientError> {
    let server_key = verifier.server_key;
    let mut server = ScramServer::new(verifier, channel_binding.map(<[u8]>::to_vec), is_mock);
    let mut out = BytesMut::new();
    let mut inbuf = BytesMut::new();
    messages::auth_sasl(&mut out, server.mechanisms());
    send(stream, &mut out).await?;

    let body = read_password_message(stream, &mut inbuf).await?;
    let (mechanism, client_first) = messages::parse_sasl_initial_response(&body)
        .map_err(|e| ClientError::Protocol(format!("SASLInitialResponse: {e}")))?;
    let server_first = server
        .handle_client_first(mechanism, client_first)
        .map_err(|e| scram_error(e, role))?;
    messages::auth_sasl_continue(&mut out, &server_first);
    send(stream, &mut out).await?;

    let client_final = read_password_message(stream, &mut inbuf).await?;
    nothing_after_the_last(&inbuf)?;
    let outcome = server
        .handle_client_final(&client_final)
        .map_err(|e| scram_error(e, role))?;
    messages::auth_sasl_final(&mut out, &outcome.server_final);
    messages::auth_ok(&mut out);
    send(stream, &mut out).await?;
    Ok(ServerCredential::ScramClientKey {
        client_key: outcome.client_key,
        server_key,
    })
}

fn scram_error(e: ScramError, role: &str) -> ClientError {
    match e {
        ScramError::AuthenticationFailed => ClientError::AuthFailed(role.to_owned()),
        other => ClientError::Protocol(format!("SCRAM: {other}")),
    }
}

async fn md5(
    stream: &mut ClientStream,
    role: &str,
    stored: &str,
    second_look: impl AsyncFnOnce() -> Option<RoleSecret>,
) -> Result<ServerCredential, ClientError> {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = BytesMut::new();
    messages::auth_md5(&mut out, salt);
    send(stream, &mut out).await?;
    let mut inbuf = BytesMut::new();
    let body = read_password_message(stream, &mut inbuf).await?;
    nothing_after_the_last(&inbuf)?;
    let answer = body.strip_suffix(&[0]).unwrap_or(&body);
    let matches = |stored: &str| {
        let expected = wire::md5::md5_response(stored, salt);
        bool::from(answer.ct_eq(expected.as_bytes()))
    };
    let stored = if matches(stored) {
        stored.to_owned()
    } else {
        match second_look().await {
            Some(RoleSecret::Md5(changed)) if changed != stored && matches(&changed) => changed,
            _ => return Err(ClientError::AuthFailed(role.to_owned())),
        }
    };
    messages::auth_ok(&mut out);
    send(stream, &mut out).await?;
    Ok(ServerCredential::Md5Hash(stored))
}

async fn send(stream: &mut ClientStream, out: &mut BytesMut) -> Result<(), ClientError> {
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(())
}

/// Reads one PasswordMessage-family ('p') message; anything else ends the exchange
/// with 08P01 as soon as its first byte is in: a typed message of another kind, or an
/// untyped startup-phase packet (a second StartupMessage or an SSLRequest sent in the
/// middle of SCRAM, whose first byte is the high byte of its length, 0). Such a packet
/// never gets as far as being read whole, so it cannot hold the login until its
/// timeout, let alone start another one.
pub(crate) async fn read_password_message(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, ClientError> {
    loop {
        if let Some(&first) = buf.first() {
            if first != tag::PASSWORD_MESSAGE && first != tag::TERMINATE {
                return Err(out_of_phase(first));
            }
        }
        match split_frame(buf, AUTH_FRAME_LIMIT) {
            Ok(Some(frame)) if frame.tag == tag::PASSWORD_MESSAGE => return Ok(frame.body),
            Ok(Some(frame)) if frame.tag == tag::TERMINATE => {
                return Err(ClientError::Protocol(
                    "client ended the authentication".into(),
                ))
            }
            Ok(Some(frame)) => return Err(out_of_phase(frame.tag)),
            Ok(None) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(ClientError::Protocol(
                "client closed during authentication".into(),
            ));
        }
    }
}

/// The error for a message that has no place in the authentication exchange, named
/// by its first byte.
fn out_of_phase(first: u8) -> ClientError {
    ClientError::Protocol(match first {
        0 => "expected a password message, got a startup packet".to_owned(),
        b' '..=b'~' => format!("expected a password message, got {:?}", first as char),
        other => format!("expected a password message, got byte 0x{other:02x}"),
    })
}

/// After the client's last authentication message nothing may follow before Sluice
/// has answered it: bytes already there are out of phase (08P01), not a query to keep.
fn nothing_after_the_last(buf: &BytesMut) -> Result<(), ClientError> {
    match buf.first() {
        None => Ok(()),
        Some(&first) => Err(ClientError::Protocol(match first {
            0 => "unexpected startup packet after the authentication response".to_owned(),
            _ => "unexpected data after the authentication response".to_owned(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Feeds `bytes` to [`read_password_message`] over a loopback TCP connection whose
    /// client keeps it open, and returns what it made of them.
    async fn read_after(bytes: &[u8]) -> Result<bytes::Bytes, ClientError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        client.write_all(bytes).await.unwrap();
        let mut stream = ClientStream::Plain(server);
        let mut buf = BytesMut::new();
        // The client stays open: only the bytes can end the read, not an EOF.
        let result = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            read_password_message(&mut stream, &mut buf),
        )
        .await
        .expect("read_password_message waited for more instead of refusing");
        drop(client);
        result
    }

    fn protocol_message(result: Result<bytes::Bytes, ClientError>) -> String {
        match result {
            Err(ClientError::Protocol(message)) => message,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_startup_packet_or_ssl_request_mid_scram_is_refused_at_its_first_byte() {
        let mut startup = BytesMut::new();
        wire::startup::encode_startup(&[("user", "postgres"), ("database", "x")], &mut startup);
        let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        for bytes in [&startup[..], &ssl_request[..], &ssl_request[..1]] {
            let message = protocol_message(read_after(bytes).await);
            assert_eq!(message, "expected a password message, got a startup packet");
        }
        let err = ClientError::Protocol(String::new());
        assert_eq!(err.sqlstate_and_message().0, "08P01");
    }

    #[tokio::test]
    async fn other_typed_messages_are_refused_and_password_messages_read() {
        let message = protocol_message(read_after(b"Q\0\0\0\x0dselect 1\0").await);
        assert_eq!(message, "expected a password message, got 'Q'");
        let message = protocol_message(read_after(&[0xff]).await);
        assert_eq!(message, "expected a password message, got byte 0xff");
        let body = read_after(b"p\0\0\0\x08abc\0").await.unwrap();
        assert_eq!(&body[..], b"abc\0");
    }

    #[test]
    fn bytes_after_the_last_message_are_out_of_phase() {
        assert!(nothing_after_the_last(&BytesMut::new()).is_ok());
        assert!(nothing_after_the_last(&BytesMut::from(&b"Q"[..])).is_err());
        assert!(nothing_after_the_last(&BytesMut::from(&[0u8, 0, 0, 8][..])).is_err());
    }
}
