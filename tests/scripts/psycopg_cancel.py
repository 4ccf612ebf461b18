"""Cancels a running query through Sluice with psycopg (its bundled libpq 18).

Usage: psycopg_cancel.py CONNINFO MAX_PROTOCOL_VERSION ROUNDS
(the password comes from PGPASSWORD). Each round connects with
max_protocol_version as given, runs `select pg_sleep(30)`, and once it runs sends
`conn.cancel_safe()` (libpq's PQcancelCreate: inside TLS when the connection is),
again every 2 s if the query still runs. Prints one JSON line:
{"libpq": ..., "protocol": ..., "rounds": [{"sqlstate", "seconds", "cancels"}]}
where `seconds` runs from the first cancel to the query's error.
"""

import json
import sys
import threading
import time

import psycopg


def one_round(conninfo, version):
    conn = psycopg.connect(conninfo + f" max_protocol_version={version}", autocommit=True)
    protocol = conn.pgconn.full_protocol_version
    outcome = {}

    def sleep():
        try:
            conn.execute("select pg_sleep(30)")
            outcome["sqlstate"] = None
        except psycopg.Error as e:
            outcome["sqlstate"] = e.sqlstate
        outcome["ended"] = time.monotonic()

    runner = threading.Thread(target=sleep)
    runner.start()
    # Until the backend runs the query, a cancel has nothing to cancel.
    time.sleep(1.0)
    first = time.monotonic()
    cancels = 0
    while runner.is_alive() and time.monotonic() - first < 20:
        conn.cancel_safe(timeout=10)
        cancels += 1
        runner.join(2.0)
    runner.join()
    conn.close()
    return protocol, {
        "sqlstate": outcome.get("sqlstate"),
        "seconds": outcome["ended"] - first,
        "cancels": cancels,
    }


def main():
    conninfo, version, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    results = []
    protocol = None
    for _ in range(rounds):
        protocol, result = one_round(conninfo, version)
        results.append(result)
    print(json.dumps({"libpq": psycopg.pq.version(), "protocol": protocol, "rounds": results}))


if __name__ == "__main__":
    main()
