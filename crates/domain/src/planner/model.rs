//! The planner's inputs: a site as a file states it ([`SiteSpec`], plain serde structs with
//! `deny_unknown_fields`), the checked [`Site`] the planner runs on, and the [`Timeline`] of
//! per-interval inputs (price, hashprice, demand, DR calls, coincident-peak odds).
//!
//! Config in two stages (STYLE.md): every number is checked once, here, with an error that
//! names the field, so the linear program never sees a NaN, a zero interconnect or a PUE
//! below 1 and never has to guess.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::PlanError;
use crate::market::{
    BitcoinMarket, IntervalLength, NetworkSpec, OFFER_CAP_USD_PER_MWH, PRICE_FLOOR_USD_PER_MWH,
    PriceSeries,
};
use crate::mining::{AsicModel, asic_model, break_even_usd_per_mwh};

/// Segments of each ASIC curve unless the site says otherwise: four keep the program small and
/// the piecewise-linear revenue within 0.3 % of the curve.
pub const DEFAULT_CURVE_SEGMENTS: usize = 4;

/// The most segments a curve may have: more buys nothing but a bigger program.
pub const MAX_CURVE_SEGMENTS: usize = 32;

// === the site file ===

/// A site as its file states it (TOML, read by the caller).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    pub name: String,
    /// The grid interconnect, kW at the meter.
    pub interconnect_kw: f64,
    /// Facility power over IT power (cooling, conversion): the meter sees IT load × PUE.
    #[serde(default = "one")]
    pub pue: f64,
    /// Local time minus UTC, hours: for the demand profile and coincident-peak windows.
    #[serde(default)]
    pub utc_offset_hours: i32,
    #[serde(default)]
    pub asic_groups: Vec<AsicGroupSpec>,
    #[serde(default)]
    pub gpu_groups: Vec<GpuGroupSpec>,
    /// What a million tokens sells for (from the price book).
    #[serde(default)]
    pub inference: InferencePrices,
    /// Inference demand the gateways see for this site.
    #[serde(default)]
    pub demand: DemandSpec,
    /// The Bitcoin market, when the caller has no series of its own.
    #[serde(default)]
    pub bitcoin: Option<NetworkSpec>,
    #[serde(default)]
    pub coincident_peak: Option<CoincidentPeakSpec>,
    #[serde(default)]
    pub dr_events: Vec<DrEventSpec>,
    /// Segments of each ASIC group's piecewise-linear hashrate curve.
    #[serde(default = "default_segments")]
    pub curve_segments: usize,
    #[serde(default)]
    pub baselines: BaselineSpec,
}

fn one() -> f64 {
    1.0
}

fn default_segments() -> usize {
    DEFAULT_CURVE_SEGMENTS
}

/// Identical miners of one model, planned together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsicGroupSpec {
    /// Defaults to the model's name; must be unique within the site.
    #[serde(default)]
    pub name: Option<String>,
    /// A model of [`crate::mining::ASIC_MODELS`], case-insensitive.
    pub model: String,
    pub units: u32,
    /// Seconds for the whole group to go from asleep to nominal power, when the fleet restores
    /// in stages slower than one unit's wakeup (the model's `ramp_up_s` otherwise).
    #[serde(default)]
    pub ramp_up_s: Option<f64>,
    /// A hosting contract: the site is paid this per MWh its miners draw and the client keeps
    /// the BTC, so the group runs on the contract's economics, not hashprice.
    #[serde(default)]
    pub hosting_usd_per_mwh: Option<f64>,
}

/// Identical GPU nodes. Draw is linear in load, from `idle_kw` to `max_kw` per node; a node
/// switched off draws nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuGroupSpec {
    pub name: String,
    pub nodes: u32,
    pub idle_kw: f64,
    pub max_kw: f64,
    /// Tokens a second one node serves at full load.
    pub tokens_per_s: f64,
}

