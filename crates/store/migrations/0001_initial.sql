-- The initial wattmesh schema. Plain, portable SQL (TEXT, BIGINT, BOOLEAN, foreign keys with
-- ON DELETE actions) so a PostgreSQL implementation can run the same migrations later.
-- Names are the primary keys: the operator API addresses every object by name.
-- Wall times are RFC 3339 TEXT, for display only; freshness is judged in process.

CREATE TABLE regions (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

CREATE TABLE sites (
    name            TEXT PRIMARY KEY,
    region          TEXT NOT NULL REFERENCES regions (name) ON DELETE RESTRICT,
    -- Decimal as text: money is never a float.
    power_price     TEXT NOT NULL,
    last_heartbeat  TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE nodes (
    name          TEXT PRIMARY KEY,
    site          TEXT NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    memory_bytes  BIGINT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE models (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    artifact      TEXT NOT NULL,
    memory_bytes  BIGINT NOT NULL,
    created_at    TEXT NOT NULL
);

CREATE TABLE deployments (
    name        TEXT PRIMARY KEY,
    model       TEXT NOT NULL REFERENCES models (name) ON DELETE RESTRICT,
    replicas    BIGINT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE replicas (
    id          TEXT PRIMARY KEY,
    deployment  TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,
    node        TEXT NOT NULL REFERENCES nodes (name) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    endpoint    TEXT,
    message     TEXT,
    created_at  TEXT NOT NULL,
    -- The scheduler never puts two replicas of one deployment on one node; the schema makes a
    -- racing double insert fail instead of running twice.
    UNIQUE (deployment, node)
);

CREATE TABLE tenants (
    name        TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL
);

CREATE TABLE api_keys (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    name           TEXT,
    prefix         TEXT NOT NULL,
    secret_sha256  TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL,
    revoked        BOOLEAN NOT NULL DEFAULT FALSE
);

-- One agent per site; re-registering replaces the token.
CREATE TABLE agents (
    site          TEXT PRIMARY KEY REFERENCES sites (name) ON DELETE CASCADE,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL
);

-- Hashes of the control plane's own tokens (admin, agent bootstrap).
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- Monotonic versions of what watchers long-poll (a site's desired state, the gateway
-- config), kept across restarts so a watcher never sees a version go backwards.
CREATE TABLE versions (
    scope    TEXT PRIMARY KEY,
    version  BIGINT NOT NULL
);
