//! The live power plan on the wire: each site's power model, the plan the control plane makes
//! for it every interval, what its agent is told to apply, and what the agent reports back.
//!
//! - `PUT /api/v1/sites/{site}/power-model` (the planner's site file, as JSON) →
//!   [`PowerModel`]; `GET` reads it.
//! - `POST /api/v1/sites/{site}/plans` plans the site now → [`PowerPlan`];
//!   `GET /api/v1/sites/{site}/plans?limit=N` → `[PowerPlan]`, newest first, each with the
//!   agent's report once it came.
//! - `PUT /api/v1/sites/{site}/prices` ([`PriceImport`]: a market's price series) →
//!   [`PriceImportReceipt`]; `GET /api/v1/sites/{site}/prices?from=&to=` → [`SitePrices`]. The
//!   planner prices what they cover and uses the site's fixed tariff elsewhere.
//! - Agents: their desired state carries the site's current [`PlanDirective`];
//!   `POST /api/v1/agent/plans/{id}/report` ([`PlanReport`]) says what was applied and what the
//!   miners' own telemetry and the meter confirmed. A plan no report confirms is shown as
//!   unconfirmed, never assumed applied. A demand-response event comes first: a plan is
//!   applied once the event is over.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wattmesh_domain::planner::{IntervalPlan, SiteSpec};

/// A site's power model as stored: the planner's site file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PowerModel {
    pub site: String,
    /// The planner's site file (see the README's "Planner site file").
    #[schema(value_type = Object)]
    pub spec: SiteSpec,
    pub updated_at: String,
}

/// A site's electricity prices as its market published them: one per interval from `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceImport {
    /// The first interval's start, RFC 3339.
    pub start: String,
    /// 5 or 15.
    pub interval_minutes: u32,
    /// USD/MWh per interval: negative prices are valid, above the $5,000 offer cap is not.
    pub usd_per_mwh: Vec<f64>,
}

/// What an import stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PriceImportReceipt {
    pub site: String,
    pub imported: usize,
    /// Stored points the import overlapped and replaced.
    pub replaced: u64,
    pub from: String,
    pub to: String,
    /// The plan made at once with the new prices, if the site has a power model.
    pub replanned: Option<String>,
}

/// One stored price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SitePrice {
    pub starts_at: String,
    pub interval_minutes: u32,
    pub usd_per_mwh: f64,
}

/// A site's imported prices over a range, and the tariff that applies where there are none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SitePrices {
    pub site: String,
    /// USD/MWh, decimal text.
    pub tariff_usd_per_mwh: String,
    pub prices: Vec<SitePrice>,
}

/// One plan made for one site and interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PowerPlan {
    pub id: String,
    pub site: String,
    pub starts_at: String,
    pub starts_at_ms: i64,
    pub ends_at: String,
    pub ends_at_ms: i64,
    pub created_at: String,
    /// The planner's decision and its money lines for the interval.
    #[schema(value_type = Object)]
    pub interval: IntervalPlan,
    /// What the agent was told to apply (whole miners).
    pub directive: PlanDirective,
    /// The agent's report; absent until it came.
    pub report: Option<PlanReport>,
}

/// What a site's agent is told to apply for one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanDirective {
    pub plan_id: String,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    /// In the power model's order; the agent's miners fill the groups in the order its miner
    /// list gives them.
    pub asic_groups: Vec<AsicTarget>,
    pub gpu_groups: Vec<GpuTarget>,
    /// The load the meter should show once the plan is in force, kW.
    pub expected_meter_kw: f64,
}

impl PlanDirective {
    /// Miners in every ASIC group (saturating: a directive is data).
    pub fn units(&self) -> u32 {
        self.asic_groups
            .iter()
            .fold(0, |n: u32, g| n.saturating_add(g.units))
    }

    /// Miners the plan has hashing, in every group.
    pub fn units_hashing(&self) -> u32 {
        self.asic_groups
            .iter()
            .fold(0, |n: u32, g| n.saturating_add(g.units_hashing))
    }
}

/// One ASIC group's target: its first `units_hashing` miners hash at `watts_per_unit`, the
/// rest sleep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AsicTarget {
    pub name: String,
    pub units: u32,
    pub units_hashing: u32,
    /// The power target of each hashing unit, W.
    pub watts_per_unit: f64,
}

/// One GPU group's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuTarget {
    pub name: String,
    pub nodes: u32,
    /// Nodes the plan keeps on (may be fractional: the group's draw is what counts).
    pub nodes_on: f64,
    /// The group's planned draw, kW (IT).
    pub kw: f64,
    /// One node's draw at full load, kW: agents cap their GPUs at the planned fraction of it.
    #[serde(default)]
    pub node_max_kw: f64,
}

/// How applying a plan went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PlanOutcome {
    /// Every miner confirmed its target by its own telemetry.
    Applied,
    /// Some miners did not confirm, or a part of the plan cannot be applied on this site.
    Partial,
    /// Nothing could be applied (e.g. the power model does not match the agent's miners).
    Failed,
}

/// `POST /api/v1/agent/plans/{id}/report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanReport {
    pub outcome: PlanOutcome,
    /// Unix ms the agent finished applying.
    pub at_ms: i64,
    /// Miners that confirmed hashing at their target.
    pub miners_hashing: u32,
    /// Miners that confirmed asleep.
    pub miners_asleep: u32,
    /// Miners that did not confirm (in `problems`).
    pub miners_unconfirmed: u32,
    /// The meter after applying, kW; absent when it did not answer.
    #[serde(default)]
    pub meter_kw: Option<f64>,
    /// What could not be applied or confirmed, one line each (at most a few per cause).
    #[serde(default)]
    pub problems: Vec<String>,
    /// The power limit set on each of the agent's GPUs, and what the driver enforces.
    #[serde(default)]
    pub gpu_caps: Vec<GpuCapReport>,
}

/// One GPU's power cap under a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuCapReport {
    pub index: u32,
    pub name: String,
    /// The limit asked for, W.
    pub limit_w: f64,
    /// The limit the driver enforces after, W; absent when it could not be read.
    pub enforced_w: Option<f64>,
}
