use std::time::Duration;

use router::TenantLabels;

use wire::startup::LONG_SECRET_LEN;

use super::*;

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn target(port: u16) -> CancelTarget {
    CancelTarget {
        addr: Arc::new(BackendAddr::from_host("/tmp", port)),
        key: CancelKey { pid: 7, secret: 9 },
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const HERE: &str = "127.0.0.1";

/// The protocol 3.0 key of a client registered with one.
fn short(key: ClientCancelKey) -> CancelKey {
    match key {
        ClientCancelKey::Short(key) => key,
        ClientCancelKey::Long(_) => panic!("a long key: {key:?}"),
    }
}

/// What `decide` says, dropping any forward at once (as if it was sent).
fn outcome(registry: &CancelRegistry, key: ClientCancelKey, at: Instant) -> CancelOutcome {
    registry.decide(key, ip(HERE), at).outcome
}

#[test]
fn only_the_exact_key_of_a_running_request_is_forwarded() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(None, &acme());
    let now = Instant::now();
    assert_eq!(outcome(&registry, handle.key, now), CancelOutcome::Idle);
    assert!(!handle.set_target(Some(target(5432))));
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::Idle,
        "holding a connection with nothing running: nothing to cancel"
    );
    assert!(!handle.set_target(Some(target(5432))), "and nothing marked");
    handle.running(true);
    let decision = registry.decide(handle.key, ip(HERE), now);
    assert_eq!(decision.outcome, CancelOutcome::Forwarded);
    assert_eq!(decision.tenant, Some(acme()));
    assert_eq!(decision.forward.as_ref().unwrap().target.key.pid, 7);
    drop(decision);
    assert!(
        handle.set_target(Some(target(5432))),
        "the connection a cancel was sent to is reported when the key moves on"
    );
    assert!(!handle.set_target(None), "and only once");
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::Idle,
        "a client holding no connection has nothing to cancel"
    );
    let forged = ClientCancelKey::Short(CancelKey {
        pid: handle.key.pid(),
        secret: short(handle.key).secret.wrapping_add(1),
    });
    let decision = registry.decide(forged, ip(HERE), now);
    assert_eq!(
        (decision.outcome, decision.tenant),
        (CancelOutcome::UnknownKey, None)
    );
    let key = handle.key;
    drop(handle);
    assert_eq!(
        outcome(&registry, key, now),
        CancelOutcome::UnknownKey,
        "stale key cancels nothing"
    );
    assert!(registry.is_empty());
}

#[test]
fn a_request_that_ended_is_not_cancelled() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(None, &acme());
    assert!(!handle.set_target(Some(target(5432))));
    handle.running(true);
    handle.running(false);
    assert_eq!(
        outcome(&registry, handle.key, Instant::now()),
        CancelOutcome::Idle
    );
    assert!(!handle.set_target(None), "nothing was marked");
}

#[test]
fn one_cancel_at_a_time_per_server_connection() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register(None, &acme());
    let now = Instant::now();
    assert!(!handle.set_target(Some(target(5432))));
    handle.running(true);
    let first = registry.decide(handle.key, ip(HERE), now);
    assert!(first.forward.is_some());
    assert_eq!(outcome(&registry, handle.key, now), CancelOutcome::InFlight);
    assert_eq!(outcome(&registry, handle.key, now), CancelOutcome::InFlight);
    drop(first);
    // Sent: the request may still run (a cancel can land too early), so another
    // cancel may go.
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::Forwarded
    );

    // A cancel still on its way to the old connection does not hold up the new one.
    let old = registry.decide(handle.key, ip(HERE), now);
    assert!(old.forward.is_some());
    assert!(handle.set_target(Some(target(5433))));
    handle.running(true);
    let new = registry.decide(handle.key, ip(HERE), now);
    assert_eq!(new.forward.as_ref().unwrap().target.addr, target(5433).addr);
    drop(old);
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::InFlight,
        "the old forward ending frees nothing of the new connection's"
    );
    drop(new);
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::Forwarded
    );
}

