-- Each site's electricity prices as its market publishes them (imported from a CSV of 5- or
-- 15-minute intervals): the live planner prices the intervals they cover and uses the site's
-- fixed tariff elsewhere. An import replaces the points it overlaps. Prices are DOUBLE
-- PRECISION like the other market estimates (0004): fed to a linear program, never billed.

CREATE TABLE site_prices (
    site            TEXT NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    starts_at_ms    BIGINT NOT NULL,
    interval_s      BIGINT NOT NULL,
    usd_per_mwh     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (site, starts_at_ms)
);