/// USD per million tokens served.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferencePrices {
    pub interactive_usd_per_mtok: f64,
    pub batch_usd_per_mtok: f64,
}

/// Demand as average token rates; interactive demand follows an optional daily profile.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemandSpec {
    #[serde(default)]
    pub interactive_tokens_per_s: f64,
    #[serde(default)]
    pub batch_tokens_per_s: f64,
    /// 24 multipliers of the interactive rate, by local hour; none: flat.
    #[serde(default)]
    pub hourly_profile: Option<Vec<f64>>,
}

/// Coincident-peak transmission charges: the charge per period is `usd_per_kw` times the site's
/// average load over the period's `peaks` peak intervals of `interval_minutes` (4CP today:
/// 4 peaks of 15 minutes a year; 12CP proposed: 12 of 30 minutes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoincidentPeakSpec {
    pub peaks: u32,
    pub interval_minutes: u32,
    pub usd_per_kw: f64,
    /// When peaks are likely, for [`Site::timeline`]; callers with their own forecast set
    /// [`IntervalInputs::peak_probability`] directly.
    #[serde(default)]
    pub windows: Vec<PeakWindow>,
}

/// Local months and hours in which each peak interval is a peak with `probability`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeakWindow {
    /// 1–12.
    pub months: Vec<u8>,
    /// Local hours of the day, 0–23.
    pub hours: Vec<u8>,
    pub probability: f64,
}

/// A demand-response call: the site's load stays at or below `cap_kw` from `start` for
/// `minutes`, and earns `payment_usd` for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrEventSpec {
    /// RFC 3339.
    pub start: String,
    pub minutes: u32,
    pub cap_kw: f64,
    #[serde(default)]
    pub payment_usd: f64,
}

/// Knobs of the baselines the planner is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// One strike price for every group; none: each group's own break-even at nominal power.
    #[serde(default)]
    pub strike_usd_per_mwh: Option<f64>,
    /// The share of the site's IT power reserved for GPUs in the static split; none: the GPUs'
    /// share of the fleet's full draw.
    #[serde(default)]
    pub static_gpu_share: Option<f64>,
}

// === the checked site ===

/// A checked ASIC group, with its curve as lines (`ths ≤ slope·W + intercept` on each segment).
#[derive(Debug, Clone, PartialEq)]
pub struct AsicGroup {
    pub(crate) name: String,
    pub(crate) model: AsicModel,
    pub(crate) units: f64,
    pub(crate) ramp_up_s: f64,
    pub(crate) ramp_down_s: f64,
    pub(crate) hosting_usd_per_mwh: Option<f64>,
    /// The curve's breakpoints (W, TH/s), from the lowest profile to the highest.
    pub(crate) points: Vec<(f64, f64)>,
    /// (TH/s per W, TH/s) of each segment of the concave curve.
    pub(crate) lines: Vec<(f64, f64)>,
}

