//! The client side of a SCRAM-SHA-256 exchange (Sluice logging into a
//! backend).

use subtle::ConstantTimeEq;

use super::error::ScramError;
use super::keys::{self, ClientKey};
use super::mechanism::MAX_ITERATIONS;
use super::messages;

/// The gs2 header Sluice sends: no channel binding, no authzid. Sluice's
/// backend connections rely on the TLS setup they were configured with.
const GS2_HEADER: &str = "n,,";

/// What Sluice proves its identity with.
#[derive(Clone)]
pub enum ClientCredential {
    /// The role's password.
    Password(String),
    /// A ClientKey recovered from a client's own SCRAM exchange
    /// (pass-through), and the ServerKey if known, to check the server.
    ClientKey {
        /// The key that proves knowledge of the password.
        client_key: ClientKey,
        /// Lets the client verify the server's signature; without it the
        /// server-final-message is accepted unchecked.
        server_key: Option<[u8; 32]>,
    },
}

impl std::fmt::Debug for ClientCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCredential::Password(_) => f.write_str("Password(<redacted>)"),
            ClientCredential::ClientKey { server_key, .. } => f
                .debug_struct("ClientKey")
                .field("server_key_known", &server_key.is_some())
                .finish_non_exhaustive(),
        }
    }
}

/// Client side of one exchange.
#[derive(Debug)]
pub struct ScramClient {
    credential: ClientCredential,
    /// Always empty outside tests, as libpq sends it.
    username: String,
    client_nonce: String,
    state: State,
}

#[derive(Debug)]
enum State {
    AwaitingServerFirst,
    /// The expected server signature, when the server key is known.
    AwaitingServerFinal(Option<[u8; 32]>),
    /// Done, successfully or not; any further message is refused.
    Finished,
}

impl ScramClient {
    /// Starts an exchange with mechanism SCRAM-SHA-256 and no channel
    /// binding (`n,,`).
    pub fn new(credential: ClientCredential) -> Self {
        Self {
            credential,
            username: String::new(),
            client_nonce: messages::nonce(),
            state: State::AwaitingServerFirst,
        }
    }

    /// Uses a fixed username and nonce (RFC test vectors).
    #[cfg(test)]
    pub(crate) fn with_identity(credential: ClientCredential, username: &str, nonce: &str) -> Self {
        Self {
            username: username.to_owned(),
            client_nonce: nonce.to_owned(),
            ..Self::new(credential)
        }
    }

    /// The client-first-message, with an empty username as libpq sends
    /// (the server takes the role from the startup packet).
    pub fn client_first(&self) -> Vec<u8> {
        format!("{GS2_HEADER}{}", self.client_first_bare()).into_bytes()
    }

    fn client_first_bare(&self) -> String {
        format!("n={},r={}", self.username, self.client_nonce)
    }

    /// Given the server-first-message, returns the client-final-message.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::AwaitingServerFirst) {
            return Err(ScramError::protocol("unexpected server-first-message"));
        }
        self.state = State::Finished;
        let first = messages::parse_server_first(server_first)?;
        let server_first = std::str::from_utf8(server_first)
            .map_err(|_| ScramError::protocol("message is not valid UTF-8"))?;
        if first.nonce.len() <= self.client_nonce.len()
            || !first.nonce.starts_with(&self.client_nonce)
        {
            return Err(ScramError::protocol("server nonce does not extend ours"));
        }
        if !(1..=MAX_ITERATIONS).contains(&first.iterations) {
            return Err(ScramError::protocol(format!(
                "iteration count {} is outside 1..={MAX_ITERATIONS}",
                first.iterations
            )));
        }
        let (client_key, server_key) = match &self.credential {
            ClientCredential::Password(password) => {
                let salted = keys::salted_password(password, &first.salt, first.iterations);
                (keys::client_key(&salted), Some(keys::server_key(&salted)))
            }
            ClientCredential::ClientKey {
                client_key,
                server_key,
            } => (client_key.0, *server_key),
        };
        let without_proof = format!(
            "c={},r={}",
            messages::base64(GS2_HEADER.as_bytes()),
            first.nonce
        );
        let bare = self.client_first_bare();
        let auth_message = keys::auth_message(&bare, server_first, &without_proof);
        let stored_key = keys::sha256(&client_key);
        let proof = keys::xor(&client_key, &keys::hmac(&stored_key, &auth_message));
        self.state = State::AwaitingServerFinal(server_key.map(|k| keys::hmac(&k, &auth_message)));
        Ok(format!("{without_proof},p={}", messages::base64(&proof)).into_bytes())
    }

    /// Verifies the server-final-message's signature when the server key is
    /// known (from the password, or given); a mismatch is an error.
    pub fn handle_server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let State::AwaitingServerFinal(expected) =
            std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(ScramError::protocol("unexpected server-final-message"));
        };
        let signature = messages::parse_server_final(server_final)?;
        match expected {
            Some(expected) if !bool::from(expected.ct_eq(&signature)) => {
                Err(ScramError::ServerSignatureMismatch)
            }
            _ => Ok(()),
        }
    }
}
