-- 0001_control: the control store's first schema.
--
-- Applied by `admin_api::store::Store::migrate` inside one transaction, which also records
-- it in schema_migrations. Never edit a migration once released: add the next one.

-- Tenants. The id is a DNS label because it becomes the first label of the SNI name
-- (`<id>.<sni_suffix>`); the database refuses anything else, whatever the caller checked.
-- `version` is bumped by every writer, for optimistic concurrency and for the catalog sync
-- to tell a stale notification from a fresh one.
CREATE TABLE tenants (
    id text PRIMARY KEY
        CONSTRAINT tenants_id_dns_label CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    plan text,
    status text NOT NULL DEFAULT 'provisioning'
        CONSTRAINT tenants_status_known
        CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'deleting')),
    suspended_reason text,
    backend jsonb NOT NULL CHECK (jsonb_typeof(backend) = 'object'),
    pool jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(pool) = 'object'),
    limits jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(limits) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    version bigint NOT NULL DEFAULT 1
);

-- Login roles of a tenant's backend. Only SCRAM verifiers are kept: a password is shown
-- once when created or rotated and never stored; the CHECK makes a plaintext password (or
-- an md5 hash) impossible to store by mistake.
CREATE TABLE roles (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name text NOT NULL,
    scram_verifier text NOT NULL
        CONSTRAINT roles_scram_only CHECK (scram_verifier LIKE 'SCRAM-SHA-256$%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz,
    PRIMARY KEY (tenant_id, name)
);

-- API keys (`sk_<id>_<secret>`): the visible 8-hex id and the SHA-256 of the whole key.
CREATE TABLE api_keys (
    id text PRIMARY KEY CONSTRAINT api_keys_id_hex CHECK (id ~ '^[0-9a-f]{8}$'),
    hash bytea NOT NULL CONSTRAINT api_keys_hash_sha256 CHECK (octet_length(hash) = 32),
    role text NOT NULL CONSTRAINT api_keys_role_known CHECK (role IN ('viewer', 'operator', 'admin')),
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Provisioning jobs, a table queue: workers claim with FOR UPDATE SKIP LOCKED and record
-- each idempotent step in steps_done, so a job resumes where a killed worker left it.
-- tenant_id has no foreign key: a delete job outlives its tenant's row.
CREATE TABLE jobs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    tenant_id text,
    state text NOT NULL DEFAULT 'queued'
        CONSTRAINT jobs_state_known CHECK (state IN ('queued', 'running', 'succeeded', 'failed')),
    steps_done text[] NOT NULL DEFAULT '{}',
    attempts int NOT NULL DEFAULT 0,
    error text,
    run_after timestamptz NOT NULL DEFAULT now(),
    locked_by text,
    locked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- What a worker's claim query scans: unfinished jobs by due time.
CREATE INDEX jobs_runnable ON jobs (run_after) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);

-- `Idempotency-Key` answers, per API key: the same key and body get the stored answer,
-- the same key with another body (request_hash differs) gets 422. status and body are
-- NULL while the first request is still being handled.
CREATE TABLE idempotency_keys (
    key text NOT NULL,
    key_id text NOT NULL,
    request_hash bytea NOT NULL,
    status int,
    body jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, key_id)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- The audit log, append-only and hash-chained:
--   hash = sha256(prev_hash || canonical_json({action, actor, at, details, id, source_ip, target}))
-- with `at` as RFC 3339 UTC with microseconds; prev_hash of the first event is 32 zero
-- bytes. See admin-api/src/store/audit.rs for the exact rule.
CREATE TABLE audit_events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text,
    source_ip text,
    action text NOT NULL,
    target text,
    details jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(details) = 'object'),
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL
);
CREATE INDEX audit_events_target ON audit_events (target, id);
CREATE INDEX audit_events_action ON audit_events (action, id);
CREATE INDEX audit_events_at ON audit_events (at);

-- Secrets (backend admin credentials), AES-256-GCM encrypted with a key file that never
-- enters the database.
CREATE TABLE secrets (
    name text PRIMARY KEY,
    nonce bytea NOT NULL CONSTRAINT secrets_nonce_96_bits CHECK (octet_length(nonce) = 12),
    ciphertext bytea NOT NULL
);

-- Catalog changes for every Sluice process's catalog sync (LISTEN sluice_catalog).
-- The payload names what changed, never its contents (NOTIFY payloads are capped at 8000
-- bytes and visible to every listener): {"table", "op", "id" (the tenant id), "role"
-- (roles only)}. Listeners re-read the tenant. Notifications are sent at commit, so a
-- rolled-back change notifies nobody.
CREATE FUNCTION sluice_notify_catalog() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb;
    previous jsonb;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := to_jsonb(OLD);
    ELSE
        changed := to_jsonb(NEW);
    END IF;
    PERFORM pg_notify('sluice_catalog', json_build_object(
        'table', TG_TABLE_NAME,
        'op', TG_OP,
        'id', COALESCE(changed ->> 'tenant_id', changed ->> 'id'),
        'role', changed ->> 'name')::text);
    -- A key change is a delete of the old key as far as listeners are concerned.
    IF TG_OP = 'UPDATE' THEN
        previous := to_jsonb(OLD);
        IF COALESCE(previous ->> 'tenant_id', previous ->> 'id') IS DISTINCT FROM
               COALESCE(changed ->> 'tenant_id', changed ->> 'id')
           OR (previous ->> 'name') IS DISTINCT FROM (changed ->> 'name') THEN
            PERFORM pg_notify('sluice_catalog', json_build_object(
                'table', TG_TABLE_NAME,
                'op', 'DELETE',
                'id', COALESCE(previous ->> 'tenant_id', previous ->> 'id'),
                'role', previous ->> 'name')::text);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify_catalog
    AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION sluice_notify_catalog();

CREATE TRIGGER roles_notify_catalog
    AFTER INSERT OR UPDATE OR DELETE ON roles
    FOR EACH ROW EXECUTE FUNCTION sluice_notify_catalog();
