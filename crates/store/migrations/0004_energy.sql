-- Energy: what each site's meter and miners read, the grid demand-response (DR) events the
-- operator schedules, and how each event's miners answered. Times are unix milliseconds
-- (BIGINT): every one of them is compared by a program (windows, overlaps, ages). Power and
-- energy are DOUBLE PRECISION, measurements rather than money: PostgreSQL's REAL is only 4
-- bytes (a kWh register of millions would lose its last digits), while SQLite reads either
-- name as its 8-byte REAL. The store never holds NaN or infinity. Counts are BIGINT like
-- every other integer here, so both databases read them back as 64-bit.

-- One row per reading an agent sends with its heartbeat. The key is what makes a retried
-- heartbeat harmless: a second sample of the site at the same instant is ignored. A DR
-- event's report reads the site's samples over its window, hence the key's order.
CREATE TABLE power_samples (
    site                TEXT NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    at_ms               BIGINT NOT NULL,
    -- NULL when the meter did not answer; meter_error then says why.
    meter_kw            DOUBLE PRECISION,
    meter_kwh           DOUBLE PRECISION,
    meter_error         TEXT,
    miners_total        BIGINT NOT NULL,
    miners_hashing      BIGINT NOT NULL,
    miners_asleep       BIGINT NOT NULL,
    miners_unreachable  BIGINT NOT NULL,
    miners_kw           DOUBLE PRECISION NOT NULL,
    miners_ths          DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site, at_ms)
);

-- Every DR event, cancelled ones included: they are the record of what the grid asked and
-- what the operator did. A cancelled event keeps its window and gains cancelled_at_ms; the
-- store refuses a second live event over the same time of one site, so an agent is never
-- told two targets at once.
CREATE TABLE dr_events (
    id               TEXT PRIMARY KEY,
    site             TEXT NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    target_kw        DOUBLE PRECISION NOT NULL,
    -- What the operator asked, when it was a percent, and the load it was taken of.
    reduce_by_pct    DOUBLE PRECISION,
    baseline_kw      DOUBLE PRECISION,
    -- BOOLEAN as in 0001: SQLite keeps it as 0 or 1, PostgreSQL as its own bool.
    shed_inference   BOOLEAN NOT NULL,
    -- The window is half-open: [starts_at_ms, ends_at_ms).
    starts_at_ms     BIGINT NOT NULL,
    ends_at_ms       BIGINT NOT NULL,
    note             TEXT,
    created_at_ms    BIGINT NOT NULL,
    created_by       TEXT NOT NULL,
    cancelled_at_ms  BIGINT
);
-- The overlap check and a site's listing read a site's events by start.
CREATE INDEX dr_events_by_site_start ON dr_events (site, starts_at_ms);
-- What agents are told: events not over yet, found by end.
CREATE INDEX dr_events_by_end ON dr_events (ends_at_ms);

-- One row per miner of an event's site, as its agent last reported it: a later report of the
-- same miner replaces the row, so an agent may resend as its miners' confirmations arrive.
CREATE TABLE dr_acks (
    event_id         TEXT NOT NULL REFERENCES dr_events (id) ON DELETE CASCADE,
    -- The miner's API address, IP:PORT.
    miner            TEXT NOT NULL,
    acknowledged_ms  BIGINT,
    confirmed_ms     BIGINT,
    error            TEXT,
    PRIMARY KEY (event_id, miner)
);
