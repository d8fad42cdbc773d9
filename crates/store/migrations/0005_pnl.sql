-- The P&L's inputs that no other table holds: the Bitcoin market over time, and what each
-- demand-response event pays. Money is decimal TEXT as in 0002 (added in Rust, never in SQL);
-- difficulty, subsidy and fees are estimates the mining model reads as floats.

-- Every market snapshot, in force from effective_from_ms until the next one: the P&L values
-- BTC mined at the snapshot in force when it was mined, so snapshots are never edited.
CREATE TABLE market_snapshots (
    version             INTEGER PRIMARY KEY AUTOINCREMENT,
    btc_usd             TEXT NOT NULL,
    difficulty          DOUBLE PRECISION NOT NULL,
    subsidy_btc         DOUBLE PRECISION NOT NULL,
    fees_btc_per_block  DOUBLE PRECISION NOT NULL,
    effective_from      TEXT NOT NULL,
    effective_from_ms   BIGINT NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE INDEX market_snapshots_by_time ON market_snapshots (effective_from_ms);

-- What a DR event pays, set apart from the event: grid programs often settle the rate after
-- the event, and setting it again replaces it. NULL: that part pays nothing.
CREATE TABLE dr_terms (
    event_id                TEXT PRIMARY KEY REFERENCES dr_events (id) ON DELETE CASCADE,
    pay_usd_per_mwh         TEXT,
    peak_charge_usd_per_kw  TEXT
);
