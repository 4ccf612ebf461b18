-- 0002_hostnames: tenants' own host names, each with its own certificate.
--
-- A client whose TLS server name is exactly `hostname` reaches `tenant_id` and is served
-- `cert_pem`. A host name belongs to one tenant at most (the primary key), and goes
-- with its tenant. The private key is kept only AES-256-GCM sealed (like the
-- `secrets` table, the name `tenant/<id>/hostnames/<hostname>` as associated data); the
-- subject, DNS names, expiry and fingerprint are the certificate's, read when it was
-- stored, for listings.
CREATE TABLE hostnames (
    hostname text PRIMARY KEY
        CONSTRAINT hostnames_dns_name CHECK (
            length(hostname) <= 253
            AND hostname ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    cert_pem text NOT NULL,
    key_nonce bytea NOT NULL CONSTRAINT hostnames_nonce_96_bits CHECK (octet_length(key_nonce) = 12),
    key_ciphertext bytea NOT NULL,
    subject text NOT NULL,
    sans text[] NOT NULL,
    not_after timestamptz NOT NULL,
    fingerprint text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX hostnames_tenant ON hostnames (tenant_id, hostname);

-- Every process's catalog sync hears of a change (payload: the tenant id) and reads the
-- tenant again, host names included.
CREATE TRIGGER hostnames_notify_catalog
    AFTER INSERT OR UPDATE OR DELETE ON hostnames
    FOR EACH ROW EXECUTE FUNCTION sluice_notify_catalog();