impl AsicGroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn model(&self) -> &AsicModel {
        &self.model
    }

    pub fn units(&self) -> f64 {
        self.units
    }

    pub fn hosting_usd_per_mwh(&self) -> Option<f64> {
        self.hosting_usd_per_mwh
    }

    /// Hashrate (TH/s) of `units_hashing` units drawing `hashing_w` watts in all, on the
    /// piecewise-linear curve the planner optimizes: the perspective of the concave curve, so
    /// it is exact when the units share the power evenly.
    pub fn hashrate_ths(&self, hashing_w: f64, units_hashing: f64) -> f64 {
        if units_hashing <= 0.0 || hashing_w <= 0.0 {
            return 0.0;
        }
        self.lines
            .iter()
            .map(|(slope, intercept)| slope * hashing_w + intercept * units_hashing)
            .fold(f64::INFINITY, f64::min)
            .max(0.0)
    }

    /// The whole group asleep, kW.
    pub fn sleep_kw(&self) -> f64 {
        self.units * self.model.sleep_w / 1_000.0
    }

    /// Every unit at its highest profile, kW.
    pub fn max_kw(&self) -> f64 {
        self.units * self.model.max_w / 1_000.0
    }

    /// Every unit at nominal power, kW.
    pub fn nominal_kw(&self) -> f64 {
        self.units * self.model.nominal_w / 1_000.0
    }

    /// How far the group's draw may rise in one interval, kW.
    pub fn ramp_up_kw(&self, interval: IntervalLength) -> f64 {
        self.units * (self.model.nominal_w - self.model.sleep_w) / 1_000.0
            * (interval.seconds() as f64 / self.ramp_up_s)
    }

    /// How far the group's draw may fall in one interval, kW.
    pub fn ramp_down_kw(&self, interval: IntervalLength) -> f64 {
        self.units * (self.model.max_w - self.model.sleep_w) / 1_000.0
            * (interval.seconds() as f64 / self.ramp_down_s)
    }

    /// The highest power price (USD/MWh) at which hashing pays at `hashprice`, at the curve's
    /// most efficient point and counting only the draw above sleep (a sleeping unit draws
    /// anyway). Above it the planner never lets this group hash unless a contract says so.
    pub fn break_even_usd_per_mwh(&self, hashprice_usd_per_ph_day: f64) -> f64 {
        let m = &self.model;
        let best_j_per_th = (0..=MAX_CURVE_SEGMENTS)
            .map(|i| m.min_w + (m.max_w - m.min_w) * i as f64 / MAX_CURVE_SEGMENTS as f64)
            .map(|w| (w - m.sleep_w) / self.hashrate_ths(w, 1.0))
            .fold(f64::INFINITY, f64::min);
        break_even_usd_per_mwh(hashprice_usd_per_ph_day, best_j_per_th)
    }
}

/// A checked GPU group.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuGroup {
    pub(crate) name: String,
    pub(crate) nodes: f64,
    pub(crate) idle_kw: f64,
    pub(crate) max_kw: f64,
    pub(crate) tokens_per_s: f64,
}

impl GpuGroup {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn nodes(&self) -> f64 {
        self.nodes
    }

    /// Tokens per kWh at full load: the order in which GPUs are given work.
    pub(crate) fn tokens_per_kwh(&self) -> f64 {
        self.tokens_per_s * 3_600.0 / self.max_kw
    }
}

/// Coincident-peak charges, checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoincidentPeak {
    pub(crate) peaks: f64,
    pub(crate) interval_minutes: u32,
    pub(crate) usd_per_kw: f64,
}

impl CoincidentPeak {
    /// The expected charge per kW of load in one planning interval that is a peak interval
    /// with `probability`: each peak costs `usd_per_kw / peaks` per kW of the peak interval's
    /// average load, and one planning interval is `interval / peak interval` of it.
    pub fn usd_per_kw(&self, probability: f64, interval: IntervalLength) -> f64 {
        probability * self.usd_per_kw / self.peaks * interval.minutes() as f64
            / self.interval_minutes as f64
    }
}

/// A site the planner can run on: every field checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Site {
    pub(crate) spec: SiteSpec,
    pub(crate) asic_groups: Vec<AsicGroup>,
    pub(crate) gpu_groups: Vec<GpuGroup>,
    pub(crate) coincident_peak: Option<CoincidentPeak>,
    pub(crate) static_gpu_share: f64,
}

fn bad(field: impl Into<String>, value: f64, rule: &'static str) -> PlanError {
    PlanError::InvalidSite {
        field: field.into(),
        problem: format!("{value} {rule}"),
    }
}

fn positive(field: impl Into<String>, value: f64) -> Result<f64, PlanError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(bad(field, value, "is not a positive number"))
    }
}

fn non_negative(field: impl Into<String>, value: f64) -> Result<f64, PlanError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(bad(field, value, "is not a number ≥ 0"))
    }
}

