-- The live power plan: each site's power model (the planner's site file) and every plan made
-- for it, with the agent's report of applying it. Models, plans and reports are JSON the
-- planner and the agent protocol define (wattmesh_domain::planner, wattmesh_proto::plan); the
-- store only keeps them and finds them by site and time.

CREATE TABLE site_power_models (
    site            TEXT PRIMARY KEY REFERENCES sites (name) ON DELETE CASCADE,
    spec_json       TEXT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);

-- One row per plan made (a replan of the same interval is a new row; the newest is in force).
CREATE TABLE power_plans (
    id              TEXT PRIMARY KEY,
    site            TEXT NOT NULL REFERENCES sites (name) ON DELETE CASCADE,
    starts_at_ms    BIGINT NOT NULL,
    ends_at_ms      BIGINT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    interval_json   TEXT NOT NULL,
    directive_json  TEXT NOT NULL,
    report_json     TEXT
);
CREATE INDEX power_plans_by_site ON power_plans (site, created_at_ms);
-- The plans in force are read every reconcile tick: those not ended yet are few, however many
-- a year of intervals leaves behind.
CREATE INDEX power_plans_by_end ON power_plans (ends_at_ms);
