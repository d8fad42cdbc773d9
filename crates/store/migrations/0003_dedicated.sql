-- Dedicated deployments: a tenant's own replicas, billed per replica-hour, used or not.

ALTER TABLE deployments ADD COLUMN dedicated_to TEXT REFERENCES tenants (name) ON DELETE RESTRICT;

-- Versioned like token prices: the version in force when the replica-time accrued applies.
CREATE TABLE dedicated_prices (
    version            INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment         TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    per_replica_hour   TEXT NOT NULL,
    currency           TEXT NOT NULL,
    effective_from     TEXT NOT NULL,
    effective_from_ms  BIGINT NOT NULL,
    created_at         TEXT NOT NULL
);

-- Replica-seconds a dedicated deployment held, per hour (the hour's start in unix ms). The
-- tenant is kept with the time: a deployment deleted later still appears on its invoice.
CREATE TABLE replica_seconds (
    deployment     TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    hour_start_ms  BIGINT NOT NULL,
    seconds        BIGINT NOT NULL,
    PRIMARY KEY (deployment, hour_start_ms)
);
CREATE INDEX replica_seconds_by_tenant ON replica_seconds (tenant, hour_start_ms);
