//! Power on the wire: what an agent reads of its site's meter and miners, and grid
//! demand-response (DR) events — how an operator asks for one, what agents are told to do,
//! and the record each event keeps.
//!
//! - `POST /api/v1/sites/{site}/dr-events` ([`DrEventSpec`]) → [`DrEvent`].
//! - `GET /api/v1/dr-events?site=S` → `[DrEvent]`; `GET /api/v1/dr-events/{id}` →
//!   [`DrEventReport`] (the event, its metered load every few seconds, when each miner
//!   acknowledged, whether the target was held); `POST /api/v1/dr-events/{id}/cancel`.
//! - Agents: their heartbeat carries a [`PowerSample`]; their desired state carries the site's
//!   current or next [`DrDirective`]; `POST /api/v1/agent/dr-events/{id}/acks` ([`DrAcks`])
//!   tells when each miner acknowledged and confirmed.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One reading of a site's power, taken by its agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PowerSample {
    /// Unix milliseconds when the reading was taken.
    pub at_ms: i64,
    /// The site meter's total active power, kW; absent when the meter did not answer.
    #[serde(default)]
    pub meter_kw: Option<f64>,
    /// The meter's imported-energy register, kWh.
    #[serde(default)]
    pub meter_kwh: Option<f64>,
    /// Why the meter could not be read.
    #[serde(default)]
    pub meter_error: Option<String>,
    pub miners: MinerCounts,
}

/// The site's miners as their own telemetry shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinerCounts {
    pub total: u32,
    pub hashing: u32,
    pub asleep: u32,
    /// Did not answer this round.
    pub unreachable: u32,
    /// Their summed draw as they report it, kW.
    pub kw: f64,
    /// Their summed 5 s hashrate, TH/s.
    pub ths: f64,
}

/// `POST /api/v1/sites/{site}/dr-events`: bring the site's load down to `down_to_kw`, or by
/// `reduce_by_pct` percent of its metered load now, from `starts_at` for `duration_minutes`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrEventSpec {
    /// The metered load to stay at or below, kW. Exactly one of this and `reduce_by_pct`.
    #[serde(default)]
    pub down_to_kw: Option<f64>,
    /// Percent (0–100] of the site's last metered load to shed.
    #[serde(default)]
    pub reduce_by_pct: Option<f64>,
    /// RFC 3339; absent means now. A start more than a minute in the past is refused.
    #[serde(default)]
    pub starts_at: Option<String>,
    /// 1 to 1,440 (a day).
    pub duration_minutes: u32,
    /// Free text for the record, e.g. the grid operator's dispatch id.
    #[serde(default)]
    pub note: Option<String>,
}

/// Where an event is in its life, at the time it is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DrStatus {
    Scheduled,
    Active,
    Ended,
    Cancelled,
}

/// A demand-response event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrEvent {
    pub id: String,
    pub site: String,
    /// The load to stay at or below, kW (from `down_to_kw`, or the baseline less the percent).
    pub target_kw: f64,
    pub reduce_by_pct: Option<f64>,
    /// The site's last metered load when the event was made, kW.
    pub baseline_kw: Option<f64>,
    /// Mining is always shed first; inference too when the site's load other than its
    /// miners was above the target when the event was made (its interactive traffic then
    /// moves to other regions and its batch traffic waits).
    pub shed_inference: bool,
    pub starts_at: String,
    pub starts_at_ms: i64,
    pub ends_at: String,
    pub ends_at_ms: i64,
    pub note: Option<String>,
    pub created_at: String,
    /// Who made it: `admin` for the operator's token.
    pub created_by: String,
    pub cancelled_at: Option<String>,
    pub status: DrStatus,
}

/// `GET /api/v1/dr-events/{id}`: an event and what happened during it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrEventReport {
    pub event: DrEvent,
    pub outcome: DrOutcome,
    /// The site's power samples from a minute before the start to the end (or now).
    pub samples: Vec<PowerSample>,
    /// One row per miner, as the agent reported it.
    pub miners: Vec<MinerAck>,
}

/// How an event went, computed from its samples and acknowledgements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrOutcome {
    /// Seconds from the start to the first metered sample at or below the target.
    pub target_reached_after_s: Option<f64>,
    /// Whether every sample from then to the end stayed at or below the target (within the
    /// meter's tolerance); absent until the event is over.
    pub held: Option<bool>,
    /// The highest metered load after the target was first reached, kW.
    pub max_kw_after_reached: Option<f64>,
    pub miners_total: u32,
    pub miners_acknowledged: u32,
    /// Seconds from the start to the last miner's acknowledgement, once all acknowledged.
    pub all_acknowledged_after_s: Option<f64>,
}

/// What a site's agent is told to do about the site's current or next DR event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrDirective {
    pub event_id: String,
    pub target_kw: f64,
    /// Unix ms: put the miners to sleep from here...
    pub starts_at_ms: i64,
    /// ...until here, then wake them in staggered waves.
    pub ends_at_ms: i64,
    pub shed_inference: bool,
}

/// `POST /api/v1/agent/dr-events/{id}/acks`: how the site's miners answered the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DrAcks {
    pub miners: Vec<MinerAck>,
}

/// One miner's answer to a DR event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MinerAck {
    /// `IP:PORT` of its API.
    pub miner: String,
    /// Unix ms its reply to the sleep command arrived.
    pub acknowledged_ms: Option<i64>,
    /// Unix ms its own telemetry first showed it asleep.
    pub confirmed_ms: Option<i64>,
    pub error: Option<String>,
}
