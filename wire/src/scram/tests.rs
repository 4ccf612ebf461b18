//! Tests of the SCRAM exchange, on both sides and against RFC 7677.

use super::*;

const RFC_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const RFC_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const RFC_SERVER_FIRST: &str =
    "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const RFC_CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const RFC_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_verifier() -> Verifier {
    let salt = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        "W22ZaJ0SNY7soEsUEjb6gQ==",
    )
    .unwrap();
    Verifier::from_password("pencil", &salt, 4096)
}

/// Runs a whole exchange; returns the server's outcome.
fn exchange(
    client: &mut ScramClient,
    server: &mut ScramServer,
) -> Result<ServerOutcome, ScramError> {
    let server_first = server.handle_client_first(SCRAM_SHA_256, &client.client_first())?;
    let client_final = client.handle_server_first(&server_first)?;
    let outcome = server.handle_client_final(&client_final)?;
    client.handle_server_final(&outcome.server_final)?;
    Ok(outcome)
}

fn password(p: &str) -> ClientCredential {
    ClientCredential::Password(p.to_owned())
}

#[test]
fn rfc7677_vector_server_side() {
    let mut server =
        ScramServer::new(rfc_verifier(), None, false).with_server_nonce(RFC_SERVER_NONCE);
    let first = server
        .handle_client_first(SCRAM_SHA_256, RFC_CLIENT_FIRST.as_bytes())
        .unwrap();
    assert_eq!(first, RFC_SERVER_FIRST.as_bytes());
    let outcome = server
        .handle_client_final(RFC_CLIENT_FINAL.as_bytes())
        .unwrap();
    assert_eq!(outcome.server_final, RFC_SERVER_FINAL.as_bytes());
}

#[test]
fn rfc7677_vector_client_side() {
    let mut client = ScramClient::with_identity(password("pencil"), "user", "rOprNGfwEbeRWgbNEkqO");
    assert_eq!(client.client_first(), RFC_CLIENT_FIRST.as_bytes());
    let fin = client
        .handle_server_first(RFC_SERVER_FIRST.as_bytes())
        .unwrap();
    assert_eq!(fin, RFC_CLIENT_FINAL.as_bytes());
    client
        .handle_server_final(RFC_SERVER_FINAL.as_bytes())
        .unwrap();
}

#[test]
fn client_rejects_a_forged_server_signature() {
    let mut client = ScramClient::with_identity(password("pencil"), "user", "rOprNGfwEbeRWgbNEkqO");
    client
        .handle_server_first(RFC_SERVER_FIRST.as_bytes())
        .unwrap();
    assert_eq!(
        client.handle_server_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        Err(ScramError::ServerSignatureMismatch)
    );
    let mut client = ScramClient::with_identity(password("pencil"), "user", "rOprNGfwEbeRWgbNEkqO");
    client
        .handle_server_first(RFC_SERVER_FIRST.as_bytes())
        .unwrap();
    assert_eq!(
        client.handle_server_final(b"e=invalid-proof"),
        Err(ScramError::ServerError("invalid-proof".into()))
    );
}

#[test]
fn password_round_trip_and_wrong_password() {
    let verifier = Verifier::from_password("s3cret", b"0123456789abcdef", 4096);
    let mut server = ScramServer::new(verifier.clone(), None, false);
    let mut client = ScramClient::new(password("s3cret"));
    let outcome = exchange(&mut client, &mut server).unwrap();
    assert_eq!(outcome.client_key.stored_key(), verifier.stored_key);

    let mut server = ScramServer::new(verifier, None, false);
    let mut client = ScramClient::new(password("wrong"));
    assert_eq!(
        exchange(&mut client, &mut server).unwrap_err(),
        ScramError::AuthenticationFailed
    );
}

#[test]
fn recovered_client_key_logs_into_another_server() {
    let verifier = Verifier::from_password("s3cret", b"salt-salt-salt!!", 4096);
    let mut front = ScramServer::new(verifier.clone(), None, false);
    let outcome = exchange(&mut ScramClient::new(password("s3cret")), &mut front).unwrap();

    // Pass-through, checking the server with its key.
    let mut backend = ScramServer::new(verifier.clone(), None, false);
    let mut client = ScramClient::new(ClientCredential::ClientKey {
        client_key: outcome.client_key.clone(),
        server_key: Some(verifier.server_key),
    });
    exchange(&mut client, &mut backend).unwrap();

    // Pass-through without the server key: the server is not checked.
    let mut backend = ScramServer::new(verifier.clone(), None, false);
    let mut client = ScramClient::new(ClientCredential::ClientKey {
        client_key: outcome.client_key.clone(),
        server_key: None,
    });
    exchange(&mut client, &mut backend).unwrap();

    // A server with another verifier is caught by its signature.
    let other = Verifier::from_password("other", b"salt-salt-salt!!", 4096);
    let mut impostor = ScramServer::new(other, None, false);
    let mut client = ScramClient::new(ClientCredential::ClientKey {
        client_key: outcome.client_key,
        server_key: Some(verifier.server_key),
    });
    assert_eq!(
        exchange(&mut client, &mut impostor).unwrap_err(),
        ScramError::AuthenticationFailed
    );
}