fn parse_time(field: String, value: &str) -> Result<i64, PlanError> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(OffsetDateTime::unix_timestamp)
        .map_err(|_| PlanError::InvalidSite {
            field,
            problem: format!("`{value}` is not an RFC 3339 timestamp"),
        })
}

impl SiteSpec {
    /// Checks every field; the error names the first bad one.
    pub fn check(&self) -> Result<Site, PlanError> {
        let s = self;
        if s.name.trim().is_empty() {
            return Err(PlanError::InvalidSite {
                field: "name".into(),
                problem: "is empty".into(),
            });
        }
        positive("interconnect_kw", s.interconnect_kw)?;
        if !(s.pue.is_finite() && (1.0..=3.0).contains(&s.pue)) {
            return Err(bad("pue", s.pue, "is not between 1 and 3"));
        }
        if !(-12..=14).contains(&s.utc_offset_hours) {
            return Err(bad(
                "utc_offset_hours",
                f64::from(s.utc_offset_hours),
                "is not between -12 and 14",
            ));
        }
        if s.asic_groups.is_empty() && s.gpu_groups.is_empty() {
            return Err(PlanError::InvalidSite {
                field: "asic_groups, gpu_groups".into(),
                problem: "both are empty: a site needs miners or GPUs".into(),
            });
        }
        if !(1..=MAX_CURVE_SEGMENTS).contains(&s.curve_segments) {
            return Err(bad(
                "curve_segments",
                s.curve_segments as f64,
                "is not between 1 and 32",
            ));
        }
        let mut asic_groups = Vec::new();
        for (i, g) in s.asic_groups.iter().enumerate() {
            let field = |f: &str| format!("asic_groups[{i}].{f}");
            let model = *asic_model(&g.model).ok_or_else(|| PlanError::InvalidSite {
                field: field("model"),
                problem: format!("`{}` is not a known ASIC model", g.model),
            })?;
            let name = g.name.clone().unwrap_or_else(|| model.name.to_owned());
            if g.units == 0 {
                return Err(bad(field("units"), 0.0, "is not a positive number"));
            }
            let ramp_up_s = match g.ramp_up_s {
                Some(v) => positive(field("ramp_up_s"), v)?,
                None => model.ramp_up_s,
            };
            let hosting_usd_per_mwh = g
                .hosting_usd_per_mwh
                .map(|v| non_negative(field("hosting_usd_per_mwh"), v))
                .transpose()?;
            let points = model.curve(s.curve_segments);
            let lines = points
                .windows(2)
                .map(|w| {
                    let slope = (w[1].1 - w[0].1) / (w[1].0 - w[0].0);
                    (slope, w[0].1 - slope * w[0].0)
                })
                .collect();
            asic_groups.push(AsicGroup {
                name,
                model,
                units: f64::from(g.units),
                ramp_up_s,
                ramp_down_s: model.ramp_down_s,
                hosting_usd_per_mwh,
                points,
                lines,
            });
        }
        let mut gpu_groups = Vec::new();
        for (i, g) in s.gpu_groups.iter().enumerate() {
            let field = |f: &str| format!("gpu_groups[{i}].{f}");
            if g.name.trim().is_empty() {
                return Err(PlanError::InvalidSite {
                    field: field("name"),
                    problem: "is empty".into(),
                });
            }
            if g.nodes == 0 {
                return Err(bad(field("nodes"), 0.0, "is not a positive number"));
            }
            let idle_kw = non_negative(field("idle_kw"), g.idle_kw)?;
            let max_kw = positive(field("max_kw"), g.max_kw)?;
            if idle_kw > max_kw {
                return Err(bad(field("idle_kw"), idle_kw, "is above max_kw"));
            }
            gpu_groups.push(GpuGroup {
                name: g.name.clone(),
                nodes: f64::from(g.nodes),
                idle_kw,
                max_kw,
                tokens_per_s: positive(field("tokens_per_s"), g.tokens_per_s)?,
            });
        }
        let all_names = asic_groups
            .iter()
            .map(|g| g.name.as_str())
            .chain(gpu_groups.iter().map(|g| g.name.as_str()));
        let mut seen = std::collections::HashSet::new();
        for name in all_names {
            if !seen.insert(name) {
                return Err(PlanError::InvalidSite {
                    field: "groups".into(),
                    problem: format!("two groups are named `{name}`; name them apart"),
                });
            }
        }
        non_negative(
            "inference.interactive_usd_per_mtok",
            s.inference.interactive_usd_per_mtok,
        )?;
        non_negative(
            "inference.batch_usd_per_mtok",
            s.inference.batch_usd_per_mtok,
        )?;
        non_negative(
            "demand.interactive_tokens_per_s",
            s.demand.interactive_tokens_per_s,
        )?;
        non_negative("demand.batch_tokens_per_s", s.demand.batch_tokens_per_s)?;
        if let Some(profile) = &s.demand.hourly_profile {
            if profile.len() != 24 {
                return Err(bad(
                    "demand.hourly_profile",
                    profile.len() as f64,
                    "multipliers given; one per hour (24) is needed",
                ));
            }
            for (h, &m) in profile.iter().enumerate() {
                non_negative(format!("demand.hourly_profile[{h}]"), m)?;
            }
        }
        if let Some(b) = &s.bitcoin {
            b.check().map_err(|e| PlanError::InvalidSite {
                field: "bitcoin".into(),
                problem: e.to_string(),
            })?;
        }
        let coincident_peak = match &s.coincident_peak {
            None => None,
            Some(cp) => {
                if cp.peaks == 0 {
                    return Err(bad(
                        "coincident_peak.peaks",
                        0.0,
                        "is not a positive number",
                    ));
                }
                if cp.interval_minutes == 0 || cp.interval_minutes % 5 != 0 {
                    return Err(bad(
                        "coincident_peak.interval_minutes",
                        f64::from(cp.interval_minutes),
                        "is not a positive multiple of 5",
                    ));
                }
                non_negative("coincident_peak.usd_per_kw", cp.usd_per_kw)?;
                for (i, w) in cp.windows.iter().enumerate() {
                    let field = |f: &str| format!("coincident_peak.windows[{i}].{f}");
                    if let Some(&m) = w.months.iter().find(|m| !(1..=12).contains(*m)) {
                        return Err(bad(field("months"), f64::from(m), "is not a month (1–12)"));
                    }
                    if let Some(&h) = w.hours.iter().find(|h| **h > 23) {
                        return Err(bad(field("hours"), f64::from(h), "is not an hour (0–23)"));
                    }
                    if !(0.0..=1.0).contains(&w.probability) {
                        return Err(bad(
                            field("probability"),
                            w.probability,
                            "is not a probability",
                        ));
                    }
                }
                // A probability is per interval: over a year the windows should expect about
                // `peaks` peak intervals. Far more means a probability meant per window (0.1
                // over 976 summer-afternoon quarter hours is 98 expected peaks, a charge 24
                // times too high).
                let per_hour = 60.0 / f64::from(cp.interval_minutes);
                let expected: f64 = cp
                    .windows
                    .iter()
                    .map(|w| {
                        let days: u32 = w.months.iter().map(|&m| days_in_month(m)).sum();
                        f64::from(days) * w.hours.len() as f64 * per_hour * w.probability
                    })
                    .sum();
                if expected > f64::from(cp.peaks) * 1.05 {
                    return Err(bad(
                        "coincident_peak.windows",
                        expected,
                        "expect more peak intervals a year than `peaks`: a probability is per \
                         interval (peaks / intervals in the windows)",
                    ));
                }
                Some(CoincidentPeak {
                    peaks: f64::from(cp.peaks),
                    interval_minutes: cp.interval_minutes,
                    usd_per_kw: cp.usd_per_kw,
                })
            }
        };
        let mut events: Vec<(i64, i64)> = Vec::new();
        for (i, e) in s.dr_events.iter().enumerate() {
            let field = |f: &str| format!("dr_events[{i}].{f}");
            let start = parse_time(field("start"), &e.start)?;
            if e.minutes == 0 {
                return Err(bad(field("minutes"), 0.0, "is not a positive number"));
            }
            positive(field("cap_kw"), e.cap_kw)?;
            non_negative(field("payment_usd"), e.payment_usd)?;
            let end = start + i64::from(e.minutes) * 60;
            if let Some(j) = events.iter().position(|&(a, b)| start < b && a < end) {
                return Err(PlanError::InvalidSite {
                    field: field("start"),
                    problem: format!("the event overlaps dr_events[{j}]"),
                });
            }
            events.push((start, end));
        }
        if let Some(v) = s.baselines.strike_usd_per_mwh
            && !v.is_finite()
        {
            return Err(bad("baselines.strike_usd_per_mwh", v, "is not a number"));
        }
        let gpu_full_kw: f64 = gpu_groups.iter().map(|g| g.nodes * g.max_kw).sum();
        let asic_full_kw: f64 = asic_groups.iter().map(AsicGroup::nominal_kw).sum();
        let static_gpu_share = match s.baselines.static_gpu_share {
            Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => v,
            Some(v) => return Err(bad("baselines.static_gpu_share", v, "is not within 0–1")),
            None => gpu_full_kw / (gpu_full_kw + asic_full_kw),
        };
        Ok(Site {
            spec: self.clone(),
            asic_groups,
            gpu_groups,
            coincident_peak,
            static_gpu_share,
        })
    }
}

