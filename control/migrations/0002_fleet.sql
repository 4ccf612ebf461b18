-- The replicas of a fleet: every `sluice serve` with a `[fleet]` section registers here
-- and renews its row (heartbeat_at) every heartbeat; a row whose heartbeat is older than
-- the fleet's expiry is a dead replica and is deleted by whoever notices first.
CREATE TABLE replicas (
    instance bigint PRIMARY KEY,
    id text NOT NULL,
    slot smallint NOT NULL UNIQUE CHECK (slot BETWEEN 0 AND 255),
    internal_addr text NOT NULL,
    proxy_addrs text[] NOT NULL,
    admin_addr text NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining boolean NOT NULL DEFAULT false
);

-- API keys made or revoked through one replica reach the others at once: their catalog
-- sync (LISTEN sluice_catalog) re-reads the keys. The payload names only the table.
CREATE FUNCTION sluice_notify_api_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('sluice_catalog', json_build_object('table', 'api_keys', 'op', TG_OP)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_catalog
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_notify_api_keys();