#[test]
fn mock_verifier_always_fails() {
    let secret = [7u8; 32];
    let mock = Verifier::mock(&secret, "ghost", 4096);
    assert_eq!(
        mock,
        Verifier::mock(&secret, "ghost", 4096),
        "deterministic"
    );
    assert_ne!(mock.salt, Verifier::mock(&secret, "other", 4096).salt);
    assert_eq!(mock.salt.len(), 16);
    for pw in ["", "ghost", "password"] {
        let mut server = ScramServer::new(mock.clone(), None, true);
        assert_eq!(
            exchange(&mut ScramClient::new(password(pw)), &mut server).unwrap_err(),
            ScramError::AuthenticationFailed
        );
    }
    // Even a proof that would match is refused when the verifier is a mock.
    let real = Verifier::from_password("pw", b"salty", 4096);
    let mut server = ScramServer::new(real, None, true);
    assert_eq!(
        exchange(&mut ScramClient::new(password("pw")), &mut server).unwrap_err(),
        ScramError::AuthenticationFailed
    );
}

/// Replaces the `r=` value of a client-final-message.
fn tamper(client_final: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(client_final.to_vec())
        .unwrap()
        .replacen(from, to, 1)
        .into_bytes()
}

#[test]
fn tampered_nonce_or_channel_binding_fails() {
    let verifier = Verifier::from_password("pw", b"salty", 4096);

    let mut server = ScramServer::new(verifier.clone(), None, false);
    let mut client = ScramClient::new(password("pw"));
    let server_first = server
        .handle_client_first(SCRAM_SHA_256, &client.client_first())
        .unwrap();
    let fin = client.handle_server_first(&server_first).unwrap();
    let bad = tamper(&fin, ",r=", ",r=X");
    assert!(matches!(
        server.handle_client_final(&bad),
        Err(ScramError::Protocol(_))
    ));
    // The exchange is over after a failure.
    assert!(matches!(
        server.handle_client_final(&fin),
        Err(ScramError::Protocol(_))
    ));

    let mut server = ScramServer::new(verifier, None, false);
    let mut client = ScramClient::new(password("pw"));
    let server_first = server
        .handle_client_first(SCRAM_SHA_256, &client.client_first())
        .unwrap();
    let fin = client.handle_server_first(&server_first).unwrap();
    let bad = tamper(&fin, "c=biws", "c=eSws");
    assert!(matches!(
        server.handle_client_final(&bad),
        Err(ScramError::Protocol(_))
    ));
}

/// Drives a -PLUS exchange by hand, as a client on TLS would.
fn plus_exchange(server_cb: &[u8], client_cb: &[u8]) -> Result<ServerOutcome, ScramError> {
    let verifier = Verifier::from_password("pw", b"salty", 4096);
    let mut server = ScramServer::new(verifier, Some(server_cb.to_vec()), false);
    assert_eq!(server.mechanisms(), [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]);
    let gs2 = "p=tls-server-end-point,,";
    let bare = "n=,r=clientnonce";
    let server_first =
        server.handle_client_first(SCRAM_SHA_256_PLUS, format!("{gs2}{bare}").as_bytes())?;
    let server_first = String::from_utf8(server_first).unwrap();
    let nonce = server_first
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap();
    let cbind = messages::base64_concat(&[gs2.as_bytes(), client_cb]);
    let without_proof = format!("c={cbind},r={nonce}");
    let salted = keys::salted_password("pw", b"salty", 4096);
    let client_key = keys::client_key(&salted);
    let auth = keys::auth_message(bare, &server_first, &without_proof);
    let proof = keys::xor(&client_key, &keys::hmac(&keys::sha256(&client_key), &auth));
    let fin = format!("{without_proof},p={}", messages::base64(&proof));
    server.handle_client_final(fin.as_bytes())
}

#[test]
fn channel_binding_is_checked() {
    plus_exchange(b"certificate hash", b"certificate hash").unwrap();
    assert_eq!(
        plus_exchange(b"certificate hash", b"another hash").unwrap_err(),
        ScramError::Protocol("channel-binding check failed".into())
    );
}