#[test]
fn the_key_rate_counts_only_cancels_that_would_be_forwarded() {
    let rates = CancelRates {
        per_key: Some(1),
        per_ip: None,
    };
    let registry = Arc::new(CancelRegistry::new(rates));
    let handle = registry.register(None, &acme());
    let other = registry.register(None, &acme());
    let t0 = Instant::now();
    assert!(!handle.set_target(Some(target(5432))));
    for _ in 0..10 {
        assert_eq!(outcome(&registry, handle.key, t0), CancelOutcome::Idle);
    }
    handle.running(true);
    let in_flight = registry.decide(handle.key, ip(HERE), t0);
    for _ in 0..10 {
        assert_eq!(outcome(&registry, handle.key, t0), CancelOutcome::InFlight);
    }
    drop(in_flight);
    // A burst of two, then one per second.
    assert_eq!(outcome(&registry, handle.key, t0), CancelOutcome::Forwarded);
    assert_eq!(
        outcome(&registry, handle.key, t0),
        CancelOutcome::RateLimited
    );
    assert!(handle.set_target(Some(target(5433))));
    handle.running(true);
    assert_eq!(
        outcome(&registry, handle.key, t0),
        CancelOutcome::RateLimited,
        "the rate is the key's, wherever it points"
    );
    let later = t0 + Duration::from_secs(1);
    assert_eq!(
        outcome(&registry, handle.key, later),
        CancelOutcome::Forwarded
    );
    assert_eq!(
        outcome(&registry, handle.key, later),
        CancelOutcome::RateLimited
    );
    // Another client's key has its own bucket.
    assert!(!other.set_target(Some(target(5434))));
    other.running(true);
    assert_eq!(outcome(&registry, other.key, t0), CancelOutcome::Forwarded);
}

#[test]
fn the_address_rate_comes_first_and_counts_every_request() {
    let rates = CancelRates {
        per_key: None,
        per_ip: Some(1),
    };
    let registry = Arc::new(CancelRegistry::new(rates));
    let handle = registry.register(None, &acme());
    assert!(!handle.set_target(Some(target(5432))));
    handle.running(true);
    let t0 = Instant::now();
    let forged = ClientCancelKey::Short(CancelKey { pid: 1, secret: 2 });
    let from = |addr: &str, key| registry.decide(key, ip(addr), t0);
    assert_eq!(from("10.0.0.1", forged).outcome, CancelOutcome::UnknownKey);
    assert_eq!(from("10.0.0.1", forged).outcome, CancelOutcome::UnknownKey);
    let limited = from("10.0.0.1", handle.key);
    assert_eq!(
        (limited.outcome, limited.tenant),
        (CancelOutcome::RateLimited, Some(acme())),
        "forged keys used up the address's bucket; the tenant is still known"
    );
    assert!(
        !handle.set_target(Some(target(5432))),
        "a cancel dropped for its rate marks nothing"
    );
    handle.running(true);
    assert_eq!(
        from("10.0.0.2", handle.key).outcome,
        CancelOutcome::Forwarded
    );
    // IPv6: one bucket per /64.
    assert_eq!(
        from("2001:db8::1", forged).outcome,
        CancelOutcome::UnknownKey
    );
    assert_eq!(
        from("2001:db8::2", forged).outcome,
        CancelOutcome::UnknownKey
    );
    assert_eq!(
        from("2001:db8::3", forged).outcome,
        CancelOutcome::RateLimited
    );
}

#[test]
fn clients_sharing_a_backend_pid_keep_their_own_keys() {
    // Two tenants' backends may both have pid 4242: each client's key still reaches
    // only its own server connection, and only with its own secret.
    let registry = Arc::new(CancelRegistry::default());
    let target = |port| CancelTarget {
        addr: Arc::new(BackendAddr::from_host("/tmp", port)),
        key: CancelKey {
            pid: 4242,
            secret: 1,
        },
    };
    let globex = TenantId::parse("globex").unwrap();
    let a = registry.register(Some(4242), &acme());
    let b = registry.register(Some(4242), &globex);
    assert_eq!((a.key.pid(), b.key.pid()), (4242, 4242));
    assert_ne!(a.key, b.key);
    assert!(!a.set_target(Some(target(5432))));
    assert!(!b.set_target(Some(target(5433))));
    a.running(true);
    b.running(true);
    assert_eq!(registry.len(), 2);
    let resolved = |key| {
        let decision = registry.decide(key, ip(HERE), Instant::now());
        decision.forward.as_ref().map(|f| f.target.addr.clone())
    };
    assert_eq!(resolved(a.key), Some(target(5432).addr));
    assert_eq!(resolved(b.key), Some(target(5433).addr));
    let forged = ClientCancelKey::Short(CancelKey {
        pid: 4242,
        secret: short(a.key).secret.wrapping_add(1),
    });
    if forged != b.key {
        assert!(resolved(forged).is_none(), "the pid alone cancels nothing");
    }
    let b_key = b.key;
    drop(a);
    assert_eq!(resolved(b_key), Some(target(5433).addr), "b outlives a");
    drop(b);
    assert!(registry.is_empty());
}

