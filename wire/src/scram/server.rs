//! The server side of a SCRAM-SHA-256 exchange (Sluice authenticating a
//! client).

use subtle::ConstantTimeEq;

use super::error::ScramError;
use super::keys::{self, ClientKey};
use super::mechanism::{SCRAM_SHA_256, SCRAM_SHA_256_PLUS, TLS_SERVER_END_POINT};
use super::messages::{self, CbindFlag};
use super::verifier::Verifier;

/// Mechanisms advertised on a TLS connection, preferred first.
const WITH_TLS: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];
/// Mechanisms advertised on a plaintext connection.
const WITHOUT_TLS: &[&str] = &[SCRAM_SHA_256];

/// Server side of one exchange.
pub struct ScramServer {
    verifier: Verifier,
    /// tls-server-end-point data when the client is on TLS.
    channel_binding: Option<Vec<u8>>,
    /// The verifier is fake (unknown role): fail after doing all the work.
    is_mock: bool,
    /// Fixed server nonce for test vectors; `None` draws a random one.
    fixed_nonce: Option<String>,
    state: State,
}

/// Where the exchange is.
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal(Exchange),
    /// Done, successfully or not; any further message is refused.
    Finished,
}

/// What the client-final-message is checked against.
struct Exchange {
    /// Expected `c=` value: base64(gs2 header + channel-binding data).
    channel_binding: String,
    /// Client nonce followed by server nonce.
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// The result of a successful exchange.
#[derive(Debug)]
pub struct ServerOutcome {
    /// server-final-message for AuthenticationSASLFinal.
    pub server_final: Vec<u8>,
    /// The client's key, recovered from its proof, for pass-through login to
    /// a backend that stores the same verifier.
    pub client_key: ClientKey,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer")
            .field("tls", &self.channel_binding.is_some())
            .finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Starts an exchange against `verifier`.
    ///
    /// `channel_binding` is the tls-server-end-point data when the client is
    /// on TLS (then -PLUS is advertised and a client sending the `y` flag is
    /// refused: it saw no -PLUS, so someone stripped it), `None` on plaintext.
    /// `is_mock` marks a [`Verifier::mock`], which never succeeds.
    pub fn new(verifier: Verifier, channel_binding: Option<Vec<u8>>, is_mock: bool) -> Self {
        Self {
            verifier,
            channel_binding,
            is_mock,
            fixed_nonce: None,
            state: State::AwaitingClientFirst,
        }
    }

    /// Uses `nonce` instead of a random server nonce (RFC test vectors).
    #[cfg(test)]
    pub(crate) fn with_server_nonce(mut self, nonce: &str) -> Self {
        self.fixed_nonce = Some(nonce.to_owned());
        self
    }

    /// The mechanisms to advertise in AuthenticationSASL.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            WITH_TLS
        } else {
            WITHOUT_TLS
        }
    }

    /// Handles SASLInitialResponse (mechanism name and client-first-message)
    /// and returns the server-first-message.
    pub fn handle_client_first(
        &mut self,
        mechanism: &str,
        client_first: &[u8],
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::AwaitingClientFirst) {
            return Err(ScramError::protocol("unexpected client-first-message"));
        }
        self.state = State::Finished;
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS if self.channel_binding.is_some() => true,
            _ => {
                return Err(ScramError::protocol(
                    "client selected an invalid SASL authentication mechanism",
                ))
            }
        };
        let first = messages::parse_client_first(client_first)?;
        let cb_data: &[u8] = match (first.cbind, plus) {
            (CbindFlag::Required(TLS_SERVER_END_POINT), true) => {
                self.channel_binding.as_deref().unwrap_or_default()
            }
            (CbindFlag::Required(_), true) => {
                return Err(ScramError::protocol("unsupported channel-binding type"))
            }
            (CbindFlag::Required(_), false) => {
                return Err(ScramError::protocol(
                    "client selected SCRAM-SHA-256 without channel binding, \
                     but the message includes channel-binding data",
                ))
            }
            (_, true) => {
                return Err(ScramError::protocol(
                    "client selected SCRAM-SHA-256-PLUS without channel-binding data",
                ))
            }
            (CbindFlag::ClientOnly, false) if self.channel_binding.is_some() => {
                // RFC 5802 §6: we advertised -PLUS, so a client that thinks we
                // do not support channel binding saw a tampered mechanism list.
                return Err(ScramError::protocol(
                    "client supports channel binding but thinks the server does not, \
                     although this server does",
                ));
            }
            (_, false) => &[],
        };
        let server_nonce = self.fixed_nonce.clone().unwrap_or_else(messages::nonce);
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            messages::base64(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::AwaitingClientFinal(Exchange {
            channel_binding: messages::base64_concat(&[first.gs2_header.as_bytes(), cb_data]),
            nonce,
            client_first_bare: first.bare.to_owned(),
            server_first: server_first.clone(),
        });
        Ok(server_first.into_bytes())
    }

    /// Handles the client-final-message; on success returns the
    /// server-final-message and the recovered ClientKey.
    pub fn handle_client_final(
        &mut self,
        client_final: &[u8],
    ) -> Result<ServerOutcome, ScramError> {
        let State::AwaitingClientFinal(exchange) =
            std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(ScramError::protocol("unexpected client-final-message"));
        };
        let fin = messages::parse_client_final(client_final)?;
        if fin.channel_binding != exchange.channel_binding {
            return Err(ScramError::protocol("channel-binding check failed"));
        }
        if fin.nonce != exchange.nonce {
            return Err(ScramError::protocol("nonce does not match"));
        }
        let auth_message = keys::auth_message(
            &exchange.client_first_bare,
            &exchange.server_first,
            fin.without_proof,
        );
        let client_signature = keys::hmac(&self.verifier.stored_key, &auth_message);
        let client_key = keys::xor(&fin.proof, &client_signature);
        let matches: bool = keys::sha256(&client_key)
            .ct_eq(&self.verifier.stored_key)
            .into();
        // A mock verifier has done exactly the same work by now.
        if !matches || self.is_mock {
            return Err(ScramError::AuthenticationFailed);
        }
        let server_signature = keys::hmac(&self.verifier.server_key, &auth_message);
        Ok(ServerOutcome {
            server_final: format!("v={}", messages::base64(&server_signature)).into_bytes(),
            client_key: ClientKey(client_key),
        })
    }
}