#[test]
fn channel_binding_negotiation_rules() {
    let verifier = Verifier::from_password("pw", b"salty", 4096);
    let server = |tls: bool| ScramServer::new(verifier.clone(), tls.then(|| vec![1, 2, 3]), false);
    assert_eq!(server(false).mechanisms(), [SCRAM_SHA_256]);
    for (tls, mechanism, first) in [
        // Downgrade: the client saw no -PLUS although we advertised it.
        (true, SCRAM_SHA_256, "y,,n=,r=abc"),
        (
            false,
            SCRAM_SHA_256_PLUS,
            "p=tls-server-end-point,,n=,r=abc",
        ),
        (true, SCRAM_SHA_256, "p=tls-server-end-point,,n=,r=abc"),
        (true, SCRAM_SHA_256_PLUS, "n,,n=,r=abc"),
        (true, SCRAM_SHA_256_PLUS, "p=tls-unique,,n=,r=abc"),
        (false, "SCRAM-SHA-1", "n,,n=,r=abc"),
    ] {
        assert!(
            matches!(
                server(tls).handle_client_first(mechanism, first.as_bytes()),
                Err(ScramError::Protocol(_))
            ),
            "{mechanism} {first}"
        );
    }
    // "y" on plaintext is fine: the client is right that we cannot bind.
    server(false)
        .handle_client_first(SCRAM_SHA_256, b"y,,n=,r=abc")
        .unwrap();
    server(true)
        .handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
        .unwrap();
}

#[test]
fn malformed_client_messages_are_protocol_errors() {
    let verifier = Verifier::from_password("pw", b"salty", 4096);
    for first in [
        &b""[..],
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,a=admin,n=,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=a\x01b",
        b"n,,r=abc",
        b"\xff,,n=,r=abc",
    ] {
        let mut server = ScramServer::new(verifier.clone(), None, false);
        assert!(
            matches!(
                server.handle_client_first(SCRAM_SHA_256, first),
                Err(ScramError::Protocol(_))
            ),
            "{first:?}"
        );
    }
    for fin in [
        &b""[..],
        b"c=biws,r=abc",
        b"c=biws,r=abc,p=",
        b"c=biws,r=abc,p=AAAA",
        b"r=abc,c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"c=biws,r=abc,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    ] {
        let mut server = ScramServer::new(verifier.clone(), None, false);
        server
            .handle_client_first(SCRAM_SHA_256, b"n,,n=,r=abc")
            .unwrap();
        assert!(
            matches!(
                server.handle_client_final(fin),
                Err(ScramError::Protocol(_))
            ),
            "{fin:?}"
        );
    }
}

#[test]
fn client_refuses_hostile_server_first() {
    let nonce = "abcdefgh";
    for server_first in [
        "r=abcdefgh,s=c2FsdA==,i=4096".to_owned(), // nonce not extended
        "r=XXXXXXXXserver,s=c2FsdA==,i=4096".to_owned(),
        "r=abcdefghserver,s=c2FsdA==,i=0".to_owned(),
        format!("r=abcdefghserver,s=c2FsdA==,i={}", MAX_ITERATIONS + 1),
        "r=abcdefghserver,s=c2FsdA==,i=-1".to_owned(),
        "r=abcdefghserver,s=,i=4096".to_owned(),
        "r=abcdefghserver,s=!!!,i=4096".to_owned(),
        "m=x,r=abcdefghserver,s=c2FsdA==,i=4096".to_owned(),
        "r=abcdefghserver,i=4096".to_owned(),
        String::new(),
    ] {
        let mut client = ScramClient::with_identity(password("pw"), "", nonce);
        assert!(
            matches!(
                client.handle_server_first(server_first.as_bytes()),
                Err(ScramError::Protocol(_))
            ),
            "{server_first}"
        );
    }
    let mut client = ScramClient::new(password("pw"));
    assert!(client.handle_server_final(b"v=").is_err(), "out of order");
}

#[test]
fn verifier_parses_and_formats_postgres_secrets() {
    let verifier = rfc_verifier();
    let s = verifier.to_postgres_string();
    assert_eq!(Verifier::parse(&s), Ok(verifier.clone()));
    // The RFC 7677 example as Postgres would store it (keys computed from
    // the RFC's password, salt and iteration count).
    assert_eq!(
        s,
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
         WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:\
         wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    );
    let debug = format!("{verifier:?}");
    assert!(
        !debug.contains("stored_key") && !debug.contains("server_key"),
        "{debug}"
    );
    assert_eq!(format!("{:?}", ClientKey([1; 32])), "ClientKey(<redacted>)");

    for bad in [
        "",
        "md5abc",
        "SCRAM-SHA-256$4096:c2FsdA==",
        "SCRAM-SHA-256$x:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$0:c2FsdA==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
        "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
        "SCRAM-SHA-256$4096:$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=",
    ] {
        assert!(Verifier::parse(bad).is_err(), "{bad}");
    }
}