impl Site {
    pub fn spec(&self) -> &SiteSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn interconnect_kw(&self) -> f64 {
        self.spec.interconnect_kw
    }

    pub fn pue(&self) -> f64 {
        self.spec.pue
    }

    pub fn asic_groups(&self) -> &[AsicGroup] {
        &self.asic_groups
    }

    pub fn gpu_groups(&self) -> &[GpuGroup] {
        &self.gpu_groups
    }

    pub fn inference(&self) -> InferencePrices {
        self.spec.inference
    }

    pub fn coincident_peak(&self) -> Option<CoincidentPeak> {
        self.coincident_peak
    }

    /// The lowest IT load the site can reach: every miner asleep, every GPU node off, kW.
    pub fn floor_it_kw(&self) -> f64 {
        self.asic_groups.iter().map(AsicGroup::sleep_kw).sum()
    }

    /// The most IT load the site can draw: every miner at its highest profile, every GPU node
    /// at full load, kW.
    pub fn max_it_kw(&self) -> f64 {
        self.asic_groups.iter().map(AsicGroup::max_kw).sum::<f64>()
            + self
                .gpu_groups
                .iter()
                .map(|g| g.nodes * g.max_kw)
                .sum::<f64>()
    }

    /// The per-interval inputs over `prices`: hashprice from `bitcoin` (or the site file's
    /// `[bitcoin]`), demand from `[demand]`, peak odds from the coincident-peak windows, DR
    /// caps from `dr_events`. An event applies to every interval it overlaps; events wholly
    /// outside the series are left out.
    pub fn timeline(
        &self,
        prices: &PriceSeries,
        bitcoin: Option<&BitcoinMarket>,
    ) -> Result<Timeline, PlanError> {
        let from_file;
        // None: nothing here earns by hashprice (no miners, or all hosted).
        let bitcoin = match (bitcoin, &self.spec.bitcoin) {
            (Some(b), _) => Some(b),
            (None, Some(spec)) => {
                from_file = spec.check().and_then(BitcoinMarket::fixed).map_err(|e| {
                    PlanError::InvalidSite {
                        field: "bitcoin".into(),
                        problem: e.to_string(),
                    }
                })?;
                Some(&from_file)
            }
            (None, None)
                if self
                    .asic_groups
                    .iter()
                    .all(|g| g.hosting_usd_per_mwh.is_some()) =>
            {
                None
            }
            (None, None) => {
                return Err(PlanError::InvalidSite {
                    field: "bitcoin".into(),
                    problem: "the site mines but no Bitcoin market was given".into(),
                });
            }
        };
        let interval = prices.interval();
        let dt_s = interval.seconds() as f64;
        let offset_s = i64::from(self.spec.utc_offset_hours) * 3_600;
        let demand = &self.spec.demand;
        let mut events = Vec::new();
        for (i, e) in self.spec.dr_events.iter().enumerate() {
            let start = parse_time(format!("dr_events[{i}].start"), &e.start)?;
            events.push((start, start + i64::from(e.minutes) * 60, e));
        }
        let mut intervals = Vec::with_capacity(prices.len());
        for (i, &usd_per_mwh) in prices.prices().iter().enumerate() {
            let t = prices.timestamp(i);
            let local = OffsetDateTime::from_unix_timestamp(t + offset_s).map_err(|_| {
                PlanError::InvalidInput {
                    index: i,
                    field: "timestamp",
                    value: t as f64,
                }
            })?;
            let hour = local.hour();
            let month = u8::from(local.month());
            let profile = demand
                .hourly_profile
                .as_ref()
                .and_then(|p| p.get(usize::from(hour)).copied())
                .unwrap_or(1.0);
            let peak_probability = self
                .spec
                .coincident_peak
                .iter()
                .flat_map(|cp| &cp.windows)
                .filter(|w| w.months.contains(&month) && w.hours.contains(&hour))
                .map(|w| w.probability)
                .fold(0.0, f64::max);
            let end = t + interval.seconds();
            let overlapping: Vec<_> = events
                .iter()
                .filter(|(a, b, _)| *a < end && t < *b)
                .collect();
            let dr = overlapping
                .iter()
                .map(|(a, b, e)| {
                    // The payment is spread over the intervals the event overlaps.
                    let first = (a - prices.start_unix_s()).div_euclid(interval.seconds());
                    let last = (b - 1 - prices.start_unix_s()).div_euclid(interval.seconds());
                    DrCall {
                        cap_kw: e.cap_kw,
                        payment_usd: e.payment_usd / (last - first + 1) as f64,
                    }
                })
                .reduce(|x, y| DrCall {
                    cap_kw: x.cap_kw.min(y.cap_kw),
                    payment_usd: x.payment_usd + y.payment_usd,
                });
            intervals.push(IntervalInputs {
                usd_per_mwh,
                hashprice_usd_per_ph_day: bitcoin.map_or(0.0, |b| b.hashprice_usd_per_ph_day(i)),
                interactive_tokens: demand.interactive_tokens_per_s * profile * dt_s,
                batch_tokens: demand.batch_tokens_per_s * dt_s,
                dr,
                peak_probability,
            });
        }
        Timeline::new(prices.start_unix_s(), interval, intervals)
    }
}

