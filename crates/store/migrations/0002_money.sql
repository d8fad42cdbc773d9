-- Money: tenants' plans, limits and balances; keys' allow-lists, expiry, class and limits;
-- gateway credentials; the versioned price book; usage events (idempotent by id); the ledger;
-- credit leases held by gateways. Decimals are TEXT (money is never a float); times a
-- program compares are unix milliseconds (BIGINT), times only shown are RFC 3339 TEXT.

ALTER TABLE tenants ADD COLUMN plan TEXT NOT NULL DEFAULT 'pay_as_you_go';
ALTER TABLE tenants ADD COLUMN contact TEXT;
-- Limits as JSON ({"rpm":..,"tpm":..,"concurrency":..}): one shape for tenants and keys.
ALTER TABLE tenants ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE tenants ADD COLUMN balance TEXT NOT NULL DEFAULT '0';

-- JSON array of model names, NULL for every model.
ALTER TABLE api_keys ADD COLUMN models TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
ALTER TABLE api_keys ADD COLUMN expires_at_ms BIGINT;
ALTER TABLE api_keys ADD COLUMN priority TEXT NOT NULL DEFAULT 'interactive';
ALTER TABLE api_keys ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE api_keys ADD COLUMN revoked_at TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_by TEXT;
ALTER TABLE api_keys ADD COLUMN last_used_ms BIGINT;
-- Keys revoked before this migration have only the old flag; a key reads as revoked by its
-- revoked_at, so they get one (their creation time: the revocation's true time is unknown, and
-- without it they would come back to life).
UPDATE api_keys SET revoked_at = created_at WHERE revoked = TRUE AND revoked_at IS NULL;

ALTER TABLE models ADD COLUMN context_tokens BIGINT NOT NULL DEFAULT 2048;

-- One row per gateway credential; rotating replaces the hash.
CREATE TABLE gateways (
    name          TEXT PRIMARY KEY,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at    TEXT NOT NULL,
    rotated_at    TEXT
);

-- Every price ever set; the one in force at time T for (model, tenant) is the row with the
-- greatest effective_from_ms <= T (then the greatest version). tenant '' is the list price.
CREATE TABLE prices (
    version            INTEGER PRIMARY KEY AUTOINCREMENT,
    model              TEXT NOT NULL REFERENCES models (name) ON DELETE RESTRICT,
    tenant             TEXT NOT NULL DEFAULT '',
    input_per_1m       TEXT NOT NULL,
    output_per_1m      TEXT NOT NULL,
    currency           TEXT NOT NULL,
    effective_from     TEXT NOT NULL,
    effective_from_ms  BIGINT NOT NULL,
    created_at         TEXT NOT NULL
);
CREATE INDEX prices_by_model ON prices (model, tenant, effective_from_ms);

-- Every usage event, once: the primary key is what makes ingest idempotent.
CREATE TABLE usage_events (
    id                 TEXT PRIMARY KEY,
    request_id         TEXT NOT NULL,
    gateway            TEXT NOT NULL,
    tenant             TEXT NOT NULL,
    key_id             TEXT NOT NULL,
    model              TEXT NOT NULL,
    deployment         TEXT NOT NULL,
    replica            TEXT NOT NULL,
    site               TEXT NOT NULL,
    region             TEXT NOT NULL,
    priority           TEXT NOT NULL,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    started_at_ms      BIGINT NOT NULL,
    ttft_ms            BIGINT,
    duration_ms        BIGINT NOT NULL,
    status             BIGINT NOT NULL,
    outcome            TEXT NOT NULL,
    -- The price version it was rated at (NULL: no price was set; cost 0) and the cost.
    price_version      BIGINT,
    cost               TEXT NOT NULL,
    ingested_at        TEXT NOT NULL
);
CREATE INDEX usage_by_tenant_time ON usage_events (tenant, started_at_ms);

-- Credits and debits per tenant, each with its source; balance is the running total.
CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    amount      TEXT NOT NULL,
    balance     TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
CREATE INDEX ledger_by_tenant ON ledger (tenant, id);
-- A top-up's reference is taken once: a retried payment is a conflict, not double credit.
CREATE UNIQUE INDEX ledger_top_up_reference ON ledger (tenant, source) WHERE kind = 'top_up';

-- What each gateway was granted of each prepaid tenant's credit, and how much of it usage
-- ingested from that gateway has used. Their difference is credit held by that gateway.
CREATE TABLE leases (
    gateway        TEXT NOT NULL,
    tenant         TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    granted_total  TEXT NOT NULL,
    spent_total    TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (gateway, tenant)
);