#[tokio::test]
async fn carried_out_cancels_are_counted() {
    // A "backend" that takes the cancel and hangs up, as Postgres does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = listener.accept().await.unwrap();
        let mut packet = [0u8; 16];
        s.read_exact(&mut packet).await.unwrap();
        packet
    });
    let registry = Arc::new(CancelRegistry::default());
    let rejections = Rejections::new(Arc::new(TenantLabels::new(10)));
    let handle = registry.register(None, &acme());
    let live = CancelTarget {
        addr: Arc::new(BackendAddr::from_host("127.0.0.1", port)),
        key: CancelKey {
            pid: 11,
            secret: 12,
        },
    };
    assert!(!handle.set_target(Some(live)));
    handle.running(true);
    let here = ip(HERE);
    let carried = crate::fleet::carry_out(None, &registry, &rejections, handle.key, here).await;
    assert_eq!(carried, CancelOutcome::Forwarded);
    let packet = backend.await.unwrap();
    assert_eq!(
        &packet[8..],
        &[0, 0, 0, 11, 0, 0, 0, 12],
        "the backend's own key"
    );
    let forged = ClientCancelKey::Short(CancelKey { pid: 1, secret: 1 });
    let carried = crate::fleet::carry_out(None, &registry, &rejections, forged, here).await;
    assert_eq!(carried, CancelOutcome::UnknownKey);
    // Nothing listens there any more.
    assert!(handle.set_target(Some(CancelTarget {
        addr: Arc::new(BackendAddr::from_host("/nonexistent", port)),
        key: CancelKey {
            pid: 11,
            secret: 12
        },
    })));
    handle.running(true);
    let carried = crate::fleet::carry_out(None, &registry, &rejections, handle.key, here).await;
    assert_eq!(carried, CancelOutcome::Failed);
    let counted: Vec<(String, &str, u64)> = rejections
        .cancels()
        .into_iter()
        .map(|(t, o, n)| (t.to_string(), o.as_str(), n))
        .collect();
    assert_eq!(
        counted,
        vec![
            ("_none".into(), "unknown_key", 1),
            ("acme".into(), "forwarded", 1),
            ("acme".into(), "failed", 1),
        ]
    );
}

#[test]
fn protocol_3_2_clients_get_32_byte_keys_that_name_this_process() {
    let registry = Arc::new(CancelRegistry::default());
    let handle = registry.register_for(None, &acme(), true);
    let ClientCancelKey::Long(long) = handle.key else {
        panic!("a 3.0 key for a 3.2 client: {:?}", handle.key)
    };
    let other = registry.register_for(None, &acme(), true);
    assert_ne!(handle.key, other.key);
    assert!(!handle.set_target(Some(target(5432))));
    handle.running(true);
    let now = Instant::now();
    assert_eq!(
        outcome(&registry, handle.key, now),
        CancelOutcome::Forwarded
    );
    // Any byte wrong, or the same bytes cut to a 3.0 key: nobody's.
    for i in 0..LONG_SECRET_LEN {
        let mut forged = long;
        forged.secret[i] ^= 1;
        assert_eq!(
            outcome(&registry, ClientCancelKey::Long(forged), now),
            CancelOutcome::UnknownKey,
            "byte {i}"
        );
    }
    let cut = ClientCancelKey::Short(CancelKey {
        pid: long.pid,
        secret: i32::from_be_bytes([
            long.secret[0],
            long.secret[1],
            long.secret[2],
            long.secret[3],
        ]),
    });
    assert_eq!(outcome(&registry, cut, now), CancelOutcome::UnknownKey);
    // Outside a fleet the key names this process, with no slot.
    let own = registry.own_secret;
    let origin = wire::fleet::long_key_origin(&own, &long).expect("tagged by this process");
    assert_eq!((origin.slot, origin.instance), (None, registry.instance()));
}

#[test]
fn in_a_fleet_a_long_key_names_the_slot_and_a_moved_key_is_registered_again() {
    let tag = Arc::new(FleetTag::new(b"a fleet secret of 32 bytes, or so".to_vec()));
    tag.set_slot(Some(7));
    let old = Arc::new(CancelRegistry::default().in_fleet(tag.clone()));
    let handle = old.register_for(Some(99), &acme(), true);
    let ClientCancelKey::Long(long) = handle.key else {
        panic!("{:?}", handle.key)
    };
    let origin = wire::fleet::long_key_origin(&tag.secret, &long).expect("the fleet's tag");
    assert_eq!((origin.slot, origin.instance), (Some(7), old.instance()));
    assert_eq!(long.pid, 99);
    // The client moves: the new process registers the very key.
    let key = handle.key;
    drop(handle);
    let new = Arc::new(CancelRegistry::default().in_fleet(tag));
    assert_ne!(new.instance(), old.instance());
    let moved = new.register_key(key, &acme());
    assert_eq!(moved.key, key);
    assert!(new.knows(&key) && !old.knows(&key));
    // Taken already (a collision): a fresh key of the same kind.
    let again = new.register_key(key, &acme());
    assert!(matches!(again.key, ClientCancelKey::Long(_)) && again.key != key);
}