// === the timeline ===

/// What the planner knows about one interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntervalInputs {
    pub usd_per_mwh: f64,
    pub hashprice_usd_per_ph_day: f64,
    /// Interactive tokens asked for in the interval.
    pub interactive_tokens: f64,
    /// Batch tokens arriving in the interval; they may wait.
    pub batch_tokens: f64,
    #[serde(default)]
    pub dr: Option<DrCall>,
    /// The chance that this interval falls in a coincident-peak interval.
    #[serde(default)]
    pub peak_probability: f64,
}

/// A demand-response cap on the site's load at the meter in one interval, and what meeting it
/// earns in that interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrCall {
    pub cap_kw: f64,
    pub payment_usd: f64,
}

/// The per-interval inputs of a run, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    pub(crate) start_unix_s: i64,
    pub(crate) interval: IntervalLength,
    pub(crate) intervals: Vec<IntervalInputs>,
}

impl Timeline {
    pub fn new(
        start_unix_s: i64,
        interval: IntervalLength,
        intervals: Vec<IntervalInputs>,
    ) -> Result<Self, PlanError> {
        if intervals.is_empty() {
            return Err(PlanError::EmptyTimeline);
        }
        for (index, x) in intervals.iter().enumerate() {
            let bad = |field, value| {
                Err(PlanError::InvalidInput {
                    index,
                    field,
                    value,
                })
            };
            let p = x.usd_per_mwh;
            if !(p.is_finite() && (PRICE_FLOOR_USD_PER_MWH..=OFFER_CAP_USD_PER_MWH).contains(&p)) {
                return bad("usd_per_mwh", p);
            }
            let non_negative = [
                ("hashprice_usd_per_ph_day", x.hashprice_usd_per_ph_day),
                ("interactive_tokens", x.interactive_tokens),
                ("batch_tokens", x.batch_tokens),
            ];
            for (field, value) in non_negative {
                if !(value.is_finite() && value >= 0.0) {
                    return bad(field, value);
                }
            }
            if !(0.0..=1.0).contains(&x.peak_probability) {
                return bad("peak_probability", x.peak_probability);
            }
            if let Some(dr) = x.dr {
                if !(dr.cap_kw.is_finite() && dr.cap_kw > 0.0) {
                    return bad("dr.cap_kw", dr.cap_kw);
                }
                if !(dr.payment_usd.is_finite() && dr.payment_usd >= 0.0) {
                    return bad("dr.payment_usd", dr.payment_usd);
                }
            }
        }
        Ok(Self {
            start_unix_s,
            interval,
            intervals,
        })
    }

