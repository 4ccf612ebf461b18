-- 0004_usage: what each tenant used, per hour (docs/usage.md).
--
-- One row per (tenant, hour, writer): a writer is one Sluice process (a random id made
-- at its start), and its row holds that process's running totals for the hour, not a
-- delta. A flush writes the totals again, each column taking the larger of the stored
-- and the written value, so a flush repeated (a retry after a lost answer, a spooled
-- one replayed after a restart) or arriving after a newer one changes nothing: nothing
-- is counted twice, and no sequence numbers are needed. A restarted process is a new
-- writer with rows of its own; the API sums the writers of an hour.
--
-- `replica` is the process's `[fleet] id` ('' outside a fleet): processes of one
-- replica follow each other in time (restarts), processes of different replicas run
-- side by side, which is what the peak of server connections needs to tell apart.
--
-- No foreign key to `tenants`: a deleted tenant's usage stays to be billed.
CREATE TABLE usage_hours (
    tenant text NOT NULL,
    -- The hour's first instant (UTC, whole hour).
    hour timestamptz NOT NULL CHECK (extract(epoch FROM hour) % 3600 = 0),
    writer text NOT NULL,
    replica text NOT NULL DEFAULT '',
    -- Logged-in client time, in microseconds.
    connection_us bigint NOT NULL DEFAULT 0 CHECK (connection_us >= 0),
    -- Logins accepted.
    client_connections bigint NOT NULL DEFAULT 0 CHECK (client_connections >= 0),
    queries bigint NOT NULL DEFAULT 0 CHECK (queries >= 0),
    transactions bigint NOT NULL DEFAULT 0 CHECK (transactions >= 0),
    bytes_from_clients bigint NOT NULL DEFAULT 0 CHECK (bytes_from_clients >= 0),
    bytes_to_clients bigint NOT NULL DEFAULT 0 CHECK (bytes_to_clients >= 0),
    -- The most server connections this writer had open to the tenant's backend at once.
    peak_server_connections bigint NOT NULL DEFAULT 0 CHECK (peak_server_connections >= 0),
    -- The latest sample of the size of the backend's databases this writer took in the
    -- hour, and when.
    disk_bytes bigint CHECK (disk_bytes >= 0),
    disk_sampled_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, hour, writer)
);