    pub fn start_unix_s(&self) -> i64 {
        self.start_unix_s
    }

    pub fn interval(&self) -> IntervalLength {
        self.interval
    }

    pub fn intervals(&self) -> &[IntervalInputs] {
        &self.intervals
    }

    pub fn len(&self) -> usize {
        self.intervals.len()
    }

    /// Always false: a timeline has at least one interval.
    pub fn is_empty(&self) -> bool {
        self.intervals.is_empty()
    }

    /// The start of interval `index`, unix seconds.
    pub fn timestamp(&self, index: usize) -> i64 {
        self.start_unix_s
            .saturating_add((index as i64).saturating_mul(self.interval.seconds()))
    }
}

/// What the site carries into the first interval planned.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteState {
    /// Each ASIC group's draw in the interval before, kW (none: ramps are free at the start).
    #[serde(default)]
    pub asic_kw: Option<Vec<f64>>,
    /// Batch tokens waiting.
    #[serde(default)]
    pub batch_backlog_tokens: f64,
}

impl SiteState {
    /// Checks the state against `site`.
    pub(crate) fn check(&self, site: &Site) -> Result<(), PlanError> {
        if let Some(kw) = &self.asic_kw {
            if kw.len() != site.asic_groups.len() {
                return Err(PlanError::InvalidState {
                    problem: format!(
                        "{} ASIC draws given for {} groups",
                        kw.len(),
                        site.asic_groups.len()
                    ),
                });
            }
            for (g, &v) in site.asic_groups.iter().zip(kw) {
                // A little above the group's highest profile is meter noise, not a state.
                if !(v.is_finite() && v >= 0.0 && v <= g.max_kw() * 1.05) {
                    return Err(PlanError::InvalidState {
                        problem: format!(
                            "group `{}` drew {v} kW; it can draw 0–{} kW",
                            g.name,
                            g.max_kw()
                        ),
                    });
                }
            }
        }
        let b = self.batch_backlog_tokens;
        if !(b.is_finite() && b >= 0.0) {
            return Err(PlanError::InvalidState {
                problem: format!("batch backlog {b} is not a number ≥ 0"),
            });
        }
        Ok(())
    }
}

/// Days in month `m` (1–12) of a common year.
fn days_in_month(m: u8) -> u32 {
    match m {
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}
